//! vCPU threads. Each program thread runs on one vCPU, driven by one host thread.
//!
//! A worker moves through an explicit state machine:
//! `Idle` (in the pool, waiting for a thread to run) -> `Running` (in the exit loop,
//! serving syscalls) -> back to `Idle` when the program thread exits, or `Stopped`
//! when the program ends. KVM cannot destroy a vCPU, so exited threads' vCPUs are
//! reused for new threads instead of creating more.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_run, kvm_xcrs, CpuId, Msrs};
use kvm_ioctls::{IoEventAddress, NoDatamatch, SyncReg, VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use devices::process::{lock, ExitReason, Process};
use devices::syscalls::sys_det;
use devices::syscalls::sys_signal::signal_name;
use devices::syscalls::{
    CpuOps, SyscallCtx, SyscallTable, ThreadAction, ThreadStart, ThreadState, UserRegs,
};
use devices::Errno;

use crate::cpu::{self, SyscallEntry, EXC_PORT_BASE, SYSCALL_PORT};
use crate::{doorbell, fpstate, layout, signal_frame};

/// The signal used to kick vCPU threads out of KVM_RUN and blocking host calls.
pub fn kick_signal() -> i32 {
    libc::SIGRTMIN() + 2
}

thread_local! {
    /// This thread's kvm_run, for the kick handler to set `immediate_exit`.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int) {
    let p = KVM_RUN.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: p is this thread's own kvm_run mapping, alive while the worker runs;
        // immediate_exit is a plain byte KVM reads at the next KVM_RUN.
        unsafe { std::ptr::addr_of_mut!((*p).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler (no SA_RESTART, so blocking host calls return EINTR).
pub fn install_kick_handler() -> std::io::Result<()> {
    // SAFETY: a plain sigaction with an async-signal-safe handler.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(kick_signal(), &sa, std::ptr::null_mut()) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A host thread the shutdown must stop: a vCPU thread or a doorbell server.
struct HostThread {
    done: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

struct Worker {
    start_tx: Option<Sender<ThreadStart>>,
    threads: Vec<HostThread>,
}

#[derive(Default)]
struct Pool {
    workers: Vec<Worker>,
    idle: Vec<usize>,
    closed: bool,
}

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
    /// Which worker runs which program thread (for signal kicks).
    running: Mutex<BTreeMap<i64, usize>>,
    /// TSC rate, for the doorbell servers' wake-up timing.
    tsc_per_us: OnceLock<f64>,
}

/// Where the program resumes after the VMM handled an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resume {
    /// The vCPU was interrupted at CPL3 (a kick).
    User,
    /// In the #PF handler at CPL0; its iretq uses the exception frame at this address.
    Frame(u64),
    /// In the LSTAR stub at CPL0 (VMX/SVM); its sysretq uses RCX/R11.
    Stub,
}

/// State only a vCPU's own host thread touches.
struct VcpuLocal {
    index: u64,
    base_sregs: kvm_bindings::kvm_sregs,
    /// Whether LSTAR points at this vCPU's doorbell shim.
    doorbell_on: bool,
    /// Whether this vCPU's doorbell server runs (it is started once).
    server_started: bool,
    /// The doorbell could not be set up; never try again.
    doorbell_failed: bool,
    /// Syscalls served through the #PF path, counted towards the switch.
    trapped: u64,
    /// Trapped syscalls needed before (re)trying the doorbell; grows each time the
    /// doorbell turns out slower than trapping.
    switch_after: u64,
    /// Doorbell requests and slow ones (the shim gave up spinning on a call that was
    /// not expected to block) since the last switch.
    seq_at_switch: u64,
    slow_waits: u64,
}

/// What ended a thread's exit loop.
enum LoopEnd {
    ThreadExited { status: i32, clear_child_tid: u64 },
    Stopped,
}

/// The vCPU-side operations the syscall layer may ask for.
struct VcpuOps<'a> {
    vcpu: &'a VcpuFd,
    machine: &'a Arc<Machine>,
}

impl CpuOps for VcpuOps<'_> {
    fn set_fs_base(&mut self, base: u64) -> Result<(), Errno> {
        set_msrs(self.vcpu, &[(cpu::msr::FS_BASE, base)]).map_err(|_| Errno::EPERM)
    }

    fn spawn_thread(&mut self, start: ThreadStart) -> Result<(), Errno> {
        self.machine.spawn(start)
    }
}

/// Interrupts the host threads running a program thread, so it reaches a signal
/// delivery point: its vCPU leaves KVM_RUN, its blocking host calls return EINTR.
pub struct MachineKicker(pub std::sync::Weak<Machine>);

impl devices::signals::Kicker for MachineKicker {
    fn kick(&self, tid: i64) {
        let Some(m) = self.0.upgrade() else { return };
        let Some(index) = lock(&m.running).get(&tid).copied() else {
            return;
        };
        let pool = lock(&m.pool);
        if let Some(w) = pool.workers.get(index) {
            for t in &w.threads {
                if let (false, Some(j)) = (t.done.load(Ordering::SeqCst), &t.join) {
                    use std::os::unix::thread::JoinHandleExt;
                    // SAFETY: the thread is joinable, so its pthread_t is valid.
                    unsafe { libc::pthread_kill(j.as_pthread_t(), kick_signal()) };
                }
            }
        }
    }
}

/// The server thread has no vCPU: calls that need one are bounced before dispatch,
/// so these are never reached; refusing keeps a mistake visible.
struct ServerOps;

impl CpuOps for ServerOps {
    fn set_fs_base(&mut self, _: u64) -> Result<(), Errno> {
        Err(Errno::ENOSYS)
    }

    fn spawn_thread(&mut self, _: ThreadStart) -> Result<(), Errno> {
        Err(Errno::ENOSYS)
    }
}

fn spawn_host_thread(name: String, f: impl FnOnce() + Send + 'static) -> Result<HostThread, Errno> {
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let join = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            f();
            done2.store(true, Ordering::SeqCst);
        })
        .map_err(|_| Errno::EAGAIN)?;
    Ok(HostThread {
        done,
        join: Some(join),
    })
}

fn set_msrs(vcpu: &VcpuFd, values: &[(u32, u64)]) -> Result<(), kvm_ioctls::Error> {
    let entries: Vec<kvm_bindings::kvm_msr_entry> = values
        .iter()
        .map(|&(index, data)| kvm_bindings::kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| kvm_ioctls::Error::new(libc::EINVAL))?;
    // KVM_SET_MSRS stops at the first MSR it refuses (a non-canonical base) and returns
    // how many it set; anything short of all of them is a failure, not a success that
    // leaves the rest stale.
    let set = vcpu.set_msrs(&msrs)?;
    if set != entries.len() {
        return Err(kvm_ioctls::Error::new(libc::EPERM));
    }
    Ok(())
}

fn to_user(r: &kvm_regs) -> UserRegs {
    UserRegs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    }
}

fn to_kvm(u: &UserRegs) -> kvm_regs {
    kvm_regs {
        rax: u.rax,
        rbx: u.rbx,
        rcx: u.rcx,
        rdx: u.rdx,
        rsi: u.rsi,
        rdi: u.rdi,
        rsp: u.rsp,
        rbp: u.rbp,
        r8: u.r8,
        r9: u.r9,
        r10: u.r10,
        r11: u.r11,
        r12: u.r12,
        r13: u.r13,
        r14: u.r14,
        r15: u.r15,
        rip: u.rip,
        rflags: u.rflags,
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn pin_current_thread(cores: &[usize]) {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays in bounds for indices < 1024,
    // which the CLI checked.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cores {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

impl Machine {
    /// Wraps a configured VM and program.
    pub fn new(
        vm: VmFd,
        cpuid: CpuId,
        xcr0: u64,
        process: Arc<Process>,
        cores: Option<Vec<usize>>,
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
            running: Mutex::new(BTreeMap::new()),
            // Measured when the first doorbell server starts: it takes a short sleep,
            // which start-up should not pay.
            tsc_per_us: OnceLock::new(),
        }
    }

    /// Under `--det`, a call that may wait (for the token, an emulated futex, or the
    /// outside world) is served on the vCPU thread: a hand-off then wakes one thread,
    /// not a server thread and then a vCPU thread. Calls that go ahead at once (det_end,
    /// det_tick, a det_start or det point by the token holder, det-free calls) stay on
    /// the doorbell and cost no exit.
    fn det_must_bounce(&self, tid: i64, req: &doorbell::Request) -> bool {
        let Some(det) = self.process.det.get() else {
            return false;
        };
        if req.nr == sys_det::abi::DITTO_SYS_DET_END || req.nr == sys_det::abi::DITTO_SYS_DET_TICK {
            return false;
        }
        let is_start = req.nr == sys_det::abi::DITTO_SYS_DET_START;
        match sys_det::det_kind(req.nr) {
            _ if is_start => !det.can_proceed(tid),
            sys_det::DetKind::Free => false,
            sys_det::DetKind::Futex | sys_det::DetKind::External | sys_det::DetKind::Clone => true,
            _ => doorbell::may_block(req.nr, &req.args) || !det.can_proceed(tid),
        }
    }

    /// Whether syscalls use the doorbell (known after the start-up probe). Not under
    /// `--det`: there most syscalls are det hand-offs between threads, and serving them on
    /// the vCPU thread itself measured about twice as fast as through a server thread.
    fn doorbell(&self) -> bool {
        self.doorbell_allowed
            && self.process.replication.get().is_none()
            && (self.process.det.get().is_none()
                || std::env::var_os("DITTO_DET_DOORBELL").is_some())
            && self.syscall_entry() == Some(SyscallEntry::PageFaultTrap)
    }

    /// How syscalls reached the VMM, once the first one has.
    pub fn syscall_entry(&self) -> Option<SyscallEntry> {
        self.entry.get().copied()
    }

    /// Starts a program thread on an idle vCPU, or on a new one.
    pub fn spawn(self: &Arc<Self>, start: ThreadStart) -> Result<(), Errno> {
        let mut pool = lock(&self.pool);
        if pool.closed {
            return Err(Errno::EAGAIN);
        }
        let mut start = start;
        if let Some(i) = pool.idle.pop() {
            let Some(tx) = pool.workers[i].start_tx.as_ref() else {
                return Err(Errno::EAGAIN);
            };
            match tx.send(start) {
                Ok(()) => return Ok(()),
                // The idle worker is gone; start the thread on a new vCPU instead.
                Err(e) => start = e.0,
            }
        }
        let index = pool.workers.len() as u64;
        if index >= layout::MAX_VCPUS {
            return Err(Errno::EAGAIN);
        }
        let vcpu = self.vm.create_vcpu(index).map_err(|e| Errno(e.errno()))?;
        self.process
            .stats
            .vcpus_created
            .fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = channel::<ThreadStart>();
        tx.send(start).map_err(|_| Errno::EAGAIN)?;
        let current = Arc::new(Mutex::new(ThreadState::default()));
        let mut threads = Vec::new();
        let machine = self.clone();
        threads.push(spawn_host_thread(format!("vcpu{index}"), move || {
            devices::seccomp::apply_or_exit(devices::seccomp::Kind::Vcpu);
            machine.worker(vcpu, index, rx, current)
        })?);
        pool.workers.push(Worker {
            start_tx: Some(tx),
            threads,
        });
        Ok(())
    }

    /// Starts vCPU `index`'s doorbell server: its eventfd is signalled by KVM when
    /// the shim writes the doorbell address.
    fn start_server(
        self: &Arc<Self>,
        index: u64,
        current: Arc<Mutex<ThreadState>>,
    ) -> Result<HostThread, Errno> {
        let mem_size = self.process.mem.size();
        let evt = EventFd::new(libc::EFD_CLOEXEC).map_err(Errno::from)?;
        self.vm
            .register_ioevent(
                &evt,
                &IoEventAddress::Mmio(doorbell::doorbell_addr(mem_size, index)),
                NoDatamatch,
            )
            .map_err(|e| Errno(e.errno()))?;
        let page = doorbell::shim_page(mem_size, index);
        self.process
            .mem
            .write_system(doorbell::trap_bitmap_addr(page), &doorbell::trap_bitmap())
            .ok_or(Errno::ENOMEM)?;
        self.process
            .mem
            .write_system(
                page,
                &doorbell::shim(page, doorbell::doorbell_addr(mem_size, index)),
            )
            .ok_or(Errno::ENOMEM)?;
        let data = self
            .process
            .mem
            .system_range(page + 4096, 4096)
            .ok_or(Errno::ENOMEM)?;
        let data = doorbell::DataPage::new(data);
        // Read before the vCPU can make a request, so the first one is never taken
        // for an old one.
        let last = data.seq();
        let machine = self.clone();
        spawn_host_thread(format!("server{index}"), move || {
            devices::seccomp::apply_or_exit(devices::seccomp::Kind::Server);
            machine.serve_doorbell(evt, data, last, current)
        })
    }

    /// The doorbell server loop: one request at a time, for whichever program thread
    /// runs on this vCPU.
    fn serve_doorbell(
        self: &Arc<Self>,
        evt: EventFd,
        data: doorbell::DataPage,
        mut last: u64,
        current: Arc<Mutex<ThreadState>>,
    ) {
        if let Some(c) = &self.cores {
            pin_current_thread(c);
        }
        // Polling for the next request right after answering one saves the eventfd
        // wake-up (most of a doorbell's cost) for back-to-back syscalls; it is bounded
        // and off when the program is pinned to one core, where it would only steal
        // the vCPU's time.
        let poll = self.cores.as_ref().map_or(num_cpus() > 1, |c| c.len() > 1);
        let mut poll_until: Option<Instant> = None;
        let mut answered = Instant::now();
        let mut wake_stats =
            doorbell::WakeStats::new(*self.tsc_per_us.get_or_init(doorbell::tsc_per_us));
        while !self.process.exiting() {
            let req = data.request();
            if req.seq == last {
                match poll_until {
                    Some(t) if Instant::now() < t => {
                        std::hint::spin_loop();
                        continue;
                    }
                    Some(_) => {
                        // Stop polling, then look once more: the shim may have seen
                        // "polling" and skipped the doorbell just before.
                        data.set_polling(false);
                        poll_until = None;
                        continue;
                    }
                    None => {}
                }
                let mut count = 0u64;
                // A raw read: EventFd::read retries on EINTR, which would make the
                // shutdown kick useless.
                // SAFETY: reading 8 bytes into a u64 from our own eventfd.
                unsafe {
                    libc::read(
                        evt.as_raw_fd(),
                        &mut count as *mut u64 as *mut libc::c_void,
                        8,
                    )
                };
                continue;
            }
            last = req.seq;
            let arrived = Instant::now();
            // Only wake-ups count: a request found while polling cost no wake-up.
            if poll_until.is_none() && wake_stats.record(data.ring_tsc()) {
                data.set_want_trap(true);
            }
            let tid = lock(&current).tid;
            if doorbell::must_bounce(req.nr)
                || self.process.signals.has_deliverable(tid)
                || data.want_trap()
                || self.det_must_bounce(tid, &req)
            {
                data.set_polling(false);
                poll_until = None;
                data.complete(req.seq, 0, true);
                continue;
            }
            let user = UserRegs {
                rax: req.nr,
                rdi: req.args[0],
                rsi: req.args[1],
                rdx: req.args[2],
                r10: req.args[3],
                r8: req.args[4],
                r9: req.args[5],
                rip: req.rip,
                rcx: req.rip,
                ..Default::default()
            };
            let blocking = doorbell::may_block(req.nr, &req.args);
            data.mark_request(blocking);
            let mut thread = lock(&current);
            let mut ops = ServerOps;
            let mut ctx = SyscallCtx {
                process: &self.process,
                nr: req.nr,
                thread: &mut thread,
                regs: &user,
                cpu: &mut ops,
                action: ThreadAction::Continue,
                reentry_at: None,
            };
            let ret = self.table.dispatch(&mut ctx, req.nr, req.args);
            drop(thread);
            if blocking {
                data.set_blocking(false);
            }
            self.process
                .stats
                .doorbell_syscalls
                .fetch_add(1, Ordering::Relaxed);
            // Poll for the next request only in a syscall-dense phase: a call that
            // blocked, or one that came after a long gap, suggests the thread is
            // computing or waiting, and polling would only take a core from it.
            let dense = arrived.duration_since(answered) < doorbell::POLL_WINDOW;
            if poll && !blocking && dense {
                data.set_polling(true);
                poll_until = Some(Instant::now() + doorbell::POLL_WINDOW);
            }
            data.complete(req.seq, ret, false);
            answered = Instant::now();
        }
    }

    fn worker(
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
        KVM_RUN.with(|c| c.set(run_ptr));
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
        // Idle -> Running -> Idle, until the program ends (Stopped).
        while let Ok(start) = rx.recv() {
            let tid = start.thread.tid;
            if let Err(e) = self.load_thread(&mut vcpu, &local, base_sregs, &start) {
                self.fatal_host(&format!("cannot start thread {tid} on vCPU {index}: {e}"));
                self.process.thread_not_started();
                break;
            }
            self.process.signals.add_thread(tid, start.thread.sigmask);
            lock(&self.running).insert(tid, index as usize);
            *lock(&current) = start.thread;
            let end = self.run_thread(&mut vcpu, &mut local, &current);
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
                LoopEnd::Stopped => break,
            }
            if self.process.exiting() {
                break;
            }
        }
        KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
    }

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

    /// Moves this vCPU to the doorbell path: starts its server and points LSTAR at its
    /// shim. Done lazily, after `SWITCH_AFTER` trapped syscalls, because registering
    /// an ioeventfd makes VM teardown ~10 ms slower, which short programs should not
    /// pay. A failure just keeps the #PF path.
    fn enable_doorbell(
        self: &Arc<Self>,
        vcpu: &VcpuFd,
        local: &mut VcpuLocal,
        current: &Arc<Mutex<ThreadState>>,
    ) {
        if !local.server_started {
            let server = match self.start_server(local.index, current.clone()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(vcpu = local.index, %e, "doorbell unavailable, staying on the #PF path");
                    local.doorbell_failed = true;
                    return;
                }
            };
            if let Some(w) = lock(&self.pool).workers.get_mut(local.index as usize) {
                w.threads.push(server);
            }
            local.server_started = true;
        }
        let shim = doorbell::shim_page(self.process.mem.size(), local.index);
        if set_msrs(vcpu, &[(cpu::msr::LSTAR, shim)]).is_ok() {
            local.doorbell_on = true;
            local.slow_waits = 0;
            local.seq_at_switch = self.data_page(local.index).map_or(0, |d| d.seq());
        }
    }

    /// Goes back to trapping when the doorbell is slower: on a busy host the server
    /// thread waits for a core, and every call ends in the shim's sleep path anyway.
    fn review_doorbell(&self, vcpu: &VcpuFd, local: &mut VcpuLocal, data: &doorbell::DataPage) {
        let requests = data.seq().saturating_sub(local.seq_at_switch);
        if requests < 256 {
            return;
        }
        if local.slow_waits * 4 > requests {
            tracing::debug!(
                vcpu = local.index,
                requests,
                slow = local.slow_waits,
                "doorbell slower than trapping"
            );
            self.fall_back_to_trap(vcpu, local);
        }
        local.seq_at_switch = data.seq();
        local.slow_waits = 0;
    }

    /// Points LSTAR back at the trap page and waits longer before the next try.
    fn fall_back_to_trap(&self, vcpu: &VcpuFd, local: &mut VcpuLocal) {
        if set_msrs(vcpu, &[(cpu::msr::LSTAR, layout::LSTAR_PAGE)]).is_ok() {
            local.doorbell_on = false;
            local.trapped = 0;
            local.switch_after = (local.switch_after * 4).min(1 << 20);
        }
    }

    fn data_page(&self, index: u64) -> Option<doorbell::DataPage> {
        let page = doorbell::shim_page(self.process.mem.size(), index) + 4096;
        self.process
            .mem
            .system_range(page, 4096)
            .map(doorbell::DataPage::new)
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
                    let replicated = self.process.replication.get().is_some();
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
                    // KVM could not fault in guest memory: a file mapping past EOF or a
                    // read-only shared mapping written to. Natively that is SIGBUS.
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

    fn on_port(
        self: &Arc<Self>,
        vcpu: &mut VcpuFd,
        local: &mut VcpuLocal,
        current: &Arc<Mutex<ThreadState>>,
        port: u16,
    ) -> ThreadAction {
        let regs = vcpu.sync_regs_mut().regs;
        let mut guard = lock(current);
        let thread: &mut ThreadState = &mut guard;
        if port == SYSCALL_PORT {
            let mut user = to_user(&regs);
            user.rip = regs.rcx;
            user.rflags = regs.r11;
            drop(guard);
            return self.syscall(vcpu, local, current, user, Resume::Stub);
        }
        if !(EXC_PORT_BASE..EXC_PORT_BASE + 32).contains(&port) {
            self.fatal_program(
                libc::SIGSEGV,
                format!(
                    "thread {} killed by SIGSEGV: I/O to port {port:#x} at rip={:#x}",
                    thread.tid, regs.rip
                ),
            );
            return ThreadAction::Stop;
        }
        let vec = (port - EXC_PORT_BASE) as u8;
        let mem = &self.process.mem;
        let frame = regs.rsp;
        let read = |i: u64| mem.read_system_u64(frame + 8 * i).unwrap_or(0);
        let (err, frip, fcs, fflags, frsp) = (read(0), read(1), read(2), read(3), read(4));
        if vec == 14 && frip == doorbell::WAIT_ADDR && fcs & 3 == 3 && self.doorbell() {
            // The shim's spin ran out: sleep until the server answers, without
            // holding the thread state the server needs.
            drop(guard);
            let page = doorbell::shim_page(mem.size(), local.index) + 4096;
            let Some(host) = mem.system_range(page, 4096) else {
                return ThreadAction::Stop;
            };
            let data = doorbell::DataPage::new(host);
            if !data.wait_ack(regs.rax, || self.process.exiting()) {
                return ThreadAction::Stop;
            }
            let (ret, bounce) = data.result();
            if !data.last_was_blocking() {
                local.slow_waits += 1;
            }
            self.review_doorbell(vcpu, local, &data);
            let mut user = to_user(&regs);
            user.rsp = frsp;
            user.rip = data.rip();
            user.rflags = fflags;
            if bounce {
                user.rax = data.nr();
                return self.syscall(vcpu, local, current, user, Resume::Frame(frame));
            }
            let tid = lock(current).tid;
            mem.write_system_u64(frame + 8, data.rip());
            vcpu.sync_regs_mut().regs.rax = ret;
            vcpu.set_sync_dirty_reg(SyncReg::Register);
            if self.process.signals.has_deliverable(tid) {
                user.rax = ret;
                return self.deliver_signal(vcpu, local, tid, &user, Resume::Frame(frame));
            }
            return ThreadAction::Continue;
        }
        if vec == 14 && frip == layout::LSTAR_PAGE && fcs & 3 == 3 {
            let mut user = to_user(&regs);
            user.rsp = frsp;
            user.rip = regs.rcx;
            // The frame's RFLAGS, not R11: after a doorbell bounce the shim has used
            // R11 as scratch.
            user.rflags = fflags;
            drop(guard);
            let action = self.syscall(vcpu, local, current, user, Resume::Frame(frame));
            local.trapped += 1;
            if local.doorbell_on {
                if let Some(data) = self.data_page(local.index).filter(|d| d.want_trap()) {
                    data.set_want_trap(false);
                    self.fall_back_to_trap(vcpu, local);
                }
            }
            if !local.doorbell_on
                && !local.doorbell_failed
                && local.trapped >= local.switch_after
                && self.doorbell()
            {
                self.enable_doorbell(vcpu, local, current);
            }
            return action;
        }
        let signal = cpu::vector_signal(vec);
        let mut detail = format!("{} ", cpu::vector_name(vec));
        if vec == 14 {
            let cr2 = vcpu.get_sregs().map(|s| s.cr2).unwrap_or(0);
            let access = if err & 0x10 != 0 {
                "exec"
            } else if err & 2 != 0 {
                "write"
            } else {
                "read"
            };
            let why = if err & 1 != 0 {
                "protection"
            } else {
                "not present"
            };
            detail.push_str(&format!("at address {cr2:#x} ({access}, {why})"));
        } else {
            detail.push_str(&format!("at address {frip:#x}"));
        }
        self.fatal_program(
            signal,
            format!(
                "thread {} killed by {}: {detail}, rip={frip:#x} rsp={frsp:#x}",
                thread.tid,
                signal_name(signal)
            ),
        );
        ThreadAction::Stop
    }

    /// Serves a syscall trapped on this vCPU (`user` is the program's context with
    /// `rip` the return address), with signal delivery before it (a pending signal
    /// runs its handler first and the syscall restarts after) and after it.
    fn syscall(
        self: &Arc<Self>,
        vcpu: &mut VcpuFd,
        local: &mut VcpuLocal,
        current: &Arc<Mutex<ThreadState>>,
        user: UserRegs,
        resume: Resume,
    ) -> ThreadAction {
        let tid = lock(current).tid;
        // A replicated program takes asynchronous signals only right after a Recorded or
        // Compared call, where the replication layer names them (devices::replication).
        let replicated = self.process.replication.get().is_some();
        if !replicated
            && self.process.signals.has_deliverable(tid)
            && user.rax as i64 != libc::SYS_rt_sigreturn
        {
            // Deliver first; the handler returns to the `syscall` instruction again.
            let restart = UserRegs {
                rip: user.rip.wrapping_sub(2),
                ..user
            };
            return self.deliver_signal(vcpu, local, tid, &restart, resume);
        }
        let (ret, action, signal_after) = {
            let mut guard = lock(current);
            let (ret, action) = self.serve(vcpu, &mut guard, &user);
            (ret, action, guard.signal_after.take())
        };
        if action == ThreadAction::SigReturn {
            return self.sigreturn(vcpu, local, tid, user.rsp, resume);
        }
        self.set_return(vcpu, resume, &user, ret);
        let deliver = if replicated {
            signal_after.is_some()
        } else {
            self.process.signals.has_deliverable(tid)
        };
        if action == ThreadAction::Continue && deliver && !self.process.exiting() {
            let after = UserRegs { rax: ret, ..user };
            return self.deliver_signal(vcpu, local, tid, &after, resume);
        }
        action
    }

    /// The common case: only RAX (and the return address) change.
    fn set_return(&self, vcpu: &mut VcpuFd, resume: Resume, user: &UserRegs, ret: u64) {
        if let Resume::Frame(frame) = resume {
            // The handler's iretq returns to the instruction after `syscall`.
            self.process.mem.write_system_u64(frame + 8, user.rip);
        }
        vcpu.sync_regs_mut().regs.rax = ret;
        vcpu.set_sync_dirty_reg(SyncReg::Register);
    }

    /// Makes the program resume with exactly `u` (all GPRs, rip, rsp, rflags).
    fn set_context(
        &self,
        vcpu: &mut VcpuFd,
        local: &VcpuLocal,
        resume: Resume,
        u: &UserRegs,
    ) -> bool {
        let mut k = to_kvm(u);
        match resume {
            Resume::User => {}
            Resume::Frame(frame) => {
                // Stay in the #PF handler: its iretq takes rip/rflags/rsp from the frame.
                let mem = &self.process.mem;
                mem.write_system_u64(frame + 8, u.rip);
                mem.write_system_u64(frame + 24, u.rflags);
                mem.write_system_u64(frame + 32, u.rsp);
                let cur = vcpu.sync_regs_mut().regs;
                k.rsp = cur.rsp;
                k.rip = cur.rip;
                k.rflags = cur.rflags;
            }
            Resume::Stub => {
                // sysretq would clobber RCX/R11: leave the stub and enter CPL3 directly.
                if vcpu
                    .set_sregs(&cpu::user_sregs(local.base_sregs, local.index))
                    .is_err()
                {
                    return false;
                }
            }
        }
        vcpu.sync_regs_mut().regs = k;
        vcpu.set_sync_dirty_reg(SyncReg::Register);
        true
    }

    /// Runs the handler of the next deliverable signal of `tid`, whose interrupted
    /// context is `ctx`; or applies its default action.
    fn deliver_signal(
        &self,
        vcpu: &mut VcpuFd,
        local: &mut VcpuLocal,
        tid: i64,
        ctx: &UserRegs,
        resume: Resume,
    ) -> ThreadAction {
        let signals = &self.process.signals;
        while let Some((sig, old_mask)) = signals.take_deliverable(tid) {
            let act = self.process.sigaction(sig);
            if act.handler == libc::SIG_IGN as u64
                || (act.handler == libc::SIG_DFL as u64 && devices::signals::default_ignored(sig))
            {
                continue;
            }
            if act.handler == libc::SIG_DFL as u64 {
                self.process.finish(ExitReason::Signaled {
                    signal: sig,
                    report: String::new(),
                });
                return ThreadAction::Stop;
            }
            // The interrupted FPU state goes into the frame; if KVM cannot read it, the
            // handler's return resets it rather than restore another thread's.
            let fpu = vcpu
                .get_fpu()
                .map_or([0; fpstate::FXSAVE_SIZE], |f| fpstate::to_fxsave(&f));
            let frame = signal_frame::build(&self.process.mem, ctx, sig, &act, old_mask, &fpu);
            let handler = match frame {
                Ok(h) => h,
                Err(_) => {
                    self.fatal_program(
                        libc::SIGSEGV,
                        format!(
                            "thread {tid} killed by SIGSEGV: no room on its stack (rsp={:#x}) for a {} handler",
                            ctx.rsp,
                            signal_name(sig)
                        ),
                    );
                    return ThreadAction::Stop;
                }
            };
            let nodefer = act.flags & libc::SA_NODEFER as u64 != 0;
            let during = old_mask
                | act.mask
                | if nodefer {
                    0
                } else {
                    devices::signals::bit(sig)
                };
            signals.set_mask(tid, during);
            if act.flags & libc::SA_RESETHAND as u64 != 0 {
                self.process.set_sigaction(sig, Default::default());
            }
            if !self.set_context(vcpu, local, resume, &handler) {
                return ThreadAction::Stop;
            }
            return ThreadAction::Continue;
        }
        // Nothing deliverable after all: resume the interrupted context as it was.
        if resume != Resume::User {
            self.set_context(vcpu, local, resume, ctx);
        }
        ThreadAction::Continue
    }

    /// rt_sigreturn: restores the context saved by `deliver_signal`.
    fn sigreturn(
        &self,
        vcpu: &mut VcpuFd,
        local: &mut VcpuLocal,
        tid: i64,
        rsp: u64,
        resume: Resume,
    ) -> ThreadAction {
        match signal_frame::restore(&self.process.mem, rsp) {
            Ok(frame) => {
                self.process.signals.set_mask(tid, frame.mask);
                let fpu = frame
                    .fpu
                    .map_or_else(cpu::initial_fpu, |b| fpstate::from_fxsave(&b));
                let _ = vcpu.set_fpu(&fpu);
                if self.set_context(vcpu, local, resume, &frame.regs) {
                    ThreadAction::Continue
                } else {
                    ThreadAction::Stop
                }
            }
            Err(_) => {
                self.fatal_program(
                    libc::SIGSEGV,
                    format!("thread {tid} killed by SIGSEGV: rt_sigreturn with a bad frame at rsp={rsp:#x}"),
                );
                ThreadAction::Stop
            }
        }
    }

    fn serve(
        self: &Arc<Self>,
        vcpu: &VcpuFd,
        thread: &mut ThreadState,
        user: &UserRegs,
    ) -> (u64, ThreadAction) {
        let mut ops = VcpuOps {
            vcpu,
            machine: self,
        };
        let mut ctx = SyscallCtx {
            process: &self.process,
            nr: user.rax,
            thread,
            regs: user,
            cpu: &mut ops,
            action: ThreadAction::Continue,
            reentry_at: None,
        };
        let args = [user.rdi, user.rsi, user.rdx, user.r10, user.r8, user.r9];
        let ret = self.table.dispatch(&mut ctx, user.rax, args);
        (ret, ctx.action)
    }

    fn fatal_program(&self, signal: i32, report: String) {
        self.process.finish(ExitReason::Signaled { signal, report });
    }

    fn fatal_host(&self, report: &str) {
        self.process.finish(ExitReason::Signaled {
            signal: libc::SIGKILL,
            report: format!("{}{report}", crate::VMM_ERROR_PREFIX),
        });
    }

    /// Stops every vCPU thread and joins them: idle ones see their channel close,
    /// running or blocked ones are kicked (repeatedly, so a kick that lands just
    /// before a blocking call is retried). Returns the number that did not stop
    /// within `timeout`.
    pub fn shutdown(&self, timeout: Duration) -> usize {
        let mut workers = {
            let mut pool = lock(&self.pool);
            pool.closed = true;
            pool.idle.clear();
            for w in pool.workers.iter_mut() {
                w.start_tx = None;
            }
            std::mem::take(&mut pool.workers)
                .into_iter()
                .flat_map(|w| w.threads)
                .collect::<Vec<HostThread>>()
        };
        let deadline = Instant::now() + timeout;
        loop {
            let mut running = 0;
            for w in &workers {
                if !w.done.load(Ordering::SeqCst) {
                    running += 1;
                    if let Some(j) = &w.join {
                        use std::os::unix::thread::JoinHandleExt;
                        // SAFETY: the thread is joinable (not yet joined), so its
                        // pthread_t is valid even if it has just exited.
                        unsafe { libc::pthread_kill(j.as_pthread_t(), kick_signal()) };
                    }
                }
            }
            if running == 0 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut stuck = 0;
        for w in workers.iter_mut() {
            if w.done.load(Ordering::SeqCst) {
                if let Some(j) = w.join.take() {
                    let _ = j.join();
                }
            } else {
                stuck += 1;
            }
        }
        stuck
    }
}
