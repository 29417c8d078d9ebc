//! The `ditto` command line: argument parsing and wiring only. Each subcommand is a module
//! of [`cmd`]; the benchmarks that `ditto bench` runs live in [`bench`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod cmd;

use cmd::{compare, image, pair, replica, run};

#[derive(Parser)]
#[command(
    name = "ditto",
    version,
    about = "Run a multithreaded Linux program in a KVM process VM whose kernel is ditto",
    after_help = "Exit status: the program's own status; 128+N when it was killed by signal N \
(a fault in the program prints a one-line report); 2 for bad usage or input (bad flag, \
missing or malformed program or image); 1 when the host cannot run VMs."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one program in a process VM.
    Run(run::RunArgs),
    /// Measure ditto against native runs of the same programs.
    Bench(cmd::bench::BenchArgs),
    /// Build, list and extend images made from Debian packages.
    Image(image::ImageArgs),
    /// Run a program as two replicas (primary and secondary) on disjoint cores, keep them
    /// in lockstep and report any divergence (docs/pair.md).
    Pair(pair::PairArgs),
    /// One replica of a pair (started by `ditto pair`).
    #[command(name = "__replica", hide = true)]
    Replica(replica::ReplicaArgs),
    /// Summarise a `ditto pair` report, or line up two reports side by side.
    #[command(after_help = compare::AFTER_HELP)]
    Compare(compare::CompareArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DITTO_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let no_seccomp = match &cli.command {
        Command::Run(r) => run::no_seccomp(r),
        Command::Pair(p) => pair::no_seccomp(p),
        Command::Replica(r) => replica::no_seccomp(r),
        _ => false,
    };
    if no_seccomp {
        devices::seccomp::disable();
    } else {
        // Armed before any thread exists, so every filtered thread reports.
        devices::seccomp::install_handler();
    }
    match cli.command {
        Command::Run(r) => run::main(&r),
        Command::Bench(b) => cmd::bench::main(&b),
        Command::Image(i) => image::main(&i),
        Command::Pair(p) => pair::main(&p),
        Command::Replica(r) => replica::main(&r),
        Command::Compare(c) => compare::main(&c),
    }
}
