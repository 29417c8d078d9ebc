//! Threads: clone, exit, futex, TLS, scheduling. One guest thread is one vCPU.

use super::util::{buf, sc};
use super::{
    enosys_quiet, unsupported, SysResult, SyscallCtx, SyscallEntry, ThreadAction, ThreadStart,
    ThreadState,
};
use crate::errno::Errno;
use crate::exit::ExitReason;
use crate::process::Process;
use crate::sys;
use guest_memory::Access;

/// The thread table.
pub const TABLE: &[SyscallEntry] = &[
    sys!(SYS_clone, Local, clone),
    sys!(SYS_clone3, Local, enosys_quiet),
    sys!(SYS_fork, Unsupported, unsupported),
    sys!(SYS_vfork, Unsupported, unsupported),
    sys!(SYS_execve, Unsupported, unsupported),
    sys!(SYS_execveat, Unsupported, unsupported),
    sys!(SYS_exit, Local, exit),
    sys!(SYS_exit_group, Local, exit_group),
    sys!(SYS_futex, Local, futex),
    sys!(SYS_set_tid_address, Local, set_tid_address),
    sys!(SYS_set_robust_list, Local, set_robust_list),
    sys!(SYS_gettid, Local, gettid),
    sys!(SYS_arch_prctl, Local, arch_prctl),
    sys!(SYS_rseq, Local, enosys_quiet),
    sys!(SYS_sched_yield, Local, sched_yield),
    sys!(SYS_sched_getaffinity, Recorded, sched_getaffinity),
    sys!(SYS_sched_setaffinity, Local, ok_zero),
    sys!(SYS_sched_getscheduler, Local, ok_zero),
    sys!(SYS_sched_setscheduler, Local, ok_zero),
    sys!(SYS_sched_getparam, Local, sched_getparam),
    sys!(SYS_sched_setparam, Local, ok_zero),
    sys!(SYS_sched_get_priority_max, Local, ok_zero),
    sys!(SYS_sched_get_priority_min, Local, ok_zero),
    sys!(SYS_getcpu, Recorded, getcpu),
    sys!(SYS_prctl, Local, prctl),
    sys!(SYS_wait4, Local, no_children),
    sys!(SYS_waitid, Local, no_children),
];

/// The flags that make a clone a thread rather than a process.
const THREAD_FLAGS: u64 = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;

fn clone(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let (flags, stack, parent_tid, child_tid, tls) = (a[0], a[1], a[2], a[3], a[4]);
    if flags & THREAD_FLAGS != THREAD_FLAGS {
        ctx.process.warn_unsupported(
            libc::SYS_clone as u64,
            "clone without CLONE_VM|CLONE_THREAD (fork)",
        );
        return Err(Errno::ENOSYS);
    }
    // Check every pointer, and the TLS base, before creating anything.
    if flags & libc::CLONE_SETTLS as u64 != 0 {
        check_fs_base(tls)?;
    }
    if flags & libc::CLONE_PARENT_SETTID as u64 != 0 {
        buf(ctx, parent_tid, 4, Access::Write)?;
    }
    if flags & (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID) as u64 != 0 {
        buf(ctx, child_tid, 4, Access::Write)?;
    }
    let tid = ctx.process.new_thread();
    let mut regs = *ctx.regs;
    regs.rax = 0;
    if stack != 0 {
        regs.rsp = stack;
    }
    let thread = ThreadState {
        tid,
        clear_child_tid: if flags & libc::CLONE_CHILD_CLEARTID as u64 != 0 {
            child_tid
        } else {
            0
        },
        sigmask: ctx.process.signals.mask(ctx.thread.tid),
        fs_base: if flags & libc::CLONE_SETTLS as u64 != 0 {
            tls
        } else {
            ctx.thread.fs_base
        },
        syscalls: 0,
        signal_after: None,
        replicated_events: 0,
        parked_fd: None,
        holds_reentry_turn: false,
        blocking_unrecorded: false,
    };
    if flags & libc::CLONE_PARENT_SETTID as u64 != 0 {
        ctx.process.mem.write_obj(parent_tid, &(tid as i32))?;
    }
    if flags & libc::CLONE_CHILD_SETTID as u64 != 0 {
        ctx.process.mem.write_obj(child_tid, &(tid as i32))?;
    }
    ctx.process.signals.add_thread(tid, thread.sigmask);
    if let Err(e) = ctx.cpu.spawn_thread(ThreadStart { regs, thread }) {
        ctx.process.signals.remove_thread(tid);
        ctx.process.thread_not_started();
        return Err(e);
    }
    Ok(tid as u64)
}

/// CLONE_CHILD_CLEARTID: zero the word and wake one waiter, which is how
/// pthread_join learns the thread is gone. The vCPU layer calls this once the
/// exiting thread's vCPU is back in the pool, so that a joiner which creates a new
/// thread right away reuses that vCPU instead of creating another.
pub fn clear_child_tid(process: &Process, addr: u64) {
    if addr == 0 {
        return;
    }
    if process.mem.write_obj(addr, &0u32).is_ok() {
        if let Ok(p) = process.mem.user_range(addr, 4, Access::Write) {
            let _ = sc(
                libc::SYS_futex,
                [p as u64, libc::FUTEX_WAKE as u64, 1, 0, 0, 0],
            );
        }
    }
}

fn exit(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    ctx.action = ThreadAction::ExitThread(a[0] as i32);
    Ok(0)
}

fn exit_group(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    ctx.process.finish(ExitReason::Exited(a[0] as i32));
    ctx.action = ThreadAction::Stop;
    Ok(0)
}

/// futex goes straight to the host kernel on guest memory: guest memory is host
/// memory, so waiters in different vCPU threads meet on the same word.
fn futex(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let op = a[1] as i32;
    let cmd = op & libc::FUTEX_CMD_MASK;
    // Linux reads the word (wait) or only hashes its address (wake): readable is enough.
    let uaddr = buf(ctx, a[0], 4, Access::Read)?;
    let mut args = [uaddr as u64, a[1], a[2], a[3], a[4], a[5]];
    match cmd {
        libc::FUTEX_WAIT | libc::FUTEX_WAIT_BITSET => {
            if a[3] != 0 {
                args[3] = buf(ctx, a[3], 16, Access::Read)? as u64;
            }
        }
        libc::FUTEX_WAKE | libc::FUTEX_WAKE_BITSET => {}
        libc::FUTEX_REQUEUE | libc::FUTEX_CMP_REQUEUE | libc::FUTEX_WAKE_OP => {
            args[4] = buf(ctx, a[4], 4, Access::Write)? as u64;
        }
        // PI futexes store host thread ids in the word, which would leak host tids
        // and break guest-tid semantics; glibc only uses them for PRIO_INHERIT mutexes.
        _ => return Err(Errno::ENOSYS),
    }
    sc(libc::SYS_futex, args)
}

fn set_tid_address(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    ctx.thread.clear_child_tid = a[0];
    Ok(ctx.thread.tid as u64)
}

fn set_robust_list(_: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    // Robust lists matter only when a thread dies holding a lock; exits here are clean
    // or end the whole program. Accept, so glibc keeps its normal paths.
    if a[1] != 24 {
        return Err(Errno::EINVAL);
    }
    Ok(0)
}

fn gettid(ctx: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    Ok(ctx.thread.tid as u64)
}

const ARCH_SET_FS: u64 = 0x1002;
const ARCH_GET_FS: u64 = 0x1003;
/// Linux's TASK_SIZE_MAX on x86-64 with 4-level paging: an FS base at or above it
/// (non-canonical, or the last user page) is refused with EPERM, by arch_prctl and by
/// clone's CLONE_SETTLS alike. KVM would refuse a non-canonical one too, but only
/// by setting fewer MSRs than asked, which is easy to miss.
const TASK_SIZE_MAX: u64 = (1 << 47) - 4096;

fn check_fs_base(base: u64) -> Result<(), Errno> {
    if base >= TASK_SIZE_MAX {
        return Err(Errno::EPERM);
    }
    Ok(())
}

fn arch_prctl(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    match a[0] {
        ARCH_SET_FS => {
            check_fs_base(a[1])?;
            ctx.cpu.set_fs_base(a[1])?;
            ctx.thread.fs_base = a[1];
            Ok(0)
        }
        ARCH_GET_FS => {
            ctx.process.mem.write_obj(a[1], &ctx.thread.fs_base)?;
            Ok(0)
        }
        _ => Err(Errno::EINVAL),
    }
}

fn sched_yield(_: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    sc(libc::SYS_sched_yield, [0; 6])
}

/// The vCPU thread's own affinity is what `--cores` pinned, which is what the
/// program would see natively under taskset.
fn sched_getaffinity(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    if a[0] != 0 && a[0] as i64 != ctx.thread.tid {
        return Err(Errno::ESRCH);
    }
    let p = buf(ctx, a[2], a[1], Access::Write)?;
    sc(libc::SYS_sched_getaffinity, [0, a[1], p as u64, 0, 0, 0])
}

fn sched_getparam(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    ctx.process.mem.write_obj(a[1], &0i32)?;
    Ok(0)
}

fn getcpu(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    for p in [a[0], a[1]] {
        if p != 0 {
            ctx.process.mem.write_obj(p, &0u32)?;
        }
    }
    Ok(0)
}

fn prctl(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    match a[0] as i32 {
        libc::PR_SET_NAME
        | libc::PR_SET_DUMPABLE
        | libc::PR_SET_NO_NEW_PRIVS
        | libc::PR_SET_PDEATHSIG => Ok(0),
        libc::PR_GET_DUMPABLE => Ok(1),
        libc::PR_GET_NAME => {
            let base = ctx.process.exe_path.rsplit('/').next().unwrap_or("");
            let mut name = [0u8; 16];
            let n = base.len().min(15);
            name[..n].copy_from_slice(&base.as_bytes()[..n]);
            ctx.process.mem.write_bytes(a[1], &name)?;
            Ok(0)
        }
        _ => super::sys_identity::prctl_caps(ctx, a).unwrap_or(Err(Errno::EINVAL)),
    }
}

fn no_children(_: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    Err(Errno::ECHILD)
}

fn ok_zero(_: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    Ok(0)
}
