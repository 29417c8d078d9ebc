//! `ditto bench`: each benchmark runs the same program natively and in ditto in one
//! invocation and prints the ratio, because absolute times on shared machines are
//! noise.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use clap::{Args, ValueEnum};

/// Which benchmark to run.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Which {
    /// Syscall round trip, compute, memcpy, thread create+join, start-up.
    Syscall,
    /// redis (redis-benchmark), nginx (wrk) and pbzip2 from their images.
    Servers,
    /// Deterministic execution (`--det`): det section cost, hand-offs, racey, pbzip2.
    Det,
    /// Replication: single VM, `--det` and `ditto pair` (det, follow) on pbzip2, redis,
    /// nginx and mongoose, and the channel's throughput (`--only` also takes `channel`).
    Pair,
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
    /// Servers: only this workload (pbzip2, redis, nginx or mongoose).
    #[arg(long)]
    pub only: Option<String>,
}

/// One row: native and in-VM time per iteration.
struct Row {
    name: &'static str,
    unit: &'static str,
    native: f64,
    vm: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs the bench program and returns its ns_per_iter field.
fn bench_line(cmd: &mut Command) -> Result<f64, String> {
    let out = cmd
        .stderr(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("benchmark program failed: {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("unexpected benchmark output: {text}"))
}

fn in_ditto(prog: &Path) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap_or_else(|_| PathBuf::from("ditto")));
    c.arg("run").arg("--").arg(prog);
    c
}

fn micro(
    prog: &Path,
    reps: usize,
    name: &'static str,
    unit: &'static str,
    args: &[&str],
    native_n: &str,
    vm_n: &str,
) -> Result<Row, String> {
    let mut nat = Vec::new();
    let mut vm = Vec::new();
    for _ in 0..reps {
        nat.push(bench_line(Command::new(prog).args(args).arg(native_n))?);
        vm.push(bench_line(in_ditto(prog).args(args).arg(vm_n))?);
    }
    Ok(Row {
        name,
        unit,
        native: median(nat),
        vm: median(vm),
    })
}

fn startup(hello: &Path, reps: usize) -> Result<Row, String> {
    let time = |mut c: Command| -> Result<f64, String> {
        let t = Instant::now();
        let s = c
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        if !s.success() {
            return Err(format!("start-up run failed: {s}"));
        }
        Ok(t.elapsed().as_secs_f64() * 1e9)
    };
    let n = reps * 10;
    let nat = (0..n)
        .map(|_| time(Command::new(hello)))
        .collect::<Result<Vec<_>, _>>()?;
    let vm = (0..n)
        .map(|_| time(in_ditto(hello)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Row {
        name: "start-up (static hello)",
        unit: "ns/run",
        native: median(nat),
        vm: median(vm),
    })
}

fn syscall_bench(reps: usize) -> Result<Vec<Row>, String> {
    let bench = guest_images::progs::path("bench").ok_or("guest program 'bench' is not built")?;
    let hello = guest_images::progs::path("hello").ok_or("guest program 'hello' is not built")?;
    Ok(vec![
        micro(
            &bench,
            reps,
            "getpid round trip",
            "ns/call",
            &["getpid"],
            "1000000",
            "20000",
        )?,
        micro(
            &bench,
            reps,
            "compute loop",
            "ns/iter",
            &["compute"],
            "300000000",
            "300000000",
        )?,
        micro(
            &bench,
            reps,
            "memcpy 256 MB",
            "ns/MiB",
            &["memcpy"],
            "256",
            "256",
        )?,
        micro(
            &bench,
            reps,
            "pthread create+join",
            "ns/thread",
            &["thread"],
            "200",
            "200",
        )?,
        startup(&hello, reps)?,
    ])
}

fn servers(quick: bool, only: Option<&str>) -> ExitCode {
    match crate::bench_servers::run(quick, only) {
        Ok(rows) => {
            println!("| workload | native /s | ditto /s | slowdown | syscalls/req | exit µs/req | other µs/req |");
            println!("|---|---:|---:|---:|---:|---:|---:|");
            for r in rows {
                let per_req_us = 1e6 / r.ditto;
                println!(
                    "| {} | {:.1} | {:.1} | {:.2}x | {:.1} | {:.1} | {:.1} |",
                    r.name,
                    r.native,
                    r.ditto,
                    r.native / r.ditto,
                    r.syscalls_per_req,
                    r.exit_us,
                    (per_req_us - r.exit_us).max(0.0)
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ditto: bench: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs a benchmark and prints its table.
pub fn main(args: &BenchArgs) -> ExitCode {
    let reps = args.reps.max(1);
    let rows = match args.which {
        Which::Syscall => syscall_bench(reps),
        Which::Servers => return servers(args.quick, args.only.as_deref()),
        Which::Det => return crate::bench_det::main(reps),
        Which::Pair => return crate::bench_pair::main(args.quick, args.only.as_deref(), reps),
    };
    match rows {
        Ok(rows) => {
            println!("| benchmark | unit | native | ditto | ditto/native |");
            println!("|---|---|---:|---:|---:|");
            for r in rows {
                println!(
                    "| {} | {} | {:.1} | {:.1} | {:.2}x |",
                    r.name,
                    r.unit,
                    r.native,
                    r.vm,
                    r.vm / r.native
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ditto: bench: {e}");
            ExitCode::from(1)
        }
    }
}
