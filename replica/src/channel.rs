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
use det::record::{Record, RecordError, RecordKind, HEADER_LEN, MAX_PAYLOAD};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering::*};
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
    peer_sock: Option<OwnedFd>,
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
            .as_ref()
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
            peer_sock: None,
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
        let producer = Producer { ring, cur };
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

/// The writing end (the primary). Publishes records and waits for their acknowledgement.
pub struct Producer {
    ring: Ring,
    cur: WriteCursor,
}

/// The producer's private state, apart from the ring so that a wait can borrow both.
struct WriteCursor {
    max_lag_bytes: u64,
    max_lag_records: u64,
    /// Our head position and next seq; the shared copies are only ever written from these.
    head: u64,
    seq: u64,
    /// The consumer's tail as last read, so the fast path does not touch its cache line.
    tail_seen: u64,
    acked_seen: u64,
}

impl WriteCursor {
    fn fits(&self, cap: u64, need: u64) -> bool {
        let lag = self.head - self.tail_seen;
        lag + need <= cap
            && (lag == 0 || lag + need <= self.max_lag_bytes)
            && self.seq - self.acked_seen < self.max_lag_records
    }

    /// The wrap padding before a record of `size` ring bytes, if the bounds allow it now.
    fn room(&mut self, ring: &Ring, size: u64) -> Result<Option<u64>, ChannelError> {
        let contiguous = ring.capacity() - (self.head & ring.mask);
        let pad = if size > contiguous { contiguous } else { 0 };
        if self.fits(ring.capacity(), pad + size) {
            return Ok(Some(pad));
        }
        let h = ring.header();
        // Acquire: the consumer's copies out of this space happen before we overwrite it.
        // Clamped so that a wild tail from the peer cannot make us overwrite unread records.
        let floor = self.head.saturating_sub(ring.capacity());
        self.tail_seen = h.tail.pos.load(Acquire).clamp(floor, self.head);
        self.acked_seen = h.tail.records.load(Acquire).min(self.seq);
        if self.fits(ring.capacity(), pad + size) {
            return Ok(Some(pad));
        }
        if h.tail.closed.load(Acquire) != 0 {
            return Err(ChannelError::PeerGone);
        }
        Ok(None)
    }

    fn write(&mut self, ring: &Ring, pad: u64, kind: RecordKind, payload: &[u8]) -> u64 {
        self.write_faulty(ring, pad, kind, payload, None)
    }

    /// [`write`](Self::write), optionally flipping one bit of the encoded record after its
    /// checksum was computed (fault injection for tests: the consumer must report it).
    fn write_faulty(
        &mut self,
        ring: &Ring,
        pad: u64,
        kind: RecordKind,
        payload: &[u8],
        flip: Option<usize>,
    ) -> u64 {
        let data = ring.data();
        if pad > 0 {
            let at = (self.head & ring.mask) as usize;
            // SAFETY: pad >= 8 (positions are 8-aligned), and [at, at + pad) is free space that
            // `room` reserved; the consumer does not read it before we publish.
            unsafe { data.add(at).cast::<u64>().write(PAD_MARKER.to_le()) };
            self.head += pad;
        }
        let at = (self.head & ring.mask) as usize;
        let seq = self.seq;
        let rec = Record { kind, seq, payload };
        // SAFETY: `room` reserved [at, at + len) inside the ring (records never wrap), and
        // until we publish the new head the consumer never reads it, so this is our slice.
        let buf = unsafe { std::slice::from_raw_parts_mut(data.add(at), rec.encoded_len()) };
        // Cannot fail: the buffer is exactly the record's size and `check_size` bounded it.
        let _ = rec.encode_into(buf);
        if let Some(i) = flip {
            let len = buf.len();
            buf[i % len] ^= 0x40;
        }
        self.head += align(rec.encoded_len() as u64);
        self.seq += 1;
        Ring::publish(&ring.header().head, self.head, self.seq);
        seq
    }
}

impl Producer {
    /// Watches `sock` (connected to the consumer) for hang-up while waiting.
    pub fn watch_socket(mut self, sock: OwnedFd) -> Self {
        self.ring.peer_sock = Some(sock);
        self
    }

    /// The largest payload one record may carry: half the ring, less framing (see the module
    /// documentation), and at most [`MAX_PAYLOAD`].
    pub fn max_payload(&self) -> usize {
        let half = (self.ring.capacity() / 2) as usize - HEADER_LEN;
        half.min(MAX_PAYLOAD as usize)
    }

    /// Counters for a status line.
    pub fn stats(&self) -> Stats {
        self.ring.stats()
    }

    fn check_size(&self, payload: &[u8]) -> Result<u64, ChannelError> {
        if payload.len() > self.max_payload() {
            return Err(ChannelError::TooLarge {
                len: payload.len() + HEADER_LEN,
                max: self.max_payload() + HEADER_LEN,
            });
        }
        Ok(align((HEADER_LEN + payload.len()) as u64))
    }

    /// Publishes a record if the lag bound allows it now; else [`ChannelError::WouldBlock`].
    /// Returns the record's seq (0, 1, 2, ... on this channel).
    pub fn try_send(&mut self, kind: RecordKind, payload: &[u8]) -> Result<u64, ChannelError> {
        let size = self.check_size(payload)?;
        let pad = self
            .cur
            .room(&self.ring, size)?
            .ok_or(ChannelError::WouldBlock)?;
        Ok(self.cur.write(&self.ring, pad, kind, payload))
    }

    /// Publishes a record, waiting while the consumer lags beyond the bound. Returns its seq.
    pub fn send(&mut self, kind: RecordKind, payload: &[u8]) -> Result<u64, ChannelError> {
        let size = self.check_size(payload)?;
        let (ring, cur) = (&self.ring, &mut self.cur);
        let pad = ring.block(&ring.header().tail, || cur.room(ring, size))?;
        Ok(cur.write(ring, pad, kind, payload))
    }

    /// Fault injection for tests: publishes a record with bit 6 of its encoded byte
    /// `flip_byte` (modulo its length) flipped after the checksum, as memory corruption
    /// would. The consumer must report [`ChannelError::Corrupt`].
    pub fn send_corrupted(
        &mut self,
        kind: RecordKind,
        payload: &[u8],
        flip_byte: usize,
    ) -> Result<u64, ChannelError> {
        let size = self.check_size(payload)?;
        let (ring, cur) = (&self.ring, &mut self.cur);
        let pad = ring.block(&ring.header().tail, || cur.room(ring, size))?;
        Ok(cur.write_faulty(ring, pad, kind, payload, Some(flip_byte)))
    }

    /// Output commit: waits until the consumer has consumed record `seq` (and all before it).
    pub fn wait_acked(&mut self, seq: u64) -> Result<(), ChannelError> {
        if seq >= self.cur.seq {
            return Err(ChannelError::NotSent {
                seq,
                sent: self.cur.seq,
            });
        }
        let h = self.ring.header();
        let acked = || {
            if h.tail.records.load(Acquire) > seq {
                Ok(Some(()))
            } else if h.tail.closed.load(Acquire) != 0 {
                Err(ChannelError::PeerGone)
            } else {
                Ok(None)
            }
        };
        self.ring.block(&h.tail, acked)
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let h = self.ring.header();
        h.head.closed.store(1, Release);
        Ring::publish(&h.head, self.cur.head, self.cur.seq);
    }
}

/// The reading end (the secondary). Copies each record out of the ring, checks it, and
/// acknowledges it by advancing the tail.
pub struct Consumer {
    ring: Ring,
    cur: ReadCursor,
}

/// The consumer's private state, apart from the ring so that a wait can borrow both.
struct ReadCursor {
    tail: u64,
    seq: u64,
    /// The producer's head as last read, so the fast path does not touch its cache line.
    head_seen: u64,
    /// The private copy of the last record: checked here, so the peer cannot change it after.
    scratch: Vec<u8>,
}

/// A checked record in the scratch buffer, `len` bytes with the header.
struct Taken {
    kind: RecordKind,
    seq: u64,
    len: usize,
}

impl ReadCursor {
    fn corrupt(&self, ring: &Ring, source: RecordError) -> ChannelError {
        ChannelError::Corrupt {
            offset: self.tail,
            ring_offset: self.tail & ring.mask,
            source,
        }
    }

    /// Copies `len` ring bytes at our tail into the scratch buffer.
    fn copy_out(&mut self, ring: &Ring, len: usize) -> &[u8] {
        let at = (self.tail & ring.mask) as usize;
        self.scratch.resize(len, 0);
        // SAFETY: callers checked at + len <= capacity and tail + len <= the published head,
        // so the range is inside the data area and the producer has finished writing it.
        unsafe {
            std::ptr::copy_nonoverlapping(ring.data().add(at), self.scratch.as_mut_ptr(), len)
        };
        &self.scratch
    }

    /// Takes the next record into scratch if one is published; `Ok(None)` if the ring is empty.
    fn take(&mut self, ring: &Ring) -> Result<Option<Taken>, ChannelError> {
        let h = ring.header();
        loop {
            if self.head_seen == self.tail {
                self.head_seen = h.head.pos.load(Acquire);
                if self.head_seen == self.tail {
                    if h.head.closed.load(Acquire) == 0 {
                        return Ok(None);
                    }
                    // The producer published its last head before closing.
                    self.head_seen = h.head.pos.load(Acquire);
                    if self.head_seen == self.tail {
                        return Err(ChannelError::Closed);
                    }
                }
            }
            let (head, tail, cap) = (self.head_seen, self.tail, ring.capacity());
            if head < tail || head - tail > cap || head % ALIGN != 0 {
                return Err(ChannelError::BadCounters {
                    head,
                    tail,
                    capacity: cap,
                });
            }
            let to_end = cap - (tail & ring.mask);
            let room = (head - tail).min(to_end) as usize;
            let first = self.copy_out(ring, room.min(HEADER_LEN));
            if first.len() >= 8 && first[..8] == PAD_MARKER.to_le_bytes() {
                if room as u64 != to_end {
                    // Padding runs to the end of the ring, all of it published.
                    let e = RecordError::Truncated {
                        needed: to_end as usize,
                        available: room,
                    };
                    return Err(self.corrupt(ring, e));
                }
                self.tail += to_end;
                continue;
            }
            // The header alone says how long the record is; decoding it reports a bad magic,
            // version or length before we trust that length.
            let needed = match Record::decode(first) {
                Ok((_, n)) => n,
                Err(RecordError::Truncated { needed, .. }) if needed > HEADER_LEN => needed,
                Err(e) => return Err(self.corrupt(ring, e)),
            };
            if needed > room {
                let e = RecordError::Truncated {
                    needed,
                    available: room,
                };
                return Err(self.corrupt(ring, e));
            }
            let (kind, seq) = match Record::decode(self.copy_out(ring, needed)) {
                Ok((r, _)) => (r.kind, r.seq),
                Err(e) => return Err(self.corrupt(ring, e)),
            };
            if seq != self.seq {
                return Err(ChannelError::OutOfOrder {
                    offset: self.tail,
                    expected: self.seq,
                    found: seq,
                });
            }
            self.tail += align(needed as u64);
            self.seq += 1;
            // The copy is private now: acknowledge at once so the producer can reuse the space.
            Ring::publish(&h.tail, self.tail, self.seq);
            return Ok(Some(Taken {
                kind,
                seq,
                len: needed,
            }));
        }
    }

    fn record(&self, t: Taken) -> Record<'_> {
        Record {
            kind: t.kind,
            seq: t.seq,
            payload: self.scratch.get(HEADER_LEN..t.len).unwrap_or_default(),
        }
    }
}

impl Consumer {
    /// Maps a channel memfd received with [`recv_fd`] and checks its layout. Waiting uses the
    /// defaults of [`ChannelConfig::new`]; see [`Consumer::set_peer_timeout`].
    pub fn attach(fd: OwnedFd) -> Result<Self, ChannelError> {
        let (size, sealed) = sys::size_and_shrink_seal(fd.as_fd())?;
        if !sealed {
            // An unsealed file could shrink under us and turn reads into SIGBUS.
            return Err(ChannelError::BadLayout(
                "memfd not sealed against shrinking",
            ));
        }
        let cap = size.saturating_sub(HEADER_PAGE as u64);
        if cap < HEADER_PAGE as u64 || !cap.is_power_of_two() || cap > isize::MAX as u64 {
            return Err(ChannelError::BadLayout(
                "size is not a header page plus 2^n bytes",
            ));
        }
        let defaults = ChannelConfig::new(0);
        let ring = Ring {
            map: sys::Mapping::new(fd.as_fd(), size as usize)?,
            mask: cap - 1,
            peer_sock: None,
            timeout: defaults.peer_timeout,
            spin: defaults.spin,
        };
        let h = ring.header();
        if h.magic.load(Acquire) != LAYOUT_MAGIC || h.version.load(Relaxed) != LAYOUT_VERSION {
            return Err(ChannelError::BadLayout("unknown magic or version"));
        }
        if h.capacity.load(Relaxed) != cap {
            return Err(ChannelError::BadLayout(
                "capacity does not match the file size",
            ));
        }
        // Resume where a previous consumer left off (a fresh channel starts at zero).
        let tail = h.tail.pos.load(Acquire);
        let cur = ReadCursor {
            tail,
            seq: h.tail.records.load(Acquire),
            head_seen: tail,
            scratch: Vec::new(),
        };
        h.tail.closed.store(0, Release);
        Ok(Consumer { ring, cur })
    }

    /// Watches `sock` (connected to the producer) for hang-up while waiting.
    pub fn watch_socket(mut self, sock: OwnedFd) -> Self {
        self.ring.peer_sock = Some(sock);
        self
    }

    /// How long [`Consumer::recv`] waits without new records before reporting PeerGone.
    pub fn set_peer_timeout(&mut self, timeout: Option<Duration>) {
        self.ring.timeout = timeout;
    }

    /// Counters for a status line.
    pub fn stats(&self) -> Stats {
        self.ring.stats()
    }

    /// The next record if one is published, else [`ChannelError::WouldBlock`]. Reading it
    /// acknowledges it. A corrupt record is reported each time, never skipped.
    pub fn try_recv(&mut self) -> Result<Record<'_>, ChannelError> {
        match self.cur.take(&self.ring)? {
            Some(t) => Ok(self.cur.record(t)),
            None => Err(ChannelError::WouldBlock),
        }
    }

    /// The next record, waiting for the producer. After the producer closes, returns the
    /// remaining records, then [`ChannelError::Closed`]; after it dies, the remaining
    /// records, then [`ChannelError::PeerGone`].
    pub fn recv(&mut self) -> Result<Record<'_>, ChannelError> {
        let (ring, cur) = (&self.ring, &mut self.cur);
        let t = ring.block(&ring.header().head, || cur.take(ring))?;
        Ok(self.cur.record(t))
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let h = self.ring.header();
        h.tail.closed.store(1, Release);
        Ring::publish(&h.tail, self.cur.tail, self.cur.seq);
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::payload;
    use proptest::prelude::*;
    use std::os::fd::FromRawFd;

    fn pair(config: ChannelConfig) -> (Producer, Consumer) {
        let (p, fd) = Channel::create_with(config).unwrap();
        (p, Consumer::attach(fd).unwrap())
    }

    fn small(capacity: usize) -> ChannelConfig {
        ChannelConfig {
            spin: 10,
            ..ChannelConfig::new(capacity)
        }
    }

    /// Sends records `seqs` of the test pattern, each at most `max` bytes.
    fn send_range(p: &mut Producer, seqs: std::ops::Range<u64>, max: usize) {
        for s in seqs {
            assert_eq!(
                p.try_send(RecordKind::SyscallResult, &payload(s, max))
                    .unwrap(),
                s
            );
        }
    }

    fn expect(c: &mut Consumer, seq: u64, max: usize) {
        let r = c.try_recv().unwrap();
        assert_eq!((r.kind, r.seq), (RecordKind::SyscallResult, seq));
        assert_eq!(r.payload, payload(seq, max));
    }

    #[test]
    fn records_roundtrip_with_stats() {
        let (mut p, mut c) = pair(small(4096));
        assert!(matches!(c.try_recv(), Err(ChannelError::WouldBlock)));
        send_range(&mut p, 0..5, 100);
        assert_eq!(p.stats().lag_records(), 5);
        for s in 0..5 {
            expect(&mut c, s, 100);
        }
        let st = c.stats();
        assert_eq!(
            (st.records_sent, st.records_acked, st.lag_bytes()),
            (5, 5, 0)
        );
        assert!(st.to_string().contains("lag 0 rec / 0 B"));
        drop(p);
        assert!(matches!(c.try_recv(), Err(ChannelError::Closed)));
    }

    #[test]
    fn size_limits_and_bad_layouts_are_errors() {
        let (mut p, fd) = Channel::create(4096).unwrap();
        assert_eq!(p.max_payload(), 2048 - HEADER_LEN);
        let big = vec![0; p.max_payload() + 1];
        let e = p.try_send(RecordKind::End, &big).unwrap_err();
        assert!(matches!(e, ChannelError::TooLarge { .. }));
        p.try_send(RecordKind::End, &big[1..]).unwrap();
        drop(fd);
        // An unsealed memfd, and a sealed one without our header.
        // SAFETY: memfd_create with a static name returns a fresh descriptor that we own.
        let fd = unsafe { OwnedFd::from_raw_fd(libc::memfd_create(c"x".as_ptr(), 0)) };
        let e = Consumer::attach(fd).err().unwrap();
        assert!(matches!(e, ChannelError::BadLayout(_)), "{e}");
        let fd = sys::sealed_memfd(c"y", HEADER_PAGE + 4096).unwrap();
        let e = Consumer::attach(fd).err().unwrap();
        assert!(matches!(e, ChannelError::BadLayout(_)), "{e}");
    }

    #[test]
    fn byte_and_record_bounds_give_backpressure() {
        let (mut p, mut c) = pair(ChannelConfig {
            max_lag_records: 3,
            ..small(4096)
        });
        send_range(&mut p, 0..3, 50);
        assert!(matches!(
            p.try_send(RecordKind::End, &[]),
            Err(ChannelError::WouldBlock)
        ));
        expect(&mut c, 0, 50);
        send_range(&mut p, 3..4, 50);

        // 100-byte payloads take 120 ring bytes: a 500-byte bound admits four.
        let (mut p, mut c) = pair(ChannelConfig {
            max_lag_bytes: 500,
            ..small(4096)
        });
        for s in 0..4 {
            p.try_send(RecordKind::End, &[7; 100]).unwrap();
            assert_eq!(p.stats().lag_bytes(), 120 * (s + 1));
        }
        assert!(matches!(
            p.try_send(RecordKind::End, &[7; 100]),
            Err(ChannelError::WouldBlock)
        ));
        c.try_recv().unwrap();
        p.try_send(RecordKind::End, &[7; 100]).unwrap();
        // A record above the byte bound still passes through an empty ring.
        let (mut p, _c) = pair(ChannelConfig {
            max_lag_bytes: 64,
            ..small(4096)
        });
        p.try_send(RecordKind::End, &[0; 1000]).unwrap();
    }

    #[test]
    fn blocked_send_resumes_when_the_consumer_reads() {
        let (mut p, mut c) = pair(ChannelConfig {
            max_lag_records: 2,
            ..small(4096)
        });
        send_range(&mut p, 0..2, 10);
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            for s in 0..3 {
                let r = c.recv().unwrap();
                assert_eq!(r.seq, s);
            }
            c
        });
        let t = Instant::now();
        p.send(RecordKind::End, &[]).unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        p.wait_acked(2).unwrap();
        assert!(matches!(
            p.wait_acked(3),
            Err(ChannelError::NotSent { seq: 3, sent: 3 })
        ));
        let c = reader.join().unwrap();
        assert_eq!(c.stats().lag_records(), 0);
    }

    #[test]
    fn a_consumer_that_stops_reading_is_gone_after_the_timeout() {
        let (mut p, _c) = pair(ChannelConfig {
            max_lag_records: 1,
            peer_timeout: Some(Duration::from_millis(200)),
            ..small(4096)
        });
        p.send(RecordKind::End, &[]).unwrap();
        let t = Instant::now();
        assert!(matches!(
            p.send(RecordKind::End, &[]),
            Err(ChannelError::PeerGone)
        ));
        assert!(
            (200..2000).contains(&t.elapsed().as_millis()),
            "{:?}",
            t.elapsed()
        );
        assert!(matches!(p.wait_acked(0), Err(ChannelError::PeerGone)));
        drop(_c);
        // A consumer that closed its end is gone at once.
        let t = Instant::now();
        assert!(matches!(
            p.send(RecordKind::End, &[]),
            Err(ChannelError::PeerGone)
        ));
        assert!(t.elapsed() < Duration::from_millis(150));
    }

    /// Stream offsets of the records of `sizes`, sent from an empty ring with no wrap.
    fn frames(sizes: &[usize]) -> Vec<(u64, u64)> {
        let mut at = 0;
        sizes
            .iter()
            .map(|&s| {
                let f = (at, (HEADER_LEN + s) as u64);
                at += align(f.1);
                f
            })
            .collect()
    }

    #[test]
    fn corrupt_records_are_reported_at_their_offset() {
        type Check = fn(&RecordError) -> bool;
        let cases: [(usize, u8, Check); 4] = [
            (0, 0xff, |e| matches!(e, RecordError::BadMagic(_))),
            (30, 0x01, |e| {
                matches!(e, RecordError::ChecksumMismatch { .. })
            }),
            (7, 0x01, |e| matches!(e, RecordError::LengthTooLarge { .. })), // len > 16 MiB
            (6, 0x10, |e| matches!(e, RecordError::Truncated { .. })), // 1 MiB: beyond the ring
        ];
        for (byte, mask, is) in cases {
            let (mut p, mut c) = pair(small(4096));
            send_range(&mut p, 0..4, 64);
            expect(&mut c, 0, 64);
            let second = align((HEADER_LEN + payload(0, 64).len()) as u64);
            // SAFETY: in the data area; this test plays a faulty producer.
            unsafe { *p.ring.data().add(second as usize + byte) ^= mask };
            for _ in 0..2 {
                match c.try_recv() {
                    Err(ChannelError::Corrupt { offset, source, .. }) => {
                        assert_eq!(offset, second);
                        assert!(is(&source), "byte {byte}: {source}");
                    }
                    other => panic!("byte {byte}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn wild_counters_are_errors() {
        let (p, mut c) = pair(small(4096));
        p.ring.header().head.pos.store(3 * 4096, Release);
        assert!(matches!(
            c.try_recv(),
            Err(ChannelError::BadCounters { .. })
        ));
        p.ring.header().head.pos.store(8, Release);
        c.cur.head_seen = 0;
        // Eight zero bytes: a header cut short by the published head.
        let e = c.try_recv().unwrap_err();
        assert!(matches!(e, ChannelError::Corrupt { offset: 0, .. }), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Sends and receives in random batches through a small ring, so records wrap with
        /// padding at every offset; all arrive intact and in order.
        #[test]
        fn wraparound_keeps_every_record(
            max in 1usize..1500,
            batches in proptest::collection::vec((0usize..8, 0usize..8), 1..60),
        ) {
            let (mut p, mut c) = pair(small(4096));
            let (mut sent, mut got) = (0u64, 0u64);
            for (n_send, n_recv) in batches {
                for _ in 0..n_send {
                    match p.try_send(RecordKind::Turn, &payload(sent, max)) {
                        Ok(s) => { prop_assert_eq!(s, sent); sent += 1; }
                        Err(ChannelError::WouldBlock) => break,
                        Err(e) => return Err(TestCaseError::fail(e.to_string())),
                    }
                }
                for _ in 0..n_recv {
                    match c.try_recv() {
                        Ok(r) => {
                            prop_assert_eq!(r.seq, got);
                            prop_assert_eq!(r.payload, &payload(got, max)[..]);
                            got += 1;
                        }
                        Err(ChannelError::WouldBlock) => break,
                        Err(e) => return Err(TestCaseError::fail(e.to_string())),
                    }
                }
                prop_assert!(p.stats().lag_bytes() <= 4096);
            }
            while got < sent {
                prop_assert_eq!(c.try_recv().map(|r| r.seq).ok(), Some(got));
                got += 1;
            }
            prop_assert_eq!(p.stats().lag_records(), 0);
        }

        /// Any flipped bit inside a published record makes it Corrupt at its own offset, and
        /// the records before it still arrive.
        #[test]
        fn a_flipped_bit_is_caught_at_its_record(
            sizes in proptest::collection::vec(0usize..300, 1..10),
            pick in any::<u64>(),
        ) {
            let (mut p, mut c) = pair(small(4096));
            for s in &sizes {
                p.try_send(RecordKind::OutputHash, &vec![0xa5; *s]).unwrap();
            }
            let frames = frames(&sizes);
            let total: u64 = frames.iter().map(|f| f.1).sum();
            let mut bit = pick % (total * 8);
            let (i, (at, _)) = frames.iter().copied().enumerate().find(|(_, (_, len))| {
                let inside = bit < len * 8;
                if !inside { bit -= len * 8; }
                inside
            }).unwrap();
            // SAFETY: inside the data area; this test plays a faulty producer.
            unsafe { *p.ring.data().add((at + bit / 8) as usize) ^= 1 << (bit % 8) };
            for s in 0..i as u64 {
                prop_assert_eq!(c.try_recv().unwrap().seq, s);
            }
            match c.try_recv() {
                Err(ChannelError::Corrupt { offset, .. }) => prop_assert_eq!(offset, at),
                other => return Err(TestCaseError::fail(format!("{other:?}"))),
            }
        }
    }
}
