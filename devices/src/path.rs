//! Path resolution confined to the program's root.
//!
//! Every path the program names is resolved by the host kernel with
//! `openat2(root, path, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: `..` stops at the
//! root and absolute symlinks are resolved inside it, so nothing above the root is
//! reachable, and `/proc/self/fd/N` cannot reach the VMM's own descriptors.
//! Relative paths are joined to the program's cwd (a path inside the root) first.
//!
//! Calls that follow the last symlink get an `O_PATH` descriptor of the target;
//! calls that act on the last component itself (unlink, mkdir, lstat, rename...)
//! get the parent directory and the last name.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::errno::Errno;
use crate::sync::lock;

/// Errors from setting up the root.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// The root directory cannot be opened.
    #[error("cannot open root directory {path}: {source}")]
    Open {
        /// The path given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A host directory that appears at a guest path (an image's writable directory,
/// backed by the run's own state directory).
struct Bind {
    /// Guest path, absolute, without a trailing slash.
    guest: Vec<u8>,
    fd: OwnedFd,
    host: PathBuf,
    /// Writes through it fail with EROFS (a pair's secondary sees the host cwd so).
    read_only: AtomicBool,
    /// A pair's secondary: read-only until it takes over from a dead primary, then
    /// writable, as the primary's was ([`FsContext::go_live`]).
    writable_when_live: bool,
}

/// The program's view of the filesystem.
pub struct FsContext {
    root: OwnedFd,
    root_path: PathBuf,
    /// When set, the root is read-only (EROFS) and only binds are writable: an image
    /// in the cache must never be changed by a program run from it.
    read_only_root: AtomicBool,
    /// A pair's secondary whose primary had a writable root: writable once it takes over.
    root_writable_when_live: bool,
    binds: Vec<Bind>,
    cwd: Mutex<Vec<u8>>,
}

/// A resolved path, in the form the *at syscalls want.
pub enum Resolved {
    /// The target itself, as an O_PATH descriptor (following the last symlink).
    Target(OwnedFd),
    /// The parent directory and the last component.
    Parent(OwnedFd, CString),
}

impl Resolved {
    /// A path string the host resolves to exactly this object: `/proc/self/fd/N` for a
    /// target, usable with `dirfd()` == AT_FDCWD.
    pub fn at(&self) -> (RawFd, CString) {
        match self {
            Resolved::Target(fd) => (
                libc::AT_FDCWD,
                CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL"),
            ),
            Resolved::Parent(fd, name) => (fd.as_raw_fd(), name.clone()),
        }
    }
}

/// `struct open_how` (libc's is non-exhaustive, so it cannot be built literally).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn openat2(
    dirfd: RawFd,
    path: &CStr,
    flags: u64,
    mode: u64,
    resolve: u64,
) -> Result<OwnedFd, Errno> {
    let how = OpenHow {
        flags,
        mode: if flags & (libc::O_CREAT | libc::O_TMPFILE) as u64 != 0 {
            mode & 0o7777
        } else {
            0
        },
        resolve,
    };
    // SAFETY: valid C string and open_how struct of the size we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

const CONFINE: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;

/// statfs f_type of a procfs.
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// `openat2` for a guest path, with the backstop that keeps the host's procfs out of
/// reach: /proc paths go to the virtual tree before they get here, but a symlink
/// (`/tmp/x -> /proc/self/mem`, `/etc/mtab`) or a procfs inside an image root would
/// still resolve to the host's, where `self` is the VMM. Anything on a procfs is ENOENT.
fn openat2_guest(dirfd: RawFd, path: &CStr, flags: u64, mode: u64) -> Result<OwnedFd, Errno> {
    let fd = openat2(dirfd, path, flags, mode, CONFINE)?;
    // SAFETY: libc::statfs is plain data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs of a descriptor we own into a buffer of the right size.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(Errno::last());
    }
    if st.f_type as i64 == PROC_SUPER_MAGIC {
        return Err(Errno::ENOENT);
    }
    Ok(fd)
}

/// Opens a host directory as an O_PATH descriptor, with its canonical path.
fn open_host_dir(dir: &Path) -> Result<(OwnedFd, PathBuf), RootError> {
    let err = |source| RootError::Open {
        path: dir.to_path_buf(),
        source,
    };
    let canonical = std::fs::canonicalize(dir).map_err(err)?;
    let c = CString::new(canonical.as_os_str().as_bytes())
        .map_err(|_| err(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
    let flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    let fd = openat2(libc::AT_FDCWD, &c, flags, 0, 0)
        .map_err(|e| err(std::io::Error::from_raw_os_error(e.0)))?;
    Ok((fd, canonical))
}

impl FsContext {
    /// Opens `root` and sets the cwd: the host cwd when it lies inside the root (so
    /// `ditto run -- prog relative/file` works as natively), else `/`.
    pub fn new(root: &Path) -> Result<FsContext, RootError> {
        let (fd, root_path) = open_host_dir(root)?;
        let cwd = std::env::current_dir()
            .ok()
            .and_then(|d| {
                d.strip_prefix(&root_path)
                    .ok()
                    .map(|rel| format!("/{}", rel.display()).into_bytes())
            })
            .unwrap_or_else(|| b"/".to_vec());
        Ok(FsContext {
            root: fd,
            root_path,
            read_only_root: AtomicBool::new(false),
            root_writable_when_live: false,
            binds: Vec::new(),
            cwd: Mutex::new(cwd),
        })
    }

    /// Makes the root read-only; writes must go to binds.
    pub fn set_read_only_root(&mut self) {
        self.read_only_root.store(true, Ordering::Relaxed);
    }

    /// A pair's secondary whose primary writes the root: the root becomes writable when it
    /// takes over ([`go_live`](Self::go_live)).
    pub fn set_root_writable_when_live(&mut self) {
        self.root_writable_when_live = true;
    }

    /// Failover: the secondary took over from a dead primary and now writes what the
    /// primary wrote (the directories and root it saw read-only until now).
    pub fn go_live(&self) {
        for b in self.binds.iter().filter(|b| b.writable_when_live) {
            b.read_only.store(false, Ordering::Relaxed);
        }
        if self.root_writable_when_live {
            self.read_only_root.store(false, Ordering::Relaxed);
        }
    }

    /// Sets the cwd (a path inside the root).
    pub fn set_cwd(&self, guest: &str) {
        *lock(&self.cwd) = guest.as_bytes().to_vec();
    }

    /// Shows host directory `host` at guest path `guest` (absolute).
    pub fn add_bind(&mut self, guest: &str, host: &Path) -> Result<(), RootError> {
        self.bind(guest, host, false, false)
    }

    /// Like [`add_bind`](Self::add_bind), but read-only until [`go_live`](Self::go_live): a
    /// pair's secondary sees the primary's writable directories so.
    pub fn add_bind_writable_when_live(
        &mut self,
        guest: &str,
        host: &Path,
    ) -> Result<(), RootError> {
        self.bind(guest, host, true, true)
    }

    /// Like [`add_bind`](Self::add_bind), but writes through it fail with EROFS.
    pub fn add_read_only_bind(&mut self, guest: &str, host: &Path) -> Result<(), RootError> {
        self.bind(guest, host, true, false)
    }

    fn bind(
        &mut self,
        guest: &str,
        host: &Path,
        read_only: bool,
        writable_when_live: bool,
    ) -> Result<(), RootError> {
        let (fd, host) = open_host_dir(host)?;
        let g = guest.trim_end_matches('/').as_bytes().to_vec();
        // A later bind of the same guest path replaces the earlier one.
        self.binds.retain(|b| b.guest != g);
        self.binds.push(Bind {
            guest: g,
            fd,
            host,
            read_only: AtomicBool::new(read_only),
            writable_when_live,
        });
        // Longest prefix first, so nested binds win.
        self.binds.sort_by_key(|b| std::cmp::Reverse(b.guest.len()));
        Ok(())
    }

    /// Splits an absolute guest path into the directory descriptor it resolves in
    /// (root or a bind) and the path below it; refuses writes to a read-only root.
    fn place(&self, abs: &CStr, mutating: bool) -> Result<(RawFd, CString), Errno> {
        let p = abs.to_bytes();
        for b in &self.binds {
            if p.starts_with(&b.guest) && (p.len() == b.guest.len() || p[b.guest.len()] == b'/') {
                let rest = &p[b.guest.len()..];
                let rest = if rest.is_empty() {
                    b"/".as_slice()
                } else {
                    rest
                };
                if mutating && b.read_only.load(Ordering::Relaxed) {
                    return Err(Errno(libc::EROFS));
                }
                return Ok((
                    b.fd.as_raw_fd(),
                    CString::new(rest).map_err(|_| Errno::EINVAL)?,
                ));
            }
        }
        if mutating && self.read_only_root.load(Ordering::Relaxed) {
            return Err(Errno(libc::EROFS));
        }
        Ok((self.root.as_raw_fd(), abs.to_owned()))
    }

    /// Whether the absolute guest path `abs` names nothing because its first component is
    /// missing from the root and no bind provides it (`/proc/...` and `/sys/...` in an image
    /// root). The answer cannot depend on timing, so an open of such a path needs no det
    /// point: glibc makes some from whichever thread first needs a lazily read setting
    /// (`/proc/sys/vm/overcommit_memory` when a malloc heap first shrinks), and as det points
    /// they would give that race a place in the schedule.
    pub fn top_level_missing(&self, abs: &[u8]) -> bool {
        let Some(rest) = abs.strip_prefix(b"/") else {
            return false;
        };
        let first = rest.split(|&b| b == b'/').next().unwrap_or_default();
        // An image root has no /proc entry, so under --det its virtual /proc stays
        // ENOENT here: glibc's lazy, racy reads of /proc/sys/vm settings must not become
        // det points (see above), and an open that succeeded would need one.
        if first.is_empty() || first == b"." || first == b".." {
            return false;
        }
        let covered = self.binds.iter().any(|b| {
            b.guest.get(1..).is_some_and(|g| {
                g.starts_with(first) && (g.len() == first.len() || g[first.len()] == b'/')
            })
        });
        if covered {
            return false;
        }
        let Ok(name) = CString::new(first) else {
            return false;
        };
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstatat on the root descriptor we own, a NUL-terminated name without a
        // slash, and a stat buffer of the right size; the result is checked.
        let r = unsafe {
            libc::fstatat(
                self.root.as_raw_fd(),
                name.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        r < 0 && Errno::last() == Errno::ENOENT
    }

    /// The components below `/proc` of a path whose lexically normalised absolute form
    /// lies in /proc (the guest's virtual tree; `/dev/fd/N` and `/dev/std*` are aliases of
    /// `/proc/self/fd/N`), else None. `virt_base` is the guest path
    /// of a virtual directory the path is relative to; `dirfd` a host directory.
    pub fn proc_components(
        &self,
        dirfd: Option<RawFd>,
        virt_base: Option<&[u8]>,
        path: &CStr,
    ) -> Result<Option<Vec<Vec<u8>>>, Errno> {
        let p = path.to_bytes();
        let base = match (p.first(), virt_base) {
            (Some(b'/'), _) => b"/".to_vec(),
            (_, Some(v)) => v.to_vec(),
            // A host directory (the cwd included) is never inside the host's procfs (the
            // backstop refuses those), so only a `..` can climb from it into /proc.
            _ if !p.split(|&b| b == b'/').any(|c| c == b"..") => return Ok(None),
            (_, None) => match dirfd {
                None => self.cwd(),
                Some(fd) => self.dir_path(fd)?,
            },
        };
        let comps = normalise(&base, path);
        let c: Vec<&[u8]> = comps.iter().map(|c| c.as_slice()).collect();
        let own = |rest: &[Vec<u8>]| {
            let mut v = vec![b"self".to_vec(), b"fd".to_vec()];
            v.extend_from_slice(rest);
            Some(v)
        };
        // /dev/fd and /dev/std* are symlinks into /proc/self/fd, whose magic links the
        // host resolver refuses: they are the virtual tree's too.
        Ok(match c.as_slice() {
            [b"proc", ..] => Some(comps[1..].to_vec()),
            [b"dev", b"fd", ..] => own(&comps[2..]),
            [b"dev", b"stdin"] => own(&[b"0".to_vec()]),
            [b"dev", b"stdout"] => own(&[b"1".to_vec()]),
            [b"dev", b"stderr"] => own(&[b"2".to_vec()]),
            _ => None,
        })
    }

    /// Where a guest path lies, lexically (no symlink is followed): its normalised absolute
    /// form, and the host directory of the bind it falls under (None: the root). A pair
    /// decides from this which calls touch host files outside a replica's own state
    /// directory, the same way in both replicas (`replication::hostfs`).
    pub fn locate(
        &self,
        dirfd: Option<RawFd>,
        path: &CStr,
    ) -> Result<(Vec<u8>, Option<&Path>), Errno> {
        let abs = self.absolute(dirfd, path)?;
        let mut norm = Vec::new();
        for c in normalise(b"/", &abs) {
            norm.push(b'/');
            norm.extend_from_slice(&c);
        }
        if norm.is_empty() {
            norm.push(b'/');
        }
        let bind = self.binds.iter().find(|b| {
            norm.starts_with(&b.guest)
                && (norm.len() == b.guest.len() || norm[b.guest.len()] == b'/')
        });
        Ok((norm, bind.map(|b| b.host.as_path())))
    }

    /// The canonical host path of the root.
    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// The cwd, as a path inside the root.
    pub fn cwd(&self) -> Vec<u8> {
        lock(&self.cwd).clone()
    }

    /// Maps a host path of an object inside the root to the program's view of it.
    pub fn guest_path_of_host(&self, host: &Path) -> Option<Vec<u8>> {
        for b in &self.binds {
            if let Ok(rel) = host.strip_prefix(&b.host) {
                let mut v = b.guest.clone();
                if !rel.as_os_str().is_empty() {
                    v.push(b'/');
                    v.extend_from_slice(rel.as_os_str().as_bytes());
                }
                if v.is_empty() {
                    v.push(b'/');
                }
                return Some(v);
            }
        }
        let rel = host.strip_prefix(&self.root_path).ok()?;
        let mut v = b"/".to_vec();
        v.extend_from_slice(rel.as_os_str().as_bytes());
        Some(v)
    }

    /// The guest path of a directory descriptor (for *at calls with a real dirfd).
    fn dir_path(&self, host_dirfd: RawFd) -> Result<Vec<u8>, Errno> {
        let link =
            std::fs::read_link(format!("/proc/self/fd/{host_dirfd}")).map_err(Errno::from)?;
        self.guest_path_of_host(&link).ok_or(Errno::ENOENT)
    }

    /// Joins `path` to the directory it is relative to: the cwd when `dirfd` is None
    /// (AT_FDCWD), else the directory behind the host descriptor.
    fn absolute(&self, dirfd: Option<RawFd>, path: &CStr) -> Result<CString, Errno> {
        let p = path.to_bytes();
        if p.is_empty() {
            return Err(Errno::ENOENT);
        }
        if p[0] == b'/' {
            return Ok(path.to_owned());
        }
        let mut base = match dirfd {
            None => self.cwd(),
            Some(fd) => self.dir_path(fd)?,
        };
        if base.last() != Some(&b'/') {
            base.push(b'/');
        }
        base.extend_from_slice(p);
        CString::new(base).map_err(|_| Errno::EINVAL)
    }

    /// open/openat: opens inside the root with the program's flags.
    pub fn open(
        &self,
        dirfd: Option<RawFd>,
        path: &CStr,
        flags: i32,
        mode: u64,
    ) -> Result<OwnedFd, Errno> {
        let abs = self.absolute(dirfd, path)?;
        let writes = flags & (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) != 0;
        let (base, rel) = self.place(&abs, writes)?;
        // O_CLOEXEC on the host side always: the VMM never execs, and descriptors must
        // not leak to anything it spawns.
        let host_flags = (flags | libc::O_CLOEXEC) as u32 as u64;
        openat2_guest(base, &rel, host_flags, mode)
    }

    /// Resolves to the target, following a final symlink (stat, access, chmod, chdir...).
    /// `mutating` says whether the caller will change the object.
    pub fn target(
        &self,
        dirfd: Option<RawFd>,
        path: &CStr,
        mutating: bool,
    ) -> Result<Resolved, Errno> {
        let abs = self.absolute(dirfd, path)?;
        let (base, rel) = self.place(&abs, mutating)?;
        let fd = openat2_guest(base, &rel, (libc::O_PATH | libc::O_CLOEXEC) as u64, 0)?;
        Ok(Resolved::Target(fd))
    }

    /// Resolves to (parent, last name) without following a final symlink
    /// (lstat, unlink, mkdir, rename, readlink, symlink...). `mutating` says whether
    /// the caller will change the directory entry.
    pub fn parent(
        &self,
        dirfd: Option<RawFd>,
        path: &CStr,
        mutating: bool,
    ) -> Result<Resolved, Errno> {
        let abs = self.absolute(dirfd, path)?;
        let bytes = abs.to_bytes();
        let trimmed_len = bytes.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
        let trimmed = &bytes[..trimmed_len];
        let split = trimmed.iter().rposition(|&b| b == b'/');
        let (dir, name): (&[u8], &[u8]) = match split {
            Some(i) => (if i == 0 { b"/" } else { &trimmed[..i] }, &trimmed[i + 1..]),
            None => (b"/", trimmed),
        };
        if name.is_empty() || name == b"." || name == b".." {
            // The root itself, or a name that is really a directory reference: resolve
            // it fully; callers that need a last component will get a sensible error
            // from the host (e.g. EEXIST for mkdir of an existing dir).
            return self.target(None, &abs, mutating);
        }
        if self.binds.iter().any(|b| b.guest == trimmed) {
            // A bind's own path names the bound directory, as a mount point does: its
            // entry in the parent (if the parent has one) is not what lstat must see.
            // (Node's realpath lstats the working directory, bound at its host path.)
            return self.target(None, &abs, mutating);
        }
        let dir_c = CString::new(dir).map_err(|_| Errno::EINVAL)?;
        let dfd = self.open_dir(&dir_c, mutating)?;
        Ok(Resolved::Parent(
            dfd,
            CString::new(name).map_err(|_| Errno::EINVAL)?,
        ))
    }

    /// chdir: the new cwd must be a directory inside the root.
    pub fn chdir(&self, dirfd: Option<RawFd>, path: &CStr) -> Result<(), Errno> {
        let abs = self.absolute(dirfd, path)?;
        let fd = self.open_dir(&abs, false)?;
        self.set_cwd_from_fd(fd.as_raw_fd())
    }

    /// An O_PATH descriptor of the directory at absolute guest path `abs`, confined.
    fn open_dir(&self, abs: &CStr, mutating: bool) -> Result<OwnedFd, Errno> {
        let (base, rel) = self.place(abs, mutating)?;
        let flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
        openat2_guest(base, &rel, flags, 0)
    }

    /// fchdir and chdir: the cwd becomes the canonical guest path of the directory.
    pub fn set_cwd_from_fd(&self, host_fd: RawFd) -> Result<(), Errno> {
        let mut st: libc::stat = unsafe_zeroed_stat();
        // SAFETY: fstat into a properly sized buffer.
        if unsafe { libc::fstat(host_fd, &mut st) } < 0 {
            return Err(Errno::last());
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(Errno::ENOTDIR);
        }
        let p = self.dir_path(host_fd)?;
        *lock(&self.cwd) = p;
        Ok(())
    }
}

fn unsafe_zeroed_stat() -> libc::stat {
    // SAFETY: libc::stat is plain data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Splits a relative or absolute path into normalised components, `..` stopping at `/`.
pub fn normalise(base: &[u8], path: &CStr) -> Vec<Vec<u8>> {
    let p = path.to_bytes();
    let mut out: Vec<Vec<u8>> = Vec::new();
    let joined: Vec<&[u8]> = if p.first() == Some(&b'/') {
        p.split(|&b| b == b'/').collect()
    } else {
        base.split(|&b| b == b'/')
            .chain(p.split(|&b| b == b'/'))
            .collect()
    };
    for c in joined {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c.to_vec()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn setup() -> (tempfile::TempDir, FsContext) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/passwd"), b"inside").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("abs")).unwrap();
        let fs = FsContext::new(d.path()).unwrap();
        (d, fs)
    }

    fn read(fd: OwnedFd) -> String {
        let mut s = String::new();
        std::fs::File::from(fd).read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn only_a_top_level_the_root_lacks_is_missing_for_good() {
        let (d, mut fs) = setup();
        assert!(fs.top_level_missing(b"/proc/sys/vm/overcommit_memory"));
        assert!(fs.top_level_missing(b"/sys"));
        // Present, relative, or dot components: an open decides.
        assert!(!fs.top_level_missing(b"/etc/nonexistent"));
        assert!(!fs.top_level_missing(b"proc/x"));
        assert!(!fs.top_level_missing(b"/../proc/x"));
        // A bind provides it.
        let other = tempfile::tempdir().unwrap();
        fs.add_bind("/proc/sys", other.path()).unwrap();
        assert!(!fs.top_level_missing(b"/proc/sys/vm/overcommit_memory"));
        drop(d);
    }

    #[test]
    fn dotdot_and_absolute_symlinks_stay_inside() {
        let (_d, fs) = setup();
        let c = |s: &str| CString::new(s).unwrap();
        assert_eq!(
            read(fs.open(None, &c("/../../etc/passwd"), 0, 0).unwrap()),
            "inside"
        );
        assert_eq!(read(fs.open(None, &c("abs"), 0, 0).unwrap()), "inside");
        assert_eq!(
            read(fs.open(None, &c("../../../../abs"), 0, 0).unwrap()),
            "inside"
        );
        assert!(fs.open(None, &c("/etc/shadow"), 0, 0).is_err());
        assert!(fs.open(None, &c("/proc/self/fd/0"), 0, 0).is_err());
    }

    #[test]
    fn host_procfs_is_never_opened_even_through_a_symlink() {
        let fs = FsContext::new(Path::new("/")).unwrap();
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join("m");
        std::os::unix::fs::symlink("/proc/self/mem", &link).unwrap();
        let c = CString::new(link.as_os_str().as_bytes()).unwrap();
        assert_eq!(
            fs.open(None, &c, libc::O_RDWR, 0).unwrap_err(),
            Errno::ENOENT
        );
        assert!(fs.target(None, &c, false).is_err());
        assert!(fs.open(None, c"/proc/self/maps", 0, 0).is_err());
        assert_eq!(
            fs.proc_components(None, None, c"/etc/../proc/self/mem")
                .unwrap(),
            Some(vec![b"self".to_vec(), b"mem".to_vec()])
        );
        assert_eq!(fs.proc_components(None, None, c"etc/passwd").unwrap(), None);
        assert_eq!(
            fs.proc_components(None, None, c"/dev/stdout").unwrap(),
            Some(vec![b"self".to_vec(), b"fd".to_vec(), b"1".to_vec()])
        );
        assert_eq!(fs.proc_components(None, None, c"/dev/null").unwrap(), None);
    }

    #[test]
    fn parent_split() {
        let (_d, fs) = setup();
        let c = |s: &str| CString::new(s).unwrap();
        match fs.parent(None, &c("/etc/passwd/"), false).unwrap() {
            Resolved::Parent(_, name) => assert_eq!(name.as_bytes(), b"passwd"),
            Resolved::Target(_) => panic!("expected parent"),
        }
        assert!(matches!(
            fs.parent(None, &c("/"), false).unwrap(),
            Resolved::Target(_)
        ));
    }

    #[test]
    fn read_only_root_with_writable_bind() {
        let (d, mut fs) = setup();
        let state = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("var/lib")).unwrap();
        fs.add_bind("/var/lib", state.path()).unwrap();
        fs.set_read_only_root();
        let c = |s: &str| CString::new(s).unwrap();
        let flags = libc::O_WRONLY | libc::O_CREAT;
        assert_eq!(
            fs.open(None, &c("/etc/new"), flags, 0o644).unwrap_err(),
            Errno(libc::EROFS)
        );
        fs.open(None, &c("/var/lib/x"), flags, 0o644).unwrap();
        assert!(state.path().join("x").exists());
        assert!(!d.path().join("var/lib/x").exists());
        // Reads of the root still work, and `..` from a bind stays in the bind.
        assert_eq!(
            read(fs.open(None, &c("/etc/passwd"), 0, 0).unwrap()),
            "inside"
        );
        assert!(fs
            .open(None, &c("/var/lib/../../../etc/shadow"), 0, 0)
            .is_err());
        fs.chdir(None, &c("/var/lib")).unwrap();
        assert_eq!(fs.cwd(), b"/var/lib");
    }

    /// A pair's secondary writes nothing of the primary's until it takes over; then what
    /// the primary could write, and nothing more.
    #[test]
    fn the_primary_s_directories_become_writable_when_the_secondary_goes_live() {
        let (d, mut fs) = setup();
        let shared = tempfile::tempdir().unwrap();
        let theirs = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("data")).unwrap();
        std::fs::create_dir_all(d.path().join("ro")).unwrap();
        fs.add_bind_writable_when_live("/data", shared.path())
            .unwrap();
        fs.add_read_only_bind("/ro", theirs.path()).unwrap();
        fs.set_read_only_root();
        fs.set_root_writable_when_live();
        let c = |s: &str| CString::new(s).unwrap();
        let flags = libc::O_WRONLY | libc::O_CREAT;
        for p in ["/data/x", "/new", "/ro/x"] {
            assert_eq!(
                fs.open(None, &c(p), flags, 0o644).unwrap_err(),
                Errno(libc::EROFS),
                "{p} before the takeover"
            );
        }
        fs.go_live();
        fs.open(None, &c("/data/x"), flags, 0o644).unwrap();
        assert!(shared.path().join("x").exists());
        fs.open(None, &c("/new"), flags, 0o644).unwrap();
        assert!(d.path().join("new").exists());
        assert_eq!(
            fs.open(None, &c("/ro/x"), flags, 0o644).unwrap_err(),
            Errno(libc::EROFS),
            "a read-only directory stays so"
        );
    }

    #[test]
    fn a_bind_point_resolves_to_the_bound_directory_without_following() {
        let (_t, mut fs) = setup();
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("marker"), b"x").unwrap();
        fs.add_bind("/no/such/dir", host.path()).unwrap();
        let path = CString::new("/no/such/dir").unwrap();
        let Resolved::Target(fd) = fs.parent(None, &path, false).unwrap() else {
            panic!("a bind point must resolve to its directory");
        };
        let marker = CString::new("marker").unwrap();
        // SAFETY: fd is an O_PATH directory descriptor we own; the name is a C string.
        let r = unsafe { libc::faccessat(fd.as_raw_fd(), marker.as_ptr(), libc::F_OK, 0) };
        assert_eq!(r, 0);
    }

    #[test]
    fn chdir_tracks_guest_path() {
        let (_d, fs) = setup();
        let c = |s: &str| CString::new(s).unwrap();
        fs.chdir(None, &c("/etc")).unwrap();
        assert_eq!(fs.cwd(), b"/etc");
        assert_eq!(read(fs.open(None, &c("passwd"), 0, 0).unwrap()), "inside");
        assert_eq!(fs.chdir(None, &c("passwd")).unwrap_err(), Errno::ENOTDIR);
    }

    #[test]
    fn locate_is_lexical_and_names_the_bind() {
        let (d, mut fs) = setup();
        let state = tempfile::tempdir().unwrap();
        fs.add_bind("/state", state.path()).unwrap();
        fs.set_cwd("/etc");
        let c = |s: &str| CString::new(s).unwrap();
        let (p, bind) = fs.locate(None, &c("../tmp/./x/../y")).unwrap();
        assert_eq!(p, b"/tmp/y");
        assert!(bind.is_none());
        let (p, bind) = fs.locate(None, &c("/state/a//b")).unwrap();
        assert_eq!(p, b"/state/a/b");
        assert_eq!(
            bind,
            Some(std::fs::canonicalize(state.path()).unwrap().as_path())
        );
        // A name that only starts like a bind is not under it.
        assert!(fs.locate(None, &c("/stateless")).unwrap().1.is_none());
        assert_eq!(fs.locate(None, &c("/..")).unwrap().0, b"/");
        drop(d);
    }
}
