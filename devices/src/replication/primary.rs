//! The primary's side: records it sends to the secondary, and output commit (an output leaves
//! the program only once the secondary holds every record sent before it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use det::record::RecordKind;
use replica::status::Counter;
use replica::Producer;

use super::Replication;
use crate::process::{lock, ExitReason};
use crate::syscalls::{SyscallCtx, ThreadAction};
use replica::wire::{self, EndInfo, ThreadRecord};

pub(super) struct PrimarySide {
    pub(super) producer: Mutex<Option<Producer>>,
    pub(super) broken: AtomicBool,
    pub(super) error: Mutex<Option<String>>,
    /// Fault injection ([`CORRUPT_ENV`]): the record number to corrupt, counted from 1.
    pub(super) corrupt_at: Option<u64>,
}

/// Fault injection for tests: the primary corrupts its Nth record (from 1) in the ring, after
/// the checksum, so that the secondary must report a channel error.
pub const CORRUPT_ENV: &str = "DITTO_PAIR_CORRUPT_RECORD";

impl Replication {
    pub(super) fn finish_primary(&self, exit: &ExitReason) {
        let end = match exit {
            ExitReason::Exited(s) => EndInfo {
                status: s & 0xff,
                signal: 0,
            },
            ExitReason::Signaled { signal, .. } => EndInfo {
                status: exit.status(),
                signal: *signal,
            },
        };
        self.send(RecordKind::End, &end.encode());
        if let Some(p) = &self.primary {
            lock(&p.producer).take();
        }
    }

    pub(super) fn send(&self, kind: RecordKind, payload: &[u8]) {
        let Some(p) = &self.primary else { return };
        if p.broken.load(Ordering::Relaxed) {
            return;
        }
        let mut g = lock(&p.producer);
        let Some(producer) = g.as_mut() else { return };
        let nth = producer.stats().records_sent + 1;
        let sent = match p.corrupt_at {
            Some(n) if n == nth => producer.send_corrupted(kind, payload, 24),
            _ => producer.send(kind, payload),
        };
        match sent {
            Ok(_) => {
                self.status.add(Counter::RecordsSent, 1);
                self.status.add(Counter::RecordBytes, payload.len() as u64);
                let st = producer.stats();
                self.status.max(Counter::MaxLagRecords, st.lag_records());
                self.status.max(Counter::MaxLagBytes, st.lag_bytes());
            }
            Err(e) => {
                g.take();
                self.primary_broken(format!("{e}"));
            }
        }
    }

    pub(super) fn primary_broken(&self, why: String) {
        let Some(p) = &self.primary else { return };
        if !p.broken.swap(true, Ordering::Relaxed) {
            eprintln!(
                "ditto: primary: replication stopped ({why}); the program continues unreplicated"
            );
            *lock(&p.error) = Some(why);
        }
    }

    /// Output commit: waits until the secondary holds every record sent so far.
    pub(super) fn commit(&self) {
        let Some(p) = &self.primary else { return };
        let mut g = lock(&p.producer);
        let Some(producer) = g.as_mut() else { return };
        let sent = producer.stats().records_sent;
        if sent == 0 {
            return;
        }
        if let Err(e) = producer.wait_acked(sent - 1) {
            g.take();
            drop(g);
            self.primary_broken(format!("{e}"));
        }
    }

    pub(super) fn send_thread(&self, tid: u32, seq: u64, rec: &ThreadRecord) {
        let mut buf = Vec::new();
        rec.encode(tid, seq, &mut buf);
        let max = match &self.primary {
            Some(p) => lock(&p.producer).as_ref().map(|pr| pr.max_payload()),
            None => None,
        };
        match max {
            // Larger than one ring record (a 20 MiB getrandom, a big read): in pieces,
            // which the secondary puts back together (wire.rs, `Fragment`).
            Some(max) if buf.len() > max => {
                for f in wire::fragments(rec.kind(), &buf, max) {
                    self.send(RecordKind::Fragment, &f);
                }
            }
            _ => self.send(rec.kind(), &buf),
        }
    }
}

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
