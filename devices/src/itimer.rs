//! ITIMER_REAL (setitimer, alarm): a timer thread that sends SIGALRM to the program.
//!
//! The timer knows the program only through [`AlarmTarget`] (is it ending, deliver one
//! SIGALRM), so it sits below the process and signal state it serves.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sync::lock;

/// The longest timer value Linux represents (KTIME_MAX nanoseconds, ~292 years).
const KTIME_MAX: Duration = Duration::from_nanos(i64::MAX as u64);

#[derive(Default)]
struct Armed {
    deadline: Option<Instant>,
    interval: Duration,
    thread_started: bool,
}

/// What the timer thread needs from the program it fires at.
pub trait AlarmTarget: Send + Sync {
    /// Whether the program is ending (the timer thread then stops).
    fn exiting(&self) -> bool;
    /// Delivers one SIGALRM expiry to the program.
    fn alarm(&self);
}

#[derive(Default)]
struct Shared {
    armed: Mutex<Armed>,
    changed: Condvar,
}

/// The program's real-time interval timer.
#[derive(Default)]
pub struct RealTimer {
    /// Shared with the timer thread, once it runs.
    shared: Arc<Shared>,
}

impl RealTimer {
    /// Arms (or, with a zero value, disarms) the timer; returns the previous
    /// (remaining, interval).
    pub fn set<T: AlarmTarget + 'static>(
        &self,
        target: &Arc<T>,
        value: Duration,
        interval: Duration,
    ) -> (Duration, Duration) {
        let timer = &*self.shared;
        let mut a = lock(&timer.armed);
        let old = Self::remaining(&a);
        // Linux keeps timer values as ktime, saturated at KTIME_MAX; so do we, and an
        // Instant that still cannot hold it means "never".
        let value = value.min(KTIME_MAX);
        a.deadline = if value.is_zero() {
            None
        } else {
            Instant::now().checked_add(value)
        };
        a.interval = interval.min(KTIME_MAX);
        if a.deadline.is_some() && !a.thread_started {
            a.thread_started = true;
            let target = target.clone();
            let shared = self.shared.clone();
            let _ = std::thread::Builder::new()
                .name("itimer".into())
                .spawn(move || {
                    crate::seccomp::apply_or_exit(crate::seccomp::Kind::Signals);
                    Self::run(&shared, &*target)
                });
        }
        timer.changed.notify_all();
        old
    }

    /// The remaining time and interval.
    pub fn get(&self) -> (Duration, Duration) {
        Self::remaining(&lock(&self.shared.armed))
    }

    fn remaining(a: &Armed) -> (Duration, Duration) {
        let left = a.deadline.map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        });
        (left, a.interval)
    }

    fn run(timer: &Shared, target: &dyn AlarmTarget) {
        let mut a = lock(&timer.armed);
        while !target.exiting() {
            let now = Instant::now();
            match a.deadline {
                Some(d) if d <= now => {
                    // An interval too long to be an Instant: this expiry is the last.
                    a.deadline = if a.interval.is_zero() {
                        None
                    } else {
                        now.checked_add(a.interval)
                    };
                    drop(a);
                    target.alarm();
                    a = lock(&timer.armed);
                }
                _ => {
                    // Wake at the deadline, and at least every 50 ms to notice the exit.
                    let wait = a.deadline.map_or(Duration::from_millis(50), |d| {
                        d.saturating_duration_since(now)
                            .min(Duration::from_millis(50))
                    });
                    a = timer
                        .changed
                        .wait_timeout(a, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}
