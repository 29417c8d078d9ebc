//! `ditto compare REPORT [REPORT2]`: the readable summary of a `ditto pair` report, or two
//! runs side by side (replica::report; docs/report.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use replica::report::{compare_reports, Outcome, Report};

/// Exit status when the (first) report says the replicas diverged or failed.
const EXIT_NOT_IDENTICAL: u8 = 1;

/// The exit statuses, for `--help`.
pub const AFTER_HELP: &str = "Exit status: 0 when the (first) report says the replicas were \
identical; 1 when it says they diverged, a replica failed or the channel failed; 2 when a \
report cannot be read (missing, not JSON, another schema version).";

/// Arguments of `ditto compare`.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// A report written by `ditto pair --report FILE`.
    report: PathBuf,
    /// A second report: the two runs are lined up side by side.
    other: Option<PathBuf>,
}

/// The exit status for a report: 0 identical, 1 otherwise.
fn exit_for(report: &Report) -> u8 {
    match report.outcome {
        Outcome::Identical => 0,
        Outcome::Diverged | Outcome::ReplicaFailed | Outcome::ChannelError => EXIT_NOT_IDENTICAL,
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
    let first = match load(&args.report) {
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
            println!("first:  {}", args.report.display());
            println!("second: {}", path.display());
            println!();
            print!("{}", compare_reports(&first, &second));
        }
    }
    ExitCode::from(exit_for(&first))
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
        assert_eq!((one.report, one.other), ("a.json".into(), None));
        let two = Cli::try_parse_from(["compare", "a.json", "b.json"])
            .unwrap()
            .args;
        assert_eq!(two.other, Some("b.json".into()));
        assert!(Cli::try_parse_from(["compare"]).is_err());
        assert!(Cli::try_parse_from(["compare", "a", "b", "c"]).is_err());
    }
}
