//! The program's file descriptor table: guest fd numbers -> host file descriptors.
//!
//! Guest numbers are allocated lowest-free, as POSIX requires, independently of the
//! host's numbering. That keeps the VMM's own descriptors (KVM, vCPUs, eventfds)
//! invisible to the program, and lets a replica that does not execute a call (the
//! secondary) still hand out the same numbers.

use std::any::Any;
use std::fmt::Debug;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::errno::Errno;

/// Highest number of guest descriptors (the program's RLIMIT_NOFILE).
pub const MAX_FDS: usize = 65536;

/// The state of a file ditto serves itself rather than the host (a /proc file). Its
/// type belongs to the layer that serves it (`procfs::VirtFile`), which reads it back
/// with a downcast, so the descriptor table sits below that layer.
pub trait VirtualPart: Any + Debug + Send + Sync {}

/// One open file description, shared by dup'ed guest descriptors.
#[derive(Debug)]
pub struct OpenFile {
    /// The host descriptor.
    pub host: OwnedFd,
    /// Whether it reaches outside the program (the standard descriptors, sockets, timers,
    /// and in a pair the host files outside the replica's state that it writes):
    /// under replication, input through it is Recorded and output Compared (DESIGN.md §6).
    /// Kept on the open file so that dup'ed numbers share it.
    external: AtomicBool,
    /// For a /proc file: what it is and its own state (see `procfs::file`).
    virt: Option<Box<dyn VirtualPart>>,
    /// A pair's secondary: `host` stands in for a descriptor only the primary has (a socket,
    /// an accepted connection, a timer, a host file, a standard descriptor).
    placeholder: AtomicBool,
    /// Failover: the primary's own host descriptor behind this placeholder, held untouched
    /// (its open file description, O_NONBLOCK included, is the primary's) until the
    /// secondary goes live and puts it in `host`'s place (`replication::takeover`).
    takeover: Mutex<Option<OwnedFd>>,
    /// A pair's primary under failover: whether this is a TCP stream socket (asked once),
    /// and the lock that keeps one reader between its peek and its discard
    /// (`replication::input`).
    pub input: InputOrder,
}

/// Per open file, what the primary's logged-before-consumed input needs.
#[derive(Debug, Default)]
pub struct InputOrder {
    /// Whether the host descriptor is a TCP stream socket (None: not asked yet).
    pub tcp: std::sync::OnceLock<bool>,
    /// Held from a reader's peek until its bytes are discarded.
    pub reader: Mutex<()>,
}

impl OpenFile {
    /// An open file of the program's own (a file, pipe, eventfd...).
    pub fn new(host: OwnedFd) -> Self {
        OpenFile {
            host,
            external: AtomicBool::new(false),
            virt: None,
            placeholder: AtomicBool::new(false),
            takeover: Mutex::new(None),
            input: InputOrder::default(),
        }
    }

    /// A /proc file: `host` is the placeholder descriptor behind it.
    pub fn virtual_file(host: OwnedFd, virt: impl VirtualPart) -> Self {
        OpenFile {
            host,
            external: AtomicBool::new(false),
            virt: Some(Box::new(virt)),
            placeholder: AtomicBool::new(false),
            takeover: Mutex::new(None),
            input: InputOrder::default(),
        }
    }

    /// The virtual part of a file ditto serves itself, as its server's type `V`
    /// (`procfs::Virtual::virt` names it).
    pub fn virtual_part<V: VirtualPart>(&self) -> Option<&V> {
        let part: &dyn Any = self.virt.as_deref()?;
        part.downcast_ref()
    }

    /// An open file that reaches outside the program.
    pub fn external(host: OwnedFd) -> Self {
        OpenFile {
            host,
            external: AtomicBool::new(true),
            virt: None,
            placeholder: AtomicBool::new(false),
            takeover: Mutex::new(None),
            input: InputOrder::default(),
        }
    }

    /// A pair's secondary: a placeholder for a descriptor only the primary has, holding the
    /// primary's own (`takeover`) when failover passed it.
    pub fn placeholder(host: OwnedFd, takeover: Option<OwnedFd>) -> Self {
        OpenFile {
            host,
            external: AtomicBool::new(true),
            virt: None,
            placeholder: AtomicBool::new(true),
            takeover: Mutex::new(takeover),
            input: InputOrder::default(),
        }
    }

    /// Whether `host` stands in for a descriptor only the primary has.
    pub fn is_placeholder(&self) -> bool {
        self.placeholder.load(Ordering::Relaxed)
    }

    /// Failover: holds the primary's descriptor for this file (the standard descriptors,
    /// whose open files exist before the primary's arrive); it becomes a placeholder.
    pub fn hold_takeover(&self, primary: OwnedFd) {
        *crate::sync::lock(&self.takeover) = Some(primary);
        self.placeholder.store(true, Ordering::Relaxed);
    }

    /// Whether it holds a primary's descriptor not taken over yet.
    pub fn holds_takeover(&self) -> bool {
        crate::sync::lock(&self.takeover).is_some()
    }

    /// `f` on the held primary descriptor, if any. Only for what cannot change the shared
    /// description (fstat); the primary still uses it.
    pub fn with_takeover<R>(&self, f: impl FnOnce(BorrowedFd<'_>) -> R) -> Option<R> {
        crate::sync::lock(&self.takeover)
            .as_ref()
            .map(|fd| f(fd.as_fd()))
    }

    /// Failover: takes the held primary descriptor, to put it in `host`'s place.
    pub fn take_takeover(&self) -> Option<OwnedFd> {
        crate::sync::lock(&self.takeover).take()
    }

    /// Failover: `host` now is the primary's descriptor; no longer a placeholder.
    pub fn taken_over(&self) {
        self.placeholder.store(false, Ordering::Relaxed);
    }

    /// Whether it reaches outside the program.
    pub fn is_external(&self) -> bool {
        self.external.load(Ordering::Relaxed)
    }

    /// Marks it as reaching outside the program (a socket or timer just created).
    pub fn mark_external(&self) {
        self.external.store(true, Ordering::Relaxed);
    }

    /// The host descriptor number, valid while this OpenFile is alive.
    pub fn raw(&self) -> RawFd {
        self.host.as_raw_fd()
    }
}

#[derive(Clone, Debug)]
struct Slot {
    file: Arc<OpenFile>,
    cloexec: bool,
}

/// The table itself. Callers hold it behind a mutex only for lookups and updates;
/// host I/O happens on a cloned `Arc<OpenFile>` outside the lock, so a blocking read
/// never stalls other threads' opens.
#[derive(Debug, Default)]
pub struct FdTable {
    slots: Vec<Option<Slot>>,
}

impl FdTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The open file behind guest fd `fd`, or EBADF.
    pub fn get(&self, fd: i64) -> Result<Arc<OpenFile>, Errno> {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.slots.get(i))
            .and_then(|s| s.as_ref())
            .map(|s| s.file.clone())
            .ok_or(Errno::EBADF)
    }

    /// Installs `host` at the lowest free number >= `min`.
    pub fn install(&mut self, host: OwnedFd, cloexec: bool) -> Result<i64, Errno> {
        self.install_file(Arc::new(OpenFile::new(host)), 0, cloexec)
    }

    fn install_file(
        &mut self,
        file: Arc<OpenFile>,
        min: usize,
        cloexec: bool,
    ) -> Result<i64, Errno> {
        let idx = (min..MAX_FDS)
            .find(|&i| self.slots.get(i).is_none_or(|s| s.is_none()))
            .ok_or(Errno::EMFILE)?;
        if idx >= self.slots.len() {
            self.slots.resize(idx + 1, None);
        }
        self.slots[idx] = Some(Slot { file, cloexec });
        Ok(idx as i64)
    }

    /// Installs at exactly `fd`, replacing what was there (dup2 semantics).
    pub fn install_at(&mut self, fd: i64, file: Arc<OpenFile>, cloexec: bool) -> Result<(), Errno> {
        let idx = usize::try_from(fd)
            .ok()
            .filter(|&i| i < MAX_FDS)
            .ok_or(Errno::EBADF)?;
        if idx >= self.slots.len() {
            self.slots.resize(idx + 1, None);
        }
        self.slots[idx] = Some(Slot { file, cloexec });
        Ok(())
    }

    /// Installs an already shared open file at the lowest free number.
    pub fn install_shared(&mut self, file: Arc<OpenFile>, cloexec: bool) -> Result<i64, Errno> {
        self.install_file(file, 0, cloexec)
    }

    /// Installs an open file at the *highest* free number below `below` (EMFILE when none
    /// is free there). Only for follow mode's transient reads of constant files
    /// (`syscalls::transient`): such an open takes no turn, and a lowest-free number would
    /// race with the ordered calls' lowest-free allocations of other threads.
    pub fn install_high(
        &mut self,
        file: Arc<OpenFile>,
        cloexec: bool,
        below: usize,
    ) -> Result<i64, Errno> {
        let below = below.min(MAX_FDS);
        let idx = (0..below)
            .rev()
            .find(|&i| self.slots.get(i).is_none_or(|s| s.is_none()))
            .ok_or(Errno::EMFILE)?;
        self.install_at(idx as i64, file, cloexec)?;
        Ok(idx as i64)
    }

    /// dup / F_DUPFD: the same open file at the lowest free number >= `min`.
    pub fn dup(&mut self, fd: i64, min: i64, cloexec: bool) -> Result<i64, Errno> {
        let file = self.get(fd)?;
        let min = usize::try_from(min).map_err(|_| Errno::EINVAL)?;
        if min >= MAX_FDS {
            return Err(Errno::EINVAL);
        }
        self.install_file(file, min, cloexec)
    }

    /// close: drops the guest number; the host fd closes with its last reference.
    pub fn close(&mut self, fd: i64) -> Result<Arc<OpenFile>, Errno> {
        let idx = usize::try_from(fd).map_err(|_| Errno::EBADF)?;
        self.slots
            .get_mut(idx)
            .and_then(|s| s.take())
            .map(|s| s.file)
            .ok_or(Errno::EBADF)
    }

    /// FD_CLOEXEC flag of a descriptor.
    pub fn cloexec(&self, fd: i64) -> Result<bool, Errno> {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.slots.get(i))
            .and_then(|s| s.as_ref())
            .map(|s| s.cloexec)
            .ok_or(Errno::EBADF)
    }

    /// Sets FD_CLOEXEC (kept for fcntl's sake; ditto has no execve).
    pub fn set_cloexec(&mut self, fd: i64, on: bool) -> Result<(), Errno> {
        let idx = usize::try_from(fd).map_err(|_| Errno::EBADF)?;
        match self.slots.get_mut(idx).and_then(|s| s.as_mut()) {
            Some(s) => {
                s.cloexec = on;
                Ok(())
            }
            None => Err(Errno::EBADF),
        }
    }

    /// The open guest descriptor numbers, ascending.
    pub fn numbers(&self) -> Vec<i64> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| i as i64)
            .collect()
    }

    /// Number of open guest descriptors.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Whether no descriptor is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devnull() -> OwnedFd {
        let f = std::fs::File::open("/dev/null").unwrap();
        f.into()
    }

    #[test]
    fn lowest_free_and_dup() {
        let mut t = FdTable::new();
        assert_eq!(t.install(devnull(), false).unwrap(), 0);
        assert_eq!(t.install(devnull(), false).unwrap(), 1);
        assert_eq!(t.install(devnull(), false).unwrap(), 2);
        t.close(1).unwrap();
        assert_eq!(t.install(devnull(), false).unwrap(), 1);
        assert_eq!(t.dup(0, 10, true).unwrap(), 10);
        assert!(t.cloexec(10).unwrap());
        assert_eq!(t.get(10).unwrap().raw(), t.get(0).unwrap().raw());
        assert_eq!(t.get(5).unwrap_err(), Errno::EBADF);
        assert_eq!(t.get(-1).unwrap_err(), Errno::EBADF);
        assert_eq!(t.close(7).unwrap_err(), Errno::EBADF);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn high_install_takes_the_highest_free_and_leaves_lowest_free_alone() {
        let mut t = FdTable::new();
        let f = || Arc::new(OpenFile::new(devnull()));
        assert_eq!(t.install(devnull(), false).unwrap(), 0);
        assert_eq!(t.install_high(f(), true, 8).unwrap(), 7);
        assert!(t.cloexec(7).unwrap());
        assert_eq!(t.install_high(f(), false, 8).unwrap(), 6);
        // The lowest-free allocations do not meet the high ones...
        assert_eq!(t.install(devnull(), false).unwrap(), 1);
        // ...and a freed high number is the next high one again.
        t.close(7).unwrap();
        assert_eq!(t.install_high(f(), false, 8).unwrap(), 7);
        // Nothing free below the ceiling: EMFILE, as Linux past RLIMIT_NOFILE.
        let mut full = FdTable::new();
        for _ in 0..3 {
            full.install(devnull(), false).unwrap();
        }
        assert_eq!(full.install_high(f(), false, 3).unwrap_err(), Errno::EMFILE);
        assert_eq!(full.install_high(f(), false, 4).unwrap(), 3);
    }

    #[test]
    fn host_fd_outlives_guest_close_while_in_use() {
        let mut t = FdTable::new();
        let fd = t.install(devnull(), false).unwrap();
        let held = t.get(fd).unwrap();
        let raw = held.raw();
        t.close(fd).unwrap();
        // SAFETY: fcntl F_GETFD on a descriptor we still own through `held`.
        assert!(unsafe { libc::fcntl(raw, libc::F_GETFD) } >= 0);
        drop(held);
    }
}
