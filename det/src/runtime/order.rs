//! The token under the runtime's [`Policy`](super::Policy): Kendo's [`TokenScheduler`], or,
//! for Lead and Follow, a token without logical time ([`FreeToken`]) that goes to the first
//! asker or to the primary's next logged turn. Like the scheduler these never block: the
//! runtime sleeps and asks again.

use std::collections::{BTreeMap, VecDeque};

use super::DetError;
use crate::{
    DetTid, DetTidAllocator, FollowPoll, Phase, SchedError, Start, TokenScheduler, TurnFollower,
    TurnLog,
};

fn wrong(tid: DetTid, op: &'static str, phase: Phase) -> SchedError {
    SchedError::WrongPhase { tid, op, phase }
}

/// A thread's state under [`Policy::Lead`] and [`Policy::Follow`]. The phases are those of
/// [`det::sched`] without `Left`: with no competition there is nothing to leave.
pub(super) struct FreeThread {
    phase: Phase,
    /// A `det_tick(0)` elides the next `det_start`, as under Kendo.
    skip_next: bool,
}

/// Who may take the token next under Lead and Follow.
pub(super) enum FreeMode {
    /// The askers in the order they asked; the token goes to the first of them.
    Lead {
        log: TurnLog,
        queue: VecDeque<DetTid>,
    },
    /// The primary's log. `heads` mirrors the threads of the follower's pending turns, so
    /// that the runtime knows whom to wake.
    Follow {
        follower: TurnFollower,
        heads: VecDeque<DetTid>,
    },
}

/// The token without logical time ([`Policy::Lead`], [`Policy::Follow`]). Like
/// [`TokenScheduler`] it never blocks; the runtime sleeps and calls again.
pub(super) struct FreeToken {
    tids: DetTidAllocator,
    threads: BTreeMap<DetTid, FreeThread>,
    /// The thread in a det section, if any.
    holder: Option<DetTid>,
    pub(super) mode: FreeMode,
}

impl FreeToken {
    pub(super) fn new(mode: FreeMode) -> Self {
        let mut t = FreeToken {
            tids: DetTidAllocator::new(),
            threads: BTreeMap::new(),
            holder: None,
            mode,
        };
        // Cannot fail: the first id.
        if let Ok(main) = t.tids.allocate() {
            t.threads.insert(
                main,
                FreeThread {
                    phase: Phase::Running,
                    skip_next: false,
                },
            );
        }
        t
    }

    pub(super) fn get(&mut self, det: DetTid) -> Result<&mut FreeThread, SchedError> {
        self.threads
            .get_mut(&det)
            .ok_or(SchedError::UnknownThread(det))
    }

    pub(super) fn det_start(&mut self, det: DetTid) -> Result<Start, DetError> {
        let free = self.holder.is_none();
        let th = self
            .threads
            .get_mut(&det)
            .ok_or(SchedError::UnknownThread(det))?;
        match th.phase {
            Phase::Running if th.skip_next => {
                th.skip_next = false;
                th.phase = Phase::InElidedSection;
                return Ok(Start::Elided);
            }
            Phase::Running | Phase::Waiting => {}
            phase => return Err(wrong(det, "det_start", phase).into()),
        }
        let queued = th.phase == Phase::Waiting;
        let grant = match &mut self.mode {
            FreeMode::Lead { log, queue } => {
                if free && queue.front().is_none_or(|&f| f == det) {
                    if queued {
                        queue.pop_front();
                    }
                    let turn = log.append(det);
                    log.pop_front();
                    Some(turn)
                } else {
                    if !queued {
                        queue.push_back(det);
                    }
                    None
                }
            }
            FreeMode::Follow { follower, heads } => match follower.poll(det) {
                Ok(FollowPoll::Go(turn)) => {
                    heads.pop_front();
                    Some(turn)
                }
                Ok(FollowPoll::Wait | FollowPoll::NeedLog) => None,
                Err(e) => return Err(DetError::Diverged(e)),
            },
        };
        match grant {
            Some(turn) => {
                th.phase = Phase::InSection;
                self.holder = Some(det);
                Ok(Start::Granted(turn))
            }
            None => {
                th.phase = Phase::Waiting;
                Ok(Start::Wait)
            }
        }
    }

    pub(super) fn det_end(&mut self, det: DetTid) -> Result<(), DetError> {
        let th = self
            .threads
            .get_mut(&det)
            .ok_or(SchedError::UnknownThread(det))?;
        match th.phase {
            Phase::InSection => {
                if let FreeMode::Follow { follower, .. } = &mut self.mode {
                    follower.end(det).map_err(DetError::Diverged)?;
                }
                th.phase = Phase::Running;
                self.holder = None;
                Ok(())
            }
            Phase::InElidedSection => {
                th.phase = Phase::Running;
                Ok(())
            }
            phase => Err(wrong(det, "det_end", phase).into()),
        }
    }

    /// `det_tick`: 0 elides the next `det_start`; n > 0 is a no-op (there is no logical
    /// time), refused in the same phases as under Kendo.
    pub(super) fn det_tick(&mut self, det: DetTid, n: u64) -> Result<(), SchedError> {
        let th = self.get(det)?;
        match (n, th.phase) {
            (0, Phase::Running | Phase::InSection | Phase::InElidedSection) => {
                th.skip_next = true;
                Ok(())
            }
            (_, Phase::Running | Phase::InElidedSection) => Ok(()),
            (_, phase) => Err(wrong(det, "det_tick", phase)),
        }
    }

    pub(super) fn spawn(&mut self, creator: DetTid) -> Result<DetTid, SchedError> {
        let phase = self.get(creator)?.phase;
        if phase != Phase::InSection {
            return Err(wrong(creator, "spawn", phase));
        }
        let tid = self.tids.allocate()?;
        self.threads.insert(
            tid,
            FreeThread {
                phase: Phase::Running,
                skip_next: false,
            },
        );
        Ok(tid)
    }

    /// Removes an exiting thread; a holder passes the token on. Follow: an error if the log
    /// still holds turns of the thread.
    pub(super) fn exit(&mut self, det: DetTid) -> Result<(), DetError> {
        self.threads
            .remove(&det)
            .ok_or(SchedError::UnknownThread(det))?;
        let held = self.holder == Some(det);
        if held {
            self.holder = None;
        }
        match &mut self.mode {
            FreeMode::Lead { queue, .. } => {
                queue.retain(|&t| t != det);
                Ok(())
            }
            FreeMode::Follow { follower, .. } => {
                if held {
                    follower.end(det).map_err(DetError::Diverged)?;
                }
                follower.exit(det).map_err(DetError::Diverged)
            }
        }
    }

    /// Takes back a `det_start` that was abandoned while waiting. Returns whether anything
    /// changed.
    pub(super) fn cancel(&mut self, det: DetTid) -> bool {
        let Some(th) = self.threads.get_mut(&det) else {
            return false;
        };
        if th.phase != Phase::Waiting {
            return false;
        }
        th.phase = Phase::Running;
        if let FreeMode::Lead { queue, .. } = &mut self.mode {
            queue.retain(|&t| t != det);
        }
        true
    }

    /// The thread that holds the token, or else the one that may take it next.
    pub(super) fn next(&self) -> Option<DetTid> {
        self.holder.or_else(|| match &self.mode {
            FreeMode::Lead { queue, .. } => queue.front().copied(),
            FreeMode::Follow { heads, .. } => heads.front().copied(),
        })
    }

    /// Failover: Follow becomes Lead (a follow-mode secondary goes live). Threads waiting
    /// for a turn of the log queue up in id order, as if they had just asked; a holder keeps
    /// the token. Under Lead already, nothing changes.
    pub(super) fn lead_from_now(&mut self) {
        if let FreeMode::Follow { .. } = &self.mode {
            // Its turns are logged nowhere: numbering starts afresh.
            let log = TurnLog::new();
            let queue = self
                .threads
                .iter()
                .filter(|(_, t)| t.phase == Phase::Waiting)
                .map(|(&d, _)| d)
                .collect();
            self.mode = FreeMode::Lead { log, queue };
        }
    }

    /// Whether `det_start` by `det` would be granted now.
    pub(super) fn may_go(&self, det: DetTid) -> bool {
        self.holder.is_none()
            && match &self.mode {
                FreeMode::Lead { queue, .. } => queue.front().is_none_or(|&f| f == det),
                FreeMode::Follow { heads, .. } => heads.front() == Some(&det),
            }
    }
}

/// The token under the runtime's [`Policy`].
pub(super) enum Order {
    Kendo(TokenScheduler),
    Free(FreeToken),
}

impl Order {
    pub(super) fn phase(&self, det: DetTid) -> Option<Phase> {
        match self {
            Order::Kendo(s) => s.phase(det),
            Order::Free(f) => f.threads.get(&det).map(|t| t.phase),
        }
    }

    pub(super) fn time(&self, det: DetTid) -> Option<u64> {
        match self {
            Order::Kendo(s) => s.time(det),
            Order::Free(_) => None,
        }
    }

    pub(super) fn det_start(&mut self, det: DetTid) -> Result<Start, DetError> {
        match self {
            Order::Kendo(s) => Ok(s.det_start(det)?),
            Order::Free(f) => f.det_start(det),
        }
    }

    pub(super) fn det_end(&mut self, det: DetTid) -> Result<(), DetError> {
        match self {
            Order::Kendo(s) => Ok(s.det_end(det)?),
            Order::Free(f) => f.det_end(det),
        }
    }

    pub(super) fn det_tick(&mut self, det: DetTid, n: u64) -> Result<(), DetError> {
        match self {
            Order::Kendo(s) => Ok(s.det_tick(det, n)?),
            Order::Free(f) => Ok(f.det_tick(det, n)?),
        }
    }

    pub(super) fn spawn(&mut self, creator: DetTid) -> Result<DetTid, DetError> {
        match self {
            Order::Kendo(s) => Ok(s.spawn(creator)?),
            Order::Free(f) => Ok(f.spawn(creator)?),
        }
    }

    pub(super) fn exit(&mut self, det: DetTid) -> Result<(), DetError> {
        match self {
            Order::Kendo(s) => Ok(s.exit(det)?),
            Order::Free(f) => f.exit(det),
        }
    }

    /// Kendo: out of the competition while blocked, with no pledge. Otherwise nothing.
    pub(super) fn leave(&mut self, det: DetTid) -> Result<(), DetError> {
        match self {
            Order::Kendo(s) => Ok(s.leave(det, None)?),
            Order::Free(_) => Ok(()),
        }
    }

    /// Follow: whether the primary's log holds a turn of `det` not yet taken.
    pub(super) fn has_pending_turn(&self, det: DetTid) -> bool {
        matches!(self, Order::Free(FreeToken { mode: FreeMode::Follow { heads, .. }, .. }) if heads.contains(&det))
    }

    /// Follow: the primary's turn log as followed so far (None under the other policies).
    pub(super) fn follower(&self) -> Option<&TurnFollower> {
        match self {
            Order::Free(FreeToken {
                mode: FreeMode::Follow { follower, .. },
                ..
            }) => Some(follower),
            _ => None,
        }
    }

    /// Follow: how many of the primary's turns have been taken (None under the other
    /// policies).
    pub(super) fn follow_taken(&self) -> Option<u64> {
        self.follower().map(TurnFollower::taken)
    }

    pub(super) fn holder_or_next(&self) -> Option<DetTid> {
        match self {
            Order::Kendo(s) => s.holder(),
            Order::Free(f) => f.next(),
        }
    }

    pub(super) fn may_go(&self, det: DetTid) -> bool {
        match self {
            Order::Kendo(s) => s.holder() == Some(det),
            Order::Free(f) => f.may_go(det),
        }
    }

    pub(super) fn cancel(&mut self, det: DetTid) -> bool {
        match self {
            // A Kendo waiter may stay `Waiting`: it holds nothing back.
            Order::Kendo(_) => false,
            Order::Free(f) => f.cancel(det),
        }
    }
}
