//! The interface between the syscall layer and replication for one syscall of a replicated
//! program. The syscall layer keeps what each syscall means: which guest memory it reads and
//! writes, which descriptors it creates, what output it makes. Replication keeps what the
//! records are and what they decide. They meet here, and only here:
//!
//! - The syscall layer describes the call through [`Call`]: who makes it, which syscall, its
//!   place in the thread's sequence, and (asked lazily, only for a report) where the program
//!   is in its schedule. Replication never sees guest memory.
//! - The primary, after executing a call, records it: [`Primary::record_syscall`] (a Recorded
//!   call: its result and the guest memory it wrote), [`Primary::record_output`] (a Compared
//!   call: the bytes it output) or [`Primary::record_exit`] (exit_group's status).
//! - The secondary, instead of executing a call, asks what to do with it and gets plain data
//!   back: [`Secondary::take_recorded`] gives a [`Replay`] (the result, the bytes to place and
//!   where the primary placed them); [`Secondary::compare_output`] compares its own output
//!   bytes and gives a [`ComparedOutput`]; [`Secondary::compare_exit`] checks exit_group's
//!   status. When the syscall layer cannot carry a replay out, it says why
//!   ([`Secondary::replay_failed`], [`Secondary::descriptor_mismatch`]); when it has, it says
//!   so ([`Secondary::replayed`]). `None` or `false` from any of them means the thread stops:
//!   the secondary found a mismatch (and reported it) or is stopping.
//!
//! Matching a record to its call, comparing, building the [`crate::findings::Mismatch`] and
//! the agreed events, and the status counters are all replication's (`primary/call.rs`,
//! `secondary/call.rs`).
//!
//! [`Primary::record_syscall`]: crate::primary::Primary::record_syscall
//! [`Primary::record_output`]: crate::primary::Primary::record_output
//! [`Primary::record_exit`]: crate::primary::Primary::record_exit
//! [`Secondary::take_recorded`]: crate::secondary::Secondary::take_recorded
//! [`Secondary::compare_output`]: crate::secondary::Secondary::compare_output
//! [`Secondary::compare_exit`]: crate::secondary::Secondary::compare_exit
//! [`Secondary::replay_failed`]: crate::secondary::Secondary::replay_failed
//! [`Secondary::descriptor_mismatch`]: crate::secondary::Secondary::descriptor_mismatch
//! [`Secondary::replayed`]: crate::secondary::Secondary::replayed

use crate::program::Program;

/// One syscall of the replicated program, as replication sees it (implemented by the syscall
/// layer's per-call context).
pub trait Call {
    /// The calling thread's deterministic id: records are routed by it.
    fn thread(&self) -> u32;
    /// The syscall number.
    fn nr(&self) -> u64;
    /// The thread's syscall count, this call included.
    fn syscall_seq(&self) -> u64;
    /// The thread's Recorded and Compared calls, this one included: the key a record is
    /// matched by (Local calls such as futexes may differ in number between replicas).
    fn event(&self) -> u64;
    /// Where the program is now, for a mismatch report: the thread's logical time and the
    /// turns taken so far (det mode; None without a det runtime).
    fn position(&self) -> (Option<u64>, Option<u64>);
    /// The program, which a mismatch stops.
    fn program(&self) -> &dyn Program;
}

/// Secondary: how to replay a Recorded call, from the primary's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replay {
    /// The primary's result (a negative errno on failure).
    pub ret: i64,
    /// The guest memory the primary's call wrote: (the primary's address, bytes), in order.
    pub writes: Vec<(u64, Vec<u8>)>,
    /// Det mode: the logical time at which the primary's call re-entered the token
    /// competition (an external call that blocked).
    pub reentry_at: Option<u64>,
    /// The signal the primary delivered right after the call, to deliver at the same point.
    pub signal: Option<i32>,
}

/// Secondary: a Compared call whose output agrees with the primary's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComparedOutput {
    /// The primary's result (bytes output, or a negative errno).
    pub ret: i64,
    /// The signal the primary delivered right after the call.
    pub signal: Option<i32>,
}

/// An output the primary may have performed in part or in full when it died (failover): where
/// its stream stood before it ([`crate::wire::ThreadRecord::Intent`]). The live secondary
/// measures the stream again and skips what the primary already did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InDoubt {
    /// The descriptor the primary wrote to.
    pub fd: i32,
    /// What the stream is.
    pub stream: crate::wire::Stream,
    /// Bytes ever queued on the TCP socket, or the file's offset, before the output.
    pub position: u64,
    /// The file's size before the output (0 for a socket).
    pub size: u64,
}

/// The signal a record names, if it is one to deliver (records carry 0 for none).
pub(crate) fn deliverable(signal: i32) -> Option<i32> {
    (signal > 0 && signal < 65).then_some(signal)
}

/// The primary's result as a record carries it: the value, or the negated errno.
pub fn record_result(result: Result<u64, i32>) -> i64 {
    match result {
        Ok(v) => v as i64,
        Err(errno) => -(errno as i64),
    }
}

/// A recorded result as the call's: the value, or the errno. From the channel, so checked: a
/// negation or narrowing must not overflow.
pub fn call_result(ret: i64) -> Result<u64, i32> {
    if ret < 0 {
        Err(i32::try_from(ret.unsigned_abs()).unwrap_or(libc::EINVAL))
    } else {
        Ok(ret as u64)
    }
}

/// A [`Call`] and a [`Program`] without a VM, for the unit tests of both sides.
#[cfg(test)]
pub(crate) mod test_call {
    use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

    use det::{Turn, TurnError};

    use super::Call;
    use crate::program::Program;

    /// A program that only remembers whether it was ended, and by which signal.
    #[derive(Default)]
    pub struct TestProgram {
        ended: AtomicBool,
        signal: AtomicI32,
        /// [`Program::go_live`] was called.
        pub went_live: AtomicBool,
    }

    impl TestProgram {
        /// The signal that ended it, if one did.
        pub fn ended_by(&self) -> Option<i32> {
            self.ended
                .load(Ordering::Relaxed)
                .then(|| self.signal.load(Ordering::Relaxed))
        }
    }

    impl Program for TestProgram {
        fn exiting(&self) -> bool {
            self.ended.load(Ordering::Relaxed)
        }
        fn end_by_signal(&self, signal: i32) {
            self.signal.store(signal, Ordering::Relaxed);
            self.ended.store(true, Ordering::Relaxed);
        }
        fn syscalls(&self) -> u64 {
            0
        }
        fn live_threads(&self) -> usize {
            1
        }
        fn turns_held(&self) -> Option<usize> {
            None
        }
        fn push_turn(&self, _: Turn) -> Result<(), TurnError> {
            Ok(())
        }
        fn close_log(&self) {}
        fn turns_taken(&self) -> Option<u64> {
            None
        }
        fn counters(&self) -> crate::status::ReplicaCounters {
            Default::default()
        }
        fn describe_schedule(&self) -> Option<String> {
            None
        }
        fn go_live(&self) -> crate::program::WentLive {
            self.went_live.store(true, Ordering::Relaxed);
            crate::program::WentLive {
                descriptors: 2,
                connections: 1,
            }
        }
    }

    /// One call of thread `thread`: syscall `nr`, the thread's syscall `seq` and replicated
    /// event `event`, at logical time 40 and turn 12.
    pub struct TestCall {
        pub thread: u32,
        pub nr: u64,
        pub seq: u64,
        pub event: u64,
        pub program: TestProgram,
    }

    impl TestCall {
        pub fn new(thread: u32, nr: u64, seq: u64, event: u64) -> Self {
            TestCall {
                thread,
                nr,
                seq,
                event,
                program: TestProgram::default(),
            }
        }
    }

    impl Call for TestCall {
        fn thread(&self) -> u32 {
            self.thread
        }
        fn nr(&self) -> u64 {
            self.nr
        }
        fn syscall_seq(&self) -> u64 {
            self.seq
        }
        fn event(&self) -> u64 {
            self.event
        }
        fn position(&self) -> (Option<u64>, Option<u64>) {
            (Some(40), Some(12))
        }
        fn program(&self) -> &dyn Program {
            &self.program
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_round_trip_and_hostile_ones_are_bounded() {
        assert_eq!(record_result(Ok(7)), 7);
        assert_eq!(record_result(Err(libc::EAGAIN)), -(libc::EAGAIN as i64));
        assert_eq!(call_result(7), Ok(7));
        assert_eq!(call_result(-(libc::EAGAIN as i64)), Err(libc::EAGAIN));
        assert_eq!(call_result(i64::MIN), Err(libc::EINVAL));
    }

    #[test]
    fn only_real_signals_are_delivered() {
        assert_eq!(deliverable(0), None);
        assert_eq!(deliverable(-1), None);
        assert_eq!(deliverable(10), Some(10));
        assert_eq!(deliverable(64), Some(64));
        assert_eq!(deliverable(65), None);
    }
}
