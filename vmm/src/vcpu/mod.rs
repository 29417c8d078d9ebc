//! vCPU threads. Each program thread runs on one vCPU, driven by one host thread (a
//! "worker"); on kvm_pvm a vCPU may also get a doorbell server thread (`server`).
//!
//! # The worker's state machine
//!
//! KVM cannot destroy a vCPU, so a vCPU and its worker live until the program ends and
//! are reused for new program threads. A worker is always in one of three states
//! (`worker::WorkerState`):
//!
//! ```text
//!            spawn (new vCPU, or an idle one's channel)
//!   +------+ ------------------------------------------> +---------+
//!   | Idle |                                             | Running |
//!   +------+ <------------------------------------------ +---------+
//!      |      thread exited (offered for reuse inside         |
//!      |      sys_det::thread_gone, before the joiner wakes)  |
//!      | channel closed (shutdown)                            | program ends, thread
//!      v                                                      v could not start, fatal exit
//!   +---------+ <---------------------------------------------+
//!   | Stopped |
//!   +---------+
//! ```
//!
//! - `Idle`: its index is in the pool's idle list (or is about to be: see below) and it
//!   waits on its start channel. [`Machine::spawn`] pops an idle index and sends the
//!   thread's start; with none idle it creates a vCPU and a worker (`pool`).
//! - `Running`: the worker loads the thread's registers and runs the exit loop (`worker`,
//!   `exits`, `signal`): KVM_RUN, serve the exit, repeat.
//! - `Running -> Idle` happens on the thread's exit. The exit is a det point that may
//!   wait for the token; the vCPU is offered for reuse from inside
//!   `sys_det::thread_gone`'s callback, i.e. once the exit holds the token and before
//!   the joiner (CLONE_CHILD_CLEARTID futex) wakes. Offered earlier, a thread created
//!   meanwhile queues behind the exit; offered later, the joiner's next pthread_create
//!   finds no idle vCPU and makes a new one. The worker itself reaches its channel
//!   after that, and a start already sent waits there.
//! - `Stopped`: the program is ending ([`Machine::shutdown`] closes every channel and
//!   kicks every host thread until it is done), or the worker hit a fatal error.
//!
//! # Modules
//!
//! - `pool`: the pool of workers, spawning program threads, shutdown and host threads.
//! - `worker`: the worker's state machine, vCPU set-up, the start-up probe of the
//!   syscall entry, and the exit loop.
//! - `exits`: serving one exit: syscall ports (trap, LSTAR stub, doorbell sleep),
//!   exceptions as fault reports, and the program context on resume.
//! - `signal`: signal frames: delivery and rt_sigreturn.
//! - `server`: the doorbell servers (one per vCPU that switched to the exitless path)
//!   and the switch between trapping and the doorbell.
//! - `kick`: the kick signal that takes a worker out of KVM_RUN and host calls.
//! - `regs`: conversions between KVM's and the syscall layer's registers; MSR writes.

mod exits;
mod kick;
mod pool;
mod regs;
mod server;
mod signal;
mod worker;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use kvm_bindings::CpuId;
use kvm_ioctls::VmFd;

use devices::exit::ExitReason;
use devices::process::Process;
use devices::syscalls::SyscallTable;

use crate::cpu::SyscallEntry;

pub use kick::{install_kick_handler, kick_signal, MachineKicker};
use pool::Pool;

/// Everything the vCPU threads share: the VM, the program, the syscall table and
/// the pool of vCPUs.
pub struct Machine {
    vm: VmFd,
    cpuid: CpuId,
    xcr0: u64,
    /// The program.
    pub process: Arc<Process>,
    table: SyscallTable,
    cores: Option<Vec<usize>>,
    pool: Mutex<Pool>,
    entry: OnceLock<SyscallEntry>,
    /// Whether the exitless doorbell path may be used (kvm_pvm only).
    doorbell_allowed: bool,
    /// `DITTO_SYSCALL_PATH=doorbell`: a vCPU that switched to the doorbell never falls
    /// back to trapping, whatever its wake-ups cost (tests and measurements of that path).
    pub(super) doorbell_pinned: bool,
    /// Which worker runs which program thread (for signal kicks).
    running: Mutex<BTreeMap<i64, usize>>,
    /// TSC rate, for the doorbell servers' wake-up timing.
    tsc_per_us: OnceLock<f64>,
    /// The trap path's round trip on this host, measured by the start-up probe (kvm_pvm):
    /// what a doorbell wake-up must beat (see `doorbell::WakeStats`).
    trap_round_trip: OnceLock<std::time::Duration>,
    /// Whether the vDSO may compute time (LIVE), if the start-up probe finds the guest's
    /// TSC to be the host's: a single VM on a host with a stable TSC.
    time_live: bool,
}

impl Machine {
    /// Wraps a configured VM and program.
    pub fn new(
        vm: VmFd,
        cpuid: CpuId,
        xcr0: u64,
        process: Arc<Process>,
        cores: Option<Vec<usize>>,
        time_live: bool,
    ) -> Self {
        Machine {
            vm,
            cpuid,
            xcr0,
            process,
            table: SyscallTable::new(),
            cores,
            pool: Mutex::new(Pool::default()),
            entry: OnceLock::new(),
            doorbell_allowed: std::env::var("DITTO_SYSCALL_PATH").map_or(true, |v| v != "trap"),
            doorbell_pinned: std::env::var("DITTO_SYSCALL_PATH").is_ok_and(|v| v == "doorbell"),
            running: Mutex::new(BTreeMap::new()),
            // Measured when the first doorbell server starts: it takes a short sleep,
            // which start-up should not pay.
            tsc_per_us: OnceLock::new(),
            trap_round_trip: OnceLock::new(),
            time_live,
        }
    }

    /// Whether syscalls use the doorbell (known after the start-up probe). Not under
    /// `--det`: there most syscalls are det hand-offs between threads, and serving them on
    /// the vCPU thread itself measured about twice as fast as through a server thread.
    pub(super) fn doorbell(&self) -> bool {
        self.doorbell_allowed
            && self.process.replication.get().is_none()
            && (self.process.det.get().is_none()
                || std::env::var_os("DITTO_DET_DOORBELL").is_some())
            && self.syscall_entry() == Some(SyscallEntry::PageFaultTrap)
    }

    /// The trap path's round trip as the start-up probe measured it (kvm_pvm only).
    pub fn trap_round_trip(&self) -> Option<std::time::Duration> {
        self.trap_round_trip.get().copied()
    }

    /// How syscalls reached the VMM, once the first one has.
    pub fn syscall_entry(&self) -> Option<SyscallEntry> {
        self.entry.get().copied()
    }

    /// Ends the program as killed by `signal`, with `report` for the user.
    fn fatal_program(&self, signal: i32, report: String) {
        self.process.finish(ExitReason::Signaled { signal, report });
    }

    /// Ends the program because the VMM itself failed (a host error, not the program's).
    fn fatal_host(&self, report: &str) {
        self.process.finish(ExitReason::Signaled {
            signal: libc::SIGKILL,
            report: format!("{}{report}", crate::VMM_ERROR_PREFIX),
        });
    }
}
