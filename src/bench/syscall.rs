//! `ditto bench syscall`: syscall round trip, clock_gettime (through the vDSO, and with every
//! read a syscall as before the vDSO), compute, memcpy, thread create+join and start-up, each
//! run natively and in ditto in one invocation.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

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
    (native_n, vm_n): (&str, &str),
    vm_env: &[(&str, &str)],
) -> Result<Row, String> {
    let mut nat = Vec::new();
    let mut vm = Vec::new();
    for _ in 0..reps {
        nat.push(bench_line(Command::new(prog).args(args).arg(native_n))?);
        let mut c = in_ditto(prog);
        c.envs(vm_env.iter().copied()).args(args).arg(vm_n);
        vm.push(bench_line(&mut c)?);
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
            ("1000000", "20000"),
            &[],
        )?,
        micro(
            &bench,
            reps,
            "clock_gettime (vDSO)",
            "ns/call",
            &["clock"],
            ("10000000", "1000000"),
            &[],
        )?,
        micro(
            &bench,
            reps,
            "clock_gettime, DITTO_TIME=syscall",
            "ns/call",
            &["clock"],
            ("10000000", "20000"),
            &[("DITTO_TIME", "syscall")],
        )?,
        micro(
            &bench,
            reps,
            "pipe write/read 64 B",
            "ns/call",
            &["rw"],
            ("500000", "10000"),
            &[],
        )?,
        micro(
            &bench,
            reps,
            "compute loop",
            "ns/iter",
            &["compute"],
            ("300000000", "300000000"),
            &[],
        )?,
        micro(
            &bench,
            reps,
            "memcpy 256 MB",
            "ns/MiB",
            &["memcpy"],
            ("256", "256"),
            &[],
        )?,
        micro(
            &bench,
            reps,
            "pthread create+join",
            "ns/thread",
            &["thread"],
            ("200", "200"),
            &[],
        )?,
        startup(&hello, reps)?,
    ])
}

/// Runs `ditto bench syscall` and prints its table.
pub fn main(reps: usize) -> ExitCode {
    match syscall_bench(reps) {
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
