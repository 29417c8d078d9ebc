//! Build progress: a bar on a terminal, one line per step otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How a build reports its progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// Always a bar (on stderr).
    Bar,
    /// One line per step on stderr.
    Lines,
    /// Nothing.
    Quiet,
}

/// The reporter one build (or `add`) uses.
pub(crate) struct Progress {
    name: String,
    bar: Option<ProgressBar>,
    lines: bool,
}

impl Progress {
    /// A reporter for image `name`.
    pub(crate) fn new(mode: ProgressMode, name: &str) -> Progress {
        let bar = match mode {
            ProgressMode::Bar => true,
            ProgressMode::Auto => std::io::stderr().is_terminal(),
            ProgressMode::Lines | ProgressMode::Quiet => false,
        };
        let bar = bar.then(|| {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            if let Ok(style) =
                ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {pos}/{len} {wide_msg}")
            {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_prefix(format!("image {name}"));
            b
        });
        Progress {
            name: name.to_owned(),
            bar,
            lines: mode != ProgressMode::Quiet,
        }
    }

    /// Announces `steps` more steps (each part of a build plans its own, once it knows them).
    pub(crate) fn plan(&self, steps: u64) {
        if let Some(b) = &self.bar {
            b.inc_length(steps);
        }
    }

    /// Starts the next step.
    pub(crate) fn step(&self, msg: &str) {
        match &self.bar {
            Some(b) => {
                b.inc(1);
                b.set_message(msg.to_owned());
            }
            None if self.lines => eprintln!("image {}: {msg}", self.name),
            None => {}
        }
        tracing::debug!(image = %self.name, "{msg}");
    }

    /// Ends the report with a final message.
    pub(crate) fn finish(&self, msg: &str) {
        match &self.bar {
            Some(b) => {
                b.set_length(b.position());
                b.finish_with_message(msg.to_owned());
            }
            None if self.lines => eprintln!("image {}: {msg}", self.name),
            None => {}
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // A failed build must not leave a half-drawn bar above the error message.
        if let Some(b) = &self.bar {
            if !b.is_finished() {
                b.abandon();
            }
        }
    }
}
