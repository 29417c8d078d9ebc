//! How the program ends: live threads, thread ids, the exit reason and the wait for it.
//!
//! Shared, as `Arc<ExitState>`, by everything that must notice or cause the end of
//! the program without holding the rest of it (the det runtime, the replica's reader,
//! timer threads).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::sync::lock;

/// How the program ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// exit/exit_group with this status.
    Exited(i32),
    /// Killed by a signal: a fault in the program, a signal it raised at itself, or
    /// one delivered to ditto. `report` is the one-line description.
    Signaled {
        /// The signal number.
        signal: i32,
        /// One-line report: signal, address, rip, thread.
        report: String,
    },
}

impl ExitReason {
    /// The exit status ditto itself returns: the status, or 128+signal.
    pub fn status(&self) -> i32 {
        match self {
            ExitReason::Exited(s) => *s & 0xff,
            ExitReason::Signaled { signal, .. } => 128 + signal,
        }
    }
}

/// The program's threads and how it ended.
pub struct ExitState {
    first_tid: i64,
    next_tid: AtomicI64,
    live_threads: AtomicUsize,
    exit: Mutex<Option<ExitReason>>,
    /// Mirrors `exit.is_some()`: checked after every syscall, so a lock-free read.
    exiting: AtomicBool,
    exit_cv: Condvar,
}

impl ExitState {
    /// No threads yet; thread ids start at `first_tid` (the pid, as Linux's main thread).
    pub fn new(first_tid: i64) -> Self {
        ExitState {
            first_tid,
            next_tid: AtomicI64::new(first_tid),
            live_threads: AtomicUsize::new(0),
            exit: Mutex::new(None),
            exiting: AtomicBool::new(false),
            exit_cv: Condvar::new(),
        }
    }

    /// Allocates a thread id and counts the thread as live.
    pub fn new_thread(&self) -> i64 {
        self.live_threads.fetch_add(1, Ordering::SeqCst);
        self.next_tid.fetch_add(1, Ordering::SeqCst)
    }

    /// Whether a second thread was ever created (even if it has ended since). Unlike the
    /// live count, this is the same in two replicas at any point of a thread's program:
    /// it turns true in the first clone, made by the only thread there is, and every other
    /// thread starts after it.
    pub fn ever_threaded(&self) -> bool {
        self.next_tid.load(Ordering::SeqCst) > self.first_tid + 1
    }

    /// Undoes `new_thread` when starting the thread failed.
    pub fn thread_not_started(&self) {
        self.live_threads.fetch_sub(1, Ordering::SeqCst);
    }

    /// A thread exited with `status`; the last one out ends the program.
    pub fn thread_exited(&self, status: i32) {
        if self.live_threads.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.finish(ExitReason::Exited(status));
        }
    }

    /// Number of live threads.
    pub fn live_threads(&self) -> usize {
        self.live_threads.load(Ordering::SeqCst)
    }

    /// Ends the program. The first reason wins; later ones (threads dying while the
    /// group exits) are ignored.
    pub fn finish(&self, reason: ExitReason) {
        let mut e = lock(&self.exit);
        if e.is_none() {
            *e = Some(reason);
            self.exiting.store(true, Ordering::SeqCst);
            self.exit_cv.notify_all();
        }
    }

    /// Whether the program is ending; vCPU threads check this after every kick.
    pub fn exiting(&self) -> bool {
        self.exiting.load(Ordering::SeqCst)
    }

    /// The exit reason, once there is one.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        lock(&self.exit).clone()
    }

    /// Blocks until the program ends, waking every `tick` to let the caller poll.
    pub fn wait_exit(&self, tick: Duration) -> Option<ExitReason> {
        let e = lock(&self.exit);
        let (e, _) = self
            .exit_cv
            .wait_timeout_while(e, tick, |e| e.is_none())
            .unwrap_or_else(|e| e.into_inner());
        e.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(ExitReason::Exited(3).status(), 3);
        assert_eq!(ExitReason::Exited(256 + 4).status(), 4);
        let s = ExitReason::Signaled {
            signal: 11,
            report: String::new(),
        };
        assert_eq!(s.status(), 139);
    }

    #[test]
    fn ever_threaded_stays_true_after_the_threads_end() {
        let e = ExitState::new(1000);
        assert!(!e.ever_threaded());
        assert_eq!(e.new_thread(), 1000);
        assert!(!e.ever_threaded(), "the main thread alone");
        assert_eq!(e.new_thread(), 1001);
        assert!(e.ever_threaded());
        e.thread_exited(0);
        assert_eq!(e.live_threads(), 1);
        assert!(e.ever_threaded(), "sticky: the second thread has ended");
    }
}
