//! A vCPU's worker thread: its state machine (`Idle -> Running -> Idle | Stopped`, see
//! the `vcpu` module docs), the vCPU's set-up, the start-up probe of how `syscall`
//! reaches the VMM, loading a program thread, and the exit loop that runs it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_regs, kvm_run, kvm_xcrs};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};

use devices::sync::lock;
use devices::syscalls::sys_det;
use devices::syscalls::{ThreadAction, ThreadStart, ThreadState};

use super::exits::Resume;
use super::kick;
use super::pool::pin_current_thread;
use super::regs::{set_msrs, to_kvm, to_user};
use super::Machine;
use crate::cpu::{self, SyscallEntry, EXC_PORT_BASE, SYSCALL_PORT};
use crate::{doorbell, layout};

/// Where a vCPU's worker thread is in its life (the diagram is in the `vcpu` module
/// docs). Each state's work is one step of the worker's loop, which returns the next.
// A `ThreadStart` is a few hundred bytes, moved once per program thread: no reason to box it.
#[allow(clippy::large_enum_variant)]
pub(super) enum WorkerState {
    /// In the pool, waiting on the start channel for a program thread to run.
    Idle,
    /// Given program thread `start`: load it and run its exit loop to its end.
    Running(ThreadStart),
    /// The program is ending (or this vCPU failed): the worker returns.
    Stopped,
}

/// State only a vCPU's own host thread touches.
pub(super) struct VcpuLocal {
    /// The vCPU's index (also its place in the pool).
    pub(super) index: u64,
    /// Segment registers after set-up, from which each thread's user segments are made.
    pub(super) base_sregs: kvm_bindings::kvm_sregs,
    /// Whether LSTAR points at this vCPU's doorbell shim.
    pub(super) doorbell_on: bool,
    /// Whether this vCPU's doorbell server runs (it is started once).
    pub(super) server_started: bool,
    /// The doorbell could not be set up; never try again.
    pub(super) doorbell_failed: bool,
    /// Syscalls served through the #PF path, counted towards the switch.
    pub(super) trapped: u64,
    /// Trapped syscalls needed before (re)trying the doorbell; grows each time the
    /// doorbell turns out slower than trapping.
    pub(super) switch_after: u64,
    /// Doorbell requests and slow ones (the shim gave up spinning on a call that was
    /// not expected to block) since the last switch.
    pub(super) seq_at_switch: u64,
    pub(super) slow_waits: u64,
}

/// What ended a thread's exit loop.
enum LoopEnd {
    /// The program thread exited; its joiner is told through `clear_child_tid`.
    ThreadExited { status: i32, clear_child_tid: u64 },
    /// The program is ending.
    Stopped,
}

impl Machine {
    /// The worker thread's body: sets up vCPU `index` (and, on vCPU 0, probes the
    /// syscall entry), then runs the state machine until `Stopped`.
    pub(super) fn worker(
        self: &Arc<Self>,
        mut vcpu: VcpuFd,
        index: u64,
        rx: std::sync::mpsc::Receiver<ThreadStart>,
        current: Arc<Mutex<ThreadState>>,
    ) {
        if let Some(c) = &self.cores {
            pin_current_thread(c);
        }
        let run_ptr: *mut kvm_run = vcpu.get_kvm_run();
        kick::set_kvm_run(run_ptr);
        let base_sregs = match self.init_vcpu(&vcpu, index) {
            Ok(s) => s,
            Err(e) => {
                self.fatal_host(&format!("cannot set up vCPU {index}: {e}"));
                return;
            }
        };
        vcpu.set_sync_valid_reg(SyncReg::Register);
        if index == 0 {
            if let Err(e) = self.probe_entry(&mut vcpu, base_sregs) {
                self.fatal_host(&format!("syscall entry probe failed: {e}"));
                return;
            }
        }
        let mut local = VcpuLocal {
            index,
            base_sregs,
            doorbell_on: false,
            server_started: false,
            doorbell_failed: false,
            trapped: 0,
            switch_after: doorbell::SWITCH_AFTER,
            seq_at_switch: 0,
            slow_waits: 0,
        };
        let mut state = WorkerState::Idle;
        loop {
            state = match state {
                WorkerState::Idle => match rx.recv() {
                    Ok(start) => WorkerState::Running(start),
                    // The pool closed the channel: the program is ending.
                    Err(_) => WorkerState::Stopped,
                },
                WorkerState::Running(start) => {
                    self.run_program_thread(&mut vcpu, &mut local, &current, start)
                }
                WorkerState::Stopped => break,
            };
        }
        kick::set_kvm_run(std::ptr::null_mut());
    }

    /// `Running`: runs program thread `start` on this vCPU until it exits (back to
    /// `Idle`, the vCPU offered for reuse) or the program ends (`Stopped`).
    fn run_program_thread(
        self: &Arc<Self>,
        vcpu: &mut VcpuFd,
        local: &mut VcpuLocal,
        current: &Arc<Mutex<ThreadState>>,
        start: ThreadStart,
    ) -> WorkerState {
        let index = local.index;
        let tid = start.thread.tid;
        if let Err(e) = self.load_thread(vcpu, local, local.base_sregs, &start) {
            self.fatal_host(&format!("cannot start thread {tid} on vCPU {index}: {e}"));
            self.process.thread_not_started();
            return WorkerState::Stopped;
        }
        self.process.signals.add_thread(tid, start.thread.sigmask);
        lock(&self.running).insert(tid, index as usize);
        *lock(current) = start.thread;
        let end = self.run_thread(vcpu, local, current);
        lock(&self.running).remove(&tid);
        self.process.signals.remove_thread(tid);
        match end {
            LoopEnd::ThreadExited {
                status,
                clear_child_tid,
            } => {
                // The exit is a det point that may wait for the token; the vCPU is
                // offered for reuse only once that wait is over (see
                // `DetRuntime::thread_exit` for both ways to get this wrong).
                sys_det::thread_gone(&self.process, tid, clear_child_tid, || {
                    if !self.process.exiting() {
                        lock(&self.pool).idle.push(index as usize);
                    }
                });
                self.process.thread_exited(status);
            }
            LoopEnd::Stopped => return WorkerState::Stopped,
        }
        if self.process.exiting() {
            WorkerState::Stopped
        } else {
            WorkerState::Idle
        }
    }

    /// Gives the vCPU its CPUID and XCR0; returns its segment registers as KVM made them.
    fn init_vcpu(
        &self,
        vcpu: &VcpuFd,
        index: u64,
    ) -> Result<kvm_bindings::kvm_sregs, kvm_ioctls::Error> {
        vcpu.set_cpuid2(&cpu::cpuid_for_vcpu(&self.cpuid, index))?;
        let mut xcrs = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        xcrs.xcrs[0].xcr = 0;
        xcrs.xcrs[0].value = self.xcr0;
        vcpu.set_xcrs(&xcrs)?;
        vcpu.get_sregs()
    }

    /// Finds out how `syscall` reaches the VMM on this host by running one on vCPU 0
    /// before the program starts (~one exit). Never assumed: kvm_pvm and VMX/SVM
    /// differ, and a host update could change kvm_pvm's behaviour.
    fn probe_entry(
        &self,
        vcpu: &mut VcpuFd,
        base_sregs: kvm_bindings::kvm_sregs,
    ) -> Result<(), String> {
        let page = doorbell::shim_page(self.process.mem.size(), 0);
        self.process
            .mem
            .write_system(page, &[0x0f, 0x05])
            .ok_or("no room for the probe")?;
        vcpu.set_sregs(&cpu::user_sregs(base_sregs, 0))
            .map_err(|e| e.to_string())?;
        set_msrs(vcpu, &cpu::initial_msrs(0)).map_err(|e| e.to_string())?;
        vcpu.sync_regs_mut().regs = kvm_regs {
            rip: page,
            rsp: page + 4096,
            rflags: 0x2,
            rax: libc::SYS_getpid as u64,
            ..Default::default()
        };
        vcpu.set_sync_dirty_reg(SyncReg::Register);
        let port = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, _)) => port,
            other => return Err(format!("unexpected exit {other:?}")),
        };
        let frame = vcpu.sync_regs_mut().regs.rsp;
        let frip = self.process.mem.read_system_u64(frame + 8).unwrap_or(0);
        let entry = if port == SYSCALL_PORT {
            SyscallEntry::NativeStub
        } else if port == EXC_PORT_BASE + 14 && frip == layout::LSTAR_PAGE {
            SyscallEntry::PageFaultTrap
        } else {
            return Err(format!("syscall exited through port {port:#x}"));
        };
        let _ = self.entry.set(entry);
        tracing::debug!(?entry, "syscall entry detected");
        Ok(())
    }

    /// Puts a new program thread on the vCPU: user segments, MSRs (LSTAR at the
    /// doorbell shim if this vCPU uses it), a fresh FPU, the thread's registers.
    fn load_thread(
        &self,
        vcpu: &mut VcpuFd,
        local: &VcpuLocal,
        base_sregs: kvm_bindings::kvm_sregs,
        start: &ThreadStart,
    ) -> Result<(), kvm_ioctls::Error> {
        vcpu.set_sregs(&cpu::user_sregs(base_sregs, local.index))?;
        let mut msrs = cpu::initial_msrs(start.thread.fs_base);
        if local.doorbell_on {
            let shim = doorbell::shim_page(self.process.mem.size(), local.index);
            for m in msrs.iter_mut().filter(|m| m.0 == cpu::msr::LSTAR) {
                m.1 = shim;
            }
        }
        set_msrs(vcpu, &msrs)?;
        vcpu.set_fpu(&cpu::initial_fpu())?;
        // Through SYNC_REGS rather than KVM_SET_REGS: a reused vCPU may still have
        // dirty sync registers from its last exit, which KVM would apply on entry and
        // which would override a plain set_regs.
        vcpu.sync_regs_mut().regs = to_kvm(&start.regs);
        vcpu.set_sync_dirty_reg(SyncReg::Register);
        Ok(())
    }

    /// The exit loop: KVM_RUN, serve the exit, until the thread exits or the program ends.
    fn run_thread(
        self: &Arc<Self>,
        vcpu: &mut VcpuFd,
        local: &mut VcpuLocal,
        current: &Arc<Mutex<ThreadState>>,
    ) -> LoopEnd {
        let tid = lock(current).tid;
        loop {
            let run = vcpu.run();
            self.process.stats.exits.fetch_add(1, Ordering::Relaxed);
            let port = match run {
                Ok(VcpuExit::IoOut(port, _)) => port,
                Ok(VcpuExit::Intr) => {
                    if self.process.exiting() {
                        return LoopEnd::Stopped;
                    }
                    continue;
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    vcpu.set_kvm_immediate_exit(0);
                    if self.process.exiting() {
                        return LoopEnd::Stopped;
                    }
                    // A kick for a signal: deliverable only while the program runs its
                    // own code (not a CPL0 stub, not the doorbell shim); otherwise the
                    // signal pump kicks again shortly.
                    let regs = vcpu.sync_regs_mut().regs;
                    let shim_area = self.process.mem.size() - doorbell::AREA_SIZE;
                    let in_program =
                        regs.rip >= devices::guest_mem::USER_START && regs.rip < shim_area;
                    let replicated = self.process.replication.get().is_some_and(|r| !r.is_live());
                    if in_program && !replicated && self.process.signals.has_deliverable(tid) {
                        match self.deliver_signal(vcpu, local, tid, &to_user(&regs), Resume::User) {
                            ThreadAction::Stop => return LoopEnd::Stopped,
                            _ => continue,
                        }
                    }
                    continue;
                }
                Ok(other) => {
                    let what = format!("{other:?}");
                    let rip = vcpu.sync_regs_mut().regs.rip;
                    self.fatal_program(
                        libc::SIGSEGV,
                        format!("thread {tid} killed by SIGSEGV: unexpected VM exit {what} at rip={rip:#x}"),
                    );
                    return LoopEnd::Stopped;
                }
                Err(e) => {
                    // KVM could not fault in guest memory: a file mapping past EOF, or a
                    // page whose host protection (the program's own, see
                    // guest_memory::protect) refuses the access: unmapped, PROT_NONE, or
                    // written while read-only. Natively the first is SIGBUS, the others
                    // SIGSEGV; KVM does not say which page it was, so it is SIGBUS, and
                    // uncatchable (docs/pair.md, Address space and memory).
                    let rip = vcpu.sync_regs_mut().regs.rip;
                    self.fatal_program(
                        libc::SIGBUS,
                        format!("thread {tid} killed by SIGBUS: guest memory access failed ({e}) near rip={rip:#x}"),
                    );
                    return LoopEnd::Stopped;
                }
            };
            let action = self.on_port(vcpu, local, current, port);
            match action {
                ThreadAction::Continue if self.process.exiting() => return LoopEnd::Stopped,
                ThreadAction::Continue => {}
                ThreadAction::ExitThread(status) => {
                    return LoopEnd::ThreadExited {
                        status,
                        clear_child_tid: lock(current).clear_child_tid,
                    }
                }
                ThreadAction::Stop => return LoopEnd::Stopped,
                // on_port turns SigReturn into a restored context.
                ThreadAction::SigReturn => {}
            }
        }
    }
}
