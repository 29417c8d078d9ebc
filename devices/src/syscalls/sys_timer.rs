//! POSIX per-process timers: timer_create, timer_settime, timer_gettime, timer_getoverrun,
//! timer_delete. The timers themselves and their one timer thread are `crate::ptimer`; this
//! table reads and writes the program's structures (sigevent, itimerspec, the id) and
//! checks them as Linux does (kernel/time/posix-timers.c), in Linux's order, so a call
//! with several faults fails with the errno it would natively.
//!
//! All five are Recorded, like setitimer: in a pair the primary runs the timers, and each
//! expiry's signal reaches the secondary through the recorded signal delivery; the
//! secondary never executes these calls, so it arms no host timer.
//!
//! A timer's signal taken by sigwaitinfo/sigtimedwait gets Linux's siginfo (si_code
//! SI_TIMER, si_timerid, si_overrun, si_value = sigev_value), which is what glibc's
//! SIGEV_THREAD helper thread waits for; it is the call's output, so a pair's secondary
//! gets it from the primary's record. A timer's signal that enters a handler carries only
//! its number, as every signal here: the handler's siginfo says SI_USER, si_pid 1000 and a
//! zero si_value.

use super::{SysResult, SyscallCtx, SyscallEntry};
use crate::errno::Errno;
use crate::ptimer::{Notify, TimerSpec};
use crate::sys;
use crate::timekeeper::Clock;
use std::time::Duration;

/// The POSIX timer table.
pub const TABLE: &[SyscallEntry] = &[
    sys!(SYS_timer_create, Recorded, timer_create),
    sys!(SYS_timer_settime, Recorded, timer_settime),
    sys!(SYS_timer_gettime, Recorded, timer_gettime),
    sys!(SYS_timer_getoverrun, Recorded, timer_getoverrun),
    sys!(SYS_timer_delete, Recorded, timer_delete),
];

const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD: i32 = 2;
const SIGEV_THREAD_ID: i32 = 4;
const TIMER_ABSTIME: u64 = 1;
/// SIGRTMAX as the kernel counts (glibc reserves the first real-time signals; the kernel
/// does not).
const SIGRTMAX: i32 = 64;
/// CAP_WAKE_ALARM, which the _ALARM clocks need.
const CAP_WAKE_ALARM: u32 = 35;
const NS: u64 = 1_000_000_000;

/// Where a timer's clock leads: a clock ditto fires on (its id, for TIMER_ABSTIME), or a
/// CPU-time clock, which never fires.
enum TimerClock {
    Fires(i32),
    CpuTime,
}

/// Linux's clockid_to_kclock and the k_clock's timer_create, in that order: an unknown id
/// is EINVAL; a clock with no timers (the _RAW and _COARSE ones) EOPNOTSUPP. The _ALARM
/// clocks are their base clock for a program with CAP_WAKE_ALARM (ditto cannot wake a
/// suspended host, and needs not: the host is not suspended while the program runs), and
/// EPERM without it; that check is the last one Linux makes, so it is returned apart.
fn timer_clock(ctx: &SyscallCtx<'_>, id: u64) -> Result<(TimerClock, bool), Errno> {
    let c = id as i32;
    let alarm_ok = || crate::sync::lock(&ctx.process.creds).capable(CAP_WAKE_ALARM);
    Ok(match c {
        libc::CLOCK_REALTIME | libc::CLOCK_MONOTONIC | libc::CLOCK_BOOTTIME | libc::CLOCK_TAI => {
            (TimerClock::Fires(c), true)
        }
        libc::CLOCK_REALTIME_ALARM => (TimerClock::Fires(libc::CLOCK_REALTIME), alarm_ok()),
        libc::CLOCK_BOOTTIME_ALARM => (TimerClock::Fires(libc::CLOCK_BOOTTIME), alarm_ok()),
        libc::CLOCK_PROCESS_CPUTIME_ID | libc::CLOCK_THREAD_CPUTIME_ID => {
            (TimerClock::CpuTime, true)
        }
        libc::CLOCK_MONOTONIC_RAW | libc::CLOCK_REALTIME_COARSE | libc::CLOCK_MONOTONIC_COARSE => {
            return Err(Errno::EOPNOTSUPP)
        }
        // A CPU clock of a process or thread by id (clock_getcpuclockid,
        // pthread_getcpuclockid): ~pid << 3 | type, bit 2 for a thread; type 3 is invalid.
        c if c < 0 => {
            let pid = i64::from(!(c >> 3));
            let thread = c & 4 != 0;
            let known = if thread {
                pid == 0 || ctx.process.signals.tids().contains(&pid)
            } else {
                pid == 0 || pid == crate::process::GUEST_PID
            };
            if c & 3 == 3 || !known {
                return Err(Errno::EINVAL);
            }
            (TimerClock::CpuTime, true)
        }
        _ => return Err(Errno::EINVAL),
    })
}

/// Linux's good_sigevent on the sigevent `ev` (value, signo | notify << 32, tid, ...).
fn notify(ctx: &SyscallCtx<'_>, ev: &[u64; 8]) -> Result<Notify, Errno> {
    let signo = ev[1] as u32 as i32;
    let how = (ev[1] >> 32) as u32 as i32;
    let valid_signal = (1..=SIGRTMAX).contains(&signo);
    match how {
        SIGEV_NONE => Ok(Notify::Nothing),
        SIGEV_SIGNAL | SIGEV_THREAD if valid_signal => Ok(Notify::Process(signo)),
        SIGEV_THREAD_ID => {
            let tid = i64::from(ev[2] as u32 as i32);
            if !ctx.process.signals.tids().contains(&tid) || !valid_signal {
                return Err(Errno::EINVAL);
            }
            Ok(Notify::Thread(tid, signo))
        }
        _ => Err(Errno::EINVAL),
    }
}

fn timer_create(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let event: Option<[u64; 8]> = if a[1] != 0 {
        Some(ctx.process.mem.read_obj(a[1])?)
    } else {
        None
    };
    let (clock, permitted) = timer_clock(ctx, a[0])?;
    let notify = match &event {
        Some(ev) => notify(ctx, ev),
        // No sigevent: SIGALRM to the process (its si_value would be the id).
        None => Ok(Notify::Process(libc::SIGALRM)),
    };
    let (clock, fires) = match clock {
        TimerClock::Fires(c) => (c, true),
        TimerClock::CpuTime => (a[0] as i32, false),
    };
    let timers = &ctx.process.ptimers;
    // Linux takes an id before it checks the sigevent, then writes the id, then makes the
    // clock's own check (the _ALARM clocks' EPERM), and takes the timer back when any of
    // those fails: the id is used up all the same, and ditto's ids follow Linux's.
    let id = timers.create(TimerSpec {
        clock,
        fires,
        notify: *notify.as_ref().unwrap_or(&Notify::Nothing),
        value: event.map(|ev| ev[0]),
    })?;
    let r = notify
        .and_then(|_| ctx.process.mem.write_obj(a[2], &id))
        .and(if permitted { Ok(()) } else { Err(Errno::EPERM) });
    if let Err(e) = r {
        let _ = timers.delete(id);
        return Err(e);
    }
    Ok(0)
}

/// The timer id argument: timer_t is an int to the kernel.
fn timer_id(a: u64) -> i32 {
    a as u32 as i32
}

/// Linux's timespec64_valid.
fn duration(sec: i64, nsec: i64) -> Result<Duration, Errno> {
    if sec < 0 || !(0..NS as i64).contains(&nsec) {
        return Err(Errno::EINVAL);
    }
    Ok(Duration::new(sec as u64, nsec as u32))
}

/// (remaining, interval) as an itimerspec: interval first.
fn itimerspec(left: Duration, interval: Duration) -> [u64; 4] {
    [
        interval.as_secs(),
        u64::from(interval.subsec_nanos()),
        left.as_secs(),
        u64::from(left.subsec_nanos()),
    ]
}

/// The guest's current time on `clock`, in ns (the vDSO's formula while LIVE).
fn clock_now(ctx: &SyscallCtx<'_>, clock: i32) -> u64 {
    match Clock::from_id(clock as u64) {
        Some(c) => ctx.process.timekeeper.now_or_host(c),
        None => {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: a valid timespec out-parameter; CLOCK_TAI always exists.
            unsafe { libc::clock_gettime(clock, &mut ts) };
            ts.tv_sec as u64 * NS + ts.tv_nsec as u64
        }
    }
}

fn timer_settime(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let id = timer_id(a[0]);
    if a[2] == 0 {
        return Err(Errno::EINVAL);
    }
    let new: [i64; 4] = ctx.process.mem.read_obj(a[2])?;
    let interval = duration(new[0], new[1])?;
    let mut value = duration(new[2], new[3])?;
    let spec = ctx.process.ptimers.spec(id)?;
    if a[1] & TIMER_ABSTIME != 0 && !value.is_zero() && spec.fires {
        // An absolute time already past expires at once (the smallest non-zero delay).
        let now = clock_now(ctx, spec.clock);
        let at = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        value = Duration::from_nanos(at.saturating_sub(now).max(1));
    }
    let (left, old_interval) = ctx.process.ptimers.set(ctx.process, id, value, interval)?;
    if a[3] != 0 {
        ctx.process
            .mem
            .write_obj(a[3], &itimerspec(left, old_interval))?;
    }
    Ok(0)
}

fn timer_gettime(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let (left, interval) = ctx.process.ptimers.get(timer_id(a[0]))?;
    ctx.process
        .mem
        .write_obj(a[1], &itimerspec(left, interval))?;
    Ok(0)
}

fn timer_getoverrun(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    Ok(ctx.process.ptimers.overrun(timer_id(a[0]))? as u64)
}

fn timer_delete(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    ctx.process.ptimers.delete(timer_id(a[0]))?;
    Ok(0)
}
