//! The pair's status page: a small shared memfd of counters that both replicas update and
//! the supervisor reads for its status line and report, without any message passing.
//!
//! Layout: [`Counter::COUNT`] little-endian `u64` atomics at index `Counter as usize`; the
//! rest of the page is zero. Every process maps it read-write; each counter has one writer.

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
}

impl Counter {
    /// How many counters there are.
    pub const COUNT: usize = Counter::Diverged as usize + 1;
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
        // SAFETY: the page is PAGE bytes, page-aligned, and COUNT * 8 < PAGE; AtomicU64 has
        // u64's layout and every access to the page is atomic.
        unsafe { &*(self.map.ptr().cast::<AtomicU64>().add(c as usize)) }
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
}
