//! Replication of one program between two VMM processes (DESIGN.md §6): the primary runs it
//! for real and logs what the secondary cannot compute by itself; the secondary runs the
//! same program, replays the log and compares its outputs.
//!
//! Every syscall goes through [`serve`] when a [`Replication`] is attached to the process.
//! Its class (the syscall tables' [`Class`], refined by descriptor for I/O) decides:
//! - **Local**: both replicas execute it (memory, threads, the program's own files and pipes).
//! - **Recorded**: the primary executes it and ships the result and the guest memory it
//!   wrote ([`effects::written`]); the secondary copies them in without executing anything.
//!   Descriptors created by recorded calls (sockets, accepted connections, timers) become
//!   placeholders in the secondary (unbound AF_UNIX sockets), so the secondary never touches
//!   the network and descriptor numbers stay the same.
//! - **Compared**: output leaving the program (stdout, stderr, sockets). Both replicas compute
//!   the bytes ([`effects::would_output`]); the primary waits until the secondary holds every
//!   record sent so far (output commit), performs the output and ships the bytes; the secondary
//!   compares its own bytes with them and keeps them in files of its own (`secondary.stdout`,
//!   `secondary.stderr`, and `secondary.net` for everything else, in order).
//!
//! The schedule is made identical by the det runtime in both replicas (the [`ScheduleLink`]
//! implementation below): Kendo on both sides plus the primary's re-entry times in `det` mode,
//! or the primary's turn log in `follow` mode.
//!
//! Signals: under replication an asynchronous signal reaches a handler only right after a
//! Recorded or Compared call (its record names it), so the secondary delivers it at the same
//! point of the same thread. Signals the secondary's program raises itself are not queued.
//!
//! Records are routed by deterministic thread id: the secondary's reader thread
//! demultiplexes the channel into one queue per thread, and each thread takes its own records
//! in order, checking that the syscall number and per-thread syscall count match.

pub mod effects;
pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use det::record::RecordKind;
use det::{DetTid, Turn};
use replica::status::{Counter, StatusPage};
use replica::{ChannelConfig, ChannelError, Consumer, Producer};

use crate::det_runtime::{ScheduleLink, TimedWait, WaitNews};
use crate::errno::Errno;
use crate::fd_table::OpenFile;
use crate::process::{lock, ExitReason, Process};
use crate::syscalls::{names, Class, ParkedFd, SysResult, SyscallCtx, SyscallEntry, ThreadAction};
use wire::{EndInfo, ThreadRecord};

/// How many agreed events a divergence report shows.
pub const HISTORY: usize = 16;

/// After the primary's end: how long every secondary thread may wait for records that will
/// never come before that is reported as a divergence.
const ALL_WAITING_GRACE: Duration = Duration::from_secs(1);

/// After the primary's end: how long the secondary may make no syscall at all before it is
/// reported as stuck (a compute-bound thread legitimately makes none for a while).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Which replica this process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Runs the program for real and logs.
    Primary,
    /// Replays the log and compares.
    Secondary,
}

/// How the two replicas agree on the thread schedule (DESIGN.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Each computes the Kendo schedule; re-entry times cross the channel.
    Det,
    /// The secondary takes turns in the primary's logged order.
    Follow,
}

impl Mode {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Det => "det",
            Mode::Follow => "follow",
        }
    }
}

/// Errors of setting replication up.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The channel could not be created or attached.
    #[error("replication channel: {0}")]
    Channel(#[from] ChannelError),
    /// The secondary's output files could not be created.
    #[error("cannot create {path}: {source}")]
    Output {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What a replica process is given.
pub struct ReplicaSetup {
    /// Primary or secondary.
    pub role: Role,
    /// det or follow.
    pub mode: Mode,
    /// Connected to the other replica: the channel's memfd crosses it, and its hang-up is
    /// how each side notices the other's death.
    pub peer: OwnedFd,
    /// Ring size and lag bounds (the primary creates the channel).
    pub channel: ChannelConfig,
    /// The counters page shared with the supervisor.
    pub status: StatusPage,
    /// Secondary: where its program's stdout and stderr go (`secondary.stdout`, `.stderr`).
    pub output_dir: PathBuf,
}

/// A mismatch found by the secondary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mismatch {
    /// Report kind: output, syscall, exit, missing_event, extra_event, signal, schedule.
    pub kind: &'static str,
    /// Deterministic thread id.
    pub thread: u32,
    /// The thread's syscall count at the mismatch.
    pub syscall_seq: u64,
    /// The secondary's syscall there.
    pub syscall: String,
    /// The primary's event there, if any.
    pub primary_syscall: Option<String>,
    /// The descriptor, for outputs.
    pub fd: Option<i64>,
    /// The thread's logical time (det mode).
    pub logical_time: Option<u64>,
    /// Turns taken so far.
    pub turn: Option<u64>,
    /// The primary's value (bytes or a number as text).
    pub primary: Vec<u8>,
    /// The secondary's value.
    pub secondary: Vec<u8>,
    /// Hash of the primary's output when only the hash travelled.
    pub primary_hash: Option<u64>,
    /// Where the values first differ.
    pub first_differing_byte: Option<u64>,
    /// One line.
    pub detail: String,
}

/// One event both replicas agreed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgreedEvent {
    /// Deterministic thread id.
    pub thread: u32,
    /// Per-thread syscall number.
    pub syscall_seq: u64,
    /// Syscall name.
    pub syscall: String,
    /// "recorded", "compared", "exit".
    pub kind: &'static str,
    /// The result.
    pub result: i64,
    /// Bytes replayed or compared.
    pub bytes: u64,
}

/// What the secondary found, for the report.
#[derive(Clone, Debug, Default)]
pub struct SecondaryFindings {
    /// The first mismatch.
    pub mismatch: Option<Mismatch>,
    /// The last agreed events, oldest first.
    pub history: VecDeque<AgreedEvent>,
    /// A channel failure (corrupt record...).
    pub channel_error: Option<String>,
    /// How the primary ended, as its log says.
    pub primary_end: Option<EndInfo>,
    /// Why the secondary stopped early, if it did (primary gone, mismatch...).
    pub stopped: Option<String>,
}

struct PrimarySide {
    producer: Mutex<Option<Producer>>,
    broken: AtomicBool,
    error: Mutex<Option<String>>,
    /// Fault injection ([`CORRUPT_ENV`]): the record number to corrupt, counted from 1.
    corrupt_at: Option<u64>,
}

/// Fault injection for tests: the primary corrupts its Nth record (from 1) in the ring, after
/// the checksum, so that the secondary must report a channel error.
pub const CORRUPT_ENV: &str = "DITTO_PAIR_CORRUPT_RECORD";

#[derive(Default)]
struct Queues {
    /// Per deterministic thread: (replicated-event seq, record, payload bytes).
    by_tid: HashMap<u32, VecDeque<(u64, ThreadRecord, u64)>>,
    cvs: HashMap<u32, Arc<Condvar>>,
    /// The primary's End arrived.
    end: Option<EndInfo>,
    /// The channel ended without End (primary gone) or failed.
    closed: Option<String>,
    buffered_bytes: u64,
}

impl Queues {
    fn cv(&mut self, tid: u32) -> Arc<Condvar> {
        self.cvs.entry(tid).or_default().clone()
    }

    fn all_empty(&self) -> bool {
        self.by_tid.values().all(|q| q.is_empty())
    }
}

struct SecondarySide {
    consumer: Mutex<Option<Consumer>>,
    queues: Mutex<Queues>,
    findings: Mutex<SecondaryFindings>,
    stop: AtomicBool,
    /// Threads blocked in `take` on an empty queue, or parked after asking for a turn
    /// beyond the end of the primary's log.
    waiting: std::sync::atomic::AtomicUsize,
    /// The last such turn request, for the report if the secondary never gets to its end.
    late_schedule: Mutex<Option<String>>,
    stdout: Mutex<File>,
    stderr: Mutex<File>,
    /// Everything else the secondary compared (socket output), in order.
    net: Mutex<File>,
    /// The pair's output directory, where the supervisor asks for a description of the
    /// secondary's state ([`STALL_REQUEST`]) and finds it ([`STALL_FILE`]).
    output_dir: PathBuf,
}

/// Created in the pair's output directory by the supervisor when the secondary has made no
/// progress for too long: the secondary then writes [`STALL_FILE`] and removes it.
pub const STALL_REQUEST: &str = "secondary-stall-request";

/// The secondary's description of what its threads wait for, written on [`STALL_REQUEST`].
pub const STALL_FILE: &str = "secondary-stall.txt";

/// Bytes of records the secondary holds (payloads plus [`RECORD_OVERHEAD`] each, and pieces
/// of fragmented records) before it gives up: its threads lag that far behind.
const MAX_BUFFERED: u64 = 2 << 30;

/// What one queued record costs beyond its payload (the decoded record, the queue slot),
/// counted against [`MAX_BUFFERED`] so that a flood of empty records is bounded too.
const RECORD_OVERHEAD: u64 = 128;

/// Turns of the primary's log the secondary holds before it gives up (about 64 bytes each).
const MAX_TURNS_HELD: usize = 8 << 20;

fn behind_by_bytes() -> String {
    format!(
        "the secondary fell more than {} MiB of records behind",
        MAX_BUFFERED >> 20
    )
}

/// The reader's state between records.
struct Intake {
    /// Deterministic thread ids below this were announced by the primary (the main thread,
    /// 0, needs no announcement).
    threads: u32,
    fragments: wire::Reassembler,
}

impl Default for Intake {
    fn default() -> Self {
        Intake {
            threads: 1,
            fragments: wire::Reassembler::default(),
        }
    }
}

impl Intake {
    /// A `ThreadStart`: ids come in creation order, one at a time.
    fn announce(&mut self, tid: u32) -> Result<(), String> {
        if tid != self.threads {
            return Err(format!(
                "the primary announced thread {tid} where thread {} comes next",
                self.threads
            ));
        }
        self.threads = self
            .threads
            .checked_add(1)
            .ok_or("the primary announced too many threads")?;
        Ok(())
    }

    /// Whether a whole per-thread record may be queued: its thread was announced and none of
    /// its records is half reassembled. u32::MAX is what a thread without a deterministic id
    /// records under ([`Replication::det_tid`]): one more queue, bounded like the others.
    fn admit(&self, tid: u32, seq: u64, rec: &ThreadRecord) -> Result<(), String> {
        if tid >= self.threads && tid != u32::MAX {
            return Err(format!(
                "a {} record of thread {tid}, which the primary never created ({} so far)",
                rec.describe(),
                self.threads
            ));
        }
        self.fragments
            .check_whole(tid, seq)
            .map_err(|e| e.to_string())
    }
}

/// What the reader does after a record.
enum Intook {
    More,
    End,
}

/// The replication state of one replica process.
pub struct Replication {
    role: Role,
    mode: Mode,
    status: StatusPage,
    primary: Option<PrimarySide>,
    secondary: Option<SecondarySide>,
    process: OnceLock<Weak<Process>>,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication")
            .field("role", &self.role)
            .field("mode", &self.mode)
            .finish()
    }
}

impl Replication {
    /// Connects to the other replica: the primary creates the channel and sends its memfd
    /// over `setup.peer`; the secondary receives and maps it.
    pub fn connect(setup: ReplicaSetup) -> Result<Arc<Self>, ReplicationError> {
        let ReplicaSetup {
            role,
            mode,
            peer,
            channel,
            status,
            output_dir,
        } = setup;
        let (primary, secondary) = match role {
            Role::Primary => {
                let (producer, memfd) = replica::Channel::create_with(channel)?;
                replica::send_fd(peer.as_fd(), memfd.as_fd())?;
                let producer = producer.watch_socket(peer);
                (
                    Some(PrimarySide {
                        producer: Mutex::new(Some(producer)),
                        broken: AtomicBool::new(false),
                        error: Mutex::new(None),
                        corrupt_at: std::env::var(CORRUPT_ENV).ok().and_then(|v| v.parse().ok()),
                    }),
                    None,
                )
            }
            Role::Secondary => {
                let memfd = replica::recv_fd(peer.as_fd())?;
                let mut consumer = Consumer::attach(memfd)?.watch_socket(peer);
                // An idle server sends nothing for as long as it likes; a dead primary is
                // noticed by the socket's hang-up instead.
                consumer.set_peer_timeout(None);
                let open = |name: &str| {
                    let path = output_dir.join(name);
                    File::create(&path).map_err(|source| ReplicationError::Output { path, source })
                };
                (
                    None,
                    Some(SecondarySide {
                        consumer: Mutex::new(Some(consumer)),
                        queues: Mutex::default(),
                        findings: Mutex::default(),
                        stop: AtomicBool::new(false),
                        waiting: Default::default(),
                        late_schedule: Mutex::new(None),
                        stdout: Mutex::new(open("secondary.stdout")?),
                        stderr: Mutex::new(open("secondary.stderr")?),
                        net: Mutex::new(open("secondary.net")?),
                        output_dir: output_dir.clone(),
                    }),
                )
            }
        };
        Ok(Arc::new(Replication {
            role,
            mode,
            status,
            primary,
            secondary,
            process: OnceLock::new(),
        }))
    }

    /// Primary or secondary.
    pub fn role(&self) -> Role {
        self.role
    }

    /// det or follow.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The shared counters.
    pub fn status(&self) -> &StatusPage {
        &self.status
    }

    /// Binds to the program (before its first thread starts). The secondary starts its
    /// reader thread and makes its signal state replay-only.
    pub fn start(self: &Arc<Self>, process: &Arc<Process>) {
        let _ = self.process.set(Arc::downgrade(process));
        {
            // The turn counter of the status line, from the det runtime's own count.
            let me = self.clone();
            let weak = Arc::downgrade(process);
            let _ = std::thread::Builder::new()
                .name("replica-status".into())
                .spawn(move || {
                    crate::seccomp::apply_or_exit(crate::seccomp::Kind::Channel);
                    loop {
                        let Some(p) = weak.upgrade() else { return };
                        me.publish_turns(&p);
                        if p.exiting() {
                            return;
                        }
                        me.describe_if_asked(&p);
                        drop(p);
                        std::thread::sleep(Duration::from_millis(100));
                    }
                });
        }
        if self.role == Role::Secondary {
            process.signals.set_replay_only();
            let me = self.clone();
            let p = process.clone();
            let _ = std::thread::Builder::new()
                .name("replica-reader".into())
                .spawn(move || {
                    crate::seccomp::apply_or_exit(crate::seccomp::Kind::Channel);
                    me.reader(&p)
                });
        }
    }

    /// Secondary: if the supervisor asked ([`STALL_REQUEST`]), writes what its threads
    /// wait for to [`STALL_FILE`]: the det runtime's state and the records buffered per
    /// thread.
    fn describe_if_asked(&self, p: &Process) {
        let Some(s) = &self.secondary else { return };
        let request = s.output_dir.join(STALL_REQUEST);
        if std::fs::remove_file(&request).is_err() {
            return;
        }
        let mut text = format!(
            "{} records consumed, {} turns taken\n",
            self.status.get(Counter::RecordsConsumed),
            self.status.get(Counter::SecondaryTurns)
        );
        if let Some(det) = p.det.get() {
            text.push_str(&det.describe());
        }
        {
            let q = lock(&s.queues);
            let mut buffered: Vec<_> = q
                .by_tid
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(t, v)| format!("t{t}: {}", v.len()))
                .collect();
            buffered.sort();
            text.push_str(&format!(
                "  records buffered per thread: {}\n",
                if buffered.is_empty() {
                    "none".to_string()
                } else {
                    buffered.join(", ")
                }
            ));
            if let Some(closed) = &q.closed {
                text.push_str(&format!("  channel: {closed}\n"));
            } else if q.end.is_some() {
                text.push_str("  the primary's log is complete\n");
            }
        }
        if let Some(late) = lock(&s.late_schedule).as_ref() {
            text.push_str(&format!("  {late}\n"));
        }
        // Written aside and renamed, so that the supervisor never reads half of it.
        let part = s.output_dir.join(format!("{STALL_FILE}.part"));
        if std::fs::write(&part, text).is_ok() {
            let _ = std::fs::rename(&part, s.output_dir.join(STALL_FILE));
        }
    }

    fn publish_turns(&self, p: &Process) {
        if let Some(det) = p.det.get() {
            let c = match self.role {
                Role::Primary => Counter::PrimaryTurns,
                Role::Secondary => Counter::SecondaryTurns,
            };
            self.status.set(c, det.stats.turns.load(Ordering::Relaxed));
        }
    }

    /// The program ended (either role): final counters; the primary tells the secondary how
    /// it ended and closes the channel.
    pub fn program_ended(&self, exit: &ExitReason) {
        if let Some(p) = self.process() {
            self.publish_turns(&p);
        }
        if self.role == Role::Primary {
            self.finish_primary(exit);
        }
    }

    fn finish_primary(&self, exit: &ExitReason) {
        let end = match exit {
            ExitReason::Exited(s) => EndInfo {
                status: s & 0xff,
                signal: 0,
            },
            ExitReason::Signaled { signal, .. } => EndInfo {
                status: exit.status(),
                signal: *signal,
            },
        };
        self.send(RecordKind::End, &end.encode());
        if let Some(p) = &self.primary {
            lock(&p.producer).take();
        }
    }

    /// Primary: why the channel broke, if it did (the secondary died or lagged out).
    pub fn primary_error(&self) -> Option<String> {
        self.primary.as_ref().and_then(|p| lock(&p.error).clone())
    }

    /// Secondary: what it found.
    pub fn findings(&self) -> SecondaryFindings {
        self.secondary
            .as_ref()
            .map(|s| lock(&s.findings).clone())
            .unwrap_or_default()
    }

    fn process(&self) -> Option<Arc<Process>> {
        self.process.get().and_then(|w| w.upgrade())
    }

    // ----- primary -----

    fn send(&self, kind: RecordKind, payload: &[u8]) {
        let Some(p) = &self.primary else { return };
        if p.broken.load(Ordering::Relaxed) {
            return;
        }
        let mut g = lock(&p.producer);
        let Some(producer) = g.as_mut() else { return };
        let nth = producer.stats().records_sent + 1;
        let sent = match p.corrupt_at {
            Some(n) if n == nth => producer.send_corrupted(kind, payload, 24),
            _ => producer.send(kind, payload),
        };
        match sent {
            Ok(_) => {
                self.status.add(Counter::RecordsSent, 1);
                self.status.add(Counter::RecordBytes, payload.len() as u64);
                let st = producer.stats();
                self.status.max(Counter::MaxLagRecords, st.lag_records());
                self.status.max(Counter::MaxLagBytes, st.lag_bytes());
            }
            Err(e) => {
                g.take();
                self.primary_broken(format!("{e}"));
            }
        }
    }

    fn primary_broken(&self, why: String) {
        let Some(p) = &self.primary else { return };
        if !p.broken.swap(true, Ordering::Relaxed) {
            eprintln!(
                "ditto: primary: replication stopped ({why}); the program continues unreplicated"
            );
            *lock(&p.error) = Some(why);
        }
    }

    /// Output commit: waits until the secondary holds every record sent so far.
    fn commit(&self) {
        let Some(p) = &self.primary else { return };
        let mut g = lock(&p.producer);
        let Some(producer) = g.as_mut() else { return };
        let sent = producer.stats().records_sent;
        if sent == 0 {
            return;
        }
        if let Err(e) = producer.wait_acked(sent - 1) {
            g.take();
            drop(g);
            self.primary_broken(format!("{e}"));
        }
    }

    fn send_thread(&self, tid: u32, seq: u64, rec: &ThreadRecord) {
        let mut buf = Vec::new();
        rec.encode(tid, seq, &mut buf);
        let max = match &self.primary {
            Some(p) => lock(&p.producer).as_ref().map(|pr| pr.max_payload()),
            None => None,
        };
        match max {
            // Larger than one ring record (a 20 MiB getrandom, a big read): in pieces,
            // which the secondary puts back together (wire.rs, `Fragment`).
            Some(max) if buf.len() > max => {
                for f in wire::fragments(rec.kind(), &buf, max) {
                    self.send(RecordKind::Fragment, &f);
                }
            }
            _ => self.send(rec.kind(), &buf),
        }
    }

    // ----- secondary -----

    fn reader(self: Arc<Self>, process: &Arc<Process>) {
        let Some(s) = &self.secondary else { return };
        let Some(mut consumer) = lock(&s.consumer).take() else {
            return;
        };
        let mut intake = Intake::default();
        let closed = loop {
            if process.exiting() {
                return;
            }
            let (kind, payload) = match consumer.recv() {
                Ok(r) => (r.kind, r.payload.to_vec()),
                Err(ChannelError::Closed) => break "the primary closed the channel".to_string(),
                Err(ChannelError::PeerGone) => break "the primary is gone".to_string(),
                Err(e) => {
                    self.channel_failed(process, e.to_string());
                    return;
                }
            };
            match self.take_in(process, &mut intake, kind, payload) {
                Ok(Intook::More) => {}
                Ok(Intook::End) => break String::new(),
                Err(why) => {
                    self.channel_failed(process, why);
                    return;
                }
            }
        };
        drop(consumer);
        if !closed.is_empty() {
            lock(&s.queues).closed = Some(closed.clone());
            if let Some(det) = process.det.get() {
                det.close_log();
            }
        }
        self.drain(process);
    }

    /// One record from the primary: routed to the det runtime (turns), to a thread's queue,
    /// or into reassembly. Everything a peer sends is bounded here ([`MAX_BUFFERED`],
    /// [`MAX_TURNS_HELD`], announced threads only), and anything malformed is an error (the
    /// channel's error in the report), never a panic or an unbounded allocation.
    fn take_in(
        &self,
        process: &Arc<Process>,
        intake: &mut Intake,
        kind: RecordKind,
        payload: Vec<u8>,
    ) -> Result<Intook, String> {
        let Some(s) = &self.secondary else {
            return Ok(Intook::End);
        };
        let (kind, payload) = match kind {
            RecordKind::Fragment => match intake.fragments.push(&payload) {
                Ok(Some(whole)) => whole,
                Ok(None) => {
                    let held = lock(&s.queues).buffered_bytes + intake.fragments.held_bytes();
                    if held > MAX_BUFFERED {
                        return Err(behind_by_bytes());
                    }
                    return Ok(Intook::More);
                }
                Err(e) => return Err(e.to_string()),
            },
            _ => (kind, payload),
        };
        match kind {
            RecordKind::Turn => {
                let t =
                    Turn::from_payload(&payload).map_err(|e| format!("bad turn record: {e}"))?;
                if let Some(det) = process.det.get() {
                    if det.turns_held() >= MAX_TURNS_HELD {
                        return Err(format!(
                            "the secondary fell more than {MAX_TURNS_HELD} turns behind"
                        ));
                    }
                    if let Err(e) = det.push_turn(t) {
                        self.schedule_diverged(t.tid, &e);
                    }
                }
                Ok(Intook::More)
            }
            RecordKind::ThreadStart => {
                let tid = wire::decode_thread_start(&payload).map_err(|e| e.to_string())?;
                intake.announce(tid)?;
                Ok(Intook::More)
            }
            RecordKind::End => {
                let end = EndInfo::decode(&payload).map_err(|e| e.to_string())?;
                lock(&s.queues).end = Some(end);
                lock(&s.findings).primary_end = Some(end);
                if let Some(det) = process.det.get() {
                    det.close_log();
                }
                Ok(Intook::End)
            }
            RecordKind::SyscallResult | RecordKind::OutputHash | RecordKind::TimedWait => {
                let (tid, seq, rec) =
                    ThreadRecord::decode(kind, &payload).map_err(|e| e.to_string())?;
                intake.admit(tid, seq, &rec)?;
                let cost = payload.len() as u64 + RECORD_OVERHEAD;
                let mut q = lock(&s.queues);
                q.buffered_bytes += cost;
                if q.buffered_bytes + intake.fragments.held_bytes() > MAX_BUFFERED {
                    return Err(behind_by_bytes());
                }
                q.by_tid.entry(tid).or_default().push_back((seq, rec, cost));
                q.cv(tid).notify_all();
                Ok(Intook::More)
            }
            other => Err(format!("unexpected {other:?} record")),
        }
    }

    /// After the log ended: let the threads consume what is left, then end the program the
    /// way the primary's ended, unless it gets there by itself.
    fn drain(&self, process: &Arc<Process>) {
        let Some(s) = &self.secondary else { return };
        let mut last_progress = Instant::now();
        let mut last_syscalls = process.stats.syscalls.load(Ordering::Relaxed);
        let mut all_waiting_since: Option<Instant> = None;
        loop {
            std::thread::sleep(Duration::from_millis(20));
            if process.exiting() {
                return;
            }
            let q = lock(&s.queues);
            let empty = q.all_empty();
            let end = q.end;
            let closed = q.closed.clone();
            for cv in q.cvs.values() {
                cv.notify_all();
            }
            drop(q);
            match (end, closed) {
                // Killed from outside (no handler ran): the secondary ends the same way
                // once every logged event is consumed.
                (Some(e), _) if e.signal != 0 && empty => {
                    process.finish(ExitReason::Signaled {
                        signal: e.signal,
                        report: String::new(),
                    });
                    return;
                }
                (None, Some(why)) if empty => {
                    lock(&s.findings).stopped = Some(format!(
                        "{why}; the secondary replayed the whole log and stopped"
                    ));
                    process.finish(ExitReason::Signaled {
                        signal: libc::SIGKILL,
                        report: String::new(),
                    });
                    return;
                }
                _ => {}
            }
            let syscalls = process.stats.syscalls.load(Ordering::Relaxed);
            if syscalls != last_syscalls {
                last_syscalls = syscalls;
                last_progress = Instant::now();
            }
            let all_waiting =
                empty && s.waiting.load(Ordering::SeqCst) >= process.live_threads().max(1);
            all_waiting_since = match (all_waiting, all_waiting_since) {
                (true, None) => Some(Instant::now()),
                (true, since) => since,
                (false, _) => None,
            };
            let stuck = all_waiting_since.is_some_and(|t| t.elapsed() > ALL_WAITING_GRACE);
            if stuck || last_progress.elapsed() > DRAIN_TIMEOUT {
                let (pending, first) = {
                    let q = lock(&s.queues);
                    let pending: usize = q.by_tid.values().map(|q| q.len()).sum();
                    let first = q
                        .by_tid
                        .iter()
                        .filter_map(|(t, d)| {
                            d.front()
                                .map(|(_, r, _)| format!("thread {t}: {}", r.describe()))
                        })
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(", ");
                    (pending, first)
                };
                self.mismatch(
                    process,
                    Mismatch {
                        kind: if lock(&s.late_schedule).is_some() {
                            "schedule"
                        } else {
                            "missing_event"
                        },
                        thread: 0,
                        detail: format!(
                            "the primary's program ended but the secondary's did not get there ({}; {pending} records not taken{})",
                            if stuck {
                                "every secondary thread waits for events the primary never logged".to_string()
                            } else {
                                format!("no syscall for {} s", DRAIN_TIMEOUT.as_secs())
                            },
                            match (first.is_empty(), lock(&s.late_schedule).clone()) {
                                (_, Some(late)) => format!("; {late}"),
                                (true, None) => String::new(),
                                (false, None) => format!("; next: {first}"),
                            }
                        ),
                        ..Default::default()
                    },
                );
                return;
            }
        }
    }

    fn channel_failed(&self, process: &Arc<Process>, why: String) {
        let Some(s) = &self.secondary else { return };
        eprintln!("ditto: secondary: channel error: {why}");
        {
            let mut f = lock(&s.findings);
            if f.channel_error.is_none() {
                f.channel_error = Some(why.clone());
            }
            f.stopped = Some(format!("channel error: {why}"));
        }
        s.stop.store(true, Ordering::Relaxed);
        lock(&s.queues).closed = Some(why);
        process.finish(ExitReason::Signaled {
            signal: libc::SIGKILL,
            report: String::new(),
        });
    }

    /// Records the first mismatch and stops the secondary's program.
    fn mismatch(&self, process: &Process, m: Mismatch) {
        let Some(s) = &self.secondary else { return };
        {
            let mut f = lock(&s.findings);
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
        s.stop.store(true, Ordering::Relaxed);
        process.finish(ExitReason::Signaled {
            signal: libc::SIGKILL,
            report: String::new(),
        });
    }

    fn agreed(&self, ev: AgreedEvent) {
        let Some(s) = &self.secondary else { return };
        let mut f = lock(&s.findings);
        if f.history.len() == HISTORY {
            f.history.pop_front();
        }
        f.history.push_back(ev);
    }

    /// Takes `tid`'s next record, waiting for it. None: the secondary is stopping.
    fn take(&self, process: &Process, tid: u32) -> Option<(u64, ThreadRecord)> {
        self.take_until(process, tid, false)
    }

    /// [`take`](Self::take); with `until_end`, also None once the primary's log is over and
    /// holds nothing more for `tid` (a wait the primary's exit cut short has no outcome).
    fn take_until(
        &self,
        process: &Process,
        tid: u32,
        until_end: bool,
    ) -> Option<(u64, ThreadRecord)> {
        let s = self.secondary.as_ref()?;
        let mut q = lock(&s.queues);
        let cv = q.cv(tid);
        loop {
            if let Some((seq, rec, len)) = q.by_tid.get_mut(&tid).and_then(|d| d.pop_front()) {
                q.buffered_bytes = q.buffered_bytes.saturating_sub(len);
                self.status.add(Counter::RecordsConsumed, 1);
                return Some((seq, rec));
            }
            if s.stop.load(Ordering::Relaxed) || process.exiting() {
                return None;
            }
            if until_end && (q.end.is_some() || q.closed.is_some()) {
                return None;
            }
            s.waiting.fetch_add(1, Ordering::SeqCst);
            q = cv
                .wait_timeout(q, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            s.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The calling thread's deterministic id.
    fn det_tid(ctx: &SyscallCtx<'_>) -> u32 {
        ctx.process
            .det
            .get()
            .and_then(|d| d.det_tid(ctx.thread.tid))
            .map_or(u32::MAX, |d| d.0)
    }

    fn where_(&self, ctx: &SyscallCtx<'_>) -> (Option<u64>, Option<u64>) {
        let det = ctx.process.det.get();
        (
            det.and_then(|d| d.logical_time(ctx.thread.tid)),
            det.map(|d| d.stats.turns.load(Ordering::Relaxed)),
        )
    }

    /// Secondary: the descriptor `fd` the primary's call returned cannot be given the same
    /// number here (`why`): reported as a divergence, and the thread stops.
    pub fn descriptor_mismatch(&self, ctx: &mut SyscallCtx<'_>, fd: i64, why: String) -> SysResult {
        let (logical_time, turn) = self.where_(ctx);
        self.mismatch(
            ctx.process,
            Mismatch {
                kind: "syscall",
                thread: Self::det_tid(ctx),
                syscall_seq: ctx.thread.syscalls,
                syscall: names::name(ctx.nr),
                primary_syscall: Some(names::name(ctx.nr)),
                fd: Some(fd),
                logical_time,
                turn,
                primary: fd.to_string().into_bytes(),
                secondary: why.clone().into_bytes(),
                detail: why,
                ..Default::default()
            },
        );
        Self::stop_thread(ctx)
    }

    fn stop_thread(ctx: &mut SyscallCtx<'_>) -> SysResult {
        ctx.action = ThreadAction::Stop;
        Err(Errno::EINTR)
    }

    /// Secondary: takes the record for this call, checking it is one for this syscall.
    fn take_for(&self, ctx: &mut SyscallCtx<'_>) -> Option<ThreadRecord> {
        let tid = Self::det_tid(ctx);
        let seq = ctx.thread.syscalls;
        ctx.thread.replicated_events += 1;
        let event = ctx.thread.replicated_events;
        let (event_p, rec) = self.take(ctx.process, tid)?;
        let (nr_p, seq_p) = match &rec {
            ThreadRecord::Syscall { nr, syscall_no, .. }
            | ThreadRecord::Output { nr, syscall_no, .. } => (Some(*nr), *syscall_no),
            _ => (None, 0),
        };
        if event_p != event || nr_p != Some(ctx.nr as u32) {
            let (logical_time, turn) = self.where_(ctx);
            let ours = names::name(ctx.nr);
            let theirs = rec.describe();
            self.mismatch(
                ctx.process,
                Mismatch {
                    kind: "syscall",
                    thread: tid,
                    syscall_seq: seq,
                    syscall: ours.clone(),
                    primary_syscall: Some(theirs.clone()),
                    logical_time,
                    turn,
                    primary: format!("#{seq_p} {theirs}").into_bytes(),
                    secondary: format!("#{seq} {ours}").into_bytes(),
                    detail: format!(
                        "the secondary's syscall #{seq} is {ours}, the primary's next logged event of this thread is {theirs} (its syscall #{seq_p})"
                    ),
                    ..Default::default()
                },
            );
            return None;
        }
        Some(rec)
    }

    /// The signal the record says the primary delivered after this call.
    fn replay_signal(ctx: &mut SyscallCtx<'_>, sig: i32, status: &StatusPage) {
        if sig > 0 && sig < 65 {
            ctx.process.signals.inject(ctx.thread.tid, sig);
            ctx.thread.signal_after = Some(sig);
            status.add(Counter::Signals, 1);
        }
    }

    /// Secondary: a Recorded call, replayed.
    fn replay(&self, ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
        let Some(rec) = self.take_for(ctx) else {
            return Self::stop_thread(ctx);
        };
        let ThreadRecord::Syscall {
            ret,
            signal,
            writes,
            ..
        } = rec
        else {
            return Self::stop_thread(ctx);
        };
        let (reentry, writes): (Vec<_>, Vec<_>) = writes
            .into_iter()
            .partition(|(addr, _)| *addr == REENTRY_ADDR);
        ctx.reentry_at = reentry.first().and_then(|(_, b)| {
            let mut v = [0u8; 8];
            (b.len() == 8).then(|| {
                v.copy_from_slice(b);
                u64::from_le_bytes(v)
            })
        });
        let plan = effects::plan(ctx.process, ctx.nr, a);
        let bytes = match effects::place(ctx.process, ctx.nr, a, &plan, ret, &writes) {
            Ok(placed) => {
                if placed.relocated > 0 {
                    tracing::debug!(
                        tid = Self::det_tid(ctx),
                        seq = ctx.thread.syscalls,
                        syscall = %names::name(ctx.nr),
                        parts = placed.relocated,
                        "replayed result placed at the secondary's own buffers"
                    );
                }
                placed.bytes
            }
            Err(why) => {
                let tid = Self::det_tid(ctx);
                let seq = ctx.thread.syscalls;
                let (logical_time, turn) = self.where_(ctx);
                let total: usize = writes.iter().map(|(_, d)| d.len()).sum();
                self.mismatch(
                    ctx.process,
                    Mismatch {
                        kind: "syscall",
                        thread: tid,
                        syscall_seq: seq,
                        syscall: names::name(ctx.nr),
                        primary_syscall: Some(names::name(ctx.nr)),
                        logical_time,
                        turn,
                        primary: format!("{} parts, {total} bytes", writes.len()).into_bytes(),
                        secondary: why.to_string().into_bytes(),
                        detail: why.to_string(),
                        ..Default::default()
                    },
                );
                return Self::stop_thread(ctx);
            }
        };
        if ret >= 0 {
            if let Err(why) = self.placeholders(ctx, a, ret) {
                return self.descriptor_mismatch(ctx, ret, why);
            }
        }
        Self::replay_signal(ctx, signal, &self.status);
        self.status.add(Counter::RecordedSyscalls, 1);
        self.agreed(AgreedEvent {
            thread: Self::det_tid(ctx),
            syscall_seq: ctx.thread.syscalls,
            syscall: names::name(ctx.nr),
            kind: "recorded",
            result: ret,
            bytes,
        });
        to_result(ret)
    }

    /// Secondary: descriptors the primary's call created get placeholders at the same numbers.
    #[allow(non_upper_case_globals)]
    fn placeholders(&self, ctx: &mut SyscallCtx<'_>, a: [u64; 6], ret: i64) -> Result<(), String> {
        use libc::*;
        let (fds, cloexec): (Vec<i64>, bool) = match ctx.nr as i64 {
            SYS_socket => (vec![ret], a[1] & SOCK_CLOEXEC as u64 != 0),
            SYS_accept => (vec![ret], false),
            SYS_accept4 => (vec![ret], a[3] & SOCK_CLOEXEC as u64 != 0),
            SYS_timerfd_create => (vec![ret], a[1] & TFD_CLOEXEC as u64 != 0),
            SYS_socketpair => {
                let sv: [i32; 2] = ctx
                    .process
                    .mem
                    .read_obj(a[3])
                    .map_err(|_| "bad socketpair array")?;
                (
                    vec![sv[0] as i64, sv[1] as i64],
                    a[1] & SOCK_CLOEXEC as u64 != 0,
                )
            }
            _ => return Ok(()),
        };
        for want in fds {
            // SAFETY: creating a socket; the result is checked and owned below.
            let raw = unsafe { libc::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0) };
            if raw < 0 {
                return Err(format!(
                    "cannot create a placeholder descriptor: {}",
                    Errno::last().0
                ));
            }
            // SAFETY: raw was just created and is ours.
            let host = unsafe { OwnedFd::from_raw_fd(raw) };
            // At the primary's number, not the lowest free one. An accept's waits for the
            // call's re-entry turn, as the primary's did (ParkedFd).
            if matches!(ctx.nr as i64, SYS_accept | SYS_accept4) && ctx.process.det.get().is_some()
            {
                ctx.thread.parked_fd = Some(ParkedFd {
                    file: Arc::new(OpenFile::external(host)),
                    cloexec,
                    at: Some(want),
                });
                continue;
            }
            let mut fds = lock(&ctx.process.fds);
            if fds.get(want).is_ok() {
                return Err(format!(
                    "the primary's call returned descriptor {want}, which is still open in the secondary"
                ));
            }
            fds.install_at(want, Arc::new(OpenFile::external(host)), cloexec)
                .map_err(|e| format!("cannot install a placeholder at {want}: errno {}", e.0))?;
        }
        Ok(())
    }

    /// Secondary: a Compared call: compare the bytes, do not output them.
    fn compare(&self, ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
        let ours = effects::would_output(ctx.process, ctx.nr, a).unwrap_or_default();
        let Some(rec) = self.take_for(ctx) else {
            return Self::stop_thread(ctx);
        };
        let ThreadRecord::Output {
            fd,
            ret,
            signal,
            asked,
            hash,
            data,
            ..
        } = rec
        else {
            return Self::stop_thread(ctx);
        };
        let n = if ret > 0 { ret as usize } else { 0 };
        let ours_sent = &ours[..n.min(ours.len())];
        let same_len = ours.len() as u64 == asked;
        let same_bytes = match &data {
            Some(d) => d.as_slice() == ours_sent,
            None => wire::output_hash(ours_sent) == hash,
        };
        if !(same_len && same_bytes) {
            let tid = Self::det_tid(ctx);
            let seq = ctx.thread.syscalls;
            let (logical_time, turn) = self.where_(ctx);
            let primary = data.clone().unwrap_or_default();
            let first = match &data {
                Some(d) => first_difference(d, &ours),
                None => None,
            }
            .or(if same_len {
                None
            } else {
                Some(ours.len().min(asked as usize) as u64)
            });
            self.mismatch(
                ctx.process,
                Mismatch {
                    kind: "output",
                    thread: tid,
                    syscall_seq: seq,
                    syscall: names::name(ctx.nr),
                    primary_syscall: Some(names::name(ctx.nr)),
                    fd: Some(i64::from(fd)),
                    logical_time,
                    turn,
                    primary,
                    secondary: ours.clone(),
                    primary_hash: data.is_none().then_some(hash),
                    first_differing_byte: first,
                    detail: format!(
                        "output to fd {fd} differs: the primary wrote {asked} bytes, the secondary would write {}",
                        ours.len()
                    ),
                },
            );
            return Self::stop_thread(ctx);
        }
        if let Some(s) = &self.secondary {
            let sink = match fd {
                1 => &s.stdout,
                2 => &s.stderr,
                _ => &s.net,
            };
            let _ = lock(sink).write_all(ours_sent);
        }
        effects::mimic_output(ctx.process, ctx.nr, a, ret);
        Self::replay_signal(ctx, signal, &self.status);
        self.status.add(Counter::ComparedOutputs, 1);
        self.status.add(Counter::BytesCompared, n as u64);
        self.agreed(AgreedEvent {
            thread: Self::det_tid(ctx),
            syscall_seq: ctx.thread.syscalls,
            syscall: names::name(ctx.nr),
            kind: "compared",
            result: ret,
            bytes: n as u64,
        });
        let r = to_result(ret);
        if ret == -(libc::EPIPE as i64) {
            return crate::syscalls::util_epipe(ctx, r);
        }
        r
    }

    /// Secondary: exit_group: the status must be the primary's.
    fn compare_exit(&self, ctx: &mut SyscallCtx<'_>, status: i64) -> bool {
        let Some(rec) = self.take_for(ctx) else {
            return false;
        };
        let ThreadRecord::Syscall { ret, .. } = rec else {
            return false;
        };
        if ret != status {
            let tid = Self::det_tid(ctx);
            let seq = ctx.thread.syscalls;
            let (logical_time, turn) = self.where_(ctx);
            self.mismatch(
                ctx.process,
                Mismatch {
                    kind: "exit",
                    thread: tid,
                    syscall_seq: seq,
                    syscall: names::name(ctx.nr),
                    primary_syscall: Some(names::name(ctx.nr)),
                    logical_time,
                    turn,
                    primary: ret.to_string().into_bytes(),
                    secondary: status.to_string().into_bytes(),
                    first_differing_byte: first_difference(
                        ret.to_string().as_bytes(),
                        status.to_string().as_bytes(),
                    ),
                    detail: format!("the primary exited with {ret}, the secondary with {status}"),
                    ..Default::default()
                },
            );
            return false;
        }
        self.agreed(AgreedEvent {
            thread: Self::det_tid(ctx),
            syscall_seq: ctx.thread.syscalls,
            syscall: names::name(ctx.nr),
            kind: "exit",
            result: ret,
            bytes: 0,
        });
        true
    }
}

/// The pseudo-address under which a Syscall record carries the det re-entry time of an
/// external call: no program address is this high (it is above the 47-bit user range).
const REENTRY_ADDR: u64 = u64::MAX - 7;

fn to_result(ret: i64) -> SysResult {
    if ret < 0 {
        // From the channel, so checked: a negation or narrowing must not overflow.
        Err(Errno(
            i32::try_from(ret.unsigned_abs()).unwrap_or(libc::EINVAL),
        ))
    } else {
        Ok(ret as u64)
    }
}

/// Index of the first byte where `a` and `b` differ (the shorter length if one is a prefix
/// of the other); None if equal.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<u64> {
    if a == b {
        return None;
    }
    let n = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    Some(n as u64)
}

/// How a syscall is treated in this call: its class, refined by descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Treatment {
    Local,
    Recorded,
    Compared,
    Exit,
}

fn treatment(ctx: &SyscallCtx<'_>, entry: &SyscallEntry, a: [u64; 6]) -> Treatment {
    let external = || {
        effects::io_fd(ctx.process, ctx.nr, a).is_some_and(|fd| {
            lock(&ctx.process.fds)
                .get(fd)
                .is_ok_and(|f| f.is_external())
        })
    };
    match entry.class {
        Class::Local if ctx.nr as i64 == libc::SYS_exit_group => Treatment::Exit,
        Class::Local | Class::Unsupported => Treatment::Local,
        Class::Recorded => Treatment::Recorded,
        Class::Compared => Treatment::Compared,
        Class::InputByFd if external() => Treatment::Recorded,
        Class::OutputByFd if external() => Treatment::Compared,
        Class::InputByFd | Class::OutputByFd => Treatment::Local,
    }
}

/// Serves one syscall of a replicated program (see the module documentation).
pub fn serve(
    rep: &Replication,
    ctx: &mut SyscallCtx<'_>,
    entry: &SyscallEntry,
    a: [u64; 6],
) -> SysResult {
    let handler = entry.handler;
    let local = |ctx: &mut SyscallCtx<'_>,
                 h: &mut dyn FnMut(&mut SyscallCtx<'_>, [u64; 6]) -> SysResult| {
        crate::syscalls::serve_local(ctx, entry, a, h)
    };
    let how = treatment(ctx, entry, a);
    tracing::trace!(
        target: "ditto::turns",
        role = ?rep.role,
        tid = Replication::det_tid(ctx),
        seq = ctx.thread.syscalls,
        syscall = entry.name,
        ?how,
        "syscall"
    );
    match (rep.role, how) {
        (_, Treatment::Local) => local(ctx, &mut |c, a| handler(c, a)),
        (Role::Primary, Treatment::Exit) => {
            let tid = Replication::det_tid(ctx);
            ctx.thread.replicated_events += 1;
            rep.send_thread(
                tid,
                ctx.thread.replicated_events,
                &ThreadRecord::Syscall {
                    nr: ctx.nr as u32,
                    syscall_no: ctx.thread.syscalls,
                    ret: (a[0] & 0xff) as i64,
                    signal: 0,
                    writes: Vec::new(),
                },
            );
            rep.commit();
            local(ctx, &mut |c, a| handler(c, a))
        }
        (Role::Secondary, Treatment::Exit) => {
            if !rep.compare_exit(ctx, (a[0] & 0xff) as i64) {
                return Replication::stop_thread(ctx);
            }
            local(ctx, &mut |c, a| handler(c, a))
        }
        (Role::Primary, Treatment::Recorded) => {
            let plan = effects::plan(ctx.process, ctx.nr, a);
            ctx.reentry_at = None;
            let r = local(ctx, &mut |c, a| handler(c, a));
            let ret = match r {
                Ok(v) => v as i64,
                Err(e) => -(e.0 as i64),
            };
            if ret >= 0 {
                mark_external(ctx, a, ret);
            }
            let ranges = effects::written(ctx.process, ctx.nr, a, &plan, ret);
            let mut writes = effects::capture(ctx.process, &ranges);
            if let Some(at) = ctx.reentry_at {
                writes.push((REENTRY_ADDR, at.to_le_bytes().to_vec()));
            }
            let signal = announce_signal(ctx);
            let tid = Replication::det_tid(ctx);
            ctx.thread.replicated_events += 1;
            rep.send_thread(
                tid,
                ctx.thread.replicated_events,
                &ThreadRecord::Syscall {
                    nr: ctx.nr as u32,
                    syscall_no: ctx.thread.syscalls,
                    ret,
                    signal,
                    writes,
                },
            );
            r
        }
        (Role::Secondary, Treatment::Recorded) => local(ctx, &mut |c, a| rep.replay(c, a)),
        (Role::Primary, Treatment::Compared) => {
            let ours = effects::would_output(ctx.process, ctx.nr, a).unwrap_or_default();
            rep.commit();
            let r = local(ctx, &mut |c, a| handler(c, a));
            let ret = match r {
                Ok(v) => v as i64,
                Err(e) => -(e.0 as i64),
            };
            let n = if ret > 0 {
                (ret as usize).min(ours.len())
            } else {
                0
            };
            let sent = &ours[..n];
            let signal = announce_signal(ctx);
            let tid = Replication::det_tid(ctx);
            ctx.thread.replicated_events += 1;
            rep.send_thread(
                tid,
                ctx.thread.replicated_events,
                &ThreadRecord::Output {
                    nr: ctx.nr as u32,
                    syscall_no: ctx.thread.syscalls,
                    fd: effects::io_fd(ctx.process, ctx.nr, a).unwrap_or(-1) as i32,
                    ret,
                    signal,
                    asked: ours.len() as u64,
                    hash: wire::output_hash(sent),
                    data: (sent.len() <= wire::INLINE_OUTPUT_MAX).then(|| sent.to_vec()),
                },
            );
            r
        }
        (Role::Secondary, Treatment::Compared) => local(ctx, &mut |c, a| rep.compare(c, a)),
    }
}

/// Primary: descriptors that recorded calls create reach outside the program.
#[allow(non_upper_case_globals)]
fn mark_external(ctx: &SyscallCtx<'_>, a: [u64; 6], ret: i64) {
    use libc::*;
    let fds: Vec<i64> = match ctx.nr as i64 {
        SYS_socket | SYS_accept | SYS_accept4 | SYS_timerfd_create => vec![ret],
        SYS_socketpair => match ctx.process.mem.read_obj::<[i32; 2]>(a[3]) {
            Ok(sv) => vec![sv[0] as i64, sv[1] as i64],
            Err(_) => vec![],
        },
        _ => return,
    };
    let t = lock(&ctx.process.fds);
    for fd in fds {
        if let Ok(f) = t.get(fd) {
            f.mark_external();
        }
    }
}

/// Primary: picks the signal to deliver right after this call (the thread's next
/// deliverable one), so that its record can name it.
fn announce_signal(ctx: &mut SyscallCtx<'_>) -> i32 {
    if ctx.action != ThreadAction::Continue || ctx.process.exiting() {
        return 0;
    }
    match ctx.process.signals.next_deliverable(ctx.thread.tid) {
        Some(sig) => {
            ctx.thread.signal_after = Some(sig);
            sig
        }
        None => 0,
    }
}

impl ScheduleLink for Replication {
    fn log_turn(&self, turn: Turn) {
        self.send(RecordKind::Turn, &turn.to_payload());
    }

    fn thread_started(&self, tid: DetTid) {
        self.send(RecordKind::ThreadStart, &wire::encode_thread_start(tid.0));
    }

    fn log_timed_wait(&self, tid: DetTid, outcome: TimedWait) {
        self.send_thread(
            tid.0,
            0,
            &ThreadRecord::TimedWait {
                took_turn: outcome.took_turn,
                timed_out: outcome.timed_out,
                at: outcome.reentry_at,
            },
        );
    }

    fn timed_wait_outcome(&self, tid: DetTid) -> Option<TimedWait> {
        let process = self.process()?;
        match self.take_until(&process, tid.0, true)? {
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
                    &process,
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

    fn follow_timed_wait(&self, tid: DetTid) -> WaitNews {
        let Some(s) = &self.secondary else {
            return WaitNews::Ended;
        };
        let mut q = lock(&s.queues);
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
                }
                self.status.add(Counter::RecordsConsumed, 1);
                WaitNews::TimedOut
            }
            Some(_) => WaitNews::Passed,
            None if q.end.is_some() || q.closed.is_some() => WaitNews::Ended,
            None => WaitNews::Unknown,
        }
    }

    fn schedule_diverged(&self, tid: DetTid, error: &det::TurnError) {
        let Some(s) = &self.secondary else { return };
        let ended = {
            let q = lock(&s.queues);
            q.end.is_some() || q.closed.is_some()
        };
        if ended {
            // The primary's log is over. A thread that wants a turn beyond it may just be
            // one the primary's exit cut short; the drain decides: the program reaching its
            // own end is agreement, every thread waiting for the log is a divergence.
            *lock(&s.late_schedule) = Some(format!("thread {tid}: {error}"));
            s.waiting.fetch_add(1, Ordering::SeqCst);
            if let Some(p) = self.process() {
                while !p.exiting() && !s.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            s.waiting.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        if let Some(process) = self.process() {
            self.mismatch(
                &process,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_threads_never_announced_are_refused() {
        let mut intake = Intake::default();
        let rec = ThreadRecord::Reentry { at: 1 };
        assert!(
            intake.admit(0, 1, &rec).is_ok(),
            "the main thread needs no announcement"
        );
        let e = intake.admit(1, 1, &rec).unwrap_err();
        assert!(e.contains("never created"), "{e}");
        assert!(intake.admit(70_000, 1, &rec).is_err());
        intake.announce(1).unwrap();
        assert!(intake.admit(1, 1, &rec).is_ok());
        // Out of order or repeated announcements are channel errors.
        assert!(intake.announce(5).is_err());
        assert!(intake.announce(1).is_err());
        intake.announce(2).unwrap();
        assert!(intake.admit(2, 1, &rec).is_ok());
        assert!(intake.admit(3, 1, &rec).is_err());
    }

    #[test]
    fn first_difference_finds_the_index() {
        assert_eq!(first_difference(b"abc", b"abc"), None);
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
        assert_eq!(first_difference(b"ab", b"abc"), Some(2));
        assert_eq!(first_difference(b"", b"x"), Some(0));
    }
}
