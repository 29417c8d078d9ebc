//! The path calls' way into the guest's virtual /proc (`crate::procfs`): each returns
//! None when the path is not in /proc, so the caller goes on to the host resolver.

use std::ffi::CStr;

use super::util::{dirfd, PATH_MAX};
use super::{SysResult, SyscallCtx};
use crate::errno::Errno;
use crate::procfs::{self, file, Node, Virtual};
use crate::sync::lock;

/// The /proc node a guest (dirfd, path) names, with its guest path, or None.
fn node(
    ctx: &SyscallCtx<'_>,
    dfd: u64,
    p: &CStr,
    follow: bool,
) -> Result<Option<(Node, Vec<u8>)>, Errno> {
    // A trailing slash, `.` or `..` names a directory: the link is followed.
    let b = p.to_bytes();
    let last = b.rsplit(|&c| c == b'/').next().unwrap_or_default();
    let follow = follow || b.ends_with(b"/") || last == b"." || last == b"..";
    let dir = dirfd(ctx, dfd)?;
    let vbase = dir.as_ref().and_then(|d| d.virt()).map(|v| v.path.clone());
    let host_dir = dir.as_ref().filter(|d| d.virt().is_none()).map(|d| d.raw());
    let Some(comps) = ctx
        .process
        .fs
        .proc_components(host_dir, vbase.as_deref(), p)?
    else {
        return Ok(None);
    };
    let n = procfs::lookup(ctx.process, ctx.thread.tid, &comps, follow)?;
    Ok(Some((n, procfs::path_of(&comps))))
}

/// The node of a virtual descriptor named with AT_EMPTY_PATH and an empty path.
fn empty_path_node(ctx: &SyscallCtx<'_>, dfd: u64, path_gva: u64) -> Result<Option<Node>, Errno> {
    if path_gva != 0 && !ctx.process.mem.read_cstring(path_gva, PATH_MAX)?.is_empty() {
        return Ok(None);
    }
    Ok(dirfd(ctx, dfd)?.and_then(|d| d.virt().map(|v| v.node.clone())))
}

/// open/openat of a /proc path.
pub fn open(ctx: &SyscallCtx<'_>, dfd: u64, p: &CStr, flags: u64) -> Option<SysResult> {
    let flags = flags as i32;
    let (n, path) = match node(ctx, dfd, p, true) {
        Ok(Some(x)) => x,
        Ok(None) => return None,
        Err(e) => return Some(Err(e)),
    };
    Some((|| {
        if flags & libc::O_NOFOLLOW != 0 && flags & libc::O_PATH == 0 && n.is_link() {
            return Err(Errno(libc::ELOOP));
        }
        let f = file::open(ctx.process, n, path, flags)?;
        lock(&ctx.process.fds)
            .install_shared(f, flags & libc::O_CLOEXEC != 0)
            .map(|fd| fd as u64)
    })())
}

/// The /proc node a guest (dirfd, path) names, with its guest path, when it is a constant
/// file (`procfs::constant`); None for anything else, a lookup error included (such an
/// open is left to the ordinary path, which answers it).
pub fn constant_node(ctx: &SyscallCtx<'_>, dfd: u64, p: &CStr) -> Option<(Node, Vec<u8>)> {
    node(ctx, dfd, p, true)
        .ok()
        .flatten()
        .filter(|(n, _)| procfs::constant(n))
}

/// readlink/readlinkat of a /proc path: the guest's view (exe is the program, fd/N
/// the guest path, self the guest pid).
pub fn readlink(ctx: &SyscallCtx<'_>, dfd: u64, p: &CStr, out: u64, len: u64) -> Option<SysResult> {
    let n = match node(ctx, dfd, p, false) {
        Ok(Some((n, _))) => n,
        Ok(None) => return None,
        Err(e) => return Some(Err(e)),
    };
    Some((|| {
        if len as i32 <= 0 {
            return Err(Errno::EINVAL);
        }
        if !n.is_link() {
            return Err(Errno::EINVAL);
        }
        let target = procfs::readlink(ctx.process, &n)?;
        let k = target.len().min(len as usize);
        ctx.process.mem.write_bytes(out, &target[..k])?;
        Ok(k as u64)
    })())
}

/// The stat of a /proc path (or of a virtual descriptor with AT_EMPTY_PATH).
pub fn stat(
    ctx: &SyscallCtx<'_>,
    dfd: u64,
    path_gva: u64,
    follow: bool,
    empty_ok: bool,
) -> Option<Result<libc::stat, Errno>> {
    if empty_ok {
        match empty_path_node(ctx, dfd, path_gva) {
            Ok(Some(n)) => return Some(Ok(file::stat_of(&n))),
            Ok(None) => {}
            Err(e) => return Some(Err(e)),
        }
    }
    let p = match ctx.process.mem.read_cstring(path_gva, PATH_MAX) {
        Ok(p) => p,
        Err(e) => return Some(Err(e)),
    };
    match node(ctx, dfd, &p, follow) {
        Ok(Some((n, _))) => Some(file::stat_path(ctx.process, &n, follow)),
        Ok(None) => None,
        Err(e) => Some(Err(e)),
    }
}

/// statx's buffer filled from a stat.
pub fn write_statx(ctx: &SyscallCtx<'_>, out: u64, st: &libc::stat) -> SysResult {
    // SAFETY: libc::statx is plain data; all-zero is a valid value.
    let mut x: libc::statx = unsafe { std::mem::zeroed() };
    x.stx_mask = libc::STATX_BASIC_STATS;
    x.stx_blksize = st.st_blksize as u32;
    x.stx_nlink = st.st_nlink as u32;
    x.stx_uid = st.st_uid;
    x.stx_gid = st.st_gid;
    x.stx_mode = st.st_mode as u16;
    x.stx_ino = st.st_ino;
    x.stx_size = st.st_size as u64;
    x.stx_blocks = st.st_blocks as u64;
    x.stx_dev_major = ((st.st_dev >> 8) & 0xfff) as u32;
    x.stx_dev_minor = (st.st_dev & 0xff) as u32;
    ctx.process.mem.write_obj(out, &x)?;
    Ok(0)
}

/// access/faccessat of a /proc path: everything is readable, only mem is writable.
pub fn access(ctx: &SyscallCtx<'_>, dfd: u64, path_gva: u64, mode: u64) -> Option<SysResult> {
    let p = match ctx.process.mem.read_cstring(path_gva, PATH_MAX) {
        Ok(p) => p,
        Err(e) => return Some(Err(e)),
    };
    match node(ctx, dfd, &p, true) {
        Ok(Some((n, _))) => {
            let w = mode & libc::W_OK as u64 != 0;
            let x = mode & libc::X_OK as u64 != 0;
            Some(
                if (w && n != Node::Mem) || (x && !n.is_dir() && n != Node::Exe) {
                    Err(Errno::EACCES)
                } else {
                    Ok(0)
                },
            )
        }
        Ok(None) => None,
        Err(e) => Some(Err(e)),
    }
}
