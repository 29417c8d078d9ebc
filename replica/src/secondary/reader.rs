//! The secondary's reader thread: demultiplexes the primary's records into one bounded queue
//! per deterministic thread (turns go to the det runtime), and after the primary's end drains:
//! lets the threads consume what is left, then decides how the secondary ends.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use det::record::RecordKind;
use det::Turn;

use super::intake::{
    behind_by_bytes, Intake, Intook, MAX_BUFFERED, MAX_TURNS_HELD, RECORD_OVERHEAD,
};
use super::Secondary;
use crate::findings::Mismatch;
use crate::program::Program;
use crate::sync::lock;
use crate::wire::{self, EndInfo, ThreadRecord};
use crate::ChannelError;

/// After the primary's end: how long every secondary thread may wait for records that will
/// never come before that is reported as a divergence.
const ALL_WAITING_GRACE: Duration = Duration::from_secs(1);

/// After the primary's end: how long the secondary may make no syscall at all before it is
/// reported as stuck (a compute-bound thread legitimately makes none for a while).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

impl Secondary {
    /// The reader thread: takes the primary's records in until the log ends or the channel
    /// fails, then drains.
    pub fn reader(&self, program: &dyn Program) {
        let Some(mut consumer) = lock(&self.consumer).take() else {
            return;
        };
        let mut intake = Intake::default();
        let closed = loop {
            if program.exiting() {
                return;
            }
            let (kind, payload) = match consumer.recv() {
                Ok(r) => (r.kind, r.payload.to_vec()),
                Err(ChannelError::Closed) => break "the primary closed the channel".to_string(),
                Err(ChannelError::PeerGone) => break "the primary is gone".to_string(),
                Err(e) => {
                    self.channel_failed(program, e.to_string());
                    return;
                }
            };
            match self.take_in(program, &mut intake, kind, payload) {
                Ok(Intook::More) => {}
                Ok(Intook::End) => break String::new(),
                Err(why) => {
                    self.channel_failed(program, why);
                    return;
                }
            }
        };
        drop(consumer);
        if !closed.is_empty() && self.failover {
            self.fail_over(program, closed);
            return;
        }
        if !closed.is_empty() {
            lock(&self.queues).closed = Some(closed.clone());
            program.close_log();
        }
        self.drain(program);
    }

    /// One record from the primary: routed to the det runtime (turns), to a thread's queue,
    /// or into reassembly. Everything a peer sends is bounded here ([`MAX_BUFFERED`],
    /// [`MAX_TURNS_HELD`], announced threads only), and anything malformed is an error (the
    /// channel's error in the report), never a panic or an unbounded allocation.
    fn take_in(
        &self,
        program: &dyn Program,
        intake: &mut Intake,
        kind: RecordKind,
        payload: Vec<u8>,
    ) -> Result<Intook, String> {
        let (kind, payload) = match kind {
            RecordKind::Fragment => match intake.fragments.push(&payload) {
                Ok(Some(whole)) => whole,
                Ok(None) => {
                    let held = lock(&self.queues).buffered_bytes + intake.fragments.held_bytes();
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
                if let Some(held) = program.turns_held() {
                    if held >= MAX_TURNS_HELD {
                        return Err(format!(
                            "the secondary fell more than {MAX_TURNS_HELD} turns behind"
                        ));
                    }
                    if let Err(e) = program.push_turn(t) {
                        self.schedule_diverged(Some(program), t.tid, &e);
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
                lock(&self.queues).end = Some(end);
                lock(&self.findings).primary_end = Some(end);
                program.close_log();
                Ok(Intook::End)
            }
            RecordKind::SyscallResult
            | RecordKind::OutputHash
            | RecordKind::TimedWait
            | RecordKind::OutputIntent
            | RecordKind::TimeValues => {
                let (tid, seq, rec) =
                    ThreadRecord::decode(kind, &payload).map_err(|e| e.to_string())?;
                intake.admit(tid, seq, &rec)?;
                let cost = payload.len() as u64 + RECORD_OVERHEAD;
                let mut q = lock(&self.queues);
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
    fn drain(&self, program: &dyn Program) {
        let mut last_progress = Instant::now();
        let mut last_syscalls = program.syscalls();
        let mut all_waiting_since: Option<Instant> = None;
        loop {
            std::thread::sleep(Duration::from_millis(20));
            if program.exiting() {
                return;
            }
            let q = lock(&self.queues);
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
                    program.end_by_signal(e.signal);
                    return;
                }
                (None, Some(why)) if empty => {
                    lock(&self.findings).stopped = Some(format!(
                        "{why}; the secondary replayed the whole log and stopped"
                    ));
                    program.end_by_signal(libc::SIGKILL);
                    return;
                }
                _ => {}
            }
            let syscalls = program.syscalls();
            if syscalls != last_syscalls {
                last_syscalls = syscalls;
                last_progress = Instant::now();
            }
            let all_waiting =
                empty && self.waiting.load(Ordering::SeqCst) >= program.live_threads().max(1);
            all_waiting_since = match (all_waiting, all_waiting_since) {
                (true, None) => Some(Instant::now()),
                (true, since) => since,
                (false, _) => None,
            };
            let stuck = all_waiting_since.is_some_and(|t| t.elapsed() > ALL_WAITING_GRACE);
            if stuck || last_progress.elapsed() > DRAIN_TIMEOUT {
                let (pending, first) = {
                    let q = lock(&self.queues);
                    let pending: usize = q.by_tid.values().map(|q| q.len()).sum();
                    let first = q.heads(3);
                    (pending, first)
                };
                self.mismatch(
                    program,
                    Mismatch {
                        kind: if lock(&self.late_schedule).is_some() {
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
                            match (first.is_empty(), lock(&self.late_schedule).clone()) {
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
}
