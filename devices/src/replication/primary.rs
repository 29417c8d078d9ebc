//! The primary's treatment of a call, beyond recording it: descriptors its recorded calls
//! create reach outside the program, and the signal its record names.

use crate::process::lock;
use crate::syscalls::{SyscallCtx, ThreadAction};

/// Primary: descriptors that recorded calls create reach outside the program.
#[allow(non_upper_case_globals)]
pub(super) fn mark_external(ctx: &SyscallCtx<'_>, a: [u64; 6], ret: i64) {
    use libc::*;
    let fds: Vec<i64> = match ctx.nr as i64 {
        SYS_socket | SYS_accept | SYS_accept4 | SYS_timerfd_create => vec![ret],
        SYS_socketpair => match ctx.process.mem.read_obj::<[i32; 2]>(a[3]) {
            Ok(sv) => vec![sv[0] as i64, sv[1] as i64],
            Err(_) => vec![],
        },
        _ => return,
    };
    let t = lock(&ctx.process.fds);
    for fd in fds {
        if let Ok(f) = t.get(fd) {
            f.mark_external();
        }
    }
}

/// Primary: picks the signal to deliver right after this call (the thread's next
/// deliverable one), so that its record can name it.
pub(super) fn announce_signal(ctx: &mut SyscallCtx<'_>) -> i32 {
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
