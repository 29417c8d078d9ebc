//! The primary's records of one syscall ([`crate::call`]): what a Recorded, Compared or
//! exit_group call becomes on the wire once the primary has executed it.

use super::Primary;
use crate::call::Call;
use crate::wire::{self, ThreadRecord, REENTRY_ADDR};

impl Primary {
    /// A Recorded call: its result `ret`, the guest memory it wrote (`writes`: address,
    /// bytes), its det re-entry time if it blocked, and the signal delivered right after it
    /// (0: none).
    pub fn record_syscall(
        &self,
        call: &dyn Call,
        ret: i64,
        signal: i32,
        writes: Vec<(u64, Vec<u8>)>,
        reentry_at: Option<u64>,
    ) {
        let rec = syscall_record(call, ret, signal, writes, reentry_at);
        self.send_thread(call.thread(), call.event(), &rec);
    }

    /// A Compared call: the bytes it was asked to output (`asked`) to `fd`, its result `ret`
    /// (how many of them left), and the signal delivered right after it (0: none).
    pub fn record_output(&self, call: &dyn Call, fd: i32, ret: i64, signal: i32, asked: &[u8]) {
        let rec = output_record(call, fd, ret, signal, asked);
        self.send_thread(call.thread(), call.event(), &rec);
    }

    /// Before a Compared call outputs to an outside stream (failover): where the stream
    /// stands, as the record of the call's replicated event `seq`, which the output's own
    /// record will carry too. The output commit that follows makes the secondary hold it
    /// before any byte leaves.
    pub fn record_intent(&self, call: &dyn Call, seq: u64, doubt: crate::call::InDoubt) {
        let rec = ThreadRecord::Intent {
            nr: call.nr() as u32,
            syscall_no: call.syscall_seq(),
            fd: doubt.fd,
            stream: doubt.stream,
            position: doubt.position,
            size: doubt.size,
        };
        self.send_thread(call.thread(), seq, &rec);
    }

    /// Time values thread `tid`'s vDSO read since its last record (ditto.h's time ring), in
    /// order: sent before the record of the thread's next syscall and before any output is
    /// committed. At most [`wire::TIME_VALUES_MAX`] per record; more go in several.
    pub fn record_time(&self, tid: u32, values: &[u64]) {
        for chunk in values.chunks(wire::TIME_VALUES_MAX) {
            let rec = ThreadRecord::Time {
                values: chunk.to_vec(),
            };
            self.send_thread(tid, 0, &rec);
        }
    }

    /// exit_group with `status`, before it runs: recorded, then committed, so that the
    /// secondary holds the whole log before the program ends.
    pub fn record_exit(&self, call: &dyn Call, status: i64) {
        let rec = syscall_record(call, status, 0, Vec::new(), None);
        self.send_thread(call.thread(), call.event(), &rec);
        self.commit();
    }
}

/// The record of a Recorded call; the re-entry time travels as a write at [`REENTRY_ADDR`].
fn syscall_record(
    call: &dyn Call,
    ret: i64,
    signal: i32,
    mut writes: Vec<(u64, Vec<u8>)>,
    reentry_at: Option<u64>,
) -> ThreadRecord {
    if let Some(at) = reentry_at {
        writes.push((REENTRY_ADDR, at.to_le_bytes().to_vec()));
    }
    ThreadRecord::Syscall {
        nr: call.nr() as u32,
        syscall_no: call.syscall_seq(),
        ret,
        signal,
        writes,
    }
}

/// The record of a Compared call: the bytes that left (the first `ret`), inline when small
/// enough, always hashed.
fn output_record(call: &dyn Call, fd: i32, ret: i64, signal: i32, asked: &[u8]) -> ThreadRecord {
    let n = if ret > 0 {
        (ret as usize).min(asked.len())
    } else {
        0
    };
    let sent = &asked[..n];
    ThreadRecord::Output {
        nr: call.nr() as u32,
        syscall_no: call.syscall_seq(),
        fd,
        ret,
        signal,
        asked: asked.len() as u64,
        hash: wire::output_hash(sent),
        data: (sent.len() <= wire::INLINE_OUTPUT_MAX).then(|| sent.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::test_call::TestCall;

    #[test]
    fn a_recorded_call_carries_its_reentry_time_last() {
        let call = TestCall::new(3, libc::SYS_read as u64, 9, 2);
        let rec = syscall_record(&call, 4, 0, vec![(0x1000, b"abcd".to_vec())], Some(77));
        assert_eq!(
            rec,
            ThreadRecord::Syscall {
                nr: libc::SYS_read as u32,
                syscall_no: 9,
                ret: 4,
                signal: 0,
                writes: vec![
                    (0x1000, b"abcd".to_vec()),
                    (REENTRY_ADDR, 77u64.to_le_bytes().to_vec())
                ],
            }
        );
        let rec = syscall_record(&call, -11, 10, Vec::new(), None);
        assert!(
            matches!(rec, ThreadRecord::Syscall { ret: -11, signal: 10, ref writes, .. } if writes.is_empty())
        );
    }

    #[test]
    fn an_output_record_holds_only_what_left() {
        let call = TestCall::new(0, libc::SYS_write as u64, 5, 1);
        let rec = output_record(&call, 1, 3, 0, b"hello");
        assert_eq!(
            rec,
            ThreadRecord::Output {
                nr: libc::SYS_write as u32,
                syscall_no: 5,
                fd: 1,
                ret: 3,
                signal: 0,
                asked: 5,
                hash: wire::output_hash(b"hel"),
                data: Some(b"hel".to_vec()),
            }
        );
        // A failed write sent nothing; a result beyond the buffer is bounded by it.
        let failed = output_record(&call, 1, -32, 0, b"hello");
        assert!(
            matches!(failed, ThreadRecord::Output { data: Some(ref d), asked: 5, .. } if d.is_empty())
        );
        let over = output_record(&call, 1, 99, 0, b"hi");
        assert!(matches!(over, ThreadRecord::Output { data: Some(ref d), .. } if d == b"hi"));
    }

    #[test]
    fn a_large_output_travels_as_a_hash() {
        let call = TestCall::new(0, libc::SYS_write as u64, 1, 1);
        let big = vec![7u8; wire::INLINE_OUTPUT_MAX + 1];
        let rec = output_record(&call, 4, big.len() as i64, 0, &big);
        assert!(
            matches!(rec, ThreadRecord::Output { data: None, hash, .. } if hash == wire::output_hash(&big))
        );
    }
}
