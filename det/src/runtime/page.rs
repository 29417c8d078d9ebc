//! The det page (the fast path of the module documentation): its slots in guest memory, the
//! fold of what threads posted there into the Kendo scheduler, and `DITTO_SYS_DET_SLOT`.
//!
//! Its only unsafe code is the page's raw pointer into guest memory; every access goes
//! through the fault-safe [`GuestU64`].
#![allow(unsafe_code)]

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use guest_memory::safecopy::GuestU64;
use guest_memory::Errno;

use super::order::Order;
use super::{DetRuntime, Inner, Policy, ProcessView};
use crate::abi;
use crate::{DetTid, Phase};

const SLOT_STATE: u64 = abi::DITTO_SLOT_STATE_MASK;
const SLOT_IDLE: u64 = abi::DITTO_SLOT_IDLE;
const SLOT_IN_SECTION: u64 = abi::DITTO_SLOT_IN_SECTION;
const SLOT_ENDED: u64 = abi::DITTO_SLOT_ENDED;
pub(super) const SLOT_CALL: u64 = abi::DITTO_SLOT_CALL;
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
    /// `GuestMemory::user_bounds`).
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
    pub(super) fn word(&self, det: DetTid) -> Option<GuestU64<'_>> {
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

impl Inner {
    /// Folds what the threads posted in the det page into the scheduler and publishes each
    /// slot's new state. Returns whether the schedule changed.
    ///
    /// Each slot is settled with one compare-and-swap from the word read to the word that
    /// the runtime wants there, and only what that word said is applied, so a post that
    /// races with the fold is either in it or finds the new state (and then, if it is CALL,
    /// makes the hypercall). A word is trusted only as far as its thread could have got
    /// there honestly: ENDED ends only a section that the thread's own `det_start` began,
    /// ticks count only outside sections, and anything else is dropped.
    pub(super) fn sync(&mut self) -> bool {
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
}

impl DetRuntime {
    /// `DITTO_SYS_DET_SLOT`: the guest address of `tid`'s slot in the det page, which `map`
    /// creates on the first call. An implicit det point, so that the page is placed at a
    /// deterministic point of the address space's history. Errors: EOPNOTSUPP under Lead
    /// and Follow (their turns are logged and replayed one by one: every section must come
    /// to the VMM), ENOSPC for a thread without a slot, or `map`'s error.
    pub fn det_slot(
        &self,
        process: &dyn ProcessView,
        tid: i64,
        map: impl FnOnce() -> Result<DetPage, Errno>,
    ) -> Result<u64, Errno> {
        if self.policy() != Policy::Kendo {
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
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use guest_memory::guest_mem::{GuestMemory, USER_START};

    use super::super::lock;

    use super::*;
    use crate::runtime::testing::*;

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
    fn fast_pair() -> (Arc<FakeProcess>, Arc<DetRuntime>, &'static [AtomicU64]) {
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
        p: &Arc<FakeProcess>,
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
        let mem = GuestMemory::new(4 << 20).unwrap();
        let gva = USER_START;
        mem.map_file(gva, DetPage::BYTES, true, true, file.as_raw_fd(), 0)
            .unwrap();
        let host = mem.user_bounds(gva, DetPage::BYTES).unwrap();
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
}
