//! The secondary's side of replication: it runs the same program, takes each thread's
//! records from the primary's log in order ([`Secondary::take`]), and reports the first
//! mismatch ([`Secondary::mismatch`]) and the events agreed before it.
//!
//! - [`intake`]: the per-thread queues and the bounds on what a peer can make it hold.
//! - `reader`: the reader thread that fills the queues, and the drain after the log's end.
//! - `stall`: what its threads wait for, when the supervisor asks.
//!
//! - `call`: what the secondary does with one syscall ([`crate::call`]): the record matched
//!   to the call, the comparison, the mismatch or the agreed event.
//!
//! What a decision means for the program (placing the primary's memory writes, placeholders
//! for outside descriptors) is the syscall layer's business: it asks here and carries it out.

mod call;
pub use call::TimeTake;
mod failover;
pub mod intake;
mod reader;
mod stall;

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use det::link::{TimedWait, WaitNews};
use det::{DetTid, TurnError};

use crate::call::InDoubt;
use crate::findings::{AgreedEvent, Mismatch, SecondaryFindings, HISTORY};
use crate::handoff::{Held, Tag};
use crate::program::Program;
use crate::setup::ReplicationError;
use crate::status::{Counter, StatusPage};
use crate::sync::lock;
use crate::wire::ThreadRecord;
use crate::Consumer;
use intake::{Queues, RECORD_OVERHEAD};

/// The secondary's end of the channel, its queues and what it found.
pub struct Secondary {
    /// Until the reader thread takes it.
    consumer: Mutex<Option<Consumer>>,
    queues: Mutex<Queues>,
    findings: Mutex<SecondaryFindings>,
    /// Set on a mismatch or channel failure: threads stop taking records.
    stop: AtomicBool,
    /// Threads blocked in `take` on an empty queue, or parked after asking for a turn
    /// beyond the end of the primary's log.
    waiting: AtomicUsize,
    /// The last such turn request, for the report if the secondary never gets to its end.
    late_schedule: Mutex<Option<String>>,
    stdout: Mutex<File>,
    stderr: Mutex<File>,
    /// Everything else the secondary compared (socket output), in order.
    net: Mutex<File>,
    /// The pair's output directory, where the supervisor asks for a description of the
    /// secondary's state ([`crate::findings::STALL_REQUEST`]) and finds it
    /// ([`crate::findings::STALL_FILE`]).
    output_dir: PathBuf,
    /// The counters shared with the supervisor.
    status: Arc<StatusPage>,
    /// Go live when the primary dies without ending its log ([`crate::setup::ReplicaSetup::failover`]).
    failover: bool,
    /// The primary died and this secondary is draining its log to go live: threads that
    /// find no record wait for [`live`](Self::live) instead of ending.
    going_live: AtomicBool,
    /// The secondary runs live: its calls are its own (failover).
    live: AtomicBool,
    /// Per thread: the intent of the output it is comparing, until that output's record
    /// arrives; what is left at the takeover is in doubt.
    in_doubt: Mutex<HashMap<u32, InDoubt>>,
    /// Failover: the descriptor channel's end, until the receiver thread takes it.
    handoff: Mutex<Option<OwnedFd>>,
    /// Failover: the descriptors the primary passed, until the replay takes them.
    held: Option<Held>,
}

impl Secondary {
    /// Receives the channel's memfd from the primary over `peer` and maps it; creates the
    /// files the secondary's compared output goes to in `output_dir`.
    pub fn connect(
        peer: OwnedFd,
        output_dir: PathBuf,
        status: Arc<StatusPage>,
        failover: bool,
    ) -> Result<Self, ReplicationError> {
        let memfd = crate::recv_fd(peer.as_fd())?;
        let handoff = if failover {
            Some(crate::recv_fd(peer.as_fd())?)
        } else {
            None
        };
        // The standard descriptors come first, right after the socket: read here, so that
        // the program's 0, 1 and 2 hold them before it starts, whatever the receiver
        // thread's scheduling.
        let held = match &handoff {
            Some(sock) => {
                let held = Held::new();
                held.receive_first(sock.as_fd(), crate::handoff::STDIO_MESSAGES)
                    .map_err(|e| std::io::Error::other(e.to_string()))
                    .map_err(crate::ChannelError::Io)?;
                Some(held)
            }
            None => None,
        };
        let mut consumer = Consumer::attach(memfd)?.watch_socket(peer);
        // An idle server sends nothing for as long as it likes; a dead primary is
        // noticed by the socket's hang-up instead.
        consumer.set_peer_timeout(None);
        let open = |name: &str| {
            let path = output_dir.join(name);
            File::create(&path).map_err(|source| ReplicationError::Output { path, source })
        };
        Ok(Secondary {
            consumer: Mutex::new(Some(consumer)),
            queues: Mutex::default(),
            findings: Mutex::default(),
            stop: AtomicBool::new(false),
            waiting: Default::default(),
            late_schedule: Mutex::new(None),
            stdout: Mutex::new(open("secondary.stdout")?),
            stderr: Mutex::new(open("secondary.stderr")?),
            net: Mutex::new(open("secondary.net")?),
            output_dir,
            status,
            failover,
            going_live: AtomicBool::new(false),
            live: AtomicBool::new(false),
            in_doubt: Mutex::default(),
            held,
            handoff: Mutex::new(handoff),
        })
    }

    /// A secondary without a channel, its output files in `output_dir`: the tests fill its
    /// queues themselves.
    #[cfg(test)]
    pub(crate) fn unconnected(output_dir: PathBuf, status: Arc<StatusPage>) -> Self {
        let open = |name: &str| File::create(output_dir.join(name)).expect("output file");
        Secondary {
            consumer: Mutex::new(None),
            queues: Mutex::default(),
            findings: Mutex::default(),
            stop: AtomicBool::new(false),
            waiting: Default::default(),
            late_schedule: Mutex::new(None),
            stdout: Mutex::new(open("secondary.stdout")),
            stderr: Mutex::new(open("secondary.stderr")),
            net: Mutex::new(open("secondary.net")),
            output_dir,
            status,
            failover: false,
            going_live: AtomicBool::new(false),
            live: AtomicBool::new(false),
            in_doubt: Mutex::default(),
            handoff: Mutex::new(None),
            held: None,
        }
    }

    /// Queues `rec` as `tid`'s replicated event `seq`, as the reader would.
    #[cfg(test)]
    pub(crate) fn queue(&self, tid: u32, seq: u64, rec: ThreadRecord) {
        lock(&self.queues)
            .by_tid
            .entry(tid)
            .or_default()
            .push_back((seq, rec, 0));
    }

    /// Whether it goes live when the primary dies (failover).
    pub fn failover(&self) -> bool {
        self.failover
    }

    /// Failover: the secondary now serves live, as `t` says. Keeps `t` for the report (the
    /// secondary's part carries it to the supervisor) and publishes the takeover time on
    /// the status page ([`Counter::TakeoverMicros`]), which the supervisor's status line,
    /// stall watch and metrics read. Call it once, when go-live is complete.
    pub fn went_live(&self, t: crate::findings::Takeover) {
        let micros = (t.takeover_ms * 1000.0).round().max(1.0) as u64;
        lock(&self.findings).takeover = Some(t);
        self.status.set(Counter::TakeoverMicros, micros);
    }

    /// Failover: receives the descriptors the primary passes until its end closes (run by
    /// a thread of its own from the start, so the primary never blocks on a full socket).
    /// Err: a malformed message or a failed socket, to report as a channel error.
    pub fn receive_descriptors(&self) -> Result<(), String> {
        let Some(held) = &self.held else {
            return Ok(());
        };
        let Some(sock) = lock(&self.handoff).take() else {
            return Ok(());
        };
        held.receive(sock.as_fd()).map_err(|e| e.to_string())
    }

    /// Failover: takes the primary's descriptor `tag`, waiting up to `wait` for it.
    /// `Ok(None)`: none (no failover, or the primary had closed it). Err: it did not come.
    pub fn take_descriptor(&self, tag: Tag, wait: Duration) -> Result<Option<OwnedFd>, String> {
        match &self.held {
            Some(held) => held.take(tag, wait),
            None => Ok(None),
        }
    }

    /// What it found so far.
    pub fn findings(&self) -> SecondaryFindings {
        lock(&self.findings).clone()
    }

    /// Keeps output the secondary compared and found equal: descriptors 1 and 2 in files of
    /// their own, everything else in one file, in order.
    pub fn keep_output(&self, fd: i32, bytes: &[u8]) {
        let sink = match fd {
            1 => &self.stdout,
            2 => &self.stderr,
            _ => &self.net,
        };
        let _ = lock(sink).write_all(bytes);
    }

    /// The channel failed: recorded as the channel's error, and the program stops.
    pub(crate) fn channel_failed(&self, program: &dyn Program, why: String) {
        eprintln!("ditto: secondary: channel error: {why}");
        {
            let mut f = lock(&self.findings);
            if f.channel_error.is_none() {
                f.channel_error = Some(why.clone());
            }
            f.stopped = Some(format!("channel error: {why}"));
        }
        self.stop.store(true, Ordering::Relaxed);
        lock(&self.queues).closed = Some(why);
        program.end_by_signal(libc::SIGKILL);
    }

    /// Records the first mismatch and stops the secondary's program.
    pub fn mismatch(&self, program: &dyn Program, m: Mismatch) {
        {
            let mut f = lock(&self.findings);
            if f.mismatch.is_none() {
                eprintln!(
                    "ditto: secondary: replicas diverged: thread {} syscall #{} ({}): {}",
                    m.thread, m.syscall_seq, m.syscall, m.detail
                );
                f.stopped = Some("diverged".into());
                f.mismatch = Some(m);
            }
        }
        self.status.set(Counter::Diverged, 1);
        self.stop.store(true, Ordering::Relaxed);
        program.end_by_signal(libc::SIGKILL);
    }

    /// One more event both replicas agreed on, for the report's history.
    pub fn agreed(&self, ev: AgreedEvent) {
        let mut f = lock(&self.findings);
        if f.history.len() == HISTORY {
            f.history.pop_front();
        }
        f.history.push_back(ev);
    }

    /// Takes `tid`'s next record, waiting for it. None: the secondary is stopping.
    pub fn take(&self, program: &dyn Program, tid: u32) -> Option<(u64, ThreadRecord)> {
        self.take_until(program, tid, false)
    }

    /// [`take`](Self::take); with `until_end`, also None once the primary's log is over and
    /// holds nothing more for `tid` (a wait the primary's exit cut short has no outcome).
    pub fn take_until(
        &self,
        program: &dyn Program,
        tid: u32,
        until_end: bool,
    ) -> Option<(u64, ThreadRecord)> {
        let mut q = lock(&self.queues);
        let cv = q.cv(tid);
        loop {
            if let Some((seq, rec, len)) = q.by_tid.get_mut(&tid).and_then(|d| d.pop_front()) {
                q.buffered_bytes = q.buffered_bytes.saturating_sub(len);
                self.status.add(Counter::RecordsConsumed, 1);
                self.status.add(
                    Counter::RecordBytesConsumed,
                    len.saturating_sub(RECORD_OVERHEAD),
                );
                return Some((seq, rec));
            }
            if self.stop.load(Ordering::Relaxed) || program.exiting() || self.is_live() {
                return None;
            }
            // Draining to go live, nothing ends a wait but the takeover itself.
            if until_end && (q.end.is_some() || q.closed.is_some()) && !self.draining() {
                return None;
            }
            self.waiting.fetch_add(1, Ordering::SeqCst);
            q = cv
                .wait_timeout(q, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Blocks until the primary's outcome of `tid`'s current timed futex wait is known; None
    /// if it never will be ([`det::link::ScheduleLink::timed_wait_outcome`]).
    pub fn timed_wait_outcome(&self, program: &dyn Program, tid: DetTid) -> Option<TimedWait> {
        match self.take_until(program, tid.0, true)? {
            (
                _,
                ThreadRecord::TimedWait {
                    took_turn,
                    timed_out,
                    at,
                },
            ) => Some(TimedWait {
                took_turn,
                timed_out,
                reentry_at: at,
            }),
            (seq, other) => {
                self.mismatch(
                    program,
                    Mismatch {
                        kind: "schedule",
                        thread: tid.0,
                        syscall_seq: seq,
                        syscall: "futex".into(),
                        primary_syscall: Some(other.describe()),
                        primary: other.describe().into_bytes(),
                        secondary: b"futex timed wait".to_vec(),
                        detail: "the secondary waits on a futex with a deadline where the primary's thread did something else".into(),
                        ..Default::default()
                    },
                );
                None
            }
        }
    }

    /// What the primary's log says so far about `tid`'s current timed futex wait
    /// ([`det::link::ScheduleLink::follow_timed_wait`]).
    pub fn follow_timed_wait(&self, tid: DetTid) -> WaitNews {
        let mut q = lock(&self.queues);
        let head = q.by_tid.get(&tid.0).and_then(|d| d.front());
        match head {
            Some((
                _,
                ThreadRecord::TimedWait {
                    timed_out: true, ..
                },
                _,
            )) => {
                if let Some((_, _, len)) = q.by_tid.get_mut(&tid.0).and_then(|d| d.pop_front()) {
                    q.buffered_bytes = q.buffered_bytes.saturating_sub(len);
                    self.status.add(
                        Counter::RecordBytesConsumed,
                        len.saturating_sub(RECORD_OVERHEAD),
                    );
                }
                self.status.add(Counter::RecordsConsumed, 1);
                WaitNews::TimedOut
            }
            Some(_) => WaitNews::Passed,
            None if self.draining() => WaitNews::Unknown,
            None if q.end.is_some() || q.closed.is_some() => WaitNews::Ended,
            None => WaitNews::Unknown,
        }
    }

    /// The schedule cannot be followed ([`det::link::ScheduleLink::schedule_diverged`]).
    /// `program` is None once the program is gone.
    pub fn schedule_diverged(&self, program: Option<&dyn Program>, tid: DetTid, error: &TurnError) {
        // A thread due for a turn that no thread can wake is stuck whatever the log holds;
        // the drain below would only find it after its timeout.
        if self.draining() {
            // The log will not say more: the takeover decides (a thread whose turn the log
            // lacks goes on live).
            self.wait_until_live(program);
            return;
        }
        let stuck = matches!(error, TurnError::Unorderable { .. });
        let ended = {
            let q = lock(&self.queues);
            q.end.is_some() || q.closed.is_some()
        };
        if ended && !stuck {
            // The primary's log is over. A thread that wants a turn beyond it may just be
            // one the primary's exit cut short; the drain decides: the program reaching its
            // own end is agreement, every thread waiting for the log is a divergence.
            *lock(&self.late_schedule) = Some(format!("thread {tid}: {error}"));
            self.waiting.fetch_add(1, Ordering::SeqCst);
            if let Some(p) = program {
                while !p.exiting() && !self.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        if let Some(program) = program {
            self.mismatch(
                program,
                Mismatch {
                    kind: "schedule",
                    thread: tid.0,
                    detail: error.to_string(),
                    ..Default::default()
                },
            );
        }
    }
}
