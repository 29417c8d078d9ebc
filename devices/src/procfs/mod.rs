//! The guest's own `/proc`: a virtual tree built from ditto's state, never the host's.
//!
//! With the root `/`, the host's `/proc/self` is the VMM itself: `/proc/self/mem` would
//! open the VMM's memory read-write. So every path whose lexically normalised form starts
//! with `/proc` is served here (`path::FsContext::proc_components` decides), and the host
//! resolver refuses anything on a procfs as a backstop (symlinks into `/proc`).
//!
//! What exists (everything else is ENOENT):
//! - `/proc/self` → `1000`, `/proc/thread-self` → `1000/task/<tid>`, `/proc/1000/`: maps,
//!   status, stat, statm, cmdline, environ, auxv, comm, mem, exe, cwd, fd/, fdinfo/, task/;
//!   `task/<tid>/`: the same files for one thread.
//! - system files: cpuinfo, meminfo, stat, uptime, loadavg, version, sys/vm/{overcommit_memory,
//!   max_map_count}, sys/kernel/{osrelease, pid_max, ostype, hostname}, sys/net/core/somaxconn.
//!
//! All is read-only except `mem`. Under replication, /proc opens and reads are Local: each
//! replica builds its own text. maps, cmdline, environ, auxv, exe, fd and the sys files are
//! deterministic; the time- and load-dependent ones (uptime, loadavg, /proc/stat, meminfo's
//! free memory, status/stat thread counts and signal masks) may differ between replicas.

pub mod file;
mod system;
mod task;

use std::sync::Arc;

use crate::errno::Errno;
use crate::process::{Process, GUEST_PID};

pub use file::{VirtFile, Virtual};

/// A file of a process or thread directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskFile {
    /// maps
    Maps,
    /// status
    Status,
    /// stat
    Stat,
    /// statm
    Statm,
    /// cmdline
    Cmdline,
    /// environ
    Environ,
    /// auxv
    Auxv,
    /// comm
    Comm,
}

const TASK_FILES: &[(&str, TaskFile)] = &[
    ("auxv", TaskFile::Auxv),
    ("cmdline", TaskFile::Cmdline),
    ("comm", TaskFile::Comm),
    ("environ", TaskFile::Environ),
    ("maps", TaskFile::Maps),
    ("stat", TaskFile::Stat),
    ("statm", TaskFile::Statm),
    ("status", TaskFile::Status),
];

/// One object of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// `/proc`
    Root,
    /// A directory of system files (`sys`, `sys/vm`...), by its path below /proc.
    SysDir(&'static str),
    /// A system file, by its path below /proc.
    SysFile(&'static str),
    /// `/proc/self` (a symlink)
    SelfLink,
    /// `/proc/thread-self` (a symlink to the reader's task directory)
    ThreadSelfLink(i64),
    /// `/proc/1000`, or `/proc/1000/task/<tid>` with Some(tid).
    TaskDir(Option<i64>),
    /// `/proc/1000/task`
    TaskList,
    /// A text file of the process (None) or of one thread.
    Task(TaskFile, Option<i64>),
    /// `/proc/1000/mem`
    Mem,
    /// `/proc/1000/exe`
    Exe,
    /// `/proc/1000/cwd`
    Cwd,
    /// `/proc/1000/fd`
    FdDir,
    /// `/proc/1000/fdinfo`
    FdInfoDir,
    /// `/proc/1000/fd/N`
    Fd(i64),
    /// `/proc/1000/fdinfo/N`
    FdInfo(i64),
}

impl Node {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(
            self,
            Node::Root
                | Node::SysDir(_)
                | Node::TaskDir(_)
                | Node::TaskList
                | Node::FdDir
                | Node::FdInfoDir
        )
    }

    /// Whether this is a symlink (shown as one by lstat and readlink).
    pub fn is_link(&self) -> bool {
        matches!(
            self,
            Node::SelfLink | Node::ThreadSelfLink(_) | Node::Exe | Node::Cwd | Node::Fd(_)
        )
    }

    /// A stable inode number per object, for stat and getdents.
    pub fn ino(&self) -> u64 {
        let h = format!("{self:?}")
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
        (h & 0xffff_ffff) | 1
    }
}

/// Parses a decimal id without sign or leading zeros (as /proc names are).
fn parse_id(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 18 || (s[0] == b'0' && s.len() > 1) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Whether `tid` is a live thread of the program.
fn live_tid(p: &Process, tid: i64) -> bool {
    p.signals.tids().contains(&tid)
}

/// Whether `node` is a file whose text is fixed for the process's life, so that when and
/// by which thread it is read cannot change what is read: the system files of fixed text
/// (`system::FILES`, `Timing::Fixed`: /proc/sys/vm/overcommit_memory, /proc/cpuinfo,
/// /proc/sys/kernel/osrelease...). Follow mode opens and reads these without a turn
/// (`syscalls::transient`): glibc reads some of them once per process, in whichever thread
/// gets there first. Not constant: every per-process and per-thread file (status, stat,
/// maps and statm change with threads and memory; fd/ with descriptors), the time- and
/// load-dependent system files, and what exe, cwd and fd/N reopen (host objects).
pub fn constant(node: &Node) -> bool {
    matches!(node, Node::SysFile(f) if system::constant(f))
}

/// Resolves the components below `/proc`. `follow` says whether a final symlink is
/// followed (intermediate `self` and `thread-self` always are).
pub fn lookup(
    p: &Process,
    reader_tid: i64,
    comps: &[Vec<u8>],
    follow: bool,
) -> Result<Node, Errno> {
    let Some((first, rest)) = comps.split_first() else {
        return Ok(Node::Root);
    };
    let first = first.as_slice();
    if first == b"self" {
        if rest.is_empty() && !follow {
            return Ok(Node::SelfLink);
        }
        return lookup_task(p, None, rest);
    }
    if first == b"thread-self" {
        if rest.is_empty() && !follow {
            return Ok(Node::ThreadSelfLink(reader_tid));
        }
        return lookup_task(p, Some(reader_tid), rest);
    }
    if parse_id(first) == Some(GUEST_PID) {
        return lookup_task(p, None, rest);
    }
    let joined = comps
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("/");
    if let Some(&d) = system::DIRS.iter().find(|&&d| d == joined) {
        return Ok(Node::SysDir(d));
    }
    if let Some(&(f, _)) = system::FILES.iter().find(|&&(f, _)| f == joined) {
        return Ok(Node::SysFile(f));
    }
    Err(Errno::ENOENT)
}

/// Below a process or thread directory. exe, cwd and fd/N are returned as links; the
/// caller decides whether to follow them (open and stat do, readlink does not).
fn lookup_task(p: &Process, tid: Option<i64>, comps: &[Vec<u8>]) -> Result<Node, Errno> {
    let Some((first, rest)) = comps.split_first() else {
        return Ok(Node::TaskDir(tid));
    };
    let first = first.as_slice();
    let last = rest.is_empty();
    if let Some(&(_, f)) = TASK_FILES.iter().find(|(n, _)| n.as_bytes() == first) {
        return if last {
            Ok(Node::Task(f, tid))
        } else {
            Err(Errno::ENOTDIR)
        };
    }
    let node = match first {
        b"mem" => Node::Mem,
        b"exe" => Node::Exe,
        b"cwd" => Node::Cwd,
        b"task" if tid.is_none() => {
            return match rest.split_first() {
                None => Ok(Node::TaskList),
                Some((t, more)) => match parse_id(t) {
                    Some(t) if live_tid(p, t) => lookup_task(p, Some(t), more),
                    _ => Err(Errno::ENOENT),
                },
            };
        }
        b"fd" | b"fdinfo" => {
            let info = first == b"fdinfo";
            return match rest {
                [] if info => Ok(Node::FdInfoDir),
                [] => Ok(Node::FdDir),
                [n] => match parse_id(n) {
                    Some(n) if crate::sync::lock(&p.fds).get(n).is_ok() => {
                        Ok(if info { Node::FdInfo(n) } else { Node::Fd(n) })
                    }
                    _ => Err(Errno::ENOENT),
                },
                _ if info => Err(Errno::ENOTDIR),
                // A path below fd/N would go through the file it names: not served.
                _ => Err(Errno::ENOENT),
            };
        }
        _ => return Err(Errno::ENOENT),
    };
    if !last {
        return Err(if node.is_link() {
            Errno::ENOENT
        } else {
            Errno::ENOTDIR
        });
    }
    Ok(node)
}

/// Directory entries: (name, d_type, inode).
pub fn entries(p: &Process, node: &Node) -> Vec<(String, u8, u64)> {
    let mut v: Vec<(String, Node)> = Vec::new();
    match node {
        Node::Root => {
            v.push(("self".into(), Node::SelfLink));
            v.push(("thread-self".into(), Node::ThreadSelfLink(GUEST_PID)));
            v.push((GUEST_PID.to_string(), Node::TaskDir(None)));
            for &(f, _) in system::FILES {
                if !f.contains('/') {
                    v.push((f.into(), Node::SysFile(f)));
                }
            }
            v.push(("sys".into(), Node::SysDir("sys")));
        }
        Node::SysDir(d) => {
            let prefix = format!("{d}/");
            for &sub in system::DIRS {
                if let Some(n) = sub.strip_prefix(&prefix).filter(|n| !n.contains('/')) {
                    v.push((n.into(), Node::SysDir(sub)));
                }
            }
            for &(f, _) in system::FILES {
                if let Some(n) = f.strip_prefix(&prefix).filter(|n| !n.contains('/')) {
                    v.push((n.into(), Node::SysFile(f)));
                }
            }
        }
        Node::TaskDir(tid) => {
            for &(n, f) in TASK_FILES {
                v.push((n.into(), Node::Task(f, *tid)));
            }
            v.push(("mem".into(), Node::Mem));
            v.push(("exe".into(), Node::Exe));
            v.push(("cwd".into(), Node::Cwd));
            v.push(("fd".into(), Node::FdDir));
            v.push(("fdinfo".into(), Node::FdInfoDir));
            if tid.is_none() {
                v.push(("task".into(), Node::TaskList));
            }
        }
        Node::TaskList => {
            for t in p.signals.tids() {
                v.push((t.to_string(), Node::TaskDir(Some(t))));
            }
        }
        Node::FdDir | Node::FdInfoDir => {
            for n in crate::sync::lock(&p.fds).numbers() {
                let child = if *node == Node::FdDir {
                    Node::Fd(n)
                } else {
                    Node::FdInfo(n)
                };
                v.push((n.to_string(), child));
            }
        }
        _ => {}
    }
    let mut out = vec![
        (".".to_string(), libc::DT_DIR, node.ino()),
        ("..".to_string(), libc::DT_DIR, Node::Root.ino()),
    ];
    for (name, n) in v {
        let t = if n.is_dir() {
            libc::DT_DIR
        } else if n.is_link() {
            libc::DT_LNK
        } else {
            libc::DT_REG
        };
        out.push((name, t, n.ino()));
    }
    out
}

/// The target of a symlink node, as readlink gives it.
pub fn readlink(p: &Process, node: &Node) -> Result<Vec<u8>, Errno> {
    match node {
        Node::SelfLink => Ok(GUEST_PID.to_string().into_bytes()),
        Node::ThreadSelfLink(t) => Ok(format!("{GUEST_PID}/task/{t}").into_bytes()),
        Node::Exe => Ok(p.exe_path.as_bytes().to_vec()),
        Node::Cwd => Ok(p.fs.cwd()),
        Node::Fd(n) => {
            let f = crate::sync::lock(&p.fds).get(*n)?;
            Ok(fd_link(p, &f))
        }
        _ => Err(Errno::EINVAL),
    }
}

/// What `/proc/self/fd/N` shows for an open file: the guest path, or the kernel's name
/// for objects without one (`socket:[..]`, `pipe:[..]`, `anon_inode:..`).
pub fn fd_link(p: &Process, f: &Arc<crate::fd_table::OpenFile>) -> Vec<u8> {
    if let Some(v) = f.virt() {
        return v.path.clone();
    }
    let link = std::fs::read_link(format!("/proc/self/fd/{}", f.raw())).unwrap_or_default();
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(link.as_os_str()).to_vec();
    if bytes.first() != Some(&b'/') {
        return bytes;
    }
    // A memfd's "/memfd:name (deleted)" is the kernel's name, not a host path.
    if bytes.starts_with(b"/memfd:") {
        return bytes;
    }
    p.fs.guest_path_of_host(&link)
        .unwrap_or_else(|| b"(unreachable)".to_vec())
}

/// The text of a file node (regenerated for every read from offset 0).
pub fn generate(p: &Process, node: &Node) -> Result<Vec<u8>, Errno> {
    match node {
        Node::SysFile(f) => system::generate(p, f),
        Node::Task(f, tid) => task::generate(p, *f, *tid),
        Node::FdInfo(n) => task::fdinfo(p, *n),
        _ => Err(Errno::EISDIR),
    }
}

/// The guest path of a node, given the path it was opened by (fd/N readlink shows it).
pub fn path_of(comps: &[Vec<u8>]) -> Vec<u8> {
    let mut v = b"/proc".to_vec();
    for c in comps {
        v.push(b'/');
        v.extend_from_slice(c);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::normalise;

    fn comps(s: &str) -> Vec<Vec<u8>> {
        normalise(b"/", &std::ffi::CString::new(s).unwrap())
    }

    #[test]
    fn normalises_dots() {
        assert_eq!(comps("/proc/./self/../self/maps"), comps("/proc/self/maps"));
        assert_eq!(comps("/../../proc"), vec![b"proc".to_vec()]);
        let rel = normalise(b"/proc/1000", c"fd/../maps");
        assert_eq!(rel, comps("/proc/1000/maps"));
    }

    #[test]
    fn tree_lookup() {
        let p = crate::process::test_process();
        p.signals.add_thread(GUEST_PID, 0);
        let l = |s: &str, follow| lookup(&p, GUEST_PID, &comps(s)[1..], follow);
        assert_eq!(
            l("/proc/self/maps", true),
            Ok(Node::Task(TaskFile::Maps, None))
        );
        assert_eq!(l("/proc/self", false), Ok(Node::SelfLink));
        assert_eq!(l("/proc/1000/mem", true), Ok(Node::Mem));
        assert_eq!(
            l("/proc/thread-self/comm", true),
            Ok(Node::Task(TaskFile::Comm, Some(GUEST_PID)))
        );
        assert_eq!(
            l("/proc/self/task/1000/stat", true),
            Ok(Node::Task(TaskFile::Stat, Some(GUEST_PID)))
        );
        assert_eq!(l("/proc/self/task/1001/stat", true), Err(Errno::ENOENT));
        assert_eq!(l("/proc/1/environ", true), Err(Errno::ENOENT));
        assert_eq!(l("/proc/sysrq-trigger", true), Err(Errno::ENOENT));
        assert_eq!(
            l("/proc/sys/vm/overcommit_memory", true),
            Ok(Node::SysFile("sys/vm/overcommit_memory"))
        );
        assert_eq!(l("/proc/self/maps/x", true), Err(Errno::ENOTDIR));
        assert_eq!(l("/proc/self/fd/0", true), Err(Errno::ENOENT));
    }

    #[test]
    fn constant_files_are_the_fixed_system_files_only() {
        let p = crate::process::test_process();
        p.signals.add_thread(GUEST_PID, 0);
        let c = |s: &str| constant(&lookup(&p, GUEST_PID, &comps(s)[1..], true).unwrap());
        for f in [
            "/proc/sys/vm/overcommit_memory",
            "/proc/sys/vm/max_map_count",
            "/proc/sys/kernel/osrelease",
            "/proc/cpuinfo",
            "/proc/version",
        ] {
            assert!(c(f), "{f}");
        }
        for f in [
            "/proc/self/status",
            "/proc/self/maps",
            "/proc/self/stat",
            "/proc/thread-self/stat",
            "/proc/meminfo",
            "/proc/uptime",
            "/proc/loadavg",
            "/proc/stat",
            "/proc/self/fd",
            "/proc/sys/vm",
            "/proc/self/exe",
            "/proc/self",
        ] {
            assert!(!c(f), "{f}");
        }
        // Every fixed system file is constant, and only those.
        for &(f, t) in system::FILES {
            assert_eq!(
                constant(&Node::SysFile(f)),
                t == system::Timing::Fixed,
                "{f}"
            );
        }
    }
}
