//! A futex wait with a deadline in a pair (Kendo), settled so that both replicas agree:
//! the primary takes a turn to time out and reports the outcome ([`TimedWait`]); the
//! secondary ignores its own deadline and does what the primary did. (Follow mode's timed
//! waits take no turn and are settled in `futex`.)

use std::sync::{Condvar, MutexGuard};

use guest_memory::Errno;

use super::{DetRuntime, Inner, Policy, ProcessView, ScheduleLink, TimedWait, EXIT_POLL};
use crate::DetTid;

impl DetRuntime {
    /// The primary's timed-out futex wait: take a turn (Kendo: re-enter at the floor first),
    /// and under the token either find that a wake came meanwhile (result 0) or dequeue
    /// (ETIMEDOUT). Reports the outcome to `link`.
    pub(super) fn settle_timed_wait(
        &self,
        mut g: MutexGuard<'_, Inner>,
        process: &dyn ProcessView,
        (tid, det): (i64, DetTid),
        addr: u64,
        link: &dyn ScheduleLink,
    ) -> Result<u64, Errno> {
        let reentry_at = g.resume(tid);
        g.notify_holder();
        let timed_out = self.settle_in_turn(g, process, tid, addr)?;
        let outcome = TimedWait {
            took_turn: true,
            timed_out,
            reentry_at,
        };
        link.log_timed_wait(det, outcome);
        if timed_out {
            Err(Errno::ETIMEDOUT)
        } else {
            Ok(0)
        }
    }

    /// Takes a turn for a waiter that competes again, and under it dequeues the waiter
    /// unless a wake came first. Returns whether it timed out (was dequeued).
    pub(super) fn settle_in_turn(
        &self,
        g: MutexGuard<'_, Inner>,
        process: &dyn ProcessView,
        tid: i64,
        addr: u64,
    ) -> Result<bool, Errno> {
        let (mut g, held) = match self.acquire(g, process, tid, true) {
            Ok(x) => x,
            Err(e) => {
                let mut g = self.locked();
                g.dequeue(addr, tid);
                g.notify_holder();
                return Err(e.into());
            }
        };
        let timed_out = !g.woken(tid);
        if timed_out {
            g.dequeue(addr, tid);
        }
        self.release(&mut g, tid, held)?;
        Ok(timed_out)
    }

    /// The secondary's futex wait with a deadline, from the point where it is queued, its
    /// section is closed and the primary's outcome is known: do the same.
    ///
    /// Kendo: until the outcome is known the thread keeps competing at its current time (it
    /// has not left), so that no other thread gets past the time at which the primary's
    /// waiter may have re-entered. A wake that comes meanwhile comes from a turn with a
    /// smaller key, after which the primary's floor for the waiter was this same time; so a
    /// woken thread just stays where it is.
    pub(super) fn replay_timed_wait(
        &self,
        mut g: MutexGuard<'_, Inner>,
        process: &dyn ProcessView,
        (tid, det): (i64, DetTid),
        addr: u64,
        cv: &Condvar,
        outcome: TimedWait,
    ) -> Result<u64, Errno> {
        if !outcome.took_turn {
            // The primary was woken before it timed out; so is this replica, by the same
            // turn.
            if outcome.timed_out {
                tracing::warn!(%det, ?outcome, "a timed-out wait that took no turn");
            }
            if !g.woken(tid) {
                g.order.leave(det)?;
            }
            g.notify_holder();
            loop {
                if g.woken(tid) {
                    return Ok(0);
                }
                if process.exiting() {
                    g.dequeue(addr, tid);
                    g.resume(tid);
                    g.notify_holder();
                    return Err(Errno::EINTR);
                }
                g = cv
                    .wait_timeout(g, EXIT_POLL)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        if self.policy() == Policy::Kendo {
            let Some(at) = outcome.reentry_at else {
                tracing::warn!(%det, ?outcome, "a Kendo timed wait without a re-entry time");
                g.dequeue(addr, tid);
                g.notify_holder();
                return Err(Errno::EINVAL);
            };
            if let Err(e) = g.replay_reentry(det, at) {
                g.dequeue(addr, tid);
                g.notify_holder();
                return Err(e.into());
            }
            g.notify_holder();
        }
        let timed_out = self.settle_in_turn(g, process, tid, addr)?;
        if timed_out != outcome.timed_out {
            tracing::warn!(%det, timed_out, ?outcome, "a timed wait ended otherwise than the primary's");
        }
        if timed_out {
            Err(Errno::ETIMEDOUT)
        } else {
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::runtime::testing::*;

    /// Follow mode: a futex call that only one replica makes (contention on a lock that
    /// only one of them met) takes no turn, so the logs still match.
    #[test]
    fn follow_mode_futex_calls_take_no_turn() {
        let p = process();
        let link = Arc::new(TestLink::default());
        let lead = DetRuntime::replicated(1000, None, Policy::Lead, true, link.clone());
        let word = AtomicU32::new(1);
        lead.det_start(&p, 1000).unwrap();
        lead.det_end(1000).unwrap();
        assert_eq!(lead.futex_wake(&p, 1000, 0x1000, 1, u32::MAX), Ok(0));
        assert_eq!(
            lead.futex_wait(&p, 1000, 0x1000, (&word).into(), wait(0, None)),
            Err(Errno::EAGAIN)
        );
        lead.det_start(&p, 1000).unwrap();
        lead.det_end(1000).unwrap();
        let turns = link.turns.lock().unwrap().clone();
        assert_eq!(turns.len(), 2);

        let flink = Arc::new(TestLink::replaying(&link));
        let follow = DetRuntime::replicated(1000, None, Policy::Follow, false, flink.clone());
        for t in turns {
            follow.push_turn(t).unwrap();
        }
        follow.close_log();
        for _ in 0..2 {
            follow.det_start(&p, 1000).unwrap();
            follow.det_end(1000).unwrap();
        }
        assert!(flink.diverged.lock().unwrap().is_empty());
    }

    /// Follow mode's secondary times out where the primary's log says, not by its own clock:
    /// at once when the log holds the timeout, never while the log says the primary's
    /// thread was woken.
    #[test]
    fn follow_secondary_times_out_where_the_log_says() {
        let p = process();
        let link = Arc::new(TestLink::default());
        link.outcomes
            .lock()
            .unwrap()
            .entry(DetTid(0))
            .or_default()
            .push_back(TimedWait {
                took_turn: false,
                timed_out: true,
                reentry_at: None,
            });
        let rt = DetRuntime::replicated(1000, None, Policy::Follow, false, link.clone());
        let word = AtomicU32::new(0);
        let far = Some(Instant::now() + Duration::from_secs(30));
        let started = Instant::now();
        assert_eq!(
            rt.futex_wait(&p, 1000, 0x1000, (&word).into(), wait(0, far)),
            Err(Errno::ETIMEDOUT)
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(link.outcomes.lock().unwrap()[&DetTid(0)].is_empty());

        // Nothing logged, and a deadline already past: the secondary waits for its wake.
        // (The waker uses the same guest tid: follow-mode wakes take no turn, so it
        // needs no slot of its own.)
        let rt = Arc::new(rt);
        let (rt2, p2) = (rt.clone(), Arc::new(p));
        let p3 = p2.clone();
        let waiter = std::thread::spawn(move || {
            let past = Some(Instant::now());
            rt2.futex_wait(
                &p3,
                1000,
                0x2000,
                (&AtomicU32::new(0)).into(),
                wait(0, past),
            )
        });
        wait_for("the waiter is queued", || {
            in_futex_wait(&rt, 1000) || waiter.is_finished()
        });
        assert!(!waiter.is_finished(), "timed out by its own clock");
        assert_eq!(rt.futex_wake(&p2, 1000, 0x2000, 1, u32::MAX), Ok(1));
        assert_eq!(waiter.join().unwrap(), Ok(0));
    }

    /// Kendo secondary: a timed wait whose outcome never comes (the primary's exit cut
    /// its thread's wait short) sleeps out of the competition, as the primary's thread did,
    /// until a wake or the program's end. It used to answer EINTR at once: a program that
    /// retries (redis's bio and jemalloc threads do) made a futex call, a turn, per retry,
    /// turns the primary never took, and ran ahead of a thread still replaying its records
    /// until that thread's re-entry was refused (README, the det-mode known bug).
    #[test]
    fn kendo_secondary_timed_wait_without_outcome_sleeps_as_the_primary_did() {
        let p = Arc::new(process());
        // No outcomes: `timed_wait_outcome` answers None, as at the end of the log.
        let link = Arc::new(TestLink::default());
        let rt = Arc::new(DetRuntime::replicated(
            1000,
            None,
            Policy::Kendo,
            false,
            link.clone(),
        ));
        rt.clone_thread(&p, 1000, || Ok(1001)).unwrap();
        // t0 ahead, so that t1 holds the token for its wait.
        rt.det_tick(1000, 10).unwrap();
        let word = Arc::new(AtomicU32::new(0));
        let (rt1, p1, w1) = (rt.clone(), p.clone(), word.clone());
        let waiter = std::thread::spawn(move || {
            let far = Some(Instant::now() + Duration::from_secs(30));
            rt1.futex_wait(&*p1, 1001, 0x1000, (&*w1).into(), wait(0, far))
        });
        wait_for("t1 is queued", || {
            in_futex_wait(&rt, 1001) || waiter.is_finished()
        });
        // The link answers within a few ms; the wait must still be asleep well after.
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !waiter.is_finished(),
            "the wait ended without a wake: {:?}",
            waiter.join()
        );
        // Out of the competition: t0 takes turns past t1's time without waiting for it.
        let (rt0, p0) = (rt.clone(), p.clone());
        let t0 = std::thread::spawn(move || {
            for _ in 0..5 {
                rt0.det_start(&*p0, 1000).unwrap();
                rt0.det_end(1000).unwrap();
            }
        });
        wait_for("t0 took its turns", || t0.is_finished());
        t0.join().unwrap();
        assert!(rt.logical_time(1000) > rt.logical_time(1001));
        assert!(!waiter.is_finished());
        // A wake ends it, as any wait.
        assert_eq!(rt.futex_wake(&*p, 1000, 0x1000, 1, u32::MAX), Ok(1));
        assert_eq!(waiter.join().unwrap(), Ok(0));
        assert!(link.diverged.lock().unwrap().is_empty());
    }
}
