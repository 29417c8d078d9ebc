//! The secondary's decisions about one syscall ([`crate::call`]): it takes the call's record
//! from the thread's queue, checks that it is the record of this call, compares what there is
//! to compare, and reports the first mismatch and the agreed events. What the decision means
//! for the program's memory and descriptors is the syscall layer's to carry out.

use super::Secondary;
use crate::call::{deliverable, Call, ComparedOutput, InDoubt, Replay};
use crate::findings::{first_difference, AgreedEvent, Mismatch};
use crate::status::Counter;
use crate::sync::lock;
use crate::syscall_names::name;
use crate::wire::{self, ThreadRecord, REENTRY_ADDR};

/// A mismatch of `kind` at `call`: who made it, which call, and where the program was in its
/// schedule (asked only now, for the report). The caller adds what differed.
fn at_call(call: &dyn Call, kind: &'static str) -> Mismatch {
    let (logical_time, turn) = call.position();
    Mismatch {
        kind,
        thread: call.thread(),
        syscall_seq: call.syscall_seq(),
        syscall: name(call.nr()),
        primary_syscall: Some(name(call.nr())),
        logical_time,
        turn,
        ..Default::default()
    }
}

/// Secondary: what a thread whose time ring ran dry gets ([`Secondary::take_time`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimeTake {
    /// The primary's next time values of the thread, in order.
    Values(Vec<u64>),
    /// The secondary took over and the primary's log holds no more for the thread: its
    /// time is its own from now on.
    Live,
    /// The thread stops: the primary's next record of it is no time read (reported), or the
    /// secondary is stopping.
    Stop,
}

impl Secondary {
    /// The thread of `call` (a private time call: its vDSO's time ring ran dry) needs the
    /// primary's next time values.
    pub fn take_time(&self, call: &dyn Call) -> TimeTake {
        let tid = call.thread();
        match self.take(call.program(), tid) {
            Some((_, ThreadRecord::Time { values })) => TimeTake::Values(values),
            Some((seq_p, other)) => {
                let theirs = other.describe();
                let mut m = at_call(call, "time");
                m.syscall = "vDSO time read".into();
                m.primary_syscall = Some(theirs.clone());
                m.primary = format!("#{seq_p} {theirs}").into_bytes();
                m.secondary = b"a vDSO time read".to_vec();
                m.detail = format!(
                    "the secondary's thread reads the time through the vDSO, the primary's next logged event of this thread is {theirs}"
                );
                self.mismatch(call.program(), m);
                TimeTake::Stop
            }
            None if self.is_live() => TimeTake::Live,
            None => TimeTake::Stop,
        }
    }

    /// A time-ring divergence at `call` (`detail` says which): the program stops.
    pub fn time_mismatch(&self, call: &dyn Call, detail: String) {
        let mut m = at_call(call, "time");
        m.syscall = "vDSO time read".into();
        m.primary_syscall = None;
        m.secondary = detail.clone().into_bytes();
        m.detail = detail;
        self.mismatch(call.program(), m);
    }

    /// A Recorded call: how to replay it. None: the thread stops (the record is not this
    /// call's, which is reported, or the secondary is stopping).
    pub fn take_recorded(&self, call: &dyn Call) -> Option<Replay> {
        let ThreadRecord::Syscall {
            ret,
            signal,
            writes,
            ..
        } = self.take_for(call)?
        else {
            return None;
        };
        let (reentry, writes): (Vec<_>, Vec<_>) = writes
            .into_iter()
            .partition(|(addr, _)| *addr == REENTRY_ADDR);
        let reentry_at = reentry.first().and_then(|(_, b)| {
            let mut v = [0u8; 8];
            (b.len() == 8).then(|| {
                v.copy_from_slice(b);
                u64::from_le_bytes(v)
            })
        });
        Some(Replay {
            ret,
            writes,
            reentry_at,
            signal: deliverable(signal),
        })
    }

    /// The primary's memory writes of `replay` cannot be placed in the secondary's call
    /// (`why`): a divergence; the program stops.
    pub fn replay_failed(&self, call: &dyn Call, replay: &Replay, why: &str) {
        let total: usize = replay.writes.iter().map(|(_, d)| d.len()).sum();
        self.mismatch(
            call.program(),
            Mismatch {
                primary: format!("{} parts, {total} bytes", replay.writes.len()).into_bytes(),
                secondary: why.as_bytes().to_vec(),
                detail: why.to_string(),
                ..at_call(call, "syscall")
            },
        );
    }

    /// The descriptor `fd` the primary's call returned cannot be given the same number here
    /// (`why`): a divergence; the program stops.
    pub fn descriptor_mismatch(&self, call: &dyn Call, fd: i64, why: String) {
        self.mismatch(
            call.program(),
            Mismatch {
                fd: Some(fd),
                primary: fd.to_string().into_bytes(),
                secondary: why.clone().into_bytes(),
                detail: why,
                ..at_call(call, "syscall")
            },
        );
    }

    /// `replay` was carried out, `bytes` of memory placed: counted, and one more agreed event.
    pub fn replayed(&self, call: &dyn Call, replay: &Replay, bytes: u64) {
        if replay.signal.is_some() {
            self.status.add(Counter::Signals, 1);
        }
        self.status.add(Counter::RecordedSyscalls, 1);
        self.agreed(AgreedEvent {
            thread: call.thread(),
            syscall_seq: call.syscall_seq(),
            syscall: name(call.nr()),
            kind: "recorded",
            result: replay.ret,
            bytes,
        });
    }

    /// A Compared call that would output `ours`: compared with what the primary output. On
    /// agreement the bytes are kept in the secondary's output files, counted, and the result
    /// returned; None: the thread stops (a mismatch, reported, or the secondary is stopping).
    ///
    /// With failover on, the primary's intent record comes first; it is kept for
    /// [`take_in_doubt`](Self::take_in_doubt) until the output's own record arrives.
    pub fn compare_output(&self, call: &dyn Call, ours: &[u8]) -> Option<ComparedOutput> {
        let mut rec = self.take_for(call)?;
        if let ThreadRecord::Intent {
            fd,
            stream,
            position,
            size,
            ..
        } = rec
        {
            let doubt = InDoubt {
                fd,
                stream,
                position,
                size,
            };
            lock(&self.in_doubt).insert(call.thread(), doubt);
            rec = self.take_for(call)?;
            lock(&self.in_doubt).remove(&call.thread());
        }
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
            return None;
        };
        let n = if ret > 0 { ret as usize } else { 0 };
        let ours_sent = &ours[..n.min(ours.len())];
        let same_len = ours.len() as u64 == asked;
        let same_bytes = match &data {
            Some(d) => d.as_slice() == ours_sent,
            None => wire::output_hash(ours_sent) == hash,
        };
        if !(same_len && same_bytes) {
            let first = match &data {
                Some(d) => first_difference(d, ours),
                None => None,
            }
            .or(if same_len {
                None
            } else {
                Some(ours.len().min(asked as usize) as u64)
            });
            self.mismatch(
                call.program(),
                Mismatch {
                    fd: Some(i64::from(fd)),
                    primary: data.clone().unwrap_or_default(),
                    secondary: ours.to_vec(),
                    primary_hash: data.is_none().then_some(hash),
                    first_differing_byte: first,
                    detail: format!(
                        "output to fd {fd} differs: the primary wrote {asked} bytes, the secondary would write {}",
                        ours.len()
                    ),
                    ..at_call(call, "output")
                },
            );
            return None;
        }
        self.keep_output(fd, ours_sent);
        let signal = deliverable(signal);
        if signal.is_some() {
            self.status.add(Counter::Signals, 1);
        }
        self.status.add(Counter::ComparedOutputs, 1);
        self.status.add(Counter::BytesCompared, n as u64);
        self.agreed(AgreedEvent {
            thread: call.thread(),
            syscall_seq: call.syscall_seq(),
            syscall: name(call.nr()),
            kind: "compared",
            result: ret,
            bytes: n as u64,
        });
        Some(ComparedOutput { ret, signal })
    }

    /// exit_group with `status`: it must be the primary's. false: the thread stops (a
    /// mismatch, reported, or the secondary is stopping).
    pub fn compare_exit(&self, call: &dyn Call, status: i64) -> bool {
        let Some(ThreadRecord::Syscall { ret, .. }) = self.take_for(call) else {
            return false;
        };
        if ret != status {
            self.mismatch(
                call.program(),
                Mismatch {
                    primary: ret.to_string().into_bytes(),
                    secondary: status.to_string().into_bytes(),
                    first_differing_byte: first_difference(
                        ret.to_string().as_bytes(),
                        status.to_string().as_bytes(),
                    ),
                    detail: format!("the primary exited with {ret}, the secondary with {status}"),
                    ..at_call(call, "exit")
                },
            );
            return false;
        }
        self.agreed(AgreedEvent {
            thread: call.thread(),
            syscall_seq: call.syscall_seq(),
            syscall: name(call.nr()),
            kind: "exit",
            result: ret,
            bytes: 0,
        });
        true
    }

    /// Takes the record for `call`, checking that it is one for this syscall and this
    /// replicated event. None: it is not (reported), or the secondary is stopping.
    fn take_for(&self, call: &dyn Call) -> Option<ThreadRecord> {
        let tid = call.thread();
        let seq = call.syscall_seq();
        let (event_p, rec) = self.take(call.program(), tid)?;
        let (nr_p, seq_p) = match &rec {
            ThreadRecord::Syscall { nr, syscall_no, .. }
            | ThreadRecord::Output { nr, syscall_no, .. }
            | ThreadRecord::Intent { nr, syscall_no, .. } => (Some(*nr), *syscall_no),
            _ => (None, 0),
        };
        if event_p != call.event() || nr_p != Some(call.nr() as u32) {
            let (logical_time, turn) = call.position();
            let ours = name(call.nr());
            let theirs = rec.describe();
            self.mismatch(
                call.program(),
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
}

#[cfg(test)]
mod tests;
