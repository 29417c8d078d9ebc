//! Host administration and optional kernel features: the answers an unprivileged
//! container gives.
//!
//! A program under ditto is root only in its own credential set (`sys_identity`); the host
//! stays ditto's. So the calls that change the machine (its clock, name, mounts, modules,
//! namespaces) fail with EPERM, as they do in a container without those capabilities, and
//! the optional features ditto's file system view lacks (extended attributes) fail with
//! EOPNOTSUPP, as on a file system without them. Programs test for exactly these errors
//! and carry on; an ENOSYS instead reads as "kernel too old" and some give up on it
//! ("Function not implemented"). Memory policy and I/O priority hints are accepted and
//! reported as the defaults of a one-node machine. Every answer is computed from the
//! arguments alone, so all of them are Local: both replicas give the same one.

use super::util::{buf, file, path};
use super::{SysResult, SyscallCtx, SyscallEntry};
use crate::errno::Errno;
use crate::sys;
use guest_memory::Access;

/// The table.
pub const TABLE: &[SyscallEntry] = &[
    // The machine's clock and identity.
    sys!(SYS_settimeofday, Local, not_permitted),
    sys!(SYS_clock_settime, Local, not_permitted),
    sys!(SYS_clock_adjtime, Local, not_permitted),
    sys!(SYS_sethostname, Local, not_permitted),
    sys!(SYS_setdomainname, Local, not_permitted),
    // Mounts, roots, namespaces, swap, modules, reboot, accounting, raw I/O, tracing.
    sys!(SYS_chroot, Local, not_permitted),
    sys!(SYS_mount, Local, not_permitted),
    sys!(SYS_umount2, Local, not_permitted),
    sys!(SYS_pivot_root, Local, not_permitted),
    sys!(SYS_unshare, Local, unshare),
    sys!(SYS_setns, Local, not_permitted),
    sys!(SYS_swapon, Local, not_permitted),
    sys!(SYS_swapoff, Local, not_permitted),
    sys!(SYS_init_module, Local, not_permitted),
    sys!(SYS_finit_module, Local, not_permitted),
    sys!(SYS_delete_module, Local, not_permitted),
    sys!(SYS_kexec_load, Local, not_permitted),
    sys!(SYS_kexec_file_load, Local, not_permitted),
    sys!(SYS_reboot, Local, not_permitted),
    sys!(SYS_acct, Local, not_permitted),
    sys!(SYS_vhangup, Local, not_permitted),
    sys!(SYS_iopl, Local, not_permitted),
    sys!(SYS_ioperm, Local, not_permitted),
    sys!(SYS_quotactl, Local, not_permitted),
    sys!(SYS_ptrace, Local, not_permitted),
    // Extended attributes.
    sys!(SYS_getxattr, Local, xattr_by_path),
    sys!(SYS_lgetxattr, Local, xattr_by_path),
    sys!(SYS_listxattr, Local, xattr_by_path),
    sys!(SYS_llistxattr, Local, xattr_by_path),
    sys!(SYS_setxattr, Local, xattr_by_path),
    sys!(SYS_lsetxattr, Local, xattr_by_path),
    sys!(SYS_removexattr, Local, xattr_by_path),
    sys!(SYS_lremovexattr, Local, xattr_by_path),
    sys!(SYS_fgetxattr, Local, xattr_by_fd),
    sys!(SYS_flistxattr, Local, xattr_by_fd),
    sys!(SYS_fsetxattr, Local, xattr_by_fd),
    sys!(SYS_fremovexattr, Local, xattr_by_fd),
    // NUMA memory policy: one node, node 0.
    sys!(SYS_get_mempolicy, Local, get_mempolicy),
    sys!(SYS_set_mempolicy, Local, set_mempolicy),
    sys!(SYS_mbind, Local, mbind),
    // I/O hints.
    sys!(SYS_ioprio_get, Local, ioprio_get),
    sys!(SYS_ioprio_set, Local, ioprio_set),
    sys!(SYS_readahead, Local, on_a_descriptor),
    sys!(SYS_sync_file_range, Local, sync_file_range),
    sys!(SYS_mlock2, Local, mlock2),
];

fn not_permitted(_: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    Err(Errno::EPERM)
}

/// unshare(0) changes nothing and succeeds on Linux; anything else needs a namespace or
/// a private table that a process VM does not split.
fn unshare(_: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    if a[0] == 0 {
        Ok(0)
    } else {
        Err(Errno::EPERM)
    }
}

/// The path is read (EFAULT for a bad pointer, as Linux's copy faults first); then the
/// view has no extended attributes to give or take.
fn xattr_by_path(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    path(ctx, a[0])?;
    Err(Errno::EOPNOTSUPP)
}

fn xattr_by_fd(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    file(ctx, a[0])?;
    Err(Errno::EOPNOTSUPP)
}

/// MPOL_DEFAULT .. MPOL_PREFERRED_MANY: the modes Linux knows.
const MPOL_MAX: u64 = 5;
/// The mode flags that may be or'ed into set_mempolicy's and mbind's mode.
const MPOL_MODE_FLAGS: u64 = (1 << 15) | (1 << 14) | (1 << 13);
const MPOL_F_NODE: u64 = 1;
const MPOL_F_ADDR: u64 = 2;
const MPOL_F_MEMS_ALLOWED: u64 = 4;

/// Writes a node mask of `maxnode` bits with only `node0` (0 or 1) in its first bit.
fn write_nodemask(ctx: &SyscallCtx<'_>, gva: u64, maxnode: u64, node0: u64) -> Result<(), Errno> {
    if gva == 0 {
        return Ok(());
    }
    if maxnode == 0 || maxnode > 1 << 16 {
        return Err(Errno::EINVAL);
    }
    let words = maxnode.div_ceil(64);
    buf(ctx, gva, words * 8, Access::Write)?;
    for w in 0..words {
        let v = if w == 0 { node0 } else { 0 };
        ctx.process.mem.write_obj(gva + w * 8, &v)?;
    }
    Ok(())
}

/// get_mempolicy(mode, nodemask, maxnode, addr, flags): the default policy, node 0.
fn get_mempolicy(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let (mode, mask, maxnode, flags) = (a[0], a[1], a[2], a[4]);
    if flags & !(MPOL_F_NODE | MPOL_F_ADDR | MPOL_F_MEMS_ALLOWED) != 0
        || (flags & MPOL_F_MEMS_ALLOWED != 0 && flags != MPOL_F_MEMS_ALLOWED)
    {
        return Err(Errno::EINVAL);
    }
    // MPOL_F_MEMS_ALLOWED: the nodes the process may use; otherwise the policy's nodes,
    // none for MPOL_DEFAULT. MPOL_F_NODE asks for a node id in `mode`: always node 0.
    let allowed = u64::from(flags == MPOL_F_MEMS_ALLOWED);
    write_nodemask(ctx, mask, maxnode, allowed)?;
    if mode != 0 && flags != MPOL_F_MEMS_ALLOWED {
        ctx.process.mem.write_obj(mode, &0i32)?;
    }
    Ok(0)
}

/// Checks a policy mode and a node mask that names only node 0 (or no node, where the
/// mode takes none).
fn check_policy(ctx: &SyscallCtx<'_>, mode: u64, mask: u64, maxnode: u64) -> Result<(), Errno> {
    if mode & !MPOL_MODE_FLAGS > MPOL_MAX {
        return Err(Errno::EINVAL);
    }
    if mask != 0 && maxnode > 0 {
        let first: u64 = ctx.process.mem.read_obj(mask)?;
        let used = if maxnode < 64 {
            first & ((1 << maxnode) - 1)
        } else {
            first
        };
        if used & !1 != 0 {
            return Err(Errno::EINVAL);
        }
    }
    Ok(())
}

fn set_mempolicy(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    check_policy(ctx, a[0], a[1], a[2])?;
    Ok(0)
}

/// mbind(addr, len, mode, nodemask, maxnode, flags).
fn mbind(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    if !a[0].is_multiple_of(4096) {
        return Err(Errno::EINVAL);
    }
    check_policy(ctx, a[2], a[3], a[4])?;
    Ok(0)
}

const IOPRIO_WHO_PROCESS: u64 = 1;
const IOPRIO_WHO_USER: u64 = 3;
const IOPRIO_CLASS_SHIFT: u64 = 13;
const IOPRIO_CLASS_RT: u64 = 1;
const IOPRIO_CLASS_IDLE: u64 = 3;

/// The "none" class (priority derived from the CPU nice value), Linux's default.
fn ioprio_get(_: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    if !(IOPRIO_WHO_PROCESS..=IOPRIO_WHO_USER).contains(&a[0]) {
        return Err(Errno::EINVAL);
    }
    Ok(0)
}

/// Accepted for the best-effort and idle classes; the real-time class needs
/// CAP_SYS_ADMIN.
fn ioprio_set(_: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    if !(IOPRIO_WHO_PROCESS..=IOPRIO_WHO_USER).contains(&a[0]) {
        return Err(Errno::EINVAL);
    }
    let prio = a[2] & 0xffff;
    let class = prio >> IOPRIO_CLASS_SHIFT;
    let data = prio & ((1 << IOPRIO_CLASS_SHIFT) - 1);
    match class {
        IOPRIO_CLASS_RT => Err(Errno::EPERM),
        c if c > IOPRIO_CLASS_IDLE || data > 7 => Err(Errno::EINVAL),
        _ => Ok(0),
    }
}

/// A hint about a descriptor: checked, then nothing to do.
fn on_a_descriptor(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    file(ctx, a[0])?;
    Ok(0)
}

/// sync_file_range(fd, offset, nbytes, flags): written data is already in the host's
/// page cache, which is all these flags ask for short of fsync.
fn sync_file_range(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    file(ctx, a[0])?;
    if (a[1] as i64) < 0 || (a[2] as i64) < 0 || a[3] & !7 != 0 {
        return Err(Errno::EINVAL);
    }
    Ok(0)
}

/// mlock2(addr, len, flags): guest memory is never swapped out by ditto, so locking is
/// already true; only MLOCK_ONFAULT is a valid flag.
fn mlock2(_: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    if a[2] & !1 != 0 {
        return Err(Errno::EINVAL);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every answer here is a function of the arguments: a Recorded or Compared entry
    /// would mean a host effect this module promises not to have.
    #[test]
    fn every_entry_is_local() {
        for e in TABLE {
            assert_eq!(e.class, super::super::Class::Local, "{}", e.name);
        }
    }
}
