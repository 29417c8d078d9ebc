//! The det runtime's [`ScheduleLink`] of a replicated process: replica's [`Endpoint`]
//! (`replica::endpoint`) implements it; the process's replication hands it on.

use det::link::{ScheduleLink, TimedWait, WaitNews};
use det::{DetTid, Turn, TurnError};

use super::Replication;

impl ScheduleLink for Replication {
    fn log_turn(&self, turn: Turn) {
        self.endpoint.log_turn(turn);
    }

    fn thread_started(&self, tid: DetTid) {
        self.endpoint.thread_started(tid);
    }

    fn log_timed_wait(&self, tid: DetTid, outcome: TimedWait) {
        self.endpoint.log_timed_wait(tid, outcome);
    }

    fn timed_wait_outcome(&self, tid: DetTid) -> Option<TimedWait> {
        self.endpoint.timed_wait_outcome(tid)
    }

    fn follow_timed_wait(&self, tid: DetTid) -> WaitNews {
        self.endpoint.follow_timed_wait(tid)
    }

    fn schedule_diverged(&self, tid: DetTid, error: &TurnError) {
        self.endpoint.schedule_diverged(tid, error);
    }
}
