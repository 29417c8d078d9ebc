//! Memory: brk, mmap and friends, served by the deterministic allocator in
//! `address_space`. Page tables never change: protections are recorded nowhere and
//! every mapped page is readable, writable and executable for the program.

use super::util::file;
use super::{SysResult, SyscallCtx, SyscallEntry};
use crate::address_space::{page_up, PAGE_SIZE};
use crate::errno::Errno;
use crate::process::lock;
use crate::sys;

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
    let fixed = flags & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE) != 0;
    let mut asp = lock(&ctx.process.aspace);
    let start = if fixed {
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        let end = addr.checked_add(len).ok_or(Errno::ENOMEM)?;
        ctx.process
            .mem
            .user_range(addr, len)
            .map_err(|_| Errno::ENOMEM)?;
        if flags & libc::MAP_FIXED_NOREPLACE != 0 && asp.fixed_would_clobber(addr, end) {
            return Err(Errno::EEXIST);
        }
        asp.carve(addr, end);
        addr
    } else {
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
        asp.release(start, start + len);
        return Err(e);
    }
    Ok(start)
}

fn munmap(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let (addr, len) = (a[0], page_up(a[1]));
    if !addr.is_multiple_of(PAGE_SIZE) || len == 0 {
        return Err(Errno::EINVAL);
    }
    let mut asp = lock(&ctx.process.aspace);
    ctx.process.mem.reset_range(addr, len)?;
    asp.release(addr, addr + len);
    Ok(0)
}

fn mprotect(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    // Protections cannot be enforced with fixed page tables; checking the range keeps
    // the answer for nonsense addresses right.
    if !a[0].is_multiple_of(PAGE_SIZE) {
        return Err(Errno::EINVAL);
    }
    ctx.process
        .mem
        .user_range(a[0], page_up(a[1]))
        .map_err(|_| Errno::ENOMEM)?;
    Ok(0)
}

fn mremap(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let (old, old_len, new_len, flags) = (a[0], page_up(a[1]), page_up(a[2]), a[3] as i32);
    if !old.is_multiple_of(PAGE_SIZE) || new_len == 0 || flags & libc::MREMAP_FIXED != 0 {
        return Err(Errno::EINVAL);
    }
    ctx.process
        .mem
        .user_range(old, old_len)
        .map_err(|_| Errno::EFAULT)?;
    let mut asp = lock(&ctx.process.aspace);
    if new_len <= old_len {
        ctx.process
            .mem
            .reset_range(old + new_len, old_len - new_len)?;
        asp.release(old + new_len, old + old_len);
        return Ok(old);
    }
    let grow_end = old.checked_add(new_len).ok_or(Errno::ENOMEM)?;
    if asp.is_free(old + old_len, grow_end) {
        asp.carve(old + old_len, grow_end);
        return Ok(old);
    }
    if flags & libc::MREMAP_MAYMOVE == 0 {
        return Err(Errno::ENOMEM);
    }
    let new = asp.alloc(new_len, 0)?;
    let src = ctx.process.mem.user_range(old, old_len)?;
    let dst = ctx.process.mem.user_range(new, old_len)?;
    // SAFETY: both ranges are checked, page-aligned and disjoint (new was free).
    unsafe { std::ptr::copy_nonoverlapping(src, dst, old_len as usize) };
    ctx.process.mem.reset_range(old, old_len)?;
    asp.release(old, old + old_len);
    Ok(new)
}

fn madvise(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    if !a[0].is_multiple_of(PAGE_SIZE) {
        return Err(Errno::EINVAL);
    }
    let p = ctx
        .process
        .mem
        .user_range(a[0], page_up(a[1]))
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
        .user_range(a[0], a[1])
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
        .user_range(a[0], a[1])
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
