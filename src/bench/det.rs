//! `ditto bench det`: what deterministic execution costs, measured in one run.
//!
//! - µs per uncontended `det_start`+`det_end` pair, and per contended hand-off with 2 and 4
//!   threads (the guest program `detbench`), with the VM exits per det operation and the
//!   section ends posted through the det page without an exit (`--stats`);
//! - racey (4 threads) with and without `--det`;
//! - pbzip2 `-p2` and `-p4` without `--det`, with it, and with it but without libditto's work
//!   hints (`DITTO_WORK_HINTS=0`), as overhead %, when the pbzip2 image can be built. The
//!   three are measured in turn within each repetition, so that drift in the shared host's
//!   load spreads over all three.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

/// One `ditto run` of a program: its wall time, stdout and the `--stats` counters.
struct Run {
    wall_s: f64,
    stdout: String,
    exits: f64,
    det_ops: f64,
    det_posted: f64,
}

fn stat(stderr: &str, key: &str) -> f64 {
    stderr
        .split(&format!(" {key}="))
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// How a program is run.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// `ditto run`.
    Plain,
    /// `ditto run --det`.
    Det,
    /// `ditto run --det` with `DITTO_WORK_HINTS=0` (libditto's work hints off).
    DetWithoutHints,
}

fn ditto_run(
    mode: Mode,
    root: Option<&Path>,
    argv: &[&str],
    stdin: Option<&Path>,
) -> Result<Run, String> {
    let mut c = Command::new(std::env::current_exe().unwrap_or_else(|_| PathBuf::from("ditto")));
    c.arg("run").arg("--stats");
    match mode {
        Mode::Plain => {}
        Mode::Det => {
            c.arg("--det").env_remove("DITTO_WORK_HINTS");
        }
        Mode::DetWithoutHints => {
            c.arg("--det").env("DITTO_WORK_HINTS", "0");
        }
    }
    if let Some(r) = root {
        c.arg("--root").arg(r);
    }
    c.arg("--").args(argv);
    match stdin {
        Some(p) => c.stdin(std::fs::File::open(p).map_err(|e| e.to_string())?),
        None => c.stdin(Stdio::null()),
    };
    let t = Instant::now();
    let out = c.output().map_err(|e| e.to_string())?;
    let wall_s = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{argv:?} ({mode:?}) failed: {}\n{stderr}",
            out.status
        ));
    }
    Ok(Run {
        wall_s,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        exits: stat(&stderr, "exits"),
        det_ops: stat(&stderr, "det_ops"),
        det_posted: stat(&stderr, "det_posted"),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// detbench under --det: (µs per pair, exits per det op, posted ends per det op), medians
/// over `reps`. A det op is a token acquisition (one per pair).
fn detbench(prog: &Path, args: &[&str], reps: usize) -> Result<(f64, f64, f64), String> {
    let mut us = Vec::new();
    let mut exits = Vec::new();
    let mut posted = Vec::new();
    for _ in 0..reps {
        let mut argv = vec![prog.to_str().unwrap_or_default()];
        argv.extend_from_slice(args);
        let r = ditto_run(Mode::Det, None, &argv, None)?;
        let ns: f64 = r
            .stdout
            .split_whitespace()
            .nth(3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("unexpected detbench output: {}", r.stdout))?;
        us.push(ns / 1e3);
        exits.push(r.exits / r.det_ops.max(1.0));
        posted.push(r.det_posted / r.det_ops.max(1.0));
    }
    Ok((median(us), median(exits), median(posted)))
}

/// The median wall time of each mode over `reps` repetitions, the modes taking turns within
/// each repetition.
fn timed<const N: usize>(
    modes: [Mode; N],
    root: Option<&Path>,
    argv: &[&str],
    stdin: Option<&Path>,
    reps: usize,
) -> Result<[f64; N], String> {
    let mut v: [Vec<f64>; N] = std::array::from_fn(|_| Vec::new());
    for _ in 0..reps {
        for (i, mode) in modes.iter().enumerate() {
            v[i].push(ditto_run(*mode, root, argv, stdin)?.wall_s);
        }
    }
    Ok(v.map(median))
}

fn bench(reps: usize) -> Result<(), String> {
    let prog = |n: &str| {
        guest_images::progs::path(n).ok_or_else(|| format!("guest program '{n}' is not built"))
    };
    let db = prog("detbench")?;
    println!("| det operation | µs | VM exits per det op | ends posted without exit per det op |");
    println!("|---|---:|---:|---:|");
    for (name, args) in [
        (
            "det_start+det_end, uncontended (per pair)",
            vec!["pair", "20000"],
        ),
        (
            "contended hand-off, 2 threads (per pair)",
            vec!["handoff", "2", "3000"],
        ),
        (
            "contended hand-off, 4 threads (per pair)",
            vec!["handoff", "4", "1500"],
        ),
    ] {
        let (us, exits, posted) = detbench(&db, &args, reps)?;
        println!("| {name} | {us:.2} | {exits:.2} | {posted:.2} |");
    }

    println!();
    println!("| program | without --det (s) | with --det (s) | overhead |");
    println!("|---|---:|---:|---:|");
    let racey = prog("racey-det")?;
    let argv = [racey.to_str().unwrap_or_default(), "4", "1000"];
    let [plain, det] = timed([Mode::Plain, Mode::Det], None, &argv, None, reps)?;
    println!(
        "| racey 4 threads x 1000 | {plain:.3} | {det:.3} | {:+.0}% |",
        (det / plain - 1.0) * 100.0
    );

    match guest_images::image::open("pbzip2", &Default::default()) {
        Ok(img) => {
            let dir = std::env::temp_dir().join(format!("ditto-bench-det-{}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let input = dir.join("input");
            // Compressible but not trivial: a text-like pseudo-random stream.
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            let data: Vec<u8> = (0..(16usize << 20))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    b"etaoin shrdlu\n"[(x % 14) as usize]
                })
                .collect();
            std::fs::write(&input, data).map_err(|e| e.to_string())?;
            println!();
            println!(
                "| program | without --det (s) | --det (s) | overhead | --det without work hints (s) | overhead |"
            );
            println!("|---|---:|---:|---:|---:|---:|");
            for p in ["-p2", "-p4"] {
                let argv = ["/usr/bin/pbzip2", p, "-c", "-b9"];
                let modes = [Mode::Plain, Mode::Det, Mode::DetWithoutHints];
                let [plain, det, unhinted] =
                    timed(modes, Some(&img.root), &argv, Some(&input), reps)?;
                let overhead = |t: f64| (t / plain - 1.0) * 100.0;
                println!(
                    "| pbzip2 {p} (16 MiB) | {plain:.3} | {det:.3} | {:+.0}% | {unhinted:.3} | {:+.0}% |",
                    overhead(det),
                    overhead(unhinted)
                );
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(e) => println!("| pbzip2 | - | - | image unavailable: {e} |"),
    }
    Ok(())
}

/// Runs `ditto bench det` and prints its tables.
pub fn main(reps: usize) -> ExitCode {
    match bench(reps) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ditto: bench det: {e}");
            ExitCode::from(1)
        }
    }
}
