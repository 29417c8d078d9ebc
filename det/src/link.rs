//! The replication side of a det runtime's schedule: what a primary's runtime tells the
//! replication layer (turns, thread starts, timed-wait outcomes) and what a secondary's asks
//! of it. Defined here, beside the turn log, so the runtime and the replication layer share
//! it without depending on each other.

use crate::{DetTid, Turn, TurnError};

/// What a primary's timed futex wait came to (sent to the secondary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimedWait {
    /// The waiter took a turn (the token) to settle its wait: it timed out, then acquired the
    /// token to dequeue itself.
    pub took_turn: bool,
    /// The wait ended in ETIMEDOUT (false: woken, result 0).
    pub timed_out: bool,
    /// Kendo only: the logical time at which the waiter re-entered the competition to take
    /// that turn.
    pub reentry_at: Option<u64>,
}

/// The replication side of the schedule. Implemented by the replication layer.
///
/// The runtime calls [`log_turn`](Self::log_turn) with its lock held; it calls the other
/// methods without it, from the program thread concerned.
///
/// Only a futex wait with a deadline that was queued has an outcome: one that finds the word
/// changed (EAGAIN) reports nothing, on either replica. A thread has at most one such wait
/// at a time, so the outcomes of one thread come and are asked for in the same order.
///
/// Under Kendo the secondary's thread keeps competing while it waits in
/// [`timed_wait_outcome`](Self::timed_wait_outcome), so threads with later turns wait for
/// it; while one waits in `f` of `DetRuntime::blocking_replayed`, turns wait for the
/// primary's log ([`log_turn`](Self::log_turn), which a Kendo primary calls while any of its
/// threads is away in a blocking call). So the link must deliver a thread's records, and
/// turns, without waiting for other program threads to progress.
pub trait ScheduleLink: Send + Sync {
    /// Lead, and Kendo primary while a thread is away in a blocking call: a turn was
    /// granted. Called in grant order, with the runtime lock held (must not call back into
    /// the runtime).
    fn log_turn(&self, turn: Turn);
    /// Primary (every policy): deterministic thread `tid` was created. Called in creation
    /// order with the runtime lock held, before the new thread can make any call, so the
    /// secondary can refuse records of threads the primary never created.
    fn thread_started(&self, tid: DetTid);
    /// Primary (Kendo or Lead): `tid`'s futex wait with a deadline ended so.
    fn log_timed_wait(&self, tid: DetTid, outcome: TimedWait);
    /// Secondary (Kendo or Follow): blocks until the primary's outcome of `tid`'s current timed
    /// futex wait is known; None if it never will be (log ended / program exiting).
    fn timed_wait_outcome(&self, tid: DetTid) -> Option<TimedWait>;
    /// Secondary, Follow: what the primary's log says so far about `tid`'s current timed
    /// futex wait, without blocking. A timed-out record at the head of the thread's records
    /// is taken ([`WaitNews::TimedOut`]).
    fn follow_timed_wait(&self, tid: DetTid) -> WaitNews;
    /// Secondary, Follow: the schedule cannot be followed (a turn the log does not hold, etc.).
    fn schedule_diverged(&self, tid: DetTid, error: &TurnError);
}

/// What a follow-mode secondary knows of the primary's side of a timed futex wait
/// ([`ScheduleLink::follow_timed_wait`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitNews {
    /// The primary's thread timed out here (its record is now taken).
    TimedOut,
    /// The primary's thread did something after this wait without timing out.
    Passed,
    /// Nothing yet.
    Unknown,
    /// The primary's log ended without a word on it.
    Ended,
}
