//! The det runtime: the VMM's side of deterministic execution (DESIGN.md §5).
//!
//! One [`DetRuntime`] per program run with `--det` (or per replica of `ditto pair`). It keeps
//! the token under a mutex and gives every program thread its own condition variable, so a
//! hand-off wakes exactly the next holder. It maps guest thread ids (which are themselves
//! allocated under the token, so they are deterministic too) to deterministic thread ids, and
//! it keeps the futex wait queues: futexes are emulated here, so that who is woken, and when a
//! woken thread competes again, follow the token order instead of the host kernel's.
//!
//! How the token is handed out is the runtime's [`Policy`]:
//! - [`Policy::Kendo`] (`ditto run --det`, and both replicas in the `det` mode): the token
//!   belongs to the minimal (logical time, DetTid) ([`det::TokenScheduler`]).
//!   In a pair the primary also logs its turns while one of its threads is away in a
//!   blocking call, and the secondary, while its copy of such a thread waits for the
//!   record, takes only turns that log shows (`Inner::gated`).
//! - [`Policy::Lead`] (the primary in the `follow` mode): the token goes to whichever thread
//!   asks first (threads that wait for it get it in the order they asked), and every grant
//!   is logged as a [`Turn`].
//! - [`Policy::Follow`] (the secondary in the `follow` mode): the token goes strictly in the
//!   order of the primary's turn log ([`det::TurnFollower`]), fed by
//!   [`DetRuntime::push_turn`].
//!
//! # The fast path (the det page)
//!
//! Under Kendo a thread may post its `det_end` and `det_tick(n > 0)` in its slot of a
//! [`DetPage`] instead of making the hypercall (the slot protocol is the guest ABI, defined
//! in `guest-images/include/ditto.h`). The runtime folds every slot into the scheduler
//! whenever it takes its lock, before it decides anything, so the holder is always computed
//! from the full truth. A posted change can only be late, never wrong: until it is folded a
//! thread looks *earlier* than it is, which can only make another thread wait, never let it
//! pass. And nobody waits on a late post: while a thread sleeps waiting for the token (or
//! two or more wait) every slot says CALL, so the thread that must move makes the real
//! hypercall, which wakes the waiter; a lone waiter that still spins watches the holder's
//! slot itself, and takes the lock when the holder posts.
//!
//! The runtime never decides anything on its own: every change of the schedule happens in a
//! call made by a program thread. The only real-time effects are futex timeouts and external
//! blocking calls (sockets, terminals, sleeps): the non-deterministic events of DESIGN.md §5.
//! A replicated runtime ([`DetRuntime::replicated`]) reports them to its [`ScheduleLink`] on
//! the primary and takes them from it on the secondary.
//!
//! # Futexes in the follow mode
//!
//! Under Lead and Follow (the `follow` mode) futex operations are not turns.
//!
//! Whether a program makes a futex call at all depends on timing: glibc's internal locks
//! call futex only when contended (pthread_kill against a thread that is exiting, say),
//! and libditto's condition wait checks its flag outside any section before it sleeps.
//! Under Kendo that only shifts a thread's logical time, and both replicas compute their
//! own schedule. A follow-mode log, though, must hold the same turns, thread by thread,
//! on both replicas; one more futex call on one side made the secondary wait for a turn
//! the primary never took. What the program's synchronization decides is decided in its
//! det sections (the mutex trylocks, the condition variable's waiter list), whose order
//! the log fixes; a futex wait there is only a sleep until that state changes, so both
//! replicas may do it their own way. (A raw futex protocol outside libditto is as racy
//! under follow mode as a data race; det mode orders it.)

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use det::{
    DetTid, DetTidAllocator, FollowPoll, Phase, SchedError, Start, TokenScheduler, Turn, TurnError,
    TurnFollower, TurnLog,
};
use thiserror::Error;

pub use det::link::{ScheduleLink, TimedWait, WaitNews};

use crate::errno::Errno;
use crate::process::{lock, Process};
use crate::safecopy::{GuestU32, GuestU64};
use crate::syscalls::sys_det::abi;

/// How often a thread waiting for the token checks whether the program is ending.
const EXIT_POLL: Duration = Duration::from_millis(10);

/// How often a follow-mode secondary in a timed futex wait looks at the primary's log.
const FOLLOW_POLL: Duration = Duration::from_millis(2);

/// How long a woken follow-mode secondary waits for the log to say whether the primary's
/// thread timed out instead (a record in flight), when nothing else of that thread comes.
const FOLLOW_WOKEN_GRACE: Duration = Duration::from_secs(1);

/// How long a thread waiting for the token spins (yielding the CPU) before it sleeps: a
/// hand-off usually comes within microseconds, and a sleep/wake pair costs more.
const SPIN: Duration = Duration::from_micros(50);

/// Errors of the det runtime. Each one comes from a program's call and is reported to it as
/// an errno; none of them stops the program.
#[derive(Debug, Error)]
pub enum DetError {
    /// The calling thread is not registered (it cannot happen for threads ditto created).
    #[error("guest thread {0} is not known to the det runtime")]
    UnknownThread(i64),
    /// The scheduler refused the call (e.g. `det_end` outside a section).
    #[error(transparent)]
    Sched(#[from] SchedError),
    /// The program is ending; the call is abandoned.
    #[error("the program is ending")]
    Exiting,
    /// [`Policy::Follow`]: the primary's schedule cannot be followed (reported to the
    /// [`ScheduleLink`] too). The call is abandoned.
    #[error("the primary's schedule cannot be followed: {0}")]
    Diverged(TurnError),
}

impl From<DetError> for Errno {
    fn from(e: DetError) -> Errno {
        match e {
            DetError::UnknownThread(_) => Errno::ESRCH,
            DetError::Sched(SchedError::TimeOverflow(_)) => Errno::ERANGE,
            DetError::Sched(_) => Errno::EINVAL,
            DetError::Exiting | DetError::Diverged(_) => Errno::EINTR,
        }
    }
}

/// How the token is handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// The `det` mode: to the minimal (logical time, DetTid), computed by each replica itself.
    Kendo,
    /// The `follow` mode's primary: to whichever thread asks first (a thread that asks while
    /// the token is held waits, and waiters get it in the order they asked); every grant is
    /// logged as a [`Turn`] ([`ScheduleLink::log_turn`]). No logical time.
    Lead,
    /// The `follow` mode's secondary: strictly in the order of the primary's turns, fed by
    /// [`DetRuntime::push_turn`]. No logical time.
    Follow,
}

/// How the caller of an implicit det point holds the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// The runtime started a section for this call and ends it afterwards (+1 logical time).
    Own,
    /// The call was made inside the program's own det section; nothing to end.
    Nested,
    /// A pending `det_tick(0)` elided this call's section; ended without time.
    Elided,
}

/// The arguments of a futex wait.
#[derive(Clone, Copy, Debug)]
pub struct FutexWait {
    /// The value the word must still have.
    pub val: u32,
    /// FUTEX_WAIT_BITSET's bitset (all ones for FUTEX_WAIT).
    pub bitset: u32,
    /// When to give up (ETIMEDOUT), if ever.
    pub deadline: Option<Instant>,
}

/// One registered program thread.
struct Slot {
    det: DetTid,
    cv: Arc<Condvar>,
    /// Set by a futex wake under the token; cleared when the thread starts waiting.
    woken: bool,
    /// The thread's current (or last) section came from its own `det_start`, with no
    /// implicit det point inside it so far: only such a section may be ended through the
    /// det page. Implicit sections are the VMM's own; a slot must not end them.
    own_section: bool,
    /// Waiting for the token, but still spinning and watching the holder's slot, so the
    /// holder may post its end (if this is the only waiter): the spinner sees it.
    spinning: bool,
}

impl Slot {
    fn new(det: DetTid) -> Self {
        Slot {
            det,
            cv: Arc::new(Condvar::new()),
            woken: false,
            own_section: false,
            spinning: false,
        }
    }
}

const SLOT_STATE: u64 = abi::DITTO_SLOT_STATE_MASK;
const SLOT_IDLE: u64 = abi::DITTO_SLOT_IDLE;
const SLOT_IN_SECTION: u64 = abi::DITTO_SLOT_IN_SECTION;
const SLOT_ENDED: u64 = abi::DITTO_SLOT_ENDED;
const SLOT_CALL: u64 = abi::DITTO_SLOT_CALL;
const SLOT_TICK_SHIFT: u64 = abi::DITTO_SLOT_TICK_SHIFT;

/// The det page: one slot per deterministic thread id below [`DetPage::SLOTS`], in guest
/// memory, through which threads post `det_end` and `det_tick` without a VM exit (see the
/// module documentation and ditto.h). Threads with larger ids have no slot and use the
/// hypercalls.
pub struct DetPage {
    gva: u64,
    words: *const AtomicU64,
}

// SAFETY: `words` points into the guest mapping, which is shared by every thread of the
// process and outlives the runtime (see `DetPage::new`); it is only accessed through
// atomics.
unsafe impl Send for DetPage {}
// SAFETY: as for Send: every access is an atomic operation.
unsafe impl Sync for DetPage {}

impl DetPage {
    /// Slots per det page: four 4 KiB pages.
    pub const SLOTS: u32 = 256;
    /// The page's size in bytes.
    pub const BYTES: u64 = Self::SLOTS as u64 * abi::DITTO_DET_SLOT_SIZE;

    /// A det page at guest address `gva`, whose [`BYTES`](Self::BYTES) bytes the host sees
    /// at `host`. Every slot starts as CALL: a thread's first post waits for the runtime
    /// to publish its state.
    ///
    /// # Safety
    ///
    /// `host` must be 8-byte aligned and point at `BYTES` bytes that stay mapped, readable
    /// and writable, for as long as the page lives (guest memory, checked with
    /// `GuestMemory::user_range`).
    pub unsafe fn new(gva: u64, host: *mut u8) -> Self {
        let page = DetPage {
            gva,
            words: host as *const AtomicU64,
        };
        for i in 0..Self::SLOTS {
            if let Some(w) = page.word(DetTid(i)) {
                // A faulting page was broken by the program itself; its threads fall
                // back to the hypercalls.
                let _ = w.store(SLOT_CALL);
            }
        }
        page
    }

    /// The guest address of `det`'s slot, if it has one.
    pub fn slot_gva(&self, det: DetTid) -> Option<u64> {
        (det.0 < Self::SLOTS).then(|| self.gva + u64::from(det.0) * abi::DITTO_DET_SLOT_SIZE)
    }

    /// The word of `det`'s slot, if it has one. The program can map a file over its det
    /// page, so every access is fault-safe: a fault reads as an error, never a crash.
    fn word(&self, det: DetTid) -> Option<GuestU64<'_>> {
        if det.0 >= Self::SLOTS {
            return None;
        }
        let stride = abi::DITTO_DET_SLOT_SIZE / 8;
        // SAFETY: in bounds (det < SLOTS, and the page holds SLOTS slots of stride words),
        // aligned and mapped (possibly faulting) for the page's life (the contract of
        // `new`); the guest only touches the word with atomic instructions.
        Some(unsafe {
            GuestU64::from_ptr(self.words.add(det.0 as usize * stride as usize) as *mut u64)
        })
    }
}

/// A futex waiter, queued in FIFO order under the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Waiter {
    tid: i64,
    bitset: u32,
}

fn wrong(tid: DetTid, op: &'static str, phase: Phase) -> SchedError {
    SchedError::WrongPhase { tid, op, phase }
}

/// A thread's state under [`Policy::Lead`] and [`Policy::Follow`]. The phases are those of
/// [`det::sched`] without `Left`: with no competition there is nothing to leave.
struct FreeThread {
    phase: Phase,
    /// A `det_tick(0)` elides the next `det_start`, as under Kendo.
    skip_next: bool,
}

/// Who may take the token next under Lead and Follow.
enum FreeMode {
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
struct FreeToken {
    tids: DetTidAllocator,
    threads: BTreeMap<DetTid, FreeThread>,
    /// The thread in a det section, if any.
    holder: Option<DetTid>,
    mode: FreeMode,
}

impl FreeToken {
    fn new(mode: FreeMode) -> Self {
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

    fn get(&mut self, det: DetTid) -> Result<&mut FreeThread, SchedError> {
        self.threads
            .get_mut(&det)
            .ok_or(SchedError::UnknownThread(det))
    }

    fn det_start(&mut self, det: DetTid) -> Result<Start, DetError> {
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

    fn det_end(&mut self, det: DetTid) -> Result<(), DetError> {
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
    fn det_tick(&mut self, det: DetTid, n: u64) -> Result<(), SchedError> {
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

    fn spawn(&mut self, creator: DetTid) -> Result<DetTid, SchedError> {
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
    fn exit(&mut self, det: DetTid) -> Result<(), DetError> {
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
    fn cancel(&mut self, det: DetTid) -> bool {
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
    fn next(&self) -> Option<DetTid> {
        self.holder.or_else(|| match &self.mode {
            FreeMode::Lead { queue, .. } => queue.front().copied(),
            FreeMode::Follow { heads, .. } => heads.front().copied(),
        })
    }

    /// Whether `det_start` by `det` would be granted now.
    fn may_go(&self, det: DetTid) -> bool {
        self.holder.is_none()
            && match &self.mode {
                FreeMode::Lead { queue, .. } => queue.front().is_none_or(|&f| f == det),
                FreeMode::Follow { heads, .. } => heads.front() == Some(&det),
            }
    }
}

/// The token under the runtime's [`Policy`].
enum Order {
    Kendo(TokenScheduler),
    Free(FreeToken),
}

impl Order {
    fn phase(&self, det: DetTid) -> Option<Phase> {
        match self {
            Order::Kendo(s) => s.phase(det),
            Order::Free(f) => f.threads.get(&det).map(|t| t.phase),
        }
    }

    fn time(&self, det: DetTid) -> Option<u64> {
        match self {
            Order::Kendo(s) => s.time(det),
            Order::Free(_) => None,
        }
    }

    fn det_start(&mut self, det: DetTid) -> Result<Start, DetError> {
        match self {
            Order::Kendo(s) => Ok(s.det_start(det)?),
            Order::Free(f) => f.det_start(det),
        }
    }

    fn det_end(&mut self, det: DetTid) -> Result<(), DetError> {
        match self {
            Order::Kendo(s) => Ok(s.det_end(det)?),
            Order::Free(f) => f.det_end(det),
        }
    }

    fn det_tick(&mut self, det: DetTid, n: u64) -> Result<(), DetError> {
        match self {
            Order::Kendo(s) => Ok(s.det_tick(det, n)?),
            Order::Free(f) => Ok(f.det_tick(det, n)?),
        }
    }

    fn spawn(&mut self, creator: DetTid) -> Result<DetTid, DetError> {
        match self {
            Order::Kendo(s) => Ok(s.spawn(creator)?),
            Order::Free(f) => Ok(f.spawn(creator)?),
        }
    }

    fn exit(&mut self, det: DetTid) -> Result<(), DetError> {
        match self {
            Order::Kendo(s) => Ok(s.exit(det)?),
            Order::Free(f) => f.exit(det),
        }
    }

    /// Kendo: out of the competition while blocked, with no pledge. Otherwise nothing.
    fn leave(&mut self, det: DetTid) -> Result<(), DetError> {
        match self {
            Order::Kendo(s) => Ok(s.leave(det, None)?),
            Order::Free(_) => Ok(()),
        }
    }

    /// Follow: whether the primary's log holds a turn of `det` not yet taken.
    fn has_pending_turn(&self, det: DetTid) -> bool {
        matches!(self, Order::Free(FreeToken { mode: FreeMode::Follow { heads, .. }, .. }) if heads.contains(&det))
    }

    fn holder_or_next(&self) -> Option<DetTid> {
        match self {
            Order::Kendo(s) => s.holder(),
            Order::Free(f) => f.next(),
        }
    }

    fn may_go(&self, det: DetTid) -> bool {
        match self {
            Order::Kendo(s) => s.holder() == Some(det),
            Order::Free(f) => f.may_go(det),
        }
    }

    fn cancel(&mut self, det: DetTid) -> bool {
        match self {
            // A Kendo waiter may stay `Waiting`: it holds nothing back.
            Order::Kendo(_) => false,
            Order::Free(f) => f.cancel(det),
        }
    }
}

struct Inner {
    /// The holder's (or, with no holder under Lead/Follow, the next taker's) DetTid + 1
    /// (0: none), published for waiters that spin before sleeping.
    holder: Arc<AtomicU64>,
    order: Order,
    threads: BTreeMap<i64, Slot>,
    by_det: BTreeMap<DetTid, i64>,
    futex: BTreeMap<u64, VecDeque<Waiter>>,
    /// The det page, once a thread asked for its slot (Kendo only).
    page: Option<Arc<DetPage>>,
    /// Section ends and ticks taken from the det page.
    posted: u64,
    /// Logical time added by `det_tick`, through the hypercall or the det page (Kendo only).
    ticked: u64,
    /// Kendo primary of a pair: threads away in a blocking call ([`DetRuntime::blocking`]).
    /// While there are any, every grant is logged ([`ScheduleLink::log_turn`]), so that the
    /// secondary can go on while its copies of them wait for their records (see `gated`).
    away: u32,
    /// Kendo secondary: threads waiting for the primary's record of a blocking call
    /// ([`DetRuntime::blocking_replayed`]). They are out of the competition meanwhile, as
    /// the primary's were, and a turn that could have come after one of them came back
    /// must be one the primary's log shows (see `gated`).
    awaiting_record: BTreeSet<DetTid>,
    /// Kendo secondary: the primary's logged turns not yet passed, by global sequence.
    primary_turns: BTreeMap<u64, DetTid>,
    /// Kendo secondary: the primary's log is complete.
    primary_log_closed: bool,
}

impl Inner {
    fn slot(&self, tid: i64) -> Result<(DetTid, Arc<Condvar>), DetError> {
        self.threads
            .get(&tid)
            .map(|s| (s.det, s.cv.clone()))
            .ok_or(DetError::UnknownThread(tid))
    }

    fn woken(&self, tid: i64) -> bool {
        self.threads.get(&tid).is_some_and(|s| s.woken)
    }

    /// Folds what the threads posted in the det page into the scheduler and publishes each
    /// slot's new state. Returns whether the schedule changed.
    ///
    /// Each slot is settled with one compare-and-swap from the word read to the word that
    /// the runtime wants there, and only what that word said is applied, so a post that
    /// races with the fold is either in it or finds the new state (and then, if it is CALL,
    /// makes the hypercall). A word is trusted only as far as its thread could have got
    /// there honestly: ENDED ends only a section that the thread's own `det_start` began,
    /// ticks count only outside sections, and anything else is dropped.
    fn sync(&mut self) -> bool {
        let Some(page) = &self.page else {
            return false;
        };
        let Order::Kendo(sched) = &mut self.order else {
            return false;
        };
        // Someone sleeps until the token comes: then every det_end and tick may be what it
        // waits for, and must come through the hypercall, which wakes it. A lone waiter
        // that still spins watches the holder's slot itself; with several, a post would
        // send them all to the lock at once, so they are served as sleepers are.
        let mut waiters = self
            .threads
            .values()
            .filter(|s| sched.phase(s.det) == Some(Phase::Waiting));
        let contended = match (waiters.next(), waiters.next()) {
            (None, _) => false,
            (Some(w), None) => !w.spinning,
            (Some(_), Some(_)) => true,
        };
        let mut changed = false;
        for s in self.threads.values_mut() {
            let Some(word) = page.word(s.det) else {
                continue;
            };
            let phase = sched.phase(s.det);
            let in_section = matches!(phase, Some(Phase::InSection | Phase::InElidedSection));
            if !in_section {
                s.own_section = false;
            }
            // A det page the program broke (a file mapped over it) posts nothing.
            let Ok(mut old) = word.load() else {
                continue;
            };
            loop {
                let ended = s.own_section && old & SLOT_STATE == SLOT_ENDED;
                let running = ended || phase == Some(Phase::Running);
                let new = if contended {
                    SLOT_CALL
                } else if running {
                    SLOT_IDLE
                } else if s.own_section {
                    SLOT_IN_SECTION
                } else {
                    SLOT_CALL
                };
                if old == new {
                    break;
                }
                match word.compare_exchange(old, new) {
                    Ok(Ok(_)) => {}
                    Ok(Err(now)) => {
                        old = now;
                        continue;
                    }
                    Err(_) => break,
                }
                if ended {
                    s.own_section = false;
                    // Cannot fail: the thread is in a section.
                    if sched.det_end(s.det).is_ok() {
                        self.posted += 1;
                        changed = true;
                    }
                }
                let ticks = old >> SLOT_TICK_SHIFT;
                if ticks > 0 && running {
                    // A tick past the end of time saturates: the thread has only harmed
                    // its own place in the schedule.
                    let room = u64::MAX - sched.time(s.det).unwrap_or(u64::MAX);
                    let n = ticks.min(room);
                    if n > 0 && sched.det_tick(s.det, n).is_ok() {
                        self.posted += 1;
                        self.ticked = self.ticked.saturating_add(n);
                        changed = true;
                    }
                }
                break;
            }
        }
        changed
    }

    /// Folds the det page, and wakes whoever that makes the holder.
    fn refresh(&mut self) {
        if self.sync() {
            self.notify_holder();
        }
    }

    /// Wakes the token holder (or the next taker) if it is waiting in `det_start`; called
    /// after every change. Folds the det page first.
    fn notify_holder(&mut self) {
        self.sync();
        let h = self.order.holder_or_next();
        self.holder
            .store(h.map_or(0, |h| u64::from(h.0) + 1), Ordering::Release);
        if let Some(h) = h {
            if self.order.phase(h) == Some(Phase::Waiting) {
                if let Some(s) = self.by_det.get(&h).and_then(|t| self.threads.get(t)) {
                    s.cv.notify_one();
                }
            }
        }
    }

    /// Kendo secondary: whether `det`, which would be granted the next turn, must wait for
    /// the primary's log first.
    ///
    /// While a thread X waits for the record of a blocking call, this replica does not
    /// know when the primary's X came back, at a time `at` that only the record tells
    /// (at least X's time when it left). A turn whose key is below X's key when it left is
    /// below `(at, X)` too: X could not have taken it first, whether it was away or back,
    /// so the primary took it as well, and it goes ahead. A later key may have come after
    /// X's return; the primary logs every turn while a thread is away, so such a turn is
    /// safe exactly when the log shows it, at the same global sequence, for the same
    /// thread. Anything else waits: for more log, or for X's record, after which X competes
    /// again at the primary's time. (Where a thread leaves does not matter: one that leaves
    /// while it holds the smallest key only lets later keys go, in either replica.) Once the
    /// log is complete, the schedule is computed freely, as without a waiting thread.
    fn gated(&self, det: DetTid) -> bool {
        if self.awaiting_record.is_empty() || self.primary_log_closed {
            return false;
        }
        let Order::Kendo(sched) = &self.order else {
            return false;
        };
        let Some(seq) = sched.would_grant(det) else {
            return false;
        };
        let key = |d: DetTid| sched.time(d).map(|t| (t, d));
        let after_an_awaited = self.awaiting_record.iter().any(|&x| key(det) > key(x));
        after_an_awaited && self.primary_turns.get(&seq) != Some(&det)
    }

    /// Wakes the holder even if it is not waiting in `det_start` (a thread held back by
    /// `gated` is not): the log or a record it needs may just have come.
    fn wake_holder(&self) {
        if let Some(s) = self
            .order
            .holder_or_next()
            .and_then(|h| self.by_det.get(&h))
            .and_then(|t| self.threads.get(t))
        {
            s.cv.notify_one();
        }
    }

    /// Wakes every thread waiting in `det_start`, so that each asks again.
    fn notify_all_waiting(&self) {
        for s in self.threads.values() {
            if self.order.phase(s.det) == Some(Phase::Waiting) {
                s.cv.notify_one();
            }
        }
    }

    /// Ends a section the thread is in (its own or an elided one), so that it can block.
    fn close_section(&mut self, det: DetTid) -> Result<(), DetError> {
        if matches!(
            self.order.phase(det),
            Some(Phase::InSection | Phase::InElidedSection)
        ) {
            self.order.det_end(det)?;
        }
        Ok(())
    }

    /// Wakes up to `n` waiters on `addr` whose bitset matches, oldest first. Must be called
    /// under the token: each woken thread competes again from the earliest time after the
    /// caller's turn, which makes the wake a deterministic re-entry point.
    fn wake(&mut self, addr: u64, n: u64, bitset: u32) -> u64 {
        let Some(q) = self.futex.get_mut(&addr) else {
            return 0;
        };
        let mut woken = Vec::new();
        q.retain(|w| {
            if (woken.len() as u64) < n && w.bitset & bitset != 0 {
                woken.push(w.tid);
                false
            } else {
                true
            }
        });
        if q.is_empty() {
            self.futex.remove(&addr);
        }
        for tid in &woken {
            self.resume(*tid);
            if let Some(s) = self.threads.get_mut(tid) {
                s.woken = true;
                s.cv.notify_one();
            }
        }
        woken.len() as u64
    }

    /// Moves up to `n` waiters from `from` to the end of `to`'s queue.
    fn requeue(&mut self, from: u64, to: u64, n: u64) -> u64 {
        let mut moved = VecDeque::new();
        if let Some(q) = self.futex.get_mut(&from) {
            while (moved.len() as u64) < n {
                match q.pop_front() {
                    Some(w) => moved.push_back(w),
                    None => break,
                }
            }
            if q.is_empty() {
                self.futex.remove(&from);
            }
        }
        let count = moved.len() as u64;
        if count > 0 {
            self.futex.entry(to).or_default().extend(moved);
        }
        count
    }

    /// Takes `tid` out of the futex queue it waits in: `addr`'s, or the one a requeue moved
    /// it to.
    fn dequeue(&mut self, addr: u64, tid: i64) {
        let holds = |q: &VecDeque<Waiter>| q.iter().any(|w| w.tid == tid);
        let at = if self.futex.get(&addr).is_some_and(holds) {
            Some(addr)
        } else {
            self.futex.iter().find(|(_, q)| holds(q)).map(|(&a, _)| a)
        };
        if let Some(a) = at {
            if let Some(q) = self.futex.get_mut(&a) {
                q.retain(|w| w.tid != tid);
                if q.is_empty() {
                    self.futex.remove(&a);
                }
            }
        }
    }

    /// Kendo: puts a thread that left the competition back in, at its pledged time if it
    /// made a pledge, else at the earliest allowed time; returns that time. None under the
    /// other policies, or if the thread had not left.
    fn resume(&mut self, tid: i64) -> Option<u64> {
        let det = self.threads.get(&tid)?.det;
        let Order::Kendo(sched) = &mut self.order else {
            return None;
        };
        let at = match sched.phase(det)? {
            Phase::Left {
                resume_at: Some(at),
            } => at,
            Phase::Left { resume_at: None } => sched.reentry_floor(det).ok()?,
            _ => return None,
        };
        // Cannot fail: `at` is the pledge, or the floor of a thread without one.
        sched.reenter(det, at).ok()?;
        Some(at)
    }

    /// Kendo secondary: makes a thread that never left compete at exactly `at`, the time at
    /// which the primary's thread re-entered. Nothing under the other policies.
    ///
    /// `leave(Some(at))` checks that `at` is not below the thread's own time, and `reenter`
    /// then takes the pledge without a floor check. The floor would not refuse `at` anyway:
    /// the thread never left, so it competed at (its time, its id) all along and every turn
    /// granted meanwhile had a smaller key; its floor is therefore its own time, which is
    /// the primary thread's time at the same point (the schedule is the same up to here),
    /// and the primary's `at` was at least that (it was the primary's floor).
    ///
    /// A thread that did leave (it waited for a blocking call's record, see `gated`) comes
    /// back at `at` through the floor check, which every turn taken meanwhile satisfies:
    /// each was logged by the primary before its thread came back at `at`, so its key is
    /// below `(at, det)`.
    fn replay_reentry(&mut self, det: DetTid, at: u64) -> Result<(), DetError> {
        if let Order::Kendo(sched) = &mut self.order {
            if sched.phase(det) == Some(Phase::Running) {
                sched.leave(det, Some(at))?;
            }
            sched.reenter(det, at)?;
        }
        Ok(())
    }
}

/// Counters of the det runtime, for `--stats` and `ditto bench det`.
#[derive(Debug, Default)]
pub struct DetStats {
    /// Token acquisitions: `det_start` calls and implicit det points.
    pub ops: AtomicU64,
    /// Times a thread had to sleep for the token (a contended hand-off).
    pub waits: AtomicU64,
    /// Non-blocking retries of pipe/eventfd operations that would have blocked.
    pub retries: AtomicU64,
    /// Turns taken: acquisitions that were granted the token (not elided, not nested), under
    /// every policy.
    pub turns: AtomicU64,
}

/// The replication side of a replicated runtime.
struct Link {
    link: Arc<dyn ScheduleLink>,
    primary: bool,
}

/// The det runtime of one program (see the module documentation).
pub struct DetRuntime {
    inner: Mutex<Inner>,
    holder: Arc<AtomicU64>,
    /// Counters.
    pub stats: DetStats,
    /// The host path of libditto.so, served to the program at [`LIBDITTO_GUEST_PATH`].
    preload: Option<std::path::PathBuf>,
    policy: Policy,
    link: Option<Link>,
    /// A divergence was reported to the link (only the first one is).
    diverged: AtomicBool,
}

/// Where a dynamic program finds libditto under `--det`: a virtual path that the VMM serves
/// from the host's libditto.so, whatever the root holds (the root is never written to).
pub const LIBDITTO_GUEST_PATH: &str = "/.ditto/libditto.so";

impl DetRuntime {
    /// A runtime whose main thread has guest id `main_tid` and deterministic id
    /// [`DetTid::MAIN`]. `preload` is the host libditto.so served at [`LIBDITTO_GUEST_PATH`].
    /// It uses [`Policy::Kendo`] and reports nothing (`ditto run --det`).
    pub fn new(main_tid: i64, preload: Option<std::path::PathBuf>) -> Self {
        Self::build(main_tid, preload, Policy::Kendo, None)
    }

    /// A runtime for one replica of `ditto pair` (DESIGN.md §5-6), otherwise as
    /// [`new`](Self::new).
    ///
    /// - `Policy::Kendo`: the `det` mode; `role_is_primary` says which replica this is.
    ///   The primary reports its timed futex waits to `link` and returns re-entry times from
    ///   [`blocking`](Self::blocking); the secondary takes both from the primary
    ///   ([`ScheduleLink::timed_wait_outcome`], [`blocking_replayed`](Self::blocking_replayed)).
    /// - `Policy::Lead`: the `follow` mode's primary; logs every turn to `link`.
    /// - `Policy::Follow`: the `follow` mode's secondary; follows the turns given to
    ///   [`push_turn`](Self::push_turn).
    ///
    /// Lead is always a primary and Follow always a secondary: for them the policy decides
    /// and a contradicting `role_is_primary` is ignored (with a warning).
    pub fn replicated(
        main_tid: i64,
        preload: Option<std::path::PathBuf>,
        policy: Policy,
        role_is_primary: bool,
        link: Arc<dyn ScheduleLink>,
    ) -> Self {
        let primary = match policy {
            Policy::Kendo => role_is_primary,
            Policy::Lead => true,
            Policy::Follow => false,
        };
        if primary != role_is_primary {
            tracing::warn!(
                ?policy,
                role_is_primary,
                "the policy decides the replica's role"
            );
        }
        Self::build(main_tid, preload, policy, Some(Link { link, primary }))
    }

    fn build(
        main_tid: i64,
        preload: Option<std::path::PathBuf>,
        policy: Policy,
        link: Option<Link>,
    ) -> Self {
        let mut threads = BTreeMap::new();
        threads.insert(main_tid, Slot::new(DetTid::MAIN));
        let order = match policy {
            Policy::Kendo => Order::Kendo(TokenScheduler::new()),
            Policy::Lead => Order::Free(FreeToken::new(FreeMode::Lead {
                log: TurnLog::new(),
                queue: VecDeque::new(),
            })),
            Policy::Follow => Order::Free(FreeToken::new(FreeMode::Follow {
                follower: TurnFollower::new(),
                heads: VecDeque::new(),
            })),
        };
        let holder = Arc::new(AtomicU64::new(0));
        let mut inner = Inner {
            holder: holder.clone(),
            order,
            threads,
            by_det: BTreeMap::from([(DetTid::MAIN, main_tid)]),
            futex: BTreeMap::new(),
            page: None,
            posted: 0,
            ticked: 0,
            away: 0,
            awaiting_record: BTreeSet::new(),
            primary_turns: BTreeMap::new(),
            primary_log_closed: false,
        };
        inner.notify_holder();
        DetRuntime {
            holder,
            inner: Mutex::new(inner),
            stats: DetStats::default(),
            preload,
            policy,
            link,
            diverged: AtomicBool::new(false),
        }
    }

    /// The runtime's state, with the det page folded in: every decision starts here.
    fn locked(&self) -> MutexGuard<'_, Inner> {
        let mut g = lock(&self.inner);
        g.refresh();
        g
    }

    /// How this runtime hands out the token.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The host file behind [`LIBDITTO_GUEST_PATH`], if one is served.
    pub fn preload(&self) -> Option<&std::path::Path> {
        self.preload.as_deref()
    }

    /// The deterministic id of guest thread `tid`.
    pub fn det_tid(&self, tid: i64) -> Option<DetTid> {
        self.locked().threads.get(&tid).map(|s| s.det)
    }

    /// The logical time of guest thread `tid` (Kendo only: the other policies have none).
    pub fn logical_time(&self, tid: i64) -> Option<u64> {
        let g = self.locked();
        let det = g.threads.get(&tid)?.det;
        g.order.time(det)
    }

    /// The link of a primary, or of a secondary.
    fn link(&self, primary: bool) -> Option<&dyn ScheduleLink> {
        self.link
            .as_ref()
            .filter(|l| l.primary == primary)
            .map(|l| &*l.link)
    }

    /// Turns a failed `det_start` into the caller's error; reports the first divergence
    /// to the link, unless the program is ending anyway (then threads may ask for turns
    /// that the primary's threads, killed by the exit, never took).
    fn failed(&self, process: &Process, det: DetTid, e: DetError) -> DetError {
        let DetError::Diverged(te) = e else {
            return e;
        };
        if process.exiting() {
            return DetError::Exiting;
        }
        if !self.diverged.swap(true, Ordering::SeqCst) {
            tracing::error!(%det, error = %te, "the secondary cannot follow the primary's schedule");
            if let Some(l) = &self.link {
                l.link.schedule_diverged(det, &te);
            }
        }
        DetError::Diverged(te)
    }

    /// Waits until `tid` holds the token (or a `det_tick(0)` elides the wait).
    fn acquire<'a>(
        &'a self,
        mut g: MutexGuard<'a, Inner>,
        process: &Process,
        tid: i64,
        implicit: bool,
    ) -> Result<(MutexGuard<'a, Inner>, Held), DetError> {
        let (det, cv) = g.slot(tid)?;
        if implicit {
            // A section the VMM starts, or works inside, is the VMM's to end: from here on
            // the thread's slot cannot end it.
            if let Some(s) = g.threads.get_mut(&tid) {
                s.own_section = false;
            }
            g.refresh();
        }
        match g.order.phase(det) {
            Some(Phase::InSection) if implicit => return Ok((g, Held::Nested)),
            // An implicit point inside an elided section is ordered after all: the elided
            // section ends here (it had no logical time to give back), and the program's own
            // det_end later answers EINVAL, which libditto ignores.
            Some(Phase::InElidedSection) if implicit => g.order.det_end(det)?,
            _ => {}
        }
        self.stats.ops.fetch_add(1, Ordering::Relaxed);
        let mut waited = false;
        let mut spin_until = Instant::now();
        let kendo_secondary = self.policy == Policy::Kendo && self.link(false).is_some();
        loop {
            if kendo_secondary && g.gated(det) {
                if !waited {
                    waited = true;
                    self.stats.waits.fetch_add(1, Ordering::Relaxed);
                }
                g = cv
                    .wait_timeout(g, EXIT_POLL)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                g.refresh();
                if process.exiting() {
                    return Err(DetError::Exiting);
                }
                continue;
            }
            let start = match g.order.det_start(det) {
                Ok(start) => start,
                Err(e) => {
                    if g.order.cancel(det) {
                        g.notify_holder();
                    }
                    drop(g);
                    return Err(self.failed(process, det, e));
                }
            };
            match start {
                Start::Granted(turn) => {
                    self.stats.turns.fetch_add(1, Ordering::Relaxed);
                    tracing::trace!(target: "ditto::turns", policy = ?self.policy, %det, ?turn, implicit, "granted");
                    if let Some(l) = &self.link {
                        let logged = match self.policy {
                            Policy::Lead => true,
                            Policy::Kendo => l.primary && g.away > 0,
                            Policy::Follow => false,
                        };
                        if logged {
                            l.link.log_turn(turn);
                        }
                    }
                    if kendo_secondary {
                        // Turns up to this one are passed; what the log says of them no
                        // longer matters.
                        g.primary_turns = g.primary_turns.split_off(&(turn.global_seq + 1));
                    }
                    if implicit {
                        // Publishes CALL in the slot of the section the VMM now runs.
                        g.refresh();
                    }
                    return Ok((g, Held::Own));
                }
                Start::Elided => return Ok((g, Held::Elided)),
                Start::Wait => {
                    if !waited {
                        waited = true;
                        self.stats.waits.fetch_add(1, Ordering::Relaxed);
                        spin_until = Instant::now() + SPIN;
                    }
                    let spin = Instant::now() < spin_until;
                    if let Some(s) = g.threads.get_mut(&tid) {
                        s.spinning = spin;
                    }
                    // Before this thread sleeps every slot says CALL. A section that ended
                    // through the page just before is folded here, and may have been all
                    // this thread was waiting for.
                    if g.sync() {
                        g.notify_holder();
                        continue;
                    }
                    if spin {
                        // The holder may end its section through its slot, or a thread
                        // ahead post its ticks: watch that slot as well as the hand-off.
                        let watch = g.page.clone().zip(g.order.holder_or_next());
                        let word = watch.as_ref().and_then(|(p, h)| p.word(*h));
                        let seen = word.and_then(|w| w.load().ok());
                        drop(g);
                        let me = u64::from(det.0) + 1;
                        while self.holder.load(Ordering::Acquire) != me
                            && Instant::now() < spin_until
                            && word.and_then(|w| w.load().ok()) == seen
                        {
                            std::thread::yield_now();
                        }
                        g = self.locked();
                        continue;
                    }
                    g = cv
                        .wait_timeout(g, EXIT_POLL)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    g.refresh();
                    if process.exiting() {
                        if g.order.cancel(det) {
                            g.notify_holder();
                        }
                        return Err(DetError::Exiting);
                    }
                }
            }
        }
    }

    /// Ends what [`acquire`](Self::acquire) started.
    fn release(&self, g: &mut Inner, tid: i64, held: Held) -> Result<(), DetError> {
        if held != Held::Nested {
            let (det, _) = g.slot(tid)?;
            // A section the program's futex wait closed early is already over.
            if matches!(
                g.order.phase(det),
                Some(Phase::InSection | Phase::InElidedSection)
            ) {
                g.order.det_end(det)?;
            }
        }
        g.notify_holder();
        Ok(())
    }

    /// `det_start`: returns once `tid` holds the token.
    pub fn det_start(&self, process: &Process, tid: i64) -> Result<(), DetError> {
        let g = self.locked();
        let (mut g, _) = self.acquire(g, process, tid, false)?;
        if g.page.is_some() {
            if let Some(s) = g.threads.get_mut(&tid) {
                s.own_section = true;
            }
            g.refresh();
        }
        Ok(())
    }

    /// Whether a det point by `tid` would go ahead without waiting: it holds the token (or,
    /// under Lead and Follow, would be granted it now), or it is already inside a section.
    /// The doorbell serves such calls on its server thread without a VM exit, and bounces
    /// the others to the vCPU thread, where waiting for the token costs one thread switch
    /// instead of two.
    pub fn can_proceed(&self, tid: i64) -> bool {
        let g = self.locked();
        let Ok((det, _)) = g.slot(tid) else {
            return false;
        };
        let kendo_secondary = self.policy == Policy::Kendo && self.link(false).is_some();
        matches!(g.order.phase(det), Some(Phase::InSection))
            || (g.order.may_go(det) && !(kendo_secondary && g.gated(det)))
    }

    /// `DITTO_SYS_DET_SLOT`: the guest address of `tid`'s slot in the det page, which `map`
    /// creates on the first call. An implicit det point, so that the page is placed at a
    /// deterministic point of the address space's history. Errors: EOPNOTSUPP under Lead
    /// and Follow (their turns are logged and replayed one by one: every section must come
    /// to the VMM), ENOSPC for a thread without a slot, or `map`'s error.
    pub fn det_slot(
        &self,
        process: &Process,
        tid: i64,
        map: impl FnOnce() -> Result<DetPage, Errno>,
    ) -> Result<u64, Errno> {
        if self.policy != Policy::Kendo {
            return Err(Errno::EOPNOTSUPP);
        }
        let g = self.locked();
        let (mut g, held) = self.acquire(g, process, tid, true)?;
        let det = g.slot(tid).map(|(d, _)| d);
        let r = det.map_err(Errno::from).and_then(|det| {
            if g.page.is_none() {
                g.page = Some(Arc::new(map()?));
            }
            g.page
                .as_ref()
                .and_then(|p| p.slot_gva(det))
                .ok_or(Errno::ENOSPC)
        });
        self.release(&mut g, tid, held)?;
        r
    }

    /// The schedule's state in a few lines, for a report on a replica that stopped making
    /// progress: the token's holder, each thread's phase and logical time, and (Kendo
    /// secondary) the threads awaiting a record and the primary's logged turns it holds.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let g = self.locked();
        let mut out = format!("policy {:?}", self.policy);
        if let Order::Kendo(sched) = &g.order {
            let _ = write!(out, ", {} turns granted", sched.granted_turns());
        }
        match g.order.holder_or_next() {
            Some(h) => {
                let _ = write!(out, ", token: {h}");
            }
            None => out.push_str(", token: nobody"),
        }
        out.push('\n');
        let futex_of = |tid: i64| {
            g.futex
                .iter()
                .find(|(_, q)| q.iter().any(|w| w.tid == tid))
                .map(|(addr, _)| *addr)
        };
        for (tid, s) in &g.threads {
            // Futex waits take no turn under Lead and Follow, so the queue says more than
            // the phase there.
            let phase = match (futex_of(*tid), g.order.phase(s.det)) {
                (Some(addr), _) => format!("waiting on futex {addr:#x}"),
                (None, None) => "-".to_string(),
                (None, Some(Phase::Running)) => "running".into(),
                (None, Some(Phase::Waiting)) => "waiting for the token".into(),
                (None, Some(Phase::InSection)) => "in a det section".into(),
                (None, Some(Phase::InElidedSection)) => "in an elided det section".into(),
                (None, Some(Phase::Left { resume_at: None })) => "blocked in a syscall".into(),
                (
                    None,
                    Some(Phase::Left {
                        resume_at: Some(at),
                    }),
                ) => format!("blocked in a syscall, to re-enter at {at}"),
            };
            let time = g
                .order
                .time(s.det)
                .map_or_else(String::new, |t| format!(", logical time {t}"));
            let awaiting = if g.awaiting_record.contains(&s.det) {
                ", awaiting the primary's record of a blocking call"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {} (guest tid {tid}): {phase}{time}{awaiting}",
                s.det
            );
        }
        if !g.awaiting_record.is_empty() {
            let logged: Vec<String> = g
                .primary_turns
                .iter()
                .take(4)
                .map(|(seq, t)| format!("#{seq} {t}"))
                .collect();
            let _ = writeln!(
                out,
                "  turns above an awaiting thread need the primary's log; it holds {} ({}{}){}",
                g.primary_turns.len(),
                logged.join(", "),
                if g.primary_turns.len() > 4 {
                    ", ..."
                } else {
                    ""
                },
                if g.primary_log_closed {
                    "; the log is complete"
                } else {
                    ""
                }
            );
        }
        out
    }

    /// How many section ends and ticks the threads posted through the det page.
    pub fn posted(&self) -> u64 {
        self.locked().posted
    }

    /// The logical time that `det_tick` added, through the hypercall or the det page
    /// (Kendo only; work hints are most of it).
    pub fn ticked(&self) -> u64 {
        self.locked().ticked
    }

    /// `det_end`: ends the section, +1 logical time.
    pub fn det_end(&self, tid: i64) -> Result<(), DetError> {
        let mut g = self.locked();
        let (det, _) = g.slot(tid)?;
        g.order.det_end(det)?;
        g.notify_holder();
        Ok(())
    }

    /// `det_tick(n)`: +n logical time (a no-op under Lead and Follow, which have none); 0
    /// elides the next `det_start`.
    pub fn det_tick(&self, tid: i64, n: u64) -> Result<(), DetError> {
        let mut g = self.locked();
        let (det, _) = g.slot(tid)?;
        g.order.det_tick(det, n)?;
        if self.policy == Policy::Kendo {
            g.ticked = g.ticked.saturating_add(n);
        }
        g.notify_holder();
        Ok(())
    }

    /// Runs `f` as an implicit det point: under the token, with a section of its own unless
    /// the thread is already in one. The runtime's lock is not held while `f` runs.
    pub fn ordered<R>(
        &self,
        process: &Process,
        tid: i64,
        f: impl FnOnce() -> R,
    ) -> Result<R, DetError> {
        let g = self.locked();
        let (g, held) = self.acquire(g, process, tid, true)?;
        drop(g);
        let r = f();
        self.release(&mut self.locked(), tid, held)?;
        Ok(r)
    }

    /// Like [`ordered`](Self::ordered), but a section of its own stays open after `f`:
    /// the thread keeps the token until it ends the section with [`det_end`](Self::det_end)
    /// at its next syscall. Returns whether it does (not when nested in or eliding a section).
    pub fn ordered_holding<R>(
        &self,
        process: &Process,
        tid: i64,
        f: impl FnOnce() -> R,
    ) -> Result<(R, bool), DetError> {
        let g = lock(&self.inner);
        let (g, held) = self.acquire(g, process, tid, true)?;
        drop(g);
        let r = f();
        if held == Held::Own {
            return Ok((r, true));
        }
        self.release(&mut lock(&self.inner), tid, held)?;
        Ok((r, false))
    }

    /// Like [`ordered`](Self::ordered), but `f` says whether it is done; if not, the section
    /// still ends (+1 logical time) and `f` is tried again in a later turn. Callers inside
    /// the program's own section ([`in_section`](Self::in_section)) must not use this: that
    /// section could never end between attempts. Every attempt is
    /// a det section, so what each attempt sees is deterministic; only how long the host
    /// waits between attempts depends on real time.
    pub fn retry_ordered<R>(
        &self,
        process: &Process,
        tid: i64,
        mut f: impl FnMut() -> Option<R>,
    ) -> Result<R, DetError> {
        let mut fails = 0u32;
        loop {
            if let Some(r) = self.ordered(process, tid, &mut f)? {
                return Ok(r);
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            fails = fails.saturating_add(1);
            if process.exiting() {
                return Err(DetError::Exiting);
            }
            // Real-time back-off only (no logical time): when the other threads are idle
            // this thread is the holder again at once and would spin.
            if fails > 4 {
                std::thread::sleep(Duration::from_micros(10 << fails.min(7)));
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Whether `tid` is inside its own det section (a call there must not be retried).
    pub fn in_section(&self, tid: i64) -> bool {
        let g = self.locked();
        g.threads
            .get(&tid)
            .and_then(|s| g.order.phase(s.det))
            .is_some_and(|p| p == Phase::InSection)
    }

    /// Runs `f`, which may block for an outside event (socket, terminal, sleep). A section
    /// the thread is in ends first.
    ///
    /// Kendo: the thread leaves the competition while `f` runs and re-enters at the earliest
    /// allowed time when it returns; that time, which depends on real time, is returned as
    /// `Some(at)`: the event that the primary reports (DESIGN.md §5) and that the secondary
    /// gives to [`blocking_replayed`](Self::blocking_replayed). Lead and Follow: there is no
    /// competition to leave; `f` just runs, and the time is None.
    pub fn blocking<R>(
        &self,
        tid: i64,
        f: impl FnOnce() -> R,
    ) -> Result<(R, Option<u64>), DetError> {
        let logs_turns = self.policy == Policy::Kendo && self.link(true).is_some();
        {
            let mut g = self.locked();
            let (det, _) = g.slot(tid)?;
            g.close_section(det)?;
            g.order.leave(det)?;
            if logs_turns {
                g.away += 1;
            }
            g.notify_holder();
        }
        let r = f();
        let mut g = self.locked();
        if logs_turns {
            g.away = g.away.saturating_sub(1);
        }
        let at = g.resume(tid);
        g.notify_holder();
        Ok((r, at))
    }

    /// The secondary's [`blocking`](Self::blocking): `f` waits for the primary's record of
    /// the call and returns its result with the primary's re-entry time (None: the record
    /// will never come, and the call answers [`DetError::Exiting`]).
    ///
    /// Kendo: a section the thread is in ends and the thread leaves the competition, as the
    /// primary's did, while `f` waits; meanwhile the other threads take only turns that the
    /// primary's log shows (`Inner::gated`), so none gets past a point where the primary's
    /// thread had come back. Then it competes from exactly the primary's time (see
    /// `Inner::replay_reentry` for why that time is always allowed). A record without a
    /// time (not from a Kendo primary) puts the thread back at the earliest allowed time,
    /// with a warning. Lead and Follow: `f` just runs.
    pub fn blocking_replayed<R>(
        &self,
        tid: i64,
        f: impl FnOnce() -> Option<(R, Option<u64>)>,
    ) -> Result<R, DetError> {
        let kendo = self.policy == Policy::Kendo;
        let det = {
            let mut g = self.locked();
            let (det, _) = g.slot(tid)?;
            g.close_section(det)?;
            if kendo {
                g.order.leave(det)?;
                g.awaiting_record.insert(det);
            }
            g.notify_holder();
            det
        };
        let out = f();
        if kendo {
            let mut g = self.locked();
            g.awaiting_record.remove(&det);
            let back = match out {
                Some((_, Some(at))) => g.replay_reentry(det, at),
                Some((_, None)) => {
                    tracing::warn!(%det, "replayed blocking call without a re-entry time");
                    g.resume(tid);
                    Ok(())
                }
                None => {
                    g.resume(tid);
                    Ok(())
                }
            };
            if back.is_err() {
                // Refused (a divergence, reported by the caller): back at the earliest
                // allowed time rather than out of the competition for good.
                g.resume(tid);
            }
            g.notify_holder();
            g.wake_holder();
            back?;
        }
        out.map(|(r, _)| r).ok_or(DetError::Exiting)
    }

    /// A clone under the token: `f` creates the thread and returns its guest id; the new
    /// thread gets the next deterministic id. The runtime stays locked while `f` runs, so the
    /// child cannot reach the runtime before it is registered.
    pub fn clone_thread(
        &self,
        process: &Process,
        tid: i64,
        f: impl FnOnce() -> Result<u64, Errno>,
    ) -> Result<u64, Errno> {
        let g = self.locked();
        let (mut g, held) = self.acquire(g, process, tid, true)?;
        let r = f();
        if let Ok(child) = r {
            let (det, _) = g.slot(tid)?;
            // Elided here means the section never held the token; take a real one for the
            // id allocation instead of leaving the child unregistered.
            if g.order.phase(det) != Some(Phase::InSection) {
                tracing::warn!(
                    tid,
                    "clone in an elided det section; thread id order may vary"
                );
                g.order.det_end(det)?;
                let (g2, _) = self.acquire(g, process, tid, true)?;
                g = g2;
            }
            let cdet = g.order.spawn(det)?;
            if let Some(link) = self.link(true) {
                link.thread_started(cdet);
            }
            g.threads.insert(child as i64, Slot::new(cdet));
            g.by_det.insert(cdet, child as i64);
        }
        self.release(&mut g, tid, held)?;
        r
    }

    /// A thread's exit, as a det point: under the token, free the thread's vCPU
    /// (`vcpu_free`), zero its CLONE_CHILD_CLEARTID word, wake one waiter there
    /// (pthread_join), and leave the scheduler. Follow: a thread that exits while the log
    /// still holds turns of it is a divergence.
    ///
    /// `vcpu_free` runs once the token is held and before the joiner is woken: earlier, a
    /// thread created meanwhile could be queued on the vCPU behind this exit's wait for the
    /// token while the token went to that new thread (a follow-mode stall); later, the
    /// joiner's next pthread_create finds no idle vCPU and makes a new one.
    pub fn thread_exit(
        &self,
        process: &Process,
        tid: i64,
        clear_child_tid: u64,
        vcpu_free: impl FnOnce(),
    ) {
        let g = self.locked();
        let Ok((mut g, _)) = self.acquire(g, process, tid, true) else {
            vcpu_free();
            return;
        };
        vcpu_free();
        if clear_child_tid != 0 && process.mem.write_obj(clear_child_tid, &0u32).is_ok() {
            g.wake(clear_child_tid, 1, u32::MAX);
        }
        let mut gone = Ok(());
        if let Some(s) = g.threads.remove(&tid) {
            g.by_det.remove(&s.det);
            if let Some(w) = g.page.as_ref().and_then(|p| p.word(s.det)) {
                // A broken page (see `DetPage::word`) has nothing to reset.
                let _ = w.store(SLOT_CALL);
            }
            gone = g.order.exit(s.det).map_err(|e| (s.det, e));
        }
        g.notify_holder();
        drop(g);
        if let Err((det, e)) = gone {
            self.failed(process, det, e);
        }
    }

    /// Follow: appends the primary's next turn to the log that this runtime follows, and
    /// wakes its thread if the turn is due. Called by the replication layer's reader thread.
    /// An error (a missing, repeated or late turn) is the caller's to report; a runtime that
    /// follows no log answers [`TurnError::Closed`].
    ///
    /// Kendo secondary: the turn is kept for `Inner::gated`, and the holder woken.
    pub fn push_turn(&self, turn: Turn) -> Result<(), TurnError> {
        let mut g = self.locked();
        if self.policy == Policy::Kendo && self.link(false).is_some() {
            g.primary_turns.insert(turn.global_seq, turn.tid);
            g.wake_holder();
            return Ok(());
        }
        let Order::Free(FreeToken {
            mode: FreeMode::Follow { follower, heads },
            ..
        }) = &mut g.order
        else {
            return Err(TurnError::Closed);
        };
        follower.push(turn)?;
        heads.push_back(turn.tid);
        g.notify_holder();
        Ok(())
    }

    /// Secondary: turns of the primary's log received and not yet taken, which the channel
    /// reader bounds so that a peer cannot make this process hold an unbounded log.
    pub fn turns_held(&self) -> usize {
        let g = self.locked();
        let follow = match &g.order {
            Order::Free(FreeToken {
                mode: FreeMode::Follow { follower, .. },
                ..
            }) => follower.pending(),
            _ => 0,
        };
        follow + g.primary_turns.len()
    }

    /// Follow: the primary's log is complete (it finished). A thread that then asks for a
    /// turn the log does not hold gets [`DetError::Diverged`] instead of waiting forever;
    /// threads waiting now ask again. Nothing under the other policies.
    pub fn close_log(&self) {
        let mut g = self.locked();
        g.primary_log_closed = true;
        g.wake_holder();
        if let Order::Free(FreeToken {
            mode: FreeMode::Follow { follower, .. },
            ..
        }) = &mut g.order
        {
            follower.close();
            g.notify_all_waiting();
        }
    }

    /// FUTEX_WAIT / FUTEX_WAIT_BITSET, emulated. `word` is the futex word in guest memory.
    /// Under the token: compare, queue (FIFO), end the section and (Kendo) leave the
    /// competition; then sleep until a wake under the token puts the thread back, the
    /// deadline passes, or the program ends.
    ///
    /// In a replicated runtime a wait with a deadline is settled so that both replicas agree:
    /// the primary takes a turn to time out (see [`TimedWait`]) and reports the outcome; the
    /// secondary ignores its own deadline and does what the primary did.
    pub fn futex_wait(
        &self,
        process: &Process,
        tid: i64,
        addr: u64,
        word: GuestU32<'_>,
        wait: FutexWait,
    ) -> Result<u64, Errno> {
        if self.policy != Policy::Kendo {
            return self.futex_wait_unordered(process, tid, addr, word, wait);
        }
        let FutexWait {
            val,
            bitset,
            deadline,
        } = wait;
        let g = self.locked();
        let (mut g, held) = self.acquire(g, process, tid, true)?;
        let cur = word.load();
        if cur != Ok(val) {
            self.release(&mut g, tid, held)?;
            return Err(cur.map_or(Errno::EFAULT, |_| Errno::EAGAIN));
        }
        let (det, cv) = g.slot(tid).map_err(Errno::from)?;
        g.futex
            .entry(addr)
            .or_default()
            .push_back(Waiter { tid, bitset });
        if let Some(s) = g.threads.get_mut(&tid) {
            s.woken = false;
        }
        // A wait inside the program's own section (a contract violation) closes it too,
        // rather than hold the token while asleep.
        g.close_section(det)?;
        if deadline.is_some() {
            if let Some(link) = self.link(false) {
                return self.replay_timed_wait(g, process, (tid, det), addr, &cv, link);
            }
        }
        let primary = self.link(true).filter(|_| deadline.is_some());
        g.order.leave(det)?;
        g.notify_holder();
        loop {
            if g.woken(tid) {
                drop(g);
                if let Some(link) = primary {
                    let outcome = TimedWait {
                        took_turn: false,
                        timed_out: false,
                        reentry_at: None,
                    };
                    link.log_timed_wait(det, outcome);
                }
                return Ok(0);
            }
            let now = Instant::now();
            let timed_out = deadline.is_some_and(|d| now >= d);
            if timed_out && !process.exiting() {
                if let Some(link) = primary {
                    return self.settle_timed_wait(g, process, (tid, det), addr, link);
                }
            }
            if timed_out || process.exiting() {
                g.dequeue(addr, tid);
                g.resume(tid);
                g.notify_holder();
                return Err(if timed_out {
                    Errno::ETIMEDOUT
                } else {
                    Errno::EINTR
                });
            }
            let wait = deadline.map_or(EXIT_POLL, |d| (d - now).min(EXIT_POLL));
            g = cv
                .wait_timeout(g, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Lead and Follow: a futex wait that takes no turn (see the module documentation for why).
    /// The word is compared and the waiter queued under the runtime's lock, so a wake
    /// cannot slip in between; wakes still go oldest first.
    ///
    /// A deadline: the primary times out on its own and logs that it did
    /// ([`ScheduleLink::log_timed_wait`]) before the thread does anything else. The
    /// secondary ignores its own deadline (its clock runs behind the primary's events) and
    /// times out exactly where the primary's log says the thread did; once woken, it returns
    /// only when the log shows the primary's thread got past this wait without timing out.
    fn futex_wait_unordered(
        &self,
        process: &Process,
        tid: i64,
        addr: u64,
        word: GuestU32<'_>,
        wait: FutexWait,
    ) -> Result<u64, Errno> {
        let mut g = self.locked();
        if word.load()? != wait.val {
            return Err(Errno::EAGAIN);
        }
        let (det, cv) = g.slot(tid).map_err(Errno::from)?;
        g.futex.entry(addr).or_default().push_back(Waiter {
            tid,
            bitset: wait.bitset,
        });
        if let Some(s) = g.threads.get_mut(&tid) {
            s.woken = false;
        }
        // A wait inside the program's own section (a contract violation) closes it, rather
        // than hold the token while asleep.
        g.close_section(det)?;
        g.notify_holder();
        let timed = wait.deadline.is_some();
        let follow = self.link(false).filter(|_| timed);
        let lead = self.link(true).filter(|_| timed);
        let mut woken_since: Option<Instant> = None;
        loop {
            if let Some(link) = follow {
                let pending_turn = g.order.has_pending_turn(det);
                drop(g);
                let news = link.follow_timed_wait(det);
                g = self.locked();
                let woken = g.woken(tid);
                match news {
                    WaitNews::TimedOut => {
                        if !woken {
                            g.dequeue(addr, tid);
                        }
                        return Err(Errno::ETIMEDOUT);
                    }
                    WaitNews::Passed | WaitNews::Ended if woken => return Ok(0),
                    _ if woken && pending_turn => return Ok(0),
                    _ if woken => {
                        // The primary's timed-out record may still be on its way; but a
                        // primary that got past this wait long ago without a record is
                        // just blocked in a later wait.
                        let since = *woken_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= FOLLOW_WOKEN_GRACE {
                            return Ok(0);
                        }
                    }
                    _ => {}
                }
            } else if g.woken(tid) {
                return Ok(0);
            }
            let now = Instant::now();
            let timed_out = follow.is_none() && wait.deadline.is_some_and(|d| now >= d);
            if timed_out || process.exiting() {
                g.dequeue(addr, tid);
                g.notify_holder();
                drop(g);
                if timed_out {
                    if let Some(link) = lead {
                        link.log_timed_wait(
                            det,
                            TimedWait {
                                took_turn: false,
                                timed_out: true,
                                reentry_at: None,
                            },
                        );
                    }
                    return Err(Errno::ETIMEDOUT);
                }
                return Err(Errno::EINTR);
            }
            let sleep = match (follow, wait.deadline) {
                (Some(_), _) => FOLLOW_POLL,
                (None, Some(d)) => (d - now).min(EXIT_POLL),
                (None, None) => EXIT_POLL,
            };
            g = cv
                .wait_timeout(g, sleep)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The primary's timed-out futex wait: take a turn (Kendo: re-enter at the floor first),
    /// and under the token either find that a wake came meanwhile (result 0) or dequeue
    /// (ETIMEDOUT). Reports the outcome to `link`.
    fn settle_timed_wait(
        &self,
        mut g: MutexGuard<'_, Inner>,
        process: &Process,
        (tid, det): (i64, DetTid),
        addr: u64,
        link: &dyn ScheduleLink,
    ) -> Result<u64, Errno> {
        let reentry_at = g.resume(tid);
        g.notify_holder();
        let timed_out = self.settle_in_turn(g, process, tid, addr)?;
        let outcome = TimedWait {
            took_turn: true,
            timed_out,
            reentry_at,
        };
        link.log_timed_wait(det, outcome);
        if timed_out {
            Err(Errno::ETIMEDOUT)
        } else {
            Ok(0)
        }
    }

    /// Takes a turn for a waiter that competes again, and under it dequeues the waiter
    /// unless a wake came first. Returns whether it timed out (was dequeued).
    fn settle_in_turn(
        &self,
        g: MutexGuard<'_, Inner>,
        process: &Process,
        tid: i64,
        addr: u64,
    ) -> Result<bool, Errno> {
        let (mut g, held) = match self.acquire(g, process, tid, true) {
            Ok(x) => x,
            Err(e) => {
                let mut g = self.locked();
                g.dequeue(addr, tid);
                g.notify_holder();
                return Err(e.into());
            }
        };
        let timed_out = !g.woken(tid);
        if timed_out {
            g.dequeue(addr, tid);
        }
        self.release(&mut g, tid, held)?;
        Ok(timed_out)
    }

    /// The secondary's futex wait with a deadline, from the point where it is queued and its
    /// section is closed: wait for the primary's outcome and do the same.
    ///
    /// Kendo: until the outcome is known the thread keeps competing at its current time (it
    /// has not left), so that no other thread gets past the time at which the primary's
    /// waiter may have re-entered. A wake that comes meanwhile comes from a turn with a
    /// smaller key, after which the primary's floor for the waiter was this same time; so a
    /// woken thread just stays where it is.
    fn replay_timed_wait(
        &self,
        mut g: MutexGuard<'_, Inner>,
        process: &Process,
        (tid, det): (i64, DetTid),
        addr: u64,
        cv: &Condvar,
        link: &dyn ScheduleLink,
    ) -> Result<u64, Errno> {
        g.notify_holder();
        drop(g);
        let outcome = link.timed_wait_outcome(det);
        let mut g = self.locked();
        let Some(outcome) = outcome else {
            g.dequeue(addr, tid);
            g.notify_holder();
            return Err(Errno::EINTR);
        };
        if !outcome.took_turn {
            // The primary was woken before it timed out; so is this replica, by the same
            // turn.
            if outcome.timed_out {
                tracing::warn!(%det, ?outcome, "a timed-out wait that took no turn");
            }
            if !g.woken(tid) {
                g.order.leave(det)?;
            }
            g.notify_holder();
            loop {
                if g.woken(tid) {
                    return Ok(0);
                }
                if process.exiting() {
                    g.dequeue(addr, tid);
                    g.resume(tid);
                    g.notify_holder();
                    return Err(Errno::EINTR);
                }
                g = cv
                    .wait_timeout(g, EXIT_POLL)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        if self.policy == Policy::Kendo {
            let Some(at) = outcome.reentry_at else {
                tracing::warn!(%det, ?outcome, "a Kendo timed wait without a re-entry time");
                g.dequeue(addr, tid);
                g.notify_holder();
                return Err(Errno::EINVAL);
            };
            if let Err(e) = g.replay_reentry(det, at) {
                g.dequeue(addr, tid);
                g.notify_holder();
                return Err(e.into());
            }
            g.notify_holder();
        }
        let timed_out = self.settle_in_turn(g, process, tid, addr)?;
        if timed_out != outcome.timed_out {
            tracing::warn!(%det, timed_out, ?outcome, "a timed wait ended otherwise than the primary's");
        }
        if timed_out {
            Err(Errno::ETIMEDOUT)
        } else {
            Ok(0)
        }
    }

    /// FUTEX_WAKE / FUTEX_WAKE_BITSET, emulated: up to `n` waiters, oldest first.
    pub fn futex_wake(
        &self,
        process: &Process,
        tid: i64,
        addr: u64,
        n: u64,
        bitset: u32,
    ) -> Result<u64, Errno> {
        self.futex_locked(process, tid, |inner| Ok(inner.wake(addr, n, bitset)))
    }

    /// FUTEX_REQUEUE / FUTEX_CMP_REQUEUE, emulated. `check` is (word, expected) for CMP.
    pub fn futex_requeue(
        &self,
        process: &Process,
        tid: i64,
        (addr, addr2): (u64, u64),
        (n_wake, n_requeue): (u64, u64),
        check: Option<(GuestU32<'_>, u32)>,
    ) -> Result<u64, Errno> {
        self.futex_locked(process, tid, |inner| {
            if let Some((w, v)) = check {
                if w.load()? != v {
                    return Err(Errno::EAGAIN);
                }
            }
            let woken = inner.wake(addr, n_wake, u32::MAX);
            Ok(woken + inner.requeue(addr, addr2, n_requeue))
        })
    }

    /// FUTEX_WAKE_OP, emulated: `op` runs on the second word under the token and says
    /// whether its waiters are woken too.
    pub fn futex_wake_op(
        &self,
        process: &Process,
        tid: i64,
        addrs: (u64, u64),
        n: (u64, u64),
        op: impl FnOnce() -> Result<bool, Errno>,
    ) -> Result<u64, Errno> {
        self.futex_locked(process, tid, |inner| {
            let second = op()?;
            let mut woken = inner.wake(addrs.0, n.0, u32::MAX);
            if second {
                woken += inner.wake(addrs.1, n.1, u32::MAX);
            }
            Ok(woken)
        })
    }

    fn futex_locked(
        &self,
        process: &Process,
        tid: i64,
        f: impl FnOnce(&mut Inner) -> Result<u64, Errno>,
    ) -> Result<u64, Errno> {
        if self.policy != Policy::Kendo {
            // No turn: see the module documentation.
            let mut g = self.locked();
            let r = f(&mut g);
            g.notify_holder();
            return r;
        }
        let g = self.locked();
        let (mut g, held) = self.acquire(g, process, tid, true)?;
        let r = f(&mut g);
        self.release(&mut g, tid, held)?;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{test_process as process, ExitReason};
    use std::sync::atomic::AtomicU32;

    /// Polls `state` until it holds, for at most 5 s: the tests synchronise with another
    /// thread by what the runtime says of it, not by a guess at how long it needs.
    fn wait_for(what: &str, state: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(5);
        while !state() {
            assert!(Instant::now() < until, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// How many token acquisitions have had to wait so far: a thread that found it may not
    /// go counts one before it parks, so a rise past an earlier reading shows that it got
    /// there (the Kendo secondary's log gate parks a thread without changing its phase).
    fn token_waits(rt: &DetRuntime) -> u64 {
        rt.stats.waits.load(Ordering::SeqCst)
    }

    /// Whether guest thread `tid` is queued in a futex wait.
    fn in_futex_wait(rt: &DetRuntime, tid: i64) -> bool {
        let g = rt.locked();
        g.futex.iter().any(|(_, q)| q.iter().any(|w| w.tid == tid))
    }

    /// Whether guest thread `tid` has left the competition for a replayed blocking call.
    fn awaits_record(rt: &DetRuntime, tid: i64) -> bool {
        let g = rt.locked();
        g.threads
            .get(&tid)
            .is_some_and(|s| g.awaiting_record.contains(&s.det))
    }

    #[test]
    fn sections_and_clone_follow_the_token() {
        let p = process();
        let rt = DetRuntime::new(1000, None);
        rt.det_start(&p, 1000).unwrap();
        assert!(rt.in_section(1000));
        rt.det_end(1000).unwrap();
        assert_eq!(rt.logical_time(1000), Some(1));
        let child = rt.clone_thread(&p, 1000, || Ok(1001)).unwrap();
        assert_eq!(child, 1001);
        assert_eq!(rt.det_tid(1001), Some(DetTid(1)));
        // The creator's clone section ended at 1 -> 2; the child starts at 2.
        assert_eq!(rt.logical_time(1000), Some(2));
        assert_eq!(rt.logical_time(1001), Some(2));
        assert!(matches!(
            rt.det_end(1000),
            Err(DetError::Sched(SchedError::WrongPhase { .. }))
        ));
        assert!(matches!(rt.det_end(7), Err(DetError::UnknownThread(7))));
        rt.det_tick(1001, 5).unwrap();
        assert_eq!(rt.logical_time(1001), Some(7));
        // The main thread (time 2) holds the token, so it exits first.
        rt.thread_exit(&p, 1000, 0, || {});
        rt.thread_exit(&p, 1001, 0, || {});
        assert_eq!(rt.det_tid(1001), None);
    }

    #[test]
    fn a_held_turn_keeps_the_token_until_det_end() {
        let p = Arc::new(process());
        let rt = Arc::new(DetRuntime::new(1000, None));
        rt.clone_thread(&p, 1000, || Ok(1001)).unwrap();
        // Both at time 1 after the clone; the main thread (smaller id) goes first and keeps
        // the token past its ordered point.
        let ((), holds) = rt.ordered_holding(&p, 1000, || ()).unwrap();
        assert!(holds);
        assert!(rt.in_section(1000));
        let (rt2, p2) = (rt.clone(), p.clone());
        let w0 = token_waits(&rt);
        let other = std::thread::spawn(move || {
            rt2.det_start(&p2, 1001).unwrap();
            rt2.det_end(1001).unwrap();
        });
        wait_for("t1 waits for the token", || {
            token_waits(&rt) > w0 || other.is_finished()
        });
        assert!(
            !other.is_finished(),
            "the other thread got the token while it was held"
        );
        rt.det_end(1000).unwrap();
        other.join().unwrap();
        // Inside a section of its own, nothing is held beyond it.
        rt.det_start(&p, 1000).unwrap();
        let ((), holds) = rt.ordered_holding(&p, 1000, || ()).unwrap();
        assert!(!holds);
        rt.det_end(1000).unwrap();
    }

    /// A det page in host memory (the tests have no guest), leaked for the test's life.
    fn det_page() -> (&'static [AtomicU64], DetPage) {
        let words = (DetPage::BYTES / 8) as usize;
        let mem: &'static [AtomicU64] =
            Box::leak((0..words).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>());
        // SAFETY: `mem` is 8-byte aligned, BYTES long and never freed.
        let page = unsafe { DetPage::new(0x40_0000, mem.as_ptr() as *mut u8) };
        (mem, page)
    }

    fn slot_word(mem: &[AtomicU64], det: u32) -> &AtomicU64 {
        &mem[det as usize * (abi::DITTO_DET_SLOT_SIZE / 8) as usize]
    }

    /// libditto's ditto_det_end_at without the fallback: whether the end was posted.
    fn post_end(w: &AtomicU64) -> bool {
        let old = w.load(Ordering::SeqCst);
        old & SLOT_STATE == SLOT_IN_SECTION
            && w.compare_exchange(
                old,
                (old & !SLOT_STATE) | SLOT_ENDED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }

    /// ditto_det_tick_at without the fallback: whether the ticks were posted.
    fn post_tick(w: &AtomicU64, n: u64) -> bool {
        let old = w.load(Ordering::SeqCst);
        let s = old & SLOT_STATE;
        (s == SLOT_IDLE || s == SLOT_ENDED)
            && (old >> SLOT_TICK_SHIFT)
                .checked_add(n)
                .is_some_and(|t| t < 1 << 62)
            && w.compare_exchange(
                old,
                old + (n << SLOT_TICK_SHIFT),
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }

    /// Two threads (1000 = t0, 1001 = t1), both with slots, at logical time 2.
    fn fast_pair() -> (Arc<Process>, Arc<DetRuntime>, &'static [AtomicU64]) {
        let p = Arc::new(process());
        let rt = Arc::new(DetRuntime::new(1000, None));
        rt.clone_thread(&p, 1000, || Ok(1001)).unwrap();
        let (mem, page) = det_page();
        assert_eq!(rt.det_slot(&p, 1000, || Ok(page)), Ok(0x40_0000));
        let second = rt.det_slot(&p, 1001, || panic!("one page"));
        assert_eq!(second, Ok(0x40_0000 + abi::DITTO_DET_SLOT_SIZE));
        assert_eq!(rt.logical_time(1000), Some(2));
        assert_eq!(rt.logical_time(1001), Some(2));
        (p, rt, mem)
    }

    /// Runs `det_start` for `tid` on another thread; the receiver hears when it returns.
    fn start_in_thread(
        p: &Arc<Process>,
        rt: &Arc<DetRuntime>,
        tid: i64,
    ) -> std::sync::mpsc::Receiver<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (p, rt) = (p.clone(), rt.clone());
        std::thread::spawn(move || {
            rt.det_start(&p, tid).unwrap();
            let _ = tx.send(());
        });
        rx
    }

    #[test]
    fn a_posted_end_is_seen_by_the_next_det_start() {
        let (p, rt, mem) = fast_pair();
        let w0 = slot_word(mem, 0);
        assert_eq!(w0.load(Ordering::SeqCst), SLOT_IDLE);
        rt.det_start(&p, 1000).unwrap();
        assert_eq!(w0.load(Ordering::SeqCst), SLOT_IN_SECTION);
        assert!(post_end(w0));
        // t1 (2) comes after t0 (2) only while t0's section is not folded in.
        let started = start_in_thread(&p, &rt, 1001);
        started.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(rt.logical_time(1000), Some(3));
        assert_eq!(rt.posted(), 1);
        assert!(rt.in_section(1001));
        // Ticks outside a section: posted, and counted before the next decision.
        assert!(post_tick(w0, 5));
        assert_eq!(rt.logical_time(1000), Some(8));
        assert!(post_end(slot_word(mem, 1)));
        assert!(post_tick(slot_word(mem, 1), 2));
        assert!(!rt.in_section(1001));
        assert_eq!(rt.logical_time(1001), Some(5));
        assert_eq!(rt.posted(), 4);
        // t1 (5) is ahead of t0 (8) again.
        rt.det_start(&p, 1001).unwrap();
    }

    #[test]
    fn a_contended_holder_must_make_the_hypercall() {
        let (p, rt, mem) = fast_pair();
        let w0 = slot_word(mem, 0);
        rt.det_start(&p, 1000).unwrap();
        let started = start_in_thread(&p, &rt, 1001);
        // The waiter marks the holder's slot before it sleeps.
        let until = Instant::now() + Duration::from_secs(5);
        while w0.load(Ordering::SeqCst) != SLOT_CALL {
            assert!(Instant::now() < until, "the waiter never marked the holder");
            std::thread::yield_now();
        }
        assert!(!post_end(w0));
        assert!(!post_tick(slot_word(mem, 1), 1));
        assert!(started.recv_timeout(Duration::from_millis(50)).is_err());
        rt.det_end(1000).unwrap();
        started.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(rt.posted(), 0);
        // Nobody waits any more: the new holder's section may end through its slot.
        assert_eq!(slot_word(mem, 1).load(Ordering::SeqCst), SLOT_IN_SECTION);
        assert_eq!(w0.load(Ordering::SeqCst), SLOT_IDLE);
    }

    #[test]
    fn a_lone_spinning_waiter_sees_a_posted_end() {
        let (p, rt, mem) = fast_pair();
        let w0 = slot_word(mem, 0);
        rt.det_start(&p, 1000).unwrap();
        let started = start_in_thread(&p, &rt, 1001);
        // Wait until t1 waits (spinning or asleep): then t0's post either lands, and the
        // spinner takes the token without t0's hypercall, or finds CALL (t1 went to
        // sleep), and the hypercall is due.
        let until = Instant::now() + Duration::from_secs(5);
        while rt
            .det_tid(1001)
            .is_some_and(|_| lock(&rt.inner).order.phase(DetTid(1)) != Some(Phase::Waiting))
        {
            assert!(Instant::now() < until, "t1 never waited");
            std::thread::yield_now();
        }
        if post_end(w0) {
            started.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!(rt.posted(), 1);
        } else {
            assert_eq!(w0.load(Ordering::SeqCst), SLOT_CALL);
            rt.det_end(1000).unwrap();
            started.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        assert!(rt.in_section(1001));
        assert_eq!(rt.logical_time(1000), Some(3));
    }

    #[test]
    fn garbage_in_a_slot_ends_no_section_and_overflows_nothing() {
        let (p, rt, mem) = fast_pair();
        let (w0, w1) = (slot_word(mem, 0), slot_word(mem, 1));
        rt.det_start(&p, 1000).unwrap();
        // Another thread's slot cannot end t0's section, nor can a thread end a section
        // it does not hold.
        w1.store(SLOT_ENDED, Ordering::SeqCst);
        let started = start_in_thread(&p, &rt, 1001);
        assert!(started.recv_timeout(Duration::from_millis(50)).is_err());
        assert!(rt.in_section(1000));
        assert_eq!(rt.logical_time(1001), Some(2));
        // Unknown words, and ticks for a waiting thread, are dropped.
        w1.store(u64::MAX, Ordering::SeqCst);
        assert_eq!(rt.logical_time(1001), Some(2));
        rt.det_end(1000).unwrap();
        started.recv_timeout(Duration::from_secs(5)).unwrap();
        rt.det_end(1001).unwrap();
        // The largest tick a slot can hold, many times over: the time saturates.
        for _ in 0..5 {
            assert!(post_tick(w1, (1 << 62) - 1));
            assert!(rt.logical_time(1001).is_some());
        }
        assert_eq!(rt.logical_time(1001), Some(u64::MAX));
        // Implicit sections are the VMM's: the slot says CALL and cannot end them.
        rt.ordered(&p, 1000, || {
            assert_eq!(w0.load(Ordering::SeqCst), SLOT_CALL);
            w0.store(SLOT_ENDED, Ordering::SeqCst);
            assert!(rt.in_section(1000));
        })
        .unwrap();
        assert!(!rt.in_section(1000));
        // Ids beyond the page have no slot.
        let (_, page) = det_page();
        assert_eq!(page.slot_gva(DetTid(DetPage::SLOTS)), None);
        assert!(page.word(DetTid(DetPage::SLOTS)).is_none());
    }

    /// The program can map a file over its det page; a page past the file's end faults
    /// on every access, which must read as "nothing posted", not crash the VMM.
    #[test]
    fn a_det_page_the_program_broke_is_ignored() {
        use std::os::fd::AsRawFd;
        let file = tempfile::tempfile().unwrap();
        let mem = crate::guest_mem::GuestMemory::new(4 << 20).unwrap();
        let gva = crate::guest_mem::USER_START;
        mem.map_file(gva, DetPage::BYTES, true, true, file.as_raw_fd(), 0)
            .unwrap();
        let host = mem.user_range(gva, DetPage::BYTES).unwrap();
        // SAFETY: page-aligned guest memory that outlives the page (`mem` lives to the
        // end of the test, after the runtime).
        let page = unsafe { DetPage::new(gva, host) };
        let w = page.word(DetTid(0)).unwrap();
        assert!(w.load().is_err());
        assert!(w.store(SLOT_IDLE).is_err());
        assert!(w.compare_exchange(SLOT_CALL, SLOT_IDLE).is_err());
        let p = process();
        let rt = DetRuntime::new(1000, None);
        assert_eq!(rt.det_slot(&p, 1000, || Ok(page)), Ok(gva));
        for _ in 0..3 {
            rt.det_start(&p, 1000).unwrap();
            rt.det_end(1000).unwrap();
        }
        assert!(rt.logical_time(1000).is_some_and(|t| t >= 3));
        drop(rt);
    }

    #[test]
    fn only_kendo_has_a_fast_path() {
        let p = process();
        for policy in [Policy::Lead, Policy::Follow] {
            let rt = DetRuntime::build(1000, None, policy, None);
            let r = rt.det_slot(&p, 1000, || panic!("no page under {policy:?}"));
            assert_eq!(r, Err(Errno::EOPNOTSUPP));
        }
    }

    fn wait(val: u32, deadline: Option<Instant>) -> FutexWait {
        FutexWait {
            val,
            bitset: u32::MAX,
            deadline,
        }
    }

    #[test]
    fn futex_wait_and_wake_in_fifo_order() {
        let p = Arc::new(process());
        let rt = Arc::new(DetRuntime::new(1000, None));
        rt.clone_thread(&p, 1000, || Ok(1001)).unwrap();
        rt.clone_thread(&p, 1000, || Ok(1002)).unwrap();
        // Let the waiters (times 1 and 2) go first, so that they can queue.
        rt.det_tick(1000, 10).unwrap();
        static WORD: AtomicU32 = AtomicU32::new(0);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut hs = Vec::new();
        for t in [1001i64, 1002] {
            let (p2, rt2, order) = (p.clone(), rt.clone(), order.clone());
            hs.push(std::thread::spawn(move || {
                rt2.futex_wait(&p2, t, 64, (&WORD).into(), wait(0, None))
                    .unwrap();
                order.lock().unwrap().push(t);
                // A woken thread competes again; it must go away to let the others on.
                rt2.thread_exit(&p2, t, 0, || {});
            }));
            // Queue them in a known order.
            while lock(&rt.inner).futex.get(&64).map_or(0, |q| q.len()) < (t - 1000) as usize {
                std::thread::yield_now();
            }
        }
        // A wrong value is EAGAIN, without queueing.
        assert_eq!(
            rt.futex_wait(&p, 1000, 64, (&WORD).into(), wait(1, None)),
            Err(Errno::EAGAIN)
        );
        assert_eq!(rt.futex_wake(&p, 1000, 64, 1, u32::MAX), Ok(1));
        while order.lock().unwrap().is_empty() {
            std::thread::yield_now();
        }
        assert_eq!(*order.lock().unwrap(), vec![1001]);
        assert_eq!(rt.futex_wake(&p, 1000, 64, 10, u32::MAX), Ok(1));
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![1001, 1002]);
        // Timeouts return and leave no waiter behind.
        let soon = Some(Instant::now() + Duration::from_millis(5));
        assert_eq!(
            rt.futex_wait(&p, 1000, 64, (&WORD).into(), wait(0, soon)),
            Err(Errno::ETIMEDOUT)
        );
        assert!(lock(&rt.inner).futex.is_empty());
    }

    #[test]
    fn requeue_moves_waiters() {
        let mut inner = Inner {
            holder: Arc::default(),
            order: Order::Kendo(TokenScheduler::new()),
            threads: BTreeMap::new(),
            by_det: BTreeMap::new(),
            futex: BTreeMap::new(),
            page: None,
            posted: 0,
            ticked: 0,
            away: 0,
            awaiting_record: BTreeSet::new(),
            primary_turns: BTreeMap::new(),
            primary_log_closed: false,
        };
        for tid in [1, 2, 3] {
            inner.futex.entry(8).or_default().push_back(Waiter {
                tid,
                bitset: u32::MAX,
            });
        }
        assert_eq!(inner.requeue(8, 16, 2), 2);
        assert_eq!(inner.futex[&8].len(), 1);
        assert_eq!(
            inner.futex[&16].iter().map(|w| w.tid).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(inner.wake(16, 5, 1), 2);
        assert!(!inner.futex.contains_key(&16));
    }

    /// A link that records what a primary reports, and hands a secondary the outcomes it was
    /// given (a little late, as a lagging primary would).
    #[derive(Default)]
    struct TestLink {
        turns: Mutex<Vec<Turn>>,
        logged: Mutex<Vec<(DetTid, TimedWait)>>,
        outcomes: Mutex<BTreeMap<DetTid, VecDeque<TimedWait>>>,
        diverged: Mutex<Vec<(DetTid, TurnError)>>,
    }

    impl TestLink {
        /// The secondary's link, holding the outcomes that `primary` was told.
        fn replaying(primary: &TestLink) -> Self {
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

    /// One replica's run of [`scenario`].
    struct Run {
        rt: DetRuntime,
        p: Process,
        primary: bool,
        /// (thread, op) in the order the ops ran under the token.
        trace: Mutex<Vec<(i64, &'static str)>>,
        /// Each thread's futex results and final logical time.
        results: Mutex<BTreeMap<i64, Vec<String>>>,
        /// The external calls' re-entry times: the primary's, in thread order.
        reentries: Mutex<BTreeMap<i64, VecDeque<Option<u64>>>>,
        words: [AtomicU32; 3],
        /// Real-time pause between a thread's ops, in µs, by thread (1001..).
        pause_us: [u64; 3],
        /// How long the external call of t1 blocks, in ms.
        ext_ms: u64,
    }

    impl Run {
        fn new(rt: DetRuntime, primary: bool, pause_us: [u64; 3], ext_ms: u64) -> Self {
            Run {
                rt,
                p: process(),
                primary,
                trace: Mutex::default(),
                results: Mutex::default(),
                reentries: Mutex::default(),
                words: Default::default(),
                pause_us,
                ext_ms,
            }
        }

        fn pause(&self, t: i64) {
            std::thread::sleep(Duration::from_micros(self.pause_us[(t - 1001) as usize]));
        }

        fn ord(&self, t: i64, op: &'static str) {
            self.pause(t);
            let trace = &self.trace;
            self.rt
                .ordered(&self.p, t, || trace.lock().unwrap().push((t, op)))
                .unwrap();
        }

        fn note(&self, t: i64, what: String) {
            self.results
                .lock()
                .unwrap()
                .entry(t)
                .or_default()
                .push(what);
        }

        /// A futex wait on word `i` for value 0. The secondary's deadline is far away: it
        /// must not matter.
        fn wait(&self, t: i64, i: usize, timeout: Option<Duration>) -> Result<u64, Errno> {
            let deadline = timeout.map(|d| {
                Instant::now()
                    + if self.primary {
                        d
                    } else {
                        Duration::from_secs(10)
                    }
            });
            let w = FutexWait {
                val: 0,
                bitset: u32::MAX,
                deadline,
            };
            let r = self
                .rt
                .futex_wait(&self.p, t, 64 * i as u64, (&self.words[i]).into(), w);
            self.note(t, format!("wait {i}: {r:?}"));
            r
        }

        /// Sets word `i` under the token and wakes one waiter.
        fn post(&self, t: i64, i: usize, op: &'static str) {
            let (trace, word) = (&self.trace, &self.words[i]);
            self.rt
                .ordered(&self.p, t, || {
                    word.store(1, Ordering::SeqCst);
                    trace.lock().unwrap().push((t, op));
                })
                .unwrap();
            let n = self.rt.futex_wake(&self.p, t, 64 * i as u64, 1, u32::MAX);
            self.note(t, format!("wake {i}: {n:?}"));
        }

        /// An external blocking call: the primary's re-entry time is recorded, and the
        /// secondary replays it.
        fn ext(&self, t: i64) {
            let block = || std::thread::sleep(Duration::from_millis(self.ext_ms));
            if self.primary {
                let ((), at) = self.rt.blocking(t, block).unwrap();
                let mut r = self.reentries.lock().unwrap();
                r.entry(t).or_default().push_back(at);
            } else {
                let replay = || {
                    block();
                    let at = self.reentries.lock().unwrap().get_mut(&t)?.pop_front()?;
                    Some(((), at))
                };
                self.rt.blocking_replayed(t, replay).unwrap();
            }
        }

        fn worker(&self, t: i64) {
            let (rt, p) = (&self.rt, &self.p);
            match t {
                1001 => {
                    self.ord(t, "a0");
                    // An elided section takes no turn.
                    rt.det_tick(t, 0).unwrap();
                    rt.det_start(p, t).unwrap();
                    rt.det_end(t).unwrap();
                    // The program's own section, with an implicit point nested in it.
                    rt.det_start(p, t).unwrap();
                    self.ord(t, "a1 nested");
                    rt.det_end(t).unwrap();
                    self.ext(t);
                    while self.wait(t, 0, None) == Ok(0) {}
                    self.ord(t, "a2");
                    self.post(t, 2, "a3 post 2");
                }
                1002 => {
                    for op in ["b0", "b1", "b2", "b3"] {
                        self.ord(t, op);
                    }
                    self.post(t, 0, "b4 post 0");
                    // Nobody posts word 1: a timeout.
                    let timeout = Some(Duration::from_millis(15));
                    assert_eq!(self.wait(t, 1, timeout), Err(Errno::ETIMEDOUT));
                    self.ord(t, "b5");
                }
                _ => {
                    self.ord(t, "c0");
                    self.ord(t, "c1");
                    // Posted by t1 well before the deadline.
                    while self.wait(t, 2, Some(Duration::from_secs(2))) == Ok(0) {}
                    self.ord(t, "c2");
                }
            }
            self.note(t, format!("time {:?}", rt.logical_time(t)));
            rt.thread_exit(p, t, 0, || {});
        }
    }

    /// Three threads with sections, elision, futex wait/wake, a timed wait that times out,
    /// one that is woken, and an external blocking call.
    fn scenario(run: &Run) {
        let (rt, p) = (&run.rt, &run.p);
        // A failing or stuck worker ends the program, so that the others stop too and the
        // test fails instead of hanging.
        struct EndOnPanic<'a>(&'a Process);
        impl Drop for EndOnPanic<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.finish(ExitReason::Exited(101));
                }
            }
        }
        let done = AtomicU32::new(0);
        std::thread::scope(|s| {
            for t in [1001, 1002, 1003] {
                rt.clone_thread(p, 1000, || Ok(t as u64)).unwrap();
                let done = &done;
                s.spawn(move || {
                    let _guard = EndOnPanic(&run.p);
                    run.worker(t);
                    done.fetch_add(1, Ordering::SeqCst);
                });
            }
            // Kendo: out of the others' way while it waits for them.
            rt.det_tick(1000, 1 << 20).unwrap();
            let until = Instant::now() + Duration::from_secs(5);
            while done.load(Ordering::SeqCst) < 3 && !p.exiting() {
                if Instant::now() > until {
                    p.finish(ExitReason::Exited(124));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        assert!(!p.exiting(), "the scenario failed: {:?}", p.exit_reason());
        rt.thread_exit(p, 1000, 0, || {});
        assert_eq!(rt.det_tid(1000), None);
    }

    fn same_schedule(a: &Run, b: &Run) {
        assert_eq!(*a.trace.lock().unwrap(), *b.trace.lock().unwrap());
        assert_eq!(*a.results.lock().unwrap(), *b.results.lock().unwrap());
        let turns = |r: &Run| r.rt.stats.turns.load(Ordering::Relaxed);
        assert_eq!(turns(a), turns(b));
    }

    /// Follow mode orders the sections (the trace and the turns) and replays the primary's
    /// timeouts; it does not order futex wakes against waits, so how many waiters a wake
    /// found and how often a wait loop was woken before it saw its word set depend on real
    /// time. Those are left out; a wait loop's final result, every timeout and each thread's
    /// final logical time stay in.
    fn same_follow_schedule(lead: &Run, follow: &Run) {
        assert_eq!(*lead.trace.lock().unwrap(), *follow.trace.lock().unwrap());
        let ordered = |r: &Run| {
            let results = r.results.lock().unwrap();
            results
                .iter()
                .map(|(t, v)| {
                    let kept: Vec<String> = v
                        .iter()
                        .filter(|w| !w.starts_with("wake ") && !w.ends_with(": Ok(0)"))
                        .cloned()
                        .collect();
                    (*t, kept)
                })
                .collect::<BTreeMap<_, _>>()
        };
        let (l, f) = (ordered(lead), ordered(follow));
        assert_eq!(l, f);
        // Not vacuous: the timeout and each loop's ending EAGAIN are compared.
        assert!(
            l[&1002].contains(&format!("wait 1: {:?}", Err::<u64, _>(Errno::ETIMEDOUT))),
            "{l:?}"
        );
        assert!(
            l[&1001].iter().any(|w| w.starts_with("wait 0: Err")),
            "{l:?}"
        );
        let turns = |r: &Run| r.rt.stats.turns.load(Ordering::Relaxed);
        assert_eq!(turns(lead), turns(follow));
    }

    /// What the primary's scenario must report: t2 timed out (Kendo: in a turn), t3 was
    /// woken (reported under Kendo only: follow mode's secondary needs only the timeouts).
    fn check_outcomes(link: &TestLink, kendo: bool) {
        let logged = link.logged.lock().unwrap();
        let t2: Vec<_> = logged.iter().filter(|(t, _)| *t == DetTid(2)).collect();
        assert_eq!(t2.len(), 1, "{logged:?}");
        if !kendo {
            let timed_out = TimedWait {
                took_turn: false,
                timed_out: true,
                reentry_at: None,
            };
            assert_eq!(t2[0].1, timed_out);
            assert!(!logged.iter().any(|(t, _)| *t == DetTid(3)), "{logged:?}");
            return;
        }
        assert!(t2[0].1.took_turn && t2[0].1.timed_out);
        assert_eq!(t2[0].1.reentry_at.is_some(), kendo);
        let woken = TimedWait {
            took_turn: false,
            timed_out: false,
            reentry_at: None,
        };
        assert_eq!(
            logged
                .iter()
                .filter(|(t, _)| *t == DetTid(3))
                .collect::<Vec<_>>(),
            [&(DetTid(3), woken)]
        );
    }

    #[test]
    fn follow_takes_the_leads_turns() {
        let started = Instant::now();
        let lead_link = Arc::new(TestLink::default());
        let rt = DetRuntime::replicated(1000, None, Policy::Lead, true, lead_link.clone());
        let lead = Run::new(rt, true, [300, 0, 150], 30);
        scenario(&lead);
        check_outcomes(&lead_link, false);
        let turns = lead_link.turns.lock().unwrap().clone();
        assert_eq!(
            turns.len() as u64,
            lead.rt.stats.turns.load(Ordering::Relaxed)
        );
        assert!(turns
            .iter()
            .enumerate()
            .all(|(i, t)| t.global_seq == i as u64));

        let follow_link = Arc::new(TestLink::replaying(&lead_link));
        let rt = DetRuntime::replicated(1000, None, Policy::Follow, false, follow_link.clone());
        // Another real-time order: t1 first and fast, t3 slow.
        let follow = Run::new(rt, false, [0, 100, 400], 1);
        *follow.reentries.lock().unwrap() = lead.reentries.lock().unwrap().clone();
        std::thread::scope(|s| {
            s.spawn(|| {
                for (i, &turn) in turns.iter().enumerate() {
                    if i % 4 == 0 {
                        std::thread::sleep(Duration::from_micros(500));
                    }
                    follow.rt.push_turn(turn).unwrap();
                }
                follow.rt.close_log();
            });
            scenario(&follow);
        });
        same_follow_schedule(&lead, &follow);
        assert!(follow_link.diverged.lock().unwrap().is_empty());
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    /// Follow mode: a futex call that only one replica makes (contention on a lock that
    /// only one of them met) takes no turn, so the logs still match.
    #[test]
    fn follow_mode_futex_calls_take_no_turn() {
        let p = process();
        let link = Arc::new(TestLink::default());
        let lead = DetRuntime::replicated(1000, None, Policy::Lead, true, link.clone());
        let word = AtomicU32::new(1);
        lead.det_start(&p, 1000).unwrap();
        lead.det_end(1000).unwrap();
        assert_eq!(lead.futex_wake(&p, 1000, 0x1000, 1, u32::MAX), Ok(0));
        assert_eq!(
            lead.futex_wait(&p, 1000, 0x1000, (&word).into(), wait(0, None)),
            Err(Errno::EAGAIN)
        );
        lead.det_start(&p, 1000).unwrap();
        lead.det_end(1000).unwrap();
        let turns = link.turns.lock().unwrap().clone();
        assert_eq!(turns.len(), 2);

        let flink = Arc::new(TestLink::replaying(&link));
        let follow = DetRuntime::replicated(1000, None, Policy::Follow, false, flink.clone());
        for t in turns {
            follow.push_turn(t).unwrap();
        }
        follow.close_log();
        for _ in 0..2 {
            follow.det_start(&p, 1000).unwrap();
            follow.det_end(1000).unwrap();
        }
        assert!(flink.diverged.lock().unwrap().is_empty());
    }

    /// Follow mode's secondary times out where the primary's log says, not by its own clock:
    /// at once when the log holds the timeout, never while the log says the primary's
    /// thread was woken.
    #[test]
    fn follow_secondary_times_out_where_the_log_says() {
        let p = process();
        let link = Arc::new(TestLink::default());
        link.outcomes
            .lock()
            .unwrap()
            .entry(DetTid(0))
            .or_default()
            .push_back(TimedWait {
                took_turn: false,
                timed_out: true,
                reentry_at: None,
            });
        let rt = DetRuntime::replicated(1000, None, Policy::Follow, false, link.clone());
        let word = AtomicU32::new(0);
        let far = Some(Instant::now() + Duration::from_secs(30));
        let started = Instant::now();
        assert_eq!(
            rt.futex_wait(&p, 1000, 0x1000, (&word).into(), wait(0, far)),
            Err(Errno::ETIMEDOUT)
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(link.outcomes.lock().unwrap()[&DetTid(0)].is_empty());

        // Nothing logged, and a deadline already past: the secondary waits for its wake.
        // (The waker uses the same guest tid: follow-mode wakes take no turn, so it
        // needs no slot of its own.)
        let rt = Arc::new(rt);
        let (rt2, p2) = (rt.clone(), Arc::new(p));
        let p3 = p2.clone();
        let waiter = std::thread::spawn(move || {
            let past = Some(Instant::now());
            rt2.futex_wait(
                &p3,
                1000,
                0x2000,
                (&AtomicU32::new(0)).into(),
                wait(0, past),
            )
        });
        wait_for("the waiter is queued", || {
            in_futex_wait(&rt, 1000) || waiter.is_finished()
        });
        assert!(!waiter.is_finished(), "timed out by its own clock");
        assert_eq!(rt.futex_wake(&p2, 1000, 0x2000, 1, u32::MAX), Ok(1));
        assert_eq!(waiter.join().unwrap(), Ok(0));
    }

    #[test]
    fn kendo_secondary_replays_reentries_and_timeouts() {
        let started = Instant::now();
        let plink = Arc::new(TestLink::default());
        let rt = DetRuntime::replicated(1000, None, Policy::Kendo, true, plink.clone());
        let primary = Run::new(rt, true, [300, 0, 150], 30);
        scenario(&primary);
        check_outcomes(&plink, true);
        // Kendo logs the turns granted while a thread was away in a blocking call (t1's
        // external call), and only those: fewer than all turns, in grant order.
        let turns = plink.turns.lock().unwrap().clone();
        let all = primary.rt.stats.turns.load(Ordering::Relaxed);
        assert!(!turns.is_empty() && (turns.len() as u64) < all, "{turns:?}");
        assert!(turns.windows(2).all(|w| w[0].global_seq < w[1].global_seq));
        let at = primary.reentries.lock().unwrap()[&1001][0];
        assert!(at.is_some());

        let slink = Arc::new(TestLink::replaying(&plink));
        let rt = DetRuntime::replicated(1000, None, Policy::Kendo, false, slink);
        // As the channel would deliver them; the secondary takes no turn the log does not
        // show while its t1 waits for its record.
        for t in turns {
            rt.push_turn(t).unwrap();
        }
        let secondary = Run::new(rt, false, [0, 100, 400], 1);
        *secondary.reentries.lock().unwrap() = primary.reentries.lock().unwrap().clone();
        scenario(&secondary);
        same_schedule(&primary, &secondary);
        // The logical times agree too (each thread's last note).
        assert!(secondary.results.lock().unwrap()[&1001]
            .last()
            .unwrap()
            .starts_with("time Some("));
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    /// A Kendo secondary's runtime (no primary behind it) with t0 (guest 1000) and t1
    /// (guest 1001), both at logical time 1 after the clone (turn 0).
    fn kendo_secondary_with_two_threads() -> (Arc<Process>, Arc<DetRuntime>) {
        let p = Arc::new(process());
        let link = Arc::new(TestLink::default());
        let rt = Arc::new(DetRuntime::replicated(
            1000,
            None,
            Policy::Kendo,
            false,
            link,
        ));
        rt.clone_thread(&p, 1000, || Ok(1001)).unwrap();
        (p, rt)
    }

    /// t0 in a replayed blocking call until the returned sender delivers the primary's
    /// re-entry time; then `after` runs on the same thread.
    fn t0_awaits_record(
        rt: &Arc<DetRuntime>,
        after: impl FnOnce(&DetRuntime) + Send + 'static,
    ) -> (std::sync::mpsc::Sender<u64>, std::thread::JoinHandle<()>) {
        let (record_tx, record_rx) = std::sync::mpsc::channel::<u64>();
        let rt0 = rt.clone();
        let t0 = std::thread::spawn(move || {
            rt0.blocking_replayed(1000, || record_rx.recv().ok().map(|at| ((), Some(at))))
                .unwrap();
            after(&rt0);
        });
        wait_for("t0 has left the competition", || awaits_record(rt, 1000));
        (record_tx, t0)
    }

    /// One det section of t1 on a thread of its own.
    fn section_of_t1(p: &Arc<Process>, rt: &Arc<DetRuntime>) -> std::thread::JoinHandle<()> {
        let (rt1, p1) = (rt.clone(), p.clone());
        std::thread::spawn(move || {
            rt1.det_start(&p1, 1001).unwrap();
            rt1.det_end(1001).unwrap();
        })
    }

    fn logged(tid: u32, thread_seq: u64, global_seq: u64) -> Turn {
        Turn {
            tid: DetTid(tid),
            thread_seq,
            global_seq,
        }
    }

    /// A Kendo secondary whose thread waits for a blocking call's record takes only turns
    /// the primary's log shows: none without log, the logged thread's with it, and none for
    /// another thread when the log says the waiting thread came back first.
    #[test]
    fn kendo_secondary_follows_the_log_while_a_thread_awaits_its_record() {
        let (p, rt) = kendo_secondary_with_two_threads();
        let p0 = p.clone();
        let (record, t0) = t0_awaits_record(&rt, move |rt| {
            rt.det_start(&p0, 1000).unwrap();
            rt.det_end(1000).unwrap();
        });
        let settle = |w0: u64, t1: &std::thread::JoinHandle<()>| {
            wait_for("t1 waits for the token", || {
                token_waits(&rt) > w0 || t1.is_finished()
            })
        };
        // t1 holds the token (t0 is away), but the log does not show turn 1 yet.
        let w0 = token_waits(&rt);
        let t1 = section_of_t1(&p, &rt);
        settle(w0, &t1);
        assert!(!t1.is_finished(), "a turn the primary's log does not show");
        // Nor does the doorbell path think it may go.
        assert!(!rt.can_proceed(1001));
        rt.push_turn(logged(1, 1, 1)).unwrap();
        t1.join().unwrap();
        // The primary's t0 came back at 2 and took turn 2 before t1's next.
        rt.push_turn(logged(0, 1, 2)).unwrap();
        let w0 = token_waits(&rt);
        let t1 = section_of_t1(&p, &rt);
        settle(w0, &t1);
        assert!(!t1.is_finished(), "t1 took the turn the log gives t0");
        record.send(2).unwrap();
        t0.join().unwrap();
        // t0's record is in: nothing is awaited any more, so t1 goes on unlogged.
        t1.join().unwrap();
        assert_eq!(rt.logical_time(1000), Some(3));
        assert_eq!(rt.logical_time(1001), Some(3));
    }

    /// Turns with keys below an awaiting thread's need no log: that thread could not have
    /// taken them first. The first key above it waits for the log.
    #[test]
    fn kendo_secondary_needs_no_log_below_an_awaiting_thread() {
        let (p, rt) = kendo_secondary_with_two_threads();
        // t0 leaves at time 4; t1 is at 1.
        rt.det_tick(1000, 3).unwrap();
        let (record, t0) = t0_awaits_record(&rt, |_| ());
        // (1, t1), (2, t1), (3, t1): below (4, t0), no log needed.
        for _ in 0..3 {
            let t1 = section_of_t1(&p, &rt);
            let until = Instant::now() + Duration::from_secs(5);
            while !t1.is_finished() {
                assert!(
                    Instant::now() < until,
                    "a turn below an awaiting thread waited"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            t1.join().unwrap();
        }
        assert_eq!(rt.logical_time(1001), Some(4));
        // (4, t1) is above (4, t0): it waits for the log (or t0's record).
        let w0 = token_waits(&rt);
        let t1 = section_of_t1(&p, &rt);
        wait_for("t1 waits for the token", || {
            token_waits(&rt) > w0 || t1.is_finished()
        });
        assert!(
            !t1.is_finished(),
            "a turn above an awaiting thread without log"
        );
        rt.push_turn(logged(1, 3, 4)).unwrap();
        t1.join().unwrap();
        record.send(6).unwrap();
        t0.join().unwrap();
        assert_eq!(rt.logical_time(1000), Some(6));
    }

    #[test]
    fn describe_names_the_holder_and_an_awaiting_thread() {
        let (_p, rt) = kendo_secondary_with_two_threads();
        let (record, t0) = t0_awaits_record(&rt, |_| ());
        let d = rt.describe();
        assert!(
            d.starts_with("policy Kendo, 1 turns granted, token: t1"),
            "{d}"
        );
        assert!(
            d.contains("t0 (guest tid 1000): blocked in a syscall, logical time 1, awaiting"),
            "{d}"
        );
        assert!(
            d.contains("t1 (guest tid 1001): running, logical time 1\n"),
            "{d}"
        );
        assert!(d.contains("it holds 0 ()"), "{d}");
        record.send(1).unwrap();
        t0.join().unwrap();
        assert!(!rt.describe().contains("awaiting"));
    }

    #[test]
    fn kendo_blocking_returns_the_reentry_time() {
        let p = process();
        let rt = DetRuntime::new(1000, None);
        rt.clone_thread(&p, 1000, || Ok(1001)).unwrap();
        // t0 (time 1) blocks; t1 (time 1) takes a turn meanwhile, so t0 re-enters after it.
        let ((), at) = rt
            .blocking(1000, || {
                rt.ordered(&p, 1001, || ()).unwrap();
            })
            .unwrap();
        assert_eq!(at, Some(2));
        assert_eq!(rt.logical_time(1000), Some(2));
        // The secondary's replay competes at exactly the given time.
        let r = rt.blocking_replayed(1000, || Some((7, Some(9)))).unwrap();
        assert_eq!((r, rt.logical_time(1000)), (7, Some(9)));
        // A time below the thread's own is refused; a missing record is the end.
        assert!(matches!(
            rt.blocking_replayed(1000, || Some(((), Some(3)))),
            Err(DetError::Sched(SchedError::ReentryTooEarly { .. }))
        ));
        assert!(matches!(
            rt.blocking_replayed(1000, || None::<((), _)>),
            Err(DetError::Exiting)
        ));
    }

    #[test]
    fn lead_grants_the_first_asker_and_logs_each_turn() {
        let p = process();
        let link = Arc::new(TestLink::default());
        let rt = DetRuntime::replicated(1000, None, Policy::Lead, true, link.clone());
        rt.clone_thread(&p, 1000, || Ok(1001)).unwrap();
        assert_eq!(rt.logical_time(1000), None);
        // No logical time: a tick changes nothing, and t1 goes first because it asks first.
        rt.det_tick(1000, 100).unwrap();
        assert!(rt.can_proceed(1001) && rt.can_proceed(1000));
        rt.det_start(&p, 1001).unwrap();
        assert!(!rt.can_proceed(1000));
        rt.det_end(1001).unwrap();
        rt.det_tick(1000, 0).unwrap();
        rt.det_start(&p, 1000).unwrap(); // elided: no turn
        rt.det_end(1000).unwrap();
        rt.ordered(&p, 1000, || ()).unwrap();
        let (blocked, at) = rt.blocking(1001, || 5).unwrap();
        assert_eq!((blocked, at), (5, None));
        let t = |tid, thread_seq, global_seq| Turn {
            tid: DetTid(tid),
            thread_seq,
            global_seq,
        };
        assert_eq!(
            *link.turns.lock().unwrap(),
            [t(0, 0, 0), t(1, 0, 1), t(0, 1, 2)]
        );
        assert_eq!(rt.stats.turns.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn follow_reports_a_turn_the_closed_log_lacks() {
        let p = Arc::new(process());
        let link = Arc::new(TestLink::default());
        let rt = Arc::new(DetRuntime::replicated(
            1000,
            None,
            Policy::Follow,
            false,
            link.clone(),
        ));
        let turn = |tid, thread_seq, global_seq| Turn {
            tid: DetTid(tid),
            thread_seq,
            global_seq,
        };
        assert_eq!(
            rt.push_turn(turn(0, 0, 1)),
            Err(TurnError::GlobalSeqGap {
                expected: 0,
                found: 1
            })
        );
        rt.push_turn(turn(0, 0, 0)).unwrap();
        rt.clone_thread(&p, 1000, || Ok(1001)).unwrap();
        // t1 asks for a turn the log does not hold (yet): it waits...
        let (rt2, p2) = (rt.clone(), p.clone());
        let w0 = token_waits(&rt);
        let h = std::thread::spawn(move || rt2.det_start(&p2, 1001));
        wait_for("t1 waits for the token", || {
            token_waits(&rt) > w0 || h.is_finished()
        });
        assert!(!h.is_finished());
        // ...until the log ends without it.
        rt.close_log();
        let mismatch = TurnError::Mismatch {
            tid: DetTid(1),
            thread_seq: 0,
        };
        assert!(matches!(h.join().unwrap(), Err(DetError::Diverged(e)) if e == mismatch));
        assert_eq!(*link.diverged.lock().unwrap(), [(DetTid(1), mismatch)]);
        // Later ones fail at once too, and only the first divergence is reported.
        assert!(matches!(
            rt.det_start(&p, 1000),
            Err(DetError::Diverged(TurnError::Mismatch { .. }))
        ));
        assert_eq!(
            Errno::from(DetError::Diverged(TurnError::Closed)),
            Errno::EINTR
        );
        assert_eq!(link.diverged.lock().unwrap().len(), 1);
        assert_eq!(rt.push_turn(turn(1, 0, 1)), Err(TurnError::Closed));
        // A runtime that follows no log takes no turns.
        let kendo = DetRuntime::new(1000, None);
        assert_eq!(kendo.push_turn(turn(0, 0, 0)), Err(TurnError::Closed));
    }
}
