//! The secondary's treatment of one call: a Recorded call is replayed from its record (the
//! primary's result and memory writes, placeholders for the descriptors it created), a
//! Compared call's output is compared with the primary's, exit_group's status too.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use replica::status::{Counter, StatusPage};

use super::{effects, to_result, Replication, REENTRY_ADDR};
use crate::errno::Errno;
use crate::fd_table::OpenFile;
use crate::process::{lock, Process};
use crate::syscalls::{names, ParkedFd, SysResult, SyscallCtx};
use replica::findings::{first_difference, AgreedEvent, Mismatch};
use replica::wire::{self, ThreadRecord};

impl Replication {
    /// Secondary: the descriptor `fd` the primary's call returned cannot be given the same
    /// number here (`why`): reported as a divergence, and the thread stops.
    pub fn descriptor_mismatch(&self, ctx: &mut SyscallCtx<'_>, fd: i64, why: String) -> SysResult {
        let (logical_time, turn) = self.where_(ctx);
        self.mismatch(
            ctx.process,
            Mismatch {
                kind: "syscall",
                thread: Self::det_tid(ctx),
                syscall_seq: ctx.thread.syscalls,
                syscall: names::name(ctx.nr),
                primary_syscall: Some(names::name(ctx.nr)),
                fd: Some(fd),
                logical_time,
                turn,
                primary: fd.to_string().into_bytes(),
                secondary: why.clone().into_bytes(),
                detail: why,
                ..Default::default()
            },
        );
        Self::stop_thread(ctx)
    }

    /// Secondary: takes the record for this call, checking it is one for this syscall.
    pub(super) fn take_for(&self, ctx: &mut SyscallCtx<'_>) -> Option<ThreadRecord> {
        let tid = Self::det_tid(ctx);
        let seq = ctx.thread.syscalls;
        ctx.thread.replicated_events += 1;
        let event = ctx.thread.replicated_events;
        let (event_p, rec) = self.take(ctx.process, tid)?;
        let (nr_p, seq_p) = match &rec {
            ThreadRecord::Syscall { nr, syscall_no, .. }
            | ThreadRecord::Output { nr, syscall_no, .. } => (Some(*nr), *syscall_no),
            _ => (None, 0),
        };
        if event_p != event || nr_p != Some(ctx.nr as u32) {
            let (logical_time, turn) = self.where_(ctx);
            let ours = names::name(ctx.nr);
            let theirs = rec.describe();
            self.mismatch(
                ctx.process,
                Mismatch {
                    kind: "syscall",
                    thread: tid,
                    syscall_seq: seq,
                    syscall: ours.clone(),
                    primary_syscall: Some(theirs.clone()),
                    logical_time,
                    turn,
                    primary: format!("#{seq_p} {theirs}").into_bytes(),
                    secondary: format!("#{seq} {ours}").into_bytes(),
                    detail: format!(
                        "the secondary's syscall #{seq} is {ours}, the primary's next logged event of this thread is {theirs} (its syscall #{seq_p})"
                    ),
                    ..Default::default()
                },
            );
            return None;
        }
        Some(rec)
    }

    /// The signal the record says the primary delivered after this call.
    pub(super) fn replay_signal(ctx: &mut SyscallCtx<'_>, sig: i32, status: &StatusPage) {
        if sig > 0 && sig < 65 {
            ctx.process.signals.inject(ctx.thread.tid, sig);
            ctx.thread.signal_after = Some(sig);
            status.add(Counter::Signals, 1);
        }
    }

    /// Secondary: a Recorded call, replayed.
    pub(super) fn replay(&self, ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
        let Some(rec) = self.take_for(ctx) else {
            return Self::stop_thread(ctx);
        };
        let ThreadRecord::Syscall {
            ret,
            signal,
            writes,
            ..
        } = rec
        else {
            return Self::stop_thread(ctx);
        };
        let (reentry, writes): (Vec<_>, Vec<_>) = writes
            .into_iter()
            .partition(|(addr, _)| *addr == REENTRY_ADDR);
        ctx.reentry_at = reentry.first().and_then(|(_, b)| {
            let mut v = [0u8; 8];
            (b.len() == 8).then(|| {
                v.copy_from_slice(b);
                u64::from_le_bytes(v)
            })
        });
        let plan = effects::plan(ctx.process, ctx.nr, a);
        let bytes = match effects::place(ctx.process, ctx.nr, a, &plan, ret, &writes) {
            Ok(placed) => {
                if placed.relocated > 0 {
                    tracing::debug!(
                        tid = Self::det_tid(ctx),
                        seq = ctx.thread.syscalls,
                        syscall = %names::name(ctx.nr),
                        parts = placed.relocated,
                        "replayed result placed at the secondary's own buffers"
                    );
                }
                placed.bytes
            }
            Err(why) => {
                let tid = Self::det_tid(ctx);
                let seq = ctx.thread.syscalls;
                let (logical_time, turn) = self.where_(ctx);
                let total: usize = writes.iter().map(|(_, d)| d.len()).sum();
                self.mismatch(
                    ctx.process,
                    Mismatch {
                        kind: "syscall",
                        thread: tid,
                        syscall_seq: seq,
                        syscall: names::name(ctx.nr),
                        primary_syscall: Some(names::name(ctx.nr)),
                        logical_time,
                        turn,
                        primary: format!("{} parts, {total} bytes", writes.len()).into_bytes(),
                        secondary: why.to_string().into_bytes(),
                        detail: why.to_string(),
                        ..Default::default()
                    },
                );
                return Self::stop_thread(ctx);
            }
        };
        if ret >= 0 {
            if let Err(why) = self.placeholders(ctx, a, ret) {
                return self.descriptor_mismatch(ctx, ret, why);
            }
        }
        Self::replay_signal(ctx, signal, self.status());
        self.status().add(Counter::RecordedSyscalls, 1);
        self.agreed(AgreedEvent {
            thread: Self::det_tid(ctx),
            syscall_seq: ctx.thread.syscalls,
            syscall: names::name(ctx.nr),
            kind: "recorded",
            result: ret,
            bytes,
        });
        to_result(ret)
    }

    /// Secondary: descriptors the primary's call created get placeholders at the same numbers.
    #[allow(non_upper_case_globals)]
    pub(super) fn placeholders(
        &self,
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
            _ => return Ok(()),
        };
        for want in fds {
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
            // At the primary's number, not the lowest free one. An accept's waits for the
            // call's re-entry turn, as the primary's did (ParkedFd).
            if matches!(ctx.nr as i64, SYS_accept | SYS_accept4) && ctx.process.det.get().is_some()
            {
                ctx.thread.parked_fd = Some(ParkedFd {
                    file: Arc::new(OpenFile::external(host)),
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
            fds.install_at(want, Arc::new(OpenFile::external(host)), cloexec)
                .map_err(|e| format!("cannot install a placeholder at {want}: errno {}", e.0))?;
        }
        Ok(())
    }

    /// Secondary: a Compared call: compare the bytes, do not output them.
    pub(super) fn compare(&self, ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
        let ours = effects::would_output(ctx.process, ctx.nr, a).unwrap_or_default();
        let Some(rec) = self.take_for(ctx) else {
            return Self::stop_thread(ctx);
        };
        let ThreadRecord::Output {
            fd,
            ret,
            signal,
            asked,
            hash,
            data,
            ..
        } = rec
        else {
            return Self::stop_thread(ctx);
        };
        let n = if ret > 0 { ret as usize } else { 0 };
        let ours_sent = &ours[..n.min(ours.len())];
        let same_len = ours.len() as u64 == asked;
        let same_bytes = match &data {
            Some(d) => d.as_slice() == ours_sent,
            None => wire::output_hash(ours_sent) == hash,
        };
        if !(same_len && same_bytes) {
            let tid = Self::det_tid(ctx);
            let seq = ctx.thread.syscalls;
            let (logical_time, turn) = self.where_(ctx);
            let primary = data.clone().unwrap_or_default();
            let first = match &data {
                Some(d) => first_difference(d, &ours),
                None => None,
            }
            .or(if same_len {
                None
            } else {
                Some(ours.len().min(asked as usize) as u64)
            });
            self.mismatch(
                ctx.process,
                Mismatch {
                    kind: "output",
                    thread: tid,
                    syscall_seq: seq,
                    syscall: names::name(ctx.nr),
                    primary_syscall: Some(names::name(ctx.nr)),
                    fd: Some(i64::from(fd)),
                    logical_time,
                    turn,
                    primary,
                    secondary: ours.clone(),
                    primary_hash: data.is_none().then_some(hash),
                    first_differing_byte: first,
                    detail: format!(
                        "output to fd {fd} differs: the primary wrote {asked} bytes, the secondary would write {}",
                        ours.len()
                    ),
                },
            );
            return Self::stop_thread(ctx);
        }
        if let Some(s) = self.endpoint.secondary() {
            s.keep_output(fd, ours_sent);
        }
        effects::mimic_output(ctx.process, ctx.nr, a, ret);
        Self::replay_signal(ctx, signal, self.status());
        self.status().add(Counter::ComparedOutputs, 1);
        self.status().add(Counter::BytesCompared, n as u64);
        self.agreed(AgreedEvent {
            thread: Self::det_tid(ctx),
            syscall_seq: ctx.thread.syscalls,
            syscall: names::name(ctx.nr),
            kind: "compared",
            result: ret,
            bytes: n as u64,
        });
        let r = to_result(ret);
        if ret == -(libc::EPIPE as i64) {
            return crate::syscalls::util_epipe(ctx, r);
        }
        r
    }

    /// Secondary: exit_group: the status must be the primary's.
    pub(super) fn compare_exit(&self, ctx: &mut SyscallCtx<'_>, status: i64) -> bool {
        let Some(rec) = self.take_for(ctx) else {
            return false;
        };
        let ThreadRecord::Syscall { ret, .. } = rec else {
            return false;
        };
        if ret != status {
            let tid = Self::det_tid(ctx);
            let seq = ctx.thread.syscalls;
            let (logical_time, turn) = self.where_(ctx);
            self.mismatch(
                ctx.process,
                Mismatch {
                    kind: "exit",
                    thread: tid,
                    syscall_seq: seq,
                    syscall: names::name(ctx.nr),
                    primary_syscall: Some(names::name(ctx.nr)),
                    logical_time,
                    turn,
                    primary: ret.to_string().into_bytes(),
                    secondary: status.to_string().into_bytes(),
                    first_differing_byte: first_difference(
                        ret.to_string().as_bytes(),
                        status.to_string().as_bytes(),
                    ),
                    detail: format!("the primary exited with {ret}, the secondary with {status}"),
                    ..Default::default()
                },
            );
            return false;
        }
        self.agreed(AgreedEvent {
            thread: Self::det_tid(ctx),
            syscall_seq: ctx.thread.syscalls,
            syscall: names::name(ctx.nr),
            kind: "exit",
            result: ret,
            bytes: 0,
        });
        true
    }

    /// Secondary: records the first mismatch and stops the program.
    fn mismatch(&self, process: &Process, m: Mismatch) {
        if let Some(s) = self.endpoint.secondary() {
            s.mismatch(process, m);
        }
    }

    /// Secondary: one more agreed event.
    fn agreed(&self, ev: AgreedEvent) {
        if let Some(s) = self.endpoint.secondary() {
            s.agreed(ev);
        }
    }

    /// Secondary: takes `tid`'s next record, waiting for it. None: the secondary is stopping.
    fn take(&self, process: &Process, tid: u32) -> Option<(u64, ThreadRecord)> {
        self.endpoint.secondary()?.take(process, tid)
    }
}
