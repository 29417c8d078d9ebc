//! What the runtime's unit tests share: a fake process, polling helpers, and a
//! [`ScheduleLink`] that records what a primary reports and replays it to a secondary.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use guest_memory::guest_mem::GuestMemory;

use super::{DetRuntime, FutexWait, ProcessView, ScheduleLink, TimedWait, WaitNews};
use crate::{DetTid, Turn, TurnError};

/// A program as the runtime sees it: a little memory and an exit flag.
pub(super) struct FakeProcess {
    mem: GuestMemory,
    exit: Mutex<Option<i32>>,
    exiting: AtomicBool,
}

impl FakeProcess {
    /// Ends the program with exit status `code`; the first one wins.
    pub(super) fn finish(&self, code: i32) {
        let mut e = super::lock(&self.exit);
        if e.is_none() {
            *e = Some(code);
            self.exiting.store(true, Ordering::SeqCst);
        }
    }

    /// The exit status, once the program ends.
    pub(super) fn exit_reason(&self) -> Option<i32> {
        *super::lock(&self.exit)
    }
}

impl ProcessView for FakeProcess {
    fn exiting(&self) -> bool {
        self.exiting.load(Ordering::SeqCst)
    }

    fn memory(&self) -> &GuestMemory {
        &self.mem
    }
}

/// A fresh program that is not ending.
pub(super) fn process() -> FakeProcess {
    FakeProcess {
        mem: GuestMemory::new(4 << 20).unwrap(),
        exit: Mutex::new(None),
        exiting: AtomicBool::new(false),
    }
}

/// Polls `state` until it holds, for at most 5 s: the tests synchronise with another
/// thread by what the runtime says of it, not by a guess at how long it needs.
pub(super) fn wait_for(what: &str, state: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while !state() {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// How many token acquisitions have had to wait so far: a thread that found it may not
/// go counts one before it parks, so a rise past an earlier reading shows that it got
/// there (the Kendo secondary's log gate parks a thread without changing its phase).
pub(super) fn token_waits(rt: &DetRuntime) -> u64 {
    rt.stats.waits.load(Ordering::SeqCst)
}

/// Whether guest thread `tid` is queued in a futex wait.
pub(super) fn in_futex_wait(rt: &DetRuntime, tid: i64) -> bool {
    let g = rt.locked();
    g.futex.iter().any(|(_, q)| q.iter().any(|w| w.tid == tid))
}

/// Whether guest thread `tid` has left the competition for a replayed blocking call.
pub(super) fn awaits_record(rt: &DetRuntime, tid: i64) -> bool {
    let g = rt.locked();
    g.threads
        .get(&tid)
        .is_some_and(|s| g.awaiting_record.contains(&s.det))
}

pub(super) fn wait(val: u32, deadline: Option<Instant>) -> FutexWait {
    FutexWait {
        val,
        bitset: u32::MAX,
        deadline,
    }
}

/// A link that records what a primary reports, and hands a secondary the outcomes it was
/// given (a little late, as a lagging primary would).
#[derive(Default)]
pub(super) struct TestLink {
    pub(super) turns: Mutex<Vec<Turn>>,
    pub(super) logged: Mutex<Vec<(DetTid, TimedWait)>>,
    pub(super) outcomes: Mutex<BTreeMap<DetTid, VecDeque<TimedWait>>>,
    pub(super) diverged: Mutex<Vec<(DetTid, TurnError)>>,
}

impl TestLink {
    /// The secondary's link, holding the outcomes that `primary` was told.
    pub(super) fn replaying(primary: &TestLink) -> Self {
        let link = TestLink::default();
        for &(tid, o) in primary.logged.lock().unwrap().iter() {
            let mut outcomes = link.outcomes.lock().unwrap();
            outcomes.entry(tid).or_default().push_back(o);
        }
        link
    }
}

impl ScheduleLink for TestLink {
    fn log_turn(&self, turn: Turn) {
        self.turns.lock().unwrap().push(turn);
    }

    fn thread_started(&self, _: DetTid) {}

    fn log_timed_wait(&self, tid: DetTid, outcome: TimedWait) {
        self.logged.lock().unwrap().push((tid, outcome));
    }

    fn timed_wait_outcome(&self, tid: DetTid) -> Option<TimedWait> {
        std::thread::sleep(Duration::from_millis(3));
        self.outcomes.lock().unwrap().get_mut(&tid)?.pop_front()
    }

    fn follow_timed_wait(&self, tid: DetTid) -> WaitNews {
        let mut outcomes = self.outcomes.lock().unwrap();
        match outcomes.get_mut(&tid).and_then(|q| q.front().copied()) {
            Some(o) if o.timed_out => {
                outcomes.get_mut(&tid).map(|q| q.pop_front());
                WaitNews::TimedOut
            }
            Some(_) => WaitNews::Passed,
            None => WaitNews::Ended,
        }
    }

    fn schedule_diverged(&self, tid: DetTid, error: &TurnError) {
        self.diverged.lock().unwrap().push((tid, error.clone()));
    }
}
