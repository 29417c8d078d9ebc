//! Emulated futexes: the wait queues (FIFO, woken under the token, so that who is woken and
//! when a woken thread competes again follow the token order) and the futex calls.
//! Under Lead and Follow a futex call takes no turn (see the module documentation of
//! [`runtime`](super)).

use std::collections::VecDeque;
use std::time::Instant;

use guest_memory::safecopy::GuestU32;
use guest_memory::Errno;

use super::{
    DetError, DetRuntime, FutexWait, Inner, Policy, ProcessView, TimedWait, WaitNews, Waiter,
    EXIT_POLL, FOLLOW_POLL, FOLLOW_WOKEN_GRACE,
};

impl Inner {
    /// Wakes up to `n` waiters on `addr` whose bitset matches, oldest first. Must be called
    /// under the token: each woken thread competes again from the earliest time after the
    /// caller's turn, which makes the wake a deterministic re-entry point.
    pub(super) fn wake(&mut self, addr: u64, n: u64, bitset: u32) -> u64 {
        let Some(q) = self.futex.get_mut(&addr) else {
            return 0;
        };
        let mut woken = Vec::new();
        q.retain(|w| {
            if (woken.len() as u64) < n && w.bitset & bitset != 0 {
                woken.push(w.tid);
                false
            } else {
                true
            }
        });
        if q.is_empty() {
            self.futex.remove(&addr);
        }
        for tid in &woken {
            self.resume(*tid);
            if let Some(s) = self.threads.get_mut(tid) {
                s.woken = true;
                s.cv.notify_one();
            }
        }
        woken.len() as u64
    }

    /// Moves up to `n` waiters from `from` to the end of `to`'s queue.
    pub(super) fn requeue(&mut self, from: u64, to: u64, n: u64) -> u64 {
        let mut moved = VecDeque::new();
        if let Some(q) = self.futex.get_mut(&from) {
            while (moved.len() as u64) < n {
                match q.pop_front() {
                    Some(w) => moved.push_back(w),
                    None => break,
                }
            }
            if q.is_empty() {
                self.futex.remove(&from);
            }
        }
        let count = moved.len() as u64;
        if count > 0 {
            self.futex.entry(to).or_default().extend(moved);
        }
        count
    }

    /// Takes `tid` out of the futex queue it waits in: `addr`'s, or the one a requeue moved
    /// it to.
    pub(super) fn dequeue(&mut self, addr: u64, tid: i64) {
        let holds = |q: &VecDeque<Waiter>| q.iter().any(|w| w.tid == tid);
        let at = if self.futex.get(&addr).is_some_and(holds) {
            Some(addr)
        } else {
            self.futex.iter().find(|(_, q)| holds(q)).map(|(&a, _)| a)
        };
        if let Some(a) = at {
            if let Some(q) = self.futex.get_mut(&a) {
                q.retain(|w| w.tid != tid);
                if q.is_empty() {
                    self.futex.remove(&a);
                }
            }
        }
    }
}

impl DetRuntime {
    /// FUTEX_WAIT / FUTEX_WAIT_BITSET, emulated. `word` is the futex word in guest memory.
    /// Under the token: compare, queue (FIFO), end the section and (Kendo) leave the
    /// competition; then sleep until a wake under the token puts the thread back, the
    /// deadline passes, or the program ends.
    ///
    /// In a replicated runtime a wait with a deadline is settled so that both replicas agree:
    /// the primary takes a turn to time out (see [`TimedWait`]) and reports the outcome; the
    /// secondary ignores its own deadline and does what the primary did.
    pub fn futex_wait(
        &self,
        process: &dyn ProcessView,
        tid: i64,
        addr: u64,
        word: GuestU32<'_>,
        wait: FutexWait,
    ) -> Result<u64, Errno> {
        if self.policy() != Policy::Kendo {
            return self.futex_wait_unordered(process, tid, addr, word, wait);
        }
        let FutexWait {
            val,
            bitset,
            deadline,
        } = wait;
        let g = self.locked();
        let (mut g, held) = self.acquire(g, process, tid, true)?;
        let cur = word.load();
        if cur != Ok(val) {
            self.release(&mut g, tid, held)?;
            return Err(cur.map_or(Errno::EFAULT, |_| Errno::EAGAIN));
        }
        let (det, cv) = g.slot(tid).map_err(Errno::from)?;
        g.futex
            .entry(addr)
            .or_default()
            .push_back(Waiter { tid, bitset });
        if let Some(s) = g.threads.get_mut(&tid) {
            s.woken = false;
        }
        // A wait inside the program's own section (a contract violation) closes it too,
        // rather than hold the token while asleep.
        g.close_section(det)?;
        if deadline.is_some() {
            if let Some(link) = self.link(false) {
                // Until the primary's outcome is known the thread keeps competing at its
                // current time (see `replay_timed_wait`).
                g.notify_holder();
                drop(g);
                let outcome = link.timed_wait_outcome(det);
                g = self.locked();
                if let Some(o) = outcome {
                    return self.replay_timed_wait(g, process, (tid, det), addr, &cv, o);
                }
                // No outcome will come: the primary's log ended while its thread was
                // still in this wait (its exit cut the wait short), or the secondary
                // went live (failover). Either way the wait goes on below as the
                // primary's did, out of the competition: asleep until a wake or the
                // program's end, and, once live, until its own deadline. (It used to
                // answer EINTR at once: the program retried in a loop, each futex call
                // a turn the primary never took, and that thread ran ahead of a thread
                // still replaying its records until its re-entry was refused.)
            }
        }
        let primary = self.link(true).filter(|_| deadline.is_some());
        // A secondary's waiter without an outcome competed until now, and a wake may have
        // come meanwhile (it then stays where it is, as in `replay_timed_wait`).
        if !g.woken(tid) {
            g.order.leave(det)?;
        }
        g.notify_holder();
        loop {
            if g.woken(tid) {
                drop(g);
                if let Some(link) = primary {
                    let outcome = TimedWait {
                        took_turn: false,
                        timed_out: false,
                        reentry_at: None,
                    };
                    link.log_timed_wait(det, outcome);
                }
                return Ok(0);
            }
            let now = Instant::now();
            // A secondary's deadline is the primary's to settle; one that reaches this loop
            // has no outcome coming (above), and waits for its own deadline only once live.
            let deadline = deadline.filter(|_| self.link(false).is_none());
            let timed_out = deadline.is_some_and(|d| now >= d);
            if timed_out && !process.exiting() {
                if let Some(link) = primary {
                    return self.settle_timed_wait(g, process, (tid, det), addr, link);
                }
            }
            if timed_out || process.exiting() {
                g.dequeue(addr, tid);
                g.resume(tid);
                g.notify_holder();
                return Err(if timed_out {
                    Errno::ETIMEDOUT
                } else {
                    Errno::EINTR
                });
            }
            let wait = deadline.map_or(EXIT_POLL, |d| (d - now).min(EXIT_POLL));
            g = cv
                .wait_timeout(g, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Lead and Follow: a futex wait that takes no turn (see the module documentation for why).
    /// The word is compared and the waiter queued under the runtime's lock, so a wake
    /// cannot slip in between; wakes still go oldest first.
    ///
    /// A deadline: the primary times out on its own and logs that it did
    /// ([`ScheduleLink::log_timed_wait`]) before the thread does anything else. The
    /// secondary ignores its own deadline (its clock runs behind the primary's events) and
    /// times out exactly where the primary's log says the thread did; once woken, it returns
    /// only when the log shows the primary's thread got past this wait without timing out.
    pub(super) fn futex_wait_unordered(
        &self,
        process: &dyn ProcessView,
        tid: i64,
        addr: u64,
        word: GuestU32<'_>,
        wait: FutexWait,
    ) -> Result<u64, Errno> {
        let r = self.futex_sleep_unordered(process, tid, addr, word, wait);
        let mut g = self.locked();
        g.progress += 1;
        if let Some(s) = g.threads.get_mut(&tid) {
            s.timed_wait = false;
        }
        r
    }

    fn futex_sleep_unordered(
        &self,
        process: &dyn ProcessView,
        tid: i64,
        addr: u64,
        word: GuestU32<'_>,
        wait: FutexWait,
    ) -> Result<u64, Errno> {
        let mut g = self.locked();
        if word.load()? != wait.val {
            return Err(Errno::EAGAIN);
        }
        let (det, cv) = g.slot(tid).map_err(Errno::from)?;
        g.futex.entry(addr).or_default().push_back(Waiter {
            tid,
            bitset: wait.bitset,
        });
        if let Some(s) = g.threads.get_mut(&tid) {
            s.woken = false;
            s.timed_wait = wait.deadline.is_some();
        }
        // A wait inside the program's own section (a contract violation) closes it, rather
        // than hold the token while asleep.
        g.close_section(det)?;
        g.notify_holder();
        let timed = wait.deadline.is_some();
        let mut woken_since: Option<Instant> = None;
        loop {
            // Asked each time round: a follow-mode secondary that goes live (failover)
            // waits for its own deadline from then on, as a primary does.
            let follow = self.link(false).filter(|_| timed);
            let lead = self.link(true).filter(|_| timed);
            if let Some(link) = follow {
                let pending_turn = g.order.has_pending_turn(det);
                drop(g);
                let news = link.follow_timed_wait(det);
                g = self.locked();
                let woken = g.woken(tid);
                match news {
                    WaitNews::TimedOut => {
                        if !woken {
                            g.dequeue(addr, tid);
                        }
                        return Err(Errno::ETIMEDOUT);
                    }
                    WaitNews::Passed | WaitNews::Ended if woken => return Ok(0),
                    _ if woken && pending_turn => return Ok(0),
                    // No timeout logged before the thread's next turn: the primary's wait
                    // ended without one.
                    _ if g.turn_due_in_futex(addr, tid) => return Ok(0),
                    _ if woken => {
                        // The primary's timed-out record may still be on its way; but a
                        // primary that got past this wait long ago without a record is
                        // just blocked in a later wait.
                        let since = *woken_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= FOLLOW_WOKEN_GRACE {
                            return Ok(0);
                        }
                    }
                    _ => {}
                }
            } else if g.woken(tid) || g.turn_due_in_futex(addr, tid) {
                return Ok(0);
            }
            if let Some(e) = g.unorderable(tid) {
                g.dequeue(addr, tid);
                drop(g);
                return Err(self.failed(process, det, DetError::Diverged(e)).into());
            }
            let now = Instant::now();
            let timed_out = follow.is_none() && wait.deadline.is_some_and(|d| now >= d);
            if timed_out || process.exiting() {
                g.dequeue(addr, tid);
                g.notify_holder();
                drop(g);
                if timed_out {
                    if let Some(link) = lead {
                        link.log_timed_wait(
                            det,
                            TimedWait {
                                took_turn: false,
                                timed_out: true,
                                reentry_at: None,
                            },
                        );
                    }
                    return Err(Errno::ETIMEDOUT);
                }
                return Err(Errno::EINTR);
            }
            let sleep = match (follow, wait.deadline) {
                (Some(_), _) => FOLLOW_POLL,
                (None, Some(d)) => (d - now).min(EXIT_POLL),
                (None, None) => EXIT_POLL,
            };
            g = cv
                .wait_timeout(g, sleep)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// FUTEX_WAKE / FUTEX_WAKE_BITSET, emulated: up to `n` waiters, oldest first.
    pub fn futex_wake(
        &self,
        process: &dyn ProcessView,
        tid: i64,
        addr: u64,
        n: u64,
        bitset: u32,
    ) -> Result<u64, Errno> {
        self.futex_locked(process, tid, |inner| Ok(inner.wake(addr, n, bitset)))
    }

    /// FUTEX_REQUEUE / FUTEX_CMP_REQUEUE, emulated. `check` is (word, expected) for CMP.
    pub fn futex_requeue(
        &self,
        process: &dyn ProcessView,
        tid: i64,
        (addr, addr2): (u64, u64),
        (n_wake, n_requeue): (u64, u64),
        check: Option<(GuestU32<'_>, u32)>,
    ) -> Result<u64, Errno> {
        self.futex_locked(process, tid, |inner| {
            if let Some((w, v)) = check {
                if w.load()? != v {
                    return Err(Errno::EAGAIN);
                }
            }
            let woken = inner.wake(addr, n_wake, u32::MAX);
            Ok(woken + inner.requeue(addr, addr2, n_requeue))
        })
    }

    /// FUTEX_WAKE_OP, emulated: `op` runs on the second word under the token and says
    /// whether its waiters are woken too.
    pub fn futex_wake_op(
        &self,
        process: &dyn ProcessView,
        tid: i64,
        addrs: (u64, u64),
        n: (u64, u64),
        op: impl FnOnce() -> Result<bool, Errno>,
    ) -> Result<u64, Errno> {
        self.futex_locked(process, tid, |inner| {
            let second = op()?;
            let mut woken = inner.wake(addrs.0, n.0, u32::MAX);
            if second {
                woken += inner.wake(addrs.1, n.1, u32::MAX);
            }
            Ok(woken)
        })
    }

    pub(super) fn futex_locked(
        &self,
        process: &dyn ProcessView,
        tid: i64,
        f: impl FnOnce(&mut Inner) -> Result<u64, Errno>,
    ) -> Result<u64, Errno> {
        if self.policy() != Policy::Kendo {
            // No turn: see the module documentation.
            let mut g = self.locked();
            let r = f(&mut g);
            g.notify_holder();
            return r;
        }
        let g = self.locked();
        let (mut g, held) = self.acquire(g, process, tid, true)?;
        let r = f(&mut g);
        self.release(&mut g, tid, held)?;
        r
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::AtomicU32;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::super::{lock, Order};
    use crate::TokenScheduler;

    use super::*;
    use crate::runtime::testing::*;

    #[test]
    fn futex_wait_and_wake_in_fifo_order() {
        let p = Arc::new(process());
        let rt = Arc::new(DetRuntime::new(1000, None));
        rt.clone_thread(&p, 1000, || Ok(1001)).unwrap();
        rt.clone_thread(&p, 1000, || Ok(1002)).unwrap();
        // Let the waiters (times 1 and 2) go first, so that they can queue.
        rt.det_tick(1000, 10).unwrap();
        static WORD: AtomicU32 = AtomicU32::new(0);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut hs = Vec::new();
        for t in [1001i64, 1002] {
            let (p2, rt2, order) = (p.clone(), rt.clone(), order.clone());
            hs.push(std::thread::spawn(move || {
                rt2.futex_wait(&p2, t, 64, (&WORD).into(), wait(0, None))
                    .unwrap();
                order.lock().unwrap().push(t);
                // A woken thread competes again; it must go away to let the others on.
                rt2.thread_exit(&p2, t, 0, || {});
            }));
            // Queue them in a known order.
            while lock(&rt.inner).futex.get(&64).map_or(0, |q| q.len()) < (t - 1000) as usize {
                std::thread::yield_now();
            }
        }
        // A wrong value is EAGAIN, without queueing.
        assert_eq!(
            rt.futex_wait(&p, 1000, 64, (&WORD).into(), wait(1, None)),
            Err(Errno::EAGAIN)
        );
        assert_eq!(rt.futex_wake(&p, 1000, 64, 1, u32::MAX), Ok(1));
        while order.lock().unwrap().is_empty() {
            std::thread::yield_now();
        }
        assert_eq!(*order.lock().unwrap(), vec![1001]);
        assert_eq!(rt.futex_wake(&p, 1000, 64, 10, u32::MAX), Ok(1));
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![1001, 1002]);
        // Timeouts return and leave no waiter behind.
        let soon = Some(Instant::now() + Duration::from_millis(5));
        assert_eq!(
            rt.futex_wait(&p, 1000, 64, (&WORD).into(), wait(0, soon)),
            Err(Errno::ETIMEDOUT)
        );
        assert!(lock(&rt.inner).futex.is_empty());
    }

    #[test]
    fn requeue_moves_waiters() {
        let mut inner = Inner {
            holder: Arc::default(),
            order: Order::Kendo(TokenScheduler::new()),
            threads: BTreeMap::new(),
            by_det: BTreeMap::new(),
            futex: BTreeMap::new(),
            page: None,
            posted: 0,
            ticked: 0,
            away: 0,
            away_unrecorded: BTreeSet::new(),
            awaiting_record: BTreeSet::new(),
            primary_turns: BTreeMap::new(),
            primary_log_closed: false,
            progress: 0,
            stuck_since: None,
        };
        for tid in [1, 2, 3] {
            inner.futex.entry(8).or_default().push_back(Waiter {
                tid,
                bitset: u32::MAX,
            });
        }
        assert_eq!(inner.requeue(8, 16, 2), 2);
        assert_eq!(inner.futex[&8].len(), 1);
        assert_eq!(
            inner.futex[&16].iter().map(|w| w.tid).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(inner.wake(16, 5, 1), 2);
        assert!(!inner.futex.contains_key(&16));
    }
}
