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
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::process::Process;
use crate::sync::lock;

/// Longest path read from the guest (as the path syscalls read them).
const PATH_MAX: usize = 4096;

/// Largest socket address a bind takes (sizeof(struct sockaddr_storage)).
const SOCKADDR_MAX: u64 = 128;

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
            set.insert(if i == 0 {
                b"/".to_vec()
            } else {
                path[..i].to_vec()
            });
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
fn external_fd(p: &Process, fd: u64) -> bool {
    lock(&p.fds)
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
    p: &Process,
    files: &HostFiles,
    (dfd, gva): PathArg,
) -> Result<Option<Vec<u8>>, ()> {
    let Ok(path) = p.mem.read_cstring(gva, PATH_MAX) else {
        // EFAULT alike in both replicas.
        return Ok(None);
    };
    outside_name(p, files, dfd, &path)
}

/// [`outside_path`] of a path already read from the program.
fn outside_name(
    p: &Process,
    files: &HostFiles,
    dfd: u64,
    path: &CStr,
) -> Result<Option<Vec<u8>>, ()> {
    let dir = if dfd as i32 == libc::AT_FDCWD {
        None
    } else {
        match lock(&p.fds).get(dfd as i32 as i64) {
            Ok(f) if f.is_external() => return Err(()),
            Ok(f) => Some(f),
            // EBADF alike in both replicas.
            Err(_) => return Ok(None),
        }
    };
    let dirfd = dir.as_ref().map(|d| d.raw());
    if virtual_path(p, dirfd, path) {
        return Ok(None);
    }
    match p.fs.locate(dirfd, path) {
        Ok((norm, bind)) if !files.is_own(bind) => Ok(Some(norm)),
        _ => Ok(None),
    }
}

/// Whether the path names ditto's virtual /proc (served alike by each replica).
fn virtual_path(p: &Process, dirfd: Option<i32>, path: &CStr) -> bool {
    if dirfd.is_some_and(|d| d < 0) {
        return false;
    }
    matches!(p.fs.proc_components(dirfd, None, path), Ok(Some(_)))
}

/// A call that changes the locations it names: outside when any of them is, and then each
/// outside one is remembered as changed.
fn changes(p: &Process, files: &HostFiles, args: &[PathArg]) -> bool {
    let mut outside = false;
    for &arg in args {
        match outside_path(p, files, arg) {
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
fn reads(p: &Process, files: &HostFiles, arg: PathArg) -> bool {
    match outside_path(p, files, arg) {
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

/// Devices whose bytes are new at every read: each replica reading its own would read
/// other bytes, so they are input from outside, like a socket (the primary reads, the
/// secondary is given the bytes). /dev/null, /dev/zero and /dev/full read alike everywhere.
const RANDOM_DEVICES: [&[u8]; 3] = [b"/dev/random", b"/dev/urandom", b"/dev/hwrng"];

fn open_path(p: &Process, files: &HostFiles, arg: PathArg, flags: u64) -> bool {
    if write_intent(flags) {
        changes(p, files, &[arg])
    } else {
        reads(p, files, arg)
            || matches!(outside_path(p, files, arg), Ok(Some(n)) if RANDOM_DEVICES.contains(&n.as_slice()))
    }
}

/// The file name a bind of an AF_UNIX socket to the address at `addr` (`len` bytes) makes:
/// its path as Linux reads it (up to the first NUL or the address's end), None for another
/// family, an abstract or unnamed address, or one that cannot be read (the call fails).
fn unix_socket_path(p: &Process, addr: u64, len: u64) -> Option<CString> {
    if !(3..=SOCKADDR_MAX).contains(&len) {
        return None;
    }
    let sa = p.mem.read_bytes(addr, len).ok()?;
    if u16::from_ne_bytes([sa[0], sa[1]]) != libc::AF_UNIX as u16 || sa[2] == 0 {
        return None;
    }
    let path = &sa[2..];
    CString::new(&path[..path.iter().position(|&b| b == 0).unwrap_or(path.len())]).ok()
}

/// A bind that made a socket file in the replica's own state: the secondary must make
/// it too. bind is Recorded (the primary binds its socket, the secondary holds a
/// placeholder), but the file it leaves is as much the replica's own as one that open
/// makes there, and the program's later Local calls on that name (chmod, unlink, a create
/// of the same name) must find it in both replicas (sysfuzz seed 20: a bind of "d/x" in
/// its work directory, then a chown of "d/x"). A file made outside is the primary's alone
/// ([`outside`] remembers it as changed).
pub(super) fn binds_own_file(files: &HostFiles, p: &Process, nr: u64, a: [u64; 6]) -> bool {
    if nr as i64 != libc::SYS_bind {
        return false;
    }
    unix_socket_path(p, a[1], a[2])
        .is_some_and(|path| matches!(outside_name(p, files, CWD, &path), Ok(None)))
}

/// Whether this call touches the host's files outside the replica's own state, so that the
/// primary must perform it alone (Recorded). Called in both replicas before the call, with
/// the same arguments, cwd and [`Written`] set, so both decide alike.
#[allow(non_upper_case_globals)]
pub(super) fn outside(files: &HostFiles, p: &Process, nr: u64, a: [u64; 6]) -> bool {
    use libc::*;
    let fd_form = |flags: u64, path: u64| {
        flags & AT_EMPTY_PATH as u64 != 0
            && (path == 0 || p.mem.read_obj::<u8>(path).is_ok_and(|b| b == 0))
    };
    match nr as i64 {
        SYS_open => open_path(p, files, (CWD, a[0]), a[1]),
        SYS_openat => open_path(p, files, (a[0], a[1]), a[2]),
        SYS_creat | SYS_mkdir | SYS_rmdir | SYS_unlink | SYS_chmod | SYS_chown | SYS_lchown
        | SYS_truncate | SYS_mknod => changes(p, files, &[(CWD, a[0])]),
        SYS_mkdirat | SYS_unlinkat | SYS_fchmodat | SYS_mknodat => {
            changes(p, files, &[(a[0], a[1])])
        }
        SYS_fchownat if fd_form(a[4], a[1]) => external_fd(p, a[0]),
        SYS_fchownat => changes(p, files, &[(a[0], a[1])]),
        SYS_utimensat if a[1] == 0 => external_fd(p, a[0]),
        SYS_utimensat => changes(p, files, &[(a[0], a[1])]),
        SYS_rename | SYS_link => changes(p, files, &[(CWD, a[0]), (CWD, a[1])]),
        SYS_renameat | SYS_renameat2 => changes(p, files, &[(a[0], a[1]), (a[2], a[3])]),
        SYS_linkat if fd_form(a[4], a[1]) => {
            external_fd(p, a[0]) || changes(p, files, &[(a[2], a[3])])
        }
        SYS_linkat => changes(p, files, &[(a[0], a[1]), (a[2], a[3])]),
        SYS_symlink => changes(p, files, &[(CWD, a[1])]),
        SYS_symlinkat => changes(p, files, &[(a[1], a[2])]),
        SYS_stat | SYS_lstat | SYS_access | SYS_readlink => reads(p, files, (CWD, a[0])),
        SYS_newfstatat if !fd_form(a[3], a[1]) => reads(p, files, (a[0], a[1])),
        SYS_statx if !fd_form(a[2], a[1]) => reads(p, files, (a[0], a[1])),
        SYS_faccessat | SYS_faccessat2 | SYS_readlinkat => reads(p, files, (a[0], a[1])),
        SYS_copy_file_range => external_fd(p, a[0]) || external_fd(p, a[2]),
        SYS_bind => unix_socket_path(p, a[1], a[2]).is_some_and(|path| {
            match outside_name(p, files, CWD, &path) {
                Ok(Some(name)) => {
                    files.written.insert(&name);
                    true
                }
                Ok(None) => false,
                Err(()) => true,
            }
        }),
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
        assert!(write_intent(
            (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) as u64
        ));
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

    /// A process with root / and the run directory's `primary-state` at /state, and the
    /// call's path strings written into its memory.
    struct Setup {
        process: Process,
        files: HostFiles,
        _out: tempfile::TempDir,
        next: std::cell::Cell<u64>,
    }

    impl Setup {
        fn new() -> Setup {
            let out = tempfile::tempdir().unwrap();
            let state = out.path().join("primary-state");
            std::fs::create_dir(&state).unwrap();
            let mut fs = crate::path::FsContext::new(Path::new("/")).unwrap();
            fs.add_bind("/state", &state).unwrap();
            fs.set_cwd("/tmp");
            let mem = crate::guest_mem::GuestMemory::new(64 << 20).unwrap();
            let layout = crate::address_space::Layout::new(4 << 20, 64 << 20, 1 << 20).unwrap();
            let mut aspace = crate::address_space::AddressSpace::new(layout, 64 << 20);
            // The path strings' pages: path arguments are read as the program's mappings
            // allow.
            let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
            aspace
                .vmas_mut()
                .insert(4 << 20, crate::vma::Vma::anon(8 << 20, rw, false, None));
            let process = Process::new(
                mem,
                aspace,
                fs,
                crate::fd_table::FdTable::new(),
                "/test".into(),
            );
            Setup {
                files: HostFiles::new(out.path()),
                process,
                _out: out,
                next: std::cell::Cell::new(0x50_0000),
            }
        }

        /// A guest copy of `s`, NUL-terminated.
        fn s(&self, s: &str) -> u64 {
            let at = self.next.get();
            let mut b = s.as_bytes().to_vec();
            b.push(0);
            self.process.mem.write_bytes(at, &b).unwrap();
            self.next.set(at + 4096);
            at
        }

        fn outside(&self, nr: i64, a: [u64; 6]) -> bool {
            outside(&self.files, &self.process, nr as u64, a)
        }

        fn openat(&self, path: &str, flags: i32) -> bool {
            self.outside(
                libc::SYS_openat,
                [CWD, self.s(path), flags as u64, 0o644, 0, 0],
            )
        }
    }

    #[test]
    fn changes_outside_are_the_primarys_and_so_are_reads_of_what_they_changed() {
        let t = Setup::new();
        // Only read, never changed: each replica reads it itself.
        assert!(!t.openat("/tmp/d/f", libc::O_RDONLY));
        assert!(!t.outside(libc::SYS_stat, [t.s("d/f"), 0x60_0000, 0, 0, 0, 0]));
        // A create outside: the primary's; and from then on, reads of it and of its
        // directory are too (relative to the cwd or not, however spelled).
        assert!(t.openat("d/f", libc::O_RDWR | libc::O_CREAT | libc::O_EXCL));
        assert!(t.openat("/tmp/d/./f", libc::O_RDONLY));
        assert!(t.openat("/tmp/d", libc::O_RDONLY | libc::O_DIRECTORY));
        assert!(t.outside(libc::SYS_access, [t.s("/tmp/x/../d/f"), 0, 0, 0, 0, 0]));
        assert!(!t.openat("/tmp/d/other", libc::O_RDONLY));
        // A rename's target becomes a changed path.
        assert!(t.outside(libc::SYS_rename, [t.s("d/f"), t.s("/var/g"), 0, 0, 0, 0]));
        assert!(t.outside(libc::SYS_lstat, [t.s("/var/g"), 0x60_0000, 0, 0, 0, 0]));
        // Every kind of change, outside.
        assert!(t.outside(libc::SYS_unlink, [t.s("/var/h"), 0, 0, 0, 0, 0]));
        assert!(t.outside(libc::SYS_mkdirat, [CWD, t.s("e"), 0o755, 0, 0, 0]));
        assert!(t.outside(libc::SYS_symlinkat, [t.s("x"), CWD, t.s("l"), 0, 0, 0]));
        assert!(t.openat("/tmp/log", libc::O_WRONLY | libc::O_APPEND));
    }

    #[test]
    fn the_replicas_own_state_and_virtual_proc_stay_local() {
        let t = Setup::new();
        assert!(!t.openat("/state/dump.rdb", libc::O_RDWR | libc::O_CREAT));
        assert!(!t.outside(libc::SYS_unlink, [t.s("/state/x"), 0, 0, 0, 0, 0]));
        assert!(!t.openat("/proc/self/comm", libc::O_WRONLY));
        // A bad path pointer fails alike in both replicas: nothing to record.
        assert!(!t.outside(libc::SYS_unlink, [0x10, 0, 0, 0, 0, 0]));
        // A bad directory descriptor likewise.
        assert!(!t.outside(libc::SYS_unlinkat, [77, t.s("x"), 0, 0, 0, 0]));
    }

    #[test]
    fn a_unix_bind_makes_a_file_outside_or_in_the_replicas_own_state() {
        let t = Setup::new();
        let sockaddr = |path: &str| {
            let mut sa = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
            sa.extend_from_slice(path.as_bytes());
            sa.push(0);
            let at = t.s("");
            t.process.mem.write_bytes(at, &sa).unwrap();
            [5, at, sa.len() as u64, 0, 0, 0]
        };
        let bind = libc::SYS_bind as u64;
        // In the replica's own state: the secondary makes the file too.
        let own = sockaddr("/state/sock");
        assert!(binds_own_file(&t.files, &t.process, bind, own));
        assert!(!t.outside(libc::SYS_bind, own));
        // Outside: the primary's alone, and a changed path from then on.
        let out = sockaddr("s.sock");
        assert!(!binds_own_file(&t.files, &t.process, bind, out));
        assert!(t.outside(libc::SYS_bind, out));
        assert!(t.outside(libc::SYS_stat, [t.s("/tmp/s.sock"), 0x60_0000, 0, 0, 0, 0]));
        // Abstract and unnamed addresses name no file.
        let mut abs = sockaddr("xabstract");
        t.process.mem.write_bytes(abs[1] + 2, &[0]).unwrap();
        assert!(!binds_own_file(&t.files, &t.process, bind, abs));
        abs[2] = 2;
        assert!(!binds_own_file(&t.files, &t.process, bind, abs));
        // Another call: no.
        assert!(!binds_own_file(
            &t.files,
            &t.process,
            libc::SYS_connect as u64,
            own
        ));
    }

    #[test]
    fn own_binds_are_those_under_the_run_directory() {
        let out = tempfile::tempdir().unwrap();
        let files = HostFiles::new(out.path());
        let own = std::fs::canonicalize(out.path())
            .unwrap()
            .join("primary-state");
        assert!(files.is_own(Some(&own)));
        assert!(!files.is_own(Some(Path::new("/tmp"))));
        assert!(!files.is_own(None));
    }
}
