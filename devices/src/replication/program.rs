//! The process as replica's replication layer sees it ([`Program`]): replica never depends
//! on devices, so the process answers its few questions through this trait.

use std::sync::atomic::Ordering;

use det::{Turn, TurnError};
use replica::program::{Program, WentLive};
use replica::status::ReplicaCounters;

use crate::exit::ExitReason;
use crate::process::Process;

impl Program for Process {
    fn exiting(&self) -> bool {
        Process::exiting(self)
    }

    fn end_by_signal(&self, signal: i32) {
        self.finish(ExitReason::Signaled {
            signal,
            report: String::new(),
        });
    }

    fn syscalls(&self) -> u64 {
        self.stats.syscalls.load(Ordering::Relaxed)
    }

    fn live_threads(&self) -> usize {
        Process::live_threads(self)
    }

    fn turns_held(&self) -> Option<usize> {
        self.det.get().map(|d| d.turns_held())
    }

    fn push_turn(&self, turn: Turn) -> Result<(), TurnError> {
        match self.det.get() {
            Some(d) => d.push_turn(turn),
            None => Ok(()),
        }
    }

    fn close_log(&self) {
        if let Some(d) = self.det.get() {
            d.close_log();
        }
    }

    fn turns_taken(&self) -> Option<u64> {
        self.det
            .get()
            .map(|d| d.stats.turns.load(Ordering::Relaxed))
    }

    fn counters(&self) -> ReplicaCounters {
        let s = &self.stats;
        ReplicaCounters {
            exits: s.exits.load(Ordering::Relaxed),
            doorbell_syscalls: s.doorbell_syscalls.load(Ordering::Relaxed),
            syscalls_by_class: std::array::from_fn(|i| {
                s.syscalls_by_class[i].load(Ordering::Relaxed)
            }),
        }
    }

    fn describe_schedule(&self) -> Option<String> {
        self.det.get().map(|d| d.describe())
    }

    fn go_live(&self) -> WentLive {
        if let Some(d) = self.det.get() {
            d.go_live();
        }
        let went = super::takeover::take_over_descriptors(self);
        let discarded = super::in_doubt::reconcile_input(self);
        if discarded > 0 {
            tracing::info!(
                discarded,
                "input the primary had logged but not yet consumed was discarded"
            );
        }
        self.fs.go_live();
        for sig in self.signals.end_replay_only() {
            // Held while the secondary replayed: a stop the supervisor forwarded once the
            // primary died. The signal pump kicks the thread that takes it.
            if let crate::signals::Fate::Terminate =
                self.signals.send_process(sig, self.sigaction(sig))
            {
                self.finish(ExitReason::Signaled {
                    signal: sig,
                    report: String::new(),
                });
            }
        }
        went
    }
}
