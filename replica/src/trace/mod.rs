//! `ditto pair --trace`: each replica's recent history, per thread, for finding why two
//! replicas parted.
//!
//! While a pair runs with `--trace`, each replica's VMM keeps, for every thread, a ring of
//! its last [`Tracer::capacity`] events (each syscall with its replication treatment and
//! result, each signal delivered), and writes them when the program ends to
//! `OUT/trace-primary.json` and `OUT/trace-secondary.json` ([`trace_path`]). `ditto compare
//! --trace OUT` lines the two up ([`align`]); `ditto compare --html` draws them.
//!
//! # The trace file (schema [`TRACE_SCHEMA`])
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `schema` | u32 | [`TRACE_SCHEMA`]; a reader refuses other versions |
//! | `role` | string | `primary` or `secondary` |
//! | `capacity` | u64 | events kept per thread (older ones are dropped) |
//! | `threads[].thread` | i64 | the thread id the program sees (equal in both replicas) |
//! | `threads[].dropped` | u64 | events of this thread that fell out of the ring |
//! | `threads[].events[]` | [`TraceEvent`] | oldest first |
//!
//! An event: `seq` (the thread's syscall count at the event: 1 for its first syscall),
//! `kind` (`syscall` or `signal`), `syscall` (name), `treatment` (`local`, `recorded`,
//! `compared` or `exit`), `event` (for recorded, compared and exit calls: the thread's
//! replicated-event number, the key both replicas' records are matched by), `result` (the
//! value returned to the program; for a signal, the signal number), `turn` (turns the
//! replica's det runtime had granted when the call returned: a position in the global
//! order) and `logical_time` (the thread's det clock), both null without a det runtime.
//!
//! The rings are per thread and behind one mutex per replica, taken once per traced
//! syscall (a few tens of nanoseconds against a syscall's tens of microseconds); without
//! `--trace` nothing is kept.

pub mod align;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::role::Role;
use crate::sync::lock;

/// The trace file's schema version.
pub const TRACE_SCHEMA: u32 = 1;

/// Events kept per thread when `--trace-events` is not given.
pub const DEFAULT_CAPACITY: usize = 4096;

/// The trace file of `role` in a pair's run directory.
pub fn trace_path(out: &Path, role: Role) -> PathBuf {
    out.join(match role {
        Role::Primary => "trace-primary.json",
        Role::Secondary => "trace-secondary.json",
    })
}

/// A trace file could not be read or written.
#[derive(Debug, Error)]
pub enum TraceError {
    /// The file could not be read or written.
    #[error("trace {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a trace.
    #[error("trace {path}: not a ditto trace: {reason}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong, from the JSON parser.
        reason: String,
    },
    /// Another schema version.
    #[error("trace {path}: schema {found}, this ditto reads {TRACE_SCHEMA}")]
    Schema {
        /// The file.
        path: String,
        /// The version it has.
        found: u32,
    },
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceKind {
    /// A syscall returned to the program.
    Syscall,
    /// A signal handler was entered.
    Signal,
}

/// One event of a thread (see the module's table).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// The thread's syscall count at the event.
    pub seq: u64,
    /// Syscall or signal.
    pub kind: TraceKind,
    /// The syscall's name (for a signal: the thread's last traced syscall, which it was
    /// delivered after; empty if none).
    pub syscall: String,
    /// `local`, `recorded`, `compared` or `exit` (empty for a signal).
    pub treatment: String,
    /// The replicated-event number of a recorded, compared or exit call.
    pub event: Option<u64>,
    /// The value returned to the program (a signal: its number).
    pub result: i64,
    /// Turns granted when it returned.
    pub turn: Option<u64>,
    /// The thread's det clock.
    pub logical_time: Option<u64>,
}

/// One thread's kept events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadTrace {
    /// The thread id the program sees.
    pub thread: i64,
    /// Events that fell out of the ring.
    pub dropped: u64,
    /// Oldest first.
    pub events: Vec<TraceEvent>,
}

/// One replica's trace file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    /// [`TRACE_SCHEMA`].
    pub schema: u32,
    /// `primary` or `secondary`.
    pub role: String,
    /// Events kept per thread.
    pub capacity: u64,
    /// By thread id.
    pub threads: Vec<ThreadTrace>,
}

impl Trace {
    /// Reads a trace file; a missing, malformed or other-version file is an error naming it.
    pub fn load(path: &Path) -> Result<Trace, TraceError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io {
            path: name.clone(),
            source,
        })?;
        // The schema first, so that another version says so rather than "missing field".
        #[derive(Deserialize)]
        struct Version {
            schema: u32,
        }
        let v: Version = serde_json::from_str(&text).map_err(|e| TraceError::Malformed {
            path: name.clone(),
            reason: e.to_string(),
        })?;
        if v.schema != TRACE_SCHEMA {
            return Err(TraceError::Schema {
                path: name,
                found: v.schema,
            });
        }
        serde_json::from_str(&text).map_err(|e| TraceError::Malformed {
            path: name,
            reason: e.to_string(),
        })
    }

    /// Writes it (to a temporary name, then renamed: a reader never sees half a file).
    pub fn save(&self, path: &Path) -> Result<(), TraceError> {
        let io = |source| TraceError::Io {
            path: path.display().to_string(),
            source,
        };
        let text = serde_json::to_string(self).map_err(|e| io(std::io::Error::other(e)))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The thread `tid`'s events, if it has any.
    pub fn thread(&self, tid: i64) -> Option<&ThreadTrace> {
        self.threads.iter().find(|t| t.thread == tid)
    }
}

#[derive(Debug, Default)]
struct Ring {
    events: VecDeque<TraceEvent>,
    dropped: u64,
}

/// The rings of one replica's threads, filled while it runs.
#[derive(Debug)]
pub struct Tracer {
    capacity: usize,
    threads: Mutex<BTreeMap<i64, Ring>>,
}

impl Tracer {
    /// Keeps the last `capacity` events of each thread (at least 1).
    pub fn new(capacity: usize) -> Self {
        Tracer {
            capacity: capacity.max(1),
            threads: Mutex::new(BTreeMap::new()),
        }
    }

    /// Events kept per thread.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends `event` to thread `tid`'s ring, dropping its oldest when full.
    pub fn push(&self, tid: i64, event: TraceEvent) {
        let mut threads = lock(&self.threads);
        let ring = threads.entry(tid).or_default();
        if ring.events.len() == self.capacity {
            ring.events.pop_front();
            ring.dropped += 1;
        }
        ring.events.push_back(event);
    }

    /// A signal handler of thread `tid` is entered: recorded after the thread's last
    /// event, with that event's seq and syscall name (replicated signals arrive only right
    /// after a syscall).
    pub fn push_signal(&self, tid: i64, signal: i32, turn: Option<u64>, logical_time: Option<u64>) {
        let (seq, syscall) = lock(&self.threads)
            .get(&tid)
            .and_then(|r| r.events.back())
            .map(|e| (e.seq, e.syscall.clone()))
            .unwrap_or_default();
        self.push(
            tid,
            TraceEvent {
                seq,
                kind: TraceKind::Signal,
                syscall,
                treatment: String::new(),
                event: None,
                result: signal as i64,
                turn,
                logical_time,
            },
        );
    }

    /// What the rings hold now, as `role`'s trace.
    pub fn snapshot(&self, role: Role) -> Trace {
        let threads = lock(&self.threads);
        Trace {
            schema: TRACE_SCHEMA,
            role: match role {
                Role::Primary => "primary",
                Role::Secondary => "secondary",
            }
            .into(),
            capacity: self.capacity as u64,
            threads: threads
                .iter()
                .map(|(&thread, r)| ThreadTrace {
                    thread,
                    dropped: r.dropped,
                    events: r.events.iter().cloned().collect(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn call(seq: u64, name: &str, treatment: &str, event: Option<u64>) -> TraceEvent {
        TraceEvent {
            seq,
            kind: TraceKind::Syscall,
            syscall: name.into(),
            treatment: treatment.into(),
            event,
            result: 0,
            turn: Some(seq),
            logical_time: None,
        }
    }

    #[test]
    fn rings_keep_the_last_events_of_each_thread() {
        let t = Tracer::new(3);
        for seq in 1..=5 {
            t.push(1000, call(seq, "read", "recorded", Some(seq)));
        }
        t.push(1001, call(1, "write", "compared", Some(1)));
        let s = t.snapshot(Role::Secondary);
        assert_eq!(s.role, "secondary");
        let main = s.thread(1000).unwrap();
        assert_eq!(main.dropped, 2);
        assert_eq!(
            main.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert_eq!(s.thread(1001).unwrap().events.len(), 1);
        assert!(s.thread(7).is_none());
    }

    #[test]
    fn files_round_trip_and_bad_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracer::new(8);
        t.push(1000, call(1, "getrandom", "recorded", Some(1)));
        let trace = t.snapshot(Role::Primary);
        let path = trace_path(dir.path(), Role::Primary);
        trace.save(&path).unwrap();
        assert_eq!(Trace::load(&path).unwrap(), trace);

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{\"schema\": 1, \"role\": 3}").unwrap();
        let e = Trace::load(&bad).unwrap_err().to_string();
        assert!(
            e.contains("bad.json") && e.contains("not a ditto trace"),
            "{e}"
        );
        std::fs::write(&bad, "{\"schema\": 99}").unwrap();
        let e = Trace::load(&bad).unwrap_err().to_string();
        assert!(e.contains("schema 99"), "{e}");
        let e = Trace::load(&dir.path().join("none.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.json"), "{e}");
    }
}
