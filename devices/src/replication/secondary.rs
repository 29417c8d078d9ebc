//! The secondary's side of one call: it asks replica's [`Secondary`] what to do with it
//! ([`replica::call`]) and carries the decision out in the program: a Recorded call's result
//! and memory writes placed in the secondary's own buffers, placeholders for the descriptors
//! it created, a Compared call's output computed (not performed), the signal after it
//! delivered at the same point.
//!
//! [`Secondary`]: replica::secondary::Secondary

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use super::{effects, stop_thread, to_result, Replication};
use crate::errno::Errno;
use crate::fd_table::OpenFile;
use crate::sync::lock;
use crate::syscalls::{Handler, ParkedFd, SysResult, SyscallCtx};
use replica::syscall_names as names;

/// A Recorded call, replayed. If the secondary goes live while the call waits for its
/// record (failover: the primary died before it logged the call), `handler` serves it.
pub(super) fn replay(
    rep: &Replication,
    ctx: &mut SyscallCtx<'_>,
    a: [u64; 6],
    handler: Handler,
) -> SysResult {
    ctx.thread.replicated_events += 1;
    let Some(s) = rep.endpoint.secondary() else {
        return stop_thread(ctx);
    };
    let Some(replay) = s.take_recorded(&*ctx) else {
        if s.is_live() {
            ctx.reentry_at = None;
            let r = handler(ctx, a);
            // A connect the primary made before it died: the socket is the primary's.
            if ctx.nr as i64 == libc::SYS_connect && r == Err(Errno(libc::EISCONN)) {
                return Ok(0);
            }
            return r;
        }
        return stop_thread(ctx);
    };
    ctx.reentry_at = replay.reentry_at;
    let plan = effects::plan(ctx.process, ctx.nr, a);
    let bytes = match effects::place(ctx.process, ctx.nr, a, &plan, replay.ret, &replay.writes) {
        Ok(placed) => {
            if placed.relocated > 0 {
                tracing::debug!(
                    tid = super::det_tid(ctx),
                    seq = ctx.thread.syscalls,
                    syscall = %names::name(ctx.nr),
                    parts = placed.relocated,
                    "replayed result placed at the secondary's own buffers"
                );
            }
            placed.bytes
        }
        Err(why) => {
            s.replay_failed(&*ctx, &replay, &why.to_string());
            return stop_thread(ctx);
        }
    };
    if replay.ret >= 0 {
        if let Err(why) = placeholders(rep, ctx, a, replay.ret) {
            return rep.descriptor_mismatch(ctx, replay.ret, why);
        }
        if super::hostfs::binds_own_file(&rep.host_files, ctx.process, ctx.nr, a) {
            // The placeholder is an AF_UNIX socket: bound to the same name, it leaves the
            // same socket file in this replica's own state.
            if let Err(e) = bind_placeholder(ctx, a) {
                let why = format!(
                    "the primary's bind made its socket file; the secondary's failed with errno {}",
                    e.0
                );
                s.replay_failed(&*ctx, &replay, &why);
                return stop_thread(ctx);
            }
        }
    }
    if let Some(sig) = replay.signal {
        deliver_after(ctx, sig);
        if ctx.nr as i64 == libc::SYS_rt_sigsuspend {
            crate::syscalls::sys_signal::replayed_sigsuspend(ctx, a);
        }
    }
    s.replayed(&*ctx, &replay, bytes);
    super::in_doubt::note_replayed_input(rep, ctx, a, replay.ret);
    to_result(replay.ret)
}

/// A Compared call: its output is computed and compared, not performed. If the secondary
/// goes live while the call waits for its record (failover), `handler` performs it, less
/// what the primary already did of it ([`in_doubt`](super::in_doubt)).
pub(super) fn compare(
    rep: &Replication,
    ctx: &mut SyscallCtx<'_>,
    a: [u64; 6],
    handler: Handler,
) -> SysResult {
    let ours = effects::would_output(ctx.process, ctx.nr, a).unwrap_or_default();
    ctx.thread.replicated_events += 1;
    let Some(s) = rep.endpoint.secondary() else {
        return stop_thread(ctx);
    };
    let Some(out) = s.compare_output(&*ctx, &ours) else {
        if s.is_live() {
            return match s.take_in_doubt(super::det_tid(ctx), ctx.nr) {
                Some(doubt) => super::in_doubt::complete(rep, ctx, a, &ours, doubt, handler),
                None => handler(ctx, a),
            };
        }
        return stop_thread(ctx);
    };
    effects::mimic_output(ctx.process, ctx.nr, a, out.ret);
    if let Some(sig) = out.signal {
        deliver_after(ctx, sig);
    }
    let r = to_result(out.ret);
    if out.ret == -(libc::EPIPE as i64) {
        return crate::syscalls::util_epipe(ctx, r);
    }
    r
}

/// exit_group with `status`: false if the thread must stop instead (the primary's status
/// differs, or the secondary is stopping).
pub(super) fn exit(rep: &Replication, ctx: &mut SyscallCtx<'_>, status: i64) -> bool {
    ctx.thread.replicated_events += 1;
    rep.endpoint
        .secondary()
        .is_some_and(|s| s.compare_exit(&*ctx, status))
}

/// Binds the placeholder at the bind's descriptor to the bind's address, with the
/// socket table's own handler (its AF_UNIX paths resolve as every other path does).
fn bind_placeholder(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let entry = crate::syscalls::sys_socket::TABLE
        .iter()
        .find(|e| e.nr == libc::SYS_bind)
        .ok_or(Errno::ENOSYS)?;
    (entry.handler)(ctx, a)
}

/// The signal the primary delivered right after this call, delivered at the same point.
fn deliver_after(ctx: &mut SyscallCtx<'_>, sig: i32) {
    ctx.process.signals.inject(ctx.thread.tid, sig);
    ctx.thread.signal_after = Some(sig);
}

/// Descriptors the primary's call created get placeholders at the same numbers, holding
/// the primary's own descriptors under failover.
#[allow(non_upper_case_globals)]
fn placeholders(
    rep: &Replication,
    ctx: &mut SyscallCtx<'_>,
    a: [u64; 6],
    ret: i64,
) -> Result<(), String> {
    use libc::*;
    let (fds, cloexec): (Vec<i64>, bool) = match ctx.nr as i64 {
        SYS_socket => (vec![ret], a[1] & SOCK_CLOEXEC as u64 != 0),
        SYS_accept => (vec![ret], false),
        SYS_accept4 => (vec![ret], a[3] & SOCK_CLOEXEC as u64 != 0),
        SYS_timerfd_create => (vec![ret], a[1] & TFD_CLOEXEC as u64 != 0),
        SYS_socketpair => {
            let sv: [i32; 2] = ctx
                .process
                .mem
                .read_obj(a[3])
                .map_err(|_| "bad socketpair array")?;
            (
                vec![sv[0] as i64, sv[1] as i64],
                a[1] & SOCK_CLOEXEC as u64 != 0,
            )
        }
        _ if super::hostfs::opens_descriptor(ctx.nr) => {
            (vec![ret], super::hostfs::open_cloexec(ctx.nr, a))
        }
        _ => return Ok(()),
    };
    for (index, want) in fds.into_iter().enumerate() {
        let primary = rep.primary_descriptor(ctx, index as u32)?;
        // SAFETY: creating a socket; the result is checked and owned below.
        let raw = unsafe { libc::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(format!(
                "cannot create a placeholder descriptor: {}",
                Errno::last().0
            ));
        }
        // SAFETY: raw was just created and is ours.
        let host = unsafe { OwnedFd::from_raw_fd(raw) };
        let holds = primary.is_some();
        let file = Arc::new(OpenFile::placeholder(host, primary));
        if holds {
            rep.held.add(&file);
        }
        // At the primary's number, not the lowest free one. An accept's waits for the
        // call's re-entry turn, as the primary's did (ParkedFd).
        if matches!(ctx.nr as i64, SYS_accept | SYS_accept4) && ctx.process.det.get().is_some() {
            ctx.thread.parked_fd = Some(ParkedFd {
                file,
                cloexec,
                at: Some(want),
            });
            continue;
        }
        let mut fds = lock(&ctx.process.fds);
        if fds.get(want).is_ok() {
            return Err(format!(
                "the primary's call returned descriptor {want}, which is still open in the secondary"
            ));
        }
        fds.install_at(want, file, cloexec)
            .map_err(|e| format!("cannot install a placeholder at {want}: errno {}", e.0))?;
    }
    Ok(())
}
