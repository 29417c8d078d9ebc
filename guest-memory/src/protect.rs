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
}

impl std::fmt::Debug for PageProt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PageProt({} pages)", self.pages.len())
    }
}

impl PageProt {
    /// A table for `size` bytes of guest memory, nothing accessible.
    pub fn new(size: u64) -> Self {
        let n = (size >> PAGE_SHIFT) as usize;
        PageProt {
            pages: (0..n).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    /// Sets the pages of `[start, end)` to protection `prot` (0: unmapped or PROT_NONE).
    /// Both ends are rounded out to pages; pages past guest memory are ignored.
    pub fn set(&self, start: u64, end: u64, prot: u32) {
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
