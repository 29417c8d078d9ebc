//! State shared by all threads of one program: memory, descriptors, address space,
//! filesystem view, signal dispositions, and how the program ended.
//!
//! `Process` is a plain aggregate that the vmm builds; the parts with an owner of their
//! own live below it (`exit::ExitState`, `signals::{Signals, SigActions}`,
//! `itimer::RealTimer`, `fd_table`, `path`), so those modules never import this one.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::address_space::AddressSpace;
use crate::creds::Credentials;
use crate::exit::{ExitReason, ExitState};
use crate::fd_table::FdTable;
use crate::guest_mem::GuestMemory;
use crate::path::FsContext;
use crate::signals::{Fate, Kicker, SigAction, SigActions, Signals};
use crate::sync::lock;
use det::runtime::DetRuntime;

/// The program's pid as it sees it. Fixed, so replicas and reruns agree.
pub const GUEST_PID: i64 = 1000;

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
    /// Syscalls served, by their table entry's class (`Class::index`); private det calls
    /// and unknown numbers are in `syscalls` only.
    pub syscalls_by_class: [AtomicU64; 6],
}

/// Everything shared by the program's threads.
pub struct Process {
    /// The guest's clocks: the vDSO's parameter page and the time syscalls' formula.
    pub timekeeper: crate::timekeeper::Timekeeper,
    /// A pair's per-thread time rings (empty without them).
    pub time_rings: crate::time_ring::TimeRings,
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
    /// Signal dispositions.
    pub sigactions: SigActions,
    /// umask.
    pub umask: AtomicU64,
    /// The program's virtual user and group ids, groups and capabilities.
    pub creds: Mutex<Credentials>,
    /// Counters.
    pub stats: Stats,
    /// Masks, pending signals, sigwait.
    pub signals: Signals,
    /// How to interrupt a thread so it takes a signal (set by the vmm).
    pub kicker: OnceLock<Arc<dyn Kicker>>,
    /// ITIMER_REAL.
    pub real_timer: crate::itimer::RealTimer,
    /// The POSIX timers (timer_create).
    pub ptimers: crate::ptimer::PosixTimers,
    /// The det runtime, set once before the first thread starts when running with `--det`.
    pub det: OnceLock<DetRuntime>,
    /// Replication, set once before the first thread starts when running in a pair.
    pub replication: OnceLock<Arc<crate::replication::Replication>>,
    /// Threads and how the program ended; shared with what must see the end alone.
    pub exit: Arc<ExitState>,
    warned: Mutex<BTreeSet<u64>>,
}

impl Process {
    /// Builds the shared state. Thread ids start at the pid, as Linux's main thread.
    pub fn new(
        mut mem: GuestMemory,
        mut aspace: AddressSpace,
        fs: FsContext,
        fds: FdTable,
        exe_path: String,
    ) -> Self {
        // From here on every buffer a syscall names is checked against the program's
        // mappings, which the mapping table keeps in the guest memory's page table.
        aspace.vmas_mut().mirror_into(mem.enforce_protections());
        let timekeeper = crate::timekeeper::Timekeeper::new(&mem);
        Process {
            timekeeper,
            time_rings: Default::default(),
            mem,
            fds: Mutex::new(fds),
            aspace: Mutex::new(aspace),
            fs,
            exe_path,
            proc_info: OnceLock::new(),
            sigactions: SigActions::default(),
            umask: AtomicU64::new(0o022),
            creds: Mutex::new(Credentials::from_host()),
            stats: Stats::default(),
            signals: Signals::default(),
            kicker: OnceLock::new(),
            real_timer: Default::default(),
            ptimers: Default::default(),
            det: OnceLock::new(),
            replication: OnceLock::new(),
            exit: Arc::new(ExitState::new(GUEST_PID)),
            warned: Mutex::new(BTreeSet::new()),
        }
    }

    /// Allocates a thread id and counts the thread as live.
    pub fn new_thread(&self) -> i64 {
        self.stats.threads_started.fetch_add(1, Ordering::Relaxed);
        self.exit.new_thread()
    }

    /// Undoes `new_thread` when starting the thread failed.
    pub fn thread_not_started(&self) {
        self.exit.thread_not_started()
    }

    /// A thread exited with `status`; the last one out ends the program.
    pub fn thread_exited(&self, status: i32) {
        self.exit.thread_exited(status)
    }

    /// Number of live threads.
    pub fn live_threads(&self) -> usize {
        self.exit.live_threads()
    }

    /// Ends the program (the first reason wins).
    pub fn finish(&self, reason: ExitReason) {
        self.exit.finish(reason)
    }

    /// Whether the program is ending; vCPU threads check this after every kick.
    pub fn exiting(&self) -> bool {
        self.exit.exiting()
    }

    /// The exit reason, once there is one.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.exit.exit_reason()
    }

    /// Blocks until the program ends, waking every `tick` to let the caller poll.
    pub fn wait_exit(&self, tick: std::time::Duration) -> Option<ExitReason> {
        self.exit.wait_exit(tick)
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
        self.sigactions.set(sig, act)
    }

    /// The disposition of one signal.
    pub fn sigaction(&self, sig: i32) -> SigAction {
        self.sigactions.get(sig)
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

/// The POSIX timers' thread fires at the whole program, or at one thread of it
/// (SIGEV_THREAD_ID), as kill and tgkill would.
impl crate::ptimer::TimerTarget for Process {
    fn exiting(&self) -> bool {
        Process::exiting(self)
    }

    fn fire(&self, notify: crate::ptimer::Notify) {
        use crate::ptimer::Notify;
        let (sig, fate) = match notify {
            Notify::Nothing => return,
            Notify::Process(sig) => (sig, self.signals.send_process(sig, self.sigaction(sig))),
            // A thread that has ended takes no signal (Linux drops it too).
            Notify::Thread(tid, sig) => {
                match self.signals.send_thread(tid, sig, self.sigaction(sig)) {
                    Some(fate) => (sig, fate),
                    None => return,
                }
            }
        };
        match fate {
            Fate::Terminate => self.finish(ExitReason::Signaled {
                signal: sig,
                report: String::new(),
            }),
            Fate::Queued(Some(tid)) => self.kick(tid),
            _ => {}
        }
    }

    fn still_pending(&self, notify: crate::ptimer::Notify) -> bool {
        use crate::ptimer::Notify;
        match notify {
            Notify::Nothing => false,
            Notify::Process(sig) => self.signals.is_pending(sig, None),
            Notify::Thread(tid, sig) => self.signals.is_pending(sig, Some(tid)),
        }
    }
}

/// A process for unit tests: 64 MiB of guest memory, the host root, no descriptors;
/// [4 MiB, 8 MiB) and [16 MiB, 32 MiB) are mapped read-write for the tests' buffers
/// (syscall buffers are checked against the mappings).
#[cfg(test)]
pub(crate) fn test_process() -> Process {
    let mem = GuestMemory::new(64 << 20).unwrap();
    let layout = crate::address_space::Layout::new(4 << 20, 64 << 20, 1 << 20).unwrap();
    let mut aspace = AddressSpace::new(layout, 64 << 20);
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
    for (start, end) in [(4 << 20, 8 << 20), (16 << 20, 32 << 20)] {
        aspace
            .vmas_mut()
            .insert(start, crate::vma::Vma::anon(end, rw, false, None));
    }
    Process::new(
        mem,
        aspace,
        FsContext::new(std::path::Path::new("/")).unwrap(),
        FdTable::new(),
        "/test".into(),
    )
}
