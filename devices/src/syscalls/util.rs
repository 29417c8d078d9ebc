//! Helpers shared by the subsystem files: descriptor lookup, pointer checks,
//! path arguments and raw host syscalls.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use super::{SysResult, SyscallCtx};
use crate::errno::{host_result, Errno};
use crate::fd_table::OpenFile;
use crate::path::Resolved;
use crate::sync::lock;
use guest_memory::Access;

/// Linux's PATH_MAX.
pub const PATH_MAX: usize = 4096;

/// The open file behind a guest descriptor argument (an `int` in the ABI).
pub fn file(ctx: &SyscallCtx<'_>, fd: u64) -> Result<Arc<OpenFile>, Errno> {
    lock(&ctx.process.fds).get(fd as i32 as i64)
}

/// A checked host pointer for a program buffer the host call will `access` (Write: the
/// kernel writes into it; Read: it reads it): EFAULT unless the program's mappings
/// allow that on the whole buffer, as Linux's copies fault.
pub fn buf(ctx: &SyscallCtx<'_>, gva: u64, len: u64, access: Access) -> Result<*mut u8, Errno> {
    ctx.process.mem.user_range(gva, len, access)
}

/// Like `buf`, but NULL stays NULL (optional out-parameters).
pub fn opt_buf(ctx: &SyscallCtx<'_>, gva: u64, len: u64, access: Access) -> Result<*mut u8, Errno> {
    if gva == 0 {
        Ok(std::ptr::null_mut())
    } else {
        buf(ctx, gva, len, access)
    }
}

/// The data buffer of a call that returns a short count when its copy faults part-way
/// (read, write, recv, send, getrandom): the host pointer and the accessible length to
/// pass on, EFAULT when not one byte is accessible.
pub fn data_buf(
    ctx: &SyscallCtx<'_>,
    gva: u64,
    len: u64,
    access: Access,
) -> Result<(*mut u8, u64), Errno> {
    ctx.process.mem.user_prefix(gva, len, access)
}

/// A path argument.
pub fn path(ctx: &SyscallCtx<'_>, gva: u64) -> Result<CString, Errno> {
    ctx.process.mem.read_cstring(gva, PATH_MAX)
}

/// A raw host syscall with six arguments.
pub fn sc(nr: i64, a: [u64; 6]) -> SysResult {
    // SAFETY: callers pass only translated host pointers that were range-checked
    // against guest memory, and host descriptors they hold a reference to.
    host_result(unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) })
}

/// Installs a descriptor the host just returned into the guest table.
pub fn install(ctx: &SyscallCtx<'_>, host_fd: u64, cloexec: bool) -> SysResult {
    // SAFETY: host_fd was just returned by a successful host syscall and is ours.
    let owned = unsafe { OwnedFd::from_raw_fd(host_fd as RawFd) };
    lock(&ctx.process.fds)
        .install(owned, cloexec)
        .map(|fd| fd as u64)
}

/// Installs the two descriptors a host pipe2/socketpair just returned and writes their
/// guest numbers to `out`. All or nothing: when the table has room for one only, or the
/// numbers cannot be written, both are closed and no guest number stays taken.
pub fn install_pair(ctx: &SyscallCtx<'_>, host: [i32; 2], cloexec: bool, out: u64) -> SysResult {
    // SAFETY: both were just returned by a successful host call and are ours; owning
    // them at once closes them on every error below.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(host[0]), OwnedFd::from_raw_fd(host[1])) };
    let mut table = lock(&ctx.process.fds);
    let x = table.install(a, cloexec)?;
    let y = match table.install(b, cloexec) {
        Ok(y) => y,
        Err(e) => {
            let _ = table.close(x);
            return Err(e);
        }
    };
    if let Err(e) = ctx.process.mem.write_obj(out, &[x as i32, y as i32]) {
        let _ = table.close(x);
        let _ = table.close(y);
        return Err(e);
    }
    Ok(0)
}

/// The directory a `*at` call is relative to: None for AT_FDCWD.
pub fn dirfd(ctx: &SyscallCtx<'_>, fd: u64) -> Result<Option<Arc<OpenFile>>, Errno> {
    if fd as i32 == libc::AT_FDCWD {
        Ok(None)
    } else {
        file(ctx, fd).map(Some)
    }
}

/// The (dirfd, name) pair a host `*at` call should use for a guest `*at` call, with
/// the objects it refers to kept alive.
pub struct AtPath {
    _dir: Option<Arc<OpenFile>>,
    _resolved: Option<Resolved>,
    /// Host directory descriptor (or AT_FDCWD).
    pub dirfd: RawFd,
    /// Name relative to it.
    pub name: CString,
    /// Whether the caller must pass AT_EMPTY_PATH (name is empty, dirfd is the object).
    pub empty: bool,
    /// Whether name is the `/proc/self/fd/N` magic link to the already resolved object
    /// (a path the resolver opened itself: the root, `.`, `..`, a bind's own path). That
    /// link is the host's, not the guest's: AT_SYMLINK_NOFOLLOW on it would stat or read
    /// the link itself (a symlink to a host path) instead of the directory the guest named.
    pub resolved_link: bool,
}

impl AtPath {
    /// The flags for the host `*at` call from the guest's: AT_EMPTY_PATH when the
    /// descriptor is the object, and AT_SYMLINK_NOFOLLOW dropped on the resolver's own
    /// magic link (the object behind it is what the guest's name, unfollowed, names).
    pub fn host_flags(&self, guest_flags: u64) -> u64 {
        let mut f = guest_flags & !(libc::AT_EMPTY_PATH as u64);
        if self.empty {
            f |= libc::AT_EMPTY_PATH as u64;
        }
        if self.resolved_link {
            f &= !(libc::AT_SYMLINK_NOFOLLOW as u64);
        }
        f
    }
}

/// Resolves a guest (dirfd, path, flags) triple. `follow` says whether a final symlink
/// is followed; AT_EMPTY_PATH with an empty path names the descriptor itself.
pub fn at_path(
    ctx: &SyscallCtx<'_>,
    dfd: u64,
    path_gva: u64,
    follow: bool,
    empty_ok: bool,
    mutating: bool,
) -> Result<AtPath, Errno> {
    let p = if empty_ok && path_gva != 0 {
        // AT_EMPTY_PATH allows "" (and some libcs pass NULL with it).
        ctx.process.mem.read_cstring(path_gva, PATH_MAX)?
    } else if empty_ok {
        CString::default()
    } else {
        path(ctx, path_gva)?
    };
    let dir = dirfd(ctx, dfd)?;
    if p.as_bytes().is_empty() {
        if !empty_ok {
            return Err(Errno::ENOENT);
        }
        return match dir {
            Some(d) => Ok(AtPath {
                dirfd: d.raw(),
                _dir: Some(d),
                _resolved: None,
                name: CString::default(),
                empty: true,
                resolved_link: false,
            }),
            None => {
                let r = ctx.process.fs.target(None, c".", mutating)?;
                let (dirfd, name) = r.at();
                Ok(AtPath {
                    _dir: None,
                    _resolved: Some(r),
                    dirfd,
                    name,
                    empty: false,
                    resolved_link: true,
                })
            }
        };
    }
    let host_dir = dir.as_ref().map(|d| d.raw());
    let r = if follow {
        ctx.process.fs.target(host_dir, &p, mutating)?
    } else {
        ctx.process.fs.parent(host_dir, &p, mutating)?
    };
    let (dirfd, name) = r.at();
    let resolved_link = matches!(r, Resolved::Target(_));
    Ok(AtPath {
        _dir: dir,
        _resolved: Some(r),
        dirfd,
        name,
        empty: false,
        resolved_link,
    })
}

/// The guest address of element `i` of an array at `base` with `size`-byte elements;
/// EFAULT when it does not fit in the address space (a wrapped address could land in
/// the system area's range checks by accident).
pub fn elem(base: u64, i: u64, size: u64) -> Result<u64, Errno> {
    i.checked_mul(size)
        .and_then(|off| base.checked_add(off))
        .ok_or(Errno::EFAULT)
}

/// Reads a guest iovec array and returns host iovecs for the host call to `access`.
///
/// As Linux's vectored copies, which stop at the first fault and return what they
/// copied: the list ends where the first inaccessible byte is (that entry cut short);
/// EFAULT when that leaves nothing of a non-empty request.
pub fn iovecs(
    ctx: &SyscallCtx<'_>,
    iov: u64,
    count: u64,
    access: Access,
) -> Result<Vec<libc::iovec>, Errno> {
    if count > 1024 {
        return Err(Errno::EINVAL);
    }
    let mut entries = Vec::with_capacity(count as usize);
    for i in 0..count {
        // Each entry is read once, into this copy; the host never sees the guest array.
        let at = elem(iov, i, 16)?;
        let [base, len]: [u64; 2] = ctx.process.mem.read_obj(at)?;
        if len > isize::MAX as u64 {
            return Err(Errno::EINVAL);
        }
        entries.push((base, len));
    }
    let mut v = Vec::with_capacity(entries.len());
    for (base, len) in entries {
        let n = ctx.process.mem.accessible(base, len, access);
        v.push(libc::iovec {
            iov_base: ctx.process.mem.user_bounds(base, n)? as *mut libc::c_void,
            iov_len: n as usize,
        });
        if n < len {
            if v.iter().all(|e| e.iov_len == 0) {
                return Err(Errno::EFAULT);
            }
            break;
        }
    }
    Ok(v)
}

/// A write that got EPIPE also raises SIGPIPE at the writing thread, as natively:
/// with the default action the program ends; a handler runs after the call returns.
pub fn epipe_kills(ctx: &mut SyscallCtx<'_>, r: SysResult) -> SysResult {
    if r != Err(Errno(libc::EPIPE)) {
        return r;
    }
    let sig = libc::SIGPIPE;
    let fate = ctx
        .process
        .signals
        .send_thread(ctx.thread.tid, sig, ctx.process.sigaction(sig));
    if fate == Some(crate::signals::Fate::Terminate) {
        ctx.process.finish(crate::exit::ExitReason::Signaled {
            signal: sig,
            report: String::new(),
        });
        ctx.action = super::ThreadAction::Stop;
    }
    r
}
