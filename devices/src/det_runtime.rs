//! The det runtime: the VMM's side of deterministic execution (DESIGN.md §5, `det` mode).
//!
//! One [`DetRuntime`] per program run with `--det`. It wraps the pure
//! [`det::sched::TokenScheduler`] in a mutex and gives every program thread its own condition
//! variable, so a hand-off wakes exactly the new token holder. It maps guest thread ids (which
//! are themselves allocated under the token, so they are deterministic too) to deterministic
//! thread ids, and it keeps the futex wait queues: under `--det` futexes are emulated here, so
//! that who is woken, and the logical time at which a woken thread competes again, follow the
//! token order instead of the host kernel's.
//!
//! The runtime never decides anything on its own: every change of the schedule happens in a
//! call made by a program thread. The only real-time effects are futex timeouts and
//! external blocking calls (sockets, terminals, sleeps), which leave the competition and
//! re-enter at the earliest allowed point, the non-deterministic events of DESIGN.md §5.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use det::{DetTid, Phase, SchedError, Start, TokenScheduler};
use thiserror::Error;

use crate::errno::Errno;
use crate::process::{lock, Process};

/// How often a thread waiting for the token checks whether the program is ending.
const EXIT_POLL: Duration = Duration::from_millis(10);

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
}

impl From<DetError> for Errno {
    fn from(e: DetError) -> Errno {
        match e {
            DetError::UnknownThread(_) => Errno::ESRCH,
            DetError::Sched(SchedError::TimeOverflow(_)) => Errno::ERANGE,
            DetError::Sched(_) => Errno::EINVAL,
            DetError::Exiting => Errno::EINTR,
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
}

/// A futex waiter, queued in FIFO order under the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Waiter {
    tid: i64,
    bitset: u32,
}

struct Inner {
    /// The holder's DetTid + 1 (0: none), published for waiters that spin before sleeping.
    holder: Arc<AtomicU64>,
    sched: TokenScheduler,
    threads: BTreeMap<i64, Slot>,
    by_det: BTreeMap<DetTid, i64>,
    futex: BTreeMap<u64, VecDeque<Waiter>>,
}

impl Inner {
    fn slot(&self, tid: i64) -> Result<(DetTid, Arc<Condvar>), DetError> {
        self.threads
            .get(&tid)
            .map(|s| (s.det, s.cv.clone()))
            .ok_or(DetError::UnknownThread(tid))
    }

    /// Wakes the token holder if it is waiting in `det_start`; called after every change.
    fn notify_holder(&self) {
        let h = self.sched.holder();
        self.holder
            .store(h.map_or(0, |h| u64::from(h.0) + 1), Ordering::Release);
        if let Some(h) = h {
            if self.sched.phase(h) == Some(Phase::Waiting) {
                if let Some(s) = self.by_det.get(&h).and_then(|t| self.threads.get(t)) {
                    s.cv.notify_one();
                }
            }
        }
    }

    /// Ends a section the thread is in (its own or an elided one), so that it can block.
    fn close_section(&mut self, det: DetTid) -> Result<(), DetError> {
        if matches!(
            self.sched.phase(det),
            Some(Phase::InSection | Phase::InElidedSection)
        ) {
            self.sched.det_end(det)?;
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

    /// Puts a thread that left the competition back in, at the earliest allowed time.
    fn resume(&mut self, tid: i64) {
        let Some(det) = self.threads.get(&tid).map(|s| s.det) else {
            return;
        };
        if let Some(Phase::Left { .. }) = self.sched.phase(det) {
            let at = self.sched.reentry_floor(det);
            if let Ok(at) = at {
                // Cannot fail: `at` is the floor and the thread has no pledge.
                let _ = self.sched.reenter(det, at);
            }
        }
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
}

/// The det runtime of one program (see the module documentation).
pub struct DetRuntime {
    inner: Mutex<Inner>,
    holder: Arc<AtomicU64>,
    /// Counters.
    pub stats: DetStats,
    /// The host path of libditto.so, served to the program at [`LIBDITTO_GUEST_PATH`].
    preload: Option<std::path::PathBuf>,
}

/// Where a dynamic program finds libditto under `--det`: a virtual path that the VMM serves
/// from the host's libditto.so, whatever the root holds (the root is never written to).
pub const LIBDITTO_GUEST_PATH: &str = "/.ditto/libditto.so";

impl DetRuntime {
    /// A runtime whose main thread has guest id `main_tid` and deterministic id
    /// [`DetTid::MAIN`]. `preload` is the host libditto.so served at [`LIBDITTO_GUEST_PATH`].
    pub fn new(main_tid: i64, preload: Option<std::path::PathBuf>) -> Self {
        let mut threads = BTreeMap::new();
        threads.insert(
            main_tid,
            Slot {
                det: DetTid::MAIN,
                cv: Arc::new(Condvar::new()),
                woken: false,
            },
        );
        let holder = Arc::new(AtomicU64::new(1));
        DetRuntime {
            holder: holder.clone(),
            inner: Mutex::new(Inner {
                holder,
                sched: TokenScheduler::new(),
                threads,
                by_det: BTreeMap::from([(DetTid::MAIN, main_tid)]),
                futex: BTreeMap::new(),
            }),
            stats: DetStats::default(),
            preload,
        }
    }

    /// The host file behind [`LIBDITTO_GUEST_PATH`], if one is served.
    pub fn preload(&self) -> Option<&std::path::Path> {
        self.preload.as_deref()
    }

    /// The deterministic id of guest thread `tid`.
    pub fn det_tid(&self, tid: i64) -> Option<DetTid> {
        lock(&self.inner).threads.get(&tid).map(|s| s.det)
    }

    /// The logical time of guest thread `tid`.
    pub fn logical_time(&self, tid: i64) -> Option<u64> {
        let g = lock(&self.inner);
        let det = g.threads.get(&tid)?.det;
        g.sched.time(det)
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
        match g.sched.phase(det) {
            Some(Phase::InSection) if implicit => return Ok((g, Held::Nested)),
            // An implicit point inside an elided section is ordered after all: the elided
            // section ends here (it had no logical time to give back), and the program's own
            // det_end later answers EINVAL, which libditto ignores.
            Some(Phase::InElidedSection) if implicit => g.sched.det_end(det)?,
            _ => {}
        }
        self.stats.ops.fetch_add(1, Ordering::Relaxed);
        let mut waited = false;
        loop {
            match g.sched.det_start(det)? {
                Start::Granted(_) => return Ok((g, Held::Own)),
                Start::Elided => return Ok((g, Held::Elided)),
                Start::Wait => {
                    if !waited {
                        waited = true;
                        self.stats.waits.fetch_add(1, Ordering::Relaxed);
                        drop(g);
                        let me = u64::from(det.0) + 1;
                        let until = Instant::now() + SPIN;
                        while self.holder.load(Ordering::Acquire) != me && Instant::now() < until {
                            std::thread::yield_now();
                        }
                        g = lock(&self.inner);
                        continue;
                    }
                    g = cv
                        .wait_timeout(g, EXIT_POLL)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    if process.exiting() {
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
                g.sched.phase(det),
                Some(Phase::InSection | Phase::InElidedSection)
            ) {
                g.sched.det_end(det)?;
            }
        }
        g.notify_holder();
        Ok(())
    }

    /// `det_start`: returns once `tid` holds the token.
    pub fn det_start(&self, process: &Process, tid: i64) -> Result<(), DetError> {
        let g = lock(&self.inner);
        self.acquire(g, process, tid, false).map(drop)
    }

    /// Whether a det point by `tid` would go ahead without waiting: it holds the token,
    /// or it is already inside a section. The doorbell serves such calls on its server
    /// thread without a VM exit, and bounces the others to the vCPU thread, where waiting
    /// for the token costs one thread switch instead of two.
    pub fn can_proceed(&self, tid: i64) -> bool {
        let g = lock(&self.inner);
        let Ok((det, _)) = g.slot(tid) else {
            return false;
        };
        matches!(g.sched.phase(det), Some(Phase::InSection)) || g.sched.holder() == Some(det)
    }

    /// `det_end`: ends the section, +1 logical time.
    pub fn det_end(&self, tid: i64) -> Result<(), DetError> {
        let mut g = lock(&self.inner);
        let (det, _) = g.slot(tid)?;
        g.sched.det_end(det)?;
        g.notify_holder();
        Ok(())
    }

    /// `det_tick(n)`: +n logical time; 0 elides the next `det_start`.
    pub fn det_tick(&self, tid: i64, n: u64) -> Result<(), DetError> {
        let mut g = lock(&self.inner);
        let (det, _) = g.slot(tid)?;
        g.sched.det_tick(det, n)?;
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
        let g = lock(&self.inner);
        let (g, held) = self.acquire(g, process, tid, true)?;
        drop(g);
        let r = f();
        self.release(&mut lock(&self.inner), tid, held)?;
        Ok(r)
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
        let g = lock(&self.inner);
        g.threads
            .get(&tid)
            .and_then(|s| g.sched.phase(s.det))
            .is_some_and(|p| p == Phase::InSection)
    }

    /// Runs `f`, which may block for an outside event (socket, terminal, sleep), outside the
    /// competition: the thread leaves, and re-enters at the earliest allowed time when `f`
    /// returns. That re-entry point depends on real time; it is the event that replication
    /// logs (DESIGN.md §5).
    pub fn blocking<R>(&self, tid: i64, f: impl FnOnce() -> R) -> Result<R, DetError> {
        {
            let mut g = lock(&self.inner);
            let (det, _) = g.slot(tid)?;
            g.close_section(det)?;
            g.sched.leave(det, None)?;
            g.notify_holder();
        }
        let r = f();
        let mut g = lock(&self.inner);
        g.resume(tid);
        g.notify_holder();
        Ok(r)
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
        let g = lock(&self.inner);
        let (mut g, held) = self.acquire(g, process, tid, true)?;
        let r = f();
        if let Ok(child) = r {
            let (det, _) = g.slot(tid)?;
            // Elided here means the section never held the token; take a real one for the
            // id allocation instead of leaving the child unregistered.
            if g.sched.phase(det) != Some(Phase::InSection) {
                tracing::warn!(
                    tid,
                    "clone in an elided det section; thread id order may vary"
                );
                g.sched.det_end(det).map_err(DetError::from)?;
                let (g2, _) = self.acquire(g, process, tid, true)?;
                g = g2;
            }
            let cdet = g.sched.spawn(det).map_err(DetError::from)?;
            g.threads.insert(
                child as i64,
                Slot {
                    det: cdet,
                    cv: Arc::new(Condvar::new()),
                    woken: false,
                },
            );
            g.by_det.insert(cdet, child as i64);
        }
        self.release(&mut g, tid, held)?;
        r
    }

    /// A thread's exit, as a det point: under the token, zero its CLONE_CHILD_CLEARTID word,
    /// wake one waiter there (pthread_join), and leave the scheduler.
    pub fn thread_exit(&self, process: &Process, tid: i64, clear_child_tid: u64) {
        let g = lock(&self.inner);
        let Ok((mut g, _)) = self.acquire(g, process, tid, true) else {
            return;
        };
        if clear_child_tid != 0 && process.mem.write_obj(clear_child_tid, &0u32).is_ok() {
            g.wake(clear_child_tid, 1, u32::MAX);
        }
        if let Some(s) = g.threads.remove(&tid) {
            g.by_det.remove(&s.det);
            let _ = g.sched.exit(s.det);
        }
        g.notify_holder();
    }

    /// FUTEX_WAIT / FUTEX_WAIT_BITSET, emulated. `word` is the futex word in guest memory.
    /// Under the token: compare, queue (FIFO), end the section and leave the competition;
    /// then sleep until a wake under the token puts the thread back, the deadline passes,
    /// or the program ends.
    pub fn futex_wait(
        &self,
        process: &Process,
        tid: i64,
        addr: u64,
        word: &AtomicU32,
        wait: FutexWait,
    ) -> Result<u64, Errno> {
        let FutexWait {
            val,
            bitset,
            deadline,
        } = wait;
        let g = lock(&self.inner);
        let (mut g, held) = self.acquire(g, process, tid, true)?;
        if word.load(Ordering::SeqCst) != val {
            self.release(&mut g, tid, held)?;
            return Err(Errno::EAGAIN);
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
        g.sched.leave(det, None).map_err(DetError::from)?;
        g.notify_holder();
        loop {
            if g.threads.get(&tid).is_some_and(|s| s.woken) {
                return Ok(0);
            }
            let now = Instant::now();
            let timed_out = deadline.is_some_and(|d| now >= d);
            if timed_out || process.exiting() {
                if let Some(q) = g.futex.get_mut(&addr) {
                    q.retain(|w| w.tid != tid);
                    if q.is_empty() {
                        g.futex.remove(&addr);
                    }
                }
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
        check: Option<(&AtomicU32, u32)>,
    ) -> Result<u64, Errno> {
        self.futex_locked(process, tid, |inner| {
            if let Some((w, v)) = check {
                if w.load(Ordering::SeqCst) != v {
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
        let g = lock(&self.inner);
        let (mut g, held) = self.acquire(g, process, tid, true)?;
        let r = f(&mut g);
        self.release(&mut g, tid, held)?;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address_space::{AddressSpace, Layout};
    use crate::fd_table::FdTable;
    use crate::guest_mem::GuestMemory;
    use crate::path::FsContext;

    fn process() -> Process {
        let mem = GuestMemory::new(64 << 20).unwrap();
        let layout = Layout::new(4 << 20, 64 << 20, 1 << 20).unwrap();
        Process::new(
            mem,
            AddressSpace::new(layout),
            FsContext::new(std::path::Path::new("/")).unwrap(),
            FdTable::new(),
            "/test".into(),
        )
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
        rt.thread_exit(&p, 1000, 0);
        rt.thread_exit(&p, 1001, 0);
        assert_eq!(rt.det_tid(1001), None);
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
                rt2.futex_wait(&p2, t, 64, &WORD, wait(0, None)).unwrap();
                order.lock().unwrap().push(t);
                // A woken thread competes again; it must go away to let the others on.
                rt2.thread_exit(&p2, t, 0);
            }));
            // Queue them in a known order.
            while lock(&rt.inner).futex.get(&64).map_or(0, |q| q.len()) < (t - 1000) as usize {
                std::thread::yield_now();
            }
        }
        // A wrong value is EAGAIN, without queueing.
        assert_eq!(
            rt.futex_wait(&p, 1000, 64, &WORD, wait(1, None)),
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
            rt.futex_wait(&p, 1000, 64, &WORD, wait(0, soon)),
            Err(Errno::ETIMEDOUT)
        );
        assert!(lock(&rt.inner).futex.is_empty());
    }

    #[test]
    fn requeue_moves_waiters() {
        let mut inner = Inner {
            holder: Arc::default(),
            sched: TokenScheduler::new(),
            threads: BTreeMap::new(),
            by_det: BTreeMap::new(),
            futex: BTreeMap::new(),
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
}
