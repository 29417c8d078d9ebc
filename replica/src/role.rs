//! Which replica a process is, and how the two agree on the thread schedule.

/// Which replica this process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Runs the program for real and logs.
    Primary,
    /// Replays the log and compares.
    Secondary,
}

/// How the two replicas agree on the thread schedule (DESIGN.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Each computes the Kendo schedule; re-entry times cross the channel.
    Det,
    /// The secondary takes turns in the primary's logged order.
    Follow,
}

impl Mode {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Det => "det",
            Mode::Follow => "follow",
        }
    }
}
