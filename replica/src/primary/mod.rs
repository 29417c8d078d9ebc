//! The primary's side of replication: the records it sends to the secondary (fragmented when
//! larger than one ring record), output commit (an output leaves the program only once the
//! secondary holds every record sent before it), and the end of its log.
//!
//! What the primary records of one syscall is in `call` ([`crate::call`]).
//!
//! A broken channel (the secondary died or lagged out) does not stop the program: it goes on
//! unreplicated, and [`Primary::error`] says why for the report.

mod call;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use det::record::RecordKind;

use crate::channel::AckWatch;
use crate::handoff::{self, HandoffError, Tag};
use crate::status::{Counter, StatusPage};
use crate::sync::lock;
use crate::wire::{self, EndInfo, ThreadRecord};
use crate::{ChannelConfig, ChannelError, Producer};

/// Fault injection for tests: the primary corrupts its Nth record (from 1) in the ring, after
/// the checksum, so that the secondary must report a channel error.
pub const CORRUPT_ENV: &str = "DITTO_PAIR_CORRUPT_RECORD";

/// The primary's end of the channel.
pub struct Primary {
    /// None once the log ended or the channel broke.
    producer: Mutex<Option<Producer>>,
    /// Waits for the secondary's acknowledgements without the producer's lock, so that a
    /// thread waiting to commit an output does not hold up the other threads' records.
    acks: AckWatch,
    broken: AtomicBool,
    error: Mutex<Option<String>>,
    /// The counters shared with the supervisor.
    status: Arc<StatusPage>,
    /// Fault injection ([`CORRUPT_ENV`]): the record number to corrupt, counted from 1.
    corrupt_at: Option<u64>,
    /// Failover: the descriptor channel's end ([`crate::handoff`]); None without failover.
    handoff: Option<OwnedFd>,
    /// Per-thread records sent (a fragmented one once), against which the secondary's
    /// [`Counter::RecordsConsumed`] measures its replay lag.
    thread_records: AtomicU64,
}

/// Failover: how many per-thread records the secondary's replay may lag behind the primary
/// when an output is committed. A takeover replays that lag first, so it bounds the
/// takeover time (about 20-100 µs a record on these machines).
pub const MAX_REPLAY_LAG: u64 = 512;

/// Failover: the longest an output waits for the secondary's replay to come within
/// [`MAX_REPLAY_LAG`]; past it the output goes ahead (a secondary whose next record only a
/// later output of the primary produces must not hold the primary up).
const REPLAY_WAIT_MAX: Duration = Duration::from_millis(200);

/// Failover: an output stops waiting for the secondary's replay once the replay has not
/// moved for this long.
const REPLAY_STILL: Duration = Duration::from_millis(2);

impl Primary {
    /// Creates the channel and sends its memfd to the secondary over `peer`, whose hang-up
    /// then tells the primary that the secondary is gone. With `failover`, also the
    /// descriptor channel's other end, and over it this process's standard descriptors
    /// (the host descriptions behind the program's 0, 1 and 2).
    pub fn connect(
        peer: OwnedFd,
        channel: ChannelConfig,
        status: Arc<StatusPage>,
        failover: bool,
    ) -> Result<Self, ChannelError> {
        let (producer, memfd) = crate::Channel::create_with(channel)?;
        crate::send_fd(peer.as_fd(), memfd.as_fd())?;
        let handoff = if failover {
            let (ours, theirs) = handoff::pair().map_err(handoff_io)?;
            crate::send_fd(peer.as_fd(), theirs.as_fd())?;
            // Exactly STDIO_MESSAGES messages, before any other: the secondary reads them
            // at connect. A closed one goes as an empty message.
            for fd in 0..handoff::STDIO_MESSAGES as i32 {
                // SAFETY: F_GETFD only asks whether the number is open.
                let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
                // SAFETY: `fd` is open (checked above) and stays open for this call: the
                // standard descriptors are closed by nobody in the VMM.
                let std = open.then(|| unsafe { BorrowedFd::borrow_raw(fd) });
                let fds: Vec<BorrowedFd> = std.into_iter().collect();
                handoff::send(ours.as_fd(), Tag::stdio(fd as u32), &fds).map_err(handoff_io)?;
            }
            Some(ours)
        } else {
            None
        };
        let producer = producer.watch_socket(peer);
        let acks = producer.ack_watch();
        Ok(Primary {
            producer: Mutex::new(Some(producer)),
            acks,
            broken: AtomicBool::new(false),
            error: Mutex::new(None),
            status,
            corrupt_at: std::env::var(CORRUPT_ENV).ok().and_then(|v| v.parse().ok()),
            handoff,
            thread_records: AtomicU64::new(0),
        })
    }

    /// Whether it passes its outside descriptors to the secondary (failover).
    pub fn passes_descriptors(&self) -> bool {
        self.handoff.is_some()
    }

    /// Failover: passes the descriptors det thread `thread`'s replicated event `event`
    /// created (`None`: closed before it could be passed) to the secondary, before that
    /// event's record is sent. A failure breaks replication, as a full ring does: a record
    /// whose descriptors the secondary cannot have must not be sent.
    pub fn pass_descriptors(&self, thread: u32, event: u64, fds: &[Option<BorrowedFd>]) {
        let Some(sock) = &self.handoff else { return };
        if self.broken.load(Ordering::Relaxed) {
            return;
        }
        let first = Tag {
            thread,
            event,
            index: 0,
        };
        let all: Option<Vec<BorrowedFd>> = fds.iter().copied().collect();
        let sent = match all {
            Some(all) if all.len() <= handoff::MAX_FDS_PER_MESSAGE => {
                handoff::send(sock.as_fd(), first, &all)
            }
            _ => fds.iter().enumerate().try_for_each(|(i, fd)| {
                let tag = Tag {
                    index: i as u32,
                    ..first
                };
                let one: Vec<BorrowedFd> = fd.iter().copied().collect();
                handoff::send(sock.as_fd(), tag, &one)
            }),
        };
        if let Err(e) = sent {
            lock(&self.producer).take();
            self.broke(format!("cannot pass descriptors to the secondary: {e}"));
        }
    }

    /// Why the channel broke, if it did (the secondary died or lagged out).
    pub fn error(&self) -> Option<String> {
        lock(&self.error).clone()
    }

    /// Sends the program's end and closes the channel.
    pub fn finish(&self, end: EndInfo) {
        self.send(RecordKind::End, &end.encode());
        lock(&self.producer).take();
    }

    /// Sends one record, counting it on the status page; a failure breaks replication.
    pub fn send(&self, kind: RecordKind, payload: &[u8]) {
        if self.broken.load(Ordering::Relaxed) {
            return;
        }
        let mut g = lock(&self.producer);
        let Some(producer) = g.as_mut() else { return };
        let nth = producer.stats().records_sent + 1;
        let sent = match self.corrupt_at {
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
                self.broke(format!("{e}"));
            }
        }
    }

    fn broke(&self, why: String) {
        if !self.broken.swap(true, Ordering::Relaxed) {
            eprintln!(
                "ditto: primary: replication stopped ({why}); the program continues unreplicated"
            );
            *lock(&self.error) = Some(why);
        }
    }

    /// Output commit: waits until the secondary holds every record sent so far; with
    /// failover, also until its replay lags at most [`MAX_REPLAY_LAG`] records behind, for
    /// at most [`REPLAY_WAIT_MAX`].
    pub fn commit(&self) {
        let sent = match lock(&self.producer).as_ref() {
            Some(producer) => producer.records_sent(),
            None => return,
        };
        if sent == 0 {
            return;
        }
        // The wait is outside the producer's lock: while this thread waits for the
        // secondary, the others go on sending (and committing) their own records.
        if let Err(e) = self.acks.wait_acked(sent - 1) {
            // Only a channel still open breaks: one the log's end closed meanwhile (the
            // secondary may then be gone) stopped nothing.
            if lock(&self.producer).take().is_some() {
                self.broke(format!("{e}"));
            }
            return;
        }
        if self.handoff.is_some() {
            self.wait_for_replay();
        }
    }

    /// Failover: waits (briefly, see [`REPLAY_WAIT_MAX`]) until the secondary's replay is
    /// within [`MAX_REPLAY_LAG`] records, as long as the replay moves: a secondary may wait
    /// for what only the primary's future records tell (the det mode's gate, a turn of the
    /// log), and waiting for it then would only stall both.
    fn wait_for_replay(&self) {
        let sent = self.thread_records.load(Ordering::Relaxed);
        let consumed = || self.status.get(Counter::RecordsConsumed);
        let mut seen = consumed();
        if sent.saturating_sub(seen) <= MAX_REPLAY_LAG {
            return;
        }
        let until = Instant::now() + REPLAY_WAIT_MAX;
        let mut moved_at = Instant::now();
        while Instant::now() < until && !self.broken.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_micros(100));
            let now = consumed();
            if sent.saturating_sub(now) <= MAX_REPLAY_LAG {
                return;
            }
            if now != seen {
                seen = now;
                moved_at = Instant::now();
            } else if moved_at.elapsed() >= REPLAY_STILL {
                return;
            }
        }
    }

    /// Sends one per-thread record: `tid`'s replicated event `seq`.
    pub fn send_thread(&self, tid: u32, seq: u64, rec: &ThreadRecord) {
        self.thread_records.fetch_add(1, Ordering::Relaxed);
        let mut buf = Vec::new();
        rec.encode(tid, seq, &mut buf);
        let max = lock(&self.producer).as_ref().map(|pr| pr.max_payload());
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
}

/// A descriptor channel failure at connect, as the channel's I/O error.
fn handoff_io(e: HandoffError) -> ChannelError {
    match e {
        HandoffError::Io(io) => ChannelError::Io(io),
        other => ChannelError::Io(std::io::Error::other(other.to_string())),
    }
}
