//! Open /proc files: the virtual backing of an `OpenFile`.
//!
//! Every virtual open file still has a host descriptor, a read-only descriptor of a
//! memfd of the VMM's own, so that calls the syscall layer does not route here (mmap,
//! poll, splice, fcntl) act on a harmless empty or text file and never on anything of the
//! host. Text files keep their text in that memfd: it is regenerated when a read starts
//! at offset 0 (the seq_file rule that pread-at-0 readers rely on), then read as a file.
//! `mem` and the directories keep their own position.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use super::{entries, generate, Node};
use crate::errno::Errno;
use crate::fd_table::{OpenFile, VirtualPart};
use crate::guest_mem::USER_START;
use crate::process::Process;
use crate::sync::lock;

/// Most bytes one read or write of `mem` copies (a short count, as Linux may give).
const MEM_CHUNK: u64 = 1 << 20;

/// st_dev of every virtual file (procfs's anonymous device numbers are small).
const PROC_DEV: u64 = 0x16;

enum Kind {
    /// A text file; `rw` is the writable side of the memfd behind the guest's descriptor.
    Text { rw: OwnedFd },
    /// A directory; the position counts entries.
    Dir { cursor: Mutex<usize> },
    /// `/proc/self/mem`; the position is a guest address.
    Mem { pos: Mutex<u64> },
}

/// The virtual part of an open /proc file.
pub struct VirtFile {
    /// What it is.
    pub node: Node,
    /// The guest path it was opened by (what fd/N shows; the base of relative *at paths).
    pub path: Vec<u8>,
    kind: Kind,
}

impl VirtualPart for VirtFile {}

/// The /proc part of an open file, for the layers above the descriptor table.
pub trait Virtual {
    /// The /proc part of a virtual file; None for a host file.
    fn virt(&self) -> Option<&VirtFile>;
}

impl Virtual for OpenFile {
    fn virt(&self) -> Option<&VirtFile> {
        self.virtual_part()
    }
}

impl std::fmt::Debug for VirtFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtFile")
            .field("node", &self.node)
            .field("path", &String::from_utf8_lossy(&self.path))
            .finish()
    }
}

fn host_call(r: libc::c_long) -> Result<u64, Errno> {
    crate::errno::host_result(r)
}

/// A new memfd and a read-only descriptor of the same file.
fn memfd_pair() -> Result<(OwnedFd, OwnedFd), Errno> {
    // SAFETY: a constant NUL-terminated name; the result is checked.
    let rw = unsafe { libc::memfd_create(c"ditto-proc".as_ptr(), libc::MFD_CLOEXEC) };
    if rw < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just gave us this descriptor.
    let rw = unsafe { OwnedFd::from_raw_fd(rw) };
    let path =
        CString::new(format!("/proc/self/fd/{}", rw.as_raw_fd())).map_err(|_| Errno::EINVAL)?;
    // SAFETY: reopening our own memfd through the VMM's /proc; the result is checked.
    let ro = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if ro < 0 {
        return Err(Errno::last());
    }
    // SAFETY: as above.
    Ok((rw, unsafe { OwnedFd::from_raw_fd(ro) }))
}

fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// Opens `node` for the guest. exe, cwd and fd/N open the object they name (a host
/// file the guest may hold), everything else a virtual file.
pub fn open(p: &Process, node: Node, path: Vec<u8>, flags: i32) -> Result<Arc<OpenFile>, Errno> {
    if flags & libc::O_CREAT != 0 && flags & libc::O_EXCL != 0 {
        return Err(Errno::EEXIST);
    }
    match &node {
        Node::Exe => {
            let c = CString::new(p.exe_path.as_bytes()).map_err(|_| Errno::ENOENT)?;
            return Ok(Arc::new(OpenFile::new(p.fs.open(None, &c, flags, 0)?)));
        }
        Node::Cwd => {
            let c = CString::new(p.fs.cwd()).map_err(|_| Errno::ENOENT)?;
            return Ok(Arc::new(OpenFile::new(p.fs.open(None, &c, flags, 0)?)));
        }
        Node::Fd(n) => {
            let f = lock(&p.fds).get(*n)?;
            if let Some(v) = f.virt() {
                return open(p, v.node.clone(), v.path.clone(), flags);
            }
            // A reopen never gains write access the descriptor lacks: the host would
            // allow it by the file's mode, but the guest may hold a file of a read-only
            // root (EROFS is ditto's rule, not the host's).
            // SAFETY: F_GETFL on a descriptor we hold a reference to.
            let had = unsafe { libc::fcntl(f.raw(), libc::F_GETFL) };
            let read_only =
                had < 0 || had & libc::O_PATH != 0 || had & libc::O_ACCMODE == libc::O_RDONLY;
            if wants_write(flags) && read_only {
                return Err(Errno::EACCES);
            }
            // Reopen the object behind the guest's descriptor through the VMM's own fd
            // directory: the number is the host descriptor that guest fd N holds, never
            // a number the guest chose.
            let c =
                CString::new(format!("/proc/self/fd/{}", f.raw())).map_err(|_| Errno::EINVAL)?;
            let mode_flags = flags & !(libc::O_CREAT | libc::O_EXCL);
            // SAFETY: a NUL-terminated path; the result is checked.
            let r = unsafe { libc::open(c.as_ptr(), mode_flags | libc::O_CLOEXEC) };
            if r < 0 {
                return Err(Errno::last());
            }
            // SAFETY: the kernel just gave us this descriptor.
            let host = unsafe { OwnedFd::from_raw_fd(r) };
            // The same object reaches outside the program as much as the original does
            // (a pair's stdout stays Compared through /dev/stdout).
            return Ok(Arc::new(if f.is_external() {
                OpenFile::external(host)
            } else {
                OpenFile::new(host)
            }));
        }
        _ => {}
    }
    if node.is_dir() {
        if wants_write(flags) {
            return Err(Errno::EISDIR);
        }
    } else if flags & libc::O_DIRECTORY != 0 {
        return Err(Errno::ENOTDIR);
    }
    let (rw, ro) = memfd_pair()?;
    let kind = if node.is_dir() {
        Kind::Dir {
            cursor: Mutex::new(0),
        }
    } else if node == Node::Mem {
        Kind::Mem { pos: Mutex::new(0) }
    } else {
        if wants_write(flags) {
            return Err(Errno::EACCES);
        }
        Kind::Text { rw }
    };
    let v = VirtFile { node, path, kind };
    if let Kind::Text { .. } = v.kind {
        v.regenerate(p)?;
    }
    Ok(Arc::new(OpenFile::virtual_file(ro, v)))
}

impl VirtFile {
    fn regenerate(&self, p: &Process) -> Result<(), Errno> {
        let Kind::Text { rw } = &self.kind else {
            return Ok(());
        };
        let text = generate(p, &self.node)?;
        let fd = rw.as_raw_fd();
        // SAFETY: ftruncate and pwrite on our own memfd from a live buffer.
        host_call(unsafe { libc::ftruncate(fd, 0) } as libc::c_long)?;
        let mut done = 0usize;
        while done < text.len() {
            // SAFETY: as above; the range lies inside `text`.
            let n = host_call(unsafe {
                libc::pwrite(
                    fd,
                    text[done..].as_ptr().cast(),
                    text.len() - done,
                    done as libc::off_t,
                )
            } as libc::c_long)?;
            if n == 0 {
                return Err(Errno::EIO);
            }
            done += n as usize;
        }
        Ok(())
    }

    /// The file position (fdinfo's `pos`).
    pub fn position(&self, host: RawFd) -> u64 {
        match &self.kind {
            // SAFETY: lseek on a descriptor the caller holds.
            Kind::Text { .. } => unsafe { libc::lseek(host, 0, libc::SEEK_CUR) }.max(0) as u64,
            Kind::Dir { cursor } => *lock(cursor) as u64,
            Kind::Mem { pos } => *lock(pos),
        }
    }

    /// read(2) into guest memory at `buf`; `off` is Some for pread.
    pub fn read(
        &self,
        p: &Process,
        host: RawFd,
        buf: u64,
        len: u64,
        off: Option<u64>,
    ) -> Result<u64, Errno> {
        match &self.kind {
            Kind::Dir { .. } => Err(Errno::EISDIR),
            Kind::Text { .. } => {
                let at = off.unwrap_or_else(|| self.position(host));
                if at == 0 {
                    self.regenerate(p)?;
                }
                let dst = p.mem.user_range(buf, len, guest_memory::Access::Write)?;
                let r = match off {
                    // SAFETY: a checked guest range and our own descriptor.
                    Some(o) => unsafe {
                        libc::pread(host, dst.cast(), len as usize, o as libc::off_t)
                    },
                    // SAFETY: as above.
                    None => unsafe { libc::read(host, dst.cast(), len as usize) },
                };
                host_call(r as libc::c_long)
            }
            Kind::Mem { pos } => self.mem_io(p, pos, buf, len, off, false),
        }
    }

    /// write(2) from guest memory; only `mem` is writable.
    pub fn write(&self, p: &Process, buf: u64, len: u64, off: Option<u64>) -> Result<u64, Errno> {
        match &self.kind {
            Kind::Mem { pos } => self.mem_io(p, pos, buf, len, off, true),
            _ => Err(Errno::EBADF),
        }
    }

    /// Copies between the guest's buffer and guest address `pos` (or `off`), only inside
    /// the program's mappings and never in VMM-owned memory: up to the first gap, EIO if
    /// nothing can be copied.
    fn mem_io(
        &self,
        p: &Process,
        pos: &Mutex<u64>,
        buf: u64,
        len: u64,
        off: Option<u64>,
        write: bool,
    ) -> Result<u64, Errno> {
        if len == 0 {
            return Ok(0);
        }
        let addr = off.unwrap_or_else(|| *lock(pos));
        let n = {
            let asp = lock(&p.aspace);
            let top = asp.layout().top;
            if addr < USER_START || addr >= top {
                0
            } else {
                // Like Linux's FOLL_FORCE: private mappings are written whatever their
                // protection, shared ones only where writable (the host page may be
                // read-only there).
                let writable = |v: &crate::vma::Vma| {
                    !write || !v.shared || v.prot & libc::PROT_WRITE as u32 != 0
                };
                asp.vmas()
                    .contiguous_while(addr, len.min(MEM_CHUNK).min(top - addr), writable)
            }
        };
        if n == 0 {
            return Err(Errno::EIO);
        }
        if write {
            let data = p.mem.read_bytes(buf, n)?;
            p.mem
                .write_bytes_forced(addr, &data)
                .map_err(|_| Errno::EIO)?;
        } else {
            let data = p.mem.read_bytes_forced(addr, n).map_err(|_| Errno::EIO)?;
            p.mem.write_bytes(buf, &data)?;
        }
        if off.is_none() {
            *lock(pos) = addr.wrapping_add(n);
        }
        Ok(n)
    }

    /// lseek(2).
    pub fn lseek(&self, host: RawFd, off: u64, whence: i32) -> Result<u64, Errno> {
        match &self.kind {
            // SAFETY: lseek on a descriptor the caller holds.
            Kind::Text { .. } => host_call(unsafe { libc::lseek(host, off as i64, whence) }),
            Kind::Mem { pos } => {
                let mut pos = lock(pos);
                *pos = match whence {
                    libc::SEEK_SET => off,
                    libc::SEEK_CUR => pos.wrapping_add(off),
                    _ => return Err(Errno::EINVAL),
                };
                Ok(*pos)
            }
            Kind::Dir { cursor } => {
                if whence != libc::SEEK_SET {
                    return Err(Errno::EINVAL);
                }
                *lock(cursor) = usize::try_from(off).map_err(|_| Errno::EINVAL)?;
                Ok(off)
            }
        }
    }

    /// getdents64(2) into guest memory.
    pub fn getdents64(&self, p: &Process, buf: u64, len: u64) -> Result<u64, Errno> {
        let Kind::Dir { cursor } = &self.kind else {
            return Err(Errno::ENOTDIR);
        };
        let list = entries(p, &self.node);
        let mut cur = lock(cursor);
        let mut out: Vec<u8> = Vec::new();
        let mut i = *cur;
        while let Some((name, typ, ino)) = list.get(i) {
            let reclen = (19 + name.len() + 1).next_multiple_of(8);
            if out.len() + reclen > len as usize {
                break;
            }
            out.extend_from_slice(&ino.to_le_bytes());
            out.extend_from_slice(&((i + 1) as i64).to_le_bytes());
            out.extend_from_slice(&(reclen as u16).to_le_bytes());
            out.push(*typ);
            out.extend_from_slice(name.as_bytes());
            out.resize(out.len() + (reclen - 19 - name.len()), 0);
            i += 1;
        }
        if out.is_empty() && i < list.len() {
            return Err(Errno::EINVAL);
        }
        p.mem.write_bytes(buf, &out)?;
        *cur = i;
        Ok(out.len() as u64)
    }
}

/// The stat of a virtual object (fstat, and stat of a /proc path).
pub fn stat_of(node: &Node) -> libc::stat {
    // SAFETY: libc::stat is plain data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    st.st_dev = PROC_DEV;
    st.st_ino = node.ino();
    st.st_mode = if node.is_dir() {
        libc::S_IFDIR | 0o555
    } else if node.is_link() {
        libc::S_IFLNK | 0o777
    } else if *node == Node::Mem {
        libc::S_IFREG | 0o600
    } else {
        libc::S_IFREG | 0o444
    };
    st.st_nlink = if node.is_dir() { 2 } else { 1 };
    // SAFETY: these getters cannot fail.
    (st.st_uid, st.st_gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    st.st_blksize = 1024;
    st
}

/// stat of a path in /proc: `follow` stats what exe, cwd and fd/N name.
pub fn stat_path(p: &Process, node: &Node, follow: bool) -> Result<libc::stat, Errno> {
    if follow && matches!(node, Node::Exe | Node::Cwd | Node::Fd(_)) {
        let f = open(p, node.clone(), Vec::new(), libc::O_PATH)?;
        if let Some(v) = f.virt() {
            return Ok(stat_of(&v.node));
        }
        // SAFETY: libc::stat is plain data; all-zero is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat of a descriptor we hold into a buffer of the right size.
        host_call(unsafe { libc::fstat(f.raw(), &mut st) } as libc::c_long)?;
        return Ok(st);
    }
    Ok(stat_of(node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vma::Vma;

    const RW: u32 = (libc::PROT_READ | libc::PROT_WRITE) as u32;

    #[test]
    fn mem_copies_only_inside_mappings() {
        let p = crate::process::test_process();
        let at = 8 << 20;
        p.aspace
            .lock()
            .unwrap()
            .vmas_mut()
            .insert(at, Vma::anon(at + 0x2000, RW, false, None));
        let shared_ro = at + 0x10000;
        p.aspace.lock().unwrap().vmas_mut().insert(
            shared_ro,
            Vma::anon(shared_ro + 0x1000, libc::PROT_READ as u32, true, None),
        );
        p.mem.write_bytes(at, b"guest bytes").unwrap();
        let f = open(&p, Node::Mem, b"/proc/1000/mem".to_vec(), libc::O_RDWR).unwrap();
        let v = f.virt().unwrap();
        let buf = 16 << 20;
        // Short at the first gap; EIO where nothing is mapped or in the VMM's pages.
        assert_eq!(v.read(&p, f.raw(), buf, 0x3000, Some(at)), Ok(0x2000));
        assert_eq!(p.mem.read_bytes(buf, 11).unwrap(), b"guest bytes");
        assert_eq!(
            v.read(&p, f.raw(), buf, 8, Some(at + 0x2000)),
            Err(Errno::EIO)
        );
        assert_eq!(v.read(&p, f.raw(), buf, 8, Some(0x1000)), Err(Errno::EIO));
        assert_eq!(
            v.read(&p, f.raw(), buf, 8, Some(u64::MAX - 4)),
            Err(Errno::EIO)
        );
        // Writes: private mappings yes, a read-only shared mapping no.
        p.mem.write_bytes(buf, b"XY").unwrap();
        assert_eq!(v.write(&p, buf, 2, Some(at)), Ok(2));
        assert_eq!(p.mem.read_bytes(at, 2).unwrap(), b"XY");
        assert_eq!(v.write(&p, buf, 2, Some(shared_ro)), Err(Errno::EIO));
        // The position is the address.
        assert_eq!(v.lseek(f.raw(), at, libc::SEEK_SET), Ok(at));
        assert_eq!(v.read(&p, f.raw(), buf, 2, None), Ok(2));
        assert_eq!(v.position(f.raw()), at + 2);
        assert_eq!(v.lseek(f.raw(), 0, libc::SEEK_END), Err(Errno::EINVAL));
    }

    #[test]
    fn text_files_are_read_only_and_fd_reopen_gains_no_write() {
        let p = crate::process::test_process();
        let maps = super::super::Node::Task(super::super::TaskFile::Maps, None);
        assert_eq!(
            open(&p, maps.clone(), Vec::new(), libc::O_WRONLY).unwrap_err(),
            Errno::EACCES
        );
        assert!(open(&p, maps, Vec::new(), libc::O_RDONLY).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let ro: OwnedFd = std::fs::File::open(&path).unwrap().into();
        let n = lock(&p.fds).install(ro, false).unwrap();
        assert_eq!(
            open(&p, Node::Fd(n), Vec::new(), libc::O_RDWR).unwrap_err(),
            Errno::EACCES
        );
        assert!(open(&p, Node::Fd(n), Vec::new(), libc::O_RDONLY).is_ok());
    }
}
