//! The secondary's side of the channel: its reader thread demultiplexes the primary's
//! records into one bounded queue per deterministic thread, the program's threads take their
//! own records from them, and after the primary's end the drain decides how the secondary ends.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use det::record::RecordKind;
use det::Turn;
use replica::status::Counter;
use replica::{ChannelError, Consumer};

use super::{Replication, STALL_FILE, STALL_REQUEST};
use crate::det_runtime::ScheduleLink;
use crate::process::{lock, ExitReason, Process};
use replica::findings::{AgreedEvent, Mismatch, SecondaryFindings, HISTORY};
use replica::secondary::intake::{
    behind_by_bytes, Intake, Intook, Queues, MAX_BUFFERED, MAX_TURNS_HELD, RECORD_OVERHEAD,
};
use replica::wire::{self, EndInfo, ThreadRecord};

/// After the primary's end: how long every secondary thread may wait for records that will
/// never come before that is reported as a divergence.
pub(super) const ALL_WAITING_GRACE: Duration = Duration::from_secs(1);

/// After the primary's end: how long the secondary may make no syscall at all before it is
/// reported as stuck (a compute-bound thread legitimately makes none for a while).
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) struct SecondarySide {
    pub(super) consumer: Mutex<Option<Consumer>>,
    pub(super) queues: Mutex<Queues>,
    pub(super) findings: Mutex<SecondaryFindings>,
    pub(super) stop: AtomicBool,
    /// Threads blocked in `take` on an empty queue, or parked after asking for a turn
    /// beyond the end of the primary's log.
    pub(super) waiting: std::sync::atomic::AtomicUsize,
    /// The last such turn request, for the report if the secondary never gets to its end.
    pub(super) late_schedule: Mutex<Option<String>>,
    pub(super) stdout: Mutex<File>,
    pub(super) stderr: Mutex<File>,
    /// Everything else the secondary compared (socket output), in order.
    pub(super) net: Mutex<File>,
    /// The pair's output directory, where the supervisor asks for a description of the
    /// secondary's state ([`STALL_REQUEST`]) and finds it ([`STALL_FILE`]).
    pub(super) output_dir: PathBuf,
}

impl Replication {
    /// Secondary: if the supervisor asked ([`STALL_REQUEST`]), writes what its threads
    /// wait for to [`STALL_FILE`]: the det runtime's state and the records buffered per
    /// thread.
    pub(super) fn describe_if_asked(&self, p: &Process) {
        let Some(s) = &self.secondary else { return };
        let request = s.output_dir.join(STALL_REQUEST);
        if std::fs::remove_file(&request).is_err() {
            return;
        }
        let mut text = format!(
            "{} records consumed, {} turns taken\n",
            self.status.get(Counter::RecordsConsumed),
            self.status.get(Counter::SecondaryTurns)
        );
        if let Some(det) = p.det.get() {
            text.push_str(&det.describe());
        }
        {
            let q = lock(&s.queues);
            let mut buffered: Vec<_> = q
                .by_tid
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(t, v)| format!("t{t}: {}", v.len()))
                .collect();
            buffered.sort();
            text.push_str(&format!(
                "  records buffered per thread: {}\n",
                if buffered.is_empty() {
                    "none".to_string()
                } else {
                    buffered.join(", ")
                }
            ));
            if let Some(closed) = &q.closed {
                text.push_str(&format!("  channel: {closed}\n"));
            } else if q.end.is_some() {
                text.push_str("  the primary's log is complete\n");
            }
        }
        if let Some(late) = lock(&s.late_schedule).as_ref() {
            text.push_str(&format!("  {late}\n"));
        }
        // Written aside and renamed, so that the supervisor never reads half of it.
        let part = s.output_dir.join(format!("{STALL_FILE}.part"));
        if std::fs::write(&part, text).is_ok() {
            let _ = std::fs::rename(&part, s.output_dir.join(STALL_FILE));
        }
    }

    pub(super) fn reader(self: Arc<Self>, process: &Arc<Process>) {
        let Some(s) = &self.secondary else { return };
        let Some(mut consumer) = lock(&s.consumer).take() else {
            return;
        };
        let mut intake = Intake::default();
        let closed = loop {
            if process.exiting() {
                return;
            }
            let (kind, payload) = match consumer.recv() {
                Ok(r) => (r.kind, r.payload.to_vec()),
                Err(ChannelError::Closed) => break "the primary closed the channel".to_string(),
                Err(ChannelError::PeerGone) => break "the primary is gone".to_string(),
                Err(e) => {
                    self.channel_failed(process, e.to_string());
                    return;
                }
            };
            match self.take_in(process, &mut intake, kind, payload) {
                Ok(Intook::More) => {}
                Ok(Intook::End) => break String::new(),
                Err(why) => {
                    self.channel_failed(process, why);
                    return;
                }
            }
        };
        drop(consumer);
        if !closed.is_empty() {
            lock(&s.queues).closed = Some(closed.clone());
            if let Some(det) = process.det.get() {
                det.close_log();
            }
        }
        self.drain(process);
    }

    /// One record from the primary: routed to the det runtime (turns), to a thread's queue,
    /// or into reassembly. Everything a peer sends is bounded here ([`MAX_BUFFERED`],
    /// [`MAX_TURNS_HELD`], announced threads only), and anything malformed is an error (the
    /// channel's error in the report), never a panic or an unbounded allocation.
    pub(super) fn take_in(
        &self,
        process: &Arc<Process>,
        intake: &mut Intake,
        kind: RecordKind,
        payload: Vec<u8>,
    ) -> Result<Intook, String> {
        let Some(s) = &self.secondary else {
            return Ok(Intook::End);
        };
        let (kind, payload) = match kind {
            RecordKind::Fragment => match intake.fragments.push(&payload) {
                Ok(Some(whole)) => whole,
                Ok(None) => {
                    let held = lock(&s.queues).buffered_bytes + intake.fragments.held_bytes();
                    if held > MAX_BUFFERED {
                        return Err(behind_by_bytes());
                    }
                    return Ok(Intook::More);
                }
                Err(e) => return Err(e.to_string()),
            },
            _ => (kind, payload),
        };
        match kind {
            RecordKind::Turn => {
                let t =
                    Turn::from_payload(&payload).map_err(|e| format!("bad turn record: {e}"))?;
                if let Some(det) = process.det.get() {
                    if det.turns_held() >= MAX_TURNS_HELD {
                        return Err(format!(
                            "the secondary fell more than {MAX_TURNS_HELD} turns behind"
                        ));
                    }
                    if let Err(e) = det.push_turn(t) {
                        self.schedule_diverged(t.tid, &e);
                    }
                }
                Ok(Intook::More)
            }
            RecordKind::ThreadStart => {
                let tid = wire::decode_thread_start(&payload).map_err(|e| e.to_string())?;
                intake.announce(tid)?;
                Ok(Intook::More)
            }
            RecordKind::End => {
                let end = EndInfo::decode(&payload).map_err(|e| e.to_string())?;
                lock(&s.queues).end = Some(end);
                lock(&s.findings).primary_end = Some(end);
                if let Some(det) = process.det.get() {
                    det.close_log();
                }
                Ok(Intook::End)
            }
            RecordKind::SyscallResult | RecordKind::OutputHash | RecordKind::TimedWait => {
                let (tid, seq, rec) =
                    ThreadRecord::decode(kind, &payload).map_err(|e| e.to_string())?;
                intake.admit(tid, seq, &rec)?;
                let cost = payload.len() as u64 + RECORD_OVERHEAD;
                let mut q = lock(&s.queues);
                q.buffered_bytes += cost;
                if q.buffered_bytes + intake.fragments.held_bytes() > MAX_BUFFERED {
                    return Err(behind_by_bytes());
                }
                q.by_tid.entry(tid).or_default().push_back((seq, rec, cost));
                q.cv(tid).notify_all();
                Ok(Intook::More)
            }
            other => Err(format!("unexpected {other:?} record")),
        }
    }

    /// After the log ended: let the threads consume what is left, then end the program the
    /// way the primary's ended, unless it gets there by itself.
    pub(super) fn drain(&self, process: &Arc<Process>) {
        let Some(s) = &self.secondary else { return };
        let mut last_progress = Instant::now();
        let mut last_syscalls = process.stats.syscalls.load(Ordering::Relaxed);
        let mut all_waiting_since: Option<Instant> = None;
        loop {
            std::thread::sleep(Duration::from_millis(20));
            if process.exiting() {
                return;
            }
            let q = lock(&s.queues);
            let empty = q.all_empty();
            let end = q.end;
            let closed = q.closed.clone();
            for cv in q.cvs.values() {
                cv.notify_all();
            }
            drop(q);
            match (end, closed) {
                // Killed from outside (no handler ran): the secondary ends the same way
                // once every logged event is consumed.
                (Some(e), _) if e.signal != 0 && empty => {
                    process.finish(ExitReason::Signaled {
                        signal: e.signal,
                        report: String::new(),
                    });
                    return;
                }
                (None, Some(why)) if empty => {
                    lock(&s.findings).stopped = Some(format!(
                        "{why}; the secondary replayed the whole log and stopped"
                    ));
                    process.finish(ExitReason::Signaled {
                        signal: libc::SIGKILL,
                        report: String::new(),
                    });
                    return;
                }
                _ => {}
            }
            let syscalls = process.stats.syscalls.load(Ordering::Relaxed);
            if syscalls != last_syscalls {
                last_syscalls = syscalls;
                last_progress = Instant::now();
            }
            let all_waiting =
                empty && s.waiting.load(Ordering::SeqCst) >= process.live_threads().max(1);
            all_waiting_since = match (all_waiting, all_waiting_since) {
                (true, None) => Some(Instant::now()),
                (true, since) => since,
                (false, _) => None,
            };
            let stuck = all_waiting_since.is_some_and(|t| t.elapsed() > ALL_WAITING_GRACE);
            if stuck || last_progress.elapsed() > DRAIN_TIMEOUT {
                let (pending, first) = {
                    let q = lock(&s.queues);
                    let pending: usize = q.by_tid.values().map(|q| q.len()).sum();
                    let first = q
                        .by_tid
                        .iter()
                        .filter_map(|(t, d)| {
                            d.front()
                                .map(|(_, r, _)| format!("thread {t}: {}", r.describe()))
                        })
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(", ");
                    (pending, first)
                };
                self.mismatch(
                    process,
                    Mismatch {
                        kind: if lock(&s.late_schedule).is_some() {
                            "schedule"
                        } else {
                            "missing_event"
                        },
                        thread: 0,
                        detail: format!(
                            "the primary's program ended but the secondary's did not get there ({}; {pending} records not taken{})",
                            if stuck {
                                "every secondary thread waits for events the primary never logged".to_string()
                            } else {
                                format!("no syscall for {} s", DRAIN_TIMEOUT.as_secs())
                            },
                            match (first.is_empty(), lock(&s.late_schedule).clone()) {
                                (_, Some(late)) => format!("; {late}"),
                                (true, None) => String::new(),
                                (false, None) => format!("; next: {first}"),
                            }
                        ),
                        ..Default::default()
                    },
                );
                return;
            }
        }
    }

    pub(super) fn channel_failed(&self, process: &Arc<Process>, why: String) {
        let Some(s) = &self.secondary else { return };
        eprintln!("ditto: secondary: channel error: {why}");
        {
            let mut f = lock(&s.findings);
            if f.channel_error.is_none() {
                f.channel_error = Some(why.clone());
            }
            f.stopped = Some(format!("channel error: {why}"));
        }
        s.stop.store(true, Ordering::Relaxed);
        lock(&s.queues).closed = Some(why);
        process.finish(ExitReason::Signaled {
            signal: libc::SIGKILL,
            report: String::new(),
        });
    }

    /// Records the first mismatch and stops the secondary's program.
    pub(super) fn mismatch(&self, process: &Process, m: Mismatch) {
        let Some(s) = &self.secondary else { return };
        {
            let mut f = lock(&s.findings);
            if f.mismatch.is_none() {
                eprintln!(
                    "ditto: secondary: replicas diverged: thread {} syscall #{} ({}): {}",
                    m.thread, m.syscall_seq, m.syscall, m.detail
                );
                f.stopped = Some("diverged".into());
                f.mismatch = Some(m);
            }
        }
        self.status.set(Counter::Diverged, 1);
        s.stop.store(true, Ordering::Relaxed);
        process.finish(ExitReason::Signaled {
            signal: libc::SIGKILL,
            report: String::new(),
        });
    }

    pub(super) fn agreed(&self, ev: AgreedEvent) {
        let Some(s) = &self.secondary else { return };
        let mut f = lock(&s.findings);
        if f.history.len() == HISTORY {
            f.history.pop_front();
        }
        f.history.push_back(ev);
    }

    /// Takes `tid`'s next record, waiting for it. None: the secondary is stopping.
    pub(super) fn take(&self, process: &Process, tid: u32) -> Option<(u64, ThreadRecord)> {
        self.take_until(process, tid, false)
    }

    /// [`take`](Self::take); with `until_end`, also None once the primary's log is over and
    /// holds nothing more for `tid` (a wait the primary's exit cut short has no outcome).
    pub(super) fn take_until(
        &self,
        process: &Process,
        tid: u32,
        until_end: bool,
    ) -> Option<(u64, ThreadRecord)> {
        let s = self.secondary.as_ref()?;
        let mut q = lock(&s.queues);
        let cv = q.cv(tid);
        loop {
            if let Some((seq, rec, len)) = q.by_tid.get_mut(&tid).and_then(|d| d.pop_front()) {
                q.buffered_bytes = q.buffered_bytes.saturating_sub(len);
                self.status.add(Counter::RecordsConsumed, 1);
                return Some((seq, rec));
            }
            if s.stop.load(Ordering::Relaxed) || process.exiting() {
                return None;
            }
            if until_end && (q.end.is_some() || q.closed.is_some()) {
                return None;
            }
            s.waiting.fetch_add(1, Ordering::SeqCst);
            q = cv
                .wait_timeout(q, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            s.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
