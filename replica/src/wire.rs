//! Payloads of the replication records (the channel's ABI above [`det::record`] framing).
//!
//! Every per-thread record starts with the same 12 bytes, so the secondary's reader can route
//! it to the thread's queue without knowing the kind:
//!
//! | offset | size | field | meaning                                                        |
//! |-------:|-----:|-------|----------------------------------------------------------------|
//! | 0      | 4    | tid   | deterministic thread id (creation order under the token)       |
//! | 4      | 8    | seq   | the thread's replicated-event number (1 = its first Recorded or |
//! |        |      |       | Compared call; 0 for TimedWait records)                        |
//!
//! Then, by [`RecordKind`] (all integers little-endian):
//! - `SyscallResult`: nr u32, syscall_no u64 (the thread's syscall number: Local calls such
//!   as futexes count too, so it is informative, not a key), ret i64, signal u32, writes u32, then per write: addr u64,
//!   len u32, bytes. The guest memory the primary's call wrote, which the secondary copies in.
//!   A write at [`REENTRY_ADDR`] is no memory: its 8 bytes are the det re-entry time of an
//!   external call.
//! - `OutputHash`: nr u32, syscall_no u64, fd i32, ret i64, signal u32, asked u64 (bytes the call was asked
//!   to output), hash u64 (XXH3-64 of the `ret` bytes output, [`crate::report::hash64`]), inline u32, then `inline`
//!   bytes: the output itself when it is at most [`INLINE_OUTPUT_MAX`] bytes, else none.
//!
//! `signal` (0: none) is the signal the primary delivered to the thread right after that
//! call. Under replication, asynchronous signals reach handlers only there, after a
//! Recorded or Compared call, so that the secondary can deliver them at the same point.
//! - `OutputIntent`: nr u32, syscall_no u64, fd i32, stream u8 ([`Stream`]: 1 a TCP
//!   socket, 2 a regular file), position u64, size u64. Sent, and acknowledged, before the
//!   primary performs the output of event `seq`, whose `OutputHash` follows. `position` is
//!   where the stream stood: for a TCP socket the bytes ever queued on it
//!   (`tcpi_bytes_acked` + SIOCOUTQ), for a file its offset; `size` is a file's size (0 for
//!   a socket). Only outputs on those two kinds have one.
//! - `TimedWait`: took_turn u8, timed_out u8, has_at u8, at u64.
//! - `Reentry`: at u64: the logical time at which the thread re-entered the token
//!   competition after the external call numbered `seq` (det mode only).
//! - `TimeValues`: count u32, then `count` u64 values (1 to [`TIME_VALUES_MAX`]), in the
//!   order the thread's vDSO read them since its previous record: each is ditto.h's time-ring
//!   value, clock kind in the top bits. `seq` is 0. Sent before the record of the thread's
//!   next syscall, and before any output of the program is released (docs/pair.md).
//!
//! `End` (not per-thread): status i32, signal i32 (0 when the program exited): how the
//! primary's program ended.
//!
//! `ThreadStart` (not per-thread): tid u32. The primary created deterministic thread `tid`;
//! it is sent before that thread can make any call, so a per-thread record naming a thread
//! that was never announced is a channel error, not a new queue.
//!
//! `Fragment` (per-thread prefix): kind u8, last u8, then bytes. A per-thread record whose
//! payload is larger than one ring record (`replica::channel::Producer::max_payload`) travels
//! as consecutive fragments of the *whole* encoded payload (its own tid/seq prefix included),
//! each fragment prefixed with the same tid and seq; `last` = 1 on the final one, whose `kind`
//! is the kind the reassembled payload decodes as. Fragments of one thread are never
//! interleaved with another record of that thread.
//!
//! Change the layout only together with [`det::record::VERSION`].

use det::record::RecordKind;

/// Outputs up to this size travel whole, so a mismatch can name its first differing byte;
/// larger ones travel as a hash.
pub const INLINE_OUTPUT_MAX: usize = 1 << 20;

/// The pseudo-address under which a `SyscallResult` record carries the det re-entry time of
/// an external call: no program address is this high (it is above the 47-bit user range).
pub const REENTRY_ADDR: u64 = u64::MAX - 7;

/// The most bytes one reassembled record may hold: a bound on what a peer can make the
/// secondary allocate for one record (a single call's results are far below it).
pub const REASSEMBLED_MAX: usize = 1 << 30;

/// The bytes before a fragment's data: tid u32, seq u64, kind u8, last u8.
pub const FRAGMENT_HEADER: usize = 14;

/// The most values one `TimeValues` record carries: one time ring's worth.
pub const TIME_VALUES_MAX: usize = det::abi::DITTO_TRING_CAP as usize;

/// A decoding error: the record does not have the layout its kind promises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed {kind:?} record payload ({len} bytes)")]
pub struct WireError {
    /// The record's kind.
    pub kind: RecordKind,
    /// Its payload length.
    pub len: usize,
}

/// A decoded per-thread record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThreadRecord {
    /// A recorded syscall's result and the memory it wrote.
    Syscall {
        /// Syscall number.
        nr: u32,
        /// The primary thread's syscall count at this call.
        syscall_no: u64,
        /// RAX.
        ret: i64,
        /// The signal delivered right after the call (0: none).
        signal: i32,
        /// (guest address, bytes) written by the call.
        writes: Vec<(u64, Vec<u8>)>,
    },
    /// An output the primary performed.
    Output {
        /// Syscall number.
        nr: u32,
        /// The primary thread's syscall count at this call.
        syscall_no: u64,
        /// The descriptor written to.
        fd: i32,
        /// RAX.
        ret: i64,
        /// The signal delivered right after the call (0: none).
        signal: i32,
        /// Bytes the call was asked to output.
        asked: u64,
        /// XXH3-64 of the bytes output.
        hash: u64,
        /// The bytes output, when small enough ([`INLINE_OUTPUT_MAX`]).
        data: Option<Vec<u8>>,
    },
    /// The outcome of a futex wait with a deadline.
    TimedWait {
        /// The waiter took a turn to settle it.
        took_turn: bool,
        /// It timed out.
        timed_out: bool,
        /// Det mode: its re-entry time.
        at: Option<u64>,
    },
    /// Det mode: re-entry time after an external call.
    Reentry {
        /// The logical time.
        at: u64,
    },
    /// Where an outside stream stood before the primary's output on it.
    Intent {
        /// Syscall number.
        nr: u32,
        /// The primary thread's syscall count at this call.
        syscall_no: u64,
        /// The descriptor written to.
        fd: i32,
        /// What the stream is, and so what `position` counts.
        stream: Stream,
        /// Bytes ever queued on the TCP socket, or the file's offset.
        position: u64,
        /// The file's size (0 for a socket).
        size: u64,
    },
    /// Time values the thread's vDSO read (ditto.h's time-ring values), in order.
    Time {
        /// 1 to [`TIME_VALUES_MAX`] values.
        values: Vec<u64>,
    },
}

/// The kind of outside stream an [`ThreadRecord::Intent`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// A connected TCP socket.
    Tcp = 1,
    /// A regular file.
    File = 2,
}

impl ThreadRecord {
    /// The record kind on the wire.
    pub fn kind(&self) -> RecordKind {
        match self {
            ThreadRecord::Syscall { .. } => RecordKind::SyscallResult,
            ThreadRecord::Output { .. } => RecordKind::OutputHash,
            ThreadRecord::TimedWait { .. } => RecordKind::TimedWait,
            ThreadRecord::Reentry { .. } => RecordKind::Reentry,
            ThreadRecord::Intent { .. } => RecordKind::OutputIntent,
            ThreadRecord::Time { .. } => RecordKind::TimeValues,
        }
    }

    /// A short name for reports.
    pub fn describe(&self) -> String {
        match self {
            ThreadRecord::Syscall { nr, .. } => crate::syscall_names::name(u64::from(*nr)),
            ThreadRecord::Output { nr, .. } => crate::syscall_names::name(u64::from(*nr)),
            ThreadRecord::TimedWait { .. } => "futex timed wait".into(),
            ThreadRecord::Reentry { .. } => "re-entry".into(),
            ThreadRecord::Intent { nr, .. } => {
                format!("intent of {}", crate::syscall_names::name(u64::from(*nr)))
            }
            ThreadRecord::Time { values } => format!("{} vDSO time reads", values.len()),
        }
    }

    /// Encodes the payload, with the common `tid`/`seq` prefix.
    pub fn encode(&self, tid: u32, seq: u64, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&tid.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        match self {
            ThreadRecord::Syscall {
                nr,
                syscall_no,
                ret,
                signal,
                writes,
            } => {
                out.extend_from_slice(&nr.to_le_bytes());
                out.extend_from_slice(&syscall_no.to_le_bytes());
                out.extend_from_slice(&ret.to_le_bytes());
                out.extend_from_slice(&signal.to_le_bytes());
                out.extend_from_slice(&(writes.len() as u32).to_le_bytes());
                for (addr, bytes) in writes {
                    out.extend_from_slice(&addr.to_le_bytes());
                    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                    out.extend_from_slice(bytes);
                }
            }
            ThreadRecord::Output {
                nr,
                syscall_no,
                fd,
                ret,
                signal,
                asked,
                hash,
                data,
            } => {
                out.extend_from_slice(&nr.to_le_bytes());
                out.extend_from_slice(&syscall_no.to_le_bytes());
                out.extend_from_slice(&fd.to_le_bytes());
                out.extend_from_slice(&ret.to_le_bytes());
                out.extend_from_slice(&signal.to_le_bytes());
                out.extend_from_slice(&asked.to_le_bytes());
                out.extend_from_slice(&hash.to_le_bytes());
                let data = data.as_deref().unwrap_or(&[]);
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
                out.extend_from_slice(data);
            }
            ThreadRecord::TimedWait {
                took_turn,
                timed_out,
                at,
            } => {
                out.push(*took_turn as u8);
                out.push(*timed_out as u8);
                out.push(at.is_some() as u8);
                out.extend_from_slice(&at.unwrap_or(0).to_le_bytes());
            }
            ThreadRecord::Reentry { at } => out.extend_from_slice(&at.to_le_bytes()),
            ThreadRecord::Intent {
                nr,
                syscall_no,
                fd,
                stream,
                position,
                size,
            } => {
                out.extend_from_slice(&nr.to_le_bytes());
                out.extend_from_slice(&syscall_no.to_le_bytes());
                out.extend_from_slice(&fd.to_le_bytes());
                out.push(*stream as u8);
                out.extend_from_slice(&position.to_le_bytes());
                out.extend_from_slice(&size.to_le_bytes());
            }
            ThreadRecord::Time { values } => {
                out.extend_from_slice(&(values.len() as u32).to_le_bytes());
                for v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }

    /// Decodes a per-thread record: (tid, seq, record).
    pub fn decode(kind: RecordKind, p: &[u8]) -> Result<(u32, u64, ThreadRecord), WireError> {
        let err = WireError { kind, len: p.len() };
        let mut r = Cursor(p);
        let tid = r.u32().ok_or(err)?;
        let seq = r.u64().ok_or(err)?;
        let rec = match kind {
            RecordKind::SyscallResult => {
                let nr = r.u32().ok_or(err)?;
                let syscall_no = r.u64().ok_or(err)?;
                let ret = r.u64().ok_or(err)? as i64;
                let signal = r.u32().ok_or(err)? as i32;
                let n = r.u32().ok_or(err)?;
                let mut writes = Vec::new();
                for _ in 0..n {
                    let addr = r.u64().ok_or(err)?;
                    let len = r.u32().ok_or(err)? as usize;
                    writes.push((addr, r.bytes(len).ok_or(err)?.to_vec()));
                }
                ThreadRecord::Syscall {
                    nr,
                    syscall_no,
                    ret,
                    signal,
                    writes,
                }
            }
            RecordKind::OutputHash => {
                let nr = r.u32().ok_or(err)?;
                let syscall_no = r.u64().ok_or(err)?;
                let fd = r.u32().ok_or(err)? as i32;
                let ret = r.u64().ok_or(err)? as i64;
                let signal = r.u32().ok_or(err)? as i32;
                let asked = r.u64().ok_or(err)?;
                let hash = r.u64().ok_or(err)?;
                let n = r.u32().ok_or(err)? as usize;
                let bytes = r.bytes(n).ok_or(err)?;
                ThreadRecord::Output {
                    nr,
                    syscall_no,
                    fd,
                    ret,
                    signal,
                    asked,
                    hash,
                    data: (n > 0 || ret == 0).then(|| bytes.to_vec()),
                }
            }
            RecordKind::TimedWait => {
                let f = r.bytes(3).ok_or(err)?.to_vec();
                let at = r.u64().ok_or(err)?;
                ThreadRecord::TimedWait {
                    took_turn: f[0] != 0,
                    timed_out: f[1] != 0,
                    at: (f[2] != 0).then_some(at),
                }
            }
            RecordKind::Reentry => ThreadRecord::Reentry {
                at: r.u64().ok_or(err)?,
            },
            RecordKind::OutputIntent => {
                let nr = r.u32().ok_or(err)?;
                let syscall_no = r.u64().ok_or(err)?;
                let fd = r.u32().ok_or(err)? as i32;
                let stream = match r.bytes(1).ok_or(err)?[0] {
                    1 => Stream::Tcp,
                    2 => Stream::File,
                    _ => return Err(err),
                };
                ThreadRecord::Intent {
                    nr,
                    syscall_no,
                    fd,
                    stream,
                    position: r.u64().ok_or(err)?,
                    size: r.u64().ok_or(err)?,
                }
            }
            RecordKind::TimeValues => {
                let n = r.u32().ok_or(err)? as usize;
                if n == 0 || n > TIME_VALUES_MAX {
                    return Err(err);
                }
                let mut values = Vec::with_capacity(n);
                for _ in 0..n {
                    values.push(r.u64().ok_or(err)?);
                }
                ThreadRecord::Time { values }
            }
            _ => return Err(err),
        };
        if !r.0.is_empty() {
            return Err(err);
        }
        Ok((tid, seq, rec))
    }
}

/// How the primary's program ended (the `End` record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndInfo {
    /// ditto's exit status for it (status, or 128 + signal).
    pub status: i32,
    /// The signal that ended it, 0 if it exited.
    pub signal: i32,
}

impl EndInfo {
    /// The `End` payload.
    pub fn encode(&self) -> [u8; 8] {
        let mut p = [0; 8];
        p[..4].copy_from_slice(&self.status.to_le_bytes());
        p[4..].copy_from_slice(&self.signal.to_le_bytes());
        p
    }

    /// Reads an `End` payload.
    pub fn decode(p: &[u8]) -> Result<Self, WireError> {
        let err = WireError {
            kind: RecordKind::End,
            len: p.len(),
        };
        let mut r = Cursor(p);
        let status = r.u32().ok_or(err)? as i32;
        let signal = r.u32().ok_or(err)? as i32;
        if !r.0.is_empty() {
            return Err(err);
        }
        Ok(EndInfo { status, signal })
    }
}

/// The output hash of the `OutputHash` record (the report shows it as is).
pub fn output_hash(data: &[u8]) -> u64 {
    crate::report::hash64(data)
}

/// The `ThreadStart` payload.
pub fn encode_thread_start(tid: u32) -> [u8; 4] {
    tid.to_le_bytes()
}

/// Reads a `ThreadStart` payload.
pub fn decode_thread_start(p: &[u8]) -> Result<u32, WireError> {
    <[u8; 4]>::try_from(p)
        .map(u32::from_le_bytes)
        .map_err(|_| WireError {
            kind: RecordKind::ThreadStart,
            len: p.len(),
        })
}

/// Splits an encoded per-thread payload (`whole`, of record kind `kind`) into `Fragment`
/// payloads of at most `max` bytes each (`max` > [`FRAGMENT_HEADER`]).
pub fn fragments(kind: RecordKind, whole: &[u8], max: usize) -> Vec<Vec<u8>> {
    let room = max.saturating_sub(FRAGMENT_HEADER).max(1);
    let prefix = whole.get(..12).unwrap_or(whole);
    let n = whole.len().div_ceil(room).max(1);
    (0..n)
        .map(|i| {
            let chunk = &whole[i * room..((i + 1) * room).min(whole.len())];
            let mut f = Vec::with_capacity(FRAGMENT_HEADER + chunk.len());
            f.extend_from_slice(prefix);
            f.resize(12, 0);
            f.push(kind as u8);
            f.push(u8::from(i + 1 == n));
            f.extend_from_slice(chunk);
            f
        })
        .collect()
}

/// One decoded `Fragment` payload.
#[derive(Debug, PartialEq, Eq)]
pub struct Fragment<'a> {
    /// The thread it belongs to.
    pub tid: u32,
    /// The thread's replicated-event number of the whole record.
    pub seq: u64,
    /// The kind of the whole record.
    pub kind: RecordKind,
    /// Whether this is the final piece.
    pub last: bool,
    /// This piece of the whole payload.
    pub data: &'a [u8],
}

/// Reads a `Fragment` payload.
pub fn decode_fragment(p: &[u8]) -> Result<Fragment<'_>, WireError> {
    let err = WireError {
        kind: RecordKind::Fragment,
        len: p.len(),
    };
    let mut r = Cursor(p);
    let tid = r.u32().ok_or(err)?;
    let seq = r.u64().ok_or(err)?;
    let flags = r.bytes(2).ok_or(err)?;
    let kind = RecordKind::try_from(flags[0]).map_err(|_| err)?;
    if !matches!(
        kind,
        RecordKind::SyscallResult
            | RecordKind::OutputHash
            | RecordKind::TimedWait
            | RecordKind::TimeValues
    ) || flags[1] > 1
    {
        return Err(err);
    }
    Ok(Fragment {
        tid,
        seq,
        kind,
        last: flags[1] == 1,
        data: r.0,
    })
}

/// Why fragments could not be put back together.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReassemblyError {
    /// The fragment is malformed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Another record of the thread came between its fragments, or a fragment of another
    /// record of the same thread.
    #[error("thread {tid}: fragment of record {seq} interleaved with record {pending}")]
    Interleaved {
        /// The thread.
        tid: u32,
        /// The fragment's record number.
        seq: u64,
        /// The record being reassembled.
        pending: u64,
    },
    /// The pieces add up to more than [`REASSEMBLED_MAX`].
    #[error("thread {tid}: fragmented record over {REASSEMBLED_MAX} bytes")]
    TooLarge {
        /// The thread.
        tid: u32,
    },
}

/// Puts fragmented per-thread records back together, per thread.
#[derive(Debug, Default)]
pub struct Reassembler {
    pending: std::collections::HashMap<u32, (u64, Vec<u8>)>,
}

impl Reassembler {
    /// Takes one `Fragment` payload; returns the whole record's kind and payload once its
    /// last piece is in.
    pub fn push(&mut self, p: &[u8]) -> Result<Option<(RecordKind, Vec<u8>)>, ReassemblyError> {
        let f = decode_fragment(p)?;
        let (seq, buf) = self
            .pending
            .entry(f.tid)
            .or_insert_with(|| (f.seq, Vec::new()));
        if *seq != f.seq {
            return Err(ReassemblyError::Interleaved {
                tid: f.tid,
                seq: f.seq,
                pending: *seq,
            });
        }
        if buf.len().saturating_add(f.data.len()) > REASSEMBLED_MAX {
            return Err(ReassemblyError::TooLarge { tid: f.tid });
        }
        buf.extend_from_slice(f.data);
        if !f.last {
            return Ok(None);
        }
        let (_, whole) = self.pending.remove(&f.tid).unwrap_or_default();
        Ok(Some((f.kind, whole)))
    }

    /// Whether a whole (unfragmented) record of `tid` may come now: not while one of its
    /// records is half reassembled.
    pub fn check_whole(&self, tid: u32, seq: u64) -> Result<(), ReassemblyError> {
        match self.pending.get(&tid) {
            Some((pending, _)) => Err(ReassemblyError::Interleaved {
                tid,
                seq,
                pending: *pending,
            }),
            None => Ok(()),
        }
    }

    /// Bytes held in half-reassembled records.
    pub fn held_bytes(&self) -> u64 {
        self.pending.values().map(|(_, b)| b.len() as u64).sum()
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.bytes(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(rec: ThreadRecord) {
        let mut buf = Vec::new();
        rec.encode(7, 42, &mut buf);
        let (tid, seq, back) = ThreadRecord::decode(rec.kind(), &buf).unwrap();
        assert_eq!((tid, seq, back), (7, 42, rec));
    }

    #[test]
    fn time_records_hold_one_to_a_ring_of_values() {
        let mut buf = Vec::new();
        for n in [0, TIME_VALUES_MAX + 1] {
            let mut p = Vec::new();
            p.extend_from_slice(&7u32.to_le_bytes());
            p.extend_from_slice(&0u64.to_le_bytes());
            p.extend_from_slice(&(n as u32).to_le_bytes());
            p.extend(std::iter::repeat_n(0u8, n * 8));
            assert!(
                ThreadRecord::decode(RecordKind::TimeValues, &p).is_err(),
                "{n}"
            );
        }
        let full = ThreadRecord::Time {
            values: vec![1 << 62; TIME_VALUES_MAX],
        };
        full.encode(7, 0, &mut buf);
        assert!(ThreadRecord::decode(RecordKind::TimeValues, &buf[..buf.len() - 1]).is_err());
        assert_eq!(
            ThreadRecord::decode(RecordKind::TimeValues, &buf)
                .unwrap()
                .2,
            full
        );
    }

    #[test]
    fn records_round_trip() {
        round_trip(ThreadRecord::Syscall {
            nr: 0,
            syscall_no: 3,
            ret: 5,
            signal: 0,
            writes: vec![(0x1000, b"hello".to_vec()), (0x2000, vec![])],
        });
        round_trip(ThreadRecord::Output {
            nr: 1,
            syscall_no: 4,
            fd: 1,
            ret: 3,
            signal: 10,
            asked: 3,
            hash: output_hash(b"abc"),
            data: Some(b"abc".to_vec()),
        });
        round_trip(ThreadRecord::Output {
            nr: 1,
            syscall_no: 4,
            fd: 4,
            ret: -32,
            signal: 0,
            asked: 10,
            hash: 0,
            data: None,
        });
        round_trip(ThreadRecord::TimedWait {
            took_turn: true,
            timed_out: false,
            at: Some(9),
        });
        round_trip(ThreadRecord::Reentry { at: 77 });
        round_trip(ThreadRecord::Time {
            values: vec![1 << 62 | 5, 2 << 62 | 1_800_000_000_000_000_000],
        });
        round_trip(ThreadRecord::Intent {
            nr: 1,
            syscall_no: 9,
            fd: 5,
            stream: Stream::Tcp,
            position: 1 << 40,
            size: 0,
        });
    }

    #[test]
    fn truncated_and_trailing_bytes_are_errors() {
        let mut buf = Vec::new();
        ThreadRecord::Syscall {
            nr: 0,
            syscall_no: 1,
            ret: 5,
            signal: 0,
            writes: vec![(0x1000, b"hello".to_vec())],
        }
        .encode(1, 1, &mut buf);
        for cut in 0..buf.len() {
            assert!(ThreadRecord::decode(RecordKind::SyscallResult, &buf[..cut]).is_err());
        }
        buf.push(0);
        assert!(ThreadRecord::decode(RecordKind::SyscallResult, &buf).is_err());
        // A write count that claims more than the payload holds.
        let mut bad = Vec::new();
        ThreadRecord::Syscall {
            nr: 0,
            syscall_no: 1,
            ret: 0,
            signal: 0,
            writes: vec![],
        }
        .encode(1, 1, &mut bad);
        bad[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(ThreadRecord::decode(RecordKind::SyscallResult, &bad).is_err());
    }

    #[test]
    fn fragments_reassemble_to_the_whole_record() {
        let rec = ThreadRecord::Syscall {
            nr: 318,
            syscall_no: 9,
            ret: 100_000,
            signal: 0,
            writes: vec![(0x40_0000, (0..100_000u32).map(|i| i as u8).collect())],
        };
        let mut whole = Vec::new();
        rec.encode(3, 17, &mut whole);
        let parts = fragments(rec.kind(), &whole, 4096);
        assert!(parts.len() > 20 && parts.iter().all(|p| p.len() <= 4096));
        let mut r = Reassembler::default();
        for (i, p) in parts.iter().enumerate() {
            let got = r.push(p).unwrap();
            if i + 1 < parts.len() {
                assert!(got.is_none());
                assert!(r.check_whole(3, 18).is_err(), "interleaving is refused");
                assert!(r.check_whole(4, 1).is_ok(), "other threads go on");
            } else {
                let (kind, payload) = got.unwrap();
                assert_eq!(
                    ThreadRecord::decode(kind, &payload).unwrap(),
                    (3, 17, rec.clone())
                );
            }
        }
        assert_eq!(r.held_bytes(), 0);
    }

    #[test]
    fn bad_fragments_are_errors() {
        let mut r = Reassembler::default();
        assert!(r.push(&[0; 5]).is_err());
        let mut f = fragments(RecordKind::SyscallResult, &[1; 100], 40);
        // A kind that cannot be fragmented.
        f[0][12] = RecordKind::End as u8;
        assert!(r.push(&f[0]).is_err());
        // A fragment of another record of the same thread in the middle.
        let a = fragments(RecordKind::SyscallResult, &[1; 100], 40);
        let mut b = fragments(RecordKind::SyscallResult, &[2; 100], 40);
        b[0][..4].copy_from_slice(&a[0][..4]);
        b[0][4..12].copy_from_slice(&99u64.to_le_bytes());
        r.push(&a[0]).unwrap();
        assert!(matches!(
            r.push(&b[0]),
            Err(ReassemblyError::Interleaved { .. })
        ));
        assert_eq!(decode_thread_start(&encode_thread_start(7)), Ok(7));
        assert!(decode_thread_start(&[1, 2, 3]).is_err());
    }

    #[test]
    fn end_round_trips() {
        let e = EndInfo {
            status: 143,
            signal: 15,
        };
        assert_eq!(EndInfo::decode(&e.encode()).unwrap(), e);
        assert!(EndInfo::decode(&[1, 2, 3]).is_err());
    }
}
