//! The reading end of the channel (the secondary): copies each record out of the ring into
//! private memory, checks it there, and acknowledges it by advancing the tail.

use super::{
    align, ChannelConfig, ChannelError, Ring, Stats, ALIGN, HEADER_PAGE, LAYOUT_MAGIC,
    LAYOUT_VERSION, PAD_MARKER,
};
use crate::sys;
use det::record::{Record, RecordError, RecordKind, HEADER_LEN};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering::*;
use std::time::Duration;

/// The reading end (the secondary). Copies each record out of the ring, checks it, and
/// acknowledges it by advancing the tail.
pub struct Consumer {
    pub(super) ring: Ring,
    pub(super) cur: ReadCursor,
}

/// The consumer's private state, apart from the ring so that a wait can borrow both.
pub(super) struct ReadCursor {
    pub(super) tail: u64,
    pub(super) seq: u64,
    /// The producer's head as last read, so the fast path does not touch its cache line.
    pub(super) head_seen: u64,
    /// The private copy of the last record: checked here, so the peer cannot change it after.
    pub(super) scratch: Vec<u8>,
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
            peer_sock: std::sync::OnceLock::new(),
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
    pub fn watch_socket(self, sock: OwnedFd) -> Self {
        // A fresh ring's cell is empty; a second socket is ignored, as the first one
        // already tells the peer's death.
        let _ = self.ring.peer_sock.set(sock);
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
