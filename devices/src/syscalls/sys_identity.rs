//! Identity and host facts: ids, uname, limits, usage, and randomness.
//! The pid is virtual (fixed); user and group ids are the host's, read-only.

use super::util::{buf, opt_buf, sc};
use super::{SysResult, SyscallCtx, SyscallEntry};
use crate::errno::Errno;
use crate::process::GUEST_PID;
use crate::sys;
use guest_memory::Access;

/// The identity table.
pub const TABLE: &[SyscallEntry] = &[
    sys!(SYS_getpid, Local, getpid),
    sys!(SYS_getppid, Recorded, passthrough0),
    sys!(SYS_getuid, Recorded, passthrough0),
    sys!(SYS_geteuid, Recorded, passthrough0),
    sys!(SYS_getgid, Recorded, passthrough0),
    sys!(SYS_getegid, Recorded, passthrough0),
    sys!(SYS_getpgrp, Recorded, passthrough0),
    sys!(SYS_getsid, Recorded, getpgid_like),
    sys!(SYS_getpgid, Recorded, getpgid_like),
    sys!(SYS_setpgid, Local, eperm),
    sys!(SYS_setsid, Local, eperm),
    sys!(SYS_setuid, Local, eperm),
    sys!(SYS_setgid, Local, eperm),
    sys!(SYS_setreuid, Local, eperm),
    sys!(SYS_setregid, Local, eperm),
    sys!(SYS_setresuid, Local, eperm),
    sys!(SYS_setresgid, Local, eperm),
    sys!(SYS_setgroups, Local, eperm),
    sys!(SYS_getgroups, Recorded, getgroups),
    sys!(SYS_getresuid, Recorded, getresid),
    sys!(SYS_getresgid, Recorded, getresid),
    sys!(SYS_uname, Recorded, uname),
    sys!(SYS_sysinfo, Recorded, sysinfo),
    sys!(SYS_getrlimit, Recorded, getrlimit),
    sys!(SYS_setrlimit, Local, ok_zero),
    sys!(SYS_prlimit64, Recorded, prlimit64),
    sys!(SYS_getrusage, Recorded, getrusage),
    sys!(SYS_getpriority, Recorded, getpriority),
    sys!(SYS_setpriority, Local, ok_zero),
    sys!(SYS_personality, Local, personality),
    sys!(SYS_getrandom, Recorded, getrandom),
];

fn getpid(_: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    Ok(GUEST_PID as u64)
}

/// Argument-free queries whose host answer is the right one.
fn passthrough0(ctx: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    sc(ctx.nr as i64, [0; 6])
}

fn getpgid_like(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    if a[0] != 0 && a[0] as i64 != GUEST_PID {
        return Err(Errno::ESRCH);
    }
    sc(ctx.nr as i64, [0; 6])
}

fn eperm(_: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    Err(Errno::EPERM)
}

fn ok_zero(_: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    Ok(0)
}

fn getgroups(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let n = a[0] as i32;
    if n < 0 {
        return Err(Errno::EINVAL);
    }
    let p = opt_buf(ctx, a[1], n as u64 * 4, Access::Write)?;
    sc(libc::SYS_getgroups, [n as u64, p as u64, 0, 0, 0, 0])
}

fn getresid(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let p0 = buf(ctx, a[0], 4, Access::Write)?;
    let p1 = buf(ctx, a[1], 4, Access::Write)?;
    let p2 = buf(ctx, a[2], 4, Access::Write)?;
    sc(ctx.nr as i64, [p0 as u64, p1 as u64, p2 as u64, 0, 0, 0])
}

fn uname(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let p = buf(
        ctx,
        a[0],
        std::mem::size_of::<libc::utsname>() as u64,
        Access::Write,
    )?;
    sc(libc::SYS_uname, [p as u64, 0, 0, 0, 0, 0])
}

fn sysinfo(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let p = buf(
        ctx,
        a[0],
        std::mem::size_of::<libc::sysinfo>() as u64,
        Access::Write,
    )?;
    sc(libc::SYS_sysinfo, [p as u64, 0, 0, 0, 0, 0])
}

fn getrlimit(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let p = buf(ctx, a[1], 16, Access::Write)?;
    sc(libc::SYS_getrlimit, [a[0], p as u64, 0, 0, 0, 0])
}

/// Reading limits passes through; setting them is accepted and ignored, because
/// they would change the VMM's own limits, not the program's.
fn prlimit64(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    if a[0] != 0 && a[0] as i64 != GUEST_PID {
        return Err(Errno::ESRCH);
    }
    if a[2] != 0 {
        buf(ctx, a[2], 16, Access::Read)?;
    }
    let old = opt_buf(ctx, a[3], 16, Access::Write)?;
    sc(libc::SYS_prlimit64, [0, a[1], 0, old as u64, 0, 0])
}

fn getrusage(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let p = buf(
        ctx,
        a[1],
        std::mem::size_of::<libc::rusage>() as u64,
        Access::Write,
    )?;
    sc(libc::SYS_getrusage, [a[0], p as u64, 0, 0, 0, 0])
}

fn getpriority(_: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    sc(libc::SYS_getpriority, [a[0], 0, 0, 0, 0, 0])
}

fn personality(_: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    // Query (0xffffffff) or PER_LINUX (0) are the only meaningful values here.
    if a[0] as u32 == 0xffff_ffff || a[0] == 0 {
        Ok(0)
    } else {
        Err(Errno::EINVAL)
    }
}

fn getrandom(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let (p, n) = super::util::data_buf(ctx, a[0], a[1], Access::Write)?;
    sc(libc::SYS_getrandom, [p as u64, n, a[2], 0, 0, 0])
}
