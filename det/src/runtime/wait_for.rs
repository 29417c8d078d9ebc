//! Follow mode: a secondary thread never waits for a turn while the thread whose turn is
//! next sleeps on something only a waiting thread could end.
//!
//! The secondary grants turns strictly in the primary's order, and futex waits take no turn
//! (see the module documentation of [`runtime`](super)). A thread whose next turn is due
//! can still be asleep in a futex wait, for one of two reasons:
//!
//! - A wake went to another waiter here than in the primary. A wake of one waiter picks
//!   the oldest, and which waiter queued first is timing (a semaphore post, a glibc lock
//!   release). The primary's thread took the turn, so its condition held by then; here it
//!   holds too (everything before the turn has run), only the wake is missing. The thread
//!   is let out of its wait ([`Inner::turn_due_in_futex`]), as a futex wait may return
//!   without a wake, re-checks its condition, and takes its turn.
//! - The replicas took different paths through synchronisation that no turn orders (a
//!   data race: CPython's switch request, which the running thread reads between
//!   bytecodes; a lock that libditto does not see, held across a det point). The thread goes
//!   back to sleep, and if every other thread waits for a later turn or sleeps in a futex
//!   too, nothing can ever move. [`Inner::unorderable`] finds that state as it forms and the
//!   secondary reports a divergence of the schedule at once, naming what each thread waits
//!   for, instead of stalling until the supervisor's timeout.

use std::fmt::Write;
use std::time::{Duration, Instant};

use super::Inner;
use crate::{Phase, TurnError};

/// How long the wait-for state must stay unchanged before it is reported: threads between
/// two calls into the runtime look running, so a stuck state is only trusted once it lasts.
const UNORDERABLE_AFTER: Duration = Duration::from_millis(500);

impl Inner {
    /// Follow: whether `tid`, asleep in a futex wait, must wake up now because its next turn
    /// in the primary's log is due (nobody holds the token and the log's next turn is its);
    /// if so, takes it out of the futex queue.
    ///
    /// The primary's thread took that turn, so it was not asleep there; if this replica's
    /// thread is, it sleeps on a wake that went elsewhere here (a wake of one waiter picks
    /// the oldest, and which waiter queued first is timing: a semaphore post, a glibc lock
    /// release), and every thread that could post again waits for turns after its own. A
    /// futex wait may return without a wake (callers re-check their condition: glibc's and
    /// libditto's all do), so it returns here, and the thread re-checks and takes its turn.
    /// Only once per turn: a thread that goes back to sleep with the same turn due waits
    /// for something no turn orders (a lock held by a running thread), which wakes it.
    pub(super) fn turn_due_in_futex(&mut self, addr: u64, tid: i64) -> bool {
        let Some(taken) = self.order.follow_taken() else {
            return false;
        };
        let Some(det) = self.threads.get(&tid).map(|s| s.det) else {
            return false;
        };
        if !self.order.may_go(det) {
            return false;
        }
        let Some(s) = self.threads.get_mut(&tid) else {
            return false;
        };
        if s.released_at == Some(taken) {
            return false;
        }
        s.released_at = Some(taken);
        self.dequeue(addr, tid);
        self.progress += 1;
        true
    }

    /// The futex address `tid` sleeps on, if it does.
    fn futex_of(&self, tid: i64) -> Option<u64> {
        self.futex
            .iter()
            .find(|(_, q)| q.iter().any(|w| w.tid == tid))
            .map(|(&addr, _)| addr)
    }

    /// Follow: called by `tid`, asleep in a futex wait, before it sleeps on. Some(error)
    /// when the replica is stuck: the log's next turn is `tid`'s, it was already let out of
    /// its wait once for that turn ([`turn_due_in_futex`](Self::turn_due_in_futex)) and went
    /// back to sleep, and every other thread waits for the token or sleeps in a futex wait
    /// whose end cannot come from the primary's log (no deadline, or the log is complete),
    /// with nothing moving for [`UNORDERABLE_AFTER`].
    pub(super) fn unorderable(&mut self, tid: i64) -> Option<TurnError> {
        let follower = self.order.follower()?;
        let (next, taken, closed) = (follower.next()?, follower.taken(), follower.is_closed());
        let me = self.threads.get(&tid)?;
        if next.tid != me.det {
            // Only the thread whose turn is due judges (and resets) the state.
            return None;
        }
        let asleep = |t: i64, timed: bool| self.futex_of(t).is_some() && (!timed || closed);
        let stuck = self.order.may_go(me.det)
            && me.released_at == Some(taken)
            && asleep(tid, me.timed_wait)
            && self.threads.iter().all(|(&t, s)| {
                t == tid
                    || asleep(t, s.timed_wait)
                    || self.order.phase(s.det) == Some(Phase::Waiting)
            });
        if !stuck {
            self.stuck_since = None;
            return None;
        }
        match self.stuck_since {
            Some((since, at)) if at == self.progress => {
                if since.elapsed() < UNORDERABLE_AFTER {
                    return None;
                }
            }
            _ => {
                self.stuck_since = Some((Instant::now(), self.progress));
                return None;
            }
        }
        let mut waits = String::new();
        for (&t, s) in &self.threads {
            let what = match self.futex_of(t) {
                Some(addr) => format!("a futex at {addr:#x}"),
                None => "the token".to_string(),
            };
            let sep = if waits.is_empty() { "" } else { ", " };
            let _ = write!(waits, "{sep}{} (guest tid {t}) waits for {what}", s.det);
        }
        Some(TurnError::Unorderable {
            tid: next.tid,
            thread_seq: next.thread_seq,
            waits,
        })
    }
}
