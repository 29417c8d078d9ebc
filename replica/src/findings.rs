//! What the secondary finds: the first mismatch, the last agreed events, and how the
//! channel ended; the report of the pair is built from them.

use std::collections::VecDeque;

use crate::wire::EndInfo;

/// How many agreed events a divergence report shows.
pub const HISTORY: usize = 16;

/// A mismatch found by the secondary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mismatch {
    /// Report kind: output, syscall, exit, missing_event, extra_event, signal, schedule.
    pub kind: &'static str,
    /// Deterministic thread id.
    pub thread: u32,
    /// The thread's syscall count at the mismatch.
    pub syscall_seq: u64,
    /// The secondary's syscall there.
    pub syscall: String,
    /// The primary's event there, if any.
    pub primary_syscall: Option<String>,
    /// The descriptor, for outputs.
    pub fd: Option<i64>,
    /// The thread's logical time (det mode).
    pub logical_time: Option<u64>,
    /// Turns taken so far.
    pub turn: Option<u64>,
    /// The primary's value (bytes or a number as text).
    pub primary: Vec<u8>,
    /// The secondary's value.
    pub secondary: Vec<u8>,
    /// Hash of the primary's output when only the hash travelled.
    pub primary_hash: Option<u64>,
    /// Where the values first differ.
    pub first_differing_byte: Option<u64>,
    /// One line.
    pub detail: String,
}

/// One event both replicas agreed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgreedEvent {
    /// Deterministic thread id.
    pub thread: u32,
    /// Per-thread syscall number.
    pub syscall_seq: u64,
    /// Syscall name.
    pub syscall: String,
    /// "recorded", "compared", "exit".
    pub kind: &'static str,
    /// The result.
    pub result: i64,
    /// Bytes replayed or compared.
    pub bytes: u64,
}

/// What the secondary found, for the report.
#[derive(Clone, Debug, Default)]
pub struct SecondaryFindings {
    /// The first mismatch.
    pub mismatch: Option<Mismatch>,
    /// The last agreed events, oldest first.
    pub history: VecDeque<AgreedEvent>,
    /// A channel failure (corrupt record...).
    pub channel_error: Option<String>,
    /// How the primary ended, as its log says.
    pub primary_end: Option<EndInfo>,
    /// Why the secondary stopped early, if it did (primary gone, mismatch...).
    pub stopped: Option<String>,
    /// The secondary took over from a dead primary (failover).
    pub takeover: Option<Takeover>,
}

/// How the secondary took over from a primary that died (failover), for the report's
/// `failover` object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Takeover {
    /// How the secondary noticed the death ("the primary is gone", "the primary closed the
    /// channel").
    pub noticed: String,
    /// From the death being noticed to the secondary serving live, in milliseconds.
    pub takeover_ms: f64,
    /// Records the primary had logged that the secondary had not consumed when it noticed;
    /// all of them are replayed before it goes live.
    pub records_drained: u64,
    /// Outside descriptors (listening sockets, connections, host files, timers) whose host
    /// descriptions the secondary now uses.
    pub descriptors: u64,
    /// Of those, connected TCP sockets.
    pub connections: u64,
    /// Output calls the primary may have performed in part or in full when it died.
    pub in_doubt_outputs: u64,
    /// Bytes of the secondary's own writes skipped because the primary had already sent
    /// them.
    pub output_bytes_skipped: u64,
}

/// Created in the pair's output directory by the supervisor when the secondary has made no
/// progress for too long: the secondary then writes [`STALL_FILE`] and removes it.
pub const STALL_REQUEST: &str = "secondary-stall-request";

/// The secondary's description of what its threads wait for, written on [`STALL_REQUEST`].
pub const STALL_FILE: &str = "secondary-stall.txt";

/// Index of the first byte where `a` and `b` differ (the shorter length if one is a prefix
/// of the other); None if equal.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<u64> {
    if a == b {
        return None;
    }
    let n = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    Some(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_difference_finds_the_index() {
        assert_eq!(first_difference(b"abc", b"abc"), None);
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
        assert_eq!(first_difference(b"ab", b"abc"), Some(2));
        assert_eq!(first_difference(b"", b"x"), Some(0));
    }
}
