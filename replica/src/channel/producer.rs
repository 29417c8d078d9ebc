//! The writing end of the channel (the primary): reserves room under the lag bounds, writes
//! a record (or the wrap padding) into the ring and publishes the new head.

use super::{align, ChannelError, Ring, Stats, PAD_MARKER};
use det::record::{Record, RecordKind, HEADER_LEN, MAX_PAYLOAD};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;

/// The writing end (the primary). Publishes records and waits for their acknowledgement.
pub struct Producer {
    pub(super) ring: Arc<Ring>,
    pub(super) cur: WriteCursor,
}

/// The producer's private state, apart from the ring so that a wait can borrow both.
pub(super) struct WriteCursor {
    pub(super) max_lag_bytes: u64,
    pub(super) max_lag_records: u64,
    /// Our head position and next seq; the shared copies are only ever written from these.
    pub(super) head: u64,
    pub(super) seq: u64,
    /// The consumer's tail as last read, so the fast path does not touch its cache line.
    pub(super) tail_seen: u64,
    pub(super) acked_seen: u64,
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
    pub fn watch_socket(self, sock: OwnedFd) -> Self {
        // A fresh ring's cell is empty; a second socket is ignored, as the first one
        // already tells the peer's death.
        let _ = self.ring.peer_sock.set(sock);
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
        self.ack_watch().wait_acked(seq)
    }

    /// Records sent so far; the last one's seq is one less.
    pub fn records_sent(&self) -> u64 {
        self.cur.seq
    }

    /// A handle that waits for the consumer's acknowledgements without holding the
    /// producer, so that other threads go on sending while one waits (output commit).
    pub fn ack_watch(&self) -> AckWatch {
        AckWatch {
            ring: Arc::clone(&self.ring),
        }
    }
}

/// Waits for the consumer's acknowledgements apart from the [`Producer`]: it reads only
/// the consumer's side of the ring header, which the producer never writes.
pub struct AckWatch {
    ring: Arc<Ring>,
}

impl AckWatch {
    /// Waits until the consumer has consumed record `seq` (and all before it). The caller
    /// names a record it knows was sent ([`Producer::records_sent`]); a later one would
    /// wait until the consumer's timeout or the peer's end.
    pub fn wait_acked(&self, seq: u64) -> Result<(), ChannelError> {
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
