//! The primary's side of one call, once executed: what it wrote or output is read from guest
//! memory and handed to replica's [`Primary`](replica::primary::Primary) to record
//! ([`replica::call`]); descriptors its recorded calls create reach outside the program, and
//! the signal to deliver after it is picked here, so that its record can name it.

use std::os::fd::AsFd;

use super::{effects, Replication};
use crate::sync::lock;
use crate::syscalls::{SyscallCtx, ThreadAction};

/// exit_group with `status`, before it runs: recorded and committed.
pub(super) fn exit(rep: &Replication, ctx: &mut SyscallCtx<'_>, status: i64) {
    ctx.thread.replicated_events += 1;
    super::time::ship_all(rep, ctx.process);
    if let Some(p) = rep.endpoint.primary() {
        p.record_exit(&*ctx, status);
    }
}

/// A Recorded call that returned `ret`: the memory it wrote (per `plan`, taken before it
/// ran), its re-entry time and the signal after it are recorded.
pub(super) fn recorded(
    rep: &Replication,
    ctx: &mut SyscallCtx<'_>,
    a: [u64; 6],
    plan: &effects::Plan,
    ret: i64,
) {
    ctx.thread.replicated_events += 1;
    if ret >= 0 {
        mark_external(rep, ctx, a, ret);
    }
    let ranges = effects::written(ctx.process, ctx.nr, a, plan, ret);
    let writes = effects::capture(ctx.process, &ranges);
    let signal = announce_signal(ctx);
    if let Some(p) = rep.endpoint.primary() {
        p.record_syscall(&*ctx, ret, signal, writes, ctx.reentry_at);
    }
}

/// A Compared call that was asked to output `ours` and returned `ret`: recorded.
pub(super) fn compared(
    rep: &Replication,
    ctx: &mut SyscallCtx<'_>,
    a: [u64; 6],
    ours: &[u8],
    ret: i64,
) {
    let signal = announce_signal(ctx);
    let fd = effects::io_fd(ctx.process, ctx.nr, a).unwrap_or(-1) as i32;
    ctx.thread.replicated_events += 1;
    if let Some(p) = rep.endpoint.primary() {
        p.record_output(&*ctx, fd, ret, signal, ours);
    }
}

/// Primary: descriptors that recorded calls create reach outside the program; under
/// failover their host descriptors go to the secondary before the call's record does.
#[allow(non_upper_case_globals)]
fn mark_external(rep: &Replication, ctx: &SyscallCtx<'_>, a: [u64; 6], ret: i64) {
    use libc::*;
    let fds: Vec<i64> = match ctx.nr as i64 {
        SYS_socket | SYS_accept | SYS_accept4 | SYS_timerfd_create => vec![ret],
        SYS_socketpair => match ctx.process.mem.read_obj::<[i32; 2]>(a[3]) {
            Ok(sv) => vec![sv[0] as i64, sv[1] as i64],
            Err(_) => vec![],
        },
        _ if super::hostfs::opens_descriptor(ctx.nr) => vec![ret],
        _ => return,
    };
    let files: Vec<_> = {
        let t = lock(&ctx.process.fds);
        fds.iter().map(|&fd| t.get(fd).ok()).collect()
    };
    for f in files.iter().flatten() {
        f.mark_external();
    }
    if let Some(p) = rep.endpoint.primary() {
        // The OpenFiles keep the host numbers open while they are sent.
        let host: Vec<_> = files
            .iter()
            .map(|f| f.as_ref().map(|f| f.host.as_fd()))
            .collect();
        p.pass_descriptors(super::det_tid(ctx), ctx.thread.replicated_events, &host);
    }
}

/// Primary: picks the signal to deliver right after this call (the thread's next
/// deliverable one), so that its record can name it.
fn announce_signal(ctx: &mut SyscallCtx<'_>) -> i32 {
    if ctx.action != ThreadAction::Continue || ctx.process.exiting() {
        return 0;
    }
    match ctx.process.signals.next_deliverable(ctx.thread.tid) {
        Some(sig) => {
            ctx.thread.signal_after = Some(sig);
            sig
        }
        None => 0,
    }
}
