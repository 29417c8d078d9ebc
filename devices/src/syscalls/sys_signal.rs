//! Signals: dispositions and masks are kept; signals the program sends itself are
//! acted on with their default action. Delivery to handlers is not implemented yet.

use super::util::sc;
use super::{unsupported, SysResult, SyscallCtx, SyscallEntry, ThreadAction};
use crate::errno::Errno;
use crate::process::{lock, ExitReason, SigAction, GUEST_PID};
use crate::sys;

/// The signal table.
pub const TABLE: &[SyscallEntry] = &[
    sys!(SYS_rt_sigaction, Local, rt_sigaction),
    sys!(SYS_rt_sigprocmask, Local, rt_sigprocmask),
    sys!(SYS_sigaltstack, Local, sigaltstack),
    sys!(SYS_rt_sigreturn, Unsupported, unsupported),
    sys!(SYS_kill, Local, kill),
    sys!(SYS_tgkill, Local, tgkill),
    sys!(SYS_tkill, Local, tkill),
    sys!(SYS_pause, Local, pause),
    sys!(SYS_rt_sigsuspend, Local, pause),
];

fn valid_signal(sig: u64) -> Result<usize, Errno> {
    if (1..=64).contains(&sig) {
        Ok(sig as usize)
    } else {
        Err(Errno::EINVAL)
    }
}

fn rt_sigaction(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let sig = valid_signal(a[0])?;
    let new: Option<SigAction> = if a[1] != 0 {
        if sig == libc::SIGKILL as usize || sig == libc::SIGSTOP as usize {
            return Err(Errno::EINVAL);
        }
        Some(ctx.process.mem.read_obj(a[1])?)
    } else {
        None
    };
    let old = {
        let mut t = lock(&ctx.process.sigactions);
        let old = t[sig];
        if let Some(n) = new {
            t[sig] = n;
        }
        old
    };
    if a[2] != 0 {
        ctx.process.mem.write_obj(a[2], &old)?;
    }
    Ok(0)
}

fn rt_sigprocmask(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let old = ctx.thread.sigmask;
    if a[1] != 0 {
        let set: u64 = ctx.process.mem.read_obj(a[1])?;
        ctx.thread.sigmask = match a[0] as i32 {
            libc::SIG_BLOCK => old | set,
            libc::SIG_UNBLOCK => old & !set,
            libc::SIG_SETMASK => set,
            _ => return Err(Errno::EINVAL),
        };
    }
    if a[2] != 0 {
        ctx.process.mem.write_obj(a[2], &old)?;
    }
    Ok(0)
}

fn sigaltstack(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    if a[1] != 0 {
        // stack_t { void *ss_sp; int ss_flags; size_t ss_size; }: report "disabled".
        let disabled: [u64; 3] = [0, libc::SS_DISABLE as u64, 0];
        ctx.process.mem.write_obj(a[1], &disabled)?;
    }
    Ok(0)
}

/// Signals whose default action is to do nothing.
fn default_ignored(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGCHLD | libc::SIGURG | libc::SIGWINCH | libc::SIGCONT
    )
}

/// A signal the program sends to itself.
fn raise(ctx: &mut SyscallCtx<'_>, sig: u64) -> SysResult {
    if sig == 0 {
        return Ok(0);
    }
    let sig = valid_signal(sig)? as i32;
    let act = ctx.process.sigaction(sig);
    if act.handler == libc::SIG_IGN as u64
        || (act.handler == libc::SIG_DFL as u64 && default_ignored(sig))
    {
        return Ok(0);
    }
    if act.handler != libc::SIG_DFL as u64 {
        ctx.process.warn_unsupported(
            libc::SYS_rt_sigreturn as u64,
            "signal delivery to a handler (taking the default action)",
        );
    }
    ctx.process.finish(ExitReason::Signaled {
        signal: sig,
        report: format!(
            "thread {} raised signal {}",
            ctx.thread.tid,
            signal_name(sig)
        ),
    });
    ctx.action = ThreadAction::Stop;
    Ok(0)
}

fn kill(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let pid = a[0] as i32 as i64;
    if pid == GUEST_PID || pid == 0 || pid == -1 {
        raise(ctx, a[1])
    } else {
        Err(Errno::ESRCH)
    }
}

fn tgkill(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    if a[0] as i32 as i64 != GUEST_PID {
        return Err(Errno::ESRCH);
    }
    raise(ctx, a[2])
}

fn tkill(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    raise(ctx, a[1])
}

/// Nothing is ever delivered, so pause sleeps until the program is stopped (the stop
/// kick interrupts the host call).
fn pause(_: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    sc(libc::SYS_pause, [0; 6])
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
