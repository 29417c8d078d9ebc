//! Descriptor I/O: read/write and friends, dup, fcntl, ioctl, pipes, eventfds,
//! sendfile. Paths live in `sys_fs`.

use super::util::{buf, data_buf, epipe_kills, file, install, install_pair, iovecs, opt_buf, sc};
use super::{SysResult, SyscallCtx, SyscallEntry};
use crate::errno::Errno;
use crate::procfs::Virtual;
use crate::sync::lock;
use crate::sys;
use guest_memory::Access;

/// The descriptor I/O table.
pub const TABLE: &[SyscallEntry] = &[
    sys!(SYS_read, InputByFd, read),
    sys!(SYS_write, OutputByFd, write),
    sys!(SYS_pread64, InputByFd, pread64),
    sys!(SYS_pwrite64, OutputByFd, pwrite64),
    sys!(SYS_readv, InputByFd, readv),
    sys!(SYS_writev, OutputByFd, writev),
    sys!(SYS_preadv, InputByFd, preadv),
    sys!(SYS_pwritev, OutputByFd, pwritev),
    sys!(SYS_preadv2, InputByFd, preadv),
    sys!(SYS_pwritev2, OutputByFd, pwritev),
    sys!(SYS_lseek, InputByFd, lseek),
    sys!(SYS_close, Local, close),
    sys!(SYS_close_range, Local, close_range),
    sys!(SYS_dup, Local, dup),
    sys!(SYS_dup2, Local, dup2),
    sys!(SYS_dup3, Local, dup3),
    sys!(SYS_fcntl, InputByFd, fcntl),
    sys!(SYS_ioctl, InputByFd, ioctl),
    sys!(SYS_fstat, InputByFd, fstat),
    sys!(SYS_fstatfs, InputByFd, fstatfs),
    sys!(SYS_fsync, InputByFd, fd_only),
    sys!(SYS_fdatasync, InputByFd, fd_only),
    sys!(SYS_syncfs, Local, fd_only),
    sys!(SYS_fchdir, Local, fchdir),
    sys!(SYS_ftruncate, InputByFd, fd_num),
    sys!(SYS_fchmod, InputByFd, fd_num),
    sys!(SYS_fchown, InputByFd, fd_num),
    sys!(SYS_flock, InputByFd, fd_num),
    sys!(SYS_fallocate, InputByFd, fd_num),
    sys!(SYS_fadvise64, InputByFd, fd_num),
    sys!(SYS_getdents64, InputByFd, getdents64),
    sys!(SYS_pipe, Local, pipe),
    sys!(SYS_pipe2, Local, pipe2),
    sys!(SYS_eventfd, Local, eventfd),
    sys!(SYS_eventfd2, Local, eventfd2),
    sys!(SYS_memfd_create, Local, memfd_create),
    sys!(SYS_sendfile, OutputByFd, sendfile),
    sys!(SYS_copy_file_range, Local, copy_file_range),
    sys!(SYS_splice, OutputByFd, splice),
    sys!(SYS_sync, Local, sync),
];

fn read(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    if let Some(v) = f.virt() {
        return v.read(ctx.process, f.raw(), a[1], a[2], None);
    }
    let (p, n) = data_buf(ctx, a[1], a[2], Access::Write)?;
    sc(libc::SYS_read, [f.raw() as u64, p as u64, n, 0, 0, 0])
}

fn write(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    if let Some(v) = f.virt() {
        return v.write(ctx.process, a[1], a[2], None);
    }
    let (p, n) = data_buf(ctx, a[1], a[2], Access::Read)?;
    let r = sc(libc::SYS_write, [f.raw() as u64, p as u64, n, 0, 0, 0]);
    epipe_kills(ctx, r)
}

fn pread64(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    if let Some(v) = f.virt() {
        return v.read(ctx.process, f.raw(), a[1], a[2], Some(a[3]));
    }
    let (p, n) = data_buf(ctx, a[1], a[2], Access::Write)?;
    sc(libc::SYS_pread64, [f.raw() as u64, p as u64, n, a[3], 0, 0])
}

fn pwrite64(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    if let Some(v) = f.virt() {
        return v.write(ctx.process, a[1], a[2], Some(a[3]));
    }
    let (p, n) = data_buf(ctx, a[1], a[2], Access::Read)?;
    let r = sc(
        libc::SYS_pwrite64,
        [f.raw() as u64, p as u64, n, a[3], 0, 0],
    );
    epipe_kills(ctx, r)
}

fn readv(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let v = iovecs(ctx, a[1], a[2], Access::Write)?;
    sc(
        libc::SYS_readv,
        [f.raw() as u64, v.as_ptr() as u64, v.len() as u64, 0, 0, 0],
    )
}

fn writev(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let v = iovecs(ctx, a[1], a[2], Access::Read)?;
    let r = sc(
        libc::SYS_writev,
        [f.raw() as u64, v.as_ptr() as u64, v.len() as u64, 0, 0, 0],
    );
    epipe_kills(ctx, r)
}

/// The RWF_* flags of a preadv/pwritev-family call: preadv and pwritev have no flags
/// argument, so whatever the program left in that register must not become one (a
/// stray RWF_APPEND would make pwritev append).
fn rwf_flags(ctx: &SyscallCtx<'_>, a: &[u64; 6]) -> u64 {
    if ctx.nr == libc::SYS_preadv2 as u64 || ctx.nr == libc::SYS_pwritev2 as u64 {
        a[5]
    } else {
        0
    }
}

/// preadv and preadv2 share a layout; both are served by the host's preadv2.
fn preadv(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let v = iovecs(ctx, a[1], a[2], Access::Write)?;
    let flags = rwf_flags(ctx, &a);
    sc(
        libc::SYS_preadv2,
        [
            f.raw() as u64,
            v.as_ptr() as u64,
            v.len() as u64,
            a[3],
            a[4],
            flags,
        ],
    )
}

fn pwritev(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let v = iovecs(ctx, a[1], a[2], Access::Read)?;
    let flags = rwf_flags(ctx, &a);
    let r = sc(
        libc::SYS_pwritev2,
        [
            f.raw() as u64,
            v.as_ptr() as u64,
            v.len() as u64,
            a[3],
            a[4],
            flags,
        ],
    );
    epipe_kills(ctx, r)
}

fn lseek(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    if let Some(v) = f.virt() {
        return v.lseek(f.raw(), a[1], a[2] as i32);
    }
    sc(libc::SYS_lseek, [f.raw() as u64, a[1], a[2], 0, 0, 0])
}

fn close(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    lock(&ctx.process.fds).close(a[0] as i32 as i64).map(|_| 0)
}

fn close_range(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let (first, last) = (
        a[0] as u32 as i64,
        (a[1] as u32 as i64).min(crate::fd_table::MAX_FDS as i64),
    );
    if first > last {
        return Err(Errno::EINVAL);
    }
    let mut t = lock(&ctx.process.fds);
    for fd in first..=last {
        if a[2] & libc::CLOSE_RANGE_CLOEXEC as u64 != 0 {
            let _ = t.set_cloexec(fd, true);
        } else {
            let _ = t.close(fd);
        }
    }
    Ok(0)
}

fn dup(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    lock(&ctx.process.fds)
        .dup(a[0] as i32 as i64, 0, false)
        .map(|f| f as u64)
}

fn dup2(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let (old, new) = (a[0] as i32 as i64, a[1] as i32 as i64);
    let mut t = lock(&ctx.process.fds);
    let f = t.get(old)?;
    if old == new {
        return Ok(new as u64);
    }
    t.install_at(new, f, false)?;
    Ok(new as u64)
}

fn dup3(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let (old, new) = (a[0] as i32 as i64, a[1] as i32 as i64);
    if old == new || a[2] & !(libc::O_CLOEXEC as u64) != 0 {
        return Err(Errno::EINVAL);
    }
    let mut t = lock(&ctx.process.fds);
    let f = t.get(old)?;
    t.install_at(new, f, a[2] != 0)?;
    Ok(new as u64)
}

fn fcntl(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let fd = a[0] as i32 as i64;
    let cmd = a[1] as i32;
    match cmd {
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => lock(&ctx.process.fds)
            .dup(fd, a[2] as i32 as i64, cmd == libc::F_DUPFD_CLOEXEC)
            .map(|f| f as u64),
        libc::F_GETFD => {
            lock(&ctx.process.fds)
                .cloexec(fd)
                .map(|c| if c { libc::FD_CLOEXEC as u64 } else { 0 })
        }
        libc::F_SETFD => lock(&ctx.process.fds)
            .set_cloexec(fd, a[2] & libc::FD_CLOEXEC as u64 != 0)
            .map(|_| 0),
        libc::F_GETFL
        | libc::F_SETFL
        | libc::F_GETPIPE_SZ
        | libc::F_SETPIPE_SZ
        | libc::F_ADD_SEALS
        | libc::F_GET_SEALS => {
            let f = file(ctx, a[0])?;
            sc(libc::SYS_fcntl, [f.raw() as u64, cmd as u64, a[2], 0, 0, 0])
        }
        libc::F_GETLK
        | libc::F_SETLK
        | libc::F_SETLKW
        | libc::F_OFD_GETLK
        | libc::F_OFD_SETLK
        | libc::F_OFD_SETLKW => {
            let f = file(ctx, a[0])?;
            // The GETLK forms write the lock they find back; the others only read it.
            let access = if cmd == libc::F_GETLK || cmd == libc::F_OFD_GETLK {
                Access::Write
            } else {
                Access::Read
            };
            let p = buf(ctx, a[2], std::mem::size_of::<libc::flock>() as u64, access)?;
            sc(
                libc::SYS_fcntl,
                [f.raw() as u64, cmd as u64, p as u64, 0, 0, 0],
            )
        }
        _ => Err(Errno::EINVAL),
    }
}

/// Terminal and socket ioctls with known argument sizes; anything else is ENOTTY,
/// because passing an unknown ioctl through would let the program hand the host
/// kernel an untranslated pointer.
fn ioctl(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let req = a[1];
    let size: u64 = match req {
        0x5401 => 60,                  // TCGETS: struct termios
        0x5402..=0x5404 => 60,         // TCSETS, TCSETSW, TCSETSF
        0x5413 | 0x5414 => 8,          // TIOCGWINSZ, TIOCSWINSZ
        0x540F | 0x5410 => 4,          // TIOCGPGRP, TIOCSPGRP
        0x541B | 0x5421 | 0x5411 => 4, // FIONREAD, FIONBIO, TIOCOUTQ/SIOCOUTQ
        0x5450 | 0x5451 => {
            // FIONCLEX / FIOCLEX act on the guest table only.
            lock(&ctx.process.fds).set_cloexec(a[0] as i32 as i64, req == 0x5451)?;
            return Ok(0);
        }
        _ => return Err(Errno::ENOTTY),
    };
    // The get forms write their argument; the set forms (and FIONBIO) read it.
    let access = match req {
        0x5401 | 0x5413 | 0x540F | 0x541B | 0x5411 => Access::Write,
        _ => Access::Read,
    };
    let p = buf(ctx, a[2], size, access)?;
    sc(libc::SYS_ioctl, [f.raw() as u64, req, p as u64, 0, 0, 0])
}

fn fstat(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    if let Some(v) = f.virt() {
        let st = crate::procfs::file::stat_of(&v.node);
        return ctx.process.mem.write_obj(a[1], &st).map(|_| 0);
    }
    let p = buf(
        ctx,
        a[1],
        std::mem::size_of::<libc::stat>() as u64,
        Access::Write,
    )?;
    sc(libc::SYS_fstat, [f.raw() as u64, p as u64, 0, 0, 0, 0])
}

fn fstatfs(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let p = buf(
        ctx,
        a[1],
        std::mem::size_of::<libc::statfs>() as u64,
        Access::Write,
    )?;
    sc(libc::SYS_fstatfs, [f.raw() as u64, p as u64, 0, 0, 0, 0])
}

/// Calls whose arguments are the descriptor and plain numbers (no pointers).
fn fd_num(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    sc(ctx.nr as i64, [f.raw() as u64, a[1], a[2], a[3], 0, 0])
}

fn fd_only(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    sc(ctx.nr as i64, [f.raw() as u64, 0, 0, 0, 0, 0])
}

fn fchdir(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    ctx.process.fs.set_cwd_from_fd(f.raw()).map(|_| 0)
}

fn getdents64(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    if let Some(v) = f.virt() {
        return v.getdents64(ctx.process, a[1], a[2]);
    }
    let p = buf(ctx, a[1], a[2], Access::Write)?;
    sc(
        libc::SYS_getdents64,
        [f.raw() as u64, p as u64, a[2], 0, 0, 0],
    )
}

fn pipe(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    pipe2(ctx, [a[0], 0, 0, 0, 0, 0])
}

fn pipe2(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    // Check the destination before creating anything, so EFAULT leaks nothing.
    buf(ctx, a[0], 8, Access::Write)?;
    let mut fds = [0i32; 2];
    sc(
        libc::SYS_pipe2,
        [
            fds.as_mut_ptr() as u64,
            a[1] | libc::O_CLOEXEC as u64,
            0,
            0,
            0,
            0,
        ],
    )?;
    install_pair(ctx, fds, a[1] & libc::O_CLOEXEC as u64 != 0, a[0])
}

fn eventfd(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    eventfd2(ctx, [a[0], 0, 0, 0, 0, 0])
}

fn eventfd2(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let fd = sc(
        libc::SYS_eventfd2,
        [a[0], a[1] | libc::EFD_CLOEXEC as u64, 0, 0, 0, 0],
    )?;
    install(ctx, fd, a[1] & libc::EFD_CLOEXEC as u64 != 0)
}

fn memfd_create(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let name = super::util::path(ctx, a[0])?;
    let fd = sc(
        libc::SYS_memfd_create,
        [
            name.as_ptr() as u64,
            a[1] | libc::MFD_CLOEXEC as u64,
            0,
            0,
            0,
            0,
        ],
    )?;
    install(ctx, fd, a[1] & libc::MFD_CLOEXEC as u64 != 0)
}

fn sendfile(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let out = file(ctx, a[0])?;
    let inp = file(ctx, a[1])?;
    let off = opt_buf(ctx, a[2], 8, Access::Write)?;
    let r = sc(
        libc::SYS_sendfile,
        [out.raw() as u64, inp.raw() as u64, off as u64, a[3], 0, 0],
    );
    epipe_kills(ctx, r)
}

fn copy_file_range(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let inp = file(ctx, a[0])?;
    let ioff = opt_buf(ctx, a[1], 8, Access::Write)?;
    let out = file(ctx, a[2])?;
    let ooff = opt_buf(ctx, a[3], 8, Access::Write)?;
    sc(
        libc::SYS_copy_file_range,
        [
            inp.raw() as u64,
            ioff as u64,
            out.raw() as u64,
            ooff as u64,
            a[4],
            a[5],
        ],
    )
}

fn splice(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let inp = file(ctx, a[0])?;
    let ioff = opt_buf(ctx, a[1], 8, Access::Write)?;
    let out = file(ctx, a[2])?;
    let ooff = opt_buf(ctx, a[3], 8, Access::Write)?;
    let r = sc(
        libc::SYS_splice,
        [
            inp.raw() as u64,
            ioff as u64,
            out.raw() as u64,
            ooff as u64,
            a[4],
            a[5],
        ],
    );
    epipe_kills(ctx, r)
}

fn sync(_: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    sc(libc::SYS_sync, [0; 6])
}
