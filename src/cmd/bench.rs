//! `ditto bench`: each benchmark runs the same program natively and in ditto in one
//! invocation and prints the ratio, because absolute times on shared machines are
//! noise. This module holds the flags; the benchmarks are in [`crate::bench`].

use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::bench;

/// Which benchmark to run.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Which {
    /// Syscall round trip, clock_gettime (vDSO and by syscall), compute, memcpy, thread create+join, start-up.
    Syscall,
    /// redis (redis-benchmark), nginx (wrk) and pbzip2 from their images.
    Servers,
    /// Deterministic execution (`--det`): det section cost, hand-offs, racey, pbzip2.
    Det,
    /// Replication: single VM, `--det` and `ditto pair` (det, follow) on pbzip2, redis,
    /// nginx and mongoose, and the channel's throughput (`--only` also takes `channel`).
    Pair,
    /// Failover: takeover time and client-visible stall over `--kills` primary kills, for
    /// redis and nginx pairs in both modes (`--only redis|nginx`).
    Failover,
}

/// Arguments of `ditto bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The benchmark.
    #[arg(value_enum)]
    pub which: Which,
    /// Repetitions of each measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Shorter runs (servers: 10k requests, 3 s of wrk, 20 MB for pbzip2).
    #[arg(long)]
    pub quick: bool,
    /// servers and pair: only this workload (pbzip2, redis, nginx or mongoose; pair also
    /// channel); failover: redis or nginx.
    #[arg(long)]
    pub only: Option<String>,
    /// pair and servers: also write SVG charts into this directory (pair-overhead.svg;
    /// civetweb-threads.svg when civetweb is measured).
    #[arg(long, value_name = "DIR")]
    pub svg: Option<std::path::PathBuf>,
    /// failover: primary kills per workload and mode (default 20; 3 with --quick).
    #[arg(long, value_name = "N")]
    pub kills: Option<usize>,
}

/// Runs a benchmark and prints its table.
pub fn main(args: &BenchArgs) -> ExitCode {
    let reps = args.reps.max(1);
    if let Some(dir) = &args.svg {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("ditto: bench: --svg {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    }
    match args.which {
        Which::Syscall => bench::syscall::main(reps),
        Which::Servers => {
            bench::servers::main(args.quick, args.only.as_deref(), args.svg.as_deref())
        }
        Which::Det => bench::det::main(reps),
        Which::Pair => {
            bench::pair::main(args.quick, args.only.as_deref(), reps, args.svg.as_deref())
        }
        Which::Failover => bench::failover::main(args.quick, args.only.as_deref(), args.kills),
    }
}
