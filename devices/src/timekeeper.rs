//! The guest's clocks: the parameter page the vDSO reads (layout in
//! `guest-images/include/ditto.h`, `DITTO_VVAR_*`), kept by one writer, and the same
//! formula for the VMM's own clock_gettime/gettimeofday/time, so that a value the vDSO
//! returned is never followed by an earlier one from a syscall.
//!
//! Monotonic time is `MONO_BASE + ((tsc - TSC_BASE) * MULT) >> 32`. The timekeeper seeds
//! MULT from the vCPU's TSC frequency (KVM_GET_TSC_KHZ), then, at most once per
//! [`UPDATE_EVERY`] and only when a syscall comes by, recalibrates against the host's
//! CLOCK_MONOTONIC: the frequency from the longest baseline (start to now), the error
//! between guest and host slewed away over the next interval (at most [`MAX_SLEW_PPM`]),
//! a guest lagging by more than [`MAX_ERROR_NS`] stepped forward. MONOTONIC never goes
//! back: each update starts where the old parameters stand at the TSC it reads after
//! marking the page as being written (a reader still on the old parameters read its TSC
//! earlier). REALTIME and BOOTTIME are MONOTONIC plus the host's current offsets, and a
//! step of the host's REALTIME triggers an update at the next syscall.
//!
//! Until [`Timekeeper::start`] the page says SYSCALL and every clock read, in the vDSO and
//! here, is the host's: that is what a pair, and a host whose TSC is not trustworthy, get.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::guest_mem::GuestMemory;
use det::abi::*;

use crate::sync::lock;

/// How often the parameters are recalibrated (when a syscall gives the chance).
pub const UPDATE_EVERY: Duration = Duration::from_secs(1);
/// A guest clock lagging the host's by more than this is stepped forward, not slewed.
pub const MAX_ERROR_NS: i64 = 100_000_000;
/// The most the rate is tilted to absorb an error, in parts per million.
pub const MAX_SLEW_PPM: i64 = 500;
/// A change of the host's REALTIME - MONOTONIC offset this large is a step the guest takes
/// at its next syscall rather than at the next regular update.
pub const REALTIME_STEP_NS: u64 = 1_000_000;
/// How many times a reader retries a page that changes under it before it waits for the
/// writer's lock instead.
const READ_TRIES: u32 = 64;

/// A clock the parameter page serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// CLOCK_MONOTONIC (and its _COARSE and _RAW forms).
    Monotonic,
    /// CLOCK_REALTIME (and _COARSE).
    Realtime,
    /// CLOCK_BOOTTIME.
    Boottime,
}

impl Clock {
    /// The clock for a Linux clock id, if the page serves it; the vDSO maps ids the same way.
    pub fn from_id(id: u64) -> Option<Clock> {
        match id as i32 {
            libc::CLOCK_REALTIME | libc::CLOCK_REALTIME_COARSE => Some(Clock::Realtime),
            libc::CLOCK_MONOTONIC | libc::CLOCK_MONOTONIC_RAW | libc::CLOCK_MONOTONIC_COARSE => {
                Some(Clock::Monotonic)
            }
            libc::CLOCK_BOOTTIME => Some(Clock::Boottime),
            _ => None,
        }
    }
}

/// The parameters as the page holds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Params {
    tsc_base: u64,
    mult: u64,
    mono_base: u64,
    real_off: u64,
    boot_off: u64,
}

impl Params {
    /// Monotonic ns at `tsc` (earlier TSCs count as `tsc_base`).
    fn mono_at(&self, tsc: u64) -> u64 {
        let delta = tsc.saturating_sub(self.tsc_base) as u128;
        self.mono_base
            .wrapping_add(((delta * self.mult as u128) >> DITTO_VVAR_SHIFT) as u64)
    }

    /// `clock` in ns at `tsc`, as the vDSO computes it.
    fn at(&self, clock: Clock, tsc: u64) -> u64 {
        let off = match clock {
            Clock::Monotonic => 0,
            Clock::Realtime => self.real_off,
            Clock::Boottime => self.boot_off,
        };
        self.mono_at(tsc).wrapping_add(off) & (i64::MAX as u64)
    }
}

/// One reading of the host's clocks, with the TSC at the monotonic reading.
#[derive(Clone, Copy, Debug)]
struct Sample {
    tsc: u64,
    mono: u64,
    real_off: u64,
    boot_off: u64,
}

/// The calibration state, under the writer's lock.
#[derive(Debug, Default)]
struct Calibration {
    /// The first sample's TSC and host monotonic ns: the frequency's baseline.
    tsc0: u64,
    mono0: u64,
    /// The TSC frequency KVM reported, used until the baseline is long enough.
    seed_hz: u64,
    /// The SEQ value this writer last stored.
    seq: u64,
    /// Updates made, and how many stepped the clock.
    updates: u64,
    steps: u64,
}

/// The guest's clocks: the parameter page's only writer.
pub struct Timekeeper {
    /// The page's words, in the system area of guest memory (None: memory too small,
    /// which only unit tests make).
    page: Option<&'static [AtomicU64; 512]>,
    live: AtomicBool,
    /// Whether the VMM placed the vDSO image next to the page (for /proc/self/maps).
    vdso_mapped: AtomicBool,
    /// The TSC of the last update, and how many cycles make [`UPDATE_EVERY`].
    last_update: AtomicU64,
    update_cycles: AtomicU64,
    writer: Mutex<Calibration>,
}

impl std::fmt::Debug for Timekeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timekeeper")
            .field("live", &self.live())
            .finish()
    }
}

/// The TSC, ordered with the loads and stores around it.
pub fn rdtsc() -> u64 {
    // SAFETY: lfence and rdtsc have no memory effects; every x86-64 CPU has both.
    unsafe {
        std::arch::x86_64::_mm_lfence();
        let t = std::arch::x86_64::_rdtsc();
        std::arch::x86_64::_mm_lfence();
        t
    }
}

fn host_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; the clocks used here always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// The host's clocks, with the TSC read around the monotonic reading: the tightest of a
/// few tries, so a preemption between the reads does not skew the calibration.
fn sample() -> Sample {
    let mut best: Option<(u64, u64, u64)> = None;
    for _ in 0..5 {
        let t0 = rdtsc();
        let mono = host_ns(libc::CLOCK_MONOTONIC);
        let t1 = rdtsc();
        let window = t1.saturating_sub(t0);
        if best.is_none_or(|(w, _, _)| window < w) {
            best = Some((window, t0 + window / 2, mono));
        }
    }
    let (_, tsc, mono) = best.unwrap_or_default();
    let real = host_ns(libc::CLOCK_REALTIME);
    let boot = host_ns(libc::CLOCK_BOOTTIME);
    let mono2 = host_ns(libc::CLOCK_MONOTONIC);
    Sample {
        tsc,
        mono,
        real_off: real.wrapping_sub(mono2),
        boot_off: boot.wrapping_sub(mono2),
    }
}

/// MULT for `hz` cycles per second, tilted by `slew_ppb` parts per billion.
fn mult_for(hz: u64, slew_ppb: i64) -> u64 {
    let ns_per_s = (1_000_000_000i128 + slew_ppb as i128) as u128;
    ((ns_per_s << DITTO_VVAR_SHIFT) / hz.max(1) as u128) as u64
}

impl Timekeeper {
    /// The timekeeper of `mem`'s parameter page, in SYSCALL mode (the page is zero).
    pub fn new(mem: &GuestMemory) -> Timekeeper {
        let page = mem
            .system_range(DITTO_VVAR_ADDR, 4096)
            .filter(|p| (*p as usize).is_multiple_of(4096))
            // SAFETY: a page-aligned 4 KiB range of guest memory, which lives as long as
            // the process that owns both it and this timekeeper (memory is never unmapped
            // before the process is dropped); only ever accessed through atomics, here and
            // (read-only) by the guest.
            .map(|p| unsafe { &*(p as *const [AtomicU64; 512]) });
        Timekeeper {
            page,
            live: AtomicBool::new(false),
            vdso_mapped: AtomicBool::new(false),
            last_update: AtomicU64::new(0),
            update_cycles: AtomicU64::new(u64::MAX),
            writer: Mutex::new(Calibration::default()),
        }
    }

    fn word(&self, off: u64) -> Option<&AtomicU64> {
        self.page.map(|p| &p[(off / 8) as usize])
    }

    /// Records that the VMM placed the vDSO image next to the page.
    pub fn set_vdso_mapped(&self) {
        self.vdso_mapped.store(true, Ordering::Relaxed);
    }

    /// Whether the program has the vDSO (and /proc/self/maps shows it).
    pub fn vdso_mapped(&self) -> bool {
        self.vdso_mapped.load(Ordering::Relaxed)
    }

    /// Whether the vDSO and the time syscalls compute time from the TSC (LIVE).
    pub fn live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Goes LIVE, with the vCPUs' TSC frequency `tsc_khz` as the first guess. The caller
    /// has checked that the guest's TSC is the host's and that the host's is stable.
    pub fn start(&self, tsc_khz: u64) {
        if self.page.is_none() || tsc_khz == 0 {
            return;
        }
        let mut cal = lock(&self.writer);
        let s = sample();
        cal.tsc0 = s.tsc;
        cal.mono0 = s.mono;
        cal.seed_hz = tsc_khz * 1000;
        let p = Params {
            tsc_base: s.tsc,
            mult: mult_for(cal.seed_hz, 0),
            mono_base: s.mono,
            real_off: s.real_off,
            boot_off: s.boot_off,
        };
        self.write(&mut cal, p, DITTO_TIME_LIVE);
        self.update_cycles.store(
            cal.seed_hz * UPDATE_EVERY.as_secs().max(1),
            Ordering::Relaxed,
        );
        self.last_update.store(s.tsc, Ordering::Relaxed);
        self.live.store(true, Ordering::Release);
    }

    /// Sets the page's RING word (ditto.h: `DITTO_RING_RECORD` on a pair's primary,
    /// `DITTO_RING_REPLAY` on its secondary), before the program runs. The page is marked
    /// filled, so the vDSO heeds it even in SYSCALL mode.
    pub fn set_ring(&self, ring: u64) {
        let Some(page) = self.page else { return };
        let _cal = lock(&self.writer);
        page[(DITTO_VVAR_RING / 8) as usize].store(ring, Ordering::Relaxed);
        page[(DITTO_VVAR_MAGIC / 8) as usize].store(DITTO_VVAR_MAGIC_VALUE, Ordering::Release);
    }

    /// The page's RING word (`DITTO_RING_NONE` without time rings).
    pub fn ring(&self) -> u64 {
        self.word(DITTO_VVAR_RING)
            .map_or(DITTO_RING_NONE, |w| w.load(Ordering::Relaxed))
    }

    /// `clock` now in ns: as the vDSO would compute it, or the host's in SYSCALL mode.
    pub fn now_or_host(&self, clock: Clock) -> u64 {
        self.now(clock).unwrap_or_else(|| {
            host_ns(match clock {
                Clock::Realtime => libc::CLOCK_REALTIME,
                Clock::Monotonic => libc::CLOCK_MONOTONIC,
                Clock::Boottime => libc::CLOCK_BOOTTIME,
            })
        })
    }

    /// Back to SYSCALL mode: every read is the host's from now on.
    pub fn stop(&self) {
        let mut cal = lock(&self.writer);
        self.live.store(false, Ordering::Release);
        let p = self.read_params().unwrap_or_default();
        self.write(&mut cal, p, DITTO_TIME_SYSCALL);
    }

    /// Writes `p` and `mode` under the seqlock.
    fn write(&self, cal: &mut Calibration, p: Params, mode: u64) {
        let Some(page) = self.page else { return };
        let w = |off: u64| &page[(off / 8) as usize];
        let seq = cal.seq | 1;
        w(DITTO_VVAR_SEQ).store(seq, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        w(DITTO_VVAR_TSC_BASE).store(p.tsc_base, Ordering::Relaxed);
        w(DITTO_VVAR_MULT).store(p.mult, Ordering::Relaxed);
        w(DITTO_VVAR_MONO_BASE).store(p.mono_base, Ordering::Relaxed);
        w(DITTO_VVAR_REAL_OFF).store(p.real_off, Ordering::Relaxed);
        w(DITTO_VVAR_BOOT_OFF).store(p.boot_off, Ordering::Relaxed);
        w(DITTO_VVAR_MODE).store(mode, Ordering::Relaxed);
        w(DITTO_VVAR_MAGIC).store(DITTO_VVAR_MAGIC_VALUE, Ordering::Relaxed);
        cal.seq = seq + 1;
        w(DITTO_VVAR_SEQ).store(cal.seq, Ordering::Release);
    }

    /// The page's parameters (no seqlock: the writer's lock is held, or the caller retries).
    fn read_params(&self) -> Option<Params> {
        let r = |off| self.word(off).map(|w| w.load(Ordering::Relaxed));
        Some(Params {
            tsc_base: r(DITTO_VVAR_TSC_BASE)?,
            mult: r(DITTO_VVAR_MULT)?,
            mono_base: r(DITTO_VVAR_MONO_BASE)?,
            real_off: r(DITTO_VVAR_REAL_OFF)?,
            boot_off: r(DITTO_VVAR_BOOT_OFF)?,
        })
    }

    /// Recalibrates if the last update is [`UPDATE_EVERY`] old, or if the host's REALTIME
    /// stepped (settimeofday, an NTP step) by more than [`REALTIME_STEP_NS`] since: called
    /// at every syscall, so it costs a TSC read and two host vDSO reads when nothing is due.
    pub fn tick(&self) {
        if !self.live() {
            return;
        }
        let now = rdtsc();
        let last = self.last_update.load(Ordering::Relaxed);
        if now.saturating_sub(last) < self.update_cycles.load(Ordering::Relaxed) {
            let host_off =
                host_ns(libc::CLOCK_REALTIME).wrapping_sub(host_ns(libc::CLOCK_MONOTONIC));
            let ours = self
                .word(DITTO_VVAR_REAL_OFF)
                .map_or(host_off, |w| w.load(Ordering::Relaxed));
            if (host_off as i64).wrapping_sub(ours as i64).unsigned_abs() < REALTIME_STEP_NS {
                return;
            }
        }
        // Another thread is updating: it does this round.
        let Ok(mut cal) = self.writer.try_lock() else {
            return;
        };
        if !self.live() {
            return;
        }
        self.update(&mut cal);
    }

    /// One recalibration (see the module docs).
    fn update(&self, cal: &mut Calibration) {
        let Some(page) = self.page else { return };
        let Some(old) = self.read_params() else {
            return;
        };
        // Mark the page first, then read the TSC: every reader that finishes with the old
        // parameters read its TSC before this point, so the new ones start no lower.
        let seq = cal.seq | 1;
        page[(DITTO_VVAR_SEQ / 8) as usize].store(seq, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let s = sample();
        let guest = old.mono_at(s.tsc);
        let mut err = s.mono as i64 - guest as i64;
        let mut mono_base = guest;
        if err > MAX_ERROR_NS {
            mono_base = s.mono;
            err = 0;
            cal.steps += 1;
        }
        let cycles = s.tsc.saturating_sub(cal.tsc0);
        let ns = s.mono.saturating_sub(cal.mono0);
        // Half a second of baseline puts a 100 ns sampling jitter under 0.2 ppm.
        let hz = if ns >= 500_000_000 {
            ((cycles as u128 * 1_000_000_000) / ns as u128) as u64
        } else {
            cal.seed_hz
        };
        let interval_ns = UPDATE_EVERY.as_nanos() as i64;
        let max = MAX_SLEW_PPM * interval_ns / 1_000_000;
        let slew_ppb = err.clamp(-max, max) * 1_000_000_000 / interval_ns;
        let p = Params {
            tsc_base: s.tsc,
            mult: mult_for(hz, slew_ppb),
            mono_base,
            real_off: s.real_off,
            boot_off: s.boot_off,
        };
        cal.seq = seq.wrapping_sub(1);
        self.write(cal, p, DITTO_TIME_LIVE);
        cal.updates += 1;
        self.update_cycles.store(
            hz.saturating_mul(UPDATE_EVERY.as_secs().max(1)),
            Ordering::Relaxed,
        );
        self.last_update.store(s.tsc, Ordering::Relaxed);
    }

    /// `clock` now in ns, as the vDSO would compute it, or None in SYSCALL mode.
    pub fn now(&self, clock: Clock) -> Option<u64> {
        if !self.live() {
            return None;
        }
        let seq_w = self.word(DITTO_VVAR_SEQ)?;
        for _ in 0..READ_TRIES {
            let seq = seq_w.load(Ordering::Acquire);
            if seq & 1 != 0 {
                std::hint::spin_loop();
                continue;
            }
            let p = self.read_params()?;
            let tsc = rdtsc();
            fence(Ordering::Acquire);
            if seq_w.load(Ordering::Relaxed) == seq {
                return Some(p.at(clock, tsc));
            }
        }
        // A writer is inside its window: its lock is held until the page is whole again.
        let _cal = lock(&self.writer);
        let p = self.read_params()?;
        self.live().then(|| p.at(clock, rdtsc()))
    }

    /// Updates made, and how many of them stepped the clock (for tests and reports).
    pub fn updates(&self) -> (u64, u64) {
        let cal = lock(&self.writer);
        (cal.updates, cal.steps)
    }

    /// Forces a recalibration now (tests).
    pub fn update_now(&self) {
        let mut cal = lock(&self.writer);
        if self.live() {
            self.update(&mut cal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tsc_khz() -> u64 {
        // The host's TSC frequency from a 50 ms measurement: close enough for a seed.
        let (t0, m0) = (rdtsc(), host_ns(libc::CLOCK_MONOTONIC));
        std::thread::sleep(Duration::from_millis(50));
        let (t1, m1) = (rdtsc(), host_ns(libc::CLOCK_MONOTONIC));
        ((t1 - t0) as u128 * 1_000_000 / (m1 - m0) as u128) as u64
    }

    #[test]
    fn syscall_mode_until_started() {
        let mem = GuestMemory::new(4 << 20).unwrap();
        let tk = Timekeeper::new(&mem);
        assert!(!tk.live());
        assert_eq!(tk.now(Clock::Monotonic), None);
        assert_eq!(
            mem.read_system_u64(DITTO_VVAR_ADDR + DITTO_VVAR_MODE),
            Some(0)
        );
    }

    #[test]
    fn live_clocks_follow_the_host_and_never_go_back() {
        let mem = GuestMemory::new(4 << 20).unwrap();
        let tk = Timekeeper::new(&mem);
        tk.start(tsc_khz());
        assert_eq!(
            mem.read_system_u64(DITTO_VVAR_ADDR + DITTO_VVAR_MODE),
            Some(DITTO_TIME_LIVE)
        );
        let seq = mem
            .read_system_u64(DITTO_VVAR_ADDR + DITTO_VVAR_SEQ)
            .unwrap();
        assert_eq!(seq % 2, 0);
        let mut last = 0;
        for i in 0..2000 {
            if i % 500 == 0 {
                tk.update_now();
            }
            let g = tk.now(Clock::Monotonic).unwrap();
            assert!(g >= last, "monotonic went back: {g} < {last}");
            last = g;
        }
        let h = host_ns(libc::CLOCK_MONOTONIC) as i64;
        let g = tk.now(Clock::Monotonic).unwrap() as i64;
        assert!((h - g).abs() < 10_000_000, "monotonic off by {} ns", h - g);
        let h = host_ns(libc::CLOCK_REALTIME) as i64;
        let g = tk.now(Clock::Realtime).unwrap() as i64;
        assert!((h - g).abs() < 10_000_000, "realtime off by {} ns", h - g);
        assert_eq!(tk.updates().0, 4);
    }

    #[test]
    fn a_small_lag_slews_and_a_large_one_steps_forward() {
        let mem = GuestMemory::new(4 << 20).unwrap();
        let tk = Timekeeper::new(&mem);
        // A seed 10% slow: after 0.3 s the guest lags by 30 ms, which is slewed, not stepped.
        let khz = tsc_khz();
        tk.start(khz * 11 / 10);
        std::thread::sleep(Duration::from_millis(300));
        let before = tk.now(Clock::Monotonic).unwrap();
        tk.update_now();
        assert!(tk.now(Clock::Monotonic).unwrap() >= before);
        assert_eq!(tk.updates().1, 0);
        // Far behind (the page rewound by hand): stepped forward to the host's time.
        let mut cal = lock(&tk.writer);
        let mut p = tk.read_params().unwrap();
        p.mono_base -= 2 * MAX_ERROR_NS as u64;
        tk.write(&mut cal, p, DITTO_TIME_LIVE);
        tk.update(&mut cal);
        drop(cal);
        assert_eq!(tk.updates().1, 1);
        let h = host_ns(libc::CLOCK_MONOTONIC) as i64;
        let g = tk.now(Clock::Monotonic).unwrap() as i64;
        assert!(
            (h - g).abs() < 10_000_000,
            "off by {} ns after the step",
            h - g
        );
    }

    #[test]
    fn a_realtime_step_is_taken_at_the_next_tick() {
        let mem = GuestMemory::new(4 << 20).unwrap();
        let tk = Timekeeper::new(&mem);
        tk.start(tsc_khz());
        // The page's REALTIME offset moved by an hour, as if the host had stepped back.
        let mut cal = lock(&tk.writer);
        let mut p = tk.read_params().unwrap();
        p.real_off = p.real_off.wrapping_sub(3_600_000_000_000);
        tk.write(&mut cal, p, DITTO_TIME_LIVE);
        drop(cal);
        let (updates, _) = tk.updates();
        tk.tick();
        assert_eq!(tk.updates().0, updates + 1, "the step was not noticed");
        let h = host_ns(libc::CLOCK_REALTIME) as i64;
        let g = tk.now(Clock::Realtime).unwrap() as i64;
        assert!((h - g).abs() < 10_000_000, "realtime off by {} ns", h - g);
        // Nothing changed since: the next tick does nothing.
        tk.tick();
        assert_eq!(tk.updates().0, updates + 1);
    }

    #[test]
    fn mult_is_ns_per_cycle() {
        // 1 GHz: one ns per cycle; 2 GHz: half.
        assert_eq!(mult_for(1_000_000_000, 0), 1 << 32);
        assert_eq!(mult_for(2_000_000_000, 0), 1 << 31);
        let p = Params {
            tsc_base: 100,
            mult: 1 << 31,
            mono_base: 5,
            real_off: 1000,
            boot_off: 0,
        };
        assert_eq!(p.at(Clock::Monotonic, 300), 105);
        assert_eq!(p.at(Clock::Monotonic, 50), 5);
        assert_eq!(p.at(Clock::Realtime, 300), 1105);
        assert_eq!(
            Clock::from_id(libc::CLOCK_MONOTONIC_RAW as u64),
            Some(Clock::Monotonic)
        );
        assert_eq!(Clock::from_id(libc::CLOCK_PROCESS_CPUTIME_ID as u64), None);
    }
}
