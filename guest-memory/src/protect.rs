//! The program's page protections as the syscall layer checks them.
//!
//! Guest page tables are built once with 2 MiB pages and never changed (DESIGN.md §4), so
//! nothing in the MMU stops the VMM from copying into a page the program made read-only,
//! PROT_NONE, or never mapped. Linux's `copy_to_user`/`copy_from_user` fault there, and
//! the syscall fails with EFAULT (or returns the bytes it copied before the fault). This
//! table is what makes ditto do the same: one byte per 4 KiB page of guest memory, kept
//! equal to the mapping table (`devices::vma`, which mirrors every change into it), read
//! with one relaxed atomic load per page a buffer spans, so the check on every syscall
//! buffer costs no lock.
//!
//! The same table sets the host protection of the guest mapping (`with_host`): the guest
//! address space is much larger than the memory the program may commit, and the page
//! tables let the program touch all of it, so the host mapping is what keeps a page the
//! program has not mapped, or mapped PROT_NONE, from costing host memory (and a page it
//! mapped read-only from being written): KVM cannot fault such a page in, and the access
//! kills the program (`docs/pair.md`, Address space and memory).

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

/// The page size protections are kept at (the program's page size).
const PAGE_SHIFT: u32 = 12;

/// The access the VMM makes to program memory on the program's behalf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The kernel reads it (write()'s buffer, a path, an in-parameter).
    Read,
    /// The kernel writes it (read()'s buffer, an out-parameter).
    Write,
}

impl Access {
    fn bit(self) -> u8 {
        match self {
            Access::Read => READ,
            Access::Write => WRITE,
        }
    }
}

const READ: u8 = 1;
const WRITE: u8 = 2;

/// The access bits of a mapping with Linux protection `prot`. On x86-64 without
/// protection keys (ditto's hosts: no `pku`) every mapped protection but PROT_NONE is
/// readable, PROT_WRITE and PROT_EXEC included.
fn bits(prot: u32) -> u8 {
    let mut b = 0;
    if prot & (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u32 != 0 {
        b |= READ;
    }
    if prot & libc::PROT_WRITE as u32 != 0 {
        b |= WRITE;
    }
    b
}

/// One access byte per page of guest memory; a fresh table has every page unmapped.
pub struct PageProt {
    pages: Box<[AtomicU8]>,
    host: Option<HostMirror>,
}

/// The host mapping whose protections follow the table, and the part of it that is
/// the program's (the system area and the VMM's top pages stay as they are).
#[derive(Debug)]
struct HostMirror {
    /// 0 once the mapping is gone (`detach_host`).
    base: std::sync::atomic::AtomicUsize,
    /// Ranges the VMM itself uses through plain pointers (the det page): always host
    /// readable and writable, whatever the program does to the addresses.
    pinned: std::sync::Mutex<Vec<(u64, u64)>>,
    lo: u64,
    hi: u64,
}

/// The host protection that gives the program's accesses and no more: PROT_NONE for
/// unmapped and PROT_NONE pages, read-only unless the program may write.
fn host_prot(prot: u32) -> libc::c_int {
    match bits(prot) {
        0 => libc::PROT_NONE,
        b if b & WRITE != 0 => libc::PROT_READ | libc::PROT_WRITE,
        _ => libc::PROT_READ,
    }
}

impl std::fmt::Debug for PageProt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PageProt({} pages)", self.pages.len())
    }
}

impl PageProt {
    /// A table for `size` bytes of guest memory, nothing accessible.
    pub fn new(size: u64) -> Self {
        PageProt {
            pages: zeroed_pages((size >> PAGE_SHIFT) as usize),
            host: None,
        }
    }

    /// A table whose changes also set the host protection of `[lo, hi)` of the host
    /// mapping at `base` (guest address 0), which starts as unmapped: PROT_NONE.
    ///
    /// # Safety
    /// `base` must be a host mapping of at least `hi` bytes until `detach_host` is called,
    /// and its pages in `[lo, hi)` hold nothing but program memory.
    pub unsafe fn with_host(size: u64, base: *mut u8, lo: u64, hi: u64) -> Self {
        let t = PageProt {
            pages: zeroed_pages((size >> PAGE_SHIFT) as usize),
            host: Some(HostMirror {
                base: (base as usize).into(),
                pinned: Default::default(),
                lo,
                hi,
            }),
        };
        t.set_host(lo, hi, 0);
        t
    }

    /// Gives the host pages of `[start, end)` (clamped to the program's part) the host
    /// protection of `prot`. The host may refuse (its limit on mappings; a shared mapping
    /// of a file opened read-only made writable): the old protection stays, so such a
    /// page faults as before, as it does natively where the mprotect would have failed.
    fn set_host(&self, start: u64, end: u64, prot: u32) {
        let Some(h) = &self.host else {
            return;
        };
        let base = h.base.load(Relaxed);
        if base == 0 {
            return;
        }
        for (start, end) in self.unpinned(start, end) {
            // SAFETY: [start, end) lies inside the host mapping (with_host's contract),
            // holds only program memory, whose protection is the program's to choose, and
            // none of the VMM's pinned pages; the VMM's own accesses to it go through
            // safecopy, which turns a fault into EFAULT.
            let r = unsafe {
                libc::mprotect(
                    (base + start as usize) as *mut libc::c_void,
                    (end - start) as usize,
                    host_prot(prot),
                )
            };
            if r != 0 {
                tracing::debug!(
                    "host mprotect {start:#x}..{end:#x}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }

    /// The parts of `[start, end)` (page-aligned outwards, clamped to the program's part
    /// of the host mapping) that are not pinned: the ranges whose host pages follow the
    /// program's mappings. All of it when the table sets no host protections.
    pub fn unpinned(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let start = start & !((1 << PAGE_SHIFT) - 1);
        let Some(h) = &self.host else {
            return if start < end {
                vec![(start, end)]
            } else {
                vec![]
            };
        };
        let (start, end) = (start.max(h.lo), end.min(h.hi));
        let mut out = Vec::new();
        let mut at = start;
        let mut pins = h.pinned.lock().unwrap_or_else(|e| e.into_inner()).clone();
        pins.sort_unstable();
        for (ps, pe) in pins {
            if pe <= at || ps >= end {
                continue;
            }
            if ps > at {
                out.push((at, ps));
            }
            at = at.max(pe);
        }
        if at < end {
            out.push((at, end));
        }
        out
    }

    /// Keeps `[start, end)` host readable and writable from now on (the VMM's own pages
    /// among the program's addresses: the det page).
    pub fn pin(&self, start: u64, end: u64) {
        if let Some(h) = &self.host {
            h.pinned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((start, end));
        }
    }

    /// Stops changing host protections: the host mapping is about to go.
    pub fn detach_host(&self) {
        if let Some(h) = &self.host {
            h.base.store(0, Relaxed);
        }
    }

    /// Sets the pages of `[start, end)` to protection `prot` (0: unmapped or PROT_NONE).
    /// Both ends are rounded out to pages; pages past guest memory are ignored. Callers
    /// set each range once to its final protection: a page that stays accessible must
    /// never pass through PROT_NONE on the host, where another thread may be using it.
    pub fn set(&self, start: u64, end: u64, prot: u32) {
        self.set_host(start, end, prot);
        let b = bits(prot);
        let first = (start >> PAGE_SHIFT) as usize;
        let last = (end.saturating_add((1 << PAGE_SHIFT) - 1) >> PAGE_SHIFT) as usize;
        for p in self
            .pages
            .get(first..last.min(self.pages.len()))
            .unwrap_or(&[])
        {
            p.store(b, Relaxed);
        }
    }

    /// How many bytes from `gva` on (at most `len`) allow `access`: the part of a buffer
    /// a Linux copy would get through before it faults.
    pub fn prefix(&self, gva: u64, len: u64, access: Access) -> u64 {
        let bit = access.bit();
        let end = gva.saturating_add(len);
        let mut page = gva >> PAGE_SHIFT;
        let mut ok_to = gva;
        while ok_to < end {
            match self.pages.get(page as usize) {
                Some(p) if p.load(Relaxed) & bit != 0 => {}
                _ => break,
            }
            page += 1;
            ok_to = page << PAGE_SHIFT;
        }
        ok_to.min(end) - gva
    }

    /// Whether all of `[gva, gva+len)` allows `access`.
    pub fn allows(&self, gva: u64, len: u64, access: Access) -> bool {
        self.prefix(gva, len, access) == len
    }
}

/// `n` zeroed access bytes, from zero-filled memory the host maps lazily: the table for a
/// large address space costs only the pages of it that hold mappings.
fn zeroed_pages(n: usize) -> Box<[AtomicU8]> {
    if n == 0 {
        return Box::new([]);
    }
    let layout = std::alloc::Layout::array::<AtomicU8>(n).expect("page table size");
    // SAFETY: a non-zero-sized layout; the result is checked below.
    let p = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<AtomicU8>();
    if p.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: `p` is a fresh allocation of `n` AtomicU8 with the global allocator's
    // layout for that array, all zero, which is a valid AtomicU8; the Box frees it with
    // the same layout.
    unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: u32 = libc::PROT_READ as u32;
    const RW: u32 = (libc::PROT_READ | libc::PROT_WRITE) as u32;

    #[test]
    fn prefixes_stop_at_the_first_page_without_the_access() {
        let t = PageProt::new(16 << 12);
        t.set(0x1000, 0x3000, RW);
        t.set(0x3000, 0x4000, R);
        assert_eq!(t.prefix(0x1800, 0x1000, Access::Write), 0x1000);
        assert_eq!(t.prefix(0x1800, 0x4000, Access::Write), 0x1800);
        assert_eq!(t.prefix(0x1800, 0x4000, Access::Read), 0x2800);
        assert_eq!(t.prefix(0x3000, 8, Access::Write), 0);
        assert_eq!(t.prefix(0x0ff8, 16, Access::Read), 0);
        assert!(t.allows(0x3ff8, 8, Access::Read));
        assert!(!t.allows(0x3ff8, 9, Access::Read));
        assert!(t.allows(0x5000, 0, Access::Write));
        t.set(0x2000, 0x3000, 0);
        assert_eq!(t.prefix(0x1000, 0x3000, Access::Read), 0x1000);
    }

    #[test]
    fn past_guest_memory_is_never_accessible() {
        let t = PageProt::new(4 << 12);
        t.set(0, 1 << 40, RW);
        assert_eq!(t.prefix(0x3000, 0x2000, Access::Write), 0x1000);
        assert_eq!(t.prefix(u64::MAX - 4, 4, Access::Read), 0);
    }

    #[test]
    fn write_and_exec_imply_read() {
        let t = PageProt::new(4 << 12);
        t.set(0, 0x1000, libc::PROT_WRITE as u32);
        t.set(0x1000, 0x2000, libc::PROT_EXEC as u32);
        assert!(t.allows(0, 0x2000, Access::Read));
        assert!(!t.allows(0x1000, 1, Access::Write));
    }
}
