//! The report of one `ditto pair` run (DESIGN.md §6 "Divergence"): JSON for tools, and its
//! readable forms.
//!
//! `ditto pair --report FILE` fills a [`Report`] and writes it with [`Report::save`];
//! `ditto compare` reads it back with [`Report::load`] and prints [`Report::summary`], or lines
//! up two runs with [`compare_reports`].
//!
//! # Schema, version 1 ([`REPORT_SCHEMA`])
//!
//! The file holds one JSON object, pretty-printed, in UTF-8, with a final newline.
//! - Field names are snake_case. Enums are lowercase snake_case strings.
//! - Integers are JSON numbers. The `u64` fields can exceed 2^53, so read them as 64-bit
//!   integers, not as doubles.
//! - Optional fields are always written: `null` when unknown or not applicable.
//!
//! Compatibility:
//! - Readers ignore fields they do not know. Adding a field therefore keeps the schema number.
//! - Removing or renaming a field, or changing what one means, bumps [`REPORT_SCHEMA`].
//! - [`Report::load`] refuses any schema number but its own.
//!
//! ## `Report`: the top-level object
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `schema` | u32 | [`REPORT_SCHEMA`], that is `1` |
//! | `mode` | string | `"det"` or `"follow"` (`ditto pair --mode`) |
//! | `program` | array of string | the program's argv as run (arguments that are not UTF-8 are converted lossily) |
//! | `outcome` | [`Outcome`] | how the run ended |
//! | `primary`, `secondary` | [`ReplicaSummary`] | each replica's cores and end |
//! | `first_divergence` | [`Divergence`] or null | the first mismatch; set when `outcome` is `diverged` |
//! | `last_common` | array of [`Event`] | the last events both replicas agreed on before the end or the divergence, oldest first; at most [`LAST_COMMON_MAX`] (16) |
//! | `counters` | [`Counters`] | what crossed the channel and what was compared |
//! | `channel_error` | string or null | the channel's error, one line; set when `outcome` is `channel_error` |
//! | `wall_seconds` | f64 | wall-clock time of the pair run (written as 0 if not finite) |
//!
//! ## `outcome`
//!
//! | value | meaning |
//! |---|---|
//! | `identical` | both replicas ran to the end and agreed on every compared event |
//! | `diverged` | the replicas disagreed; `first_divergence` says where |
//! | `replica_failed` | a replica died, its VMM failed, or the primary stopped replicating (`primary.error`) before any divergence; the replicas' `exit` and `error` say how |
//! | `channel_error` | the channel between the replicas failed (corrupt record, peer gone); `channel_error` says how |
//!
//! ## `ReplicaSummary`: `primary` and `secondary`
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `cores` | array of usize | host cores its vCPU threads were pinned to; empty when not pinned |
//! | `exit_status` | i32 or null | ditto's exit status for it: the program's own status, or 128+N when killed by signal N; null when it did not finish |
//! | `exit` | string or null | how it ended, in words: `"exited 0"`, `"killed by SIGKILL"` |
//! | `error` | string or null | a failure of the replica's VMM, one line |
//!
//! ## `Divergence`: `first_divergence`
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `kind` | [`DivergenceKind`] | what disagreed |
//! | `thread` | u32 | deterministic thread id (0 is the main thread) |
//! | `syscall_seq` | u64 | the thread's own syscall number at that point (1 is its first syscall) |
//! | `syscall` | string | the secondary's syscall at that point (`""` when it made none) |
//! | `primary_syscall` | string or null | the primary's syscall at that point, when known |
//! | `fd` | i64 or null | the descriptor involved |
//! | `logical_time` | u64 or null | the thread's logical time (det) |
//! | `turn` | u64 or null | global turns taken so far |
//! | `primary`, `secondary` | [`Value`] | what each replica had there |
//! | `first_differing_byte` | u64 or null | see [`first_difference`]; null when only hashes are known or the values are numbers |
//! | `detail` | string | one line, for people |
//!
//! `kind`:
//!
//! | value | meaning |
//! |---|---|
//! | `output` | an output leaving the program (stdout, stderr, a socket write) differs |
//! | `syscall` | the secondary made a different syscall (number or arguments) from the one the primary logged there |
//! | `exit` | the replicas ended differently (status, signal, or one ended where the other went on) |
//! | `missing_event` | the primary logged an event that the secondary never reached |
//! | `extra_event` | the secondary made a logged or compared call where the primary's log has none |
//! | `signal` | a signal arrived at a different point, or a different signal |
//! | `schedule` | `follow`: the secondary could not take the turn, or apply the re-entry, that the primary logged |
//!
//! ## `Value`: `primary` and `secondary` of a divergence
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `len` | u64 | length of the whole value in bytes (8 for a number) |
//! | `hash` | string | [`hash64`] of the whole value: XXH3-64 with seed 0, 16 lowercase hex digits (what `xxhsum -H3` prints); a number hashes as its 8 little-endian bytes |
//! | `excerpt_hex` | string | up to [`EXCERPT_LEN`] (64) bytes of the value from `excerpt_offset`, as lowercase hex, two digits a byte, no separators; empty when only the hash is known |
//! | `excerpt_text` | string | the same bytes as text: valid UTF-8 as is; `\\`, `\n`, `\r`, `\t`, `\0`; other bytes that are control characters or not UTF-8 as `\xNN`, other invisible characters as `\u{N}`. For a number: its decimal value |
//! | `excerpt_offset` | u64 | offset in the value of the excerpt's first byte: [`EXCERPT_BEFORE`] (16) bytes before the first differing byte, or 0 |
//! | `number` | i64 or null | the value, when it is a syscall result |
//!
//! ## `Event`: the entries of `last_common`
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `thread` | u32 | deterministic thread id |
//! | `syscall_seq` | u64 | the thread's syscall number |
//! | `syscall` | string | the syscall's name |
//! | `kind` | [`EventKind`] | `recorded`, `compared`, `signal`, `exit` or `turn` |
//! | `result` | i64 | the syscall's result; for `signal` the signal number, for `exit` the status, for `turn` the global turn number |
//! | `bytes` | u64 | bytes recorded or compared (0 for none) |
//!
//! `kind`: `recorded` (the secondary returned the primary's logged result), `compared` (an output
//! that both produced alike), `signal` (a signal delivered at the same point), `exit` (a thread
//! ended) and `turn` (a det section taken in the order that the primary logged).
//!
//! ## `Counters`
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `records` | u64 | records the primary put on the channel |
//! | `record_bytes` | u64 | their encoded size, headers included |
//! | `recorded_syscalls` | u64 | recorded syscalls whose results the secondary took from the log |
//! | `compared_outputs` | u64 | outputs compared |
//! | `bytes_compared` | u64 | bytes of those outputs |
//! | `turns` | u64 | turns replicated (`follow`) |
//! | `reentries` | u64 | re-entries into the token competition replicated |
//! | `signals` | u64 | signals replicated |
//! | `max_lag_records` | u64 | the most records the secondary was behind |
//! | `max_lag_bytes` | u64 | the most bytes the secondary was behind |

use serde::{Deserialize, Serialize, Serializer};
use std::fmt::{self, Write as _};
use std::fs;
use std::io::{self, Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;

/// The schema version this code writes and reads (the `schema` field).
pub const REPORT_SCHEMA: u32 = 1;
/// The most events `last_common` holds.
pub const LAST_COMMON_MAX: usize = 16;
/// The most bytes of a value that an excerpt holds.
pub const EXCERPT_LEN: u64 = 64;
/// How many bytes before the first differing byte an excerpt starts.
pub const EXCERPT_BEFORE: u64 = 16;
/// The largest file [`Report::load`] reads: reports are small, and this keeps a wrong path
/// (a device, a huge log) from being read whole.
pub const MAX_REPORT_FILE: u64 = 64 << 20;

/// The report of one `ditto pair` run. The module documentation defines each field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`REPORT_SCHEMA`].
    pub schema: u32,
    /// `"det"` or `"follow"`.
    pub mode: String,
    /// The program's argv as run.
    pub program: Vec<String>,
    /// How the run ended.
    pub outcome: Outcome,
    /// The primary replica.
    pub primary: ReplicaSummary,
    /// The secondary replica.
    pub secondary: ReplicaSummary,
    /// The first mismatch, when the replicas diverged.
    pub first_divergence: Option<Divergence>,
    /// The last events (at most [`LAST_COMMON_MAX`]) that both replicas agreed on, oldest first.
    pub last_common: Vec<Event>,
    /// What crossed the channel and what was compared.
    pub counters: Counters,
    /// The channel's error, one line, when the outcome is [`Outcome::ChannelError`].
    pub channel_error: Option<String>,
    /// Wall-clock time of the run in seconds.
    #[serde(serialize_with = "finite_or_zero")]
    pub wall_seconds: f64,
}

/// How a pair run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Both replicas ran to the end and agreed on every compared event.
    Identical,
    /// The replicas disagreed; [`Report::first_divergence`] says where.
    Diverged,
    /// A replica died or its VMM failed before any divergence.
    ReplicaFailed,
    /// The channel between the replicas failed.
    ChannelError,
}

/// One replica's placement and end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSummary {
    /// Host cores its vCPU threads were pinned to; empty when not pinned.
    pub cores: Vec<usize>,
    /// ditto's exit status for it (the program's status, or 128+N for signal N); `None` when
    /// it did not finish.
    pub exit_status: Option<i32>,
    /// How it ended, in words: `"exited 0"`, `"killed by SIGKILL"`.
    pub exit: Option<String>,
    /// A failure of the replica's VMM, one line.
    pub error: Option<String>,
}

/// What disagreed at a divergence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DivergenceKind {
    /// An output leaving the program differs.
    Output,
    /// The secondary made a different syscall (number or arguments) from the primary's.
    Syscall,
    /// The replicas ended differently.
    Exit,
    /// The primary logged an event that the secondary never reached.
    MissingEvent,
    /// The secondary made a logged or compared call where the primary's log has none.
    ExtraEvent,
    /// A signal arrived at a different point, or a different signal.
    Signal,
    /// `follow`: the secondary could not take the turn or re-entry that the primary logged.
    Schedule,
}

/// The first mismatch between the replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergence {
    /// What disagreed.
    pub kind: DivergenceKind,
    /// Deterministic thread id (0 = main).
    pub thread: u32,
    /// The thread's own syscall number at that point (1 = its first syscall).
    pub syscall_seq: u64,
    /// The secondary's syscall at that point (empty when it made none).
    pub syscall: String,
    /// The primary's syscall at that point, when known.
    pub primary_syscall: Option<String>,
    /// The descriptor involved.
    pub fd: Option<i64>,
    /// The thread's logical time.
    pub logical_time: Option<u64>,
    /// Global turns taken so far.
    pub turn: Option<u64>,
    /// What the primary had there.
    pub primary: Value,
    /// What the secondary had there.
    pub secondary: Value,
    /// The first differing byte ([`first_difference`]), when both values' bytes were known.
    pub first_differing_byte: Option<u64>,
    /// One line, for people.
    pub detail: String,
}

/// A value at a divergence (bytes or a syscall result): its length, hash and an excerpt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    /// Length of the whole value in bytes (8 for a number).
    pub len: u64,
    /// [`hash64`] of the whole value as 16 lowercase hex digits.
    pub hash: String,
    /// Up to [`EXCERPT_LEN`] bytes from `excerpt_offset` as lowercase hex; empty when only the
    /// hash is known.
    pub excerpt_hex: String,
    /// The excerpt as text with control characters escaped; a number's decimal value.
    pub excerpt_text: String,
    /// Offset in the value of the excerpt's first byte.
    pub excerpt_offset: u64,
    /// The value, when it is a syscall result.
    #[serde(default)]
    pub number: Option<i64>,
}

/// One event that both replicas agreed on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Deterministic thread id.
    pub thread: u32,
    /// The thread's syscall number.
    pub syscall_seq: u64,
    /// The syscall's name.
    pub syscall: String,
    /// What kind of event.
    pub kind: EventKind,
    /// The syscall's result; the signal number for `Signal`, the status for `Exit`, the global
    /// turn number for `Turn`.
    pub result: i64,
    /// Bytes recorded or compared.
    pub bytes: u64,
}

/// The kind of an [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The secondary returned the primary's logged result.
    Recorded,
    /// An output that both replicas produced alike.
    Compared,
    /// A signal delivered at the same point.
    Signal,
    /// A thread ended.
    Exit,
    /// A det section taken in the order that the primary logged.
    Turn,
}

/// What crossed the channel and what was compared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Records the primary put on the channel.
    pub records: u64,
    /// Their encoded size, headers included.
    pub record_bytes: u64,
    /// Recorded syscalls whose results the secondary took from the log.
    pub recorded_syscalls: u64,
    /// Outputs compared.
    pub compared_outputs: u64,
    /// Bytes of those outputs.
    pub bytes_compared: u64,
    /// Turns replicated (`follow`).
    pub turns: u64,
    /// Re-entries into the token competition replicated.
    pub reentries: u64,
    /// Signals replicated.
    pub signals: u64,
    /// The most records the secondary was behind.
    pub max_lag_records: u64,
    /// The most bytes the secondary was behind.
    pub max_lag_bytes: u64,
}

/// Errors of reading and writing reports; each displays as one line naming the file.
#[derive(Debug, Error)]
pub enum ReportError {
    /// The file could not be read.
    #[error("cannot read report {}: {source}", path.display())]
    Io {
        /// The report's path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is not valid JSON, or not a valid report.
    #[error("cannot read report {}: {source}", path.display())]
    Parse {
        /// The report's path.
        path: PathBuf,
        /// Why, with the line and column.
        source: serde_json::Error,
    },
    /// The file holds another schema version (or none: not a report).
    #[error("{}", schema_message(path, *found))]
    Schema {
        /// The report's path.
        path: PathBuf,
        /// The `schema` number found, if any.
        found: Option<u64>,
    },
    /// The report could not be written.
    #[error("cannot write report {}: {source}", path.display())]
    Write {
        /// The report's path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn schema_message(path: &Path, found: Option<u64>) -> String {
    match found {
        Some(n) => format!(
            "cannot read report {}: schema {n}, but this ditto reads schema {REPORT_SCHEMA}",
            path.display()
        ),
        None => format!(
            "cannot read report {}: no schema number (not a ditto report?)",
            path.display()
        ),
    }
}

fn finite_or_zero<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(if v.is_finite() { *v } else { 0.0 })
}

/// The index of the first byte where `a` and `b` differ; the shorter length when one is a
/// proper prefix of the other; `None` when they are equal.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<u64> {
    const CHUNK: usize = 64;
    let n = a.len().min(b.len());
    let mut i = 0;
    // Whole chunks compare with memcmp; only a differing chunk is scanned byte by byte.
    while i + CHUNK <= n && a[i..i + CHUNK] == b[i..i + CHUNK] {
        i += CHUNK;
    }
    while i < n {
        if a[i] != b[i] {
            return Some(i as u64);
        }
        i += 1;
    }
    (a.len() != b.len()).then_some(n as u64)
}

/// The hash of a report [`Value`]: XXH3-64 with seed 0 (the value `xxhsum -H3` prints).
/// Outputs that cross the channel as hashes should use it too, so that the hash the primary
/// sent can go into a report as it is.
pub fn hash64(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// The name of signal `sig` (`"SIGKILL"`), or `"signal N"` for one without a name here.
pub fn signal_name(sig: i32) -> String {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match usize::try_from(sig) {
        Ok(i) if (1..NAMES.len()).contains(&i) => NAMES[i].to_string(),
        _ => format!("signal {sig}"),
    }
}

impl Value {
    /// Describes `bytes`: length, [`hash64`], and an excerpt of up to [`EXCERPT_LEN`] bytes
    /// that starts [`EXCERPT_BEFORE`] bytes before `around` (usually the first differing
    /// byte), or at 0.
    pub fn of(bytes: &[u8], around: Option<u64>) -> Value {
        let len = bytes.len() as u64;
        let start = around
            .map_or(0, |a| a.saturating_sub(EXCERPT_BEFORE))
            .min(len);
        let end = (start + EXCERPT_LEN).min(len);
        let excerpt = &bytes[start as usize..end as usize];
        Value {
            len,
            hash: format!("{:016x}", hash64(bytes)),
            excerpt_hex: hex(excerpt),
            excerpt_text: escape_text(excerpt),
            excerpt_offset: start,
            number: None,
        }
    }

    /// Describes a syscall result: its 8 little-endian bytes (length and hash), and its
    /// decimal value as the text.
    pub fn of_number(v: i64) -> Value {
        let bytes = v.to_le_bytes();
        Value {
            len: bytes.len() as u64,
            hash: format!("{:016x}", hash64(&bytes)),
            excerpt_hex: hex(&bytes),
            excerpt_text: v.to_string(),
            excerpt_offset: 0,
            number: Some(v),
        }
    }

    /// Describes a value known only by its length and [`hash64`] (an output the primary
    /// sent as a hash): the excerpt is empty.
    pub fn hashed(len: u64, hash: u64) -> Value {
        Value {
            len,
            hash: format!("{hash:016x}"),
            ..Value::default()
        }
    }

    /// The excerpt's bytes, if `excerpt_hex` is valid hex.
    pub fn excerpt(&self) -> Option<Vec<u8>> {
        unhex(&self.excerpt_hex)
    }

    /// One line: `"20 bytes, hash 0123456789abcdef"`, or `"result -11"` for a number.
    fn describe(&self) -> String {
        match self.number {
            Some(n) => format!("result {n}"),
            None => format!("{} bytes, hash {}", thousands(self.len), self.hash),
        }
    }
}

impl ReplicaSummary {
    /// A replica whose program exited with `code`.
    pub fn exited(cores: Vec<usize>, code: i32) -> ReplicaSummary {
        ReplicaSummary {
            cores,
            exit_status: Some(code),
            exit: Some(format!("exited {code}")),
            error: None,
        }
    }

    /// A replica whose program was killed by signal `sig` (exit status 128+`sig`).
    pub fn killed(cores: Vec<usize>, sig: i32) -> ReplicaSummary {
        ReplicaSummary {
            cores,
            exit_status: Some(128 + sig),
            exit: Some(format!("killed by {}", signal_name(sig))),
            error: None,
        }
    }

    /// A replica whose VMM failed with `error` before the program finished.
    pub fn failed(cores: Vec<usize>, error: impl Into<String>) -> ReplicaSummary {
        ReplicaSummary {
            cores,
            exit_status: None,
            exit: None,
            error: Some(error.into()),
        }
    }

    /// How it ended, one line: `"exited 0"`, `"killed by SIGKILL (status 137)"`, with the
    /// error if any.
    fn describe(&self) -> String {
        let mut s = match (&self.exit, self.exit_status) {
            (Some(e), Some(_)) if e.starts_with("exited ") => e.clone(),
            (Some(e), Some(st)) => format!("{e} (status {st})"),
            (Some(e), None) => e.clone(),
            (None, Some(st)) => format!("status {st}"),
            (None, None) => "did not finish".to_string(),
        };
        if let Some(err) = &self.error {
            let _ = write!(s, "; error: {err}");
        }
        s
    }
}

impl Outcome {
    /// The schema's name for it: `"identical"`, `"diverged"`, `"replica_failed"`,
    /// `"channel_error"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Identical => "identical",
            Outcome::Diverged => "diverged",
            Outcome::ReplicaFailed => "replica_failed",
            Outcome::ChannelError => "channel_error",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str().replace('_', " "))
    }
}

impl DivergenceKind {
    /// The schema's name for it: `"output"`, `"missing_event"`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            DivergenceKind::Output => "output",
            DivergenceKind::Syscall => "syscall",
            DivergenceKind::Exit => "exit",
            DivergenceKind::MissingEvent => "missing_event",
            DivergenceKind::ExtraEvent => "extra_event",
            DivergenceKind::Signal => "signal",
            DivergenceKind::Schedule => "schedule",
        }
    }
}

impl fmt::Display for DivergenceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str().replace('_', " "))
    }
}

impl EventKind {
    /// The schema's name for it: `"recorded"`, `"compared"`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Recorded => "recorded",
            EventKind::Compared => "compared",
            EventKind::Signal => "signal",
            EventKind::Exit => "exit",
            EventKind::Turn => "turn",
        }
    }
}

impl Divergence {
    /// Where it happened, one line: `"thread 1, syscall #42 write (fd 1)"`.
    pub fn location(&self) -> String {
        let mut s = format!("thread {}, syscall #{}", self.thread, self.syscall_seq);
        if !self.syscall.is_empty() {
            let _ = write!(s, " {}", self.syscall);
        }
        if let Some(fd) = self.fd {
            let _ = write!(s, " (fd {fd})");
        }
        s
    }

    /// Whether `other` points at the same place: same kind, thread, syscall number and name.
    pub fn same_place(&self, other: &Divergence) -> bool {
        self.kind == other.kind
            && self.thread == other.thread
            && self.syscall_seq == other.syscall_seq
            && self.syscall == other.syscall
    }

    /// `"output at thread 1, syscall #42 write (fd 1), first differing byte 12"`.
    fn headline(&self) -> String {
        let mut s = format!("{} at {}", self.kind, self.location());
        if let Some(b) = self.first_differing_byte {
            let _ = write!(s, ", first differing byte {}", thousands(b));
        }
        s
    }
}

impl Report {
    /// An empty report for a run of `program` in `mode`: schema [`REPORT_SCHEMA`], outcome
    /// identical, no divergence, zero counters. The runner fills in the rest.
    pub fn new(mode: impl Into<String>, program: Vec<String>) -> Report {
        Report {
            schema: REPORT_SCHEMA,
            mode: mode.into(),
            program,
            outcome: Outcome::Identical,
            primary: ReplicaSummary::default(),
            secondary: ReplicaSummary::default(),
            first_divergence: None,
            last_common: Vec::new(),
            counters: Counters::default(),
            channel_error: None,
            wall_seconds: 0.0,
        }
    }

    /// Appends an agreed event to `last_common`, dropping the oldest beyond
    /// [`LAST_COMMON_MAX`].
    pub fn push_common(&mut self, e: Event) {
        if self.last_common.len() >= LAST_COMMON_MAX {
            let extra = self.last_common.len() + 1 - LAST_COMMON_MAX;
            self.last_common.drain(..extra);
        }
        self.last_common.push(e);
    }

    /// Reads a report, checking its schema number before its fields.
    pub fn load(path: impl AsRef<Path>) -> Result<Report, ReportError> {
        let path = path.as_ref();
        let io_err = |source| ReportError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut text = Vec::new();
        fs::File::open(path)
            .and_then(|f| f.take(MAX_REPORT_FILE + 1).read_to_end(&mut text))
            .map_err(io_err)?;
        if text.len() as u64 > MAX_REPORT_FILE {
            return Err(io_err(io::Error::other(format!(
                "larger than {} MiB, not a report",
                MAX_REPORT_FILE >> 20
            ))));
        }
        Self::parse(path, &text)
    }

    /// Reads a report from its JSON text, checking its schema number before its fields;
    /// `path` only names the text in errors.
    pub fn parse(path: impl AsRef<Path>, text: &[u8]) -> Result<Report, ReportError> {
        let path = path.as_ref();
        let parse_err = |source| ReportError::Parse {
            path: path.to_path_buf(),
            source,
        };
        let json: serde_json::Value = serde_json::from_slice(text).map_err(parse_err)?;
        match json.get("schema").and_then(serde_json::Value::as_u64) {
            Some(n) if n == u64::from(REPORT_SCHEMA) => {}
            found => {
                return Err(ReportError::Schema {
                    path: path.to_path_buf(),
                    found,
                })
            }
        }
        // Parsed again from the text so that a bad field's error has its line and column.
        serde_json::from_slice(text).map_err(parse_err)
    }

    /// Writes the report as pretty JSON, atomically: to a temporary file in the same
    /// directory, then renamed over `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ReportError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = path.as_ref();
        let write_err = |source| ReportError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| write_err(e.into()))?;
        json.push(b'\n');
        let name = path.file_name().ok_or_else(|| {
            write_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a file name",
            ))
        })?;
        let tmp = path.with_file_name(format!(
            ".{}.{}.{}.tmp",
            name.to_string_lossy(),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let written = fs::File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(&json)?;
                f.sync_all()
            })
            .and_then(|()| fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(write_err(e));
        }
        Ok(())
    }

    /// A readable multi-line summary: the outcome on the first line, then the run, the
    /// replicas' ends, the first divergence (where, both values, excerpts), the last common
    /// events and the counters.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        self.write_summary(&mut out)
            .expect("writing to a String cannot fail");
        out
    }

    fn headline(&self) -> String {
        let c = &self.counters;
        match self.outcome {
            Outcome::Identical => format!(
                "identical: {} records, {} bytes compared, {} turns",
                thousands(c.records),
                thousands(c.bytes_compared),
                thousands(c.turns)
            ),
            Outcome::Diverged => match &self.first_divergence {
                Some(d) => format!("diverged: {}", d.headline()),
                None => "diverged (the report holds no divergence)".to_string(),
            },
            Outcome::ReplicaFailed => {
                let both = [("primary", &self.primary), ("secondary", &self.secondary)];
                // The replicas that did not exit normally; both when each did.
                let mut failed: Vec<String> = both
                    .iter()
                    .filter(|(_, r)| {
                        r.error.is_some()
                            || r.exit_status.is_none()
                            || !r.exit.as_deref().unwrap_or("").starts_with("exited ")
                    })
                    .map(|(name, r)| format!("{name} {}", r.describe()))
                    .collect();
                if failed.is_empty() {
                    failed = both
                        .iter()
                        .map(|(name, r)| format!("{name} {}", r.describe()))
                        .collect();
                }
                format!("replica failed: {}", failed.join("; "))
            }
            Outcome::ChannelError => format!(
                "channel error: {}",
                self.channel_error.as_deref().unwrap_or("(no message)")
            ),
        }
    }

    fn write_summary(&self, out: &mut String) -> fmt::Result {
        writeln!(out, "{}", self.headline())?;
        writeln!(
            out,
            "run:       {} mode, {:.3} s: {}",
            self.mode,
            self.wall_seconds,
            shell_words(&self.program)
        )?;
        for (name, r) in [("primary:", &self.primary), ("secondary:", &self.secondary)] {
            writeln!(
                out,
                "{name:<10} cores {}, {}",
                cores(&r.cores),
                r.describe()
            )?;
        }
        if let Some(e) = &self.channel_error {
            if self.outcome != Outcome::ChannelError {
                writeln!(out, "channel:   {e}")?;
            }
        }
        if let Some(d) = &self.first_divergence {
            writeln!(out)?;
            write_divergence(out, d)?;
        }
        writeln!(out)?;
        write_events(out, &self.last_common)?;
        writeln!(out)?;
        write_counters(out, &self.counters)
    }
}

fn write_divergence(out: &mut String, d: &Divergence) -> fmt::Result {
    writeln!(out, "first divergence: {}", d.kind)?;
    writeln!(out, "  where:      {}", d.location())?;
    if let Some(p) = &d.primary_syscall {
        if *p != d.syscall {
            writeln!(
                out,
                "  syscalls:   primary {p}, secondary {}",
                if d.syscall.is_empty() {
                    "(none)"
                } else {
                    &d.syscall
                }
            )?;
        }
    }
    let mut when = Vec::new();
    if let Some(t) = d.logical_time {
        when.push(format!("logical time {}", thousands(t)));
    }
    if let Some(t) = d.turn {
        when.push(format!("turn {}", thousands(t)));
    }
    if !when.is_empty() {
        writeln!(out, "  when:       {}", when.join(", "))?;
    }
    if !d.detail.is_empty() {
        writeln!(out, "  detail:     {}", d.detail)?;
    }
    if let Some(b) = d.first_differing_byte {
        writeln!(out, "  first differing byte: {}", thousands(b))?;
    }
    writeln!(out, "  primary:    {}", d.primary.describe())?;
    writeln!(out, "  secondary:  {}", d.secondary.describe())?;
    let sides = [("primary", &d.primary), ("secondary", &d.secondary)];
    let with_bytes = sides
        .iter()
        .filter(|(_, v)| v.number.is_none() && v.len > 0)
        .count();
    if with_bytes == 0 {
        return Ok(());
    }
    for (name, v) in sides {
        if v.number.is_some() {
            continue;
        }
        if v.excerpt_hex.is_empty() && v.len > 0 {
            writeln!(
                out,
                "  {name:<10}  (hash only: its bytes did not cross the channel)"
            )?;
        } else {
            writeln!(
                out,
                "  {name:<10}  text from byte {}: \"{}\"",
                v.excerpt_offset, v.excerpt_text
            )?;
        }
    }
    write_hex_rows(out, &d.primary, &d.secondary, d.first_differing_byte)
}

/// Both excerpts as a hex dump, 16 bytes a row, the primary's row above the secondary's, with
/// `^^` under the first differing byte.
fn write_hex_rows(out: &mut String, p: &Value, s: &Value, diff: Option<u64>) -> fmt::Result {
    let mut sides = Vec::new();
    for (name, v) in [("primary", p), ("secondary", s)] {
        if v.number.is_some() {
            continue;
        }
        if let Some(bytes) = v.excerpt().filter(|b| !b.is_empty()) {
            sides.push((name, v.excerpt_offset, bytes));
        }
    }
    if sides.is_empty() {
        return Ok(());
    }
    let lo = sides.iter().map(|(_, o, _)| *o).min().unwrap_or(0) / 16 * 16;
    let hi = sides
        .iter()
        .map(|(_, o, b)| o + b.len() as u64)
        .max()
        .unwrap_or(0);
    writeln!(out, "  hex:")?;
    let mut row = lo;
    while row < hi {
        for (name, off, bytes) in &sides {
            let mut line = format!("    {name:<10} {row:08x} ");
            for at in row..row + 16 {
                match at.checked_sub(*off).and_then(|i| bytes.get(i as usize)) {
                    Some(b) => write!(line, " {b:02x}")?,
                    None => line.push_str("   "),
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        if let Some(d) = diff.filter(|d| (row..row + 16).contains(d)) {
            let indent = 4 + 10 + 1 + 8 + 1 + 1 + 3 * (d - row) as usize;
            writeln!(out, "{:indent$}^^", "")?;
        }
        row += 16;
    }
    Ok(())
}

fn write_events(out: &mut String, events: &[Event]) -> fmt::Result {
    if events.is_empty() {
        return writeln!(out, "last common events: none");
    }
    writeln!(
        out,
        "last {} common event{} (oldest first):",
        events.len(),
        if events.len() == 1 { "" } else { "s" }
    )?;
    let name_w = events
        .iter()
        .map(|e| e.syscall.chars().count())
        .max()
        .unwrap_or(0)
        .max("syscall".len());
    writeln!(
        out,
        "  {:>6}  {:>8}  {:<name_w$}  {:<8}  {:>12}  {:>10}",
        "thread", "seq", "syscall", "kind", "result", "bytes"
    )?;
    for e in events {
        writeln!(
            out,
            "  {:>6}  {:>8}  {:<name_w$}  {:<8}  {:>12}  {:>10}",
            e.thread,
            e.syscall_seq,
            e.syscall,
            e.kind.as_str(),
            e.result,
            thousands(e.bytes)
        )?;
    }
    Ok(())
}

fn write_counters(out: &mut String, c: &Counters) -> fmt::Result {
    writeln!(out, "counters:")?;
    let rows = [
        (
            "records",
            format!(
                "{} ({} bytes)",
                thousands(c.records),
                thousands(c.record_bytes)
            ),
        ),
        ("recorded syscalls", thousands(c.recorded_syscalls)),
        (
            "compared outputs",
            format!(
                "{} ({} bytes)",
                thousands(c.compared_outputs),
                thousands(c.bytes_compared)
            ),
        ),
        ("turns", thousands(c.turns)),
        ("reentries", thousands(c.reentries)),
        ("signals", thousands(c.signals)),
        (
            "max lag",
            format!(
                "{} records, {} bytes",
                thousands(c.max_lag_records),
                thousands(c.max_lag_bytes)
            ),
        ),
    ];
    for (name, v) in rows {
        writeln!(out, "  {name:<18} {v}")?;
    }
    Ok(())
}

/// Two runs side by side: outcome, mode, program, replicas' ends, wall time and every counter
/// with the second run's delta, the first divergence of each, and whether both point at the
/// same place.
pub fn compare_reports(a: &Report, b: &Report) -> String {
    let mut out = String::new();
    write_comparison(&mut out, a, b).expect("writing to a String cannot fail");
    out
}

fn write_comparison(out: &mut String, a: &Report, b: &Report) -> fmt::Result {
    let counters = |r: &Report| {
        let c = &r.counters;
        [
            ("records", c.records),
            ("record_bytes", c.record_bytes),
            ("recorded_syscalls", c.recorded_syscalls),
            ("compared_outputs", c.compared_outputs),
            ("bytes_compared", c.bytes_compared),
            ("turns", c.turns),
            ("reentries", c.reentries),
            ("signals", c.signals),
            ("max_lag_records", c.max_lag_records),
            ("max_lag_bytes", c.max_lag_bytes),
        ]
    };
    let mut rows: Vec<(String, String, String, String)> = vec![
        (
            "outcome".into(),
            a.outcome.to_string(),
            b.outcome.to_string(),
            String::new(),
        ),
        ("mode".into(), a.mode.clone(), b.mode.clone(), String::new()),
        (
            "primary".into(),
            a.primary.describe(),
            b.primary.describe(),
            String::new(),
        ),
        (
            "secondary".into(),
            a.secondary.describe(),
            b.secondary.describe(),
            String::new(),
        ),
        (
            "wall_seconds".into(),
            format!("{:.3}", a.wall_seconds),
            format!("{:.3}", b.wall_seconds),
            format!("{:+.3}", b.wall_seconds - a.wall_seconds),
        ),
    ];
    for ((name, x), (_, y)) in counters(a).into_iter().zip(counters(b)) {
        rows.push((name.into(), thousands(x), thousands(y), delta(x, y)));
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows
        .iter()
        .map(|r| r.1.chars().count())
        .max()
        .unwrap_or(0)
        .max("first".len());
    let w2 = rows
        .iter()
        .map(|r| r.2.chars().count())
        .max()
        .unwrap_or(0)
        .max("second".len());
    writeln!(
        out,
        "{:<w0$}  {:<w1$}  {:<w2$}  delta",
        "", "first", "second"
    )?;
    for (name, x, y, d) in &rows {
        let line = format!("{name:<w0$}  {x:<w1$}  {y:<w2$}  {d}");
        writeln!(out, "{}", line.trim_end())?;
    }
    if a.program == b.program {
        writeln!(out, "program: {}", shell_words(&a.program))?;
    } else {
        writeln!(out, "program (first):  {}", shell_words(&a.program))?;
        writeln!(out, "program (second): {}", shell_words(&b.program))?;
    }
    writeln!(out)?;
    writeln!(out, "first divergence:")?;
    for (name, r) in [("first", a), ("second", b)] {
        let d = match &r.first_divergence {
            Some(d) => d.headline(),
            None => "none".to_string(),
        };
        writeln!(out, "  {name:<7} {d}")?;
    }
    let verdict = match (&a.first_divergence, &b.first_divergence) {
        (None, None) => "neither run diverged".to_string(),
        (Some(_), None) => "only the first run diverged".to_string(),
        (None, Some(_)) => "only the second run diverged".to_string(),
        (Some(x), Some(y)) if x.same_place(y) => {
            let same_values = x.primary.hash == y.primary.hash
                && x.secondary.hash == y.secondary.hash
                && x.primary.len == y.primary.len
                && x.secondary.len == y.secondary.len;
            format!(
                "same place in both runs ({} at {}); the values {}",
                x.kind,
                x.location(),
                if same_values {
                    "are the same"
                } else {
                    "differ"
                }
            )
        }
        (Some(_), Some(_)) => "the runs diverged at different places".to_string(),
    };
    writeln!(out, "{verdict}")
}

fn delta(x: u64, y: u64) -> String {
    match y.cmp(&x) {
        std::cmp::Ordering::Equal => String::new(),
        std::cmp::Ordering::Greater => format!("+{}", thousands(y - x)),
        std::cmp::Ordering::Less => format!("-{}", thousands(x - y)),
    }
}

/// `1234567` → `"1,234,567"`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A core list as `0-3,6`; `any` when empty.
fn cores(list: &[usize]) -> String {
    if list.is_empty() {
        return "any".to_string();
    }
    let mut sorted = list.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            sorted[i].to_string()
        } else {
            format!("{}-{}", sorted[i], sorted[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// argv as a shell would need it: words with spaces or quotes in single quotes.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Bytes as text: valid UTF-8 as is, with `\\`, `\n`, `\r`, `\t` and `\0`; other control
/// bytes and bytes that are not UTF-8 as `\xNN`; other control and invisible characters (C1
/// controls, zero-width and bidirectional marks) as `\u{N}`, so that printing an excerpt can
/// neither drive a terminal nor hide text.
fn escape_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\0' => out.push_str("\\0"),
                c if c.is_ascii_control() => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if c.is_control() || invisible(c) => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Characters that print as nothing but change what a terminal shows.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_divergence() -> Divergence {
        let p = b"hello world, line 1\nline 2 of the primary\n";
        let s = b"hello world, line 1\nline 2 of the SECONDARY\n";
        let at = first_difference(p, s);
        Divergence {
            kind: DivergenceKind::Output,
            thread: 1,
            syscall_seq: 42,
            syscall: "write".into(),
            primary_syscall: Some("write".into()),
            fd: Some(1),
            logical_time: Some(17),
            turn: Some(321),
            primary: Value::of(p, at),
            secondary: Value::of(s, at),
            first_differing_byte: at,
            detail: "stdout differs".into(),
        }
    }

    fn sample(outcome: Outcome) -> Report {
        let mut r = Report::new("det", vec!["/bin/prog".into(), "an arg".into()]);
        r.outcome = outcome;
        r.primary = ReplicaSummary::exited(vec![0, 1], 0);
        r.secondary = ReplicaSummary::exited(vec![2, 3], 0);
        r.counters = Counters {
            records: 1234,
            record_bytes: 98765,
            recorded_syscalls: 1000,
            compared_outputs: 200,
            bytes_compared: 56789,
            turns: 321,
            reentries: 3,
            signals: 1,
            max_lag_records: 12,
            max_lag_bytes: 4096,
        };
        for i in 0..20u64 {
            r.push_common(Event {
                thread: (i % 2) as u32,
                syscall_seq: 10 + i,
                syscall: if i % 3 == 0 { "write" } else { "clock_gettime" }.into(),
                kind: if i % 3 == 0 {
                    EventKind::Compared
                } else {
                    EventKind::Recorded
                },
                result: i as i64,
                bytes: 100 * i,
            });
        }
        if outcome == Outcome::Diverged {
            r.first_divergence = Some(sample_divergence());
        }
        r.wall_seconds = 1.5;
        r
    }

    #[test]
    fn first_difference_cases() {
        assert_eq!(first_difference(b"", b""), None);
        assert_eq!(first_difference(b"abc", b"abc"), None);
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
        assert_eq!(first_difference(b"xbc", b"abc"), Some(0));
        assert_eq!(first_difference(b"ab", b"abc"), Some(2));
        assert_eq!(first_difference(b"abc", b""), Some(0));
        let long = vec![7u8; 1000];
        let mut other = long.clone();
        other[777] = 8;
        assert_eq!(first_difference(&long, &other), Some(777));
        assert_eq!(first_difference(&long, &long[..640]), Some(640));
    }

    fn check_first_difference(a: &[u8], b: &[u8]) {
        match first_difference(a, b) {
            None => assert_eq!(a, b),
            Some(i) => {
                let i = i as usize;
                assert_eq!(a[..i], b[..i], "bytes before {i} must agree");
                if i < a.len() && i < b.len() {
                    assert_ne!(a[i], b[i]);
                } else {
                    assert_eq!(i, a.len().min(b.len()));
                    assert_ne!(a.len(), b.len());
                }
            }
        }
    }

    proptest! {
        #[test]
        fn first_difference_is_the_first_differing_position(
            a in proptest::collection::vec(0u8..3, 0..300),
            b in proptest::collection::vec(0u8..3, 0..300),
        ) {
            check_first_difference(&a, &b);
        }

        #[test]
        fn first_difference_after_a_long_common_prefix(
            base in proptest::collection::vec(any::<u8>(), 0..1000),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            cut in any::<prop::sample::Index>(),
        ) {
            let mut other = base.clone();
            if !other.is_empty() {
                let i = at.index(other.len());
                other[i] ^= flip;
                prop_assert_eq!(first_difference(&base, &other), Some(i as u64));
            }
            let short = &base[..cut.index(base.len() + 1)];
            check_first_difference(&base, short);
            check_first_difference(&base, &other);
        }
    }

    #[test]
    fn hash_is_xxh3_64_with_seed_0() {
        // The XXH3-64 of the empty input, from the xxHash reference.
        assert_eq!(hash64(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(Value::of(b"", None).hash, "2d06800538d394c2");
        assert_ne!(hash64(b"a"), hash64(b"b"));
    }

    #[test]
    fn value_excerpt_starts_before_the_difference() {
        let bytes: Vec<u8> = (0..200u8).collect();
        let v = Value::of(&bytes, Some(100));
        assert_eq!(v.len, 200);
        assert_eq!(v.hash.len(), 16);
        assert_eq!(v.excerpt_offset, 100 - EXCERPT_BEFORE);
        assert_eq!(v.excerpt().unwrap(), bytes[84..148].to_vec());
        assert_eq!(v.excerpt_hex.len(), 128);
        assert_eq!(&v.excerpt_hex[..4], "5455");

        let start = Value::of(&bytes, None);
        assert_eq!(start.excerpt_offset, 0);
        assert_eq!(start.excerpt().unwrap(), bytes[..64].to_vec());
        // Near the start, and past the end (the shorter value of a prefix pair).
        assert_eq!(Value::of(&bytes, Some(5)).excerpt_offset, 0);
        let tail = Value::of(&bytes[..30], Some(30));
        assert_eq!(tail.excerpt_offset, 14);
        assert_eq!(tail.excerpt().unwrap(), bytes[14..30].to_vec());
        let past = Value::of(&bytes[..10], Some(500));
        assert_eq!((past.excerpt_offset, past.excerpt_hex.as_str()), (10, ""));
        let short = Value::of(b"hi", Some(1));
        assert_eq!(
            (short.excerpt_text.as_str(), short.excerpt_hex.as_str()),
            ("hi", "6869")
        );
    }

    #[test]
    fn excerpt_text_escapes_control_characters() {
        let v = Value::of("a\\b\n\t\r\0\x1b[31m é \u{202e}x".as_bytes(), None);
        assert_eq!(v.excerpt_text, r"a\\b\n\t\r\0\x1b[31m é \u{202e}x");
        let bad = Value::of(&[b'o', b'k', 0xff, 0xc3, b'!', 0x7f], None);
        assert_eq!(bad.excerpt_text, r"ok\xff\xc3!\x7f");
        assert_eq!(escape_text("\u{85}".as_bytes()), r"\u{85}");
    }

    #[test]
    fn number_and_hashed_values() {
        let n = Value::of_number(-11);
        assert_eq!(n.len, 8);
        assert_eq!(n.number, Some(-11));
        assert_eq!(n.excerpt_text, "-11");
        assert_eq!(n.excerpt_hex, "f5ffffffffffffff");
        assert_eq!(n.hash, format!("{:016x}", hash64(&(-11i64).to_le_bytes())));
        let h = Value::hashed(5, 0xab);
        assert_eq!(h.hash, "00000000000000ab");
        assert_eq!((h.len, h.excerpt_hex.as_str()), (5, ""));
    }

    #[test]
    fn push_common_keeps_the_last_sixteen() {
        let r = sample(Outcome::Identical);
        assert_eq!(r.last_common.len(), LAST_COMMON_MAX);
        assert_eq!(r.last_common[0].syscall_seq, 14);
        assert_eq!(r.last_common[15].syscall_seq, 29);
    }

    #[test]
    fn json_round_trip_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        for outcome in [
            Outcome::Identical,
            Outcome::Diverged,
            Outcome::ReplicaFailed,
            Outcome::ChannelError,
        ] {
            let r = sample(outcome);
            r.save(&path).unwrap();
            assert_eq!(Report::load(&path).unwrap(), r);
        }
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("}\n"));
        assert!(text.contains("\"outcome\": \"channel_error\""), "{text}");
        assert!(text.contains("\"first_divergence\": null"), "{text}");
        assert!(text.contains("\"schema\": 1"), "{text}");

        let mut r = sample(Outcome::Diverged);
        r.first_divergence.as_mut().unwrap().kind = DivergenceKind::MissingEvent;
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"kind\":\"missing_event\""), "{json}");
        assert!(json.contains("\"kind\":\"recorded\""), "{json}");
        // Nothing but the report is left in the directory: the temporary file was renamed.
        r.save(&path).unwrap();
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn non_finite_wall_time_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let mut r = sample(Outcome::Identical);
        r.wall_seconds = f64::NAN;
        r.save(&path).unwrap();
        assert_eq!(Report::load(&path).unwrap().wall_seconds, 0.0);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let mut json = serde_json::to_value(sample(Outcome::Identical)).unwrap();
        json["added_later"] = serde_json::json!({"x": 1});
        fs::write(&path, json.to_string()).unwrap();
        assert_eq!(Report::load(&path).unwrap(), sample(Outcome::Identical));
    }

    #[test]
    fn load_errors_are_one_line_and_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let e = Report::load(&missing).unwrap_err();
        assert!(matches!(e, ReportError::Io { .. }), "{e:?}");

        let bad = dir.path().join("bad.json");
        fs::write(&bad, "garbage").unwrap();
        let e2 = Report::load(&bad).unwrap_err();
        assert!(matches!(e2, ReportError::Parse { .. }), "{e2:?}");
        assert!(e2.to_string().contains("line 1 column 1"), "{e2}");

        let newer = dir.path().join("newer.json");
        let mut json = serde_json::to_value(sample(Outcome::Identical)).unwrap();
        json["schema"] = 2.into();
        fs::write(&newer, json.to_string()).unwrap();
        let e3 = Report::load(&newer).unwrap_err();
        assert!(
            matches!(e3, ReportError::Schema { found: Some(2), .. }),
            "{e3:?}"
        );
        assert!(e3.to_string().contains("schema 2"), "{e3}");

        let other = dir.path().join("other.json");
        fs::write(&other, "[1, 2]").unwrap();
        let e4 = Report::load(&other).unwrap_err();
        assert!(
            matches!(e4, ReportError::Schema { found: None, .. }),
            "{e4:?}"
        );

        let partial = dir.path().join("partial.json");
        fs::write(&partial, "{\n  \"schema\": 1,\n  \"mode\": \"det\"\n}").unwrap();
        let e5 = Report::load(&partial).unwrap_err();
        assert!(e5.to_string().contains("missing field"), "{e5}");

        let e6 = sample(Outcome::Identical)
            .save(dir.path().join("no/such/dir/r.json"))
            .unwrap_err();
        assert!(matches!(e6, ReportError::Write { .. }), "{e6:?}");

        for (e, name) in [
            (e, "missing.json"),
            (e2, "bad.json"),
            (e3, "newer.json"),
            (e4, "other.json"),
            (e5, "partial.json"),
            (e6, "r.json"),
        ] {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{msg}");
            assert!(msg.contains(name), "{msg}");
        }
    }

    #[test]
    fn identical_summary() {
        let s = sample(Outcome::Identical).summary();
        let first = s.lines().next().unwrap();
        assert_eq!(
            first,
            "identical: 1,234 records, 56,789 bytes compared, 321 turns"
        );
        assert!(s.contains("'an arg'"), "{s}");
        assert!(s.contains("cores 0-1, exited 0"), "{s}");
        assert!(s.contains("cores 2-3, exited 0"), "{s}");
        assert!(s.contains("last 16 common events"), "{s}");
        assert!(
            s.contains("max lag            12 records, 4,096 bytes"),
            "{s}"
        );
        assert!(!s.contains("first divergence"), "{s}");
    }

    #[test]
    fn divergence_summary_has_the_key_facts() {
        let s = sample(Outcome::Diverged).summary();
        let first = s.lines().next().unwrap();
        assert_eq!(
            first,
            "diverged: output at thread 1, syscall #42 write (fd 1), first differing byte 34"
        );
        for fact in [
            "logical time 17, turn 321",
            "first differing byte: 34",
            "detail:     stdout differs",
            "text from byte 18: \"1\\nline 2 of the primary\\n\"",
            "text from byte 18: \"1\\nline 2 of the SECONDARY\\n\"",
            "42 bytes, hash ",
            "44 bytes, hash ",
            "clock_gettime",
            "recorded",
            "compared outputs   200 (56,789 bytes)",
        ] {
            assert!(s.contains(fact), "missing {fact:?} in\n{s}");
        }
        // The caret stands under the first differing byte (34 = row 0x20, column 2).
        let lines: Vec<&str> = s.lines().collect();
        let caret = lines.iter().position(|l| l.trim() == "^^").unwrap();
        let secondary_row = lines[caret - 1];
        assert!(secondary_row.contains("secondary  00000020"), "{s}");
        let col = lines[caret].find('^').unwrap();
        assert_eq!(&secondary_row[col..col + 2], "53"); // 'S'
        assert_eq!(&lines[caret - 2][col..col + 2], "70"); // 'p'
    }

    #[test]
    fn other_outcomes_summaries() {
        let mut r = sample(Outcome::ReplicaFailed);
        r.secondary = ReplicaSummary::killed(vec![2], 9);
        let s = r.summary();
        assert_eq!(
            s.lines().next().unwrap(),
            "replica failed: secondary killed by SIGKILL (status 137)"
        );
        r.secondary = ReplicaSummary::failed(vec![], "cannot map guest memory");
        assert!(r
            .summary()
            .lines()
            .next()
            .unwrap()
            .contains("secondary did not finish; error: cannot map guest memory"));
        let mut c = sample(Outcome::ChannelError);
        c.channel_error = Some("corrupt record at stream offset 64".into());
        assert_eq!(
            c.summary().lines().next().unwrap(),
            "channel error: corrupt record at stream offset 64"
        );
        let mut n = sample(Outcome::Diverged);
        let d = n.first_divergence.as_mut().unwrap();
        d.kind = DivergenceKind::Syscall;
        d.primary = Value::of_number(5);
        d.secondary = Value::hashed(3, 1);
        d.first_differing_byte = None;
        let s = n.summary();
        assert!(s.contains("primary:    result 5"), "{s}");
        assert!(s.contains("(hash only"), "{s}");
        assert!(!s.contains("hex:"), "{s}");
    }

    #[test]
    fn comparison_lines_up_two_runs() {
        let a = sample(Outcome::Identical);
        let mut b = sample(Outcome::Diverged);
        b.counters.records += 66;
        b.counters.turns -= 21;
        let s = compare_reports(&a, &b);
        assert!(
            s.lines().any(|l| l.starts_with("outcome")
                && l.contains("identical")
                && l.contains("diverged")),
            "{s}"
        );
        assert!(
            s.lines()
                .any(|l| l.starts_with("records ") && l.ends_with("+66")),
            "{s}"
        );
        assert!(
            s.lines()
                .any(|l| l.starts_with("turns ") && l.ends_with("-21")),
            "{s}"
        );
        assert!(
            s.lines()
                .any(|l| l.starts_with("wall_seconds") && l.ends_with("+0.000")),
            "{s}"
        );
        assert!(s.contains("program: /bin/prog 'an arg'"), "{s}");
        assert!(s.contains("first   none"), "{s}");
        assert!(s.contains("only the second run diverged"), "{s}");

        let c = sample(Outcome::Diverged);
        let same = compare_reports(&b, &c);
        assert!(same.contains("same place in both runs (output at thread 1, syscall #42 write (fd 1)); the values are the same"), "{same}");
        let mut d = c.clone();
        d.first_divergence.as_mut().unwrap().syscall_seq = 43;
        assert!(compare_reports(&c, &d).contains("diverged at different places"));
        let mut e = c.clone();
        e.first_divergence.as_mut().unwrap().secondary = Value::of(b"other", None);
        assert!(compare_reports(&c, &e).contains("the values differ"));
        assert!(compare_reports(&a, &a).contains("neither run diverged"));
    }

    #[test]
    fn helpers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(cores(&[]), "any");
        assert_eq!(cores(&[3, 0, 1, 2, 6]), "0-3,6");
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(40), "signal 40");
        assert_eq!(delta(5, 3), "-2");
        assert_eq!(
            shell_words(&["a".into(), "it's".into(), String::new()]),
            r"a 'it'\''s' ''"
        );
    }
}
