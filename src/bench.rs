//! `ditto bench`: ratios against native runs of the same programs, measured in the
//! same invocation.

use std::process::ExitCode;

use clap::Args;

/// Arguments of `ditto bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Which benchmark: `syscall`.
    pub which: String,
}

/// Runs a benchmark.
pub fn main(_args: &BenchArgs) -> ExitCode {
    eprintln!("ditto: bench: not built yet");
    ExitCode::from(2)
}
