//! Path-based filesystem calls, all resolved inside the program's root (see `path`).

use super::util::{at_path, buf, dirfd, install, path, sc, AtPath};
use super::{SysResult, SyscallCtx, SyscallEntry};
use crate::errno::Errno;
use crate::sys;
use guest_memory::Access;

/// The filesystem table.
pub const TABLE: &[SyscallEntry] = &[
    sys!(SYS_open, Local, open),
    sys!(SYS_openat, Local, openat),
    sys!(SYS_creat, Local, creat),
    sys!(SYS_stat, Local, stat),
    sys!(SYS_lstat, Local, lstat),
    sys!(SYS_newfstatat, InputByFd, newfstatat),
    sys!(SYS_statx, InputByFd, statx),
    sys!(SYS_statfs, Local, statfs),
    sys!(SYS_access, Local, access),
    sys!(SYS_faccessat, Local, faccessat),
    sys!(SYS_faccessat2, Local, faccessat2),
    sys!(SYS_readlink, Local, readlink),
    sys!(SYS_readlinkat, Local, readlinkat),
    sys!(SYS_mkdir, Local, mkdir),
    sys!(SYS_mkdirat, Local, mkdirat),
    sys!(SYS_rmdir, Local, rmdir),
    sys!(SYS_unlink, Local, unlink),
    sys!(SYS_unlinkat, Local, unlinkat),
    sys!(SYS_rename, Local, rename),
    sys!(SYS_renameat, Local, renameat),
    sys!(SYS_renameat2, Local, renameat2),
    sys!(SYS_link, Local, link),
    sys!(SYS_linkat, Local, linkat),
    sys!(SYS_symlink, Local, symlink),
    sys!(SYS_symlinkat, Local, symlinkat),
    sys!(SYS_chmod, Local, chmod),
    sys!(SYS_fchmodat, Local, fchmodat),
    sys!(SYS_chown, Local, chown),
    sys!(SYS_lchown, Local, lchown),
    sys!(SYS_fchownat, Local, fchownat),
    sys!(SYS_truncate, Local, truncate),
    sys!(SYS_utimensat, Local, utimensat),
    sys!(SYS_mknod, Local, mknod),
    sys!(SYS_mknodat, Local, mknodat),
    sys!(SYS_chdir, Local, chdir),
    sys!(SYS_getcwd, Local, getcwd),
    sys!(SYS_umask, Local, umask),
];

const AT_FDCWD: u64 = libc::AT_FDCWD as u32 as u64;

fn open_common(
    ctx: &mut SyscallCtx<'_>,
    dfd: u64,
    path_gva: u64,
    flags: u64,
    mode: u64,
) -> SysResult {
    let p = path(ctx, path_gva)?;
    if let Some(r) = super::proc_paths::open(ctx, dfd, &p, flags) {
        return r;
    }
    let dir = dirfd(ctx, dfd)?;
    let mode = mode & !ctx.process.umask.load(std::sync::atomic::Ordering::Relaxed);
    let fd = ctx
        .process
        .fs
        .open(dir.as_ref().map(|d| d.raw()), &p, flags as i32, mode)?;
    let cloexec = flags & libc::O_CLOEXEC as u64 != 0;
    install(ctx, std::os::fd::IntoRawFd::into_raw_fd(fd) as u64, cloexec)
}

fn open(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    open_common(ctx, AT_FDCWD, a[0], a[1], a[2])
}

fn openat(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    open_common(ctx, a[0], a[1], a[2], a[3])
}

fn creat(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let flags = (libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC) as u64;
    open_common(ctx, AT_FDCWD, a[0], flags, a[1])
}

/// fstatat-like call with a resolved path.
fn stat_at(ctx: &SyscallCtx<'_>, at: &AtPath, out: u64, flags: u64) -> SysResult {
    let p = buf(
        ctx,
        out,
        std::mem::size_of::<libc::stat>() as u64,
        Access::Write,
    )?;
    let flags = at.host_flags(flags);
    sc(
        libc::SYS_newfstatat,
        [
            at.dirfd as u64,
            at.name.as_ptr() as u64,
            p as u64,
            flags,
            0,
            0,
        ],
    )
}

/// stat of a /proc path into the guest's buffer, or None when the path is elsewhere.
fn proc_stat(
    ctx: &SyscallCtx<'_>,
    dfd: u64,
    path_gva: u64,
    follow: bool,
    empty_ok: bool,
    out: u64,
) -> Option<SysResult> {
    let st = super::proc_paths::stat(ctx, dfd, path_gva, follow, empty_ok)?;
    Some(st.and_then(|st| ctx.process.mem.write_obj(out, &st).map(|_| 0)))
}

fn stat(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    if let Some(r) = proc_stat(ctx, AT_FDCWD, a[0], true, false, a[1]) {
        return r;
    }
    let at = at_path(ctx, AT_FDCWD, a[0], true, false, false)?;
    stat_at(ctx, &at, a[1], 0)
}

fn lstat(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    if let Some(r) = proc_stat(ctx, AT_FDCWD, a[0], false, false, a[1]) {
        return r;
    }
    let at = at_path(ctx, AT_FDCWD, a[0], false, false, false)?;
    stat_at(ctx, &at, a[1], libc::AT_SYMLINK_NOFOLLOW as u64)
}

fn newfstatat(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let nofollow = a[3] & libc::AT_SYMLINK_NOFOLLOW as u64 != 0;
    let empty_ok = a[3] & libc::AT_EMPTY_PATH as u64 != 0;
    if let Some(r) = proc_stat(ctx, a[0], a[1], !nofollow, empty_ok, a[2]) {
        return r;
    }
    let at = at_path(ctx, a[0], a[1], !nofollow, empty_ok, false)?;
    stat_at(ctx, &at, a[2], a[3] & libc::AT_SYMLINK_NOFOLLOW as u64)
}

fn statx(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let nofollow = a[2] & libc::AT_SYMLINK_NOFOLLOW as u64 != 0;
    let empty_ok = a[2] & libc::AT_EMPTY_PATH as u64 != 0;
    if let Some(st) = super::proc_paths::stat(ctx, a[0], a[1], !nofollow, empty_ok) {
        return super::proc_paths::write_statx(ctx, a[4], &st?);
    }
    let at = at_path(ctx, a[0], a[1], !nofollow, empty_ok, false)?;
    let p = buf(
        ctx,
        a[4],
        std::mem::size_of::<libc::statx>() as u64,
        Access::Write,
    )?;
    let flags = at.host_flags(a[2]);
    sc(
        libc::SYS_statx,
        [
            at.dirfd as u64,
            at.name.as_ptr() as u64,
            flags,
            a[3],
            p as u64,
            0,
        ],
    )
}

fn statfs(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let at = at_path(ctx, AT_FDCWD, a[0], true, false, false)?;
    let p = buf(
        ctx,
        a[1],
        std::mem::size_of::<libc::statfs>() as u64,
        Access::Write,
    )?;
    sc(
        libc::SYS_statfs,
        [at.name.as_ptr() as u64, p as u64, 0, 0, 0, 0],
    )
}

fn faccess(ctx: &mut SyscallCtx<'_>, dfd: u64, path_gva: u64, mode: u64, flags: u64) -> SysResult {
    let nofollow = flags & libc::AT_SYMLINK_NOFOLLOW as u64 != 0;
    let empty_ok = flags & libc::AT_EMPTY_PATH as u64 != 0;
    if let Some(r) = super::proc_paths::access(ctx, dfd, path_gva, mode) {
        return r;
    }
    let at = at_path(ctx, dfd, path_gva, !nofollow, empty_ok, false)?;
    let flags = at.host_flags(flags);
    sc(
        libc::SYS_faccessat2,
        [at.dirfd as u64, at.name.as_ptr() as u64, mode, flags, 0, 0],
    )
}

fn access(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    faccess(ctx, AT_FDCWD, a[0], a[1], 0)
}

fn faccessat(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    faccess(ctx, a[0], a[1], a[2], 0)
}

fn faccessat2(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    faccess(ctx, a[0], a[1], a[2], a[3])
}

fn readlink_common(
    ctx: &mut SyscallCtx<'_>,
    dfd: u64,
    path_gva: u64,
    out: u64,
    len: u64,
) -> SysResult {
    let p = path(ctx, path_gva)?;
    if let Some(r) = super::proc_paths::readlink(ctx, dfd, &p, out, len) {
        return r;
    }
    let at = at_path(ctx, dfd, path_gva, false, true, false)?;
    if at.resolved_link {
        // The name is a directory the resolver opened (the root, a bind's own path), never
        // a symlink; reading the host's magic link would hand the guest a host path.
        return Err(Errno::EINVAL);
    }
    let o = buf(ctx, out, len, Access::Write)?;
    sc(
        libc::SYS_readlinkat,
        [
            at.dirfd as u64,
            at.name.as_ptr() as u64,
            o as u64,
            len,
            0,
            0,
        ],
    )
}

fn readlink(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    readlink_common(ctx, AT_FDCWD, a[0], a[1], a[2])
}

fn readlinkat(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    readlink_common(ctx, a[0], a[1], a[2], a[3])
}

fn mkdirat_common(ctx: &mut SyscallCtx<'_>, dfd: u64, p: u64, mode: u64) -> SysResult {
    let at = at_path(ctx, dfd, p, false, false, true)?;
    let mode = mode & !ctx.process.umask.load(std::sync::atomic::Ordering::Relaxed);
    sc(
        libc::SYS_mkdirat,
        [at.dirfd as u64, at.name.as_ptr() as u64, mode, 0, 0, 0],
    )
}

fn mkdir(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    mkdirat_common(ctx, AT_FDCWD, a[0], a[1])
}

fn mkdirat(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    mkdirat_common(ctx, a[0], a[1], a[2])
}

fn unlinkat_common(ctx: &mut SyscallCtx<'_>, dfd: u64, p: u64, flags: u64) -> SysResult {
    let at = at_path(ctx, dfd, p, false, false, true)?;
    sc(
        libc::SYS_unlinkat,
        [at.dirfd as u64, at.name.as_ptr() as u64, flags, 0, 0, 0],
    )
}

fn rmdir(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    unlinkat_common(ctx, AT_FDCWD, a[0], libc::AT_REMOVEDIR as u64)
}

fn unlink(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    unlinkat_common(ctx, AT_FDCWD, a[0], 0)
}

fn unlinkat(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    unlinkat_common(ctx, a[0], a[1], a[2])
}

fn rename_common(
    ctx: &mut SyscallCtx<'_>,
    od: u64,
    op: u64,
    nd: u64,
    np: u64,
    flags: u64,
) -> SysResult {
    let from = at_path(ctx, od, op, false, false, true)?;
    let to = at_path(ctx, nd, np, false, false, true)?;
    sc(
        libc::SYS_renameat2,
        [
            from.dirfd as u64,
            from.name.as_ptr() as u64,
            to.dirfd as u64,
            to.name.as_ptr() as u64,
            flags,
            0,
        ],
    )
}

fn rename(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    rename_common(ctx, AT_FDCWD, a[0], AT_FDCWD, a[1], 0)
}

fn renameat(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    rename_common(ctx, a[0], a[1], a[2], a[3], 0)
}

fn renameat2(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    rename_common(ctx, a[0], a[1], a[2], a[3], a[4])
}

fn link_common(
    ctx: &mut SyscallCtx<'_>,
    od: u64,
    op: u64,
    nd: u64,
    np: u64,
    flags: u64,
) -> SysResult {
    let follow = flags & libc::AT_SYMLINK_FOLLOW as u64 != 0;
    let from = at_path(
        ctx,
        od,
        op,
        follow,
        flags & libc::AT_EMPTY_PATH as u64 != 0,
        false,
    )?;
    let to = at_path(ctx, nd, np, false, false, true)?;
    let flags = if from.empty {
        libc::AT_EMPTY_PATH as u64
    } else {
        0
    } | if follow {
        libc::AT_SYMLINK_FOLLOW as u64
    } else {
        0
    };
    sc(
        libc::SYS_linkat,
        [
            from.dirfd as u64,
            from.name.as_ptr() as u64,
            to.dirfd as u64,
            to.name.as_ptr() as u64,
            flags,
            0,
        ],
    )
}

fn link(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    link_common(ctx, AT_FDCWD, a[0], AT_FDCWD, a[1], 0)
}

fn linkat(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    link_common(ctx, a[0], a[1], a[2], a[3], a[4])
}

/// symlink's target is stored verbatim: it is resolved later, inside the root.
fn symlink_common(ctx: &mut SyscallCtx<'_>, target: u64, nd: u64, np: u64) -> SysResult {
    let t = path(ctx, target)?;
    let to = at_path(ctx, nd, np, false, false, true)?;
    sc(
        libc::SYS_symlinkat,
        [
            t.as_ptr() as u64,
            to.dirfd as u64,
            to.name.as_ptr() as u64,
            0,
            0,
            0,
        ],
    )
}

fn symlink(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    symlink_common(ctx, a[0], AT_FDCWD, a[1])
}

fn symlinkat(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    symlink_common(ctx, a[0], a[1], a[2])
}

fn chmod(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let at = at_path(ctx, AT_FDCWD, a[0], true, false, true)?;
    sc(
        libc::SYS_fchmodat,
        [at.dirfd as u64, at.name.as_ptr() as u64, a[1], 0, 0, 0],
    )
}

fn fchmodat(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let at = at_path(ctx, a[0], a[1], true, false, true)?;
    sc(
        libc::SYS_fchmodat,
        [at.dirfd as u64, at.name.as_ptr() as u64, a[2], 0, 0, 0],
    )
}

fn chown_common(
    ctx: &mut SyscallCtx<'_>,
    dfd: u64,
    p: u64,
    uid: u64,
    gid: u64,
    flags: u64,
) -> SysResult {
    let nofollow = flags & libc::AT_SYMLINK_NOFOLLOW as u64 != 0;
    let at = at_path(
        ctx,
        dfd,
        p,
        !nofollow,
        flags & libc::AT_EMPTY_PATH as u64 != 0,
        true,
    )?;
    let flags = at.host_flags(flags & (libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH) as u64);
    sc(
        libc::SYS_fchownat,
        [at.dirfd as u64, at.name.as_ptr() as u64, uid, gid, flags, 0],
    )
}

fn chown(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    chown_common(ctx, AT_FDCWD, a[0], a[1], a[2], 0)
}

fn lchown(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    chown_common(
        ctx,
        AT_FDCWD,
        a[0],
        a[1],
        a[2],
        libc::AT_SYMLINK_NOFOLLOW as u64,
    )
}

fn fchownat(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    chown_common(ctx, a[0], a[1], a[2], a[3], a[4])
}

fn truncate(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let at = at_path(ctx, AT_FDCWD, a[0], true, false, true)?;
    sc(
        libc::SYS_truncate,
        [at.name.as_ptr() as u64, a[1], 0, 0, 0, 0],
    )
}

fn utimensat(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let times = super::util::opt_buf(ctx, a[2], 32, Access::Read)?;
    if a[1] == 0 {
        // utimensat(fd, NULL, ...) is futimens.
        let f = super::util::file(ctx, a[0])?;
        return sc(
            libc::SYS_utimensat,
            [f.raw() as u64, 0, times as u64, 0, 0, 0],
        );
    }
    let nofollow = a[3] & libc::AT_SYMLINK_NOFOLLOW as u64 != 0;
    let at = at_path(ctx, a[0], a[1], !nofollow, false, true)?;
    sc(
        libc::SYS_utimensat,
        [
            at.dirfd as u64,
            at.name.as_ptr() as u64,
            times as u64,
            at.host_flags(a[3] & libc::AT_SYMLINK_NOFOLLOW as u64),
            0,
            0,
        ],
    )
}

fn mknod_common(ctx: &mut SyscallCtx<'_>, dfd: u64, p: u64, mode: u64, dev: u64) -> SysResult {
    // Only FIFOs and regular files: device nodes would be a way out of the root.
    let kind = mode as u32 & libc::S_IFMT;
    if kind != libc::S_IFIFO && kind != libc::S_IFREG && kind != 0 {
        return Err(Errno::EPERM);
    }
    let at = at_path(ctx, dfd, p, false, false, true)?;
    sc(
        libc::SYS_mknodat,
        [at.dirfd as u64, at.name.as_ptr() as u64, mode, dev, 0, 0],
    )
}

fn mknod(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    mknod_common(ctx, AT_FDCWD, a[0], a[1], a[2])
}

fn mknodat(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    mknod_common(ctx, a[0], a[1], a[2], a[3])
}

fn chdir(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let p = path(ctx, a[0])?;
    ctx.process.fs.chdir(None, &p).map(|_| 0)
}

fn getcwd(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let mut cwd = ctx.process.fs.cwd();
    cwd.push(0);
    if (cwd.len() as u64) > a[1] {
        return Err(Errno::ERANGE);
    }
    ctx.process.mem.write_bytes(a[0], &cwd)?;
    Ok(cwd.len() as u64)
}

fn umask(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    Ok(ctx
        .process
        .umask
        .swap(a[0] & 0o777, std::sync::atomic::Ordering::Relaxed))
}
