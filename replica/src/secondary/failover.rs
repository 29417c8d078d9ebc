//! Failover, the secondary's side (docs/pair.md, Failover): when the primary dies without
//! ending its log, the secondary replays every record the primary logged, then goes live:
//! from then on its program's calls are its own, on the primary's descriptors.
//!
//! The order matters. Nothing the primary did may be done twice, so the secondary goes live
//! only once its threads have taken every record (a thread that needs a record the log does
//! not hold waits for the takeover instead of ending). Then the program's side switches
//! ([`Program::go_live`]: the det runtime decides as a primary, the primary's descriptors
//! replace their placeholders), and only then are the waiting threads let go, each to run
//! its pending call live. An output the primary had announced but not recorded is in doubt:
//! the syscall layer measures its stream and skips what the primary already did
//! ([`Secondary::take_in_doubt`]).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Secondary;
use crate::call::InDoubt;
use crate::findings::{Mismatch, Takeover};
use crate::program::Program;
use crate::sync::lock;
use crate::wire::ThreadRecord;

/// How often the drain looks at the threads' progress: it bounds the takeover time.
const DRAIN_POLL: Duration = Duration::from_millis(1);

/// With every record taken but turns of the primary's log still held: how long the threads
/// may make no progress before the secondary goes live anyway (the turns belong to calls
/// whose records the primary never sent).
const TURNS_SETTLE: Duration = Duration::from_millis(20);

/// With records still queued: how long the threads may make no progress (no syscall, no
/// turn) before the secondary gives up the takeover (its program cannot get to where the
/// primary was). Long, because a thread that computes without a det point holds the others
/// back in the det mode as long as it computes, on both replicas alike.
const DRAIN_STALL: Duration = Duration::from_secs(20);

impl Secondary {
    /// Whether the secondary runs live (it took over from a dead primary).
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Whether the primary died and the secondary is replaying the rest of its log.
    pub(crate) fn draining(&self) -> bool {
        self.going_live.load(Ordering::Acquire) && !self.is_live()
    }

    /// Blocks until the secondary is live, stopping or its program ending.
    pub(crate) fn wait_until_live(&self, program: Option<&dyn Program>) {
        while self.draining()
            && !self.stop.load(Ordering::Relaxed)
            && !program.is_some_and(|p| p.exiting())
        {
            std::thread::sleep(DRAIN_POLL);
        }
    }

    /// Live: the output `tid` was comparing when the primary died, if the primary had
    /// announced it (it may have been done in part or in full). Taken once.
    ///
    /// Also an intent still queued for the thread, whose output the schedule held back
    /// until the takeover: the thread's next Compared call, live, is that output (`nr`).
    pub fn take_in_doubt(&self, tid: u32, nr: u64) -> Option<InDoubt> {
        if !self.is_live() {
            return None;
        }
        if let Some(d) = lock(&self.in_doubt).remove(&tid) {
            return Some(d);
        }
        let mut q = lock(&self.queues);
        let queue = q.by_tid.get_mut(&tid)?;
        match queue.front() {
            Some((
                _,
                ThreadRecord::Intent {
                    nr: intent_nr,
                    fd,
                    stream,
                    position,
                    size,
                    ..
                },
                _,
            )) if u64::from(*intent_nr) == nr => {
                let d = InDoubt {
                    fd: *fd,
                    stream: *stream,
                    position: *position,
                    size: *size,
                };
                queue.pop_front();
                Some(d)
            }
            _ => None,
        }
    }

    /// Live: an output in doubt was resolved; `skipped` of its bytes had been done by the
    /// primary.
    pub fn resolved_in_doubt(&self, skipped: u64) {
        let mut f = lock(&self.findings);
        if let Some(t) = f.takeover.as_mut() {
            t.in_doubt_outputs += 1;
            t.output_bytes_skipped += skipped;
        }
    }

    /// The primary died (`noticed` says how the channel told): replay what it logged, then
    /// go live. Returns when live, or when the takeover failed (reported as a mismatch) or
    /// the program ended meanwhile.
    pub(super) fn fail_over(&self, program: &dyn Program, noticed: String) {
        let noticed_at = Instant::now();
        let records_left: u64 = {
            let q = lock(&self.queues);
            q.by_tid.values().map(|d| d.len() as u64).sum()
        };
        self.going_live.store(true, Ordering::Release);
        eprintln!(
            "ditto: secondary: {noticed}; replaying the {records_left} records it logged, then taking over"
        );
        let progress = || (program.syscalls(), program.turns_taken());
        let mut last = progress();
        let mut still_since = Instant::now();
        loop {
            std::thread::sleep(DRAIN_POLL);
            if program.exiting() || self.stop.load(Ordering::Relaxed) {
                return;
            }
            let (empty, only_intents) = {
                let q = lock(&self.queues);
                for cv in q.cvs.values() {
                    cv.notify_all();
                }
                // A thread whose one remaining record is the intent of an output may be
                // held back by the schedule before it gets to that output (a turn the
                // primary died before taking, the det gate): only going live lets it on.
                let only_intents = q.by_tid.values().all(|d| {
                    d.is_empty()
                        || (d.len() == 1
                            && matches!(d.front(), Some((_, ThreadRecord::Intent { .. }, _))))
                });
                (q.all_empty(), only_intents)
            };
            let now = progress();
            if now != last {
                last = now;
                still_since = Instant::now();
            }
            let turns_left = program.turns_held().unwrap_or(0);
            let settled = still_since.elapsed() >= TURNS_SETTLE;
            if (empty && (turns_left == 0 || settled)) || (only_intents && settled) {
                break;
            }
            if !empty && still_since.elapsed() >= DRAIN_STALL {
                let next = lock(&self.queues).heads(8);
                // What each thread waits for (the det runtime's view), so that a drain
                // that cannot finish says why.
                let waits = program
                    .describe_schedule()
                    .map(|s| format!("; {}", s.trim_end().replace('\n', "; ")))
                    .unwrap_or_default();
                self.mismatch(
                    program,
                    Mismatch {
                        kind: "missing_event",
                        detail: format!(
                            "the primary died and the secondary could not replay its log to the end, so it cannot take over safely (no progress for {} s; next: {next}{waits})",
                            DRAIN_STALL.as_secs()
                        ),
                        ..Default::default()
                    },
                );
                return;
            }
        }
        let went = program.go_live();
        let takeover_ms = noticed_at.elapsed().as_secs_f64() * 1e3;
        // Kept for the report and published on the status page (the supervisor's status
        // line, stall watch and `ditto_failovers_total`) before any thread runs live, so
        // that the outputs in doubt they resolve are counted in it.
        self.went_live(Takeover {
            noticed: noticed.clone(),
            takeover_ms,
            records_drained: records_left,
            descriptors: went.descriptors,
            connections: went.connections,
            in_doubt_outputs: 0,
            output_bytes_skipped: 0,
        });
        self.live.store(true, Ordering::Release);
        {
            let q = lock(&self.queues);
            for cv in q.cvs.values() {
                cv.notify_all();
            }
        }
        eprintln!(
            "ditto: secondary: live {takeover_ms:.1} ms after the primary's death was noticed ({} descriptors, {} connections taken over)",
            went.descriptors, went.connections
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::call::test_call::TestCall;
    use crate::status::StatusPage;
    use crate::wire::{Stream, ThreadRecord};

    const WRITE: u64 = libc::SYS_write as u64;

    /// The primary announced an output and died before its record: the thread that
    /// compares it waits through the drain, the secondary goes live once every record is
    /// taken, and the thread then finds its output in doubt, with the primary's intent.
    #[test]
    fn an_announced_output_is_in_doubt_after_the_takeover() {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Arc::new(StatusPage::create().expect("status page"));
        let mut s = Secondary::unconnected(dir.path().into(), status);
        s.failover = true;
        let s = Arc::new(s);
        let intent = ThreadRecord::Intent {
            nr: WRITE as u32,
            syscall_no: 7,
            fd: 5,
            stream: Stream::Tcp,
            position: 1000,
            size: 0,
        };
        s.queue(0, 1, intent);
        let call = Arc::new(TestCall::new(0, WRITE, 7, 1));
        let takeover = {
            let (s, call) = (s.clone(), call.clone());
            std::thread::spawn(move || s.fail_over(&call.program, "the primary is gone".into()))
        };
        while !s.draining() {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            s.compare_output(&*call, b"hello").is_none(),
            "no output record: nothing to compare"
        );
        takeover.join().unwrap();
        assert!(s.is_live());
        assert!(call.program.went_live.load(Ordering::Relaxed));
        assert_eq!(
            s.take_in_doubt(0, WRITE),
            Some(InDoubt {
                fd: 5,
                stream: Stream::Tcp,
                position: 1000,
                size: 0
            })
        );
        assert_eq!(s.take_in_doubt(0, WRITE), None, "taken once");
        s.resolved_in_doubt(3);
        let t = s.findings().takeover.expect("takeover in the findings");
        assert_eq!(t.records_drained, 1);
        assert_eq!((t.descriptors, t.connections), (2, 1));
        assert_eq!((t.in_doubt_outputs, t.output_bytes_skipped), (1, 3));
        assert!(s.findings().mismatch.is_none());
    }

    /// Without failover nothing is in doubt and a thread that finds no record stops.
    #[test]
    fn nothing_is_in_doubt_before_the_takeover() {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Arc::new(StatusPage::create().expect("status page"));
        let s = Secondary::unconnected(dir.path().into(), status);
        assert!(!s.is_live() && !s.draining());
        assert_eq!(s.take_in_doubt(0, 1), None);
    }
}
