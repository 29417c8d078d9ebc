//! Record framing for the replication channel.
//!
//! Both VMM processes read and write this format through shared memory, and reports and logs
//! keep it, so it is an ABI: change the layout only together with [`VERSION`].
//!
//! A record is a 20-byte header followed by `len` payload bytes, all integers little-endian,
//! with no padding (a ring that wants alignment pads between records itself):
//!
//! | offset | size | field   | meaning                                                        |
//! |-------:|-----:|---------|----------------------------------------------------------------|
//! | 0      | 2    | magic   | [`MAGIC`] (bytes `70 d1`)                                      |
//! | 2      | 1    | version | [`VERSION`]                                                    |
//! | 3      | 1    | kind    | a [`RecordKind`]                                               |
//! | 4      | 4    | len     | payload length in bytes, at most [`MAX_PAYLOAD`]               |
//! | 8      | 8    | seq     | the record's sequence number on its stream, from 0             |
//! | 16     | 4    | crc32   | CRC-32 (IEEE, reflected, as zlib) of bytes 0..16, then payload |
//! | 20     | len  | payload | as the kind says                                               |
//!
//! Payloads defined here (other kinds belong to the replication layer):
//! - `Turn` ([`RecordKind::Turn`]): tid u32, thread_seq u64, global_seq u64 (20 bytes).
//! - [`Reentry`] as a standalone payload: tid u32, at u64 (12 bytes): a thread re-enters the
//!   token competition at logical time `at`. On the replication channel `Reentry` records use
//!   the per-thread layout of the replication layer instead (tid, syscall number, at).
//! - `End` ([`RecordKind::End`]): how the primary ended (layout in the replication layer).
//! - `SyscallResult`, `OutputHash`, `TimedWait`, per-thread `Reentry`, `ThreadStart` and
//!   `Fragment`: defined by the replication layer, `devices/src/replication/wire.rs`.
//!
//! Version history: 1, the first; 2 added `ThreadStart` (the secondary accepts per-thread
//! records only for threads the primary announced) and `Fragment` (a per-thread record larger
//! than one ring slot travels in pieces instead of ending replication).

use crate::tid::DetTid;
use crate::turn::Turn;
use thiserror::Error;

/// The first two bytes of every record.
pub const MAGIC: u16 = 0xd170;
/// The layout version this code reads and writes.
pub const VERSION: u8 = 4;
/// The size of the header.
pub const HEADER_LEN: usize = 20;
/// The largest payload accepted, so that a corrupt `len` cannot make a reader wait for, or
/// allocate, gigabytes.
pub const MAX_PAYLOAD: u32 = 16 << 20;

const CRC_OFFSET: usize = 16;

/// What a record carries. The discriminants are the `kind` byte on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// A det section taken by the primary: every one in `follow` mode, and in `det` mode
    /// those taken while one of its threads is away in a blocking call ([`Turn`]).
    Turn = 1,
    /// The result of a recorded syscall, and the bytes it returned.
    SyscallResult = 2,
    /// The hash of an output the primary performed, for comparison.
    OutputHash = 3,
    /// A thread's re-entry into the token competition ([`Reentry`]).
    Reentry = 4,
    /// The end of the stream: the primary finished.
    End = 5,
    /// The outcome of a primary thread's futex wait with a deadline.
    TimedWait = 6,
    /// The primary created a thread: records of that deterministic thread id may follow.
    ThreadStart = 7,
    /// A piece of a per-thread record too large for one record.
    Fragment = 8,
    /// Where an outside stream stood before the primary performs an output on it, sent and
    /// acknowledged before the output starts: after a failover it tells how much of an
    /// output in doubt had been done.
    OutputIntent = 9,
    /// Time values a primary thread's vDSO read since its last record (a pair's time ring).
    TimeValues = 10,
}

impl TryFrom<u8> for RecordKind {
    type Error = RecordError;

    fn try_from(b: u8) -> Result<Self, RecordError> {
        Ok(match b {
            1 => RecordKind::Turn,
            2 => RecordKind::SyscallResult,
            3 => RecordKind::OutputHash,
            4 => RecordKind::Reentry,
            5 => RecordKind::End,
            6 => RecordKind::TimedWait,
            7 => RecordKind::ThreadStart,
            8 => RecordKind::Fragment,
            9 => RecordKind::OutputIntent,
            10 => RecordKind::TimeValues,
            _ => return Err(RecordError::UnknownKind(b)),
        })
    }
}

/// Errors of encoding and decoding records.
#[allow(missing_docs)] // Each variant's doc names its fields.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    /// The first two bytes are not [`MAGIC`].
    #[error("bad record magic {0:#06x}")]
    BadMagic(u16),
    /// A layout version this code does not know.
    #[error("unsupported record version {0}")]
    UnsupportedVersion(u8),
    /// A kind byte with no [`RecordKind`].
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    /// The buffer ends inside the record: it holds `available` bytes of the `needed` (the
    /// header alone, if that is incomplete). With a stream, read more and try again.
    #[error("truncated record: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    /// A payload of `len` bytes, longer than `max` ([`MAX_PAYLOAD`]).
    #[error("record payload of {len} bytes exceeds {max}")]
    LengthTooLarge { len: usize, max: u32 },
    /// The checksum `expected` by the header differs from the one `found` over the record.
    #[error("record checksum mismatch: header says {expected:#010x}, contents give {found:#010x}")]
    ChecksumMismatch { expected: u32, found: u32 },
    /// The output buffer holds `available` bytes of the `needed`.
    #[error("buffer too small: {needed} bytes needed, {available} available")]
    BufferTooSmall { needed: usize, available: usize },
    /// A payload whose size `len` does not fit its `kind`.
    #[error("bad {kind:?} payload of {len} bytes")]
    BadPayload { kind: RecordKind, len: usize },
}

/// A record: a kind, a sequence number and a payload borrowed from the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// What the payload carries.
    pub kind: RecordKind,
    /// The sequence number on its stream.
    pub seq: u64,
    /// The payload bytes.
    pub payload: &'a [u8],
}

/// Takes fixed-size fields off the front of a byte slice, without any way to panic.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (field, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*field)
    }
}

fn crc(head: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(payload);
    h.finalize()
}

impl<'a> Record<'a> {
    /// The record's size on the wire.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    fn checked_len(&self) -> Result<u32, RecordError> {
        u32::try_from(self.payload.len())
            .ok()
            .filter(|&l| l <= MAX_PAYLOAD)
            .ok_or(RecordError::LengthTooLarge {
                len: self.payload.len(),
                max: MAX_PAYLOAD,
            })
    }

    /// Writes the record at the start of `buf` and returns its size.
    pub fn encode_into(&self, buf: &mut [u8]) -> Result<usize, RecordError> {
        let len = self.checked_len()?;
        let needed = self.encoded_len();
        let available = buf.len();
        let out = buf
            .get_mut(..needed)
            .ok_or(RecordError::BufferTooSmall { needed, available })?;
        let (head, payload) = out.split_at_mut(HEADER_LEN);
        head[..2].copy_from_slice(&MAGIC.to_le_bytes());
        head[2] = VERSION;
        head[3] = self.kind as u8;
        head[4..8].copy_from_slice(&len.to_le_bytes());
        head[8..CRC_OFFSET].copy_from_slice(&self.seq.to_le_bytes());
        let sum = crc(&head[..CRC_OFFSET], self.payload);
        head[CRC_OFFSET..].copy_from_slice(&sum.to_le_bytes());
        payload.copy_from_slice(self.payload);
        Ok(needed)
    }

    /// Appends the record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.checked_len()?;
        let start = out.len();
        out.resize(start + self.encoded_len(), 0);
        self.encode_into(&mut out[start..]).map(drop)
    }

    /// Reads the record at the start of `buf`; returns it and the number of bytes it used.
    /// Checks, in order: header length, magic, version, payload length, completeness,
    /// checksum, kind.
    pub fn decode(buf: &'a [u8]) -> Result<(Record<'a>, usize), RecordError> {
        let truncated = |needed| RecordError::Truncated {
            needed,
            available: buf.len(),
        };
        let mut r = Reader(buf);
        let (Some(magic), Some([version, kind]), Some(len), Some(seq), Some(stored)) = (
            r.take().map(u16::from_le_bytes),
            r.take(),
            r.take().map(u32::from_le_bytes),
            r.take().map(u64::from_le_bytes),
            r.take().map(u32::from_le_bytes),
        ) else {
            return Err(truncated(HEADER_LEN));
        };
        if magic != MAGIC {
            return Err(RecordError::BadMagic(magic));
        }
        if version != VERSION {
            return Err(RecordError::UnsupportedVersion(version));
        }
        if len > MAX_PAYLOAD {
            return Err(RecordError::LengthTooLarge {
                len: len as usize,
                max: MAX_PAYLOAD,
            });
        }
        let needed = HEADER_LEN + len as usize;
        let (head, payload) = buf
            .get(..needed)
            .ok_or(truncated(needed))?
            .split_at(HEADER_LEN);
        let found = crc(&head[..CRC_OFFSET], payload);
        if found != stored {
            return Err(RecordError::ChecksumMismatch {
                expected: stored,
                found,
            });
        }
        let kind = RecordKind::try_from(kind)?;
        Ok((Record { kind, seq, payload }, needed))
    }
}

impl Turn {
    /// The size of a [`RecordKind::Turn`] payload.
    pub const PAYLOAD_LEN: usize = 20;

    /// The turn as a [`RecordKind::Turn`] payload.
    pub fn to_payload(&self) -> [u8; Self::PAYLOAD_LEN] {
        let mut p = [0; Self::PAYLOAD_LEN];
        p[..4].copy_from_slice(&self.tid.0.to_le_bytes());
        p[4..12].copy_from_slice(&self.thread_seq.to_le_bytes());
        p[12..].copy_from_slice(&self.global_seq.to_le_bytes());
        p
    }

    /// Reads a [`RecordKind::Turn`] payload.
    pub fn from_payload(p: &[u8]) -> Result<Self, RecordError> {
        let mut r = Reader(p);
        match (r.take(), r.take(), r.take(), r.0.is_empty()) {
            (Some(tid), Some(thread_seq), Some(global_seq), true) => Ok(Turn {
                tid: DetTid(u32::from_le_bytes(tid)),
                thread_seq: u64::from_le_bytes(thread_seq),
                global_seq: u64::from_le_bytes(global_seq),
            }),
            _ => Err(RecordError::BadPayload {
                kind: RecordKind::Turn,
                len: p.len(),
            }),
        }
    }
}

/// A re-entry event: `tid` competes for the token again from logical time `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reentry {
    /// The thread.
    pub tid: DetTid,
    /// The logical time of re-entry.
    pub at: u64,
}

impl Reentry {
    /// The size of a [`RecordKind::Reentry`] payload.
    pub const PAYLOAD_LEN: usize = 12;

    /// The event as a [`RecordKind::Reentry`] payload.
    pub fn to_payload(&self) -> [u8; Self::PAYLOAD_LEN] {
        let mut p = [0; Self::PAYLOAD_LEN];
        p[..4].copy_from_slice(&self.tid.0.to_le_bytes());
        p[4..].copy_from_slice(&self.at.to_le_bytes());
        p
    }

    /// Reads a [`RecordKind::Reentry`] payload.
    pub fn from_payload(p: &[u8]) -> Result<Self, RecordError> {
        let mut r = Reader(p);
        match (r.take(), r.take(), r.0.is_empty()) {
            (Some(tid), Some(at), true) => Ok(Reentry {
                tid: DetTid(u32::from_le_bytes(tid)),
                at: u64::from_le_bytes(at),
            }),
            _ => Err(RecordError::BadPayload {
                kind: RecordKind::Reentry,
                len: p.len(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(kind: RecordKind, seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Record { kind, seq, payload }.encode(&mut out).unwrap();
        out
    }

    #[test]
    fn header_layout_is_fixed() {
        let bytes = encoded(RecordKind::End, 0x0102_0304_0506_0708, &[]);
        assert_eq!(
            bytes[..16],
            [0x70, 0xd1, 4, 5, 0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]
        );
        let sum = crc32fast::hash(&bytes[..16]);
        assert_eq!(bytes[16..], sum.to_le_bytes());
    }

    #[test]
    fn turn_and_reentry_payloads_roundtrip() {
        let turn = Turn {
            tid: DetTid(3),
            thread_seq: 7,
            global_seq: 99,
        };
        let bytes = encoded(RecordKind::Turn, 4, &turn.to_payload());
        let (rec, used) = Record::decode(&bytes).unwrap();
        assert_eq!((rec.kind, rec.seq, used), (RecordKind::Turn, 4, 40));
        assert_eq!(Turn::from_payload(rec.payload), Ok(turn));
        let ev = Reentry {
            tid: DetTid(1),
            at: 12,
        };
        assert_eq!(Reentry::from_payload(&ev.to_payload()), Ok(ev));
        let bad = RecordError::BadPayload {
            kind: RecordKind::Turn,
            len: 12,
        };
        assert_eq!(Turn::from_payload(&ev.to_payload()), Err(bad));
    }

    #[test]
    fn each_header_check_has_its_error() {
        let good = encoded(RecordKind::Turn, 1, &[1, 2, 3]);
        let with = |i: usize, b: u8| {
            let mut v = good.clone();
            v[i] = b;
            Record::decode(&v).unwrap_err()
        };
        assert_eq!(with(0, 0), RecordError::BadMagic(0xd100));
        assert_eq!(with(2, 9), RecordError::UnsupportedVersion(9));
        assert!(matches!(with(3, 9), RecordError::ChecksumMismatch { .. }));
        assert!(matches!(with(7, 0xff), RecordError::LengthTooLarge { .. }));
        assert!(matches!(with(21, 0), RecordError::ChecksumMismatch { .. }));
        let truncated = RecordError::Truncated {
            needed: 23,
            available: 22,
        };
        assert_eq!(Record::decode(&good[..22]), Err(truncated));
        let mut small = [0u8; 22];
        let rec = Record::decode(&good).unwrap().0;
        assert!(matches!(
            rec.encode_into(&mut small),
            Err(RecordError::BufferTooSmall { .. })
        ));
        // An unknown kind with a valid checksum: a newer writer, not corruption.
        let mut v = good.clone();
        v[3] = 200;
        let sum = crc(&v[..16], &v[20..]);
        v[16..20].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(Record::decode(&v), Err(RecordError::UnknownKind(200)));
    }

    fn kind() -> impl Strategy<Value = RecordKind> {
        (1u8..=6).prop_map(|b| RecordKind::try_from(b).unwrap())
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            valid_prefix in any::<bool>(),
        ) {
            let mut bytes = bytes;
            if valid_prefix && bytes.len() >= 3 {
                bytes[..3].copy_from_slice(&[0x70, 0xd1, VERSION]);
            }
            let _ = Record::decode(&bytes);
            let _ = Turn::from_payload(&bytes);
            let _ = Reentry::from_payload(&bytes);
        }

        #[test]
        fn encode_decode_roundtrip(
            kind in kind(),
            seq in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..200),
            trailing in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let mut bytes = encoded(kind, seq, &payload);
            let len = bytes.len();
            bytes.extend_from_slice(&trailing);
            let (rec, used) = Record::decode(&bytes)?;
            prop_assert_eq!(used, len);
            prop_assert_eq!(rec, Record { kind, seq, payload: &payload });
        }

        #[test]
        fn any_bit_flip_outside_len_is_detected(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            bit in any::<usize>(),
        ) {
            let mut bytes = encoded(RecordKind::SyscallResult, 5, &payload);
            // Flips in `len` change how much is read; the checks on them are tested above.
            let positions: Vec<usize> = (0..bytes.len() * 8).filter(|b| !(32..64).contains(b)).collect();
            let b = positions[bit % positions.len()];
            bytes[b / 8] ^= 1 << (b % 8);
            prop_assert!(Record::decode(&bytes).is_err());
        }
    }
}
