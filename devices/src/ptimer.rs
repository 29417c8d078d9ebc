//! POSIX per-process timers (timer_create, timer_settime, timer_gettime, timer_getoverrun,
//! timer_delete): every timer of the program in one [`TimerSet`] (a deadline index under a
//! mutex), served by one timer thread per program that sleeps on a condvar until the
//! earliest deadline and fires through [`TimerTarget`].
//!
//! Like `itimer`, this module knows the program only through its target trait, so it sits
//! below the process and signal state it serves. The syscall side (clock ids, sigevent,
//! guest memory) is `syscalls::sys_timer`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sync::lock;

/// The most timers a program may hold at once; one more is EAGAIN. Linux bounds them by
/// RLIMIT_SIGPENDING (each timer preallocates its signal); ditto bounds them so that a
/// program cannot make the VMM allocate without bound.
pub const MAX_TIMERS: usize = 4096;

/// The longest timer value Linux represents (KTIME_MAX nanoseconds, ~292 years).
const KTIME_MAX: Duration = Duration::from_nanos(i64::MAX as u64);

/// Why a timer operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimerError {
    /// No timer has this id (EINVAL).
    #[error("no timer with this id")]
    Unknown,
    /// The program holds [`MAX_TIMERS`] timers already (EAGAIN).
    #[error("too many timers")]
    Exhausted,
}

impl From<TimerError> for crate::Errno {
    fn from(e: TimerError) -> Self {
        match e {
            TimerError::Unknown => crate::Errno::EINVAL,
            TimerError::Exhausted => crate::Errno::EAGAIN,
        }
    }
}

/// What an expiry does (the sigevent's sigev_notify).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notify {
    /// SIGEV_NONE: nothing; the program polls with timer_gettime.
    Nothing,
    /// SIGEV_SIGNAL (and SIGEV_THREAD as the kernel sees it): this signal to the process.
    Process(i32),
    /// SIGEV_THREAD_ID: this signal to this thread.
    Thread(i64, i32),
}

impl Notify {
    fn signal(self) -> Option<i32> {
        match self {
            Notify::Nothing => None,
            Notify::Process(s) | Notify::Thread(_, s) => Some(s),
        }
    }
}

/// The settings a timer is created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerSpec {
    /// The Linux clock id, as the program named it (for TIMER_ABSTIME).
    pub clock: i32,
    /// False for the CPU-time clocks: ditto measures no CPU time for the program, so
    /// those timers keep their value and never fire (as its CPU-time itimers).
    pub fires: bool,
    /// What an expiry does.
    pub notify: Notify,
    /// The sigevent's sigev_value, for the siginfo; None: the timer's id (Linux's value
    /// when timer_create had no sigevent).
    pub value: Option<u64>,
}

/// A timer's signal as it was taken: what Linux puts in the siginfo (SI_TIMER).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// si_timerid.
    pub id: i32,
    /// si_overrun (also what timer_getoverrun returns from now on).
    pub overrun: i32,
    /// si_value.
    pub value: u64,
}

#[derive(Debug)]
struct Timer {
    spec: TimerSpec,
    /// The next expiry; None while disarmed. Always None for a timer that never fires.
    deadline: Option<Instant>,
    interval: Duration,
    /// A timer that never fires: the value it was armed with, which timer_gettime shows.
    frozen: Duration,
    /// Expiries that sent no signal because the last one was still pending.
    overrun: u64,
    /// Linux's it_overrun_last: `overrun` as it stood when the last signal was delivered.
    overrun_last: u64,
    /// A signal was sent and not delivered yet.
    in_flight: bool,
}

/// All timers of one program and their deadlines: the pure part, with no thread and no
/// clock of its own (every operation is given `now`).
#[derive(Debug, Default)]
pub struct TimerSet {
    timers: BTreeMap<i32, Timer>,
    /// (deadline, id) of each armed timer that sends a signal, earliest first.
    queue: BTreeSet<(Instant, i32)>,
    /// Linux hands out ids from a per-process counter (0, 1, 2, ...), skipping ids in use
    /// and wrapping at INT_MAX; ditto does the same, so a program sees the ids it would
    /// natively.
    next_id: i32,
    /// Timers with `in_flight` set, so a delivery with none skips the scan.
    in_flight: usize,
}

impl TimerSet {
    /// Adds a disarmed timer and returns its id.
    pub fn create(&mut self, spec: TimerSpec) -> Result<i32, TimerError> {
        if self.timers.len() >= MAX_TIMERS {
            return Err(TimerError::Exhausted);
        }
        // At most MAX_TIMERS ids are taken, so this ends within MAX_TIMERS + 1 steps.
        let mut id = self.next_id;
        while self.timers.contains_key(&id) {
            id = if id == i32::MAX { 0 } else { id + 1 };
        }
        self.next_id = if id == i32::MAX { 0 } else { id + 1 };
        self.timers.insert(
            id,
            Timer {
                spec,
                deadline: None,
                interval: Duration::ZERO,
                frozen: Duration::ZERO,
                overrun: 0,
                overrun_last: 0,
                in_flight: false,
            },
        );
        Ok(id)
    }

    /// The settings timer `id` was created with.
    pub fn spec(&self, id: i32) -> Result<TimerSpec, TimerError> {
        self.timers
            .get(&id)
            .map(|t| t.spec)
            .ok_or(TimerError::Unknown)
    }

    /// Removes timer `id`.
    pub fn delete(&mut self, id: i32) -> Result<(), TimerError> {
        let t = self.timers.remove(&id).ok_or(TimerError::Unknown)?;
        if let Some(d) = t.deadline {
            self.queue.remove(&(d, id));
        }
        if t.in_flight {
            self.in_flight -= 1;
        }
        Ok(())
    }

    /// Arms timer `id` to expire after `value` (zero: disarms it), then every `interval`;
    /// returns its previous (remaining, interval).
    pub fn set(
        &mut self,
        id: i32,
        now: Instant,
        value: Duration,
        interval: Duration,
    ) -> Result<(Duration, Duration), TimerError> {
        let old = self.get(id, now)?;
        let t = self.timers.get_mut(&id).ok_or(TimerError::Unknown)?;
        if let Some(d) = t.deadline.take() {
            self.queue.remove(&(d, id));
        }
        // Linux keeps timer values as ktime, saturated at KTIME_MAX; an Instant that still
        // cannot hold the deadline means "never", as for ITIMER_REAL.
        let value = value.min(KTIME_MAX);
        t.interval = if value.is_zero() {
            Duration::ZERO
        } else {
            interval.min(KTIME_MAX)
        };
        t.overrun = 0;
        t.overrun_last = 0;
        if t.in_flight {
            t.in_flight = false;
            self.in_flight -= 1;
        }
        if !t.spec.fires {
            t.frozen = value;
            return Ok(old);
        }
        t.deadline = if value.is_zero() {
            None
        } else {
            now.checked_add(value)
        };
        if let (Some(d), Some(_)) = (t.deadline, t.spec.notify.signal()) {
            self.queue.insert((d, id));
        }
        Ok(old)
    }

    /// Timer `id`'s (remaining, interval) at `now`. A periodic timer past its deadline
    /// (its signal pending, or a SIGEV_NONE timer, which the timer thread never visits)
    /// shows the time to its next period, as Linux forwards it.
    pub fn get(&self, id: i32, now: Instant) -> Result<(Duration, Duration), TimerError> {
        let t = self.timers.get(&id).ok_or(TimerError::Unknown)?;
        if !t.spec.fires {
            return Ok((t.frozen, t.interval));
        }
        let left = match t.deadline {
            None => Duration::ZERO,
            Some(d) if d > now => d - now,
            Some(_) if t.interval.is_zero() => Duration::ZERO,
            Some(d) => {
                let late = (now - d).as_nanos() % t.interval.as_nanos();
                // late < interval <= KTIME_MAX, so it fits in u64.
                t.interval - Duration::from_nanos(late as u64)
            }
        };
        Ok((left, t.interval))
    }

    /// timer_getoverrun: the overrun count of the last delivered signal, capped at
    /// INT_MAX as Linux's DELAYTIMER_MAX.
    pub fn overrun(&self, id: i32) -> Result<i32, TimerError> {
        let t = self.timers.get(&id).ok_or(TimerError::Unknown)?;
        Ok(t.overrun_last.min(i32::MAX as u64) as i32)
    }

    /// The earliest deadline of a timer that sends a signal.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.first().map(|&(d, _)| d)
    }

    /// Expires every timer due at `now`: re-arms the periodic ones (keeping their phase,
    /// and counting the periods the thread woke too late for as overruns) and returns
    /// the notifications to send. A timer whose last signal `still_pending` says has not
    /// been delivered sends none; the expiry counts as an overrun, as on Linux, where a
    /// timer's one preallocated signal cannot be queued twice.
    pub fn expire(&mut self, now: Instant, still_pending: impl Fn(Notify) -> bool) -> Vec<Notify> {
        let mut out = Vec::new();
        while let Some(&(d, id)) = self.queue.first() {
            if d > now {
                break;
            }
            self.queue.remove(&(d, id));
            let Some(t) = self.timers.get_mut(&id) else {
                continue;
            };
            let mut missed = 0u64;
            t.deadline = None;
            if !t.interval.is_zero() {
                let periods = (now - d).as_nanos() / t.interval.as_nanos();
                missed = u64::try_from(periods).unwrap_or(u64::MAX);
                // The next period after now; a deadline past any Instant ends the timer.
                let step = t.interval.as_nanos().saturating_mul(periods + 1);
                t.deadline = u64::try_from(step)
                    .ok()
                    .and_then(|ns| d.checked_add(Duration::from_nanos(ns)));
                if let Some(next) = t.deadline {
                    self.queue.insert((next, id));
                }
            }
            if t.in_flight && still_pending(t.spec.notify) {
                t.overrun = t.overrun.saturating_add(missed.saturating_add(1));
                continue;
            }
            t.overrun = t.overrun.saturating_add(missed);
            if !t.in_flight {
                t.in_flight = true;
                self.in_flight += 1;
            }
            out.push(t.spec.notify);
        }
        out
    }

    /// Thread `tid` took signal `sig` (entered its handler, or a sigwait returned it):
    /// each timer whose signal that was records its overrun count for timer_getoverrun
    /// and may send again. Returns the first such timer's siginfo fields (timers that
    /// share a signal number share its one pending instance).
    pub fn delivered(&mut self, sig: i32, tid: i64) -> Option<Delivered> {
        if self.in_flight == 0 {
            return None;
        }
        let mut first = None;
        for (&id, t) in self.timers.iter_mut() {
            let ours = match t.spec.notify {
                Notify::Process(s) => s == sig,
                Notify::Thread(to, s) => s == sig && to == tid,
                Notify::Nothing => false,
            };
            if ours && t.in_flight {
                t.in_flight = false;
                self.in_flight -= 1;
                t.overrun_last = t.overrun;
                t.overrun = 0;
                first = first.or(Some(Delivered {
                    id,
                    overrun: t.overrun_last.min(i32::MAX as u64) as i32,
                    value: t.spec.value.unwrap_or(id as u64),
                }));
            }
        }
        first
    }

    /// How many timers the program holds.
    pub fn len(&self) -> usize {
        self.timers.len()
    }

    /// Whether the program holds no timer.
    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
    }
}

/// What the timer thread needs from the program it fires at.
pub trait TimerTarget: Send + Sync {
    /// Whether the program is ending (the timer thread then stops).
    fn exiting(&self) -> bool;
    /// Sends one expiry's signal.
    fn fire(&self, notify: Notify);
    /// Whether the signal `notify` names is still pending for its target.
    fn still_pending(&self, notify: Notify) -> bool;
}

#[derive(Default)]
struct State {
    set: TimerSet,
    thread_started: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// The program's POSIX timers and, once one is armed, their timer thread.
#[derive(Default)]
pub struct PosixTimers {
    shared: Arc<Shared>,
}

impl PosixTimers {
    /// timer_create: a new disarmed timer's id.
    pub fn create(&self, spec: TimerSpec) -> Result<i32, TimerError> {
        lock(&self.shared.state).set.create(spec)
    }

    /// The settings timer `id` was created with.
    pub fn spec(&self, id: i32) -> Result<TimerSpec, TimerError> {
        lock(&self.shared.state).set.spec(id)
    }

    /// timer_delete.
    pub fn delete(&self, id: i32) -> Result<(), TimerError> {
        let r = lock(&self.shared.state).set.delete(id);
        self.shared.changed.notify_all();
        r
    }

    /// timer_settime with a relative `value` (zero disarms); starts the timer thread the
    /// first time a timer is armed. Returns the previous (remaining, interval).
    pub fn set<T: TimerTarget + 'static>(
        &self,
        target: &Arc<T>,
        id: i32,
        value: Duration,
        interval: Duration,
    ) -> Result<(Duration, Duration), TimerError> {
        let mut st = lock(&self.shared.state);
        let old = st.set.set(id, Instant::now(), value, interval)?;
        if st.set.next_deadline().is_some() && !st.thread_started {
            st.thread_started = true;
            let target = target.clone();
            let shared = self.shared.clone();
            let _ = std::thread::Builder::new()
                .name("ptimer".into())
                .spawn(move || {
                    crate::seccomp::apply_or_exit(crate::seccomp::Kind::Signals);
                    Self::run(&shared, &*target)
                });
        }
        self.shared.changed.notify_all();
        Ok(old)
    }

    /// timer_gettime: (remaining, interval).
    pub fn get(&self, id: i32) -> Result<(Duration, Duration), TimerError> {
        lock(&self.shared.state).set.get(id, Instant::now())
    }

    /// timer_getoverrun.
    pub fn overrun(&self, id: i32) -> Result<i32, TimerError> {
        lock(&self.shared.state).set.overrun(id)
    }

    /// Thread `tid` took signal `sig` (see [`TimerSet::delivered`]).
    pub fn delivered(&self, sig: i32, tid: i64) -> Option<Delivered> {
        lock(&self.shared.state).set.delivered(sig, tid)
    }

    fn run(shared: &Shared, target: &dyn TimerTarget) {
        let mut st = lock(&shared.state);
        while !target.exiting() {
            let now = Instant::now();
            let due = st.set.expire(now, |n| target.still_pending(n));
            if !due.is_empty() {
                // Signals are sent without the timers' lock: sending takes the signal
                // state's lock, and a delivery takes that one before this one.
                drop(st);
                for n in due {
                    target.fire(n);
                }
                st = lock(&shared.state);
                continue;
            }
            // Wake at the earliest deadline, and at least every 50 ms to notice the exit.
            let wait = st
                .set
                .next_deadline()
                .map_or(Duration::from_millis(50), |d| {
                    d.saturating_duration_since(now)
                        .min(Duration::from_millis(50))
                });
            st = shared
                .changed
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn spec(notify: Notify) -> TimerSpec {
        TimerSpec {
            clock: libc::CLOCK_MONOTONIC,
            fires: true,
            notify,
            value: None,
        }
    }

    const ALRM: Notify = Notify::Process(libc::SIGALRM);

    #[test]
    fn ids_count_up_skip_those_in_use_and_are_not_reused_at_once() {
        let mut s = TimerSet::default();
        assert_eq!(s.create(spec(ALRM)), Ok(0));
        assert_eq!(s.create(spec(ALRM)), Ok(1));
        s.delete(0).unwrap();
        assert_eq!(s.create(spec(ALRM)), Ok(2));
        assert_eq!(s.delete(0), Err(TimerError::Unknown));
        s.next_id = i32::MAX;
        assert_eq!(s.create(spec(ALRM)), Ok(i32::MAX));
        // Wraps, and skips 1 and 2, still held.
        assert_eq!(s.create(spec(ALRM)), Ok(0));
        assert_eq!(s.create(spec(ALRM)), Ok(3));
    }

    #[test]
    fn the_cap_is_eagain() {
        let mut s = TimerSet::default();
        for _ in 0..MAX_TIMERS {
            s.create(spec(Notify::Nothing)).unwrap();
        }
        assert_eq!(s.create(spec(ALRM)), Err(TimerError::Exhausted));
        assert_eq!(
            crate::Errno::from(TimerError::Exhausted),
            crate::Errno::EAGAIN
        );
        // One freed makes room again; the id is the counter's next, not the freed one.
        s.delete(7).unwrap();
        assert_eq!(s.create(spec(ALRM)), Ok(MAX_TIMERS as i32));
    }

    #[test]
    fn deadlines_come_out_in_order_and_one_shots_disarm() {
        let mut s = TimerSet::default();
        let t0 = Instant::now();
        let a = s.create(spec(Notify::Process(10))).unwrap();
        let b = s.create(spec(Notify::Thread(1001, 12))).unwrap();
        s.set(a, t0, 30 * MS, Duration::ZERO).unwrap();
        s.set(b, t0, 10 * MS, Duration::ZERO).unwrap();
        assert_eq!(s.next_deadline(), Some(t0 + 10 * MS));
        assert!(s.expire(t0 + 5 * MS, |_| false).is_empty());
        assert_eq!(
            s.expire(t0 + 10 * MS, |_| false),
            vec![Notify::Thread(1001, 12)]
        );
        assert_eq!(s.get(b, t0 + 11 * MS), Ok((Duration::ZERO, Duration::ZERO)));
        assert_eq!(s.get(a, t0 + 11 * MS), Ok((19 * MS, Duration::ZERO)));
        assert_eq!(s.expire(t0 + 40 * MS, |_| false), vec![Notify::Process(10)]);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn periodic_timers_keep_their_phase_and_count_late_periods() {
        let mut s = TimerSet::default();
        let t0 = Instant::now();
        let a = s.create(spec(ALRM)).unwrap();
        s.set(a, t0, 10 * MS, 10 * MS).unwrap();
        // Woken 25 ms late: two periods missed, next at 40 ms, not 45.
        assert_eq!(s.expire(t0 + 35 * MS, |_| true), vec![ALRM]);
        assert_eq!(s.next_deadline(), Some(t0 + 40 * MS));
        assert_eq!(s.get(a, t0 + 35 * MS), Ok((5 * MS, 10 * MS)));
        // Still pending at the next expiry: no second signal, one more overrun.
        assert!(s.expire(t0 + 40 * MS, |_| true).is_empty());
        assert_eq!(s.overrun(a), Ok(0));
        // The siginfo: the id, the overruns, and the id as value (no sigevent's value).
        assert_eq!(
            s.delivered(libc::SIGALRM, 1000),
            Some(Delivered {
                id: a,
                overrun: 3,
                value: a as u64
            })
        );
        assert_eq!(s.delivered(libc::SIGALRM, 1000), None);
        assert_eq!(s.overrun(a), Ok(3));
        // Delivered: the next expiry signals again, with a fresh count.
        assert_eq!(s.expire(t0 + 50 * MS, |_| true), vec![ALRM]);
        s.delivered(libc::SIGALRM, 1000);
        assert_eq!(s.overrun(a), Ok(0));
    }

    #[test]
    fn a_signal_lost_in_flight_does_not_silence_the_timer() {
        let mut s = TimerSet::default();
        let t0 = Instant::now();
        let a = s.create(spec(Notify::Thread(1001, 12))).unwrap();
        s.set(a, t0, 10 * MS, 10 * MS).unwrap();
        assert_eq!(s.expire(t0 + 10 * MS, |_| false).len(), 1);
        // Never delivered (its thread ended), and no longer pending: it sends again.
        assert_eq!(s.expire(t0 + 20 * MS, |_| false).len(), 1);
        // Another thread taking the same signal number is not this timer's delivery.
        s.delivered(12, 1000);
        assert!(s.expire(t0 + 30 * MS, |_| true).is_empty());
    }

    #[test]
    fn rearming_returns_the_old_value_and_disarming_empties_the_queue() {
        let mut s = TimerSet::default();
        let t0 = Instant::now();
        let a = s.create(spec(ALRM)).unwrap();
        assert_eq!(
            s.set(a, t0, 100 * MS, 5 * MS),
            Ok((Duration::ZERO, Duration::ZERO))
        );
        assert_eq!(
            s.set(a, t0 + 40 * MS, Duration::ZERO, 5 * MS),
            Ok((60 * MS, 5 * MS))
        );
        assert_eq!(s.next_deadline(), None);
        // A zero value disarms whatever the interval.
        assert_eq!(s.get(a, t0), Ok((Duration::ZERO, Duration::ZERO)));
        // Deleting an armed timer takes it out of the queue.
        s.set(a, t0, 100 * MS, Duration::ZERO).unwrap();
        s.delete(a).unwrap();
        assert_eq!(s.next_deadline(), None);
        assert!(s.is_empty());
    }

    #[test]
    fn sigev_none_and_cpu_clock_timers_never_enter_the_queue() {
        let mut s = TimerSet::default();
        let t0 = Instant::now();
        let none = s.create(spec(Notify::Nothing)).unwrap();
        s.set(none, t0, 10 * MS, 10 * MS).unwrap();
        assert_eq!(s.next_deadline(), None);
        // timer_gettime forwards it all the same.
        assert_eq!(s.get(none, t0 + 25 * MS), Ok((5 * MS, 10 * MS)));
        let cpu = s
            .create(TimerSpec {
                clock: libc::CLOCK_PROCESS_CPUTIME_ID,
                fires: false,
                notify: ALRM,
                value: Some(5),
            })
            .unwrap();
        s.set(cpu, t0, 7 * MS, Duration::ZERO).unwrap();
        assert_eq!(s.next_deadline(), None);
        assert_eq!(s.get(cpu, t0 + 100 * MS), Ok((7 * MS, Duration::ZERO)));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn a_value_past_any_instant_never_expires() {
        let mut s = TimerSet::default();
        let t0 = Instant::now();
        let a = s.create(spec(ALRM)).unwrap();
        s.set(a, t0, Duration::MAX, Duration::MAX).unwrap();
        assert!(s.expire(t0 + 1000 * MS, |_| false).is_empty());
    }

    struct Counter {
        fired: Mutex<Vec<Notify>>,
        stop: std::sync::atomic::AtomicBool,
    }

    impl TimerTarget for Counter {
        fn exiting(&self) -> bool {
            self.stop.load(std::sync::atomic::Ordering::Relaxed)
        }
        fn fire(&self, n: Notify) {
            lock(&self.fired).push(n);
        }
        fn still_pending(&self, _: Notify) -> bool {
            false
        }
    }

    #[test]
    fn the_thread_fires_every_timer_and_stops_with_the_program() {
        // Unit tests run without seccomp: apply_or_exit only filters this thread.
        let target = Arc::new(Counter {
            fired: Mutex::new(Vec::new()),
            stop: false.into(),
        });
        let timers = PosixTimers::default();
        let a = timers.create(spec(Notify::Process(10))).unwrap();
        let b = timers.create(spec(Notify::Process(12))).unwrap();
        timers.set(&target, a, 5 * MS, 5 * MS).unwrap();
        timers.set(&target, b, 20 * MS, Duration::ZERO).unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while lock(&target.fired)
            .iter()
            .filter(|n| **n == Notify::Process(10))
            .count()
            < 3
            || !lock(&target.fired).contains(&Notify::Process(12))
        {
            assert!(Instant::now() < until, "timers did not fire");
            std::thread::sleep(MS);
        }
        timers.delete(a).unwrap();
        target
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
