//! The supervisor's event loop: one epoll set (rust-vmm's event-manager) with these kinds
//! of subscriber, all on the supervisor's own thread.
//!
//! - [`ReplicaExit`]: a pidfd per replica; when it turns readable the replica has ended and
//!   is reaped (`wait4`), its status kept in the [`Pair`].
//! - [`ForwardSignals`]: a signalfd for SIGINT/SIGTERM/SIGHUP/SIGQUIT, which stay blocked in
//!   every thread of the supervisor; each one read is sent on to the primary alone, or to
//!   the secondary once it survives a dead primary (failover).
//! - [`StatusTick`]: a 20 ms timerfd that refreshes the status line and watches for a
//!   secondary that makes no progress after the primary ended (the stall stop).
//! - [`super::failover::KillTimer`] (`--kill-*-after`): a one-shot timerfd that SIGKILLs one
//!   replica.
//!
//! The subscribers share the [`Pair`] (the children and what became of them); the loop runs
//! until both replicas are reaped and no stall description is pending.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::rc::Rc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::failover::{death_of, Death, Kill};
use super::status_line;
use crate::findings::{STALL_FILE, STALL_REQUEST};
use crate::report::Died;
use crate::role::Mode;
use crate::status::{Counter, StatusPage};

/// How often the status line is refreshed and the stall check made.
const TICK: Duration = Duration::from_millis(20);
/// How long a stalled secondary gets to describe what its threads wait for.
const DESCRIBE_GRACE: Duration = Duration::from_secs(2);

/// Where the stall stop stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stall {
    /// The secondary runs, or the primary has not ended yet.
    Watching,
    /// The secondary was asked to describe its state ([`STALL_REQUEST`]); it is stopped
    /// once the answer is there or at `until`.
    Describing {
        /// When the supervisor stops waiting for the answer.
        until: Instant,
    },
    /// The secondary was killed for making no progress.
    Stopped,
}

/// The two replicas and what became of them, shared by the loop's subscribers.
pub(super) struct Pair {
    /// The primary replica process.
    pub primary: Child,
    /// The secondary replica process.
    pub secondary: Child,
    /// The primary's exit status, once reaped.
    pub primary_exit: Option<ExitStatus>,
    /// When the primary was reaped.
    pub primary_done_at: Option<Instant>,
    /// The secondary's exit status, once reaped.
    pub secondary_exit: Option<ExitStatus>,
    /// The last signal forwarded to the primary (0: none).
    pub forwarded: i32,
    /// The stall stop's state.
    pub stall: Stall,
    /// Whether a dead primary leaves the secondary running to take over.
    pub failover: bool,
    /// When the replicas were started.
    pub started: Instant,
    /// The run directory (where a replica leaves its VMM error).
    pub out: PathBuf,
    /// The first replica death, once seen ([`super::failover`]).
    pub death: Option<Death>,
    /// The injected kill, once sent.
    pub killed: Option<Kill>,
}

impl Pair {
    /// Both replicas are reaped and no stall description is awaited: the loop is over.
    pub fn finished(&self) -> bool {
        self.primary_exit.is_some()
            && self.secondary_exit.is_some()
            && !matches!(self.stall, Stall::Describing { .. })
    }

    /// The secondary survives a dead primary and is (or is about to be) the program: it
    /// gets the forwarded signals, and its stall watch ends once it is live.
    pub fn secondary_takes_over(&self) -> bool {
        self.failover
            && self.secondary_exit.is_none()
            && self.death.as_ref().is_some_and(|d| d.died == Died::Primary)
    }

    /// A replica died and the other carries the program on (so far): the metrics'
    /// failover count. A dead primary counts once the secondary is live (`live`).
    pub fn failed_over(&self, live: bool) -> bool {
        self.failover
            && match self.death.as_ref().map(|d| d.died) {
                Some(Died::Primary) => live,
                Some(Died::Secondary) => true,
                None => false,
            }
    }
}

/// The [`Pair`] as the subscribers hold it (one thread: the supervisor's).
pub(super) type SharedPair = Rc<RefCell<Pair>>;

/// A subscriber's registration failed: the loop could never learn of its fd, so the
/// supervisor cannot go on (epoll_ctl ADD fails only for lack of memory or a bad fd).
pub(super) fn registered(what: &str, r: Result<(), event_manager::Error>) {
    if let Err(e) = r {
        panic!("ditto: cannot watch the {what}: {e:?}");
    }
}

/// Reads one fixed-size value from a non-blocking fd; `None` when nothing is there.
fn read_value<T: Copy>(fd: &OwnedFd) -> Option<T> {
    let mut v = std::mem::MaybeUninit::<T>::zeroed();
    // SAFETY: reading at most size_of::<T>() bytes into a buffer of that size we own.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            v.as_mut_ptr().cast(),
            std::mem::size_of::<T>(),
        )
    };
    // SAFETY: the kernel filled all of it (signalfd_siginfo and the timerfd's u64 are
    // plain data, valid for any bytes; zeroed besides).
    (n == std::mem::size_of::<T>() as isize).then(|| unsafe { v.assume_init() })
}

/// Which replica a [`ReplicaExit`] watches.
#[derive(Debug, Clone, Copy)]
pub(super) enum Which {
    /// The primary.
    Primary,
    /// The secondary.
    Secondary,
}

/// Learns of one replica's end from its pidfd and reaps it.
pub(super) struct ReplicaExit {
    which: Which,
    pidfd: OwnedFd,
    pair: SharedPair,
}

impl ReplicaExit {
    /// Opens a pidfd for the replica `which` (before the seccomp filter: pidfd_open is not
    /// in it).
    pub fn new(which: Which, pair: SharedPair) -> io::Result<Self> {
        let pid = match which {
            Which::Primary => pair.borrow().primary.id(),
            Which::Secondary => pair.borrow().secondary.id(),
        };
        // SAFETY: pidfd_open on our own unreaped child; it returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0u32) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pidfd_open just returned this descriptor (close-on-exec); it is ours.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(ReplicaExit { which, pidfd, pair })
    }
}

impl MutEventSubscriber for ReplicaExit {
    fn init(&mut self, ops: &mut EventOps) {
        registered("replica", ops.add(Events::new(&self.pidfd, EventSet::IN)));
    }

    fn process(&mut self, _events: Events, ops: &mut EventOps) {
        let mut pair = self.pair.borrow_mut();
        let child = match self.which {
            Which::Primary => &mut pair.primary,
            Which::Secondary => &mut pair.secondary,
        };
        // A readable pidfd is an ended (zombie) process, so this reaps it; an error (never
        // seen) leaves it unreaped, as the polling loop before did, but stops the wake-ups.
        let status = match child.try_wait() {
            Ok(None) => return,
            Ok(Some(s)) => Some(s),
            Err(_) => None,
        };
        let _ = ops.remove(Events::new(&self.pidfd, EventSet::IN));
        let Some(status) = status else { return };
        let role = match self.which {
            Which::Primary => Died::Primary,
            Which::Secondary => Died::Secondary,
        };
        // The secondary's death counts only while the primary runs; the stall stop's
        // kill is the supervisor's own.
        let counts = pair.death.is_none()
            && match role {
                Died::Primary => true,
                Died::Secondary => pair.primary_exit.is_none() && pair.stall != Stall::Stopped,
            };
        if counts {
            if let Some(how) = death_of(role, status, &pair.out) {
                pair.death = Some(Death {
                    died: role,
                    how,
                    at: Instant::now(),
                });
            }
        }
        match self.which {
            Which::Primary => {
                pair.primary_exit = Some(status);
                pair.primary_done_at = Some(Instant::now());
                // A stop signal forwarded to a primary that then died (killed before it
                // could act on it) was lost with it: the survivor gets it.
                if pair.secondary_takes_over() && pair.forwarded != 0 {
                    // SAFETY: signalling our unreaped child, the secondary.
                    unsafe { libc::kill(pair.secondary.id() as libc::pid_t, pair.forwarded) };
                }
            }
            Which::Secondary => pair.secondary_exit = Some(status),
        }
    }
}

/// Forwards the signals of `set` (blocked in every thread) to the primary only, or to the
/// secondary once it survives a dead primary.
pub(super) struct ForwardSignals {
    fd: OwnedFd,
    pair: SharedPair,
}

impl ForwardSignals {
    /// A non-blocking signalfd for `set`, which must already be blocked in every thread
    /// (otherwise a thread that has them unblocked takes them first).
    pub fn new(set: &libc::sigset_t, pair: SharedPair) -> io::Result<Self> {
        // SAFETY: a new signalfd for a valid sigset; it returns a new descriptor or -1.
        let fd = unsafe { libc::signalfd(-1, set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd just returned this descriptor; it is ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(ForwardSignals { fd, pair })
    }
}

impl MutEventSubscriber for ForwardSignals {
    fn init(&mut self, ops: &mut EventOps) {
        registered(
            "forwarded signals",
            ops.add(Events::new(&self.fd, EventSet::IN)),
        );
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        while let Some(info) = read_value::<libc::signalfd_siginfo>(&self.fd) {
            let s = info.ssi_signo as i32;
            let mut pair = self.pair.borrow_mut();
            let pid = if pair.secondary_takes_over() {
                pair.secondary.id()
            } else {
                pair.forwarded = s;
                if pair.primary_exit.is_some() {
                    // Reaped: its pid may be another process's by now.
                    continue;
                }
                pair.primary.id()
            };
            // SAFETY: signalling an unreaped child we started: its pid is still its own.
            unsafe { libc::kill(pid as libc::pid_t, s) };
        }
    }
}

/// How the status line is shown.
pub(super) enum StatusLine {
    /// Not at all.
    Off,
    /// As a terminal spinner's message (the spinner ticks on its own thread).
    Spinner(indicatif::ProgressBar),
    /// Printed to stderr once a second (`--status` without a terminal).
    Printed {
        /// When it was last printed.
        last: Instant,
    },
}

/// Every [`TICK`]: the stall check, then the status line.
pub(super) struct StatusTick<'a> {
    timer: OwnedFd,
    status: &'a StatusPage,
    mode: Mode,
    line: StatusLine,
    out: PathBuf,
    stall_timeout: u64,
    last_progress: u64,
    last_progress_at: Instant,
    pair: SharedPair,
}

impl<'a> StatusTick<'a> {
    /// A periodic timerfd of [`TICK`], armed now; the secondary's progress counts from now.
    pub fn new(
        status: &'a StatusPage,
        mode: Mode,
        line: StatusLine,
        out: PathBuf,
        stall_timeout: u64,
        pair: SharedPair,
    ) -> io::Result<Self> {
        let flags = libc::TFD_NONBLOCK | libc::TFD_CLOEXEC;
        // SAFETY: a new timerfd; it returns a new descriptor or -1.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: timerfd_create just returned this descriptor; it is ours.
        let timer = unsafe { OwnedFd::from_raw_fd(fd) };
        let period = libc::timespec {
            tv_sec: 0,
            tv_nsec: TICK.as_nanos() as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: period,
            it_value: period,
        };
        // SAFETY: arming our own timerfd with a valid itimerspec; no old value asked for.
        if unsafe { libc::timerfd_settime(timer.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(StatusTick {
            timer,
            status,
            mode,
            line,
            out,
            stall_timeout,
            last_progress: 0,
            last_progress_at: Instant::now(),
            pair,
        })
    }

    /// After the primary's end the secondary may lag far behind (it takes turns one thread
    /// at a time); it is stuck only when it stops making progress. A stuck one is asked to
    /// describe its state, given [`DESCRIBE_GRACE`] to do so, then killed.
    fn check_stall(&mut self) {
        let st = self.status;
        let progress = st.get(Counter::RecordsConsumed) + st.get(Counter::SecondaryTurns);
        if progress != self.last_progress {
            self.last_progress = progress;
            self.last_progress_at = Instant::now();
        }
        let mut pair = self.pair.borrow_mut();
        match pair.stall {
            Stall::Watching => {
                // A live secondary (failover) serves; it replays nothing any more.
                let stuck = pair.primary_done_at.is_some()
                    && pair.secondary_exit.is_none()
                    && st.get(Counter::TakeoverMicros) == 0
                    && self.last_progress_at.elapsed() > Duration::from_secs(self.stall_timeout);
                if !stuck {
                    return;
                }
                eprintln!(
                    "ditto: the secondary made no progress for {} s after the primary ended; stopping it",
                    self.stall_timeout
                );
                let answer = self.out.join(STALL_FILE);
                let _ = std::fs::remove_file(&answer);
                if std::fs::write(self.out.join(STALL_REQUEST), b"").is_ok() {
                    pair.stall = Stall::Describing {
                        until: Instant::now() + DESCRIBE_GRACE,
                    };
                } else {
                    stop(&mut pair);
                }
            }
            Stall::Describing { until } => {
                // The secondary renames a finished description into place, so existing is
                // complete.
                if Instant::now() >= until || self.out.join(STALL_FILE).exists() {
                    stop(&mut pair);
                }
            }
            Stall::Stopped => {}
        }
    }

    fn show_status(&mut self) {
        let pair = self.pair.borrow();
        match &mut self.line {
            StatusLine::Off => {}
            StatusLine::Spinner(b) => b.set_message(status_line(self.status, self.mode, &pair)),
            StatusLine::Printed { last } => {
                if last.elapsed() >= Duration::from_secs(1) {
                    eprintln!("ditto: {}", status_line(self.status, self.mode, &pair));
                    *last = Instant::now();
                }
            }
        }
    }
}

/// Kills the stalled secondary (once; the pidfd then reports its end).
fn stop(pair: &mut Pair) {
    let _ = pair.secondary.kill();
    pair.stall = Stall::Stopped;
}

impl MutEventSubscriber for StatusTick<'_> {
    fn init(&mut self, ops: &mut EventOps) {
        registered(
            "status tick",
            ops.add(Events::new(&self.timer, EventSet::IN)),
        );
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Missed ticks are not made up: one check covers them.
        let _ = read_value::<u64>(&self.timer);
        self.check_stall();
        self.show_status();
    }
}
