//! The table of the program's mappings (VMAs), as `/proc/self/maps` shows them and as
//! `/proc/self/mem` and mremap consult them.
//!
//! The allocator in `address_space` only knows which ranges are free; this table knows
//! what each used range is: protection, shared or private, the file behind it and a name
//! (`[heap]`, `[stack]`). It is a pure function of the program's calls, so replicas agree.
//! VMM-owned pages (the system area below `USER_START`, the doorbell pages above the
//! stack) are never entered.
//!
//! Every change is mirrored into the page-protection table the guest memory checks
//! syscall buffers against (`guest_memory::protect`), so that table cannot drift from
//! this one: the three mutators below are the only way in.

use std::collections::BTreeMap;
use std::sync::Arc;

use guest_memory::PageProt;

/// The file behind a file mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmaFile {
    /// Host device number (st_dev), shown as MAJ:MIN.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// File offset of the mapping's first byte.
    pub offset: u64,
    /// The guest's path of the file.
    pub path: Vec<u8>,
}

/// One mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vma {
    /// One past the last byte.
    pub end: u64,
    /// PROT_READ | PROT_WRITE | PROT_EXEC bits.
    pub prot: u32,
    /// MAP_SHARED (the `s` of maps).
    pub shared: bool,
    /// The file, for file mappings.
    pub file: Option<VmaFile>,
    /// A name for anonymous memory: `[heap]`, `[stack]`.
    pub name: Option<&'static str>,
}

/// Whether a mapping with these properties commits memory, as Linux counts it under
/// strict overcommit (`Committed_AS`): private writable mappings, file-backed or not, and
/// shared anonymous ones (shmem). A PROT_NONE reservation, a read-only mapping and a
/// shared file mapping (the file's pages) commit nothing.
pub fn commits(prot: u32, shared: bool, anonymous: bool) -> bool {
    prot & libc::PROT_WRITE as u32 != 0 && (!shared || anonymous)
}

impl Vma {
    /// Anonymous memory.
    pub fn anon(end: u64, prot: u32, shared: bool, name: Option<&'static str>) -> Vma {
        Vma {
            end,
            prot,
            shared,
            file: None,
            name,
        }
    }

    /// Whether this mapping commits memory (see [`commits`]).
    pub fn commits(&self) -> bool {
        commits(self.prot, self.shared, self.file.is_none())
    }

    /// The same mapping cut to start at `at` (`start` is this one's start).
    fn tail(&self, start: u64, at: u64) -> Vma {
        let mut v = self.clone();
        if let Some(f) = &mut v.file {
            f.offset = f.offset.saturating_add(at - start);
        }
        v
    }

    /// Whether `next`, starting at `self.end`, continues this mapping.
    fn continues(&self, start: u64, next: &Vma) -> bool {
        if self.prot != next.prot || self.shared != next.shared || self.name != next.name {
            return false;
        }
        match (&self.file, &next.file) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.dev == b.dev
                    && a.ino == b.ino
                    && a.path == b.path
                    && a.offset.checked_add(self.end - start) == Some(b.offset)
            }
            _ => false,
        }
    }
}

/// The table: start -> mapping, non-overlapping, neighbours merged where Linux would.
#[derive(Clone, Debug, Default)]
pub struct VmaTable {
    map: BTreeMap<u64, Vma>,
    /// The guest memory's protection table, kept equal to `map` once attached.
    mirror: Option<Arc<PageProt>>,
    /// Bytes of the mappings that commit memory (see [`commits`]), kept by the mutators.
    committed: u64,
}

impl VmaTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Mirrors this table into `prot` from now on (it starts with nothing mapped).
    pub fn mirror_into(&mut self, prot: Arc<PageProt>) {
        for (&s, v) in &self.map {
            prot.set(s, v.end, v.prot);
        }
        self.mirror = Some(prot);
    }

    /// Copies the protections of `[start, end)` into the mirror: unmapped where no
    /// mapping is. Each piece is set once, to its final protection (the mirror also sets
    /// the host's, and a page that stays mapped must not pass through PROT_NONE).
    fn sync(&self, start: u64, end: u64) {
        let Some(t) = &self.mirror else {
            return;
        };
        let from = self
            .map
            .range(..start)
            .next_back()
            .map_or(start, |(&s, _)| s);
        let mut at = start;
        for (&s, v) in self.map.range(from..end) {
            if v.end <= start {
                continue;
            }
            if s > at {
                t.set(at, s, 0);
            }
            let piece_end = v.end.min(end);
            t.set(s.max(start), piece_end, v.prot);
            at = piece_end;
        }
        if at < end {
            t.set(at, end, 0);
        }
    }

    /// Sets the mirror's protections of `[start, end)` from the table again, after the
    /// host protection there was changed for a moment (mremap's move).
    pub fn refresh(&self, start: u64, end: u64) {
        self.sync(start, end);
    }

    /// Splits the mapping that straddles `at`, if any, so that `at` is a boundary.
    fn split_at(&mut self, at: u64) {
        let Some((&s, v)) = self.map.range(..at).next_back() else {
            return;
        };
        if v.end <= at {
            return;
        }
        let tail = v.tail(s, at);
        if let Some(head) = self.map.get_mut(&s) {
            head.end = at;
        }
        self.map.insert(at, tail);
    }

    /// Removes whatever lies in `[start, end)` (munmap, and before a new mapping).
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        self.committed -= self.committed_in(start, end);
        self.split_at(start);
        self.split_at(end);
        let inside: Vec<u64> = self.map.range(start..end).map(|(&s, _)| s).collect();
        for s in inside {
            self.map.remove(&s);
        }
        self.sync(start, end);
    }

    /// Enters a mapping at `[start, vma.end)`, replacing what was there.
    pub fn insert(&mut self, start: u64, vma: Vma) {
        if start >= vma.end {
            return;
        }
        let end = vma.end;
        self.remove(start, end);
        if vma.commits() {
            self.committed += end - start;
        }
        self.map.insert(start, vma);
        self.merge_around(start, end);
        self.sync(start, end);
    }

    /// Sets the protection of the mapped parts of `[start, end)` (mprotect).
    pub fn protect(&mut self, start: u64, end: u64, prot: u32) {
        if start >= end {
            return;
        }
        let before = self.committed_in(start, end);
        self.split_at(start);
        self.split_at(end);
        for (_, v) in self.map.range_mut(start..end) {
            v.prot = prot;
        }
        self.committed = self.committed - before + self.committed_in(start, end);
        self.merge_around(start, end);
        self.sync(start, end);
    }

    /// Merges mappings from the one before `start` to the one at `end`.
    fn merge_around(&mut self, start: u64, end: u64) {
        let from = self
            .map
            .range(..start)
            .next_back()
            .map_or(start, |(&s, _)| s);
        let starts: Vec<u64> = self.map.range(from..=end).map(|(&s, _)| s).collect();
        let mut cur: Option<u64> = None;
        for s in starts {
            if let Some(c) = cur {
                let joined = match (self.map.get(&c), self.map.get(&s)) {
                    (Some(a), Some(b)) if a.end == s && a.continues(c, b) => Some(b.end),
                    _ => None,
                };
                if let Some(new_end) = joined {
                    self.map.remove(&s);
                    if let Some(a) = self.map.get_mut(&c) {
                        a.end = new_end;
                    }
                    continue;
                }
            }
            cur = Some(s);
        }
    }

    /// Bytes of all mappings that commit memory.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Bytes of `[start, end)` whose mappings commit memory.
    pub fn committed_in(&self, start: u64, end: u64) -> u64 {
        self.committed_in_as(start, end, None)
    }

    /// Bytes of `[start, end)` whose mappings would commit memory with protection
    /// `prot` instead of their own (`None`: their own), for the check before mprotect.
    pub fn committed_in_as(&self, start: u64, end: u64, prot: Option<u32>) -> u64 {
        if start >= end {
            return 0;
        }
        let from = self
            .map
            .range(..start)
            .next_back()
            .map_or(start, |(&s, _)| s);
        self.map
            .range(from..end)
            .filter(|(_, v)| {
                v.end > start && commits(prot.unwrap_or(v.prot), v.shared, v.file.is_none())
            })
            .map(|(&s, v)| v.end.min(end) - s.max(start))
            .sum()
    }

    /// Whether every byte of `[start, end)` is mapped.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return true;
        }
        let mut at = start;
        if let Some((_, v)) = self.map.range(..=at).next_back() {
            if v.end > at {
                at = v.end;
            }
        }
        while at < end {
            match self.map.get(&at) {
                Some(v) => at = v.end,
                None => return false,
            }
        }
        true
    }

    /// How many bytes from `start` on are mapped without a gap (at most `max`).
    pub fn contiguous_from(&self, start: u64, max: u64) -> u64 {
        self.contiguous_while(start, max, |_| true)
    }

    /// Like [`contiguous_from`](Self::contiguous_from), stopping also at the first mapping
    /// `ok` refuses.
    pub fn contiguous_while(&self, start: u64, max: u64, ok: impl Fn(&Vma) -> bool) -> u64 {
        let limit = start.saturating_add(max);
        let mut at = start;
        match self.map.range(..=at).next_back() {
            Some((_, v)) if v.end > at && ok(v) => at = v.end,
            _ => return 0,
        }
        while at < limit {
            match self.map.get(&at) {
                Some(v) if ok(v) => at = v.end,
                _ => break,
            }
        }
        at.min(limit) - start
    }

    /// The mappings in address order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Vma)> {
        self.map.iter().map(|(&s, v)| (s, v))
    }

    /// Bytes mapped, and bytes mapped with some access (the resident set ditto reports).
    pub fn totals(&self) -> (u64, u64) {
        self.map.iter().fold((0, 0), |(all, acc), (&s, v)| {
            let n = v.end - s;
            (all + n, if v.prot != 0 { acc + n } else { acc })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: u32 = (libc::PROT_READ | libc::PROT_WRITE) as u32;
    const R: u32 = libc::PROT_READ as u32;

    #[test]
    fn split_protect_merge_and_remove() {
        let mut t = VmaTable::new();
        t.insert(0x10000, Vma::anon(0x14000, RW, false, None));
        t.protect(0x11000, 0x12000, R);
        assert_eq!(t.iter().count(), 3);
        t.protect(0x11000, 0x12000, RW);
        assert_eq!(t.iter().count(), 1);
        t.remove(0x11000, 0x12000);
        assert_eq!(t.iter().count(), 2);
        assert!(!t.covers(0x10000, 0x14000));
        assert!(t.covers(0x12000, 0x14000));
        assert_eq!(t.contiguous_from(0x10800, 0x10000), 0x800);
        assert_eq!(t.contiguous_from(0x11000, 0x10000), 0);
    }

    #[test]
    fn the_mirror_follows_every_change() {
        use guest_memory::Access;
        let mut t = VmaTable::new();
        t.insert(0x10000, Vma::anon(0x14000, RW, false, None));
        let m = Arc::new(PageProt::new(1 << 20));
        t.mirror_into(Arc::clone(&m));
        assert!(m.allows(0x10000, 0x4000, Access::Write));
        t.protect(0x11000, 0x12000, R);
        assert_eq!(m.prefix(0x10000, 0x4000, Access::Write), 0x1000);
        assert!(m.allows(0x10000, 0x4000, Access::Read));
        t.protect(0x12000, 0x13000, 0);
        assert_eq!(m.prefix(0x10000, 0x4000, Access::Read), 0x2000);
        t.remove(0x13000, 0x14000);
        assert!(!m.allows(0x13000, 1, Access::Read));
        // mprotect of a hole leaves it unmapped.
        t.protect(0x13000, 0x15000, RW);
        assert!(!m.allows(0x13000, 1, Access::Read));
        t.insert(0x13000, Vma::anon(0x15000, RW, false, None));
        assert!(m.allows(0x13000, 0x2000, Access::Write));
    }

    /// The commit count follows every change: private writable and shared anonymous
    /// mappings commit, reservations, read-only and shared file mappings do not.
    #[test]
    fn committed_bytes_follow_every_change() {
        let mut t = VmaTable::new();
        t.insert(0x10000, Vma::anon(0x20000, 0, false, None));
        assert_eq!(t.committed(), 0, "a reservation");
        t.protect(0x11000, 0x13000, RW);
        assert_eq!(t.committed(), 0x2000);
        assert_eq!(t.committed_in_as(0x10000, 0x20000, Some(RW)), 0x10000);
        assert_eq!(t.committed_in_as(0x10000, 0x20000, Some(R)), 0);
        t.insert(0x30000, Vma::anon(0x31000, RW, true, None));
        assert_eq!(t.committed(), 0x3000, "shared anonymous");
        let f = VmaFile {
            dev: 1,
            ino: 2,
            offset: 0,
            path: b"/f".to_vec(),
        };
        let file = |shared| Vma {
            end: 0x42000,
            prot: RW,
            shared,
            file: Some(f.clone()),
            name: None,
        };
        t.insert(0x40000, file(true));
        assert_eq!(t.committed(), 0x3000, "shared file");
        t.insert(0x40000, file(false));
        assert_eq!(t.committed(), 0x5000, "private file, writable");
        t.remove(0x12000, 0x41000);
        assert_eq!(t.committed(), 0x2000);
        assert_eq!(t.committed_in(0x10000, 0x50000), t.committed());
    }

    #[test]
    fn file_offsets_follow_splits() {
        let mut t = VmaTable::new();
        let f = VmaFile {
            dev: 1,
            ino: 2,
            offset: 0x1000,
            path: b"/f".to_vec(),
        };
        t.insert(
            0x20000,
            Vma {
                end: 0x23000,
                prot: R,
                shared: false,
                file: Some(f),
                name: None,
            },
        );
        t.remove(0x21000, 0x22000);
        let v: Vec<_> = t
            .iter()
            .map(|(s, v)| (s, v.file.clone().unwrap().offset))
            .collect();
        assert_eq!(v, vec![(0x20000, 0x1000), (0x22000, 0x3000)]);
    }
}
