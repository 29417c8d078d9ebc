//! The host's files in a pair (docs/pair.md, "Host files"): which path and descriptor calls
//! touch host state that both replicas see, and so must be performed once, by the primary.
//!
//! A location is **outside** when it lies in the program's root or in a bind whose host
//! directory is not under the pair's run directory (the replica's own state directories live
//! there: `OUT/primary-state`, `OUT/secondary-state`). The host's files are one set of files
//! for both replicas, like the network: a call that changes them (an open with write intent,
//! unlink, rename, mkdir, chmod, truncate...) is Recorded, so the primary performs it and the
//! secondary is given its result, and the descriptor it opens reaches outside (reads through
//! it Recorded, writes Compared, as for a socket; the secondary holds a placeholder).
//!
//! Files only read stay Local (the program, its libraries, /etc): each replica reads them
//! itself. A path the pair has changed is another matter: what is there now is whatever the
//! primary made of it, at a time the secondary does not share. Both replicas keep the set of
//! outside paths the program's calls changed ([`Written`]), and a later read of one (an
//! O_RDONLY open, stat, access, readlink) is Recorded too. The decision is lexical, from the
//! call's arguments, the cwd and the set, so both replicas make it alike without a record.

use std::collections::HashSet;
use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::sync::lock;
use crate::syscalls::SyscallCtx;

/// Longest path read from the guest (as the path syscalls read them).
const PATH_MAX: usize = 4096;

/// Most paths [`Written`] remembers; beyond that every outside read is Recorded, which is
/// correct, only slower.
const WRITTEN_CAP: usize = 1 << 16;

/// The outside paths (normalised, absolute guest paths) the program's calls changed, and
/// the directories that hold them.
#[derive(Debug, Default)]
pub struct Written {
    paths: Mutex<HashSet<Vec<u8>>>,
    overflowed: std::sync::atomic::AtomicBool,
}

impl Written {
    fn insert(&self, path: &[u8]) {
        let mut set = lock(&self.paths);
        if set.len() >= WRITTEN_CAP {
            self.overflowed
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        set.insert(path.to_vec());
        // The directory that holds it: a listing of it shows the change.
        if let Some(i) = path.iter().rposition(|&b| b == b'/') {
            set.insert(if i == 0 { b"/".to_vec() } else { path[..i].to_vec() });
        }
    }

    fn contains(&self, path: &[u8]) -> bool {
        self.overflowed.load(std::sync::atomic::Ordering::Relaxed)
            || lock(&self.paths).contains(path)
    }
}

/// What a pair needs to tell outside locations from a replica's own.
#[derive(Debug)]
pub struct HostFiles {
    /// The pair's run directory, canonical: binds under it are the replica's own.
    own: PathBuf,
    /// The outside paths changed so far.
    written: Written,
}

impl HostFiles {
    /// Outside is everything but the binds under `own` (the pair's run directory).
    pub fn new(own: &Path) -> Self {
        HostFiles {
            own: std::fs::canonicalize(own).unwrap_or_else(|_| own.to_path_buf()),
            written: Written::default(),
        }
    }

    fn is_own(&self, bind: Option<&Path>) -> bool {
        bind.is_some_and(|b| b.starts_with(&self.own))
    }
}

/// Whether a guest descriptor reaches outside the program.
fn external_fd(ctx: &SyscallCtx<'_>, fd: u64) -> bool {
    lock(&ctx.process.fds)
        .get(fd as i32 as i64)
        .is_ok_and(|f| f.is_external())
}

/// One path argument of a call: (dirfd, path pointer).
type PathArg = (u64, u64);

const CWD: u64 = libc::AT_FDCWD as u32 as u64;

/// Where one path argument lies: its normalised form if it is outside, None if it is the
/// replica's own (or /proc's, which ditto serves itself), Err(()) when it cannot be told
/// lexically because its directory descriptor reaches outside (a placeholder in the
/// secondary): then the primary must decide.
fn outside_path(
    ctx: &SyscallCtx<'_>,
    files: &HostFiles,
    (dfd, gva): PathArg,
) -> Result<Option<Vec<u8>>, ()> {
    let Ok(path) = ctx.process.mem.read_cstring(gva, PATH_MAX) else {
        // EFAULT alike in both replicas.
        return Ok(None);
    };
    let dir = if dfd as i32 == libc::AT_FDCWD {
        None
    } else {
        match lock(&ctx.process.fds).get(dfd as i32 as i64) {
            Ok(f) if f.is_external() => return Err(()),
            Ok(f) => Some(f),
            // EBADF alike in both replicas.
            Err(_) => return Ok(None),
        }
    };
    let dirfd = dir.as_ref().map(|d| d.raw());
    if virtual_path(ctx, dirfd, &path) {
        return Ok(None);
    }
    match ctx.process.fs.locate(dirfd, &path) {
        Ok((norm, bind)) if !files.is_own(bind) => Ok(Some(norm)),
        _ => Ok(None),
    }
}

/// Whether the path names ditto's virtual /proc (served alike by each replica).
fn virtual_path(ctx: &SyscallCtx<'_>, dirfd: Option<i32>, path: &CStr) -> bool {
    if dirfd.is_some_and(|d| d < 0) {
        return false;
    }
    matches!(ctx.process.fs.proc_components(dirfd, None, path), Ok(Some(_)))
}

/// A call that changes the locations it names: outside when any of them is, and then each
/// outside one is remembered as changed.
fn changes(ctx: &SyscallCtx<'_>, files: &HostFiles, args: &[PathArg]) -> bool {
    let mut outside = false;
    for &arg in args {
        match outside_path(ctx, files, arg) {
            Ok(Some(p)) => {
                files.written.insert(&p);
                outside = true;
            }
            Ok(None) => {}
            Err(()) => outside = true,
        }
    }
    outside
}

/// A call that only reads the location it names: outside when the pair changed it.
fn reads(ctx: &SyscallCtx<'_>, files: &HostFiles, arg: PathArg) -> bool {
    match outside_path(ctx, files, arg) {
        Ok(Some(p)) => files.written.contains(&p),
        Ok(None) => false,
        Err(()) => true,
    }
}

/// Open flags that change the file or make one.
fn write_intent(flags: u64) -> bool {
    let f = flags as i32;
    f & (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) != 0
        || f & libc::O_TMPFILE == libc::O_TMPFILE
}

fn open_path(ctx: &SyscallCtx<'_>, files: &HostFiles, arg: PathArg, flags: u64) -> bool {
    if write_intent(flags) {
        changes(ctx, files, &[arg])
    } else {
        reads(ctx, files, arg)
    }
}

/// Whether this call touches the host's files outside the replica's own state, so that the
/// primary must perform it alone (Recorded). Called in both replicas before the call, with
/// the same arguments, cwd and [`Written`] set, so both decide alike.
#[allow(non_upper_case_globals)]
pub(super) fn outside(files: &HostFiles, ctx: &SyscallCtx<'_>, a: [u64; 6]) -> bool {
    use libc::*;
    let fd_form = |flags: u64, path: u64| {
        flags & AT_EMPTY_PATH as u64 != 0
            && (path == 0 || ctx.process.mem.read_obj::<u8>(path).is_ok_and(|b| b == 0))
    };
    match ctx.nr as i64 {
        SYS_open => open_path(ctx, files, (CWD, a[0]), a[1]),
        SYS_openat => open_path(ctx, files, (a[0], a[1]), a[2]),
        SYS_creat | SYS_mkdir | SYS_rmdir | SYS_unlink | SYS_chmod | SYS_chown | SYS_lchown
        | SYS_truncate | SYS_mknod => changes(ctx, files, &[(CWD, a[0])]),
        SYS_mkdirat | SYS_unlinkat | SYS_fchmodat | SYS_mknodat => {
            changes(ctx, files, &[(a[0], a[1])])
        }
        SYS_fchownat if fd_form(a[4], a[1]) => external_fd(ctx, a[0]),
        SYS_fchownat => changes(ctx, files, &[(a[0], a[1])]),
        SYS_utimensat if a[1] == 0 => external_fd(ctx, a[0]),
        SYS_utimensat => changes(ctx, files, &[(a[0], a[1])]),
        SYS_rename | SYS_link => changes(ctx, files, &[(CWD, a[0]), (CWD, a[1])]),
        SYS_renameat | SYS_renameat2 => changes(ctx, files, &[(a[0], a[1]), (a[2], a[3])]),
        SYS_linkat if fd_form(a[4], a[1]) => {
            external_fd(ctx, a[0]) || changes(ctx, files, &[(a[2], a[3])])
        }
        SYS_linkat => changes(ctx, files, &[(a[0], a[1]), (a[2], a[3])]),
        SYS_symlink => changes(ctx, files, &[(CWD, a[1])]),
        SYS_symlinkat => changes(ctx, files, &[(a[1], a[2])]),
        SYS_stat | SYS_lstat | SYS_access | SYS_readlink => reads(ctx, files, (CWD, a[0])),
        SYS_newfstatat if !fd_form(a[3], a[1]) => reads(ctx, files, (a[0], a[1])),
        SYS_statx if !fd_form(a[2], a[1]) => reads(ctx, files, (a[0], a[1])),
        SYS_faccessat | SYS_faccessat2 | SYS_readlinkat => reads(ctx, files, (a[0], a[1])),
        SYS_copy_file_range => external_fd(ctx, a[0]) || external_fd(ctx, a[2]),
        _ => false,
    }
}

/// Whether a Recorded open made a descriptor that reaches outside (both replicas: the
/// primary marks its own, the secondary installs a placeholder).
pub(super) fn opens_descriptor(nr: u64) -> bool {
    matches!(
        nr as i64,
        libc::SYS_open | libc::SYS_openat | libc::SYS_creat
    )
}

/// O_CLOEXEC of a Recorded open.
pub(super) fn open_cloexec(nr: u64, a: [u64; 6]) -> bool {
    let flags = match nr as i64 {
        libc::SYS_open => a[1],
        libc::SYS_openat => a[2],
        _ => 0,
    };
    flags & libc::O_CLOEXEC as u64 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_intent_flags() {
        assert!(!write_intent(libc::O_RDONLY as u64));
        assert!(!write_intent((libc::O_RDONLY | libc::O_DIRECTORY) as u64));
        assert!(!write_intent((libc::O_RDONLY | libc::O_CLOEXEC) as u64));
        assert!(write_intent(libc::O_WRONLY as u64));
        assert!(write_intent((libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) as u64));
        assert!(write_intent((libc::O_RDONLY | libc::O_APPEND) as u64));
        assert!(write_intent(libc::O_TMPFILE as u64));
    }

    #[test]
    fn written_paths_and_their_directory() {
        let w = Written::default();
        w.insert(b"/tmp/d/log");
        assert!(w.contains(b"/tmp/d/log"));
        assert!(w.contains(b"/tmp/d"));
        assert!(!w.contains(b"/tmp"));
        w.insert(b"/top");
        assert!(w.contains(b"/"));
    }

    #[test]
    fn own_binds_are_those_under_the_run_directory() {
        let out = tempfile::tempdir().unwrap();
        let files = HostFiles::new(out.path());
        let own = std::fs::canonicalize(out.path()).unwrap().join("primary-state");
        assert!(files.is_own(Some(&own)));
        assert!(!files.is_own(Some(Path::new("/tmp"))));
        assert!(!files.is_own(None));
    }
}
