//! State shared by all threads of one program: memory, descriptors, address space,
//! filesystem view, signal dispositions, and how the program ended.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use crate::address_space::AddressSpace;
use crate::det_runtime::DetRuntime;
use crate::fd_table::FdTable;
use crate::guest_mem::GuestMemory;
use crate::path::FsContext;
use crate::signals::{Fate, Kicker, Signals};

/// `lock` and `SigAction` now live in `sync` and `signals`; re-exported here so the
/// VMM and the replication layer keep their import paths.
pub use crate::signals::SigAction;
pub use crate::sync::lock;

/// The program's pid as it sees it. Fixed, so replicas and reruns agree.
pub const GUEST_PID: i64 = 1000;

/// How the program ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// exit/exit_group with this status.
    Exited(i32),
    /// Killed by a signal: a fault in the program, a signal it raised at itself, or
    /// one delivered to ditto. `report` is the one-line description.
    Signaled {
        /// The signal number.
        signal: i32,
        /// One-line report: signal, address, rip, thread.
        report: String,
    },
}

impl ExitReason {
    /// The exit status ditto itself returns: the status, or 128+signal.
    pub fn status(&self) -> i32 {
        match self {
            ExitReason::Exited(s) => *s & 0xff,
            ExitReason::Signaled { signal, .. } => 128 + signal,
        }
    }
}

/// Where the stack builder put argv, envp and the auxiliary vector (for cmdline, environ
/// and auxv, which are read live, as Linux does, so programs that rewrite argv are seen).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    /// First byte of the argument strings.
    pub arg_start: u64,
    /// One past the last argument string's NUL.
    pub arg_end: u64,
    /// First byte of the environment strings.
    pub env_start: u64,
    /// One past the last environment string's NUL.
    pub env_end: u64,
    /// First byte of the auxiliary vector.
    pub auxv_start: u64,
    /// One past its AT_NULL entry.
    pub auxv_end: u64,
}

/// Counters for `--stats`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Syscalls served.
    pub syscalls: AtomicU64,
    /// vCPUs created (a pooled vCPU reused for a new thread does not count).
    pub vcpus_created: AtomicU64,
    /// Threads started, main thread included.
    pub threads_started: AtomicU64,
    /// Syscalls served through the exitless doorbell path (a subset of `syscalls`).
    pub doorbell_syscalls: AtomicU64,
    /// VM exits taken by vCPU threads (KVM_RUN returns).
    pub exits: AtomicU64,
}

/// Everything shared by the program's threads.
pub struct Process {
    /// Guest memory.
    pub mem: GuestMemory,
    /// The descriptor table.
    pub fds: Mutex<FdTable>,
    /// The address-space allocator.
    pub aspace: Mutex<AddressSpace>,
    /// Root, cwd and path resolution.
    pub fs: FsContext,
    /// The program's path inside the root (for /proc/self/exe).
    pub exe_path: String,
    /// Where argv, envp and auxv lie, for /proc/self/{cmdline,environ,auxv} (set once by
    /// the loader).
    pub proc_info: OnceLock<ProcInfo>,
    /// Signal dispositions, indexed by signal number (0 unused).
    pub sigactions: Mutex<[SigAction; 65]>,
    /// umask.
    pub umask: AtomicU64,
    /// Counters.
    pub stats: Stats,
    /// Masks, pending signals, sigwait.
    pub signals: Signals,
    /// How to interrupt a thread so it takes a signal (set by the vmm).
    pub kicker: OnceLock<Arc<dyn Kicker>>,
    /// ITIMER_REAL.
    pub real_timer: crate::itimer::RealTimer,
    /// The det runtime, set once before the first thread starts when running with `--det`.
    pub det: OnceLock<DetRuntime>,
    /// Replication, set once before the first thread starts when running in a pair.
    pub replication: OnceLock<Arc<crate::replication::Replication>>,
    next_tid: AtomicI64,
    live_threads: AtomicUsize,
    exit: Mutex<Option<ExitReason>>,
    /// Mirrors `exit.is_some()`: checked after every syscall, so a lock-free read.
    exiting: AtomicBool,
    exit_cv: Condvar,
    warned: Mutex<BTreeSet<u64>>,
}

impl Process {
    /// Builds the shared state. Thread ids start at the pid, as Linux's main thread.
    pub fn new(
        mem: GuestMemory,
        aspace: AddressSpace,
        fs: FsContext,
        fds: FdTable,
        exe_path: String,
    ) -> Self {
        Process {
            mem,
            fds: Mutex::new(fds),
            aspace: Mutex::new(aspace),
            fs,
            exe_path,
            proc_info: OnceLock::new(),
            sigactions: Mutex::new([SigAction::default(); 65]),
            umask: AtomicU64::new(0o022),
            stats: Stats::default(),
            signals: Signals::default(),
            kicker: OnceLock::new(),
            real_timer: Default::default(),
            det: OnceLock::new(),
            replication: OnceLock::new(),
            next_tid: AtomicI64::new(GUEST_PID),
            live_threads: AtomicUsize::new(0),
            exit: Mutex::new(None),
            exiting: AtomicBool::new(false),
            exit_cv: Condvar::new(),
            warned: Mutex::new(BTreeSet::new()),
        }
    }

    /// Allocates a thread id and counts the thread as live.
    pub fn new_thread(&self) -> i64 {
        self.live_threads.fetch_add(1, Ordering::SeqCst);
        self.stats.threads_started.fetch_add(1, Ordering::Relaxed);
        self.next_tid.fetch_add(1, Ordering::SeqCst)
    }

    /// Undoes `new_thread` when starting the thread failed.
    pub fn thread_not_started(&self) {
        self.live_threads.fetch_sub(1, Ordering::SeqCst);
    }

    /// A thread exited with `status`; the last one out ends the program.
    pub fn thread_exited(&self, status: i32) {
        if self.live_threads.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.finish(ExitReason::Exited(status));
        }
    }

    /// Number of live threads.
    pub fn live_threads(&self) -> usize {
        self.live_threads.load(Ordering::SeqCst)
    }

    /// Ends the program. The first reason wins; later ones (threads dying while the
    /// group exits) are ignored.
    pub fn finish(&self, reason: ExitReason) {
        let mut e = lock(&self.exit);
        if e.is_none() {
            *e = Some(reason);
            self.exiting.store(true, Ordering::SeqCst);
            self.exit_cv.notify_all();
        }
    }

    /// Whether the program is ending; vCPU threads check this after every kick.
    pub fn exiting(&self) -> bool {
        self.exiting.load(Ordering::SeqCst)
    }

    /// The exit reason, once there is one.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        lock(&self.exit).clone()
    }

    /// Blocks until the program ends, waking every `tick` to let the caller poll.
    pub fn wait_exit(&self, tick: std::time::Duration) -> Option<ExitReason> {
        let e = lock(&self.exit);
        let (e, _) = self
            .exit_cv
            .wait_timeout_while(e, tick, |e| e.is_none())
            .unwrap_or_else(|e| e.into_inner());
        e.clone()
    }

    /// Warns once per syscall number that the program used something ditto does not
    /// provide, naming the syscall.
    pub fn warn_unsupported(&self, nr: u64, name: &str) {
        if lock(&self.warned).insert(nr) {
            eprintln!("ditto: warning: unsupported syscall {name} ({nr}), returning ENOSYS");
        }
    }

    /// Interrupts thread `tid` so it reaches a signal delivery point.
    pub fn kick(&self, tid: i64) {
        if let Some(k) = self.kicker.get() {
            k.kick(tid);
        }
    }

    /// Sets a signal's disposition (SA_RESETHAND resets to default after one use).
    pub fn set_sigaction(&self, sig: i32, act: SigAction) {
        if let Ok(i) = usize::try_from(sig) {
            if let Some(s) = lock(&self.sigactions).get_mut(i) {
                *s = act;
            }
        }
    }

    /// The disposition of one signal.
    pub fn sigaction(&self, sig: i32) -> SigAction {
        usize::try_from(sig)
            .ok()
            .and_then(|i| lock(&self.sigactions).get(i).copied())
            .unwrap_or_default()
    }
}

/// The ITIMER_REAL thread fires at the whole program.
impl crate::itimer::AlarmTarget for Process {
    fn exiting(&self) -> bool {
        Process::exiting(self)
    }

    fn alarm(&self) {
        let sig = libc::SIGALRM;
        match self.signals.send_process(sig, self.sigaction(sig)) {
            Fate::Terminate => self.finish(ExitReason::Signaled {
                signal: sig,
                report: String::new(),
            }),
            Fate::Queued(Some(tid)) => self.kick(tid),
            _ => {}
        }
    }
}

/// A process for unit tests: 64 MiB of guest memory, the host root, no descriptors.
#[cfg(test)]
pub(crate) fn test_process() -> Process {
    let mem = GuestMemory::new(64 << 20).unwrap();
    let layout = crate::address_space::Layout::new(4 << 20, 64 << 20, 1 << 20).unwrap();
    Process::new(
        mem,
        AddressSpace::new(layout),
        FsContext::new(std::path::Path::new("/")).unwrap(),
        FdTable::new(),
        "/test".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(ExitReason::Exited(3).status(), 3);
        assert_eq!(ExitReason::Exited(256 + 4).status(), 4);
        let s = ExitReason::Signaled {
            signal: 11,
            report: String::new(),
        };
        assert_eq!(s.status(), 139);
    }
}
