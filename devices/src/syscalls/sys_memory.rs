//! Memory: brk, mmap and friends, served by the deterministic allocator in
//! `address_space`. Page tables never change: protections are recorded in the mapping
//! table (for /proc/self/maps), which mirrors them into the table syscall buffers are
//! checked against and into the host protection of guest memory (what the program's own
//! accesses get). Memory is committed under Linux's strict accounting, with `--memory`
//! as the limit (`address_space`): ENOMEM past it.

use super::util::file;
use super::{SysResult, SyscallCtx, SyscallEntry};
use crate::address_space::{page_up, PAGE_SIZE};
use crate::errno::Errno;
use crate::fd_table::OpenFile;
use crate::procfs::Virtual;
use crate::sync::lock;
use crate::sys;
use crate::vma::{Vma, VmaFile};

/// Bytes mremap moves per copy, so a huge move never needs a huge VMM buffer.
const MOVE_CHUNK: u64 = 1 << 20;

/// The memory table.
pub const TABLE: &[SyscallEntry] = &[
    sys!(SYS_brk, Local, brk),
    sys!(SYS_mmap, Local, mmap),
    sys!(SYS_munmap, Local, munmap),
    sys!(SYS_mprotect, Local, mprotect),
    sys!(SYS_mremap, Local, mremap),
    sys!(SYS_madvise, Local, madvise),
    sys!(SYS_msync, Local, msync),
    sys!(SYS_mlock, Local, ok_zero),
    sys!(SYS_munlock, Local, ok_zero),
    sys!(SYS_mlockall, Local, ok_zero),
    sys!(SYS_munlockall, Local, ok_zero),
    sys!(SYS_mincore, Local, mincore),
    sys!(SYS_membarrier, Local, membarrier),
];

fn brk(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let mut asp = lock(&ctx.process.aspace);
    let (now, released) = asp.set_brk(a[0]);
    if let Some((s, e)) = released {
        ctx.process.mem.reset_range(s, e - s)?;
    }
    Ok(now)
}

fn mmap(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let (addr, len, prot, flags, fd, off) = (a[0], a[1], a[2], a[3] as i32, a[4], a[5]);
    if len == 0 || !off.is_multiple_of(PAGE_SIZE) {
        return Err(Errno::EINVAL);
    }
    let len = page_up(len);
    if len > ctx.process.mem.size() {
        return Err(Errno::ENOMEM);
    }
    let map_type = flags & libc::MAP_TYPE;
    let shared = map_type == libc::MAP_SHARED || map_type == libc::MAP_SHARED_VALIDATE;
    if !shared && map_type != libc::MAP_PRIVATE {
        return Err(Errno::EINVAL);
    }
    let anon = flags & libc::MAP_ANONYMOUS != 0;
    // Resolve the file before touching the address space, so a bad fd changes nothing.
    let f = if anon { None } else { Some(file(ctx, fd)?) };
    // /proc files have no pages to map (Linux: ENODEV); their host side is a placeholder.
    if f.as_ref().is_some_and(|f| f.virt().is_some()) {
        return Err(Errno(libc::ENODEV));
    }
    // In a pair, a descriptor that reaches outside (a host file the pair writes, a socket)
    // is a placeholder in the secondary, and a mapping of the primary's file would see
    // bytes the secondary cannot: both replicas refuse it alike (docs/pair.md, Host files).
    if ctx.process.replication.get().is_some() && f.as_ref().is_some_and(|f| f.is_external()) {
        return Err(Errno(libc::ENODEV));
    }
    let fixed = flags & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE) != 0;
    let commit = if crate::vma::commits(prot as u32, shared, anon) {
        len
    } else {
        0
    };
    let mut asp = lock(&ctx.process.aspace);
    let start = if fixed {
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        let end = addr.checked_add(len).ok_or(Errno::ENOMEM)?;
        ctx.process
            .mem
            .user_bounds(addr, len)
            .map_err(|_| Errno::ENOMEM)?;
        if flags & libc::MAP_FIXED_NOREPLACE != 0 && asp.fixed_would_clobber(addr, end) {
            return Err(Errno::EEXIST);
        }
        asp.check_commit(commit, asp.vmas().committed_in(addr, end))?;
        asp.carve(addr, end);
        addr
    } else {
        asp.check_commit(commit, 0)?;
        asp.alloc(len, addr)?
    };
    let placed = match &f {
        Some(f) => ctx.process.mem.map_file(
            start,
            len,
            shared,
            prot & libc::PROT_WRITE as u64 != 0,
            f.raw(),
            off,
        ),
        // Fresh anonymous memory must read as zeros even where an earlier mapping was.
        None if fixed || shared => ctx.process.mem.reset_range(start, len),
        None => Ok(()),
    };
    if let Err(e) = placed {
        // What was there is gone (a failed file mapping leaves fresh, inaccessible
        // memory): the table says so too, as Linux's failed MAP_FIXED can unmap.
        asp.vmas_mut().remove(start, start + len);
        asp.release(start, start + len);
        return Err(e);
    }
    let prot = (prot as u32) & (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u32;
    let vma = match &f {
        Some(f) => Vma {
            end: start + len,
            prot,
            shared,
            file: Some(file_of(ctx, f, off)),
            name: None,
        },
        None if shared => Vma::anon(start + len, prot, true, Some("/dev/zero (deleted)")),
        None => Vma::anon(start + len, prot, false, None),
    };
    asp.vmas_mut().insert(start, vma);
    Ok(start)
}

/// What /proc/self/maps shows for a file mapping: device, inode, offset and the guest's
/// path of the file (the host path for anything outside the root, like a memfd's name).
fn file_of(ctx: &SyscallCtx<'_>, f: &OpenFile, offset: u64) -> VmaFile {
    // SAFETY: libc::stat is plain data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat of a descriptor we hold into a buffer of the right size.
    let ok = unsafe { libc::fstat(f.raw(), &mut st) } == 0;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", f.raw())).unwrap_or_default();
    let path = ctx
        .process
        .fs
        .guest_path_of_host(&link)
        .unwrap_or_else(|| std::os::unix::ffi::OsStrExt::as_bytes(link.as_os_str()).to_vec());
    VmaFile {
        dev: if ok { st.st_dev } else { 0 },
        ino: if ok { st.st_ino } else { 0 },
        offset,
        path,
    }
}

fn munmap(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let (addr, len) = (a[0], page_up(a[1]));
    if !addr.is_multiple_of(PAGE_SIZE) || len == 0 {
        return Err(Errno::EINVAL);
    }
    let mut asp = lock(&ctx.process.aspace);
    ctx.process.mem.reset_range(addr, len)?;
    asp.release(addr, addr + len);
    asp.vmas_mut().remove(addr, addr + len);
    Ok(0)
}

fn mprotect(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    // The page tables are fixed, so the new protection binds the VMM's copies only: the
    // mapping table mirrors it into the page table syscall buffers are checked against.
    if !a[0].is_multiple_of(PAGE_SIZE) {
        return Err(Errno::EINVAL);
    }
    let len = page_up(a[1]);
    ctx.process
        .mem
        .user_bounds(a[0], len)
        .map_err(|_| Errno::ENOMEM)?;
    let prot = (a[2] as u32) & (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u32;
    let mut asp = lock(&ctx.process.aspace);
    // As Linux: the mappings up to the first hole change, and a hole is ENOMEM.
    let mapped = asp.vmas().contiguous_from(a[0], len);
    let end = a[0] + mapped;
    // Making a reservation writable commits it (and ENOMEM changes nothing).
    asp.check_commit(
        asp.vmas().committed_in_as(a[0], end, Some(prot)),
        asp.vmas().committed_in(a[0], end),
    )?;
    asp.vmas_mut().protect(a[0], end, prot);
    if mapped < len {
        return Err(Errno::ENOMEM);
    }
    Ok(0)
}

fn mremap(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let (old, old_len, new_len, flags) = (a[0], page_up(a[1]), page_up(a[2]), a[3] as i32);
    if !old.is_multiple_of(PAGE_SIZE) || old_len == 0 || new_len == 0 {
        return Err(Errno::EINVAL);
    }
    if flags & libc::MREMAP_FIXED != 0 {
        return Err(Errno::EINVAL);
    }
    let old_end = old.checked_add(old_len).ok_or(Errno::EFAULT)?;
    ctx.process
        .mem
        .user_bounds(old, old_len)
        .map_err(|_| Errno::EFAULT)?;
    let mut asp = lock(&ctx.process.aspace);
    // Linux refuses a range that is not wholly mapped: a hole in it is EFAULT. Moving
    // one would copy bytes from memory the program does not own, and the allocator
    // could later hand the same addresses out twice.
    if !asp.vmas().covers(old, old_end) {
        return Err(Errno::EFAULT);
    }
    if new_len <= old_len {
        let cut = old + new_len;
        ctx.process.mem.reset_range(cut, old_len - new_len)?;
        asp.release(cut, old_end);
        asp.vmas_mut().remove(cut, old_end);
        return Ok(old);
    }
    let grow_end = old.checked_add(new_len).ok_or(Errno::ENOMEM)?;
    // The grown part continues the last mapping, and commits if it does.
    let grown = new_len - old_len;
    let commit = if asp.vmas().committed_in(old_end - PAGE_SIZE, old_end) != 0 {
        grown
    } else {
        0
    };
    asp.check_commit(commit, 0)?;
    if grow_end <= asp.layout().stack_bottom && asp.is_free(old_end, grow_end) {
        asp.carve(old_end, grow_end);
        let last = asp
            .vmas()
            .iter()
            .filter(|(s, v)| *s < old_end && v.end == old_end)
            .map(|(s, v)| {
                let mut v = v.clone();
                if let Some(f) = &mut v.file {
                    f.offset = f.offset.saturating_add(old_end - s);
                }
                v.end = grow_end;
                v
            })
            .next();
        if let Some(v) = last {
            asp.vmas_mut().insert(old_end, v);
        }
        return Ok(old);
    }
    if flags & libc::MREMAP_MAYMOVE == 0 {
        return Err(Errno::ENOMEM);
    }
    let new = asp.alloc(new_len, 0)?;
    // The new range was free, so it cannot overlap the old one. Both are host-accessible
    // while the bytes move, whatever the program's protections (a PROT_NONE part moves
    // too); the old one is reset below and the new one takes the old mappings'.
    let moved = ctx
        .process
        .mem
        .open_for_move(old, old_len, false)
        .and_then(|()| ctx.process.mem.open_for_move(new, old_len, true))
        .and_then(|()| {
            let mut done = 0;
            while done < old_len {
                let n = (old_len - done).min(MOVE_CHUNK);
                // Moving pages is no access by the program: their protection does not matter.
                let bytes = ctx.process.mem.read_bytes_forced(old + done, n)?;
                ctx.process.mem.write_bytes_forced(new + done, &bytes)?;
                done += n;
            }
            Ok(())
        });
    if let Err(e) = moved {
        // Nothing moved: the new range is zero again (free memory is) and both get back
        // the protections their mappings give.
        let _ = ctx.process.mem.reset_range(new, old_len);
        asp.vmas().refresh(old, old_end);
        asp.vmas().refresh(new, new + old_len);
        asp.release(new, new + new_len);
        return Err(e);
    }
    ctx.process.mem.reset_range(old, old_len)?;
    asp.release(old, old_end);
    let moved: Vec<(u64, Vma)> = asp
        .vmas()
        .iter()
        .filter(|(s, v)| *s < old_end && v.end > old)
        .map(|(s, v)| {
            let mut v = v.clone();
            let from = s.max(old);
            if let Some(f) = &mut v.file {
                f.offset = f.offset.saturating_add(from - s);
            }
            v.end = new + (v.end.min(old_end) - old);
            (new + (from - old), v)
        })
        .collect();
    asp.vmas_mut().remove(old, old_end);
    let tail_end = new + new_len;
    let mut last = None;
    for (s, v) in moved {
        last = Some((s, v.clone()));
        asp.vmas_mut().insert(s, v);
    }
    // The grown part continues the last mapping, as Linux extends that VMA.
    if let Some((s, mut v)) = last {
        let tail_start = new + old_len;
        if let Some(f) = &mut v.file {
            f.offset = f.offset.saturating_add(tail_start - s);
        }
        v.end = tail_end;
        asp.vmas_mut().insert(tail_start, v);
    }
    Ok(new)
}

fn madvise(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    if !a[0].is_multiple_of(PAGE_SIZE) {
        return Err(Errno::EINVAL);
    }
    let p = ctx
        .process
        .mem
        .user_bounds(a[0], page_up(a[1]))
        .map_err(|_| Errno::ENOMEM)?;
    match a[2] as i32 {
        // These change contents, so they must really happen; the rest are hints.
        libc::MADV_DONTNEED | libc::MADV_FREE | libc::MADV_REMOVE => {
            // SAFETY: a checked, page-aligned range of guest memory.
            let r = unsafe {
                libc::madvise(
                    p as *mut libc::c_void,
                    page_up(a[1]) as usize,
                    libc::MADV_DONTNEED,
                )
            };
            if r < 0 {
                return Err(Errno::last());
            }
            Ok(0)
        }
        _ => Ok(0),
    }
}

fn msync(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let p = ctx
        .process
        .mem
        .user_bounds(a[0], a[1])
        .map_err(|_| Errno::ENOMEM)?;
    // SAFETY: checked range of our mapping.
    let r = unsafe { libc::msync(p as *mut libc::c_void, a[1] as usize, a[2] as i32) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(0)
}

fn mincore(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let pages = page_up(a[1]) / PAGE_SIZE;
    ctx.process
        .mem
        .user_bounds(a[0], a[1])
        .map_err(|_| Errno::ENOMEM)?;
    // Every page of guest memory is always mapped.
    ctx.process
        .mem
        .write_bytes(a[2], &vec![1u8; pages as usize])?;
    Ok(0)
}

fn membarrier(_: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    // MEMBARRIER_CMD_QUERY: no commands supported, so callers fall back to fences.
    if a[0] == 0 {
        Ok(0)
    } else {
        Err(Errno::EINVAL)
    }
}

fn ok_zero(_: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    Ok(0)
}
