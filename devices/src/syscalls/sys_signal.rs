//! Signals: dispositions, masks, sending, sigwait. Handlers are run by the vmm
//! (it builds the frame on the program's stack and serves rt_sigreturn), at the
//! delivery points it checks: every trapped syscall and every kick.

use std::time::Duration;

use super::util::sc;
use super::{SysResult, SyscallCtx, SyscallEntry, ThreadAction};
use crate::errno::Errno;
use crate::exit::ExitReason;
use crate::process::GUEST_PID;
use crate::signals::Fate;
use crate::signals::SigAction;
use crate::sys;

/// The signal table.
pub const TABLE: &[SyscallEntry] = &[
    sys!(SYS_rt_sigaction, Local, rt_sigaction),
    sys!(SYS_rt_sigprocmask, Local, rt_sigprocmask),
    sys!(SYS_sigaltstack, Local, sigaltstack),
    sys!(SYS_rt_sigreturn, Local, rt_sigreturn),
    sys!(SYS_kill, Recorded, kill),
    sys!(SYS_tgkill, Recorded, tgkill),
    sys!(SYS_tkill, Recorded, tkill),
    sys!(SYS_rt_sigtimedwait, Recorded, rt_sigtimedwait),
    sys!(SYS_rt_sigpending, Local, rt_sigpending),
    sys!(SYS_pause, Recorded, pause),
    sys!(SYS_rt_sigsuspend, Recorded, rt_sigsuspend),
];

fn valid_signal(sig: u64) -> Result<i32, Errno> {
    if (1..=64).contains(&sig) {
        Ok(sig as i32)
    } else {
        Err(Errno::EINVAL)
    }
}

fn rt_sigaction(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let sig = valid_signal(a[0])?;
    let new: Option<SigAction> = if a[1] != 0 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            return Err(Errno::EINVAL);
        }
        Some(ctx.process.mem.read_obj(a[1])?)
    } else {
        None
    };
    let old = ctx.process.sigaction(sig);
    if a[2] != 0 {
        ctx.process.mem.write_obj(a[2], &old)?;
    }
    if let Some(n) = new {
        ctx.process.set_sigaction(sig, n);
    }
    Ok(0)
}

fn rt_sigprocmask(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let signals = &ctx.process.signals;
    let tid = ctx.thread.tid;
    let old = signals.mask(tid);
    if a[1] != 0 {
        let set: u64 = ctx.process.mem.read_obj(a[1])?;
        let new = match a[0] as i32 {
            libc::SIG_BLOCK => old | set,
            libc::SIG_UNBLOCK => old & !set,
            libc::SIG_SETMASK => set,
            _ => return Err(Errno::EINVAL),
        };
        signals.set_mask(tid, new);
    }
    if a[2] != 0 {
        ctx.process.mem.write_obj(a[2], &old)?;
    }
    Ok(0)
}

/// Linux's MINSIGSTKSZ on x86-64.
const MINSIGSTKSZ: u64 = 2048;

/// sigaltstack: a per-thread alternate stack, which SA_ONSTACK handlers run on (the vmm's
/// frame builder asks [`crate::signals::Signals::altstack`]). Go needs it: its signal
/// handler refuses to run on a thread whose alternate stack is disabled.
fn sigaltstack(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let tid = ctx.thread.tid;
    let cur = ctx.process.signals.altstack(tid);
    let rsp = ctx.regs.rsp;
    let on = cur.is_some_and(|(sp, size)| on_stack(rsp, sp, size));
    if a[0] != 0 {
        // stack_t { void *ss_sp; int ss_flags; size_t ss_size; }
        let new: [u64; 3] = ctx.process.mem.read_obj(a[0])?;
        let flags = new[1] as i32;
        if on {
            return Err(Errno::EPERM);
        }
        let known = libc::SS_DISABLE | SS_AUTODISARM;
        if flags & !known != 0 {
            return Err(Errno::EINVAL);
        }
        if flags & libc::SS_DISABLE != 0 {
            ctx.process.signals.set_altstack(tid, None);
        } else if new[2] < MINSIGSTKSZ {
            return Err(Errno::ENOMEM);
        } else {
            ctx.process
                .signals
                .set_altstack(tid, Some((new[0], new[2])));
        }
    }
    if a[1] != 0 {
        let old: [u64; 3] = match cur {
            None => [0, libc::SS_DISABLE as u64, 0],
            Some((sp, size)) => [sp, if on { libc::SS_ONSTACK as u64 } else { 0 }, size],
        };
        ctx.process.mem.write_obj(a[1], &old)?;
    }
    Ok(0)
}

/// SS_AUTODISARM (Linux 4.7): accepted; the stack stays armed (no nested use here).
const SS_AUTODISARM: i32 = 1 << 31;

/// Whether `rsp` lies on the stack [sp, sp + size).
pub fn on_stack(rsp: u64, sp: u64, size: u64) -> bool {
    rsp > sp && rsp <= sp.saturating_add(size)
}

fn rt_sigreturn(ctx: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    // The vmm restores the registers saved in the frame at the program's RSP.
    ctx.action = ThreadAction::SigReturn;
    Ok(0)
}

/// Acts on the fate of a generated signal.
fn settle(ctx: &mut SyscallCtx<'_>, sig: i32, fate: Fate) -> SysResult {
    match fate {
        Fate::Ignored => {}
        Fate::Terminate => {
            ctx.process.finish(ExitReason::Signaled {
                signal: sig,
                report: format!("thread {} raised {}", ctx.thread.tid, signal_name(sig)),
            });
            ctx.action = ThreadAction::Stop;
        }
        // The caller itself takes it at its next delivery point, right after this call.
        Fate::Queued(Some(t)) if t != ctx.thread.tid => ctx.process.kick(t),
        Fate::Queued(_) => {}
    }
    Ok(0)
}

fn kill(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let pid = a[0] as i32 as i64;
    if pid != GUEST_PID && pid != 0 && pid != -1 {
        return Err(Errno::ESRCH);
    }
    if a[1] == 0 {
        return Ok(0);
    }
    let sig = valid_signal(a[1])?;
    let fate = ctx
        .process
        .signals
        .send_process(sig, ctx.process.sigaction(sig));
    settle(ctx, sig, fate)
}

fn to_thread(ctx: &mut SyscallCtx<'_>, tid: i64, sig: u64) -> SysResult {
    if sig == 0 {
        return if ctx.process.signals.mask(tid) != 0 || tid == ctx.thread.tid {
            Ok(0)
        } else {
            Err(Errno::ESRCH)
        };
    }
    let sig = valid_signal(sig)?;
    let fate = ctx
        .process
        .signals
        .send_thread(tid, sig, ctx.process.sigaction(sig))
        .ok_or(Errno::ESRCH)?;
    settle(ctx, sig, fate)
}

fn tgkill(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    if a[0] as i32 as i64 != GUEST_PID {
        return Err(Errno::ESRCH);
    }
    to_thread(ctx, a[1] as i32 as i64, a[2])
}

fn tkill(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    to_thread(ctx, a[0] as i32 as i64, a[1])
}

/// SI_TIMER, Linux's si_code for a POSIX timer's signal.
const SI_TIMER: i32 = -2;

/// siginfo_t for a signal sent by the program (or from outside): SI_USER; for a POSIX
/// timer's: SI_TIMER, with the fields of `_sifields._timer` (si_tid, si_overrun,
/// si_sigval) at offsets 16, 20 and 24.
fn write_siginfo(
    ctx: &SyscallCtx<'_>,
    at: u64,
    sig: i32,
    timer: Option<crate::ptimer::Delivered>,
) -> Result<(), Errno> {
    let mut info = [0u8; 128];
    info[0..4].copy_from_slice(&sig.to_le_bytes());
    match timer {
        None => info[16..20].copy_from_slice(&(GUEST_PID as i32).to_le_bytes()),
        Some(t) => {
            info[8..12].copy_from_slice(&SI_TIMER.to_le_bytes());
            info[16..20].copy_from_slice(&t.id.to_le_bytes());
            info[20..24].copy_from_slice(&t.overrun.to_le_bytes());
            info[24..32].copy_from_slice(&t.value.to_le_bytes());
        }
    }
    ctx.process.mem.write_bytes(at, &info)
}

fn rt_sigtimedwait(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let set: u64 = ctx.process.mem.read_obj(a[0])?;
    let timeout = if a[2] != 0 {
        let ts: [i64; 2] = ctx.process.mem.read_obj(a[2])?;
        if ts[0] < 0 || !(0..1_000_000_000).contains(&ts[1]) {
            return Err(Errno::EINVAL);
        }
        Some(Duration::new(ts[0] as u64, ts[1] as u32))
    } else {
        None
    };
    let process = ctx.process;
    let sig = process
        .signals
        .wait(ctx.thread.tid, set, timeout, || process.exiting())
        .ok_or(if process.exiting() {
            Errno::EINTR
        } else {
            Errno::EAGAIN
        })?;
    // A timer's signal taken here counts as delivered, as one that enters a handler.
    let timer = process.ptimers.delivered(sig, ctx.thread.tid);
    if a[1] != 0 {
        write_siginfo(ctx, a[1], sig, timer)?;
    }
    Ok(sig as u64)
}

fn rt_sigpending(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let pending = ctx.process.signals.blocked_pending(ctx.thread.tid);
    ctx.process.mem.write_obj(a[0], &pending)?;
    Ok(0)
}

/// Sleeps until a signal this thread can take is pending (it is delivered right
/// after the call returns EINTR) or the program stops.
fn wait_for_signal(ctx: &SyscallCtx<'_>) -> SysResult {
    let tid = ctx.thread.tid;
    while !ctx.process.exiting() && !ctx.process.signals.has_deliverable(tid) {
        // The kick that queues a signal interrupts this host sleep.
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 20_000_000,
        };
        let _ = sc(libc::SYS_nanosleep, [&ts as *const _ as u64, 0, 0, 0, 0, 0]);
    }
    Err(Errno::EINTR)
}

fn pause(ctx: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    wait_for_signal(ctx)
}

fn rt_sigsuspend(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let mask: u64 = ctx.process.mem.read_obj(a[0])?;
    let tid = ctx.thread.tid;
    let old = ctx.process.signals.set_mask(tid, mask);
    let r = wait_for_signal(ctx);
    ctx.process.signals.end_suspend(tid, old);
    r
}

/// A pair's secondary replays rt_sigsuspend without waiting; the signal the primary's
/// call woke for must still reach its handler under the call's temporary mask.
pub(crate) fn replayed_sigsuspend(ctx: &SyscallCtx<'_>, a: [u64; 6]) {
    if let Ok(mask) = ctx.process.mem.read_obj::<u64>(a[0]) {
        let tid = ctx.thread.tid;
        let old = ctx.process.signals.set_mask(tid, mask);
        ctx.process.signals.end_suspend(tid, old);
    }
}

/// The conventional name of a signal, for reports.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(signal_name(11), "SIGSEGV");
        assert_eq!(signal_name(40), "signal 40");
        assert!(valid_signal(0).is_err());
        assert!(valid_signal(65).is_err());
    }
}
