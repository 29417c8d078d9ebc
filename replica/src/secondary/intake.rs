//! The secondary's intake of the primary's records: the per-thread queues, the bounds on what
//! a peer can make the secondary hold, and the reader's checks between records.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar};

use crate::wire::{self, EndInfo, ThreadRecord};

/// The records the reader has queued for the program's threads, one queue per
/// deterministic thread, and how the channel ended.
#[derive(Default)]
pub struct Queues {
    /// Per deterministic thread: (replicated-event seq, record, payload bytes).
    pub by_tid: HashMap<u32, VecDeque<(u64, ThreadRecord, u64)>>,
    /// Signalled when a thread's queue gains a record (and by the drain, to wake waiters).
    pub cvs: HashMap<u32, Arc<Condvar>>,
    /// The primary's End arrived.
    pub end: Option<EndInfo>,
    /// The channel ended without End (primary gone) or failed.
    pub closed: Option<String>,
    /// What the queued records cost, counted against [`MAX_BUFFERED`].
    pub buffered_bytes: u64,
}

impl Queues {
    /// The records at the heads of the first `n` non-empty queues, for a report: "thread
    /// T: what (+M more), ...".
    pub fn heads(&self, n: usize) -> String {
        self.by_tid
            .iter()
            .filter_map(|(t, d)| {
                d.front().map(|(_, r, _)| match d.len() - 1 {
                    0 => format!("thread {t}: {}", r.describe()),
                    more => format!("thread {t}: {} (+{more} more)", r.describe()),
                })
            })
            .take(n)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The condition variable of `tid`'s queue.
    pub fn cv(&mut self, tid: u32) -> Arc<Condvar> {
        self.cvs.entry(tid).or_default().clone()
    }

    /// No thread has a record waiting.
    pub fn all_empty(&self) -> bool {
        self.by_tid.values().all(|q| q.is_empty())
    }
}

/// Bytes of records the secondary holds (payloads plus [`RECORD_OVERHEAD`] each, and pieces
/// of fragmented records) before it gives up: its threads lag that far behind.
pub const MAX_BUFFERED: u64 = 2 << 30;

/// What one queued record costs beyond its payload (the decoded record, the queue slot),
/// counted against [`MAX_BUFFERED`] so that a flood of empty records is bounded too.
pub const RECORD_OVERHEAD: u64 = 128;

/// Turns of the primary's log the secondary holds before it gives up (about 64 bytes each).
pub const MAX_TURNS_HELD: usize = 8 << 20;

/// The channel error of a secondary whose records exceed [`MAX_BUFFERED`].
pub fn behind_by_bytes() -> String {
    format!(
        "the secondary fell more than {} MiB of records behind",
        MAX_BUFFERED >> 20
    )
}

/// The reader's state between records.
pub struct Intake {
    /// Deterministic thread ids below this were announced by the primary (the main thread,
    /// 0, needs no announcement).
    pub threads: u32,
    /// Per-thread records arriving in fragments.
    pub fragments: wire::Reassembler,
}

impl Default for Intake {
    fn default() -> Self {
        Intake {
            threads: 1,
            fragments: wire::Reassembler::default(),
        }
    }
}

impl Intake {
    /// A `ThreadStart`: ids come in creation order, one at a time.
    pub fn announce(&mut self, tid: u32) -> Result<(), String> {
        if tid != self.threads {
            return Err(format!(
                "the primary announced thread {tid} where thread {} comes next",
                self.threads
            ));
        }
        self.threads = self
            .threads
            .checked_add(1)
            .ok_or("the primary announced too many threads")?;
        Ok(())
    }

    /// Whether a whole per-thread record may be queued: its thread was announced and none of
    /// its records is half reassembled. u32::MAX is what a thread without a deterministic id
    /// records under (a thread the det runtime does not know): one more queue, bounded like the others.
    pub fn admit(&self, tid: u32, seq: u64, rec: &ThreadRecord) -> Result<(), String> {
        if tid >= self.threads && tid != u32::MAX {
            return Err(format!(
                "a {} record of thread {tid}, which the primary never created ({} so far)",
                rec.describe(),
                self.threads
            ));
        }
        self.fragments
            .check_whole(tid, seq)
            .map_err(|e| e.to_string())
    }
}

/// What the reader does after a record.
pub enum Intook {
    /// Read on.
    More,
    /// The primary's End arrived: the log is complete.
    End,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_threads_never_announced_are_refused() {
        let mut intake = Intake::default();
        let rec = ThreadRecord::Reentry { at: 1 };
        assert!(
            intake.admit(0, 1, &rec).is_ok(),
            "the main thread needs no announcement"
        );
        let e = intake.admit(1, 1, &rec).unwrap_err();
        assert!(e.contains("never created"), "{e}");
        assert!(intake.admit(70_000, 1, &rec).is_err());
        intake.announce(1).unwrap();
        assert!(intake.admit(1, 1, &rec).is_ok());
        // Out of order or repeated announcements are channel errors.
        assert!(intake.announce(5).is_err());
        assert!(intake.announce(1).is_err());
        intake.announce(2).unwrap();
        assert!(intake.admit(2, 1, &rec).is_ok());
        assert!(intake.admit(3, 1, &rec).is_err());
    }
}
