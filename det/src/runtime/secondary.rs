//! What a secondary takes from its primary: the primary's turn log (followed turn by turn
//! under Follow, and under Kendo the gate that holds back turns the log must confirm while
//! a thread awaits a blocking call's record), and the replay of such a call's re-entry.

use super::order::{FreeMode, FreeToken, Order};
use std::sync::atomic::Ordering;

use super::{DetError, DetRuntime, Inner, Policy};
use crate::{DetTid, Phase, Turn, TurnError};

impl Inner {
    /// Kendo secondary: whether `det`, which would be granted the next turn, must wait for
    /// the primary's log first.
    ///
    /// While a thread X waits for the record of a blocking call, this replica does not
    /// know when the primary's X came back, at a time `at` that only the record tells
    /// (at least X's time when it left). A turn whose key is below X's key when it left is
    /// below `(at, X)` too: X could not have taken it first, whether it was away or back,
    /// so the primary took it as well, and it goes ahead. A later key may have come after
    /// X's return; the primary logs every turn while a thread is away, so such a turn is
    /// safe exactly when the log shows it, at the same global sequence, for the same
    /// thread. Anything else waits: for more log, or for X's record, after which X competes
    /// again at the primary's time. (Where a thread leaves does not matter: one that leaves
    /// while it holds the smallest key only lets later keys go, in either replica.)
    ///
    /// Once the log is complete (the primary ended) the same holds while it still shows a
    /// turn at or after this one: the awaited record, if it comes, is already here, and the
    /// primary's X took its re-entry turn, logged, no earlier than this turn. A turn beyond
    /// everything logged goes: the primary never granted it while X was away, so its X was
    /// still in the call when it ended, and X's record never comes. (The gate used to open
    /// as soon as the log was complete. A secondary that lagged, with thousands of records
    /// still to replay, then let other threads take turns past the time at which the
    /// primary's X had come back, and X's re-entry was refused.)
    pub(super) fn gated(&self, det: DetTid) -> bool {
        if self.awaiting_record.is_empty() {
            return false;
        }
        let Order::Kendo(sched) = &self.order else {
            return false;
        };
        let Some(seq) = sched.would_grant(det) else {
            return false;
        };
        let key = |d: DetTid| sched.time(d).map(|t| (t, d));
        if !self.awaiting_record.iter().any(|&x| key(det) > key(x)) {
            return false;
        }
        match self.primary_turns.get(&seq) {
            Some(&logged) => logged != det,
            None => !self.primary_log_closed || self.primary_turns.range(seq..).next().is_some(),
        }
    }

    /// Kendo secondary: makes a thread that never left compete at exactly `at`, the time at
    /// which the primary's thread re-entered. Nothing under the other policies.
    ///
    /// `leave(Some(at))` checks that `at` is not below the thread's own time, and `reenter`
    /// then takes the pledge without a floor check. The floor would not refuse `at` anyway:
    /// the thread never left, so it competed at (its time, its id) all along and every turn
    /// granted meanwhile had a smaller key; its floor is therefore its own time, which is
    /// the primary thread's time at the same point (the schedule is the same up to here),
    /// and the primary's `at` was at least that (it was the primary's floor).
    ///
    /// A thread that did leave (it waited for a blocking call's record, see `gated`) comes
    /// back at `at` through the floor check, which every turn taken meanwhile satisfies:
    /// each was logged by the primary before its thread came back at `at`, so its key is
    /// below `(at, det)`.
    pub(super) fn replay_reentry(&mut self, det: DetTid, at: u64) -> Result<(), DetError> {
        if let Order::Kendo(sched) = &mut self.order {
            if sched.phase(det) == Some(Phase::Running) {
                sched.leave(det, Some(at))?;
            }
            sched.reenter(det, at)?;
        }
        Ok(())
    }
}

impl DetRuntime {
    /// The secondary's [`blocking`](Self::blocking): `f` waits for the primary's record of
    /// the call and returns its result with the primary's re-entry time (None: the record
    /// will never come, and the call answers [`DetError::Exiting`]).
    ///
    /// Kendo: a section the thread is in ends and the thread leaves the competition, as the
    /// primary's did, while `f` waits; meanwhile the other threads take only turns that the
    /// primary's log shows (`Inner::gated`), so none gets past a point where the primary's
    /// thread had come back. Then it competes from exactly the primary's time (see
    /// `Inner::replay_reentry` for why that time is always allowed). A record without a
    /// time (not from a Kendo primary) puts the thread back at the earliest allowed time,
    /// with a warning. Lead and Follow: `f` just runs.
    pub fn blocking_replayed<R>(
        &self,
        tid: i64,
        f: impl FnOnce() -> Option<(R, Option<u64>)>,
    ) -> Result<R, DetError> {
        let kendo = self.policy() == Policy::Kendo;
        let det = {
            let mut g = self.locked();
            let (det, _) = g.slot(tid)?;
            g.close_section(det)?;
            if kendo {
                g.order.leave(det)?;
                g.awaiting_record.insert(det);
            }
            g.notify_holder();
            det
        };
        let out = f();
        if kendo {
            let mut g = self.locked();
            g.awaiting_record.remove(&det);
            let wanted = match out {
                Some((_, Some(at))) => Some(at),
                _ => None,
            };
            let back = match out {
                Some((_, Some(at))) => g.replay_reentry(det, at),
                Some((_, None)) => {
                    // Live since (failover): the call ran here, as a primary's would.
                    if !self.is_live() {
                        tracing::warn!(%det, "replayed blocking call without a re-entry time");
                    }
                    g.resume(tid);
                    Ok(())
                }
                None => {
                    g.resume(tid);
                    Ok(())
                }
            };
            if back.is_err() {
                // Refused (a divergence, reported by the caller): back at the earliest
                // allowed time rather than out of the competition for good.
                g.resume(tid);
            }
            g.notify_holder();
            g.wake_holder();
            drop(g);
            if let (Err(e), Some(at)) = (&back, wanted) {
                // Not the program's error: the two schedules parted before this point.
                // Reported as such (the report's `schedule` kind) rather than handed to
                // the program as EINVAL, which only showed up later as a different result.
                if let Some(link) = self.link(false) {
                    let refused = TurnError::ReentryRefused {
                        tid: det,
                        at,
                        why: e.to_string(),
                    };
                    link.schedule_diverged(det, &refused);
                }
            }
            back?;
        }
        out.map(|(r, _)| r).ok_or(DetError::Exiting)
    }

    /// Follow: appends the primary's next turn to the log that this runtime follows, and
    /// wakes its thread if the turn is due. Called by the replication layer's reader thread.
    /// An error (a missing, repeated or late turn) is the caller's to report; a runtime that
    /// follows no log answers [`TurnError::Closed`].
    ///
    /// Kendo secondary: the turn is kept for `Inner::gated`, and the holder woken.
    pub fn push_turn(&self, turn: Turn) -> Result<(), TurnError> {
        let mut g = self.locked();
        if self.policy() == Policy::Kendo && self.link(false).is_some() {
            g.primary_turns.insert(turn.global_seq, turn.tid);
            g.wake_holder();
            return Ok(());
        }
        let Order::Free(FreeToken {
            mode: FreeMode::Follow { follower, heads },
            ..
        }) = &mut g.order
        else {
            return Err(TurnError::Closed);
        };
        follower.push(turn)?;
        heads.push_back(turn.tid);
        g.notify_holder();
        Ok(())
    }

    /// Secondary: turns of the primary's log received and not yet taken, which the channel
    /// reader bounds so that a peer cannot make this process hold an unbounded log.
    pub fn turns_held(&self) -> usize {
        let g = self.locked();
        let follow = match &g.order {
            Order::Free(FreeToken {
                mode: FreeMode::Follow { follower, .. },
                ..
            }) => follower.pending(),
            _ => 0,
        };
        follow + g.primary_turns.len()
    }

    /// Failover: this secondary's runtime stops following the primary and from now on
    /// decides as a primary does (its link then logs nowhere: the replication layer has no
    /// peer any more). Called once every record the primary logged has been taken.
    ///
    /// Kendo: the gate opens (nothing is awaited from the log any more), a thread whose
    /// replayed blocking call ends without the primary's time competes again at the
    /// earliest allowed time, as a primary's does, and a timed futex wait whose outcome
    /// never came waits for its own deadline. Follow: the token goes to whoever asks first
    /// ([`Policy::Lead`]); threads waiting for a logged turn queue up.
    pub fn go_live(&self) {
        let Some(link) = &self.link else { return };
        let mut g = self.locked();
        link.primary.store(true, Ordering::Release);
        self.live.store(true, Ordering::Release);
        g.awaiting_record.clear();
        g.primary_turns.clear();
        g.primary_log_closed = true;
        if let Order::Free(free) = &mut g.order {
            free.lead_from_now();
            self.policy.store(Policy::Lead as u8, Ordering::Release);
        }
        g.notify_all_waiting();
        g.notify_holder();
        g.wake_holder();
    }

    /// Whether this runtime was a secondary's that went live ([`go_live`](Self::go_live)).
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Follow: the primary's log is complete (it finished). A thread that then asks for a
    /// turn the log does not hold gets [`DetError::Diverged`] instead of waiting forever;
    /// threads waiting now ask again. Nothing under the other policies.
    pub fn close_log(&self) {
        let mut g = self.locked();
        g.primary_log_closed = true;
        g.wake_holder();
        if let Order::Free(FreeToken {
            mode: FreeMode::Follow { follower, .. },
            ..
        }) = &mut g.order
        {
            follower.close();
            g.notify_all_waiting();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use guest_memory::Errno;

    use super::*;
    use crate::runtime::testing::*;

    /// A Kendo secondary's runtime (no primary behind it) with t0 (guest 1000) and t1
    /// (guest 1001), both at logical time 1 after the clone (turn 0).
    fn kendo_secondary_with_two_threads() -> (Arc<FakeProcess>, Arc<DetRuntime>) {
        let p = Arc::new(process());
        let link = Arc::new(TestLink::default());
        let rt = Arc::new(DetRuntime::replicated(
            1000,
            None,
            Policy::Kendo,
            false,
            link,
        ));
        rt.clone_thread(&p, 1000, || Ok(1001)).unwrap();
        (p, rt)
    }

    /// t0 in a replayed blocking call until the returned sender delivers the primary's
    /// re-entry time; then `after` runs on the same thread.
    fn t0_awaits_record(
        rt: &Arc<DetRuntime>,
        after: impl FnOnce(&DetRuntime) + Send + 'static,
    ) -> (std::sync::mpsc::Sender<u64>, std::thread::JoinHandle<()>) {
        let (record_tx, record_rx) = std::sync::mpsc::channel::<u64>();
        let rt0 = rt.clone();
        let t0 = std::thread::spawn(move || {
            rt0.blocking_replayed(1000, || record_rx.recv().ok().map(|at| ((), Some(at))))
                .unwrap();
            after(&rt0);
        });
        wait_for("t0 has left the competition", || awaits_record(rt, 1000));
        (record_tx, t0)
    }

    /// One det section of t1 on a thread of its own.
    fn section_of_t1(p: &Arc<FakeProcess>, rt: &Arc<DetRuntime>) -> std::thread::JoinHandle<()> {
        let (rt1, p1) = (rt.clone(), p.clone());
        std::thread::spawn(move || {
            rt1.det_start(&p1, 1001).unwrap();
            rt1.det_end(1001).unwrap();
        })
    }

    fn logged(tid: u32, thread_seq: u64, global_seq: u64) -> Turn {
        Turn {
            tid: DetTid(tid),
            thread_seq,
            global_seq,
        }
    }

    /// A Kendo secondary whose thread waits for a blocking call's record takes only turns
    /// the primary's log shows: none without log, the logged thread's with it, and none for
    /// another thread when the log says the waiting thread came back first.
    #[test]
    fn kendo_secondary_follows_the_log_while_a_thread_awaits_its_record() {
        let (p, rt) = kendo_secondary_with_two_threads();
        let p0 = p.clone();
        let (record, t0) = t0_awaits_record(&rt, move |rt| {
            rt.det_start(&p0, 1000).unwrap();
            rt.det_end(1000).unwrap();
        });
        let settle = |w0: u64, t1: &std::thread::JoinHandle<()>| {
            wait_for("t1 waits for the token", || {
                token_waits(&rt) > w0 || t1.is_finished()
            })
        };
        // t1 holds the token (t0 is away), but the log does not show turn 1 yet.
        let w0 = token_waits(&rt);
        let t1 = section_of_t1(&p, &rt);
        settle(w0, &t1);
        assert!(!t1.is_finished(), "a turn the primary's log does not show");
        // Nor does the doorbell path think it may go.
        assert!(!rt.can_proceed(1001));
        rt.push_turn(logged(1, 1, 1)).unwrap();
        t1.join().unwrap();
        // The primary's t0 came back at 2 and took turn 2 before t1's next.
        rt.push_turn(logged(0, 1, 2)).unwrap();
        let w0 = token_waits(&rt);
        let t1 = section_of_t1(&p, &rt);
        settle(w0, &t1);
        assert!(!t1.is_finished(), "t1 took the turn the log gives t0");
        record.send(2).unwrap();
        t0.join().unwrap();
        // t0's record is in: nothing is awaited any more, so t1 goes on unlogged.
        t1.join().unwrap();
        assert_eq!(rt.logical_time(1000), Some(3));
        assert_eq!(rt.logical_time(1001), Some(3));
    }

    /// Turns with keys below an awaiting thread's need no log: that thread could not have
    /// taken them first. The first key above it waits for the log.
    #[test]
    fn kendo_secondary_needs_no_log_below_an_awaiting_thread() {
        let (p, rt) = kendo_secondary_with_two_threads();
        // t0 leaves at time 4; t1 is at 1.
        rt.det_tick(1000, 3).unwrap();
        let (record, t0) = t0_awaits_record(&rt, |_| ());
        // (1, t1), (2, t1), (3, t1): below (4, t0), no log needed.
        for _ in 0..3 {
            let t1 = section_of_t1(&p, &rt);
            let until = Instant::now() + Duration::from_secs(5);
            while !t1.is_finished() {
                assert!(
                    Instant::now() < until,
                    "a turn below an awaiting thread waited"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            t1.join().unwrap();
        }
        assert_eq!(rt.logical_time(1001), Some(4));
        // (4, t1) is above (4, t0): it waits for the log (or t0's record).
        let w0 = token_waits(&rt);
        let t1 = section_of_t1(&p, &rt);
        wait_for("t1 waits for the token", || {
            token_waits(&rt) > w0 || t1.is_finished()
        });
        assert!(
            !t1.is_finished(),
            "a turn above an awaiting thread without log"
        );
        rt.push_turn(logged(1, 3, 4)).unwrap();
        t1.join().unwrap();
        record.send(6).unwrap();
        t0.join().unwrap();
        assert_eq!(rt.logical_time(1000), Some(6));
    }

    #[test]
    fn describe_names_the_holder_and_an_awaiting_thread() {
        let (_p, rt) = kendo_secondary_with_two_threads();
        let (record, t0) = t0_awaits_record(&rt, |_| ());
        let d = rt.describe();
        assert!(
            d.starts_with("policy Kendo, 1 turns granted, token: t1"),
            "{d}"
        );
        assert!(
            d.contains("t0 (guest tid 1000): blocked in a syscall, logical time 1, awaiting"),
            "{d}"
        );
        assert!(
            d.contains("t1 (guest tid 1001): running, logical time 1\n"),
            "{d}"
        );
        assert!(d.contains("it holds 0 ()"), "{d}");
        record.send(1).unwrap();
        t0.join().unwrap();
        assert!(!rt.describe().contains("awaiting"));
    }

    #[test]
    fn follow_reports_a_turn_the_closed_log_lacks() {
        let p = Arc::new(process());
        let link = Arc::new(TestLink::default());
        let rt = Arc::new(DetRuntime::replicated(
            1000,
            None,
            Policy::Follow,
            false,
            link.clone(),
        ));
        let turn = |tid, thread_seq, global_seq| Turn {
            tid: DetTid(tid),
            thread_seq,
            global_seq,
        };
        assert_eq!(
            rt.push_turn(turn(0, 0, 1)),
            Err(TurnError::GlobalSeqGap {
                expected: 0,
                found: 1
            })
        );
        rt.push_turn(turn(0, 0, 0)).unwrap();
        rt.clone_thread(&p, 1000, || Ok(1001)).unwrap();
        // t1 asks for a turn the log does not hold (yet): it waits...
        let (rt2, p2) = (rt.clone(), p.clone());
        let w0 = token_waits(&rt);
        let h = std::thread::spawn(move || rt2.det_start(&p2, 1001));
        wait_for("t1 waits for the token", || {
            token_waits(&rt) > w0 || h.is_finished()
        });
        assert!(!h.is_finished());
        // ...until the log ends without it.
        rt.close_log();
        let mismatch = TurnError::Mismatch {
            tid: DetTid(1),
            thread_seq: 0,
        };
        assert!(matches!(h.join().unwrap(), Err(DetError::Diverged(e)) if e == mismatch));
        assert_eq!(*link.diverged.lock().unwrap(), [(DetTid(1), mismatch)]);
        // Later ones fail at once too, and only the first divergence is reported.
        assert!(matches!(
            rt.det_start(&p, 1000),
            Err(DetError::Diverged(TurnError::Mismatch { .. }))
        ));
        assert_eq!(
            Errno::from(DetError::Diverged(TurnError::Closed)),
            Errno::EINTR
        );
        assert_eq!(link.diverged.lock().unwrap().len(), 1);
        assert_eq!(rt.push_turn(turn(1, 0, 1)), Err(TurnError::Closed));
        // A runtime that follows no log takes no turns.
        let kendo = DetRuntime::new(1000, None);
        assert_eq!(kendo.push_turn(turn(0, 0, 0)), Err(TurnError::Closed));
    }

    /// Failover, Kendo: a thread held back by the gate (the log does not show its turn
    /// while another awaits a record) goes on once the runtime goes live.
    #[test]
    fn a_live_kendo_secondary_opens_the_gate() {
        let (p, rt) = kendo_secondary_with_two_threads();
        let (record, t0) = t0_awaits_record(&rt, |_| ());
        let w0 = token_waits(&rt);
        let t1 = section_of_t1(&p, &rt);
        wait_for("t1 waits for the token", || {
            token_waits(&rt) > w0 || t1.is_finished()
        });
        assert!(!t1.is_finished(), "a turn the primary's log does not show");
        rt.go_live();
        assert!(rt.is_live());
        t1.join().unwrap();
        // t0's record never comes (the replication layer then serves the call live).
        drop(record);
        t0.join().unwrap_err();
        assert!(!rt.describe().contains("awaiting"));
    }

    /// Failover, Follow: a thread waiting for a turn the log does not hold gets the token
    /// once the runtime goes live, and from then on turns go to whoever asks.
    #[test]
    fn a_live_follow_secondary_leads() {
        let p = Arc::new(process());
        let link = Arc::new(TestLink::default());
        let rt = Arc::new(DetRuntime::replicated(
            1000,
            None,
            Policy::Follow,
            false,
            link.clone(),
        ));
        let (rt2, p2) = (rt.clone(), p.clone());
        let w0 = token_waits(&rt);
        let h = std::thread::spawn(move || {
            rt2.det_start(&p2, 1000)?;
            rt2.det_end(1000)
        });
        wait_for("t0 waits for a logged turn", || {
            token_waits(&rt) > w0 || h.is_finished()
        });
        assert!(!h.is_finished(), "a turn the log does not hold");
        rt.go_live();
        h.join().unwrap().unwrap();
        assert_eq!(rt.policy(), Policy::Lead);
        for _ in 0..3 {
            rt.det_start(&p, 1000).unwrap();
            rt.det_end(1000).unwrap();
        }
        // A turn beyond the log is no divergence once live.
        assert!(link.diverged.lock().unwrap().is_empty());
    }

    /// The log complete (the primary ended) while a secondary's thread still has a record
    /// to replay: the gate stays shut for turns the log places after that thread's return,
    /// so its re-entry is not refused. Before, a complete log opened the gate at once.
    #[test]
    fn a_complete_log_still_holds_turns_after_an_awaited_return() {
        let (p, rt) = kendo_secondary_with_two_threads();
        let p0 = p.clone();
        let (record, t0) = t0_awaits_record(&rt, move |rt| {
            rt.det_start(&p0, 1000).unwrap();
            rt.det_end(1000).unwrap();
        });
        // The primary: t1's turn 1, then t0 came back at 1 and took turn 2; then it ended.
        rt.push_turn(logged(1, 1, 1)).unwrap();
        rt.push_turn(logged(0, 1, 2)).unwrap();
        rt.close_log();
        section_of_t1(&p, &rt).join().unwrap();
        // Turn 2 is t0's: t1 waits for t0's record even though the log is complete.
        let w0 = token_waits(&rt);
        let t1 = section_of_t1(&p, &rt);
        wait_for("t1 waits for the token", || {
            token_waits(&rt) > w0 || t1.is_finished()
        });
        assert!(!t1.is_finished(), "t1 took the turn the log gives t0");
        record.send(2).unwrap();
        t0.join().unwrap();
        t1.join().unwrap();
        assert_eq!(rt.logical_time(1000), Some(3));
        assert_eq!(rt.logical_time(1001), Some(3));
    }

    /// The log complete and nothing logged from this turn on: the primary's thread was
    /// still in its call when the primary ended, its record never comes, and the others go
    /// on to the end without it.
    #[test]
    fn a_complete_log_lets_turns_past_a_record_that_never_comes() {
        let (p, rt) = kendo_secondary_with_two_threads();
        let (record, t0) = t0_awaits_record(&rt, |_| ());
        rt.push_turn(logged(1, 1, 1)).unwrap();
        rt.close_log();
        for _ in 0..3 {
            let t1 = section_of_t1(&p, &rt);
            wait_for("t1 took its turn", || t1.is_finished());
            t1.join().unwrap();
        }
        assert_eq!(rt.logical_time(1001), Some(4));
        drop(record);
        t0.join().unwrap_err();
    }
}
