//! The deterministic address-space allocator behind brk, mmap, munmap and mremap.
//!
//! Guest memory is identity-mapped with fixed page tables, so "mapping" memory only
//! means choosing addresses. The choice is a pure function of the sequence of calls,
//! so two replicas that make the same calls get the same addresses (no ASLR).
//!
//! The address space is larger than the memory the program may use (`--memory`), as on
//! Linux: reserving addresses costs nothing, committing memory is limited. The limit is
//! Linux's strict overcommit (`vm.overcommit_memory=2`) with `--memory` as CommitLimit:
//! a mapping, mprotect, brk or mremap that would take the memory committed by the
//! program's mappings (`vma::commits`) past it fails with ENOMEM. The count is a
//! function of the calls too, so replicas agree on every ENOMEM.
//!
//! Layout of the program part of guest memory:
//! ```text
//! USER_START .. image_end      ELF images (program, interpreter)
//! brk_start  .. brk_limit      the heap that brk grows
//! brk_limit  .. stack_bottom   mmap area, handed out top-down, first fit
//! stack_bottom .. size         main thread stack
//! ```

use std::collections::BTreeMap;

use crate::errno::Errno;
use crate::vma::{Vma, VmaTable};

const RW: u32 = (libc::PROT_READ | libc::PROT_WRITE) as u32;

/// Page size the program sees.
pub const PAGE_SIZE: u64 = 4096;

/// Rounds up to a page boundary (saturating, callers check ranges afterwards).
pub fn page_up(x: u64) -> u64 {
    x.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

/// Errors from laying out the address space.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// The program image leaves no room for heap, mmap area and stack.
    #[error("guest memory too small: program image ends at {image_end:#x}, memory is {size:#x}")]
    TooSmall {
        /// End of the loaded images.
        image_end: u64,
        /// Guest memory size.
        size: u64,
    },
}

/// Where the heap, mmap area and stack are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// First byte of the heap.
    pub brk_start: u64,
    /// The heap may not grow past this.
    pub brk_limit: u64,
    /// Lowest address of the main thread's stack.
    pub stack_bottom: u64,
    /// One past the highest guest address.
    pub top: u64,
}

impl Layout {
    /// Splits memory above `image_end`: 8 MiB of stack at the top, an eighth of the
    /// rest for brk, and everything between for mmap.
    pub fn new(image_end: u64, size: u64, stack_size: u64) -> Result<Layout, LayoutError> {
        let brk_start = page_up(image_end);
        let stack_bottom = size.saturating_sub(stack_size);
        if stack_bottom <= brk_start + (16 << 20) {
            return Err(LayoutError::TooSmall { image_end, size });
        }
        let brk_limit = page_up(brk_start + (stack_bottom - brk_start) / 8);
        Ok(Layout {
            brk_start,
            brk_limit,
            stack_bottom,
            top: size,
        })
    }
}

/// The allocator state.
#[derive(Debug)]
pub struct AddressSpace {
    layout: Layout,
    /// Bytes the program's mappings may commit (`--memory`).
    commit_limit: u64,
    brk: u64,
    /// Free ranges of the mmap area, start -> end. Always coalesced.
    free: BTreeMap<u64, u64>,
    /// What each used range is (for /proc/self/maps, /proc/self/mem and mremap).
    vmas: VmaTable,
}

impl AddressSpace {
    /// A fresh address space whose mmap area is entirely free and whose mappings may
    /// commit `commit_limit` bytes.
    pub fn new(layout: Layout, commit_limit: u64) -> Self {
        let mut free = BTreeMap::new();
        free.insert(layout.brk_limit, layout.stack_bottom);
        let mut vmas = VmaTable::new();
        vmas.insert(
            layout.stack_bottom,
            Vma::anon(layout.top, RW, false, Some("[stack]")),
        );
        AddressSpace {
            layout,
            commit_limit,
            brk: layout.brk_start,
            free,
            vmas,
        }
    }

    /// The mapping table.
    pub fn vmas(&self) -> &VmaTable {
        &self.vmas
    }

    /// The mapping table, for the calls that change mappings.
    pub fn vmas_mut(&mut self) -> &mut VmaTable {
        &mut self.vmas
    }

    /// The layout this space was built with.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Bytes the program's mappings may commit.
    pub fn commit_limit(&self) -> u64 {
        self.commit_limit
    }

    /// Bytes the program's mappings commit now.
    pub fn committed(&self) -> u64 {
        self.vmas.committed()
    }

    /// Whether a change that commits `add` bytes and releases `sub` fits the limit:
    /// ENOMEM if it would take the total past it (a change that commits no more than it
    /// releases always fits, even above a limit the initial images already exceed).
    pub fn check_commit(&self, add: u64, sub: u64) -> Result<(), Errno> {
        if add <= sub {
            return Ok(());
        }
        let after = self.committed().saturating_sub(sub).saturating_add(add);
        if after > self.commit_limit {
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }

    /// Current program break.
    pub fn brk(&self) -> u64 {
        self.brk
    }

    /// brk(2): returns the new break; an impossible request leaves it unchanged, as
    /// Linux does. The second value is the range the caller must zero (a shrink), if any.
    pub fn set_brk(&mut self, want: u64) -> (u64, Option<(u64, u64)>) {
        if want < self.layout.brk_start || want > self.layout.brk_limit {
            return (self.brk, None);
        }
        let old = self.brk;
        let (new_end, old_end) = (page_up(want), page_up(old));
        if self
            .check_commit(new_end.saturating_sub(old_end), 0)
            .is_err()
        {
            return (old, None);
        }
        self.brk = want;
        if new_end > old_end {
            self.vmas
                .insert(old_end, Vma::anon(new_end, RW, false, Some("[heap]")));
        } else {
            self.vmas.remove(new_end, old_end);
        }
        let released = (new_end < old_end).then_some((new_end, old_end));
        (want, released)
    }

    fn in_mmap_area(&self, start: u64, end: u64) -> bool {
        start >= self.layout.brk_limit && end <= self.layout.stack_bottom
    }

    /// Whether `[start, end)` is entirely free.
    pub fn is_free(&self, start: u64, end: u64) -> bool {
        self.free
            .range(..=start)
            .next_back()
            .is_some_and(|(&s, &e)| s <= start && end <= e)
    }

    /// Allocates `len` bytes (page-aligned) for a non-fixed mmap: the hint if it is
    /// free, else the highest free range that fits (top-down, like Linux).
    pub fn alloc(&mut self, len: u64, hint: u64) -> Result<u64, Errno> {
        let len = page_up(len);
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let hint = hint & !(PAGE_SIZE - 1);
        if hint != 0
            && hint
                .checked_add(len)
                .is_some_and(|end| self.is_free(hint, end))
        {
            self.carve(hint, hint + len);
            return Ok(hint);
        }
        let end = self
            .free
            .iter()
            .rev()
            .find(|(&s, &e)| e - s >= len)
            .map(|(_, &e)| e)
            .ok_or(Errno::ENOMEM)?;
        let start = end - len;
        self.carve(start, end);
        Ok(start)
    }

    /// Marks `[start, end)` as in use (MAP_FIXED, or an allocation). Parts outside
    /// the mmap area are not tracked, so this never fails.
    pub fn carve(&mut self, start: u64, end: u64) {
        let overlapping: Vec<(u64, u64)> = self
            .free
            .range(..end)
            .filter(|(_, &e)| e > start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping {
            self.free.remove(&s);
            if s < start {
                self.free.insert(s, start);
            }
            if e > end {
                self.free.insert(end, e);
            }
        }
    }

    /// Returns `[start, end)` to the free pool (the mmap-area part of it).
    pub fn release(&mut self, start: u64, end: u64) {
        let start = start.max(self.layout.brk_limit);
        let end = end.min(self.layout.stack_bottom);
        if start >= end {
            return;
        }
        self.carve(start, end);
        let mut s = start;
        let mut e = end;
        if let Some((&ps, &pe)) = self.free.range(..s).next_back() {
            if pe == s {
                self.free.remove(&ps);
                s = ps;
            }
        }
        if let Some(&ne) = self.free.get(&e) {
            self.free.remove(&e);
            e = ne;
        }
        self.free.insert(s, e);
    }

    /// Whether a fixed mapping at `[start, end)` would replace nothing we know is in
    /// use (MAP_FIXED_NOREPLACE). Outside the mmap area everything counts as in use.
    pub fn fixed_would_clobber(&self, start: u64, end: u64) -> bool {
        !(self.in_mmap_area(start, end) && self.is_free(start, end))
    }

    /// Total free bytes in the mmap area.
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|(s, e)| e - s).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> AddressSpace {
        AddressSpace::new(Layout::new(0x40_0000, 1 << 30, 8 << 20).unwrap(), 1 << 30)
    }

    #[test]
    fn top_down_and_reuse() {
        let mut a = space();
        let top = a.layout().stack_bottom;
        let x = a.alloc(4096, 0).unwrap();
        assert_eq!(x, top - 4096);
        let y = a.alloc(8192, 0).unwrap();
        assert_eq!(y, x - 8192);
        a.release(x, x + 4096);
        assert_eq!(a.alloc(100, 0).unwrap(), x);
        let before = a.free_bytes();
        a.release(y, y + 8192);
        assert_eq!(a.free_bytes(), before + 8192);
    }

    #[test]
    fn coalescing_restores_one_range() {
        let mut a = space();
        let total = a.free_bytes();
        let v: Vec<u64> = (0..10).map(|_| a.alloc(4096 * 3, 0).unwrap()).collect();
        for (i, p) in v.iter().enumerate() {
            if i % 2 == 0 {
                a.release(*p, p + 4096 * 3);
            }
        }
        for (i, p) in v.iter().enumerate() {
            if i % 2 == 1 {
                a.release(*p, p + 4096 * 3);
            }
        }
        assert_eq!(a.free_bytes(), total);
        assert_eq!(a.free.len(), 1);
    }

    #[test]
    fn hint_and_fixed() {
        let mut a = space();
        let lo = a.layout().brk_limit;
        assert_eq!(a.alloc(4096, lo + 0x10000).unwrap(), lo + 0x10000);
        assert!(a.fixed_would_clobber(lo + 0x10000, lo + 0x11000));
        assert!(!a.fixed_would_clobber(lo + 0x20000, lo + 0x21000));
        a.carve(lo + 0x20000, lo + 0x21000);
        assert!(a.fixed_would_clobber(lo + 0x20000, lo + 0x21000));
        // The hint is taken, so the same hint now falls back to top-down.
        assert_ne!(a.alloc(4096, lo + 0x10000).unwrap(), lo + 0x10000);
    }

    #[test]
    fn brk_bounds() {
        let mut a = space();
        let l = a.layout();
        assert_eq!(a.set_brk(0).0, l.brk_start);
        assert_eq!(a.set_brk(l.brk_start + 10000).0, l.brk_start + 10000);
        assert_eq!(a.set_brk(l.brk_limit + 1).0, l.brk_start + 10000);
        let (b, released) = a.set_brk(l.brk_start + 10);
        assert_eq!(b, l.brk_start + 10);
        assert_eq!(released, Some((l.brk_start + 4096, l.brk_start + 12288)));
    }

    /// brk commits what it grows; past the limit it stays where it was, and giving
    /// memory back makes room again.
    #[test]
    fn brk_is_bounded_by_the_commit_limit() {
        let l = Layout::new(0x40_0000, 1 << 30, 8 << 20).unwrap();
        let mut a = AddressSpace::new(l, (8 << 20) + (1 << 20));
        assert_eq!(a.committed(), 8 << 20, "the stack");
        let b = l.brk_start;
        assert_eq!(a.set_brk(b + (1 << 20)).0, b + (1 << 20));
        assert_eq!(a.set_brk(b + (1 << 20) + 1).0, b + (1 << 20));
        assert_eq!(a.set_brk(b + 4096).0, b + 4096);
        assert_eq!(a.committed(), (8 << 20) + 4096);
        assert_eq!(a.check_commit(1 << 20, 0), Err(Errno::ENOMEM));
        assert_eq!(a.check_commit((1 << 20) - 4096, 0), Ok(()));
    }

    #[test]
    fn exhaustion_is_enomem() {
        let mut a = space();
        assert_eq!(a.alloc(1 << 40, 0).unwrap_err(), Errno::ENOMEM);
    }
}
