//! The guest's physical memory: one host mapping, identity-mapped into the guest.
//!
//! Guest virtual == guest physical == offset into this mapping, so translating a guest
//! pointer is a bounds check plus an add. We keep our own small type instead of
//! vm-memory's `GuestMemoryMmap` (ARCHITECTURE.md has the whole evaluation):
//! - its `Bytes` accessors copy with `memcpy` or plain volatile loads and stores, so a
//!   program page that faults on the host (below) would kill the VMM with SIGBUS/SIGSEGV;
//!   only `safecopy`'s own routines can be fixed up to EFAULT;
//! - a program pointer is checked against a policy, not just the region's bounds: the
//!   system area below `USER_START`, the pages `reserve_top` keeps, and the zero-length
//!   rule of `user_bounds`; vm-memory would add a region lookup and remove none of these;
//! - file mappings are placed *into* this mapping with `MAP_FIXED`, which a region made
//!   with `MmapRegion::build_raw` (whose prot and flags must describe the whole mapping)
//!   does not model.
//!
//! Because of those file mappings a program page can fault on the host (past the file's
//! end, or read-only), so every copy the VMM itself makes goes through `safecopy` and
//! turns such a fault into EFAULT, as the kernel does for a native syscall.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::sync::Arc;

use crate::errno::Errno;
use crate::protect::{Access, PageProt};
use crate::safecopy::{self, GuestRange};

/// Guest addresses below this are the VMM's system area (NULL guard, GDT, IDT, TSS,
/// kernel stacks, CPL0 stubs, page tables). Program pointers into it get EFAULT, so a
/// program can never make the VMM overwrite its own CPU structures.
pub const USER_START: u64 = 2 << 20;

/// Errors from creating the guest mapping.
#[derive(Debug, thiserror::Error)]
pub enum GuestMemoryError {
    /// The requested size is not a non-zero multiple of 2 MiB.
    #[error("guest memory size {0:#x} must be a non-zero multiple of 2 MiB")]
    BadSize(u64),
    /// The host refused the mapping.
    #[error("cannot map {size} bytes of guest memory: {source}")]
    Map {
        /// Requested size.
        size: u64,
        /// The host error.
        source: std::io::Error,
    },
}

/// One contiguous host mapping that backs all guest memory.
pub struct GuestMemory {
    base: *mut u8,
    size: u64,
    /// End of the program-visible range: above it lie VMM pages the program must not
    /// replace (the doorbell shims and data pages; see `reserve_top`).
    user_end: u64,
    /// The program's page protections, once the syscall layer keeps them
    /// (`enforce_protections`); before that (loading, unit tests) only bounds count.
    prot: Option<Arc<PageProt>>,
    /// Makes faults on program pages inside the safe copy routines EFAULT.
    _range: GuestRange,
    /// The VMM's own /proc/self/mem, for the accesses that must pass the host protection
    /// of program pages as FOLL_FORCE passes the program's (`read_bytes_forced`).
    forced: Option<std::fs::File>,
}

// SAFETY: the mapping lives as long as the GuestMemory and is only accessed through raw
// pointers with explicit bounds checks; concurrent access from several vCPU threads is
// exactly what guest memory is (the guest itself races on it), and the VMM only uses
// fault-safe byte copies (safecopy) whose tearing is harmless to the VMM.
unsafe impl Send for GuestMemory {}
// SAFETY: see the Send impl above.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// Maps `size` bytes (MAP_NORESERVE, THP-advised) of zeroed guest memory.
    pub fn new(size: u64) -> Result<Self, GuestMemoryError> {
        if size == 0 || !size.is_multiple_of(USER_START) || size > (1 << 39) {
            return Err(GuestMemoryError::BadSize(size));
        }
        // SAFETY: a fresh anonymous mapping; we check the result before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(GuestMemoryError::Map {
                size,
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: advising our own fresh mapping; failure only loses a speed-up.
        unsafe { libc::madvise(base, size as usize, libc::MADV_HUGEPAGE) };
        Ok(GuestMemory {
            base: base as *mut u8,
            size,
            user_end: size,
            prot: None,
            _range: GuestRange::register(base as u64, size),
            // Opened now, before the VMM's threads take their seccomp filters; without it
            // (no /proc) a forced access meets the host protection and may be EFAULT.
            forced: std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/proc/self/mem")
                .ok(),
        })
    }

    /// Size of guest memory in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Host address of guest address 0 (for KVM's memory slot).
    pub fn host_base(&self) -> u64 {
        self.base as u64
    }

    /// Takes the top `len` bytes out of the program-visible range: the VMM keeps pages
    /// there that it reads concurrently (the doorbell pages), and a program pointer into
    /// them, or a file mapped over them with MAP_FIXED, would let the program break the
    /// VMM rather than itself. They stay reachable through `system_range`.
    pub fn reserve_top(&mut self, len: u64) {
        self.user_end = self.size.saturating_sub(len).max(USER_START);
    }

    /// From now on, checks every program access against the returned page table, which
    /// starts with nothing mapped; the caller keeps it equal to the program's mappings.
    ///
    /// The table also sets the host protection of the program's pages (`PageProt::
    /// with_host`): from here on a program page is host-accessible only as far as the
    /// program's mapping of it allows, so what the program can touch, and the host memory
    /// it can cost, is what it mapped.
    pub fn enforce_protections(&mut self) -> Arc<PageProt> {
        // SAFETY: the mapping holds `size` bytes and lives until Drop, which detaches
        // the table first; [USER_START, user_end) is the program's part of it.
        let t = Arc::new(unsafe {
            PageProt::with_host(self.size, self.base, USER_START, self.user_end)
        });
        self.prot = Some(Arc::clone(&t));
        t
    }

    /// Host pointer for the program range `[gva, gva+len)` when the program's mappings
    /// allow `access` on all of it, else EFAULT (as a Linux copy that faults).
    pub fn user_range(&self, gva: u64, len: u64, access: Access) -> Result<*mut u8, Errno> {
        let p = self.user_bounds(gva, len)?;
        match &self.prot {
            Some(t) if len != 0 && !t.allows(gva, len, access) => Err(Errno::EFAULT),
            _ => Ok(p),
        }
    }

    /// Host pointer and length for the part of `[gva, gva+len)` a Linux copy would get
    /// through before it faults: the calls that return a short count instead of EFAULT
    /// (read, write, recv, send...) use only that part. EFAULT when not even one byte is
    /// accessible (and `len` is not 0).
    pub fn user_prefix(&self, gva: u64, len: u64, access: Access) -> Result<(*mut u8, u64), Errno> {
        let n = self.accessible(gva, len, access);
        if n == 0 && len != 0 {
            return Err(Errno::EFAULT);
        }
        Ok((self.user_bounds(gva, n)?, n))
    }

    /// How many bytes from `gva` on (at most `len`) are program memory allowing `access`.
    pub fn accessible(&self, gva: u64, len: u64, access: Access) -> u64 {
        let len = len.min(self.user_end.saturating_sub(gva));
        if gva < USER_START || len == 0 {
            return 0;
        }
        match &self.prot {
            Some(t) => t.prefix(gva, len, access),
            None => len,
        }
    }

    /// Host pointer for the program-visible range `[gva, gva+len)`, or EFAULT, whatever
    /// the program's protections there: for the calls that change mappings (mmap,
    /// munmap, madvise) and for FOLL_FORCE access (/proc/self/mem).
    ///
    /// An empty range is valid anywhere (the kernel does the same: a zero-length read
    /// does not fault). Its pointer is never the mapping's base, which is guest
    /// physical 0, the system area: it is `gva`'s own host address when `gva` is in the
    /// program part of guest memory (so a host call sees the program's alignment, as
    /// madvise and msync check it), else a page-aligned dangling pointer outside the
    /// mapping, which the host faults on should it ever write there.
    pub fn user_bounds(&self, gva: u64, len: u64) -> Result<*mut u8, Errno> {
        if len == 0 {
            if (USER_START..=self.user_end).contains(&gva) {
                // SAFETY: gva <= user_end <= size: inside the mapping or one past its end.
                return Ok(unsafe { self.base.add(gva as usize) });
            }
            /// Aligned like a page, so the dangling pointer is too.
            #[repr(align(4096))]
            struct Page;
            return Ok(std::ptr::NonNull::<Page>::dangling().as_ptr() as *mut u8);
        }
        let end = gva.checked_add(len).ok_or(Errno::EFAULT)?;
        if gva < USER_START || end > self.user_end {
            return Err(Errno::EFAULT);
        }
        // SAFETY: gva < end <= size, so the offset stays inside the mapping.
        Ok(unsafe { self.base.add(gva as usize) })
    }

    /// Host pointer for a range anywhere in guest memory, including the system area.
    /// Only the VMM itself uses this, for the structures it builds.
    pub fn system_range(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        let end = gpa.checked_add(len)?;
        if end > self.size {
            return None;
        }
        // SAFETY: gpa <= end <= size.
        Some(unsafe { self.base.add(gpa as usize) })
    }

    /// Reads a plain-data value from a program address; EFAULT also when the page
    /// faults on the host (a file page past EOF).
    ///
    /// `T` must be plain data for which every bit pattern is valid (integers, arrays
    /// and repr(C) structs of them): the bytes come from the program.
    pub fn read_obj<T: Copy>(&self, gva: u64) -> Result<T, Errno> {
        let n = std::mem::size_of::<T>();
        let p = self.user_range(gva, n as u64, Access::Read)?;
        let mut v = std::mem::MaybeUninit::<T>::uninit();
        // SAFETY: the source range is inside the mapping (a host fault becomes an
        // error); the destination is our own n-byte value.
        unsafe { safecopy::copy(v.as_mut_ptr().cast::<u8>(), p, n)? };
        // SAFETY: all n bytes were written, and T is plain data (see above).
        Ok(unsafe { v.assume_init() })
    }

    /// Writes a plain-data value to a program address; EFAULT also when the page
    /// faults on the host (read-only or past EOF).
    pub fn write_obj<T: Copy>(&self, gva: u64, val: &T) -> Result<(), Errno> {
        let n = std::mem::size_of::<T>();
        let p = self.user_range(gva, n as u64, Access::Write)?;
        // SAFETY: the destination range is inside the mapping (a host fault becomes an
        // error); the source is the n bytes of `val`.
        unsafe { safecopy::copy(p, (val as *const T).cast::<u8>(), n)? };
        Ok(())
    }

    /// Copies `len` bytes out of program memory.
    pub fn read_bytes(&self, gva: u64, len: u64) -> Result<Vec<u8>, Errno> {
        self.read_bytes_as(gva, len, Some(Access::Read))
    }

    /// Copies `len` bytes out of program memory whatever its protection (FOLL_FORCE:
    /// /proc/self/mem, mremap's move); only the bounds are checked.
    pub fn read_bytes_forced(&self, gva: u64, len: u64) -> Result<Vec<u8>, Errno> {
        self.read_bytes_as(gva, len, None)
    }

    fn read_bytes_as(&self, gva: u64, len: u64, access: Option<Access>) -> Result<Vec<u8>, Errno> {
        let p = match access {
            Some(a) => self.user_range(gva, len, a)?,
            None => self.user_bounds(gva, len)?,
        };
        let mut v = vec![0u8; len as usize];
        if let (None, Some(f)) = (access, &self.forced) {
            // The host's FOLL_FORCE reads through PROT_NONE, as Linux's does for the
            // program's /proc/self/mem.
            use std::os::unix::fs::FileExt;
            f.read_exact_at(&mut v, p as u64)
                .map_err(|_| Errno::EFAULT)?;
            return Ok(v);
        }
        // SAFETY: source range checked above (a host fault becomes an error);
        // destination is a fresh Vec of len bytes.
        unsafe { safecopy::copy(v.as_mut_ptr(), p, len as usize)? };
        Ok(v)
    }

    /// Copies bytes into program memory.
    pub fn write_bytes(&self, gva: u64, data: &[u8]) -> Result<(), Errno> {
        self.write_bytes_as(gva, data, Some(Access::Write))
    }

    /// Copies bytes into program memory whatever its protection (FOLL_FORCE); a host
    /// read-only page (a shared file mapping opened read-only) is still EFAULT.
    pub fn write_bytes_forced(&self, gva: u64, data: &[u8]) -> Result<(), Errno> {
        self.write_bytes_as(gva, data, None)
    }

    fn write_bytes_as(&self, gva: u64, data: &[u8], access: Option<Access>) -> Result<(), Errno> {
        let len = data.len() as u64;
        let p = match access {
            Some(a) => self.user_range(gva, len, a)?,
            None => self.user_bounds(gva, len)?,
        };
        if let (None, Some(f)) = (access, &self.forced) {
            // The host's FOLL_FORCE writes through read-only protection (copy-on-write
            // for a private mapping), as Linux's does for the program's /proc/self/mem.
            use std::os::unix::fs::FileExt;
            f.write_all_at(data, p as u64).map_err(|_| Errno::EFAULT)?;
            return Ok(());
        }
        // SAFETY: destination range checked above (a host fault becomes an error).
        unsafe { safecopy::copy(p, data.as_ptr(), data.len())? };
        Ok(())
    }

    /// Copies bytes anywhere in guest memory (VMM-built structures).
    pub fn write_system(&self, gpa: u64, data: &[u8]) -> Option<()> {
        let p = self.system_range(gpa, data.len() as u64)?;
        // SAFETY: range checked by system_range.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        Some(())
    }

    /// Reads a u64 anywhere in guest memory (exception frames on kernel stacks).
    pub fn read_system_u64(&self, gpa: u64) -> Option<u64> {
        let p = self.system_range(gpa, 8)?;
        // SAFETY: range checked.
        Some(unsafe { std::ptr::read_unaligned(p as *const u64) })
    }

    /// Writes a u64 anywhere in guest memory.
    pub fn write_system_u64(&self, gpa: u64, val: u64) -> Option<()> {
        let p = self.system_range(gpa, 8)?;
        // SAFETY: range checked.
        unsafe { std::ptr::write_unaligned(p as *mut u64, val) };
        Some(())
    }

    /// Reads a NUL-terminated string of at most `max` bytes (ENAMETOOLONG beyond).
    pub fn read_cstring(&self, gva: u64, max: usize) -> Result<CString, Errno> {
        let mut out = Vec::new();
        let mut addr = gva;
        loop {
            // Read page by page so a string that ends just before unmapped space works.
            let page_left = 4096 - (addr % 4096);
            let p = self.user_range(addr, page_left, Access::Read)?;
            let mut page = [0u8; 4096];
            let chunk = &mut page[..page_left as usize];
            // SAFETY: the whole chunk was range-checked (a host fault becomes an error);
            // the destination is a local buffer of the same length.
            unsafe { safecopy::copy(chunk.as_mut_ptr(), p, chunk.len())? };
            if let Some(n) = chunk.iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..n]);
                if out.len() > max {
                    return Err(Errno::ENAMETOOLONG);
                }
                // No interior NUL by construction.
                return CString::new(out).map_err(|_| Errno::EINVAL);
            }
            out.extend_from_slice(chunk);
            if out.len() > max {
                return Err(Errno::ENAMETOOLONG);
            }
            addr += page_left;
        }
    }

    /// Replaces `[gva, gva+len)` with fresh zero-filled anonymous memory. Used for munmap
    /// and to undo file mappings, so a reused range reads as zeros, as Linux promises.
    /// Once protections are enforced the fresh memory is host PROT_NONE until a mapping
    /// entered there sets its protection, and pinned pages (the VMM's) are left alone.
    pub fn reset_range(&self, gva: u64, len: u64) -> Result<(), Errno> {
        let p = self.user_bounds(gva, len)?;
        if len == 0 {
            return Ok(());
        }
        let (pieces, prot) = match &self.prot {
            Some(t) => (t.unpinned(gva, gva + len), libc::PROT_NONE),
            None => (vec![(gva, gva + len)], libc::PROT_READ | libc::PROT_WRITE),
        };
        for (s, e) in pieces {
            // SAFETY: MAP_FIXED over a sub-range of the checked range of our own mapping
            // (`p` is `gva`'s host address), page-aligned by callers.
            let r = unsafe {
                libc::mmap(
                    p.add((s - gva) as usize) as *mut libc::c_void,
                    (e - s) as usize,
                    prot,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if r == libc::MAP_FAILED {
                return Err(Errno::last());
            }
        }
        Ok(())
    }

    /// Makes `[gva, gva+len)` the VMM's own, host readable and writable for good whatever
    /// the program maps there (the det page, which the VMM reads and writes through
    /// plain atomics, and which a program munmap must not take away from under it).
    pub fn pin(&self, gva: u64, len: u64) -> Result<(), Errno> {
        self.open_for_move(gva, len, true)?;
        if let Some(t) = &self.prot {
            t.pin(gva, gva + len);
        }
        Ok(())
    }

    /// Makes the program range `[gva, gva+len)` host-readable (and writable, with
    /// `write`) whatever the program's protections, for mremap's move, which copies it
    /// out of (into) it and then resets it (enters mappings that set its protections).
    pub fn open_for_move(&self, gva: u64, len: u64, write: bool) -> Result<(), Errno> {
        let p = self.user_bounds(gva, len)?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: a checked, page-aligned sub-range of our own mapping; only its
        // protection changes.
        let r = unsafe {
            libc::mprotect(
                p as *mut libc::c_void,
                len as usize,
                if write {
                    libc::PROT_READ | libc::PROT_WRITE
                } else {
                    libc::PROT_READ
                },
            )
        };
        if r != 0 {
            return Err(Errno::last());
        }
        Ok(())
    }

    /// Maps a host file into `[gva, gva+len)` (MAP_FIXED inside the guest mapping), so
    /// the program gets real file-backed pages, shared or private, without a copy.
    pub fn map_file(
        &self,
        gva: u64,
        len: u64,
        shared: bool,
        writable: bool,
        fd: RawFd,
        offset: u64,
    ) -> Result<(), Errno> {
        let p = self.user_bounds(gva, len)?;
        // A private mapping is always host-writable (copy-on-write), because the program
        // may mprotect it writable later and we cannot change host protections per page
        // cheaply; a shared one must respect the file's open mode.
        let prot = if shared && !writable {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        let flags = libc::MAP_FIXED
            | if shared {
                libc::MAP_SHARED
            } else {
                libc::MAP_PRIVATE
            };
        // SAFETY: MAP_FIXED over a checked sub-range of our own mapping.
        let r = unsafe {
            libc::mmap(
                p as *mut libc::c_void,
                len as usize,
                prot,
                flags,
                fd,
                offset as libc::off_t,
            )
        };
        if r == libc::MAP_FAILED {
            let e = Errno::last();
            // Put anonymous memory back so the guest mapping has no hole.
            let _ = self.reset_range(gva, len);
            return Err(e);
        }
        Ok(())
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        if let Some(t) = &self.prot {
            t.detach_host();
        }
        // SAFETY: unmapping exactly the region we mapped in new().
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.size as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_system_area_and_out_of_range() {
        let m = GuestMemory::new(4 << 20).unwrap();
        assert_eq!(m.user_bounds(0, 8).unwrap_err(), Errno::EFAULT);
        assert_eq!(m.user_bounds(USER_START - 4, 8).unwrap_err(), Errno::EFAULT);
        assert_eq!(m.user_bounds((4 << 20) - 4, 8).unwrap_err(), Errno::EFAULT);
        assert_eq!(m.user_bounds(u64::MAX - 2, 8).unwrap_err(), Errno::EFAULT);
        assert!(m.user_bounds(USER_START, 8).is_ok());
    }

    #[test]
    fn empty_range_is_never_the_base() {
        let m = GuestMemory::new(4 << 20).unwrap();
        // Outside the program part: a page-aligned pointer outside the mapping.
        for gva in [0, 8, USER_START - 1, (4 << 20) + 1, u64::MAX] {
            let p = m.user_bounds(gva, 0).unwrap() as u64;
            assert!(
                p < m.host_base() || p > m.host_base() + m.size(),
                "{gva:#x}"
            );
            assert_eq!(p % 4096, 0);
        }
        // Inside it: the address itself, so its alignment is the program's.
        let p = m.user_bounds(USER_START + 3, 0).unwrap() as u64;
        assert_eq!(p, m.host_base() + USER_START + 3);
        assert!(m.read_bytes(0, 0).unwrap().is_empty());
        m.write_bytes(0, &[]).unwrap();
    }

    #[test]
    fn objects_and_strings_roundtrip() {
        let m = GuestMemory::new(4 << 20).unwrap();
        m.write_obj(USER_START + 3, &0x1122_3344_5566_7788u64)
            .unwrap();
        assert_eq!(
            m.read_obj::<u64>(USER_START + 3).unwrap(),
            0x1122_3344_5566_7788
        );
        // A string that crosses a page boundary.
        let at = USER_START + 4096 - 3;
        m.write_bytes(at, b"hello\0").unwrap();
        assert_eq!(m.read_cstring(at, 100).unwrap().as_bytes(), b"hello");
        assert_eq!(m.read_cstring(at, 2).unwrap_err(), Errno::ENAMETOOLONG);
    }

    #[test]
    fn reserved_top_is_not_program_memory() {
        let mut m = GuestMemory::new(4 << 20).unwrap();
        m.reserve_top(8192);
        let top = (4 << 20) - 8192;
        assert!(m.user_bounds(top - 8, 8).is_ok());
        assert_eq!(m.user_bounds(top - 4, 8).unwrap_err(), Errno::EFAULT);
        assert_eq!(m.user_bounds(top, 4096).unwrap_err(), Errno::EFAULT);
        assert!(m.system_range(top, 8192).is_some());
    }

    /// File pages that fault on the host: EFAULT, not SIGBUS/SIGSEGV in the VMM.
    #[test]
    fn faulting_file_pages_are_efault() {
        use std::os::fd::AsRawFd;
        let m = GuestMemory::new(4 << 20).unwrap();
        let empty = tempfile::tempfile().unwrap();
        m.map_file(USER_START, 4096, true, true, empty.as_raw_fd(), 0)
            .unwrap();
        assert_eq!(m.read_obj::<u64>(USER_START).unwrap_err(), Errno::EFAULT);
        assert_eq!(m.write_obj(USER_START, &1u32).unwrap_err(), Errno::EFAULT);
        assert_eq!(m.read_cstring(USER_START, 10).unwrap_err(), Errno::EFAULT);
        let ro = tempfile::tempfile().unwrap();
        ro.set_len(4096).unwrap();
        let at = USER_START + 4096;
        m.map_file(at, 4096, true, false, ro.as_raw_fd(), 0)
            .unwrap();
        assert_eq!(m.read_obj::<u64>(at).unwrap(), 0);
        assert_eq!(m.write_bytes(at, b"x").unwrap_err(), Errno::EFAULT);
    }

    /// Once protections are enforced, a copy needs the access the program's mapping
    /// gives; forced copies (FOLL_FORCE) need only the bounds.
    #[test]
    fn enforced_protections_decide_each_access() {
        let mut m = GuestMemory::new(4 << 20).unwrap();
        let t = m.enforce_protections();
        let at = USER_START + 0x1000;
        t.set(at, at + 0x1000, (libc::PROT_READ | libc::PROT_WRITE) as u32);
        t.set(at + 0x1000, at + 0x2000, libc::PROT_READ as u32);
        m.write_obj(at, &7u64).unwrap();
        assert_eq!(m.write_obj(at + 0x1000, &7u64).unwrap_err(), Errno::EFAULT);
        assert_eq!(m.read_obj::<u64>(at + 0x1000).unwrap(), 0);
        assert_eq!(m.read_obj::<u64>(at + 0x2000).unwrap_err(), Errno::EFAULT);
        assert_eq!(m.read_obj::<u64>(USER_START).unwrap_err(), Errno::EFAULT);
        let (_, n) = m.user_prefix(at + 0xff0, 0x100, Access::Write).unwrap();
        assert_eq!(n, 0x10);
        assert_eq!(
            m.user_prefix(at + 0x1000, 8, Access::Write).unwrap_err(),
            Errno::EFAULT
        );
        m.write_bytes_forced(at + 0x1000, b"forced").unwrap();
        assert_eq!(m.read_bytes(at + 0x1000, 6).unwrap(), b"forced");
        assert_eq!(m.read_bytes_forced(USER_START, 1).unwrap(), vec![0]);
    }

    /// Once enforced, the host protection of a program page is what its mapping allows:
    /// none when unmapped, read-only, read-write; a pinned page stays read-write, and a
    /// reset page is PROT_NONE until a mapping is entered.
    #[test]
    fn host_protection_follows_the_table() {
        const R: u32 = libc::PROT_READ as u32;
        const RW: u32 = (libc::PROT_READ | libc::PROT_WRITE) as u32;
        let mut m = GuestMemory::new(4 << 20).unwrap();
        let t = m.enforce_protections();
        let can = |gva: u64, write: bool| {
            let p = m.user_bounds(gva, 8).unwrap();
            let mut b = [1u8; 8];
            // SAFETY: an 8-byte range of guest memory (a host fault becomes an error)
            // and a local buffer.
            unsafe {
                if write {
                    safecopy::copy(p, b.as_ptr(), 8).is_ok()
                } else {
                    safecopy::copy(b.as_mut_ptr(), p, 8).is_ok()
                }
            }
        };
        let at = USER_START + 0x1000;
        assert!(!can(at, false), "unmapped");
        t.set(at, at + 0x1000, R);
        assert!(can(at, false) && !can(at, true), "read-only");
        t.set(at, at + 0x1000, RW);
        assert!(can(at, true));
        t.set(at, at + 0x1000, 0);
        assert!(!can(at, false), "PROT_NONE");
        let pinned = at + 0x2000;
        m.pin(pinned, 0x1000).unwrap();
        t.set(at, at + 0x3000, 0);
        m.reset_range(at, 0x3000).unwrap();
        assert!(can(pinned, true), "pinned");
        assert!(!can(at, false), "reset");
        t.set(at, at + 0x1000, RW);
        assert!(can(at, true));
        // Forced access passes the host protection, as FOLL_FORCE does.
        m.write_bytes_forced(at + 0x1000, b"forced").unwrap();
        assert_eq!(m.read_bytes_forced(at + 0x1000, 6).unwrap(), b"forced");
    }

    #[test]
    fn reset_zeroes() {
        let m = GuestMemory::new(4 << 20).unwrap();
        m.write_bytes(USER_START, &[7u8; 8192]).unwrap();
        m.reset_range(USER_START, 4096).unwrap();
        assert_eq!(m.read_bytes(USER_START, 4).unwrap(), vec![0; 4]);
        assert_eq!(m.read_bytes(USER_START + 4096, 4).unwrap(), vec![7; 4]);
    }

    #[test]
    fn bad_sizes() {
        assert!(GuestMemory::new(0).is_err());
        assert!(GuestMemory::new(4097).is_err());
    }
}
