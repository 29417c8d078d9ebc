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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use guest_memory::Errno;

    use super::super::testing::*;
    use super::super::{DetRuntime, Policy};
    use crate::{DetTid, Turn, TurnError};

    fn turn(tid: u32, thread_seq: u64, global_seq: u64) -> Turn {
        Turn {
            tid: DetTid(tid),
            thread_seq,
            global_seq,
        }
    }

    /// A follow-mode secondary fed `log`, with threads 1001 and 1002 created by the main
    /// thread in the log's first two turns.
    fn follower(log: &[Turn]) -> (Arc<DetRuntime>, Arc<FakeProcess>, Arc<TestLink>) {
        let p = Arc::new(process());
        let link = Arc::new(TestLink::default());
        let rt = Arc::new(DetRuntime::replicated(
            1000,
            None,
            Policy::Follow,
            false,
            link.clone(),
        ));
        for &t in log {
            rt.push_turn(t).unwrap();
        }
        rt.clone_thread(&*p, 1000, || Ok(1001)).unwrap();
        rt.clone_thread(&*p, 1000, || Ok(1002)).unwrap();
        (rt, p, link)
    }

    /// A semaphore (libditto's protocol: the count changes in sections, waiters sleep on
    /// its word outside them) whose one post wakes a different waiter here than in the
    /// primary. Primary: t1 and t2 count themselves as waiters and sleep; t0 posts and the
    /// wake goes to t1, which takes the unit; later t2 retries. Here t2 queued first, so
    /// the wake of the oldest goes to t2, and t1, whose turn is next, would sleep for good
    /// while t2 and t0 wait for turns after t1's (the stall of issue 13 before the fix).
    #[test]
    fn a_wake_that_went_to_another_waiter_does_not_stall_the_due_thread() {
        let log = [
            turn(0, 0, 0),
            turn(0, 1, 1),
            turn(1, 0, 2), // t1: count as a waiter
            turn(2, 0, 3), // t2: count as a waiter
            turn(0, 2, 4), // t0: post
            turn(1, 1, 5), // t1: take the unit
            turn(2, 1, 6), // t2: finds none
            turn(1, 2, 7), // t1 exits
            turn(2, 2, 8), // t2 exits
        ];
        let (rt, p, link) = follower(&log);
        static VALUE: AtomicU32 = AtomicU32::new(0);
        let took = Arc::new(AtomicU32::new(0));
        let waiter = |tid: i64, first: bool| {
            let (rt, p, took) = (rt.clone(), p.clone(), took.clone());
            std::thread::spawn(move || {
                rt.ordered(&*p, tid, || ()).unwrap();
                if !first {
                    // t2 sleeps first here, as the primary's t1 did there.
                } else {
                    wait_for("t2 sleeps", || in_futex_wait(&rt, 1002));
                }
                let r = rt.futex_wait(&*p, tid, 64, (&VALUE).into(), wait(0, None));
                if r == Err(Errno::EINTR) {
                    return;
                }
                rt.ordered(&*p, tid, || {
                    if VALUE.load(Ordering::SeqCst) == 1 {
                        VALUE.store(0, Ordering::SeqCst);
                        took.store(tid as u32, Ordering::SeqCst);
                    }
                })
                .unwrap();
                rt.thread_exit(&*p, tid, 0, || {});
            })
        };
        let t2 = waiter(1002, false);
        let t1 = waiter(1001, true);
        wait_for("t1 sleeps", || in_futex_wait(&rt, 1001));
        // The post, and its wake while the turn is still held (so that t1's turn is not
        // due yet): the oldest waiter, t2, gets it, the wrong one for the log.
        let woken = rt
            .ordered(&*p, 1000, || {
                VALUE.store(1, Ordering::SeqCst);
                rt.futex_wake(&*p, 1000, 64, 1, u32::MAX)
            })
            .unwrap();
        assert_eq!(woken, Ok(1));
        let until = Instant::now() + Duration::from_secs(5);
        while !(t1.is_finished() && t2.is_finished()) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
        let done = t1.is_finished() && t2.is_finished();
        // Let any thread still asleep go, so that the test ends either way.
        p.finish(0);
        assert!(done, "stalled: {}", rt.describe());
        assert_eq!(
            took.load(Ordering::SeqCst),
            1001,
            "the primary's t1 took it"
        );
        assert!(link.diverged.lock().unwrap().is_empty());
    }

    /// The invisible lock (notes/partial-order-replay.md §4): in the primary t1 took a lock
    /// that no det point sees, took a turn under it and let it go; then t2 did the same.
    /// Here t2 wins the lock first and waits for its turn, which comes after t1's, while
    /// t1 sleeps on the lock. No schedule that follows the log exists; the secondary must
    /// say so at once (a schedule divergence naming each thread's wait), not stall.
    #[test]
    fn an_invisible_lock_held_across_a_turn_is_reported_not_stalled() {
        let log = [
            turn(0, 0, 0),
            turn(0, 1, 1),
            turn(1, 0, 2), // t1, under the lock
            turn(2, 0, 3), // t2, under the lock
        ];
        let (rt, p, link) = follower(&log);
        static LOCK: AtomicU32 = AtomicU32::new(0);
        let take = |w: &AtomicU32| {
            w.compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        };
        assert!(take(&LOCK), "t2 wins the lock");
        // The main thread sleeps in pthread_join, as a program's would.
        let t0 = {
            let (rt, p) = (rt.clone(), p.clone());
            static JOIN: AtomicU32 = AtomicU32::new(1002);
            std::thread::spawn(move || {
                rt.futex_wait(&*p, 1000, 256, (&JOIN).into(), wait(1002, None))
            })
        };
        let t2 = {
            let (rt, p) = (rt.clone(), p.clone());
            std::thread::spawn(move || rt.ordered(&*p, 1002, || ()))
        };
        let t1 = {
            let (rt, p) = (rt.clone(), p.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                while !take(&LOCK) {
                    let r = rt.futex_wait(&*p, 1001, 128, (&LOCK).into(), wait(1, None));
                    if r == Err(Errno::EINTR) {
                        return started.elapsed();
                    }
                }
                panic!("t1 took a lock that t2 holds");
            })
        };
        let until = Instant::now() + Duration::from_secs(5);
        while !t1.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        let reported = t1.is_finished();
        p.finish(0);
        assert!(reported, "stalled: {}", rt.describe());
        let took = t1.join().unwrap();
        assert!(took < Duration::from_secs(2), "reported after {took:?}");
        let diverged = link.diverged.lock().unwrap().clone();
        assert_eq!(diverged.len(), 1, "{diverged:?}");
        let (who, e) = &diverged[0];
        assert_eq!(*who, DetTid(1));
        let TurnError::Unorderable {
            tid,
            thread_seq,
            waits,
        } = e
        else {
            panic!("{e:?}");
        };
        assert_eq!((*tid, *thread_seq), (DetTid(1), 0));
        assert!(
            waits.contains("t1 (guest tid 1001) waits for a futex at 0x80"),
            "{waits}"
        );
        assert!(
            waits.contains("t2 (guest tid 1002) waits for the token"),
            "{waits}"
        );
        // The others' waits end with the program.
        assert!(t2.join().unwrap().is_err());
        assert_eq!(t0.join().unwrap(), Err(Errno::EINTR));
    }
}
