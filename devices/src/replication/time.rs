//! Time in a pair without exits (docs/pair.md, "Time in a pair"): the primary's vDSO writes
//! every time value it computes to its thread's time ring (`crate::time_ring`), and the VMM
//! ships them as `Time` records: at every syscall of the thread, before serving it (so they
//! precede its record), when the ring is full, and from every thread's ring before any output
//! is committed (a value one thread read can reach another thread's output through memory,
//! with no syscall of the first). The secondary's vDSO takes the primary's values from its
//! own ring, which the VMM fills when it runs dry; it never reads the TSC.
//!
//! Clock reads are no det point in either mode (as the syscalls were not): the values are
//! matched per thread, in the thread's own order, so det and follow mode treat them alike.
//!
//! The private calls that carry this (ditto.h, `DITTO_SYS_TIME_*`) are no syscalls of the
//! program: the replicas make different numbers of them, so they neither count nor reach
//! the det runtime.

use det::abi::{
    DITTO_RING_NONE, DITTO_RING_RECORD, DITTO_RING_REPLAY, DITTO_SYS_TIME_DRY, DITTO_SYS_TIME_FULL,
    DITTO_SYS_TIME_MISMATCH, DITTO_SYS_TIME_NOW, DITTO_TIME_DRY_LIVE,
};
use replica::role::Role;
use replica::secondary::TimeTake;

use super::Replication;
use crate::errno::Errno;
use crate::process::Process;
use crate::syscalls::{SyscallCtx, ThreadAction};
use crate::time_ring;
use crate::timekeeper::Clock;

/// The deterministic id of host thread `tid` (u32::MAX for one the det runtime lacks).
fn det_tid_of(process: &Process, tid: i64) -> u32 {
    process
        .det
        .get()
        .and_then(|d| d.det_tid(tid))
        .map_or(u32::MAX, |d| d.0)
}

/// The thread stops (the secondary diverged or is stopping): the value for RAX.
fn stop(ctx: &mut SyscallCtx<'_>) -> u64 {
    ctx.action = ThreadAction::Stop;
    Errno::EINTR.as_return()
}

/// Primary: ships what thread `tid`'s ring holds.
fn ship_thread(rep: &Replication, process: &Process, tid: i64) {
    let Some(p) = rep.endpoint.primary() else {
        return;
    };
    let det_tid = det_tid_of(process, tid);
    if let Err(e) = process.time_rings.take(tid, |v| p.record_time(det_tid, v)) {
        // The program wrote over its own ring: its values are lost, and the secondary,
        // which runs dry or finds other values, reports the divergence.
        tracing::warn!(tid, %e, "primary: time ring");
    }
}

/// Primary, before an output is committed: ships every thread's ring.
pub(super) fn ship_all(rep: &Replication, process: &Process) {
    if process.timekeeper.ring() != DITTO_RING_RECORD {
        return;
    }
    let Some(p) = rep.endpoint.primary() else {
        return;
    };
    if let Err(e) = process
        .time_rings
        .take_all(|tid, v| p.record_time(det_tid_of(process, tid), v))
    {
        tracing::warn!(%e, "primary: time ring");
    }
}

/// The clock of a ring kind (1 MONOTONIC, 2 REALTIME, 3 BOOTTIME).
fn clock_of(kind: u64) -> Option<Clock> {
    match kind {
        1 => Some(Clock::Monotonic),
        2 => Some(Clock::Realtime),
        3 => Some(Clock::Boottime),
        _ => None,
    }
}

/// Serves a private time call: Some(RAX) when `nr` is one (ENOSYS without time rings).
pub fn private_call(ctx: &mut SyscallCtx<'_>, nr: u64, a: [u64; 6]) -> Option<u64> {
    if !(DITTO_SYS_TIME_FULL..=DITTO_SYS_TIME_MISMATCH).contains(&nr) {
        return None;
    }
    let ring = ctx.process.timekeeper.ring();
    let rep = ctx.process.replication.get();
    let ret = match (nr, ring, rep) {
        (DITTO_SYS_TIME_NOW, DITTO_RING_RECORD, _) => match clock_of(a[0]) {
            Some(c) => ctx.process.timekeeper.now_or_host(c),
            None => Errno::EINVAL.as_return(),
        },
        (DITTO_SYS_TIME_FULL, DITTO_RING_RECORD, Some(rep)) => {
            ship_thread(rep, ctx.process, ctx.thread.tid);
            0
        }
        (DITTO_SYS_TIME_DRY, DITTO_RING_REPLAY, Some(rep)) => dry(rep, ctx),
        (DITTO_SYS_TIME_MISMATCH, DITTO_RING_REPLAY, Some(rep)) => {
            let (kind, value) = (a[0], a[1]);
            let detail = format!(
                "the secondary's thread reads clock kind {kind} through the vDSO where the primary's read kind {} ({} ns)",
                time_ring::kind_of(value),
                time_ring::ns_of(value)
            );
            match rep.endpoint.secondary() {
                Some(s) if !rep.endpoint.is_live() => {
                    s.time_mismatch(&*ctx, detail);
                    stop(ctx)
                }
                _ => Errno::EINVAL.as_return(),
            }
        }
        _ => Errno::ENOSYS.as_return(),
    };
    Some(ret)
}

/// Secondary: the thread's ring ran dry: refill it from the primary's next `Time` record.
fn dry(rep: &Replication, ctx: &mut SyscallCtx<'_>) -> u64 {
    let Some(s) = rep.endpoint.secondary() else {
        return Errno::ENOSYS.as_return();
    };
    if rep.endpoint.is_live() {
        return DITTO_TIME_DRY_LIVE;
    }
    match s.take_time(&*ctx) {
        TimeTake::Values(values) => match ctx.process.time_rings.fill(ctx.thread.tid, &values) {
            Ok(()) => 0,
            Err(e) => {
                s.time_mismatch(&*ctx, format!("the primary's time values do not fit: {e}"));
                stop(ctx)
            }
        },
        TimeTake::Live => DITTO_TIME_DRY_LIVE,
        TimeTake::Stop => stop(ctx),
    }
}

/// Before one of the program's syscalls is served: the primary ships the thread's ring
/// (its values precede the call's record); the secondary checks that its thread took every
/// value the primary's read before this call. Some(RAX): the thread stops instead.
pub fn before_syscall(ctx: &mut SyscallCtx<'_>) -> Option<u64> {
    let ring = ctx.process.timekeeper.ring();
    if ring == DITTO_RING_NONE {
        return None;
    }
    let rep = ctx.process.replication.get()?;
    match (rep.role(), ring) {
        (Role::Primary, DITTO_RING_RECORD) => {
            ship_thread(rep, ctx.process, ctx.thread.tid);
            None
        }
        (Role::Secondary, DITTO_RING_REPLAY) if !rep.endpoint.is_live() => {
            let left = ctx.process.time_rings.left(ctx.thread.tid);
            if matches!(left, Ok(0) | Err(time_ring::RingError::NoRing(_))) {
                return None;
            }
            let s = rep.endpoint.secondary()?;
            let detail = match left {
                Ok(n) => format!(
                    "the primary's thread read the time through the vDSO {n} more times before this syscall"
                ),
                Err(e) => format!("the secondary's time ring: {e}"),
            };
            s.time_mismatch(&*ctx, detail);
            Some(stop(ctx))
        }
        _ => None,
    }
}
