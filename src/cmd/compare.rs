//! `ditto compare REPORT [REPORT2]`: the readable summary of a `ditto pair` report, or two
//! runs side by side (replica::report; docs/report.md); `ditto compare --trace DIR`: the
//! two replicas' traces of a `ditto pair --trace` run lined up (replica::trace).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use replica::report::{compare_reports, Outcome, Report};
use replica::role::Role;
use replica::trace::{align, trace_path, Trace};

/// Exit status when the (first) report says the replicas diverged or failed.
const EXIT_NOT_IDENTICAL: u8 = 1;

/// The exit statuses, for `--help`.
pub const AFTER_HELP: &str = "Exit status: 0 when the (first) report says the replicas were \
identical; 1 when it says they diverged, a replica failed, the pair failed over (a replica \
died and the other carried on) or the channel failed; 2 when a \
report or trace cannot be read (missing, not JSON, another schema version). With --trace \
alone: 0 when the traces do not part, 1 when they do.";

/// Arguments of `ditto compare`.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// A report written by `ditto pair --report FILE`.
    #[arg(required_unless_present = "trace")]
    report: Option<PathBuf>,
    /// A second report: the two runs are lined up side by side.
    other: Option<PathBuf>,
    /// The run directory of a `ditto pair --trace --out DIR` run: its two replicas' per-thread
    /// events lined up, and the first place they part with what led to it.
    #[arg(long, value_name = "DIR", conflicts_with = "other")]
    trace: Option<PathBuf>,
    /// Write one self-contained HTML page of REPORT (with --trace, of the traces too): both
    /// replicas as lanes along the turn order, the first divergence and its bytes.
    #[arg(
        long,
        value_name = "OUT.html",
        requires = "report",
        conflicts_with = "other"
    )]
    html: Option<PathBuf>,
}

/// The exit status for a report: 0 identical, 1 otherwise.
fn exit_for(report: &Report) -> u8 {
    match report.outcome {
        Outcome::Identical => 0,
        Outcome::Diverged
        | Outcome::ReplicaFailed
        | Outcome::ChannelError
        | Outcome::FailedOver => EXIT_NOT_IDENTICAL,
    }
}

/// Runs `ditto compare`: prints the summary of one report, or the comparison of two.
pub fn main(args: &CompareArgs) -> ExitCode {
    let load = |path: &PathBuf| {
        Report::load(path).map_err(|e| {
            eprintln!("ditto: {e}");
            ExitCode::from(super::EXIT_BAD_INPUT)
        })
    };
    if let Some(page) = &args.html {
        return write_html(args, page);
    }
    let trace_parted = match &args.trace {
        None => None,
        Some(dir) => match compare_traces(dir) {
            Ok((text, parted)) => {
                if args.report.is_some() {
                    println!("traces ({}):", dir.display());
                }
                print!("{text}");
                Some(parted)
            }
            Err(e) => {
                eprintln!("ditto: {e}");
                return ExitCode::from(super::EXIT_BAD_INPUT);
            }
        },
    };
    let Some(report) = &args.report else {
        return ExitCode::from(if trace_parted == Some(true) {
            EXIT_NOT_IDENTICAL
        } else {
            0
        });
    };
    if trace_parted.is_some() {
        println!();
    }
    let first = match load(report) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match &args.other {
        None => print!("{}", first.summary()),
        Some(path) => {
            let second = match load(path) {
                Ok(r) => r,
                Err(code) => return code,
            };
            println!("first:  {}", report.display());
            println!("second: {}", path.display());
            println!();
            print!("{}", compare_reports(&first, &second));
        }
    }
    ExitCode::from(exit_for(&first))
}

/// `--html`: the page of the report (and the traces) to `page`.
fn write_html(args: &CompareArgs, page: &std::path::Path) -> ExitCode {
    let bad = |e: String| {
        eprintln!("ditto: {e}");
        ExitCode::from(super::EXIT_BAD_INPUT)
    };
    let Some(path) = &args.report else {
        return bad("--html needs a REPORT".into());
    };
    let report = match Report::load(path) {
        Ok(r) => r,
        Err(e) => return bad(e.to_string()),
    };
    let traces = match &args.trace {
        None => None,
        Some(dir) => {
            let load = |role| Trace::load(&trace_path(dir, role));
            match (load(Role::Primary), load(Role::Secondary)) {
                (Ok(p), Ok(s)) => Some((p, s)),
                (Err(e), _) | (_, Err(e)) => return bad(e.to_string()),
            }
        }
    };
    let html = replica::report::render_html(&report, traces.as_ref().map(|(p, s)| (p, s)));
    if let Err(e) = std::fs::write(page, html) {
        return ExitCode::from({
            eprintln!("ditto: cannot write {}: {e}", page.display());
            super::EXIT_HOST_ERROR
        });
    }
    eprintln!("ditto: wrote {}", page.display());
    ExitCode::from(exit_for(&report))
}

/// The traces of `dir` lined up, as text, and whether they part.
fn compare_traces(dir: &std::path::Path) -> Result<(String, bool), replica::trace::TraceError> {
    let primary = Trace::load(&trace_path(dir, Role::Primary))?;
    let secondary = Trace::load(&trace_path(dir, Role::Secondary))?;
    // The report beside the traces, when there is one, names the diverging call.
    let report = Report::load(dir.join("report.json")).ok();
    let reported = report
        .as_ref()
        .and_then(|r| r.first_divergence.as_ref())
        .filter(|d| !d.syscall.is_empty())
        .map(|d| (d.syscall.as_str(), d.syscall_seq));
    let a = align::align_with_report(&primary, &secondary, reported);
    Ok((align::render(&a), a.first.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses() {
        let mut r = Report::new("det", vec!["/bin/true".into()]);
        assert_eq!(exit_for(&r), 0);
        for o in [
            Outcome::Diverged,
            Outcome::ReplicaFailed,
            Outcome::ChannelError,
            Outcome::FailedOver,
        ] {
            r.outcome = o;
            assert_eq!(exit_for(&r), 1);
        }
    }

    #[test]
    fn parses_one_or_two_reports() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: CompareArgs,
        }
        let one = Cli::try_parse_from(["compare", "a.json"]).unwrap().args;
        assert_eq!((one.report, one.other), (Some("a.json".into()), None));
        let t = Cli::try_parse_from(["compare", "--trace", "d"])
            .unwrap()
            .args;
        assert_eq!((t.report, t.trace), (None, Some("d".into())));
        assert!(Cli::try_parse_from(["compare", "a", "b", "--trace", "d"]).is_err());
        let two = Cli::try_parse_from(["compare", "a.json", "b.json"])
            .unwrap()
            .args;
        assert_eq!(two.other, Some("b.json".into()));
        assert!(Cli::try_parse_from(["compare"]).is_err());
        assert!(Cli::try_parse_from(["compare", "a", "b", "c"]).is_err());
    }
}
