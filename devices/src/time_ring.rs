//! A pair's time rings (ditto.h, "A pair's time ring"; docs/pair.md, "Time in a pair"): one
//! ring of time values per thread, in guest memory the thread's vDSO reaches through its GS
//! base. On the primary the vDSO writes the values it computed and the VMM takes them at the
//! thread's next syscall; on the secondary the VMM writes the primary's values and the vDSO
//! takes them. This module owns the rings' memory and their indices; what the values mean to
//! the pair is `replication::time`'s.
//!
//! The rings are program-writable: a program that scribbles on its own ring only harms
//! itself, but the VMM must not trust what it finds there. It reads each index once, checks
//! that the count of values lies within the ring and that every value names a clock kind, and
//! turns anything else into a [`RingError`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::guest_mem::GuestMemory;
use det::abi::{
    DITTO_TRING_CAP, DITTO_TRING_GUEST, DITTO_TRING_KIND_SHIFT, DITTO_TRING_SELF, DITTO_TRING_SIZE,
    DITTO_TRING_SLOTS, DITTO_TRING_VMM,
};

use crate::sync::lock;

/// Values one ring holds.
pub const CAPACITY: u64 = DITTO_TRING_CAP;
/// Bytes one ring takes in guest memory.
pub const SIZE: u64 = DITTO_TRING_SIZE;

// The slots fit the ring's bytes.
const _: () = assert!(DITTO_TRING_SLOTS + 8 * DITTO_TRING_CAP <= DITTO_TRING_SIZE);

/// What the VMM found wrong in a ring.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The thread has no ring (it was never attached, or its memory is gone).
    #[error("thread {0} has no time ring")]
    NoRing(i64),
    /// The indices say more values than the ring holds, or fewer than none.
    #[error("time ring indices out of range (guest {guest}, vmm {vmm})")]
    BadIndices {
        /// The GUEST word found.
        guest: u64,
        /// The VMM word found.
        vmm: u64,
    },
    /// A value names no clock kind.
    #[error("time ring value {0:#x} names no clock")]
    BadValue(u64),
    /// More values to place than the ring has free slots.
    #[error("{0} time values do not fit the ring")]
    TooMany(usize),
}

/// One thread's ring: its words in guest memory.
struct Ring {
    words: &'static [AtomicU64],
}

impl Ring {
    fn word(&self, off: u64) -> &AtomicU64 {
        &self.words[(off / 8) as usize]
    }

    fn slot(&self, i: u64) -> &AtomicU64 {
        &self.words[((DITTO_TRING_SLOTS / 8) + i % CAPACITY) as usize]
    }
}

/// The clock kind of a ring value (1 MONOTONIC, 2 REALTIME, 3 BOOTTIME).
pub fn kind_of(value: u64) -> u64 {
    value >> DITTO_TRING_KIND_SHIFT
}

/// The nanoseconds of a ring value.
pub fn ns_of(value: u64) -> u64 {
    value & ((1 << DITTO_TRING_KIND_SHIFT) - 1)
}

/// The rings of a process's threads, by host-side thread id.
#[derive(Default)]
pub struct TimeRings {
    by_tid: Mutex<HashMap<i64, Ring>>,
}

impl TimeRings {
    /// Gives thread `tid` the ring at guest address `gva` (inside `mem`), empty. Its GS base
    /// must name `gva` before the thread runs. False when `gva` is not a ring's worth of
    /// 8-byte aligned guest memory.
    pub fn attach(&self, mem: &GuestMemory, tid: i64, gva: u64) -> bool {
        let Some(host) = mem
            .system_range(gva, SIZE)
            .filter(|p| (*p as usize).is_multiple_of(8))
        else {
            return false;
        };
        // SAFETY: `SIZE` bytes of guest memory, 8-byte aligned (checked), which stay mapped
        // as long as the process that owns both them and these rings; only ever accessed
        // through atomics here, and by the guest, which may write anything (every read is
        // checked).
        let words =
            unsafe { std::slice::from_raw_parts(host as *const AtomicU64, (SIZE / 8) as usize) };
        let ring = Ring { words };
        ring.word(DITTO_TRING_GUEST).store(0, Ordering::Relaxed);
        ring.word(DITTO_TRING_VMM).store(0, Ordering::Relaxed);
        ring.word(DITTO_TRING_SELF).store(gva, Ordering::Release);
        lock(&self.by_tid).insert(tid, ring);
        true
    }

    /// Thread `tid` is gone: its ring is no longer watched (the vCPU's next thread gets it
    /// again, emptied).
    pub fn detach(&self, tid: i64) {
        lock(&self.by_tid).remove(&tid);
    }

    /// RECORD: the values thread `tid`'s vDSO wrote since the last take, in order; `use_them`
    /// runs with them (never empty) while the rings are locked, so that values of one thread
    /// reach it in order even when several threads take them.
    pub fn take(&self, tid: i64, use_them: impl FnOnce(&[u64])) -> Result<(), RingError> {
        let rings = lock(&self.by_tid);
        let ring = rings.get(&tid).ok_or(RingError::NoRing(tid))?;
        let values = take_from(ring)?;
        if !values.is_empty() {
            use_them(&values);
        }
        Ok(())
    }

    /// RECORD: [`take`](Self::take) for every thread, each thread's values given to
    /// `use_them` with its tid. The first error ends it (the rest stay for later).
    pub fn take_all(&self, mut use_them: impl FnMut(i64, &[u64])) -> Result<(), RingError> {
        let rings = lock(&self.by_tid);
        for (tid, ring) in rings.iter() {
            let values = take_from(ring)?;
            if !values.is_empty() {
                use_them(*tid, &values);
            }
        }
        Ok(())
    }

    /// REPLAY: the values placed in thread `tid`'s ring that its vDSO has not taken.
    pub fn left(&self, tid: i64) -> Result<u64, RingError> {
        let rings = lock(&self.by_tid);
        let ring = rings.get(&tid).ok_or(RingError::NoRing(tid))?;
        let (guest, vmm) = indices(ring);
        vmm.checked_sub(guest)
            .filter(|n| *n <= CAPACITY)
            .ok_or(RingError::BadIndices { guest, vmm })
    }

    /// REPLAY: places `values` (the primary's, in order) after those still in thread
    /// `tid`'s ring, and publishes them to its vDSO.
    pub fn fill(&self, tid: i64, values: &[u64]) -> Result<(), RingError> {
        let rings = lock(&self.by_tid);
        let ring = rings.get(&tid).ok_or(RingError::NoRing(tid))?;
        let (guest, vmm) = indices(ring);
        let held = vmm
            .checked_sub(guest)
            .filter(|n| *n <= CAPACITY)
            .ok_or(RingError::BadIndices { guest, vmm })?;
        if values.len() as u64 > CAPACITY - held {
            return Err(RingError::TooMany(values.len()));
        }
        for (i, v) in values.iter().enumerate() {
            ring.slot(vmm + i as u64).store(*v, Ordering::Relaxed);
        }
        ring.word(DITTO_TRING_VMM)
            .store(vmm + values.len() as u64, Ordering::Release);
        Ok(())
    }
}

/// The ring's (GUEST, VMM) words, each read once.
fn indices(ring: &Ring) -> (u64, u64) {
    (
        ring.word(DITTO_TRING_GUEST).load(Ordering::Acquire),
        ring.word(DITTO_TRING_VMM).load(Ordering::Relaxed),
    )
}

/// RECORD: the values between VMM and GUEST, checked, and VMM moved past them.
fn take_from(ring: &Ring) -> Result<Vec<u64>, RingError> {
    let (guest, vmm) = indices(ring);
    let n = guest
        .checked_sub(vmm)
        .filter(|n| *n <= CAPACITY)
        .ok_or(RingError::BadIndices { guest, vmm })?;
    let values: Vec<u64> = (vmm..guest)
        .map(|i| ring.slot(i).load(Ordering::Relaxed))
        .collect();
    if let Some(bad) = values.iter().find(|v| !(1..=3).contains(&kind_of(**v))) {
        return Err(RingError::BadValue(*bad));
    }
    debug_assert_eq!(values.len() as u64, n);
    ring.word(DITTO_TRING_VMM).store(guest, Ordering::Release);
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GVA: u64 = 0x10000;

    fn setup() -> (GuestMemory, TimeRings) {
        let mem = GuestMemory::new(4 << 20).unwrap();
        let rings = TimeRings::default();
        assert!(rings.attach(&mem, 7, GVA));
        (mem, rings)
    }

    /// What the vDSO does in RECORD mode.
    fn guest_writes(mem: &GuestMemory, values: &[u64]) {
        let g = mem.read_system_u64(GVA + DITTO_TRING_GUEST).unwrap();
        for (i, v) in values.iter().enumerate() {
            let slot = GVA + DITTO_TRING_SLOTS + ((g + i as u64) % CAPACITY) * 8;
            mem.write_system_u64(slot, *v);
        }
        mem.write_system_u64(GVA + DITTO_TRING_GUEST, g + values.len() as u64);
    }

    fn taken(rings: &TimeRings) -> Vec<u64> {
        let mut got = Vec::new();
        rings.take(7, |v| got.extend_from_slice(v)).unwrap();
        got
    }

    #[test]
    fn attach_names_the_ring_and_empties_it() {
        let (mem, _rings) = setup();
        assert_eq!(mem.read_system_u64(GVA + DITTO_TRING_SELF), Some(GVA));
        assert_eq!(mem.read_system_u64(GVA + DITTO_TRING_GUEST), Some(0));
        assert_eq!(mem.read_system_u64(GVA + DITTO_TRING_VMM), Some(0));
    }

    #[test]
    fn record_values_come_out_in_order_across_the_wrap() {
        let (mem, rings) = setup();
        let a: Vec<u64> = (0..CAPACITY).map(|i| 1 << 62 | i).collect();
        guest_writes(&mem, &a);
        assert_eq!(taken(&rings), a);
        let b: Vec<u64> = (0..10).map(|i| 2 << 62 | (1000 + i)).collect();
        guest_writes(&mem, &b);
        assert_eq!(taken(&rings), b);
        assert!(taken(&rings).is_empty(), "nothing twice");
    }

    #[test]
    fn garbage_in_a_ring_is_an_error_not_a_read() {
        let (mem, rings) = setup();
        mem.write_system_u64(GVA + DITTO_TRING_GUEST, CAPACITY + 1);
        assert!(matches!(
            rings.take(7, |_| panic!("no values")),
            Err(RingError::BadIndices { .. })
        ));
        mem.write_system_u64(GVA + DITTO_TRING_GUEST, 0);
        mem.write_system_u64(GVA + DITTO_TRING_VMM, 0);
        guest_writes(&mem, &[5]);
        assert_eq!(
            rings.take(7, |_| panic!("no values")),
            Err(RingError::BadValue(5))
        );
        assert_eq!(rings.take(8, |_| ()), Err(RingError::NoRing(8)));
    }

    #[test]
    fn replay_fills_behind_what_is_left_and_never_overflows() {
        let (mem, rings) = setup();
        rings.fill(7, &[1 << 62 | 1, 1 << 62 | 2]).unwrap();
        assert_eq!(rings.left(7), Ok(2));
        // The vDSO takes one.
        mem.write_system_u64(GVA + DITTO_TRING_GUEST, 1);
        assert_eq!(rings.left(7), Ok(1));
        let many = vec![1 << 62; CAPACITY as usize];
        assert_eq!(rings.fill(7, &many), Err(RingError::TooMany(many.len())));
        rings.fill(7, &many[1..]).unwrap();
        assert_eq!(rings.left(7), Ok(CAPACITY));
        assert_eq!(
            mem.read_system_u64(GVA + DITTO_TRING_SLOTS + 8),
            Some(1 << 62 | 2)
        );
    }
}
