//! The guest's physical memory: one host mapping, identity-mapped into the guest.
//!
//! Guest virtual == guest physical == offset into this mapping, so translating a guest
//! pointer is a bounds check plus an add. We keep our own small type instead of
//! vm-memory's `GuestMemoryMmap` because passthrough syscalls want a raw host pointer
//! for a whole checked range (the host kernel does the copy), and because file
//! mappings are placed *into* this mapping with `MAP_FIXED`, which vm-memory does not model.

use std::ffi::CString;
use std::os::fd::RawFd;

use crate::errno::Errno;

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
}

// SAFETY: the mapping lives as long as the GuestMemory and is only accessed through raw
// pointers with explicit bounds checks; concurrent access from several vCPU threads is
// exactly what guest memory is (the guest itself races on it), and the VMM only uses
// unaligned/volatile-free byte copies whose tearing is harmless to the VMM.
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

    /// Host pointer for the program-visible range `[gva, gva+len)`, or EFAULT.
    ///
    /// An empty range is valid anywhere (the kernel does the same: a zero-length read
    /// does not fault). Its pointer is never the mapping's base, which is guest
    /// physical 0, the system area: it is `gva`'s own host address when `gva` is in the
    /// program part of guest memory (so a host call sees the program's alignment, as
    /// madvise and msync check it), else a page-aligned dangling pointer outside the
    /// mapping, which the host faults on should it ever write there.
    pub fn user_range(&self, gva: u64, len: u64) -> Result<*mut u8, Errno> {
        if len == 0 {
            if (USER_START..=self.size).contains(&gva) {
                // SAFETY: gva <= size: inside the mapping or one past its end.
                return Ok(unsafe { self.base.add(gva as usize) });
            }
            /// Aligned like a page, so the dangling pointer is too.
            #[repr(align(4096))]
            struct Page;
            return Ok(std::ptr::NonNull::<Page>::dangling().as_ptr() as *mut u8);
        }
        let end = gva.checked_add(len).ok_or(Errno::EFAULT)?;
        if gva < USER_START || end > self.size {
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

    /// Reads a plain-data value from a program address.
    pub fn read_obj<T: Copy>(&self, gva: u64) -> Result<T, Errno> {
        let p = self.user_range(gva, std::mem::size_of::<T>() as u64)?;
        // SAFETY: the range is inside the mapping; T is Copy plain data and the read is
        // unaligned-safe.
        Ok(unsafe { std::ptr::read_unaligned(p as *const T) })
    }

    /// Writes a plain-data value to a program address.
    pub fn write_obj<T: Copy>(&self, gva: u64, val: &T) -> Result<(), Errno> {
        let p = self.user_range(gva, std::mem::size_of::<T>() as u64)?;
        // SAFETY: the range is inside the mapping and writable.
        unsafe { std::ptr::write_unaligned(p as *mut T, *val) };
        Ok(())
    }

    /// Copies `len` bytes out of program memory.
    pub fn read_bytes(&self, gva: u64, len: u64) -> Result<Vec<u8>, Errno> {
        let p = self.user_range(gva, len)?;
        let mut v = vec![0u8; len as usize];
        // SAFETY: source range checked above; destination is a fresh Vec of len bytes.
        unsafe { std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), len as usize) };
        Ok(v)
    }

    /// Copies bytes into program memory.
    pub fn write_bytes(&self, gva: u64, data: &[u8]) -> Result<(), Errno> {
        let p = self.user_range(gva, data.len() as u64)?;
        // SAFETY: destination range checked above.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
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
            let p = self.user_range(addr, page_left)?;
            // SAFETY: the whole chunk was range-checked.
            let chunk = unsafe { std::slice::from_raw_parts(p as *const u8, page_left as usize) };
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
    pub fn reset_range(&self, gva: u64, len: u64) -> Result<(), Errno> {
        let p = self.user_range(gva, len)?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: MAP_FIXED over a sub-range of our own mapping, page-aligned by callers.
        let r = unsafe {
            libc::mmap(
                p as *mut libc::c_void,
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if r == libc::MAP_FAILED {
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
        let p = self.user_range(gva, len)?;
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
        assert_eq!(m.user_range(0, 8).unwrap_err(), Errno::EFAULT);
        assert_eq!(m.user_range(USER_START - 4, 8).unwrap_err(), Errno::EFAULT);
        assert_eq!(m.user_range((4 << 20) - 4, 8).unwrap_err(), Errno::EFAULT);
        assert_eq!(m.user_range(u64::MAX - 2, 8).unwrap_err(), Errno::EFAULT);
        assert!(m.user_range(USER_START, 8).is_ok());
    }

    #[test]
    fn empty_range_is_never_the_base() {
        let m = GuestMemory::new(4 << 20).unwrap();
        // Outside the program part: a page-aligned pointer outside the mapping.
        for gva in [0, 8, USER_START - 1, (4 << 20) + 1, u64::MAX] {
            let p = m.user_range(gva, 0).unwrap() as u64;
            assert!(
                p < m.host_base() || p > m.host_base() + m.size(),
                "{gva:#x}"
            );
            assert_eq!(p % 4096, 0);
        }
        // Inside it: the address itself, so its alignment is the program's.
        let p = m.user_range(USER_START + 3, 0).unwrap() as u64;
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
