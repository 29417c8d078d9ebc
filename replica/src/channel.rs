//! The channel between the primary and the secondary VMM (DESIGN.md §6): a single-producer,
//! single-consumer byte ring in a memfd that both processes map.
//!
//! The primary calls [`Channel::create`], hands the descriptor to the secondary with
//! [`send_fd`] over a Unix socket, and the secondary maps it with [`Consumer::attach`].
//!
//! Layout of the memfd: one header page, then `capacity` data bytes (a power of two).
//! - The header holds the layout identity and bounds, then two cache-line-separated sides:
//!   `head` (written by the producer: bytes and records published) and `tail` (written by the
//!   consumer: bytes and records consumed). Positions are monotonic `u64` byte counts; the ring
//!   offset is `pos & (capacity - 1)`. Each side also holds a futex word and a sleeper count so
//!   the other process can sleep on it, and a `closed` flag.
//! - Records are [`det::record`] frames, each starting 8-byte aligned. A record never wraps:
//!   when it does not fit before the end of the ring, the producer writes [`PAD_MARKER`] and
//!   continues at offset 0, so the consumer decodes one contiguous copy. That is why a record
//!   may take at most half the ring.
//!
//! Ordering: the producer writes a record, then stores `head.pos` with Release; the consumer
//! loads it with Acquire before copying. The consumer copies a record out, then stores
//! `tail.pos` with Release; the producer loads it with Acquire before reusing the space.
//! Advancing the tail is the acknowledgement that [`Producer::wait_acked`] waits for.
//!
//! The consumer never trusts the ring: it copies each record into private memory, then checks
//! counters, bounds, framing, checksum and sequence, and reports a bad record as
//! [`ChannelError::Corrupt`] with its stream offset (it does not advance past it).

use crate::sys;
use det::record::RecordError;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

const LAYOUT_MAGIC: u64 = u64::from_le_bytes(*b"dittoRNG");
const LAYOUT_VERSION: u64 = 1;
const HEADER_PAGE: usize = 4096;
const ALIGN: u64 = 8;
/// Written where a record would not fit before the end of the ring: "skip to offset 0". Its
/// first bytes differ from [`det::record::MAGIC`], so the two cannot be confused.
pub const PAD_MARKER: u64 = u64::from_le_bytes(*b"PADditto");
/// How often a sleeping side wakes to look for a hung-up socket.
const POLL: Duration = Duration::from_millis(10);

/// Errors of the channel.
#[allow(missing_docs)] // Each variant's doc names its fields.
#[derive(Debug, Error)]
pub enum ChannelError {
    /// A system call failed.
    #[error("channel I/O: {0}")]
    Io(#[from] io::Error),
    /// The memfd is not a channel this code understands (what is wrong is the message).
    #[error("bad channel layout: {0}")]
    BadLayout(&'static str),
    /// A message on the socket carried no descriptor.
    #[error("no descriptor in the message")]
    NoFd,
    /// A record of `len` encoded bytes; the ring takes at most `max`.
    #[error("record of {len} bytes exceeds the ring's limit of {max}")]
    TooLarge { len: usize, max: usize },
    /// The producer is at its lag bound, or the consumer has nothing to read.
    #[error("operation would block")]
    WouldBlock,
    /// The other process closed the socket or its end, or made no progress for the timeout.
    #[error("peer gone")]
    PeerGone,
    /// The producer closed the channel and every record has been read.
    #[error("channel closed by the producer")]
    Closed,
    /// The record at stream byte `offset` (ring offset `ring_offset`) is malformed.
    #[error("corrupt record at stream offset {offset} (ring offset {ring_offset}): {source}")]
    Corrupt {
        offset: u64,
        ring_offset: u64,
        source: RecordError,
    },
    /// The record at `offset` carries seq `found`, but `expected` was due.
    #[error("record at offset {offset} has seq {found}, expected {expected}")]
    OutOfOrder {
        offset: u64,
        expected: u64,
        found: u64,
    },
    /// The shared counters are impossible (`head` behind `tail` or beyond `capacity` ahead).
    #[error("impossible ring counters: head {head}, tail {tail}, capacity {capacity}")]
    BadCounters { head: u64, tail: u64, capacity: u64 },
    /// [`Producer::wait_acked`] for record `seq`, but only `sent` records were sent.
    #[error("record {seq} was never sent ({sent} sent)")]
    NotSent { seq: u64, sent: u64 },
}

/// One side of the ring: the counters its owner advances, and the futex the other side
/// sleeps on while waiting for them to move. Aligned to two cache lines because adjacent-line
/// prefetch pairs lines.
#[repr(C, align(128))]
struct Side {
    pos: AtomicU64,
    records: AtomicU64,
    wake: AtomicU32,
    sleepers: AtomicU32,
    closed: AtomicU32,
}

/// The header page. Every field is atomic because the other process may write any of them,
/// rightly or not.
#[repr(C)]
struct Header {
    magic: AtomicU64,
    version: AtomicU64,
    capacity: AtomicU64,
    max_lag_bytes: AtomicU64,
    max_lag_records: AtomicU64,
    head: Side,
    tail: Side,
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_PAGE);

/// How a channel is built and how its ends wait.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// Ring size in bytes; rounded up to a power of two of at least one page.
    pub capacity: usize,
    /// The producer waits while more than this many bytes are unconsumed (at most
    /// `capacity`). A lone record larger than this still goes through into an empty ring.
    pub max_lag_bytes: u64,
    /// The producer waits while this many records are unconsumed.
    pub max_lag_records: u64,
    /// A waiting end reports [`ChannelError::PeerGone`] after this long without progress from
    /// the other; `None` waits for ever (a hung-up socket is still noticed). For the consumer
    /// this is time without new records, so it must exceed the primary's longest idle spell.
    pub peer_timeout: Option<Duration>,
    /// Polls before sleeping on the futex: spinning beats a syscall when the peer is active.
    pub spin: u32,
}

impl ChannelConfig {
    /// A ring of `capacity` bytes whose lag is bounded only by its size, 10 s peer timeout.
    pub fn new(capacity: usize) -> Self {
        ChannelConfig {
            capacity,
            max_lag_bytes: u64::MAX,
            max_lag_records: u64::MAX,
            peer_timeout: Some(Duration::from_secs(10)),
            spin: 2000,
        }
    }
}

/// Counters of a channel, the same from either end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Records published by the producer.
    pub records_sent: u64,
    /// Ring bytes published (frames, alignment and wrap padding).
    pub bytes_sent: u64,
    /// Records consumed (acknowledged) by the consumer.
    pub records_acked: u64,
    /// Ring bytes consumed.
    pub bytes_acked: u64,
}

impl Stats {
    /// Records sent but not yet consumed.
    pub fn lag_records(&self) -> u64 {
        self.records_sent.saturating_sub(self.records_acked)
    }
    /// Bytes sent but not yet consumed.
    pub fn lag_bytes(&self) -> u64 {
        self.bytes_sent.saturating_sub(self.bytes_acked)
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "sent {} rec / {} B, acked {} rec / {} B, lag {} rec / {} B",
            self.records_sent,
            self.bytes_sent,
            self.records_acked,
            self.bytes_acked,
            self.lag_records(),
            self.lag_bytes()
        )
    }
}

/// The mapped memfd and what each end needs to wait.
struct Ring {
    map: sys::Mapping,
    mask: u64,
    /// Set once, before the ring is shared with an [`AckWatch`].
    peer_sock: std::sync::OnceLock<OwnedFd>,
    timeout: Option<Duration>,
    spin: u32,
}

impl Ring {
    fn header(&self) -> &Header {
        // SAFETY: the mapping is page-aligned and at least HEADER_PAGE long, Header fits in it
        // and is all atomics, for which any bit pattern is valid and concurrent access from
        // the other process is sound.
        unsafe { &*self.map.ptr().cast::<Header>() }
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the data area starts right after the header page, inside the mapping.
        unsafe { self.map.ptr().add(HEADER_PAGE) }
    }

    fn capacity(&self) -> u64 {
        self.mask + 1
    }

    fn stats(&self) -> Stats {
        let h = self.header();
        Stats {
            records_sent: h.head.records.load(Acquire),
            bytes_sent: h.head.pos.load(Acquire),
            records_acked: h.tail.records.load(Acquire),
            bytes_acked: h.tail.pos.load(Acquire),
        }
    }

    /// Publishes a new position on `side` and wakes the other process if it sleeps on it.
    fn publish(side: &Side, pos: u64, records: u64) {
        side.records.store(records, Release);
        side.pos.store(pos, Release);
        // Pairs with the fence in `block`: either the sleeper sees the new position, or we see
        // its sleeper count and wake it.
        fence(SeqCst);
        if side.sleepers.load(Relaxed) != 0 {
            side.wake.fetch_add(1, Release);
            sys::futex_wake(&side.wake);
        }
    }

    fn peer_hung_up(&self) -> bool {
        self.peer_sock
            .get()
            .is_some_and(|s| sys::hung_up(s.as_fd()))
    }

    /// Waits until `ready` yields, sleeping on `side` (whose owner is the peer) after a spin.
    /// Reports PeerGone on a hung-up socket or `timeout` without the peer's side moving.
    fn block<T>(
        &self,
        side: &Side,
        mut ready: impl FnMut() -> Result<Option<T>, ChannelError>,
    ) -> Result<T, ChannelError> {
        for _ in 0..self.spin {
            if let Some(v) = ready()? {
                return Ok(v);
            }
            std::hint::spin_loop();
        }
        let mut progress = (side.pos.load(Relaxed), Instant::now());
        loop {
            let w = side.wake.load(Acquire);
            side.sleepers.fetch_add(1, Relaxed);
            fence(SeqCst);
            let got = ready();
            if matches!(got, Ok(None)) {
                let left = self
                    .timeout
                    .map_or(POLL, |t| t.saturating_sub(progress.1.elapsed()));
                sys::futex_wait(&side.wake, w, left.min(POLL));
            }
            side.sleepers.fetch_sub(1, Relaxed);
            if let Some(v) = got? {
                return Ok(v);
            }
            if self.peer_hung_up() {
                // Everything the peer wrote happened before its socket closed: look once more.
                return ready()?.ok_or(ChannelError::PeerGone);
            }
            let pos = side.pos.load(Relaxed);
            if pos != progress.0 {
                progress = (pos, Instant::now());
            } else if self.timeout.is_some_and(|t| progress.1.elapsed() >= t) {
                return ready()?.ok_or(ChannelError::PeerGone);
            }
        }
    }
}

/// Sets up channels; see the module documentation.
pub struct Channel;

impl Channel {
    /// A channel with a ring of `capacity` bytes and default bounds ([`ChannelConfig::new`]):
    /// the producer end, and the memfd to hand to the consumer with [`send_fd`].
    pub fn create(capacity: usize) -> Result<(Producer, OwnedFd), ChannelError> {
        Self::create_with(ChannelConfig::new(capacity))
    }

    /// A channel as `config` says.
    pub fn create_with(config: ChannelConfig) -> Result<(Producer, OwnedFd), ChannelError> {
        let cap = config
            .capacity
            .max(HEADER_PAGE)
            .checked_next_power_of_two()
            .ok_or(ChannelError::BadLayout("capacity too large"))?;
        let fd = sys::sealed_memfd(c"ditto-replica-channel", HEADER_PAGE + cap)?;
        let map = sys::Mapping::new(fd.as_fd(), HEADER_PAGE + cap)?;
        let ring = Ring {
            map,
            mask: cap as u64 - 1,
            peer_sock: std::sync::OnceLock::new(),
            timeout: config.peer_timeout,
            spin: config.spin,
        };
        let h = ring.header();
        h.capacity.store(cap as u64, Relaxed);
        h.max_lag_bytes
            .store(config.max_lag_bytes.clamp(1, cap as u64), Relaxed);
        h.max_lag_records
            .store(config.max_lag_records.max(1), Relaxed);
        h.version.store(LAYOUT_VERSION, Relaxed);
        h.magic.store(LAYOUT_MAGIC, Release);
        let cur = WriteCursor {
            max_lag_bytes: config.max_lag_bytes.clamp(1, cap as u64),
            max_lag_records: config.max_lag_records.max(1),
            head: 0,
            seq: 0,
            tail_seen: 0,
            acked_seen: 0,
        };
        let producer = Producer {
            ring: Arc::new(ring),
            cur,
        };
        Ok((producer, fd))
    }
}

/// Sends `fd` (a channel's memfd) over the Unix socket `sock` with SCM_RIGHTS.
pub fn send_fd(sock: BorrowedFd, fd: BorrowedFd) -> Result<(), ChannelError> {
    Ok(sys::send_fd(sock, fd)?)
}

/// Receives a descriptor sent by [`send_fd`]; a peer that hung up gives `PeerGone`.
pub fn recv_fd(sock: BorrowedFd) -> Result<OwnedFd, ChannelError> {
    match sys::recv_fd(sock) {
        Ok(Some(fd)) => Ok(fd),
        Ok(None) => Err(ChannelError::NoFd),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ChannelError::PeerGone),
        Err(e) => Err(e.into()),
    }
}

fn align(n: u64) -> u64 {
    (n + ALIGN - 1) & !(ALIGN - 1)
}

mod consumer;
mod producer;

pub use consumer::Consumer;
use producer::WriteCursor;
pub use producer::{AckWatch, Producer};

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests;
