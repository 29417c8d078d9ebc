//! The turn log of the `follow` mode (execute-follow, DESIGN.md §5).
//!
//! The primary takes det sections in the order that real contention gives and appends one
//! [`Turn`] per section to a [`TurnLog`]. The secondary feeds those turns, in log order, to a
//! [`TurnFollower`], which lets each of its threads into a section only when that section is
//! the next one in the log.

use crate::tid::DetTid;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use thiserror::Error;

/// One det section taken by one thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Turn {
    /// The thread that took it.
    pub tid: DetTid,
    /// Its index among that thread's turns, from 0.
    pub thread_seq: u64,
    /// Its index among all turns of the program, from 0.
    pub global_seq: u64,
}

/// Errors of the turn log: the secondary cannot follow the primary's schedule.
#[allow(missing_docs)] // Each variant's doc names its fields.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TurnError {
    /// Turn `found` arrived where turn `expected` was due (a lost, repeated or reordered record).
    #[error("turn {found} arrived where turn {expected} was due")]
    GlobalSeqGap { expected: u64, found: u64 },
    /// A turn arrived out of its thread's order: `found` where `expected` was due.
    #[error("{tid}: thread turn {found} arrived where {expected} was due")]
    ThreadSeqGap {
        tid: DetTid,
        expected: u64,
        found: u64,
    },
    /// `end` without a turn in progress for that thread.
    #[error("{0} ends a turn it does not hold")]
    NotInTurn(DetTid),
    /// `poll` by a thread that already holds the current turn.
    #[error("{0} asks for a turn while holding one")]
    AlreadyInTurn(DetTid),
    /// A turn for, or a request from, a thread that has exited.
    #[error("turn or request for exited thread {0}")]
    ThreadExited(DetTid),
    /// The log is closed and holds no turn `thread_seq` for `tid`: the secondary wants a det
    /// section that the primary never took, so the replicas diverged.
    #[error("{tid} asks for its turn {thread_seq}, which the primary never took")]
    Mismatch { tid: DetTid, thread_seq: u64 },
    /// Kendo secondary: `tid` cannot compete again at `at`, the logical time at which the
    /// primary's thread came back from the blocking call it replays; `why` is the
    /// schedule's refusal. The replicas' schedules differ by then.
    #[error("{tid} cannot re-enter the schedule at the primary's time {at}: {why}")]
    ReentryRefused { tid: DetTid, at: u64, why: String },
    /// A turn arrived after the log was closed.
    #[error("turn arrived after the end of the log")]
    Closed,
    /// `tid` exits while the log still holds its turn `next`.
    #[error("{tid} exits with its turn {next:?} still in the log")]
    ExitWithPendingTurns { tid: DetTid, next: Turn },
    /// The log's next turn is `tid`'s, but `tid` sleeps in a futex wait that no thread of
    /// this replica can end: each of the others waits for a later turn or sleeps in a futex
    /// too. The primary's thread took that turn, so it was not asleep there: this replica's
    /// threads took another path, through synchronisation that no turn orders (a data race,
    /// a lock that libditto does not see). `waits` says what each thread waits for.
    #[error("{tid} is due to take its turn {thread_seq} but sleeps in a futex wait that no thread can end (synchronisation ditto cannot order); {waits}")]
    Unorderable {
        tid: DetTid,
        thread_seq: u64,
        waits: String,
    },
}

/// Numbers the turns of both sides: the next global sequence and each thread's next one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Numbering {
    global: u64,
    per_thread: BTreeMap<DetTid, u64>,
}

impl Numbering {
    fn next_for(&self, tid: DetTid) -> u64 {
        self.per_thread.get(&tid).copied().unwrap_or(0)
    }

    fn advance(&mut self, tid: DetTid) {
        self.global += 1;
        *self.per_thread.entry(tid).or_default() += 1;
    }
}

/// The primary's side: numbers turns as they are taken and keeps them until the channel
/// writer takes them away.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TurnLog {
    pending: VecDeque<Turn>,
    numbering: Numbering,
}

impl TurnLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `tid` took the next det section, and returns that turn.
    pub fn append(&mut self, tid: DetTid) -> Turn {
        let turn = Turn {
            tid,
            thread_seq: self.numbering.next_for(tid),
            global_seq: self.numbering.global,
        };
        self.numbering.advance(tid);
        self.pending.push_back(turn);
        turn
    }

    /// The oldest turn not yet taken away.
    pub fn pop_front(&mut self) -> Option<Turn> {
        self.pending.pop_front()
    }

    /// How many turns wait to be taken away.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no turn waits to be taken away.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// How many turns were ever appended.
    pub fn total(&self) -> u64 {
        self.numbering.global
    }
}

/// The answer to [`TurnFollower::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowPoll {
    /// The caller's section is the next in the log: it holds this turn until `end`.
    Go(Turn),
    /// Another thread's turn comes first, or is in progress.
    Wait,
    /// Every received turn is taken: wait for more of the log.
    NeedLog,
}

/// The secondary's side: consumes the primary's turns strictly in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TurnFollower {
    pending: VecDeque<Turn>,
    received: Numbering,
    current: Option<Turn>,
    exited: BTreeSet<DetTid>,
    closed: bool,
}

impl TurnFollower {
    /// A follower at the start of the log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next turn of the log, checking that none is missing or repeated.
    pub fn push(&mut self, turn: Turn) -> Result<(), TurnError> {
        if self.closed {
            return Err(TurnError::Closed);
        }
        if turn.global_seq != self.received.global {
            return Err(TurnError::GlobalSeqGap {
                expected: self.received.global,
                found: turn.global_seq,
            });
        }
        let expected = self.received.next_for(turn.tid);
        if turn.thread_seq != expected {
            return Err(TurnError::ThreadSeqGap {
                tid: turn.tid,
                expected,
                found: turn.thread_seq,
            });
        }
        if self.exited.contains(&turn.tid) {
            return Err(TurnError::ThreadExited(turn.tid));
        }
        self.received.advance(turn.tid);
        self.pending.push_back(turn);
        Ok(())
    }

    /// May `tid` take its next turn now? On [`FollowPoll::Go`] it holds the turn until
    /// [`end`](Self::end).
    pub fn poll(&mut self, tid: DetTid) -> Result<FollowPoll, TurnError> {
        if self.exited.contains(&tid) {
            return Err(TurnError::ThreadExited(tid));
        }
        match (self.current, self.pending.front()) {
            (Some(cur), _) if cur.tid == tid => Err(TurnError::AlreadyInTurn(tid)),
            (None, Some(&head)) if head.tid == tid => {
                self.pending.pop_front();
                self.current = Some(head);
                Ok(FollowPoll::Go(head))
            }
            _ if self.closed && !self.pending.iter().any(|t| t.tid == tid) => {
                Err(TurnError::Mismatch {
                    tid,
                    thread_seq: self.received.next_for(tid),
                })
            }
            (Some(_), _) | (None, Some(_)) => Ok(FollowPoll::Wait),
            (None, None) => Ok(FollowPoll::NeedLog),
        }
    }

    /// Ends the turn that `tid` holds, and returns it.
    pub fn end(&mut self, tid: DetTid) -> Result<Turn, TurnError> {
        match self.current {
            Some(cur) if cur.tid == tid => {
                self.current = None;
                Ok(cur)
            }
            _ => Err(TurnError::NotInTurn(tid)),
        }
    }

    /// Records that `tid` exited; an error if the log still expects turns from it.
    pub fn exit(&mut self, tid: DetTid) -> Result<(), TurnError> {
        let next = self.pending.iter().find(|t| t.tid == tid);
        if let Some(&next) = next.or(self.current.as_ref().filter(|c| c.tid == tid)) {
            return Err(TurnError::ExitWithPendingTurns { tid, next });
        }
        self.exited.insert(tid);
        Ok(())
    }

    /// Marks the end of the log (the primary finished): from now on a thread that asks for a
    /// turn the log does not hold gets [`TurnError::Mismatch`] instead of waiting forever.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// The next turn of the log not yet taken, if it has arrived.
    pub fn next(&self) -> Option<Turn> {
        self.pending.front().copied()
    }

    /// Whether the log is complete ([`close`](Self::close)).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// How many received turns are not yet taken.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// How many turns have been taken (the next turn's `global_seq`).
    pub fn taken(&self) -> u64 {
        self.received.global - self.pending.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: DetTid = DetTid(0);
    const T1: DetTid = DetTid(1);

    #[test]
    fn follower_takes_turns_in_log_order() {
        let mut log = TurnLog::new();
        for t in [T1, T0, T1] {
            log.append(t);
        }
        let mut f = TurnFollower::new();
        assert_eq!(f.poll(T0), Ok(FollowPoll::NeedLog));
        while let Some(turn) = log.pop_front() {
            f.push(turn).unwrap();
        }
        assert_eq!(f.poll(T0), Ok(FollowPoll::Wait));
        let first = Turn {
            tid: T1,
            thread_seq: 0,
            global_seq: 0,
        };
        assert_eq!(f.poll(T1), Ok(FollowPoll::Go(first)));
        assert_eq!(f.poll(T1), Err(TurnError::AlreadyInTurn(T1)));
        assert_eq!(f.poll(T0), Ok(FollowPoll::Wait));
        assert_eq!(f.end(T0), Err(TurnError::NotInTurn(T0)));
        assert_eq!(f.end(T1), Ok(first));
        assert!(matches!(f.poll(T0), Ok(FollowPoll::Go(_))));
        assert_eq!(f.taken(), 2);
    }

    #[test]
    fn gaps_and_exits_are_reported() {
        let mut f = TurnFollower::new();
        let t = |tid, thread_seq, global_seq| Turn {
            tid,
            thread_seq,
            global_seq,
        };
        let gap = TurnError::GlobalSeqGap {
            expected: 0,
            found: 1,
        };
        assert_eq!(f.push(t(T0, 0, 1)), Err(gap));
        assert!(matches!(
            f.push(t(T0, 1, 0)),
            Err(TurnError::ThreadSeqGap { .. })
        ));
        f.push(t(T0, 0, 0)).unwrap();
        assert!(matches!(
            f.exit(T0),
            Err(TurnError::ExitWithPendingTurns { .. })
        ));
        f.exit(T1).unwrap();
        assert_eq!(f.push(t(T1, 0, 1)), Err(TurnError::ThreadExited(T1)));
        // The primary is done and took no turn for t1 after its first: t1 can never go on.
        f.close();
        assert_eq!(f.push(t(T0, 1, 1)), Err(TurnError::Closed));
        assert_eq!(f.poll(T1), Err(TurnError::ThreadExited(T1)));
        let mismatch = TurnError::Mismatch {
            tid: DetTid(2),
            thread_seq: 0,
        };
        assert_eq!(f.poll(DetTid(2)), Err(mismatch));
        assert!(matches!(f.poll(T0), Ok(FollowPoll::Go(_))));
    }

    proptest! {
        #[test]
        fn any_polling_order_follows_the_log(
            tids in proptest::collection::vec(0u32..4, 0..40),
            polls in proptest::collection::vec(0u32..4, 1..40),
        ) {
            let mut log = TurnLog::new();
            let appended: Vec<Turn> = tids.iter().map(|&t| log.append(DetTid(t))).collect();
            let mut f = TurnFollower::new();
            while let Some(turn) = log.pop_front() {
                f.push(turn)?;
            }
            let mut followed = Vec::new();
            // Every thread polls in each round, so each round takes at least the head turn.
            let round: Vec<u32> = polls.iter().copied().chain(0..4).collect();
            while followed.len() < appended.len() {
                for &t in &round {
                    if let FollowPoll::Go(turn) = f.poll(DetTid(t))? {
                        prop_assert_eq!(f.end(DetTid(t))?, turn);
                        followed.push(turn);
                    }
                }
            }
            prop_assert_eq!(followed, appended);
            prop_assert_eq!(f.poll(T0)?, FollowPoll::NeedLog);
        }
    }
}
