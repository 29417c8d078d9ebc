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
//!   Readers also default fields that a report lacks when the field came later (`failover`):
//!   reports written before it load unchanged.
//! - A new value of an enum (`outcome: "failed_over"`) is an addition too and keeps the
//!   number; a reader older than the value refuses such a report with a parse error.
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
//! | `failover` | [`Failover`] or null | a replica died before the run's end (killed, crashed, its VMM failed): which, how, when, and what the other did; null when neither died. Absent in reports written before it: read as null |
//!
//! ## `outcome`
//!
//! | value | meaning |
//! |---|---|
//! | `identical` | both replicas ran to the end and agreed on every compared event |
//! | `diverged` | the replicas disagreed; `first_divergence` says where |
//! | `replica_failed` | a replica died, its VMM failed, or the primary stopped replicating (`primary.error`) before any divergence; the replicas' `exit` and `error` say how |
//! | `channel_error` | the channel between the replicas failed (corrupt record, peer gone); `channel_error` says how |
//! | `failed_over` | a replica died and the other carried the program on, with failover on (the default): the secondary went live after the primary's death, or the primary served on, unreplicated, after the secondary's; `failover` says which and how. Without failover (`--no-failover`), or when the secondary did not go live, a death is `replica_failed` (with `failover` set all the same) |
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
//! ## `Failover`: `failover`
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `died` | string | `"primary"` or `"secondary"`: the replica that died first |
//! | `how` | string | how, in words: `"killed by SIGKILL"`, `"exited 3"` (its VMM process ended while the other ran), `"VMM error: ..."` |
//! | `at_seconds` | f64 | when the supervisor saw its process gone, in seconds since the replicas started |
//! | `kill_after_seconds` | f64 or null | the time `--kill-primary-after` / `--kill-secondary-after` chose (from a range: at random), in seconds since the replicas started, when this death was that injected kill; null otherwise |
//! | `noticed` | string or null | how the secondary noticed the primary's death (`"the primary is gone"`); null when it did not go live |
//! | `takeover_ms` | f64 or null | from the secondary noticing the death to it serving live, in milliseconds; null when no replica took over (the secondary died, or it did not go live) |
//! | `records_drained` | u64 or null | records the primary had logged that the secondary had not consumed when it noticed; all replayed before it went live |
//! | `descriptors` | u64 or null | outside descriptors (listening sockets, connections, host files) the secondary took over |
//! | `connections` | u64 or null | of those, connected TCP sockets |
//! | `in_doubt_outputs` | u64 or null | output calls the primary may have performed in part or in full when it died |
//! | `output_bytes_skipped` | u64 or null | bytes of the secondary's own writes skipped because the primary had already sent them |
//!
//! The takeover fields (`noticed` to `output_bytes_skipped`) are null together.
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
//! | `primary_turns`, `secondary_turns` | u64 | turns (token grants) each replica's det runtime took, in both modes (0 in reports written before they were counted) |
//! | `primary_exits`, `secondary_exits` | u64 | VM exits of each replica's vCPUs (likewise) |

use serde::{Deserialize, Serialize, Serializer};
use std::fmt::{self, Write as _};
use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;

mod compare;
mod failover;
mod file;
mod html;
mod summary;
#[cfg(test)]
mod tests;
mod text;

pub use compare::compare_reports;
pub use failover::{Died, Failover};
pub use html::render_html;
use text::{escape_text, hex, thousands, unhex};

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
    /// A replica died before the run's end, and what the other did; `None` when neither
    /// died (and in reports written before the field).
    #[serde(default)]
    pub failover: Option<Failover>,
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
    /// A replica died and the other carried the program on; [`Report::failover`] says how.
    FailedOver,
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
    /// Turns (token grants) the primary's det runtime took.
    #[serde(default)]
    pub primary_turns: u64,
    /// Turns the secondary's det runtime took.
    #[serde(default)]
    pub secondary_turns: u64,
    /// VM exits of the primary's vCPUs.
    #[serde(default)]
    pub primary_exits: u64,
    /// VM exits of the secondary's vCPUs.
    #[serde(default)]
    pub secondary_exits: u64,
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
    /// `"channel_error"`, `"failed_over"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Identical => "identical",
            Outcome::Diverged => "diverged",
            Outcome::ReplicaFailed => "replica_failed",
            Outcome::ChannelError => "channel_error",
            Outcome::FailedOver => "failed_over",
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
            failover: None,
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
}
