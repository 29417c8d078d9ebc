//! Time: clocks, sleeps and timerfds. There is no vDSO, so every clock read is a
//! syscall, which is what lets replication record it.

use super::util::{buf, file, install, opt_buf, sc};
use super::{SysResult, SyscallCtx, SyscallEntry};
use crate::sys;

/// The time table.
pub const TABLE: &[SyscallEntry] = &[
    sys!(SYS_clock_gettime, Recorded, clock_gettime),
    sys!(SYS_clock_getres, Recorded, clock_getres),
    sys!(SYS_gettimeofday, Recorded, gettimeofday),
    sys!(SYS_time, Recorded, time),
    sys!(SYS_nanosleep, Local, nanosleep),
    sys!(SYS_clock_nanosleep, Local, clock_nanosleep),
    sys!(SYS_times, Recorded, times),
    sys!(SYS_timerfd_create, Local, timerfd_create),
    sys!(SYS_timerfd_settime, Local, timerfd_settime),
    sys!(SYS_timerfd_gettime, Recorded, timerfd_gettime),
];

const TIMESPEC: u64 = 16;

fn clock_gettime(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let p = buf(ctx, a[1], TIMESPEC)?;
    sc(libc::SYS_clock_gettime, [a[0], p as u64, 0, 0, 0, 0])
}

fn clock_getres(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let p = opt_buf(ctx, a[1], TIMESPEC)?;
    sc(libc::SYS_clock_getres, [a[0], p as u64, 0, 0, 0, 0])
}

fn gettimeofday(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let tv = opt_buf(ctx, a[0], 16)?;
    let tz = opt_buf(ctx, a[1], 8)?;
    sc(libc::SYS_gettimeofday, [tv as u64, tz as u64, 0, 0, 0, 0])
}

fn time(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let t = opt_buf(ctx, a[0], 8)?;
    sc(libc::SYS_time, [t as u64, 0, 0, 0, 0, 0])
}

fn nanosleep(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let req = buf(ctx, a[0], TIMESPEC)?;
    let rem = opt_buf(ctx, a[1], TIMESPEC)?;
    sc(libc::SYS_nanosleep, [req as u64, rem as u64, 0, 0, 0, 0])
}

fn clock_nanosleep(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let req = buf(ctx, a[2], TIMESPEC)?;
    let rem = opt_buf(ctx, a[3], TIMESPEC)?;
    // clock_nanosleep returns the error number itself, not -1/errno.
    // SAFETY: checked pointers into guest memory.
    let r = unsafe { libc::syscall(libc::SYS_clock_nanosleep, a[0], a[1], req, rem) };
    if r > 0 {
        return Err(crate::errno::Errno(r as i32));
    }
    crate::errno::host_result(r)
}

fn times(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let p = opt_buf(ctx, a[0], 32)?;
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
    let new = buf(ctx, a[2], 2 * TIMESPEC)?;
    let old = opt_buf(ctx, a[3], 2 * TIMESPEC)?;
    sc(
        libc::SYS_timerfd_settime,
        [f.raw() as u64, a[1], new as u64, old as u64, 0, 0],
    )
}

fn timerfd_gettime(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let cur = buf(ctx, a[1], 2 * TIMESPEC)?;
    sc(
        libc::SYS_timerfd_gettime,
        [f.raw() as u64, cur as u64, 0, 0, 0, 0],
    )
}
