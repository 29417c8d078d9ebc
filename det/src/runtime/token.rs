//! Taking and giving back the token: the program's explicit sections (`det_start`,
//! `det_end`, `det_tick`), the VMM's implicit det points (`ordered` and its variants),
//! clone and exit as det points, and blocking calls, which leave the competition.

use std::sync::atomic::Ordering;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use guest_memory::Errno;

use super::page::SLOT_CALL;
use super::{lock, DetError, DetRuntime, Held, Inner, Policy, ProcessView, Slot, EXIT_POLL, SPIN};
use crate::{Phase, Start};

/// Sleeps on the thread's condition variable until a hand-off wakes it (or [`EXIT_POLL`]
/// passes), marked parked meanwhile so that only then does a hand-off make a wake syscall
/// (`Inner::notify_holder`); returns the refreshed state.
fn park<'a>(
    mut g: MutexGuard<'a, Inner>,
    tid: i64,
    cv: &std::sync::Condvar,
) -> MutexGuard<'a, Inner> {
    if let Some(s) = g.threads.get_mut(&tid) {
        s.parked = true;
    }
    g = cv
        .wait_timeout(g, EXIT_POLL)
        .unwrap_or_else(|e| e.into_inner())
        .0;
    if let Some(s) = g.threads.get_mut(&tid) {
        s.parked = false;
    }
    g.refresh();
    g
}

impl DetRuntime {
    /// Waits until `tid` holds the token (or a `det_tick(0)` elides the wait).
    pub(super) fn acquire<'a>(
        &'a self,
        mut g: MutexGuard<'a, Inner>,
        process: &dyn ProcessView,
        tid: i64,
        implicit: bool,
    ) -> Result<(MutexGuard<'a, Inner>, Held), DetError> {
        let (det, cv) = g.slot(tid)?;
        if implicit {
            // A section the VMM starts, or works inside, is the VMM's to end: from here on
            // the thread's slot cannot end it.
            if let Some(s) = g.threads.get_mut(&tid) {
                s.own_section = false;
            }
            g.refresh();
        }
        match g.order.phase(det) {
            Some(Phase::InSection) if implicit => return Ok((g, Held::Nested)),
            // An implicit point inside an elided section is ordered after all: the elided
            // section ends here (it had no logical time to give back), and the program's own
            // det_end later answers EINVAL, which libditto ignores.
            Some(Phase::InElidedSection) if implicit => g.order.det_end(det)?,
            _ => {}
        }
        self.stats.ops.fetch_add(1, Ordering::Relaxed);
        let mut waited = false;
        let mut spin_until = Instant::now();
        let kendo_secondary = self.policy() == Policy::Kendo && self.link(false).is_some();
        loop {
            if kendo_secondary && g.gated(det) {
                if !waited {
                    waited = true;
                    self.stats.waits.fetch_add(1, Ordering::Relaxed);
                }
                g = park(g, tid, &cv);
                if process.exiting() {
                    return Err(DetError::Exiting);
                }
                continue;
            }
            let start = match g.order.det_start(det) {
                Ok(start) => start,
                Err(e) => {
                    if g.order.cancel(det) {
                        g.notify_holder();
                    }
                    drop(g);
                    return Err(self.failed(process, det, e));
                }
            };
            match start {
                Start::Granted(turn) => {
                    g.progress += 1;
                    self.stats.turns.fetch_add(1, Ordering::Relaxed);
                    tracing::trace!(target: "ditto::turns", policy = ?self.policy(), %det, ?turn, implicit, "granted");
                    if let Some(l) = &self.link {
                        let logged = match self.policy() {
                            Policy::Lead => true,
                            Policy::Kendo => l.primary.load(Ordering::Acquire) && g.away > 0,
                            Policy::Follow => false,
                        };
                        if logged {
                            l.link.log_turn(turn);
                        }
                    }
                    if kendo_secondary {
                        // Turns up to this one are passed; what the log says of them no
                        // longer matters.
                        g.primary_turns = g.primary_turns.split_off(&(turn.global_seq + 1));
                    }
                    if implicit {
                        // Publishes CALL in the slot of the section the VMM now runs.
                        g.refresh();
                    }
                    return Ok((g, Held::Own));
                }
                Start::Elided => return Ok((g, Held::Elided)),
                Start::Wait => {
                    if !waited {
                        waited = true;
                        self.stats.waits.fetch_add(1, Ordering::Relaxed);
                        // Every waiter spins first, even behind another waiter: while
                        // it spins the holder may still post its end without an exit
                        // (a lone spinner watches its slot), and a waiter that parks at
                        // once makes every slot say CALL. Parking at once behind another
                        // waiter sped up detbench's 4-thread hand-offs but cost civetweb
                        // under wrk a quarter more exits per request (docs/det.md).
                        spin_until = Instant::now() + SPIN;
                    }
                    let spin = Instant::now() < spin_until;
                    if let Some(s) = g.threads.get_mut(&tid) {
                        s.spinning = spin;
                    }
                    // Before this thread sleeps every slot says CALL. A section that ended
                    // through the page just before is folded here, and may have been all
                    // this thread was waiting for.
                    if g.sync() {
                        g.notify_holder();
                        continue;
                    }
                    if spin {
                        // The holder may end its section through its slot, or a thread
                        // ahead post its ticks: watch that slot as well as the hand-off.
                        let watch = g.page.clone().zip(g.order.holder_or_next());
                        let word = watch.as_ref().and_then(|(p, h)| p.word(*h));
                        let seen = word.and_then(|w| w.load().ok());
                        drop(g);
                        let me = u64::from(det.0) + 1;
                        while self.holder.load(Ordering::Acquire) != me
                            && Instant::now() < spin_until
                            && word.and_then(|w| w.load().ok()) == seen
                        {
                            std::thread::yield_now();
                        }
                        g = self.locked();
                        continue;
                    }
                    g = park(g, tid, &cv);
                    if process.exiting() {
                        if g.order.cancel(det) {
                            g.notify_holder();
                        }
                        return Err(DetError::Exiting);
                    }
                }
            }
        }
    }

    /// Ends what [`acquire`](Self::acquire) started.
    pub(super) fn release(&self, g: &mut Inner, tid: i64, held: Held) -> Result<(), DetError> {
        if held != Held::Nested {
            let (det, _) = g.slot(tid)?;
            // A section the program's futex wait closed early is already over.
            if matches!(
                g.order.phase(det),
                Some(Phase::InSection | Phase::InElidedSection)
            ) {
                g.order.det_end(det)?;
            }
        }
        g.notify_holder();
        Ok(())
    }

    /// `det_start`: returns once `tid` holds the token.
    pub fn det_start(&self, process: &dyn ProcessView, tid: i64) -> Result<(), DetError> {
        let g = self.locked();
        let (mut g, _) = self.acquire(g, process, tid, false)?;
        if g.page.is_some() {
            if let Some(s) = g.threads.get_mut(&tid) {
                s.own_section = true;
            }
            g.refresh();
        }
        Ok(())
    }

    /// Whether a det point by `tid` would go ahead without waiting: it holds the token (or,
    /// under Lead and Follow, would be granted it now), or it is already inside a section.
    /// The doorbell serves such calls on its server thread without a VM exit, and bounces
    /// the others to the vCPU thread, where waiting for the token costs one thread switch
    /// instead of two.
    pub fn can_proceed(&self, tid: i64) -> bool {
        let g = self.locked();
        let Ok((det, _)) = g.slot(tid) else {
            return false;
        };
        let kendo_secondary = self.policy() == Policy::Kendo && self.link(false).is_some();
        matches!(g.order.phase(det), Some(Phase::InSection))
            || (g.order.may_go(det) && !(kendo_secondary && g.gated(det)))
    }

    /// `det_end`: ends the section, +1 logical time.
    pub fn det_end(&self, tid: i64) -> Result<(), DetError> {
        let mut g = self.locked();
        let (det, _) = g.slot(tid)?;
        g.order.det_end(det)?;
        g.notify_holder();
        Ok(())
    }

    /// `det_tick(n)`: +n logical time (a no-op under Lead and Follow, which have none); 0
    /// elides the next `det_start`.
    pub fn det_tick(&self, tid: i64, n: u64) -> Result<(), DetError> {
        let mut g = self.locked();
        let (det, _) = g.slot(tid)?;
        g.order.det_tick(det, n)?;
        if self.policy() == Policy::Kendo {
            g.ticked = g.ticked.saturating_add(n);
        }
        g.notify_holder();
        Ok(())
    }

    /// Runs `f` as an implicit det point: under the token, with a section of its own unless
    /// the thread is already in one. The runtime's lock is not held while `f` runs.
    pub fn ordered<R>(
        &self,
        process: &dyn ProcessView,
        tid: i64,
        f: impl FnOnce() -> R,
    ) -> Result<R, DetError> {
        let g = self.locked();
        let (g, held) = self.acquire(g, process, tid, true)?;
        drop(g);
        let r = f();
        self.release(&mut self.locked(), tid, held)?;
        Ok(r)
    }

    /// Like [`ordered`](Self::ordered), but a section of its own stays open after `f`:
    /// the thread keeps the token until it ends the section with [`det_end`](Self::det_end)
    /// at its next syscall. Returns whether it does (not when nested in or eliding a section).
    pub fn ordered_holding<R>(
        &self,
        process: &dyn ProcessView,
        tid: i64,
        f: impl FnOnce() -> R,
    ) -> Result<(R, bool), DetError> {
        let g = lock(&self.inner);
        let (g, held) = self.acquire(g, process, tid, true)?;
        drop(g);
        let r = f();
        if held == Held::Own {
            return Ok((r, true));
        }
        self.release(&mut lock(&self.inner), tid, held)?;
        Ok((r, false))
    }

    /// Like [`ordered`](Self::ordered), but `f` says whether it is done; if not, the section
    /// still ends (+1 logical time) and `f` is tried again in a later turn. Callers inside
    /// the program's own section ([`in_section`](Self::in_section)) must not use this: that
    /// section could never end between attempts. Every attempt is
    /// a det section, so what each attempt sees is deterministic; only how long the host
    /// waits between attempts depends on real time.
    pub fn retry_ordered<R>(
        &self,
        process: &dyn ProcessView,
        tid: i64,
        mut f: impl FnMut() -> Option<R>,
    ) -> Result<R, DetError> {
        let mut fails = 0u32;
        loop {
            if let Some(r) = self.ordered(process, tid, &mut f)? {
                return Ok(r);
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            fails = fails.saturating_add(1);
            if process.exiting() {
                return Err(DetError::Exiting);
            }
            // Real-time back-off only (no logical time): when the other threads are idle
            // this thread is the holder again at once and would spin.
            if fails > 4 {
                std::thread::sleep(Duration::from_micros(10 << fails.min(7)));
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Runs `f`, which may block for an outside event (socket, terminal, sleep). A section
    /// the thread is in ends first.
    ///
    /// Kendo: the thread leaves the competition while `f` runs and re-enters at the earliest
    /// allowed time when it returns; that time, which depends on real time, is returned as
    /// `Some(at)`: the event that the primary reports (DESIGN.md §5) and that the secondary
    /// gives to [`blocking_replayed`](Self::blocking_replayed). Lead and Follow: there is no
    /// competition to leave; `f` just runs, and the time is None.
    pub fn blocking<R>(
        &self,
        tid: i64,
        f: impl FnOnce() -> R,
    ) -> Result<(R, Option<u64>), DetError> {
        let logs_turns = self.policy() == Policy::Kendo && self.link(true).is_some();
        let det = {
            let mut g = self.locked();
            let (det, _) = g.slot(tid)?;
            g.close_section(det)?;
            g.order.leave(det)?;
            if logs_turns && !g.away_unrecorded.contains(&det) {
                g.away += 1;
            }
            g.notify_holder();
            det
        };
        let r = f();
        let mut g = self.locked();
        if logs_turns {
            // Still away as far as the log goes, until the call's record is on the channel
            // (`blocking_recorded`): the turns granted between this return and that record
            // come after it in the secondary's view only if they are logged. Unlogged, a
            // primary that died in between left a secondary whose copy of this thread waits
            // for a record that never comes, with records of those turns queued behind a
            // gate that needs the log (a failover that could not drain).
            g.away_unrecorded.insert(det);
        }
        let at = g.resume(tid);
        g.notify_holder();
        Ok((r, at))
    }

    /// Kendo primary of a pair: the record of `tid`'s last [`blocking`](Self::blocking) call
    /// is on the channel (the caller knows: it is at the thread's next call), so the turns
    /// granted from now on need no longer be logged on its account. Nothing otherwise.
    pub fn blocking_recorded(&self, tid: i64) {
        let mut g = self.locked();
        let Ok((det, _)) = g.slot(tid) else { return };
        if g.away_unrecorded.remove(&det) {
            g.away = g.away.saturating_sub(1);
        }
    }

    /// A clone under the token: `f` creates the thread and returns its guest id; the new
    /// thread gets the next deterministic id. The runtime stays locked while `f` runs, so the
    /// child cannot reach the runtime before it is registered.
    pub fn clone_thread(
        &self,
        process: &dyn ProcessView,
        tid: i64,
        f: impl FnOnce() -> Result<u64, Errno>,
    ) -> Result<u64, Errno> {
        let g = self.locked();
        let (mut g, held) = self.acquire(g, process, tid, true)?;
        let r = f();
        if let Ok(child) = r {
            let (det, _) = g.slot(tid)?;
            // Elided here means the section never held the token; take a real one for the
            // id allocation instead of leaving the child unregistered.
            if g.order.phase(det) != Some(Phase::InSection) {
                tracing::warn!(
                    tid,
                    "clone in an elided det section; thread id order may vary"
                );
                g.order.det_end(det)?;
                let (g2, _) = self.acquire(g, process, tid, true)?;
                g = g2;
            }
            let cdet = g.order.spawn(det)?;
            if let Some(link) = self.link(true) {
                link.thread_started(cdet);
            }
            g.threads.insert(child as i64, Slot::new(cdet));
            g.by_det.insert(cdet, child as i64);
        }
        self.release(&mut g, tid, held)?;
        r
    }

    /// A thread's exit, as a det point: under the token, free the thread's vCPU
    /// (`vcpu_free`), zero its CLONE_CHILD_CLEARTID word, wake one waiter there
    /// (pthread_join), and leave the scheduler. Follow: a thread that exits while the log
    /// still holds turns of it is a divergence.
    ///
    /// `vcpu_free` runs once the token is held and before the joiner is woken: earlier, a
    /// thread created meanwhile could be queued on the vCPU behind this exit's wait for the
    /// token while the token went to that new thread (a follow-mode stall); later, the
    /// joiner's next pthread_create finds no idle vCPU and makes a new one.
    pub fn thread_exit(
        &self,
        process: &dyn ProcessView,
        tid: i64,
        clear_child_tid: u64,
        vcpu_free: impl FnOnce(),
    ) {
        let g = self.locked();
        let Ok((mut g, _)) = self.acquire(g, process, tid, true) else {
            vcpu_free();
            return;
        };
        vcpu_free();
        if clear_child_tid != 0 && process.memory().write_obj(clear_child_tid, &0u32).is_ok() {
            g.wake(clear_child_tid, 1, u32::MAX);
        }
        let mut gone = Ok(());
        if let Some(s) = g.threads.remove(&tid) {
            g.by_det.remove(&s.det);
            if g.away_unrecorded.remove(&s.det) {
                g.away = g.away.saturating_sub(1);
            }
            if let Some(w) = g.page.as_ref().and_then(|p| p.word(s.det)) {
                // A broken page (see `DetPage::word`) has nothing to reset.
                let _ = w.store(SLOT_CALL);
            }
            gone = g.order.exit(s.det).map_err(|e| (s.det, e));
        }
        g.notify_holder();
        drop(g);
        if let Err((det, e)) = gone {
            self.failed(process, det, e);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::{DetTid, SchedError, Turn, TurnError};

    use super::*;
    use crate::runtime::testing::*;

    #[test]
    fn sections_and_clone_follow_the_token() {
        let p = process();
        let rt = DetRuntime::new(1000, None);
        rt.det_start(&p, 1000).unwrap();
        assert!(rt.in_section(1000));
        rt.det_end(1000).unwrap();
        assert_eq!(rt.logical_time(1000), Some(1));
        let child = rt.clone_thread(&p, 1000, || Ok(1001)).unwrap();
        assert_eq!(child, 1001);
        assert_eq!(rt.det_tid(1001), Some(DetTid(1)));
        // The creator's clone section ended at 1 -> 2; the child starts at 2.
        assert_eq!(rt.logical_time(1000), Some(2));
        assert_eq!(rt.logical_time(1001), Some(2));
        assert!(matches!(
            rt.det_end(1000),
            Err(DetError::Sched(SchedError::WrongPhase { .. }))
        ));
        assert!(matches!(rt.det_end(7), Err(DetError::UnknownThread(7))));
        rt.det_tick(1001, 5).unwrap();
        assert_eq!(rt.logical_time(1001), Some(7));
        // The main thread (time 2) holds the token, so it exits first.
        rt.thread_exit(&p, 1000, 0, || {});
        rt.thread_exit(&p, 1001, 0, || {});
        assert_eq!(rt.det_tid(1001), None);
    }

    #[test]
    fn a_held_turn_keeps_the_token_until_det_end() {
        let p = Arc::new(process());
        let rt = Arc::new(DetRuntime::new(1000, None));
        rt.clone_thread(&p, 1000, || Ok(1001)).unwrap();
        // Both at time 1 after the clone; the main thread (smaller id) goes first and keeps
        // the token past its ordered point.
        let ((), holds) = rt.ordered_holding(&p, 1000, || ()).unwrap();
        assert!(holds);
        assert!(rt.in_section(1000));
        let (rt2, p2) = (rt.clone(), p.clone());
        let w0 = token_waits(&rt);
        let other = std::thread::spawn(move || {
            rt2.det_start(&p2, 1001).unwrap();
            rt2.det_end(1001).unwrap();
        });
        wait_for("t1 waits for the token", || {
            token_waits(&rt) > w0 || other.is_finished()
        });
        assert!(
            !other.is_finished(),
            "the other thread got the token while it was held"
        );
        rt.det_end(1000).unwrap();
        other.join().unwrap();
        // Inside a section of its own, nothing is held beyond it.
        rt.det_start(&p, 1000).unwrap();
        let ((), holds) = rt.ordered_holding(&p, 1000, || ()).unwrap();
        assert!(!holds);
        rt.det_end(1000).unwrap();
    }

    #[test]
    fn kendo_blocking_returns_the_reentry_time() {
        let p = process();
        let rt = DetRuntime::new(1000, None);
        rt.clone_thread(&p, 1000, || Ok(1001)).unwrap();
        // t0 (time 1) blocks; t1 (time 1) takes a turn meanwhile, so t0 re-enters after it.
        let ((), at) = rt
            .blocking(1000, || {
                rt.ordered(&p, 1001, || ()).unwrap();
            })
            .unwrap();
        assert_eq!(at, Some(2));
        assert_eq!(rt.logical_time(1000), Some(2));
        // The secondary's replay competes at exactly the given time.
        let r = rt.blocking_replayed(1000, || Some((7, Some(9)))).unwrap();
        assert_eq!((r, rt.logical_time(1000)), (7, Some(9)));
        // A time below the thread's own is refused; a missing record is the end.
        assert!(matches!(
            rt.blocking_replayed(1000, || Some(((), Some(3)))),
            Err(DetError::Sched(SchedError::ReentryTooEarly { .. }))
        ));
        assert!(matches!(
            rt.blocking_replayed(1000, || None::<((), _)>),
            Err(DetError::Exiting)
        ));
    }

    #[test]
    fn a_refused_replayed_reentry_is_reported_as_a_schedule_divergence() {
        let p = process();
        let link = Arc::new(TestLink::default());
        let rt = DetRuntime::replicated(1000, None, Policy::Kendo, false, link.clone());
        rt.clone_thread(&p, 1000, || Ok(1001)).unwrap();
        // Time 9 is allowed: nothing is reported.
        rt.blocking_replayed(1000, || Some(((), Some(9)))).unwrap();
        assert!(link.diverged.lock().unwrap().is_empty());
        // Time 3 is below the thread's own: the schedules parted, and the link hears so.
        assert!(rt.blocking_replayed(1000, || Some(((), Some(3)))).is_err());
        let diverged = link.diverged.lock().unwrap();
        assert!(
            matches!(
                diverged.as_slice(),
                [(DetTid(0), TurnError::ReentryRefused { at: 3, .. })]
            ),
            "{diverged:?}"
        );
    }

    #[test]
    fn kendo_primary_logs_turns_until_a_blocking_calls_record_is_out() {
        let p = process();
        let link = Arc::new(TestLink::default());
        let rt = DetRuntime::replicated(1000, None, Policy::Kendo, true, link.clone());
        rt.clone_thread(&p, 1000, || Ok(1001)).unwrap();
        let logged = || link.turns.lock().unwrap().len();
        // t0 far ahead in logical time: t1 takes its turns without waiting for t0, which
        // this test's one thread never runs meanwhile.
        rt.det_tick(1000, 1_000).unwrap();
        rt.ordered(&p, 1001, || ()).unwrap();
        assert_eq!(logged(), 0, "nobody away: nothing logged");
        // t0 blocks and comes back; its record is not out yet, so t1's turn is logged: a
        // primary that died now would leave the secondary's t0 without its record, and
        // only the log tells the secondary where t1's turn lies.
        rt.blocking(1000, || ()).unwrap();
        rt.ordered(&p, 1001, || ()).unwrap();
        assert_eq!(logged(), 1);
        rt.ordered(&p, 1001, || ()).unwrap();
        assert_eq!(logged(), 2);
        // Recorded (t0's next call): no longer logged on t0's account; twice is harmless.
        rt.blocking_recorded(1000);
        rt.blocking_recorded(1000);
        rt.ordered(&p, 1001, || ()).unwrap();
        assert_eq!(logged(), 2);
    }

    #[test]
    fn lead_grants_the_first_asker_and_logs_each_turn() {
        let p = process();
        let link = Arc::new(TestLink::default());
        let rt = DetRuntime::replicated(1000, None, Policy::Lead, true, link.clone());
        rt.clone_thread(&p, 1000, || Ok(1001)).unwrap();
        assert_eq!(rt.logical_time(1000), None);
        // No logical time: a tick changes nothing, and t1 goes first because it asks first.
        rt.det_tick(1000, 100).unwrap();
        assert!(rt.can_proceed(1001) && rt.can_proceed(1000));
        rt.det_start(&p, 1001).unwrap();
        assert!(!rt.can_proceed(1000));
        rt.det_end(1001).unwrap();
        rt.det_tick(1000, 0).unwrap();
        rt.det_start(&p, 1000).unwrap(); // elided: no turn
        rt.det_end(1000).unwrap();
        rt.ordered(&p, 1000, || ()).unwrap();
        let (blocked, at) = rt.blocking(1001, || 5).unwrap();
        assert_eq!((blocked, at), (5, None));
        let t = |tid, thread_seq, global_seq| Turn {
            tid: DetTid(tid),
            thread_seq,
            global_seq,
        };
        assert_eq!(
            *link.turns.lock().unwrap(),
            [t(0, 0, 0), t(1, 0, 1), t(0, 1, 2)]
        );
        assert_eq!(rt.stats.turns.load(Ordering::Relaxed), 3);
    }
}
