//! Time: clocks, sleeps and timerfds. While the timekeeper is LIVE (a single VM on a host
//! with a trustworthy TSC) most clock reads never get here: the vDSO computes them, and the
//! reads that do (a static program's raw syscall, a clock the vDSO does not serve) use the
//! same formula (`crate::timekeeper`), so the two never disagree. In a pair the page stays
//! in SYSCALL mode: every clock read is a syscall, which is what lets replication record it.

use super::util::{buf, file, install, opt_buf, sc};
use super::{SysResult, SyscallCtx, SyscallEntry};
use crate::sys;
use crate::timekeeper::Clock;
use guest_memory::Access;
use std::time::Duration;

/// The time table.
pub const TABLE: &[SyscallEntry] = &[
    sys!(SYS_clock_gettime, Recorded, clock_gettime),
    sys!(SYS_clock_getres, Recorded, clock_getres),
    sys!(SYS_gettimeofday, Recorded, gettimeofday),
    sys!(SYS_time, Recorded, time),
    sys!(SYS_nanosleep, Recorded, nanosleep),
    sys!(SYS_clock_nanosleep, Recorded, clock_nanosleep),
    sys!(SYS_times, Recorded, times),
    sys!(SYS_timerfd_create, Recorded, timerfd_create),
    sys!(SYS_timerfd_settime, Recorded, timerfd_settime),
    sys!(SYS_timerfd_gettime, Recorded, timerfd_gettime),
    sys!(SYS_setitimer, Recorded, setitimer),
    sys!(SYS_getitimer, Recorded, getitimer),
    sys!(SYS_alarm, Recorded, alarm),
];

fn timeval(d: Duration) -> [i64; 2] {
    [d.as_secs() as i64, d.subsec_micros() as i64]
}

fn from_timeval(tv: [i64; 2]) -> Result<Duration, crate::errno::Errno> {
    if tv[0] < 0 || !(0..1_000_000).contains(&tv[1]) {
        return Err(crate::errno::Errno::EINVAL);
    }
    Ok(Duration::new(tv[0] as u64, tv[1] as u32 * 1000))
}

/// Only ITIMER_REAL fires (SIGALRM); the CPU-time timers are accepted and never
/// fire, which is what a program that merely arms them for profiling can live with.
fn setitimer(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let new: Option<[i64; 4]> = if a[1] != 0 {
        Some(ctx.process.mem.read_obj(a[1])?)
    } else {
        None
    };
    let old = if a[0] == libc::ITIMER_REAL as u64 {
        match new {
            Some(v) => ctx.process.real_timer.set(
                ctx.process,
                from_timeval([v[2], v[3]])?,
                from_timeval([v[0], v[1]])?,
            ),
            None => ctx.process.real_timer.get(),
        }
    } else if a[0] <= 2 {
        (Duration::ZERO, Duration::ZERO)
    } else {
        return Err(crate::errno::Errno::EINVAL);
    };
    if a[2] != 0 {
        let (left, interval) = old;
        let [i0, i1] = timeval(interval);
        let [v0, v1] = timeval(left);
        ctx.process.mem.write_obj(a[2], &[i0, i1, v0, v1])?;
    }
    Ok(0)
}

fn getitimer(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let (left, interval) = if a[0] == libc::ITIMER_REAL as u64 {
        ctx.process.real_timer.get()
    } else {
        (Duration::ZERO, Duration::ZERO)
    };
    let [i0, i1] = timeval(interval);
    let [v0, v1] = timeval(left);
    ctx.process.mem.write_obj(a[1], &[i0, i1, v0, v1])?;
    Ok(0)
}

fn alarm(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let (left, _) = ctx.process.real_timer.set(
        ctx.process,
        Duration::from_secs(a[0] as u32 as u64),
        Duration::ZERO,
    );
    Ok(left.as_secs() + u64::from(left.subsec_nanos() > 0))
}

const TIMESPEC: u64 = 16;

/// The timekeeper's value of clock `id` in ns, when it is LIVE and serves that clock.
fn live_ns(ctx: &SyscallCtx<'_>, id: u64) -> Option<u64> {
    Clock::from_id(id).and_then(|c| ctx.process.timekeeper.now(c))
}

const NS: u64 = 1_000_000_000;

fn clock_gettime(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let p = buf(ctx, a[1], TIMESPEC, Access::Write)?;
    if let Some(ns) = live_ns(ctx, a[0]) {
        ctx.process.mem.write_obj(a[1], &[ns / NS, ns % NS])?;
        return Ok(0);
    }
    sc(libc::SYS_clock_gettime, [a[0], p as u64, 0, 0, 0, 0])
}

fn clock_getres(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let p = opt_buf(ctx, a[1], TIMESPEC, Access::Write)?;
    // What the vDSO answers for the clocks it serves while LIVE: they count in ns.
    if live_ns(ctx, a[0]).is_some() {
        if a[1] != 0 {
            ctx.process.mem.write_obj(a[1], &[0u64, 1])?;
        }
        return Ok(0);
    }
    sc(libc::SYS_clock_getres, [a[0], p as u64, 0, 0, 0, 0])
}

fn gettimeofday(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let tv = opt_buf(ctx, a[0], 16, Access::Write)?;
    let tz = opt_buf(ctx, a[1], 8, Access::Write)?;
    if let Some(ns) = live_ns(ctx, libc::CLOCK_REALTIME as u64) {
        if a[0] != 0 {
            ctx.process
                .mem
                .write_obj(a[0], &[ns / NS, ns % NS / 1000])?;
        }
        // The time zone is the host kernel's.
        return sc(libc::SYS_gettimeofday, [0, tz as u64, 0, 0, 0, 0]);
    }
    sc(libc::SYS_gettimeofday, [tv as u64, tz as u64, 0, 0, 0, 0])
}

fn time(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let t = opt_buf(ctx, a[0], 8, Access::Write)?;
    if let Some(ns) = live_ns(ctx, libc::CLOCK_REALTIME as u64) {
        if a[0] != 0 {
            ctx.process.mem.write_obj(a[0], &(ns / NS))?;
        }
        return Ok(ns / NS);
    }
    sc(libc::SYS_time, [t as u64, 0, 0, 0, 0, 0])
}

fn nanosleep(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let req = buf(ctx, a[0], TIMESPEC, Access::Read)?;
    let rem = opt_buf(ctx, a[1], TIMESPEC, Access::Write)?;
    sc(libc::SYS_nanosleep, [req as u64, rem as u64, 0, 0, 0, 0])
}

fn clock_nanosleep(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let req = buf(ctx, a[2], TIMESPEC, Access::Read)?;
    let rem = opt_buf(ctx, a[3], TIMESPEC, Access::Write)?;
    // clock_nanosleep returns the error number itself, not -1/errno.
    // SAFETY: checked pointers into guest memory.
    let r = unsafe { libc::syscall(libc::SYS_clock_nanosleep, a[0], a[1], req, rem) };
    if r > 0 {
        return Err(crate::errno::Errno(r as i32));
    }
    crate::errno::host_result(r)
}

fn times(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let p = opt_buf(ctx, a[0], 32, Access::Write)?;
    sc(libc::SYS_times, [p as u64, 0, 0, 0, 0, 0])
}

fn timerfd_create(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let fd = sc(
        libc::SYS_timerfd_create,
        [a[0], a[1] | libc::TFD_CLOEXEC as u64, 0, 0, 0, 0],
    )?;
    install(ctx, fd, a[1] & libc::TFD_CLOEXEC as u64 != 0)
}

fn timerfd_settime(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let new = buf(ctx, a[2], 2 * TIMESPEC, Access::Read)?;
    let old = opt_buf(ctx, a[3], 2 * TIMESPEC, Access::Write)?;
    sc(
        libc::SYS_timerfd_settime,
        [f.raw() as u64, a[1], new as u64, old as u64, 0, 0],
    )
}

fn timerfd_gettime(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let cur = buf(ctx, a[1], 2 * TIMESPEC, Access::Write)?;
    sc(
        libc::SYS_timerfd_gettime,
        [f.raw() as u64, cur as u64, 0, 0, 0, 0],
    )
}
