//! The replication layer's side of the det runtime's schedule ([`ScheduleLink`]).

use std::sync::atomic::Ordering;
use std::time::Duration;

use det::record::RecordKind;
use det::{DetTid, Turn};
use replica::status::Counter;

use super::Replication;
use crate::det_runtime::{ScheduleLink, TimedWait, WaitNews};
use crate::process::lock;
use replica::findings::Mismatch;
use replica::wire::{self, ThreadRecord};

impl ScheduleLink for Replication {
    fn log_turn(&self, turn: Turn) {
        self.send(RecordKind::Turn, &turn.to_payload());
    }

    fn thread_started(&self, tid: DetTid) {
        self.send(RecordKind::ThreadStart, &wire::encode_thread_start(tid.0));
    }

    fn log_timed_wait(&self, tid: DetTid, outcome: TimedWait) {
        self.send_thread(
            tid.0,
            0,
            &ThreadRecord::TimedWait {
                took_turn: outcome.took_turn,
                timed_out: outcome.timed_out,
                at: outcome.reentry_at,
            },
        );
    }

    fn timed_wait_outcome(&self, tid: DetTid) -> Option<TimedWait> {
        let process = self.process()?;
        match self.take_until(&process, tid.0, true)? {
            (
                _,
                ThreadRecord::TimedWait {
                    took_turn,
                    timed_out,
                    at,
                },
            ) => Some(TimedWait {
                took_turn,
                timed_out,
                reentry_at: at,
            }),
            (seq, other) => {
                self.mismatch(
                    &process,
                    Mismatch {
                        kind: "schedule",
                        thread: tid.0,
                        syscall_seq: seq,
                        syscall: "futex".into(),
                        primary_syscall: Some(other.describe()),
                        primary: other.describe().into_bytes(),
                        secondary: b"futex timed wait".to_vec(),
                        detail: "the secondary waits on a futex with a deadline where the primary's thread did something else".into(),
                        ..Default::default()
                    },
                );
                None
            }
        }
    }

    fn follow_timed_wait(&self, tid: DetTid) -> WaitNews {
        let Some(s) = &self.secondary else {
            return WaitNews::Ended;
        };
        let mut q = lock(&s.queues);
        let head = q.by_tid.get(&tid.0).and_then(|d| d.front());
        match head {
            Some((
                _,
                ThreadRecord::TimedWait {
                    timed_out: true, ..
                },
                _,
            )) => {
                if let Some((_, _, len)) = q.by_tid.get_mut(&tid.0).and_then(|d| d.pop_front()) {
                    q.buffered_bytes = q.buffered_bytes.saturating_sub(len);
                }
                self.status.add(Counter::RecordsConsumed, 1);
                WaitNews::TimedOut
            }
            Some(_) => WaitNews::Passed,
            None if q.end.is_some() || q.closed.is_some() => WaitNews::Ended,
            None => WaitNews::Unknown,
        }
    }

    fn schedule_diverged(&self, tid: DetTid, error: &det::TurnError) {
        let Some(s) = &self.secondary else { return };
        let ended = {
            let q = lock(&s.queues);
            q.end.is_some() || q.closed.is_some()
        };
        if ended {
            // The primary's log is over. A thread that wants a turn beyond it may just be
            // one the primary's exit cut short; the drain decides: the program reaching its
            // own end is agreement, every thread waiting for the log is a divergence.
            *lock(&s.late_schedule) = Some(format!("thread {tid}: {error}"));
            s.waiting.fetch_add(1, Ordering::SeqCst);
            if let Some(p) = self.process() {
                while !p.exiting() && !s.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            s.waiting.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        if let Some(process) = self.process() {
            self.mismatch(
                &process,
                Mismatch {
                    kind: "schedule",
                    thread: tid.0,
                    detail: error.to_string(),
                    ..Default::default()
                },
            );
        }
    }
}
