//! The pair's status page: a small shared memfd of counters that both replicas update and
//! the supervisor reads for its status line and report, without any message passing.
//!
//! Layout: [`Counter::COUNT`] little-endian `u64` atomics at index `Counter as usize`, then
//! one block of [`ReplicaCounters`] per role at [`ROLE_BLOCK`] (primary) and twice that
//! (secondary), on their own cache lines so that the replicas never write the same line;
//! the rest of the page is zero. Every process maps it read-write; each counter has one
//! writer.

use crate::sys::{sealed_memfd, Mapping};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

const PAGE: usize = 4096;

/// One counter of the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// Turns (token grants) taken by the primary.
    PrimaryTurns = 0,
    /// Turns taken by the secondary.
    SecondaryTurns,
    /// Records the primary sent.
    RecordsSent,
    /// Record bytes the primary sent (payloads).
    RecordBytes,
    /// Records the secondary consumed.
    RecordsConsumed,
    /// Syscalls the secondary replayed from records.
    RecordedSyscalls,
    /// Outputs the secondary compared.
    ComparedOutputs,
    /// Output bytes the secondary compared.
    BytesCompared,
    /// Signals replayed.
    Signals,
    /// Re-entry events (det mode) replayed.
    Reentries,
    /// Highest lag seen by the primary, in records.
    MaxLagRecords,
    /// Highest lag seen by the primary, in bytes.
    MaxLagBytes,
    /// Non-zero once the secondary found a divergence.
    Diverged,
    /// Record payload bytes the secondary consumed (the lag in bytes is
    /// [`RecordBytes`](Counter::RecordBytes) minus this).
    RecordBytesConsumed,
    /// Failover: 0 until the secondary serves live after the primary's death; then the
    /// takeover time (death noticed to live) in microseconds, at least 1. The secondary sets
    /// it once, at go-live; the supervisor shows it in the status line, stops watching the
    /// secondary for stalls and counts the failover in `ditto_failovers_total`.
    TakeoverMicros,
}

impl Counter {
    /// How many counters there are.
    pub const COUNT: usize = Counter::TakeoverMicros as usize + 1;
}

/// The syscall classes of the syscall table (DESIGN.md §6), in the order of
/// [`ReplicaCounters::syscalls_by_class`]; the names are the metrics' `class` label.
pub const SYSCALL_CLASSES: [&str; 6] = [
    "local",
    "recorded",
    "compared",
    "input_by_fd",
    "output_by_fd",
    "unsupported",
];

/// Index (in `u64`s) of the primary's [`ReplicaCounters`] block; the secondary's is at
/// twice this. 64 u64s = 512 bytes: past the shared counters and on its own cache lines.
pub const ROLE_BLOCK: usize = 64;

/// What one replica's VMM counts about its own run, published to the page about ten
/// times a second (not on the syscall path: the page is shared between processes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaCounters {
    /// VM exits (KVM_RUN returns) of all its vCPUs.
    pub exits: u64,
    /// Syscalls served through the exitless doorbell.
    pub doorbell_syscalls: u64,
    /// Syscalls served, by the class of their table entry ([`SYSCALL_CLASSES`]).
    pub syscalls_by_class: [u64; 6],
}

impl ReplicaCounters {
    const SLOTS: usize = 2 + SYSCALL_CLASSES.len();
}

/// A mapped status page.
pub struct StatusPage {
    fd: OwnedFd,
    map: Mapping,
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Sync for StatusPage {}

impl StatusPage {
    /// A new, zeroed page.
    pub fn create() -> io::Result<Self> {
        let fd = sealed_memfd(c"ditto-status", PAGE)?;
        Self::attach(fd)
    }

    /// Maps a page created by [`create`](Self::create) in another process.
    pub fn attach(fd: OwnedFd) -> io::Result<Self> {
        let (size, _) = crate::sys::size_and_shrink_seal(fd.as_fd())?;
        if size < PAGE as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "status page is too small",
            ));
        }
        let map = Mapping::new(fd.as_fd(), PAGE)?;
        Ok(StatusPage { fd, map })
    }

    /// The memfd, to hand to a child.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn slot(&self, c: Counter) -> &AtomicU64 {
        self.at(c as usize)
    }

    fn at(&self, index: usize) -> &AtomicU64 {
        const _: () = assert!(Counter::COUNT <= ROLE_BLOCK);
        const _: () = assert!((3 * ROLE_BLOCK) * 8 <= PAGE);
        assert!(index < PAGE / 8);
        // SAFETY: the page is PAGE bytes and page-aligned, index < PAGE / 8 (checked);
        // AtomicU64 has u64's layout and every access to the page is atomic.
        unsafe { &*(self.map.ptr().cast::<AtomicU64>().add(index)) }
    }

    fn role_base(secondary: bool) -> usize {
        if secondary {
            2 * ROLE_BLOCK
        } else {
            ROLE_BLOCK
        }
    }

    /// Publishes one replica's own counters (`secondary` says which block).
    pub fn publish_replica(&self, secondary: bool, c: &ReplicaCounters) {
        let base = Self::role_base(secondary);
        let values = [c.exits, c.doorbell_syscalls]
            .into_iter()
            .chain(c.syscalls_by_class);
        for (i, v) in values.enumerate() {
            self.at(base + i).store(v, Ordering::Relaxed);
        }
    }

    /// One replica's counters as last published.
    pub fn replica(&self, secondary: bool) -> ReplicaCounters {
        let base = Self::role_base(secondary);
        let v: [u64; ReplicaCounters::SLOTS] =
            std::array::from_fn(|i| self.at(base + i).load(Ordering::Relaxed));
        ReplicaCounters {
            exits: v[0],
            doorbell_syscalls: v[1],
            syscalls_by_class: std::array::from_fn(|i| v[2 + i]),
        }
    }

    /// Reads a counter.
    pub fn get(&self, c: Counter) -> u64 {
        self.slot(c).load(Ordering::Relaxed)
    }

    /// Adds to a counter.
    pub fn add(&self, c: Counter, n: u64) {
        self.slot(c).fetch_add(n, Ordering::Relaxed);
    }

    /// Sets a counter.
    pub fn set(&self, c: Counter, v: u64) {
        self.slot(c).store(v, Ordering::Relaxed);
    }

    /// Raises a counter to at least `v`.
    pub fn max(&self, c: Counter, v: u64) {
        self.slot(c).fetch_max(v, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn two_mappings_share_counters() {
        let a = StatusPage::create().unwrap();
        // SAFETY: dup of a descriptor we own.
        let dup = unsafe { libc::dup(a.fd().as_raw_fd()) };
        assert!(dup >= 0);
        // SAFETY: dup returned a fresh descriptor.
        let b = StatusPage::attach(unsafe { std::os::fd::FromRawFd::from_raw_fd(dup) }).unwrap();
        a.add(Counter::RecordsSent, 5);
        b.max(Counter::MaxLagBytes, 9);
        b.max(Counter::MaxLagBytes, 3);
        assert_eq!(b.get(Counter::RecordsSent), 5);
        assert_eq!(a.get(Counter::MaxLagBytes), 9);
    }

    #[test]
    fn replica_blocks_are_apart_and_round_trip() {
        let page = StatusPage::create().unwrap();
        let p = ReplicaCounters {
            exits: 7,
            doorbell_syscalls: 2,
            syscalls_by_class: [1, 2, 3, 4, 5, 6],
        };
        let s = ReplicaCounters {
            exits: 70,
            ..Default::default()
        };
        page.publish_replica(false, &p);
        page.publish_replica(true, &s);
        assert_eq!(page.replica(false), p);
        assert_eq!(page.replica(true), s);
        // The shared counters are untouched by either block.
        for c in [Counter::PrimaryTurns, Counter::RecordBytesConsumed] {
            assert_eq!(page.get(c), 0);
        }
    }
}
