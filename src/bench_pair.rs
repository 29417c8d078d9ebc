//! `ditto bench pair`: what replication costs, measured in one run.
//!
//! Each workload runs in five configurations: natively (the image's own binary and
//! libraries, through its dynamic loader, outside any VM), a single VM (`ditto run`),
//! `ditto run --det`, and `ditto pair` in `det` and in `follow` mode. The table gives each
//! one's overhead against native and against the single VM, beside the figures of the
//! thesis that ditto follows (the thesis's baseline was native);
//! a second table gives, for each pair run, the outcome and counters of its report
//! (`OUT/report.json`), and a third the channel's own throughput between two processes
//! ([`replica::bench`]).
//!
//! - Native runs (under `taskset`), the single VM and `--det` runs get the primary's
//!   cores, so every configuration gives the program the same cores; the secondary runs on
//!   the others.
//! - Every run is bounded: batch runs by a timeout, servers by a bounded load (request
//!   count or duration, itself under a timeout) and a bounded stop. A server is stopped by
//!   SIGTERM to the `ditto run` or `ditto pair` process this benchmark started; if it has not
//!   ended within the grace period, its own child processes (the replicas) and then it are
//!   killed by PID.
//! - A run whose measurement fails or times out, or a pair run that does not end
//!   `identical`, is reported as such and left out of the medians. A run that measured but
//!   then did not stop cleanly keeps its value, with a note. The run directory (report,
//!   stderr) of every run with a problem is kept.
//!
//! The channel benchmark needs a consumer process: this program starts itself with
//! [`CONSUMER_ENV`] set, and [`main`] then acts as the consumer only.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use guest_images::image::{self, BuildOptions};
use replica::report::{Outcome, Report};

use crate::bench_servers::{
    ditto_exe, free_port, mongoose_state, native_cmd, native_mongoose, native_nginx, native_redis,
    nginx_state, pbzip2_input, redis_benchmark, test_body, wrk_with, Proc,
};

/// Set in the environment of the channel benchmark's consumer process (to its record count):
/// `ditto bench pair` then only consumes.
pub const CONSUMER_ENV: &str = "DITTO_BENCH_CHANNEL_CONSUMER";

/// The workloads `--only` accepts.
const WORKLOADS: [&str; 5] = ["pbzip2", "redis", "nginx", "mongoose", "channel"];

/// One way of running a workload.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    Native,
    Run,
    RunDet,
    PairDet,
    PairFollow,
}

const CONFIGS: [Config; 5] = [
    Config::Native,
    Config::Run,
    Config::RunDet,
    Config::PairDet,
    Config::PairFollow,
];

impl Config {
    fn label(self) -> &'static str {
        match self {
            Config::Native => "native",
            Config::Run => "run",
            Config::RunDet => "run --det",
            Config::PairDet => "pair det",
            Config::PairFollow => "pair follow",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Config::Native => "native",
            Config::Run => "run",
            Config::RunDet => "run-det",
            Config::PairDet => "pair-det",
            Config::PairFollow => "pair-follow",
        }
    }

    /// Its place in [`CONFIGS`] (and in a row's cells).
    fn index(self) -> usize {
        CONFIGS.iter().position(|&c| c == self).unwrap_or(0)
    }

    /// `ditto pair --mode`, for the pair configurations.
    fn pair_mode(self) -> Option<&'static str> {
        match self {
            Config::PairDet => Some("det"),
            Config::PairFollow => Some("follow"),
            _ => None,
        }
    }
}

/// What a pair run's report said.
#[derive(Clone)]
struct PairInfo {
    /// The report's outcome, or `no report`.
    outcome: String,
    identical: bool,
    records: u64,
    record_bytes: u64,
    bytes_compared: u64,
    max_lag_records: u64,
    max_lag_bytes: u64,
    /// Why it was not identical, one line.
    detail: Option<String>,
    /// How each replica ended, in words.
    ends: String,
}

fn pair_info(out: &Path) -> PairInfo {
    let path = out.join("report.json");
    match Report::load(&path) {
        Ok(r) => {
            let detail = r
                .first_divergence
                .as_ref()
                .map(|d| d.detail.clone())
                .or(r.channel_error.clone())
                .or(r.primary.error.clone())
                .or(r.secondary.error.clone());
            let c = &r.counters;
            PairInfo {
                outcome: r.outcome.to_string(),
                identical: r.outcome == Outcome::Identical,
                records: c.records,
                record_bytes: c.record_bytes,
                bytes_compared: c.bytes_compared,
                max_lag_records: c.max_lag_records,
                max_lag_bytes: c.max_lag_bytes,
                detail: (r.outcome != Outcome::Identical).then(|| detail.unwrap_or_default()),
                ends: format!(
                    "primary {}, secondary {}",
                    r.primary.exit.as_deref().unwrap_or("?"),
                    r.secondary.exit.as_deref().unwrap_or("?")
                ),
            }
        }
        Err(e) => PairInfo {
            outcome: "no report".into(),
            identical: false,
            records: 0,
            record_bytes: 0,
            bytes_compared: 0,
            max_lag_records: 0,
            max_lag_bytes: 0,
            detail: Some(e.to_string()),
            ends: String::new(),
        },
    }
}

/// One run's result: a value when it counts, otherwise a short tag and a line saying why.
struct Sample {
    value: Option<f64>,
    problem: Option<(String, String)>,
    pair: Option<PairInfo>,
}

/// Builds a run's [`Sample`] from its measurement, a note on how its process ended (when it
/// had to be killed or ended badly), and (for a pair) its report. The value counts unless
/// the measurement failed or the pair was not identical; a bad end alone is noted.
fn sample(
    measured: Result<f64, (String, String)>,
    stop_note: Option<String>,
    out: &Path,
    cfg: Config,
) -> Sample {
    let pair = cfg.pair_mode().map(|_| pair_info(out));
    let bad_pair = pair.as_ref().filter(|p| !p.identical);
    // The tag: the pair's verdict, else the measurement's error, else the bad end.
    let tag = match (bad_pair, &measured, &stop_note) {
        (Some(p), _, _) => p.outcome.clone(),
        (None, Err((tag, _)), _) => tag.clone(),
        (None, Ok(_), Some(_)) => "bad end".into(),
        (None, Ok(_), None) => {
            return Sample {
                value: measured.ok(),
                problem: None,
                pair,
            }
        }
    };
    let mut parts: Vec<String> = Vec::new();
    parts.extend(bad_pair.and_then(|p| p.detail.clone()));
    if let Err((t, why)) = &measured {
        // Under its own tag the measurement's error needs no prefix.
        parts.push(if *t == tag {
            why.clone()
        } else {
            format!("{t}: {why}")
        });
    }
    parts.extend(stop_note);
    if let Some(p) = pair.as_ref().filter(|p| !p.ends.is_empty()) {
        parts.push(format!("pair {}: {}", p.outcome, p.ends));
    }
    let value = match (measured, bad_pair) {
        (Ok(v), None) => {
            parts.push(format!("measured {v:.2}, kept"));
            Some(v)
        }
        (Ok(v), Some(_)) => {
            parts.push(format!("measured {v:.2}, left out"));
            None
        }
        (Err(_), _) => None,
    };
    Sample {
        value,
        problem: Some((tag, parts.join("; "))),
        pair,
    }
}

/// The samples of one configuration of one workload, over the repetitions.
#[derive(Default)]
struct Cell {
    values: Vec<f64>,
    /// (tag, detail) of each run that had a problem.
    problems: Vec<(String, String)>,
    /// Outcomes of the pair runs.
    outcomes: Vec<String>,
    /// The report of the first pair run that was not identical, else the last one.
    pair: Option<PairInfo>,
}

impl Cell {
    fn add(&mut self, s: Sample) {
        self.values.extend(s.value);
        self.problems.extend(s.problem);
        if let Some(p) = s.pair {
            self.outcomes.push(p.outcome.clone());
            if self.pair.as_ref().is_none_or(|q| q.identical) {
                self.pair = Some(p);
            }
        }
    }

    fn median(&self) -> Option<f64> {
        let mut v = self.values.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied()
    }

    /// The value, marked `*` when some runs had a problem, or the first problem's tag.
    fn show(&self, digits: usize) -> String {
        match (self.median(), self.problems.first()) {
            (Some(v), None) => format!("{v:.digits$}"),
            (Some(v), Some(_)) => format!("{v:.digits$} *"),
            (None, Some((tag, _))) => tag.clone(),
            (None, None) => "—".into(),
        }
    }
}

/// One workload: its four configurations and the thesis's figures.
struct Row {
    name: String,
    unit: &'static str,
    /// Requests per second (true) or seconds (false).
    higher_is_better: bool,
    cells: Vec<Cell>,
    thesis_follow: &'static str,
    thesis_det: &'static str,
}

impl Row {
    fn new(
        name: String,
        unit: &'static str,
        higher: bool,
        thesis: (&'static str, &'static str),
    ) -> Row {
        Row {
            name,
            unit,
            higher_is_better: higher,
            cells: CONFIGS.iter().map(|_| Cell::default()).collect(),
            thesis_follow: thesis.0,
            thesis_det: thesis.1,
        }
    }

    /// The overhead of configuration `cfg` against `base`, in percent of the base's time
    /// per unit of work.
    fn overhead(&self, cfg: Config, base: Config) -> String {
        match (
            self.cells[base.index()].median(),
            self.cells[cfg.index()].median(),
        ) {
            (Some(base), Some(x)) if base > 0.0 && x > 0.0 => {
                let ratio = if self.higher_is_better {
                    base / x
                } else {
                    x / base
                };
                format!("{:.1}%", (ratio - 1.0) * 100.0)
            }
            _ => "—".into(),
        }
    }
}

/// Where the replicas run and where the runs' directories go.
struct Ctx {
    primary_cores: String,
    secondary_cores: String,
    runs: PathBuf,
    seq: usize,
    reps: usize,
}

impl Ctx {
    /// A new directory for one run.
    fn out_dir(&mut self, what: &str, cfg: Config) -> Result<PathBuf, String> {
        self.seq += 1;
        let slug: String = what
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let d = self
            .runs
            .join(format!("{:03}-{slug}-{}", self.seq, cfg.slug()));
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        Ok(d)
    }

    /// The command for `cfg`: `native` pinned to the primary's cores, or `ditto run` or
    /// `ditto pair`; stderr to OUT/stderr.txt.
    fn command(
        &self,
        cfg: Config,
        out: &Path,
        (image, native): (&str, Command),
        state: bool,
        args: &[String],
    ) -> Result<Command, String> {
        let mut c = Command::new(ditto_exe());
        match cfg.pair_mode() {
            None if cfg == Config::Native => {
                c = Command::new("taskset");
                c.args(["-c", &self.primary_cores])
                    .arg(native.get_program())
                    .args(native.get_args());
                if let Some(dir) = native.get_current_dir() {
                    c.current_dir(dir);
                }
            }
            None => {
                c.args(["run", "--cores", &self.primary_cores]);
                if cfg == Config::RunDet {
                    c.arg("--det");
                }
                c.args(["--image", image]);
                if state {
                    c.arg("--state").arg(out.join("state"));
                }
            }
            Some(mode) => {
                c.args(["pair", "--mode", mode, "--quiet"])
                    .args(["--primary-cores", &self.primary_cores])
                    .args(["--secondary-cores", &self.secondary_cores])
                    .arg("--out")
                    .arg(out)
                    .args(["--image", image]);
            }
        }
        if cfg != Config::Native {
            c.arg("--");
        }
        c.args(args);
        let err = std::fs::File::create(out.join("stderr.txt")).map_err(|e| e.to_string())?;
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
        Ok(c)
    }

    /// The state directories a run of `cfg` reads its image's writable files from.
    fn state_dirs(cfg: Config, out: &Path) -> Vec<PathBuf> {
        match cfg.pair_mode() {
            None if cfg == Config::Native => Vec::new(),
            None => vec![out.join("state")],
            Some(_) => vec![out.join("primary-state"), out.join("secondary-state")],
        }
    }

    /// Removes a run's directory when the run counted; keeps it otherwise.
    fn done(&self, out: &Path, s: &Sample, what: &str, cfg: Config) {
        match &s.problem {
            None => {
                let _ = std::fs::remove_dir_all(out);
                eprintln!(
                    "ditto: bench pair: {what}, {}: {:.2}",
                    cfg.label(),
                    s.value.unwrap_or(0.0)
                );
            }
            Some((tag, why)) => {
                eprintln!(
                    "ditto: bench pair: {what}, {}: {tag}: {why} (see {})",
                    cfg.label(),
                    out.display()
                );
            }
        }
    }
}

/// `msg`, followed by the last non-empty line of the run's stderr when there is one.
fn with_stderr(msg: impl std::fmt::Display, out: &Path) -> String {
    let text = std::fs::read_to_string(out.join("stderr.txt")).unwrap_or_default();
    match text.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(line) => format!("{msg}: {line}"),
        None => msg.to_string(),
    }
}

/// Ends a server run: SIGTERM and a bounded wait (longer for a pair, whose secondary drains
/// the log after the primary ends). Returns a note when the run had to be killed, or ended
/// badly and `ended_already_said` is false.
fn stop(p: Proc, cfg: Config, out: &Path, ended_already_said: bool) -> Option<String> {
    let grace = Duration::from_secs(if cfg.pair_mode().is_some() { 45 } else { 20 });
    let s = p.terminate(grace);
    if s.killed {
        return Some(format!(
            "did not end within {} s of SIGTERM; killed",
            grace.as_secs()
        ));
    }
    match s.status {
        // A server ends with status 0 or by the SIGTERM it was sent; a pair also with 3
        // or 4, which its report explains.
        Some(st)
            if cfg.pair_mode().is_none()
                && !ended_already_said
                && !st.success()
                && st.code() != Some(128 + libc::SIGTERM)
                && st.signal() != Some(libc::SIGTERM) =>
        {
            Some(with_stderr(st, out))
        }
        _ => None,
    }
}

/// One batch run (pbzip2) in `dir`: wall seconds, bounded by `timeout`.
fn batch(
    ctx: &mut Ctx,
    cfg: Config,
    (what, native): (&str, Command),
    dir: &Path,
    args: &[String],
    timeout: Duration,
) -> Result<Sample, String> {
    let out = ctx.out_dir(what, cfg)?;
    let mut cmd = ctx.command(cfg, &out, ("pbzip2", native), false, args)?;
    cmd.current_dir(dir);
    let t = Instant::now();
    let mut p = Proc::new(
        cmd.spawn()
            .map_err(|e| format!("cannot start ditto: {e}"))?,
    );
    let status = p.wait_exit(timeout);
    let wall = t.elapsed().as_secs_f64();
    let measured = match status {
        None => {
            let s = p.terminate(Duration::from_secs(10));
            let how = if s.killed { "; killed" } else { "" };
            Err((
                "timeout".to_string(),
                format!("still running after {} s{how}", timeout.as_secs()),
            ))
        }
        // A pair's 3 (diverged) and 4 (replica failed) are explained by its report.
        Some(st)
            if st.success()
                || (cfg.pair_mode().is_some()
                    && [crate::pair::EXIT_DIVERGED, crate::pair::EXIT_REPLICA_FAILED]
                        .map(i32::from)
                        .contains(&st.code().unwrap_or(0))) =>
        {
            Ok(wall)
        }
        Some(st) => Err(("failed".to_string(), with_stderr(st, &out))),
    };
    let s = sample(measured, None, &out, cfg);
    ctx.done(&out, &s, what, cfg);
    Ok(s)
}

/// A server workload: the image, its arguments and state files for a port, and the load.
struct Server<'a> {
    image: &'static str,
    /// The native server on a port, with the run's directory for its files.
    native: &'a dyn Fn(&Path, u16) -> Result<Command, String>,
    args: &'a dyn Fn(u16) -> Vec<String>,
    prepare: &'a dyn Fn(&Path, u16) -> Result<(), String>,
    load: &'a dyn Fn(u16) -> Result<f64, String>,
}

/// One server run: start, wait for the port, load, stop.
fn serve(ctx: &mut Ctx, cfg: Config, what: &str, srv: &Server) -> Result<Sample, String> {
    let out = ctx.out_dir(what, cfg)?;
    let port = free_port()?;
    for state in Ctx::state_dirs(cfg, &out) {
        (srv.prepare)(&state, port)?;
    }
    let native = (srv.native)(&out, port)?;
    let args = if cfg == Config::Native {
        Vec::new()
    } else {
        (srv.args)(port)
    };
    let mut cmd = ctx.command(cfg, &out, (srv.image, native), true, &args)?;
    let mut p = Proc::new(
        cmd.spawn()
            .map_err(|e| format!("cannot start ditto: {e}"))?,
    );
    let (measured, ended) = match p.wait_port(port) {
        // wait_port's error says how the server ended when it ended by itself.
        Err(e) => (Err(("no server".to_string(), with_stderr(e, &out))), true),
        Ok(()) => (
            (srv.load)(port).map_err(|e| ("load failed".to_string(), e)),
            false,
        ),
    };
    if !ended {
        // Bounded; a server that keeps a connection open is stopped anyway.
        replica::testkit::wait_connections_closed(port, Duration::from_secs(10));
    }
    let note = stop(p, cfg, &out, ended);
    let s = sample(measured, note, &out, cfg);
    ctx.done(&out, &s, what, cfg);
    Ok(s)
}

fn pbzip2_rows(ctx: &mut Ctx, mb: usize) -> Result<Vec<Row>, String> {
    let img = image::open("pbzip2", &BuildOptions::default()).map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    pbzip2_input(dir.path(), mb)?;
    let mut rows = Vec::new();
    for (threads, thesis) in [(2, ("0.89%", "14.27%")), (4, ("4.08%", "29.47%"))] {
        let what = format!("pbzip2 -p{threads} {mb} MB");
        let mut row = Row::new(what.clone(), "s", false, thesis);
        let args: Vec<String> = vec![format!("-p{threads}"), "-c".into(), "data".into()];
        for _ in 0..ctx.reps {
            for (i, cfg) in CONFIGS.into_iter().enumerate() {
                // Ten times the single VM's time, at least a minute.
                let base = row.cells[Config::Run.index()].median().unwrap_or(mb as f64);
                let timeout = Duration::from_secs_f64((base * 10.0).max(60.0));
                let mut native = native_cmd(&img, "/usr/bin/pbzip2");
                native.current_dir(dir.path());
                let s = batch(ctx, cfg, (&what, native), dir.path(), &args, timeout)?;
                row.cells[i].add(s);
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

fn server_rows(
    ctx: &mut Ctx,
    what: &str,
    thesis: (&'static str, &'static str),
    srv: &Server,
) -> Result<Row, String> {
    let mut row = Row::new(what.to_string(), "req/s", true, thesis);
    for _ in 0..ctx.reps {
        for (i, cfg) in CONFIGS.into_iter().enumerate() {
            let s = serve(ctx, cfg, what, srv)?;
            row.cells[i].add(s);
        }
    }
    Ok(row)
}

fn redis_rows(ctx: &mut Ctx, n: u64) -> Result<Vec<Row>, String> {
    let img = image::open("redis", &BuildOptions::default()).map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for (clients, thesis) in [
        (2, ("11.9%", "30.4%")),
        (16, ("26.9%", "41.1%")),
        (50, ("—", "—")),
    ] {
        // SET and GET, n each, at no less than 50 requests a second.
        let timeout = Duration::from_secs(30 + 2 * n / 50);
        let load = move |port| redis_benchmark(port, n, clients, 1, timeout).map(|r| r.0);
        let img = &img;
        let srv = Server {
            image: "redis",
            native: &|dir, port| native_redis(img, dir, port),
            args: &|port| vec!["--port".into(), port.to_string()],
            prepare: &|_, _| Ok(()),
            load: &load,
        };
        let what = format!("redis set,get -n {n} -c {clients}");
        rows.push(server_rows(ctx, &what, thesis, &srv)?);
    }
    Ok(rows)
}

fn nginx_rows(ctx: &mut Ctx, secs: u32) -> Result<Vec<Row>, String> {
    let img = image::open("nginx", &BuildOptions::default()).map_err(|e| e.to_string())?;
    // Without the image's thread pool (`aio threads`): the pool hands finished reads back
    // through nginx's own spinlock, which follow mode cannot order (docs/pair.md), and one
    // configuration for all five columns keeps them comparable. A 612-byte file is read in
    // the event loop either way.
    let conf = std::fs::read_to_string(img.root.join("etc/nginx/ditto.conf"))
        .map_err(|e| e.to_string())?
        .replace("aio threads;", "aio off;");
    let body = test_body(612);
    let img = &img;
    let srv = Server {
        image: "nginx",
        native: &|dir, port| native_nginx(img, &conf, dir, port, ("small.html", &body)),
        args: &|_| Vec::new(),
        prepare: &|state, port| nginx_state(state, &conf, port, "small.html", &body),
        load: &|port| {
            wrk_with(&format!("http://127.0.0.1:{port}/small.html"), secs, 10).map(|r| r.0)
        },
    };
    let what = format!("nginx wrk -c10 {secs}s small.html (612 B)");
    Ok(vec![server_rows(ctx, &what, ("1-2%", "1.6-3%"), &srv)?])
}

fn mongoose_rows(ctx: &mut Ctx, secs: u32) -> Result<Vec<Row>, String> {
    let img = image::open("mongoose", &BuildOptions::default()).map_err(|e| e.to_string())?;
    let conf = std::fs::read_to_string(img.root.join("etc/civetweb/ditto.conf"))
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for (threads, thesis) in [
        (4, ("1.35%", "25.22%")),
        (8, ("0.27%", "15.72%")),
        (16, ("0.23%", "9.82%")),
    ] {
        let args = move |_| vec!["-num_threads".to_string(), threads.to_string()];
        let img = &img;
        let conf = &conf;
        let srv = Server {
            image: "mongoose",
            native: &|dir, port| native_mongoose(img, conf, dir, port, threads),
            args: &args,
            prepare: &|state, port| mongoose_state(state, conf, port),
            load: &|port| {
                wrk_with(&format!("http://127.0.0.1:{port}/50k.html"), secs, 100).map(|r| r.0)
            },
        };
        let what = format!("mongoose {threads} threads, wrk -c100 {secs}s 50 KB");
        rows.push(server_rows(ctx, &what, thesis, &srv)?);
    }
    Ok(rows)
}

/// The channel benchmark's results: record size, record count, and each repetition's result.
type ChannelRows = Vec<(
    usize,
    u64,
    Result<Vec<replica::bench::StreamResult>, String>,
)>;

/// The channel benchmark at 64 B and 1 KiB records.
fn channel(reps: usize) -> ChannelRows {
    // channel_peer bench's counts: well under a second each, so --quick keeps them.
    [(64usize, 2_000_000u64), (1024, 500_000)]
        .into_iter()
        .map(|(size, count)| {
            let runs = (0..reps)
                .map(|_| {
                    let mut consumer = Command::new(ditto_exe());
                    consumer
                        .args(["bench", "pair", "--only", "channel"])
                        .env(CONSUMER_ENV, count.to_string())
                        .stdin(Stdio::null());
                    let r = replica::bench::stream(size, count, &mut consumer);
                    match &r {
                        Ok(r) => eprintln!(
                            "ditto: bench pair: channel {size} B: {:.0} records/s",
                            r.records_per_sec()
                        ),
                        Err(e) => eprintln!("ditto: bench pair: channel {size} B: {e}"),
                    }
                    r
                })
                .collect();
            (size, count, runs)
        })
        .collect()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn print_tables(rows: &[Row], ctx: &Ctx) {
    if rows.is_empty() {
        return;
    }
    println!(
        "Overhead = extra time per unit of work, median of {} run(s); native runs, the single VM and the primary on cores {}, the secondary on cores {}. The thesis's figures are against native Linux.",
        ctx.reps, ctx.primary_cores, ctx.secondary_cores
    );
    println!();
    println!("| workload | unit | native | run | run --det | pair det | pair follow |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for r in rows {
        let digits = if r.higher_is_better { 1 } else { 2 };
        let cells: Vec<String> = r.cells.iter().map(|c| c.show(digits)).collect();
        println!("| {} | {} | {} |", r.name, r.unit, cells.join(" | "));
    }
    println!();
    println!("| workload | run vs native | run --det vs native | pair det vs native | pair follow vs native | run --det vs run | pair det vs run | pair follow vs run | thesis follow | thesis det |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        use Config::*;
        let o = |c, b| r.overhead(c, b);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            o(Run, Native),
            o(RunDet, Native),
            o(PairDet, Native),
            o(PairFollow, Native),
            o(RunDet, Run),
            o(PairDet, Run),
            o(PairFollow, Run),
            r.thesis_follow,
            r.thesis_det
        );
    }
    println!();
    println!("| workload | pair mode | outcome | records | MB of records | MB compared | max lag (records / KiB) |");
    println!("|---|---|---|---:|---:|---:|---:|");
    for r in rows {
        for (i, cfg) in CONFIGS.into_iter().enumerate() {
            let (Some(mode), Some(p)) = (cfg.pair_mode(), r.cells[i].pair.as_ref()) else {
                continue;
            };
            let outs = &r.cells[i].outcomes;
            let outcome = if outs.iter().all(|o| o == &outs[0]) {
                outs[0].clone()
            } else {
                let n = outs.iter().filter(|o| *o == "identical").count();
                format!("identical {n} of {}, else {}", outs.len(), p.outcome)
            };
            println!(
                "| {} | {mode} | {outcome} | {} | {:.1} | {:.1} | {} / {:.0} |",
                r.name,
                p.records,
                mib(p.record_bytes),
                mib(p.bytes_compared),
                p.max_lag_records,
                p.max_lag_bytes as f64 / 1024.0
            );
        }
    }
    let notes: Vec<String> =
        rows.iter()
            .flat_map(|r| {
                CONFIGS.into_iter().enumerate().flat_map(move |(i, cfg)| {
                    r.cells[i].problems.iter().map(move |(tag, why)| {
                        format!("- {}, {}: {tag}: {why}", r.name, cfg.label())
                    })
                })
            })
            .collect();
    if !notes.is_empty() {
        println!();
        println!("Runs with a problem (`*` in the table: some runs of that cell had one; only values marked kept are in the medians):");
        for n in notes {
            println!("{n}");
        }
    }
}

fn print_channel(rows: &ChannelRows) {
    println!();
    println!("| channel record | records | records/s | MB/s | avg lag (records / KiB) | max lag (records / KiB) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (size, count, r) in rows {
        match r {
            Ok(v) => {
                // The median run by throughput.
                let mut v = v.clone();
                v.sort_by(|a, b| a.records_per_sec().total_cmp(&b.records_per_sec()));
                let m = v[v.len() / 2];
                println!(
                    "| {size} B | {count} | {:.0} | {:.1} | {:.0} / {:.0} | {} / {:.0} |",
                    m.records_per_sec(),
                    m.mb_per_sec(),
                    m.avg_lag_records,
                    m.avg_lag_bytes / 1024.0,
                    m.max_lag_records,
                    m.max_lag_bytes as f64 / 1024.0
                );
            }
            Err(e) => println!("| {size} B | {count} | failed: {e} | | | |"),
        }
    }
}

/// The host cores for the primary (and the single VM) and for the secondary: each half of
/// the online cores, as `ditto pair` core lists.
fn core_split() -> (String, String) {
    // SAFETY: sysconf has no preconditions.
    let n = (unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).max(1) as usize;
    let half = (n / 2).max(1);
    let list = |lo: usize, hi: usize| {
        if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        }
    };
    let secondary = if n >= 2 {
        list(half, 2 * half - 1)
    } else {
        "0".into()
    };
    (list(0, half - 1), secondary)
}

/// Runs `ditto bench pair`. `quick` shortens every run; with it, each measurement runs once
/// unless `--reps` was given on the command line.
pub fn main(quick: bool, only: Option<&str>, reps: usize) -> ExitCode {
    if let Ok(count) = std::env::var(CONSUMER_ENV) {
        let count = count.parse().unwrap_or(0);
        return match replica::bench::consume(count) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ditto: bench pair: channel consumer: {e}");
                ExitCode::from(1)
            }
        };
    }
    if let Some(o) = only.filter(|o| !WORKLOADS.contains(o)) {
        eprintln!(
            "ditto: bench: unknown workload {o:?}: expected one of {}",
            WORKLOADS.join(", ")
        );
        return ExitCode::from(2);
    }
    let reps_given = std::env::args().any(|a| a == "--reps" || a.starts_with("--reps="));
    let reps = if quick && !reps_given { 1 } else { reps.max(1) };
    let want = |name: &str| only.is_none_or(|o| o == name);
    let runs = match tempfile::Builder::new()
        .prefix("ditto-bench-pair-")
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("ditto: bench: cannot create a directory for the runs: {e}");
            return ExitCode::from(1);
        }
    };
    let (primary_cores, secondary_cores) = core_split();
    let mut ctx = Ctx {
        primary_cores,
        secondary_cores,
        runs: runs.path().to_path_buf(),
        seq: 0,
        reps,
    };
    let secs = if quick { 2 } else { 10 };
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    type Workload = fn(&mut Ctx, bool, u32) -> Result<Vec<Row>, String>;
    let workloads: [(&str, Workload); 4] = [
        ("pbzip2", |c, q, _| pbzip2_rows(c, if q { 8 } else { 50 })),
        ("redis", |c, q, _| {
            redis_rows(c, if q { 1000 } else { 20_000 })
        }),
        ("nginx", |c, _, s| nginx_rows(c, s)),
        ("mongoose", |c, _, s| mongoose_rows(c, s)),
    ];
    for (name, f) in workloads {
        if want(name) {
            match f(&mut ctx, quick, secs) {
                Ok(r) => rows.extend(r),
                Err(e) => {
                    eprintln!("ditto: bench pair: {name}: {e}");
                    failed.push(format!("- {name}: not measured: {e}"));
                }
            }
        }
    }
    let channel_rows = if want("channel") {
        channel(reps)
    } else {
        Vec::new()
    };
    print_tables(&rows, &ctx);
    if !channel_rows.is_empty() {
        print_channel(&channel_rows);
    }
    if !failed.is_empty() {
        println!();
        for f in &failed {
            println!("{f}");
        }
    }
    let kept = std::fs::read_dir(runs.path())
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if kept {
        let dir = runs.keep();
        println!();
        println!(
            "Run directories of the runs left out (report.json, stderr.txt): {}",
            dir.display()
        );
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
