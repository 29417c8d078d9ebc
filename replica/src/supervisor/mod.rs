//! The supervisor of a pair: it creates the status page and a socket pair, starts this
//! program twice as `ditto __replica` (hidden), one per role, each pinned to its cores,
//! forwards SIGINT/SIGTERM/SIGHUP/SIGQUIT to the primary only (the secondary ends when the
//! primary's log does), shows a status line, waits for both, stops a secondary that makes no
//! progress after the primary ended, and writes the report from the secondary's findings,
//! the status page and both exit statuses (DESIGN.md §5-6).
//!
//! Failover ([`failover`]): when the primary dies and failover is on, the secondary is left
//! running to take over and the signals go to it; when the secondary dies, the primary runs
//! on unreplicated. Either is reported as `failed_over` when the survivor carried the
//! program on. `--kill-primary-after` / `--kill-secondary-after` inject the death.
//!
//! Its waiting is one event loop ([`events`]): a pidfd per replica, a signalfd for the
//! forwarded signals, a timerfd for the status line and the stall check, and with
//! `--metrics` the Prometheus endpoint's listener and connections ([`metrics`]).
//!
//! It runs no VM: it needs this crate (status page, report, the mode and stall-file names),
//! std, and what its caller hands it in a [`Plan`] (the replicas' flags, a seccomp
//! installer). The CLI's `pair` command builds the plan; `__replica`, which runs a VM, stays
//! in the CLI.

mod events;
mod failover;
mod metrics;

use std::cell::RefCell;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

use crate::findings::STALL_FILE;
use crate::report::{Counters, Died, Outcome, ReplicaSummary, Report, REPORT_SCHEMA};
use crate::role::Mode;
use crate::status::{Counter, StatusPage};
use events::{ForwardSignals, Pair, ReplicaExit, Stall, StatusLine, StatusTick, Which};
pub use failover::{vmm_error_file, Kill};

/// The descriptor numbers a replica finds its peer socket and status page at.
pub const PEER_FD: i32 = 3;
/// See [`PEER_FD`].
pub const STATUS_FD: i32 = 4;

/// What the supervisor runs and where the run's files go; the caller has checked the
/// flags, resolved the program and created [`Plan::out`].
pub struct Plan {
    /// How the replicas agree on the schedule (for the status line and the report).
    pub mode: Mode,
    /// Host cores of the primary's vCPUs (for the report).
    pub primary_cores: Vec<usize>,
    /// Host cores of the secondary's vCPUs (for the report).
    pub secondary_cores: Vec<usize>,
    /// The primary's `__replica` flags, after `--role primary`.
    pub primary_flags: Vec<String>,
    /// The secondary's `__replica` flags, after `--role secondary`.
    pub secondary_flags: Vec<String>,
    /// The program's arguments, passed to both replicas after `--`.
    pub command: Vec<OsString>,
    /// The program as the report names it.
    pub program_words: Vec<String>,
    /// The run's directory: the replicas' files, their pids, the secondary's findings.
    pub out: PathBuf,
    /// Where the report goes.
    pub report_path: PathBuf,
    /// Print the status line even when stderr is not a terminal (once a second).
    pub status: bool,
    /// Do not print the readable summary at the end.
    pub quiet: bool,
    /// Seconds the secondary may make no progress after the primary ended.
    pub stall_timeout: u64,
    /// `--metrics`: the bound listener `/metrics` is served on while the pair runs.
    pub metrics: Option<std::net::TcpListener>,
    /// Restricts the calling thread to the host syscalls the supervisor needs (its seccomp
    /// filter): called in this thread once both replicas run and the event loop's fds are
    /// made.
    pub restrict: fn(),
    /// A dead primary leaves the secondary running to take over (not `--no-failover`).
    pub failover: bool,
    /// `--kill-primary-after` / `--kill-secondary-after`: the replica to SIGKILL, and when.
    pub kill: Option<Kill>,
}

/// Starts this program as `ditto __replica --role ROLE FLAGS [-- COMMAND]` with `peer` at
/// [`PEER_FD`] and the status page at [`STATUS_FD`], in its own process group, killed when
/// the supervisor dies; the secondary reads no stdin and writes no stdout.
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

/// Blocks the signals the supervisor forwards to the primary, in this thread and the threads
/// it starts after, so that they stay pending for the supervisor's signalfd (no thread takes
/// them by default action); returns the set. The replicas unblock them before exec.
pub fn block_forwarded_signals() -> libc::sigset_t {
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
        (None, Some(sig)) => (
            Some(128 + sig),
            format!("killed by {}", crate::report::signal_name(sig)),
        ),
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

fn status_line(st: &StatusPage, mode: Mode, pair: &Pair) -> String {
    let sent = st.get(Counter::RecordsSent);
    let consumed = st.get(Counter::RecordsConsumed);
    format!(
        "pair {}: turns {} / {}, records {} sent, lag {} records, {} compared in {} outputs{}{}",
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
        },
        failover_status(st, pair, sent.saturating_sub(consumed))
    )
}

/// The status line's failover part: which replica died, when, and what the survivor does
/// (the secondary draining `lag` records, then live after its takeover time).
fn failover_status(st: &StatusPage, pair: &Pair, lag: u64) -> String {
    let Some(d) = &pair.death else {
        return String::new();
    };
    let at = d.at.saturating_duration_since(pair.started).as_secs_f64();
    let live_us = st.get(Counter::TakeoverMicros);
    match d.died {
        Died::Primary if live_us != 0 => format!(
            ", FAILED OVER: primary died at {at:.1} s ({}), secondary live after {:.1} ms",
            d.how,
            live_us as f64 / 1000.0
        ),
        Died::Primary if pair.failover && pair.secondary_exit.is_none() => format!(
            ", PRIMARY DIED at {at:.1} s ({}): secondary draining {lag} records",
            d.how
        ),
        Died::Primary => format!(", PRIMARY DIED at {at:.1} s ({})", d.how),
        Died::Secondary => format!(
            ", SECONDARY DIED at {at:.1} s ({}): primary serving unreplicated",
            d.how
        ),
    }
}

/// Runs the pair as `plan` says and writes its report (printing its summary unless
/// `quiet`); returns the report. An error is a host failure, one line: the status page, the
/// socket pair or a replica could not be created.
pub fn supervise(plan: Plan) -> Result<Report, String> {
    let Plan {
        mode,
        primary_cores,
        secondary_cores,
        primary_flags: pflags,
        secondary_flags: sflags,
        command,
        program_words,
        out,
        report_path,
        status: status_flag,
        quiet,
        stall_timeout,
        metrics,
        restrict,
        failover: failover_on,
        kill,
    } = plan;
    let status = StatusPage::create().map_err(|e| format!("cannot create the status page: {e}"))?;
    let (s0, s1) = socketpair().map_err(|e| format!("socketpair: {e}"))?;
    let set = block_forwarded_signals();
    let t0 = Instant::now();
    let t0_monotonic = failover::monotonic_now();
    let host = |e: std::io::Error| format!("cannot start a replica: {e}");
    let mut primary =
        spawn_replica("primary", pflags, &command, s0, &status, false).map_err(host)?;
    let secondary = match spawn_replica("secondary", sflags, &command, s1, &status, true) {
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
    if let Some(k) = kill {
        let pid = match k.target {
            Died::Primary => primary.id(),
            Died::Secondary => secondary.id(),
        };
        eprintln!(
            "ditto: the {} (pid {pid}) will be killed with SIGKILL at {:.3} s",
            k.target.as_str(),
            k.after.as_secs_f64()
        );
    }

    let show_status = status_flag || std::io::IsTerminal::is_terminal(&std::io::stderr());
    let line = if !show_status {
        StatusLine::Off
    } else if status_flag && !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        StatusLine::Printed {
            last: Instant::now(),
        }
    } else {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(250));
        StatusLine::Spinner(b)
    };
    let spinner = match &line {
        StatusLine::Spinner(b) => Some(b.clone()),
        _ => None,
    };
    let pair = Rc::new(RefCell::new(Pair {
        primary,
        secondary,
        primary_exit: None,
        primary_done_at: None,
        secondary_exit: None,
        forwarded: 0,
        stall: Stall::Watching,
        failover: failover_on,
        started: t0,
        out: out.clone(),
        death: None,
        killed: None,
    }));
    // Every fd of the loop is made and registered here, before the seccomp filter: under
    // it the loop only waits (epoll_wait), reads, signals, reaps and unregisters.
    let events = (|| -> std::io::Result<_> {
        let mut events: EventManager<Box<dyn MutEventSubscriber + '_>> =
            EventManager::new().map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        events.add_subscriber(Box::new(ReplicaExit::new(Which::Primary, pair.clone())?));
        events.add_subscriber(Box::new(ReplicaExit::new(Which::Secondary, pair.clone())?));
        // Forward SIGINT/SIGTERM/SIGHUP/SIGQUIT to the primary only.
        events.add_subscriber(Box::new(ForwardSignals::new(&set, pair.clone())?));
        events.add_subscriber(Box::new(StatusTick::new(
            &status,
            mode,
            line,
            out.clone(),
            stall_timeout,
            pair.clone(),
        )?));
        if let Some(k) = kill {
            events.add_subscriber(Box::new(failover::KillTimer::new(
                k,
                t0_monotonic,
                pair.clone(),
            )?));
        }
        if let Some(listener) = metrics {
            events.add_subscriber(Box::new(metrics::MetricsEndpoint::new(
                listener,
                &status,
                mode,
                pair.clone(),
            )?));
        }
        Ok(events)
    })();
    let mut events = match events {
        Ok(e) => e,
        Err(e) => {
            let p = &mut *pair.borrow_mut();
            for child in [&mut p.primary, &mut p.secondary] {
                let _ = child.kill();
                let _ = child.wait();
            }
            return Err(format!("cannot watch the replicas: {e}"));
        }
    };
    // Both replicas run: from here on the supervisor only waits, signals and writes
    // the report (the spinner's thread already exists and keeps its own freedom).
    restrict();
    while !pair.borrow().finished() {
        if let Err(e) = events.run() {
            // Never seen: epoll_wait fails only on a bad epoll fd or buffer.
            eprintln!("ditto: the supervisor's event loop failed: {e:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    drop(events);
    if let Some(b) = &spinner {
        b.finish_and_clear();
    }
    let pair = pair.borrow();
    let (p_status, s_status) = (pair.primary_exit, pair.secondary_exit);
    let primary_ended = pair.primary_done_at;
    let stalled = pair.stall == Stall::Stopped;
    let forwarded = pair.forwarded;
    let wall = t0.elapsed();
    let (p_code, p_desc) = describe_exit(p_status.expect("waited"));
    let (s_code, s_desc) = describe_exit(s_status.expect("waited"));

    // The secondary's findings, if it got to write them.
    let part = out.join("secondary-part.json");
    let mut report = Report::load(&part).unwrap_or_else(|_| empty_report());
    report.schema = REPORT_SCHEMA;
    report.mode = mode.name().into();
    report.program = program_words;
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
            stall_timeout,
            why.trim_end()
        ));
    }
    let primary_log = out.join("primary-error.txt");
    if let Ok(e) = std::fs::read_to_string(&primary_log) {
        report.primary.error = Some(e.trim().to_string());
    }
    fill_counters(&mut report.counters, &status);
    let primary_ok = p_status.is_some_and(|s| s.code().is_some());
    let failed_over = failover::fill_failover(
        &mut report,
        pair.death.as_ref(),
        pair.killed,
        t0,
        failover_on,
        primary_ended.map(|at| (at, p_desc.clone())),
    );
    report.outcome = if report.first_divergence.is_some() {
        Outcome::Diverged
    } else if report.channel_error.is_some() {
        Outcome::ChannelError
    } else if failed_over {
        Outcome::FailedOver
    } else if !primary_ok
        && (forwarded == 0 || pair.death.as_ref().is_some_and(|d| d.died == Died::Primary))
    {
        // A VMM never dies of a forwarded signal (it takes them as the program's), so a
        // primary killed after one was forwarded still died.
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
    if !quiet {
        eprintln!("{}", report.summary());
        eprintln!("ditto: report: {}", report_path.display());
    }
    Ok(report)
}

/// The report of a run whose secondary wrote no findings: outcome `replica_failed`; the
/// secondary starts from it too, when it writes its findings.
pub fn empty_report() -> Report {
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
        failover: None,
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
    c.primary_turns = st.get(Counter::PrimaryTurns);
    c.secondary_turns = st.get(Counter::SecondaryTurns);
    c.primary_exits = st.replica(false).exits;
    c.secondary_exits = st.replica(true).exits;
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
