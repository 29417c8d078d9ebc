//! Kendo-style logical clocks and the det token (the `det` mode of DESIGN.md §5).
//!
//! Each thread has a logical time. The threads that *compete* own keys `(time, tid)`, and the
//! token belongs to the smallest key. `det_start` succeeds only for the holder; `det_end` adds 1
//! to the caller's time and so passes the token on; `det_tick(n)` adds `n`.
//!
//! Invariants that every operation keeps (the property tests check them):
//! - a thread inside a det section is the holder, so det sections exclude each other;
//! - granted turns have strictly increasing keys, because every key that joins the competition
//!   (spawn, tick, re-entry) lies above the last granted one. That is what makes the order of
//!   sections independent of the real-time order of the calls.
//!
//! The scheduler never blocks. The VMM keeps it under a mutex; after any call that changes it,
//! the holder may have changed, so the VMM wakes the waiters and they call `det_start` again.

use crate::tid::{DetTid, DetTidAllocator, TidError};
use crate::turn::Turn;
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// Where a thread stands with respect to the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Competes for the token; outside any det section.
    Running,
    /// Called `det_start` while another thread held the token.
    Waiting,
    /// Inside a det section: holds the token.
    InSection,
    /// Inside a det section whose `det_start` was elided by `det_tick(0)`; holds nothing.
    InElidedSection,
    /// Blocked in a syscall. With `resume_at` the thread still competes at that time (it has
    /// pledged to re-enter there, so nobody can get past it while it is away); without it, the
    /// thread does not compete at all.
    Left {
        /// The pledged re-entry time, if any.
        resume_at: Option<u64>,
    },
}

/// The answer to `det_start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Start {
    /// The caller holds the token and its section may run; the turn numbers that section.
    Granted(Turn),
    /// `det_tick(0)` came first: the section runs without the token and takes no turn.
    Elided,
    /// Another thread holds the token: wait for a change and call `det_start` again.
    Wait,
}

/// Errors of the scheduler: a call that the thread's state does not allow. None of them
/// changes the state.
#[allow(missing_docs)] // Each variant's doc names its fields.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SchedError {
    /// The id names no live thread.
    #[error("unknown thread {0}")]
    UnknownThread(DetTid),
    /// `op` is not allowed in the thread's current `phase`.
    #[error("{tid}: {op} is not allowed in phase {phase:?}")]
    WrongPhase {
        tid: DetTid,
        op: &'static str,
        phase: Phase,
    },
    /// The logical time would pass `u64::MAX`.
    #[error("{0}: logical time overflow")]
    TimeOverflow(DetTid),
    /// A re-entry (or pledge) `at` below `floor`, the earliest time that keeps the schedule
    /// deterministic.
    #[error("{tid}: re-entry at {at} is before the earliest allowed time {floor}")]
    ReentryTooEarly { tid: DetTid, at: u64, floor: u64 },
    /// A re-entry `at` another time than the one `pledged` in `leave`.
    #[error("{tid}: re-entry at {at}, but the thread pledged {pledged}")]
    ReentryMismatch { tid: DetTid, at: u64, pledged: u64 },
    /// No thread id is left for a new thread.
    #[error(transparent)]
    Tid(#[from] TidError),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Thread {
    time: u64,
    phase: Phase,
    skip_next: bool,
    turns: u64,
}

impl Thread {
    fn new(time: u64) -> Self {
        Thread {
            time,
            phase: Phase::Running,
            skip_next: false,
            turns: 0,
        }
    }

    /// The time at which the thread competes, if it does.
    fn key_time(&self) -> Option<u64> {
        match self.phase {
            Phase::Left { resume_at } => resume_at,
            _ => Some(self.time),
        }
    }
}

fn wrong(tid: DetTid, op: &'static str, phase: Phase) -> SchedError {
    SchedError::WrongPhase { tid, op, phase }
}

fn add(tid: DetTid, time: u64, n: u64) -> Result<u64, SchedError> {
    time.checked_add(n).ok_or(SchedError::TimeOverflow(tid))
}

/// Logical clocks and the det token for the threads of one program.
///
/// Thread lifecycle: created by [`spawn`](Self::spawn) (or present from the start), then any
/// number of det sections (`det_start` .. `det_end`), ticks and `leave`/`reenter` pairs, then
/// [`exit`](Self::exit).
///
/// `det_tick(tid, 0)` elides the thread's *next* `det_start`: that call returns
/// [`Start::Elided`] at once, whoever holds the token, takes no turn, and the matching
/// `det_end` leaves the logical time unchanged. So an elided section is invisible to the
/// schedule, which is only sound for sections that cannot affect output (allocator locks).
/// Several `det_tick(0)` in a row still elide one section.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenScheduler {
    threads: BTreeMap<DetTid, Thread>,
    // The competing keys, kept beside `threads` so that the holder is the first element.
    competing: BTreeSet<(u64, DetTid)>,
    tids: DetTidAllocator,
    last_grant: Option<(u64, DetTid)>,
    granted: u64,
}

impl Default for TokenScheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenScheduler {
    /// A scheduler with the main thread ([`DetTid::MAIN`]) at logical time 0.
    pub fn new() -> Self {
        Self::with_threads(1)
    }

    /// A scheduler with `n` threads (`t0`..`t{n-1}`) at logical time 0, as if they all existed
    /// before the first turn.
    pub fn with_threads(n: u32) -> Self {
        let mut s = TokenScheduler {
            threads: BTreeMap::new(),
            competing: BTreeSet::new(),
            tids: DetTidAllocator::new(),
            last_grant: None,
            granted: 0,
        };
        for _ in 0..n {
            // Cannot fail: n < 2^32 ids.
            if let Ok(tid) = s.tids.allocate() {
                s.insert(tid, 0);
            }
        }
        s
    }

    fn insert(&mut self, tid: DetTid, time: u64) {
        self.threads.insert(tid, Thread::new(time));
        self.competing.insert((time, tid));
    }

    fn get(&self, tid: DetTid) -> Result<&Thread, SchedError> {
        self.threads.get(&tid).ok_or(SchedError::UnknownThread(tid))
    }

    /// Applies `f` to the thread and keeps `competing` in step. `f` validates before it mutates,
    /// so an error leaves everything as it was.
    fn update<R>(
        &mut self,
        tid: DetTid,
        f: impl FnOnce(&mut Thread) -> Result<R, SchedError>,
    ) -> Result<R, SchedError> {
        let th = self
            .threads
            .get_mut(&tid)
            .ok_or(SchedError::UnknownThread(tid))?;
        if let Some(t) = th.key_time() {
            self.competing.remove(&(t, tid));
        }
        let r = f(th);
        if let Some(t) = th.key_time() {
            self.competing.insert((t, tid));
        }
        r
    }

    /// Creates a thread. The creator must be inside a det section, so that both replicas
    /// allocate ids in the same order. The new thread starts at the creator's time + 1: strictly
    /// after the section that created it, which keeps granted keys increasing.
    pub fn spawn(&mut self, creator: DetTid) -> Result<DetTid, SchedError> {
        let c = self.get(creator)?;
        if c.phase != Phase::InSection {
            return Err(wrong(creator, "spawn", c.phase));
        }
        let time = add(creator, c.time, 1)?;
        let tid = self.tids.allocate()?;
        self.insert(tid, time);
        Ok(tid)
    }

    /// Asks for the token. Idempotent while the answer is [`Start::Wait`].
    pub fn det_start(&mut self, tid: DetTid) -> Result<Start, SchedError> {
        let is_holder = self.holder() == Some(tid);
        let global_seq = self.granted;
        let start = self.update(tid, |th| match th.phase {
            Phase::Running if th.skip_next => {
                th.skip_next = false;
                th.phase = Phase::InElidedSection;
                Ok(Start::Elided)
            }
            Phase::Running | Phase::Waiting if is_holder => {
                th.phase = Phase::InSection;
                th.turns += 1;
                Ok(Start::Granted(Turn {
                    tid,
                    thread_seq: th.turns - 1,
                    global_seq,
                }))
            }
            Phase::Running | Phase::Waiting => {
                th.phase = Phase::Waiting;
                Ok(Start::Wait)
            }
            phase => Err(wrong(tid, "det_start", phase)),
        })?;
        if let Start::Granted(_) = start {
            self.last_grant = self.threads.get(&tid).map(|th| (th.time, tid));
            self.granted += 1;
        }
        Ok(start)
    }

    /// Ends a det section: +1 to the logical time (none for an elided section).
    pub fn det_end(&mut self, tid: DetTid) -> Result<(), SchedError> {
        self.update(tid, |th| match th.phase {
            Phase::InSection => {
                th.time = add(tid, th.time, 1)?;
                th.phase = Phase::Running;
                Ok(())
            }
            Phase::InElidedSection => {
                th.phase = Phase::Running;
                Ok(())
            }
            phase => Err(wrong(tid, "det_end", phase)),
        })
    }

    /// Adds `n` to the logical time; `n == 0` elides the next `det_start` instead.
    ///
    /// `n > 0` is refused inside a det section, because it would hand the token on while the
    /// section still runs.
    pub fn det_tick(&mut self, tid: DetTid, n: u64) -> Result<(), SchedError> {
        self.update(tid, |th| match (n, th.phase) {
            (0, Phase::Running | Phase::InSection | Phase::InElidedSection) => {
                th.skip_next = true;
                Ok(())
            }
            (_, Phase::Running | Phase::InElidedSection) => {
                th.time = add(tid, th.time, n)?;
                Ok(())
            }
            (_, phase) => Err(wrong(tid, "det_tick", phase)),
        })
    }

    /// The thread blocks in a syscall (from [`Phase::Running`] only).
    ///
    /// `resume_at: None` takes it out of the competition: used where the re-entry time is not
    /// known yet (the primary); it is decided later, logged, and given to [`reenter`](Self::reenter).
    /// `resume_at: Some(t)` pledges re-entry at `t`: the thread keeps competing at `t`, so the
    /// other threads run up to `t` and then wait for it. The secondary uses this once it knows
    /// `t` from the log; until then it keeps the thread `Running`, which holds the others back
    /// rather than let them pass a point they must not pass.
    pub fn leave(&mut self, tid: DetTid, resume_at: Option<u64>) -> Result<(), SchedError> {
        self.update(tid, |th| match th.phase {
            Phase::Running => {
                if let Some(at) = resume_at.filter(|&at| at < th.time) {
                    return Err(SchedError::ReentryTooEarly {
                        tid,
                        at,
                        floor: th.time,
                    });
                }
                th.phase = Phase::Left { resume_at };
                Ok(())
            }
            phase => Err(wrong(tid, "leave", phase)),
        })
    }

    /// The earliest time at which `tid` may re-enter: not below its own time, and with a key
    /// above the last granted turn (a smaller key would belong before a turn already taken).
    pub fn reentry_floor(&self, tid: DetTid) -> Result<u64, SchedError> {
        let th = self.get(tid)?;
        let after_grant = match self.last_grant {
            Some((t, g)) if tid <= g => add(tid, t, 1)?,
            Some((t, _)) => t,
            None => 0,
        };
        Ok(th.time.max(after_grant))
    }

    /// The thread's syscall returned: it competes again from logical time `at`, which must be
    /// the pledged time if there was one, and at least [`reentry_floor`](Self::reentry_floor).
    pub fn reenter(&mut self, tid: DetTid, at: u64) -> Result<(), SchedError> {
        let floor = self.reentry_floor(tid)?;
        self.update(tid, |th| match th.phase {
            Phase::Left {
                resume_at: Some(pledged),
            } if pledged != at => Err(SchedError::ReentryMismatch { tid, at, pledged }),
            Phase::Left { resume_at: None } if at < floor => {
                Err(SchedError::ReentryTooEarly { tid, at, floor })
            }
            Phase::Left { .. } => {
                th.time = at;
                th.phase = Phase::Running;
                Ok(())
            }
            phase => Err(wrong(tid, "reenter", phase)),
        })
    }

    /// Removes an exiting thread, in any phase; a holder in a section passes the token on.
    pub fn exit(&mut self, tid: DetTid) -> Result<(), SchedError> {
        let th = self
            .threads
            .remove(&tid)
            .ok_or(SchedError::UnknownThread(tid))?;
        if let Some(t) = th.key_time() {
            self.competing.remove(&(t, tid));
        }
        Ok(())
    }

    /// The thread the token belongs to: the smallest `(time, tid)` among competing threads.
    /// It may be running outside a section or away on a pledge; either way the others wait.
    pub fn holder(&self) -> Option<DetTid> {
        self.competing.first().map(|&(_, tid)| tid)
    }

    /// The global sequence number of the turn that `det_start(tid)` would be granted now, or
    /// None if it would elide its section or wait. Changes nothing: a replica that takes
    /// turns only as another's log allows asks this before it asks for the token.
    pub fn would_grant(&self, tid: DetTid) -> Option<u64> {
        let th = self.threads.get(&tid)?;
        match th.phase {
            Phase::Running if th.skip_next => None,
            Phase::Running | Phase::Waiting if self.holder() == Some(tid) => Some(self.granted),
            _ => None,
        }
    }

    /// The threads blocked in `det_start`, by id.
    pub fn waiting(&self) -> impl Iterator<Item = DetTid> + '_ {
        self.threads
            .iter()
            .filter(|(_, th)| th.phase == Phase::Waiting)
            .map(|(&tid, _)| tid)
    }

    /// Every live thread with its logical time and phase, by id.
    pub fn threads(&self) -> impl Iterator<Item = (DetTid, u64, Phase)> + '_ {
        self.threads
            .iter()
            .map(|(&tid, th)| (tid, th.time, th.phase))
    }

    /// The thread's logical time.
    pub fn time(&self, tid: DetTid) -> Option<u64> {
        self.threads.get(&tid).map(|th| th.time)
    }

    /// The thread's phase.
    pub fn phase(&self, tid: DetTid) -> Option<Phase> {
        self.threads.get(&tid).map(|th| th.phase)
    }

    /// How many turns have been granted (the next turn's `global_seq`).
    pub fn granted_turns(&self) -> u64 {
        self.granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: DetTid = DetTid(0);
    const T1: DetTid = DetTid(1);

    fn granted(s: &mut TokenScheduler, tid: DetTid) -> bool {
        matches!(s.det_start(tid), Ok(Start::Granted(_)))
    }

    #[test]
    fn token_goes_to_smallest_time_then_smallest_tid() {
        let mut s = TokenScheduler::with_threads(2);
        assert_eq!(s.det_start(T1), Ok(Start::Wait));
        assert_eq!(s.waiting().collect::<Vec<_>>(), vec![T1]);
        assert!(granted(&mut s, T0));
        s.det_end(T0).unwrap();
        let turn = Turn {
            tid: T1,
            thread_seq: 0,
            global_seq: 1,
        };
        assert_eq!(s.det_start(T1), Ok(Start::Granted(turn)));
        s.det_end(T1).unwrap();
        s.det_tick(T0, 5).unwrap();
        assert_eq!(s.holder(), Some(T1));
        assert_eq!((s.time(T0), s.time(T1)), (Some(6), Some(1)));
    }

    #[test]
    fn tick_zero_elides_one_section_without_time() {
        let mut s = TokenScheduler::with_threads(2);
        s.det_tick(T1, 0).unwrap();
        s.det_tick(T1, 0).unwrap();
        assert_eq!(s.det_start(T1), Ok(Start::Elided));
        s.det_end(T1).unwrap();
        assert_eq!(s.time(T1), Some(0));
        assert_eq!(s.det_start(T1), Ok(Start::Wait));
        assert_eq!(s.granted_turns(), 0);
    }

    #[test]
    fn spawn_needs_the_token_and_starts_after_the_creator() {
        let mut s = TokenScheduler::new();
        assert!(matches!(s.spawn(T0), Err(SchedError::WrongPhase { .. })));
        assert!(granted(&mut s, T0));
        assert_eq!(s.spawn(T0), Ok(T1));
        assert_eq!(s.time(T1), Some(1));
        assert_eq!(s.holder(), Some(T0));
    }

    #[test]
    fn would_grant_predicts_det_start() {
        let mut s = TokenScheduler::with_threads(2);
        assert_eq!(s.would_grant(T0), Some(0));
        assert_eq!(s.would_grant(T1), None);
        assert!(granted(&mut s, T0));
        // In its section: det_start is not allowed, so nothing would be granted.
        assert_eq!(s.would_grant(T0), None);
        s.det_end(T0).unwrap();
        assert_eq!(s.would_grant(T1), Some(1));
        s.det_tick(T1, 0).unwrap();
        // An elided section takes no turn.
        assert_eq!(s.would_grant(T1), None);
        let before = s.clone();
        assert_eq!(s.would_grant(T0), None);
        assert_eq!(s, before, "would_grant changed the state");
    }

    #[test]
    fn leave_and_reenter() {
        let mut s = TokenScheduler::with_threads(2);
        s.leave(T0, None).unwrap();
        assert_eq!(s.holder(), Some(T1));
        assert!(granted(&mut s, T1));
        s.det_end(T1).unwrap();
        // T1 took turn (0, t1), so t0 must come back at 1 or later.
        assert_eq!(s.reentry_floor(T0), Ok(1));
        let early = SchedError::ReentryTooEarly {
            tid: T0,
            at: 0,
            floor: 1,
        };
        assert_eq!(s.reenter(T0, 0), Err(early));
        s.reenter(T0, 1).unwrap();
        assert_eq!(s.holder(), Some(T0));
        // A pledge keeps others from passing the pledged time.
        s.leave(T0, Some(3)).unwrap();
        s.det_tick(T1, 5).unwrap();
        assert_eq!(s.holder(), Some(T0));
        let mismatch = SchedError::ReentryMismatch {
            tid: T0,
            at: 4,
            pledged: 3,
        };
        assert_eq!(s.reenter(T0, 4), Err(mismatch));
        s.reenter(T0, 3).unwrap();
        s.exit(T0).unwrap();
        assert_eq!(s.holder(), Some(T1));
        assert_eq!(s.exit(T0), Err(SchedError::UnknownThread(T0)));
    }

    #[test]
    fn wrong_phases_and_overflow_are_errors() {
        let mut s = TokenScheduler::with_threads(2);
        assert!(s.det_end(T0).is_err());
        assert!(granted(&mut s, T0));
        assert!(s.det_start(T0).is_err());
        assert!(s.det_tick(T0, 1).is_err());
        assert!(s.leave(T0, None).is_err());
        s.det_end(T0).unwrap();
        assert_eq!(s.det_tick(T0, u64::MAX), Err(SchedError::TimeOverflow(T0)));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Start(u32),
        End(u32),
        Tick(u32, u64),
        Leave(u32, Option<u64>),
        Reenter(u32, u64),
        Spawn(u32),
        Exit(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        let t = 0u32..6;
        prop_oneof![
            4 => t.clone().prop_map(Op::Start),
            4 => t.clone().prop_map(Op::End),
            2 => (t.clone(), 0u64..4).prop_map(|(t, n)| Op::Tick(t, n)),
            1 => (t.clone(), proptest::option::of(0u64..20)).prop_map(|(t, r)| Op::Leave(t, r)),
            1 => (t.clone(), 0u64..20).prop_map(|(t, a)| Op::Reenter(t, a)),
            1 => t.clone().prop_map(Op::Spawn),
            1 => t.prop_map(Op::Exit),
        ]
    }

    proptest! {
        #[test]
        fn invariants_hold_under_random_calls(ops in proptest::collection::vec(op(), 0..80)) {
            let mut s = TokenScheduler::with_threads(3);
            let mut last_key: Option<(u64, DetTid)> = None;
            for op in ops {
                let before = s.clone();
                let r = match op {
                    Op::Start(t) => s.det_start(DetTid(t)).map(|st| {
                        if let Start::Granted(turn) = st {
                            let key = (s.time(DetTid(t)).unwrap(), DetTid(t));
                            assert!(last_key < Some(key), "grant keys must increase");
                            assert_eq!(turn.global_seq, before.granted_turns());
                            last_key = Some(key);
                        }
                    }),
                    Op::End(t) => s.det_end(DetTid(t)),
                    Op::Tick(t, n) => s.det_tick(DetTid(t), n),
                    Op::Leave(t, r) => s.leave(DetTid(t), r),
                    Op::Reenter(t, a) => s.reenter(DetTid(t), a),
                    Op::Spawn(t) => s.spawn(DetTid(t)).map(drop),
                    Op::Exit(t) => s.exit(DetTid(t)),
                };
                if r.is_err() {
                    prop_assert_eq!(&s, &before, "an error must not change the state");
                }
                for (tid, time, _) in before.threads() {
                    if let Some(now) = s.time(tid) {
                        prop_assert!(now >= time, "time went back for {}", tid);
                    }
                }
                let naive = s
                    .threads()
                    .filter_map(|(tid, time, phase)| match phase {
                        Phase::Left { resume_at } => resume_at.map(|r| (r, tid)),
                        _ => Some((time, tid)),
                    })
                    .min()
                    .map(|(_, tid)| tid);
                prop_assert_eq!(s.holder(), naive);
                let in_section: Vec<_> = s
                    .threads()
                    .filter(|&(_, _, p)| p == Phase::InSection)
                    .map(|(tid, _, _)| tid)
                    .collect();
                prop_assert!(in_section.len() <= 1);
                if let Some(&tid) = in_section.first() {
                    prop_assert_eq!(s.holder(), Some(tid));
                }
            }
        }
    }
}
