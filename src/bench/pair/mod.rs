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
use std::time::Duration;

use replica::report::{Outcome, Report};

use crate::bench::proc::{ditto_exe, Proc};

mod tables;
mod workloads;

use tables::{print_channel, print_tables};
use workloads::{channel, mongoose_rows, nginx_rows, pbzip2_rows, redis_rows};

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
    /// Turns each replica's det runtime took (primary, secondary).
    turns: (u64, u64),
    /// VM exits of each replica (primary, secondary).
    exits: (u64, u64),
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
                turns: (c.primary_turns, c.secondary_turns),
                exits: (c.primary_exits, c.secondary_exits),
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
            turns: (0, 0),
            exits: (0, 0),
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
    /// Turns and exits per request, when the run counted and ditto counted them.
    per_request: Option<PerRequest>,
}

/// What a run cost per request of its workload (the workload's own count: redis-benchmark's
/// requests, wrk's, pbzip2's blocks), counted over the whole run, start-up included.
#[derive(Clone, Copy, Default)]
struct PerRequest {
    /// Det turns (the primary's, in a pair); 0 without `--det`.
    turns: f64,
    /// VM exits (the primary's, in a pair).
    exits: f64,
    /// The secondary's VM exits, in a pair.
    secondary_exits: Option<f64>,
}

/// A `key=value` of `ditto run --stats`'s line in a run's stderr.
fn stat(stderr: &str, key: &str) -> Option<f64> {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("ditto: stats:"))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// The run's turns and exits per request: from `--stats` in its stderr for `ditto run`,
/// from its report for a pair; None natively or when they are missing.
fn per_request(
    cfg: Config,
    out: &Path,
    pair: Option<&PairInfo>,
    requests: f64,
) -> Option<PerRequest> {
    if requests <= 0.0 {
        return None;
    }
    match (cfg, pair) {
        (Config::Native, _) => None,
        (_, Some(p)) => Some(PerRequest {
            turns: p.turns.0 as f64 / requests,
            exits: p.exits.0 as f64 / requests,
            secondary_exits: Some(p.exits.1 as f64 / requests),
        }),
        _ => {
            let text = std::fs::read_to_string(out.join("stderr.txt")).ok()?;
            Some(PerRequest {
                turns: stat(&text, "det_turns").unwrap_or(0.0) / requests,
                exits: stat(&text, "exits")? / requests,
                secondary_exits: None,
            })
        }
    }
}

/// Builds a run's [`Sample`] from its measurement, a note on how its process ended (when it
/// had to be killed or ended badly), and (for a pair) its report. The value counts unless
/// the measurement failed or the pair was not identical; a bad end alone is noted.
fn sample(
    measured: Result<(f64, f64), (String, String)>,
    stop_note: Option<String>,
    out: &Path,
    cfg: Config,
) -> Sample {
    let pair = cfg.pair_mode().map(|_| pair_info(out));
    let per_request = measured
        .as_ref()
        .ok()
        .and_then(|&(_, requests)| per_request(cfg, out, pair.as_ref(), requests));
    let measured = measured.map(|(v, _)| v);
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
                per_request,
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
    let (value, per_request) = match (measured, bad_pair) {
        (Ok(v), None) => {
            parts.push(format!("measured {v:.2}, kept"));
            (Some(v), per_request)
        }
        (Ok(v), Some(_)) => {
            parts.push(format!("measured {v:.2}, left out"));
            (None, None)
        }
        (Err(_), _) => (None, None),
    };
    Sample {
        value,
        problem: Some((tag, parts.join("; "))),
        pair,
        per_request,
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
    /// Turns and exits per request of the runs that counted.
    per_request: Vec<PerRequest>,
}

impl Cell {
    fn add(&mut self, s: Sample) {
        self.values.extend(s.value);
        self.per_request.extend(s.per_request);
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

    /// The median of one per-request figure over the runs that counted.
    fn per_request_median(&self, f: impl Fn(&PerRequest) -> Option<f64>) -> Option<f64> {
        let mut v: Vec<f64> = self.per_request.iter().filter_map(f).collect();
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
    /// Extra time per unit of work of `cfg` over `base`, in percent.
    fn overhead_pct(&self, cfg: Config, base: Config) -> Option<f64> {
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
                Some((ratio - 1.0) * 100.0)
            }
            _ => None,
        }
    }

    fn overhead(&self, cfg: Config, base: Config) -> String {
        self.overhead_pct(cfg, base)
            .map_or("—".into(), |p| format!("{p:.1}%"))
    }
}

/// A workload's name short enough to stand under its bars: the program and what varies
/// between its rows (threads, clients).
fn chart_label(name: &str) -> String {
    let words: Vec<&str> = name.split_whitespace().collect();
    match words.first().copied() {
        Some("redis") => match words.iter().position(|w| *w == "-c") {
            Some(i) if i + 1 < words.len() => format!("redis -c {}", words[i + 1]),
            _ => "redis".into(),
        },
        Some("mongoose") => words
            .iter()
            .take(3)
            .copied()
            .collect::<Vec<_>>()
            .join(" ")
            .trim_end_matches(',')
            .to_string(),
        Some("pbzip2") => words.iter().take(2).copied().collect::<Vec<_>>().join(" "),
        Some(first) => first.to_string(),
        None => String::new(),
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
                c.args(["run", "--stats", "--cores", &self.primary_cores]);
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
                let counts = s.per_request.map_or(String::new(), |p| {
                    format!(" ({:.1} turns, {:.1} exits per request)", p.turns, p.exits)
                });
                eprintln!(
                    "ditto: bench pair: {what}, {}: {:.2}{counts}",
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

/// The host cores for the primary (and the single VM) and for the secondary: each half of
/// the online cores, as `ditto pair` core lists.
pub(crate) fn core_split() -> (String, String) {
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
pub fn main(quick: bool, only: Option<&str>, reps: usize, svg: Option<&Path>) -> ExitCode {
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
    if let Some(dir) = svg.filter(|_| !rows.is_empty()) {
        let bars: Vec<crate::bench::plot::OverheadBars> = rows
            .iter()
            .map(|r| crate::bench::plot::OverheadBars {
                workload: chart_label(&r.name),
                det: r.overhead_pct(Config::PairDet, Config::Run),
                follow: r.overhead_pct(Config::PairFollow, Config::Run),
                thesis_det: crate::bench::plot::thesis_percent(r.thesis_det),
                thesis_follow: crate::bench::plot::thesis_percent(r.thesis_follow),
            })
            .collect();
        let path = dir.join("pair-overhead.svg");
        match crate::bench::plot::overhead_chart(
            &path,
            "ditto pair: extra time over one VM, beside the thesis's (vs native)",
            &bars,
        ) {
            Ok(()) => println!("\nChart: {}", path.display()),
            Err(e) => failed.push(format!("- the chart: {e}")),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::{chart_label, stat};

    #[test]
    fn stats_line_values_are_found_by_key() {
        let err = "ditto: warning: x=1\nditto: stats: status=0 syscalls=90 exits=42 det_ops=7 det_turns=5 wall=1.5ms\n";
        assert_eq!(stat(err, "exits"), Some(42.0));
        assert_eq!(stat(err, "det_turns"), Some(5.0));
        assert_eq!(stat(err, "turns"), None);
        assert_eq!(stat(err, "x"), None);
        assert_eq!(stat("no stats here", "exits"), None);
    }

    #[test]
    fn chart_labels_are_short() {
        assert_eq!(chart_label("redis set,get -n 1000 -c 16"), "redis -c 16");
        assert_eq!(
            chart_label("mongoose 8 threads, wrk -c100 2s 50 KB"),
            "mongoose 8 threads"
        );
        assert_eq!(chart_label("pbzip2 -p4 8 MB"), "pbzip2 -p4");
        assert_eq!(chart_label("nginx wrk -c10 2s small.html (612 B)"), "nginx");
    }
}
