//! `ditto pair`: runs a program as two replicas, primary and secondary, each a ditto VMM
//! process pinned to its own cores, and reports whether they diverged (DESIGN.md §5-6).
//!
//! The supervisor (this module's [`main`]) creates the status page and a socket pair, then
//! starts itself twice as `ditto __replica` (hidden), one per role. The primary creates the
//! channel and sends its memfd to the secondary over the socket. The supervisor forwards
//! SIGINT/SIGTERM to the primary only (the secondary ends when the primary's log does), shows
//! a status line, waits for both, and writes the report from the secondary's findings, the
//! status page and both exit statuses.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use devices::replication::{
    Mismatch, Mode, ReplicaSetup, Replication, Role, STALL_FILE, STALL_REQUEST,
};
use replica::report::{
    Counters, Divergence, DivergenceKind, Event, EventKind, Outcome, ReplicaSummary, Report, Value,
    REPORT_SCHEMA,
};
use replica::status::{Counter, StatusPage};
use replica::ChannelConfig;

use crate::{parse_cores, vm_config, CoreList, ProgramArgs};

/// Exit status of `ditto pair` when the replicas diverged.
pub const EXIT_DIVERGED: u8 = 3;
/// Exit status when a replica died or the channel failed.
pub const EXIT_REPLICA_FAILED: u8 = 4;

/// The descriptor numbers a replica finds its peer socket and status page at.
const PEER_FD: i32 = 3;
const STATUS_FD: i32 = 4;

/// How the replicas agree on the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Both compute the Kendo schedule; re-entry times cross the channel.
    Det,
    /// The secondary follows the primary's logged turns.
    Follow,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Det => Mode::Det,
            ModeArg::Follow => Mode::Follow,
        }
    }
}

/// Channel and mode options, shared by the supervisor and the replicas.
#[derive(Args, Clone, Debug)]
pub struct PairOptions {
    /// How the replicas agree on the thread schedule.
    #[arg(long, value_enum, default_value = "det")]
    mode: ModeArg,
    /// The channel's ring size (K, M or G suffix).
    #[arg(long, default_value = "64M", value_parser = parse_ring)]
    channel_size: u64,
    /// Backpressure: the primary waits while this many records are unconsumed.
    #[arg(long, default_value_t = 65536)]
    max_lag_records: u64,
    /// Backpressure: the primary waits while this many bytes are unconsumed.
    #[arg(long, default_value = "32M", value_parser = parse_ring)]
    max_lag_bytes: u64,
}

/// A channel size or lag bound ([`crate::parse_bytes`]), between 64K and 4G.
fn parse_ring(s: &str) -> Result<u64, String> {
    let v = crate::parse_bytes(s)?;
    if !(64 << 10..=4 << 30).contains(&v) {
        return Err(format!("size '{}' must be between 64K and 4G", s.trim()));
    }
    Ok(v)
}

/// `ditto pair`.
#[derive(Args, Clone)]
pub struct PairArgs {
    #[command(flatten)]
    options: PairOptions,
    /// Host cores for the primary's vCPUs.
    #[arg(long, value_parser = parse_cores)]
    primary_cores: Option<CoreList>,
    /// Host cores for the secondary's vCPUs (disjoint from the primary's).
    #[arg(long, value_parser = parse_cores)]
    secondary_cores: Option<CoreList>,
    /// Where to write the JSON report (default: OUT/report.json).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Directory for the run's files: the report, the secondary's stdout/stderr, each
    /// replica's image state (default: a new directory under the system temp dir).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the status line even when stderr is not a terminal (once a second).
    #[arg(long)]
    status: bool,
    /// Do not print the readable summary at the end.
    #[arg(long)]
    quiet: bool,
    /// Seconds the secondary may make no progress after the primary ended before it is
    /// stopped; the report then says what each of its threads was waiting for.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    stall_timeout: u64,
    #[command(flatten)]
    program: ProgramArgs,
}

/// `ditto __replica` (internal): one replica of a pair.
#[derive(Args)]
pub struct ReplicaArgs {
    /// primary or secondary.
    #[arg(long)]
    role: String,
    #[command(flatten)]
    options: PairOptions,
    /// The run's directory.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    program: ProgramArgs,
}

fn online_cores() -> usize {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).max(1) as usize
}

/// The argument list that selects the same program in a replica.
fn program_flags(p: &ProgramArgs, cores: &[usize], state: Option<&Path>) -> Vec<String> {
    let mut v = Vec::new();
    match &p.image {
        Some(i) => {
            v.push("--image".into());
            v.push(i.clone());
            if let Some(s) = state {
                v.push("--state".into());
                v.push(s.display().to_string());
            }
        }
        None => {
            v.push("--root".into());
            v.push(p.root.display().to_string());
        }
    }
    v.push("--memory".into());
    v.push(p.memory.to_string());
    v.push("--seed".into());
    v.push(p.seed.to_string());
    if p.no_seccomp {
        v.push("--no-seccomp".into());
    }
    v.push("--cores".into());
    v.push(
        cores
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    v
}

fn option_flags(o: &PairOptions) -> Vec<String> {
    vec![
        "--mode".into(),
        match o.mode {
            ModeArg::Det => "det".into(),
            ModeArg::Follow => "follow".into(),
        },
        "--channel-size".into(),
        o.channel_size.to_string(),
        "--max-lag-records".into(),
        o.max_lag_records.to_string(),
        "--max-lag-bytes".into(),
        o.max_lag_bytes.to_string(),
    ]
}

fn spawn_replica(
    role: &str,
    flags: Vec<String>,
    command: &[std::ffi::OsString],
    peer: OwnedFd,
    status: &StatusPage,
    secondary: bool,
) -> std::io::Result<Child> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("__replica").arg("--role").arg(role).args(flags);
    if !command.is_empty() {
        cmd.arg("--").args(command);
    }
    if secondary {
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
    }
    let peer_raw = peer.as_raw_fd();
    let status_raw = status.fd().as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec: dup2, setpgid and
    // sigprocmask on the child's own state.
    unsafe {
        cmd.pre_exec(move || {
            // Move both out of the way first: either may sit on the other's target.
            let peer = libc::fcntl(peer_raw, libc::F_DUPFD, 10);
            let status = libc::fcntl(status_raw, libc::F_DUPFD, 10);
            if peer < 0
                || status < 0
                || libc::dup2(peer, PEER_FD) < 0
                || libc::dup2(status, STATUS_FD) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(peer);
            libc::close(status);
            // Own process group: a terminal's Ctrl-C reaches the supervisor only, which
            // forwards it to the primary alone.
            libc::setpgid(0, 0);
            // A replica does not outlive its supervisor.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop(peer);
    child
}

fn block_forwarded_signals() -> libc::sigset_t {
    // SAFETY: building a sigset and blocking it in this thread (inherited by threads).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn describe_exit(s: std::process::ExitStatus) -> (Option<i32>, String) {
    match (s.code(), s.signal()) {
        (Some(c), _) => (Some(c), format!("exited {c}")),
        (None, Some(sig)) => (Some(128 + sig), format!("killed by signal {sig}")),
        _ => (None, "unknown".into()),
    }
}

fn human(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn status_line(st: &StatusPage, mode: Mode) -> String {
    let sent = st.get(Counter::RecordsSent);
    let consumed = st.get(Counter::RecordsConsumed);
    format!(
        "pair {}: turns {} / {}, records {} sent, lag {} records, {} compared in {} outputs{}",
        mode.name(),
        st.get(Counter::PrimaryTurns),
        st.get(Counter::SecondaryTurns),
        sent,
        sent.saturating_sub(consumed),
        human(st.get(Counter::BytesCompared)),
        st.get(Counter::ComparedOutputs),
        if st.get(Counter::Diverged) != 0 {
            ", DIVERGED"
        } else {
            ""
        }
    )
}

/// The image the demo runs when `ditto pair` is given no program.
const DEMO_IMAGE: &str = "redis";
/// Requests the demo's built-in client makes.
const DEMO_REQUESTS: usize = 300;

/// Runs `ditto pair`. Without a program or image: the demo, a replicated redis driven by a
/// short built-in load, then stopped.
/// Whether `ditto pair` runs without seccomp filters (its replicas too).
pub fn no_seccomp(a: &PairArgs) -> bool {
    a.program.no_seccomp
}

/// Whether a replica runs without seccomp filters.
pub fn replica_no_seccomp(a: &ReplicaArgs) -> bool {
    a.program.no_seccomp
}

pub fn main(a: &PairArgs) -> ExitCode {
    if a.program.image.is_none() && a.program.command.is_empty() {
        return demo(a);
    }
    match supervise(a) {
        Ok(code) => ExitCode::from(code),
        Err((code, msg)) => {
            eprintln!("ditto: {msg}");
            ExitCode::from(code)
        }
    }
}

fn supervise(a: &PairArgs) -> Result<u8, (u8, String)> {
    let p = &a.program;
    if p.cores.is_some() {
        return Err((
            crate::EXIT_BAD_INPUT,
            "ditto pair takes --primary-cores and --secondary-cores, not --cores".into(),
        ));
    }
    let n = online_cores();
    let primary_cores = a
        .primary_cores
        .clone()
        .map(|c| c.0)
        .unwrap_or_else(|| vec![0]);
    let secondary_cores = a
        .secondary_cores
        .clone()
        .map(|c| c.0)
        .unwrap_or_else(|| vec![if n > 1 { 1 } else { 0 }]);
    if n > 1 && primary_cores.iter().any(|c| secondary_cores.contains(c)) {
        return Err((
            crate::EXIT_BAD_INPUT,
            format!(
                "--primary-cores {primary_cores:?} and --secondary-cores {secondary_cores:?} overlap; replicas run on disjoint cores"
            ),
        ));
    }
    // Resolve (and build) the program once here, so bad input fails before any replica.
    drop(vm_config(p)?);
    let out = match &a.out {
        Some(d) => d.clone(),
        None => tempfile::Builder::new()
            .prefix("ditto-pair-")
            .tempdir()
            .map_err(|e| {
                (
                    crate::EXIT_HOST_ERROR,
                    format!("cannot create a run directory: {e}"),
                )
            })?
            .keep(),
    };
    std::fs::create_dir_all(&out).map_err(|e| {
        (
            crate::EXIT_HOST_ERROR,
            format!("cannot create {}: {e}", out.display()),
        )
    })?;
    // A given --state directory seeds both replicas' own state directories (a config
    // with the port to use, say); each replica then writes only to its own copy.
    if let Some(seed) = &p.state {
        for role in ["primary-state", "secondary-state"] {
            crate::image_cmd::copy_tree(seed, &out.join(role)).map_err(|e| {
                (
                    crate::EXIT_HOST_ERROR,
                    format!("cannot seed {role} from {}: {e}", seed.display()),
                )
            })?;
        }
    }
    let report_path = a.report.clone().unwrap_or_else(|| out.join("report.json"));
    let status = StatusPage::create().map_err(|e| {
        (
            crate::EXIT_HOST_ERROR,
            format!("cannot create the status page: {e}"),
        )
    })?;
    let (s0, s1) =
        socketpair().map_err(|e| (crate::EXIT_HOST_ERROR, format!("socketpair: {e}")))?;
    let set = block_forwarded_signals();
    let t0 = Instant::now();
    let mode: Mode = a.options.mode.into();
    let mut pflags = option_flags(&a.options);
    pflags.extend(["--out".into(), out.display().to_string()]);
    let mut sflags = pflags.clone();
    pflags.extend(program_flags(
        p,
        &primary_cores,
        Some(&out.join("primary-state")),
    ));
    sflags.extend(program_flags(
        p,
        &secondary_cores,
        Some(&out.join("secondary-state")),
    ));
    let host = |e: std::io::Error| {
        (
            crate::EXIT_HOST_ERROR,
            format!("cannot start a replica: {e}"),
        )
    };
    let mut primary =
        spawn_replica("primary", pflags, &p.command, s0, &status, false).map_err(host)?;
    let mut secondary = match spawn_replica("secondary", sflags, &p.command, s1, &status, true) {
        Ok(c) => c,
        Err(e) => {
            let _ = primary.kill();
            let _ = primary.wait();
            return Err(host(e));
        }
    };

    // For tools and tests that watch a replica (e.g. to kill one and see it reported).
    let _ = std::fs::write(out.join("primary.pid"), primary.id().to_string());
    let _ = std::fs::write(out.join("secondary.pid"), secondary.id().to_string());

    // Forward SIGINT/SIGTERM/SIGHUP/SIGQUIT to the primary only.
    let primary_pid = primary.id() as i32;
    let done = Arc::new(AtomicBool::new(false));
    let forwarded = Arc::new(AtomicI32::new(0));
    {
        let done = done.clone();
        let forwarded = forwarded.clone();
        std::thread::spawn(move || {
            devices::seccomp::apply_or_exit(devices::seccomp::Kind::Supervisor);
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 50_000_000,
            };
            while !done.load(Ordering::Relaxed) {
                // SAFETY: waiting on our own blocked set with a timeout.
                let s = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
                if s > 0 {
                    forwarded.store(s, Ordering::Relaxed);
                    // SAFETY: signalling the child we started (its pid is ours until waited).
                    unsafe { libc::kill(primary_pid, s) };
                }
            }
        });
    }
    let show_status = a.status || std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = show_status.then(|| {
        let b = if a.status && !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            None
        } else {
            let b = indicatif::ProgressBar::new_spinner();
            b.enable_steady_tick(Duration::from_millis(250));
            Some(b)
        };
        (b, Instant::now())
    });
    // Both replicas run: from here on the supervisor only waits, signals and writes
    // the report (the spinner's thread already exists and keeps its own freedom).
    devices::seccomp::apply_or_exit(devices::seccomp::Kind::Supervisor);
    let mut bar = bar;
    let mut p_status = None;
    let mut s_status = None;
    let mut p_done_at: Option<Instant> = None;
    let mut last_progress = 0u64;
    let mut last_progress_at = Instant::now();
    let mut stalled = false;
    loop {
        if p_status.is_none() {
            if let Ok(Some(s)) = primary.try_wait() {
                p_status = Some(s);
                p_done_at = Some(Instant::now());
            }
        }
        if s_status.is_none() {
            if let Ok(Some(s)) = secondary.try_wait() {
                s_status = Some(s);
            }
        }
        if p_status.is_some() && s_status.is_some() {
            break;
        }
        // After the primary's end the secondary may lag far behind (it takes turns one
        // thread at a time); it is stuck only when it stops making progress.
        let progress = status.get(Counter::RecordsConsumed) + status.get(Counter::SecondaryTurns);
        if progress != last_progress {
            last_progress = progress;
            last_progress_at = Instant::now();
        }
        if let (Some(_), None) = (p_done_at, &s_status) {
            if last_progress_at.elapsed() > Duration::from_secs(a.stall_timeout) {
                eprintln!(
                    "ditto: the secondary made no progress for {} s after the primary ended; stopping it",
                    a.stall_timeout
                );
                describe_secondary(&out);
                let _ = secondary.kill();
                stalled = true;
            }
        }
        if let Some((b, last)) = &mut bar {
            let line = status_line(&status, mode);
            match b {
                Some(b) => b.set_message(line),
                None => {
                    if last.elapsed() >= Duration::from_secs(1) {
                        eprintln!("ditto: {line}");
                        *last = Instant::now();
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done.store(true, Ordering::Relaxed);
    if let Some((Some(b), _)) = &bar {
        b.finish_and_clear();
    }
    let wall = t0.elapsed();
    let (p_code, p_desc) = describe_exit(p_status.expect("waited"));
    let (s_code, s_desc) = describe_exit(s_status.expect("waited"));

    // The secondary's findings, if it got to write them.
    let part = out.join("secondary-part.json");
    let mut report = Report::load(&part).unwrap_or_else(|_| empty_report());
    report.schema = REPORT_SCHEMA;
    report.mode = mode.name().into();
    report.program = program_words(p);
    report.wall_seconds = wall.as_secs_f64();
    report.primary.cores = primary_cores;
    report.primary.exit_status = p_code;
    report.primary.exit = Some(p_desc.clone());
    report.secondary.cores = secondary_cores;
    report.secondary.exit_status = s_code;
    if report.secondary.exit.is_none() {
        report.secondary.exit = Some(s_desc.clone());
    }
    if stalled {
        // What its threads were waiting for, as the secondary wrote it down.
        let why = std::fs::read_to_string(out.join(STALL_FILE))
            .unwrap_or_else(|_| "(the secondary did not describe its state)".into());
        report.secondary.error = Some(format!(
            "stopped: no progress for {} s after the primary ended; {}",
            a.stall_timeout,
            why.trim_end()
        ));
    }
    let primary_log = out.join("primary-error.txt");
    if let Ok(e) = std::fs::read_to_string(&primary_log) {
        report.primary.error = Some(e.trim().to_string());
    }
    fill_counters(&mut report.counters, &status);
    let primary_ok = p_status.is_some_and(|s| s.code().is_some());
    report.outcome = if report.first_divergence.is_some() {
        Outcome::Diverged
    } else if report.channel_error.is_some() {
        Outcome::ChannelError
    } else if !primary_ok && forwarded.load(Ordering::Relaxed) == 0 {
        if report.primary.error.is_none() {
            report.primary.error = Some(format!("the primary {p_desc}"));
        }
        Outcome::ReplicaFailed
    } else if report.secondary.error.is_some() || s_code.is_none() {
        Outcome::ReplicaFailed
    } else if report.primary.error.is_some() {
        // The primary stopped replicating (a record it could not send...) and ran on
        // alone: whatever the secondary compared, the pair did not replicate the run.
        Outcome::ReplicaFailed
    } else {
        Outcome::Identical
    };
    if let Err(e) = report.save(&report_path) {
        eprintln!("ditto: cannot write the report: {e}");
    }
    if !a.quiet {
        eprintln!("{}", report.summary());
        eprintln!("ditto: report: {}", report_path.display());
    }
    Ok(match report.outcome {
        Outcome::Diverged => EXIT_DIVERGED,
        Outcome::ChannelError | Outcome::ReplicaFailed => EXIT_REPLICA_FAILED,
        Outcome::Identical => p_code.unwrap_or(1).clamp(0, 255) as u8,
    })
}

/// Asks the secondary to write down what its threads wait for ([`STALL_REQUEST`]) and
/// gives it up to two seconds to do so ([`STALL_FILE`]).
fn describe_secondary(out: &Path) {
    let answer = out.join(STALL_FILE);
    let _ = std::fs::remove_file(&answer);
    if std::fs::write(out.join(STALL_REQUEST), b"").is_err() {
        return;
    }
    // The secondary renames a finished description into place, so existing is complete.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until && !answer.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn program_words(p: &ProgramArgs) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    if let Some(i) = &p.image {
        v.push(format!("--image {i}"));
    }
    v.extend(p.command.iter().map(|c| c.to_string_lossy().into_owned()));
    v
}

fn empty_report() -> Report {
    Report {
        schema: REPORT_SCHEMA,
        mode: String::new(),
        program: Vec::new(),
        outcome: Outcome::ReplicaFailed,
        primary: ReplicaSummary::default(),
        secondary: ReplicaSummary {
            error: Some("the secondary wrote no findings".into()),
            ..Default::default()
        },
        first_divergence: None,
        last_common: Vec::new(),
        counters: Counters::default(),
        channel_error: None,
        wall_seconds: 0.0,
    }
}

fn fill_counters(c: &mut Counters, st: &StatusPage) {
    c.records = st.get(Counter::RecordsSent);
    c.record_bytes = st.get(Counter::RecordBytes);
    c.recorded_syscalls = st.get(Counter::RecordedSyscalls);
    c.compared_outputs = st.get(Counter::ComparedOutputs);
    c.bytes_compared = st.get(Counter::BytesCompared);
    c.turns = st
        .get(Counter::PrimaryTurns)
        .max(st.get(Counter::SecondaryTurns));
    c.reentries = st.get(Counter::Reentries);
    c.signals = st.get(Counter::Signals);
    c.max_lag_records = st.get(Counter::MaxLagRecords);
    c.max_lag_bytes = st.get(Counter::MaxLagBytes);
}

fn socketpair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid out-array of two ints.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: socketpair just created both descriptors; they are ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The report's view of a mismatch.
fn divergence_of(m: &Mismatch) -> Divergence {
    let kind = match m.kind {
        "output" => DivergenceKind::Output,
        "exit" => DivergenceKind::Exit,
        "missing_event" => DivergenceKind::MissingEvent,
        "extra_event" => DivergenceKind::ExtraEvent,
        "signal" => DivergenceKind::Signal,
        "schedule" => DivergenceKind::Schedule,
        _ => DivergenceKind::Syscall,
    };
    let mut primary = Value::of(&m.primary, m.first_differing_byte);
    if let Some(h) = m.primary_hash {
        primary.hash = format!("{h:016x}");
    }
    Divergence {
        kind,
        thread: m.thread,
        syscall_seq: m.syscall_seq,
        syscall: m.syscall.clone(),
        primary_syscall: m.primary_syscall.clone(),
        fd: m.fd,
        logical_time: m.logical_time,
        turn: m.turn,
        primary,
        secondary: Value::of(&m.secondary, m.first_differing_byte),
        first_differing_byte: m.first_differing_byte,
        detail: m.detail.clone(),
    }
}

/// Runs `ditto __replica`: one replica of a pair.
pub fn replica_main(a: &ReplicaArgs) -> ExitCode {
    let role = match a.role.as_str() {
        "primary" => Role::Primary,
        "secondary" => Role::Secondary,
        other => {
            eprintln!("ditto: bad replica role '{other}'");
            return ExitCode::from(crate::EXIT_BAD_INPUT);
        }
    };
    let mut selection = match vm_config(&a.program) {
        Ok(s) => s,
        Err((code, e)) => {
            eprintln!("ditto: {e}");
            return ExitCode::from(code);
        }
    };
    // SAFETY: the supervisor put these descriptors here for us; nothing else owns them.
    let (peer, status_fd) = unsafe {
        (
            OwnedFd::from_raw_fd(PEER_FD),
            OwnedFd::from_raw_fd(STATUS_FD),
        )
    };
    let status = match StatusPage::attach(status_fd) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ditto: {} replica: status page: {e}", a.role);
            return ExitCode::from(crate::EXIT_HOST_ERROR);
        }
    };
    let mut channel = ChannelConfig::new(a.options.channel_size as usize);
    channel.max_lag_records = a.options.max_lag_records;
    channel.max_lag_bytes = a.options.max_lag_bytes;
    channel.peer_timeout = None;
    let rep = match Replication::connect(ReplicaSetup {
        role,
        mode: a.options.mode.into(),
        peer,
        channel,
        status,
        output_dir: a.out.clone(),
    }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ditto: {} replica: {e}", a.role);
            return ExitCode::from(crate::EXIT_HOST_ERROR);
        }
    };
    let c = &mut selection.config;
    c.det = true;
    c.det_preload = Some(guest_images::progs::libditto());
    c.replication = Some(rep.clone());
    if role == Role::Secondary {
        // The secondary sees the host's files but changes none: its writes would land on
        // the primary's files. Only its own image state directory is writable.
        let (rw, ro): (Vec<_>, Vec<_>) = std::mem::take(&mut c.writable)
            .into_iter()
            .partition(|(_, h)| h.starts_with(&a.out));
        c.writable = rw;
        c.read_only = ro;
        c.read_only_root = true;
    }
    let result = vmm::run(c);
    let code = match &result {
        Ok(out) => {
            if let devices::process::ExitReason::Signaled { report, .. } = &out.exit {
                if !report.is_empty() {
                    eprintln!("ditto: {} replica: {report}", a.role);
                }
            }
            out.exit.status() as u8
        }
        Err(e) => {
            eprintln!("ditto: {} replica: {e}", a.role);
            if e.is_bad_input() {
                crate::EXIT_BAD_INPUT
            } else {
                crate::EXIT_HOST_ERROR
            }
        }
    };
    // The VMM itself failed (not the program): never part of an `identical` pair, even when
    // both replicas' VMMs fail the same way.
    let vmm_error = match &result {
        Ok(out) => match &out.exit {
            devices::process::ExitReason::Signaled { report, .. }
                if report.starts_with(vmm::VMM_ERROR_PREFIX) =>
            {
                Some(report.clone())
            }
            _ => None,
        },
        Err(e) => Some(e.to_string()),
    };
    match role {
        Role::Primary => {
            if let Some(e) = rep.primary_error().or(vmm_error) {
                let _ = std::fs::write(a.out.join("primary-error.txt"), e);
            }
        }
        Role::Secondary => {
            let f = rep.findings();
            let mut report = empty_report();
            report.secondary.error = None;
            report.first_divergence = f.mismatch.as_ref().map(divergence_of);
            report.last_common = f
                .history
                .iter()
                .map(|e| Event {
                    thread: e.thread,
                    syscall_seq: e.syscall_seq,
                    syscall: e.syscall.clone(),
                    kind: match e.kind {
                        "compared" => EventKind::Compared,
                        "exit" => EventKind::Exit,
                        _ => EventKind::Recorded,
                    },
                    result: e.result,
                    bytes: e.bytes,
                })
                .collect();
            report.channel_error = f.channel_error.clone();
            report.secondary.exit = Some(match (&result, &f.stopped) {
                (_, Some(why)) => format!("stopped: {why}"),
                (Ok(out), None) => match &out.exit {
                    devices::process::ExitReason::Exited(s) => format!("exited {s}"),
                    devices::process::ExitReason::Signaled { signal, .. } => {
                        format!("killed by signal {signal}")
                    }
                },
                (Err(e), None) => format!("failed: {e}"),
            });
            report.secondary.error = vmm_error;
            let _ = report.save(a.out.join("secondary-part.json"));
        }
    }
    ExitCode::from(code)
}

/// `ditto pair` without a program: redis (built on first use) as a pair on a free port,
/// a short load from a built-in client (SET, GET, INCR, LPUSH, EXPIRE, DEBUG DIGEST), then
/// SIGTERM, and the report's summary.
fn demo(a: &PairArgs) -> ExitCode {
    let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => {
            eprintln!("ditto: cannot find a free port: {e}");
            return ExitCode::from(crate::EXIT_HOST_ERROR);
        }
    };
    eprintln!(
        "ditto: no program given; running the demo: the {DEMO_IMAGE} image as a pair ({} mode) on 127.0.0.1:{port}, {DEMO_REQUESTS} requests, then SIGTERM",
        Mode::from(a.options.mode).name()
    );
    let mut program = a.program.clone();
    program.image = Some(DEMO_IMAGE.into());
    program.command = vec!["--port".into(), port.to_string().into()];
    let args = PairArgs {
        options: a.options.clone(),
        primary_cores: a.primary_cores.clone(),
        secondary_cores: a.secondary_cores.clone(),
        report: a.report.clone(),
        out: a.out.clone(),
        status: a.status,
        quiet: a.quiet,
        stall_timeout: a.stall_timeout,
        program,
    };
    // The load runs beside the supervisor; when done it asks the supervisor to stop the
    // primary, exactly as a user's Ctrl-C would. Blocked first, so that the SIGTERM reaches
    // the supervisor's forwarder and no other thread.
    block_forwarded_signals();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = demo_load(port);
        // SAFETY: signalling our own process; the supervisor's forwarder takes SIGTERM.
        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        let _ = tx.send(r);
    });
    let code = main(&args);
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(n)) => eprintln!("ditto: demo: {n} requests answered"),
        Ok(Err(e)) => eprintln!("ditto: demo load failed: {e}"),
        Err(_) => eprintln!("ditto: demo load did not finish"),
    }
    code
}

/// Speaks RESP to redis: `DEMO_REQUESTS` commands, every reply checked.
fn demo_load(port: u16) -> std::io::Result<usize> {
    use std::io::{BufRead, BufReader, Write};
    // The first run builds the image from Debian packages, which takes a while.
    let deadline = Instant::now() + Duration::from_secs(600);
    let stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let mut call = |parts: &[&str]| -> std::io::Result<String> {
        let mut req = format!("*{}\r\n", parts.len());
        for p in parts {
            req.push_str(&format!("${}\r\n{p}\r\n", p.len()));
        }
        w.write_all(req.as_bytes())?;
        let mut line = String::new();
        r.read_line(&mut line)?;
        if let Some(n) = line
            .strip_prefix('$')
            .and_then(|n| n.trim().parse::<usize>().ok())
        {
            let mut body = vec![0u8; n + 2];
            std::io::Read::read_exact(&mut r, &mut body)?;
            return Ok(String::from_utf8_lossy(&body[..n]).into_owned());
        }
        if line.starts_with('-') {
            return Err(std::io::Error::other(line.trim().to_string()));
        }
        Ok(line.trim().to_string())
    };
    let mut n = 0;
    for i in 0..DEMO_REQUESTS / 3 {
        let k = format!("key:{}", i % 16);
        call(&["SET", &k, &i.to_string()])?;
        call(&["INCR", "counter"])?;
        call(&["LPUSH", "list", &k])?;
        n += 3;
    }
    call(&["EXPIRE", "list", "600"])?;
    let digest = call(&["DEBUG", "DIGEST"])?;
    eprintln!("ditto: demo: DEBUG DIGEST {digest}");
    Ok(n + 2)
}
