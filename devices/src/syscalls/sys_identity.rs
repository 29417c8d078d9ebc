//! Identity and host facts: ids, uname, limits, usage, and randomness.
//! The pid is virtual (fixed); user and group ids, groups and capabilities are the
//! program's virtual credentials ([`crate::creds`]), never the VMM's own.
//!
//! Every credential call is Local: the credentials start from the same host ids in both
//! replicas of a pair and change only through the program's own set*id calls, which take
//! det turns in the same order in both, so each replica computes the same answers itself
//! (a Recorded get*id would ship answers the secondary can compute, and a Recorded set*id
//! would leave the secondary's own set, which its later calls read, unchanged).

use super::util::{buf, opt_buf, sc};
use super::{SysResult, SyscallCtx, SyscallEntry};
use crate::creds::{CredError, Credentials, IdSet, NGROUPS_MAX};
use crate::errno::Errno;
use crate::process::GUEST_PID;
use crate::sync::lock;
use crate::sys;
use guest_memory::Access;

/// The identity table.
pub const TABLE: &[SyscallEntry] = &[
    sys!(SYS_getpid, Local, getpid),
    sys!(SYS_getppid, Recorded, passthrough0),
    sys!(SYS_getuid, Local, getuid),
    sys!(SYS_geteuid, Local, geteuid),
    sys!(SYS_getgid, Local, getgid),
    sys!(SYS_getegid, Local, getegid),
    sys!(SYS_getpgrp, Recorded, passthrough0),
    sys!(SYS_getsid, Recorded, getpgid_like),
    sys!(SYS_getpgid, Recorded, getpgid_like),
    sys!(SYS_setpgid, Local, eperm),
    sys!(SYS_setsid, Local, eperm),
    sys!(SYS_setuid, Local, setuid),
    sys!(SYS_setgid, Local, setgid),
    sys!(SYS_setreuid, Local, setreuid),
    sys!(SYS_setregid, Local, setregid),
    sys!(SYS_setresuid, Local, setresuid),
    sys!(SYS_setresgid, Local, setresgid),
    sys!(SYS_setfsuid, Local, setfsuid),
    sys!(SYS_setfsgid, Local, setfsgid),
    sys!(SYS_setgroups, Local, setgroups),
    sys!(SYS_getgroups, Local, getgroups),
    sys!(SYS_getresuid, Local, getresuid),
    sys!(SYS_getresgid, Local, getresgid),
    sys!(SYS_capget, Local, capget),
    sys!(SYS_capset, Local, capset),
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

fn creds<'a>(ctx: &SyscallCtx<'a>) -> std::sync::MutexGuard<'a, Credentials> {
    lock(&ctx.process.creds)
}

fn cred_result(r: Result<(), CredError>) -> SysResult {
    match r {
        Ok(()) => Ok(0),
        Err(CredError::NotPermitted) => Err(Errno::EPERM),
        Err(CredError::Invalid) => Err(Errno::EINVAL),
    }
}

/// An id argument: the ABI's `uid_t`/`gid_t` is 32 bits, so -1 arrives as 0xffffffff
/// or as a sign-extended 64-bit -1 depending on the caller.
fn id(a: u64) -> u32 {
    a as u32
}

fn getuid(ctx: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    Ok(creds(ctx).uid.real as u64)
}

fn geteuid(ctx: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    Ok(creds(ctx).uid.effective as u64)
}

fn getgid(ctx: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    Ok(creds(ctx).gid.real as u64)
}

fn getegid(ctx: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    Ok(creds(ctx).gid.effective as u64)
}

fn setuid(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    cred_result(creds(ctx).setuid(id(a[0])))
}

fn setgid(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    cred_result(creds(ctx).setgid(id(a[0])))
}

fn setreuid(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    cred_result(creds(ctx).setreuid(id(a[0]), id(a[1])))
}

fn setregid(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    cred_result(creds(ctx).setregid(id(a[0]), id(a[1])))
}

fn setresuid(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    cred_result(creds(ctx).setresuid(id(a[0]), id(a[1]), id(a[2])))
}

fn setresgid(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    cred_result(creds(ctx).setresgid(id(a[0]), id(a[1]), id(a[2])))
}

fn setfsuid(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    Ok(creds(ctx).setfsuid(id(a[0])) as u64)
}

fn setfsgid(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    Ok(creds(ctx).setfsgid(id(a[0])) as u64)
}

fn setgroups(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let n = a[0] as i32;
    if n < 0 || n as usize > NGROUPS_MAX {
        return Err(Errno::EINVAL);
    }
    let bytes = if n == 0 {
        Vec::new()
    } else {
        ctx.process.mem.read_bytes(a[1], n as u64 * 4)?
    };
    let groups = bytes
        .chunks_exact(4)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    cred_result(creds(ctx).setgroups(groups))
}

fn getgroups(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let n = a[0] as i32;
    if n < 0 {
        return Err(Errno::EINVAL);
    }
    let groups = creds(ctx).groups.clone();
    if n == 0 {
        return Ok(groups.len() as u64);
    }
    if (n as usize) < groups.len() {
        return Err(Errno::EINVAL);
    }
    let bytes: Vec<u8> = groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
    ctx.process.mem.write_bytes(a[1], &bytes)?;
    Ok(groups.len() as u64)
}

fn write_ids(ctx: &SyscallCtx<'_>, a: [u64; 6], ids: IdSet) -> SysResult {
    for (gva, v) in [(a[0], ids.real), (a[1], ids.effective), (a[2], ids.saved)] {
        ctx.process.mem.write_obj(gva, &v)?;
    }
    Ok(0)
}

fn getresuid(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let ids = creds(ctx).uid;
    write_ids(ctx, a, ids)
}

fn getresgid(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let ids = creds(ctx).gid;
    write_ids(ctx, a, ids)
}

/// `_LINUX_CAPABILITY_VERSION_1`: one 32-bit set of each kind.
const CAP_V1: u32 = 0x1998_0330;
/// Versions 2 and 3: two 32-bit words of each kind (3 is what the kernel prefers).
const CAP_V2: u32 = 0x2007_1026;
const CAP_V3: u32 = 0x2008_0522;

/// capget/capset's header: the version, and whose capabilities (0 or the caller).
fn cap_header(ctx: &SyscallCtx<'_>, gva: u64) -> Result<Option<usize>, Errno> {
    let version: u32 = ctx.process.mem.read_obj(gva)?;
    let pid: i32 = ctx.process.mem.read_obj(gva + 4)?;
    let words = match version {
        CAP_V1 => 1,
        CAP_V2 | CAP_V3 => 2,
        _ => {
            // As Linux: tell the caller which version to use.
            ctx.process.mem.write_obj(gva, &CAP_V3)?;
            return Ok(None);
        }
    };
    if pid < 0 || (pid != 0 && pid as i64 != GUEST_PID) {
        return Err(Errno::ESRCH);
    }
    Ok(Some(words))
}

fn capget(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let Some(words) = cap_header(ctx, a[0])? else {
        return if a[1] == 0 { Ok(0) } else { Err(Errno::EINVAL) };
    };
    if a[1] == 0 {
        return Ok(0);
    }
    let c = creds(ctx).caps;
    let mut out = Vec::with_capacity(words * 12);
    for w in 0..words {
        for set in [c.effective, c.permitted, c.inheritable] {
            out.extend_from_slice(&((set >> (32 * w)) as u32).to_ne_bytes());
        }
    }
    ctx.process.mem.write_bytes(a[1], &out)?;
    Ok(0)
}

fn capset(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let Some(words) =
        cap_header(ctx, a[0]).map_err(|e| if e == Errno::ESRCH { Errno::EPERM } else { e })?
    else {
        return Err(Errno::EINVAL);
    };
    let raw = ctx.process.mem.read_bytes(a[1], words as u64 * 12)?;
    let word = |i: usize| u32::from_ne_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]) as u64;
    let (mut eff, mut prm, mut inh) = (0u64, 0u64, 0u64);
    for w in 0..words {
        let base = w * 12;
        eff |= word(base) << (32 * w);
        prm |= word(base + 4) << (32 * w);
        inh |= word(base + 8) << (32 * w);
    }
    cred_result(creds(ctx).capset(eff, prm, inh))
}

/// The capability operations of prctl (PR_SET_KEEPCAPS, the bounding and ambient sets);
/// `None` for other options.
pub(super) fn prctl_caps(ctx: &SyscallCtx<'_>, a: [u64; 6]) -> Option<SysResult> {
    let cap_valid = |c: u64| c < 41;
    let mut cr = creds(ctx);
    let r = match a[0] as i32 {
        libc::PR_GET_KEEPCAPS => Ok(cr.keep_caps as u64),
        libc::PR_SET_KEEPCAPS if a[1] > 1 => Err(Errno::EINVAL),
        libc::PR_SET_KEEPCAPS => {
            cr.keep_caps = a[1] == 1;
            Ok(0)
        }
        libc::PR_CAPBSET_READ if !cap_valid(a[1]) => Err(Errno::EINVAL),
        libc::PR_CAPBSET_READ => Ok((cr.caps.bounding >> a[1]) & 1),
        libc::PR_CAPBSET_DROP if !cap_valid(a[1]) => Err(Errno::EINVAL),
        libc::PR_CAPBSET_DROP if cr.caps.effective & (1 << 8) == 0 => Err(Errno::EPERM),
        libc::PR_CAPBSET_DROP => {
            cr.caps.bounding &= !(1 << a[1]);
            Ok(0)
        }
        libc::PR_CAP_AMBIENT => match a[1] as i32 {
            libc::PR_CAP_AMBIENT_CLEAR_ALL => {
                cr.caps.ambient = 0;
                Ok(0)
            }
            _ if !cap_valid(a[2]) => Err(Errno::EINVAL),
            libc::PR_CAP_AMBIENT_IS_SET => Ok((cr.caps.ambient >> a[2]) & 1),
            libc::PR_CAP_AMBIENT_LOWER => {
                cr.caps.ambient &= !(1 << a[2]);
                Ok(0)
            }
            libc::PR_CAP_AMBIENT_RAISE => {
                let bit = 1 << a[2];
                if cr.caps.permitted & cr.caps.inheritable & bit == 0 {
                    Err(Errno::EPERM)
                } else {
                    cr.caps.ambient |= bit;
                    Ok(0)
                }
            }
            _ => Err(Errno::EINVAL),
        },
        _ => return None,
    };
    Some(r)
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
    let r = sc(libc::SYS_sysinfo, [p as u64, 0, 0, 0, 0, 0])?;
    // The memory figures are the program's, as /proc/meminfo gives them (glibc's
    // _SC_PHYS_PAGES, which sizes the JVM's heap, comes from here): what it may commit,
    // and what of that its mappings do not commit yet.
    let (total, committed) = {
        let asp = crate::sync::lock(&ctx.process.aspace);
        (asp.commit_limit(), asp.committed())
    };
    let mut si: libc::sysinfo = ctx.process.mem.read_obj(a[0])?;
    si.totalram = total;
    si.freeram = total.saturating_sub(committed);
    si.sharedram = 0;
    si.bufferram = 0;
    si.totalswap = 0;
    si.freeswap = 0;
    si.totalhigh = 0;
    si.freehigh = 0;
    si.mem_unit = 1;
    ctx.process.mem.write_obj(a[0], &si)?;
    Ok(r)
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
