//! A vCPU's worker thread: its state machine (`Idle -> Running -> Idle | Stopped`, see
//! the `vcpu` module docs), the vCPU's set-up, the start-up probe of how `syscall`
//! reaches the VMM and of whether the guest's TSC is the host's (the vDSO's time),
//! loading a program thread, and the exit loop that runs it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
        self.process.time_rings.detach(tid);
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
        if self.time_live && !zero_tsc_offset(vcpu) {
            // This vCPU's TSC may not be the host's: the vDSO cannot use it.
            self.process.timekeeper.stop();
        }
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
            .write_system(page, &PROBE_CODE)
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
        let tsc_before = devices::timekeeper::rdtsc();
        let port = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, _)) => port,
            other => return Err(format!("unexpected exit {other:?}")),
        };
        let tsc_after = devices::timekeeper::rdtsc();
        let guest_tsc = vcpu.sync_regs_mut().regs.rdi;
        self.start_time(vcpu, tsc_before, guest_tsc, tsc_after);
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
        // Only where the doorbell may be used (not in a pair, say): ~1.5 ms of start-up.
        if self.doorbell() {
            match self.time_trap(vcpu, page, frame) {
                Ok(d) => {
                    let _ = self.trap_round_trip.set(d);
                    tracing::debug!(?d, "trap round trip");
                }
                Err(e) => tracing::debug!(%e, "trap round trip not measured"),
            }
        }
        Ok(())
    }

    /// Times the trap path where it runs: the probe's vCPU, stopped in its first syscall's
    /// exit (`frame`), goes on into a loop of getpid syscalls at `page + 0x100`, each
    /// answered with the least the VMM does (the frame's return address), and the median
    /// gap between exits is one round trip, the guest's syscall to its return, as this
    /// host's load makes it. 16 exits (1-2 ms on kvm_pvm). The doorbell compares its
    /// wake-ups with it (`doorbell::WakeStats`); a fixed figure was wrong by 2x on the
    /// hosts ditto met (35 µs on one day, 58-85 µs on another).
    fn time_trap(&self, vcpu: &mut VcpuFd, page: u64, frame: u64) -> Result<Duration, String> {
        const TRAPS: usize = 16;
        let code = page + 0x100;
        // mov $SYS_getpid, %eax; syscall; jmp back to the mov
        let mut getpid_loop = vec![0xb8];
        getpid_loop.extend_from_slice(&(libc::SYS_getpid as u32).to_le_bytes());
        getpid_loop.extend_from_slice(&[0x0f, 0x05, 0xeb, 0xf7]);
        let mem = &self.process.mem;
        mem.write_system(code, &getpid_loop)
            .ok_or("no room for the trap probe")?;
        mem.write_system_u64(frame + 8, code);
        let mut gaps = Vec::with_capacity(TRAPS);
        let mut last = None;
        while gaps.len() < TRAPS {
            match vcpu.run() {
                Ok(VcpuExit::IoOut(port, _)) if port == EXC_PORT_BASE + 14 => {}
                other => return Err(format!("unexpected exit {other:?}")),
            }
            let now = Instant::now();
            if let Some(t) = last {
                gaps.push(now.duration_since(t));
            }
            last = Some(now);
            let regs = vcpu.sync_regs_mut().regs;
            // Return past the syscall (rcx), as a served call does.
            mem.write_system_u64(regs.rsp + 8, regs.rcx);
        }
        gaps.sort();
        Ok(gaps[gaps.len() / 2])
    }

    /// Makes the vDSO's time LIVE if this run wants it and the probe's guest TSC reading
    /// lies between the host's readings around it (the guest's TSC is the host's, so time
    /// computed in the guest and in the VMM agree), with KVM's TSC frequency as the seed.
    fn start_time(&self, vcpu: &VcpuFd, before: u64, guest: u64, after: u64) {
        if !self.time_live {
            return;
        }
        if !(before..=after).contains(&guest) {
            tracing::debug!(
                before,
                guest,
                after,
                "guest TSC is not the host's: time by syscall"
            );
            return;
        }
        match vcpu.get_tsc_khz() {
            Ok(khz) if khz > 0 => self.process.timekeeper.start(u64::from(khz)),
            other => tracing::debug!(?other, "no TSC frequency from KVM: time by syscall"),
        }
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
        if self.process.timekeeper.ring() != det::abi::DITTO_RING_NONE {
            // A pair's time ring: the thread's vDSO finds it through GS base.
            let ring = doorbell::shim_page(self.process.mem.size(), local.index)
                + 4096
                + doorbell::TIME_RING_OFFSET;
            if self
                .process
                .time_rings
                .attach(&self.process.mem, start.thread.tid, ring)
            {
                for m in msrs.iter_mut().filter(|m| m.0 == cpu::msr::GS_BASE) {
                    m.1 = ring;
                }
            }
        }
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

/// The start-up probe's guest code: the TSC into RDI, then `syscall` (getpid).
/// `lfence; rdtsc; shl $32,%rdx; or %rdx,%rax; mov %rax,%rdi; mov $39,%eax; syscall`
const PROBE_CODE: [u8; 22] = [
    0x0f, 0xae, 0xe8, 0x0f, 0x31, 0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0, 0x48, 0x89, 0xc7, 0xb8,
    0x27, 0x00, 0x00, 0x00, 0x0f, 0x05,
];

/// Sets the vCPU's TSC offset to 0 where KVM lets a VMM (KVM_VCPU_TSC_OFFSET, Linux 5.16+;
/// VMX/SVM otherwise start a guest's TSC near 0). True when the offset is 0 now or the
/// attribute does not exist (kvm_pvm runs the guest on the host's TSC; the start-up probe
/// checks either way).
fn zero_tsc_offset(vcpu: &VcpuFd) -> bool {
    let zero: u64 = 0;
    let attr = kvm_bindings::kvm_device_attr {
        flags: 0,
        group: kvm_bindings::KVM_VCPU_TSC_CTRL,
        attr: u64::from(kvm_bindings::KVM_VCPU_TSC_OFFSET),
        addr: &zero as *const u64 as u64,
    };
    use std::os::fd::AsRawFd;
    // _IOW(KVMIO, 0xe3 / 0xe1, struct kvm_device_attr): kvm-ioctls offers the vCPU device
    // attribute calls on aarch64 only.
    const KVM_HAS_DEVICE_ATTR: libc::c_ulong = 0x4018_AEE3;
    const KVM_SET_DEVICE_ATTR: libc::c_ulong = 0x4018_AEE1;
    // SAFETY: both ioctls read one kvm_device_attr we own, and SET reads the u64 its addr
    // points at (`zero`, alive for the call); the fd is our vCPU's.
    unsafe {
        if libc::ioctl(vcpu.as_raw_fd(), KVM_HAS_DEVICE_ATTR, &attr) != 0 {
            return true;
        }
        libc::ioctl(vcpu.as_raw_fd(), KVM_SET_DEVICE_ATTR, &attr) == 0
    }
}
