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
//!
//! A thread whose turn is due can still be asleep in a futex wait; `wait_for` lets it out
//! (a wake that went to another waiter here), or reports that the replicas went different
//! ways through synchronisation no turn orders (every thread waits on another).
//!
//! Other implicit det points whose occurrence depends on timing take no turn under Lead and
//! Follow either (the VMM's syscall layer decides which: `sched_yield`, and `brk`, which
//! glibc's main arena calls or not depending on when other threads free into it).
//!
//! # Where things are
//!
//! - this module: the runtime's shared state ([`DetRuntime`], its lock-protected `Inner`), its
//!   construction and what it reports ([`DetRuntime::describe`], the counters);
//! - `order`: the token under each [`Policy`] (Kendo's [`TokenScheduler`], or the `FreeToken`
//!   of Lead and Follow);
//! - `token`: taking and giving back the token: explicit sections, implicit det points,
//!   clone, exit, and blocking calls;
//! - `page`: the det page ([`DetPage`]) and the fold of its slots into the scheduler;
//! - `futex`: the emulated futex queues and the futex calls;
//! - `timed`: futex waits with a deadline in a pair, settled so that both replicas agree;
//! - `secondary`: what a secondary takes from its primary: the turn log, the Kendo
//!   secondary's gate, replayed blocking calls.

mod futex;
mod order;
mod page;
#[cfg(test)]
mod scenario_tests;
mod secondary;
#[cfg(test)]
mod testing;
mod timed;
mod token;
mod wait_for;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use guest_memory::guest_mem::GuestMemory;
use guest_memory::Errno;
use thiserror::Error;

use crate::{DetTid, Phase, SchedError, TokenScheduler, TurnError, TurnFollower, TurnLog};
use order::{FreeMode, FreeToken, Order};

pub use crate::link::{ScheduleLink, TimedWait, WaitNews};
pub use page::DetPage;

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

/// What the runtime needs of the program it serves: whether it is ending (a thread waiting
/// for the token gives up then), and its memory (a thread's exit clears its
/// CLONE_CHILD_CLEARTID word). The VMM's process implements it; det does not depend on
/// the VMM.
pub trait ProcessView {
    /// Whether the program is ending.
    fn exiting(&self) -> bool;
    /// The program's memory.
    fn memory(&self) -> &GuestMemory;
}

/// Callers often hold the process in an `Arc`.
impl<P: ProcessView + ?Sized> ProcessView for Arc<P> {
    fn exiting(&self) -> bool {
        (**self).exiting()
    }

    fn memory(&self) -> &GuestMemory {
        (**self).memory()
    }
}

/// Locks a mutex, ignoring poisoning: a thread that panicked while it held the runtime's
/// lock must not take the program's other threads down with a second panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

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

impl Policy {
    /// The policy stored as `p as u8`.
    fn from_u8(p: u8) -> Self {
        match p {
            x if x == Policy::Lead as u8 => Policy::Lead,
            x if x == Policy::Follow as u8 => Policy::Follow,
            _ => Policy::Kendo,
        }
    }
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
    /// Asleep on `cv` in [`DetRuntime::acquire`], waiting for the token, and not yet
    /// notified: a hand-off to this thread must wake it. Cleared by the notification, so
    /// that the changes made before it runs again cost one wake, and a thread that is still
    /// spinning (or holds the lock) costs none.
    parked: bool,
    /// Follow: how many of the primary's turns had been taken when this thread was last let
    /// out of a futex wait because its turn was due (`Inner::turn_due_in_futex`), so that a
    /// thread that goes back to sleep is let out once per turn, not in a busy loop.
    released_at: Option<u64>,
    /// Asleep in a futex wait with a deadline (Lead and Follow), whose end a pair's
    /// secondary takes from the primary's log.
    timed_wait: bool,
}

impl Slot {
    fn new(det: DetTid) -> Self {
        Slot {
            det,
            cv: Arc::new(Condvar::new()),
            woken: false,
            own_section: false,
            spinning: false,
            parked: false,
            released_at: None,
            timed_wait: false,
        }
    }
}

/// A futex waiter, queued in FIFO order under the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Waiter {
    tid: i64,
    bitset: u32,
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
    /// Kendo primary of a pair: threads back from a blocking call whose record is not on the
    /// channel yet ([`DetRuntime::blocking_recorded`]); they still count in `away`.
    away_unrecorded: BTreeSet<DetTid>,
    /// Kendo secondary: threads waiting for the primary's record of a blocking call
    /// ([`DetRuntime::blocking_replayed`]). They are out of the competition meanwhile, as
    /// the primary's were, and a turn that could have come after one of them came back
    /// must be one the primary's log shows (see `gated`).
    awaiting_record: BTreeSet<DetTid>,
    /// Kendo secondary: the primary's logged turns not yet passed, by global sequence.
    primary_turns: BTreeMap<u64, DetTid>,
    /// Kendo secondary: the primary's log is complete.
    primary_log_closed: bool,
    /// Follow: bumped whenever a thread moves (a turn granted, a futex wait ended), so that
    /// the wait-for check (`wait_for`) sees a state that stayed still, not two alike.
    progress: u64,
    /// Follow: since when, and at which `progress`, the wait-for check has found the
    /// replica stuck.
    stuck_since: Option<(Instant, u64)>,
}

impl Inner {
    pub(super) fn slot(&self, tid: i64) -> Result<(DetTid, Arc<Condvar>), DetError> {
        self.threads
            .get(&tid)
            .map(|s| (s.det, s.cv.clone()))
            .ok_or(DetError::UnknownThread(tid))
    }

    pub(super) fn woken(&self, tid: i64) -> bool {
        self.threads.get(&tid).is_some_and(|s| s.woken)
    }

    /// Folds the det page, and wakes whoever that makes the holder.
    pub(super) fn refresh(&mut self) {
        if self.sync() {
            self.notify_holder();
        }
    }

    /// Wakes the token holder (or the next taker) if it is waiting in `det_start`; called
    /// after every change. Folds the det page first.
    pub(super) fn notify_holder(&mut self) {
        self.sync();
        let h = self.order.holder_or_next();
        self.holder
            .store(h.map_or(0, |h| u64::from(h.0) + 1), Ordering::Release);
        if let Some(h) = h {
            // Follow: the thread whose turn is next may be asleep in a futex wait, which it
            // must leave (`turn_due_in_futex`).
            let follow = self.order.follow_taken().is_some();
            let waiting = self.order.phase(h) == Some(Phase::Waiting);
            if let Some(s) = self.by_det.get(&h).and_then(|t| self.threads.get_mut(t)) {
                // A waiter that is not parked is spinning, or will look at the schedule
                // again before it parks: a wake (a futex syscall) would find nobody.
                if follow || (waiting && s.parked) {
                    s.parked = false;
                    s.cv.notify_one();
                }
            }
        }
    }

    /// Wakes the holder even if it is not waiting in `det_start` (a thread held back by
    /// `gated` is not): the log or a record it needs may just have come.
    pub(super) fn wake_holder(&self) {
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
    pub(super) fn notify_all_waiting(&self) {
        for s in self.threads.values() {
            if self.order.phase(s.det) == Some(Phase::Waiting) {
                s.cv.notify_one();
            }
        }
    }

    /// Ends a section the thread is in (its own or an elided one), so that it can block.
    pub(super) fn close_section(&mut self, det: DetTid) -> Result<(), DetError> {
        if matches!(
            self.order.phase(det),
            Some(Phase::InSection | Phase::InElidedSection)
        ) {
            self.order.det_end(det)?;
        }
        Ok(())
    }

    /// Kendo: puts a thread that left the competition back in, at its pledged time if it
    /// made a pledge, else at the earliest allowed time; returns that time. None under the
    /// other policies, or if the thread had not left.
    pub(super) fn resume(&mut self, tid: i64) -> Option<u64> {
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
    /// Set for good when a secondary goes live ([`DetRuntime::go_live`]): from then on it
    /// decides as a primary, and what it tells the link goes nowhere.
    primary: AtomicBool,
}

/// The det runtime of one program (see the module documentation).
pub struct DetRuntime {
    inner: Mutex<Inner>,
    holder: Arc<AtomicU64>,
    /// Counters.
    pub stats: DetStats,
    /// The host path of libditto.so, served to the program at [`LIBDITTO_GUEST_PATH`].
    preload: Option<std::path::PathBuf>,
    /// The [`Policy`] as its `u8`: Follow becomes Lead when a secondary goes live.
    policy: AtomicU8,
    link: Option<Link>,
    /// A divergence was reported to the link (only the first one is).
    diverged: AtomicBool,
    /// A secondary's runtime that went live ([`DetRuntime::go_live`]).
    live: AtomicBool,
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
        Self::build(
            main_tid,
            preload,
            policy,
            Some(Link {
                link,
                primary: AtomicBool::new(primary),
            }),
        )
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
            away_unrecorded: BTreeSet::new(),
            awaiting_record: BTreeSet::new(),
            primary_turns: BTreeMap::new(),
            primary_log_closed: false,
            progress: 0,
            stuck_since: None,
        };
        inner.notify_holder();
        DetRuntime {
            holder,
            inner: Mutex::new(inner),
            stats: DetStats::default(),
            preload,
            policy: AtomicU8::new(policy as u8),
            link,
            diverged: AtomicBool::new(false),
            live: AtomicBool::new(false),
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
        Policy::from_u8(self.policy.load(Ordering::Acquire))
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
            .filter(|l| l.primary.load(Ordering::Acquire) == primary)
            .map(|l| &*l.link)
    }

    /// Turns a failed `det_start` into the caller's error; reports the first divergence
    /// to the link, unless the program is ending anyway (then threads may ask for turns
    /// that the primary's threads, killed by the exit, never took).
    fn failed(&self, process: &dyn ProcessView, det: DetTid, e: DetError) -> DetError {
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

    /// The schedule's state in a few lines, for a report on a replica that stopped making
    /// progress: the token's holder, each thread's phase and logical time, and (Kendo
    /// secondary) the threads awaiting a record and the primary's logged turns it holds.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let g = self.locked();
        let mut out = format!("policy {:?}", self.policy());
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

    /// Whether `tid` is inside its own det section (a call there must not be retried).
    pub fn in_section(&self, tid: i64) -> bool {
        let g = self.locked();
        g.threads
            .get(&tid)
            .and_then(|s| g.order.phase(s.det))
            .is_some_and(|p| p == Phase::InSection)
    }
}
