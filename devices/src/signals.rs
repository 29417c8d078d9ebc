//! Signals between the program's threads and from outside: dispositions, masks,
//! pending sets, sigwait, and the choice of which thread takes a signal.
//!
//! Delivery itself (building the frame on the program's stack, sigreturn) needs the
//! vCPU and lives in the vmm crate; this module decides *what* is delivered to
//! *whom*, and asks the vmm through [`Kicker`] to bring a thread to a delivery point.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sync::lock;

/// A signal disposition as the program set it with rt_sigaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct SigAction {
    /// Handler address, or SIG_DFL (0) / SIG_IGN (1).
    pub handler: u64,
    /// SA_* flags.
    pub flags: u64,
    /// The restorer the libc passes for SA_RESTORER.
    pub restorer: u64,
    /// The mask during the handler.
    pub mask: u64,
}

/// The program's signal dispositions, indexed by signal number (0 unused).
pub struct SigActions {
    table: Mutex<[SigAction; 65]>,
}

impl Default for SigActions {
    fn default() -> Self {
        SigActions {
            table: Mutex::new([SigAction::default(); 65]),
        }
    }
}

impl SigActions {
    /// Sets a signal's disposition; a signal number out of range is ignored.
    pub fn set(&self, sig: i32, act: SigAction) {
        if let Ok(i) = usize::try_from(sig) {
            if let Some(s) = lock(&self.table).get_mut(i) {
                *s = act;
            }
        }
    }

    /// The disposition of one signal (the default for a number out of range).
    pub fn get(&self, sig: i32) -> SigAction {
        usize::try_from(sig)
            .ok()
            .and_then(|i| lock(&self.table).get(i).copied())
            .unwrap_or_default()
    }
}

/// Bit for signal `sig` in a 64-bit signal set.
pub fn bit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

/// Signals that can never be blocked or caught.
const UNBLOCKABLE: u64 = (1 << (libc::SIGKILL - 1)) | (1 << (libc::SIGSTOP - 1));

/// Signals whose default action is to do nothing.
pub fn default_ignored(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGCHLD | libc::SIGURG | libc::SIGWINCH | libc::SIGCONT
    )
}

/// What the vmm does to make a thread notice a pending signal: interrupt its
/// blocking host call or its guest execution.
pub trait Kicker: Send + Sync {
    /// Interrupts whatever guest thread `tid` is doing so it reaches a delivery point.
    fn kick(&self, tid: i64);
}

#[derive(Clone, Copy, Debug, Default)]
struct ThreadSignals {
    mask: u64,
    /// Linux's saved_sigmask: the mask to restore once the handler a sigsuspend woke for
    /// is entered (the handler's frame saves this one, not the temporary mask).
    saved_mask: Option<u64>,
    /// sigaltstack: (base, size) of the thread's alternate signal stack, if enabled.
    altstack: Option<(u64, u64)>,
    pending: u64,
    /// Non-zero while the thread waits in rt_sigtimedwait for these signals.
    waiting: u64,
}

/// What happens to a generated signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Ignored (SIG_IGN, or a default action of "ignore").
    Ignored,
    /// The program ends with this signal (default action).
    Terminate,
    /// Queued for a handler or a sigwait; the thread to kick, if one can take it now.
    Queued(Option<i64>),
}

/// How long a process-directed signal waits for its preferred thread before any thread
/// that does not block it may take it (the preferred one may be parked where no signal
/// reaches it, such as a det-mode futex wait).
const PREFERRED_TAKER_WAIT: Duration = Duration::from_millis(200);

#[derive(Default)]
struct State {
    process_pending: u64,
    /// When `process_pending` last went from empty to non-empty.
    process_pending_since: Option<Instant>,
    threads: BTreeMap<i64, ThreadSignals>,
}

impl State {
    /// The process-pending signals `tid` may take now.
    ///
    /// Like Linux (`complete_signal`), a process-directed signal goes to one chosen
    /// thread: one waiting for it in sigwait, else the lowest thread id that does not
    /// block it, which is the main thread unless it blocks the signal or has exited.
    /// Letting whichever thread reaches a syscall first take it would make the taker
    /// depend on timing; a program whose main loop polls a flag its handler sets (civetweb,
    /// many daemons) would then see the flag late on one replica of a pair and on time on
    /// the other. Only after [`PREFERRED_TAKER_WAIT`] may any thread take it.
    fn process_takeable(&self, tid: i64) -> u64 {
        let mut pending = self.process_pending;
        if pending == 0 {
            return 0;
        }
        if self
            .process_pending_since
            .is_some_and(|t| t.elapsed() >= PREFERRED_TAKER_WAIT)
        {
            return pending;
        }
        let mut takeable = 0;
        while pending != 0 {
            let sig = pending.trailing_zeros() as i32 + 1;
            pending &= pending - 1;
            if self.preferred_taker(sig) == Some(tid) {
                takeable |= bit(sig);
            }
        }
        takeable
    }

    /// The thread a process-directed `sig` should go to (see `process_takeable`).
    fn preferred_taker(&self, sig: i32) -> Option<i64> {
        let b = bit(sig);
        self.threads
            .iter()
            .find(|(_, t)| t.waiting & b != 0)
            .or_else(|| self.threads.iter().find(|(_, t)| t.mask & b == 0))
            .map(|(&tid, _)| tid)
    }

    fn take_process_pending(&mut self, sig: i32) {
        self.process_pending &= !bit(sig);
        if self.process_pending == 0 {
            self.process_pending_since = None;
        }
    }
}

/// Signal state shared by the program's threads.
#[derive(Default)]
pub struct Signals {
    state: Mutex<State>,
    changed: Condvar,
    /// The secondary of a pair: signals the program raises itself are not queued (their
    /// deliveries arrive from the primary's log through [`inject`](Self::inject)); only a
    /// default action that ends the program still takes effect.
    replay_only: AtomicBool,
    /// Signals from outside the VMM (the supervisor forwards a stop to a secondary whose
    /// primary died) that came while [`replay_only`](Self::replay_only) was set: held for
    /// the takeover, when the program's signals are its own again.
    held_from_host: Mutex<Vec<i32>>,
}

impl Signals {
    /// A thread starts with its creator's mask. Registered by clone, before the parent
    /// learns the new id, so that a signal sent to the thread before its vCPU picks it up
    /// is pending for it, as on Linux (not lost to ESRCH); registering it again when it
    /// starts running keeps what is pending.
    pub fn add_thread(&self, tid: i64, mask: u64) {
        lock(&self.state)
            .threads
            .entry(tid)
            .or_insert_with(|| ThreadSignals {
                mask,
                ..Default::default()
            });
    }

    /// The live threads' ids, ascending.
    pub fn tids(&self) -> Vec<i64> {
        lock(&self.state).threads.keys().copied().collect()
    }

    /// A thread ended; its own pending signals go with it.
    pub fn remove_thread(&self, tid: i64) {
        lock(&self.state).threads.remove(&tid);
    }

    /// The thread's alternate signal stack (base, size), if it has one.
    pub fn altstack(&self, tid: i64) -> Option<(u64, u64)> {
        lock(&self.state).threads.get(&tid).and_then(|t| t.altstack)
    }

    /// Sets or (None) disables the thread's alternate signal stack.
    pub fn set_altstack(&self, tid: i64, stack: Option<(u64, u64)>) {
        lock(&self.state).threads.entry(tid).or_default().altstack = stack;
    }

    /// The thread's blocked set.
    pub fn mask(&self, tid: i64) -> u64 {
        lock(&self.state).threads.get(&tid).map_or(0, |t| t.mask)
    }

    /// Replaces the thread's blocked set (SIGKILL and SIGSTOP stay unblocked) and
    /// returns the old one.
    pub fn set_mask(&self, tid: i64, mask: u64) -> u64 {
        let mut st = lock(&self.state);
        let t = st.threads.entry(tid).or_default();
        let old = t.mask;
        t.mask = mask & !UNBLOCKABLE;
        old
    }

    /// The end of a sigsuspend that ran with a temporary mask: when a signal is deliverable
    /// under it, the temporary mask stays until that signal's handler is entered (its
    /// frame gets `old`, which sigreturn restores), as on Linux; otherwise `old` is back
    /// now. (Restoring `old` at once would block the very signal that ended the wait, and
    /// the call would return EINTR with no handler run.)
    pub fn end_suspend(&self, tid: i64, old: u64) {
        let mut st = lock(&self.state);
        let takeable = st.process_takeable(tid);
        let t = st.threads.entry(tid).or_default();
        if (t.pending | takeable) & !t.mask != 0 {
            t.saved_mask = Some(old);
        } else {
            t.mask = old & !UNBLOCKABLE;
        }
    }

    /// Puts back a mask that `end_suspend` saved, when no handler was entered after all
    /// (the signal was ignored by then).
    pub fn restore_saved_mask(&self, tid: i64) {
        let mut st = lock(&self.state);
        if let Some(t) = st.threads.get_mut(&tid) {
            if let Some(m) = t.saved_mask.take() {
                t.mask = m;
            }
        }
    }

    /// Makes this the signal state of a pair's secondary (see `replay_only`).
    pub fn set_replay_only(&self) {
        self.replay_only.store(true, Ordering::Relaxed);
    }

    /// Failover: the secondary went live; signals are its own again. Returns the signals
    /// from outside that were held meanwhile ([`from_host`](Self::from_host)), for the
    /// caller to send now.
    pub fn end_replay_only(&self) -> Vec<i32> {
        let mut held = lock(&self.held_from_host);
        self.replay_only.store(false, Ordering::Relaxed);
        std::mem::take(&mut *held)
    }

    /// A signal from outside the VMM for the whole process: as
    /// [`send_process`](Self::send_process), but a pair's secondary holds it until it goes
    /// live (only the dead primary's supervisor sends it one), instead of dropping it.
    pub fn from_host(&self, sig: i32, act: SigAction) -> Fate {
        {
            let mut held = lock(&self.held_from_host);
            if self.replay_only.load(Ordering::Relaxed) {
                if !held.contains(&sig) {
                    held.push(sig);
                }
                return Fate::Queued(None);
            }
        }
        self.send_process(sig, act)
    }

    /// Queues `sig` for `tid` as the primary delivered it (the secondary of a pair).
    pub fn inject(&self, tid: i64, sig: i32) {
        let mut st = lock(&self.state);
        if let Some(t) = st.threads.get_mut(&tid) {
            t.pending |= bit(sig);
        }
        self.changed.notify_all();
    }

    /// Whether `sig` is pending for thread `tid`, or (None) for the process.
    pub fn is_pending(&self, sig: i32, tid: Option<i64>) -> bool {
        let st = lock(&self.state);
        let pending = match tid {
            None => st.process_pending,
            Some(t) => st.threads.get(&t).map_or(0, |t| t.pending),
        };
        pending & bit(sig) != 0
    }

    /// The signal `tid` would take next, without taking it.
    pub fn next_deliverable(&self, tid: i64) -> Option<i32> {
        let st = lock(&self.state);
        let t = st.threads.get(&tid)?;
        let ready = (t.pending | st.process_takeable(tid)) & !t.mask;
        (ready != 0).then(|| ready.trailing_zeros() as i32 + 1)
    }

    /// Generates a signal for the whole process (kill, or from outside ditto).
    pub fn send_process(&self, sig: i32, act: SigAction) -> Fate {
        if self.replay_only.load(Ordering::Relaxed) {
            return match disposition(sig, act) {
                Fate::Queued(_) => Fate::Queued(None),
                other => other,
            };
        }
        let mut st = lock(&self.state);
        let waiter = st
            .threads
            .iter()
            .find(|(_, t)| t.waiting & bit(sig) != 0)
            .map(|(&tid, _)| tid);
        if waiter.is_none() {
            match disposition(sig, act) {
                Fate::Queued(_) => {}
                other => return other,
            }
        }
        if st.process_pending == 0 {
            st.process_pending_since = Some(Instant::now());
        }
        st.process_pending |= bit(sig);
        self.changed.notify_all();
        let target = st.preferred_taker(sig);
        Fate::Queued(if waiter.is_some() { None } else { target })
    }

    /// Generates a signal for one thread (tgkill, tkill). None if it does not exist.
    pub fn send_thread(&self, tid: i64, sig: i32, act: SigAction) -> Option<Fate> {
        if self.replay_only.load(Ordering::Relaxed) {
            return Some(match disposition(sig, act) {
                Fate::Queued(_) => Fate::Queued(None),
                other => other,
            });
        }
        let mut st = lock(&self.state);
        let t = st.threads.get_mut(&tid)?;
        let waiting = t.waiting & bit(sig) != 0;
        if !waiting && t.mask & bit(sig) == 0 {
            match disposition(sig, act) {
                Fate::Queued(_) => {}
                other => return Some(other),
            }
        }
        if !waiting && t.mask & bit(sig) != 0 && act.handler == libc::SIG_IGN as u64 {
            return Some(Fate::Ignored);
        }
        t.pending |= bit(sig);
        let kick = !waiting && t.mask & bit(sig) == 0;
        self.changed.notify_all();
        Some(Fate::Queued(kick.then_some(tid)))
    }

    /// Signals pending for `tid` (or the process) that it blocks: rt_sigpending.
    pub fn blocked_pending(&self, tid: i64) -> u64 {
        let st = lock(&self.state);
        st.threads
            .get(&tid)
            .map_or(0, |t| (t.pending | st.process_pending) & t.mask)
    }

    /// Threads that have a signal they could take now (to be kicked again until they
    /// reach a delivery point).
    pub fn deliverable_tids(&self) -> Vec<i64> {
        let st = lock(&self.state);
        st.threads
            .iter()
            .filter(|(&tid, t)| {
                (t.pending | st.process_takeable(tid)) & !t.mask != 0 && t.waiting == 0
            })
            .map(|(&tid, _)| tid)
            .collect()
    }

    /// Whether `tid` has a signal it could take now.
    pub fn has_deliverable(&self, tid: i64) -> bool {
        let st = lock(&self.state);
        st.threads
            .get(&tid)
            .is_some_and(|t| (t.pending | st.process_takeable(tid)) & !t.mask != 0)
    }

    /// Takes the lowest deliverable signal for `tid` and returns it with the mask
    /// before delivery; the caller blocks `mask_during` while the handler runs.
    pub fn take_deliverable(&self, tid: i64) -> Option<(i32, u64)> {
        let mut st = lock(&self.state);
        let takeable = st.process_takeable(tid);
        let t = st.threads.get_mut(&tid)?;
        let ready = (t.pending | takeable) & !t.mask;
        if ready == 0 {
            return None;
        }
        let sig = ready.trailing_zeros() as i32 + 1;
        let old_mask = t.saved_mask.take().unwrap_or(t.mask);
        if t.pending & bit(sig) != 0 {
            t.pending &= !bit(sig);
        } else {
            st.take_process_pending(sig);
        }
        Some((sig, old_mask))
    }

    /// rt_sigtimedwait: waits for one of `set`, pending for the thread or the
    /// process, until `timeout` (None: forever) or `stopping()`. Returns the signal.
    pub fn wait(
        &self,
        tid: i64,
        set: u64,
        timeout: Option<Duration>,
        stopping: impl Fn() -> bool,
    ) -> Option<i32> {
        // A timeout too far off to be an Instant (tv_sec near INT64_MAX) is forever.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut st = lock(&self.state);
        loop {
            let process_pending = st.process_pending;
            let t = st.threads.entry(tid).or_default();
            let ready = (t.pending | process_pending) & set;
            if ready != 0 {
                let sig = ready.trailing_zeros() as i32 + 1;
                if t.pending & bit(sig) != 0 {
                    t.pending &= !bit(sig);
                } else {
                    st.take_process_pending(sig);
                }
                if let Some(t) = st.threads.get_mut(&tid) {
                    t.waiting = 0;
                }
                return Some(sig);
            }
            t.waiting = set;
            let now = Instant::now();
            if stopping() || deadline.is_some_and(|d| now >= d) {
                t.waiting = 0;
                return None;
            }
            // Wake periodically to notice the program stopping.
            let slice = deadline.map_or(Duration::from_millis(50), |d| {
                d.saturating_duration_since(now)
                    .min(Duration::from_millis(50))
            });
            st = self
                .changed
                .wait_timeout(st, slice)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// What a signal does when no sigwait takes it and the target does not block it.
fn disposition(sig: i32, act: SigAction) -> Fate {
    if act.handler == libc::SIG_IGN as u64
        || (act.handler == libc::SIG_DFL as u64 && default_ignored(sig))
    {
        Fate::Ignored
    } else if act.handler == libc::SIG_DFL as u64 {
        Fate::Terminate
    } else {
        Fate::Queued(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler() -> SigAction {
        SigAction {
            handler: 0x1234,
            ..Default::default()
        }
    }

    #[test]
    fn sigsuspend_mask_stays_until_the_woken_handler() {
        let s = Signals::default();
        let usr2 = bit(libc::SIGUSR2);
        s.add_thread(1, usr2);
        // sigsuspend with USR2 unblocked; USR2 arrives.
        let old = s.set_mask(1, 0);
        s.inject(1, libc::SIGUSR2);
        s.end_suspend(1, old);
        // The handler's frame must save the pre-sigsuspend mask, and the signal is taken.
        assert_eq!(s.take_deliverable(1), Some((libc::SIGUSR2, usr2)));
        // (The handler's sigreturn restores the saved mask.)
        s.set_mask(1, usr2);
        // Nothing woke it: the old mask is back at once.
        let old = s.set_mask(1, 0);
        s.end_suspend(1, old);
        assert_eq!(s.mask(1), usr2);
    }

    #[test]
    fn a_signal_sent_before_the_thread_runs_stays_pending() {
        let s = Signals::default();
        let usr2 = bit(libc::SIGUSR2);
        // clone registers the thread; the parent signals it before its vCPU starts it.
        s.add_thread(7, usr2);
        assert!(s.send_thread(7, libc::SIGUSR2, handler()).is_some());
        // The vCPU registers it again when it starts running: nothing pending is lost,
        // and a sigwait finds it at once.
        s.add_thread(7, 0);
        assert_eq!(s.mask(7), usr2);
        assert_eq!(
            s.wait(7, usr2, Some(Duration::from_millis(1)), || false),
            Some(libc::SIGUSR2)
        );
    }

    #[test]
    fn default_actions() {
        let s = Signals::default();
        s.add_thread(1, 0);
        assert_eq!(
            s.send_process(libc::SIGTERM, SigAction::default()),
            Fate::Terminate
        );
        assert_eq!(
            s.send_process(libc::SIGCHLD, SigAction::default()),
            Fate::Ignored
        );
    }

    #[test]
    fn handler_goes_to_an_unblocked_thread() {
        let s = Signals::default();
        s.add_thread(1, bit(libc::SIGTERM));
        s.add_thread(2, 0);
        assert_eq!(
            s.send_process(libc::SIGTERM, handler()),
            Fate::Queued(Some(2))
        );
        assert!(!s.has_deliverable(1));
        assert_eq!(s.take_deliverable(2), Some((libc::SIGTERM, 0)));
        assert!(s.take_deliverable(2).is_none());
    }

    #[test]
    fn process_signal_prefers_the_lowest_unblocked_thread() {
        let s = Signals::default();
        s.add_thread(1, 0);
        s.add_thread(7, 0);
        assert_eq!(
            s.send_process(libc::SIGTERM, handler()),
            Fate::Queued(Some(1))
        );
        // Another thread reaching a delivery point first does not take it...
        assert!(!s.has_deliverable(7));
        assert!(s.take_deliverable(7).is_none());
        assert_eq!(s.deliverable_tids(), vec![1]);
        // ...unless the preferred thread leaves it too long.
        std::thread::sleep(PREFERRED_TAKER_WAIT + Duration::from_millis(20));
        assert_eq!(s.take_deliverable(7), Some((libc::SIGTERM, 0)));
        assert!(s.take_deliverable(1).is_none());
    }

    #[test]
    fn sigwait_takes_blocked_signal() {
        let s = std::sync::Arc::new(Signals::default());
        s.add_thread(1, bit(libc::SIGQUIT));
        s.add_thread(2, bit(libc::SIGQUIT));
        let s2 = s.clone();
        let t = std::thread::spawn(move || {
            s2.wait(2, bit(libc::SIGQUIT), Some(Duration::from_secs(5)), || {
                false
            })
        });
        // Once thread 2 is in its sigwait (bounded: 5 s).
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while lock(&s.state).threads.get(&2).map_or(0, |t| t.waiting) == 0 {
            assert!(std::time::Instant::now() < until, "thread 2 never waited");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Blocked everywhere, default action terminate: still goes to the waiter.
        assert!(matches!(
            s.send_thread(2, libc::SIGQUIT, SigAction::default()),
            Some(Fate::Queued(None))
        ));
        assert_eq!(t.join().unwrap(), Some(libc::SIGQUIT));
        assert_eq!(
            s.wait(
                1,
                bit(libc::SIGUSR1),
                Some(Duration::from_millis(10)),
                || false
            ),
            None
        );
    }

    #[test]
    fn sigwait_with_a_timeout_past_any_instant_waits_forever() {
        let s = Signals::default();
        s.add_thread(1, 0);
        // tv_sec = INT64_MAX: no deadline, so only stopping() ends the wait.
        let polls = std::sync::atomic::AtomicU32::new(0);
        let got = s.wait(1, bit(libc::SIGUSR1), Some(Duration::MAX), || {
            polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= 2
        });
        assert_eq!(got, None);
    }

    #[test]
    fn mask_keeps_kill_unblocked() {
        let s = Signals::default();
        s.add_thread(1, 0);
        s.set_mask(1, u64::MAX);
        assert_eq!(s.mask(1) & bit(libc::SIGKILL), 0);
        // The twin: a signal the mask does block is held pending, not acted on.
        let dfl = SigAction::default();
        assert_eq!(
            s.send_thread(1, libc::SIGUSR1, dfl),
            Some(Fate::Queued(None))
        );
        assert_eq!(s.blocked_pending(1), bit(libc::SIGUSR1));
        // SIGKILL to the same thread, with the all-ones mask set: it acts at once.
        assert_eq!(s.send_thread(1, libc::SIGKILL, dfl), Some(Fate::Terminate));
        assert_eq!(s.blocked_pending(1) & bit(libc::SIGKILL), 0);
    }
}
