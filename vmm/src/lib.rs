//! The KVM process VM: one program in one VM, whose kernel is this VMM.
//!
//! [`run`] builds the VM (guest memory, system area, CPU state), loads the program
//! and its interpreter, builds the initial stack, starts the main thread on a vCPU
//! and waits for the program to end. Syscalls are served by `devices`.

pub mod cpu;
pub mod doorbell;
pub mod elf;
pub mod fpstate;
pub mod layout;
pub mod signal_frame;
pub mod stack;
pub mod vcpu;
pub mod vdso;

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

use devices::address_space::{AddressSpace, Layout};
use devices::exit::ExitReason;
use devices::fd_table::FdTable;
use devices::guest_mem::GuestMemory;
use devices::path::FsContext;
use devices::process::Process;
use devices::signals::Fate;
use devices::syscalls::{ThreadStart, ThreadState, UserRegs};

pub use cpu::SyscallEntry;

/// Size of the main thread's stack.
pub const MAIN_STACK_SIZE: u64 = 8 << 20;

/// The guest's address space (guest physical memory, identity-mapped), unless the memory
/// the program may commit is larger: reservations (PROT_NONE, MAP_NORESERVE) need room
/// far beyond what a program touches (V8's 128 MiB code range per isolate, glibc's
/// 64 MiB arena per thread, the JVM's heap). Its host side is a MAP_NORESERVE mapping
/// that costs nothing until touched; its cost is KVM's per-page metadata for the memory
/// slot on a shadow-paging host (kvm_pvm: ~2.5 MiB of kernel memory and ~3 ms of set-up
/// per GiB; docs/pair.md, Address space and memory), which is why it is not the 64 GiB
/// the page directories allow (`layout::MAX_GIB`).
pub const ADDRESS_SPACE: u64 = 32 << 30;

/// What to run and how.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// The directory paths resolve in.
    pub root: PathBuf,
    /// The program: a path inside the root, or a bare name looked up in PATH.
    pub program: Vec<u8>,
    /// argv, argv[0] included.
    pub args: Vec<Vec<u8>>,
    /// The environment.
    pub env: Vec<Vec<u8>>,
    /// Memory the program may commit, in bytes (`--memory`); its address space is
    /// larger ([`ADDRESS_SPACE`]).
    pub memory: u64,
    /// Host cores every vCPU thread is pinned to.
    pub cores: Option<Vec<usize>>,
    /// Seed for AT_RANDOM.
    pub seed: u64,
    /// Writable directories: (guest path, host directory). When any is given, the
    /// root itself is read-only (an image must not be changed by its runs).
    pub writable: Vec<(String, PathBuf)>,
    /// Read-only directories: (guest path, host directory).
    pub read_only: Vec<(String, PathBuf)>,
    /// The root is read-only even without writable directories (a pair's secondary).
    pub read_only_root: bool,
    /// A pair's secondary: the primary's writable directories outside the pair's own
    /// directory, read-only here until the secondary takes over (failover).
    pub writable_when_live: Vec<(String, PathBuf)>,
    /// A pair's secondary whose primary writes the root: writable once it takes over.
    pub root_writable_when_live: bool,
    /// Replication in a pair (DESIGN.md §6): this process is the primary or the secondary.
    pub replication: Option<Arc<devices::replication::Replication>>,
    /// The initial working directory inside the root (default: the host cwd when it
    /// lies inside the root, else `/`).
    pub cwd: Option<String>,
    /// Deterministic execution (`--det`, DESIGN.md §5): serve the det hypercalls and make
    /// futexes, clone/exit and shared-object syscalls det points.
    pub det: bool,
    /// With `det`: the host libditto.so that dynamic programs get through LD_PRELOAD, served
    /// at [`det::runtime::LIBDITTO_GUEST_PATH`] inside the root.
    pub det_preload: Option<PathBuf>,
    /// Once the program's first thread runs, restrict the calling thread with the `main`
    /// seccomp filter (docs/seccomp.md): for a process that runs one program and then
    /// only waits, reports and exits (`ditto run`, a replica). The thread cannot set up
    /// another VM afterwards.
    pub filter_main: bool,
}

/// Errors that stop a program from starting. Each is bad input or a host problem,
/// reported in one line.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// /dev/kvm is missing or unusable.
    #[error("KVM is not available: {0}")]
    Kvm(kvm_ioctls::Error),
    /// A KVM capability ditto needs is missing.
    #[error("KVM lacks a required capability: {0}")]
    MissingCap(&'static str),
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] devices::guest_mem::GuestMemoryError),
    /// The system area could not be built.
    #[error(transparent)]
    Cpu(#[from] cpu::CpuSetupError),
    /// The root directory is unusable.
    #[error(transparent)]
    Root(#[from] devices::path::RootError),
    /// The program or its interpreter cannot be loaded.
    #[error(transparent)]
    Load(#[from] elf::LoadError),
    /// The program does not leave room for heap and stack.
    #[error(transparent)]
    Layout(#[from] devices::address_space::LayoutError),
    /// A bare program name was not found in PATH.
    #[error("{0}: command not found in PATH inside the root")]
    NotFound(String),
    /// The initial stack does not fit.
    #[error("arguments and environment do not fit on the initial stack")]
    Stack,
    /// A host resource (thread, signal handler) could not be set up.
    #[error("host error: {0}")]
    Host(String),
}

impl VmmError {
    /// Whether this is the user's input being wrong (exit status 2) rather than the
    /// host failing.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            VmmError::Root(_)
                | VmmError::Load(_)
                | VmmError::Layout(_)
                | VmmError::NotFound(_)
                | VmmError::Memory(_)
        )
    }
}

/// How a run went.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// How the program ended.
    pub exit: ExitReason,
    /// Syscalls served.
    pub syscalls: u64,
    /// Of those, served through the exitless doorbell path.
    pub doorbell_syscalls: u64,
    /// vCPUs created.
    pub vcpus_created: u64,
    /// VM exits taken by vCPU threads.
    pub exits: u64,
    /// Det operations (token acquisitions), with `--det`.
    pub det_ops: u64,
    /// Turns the det runtime granted (token acquisitions not elided or nested), with `--det`.
    pub det_turns: u64,
    /// Times a thread slept for the token (a hand-off between host threads), with `--det`.
    pub det_waits: u64,
    /// Det section ends and ticks posted through the det page (no VM exit), with `--det`.
    pub det_posted: u64,
    /// Logical time added by `det_tick` (hypercall or det page), with `--det` under Kendo.
    pub det_ticked: u64,
    /// Threads started (main included).
    pub threads: u64,
    /// How syscalls reached the VMM.
    pub entry: Option<SyscallEntry>,
    /// The trap path's round trip, as the start-up probe measured it (kvm_pvm).
    pub trap_round_trip: Option<Duration>,
    /// Time from start to exit.
    pub wall: Duration,
    /// Time spent building the VM before the first guest instruction.
    pub setup: Duration,
    /// Time to stop and join every vCPU and server thread after the exit.
    pub shutdown: Duration,
    /// vCPU threads that did not stop when asked.
    pub stuck_threads: usize,
}

/// Finds a bare program name in PATH, inside the root.
fn resolve_program(fs: &FsContext, program: &[u8], env: &[Vec<u8>]) -> Result<CString, VmmError> {
    let name = String::from_utf8_lossy(program).into_owned();
    if program.contains(&b'/') {
        return CString::new(program).map_err(|_| VmmError::NotFound(name));
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix(b"PATH="))
        .map(|p| p.to_vec())
        .unwrap_or_else(|| b"/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".to_vec());
    for dir in path.split(|&b| b == b':').filter(|d| d.starts_with(b"/")) {
        let mut cand = dir.to_vec();
        cand.push(b'/');
        cand.extend_from_slice(program);
        let Ok(c) = CString::new(cand) else { continue };
        if let Ok(fd) = fs.open(None, &c, libc::O_PATH, 0) {
            let f = std::fs::File::from(fd);
            if f.metadata().map(|m| m.is_file()).unwrap_or(false) {
                return Ok(c);
            }
        }
    }
    Err(VmmError::NotFound(name))
}

/// The program's absolute path inside the root (for /proc/self/exe).
fn absolute_guest_path(fs: &FsContext, path: &CString) -> String {
    let p = path.to_string_lossy();
    if p.starts_with('/') {
        p.into_owned()
    } else {
        let cwd = String::from_utf8_lossy(&fs.cwd()).into_owned();
        format!("{}/{}", cwd.trim_end_matches('/'), p)
    }
}

/// Enters the loaded images' mappings in the mapping table (/proc/self/maps).
fn enter_images(aspace: &mut AddressSpace, loaded: &elf::LoadedProgram, exe: &str) {
    use devices::vma::{Vma, VmaFile};
    for s in &loaded.segments {
        let path = match (&loaded.interp_path, s.interp) {
            (Some(i), true) => i.as_bytes().to_vec(),
            _ => exe.as_bytes().to_vec(),
        };
        let vma = Vma {
            end: s.end,
            prot: s.prot,
            shared: false,
            file: s.offset.map(|offset| VmaFile {
                dev: s.dev_ino.0,
                ino: s.dev_ino.1,
                offset,
                path,
            }),
            name: None,
        };
        aspace.vmas_mut().insert(s.start, vma);
    }
}

fn host_xcr0() -> u64 {
    // SAFETY: xgetbv(0) is valid whenever the OS enabled XSAVE, which every x86-64
    // Linux host running KVM guests with AVX has; checked via cpuid first.
    unsafe {
        let c = std::arch::x86_64::__cpuid(1);
        if c.ecx & (1 << 27) == 0 {
            return 3;
        }
        std::arch::x86_64::_xgetbv(0)
    }
}

/// How the report of a program that the VMM itself had to stop begins (an
/// `ExitReason::Signaled` report), as opposed to a fault of the program.
pub const VMM_ERROR_PREFIX: &str = "VMM error: ";

/// `arch_prctl` code asking for permission to give a guest a dynamically enabled XSAVE
/// component (Linux 5.16+, `ARCH_REQ_XCOMP_GUEST_PERM`).
const ARCH_REQ_XCOMP_GUEST_PERM: libc::c_ulong = 0x1025;
/// AMX tile data, the dynamically enabled component (bit 18; bit 17 is its config).
const XFEATURE_XTILEDATA: libc::c_ulong = 18;
/// XCR0 bits of AMX (tile config and tile data), which KVM takes only with permission.
const XCR0_AMX: u64 = (1 << 17) | (1 << 18);

/// The host's XCR0, after asking for guest permission for the components Linux enables on
/// demand (AMX). On kvm_pvm the program runs xgetbv natively and sees the host's XCR0, so
/// its vCPU should enable the same components; where the host refuses, they are left out.
fn host_xcr0_with_guest_permission() -> u64 {
    let host = host_xcr0();
    if host & XCR0_AMX == 0 {
        return host;
    }
    // SAFETY: arch_prctl with two integer arguments; it only changes this process's XSAVE
    // permissions.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_GUEST_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    if r == 0 {
        host
    } else {
        tracing::debug!("no guest permission for AMX; the vCPUs run without it");
        host & !XCR0_AMX
    }
}

/// The guest's XCR0: the host's, limited to what KVM supports (CPUID leaf 0xD, sub-leaf 0,
/// of KVM_GET_SUPPORTED_CPUID), which KVM_SET_XCRS otherwise refuses with EINVAL.
fn guest_xcr0(host: u64, supported: &kvm_bindings::CpuId) -> u64 {
    let kvm_mask = supported
        .as_slice()
        .iter()
        .find(|e| e.function == 0xd && e.index == 0)
        .map_or(u64::MAX, |e| u64::from(e.eax) | (u64::from(e.edx) << 32));
    let mut xcr0 = host & kvm_mask;
    // AMX's two bits go together (XCR0 rejects one without the other).
    if xcr0 & XCR0_AMX != XCR0_AMX {
        xcr0 &= !XCR0_AMX;
    }
    xcr0 | 1
}

/// The program's standard descriptors: duplicates of ditto's own, so a program that
/// closes its stdout does not close ditto's.
fn std_fds() -> FdTable {
    let mut t = FdTable::new();
    for fd in 0..3 {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor number; failure (not open) is checked.
        let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        if d >= 0 {
            // SAFETY: d was just created by fcntl and is ours.
            let owned = unsafe { OwnedFd::from_raw_fd(d) };
            let _ = t.install_at(
                fd as i64,
                Arc::new(devices::fd_table::OpenFile::external(owned)),
                false,
            );
        }
    }
    t
}

/// Forwards SIGINT/SIGTERM/SIGHUP/SIGQUIT sent to ditto to the program (default
/// action: it ends with that signal). The signals are blocked in every thread and
/// taken here, so no vCPU thread is interrupted at a bad moment.
fn forward_signals(process: Arc<Process>) -> Result<std::thread::JoinHandle<()>, VmmError> {
    // SAFETY: building a sigset and blocking it in this thread (inherited by the
    // threads it creates).
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            devices::seccomp::apply_or_exit(devices::seccomp::Kind::Signals);
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 5_000_000,
            };
            while !process.exiting() {
                // SAFETY: waiting on our own blocked set with a timeout.
                let s = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
                if s > 0 {
                    match process.signals.from_host(s, process.sigaction(s)) {
                        Fate::Terminate => process.finish(ExitReason::Signaled {
                            signal: s,
                            report: String::new(),
                        }),
                        Fate::Queued(Some(tid)) => process.kick(tid),
                        Fate::Queued(None) | Fate::Ignored => {}
                    }
                }
                // The signal pump: a thread that could not take its signal when kicked
                // (it was in a CPL0 stub or the doorbell shim) is kicked again.
                for tid in process.signals.deliverable_tids() {
                    process.kick(tid);
                }
            }
        })
        .map_err(|e| VmmError::Host(e.to_string()))
}

/// The program's environment: with `--det`, a dynamic program also gets libditto through
/// LD_PRELOAD (ahead of any LD_PRELOAD it already has). Static programs cannot be
/// preloaded; they link libditto in (the `-det` builds).
///
/// With `--det` (and in a pair) glibc's malloc also gets a fixed arena limit
/// (`MALLOC_ARENA_MAX=8`, what glibc computes for one CPU) unless the program's environment
/// sets one. Without it, the first thread that needs a second arena counts the CPUs
/// (sched_getaffinity, a recorded call), and which thread that is depends on a race on
/// glibc's internal arena list, outside every det section: one replica's thread would make
/// a call that the other's does not.
///
/// Where the root has no `/etc/localtime` (images), `TZ=UTC0` says what glibc would fall back
/// to anyway, without its looking for the file. That lookup happens under glibc's internal
/// `tzset_lock`, from whichever thread first formats a local time; the open in it is a det
/// point, and in follow mode a lock taken with no turn and held across a turn lets the
/// secondary, whose threads reach the lock in another order, wait forever for a turn the
/// lock holder cannot take.
fn det_env(config: &VmConfig, dynamic: bool) -> Vec<Vec<u8>> {
    let mut env = config.env.clone();
    let det = config.det || config.replication.is_some();
    if det
        && !env
            .iter()
            .any(|e| e.starts_with(b"MALLOC_ARENA_MAX=") || e.starts_with(b"GLIBC_TUNABLES="))
    {
        env.push(b"MALLOC_ARENA_MAX=8".to_vec());
    }
    if det
        && !env.iter().any(|e| e.starts_with(b"TZ="))
        && std::fs::symlink_metadata(config.root.join("etc/localtime")).is_err()
    {
        env.push(b"TZ=UTC0".to_vec());
    }
    if !(det && dynamic && config.det_preload.is_some()) {
        return env;
    }
    let ours = det::runtime::LIBDITTO_GUEST_PATH.as_bytes();
    match env.iter_mut().find(|e| e.starts_with(b"LD_PRELOAD=")) {
        Some(e) => {
            let old = e.split_off(b"LD_PRELOAD=".len());
            e.extend_from_slice(ours);
            if !old.is_empty() {
                e.push(b':');
                e.extend_from_slice(&old);
            }
        }
        None => {
            let mut e = b"LD_PRELOAD=".to_vec();
            e.extend_from_slice(ours);
            env.push(e);
        }
    }
    env
}

/// Whether the vDSO should compute time in this run (mode LIVE; the start-up probe still
/// checks the guest's TSC): in a pair only on the primary, and only with time rings (its
/// values are recorded in them; without, every clock read must reach the VMM to be
/// recorded; the secondary never computes time); not where `DITTO_TIME=syscall` asks for every read to be a syscall (to compare);
/// and only on a host whose TSC is stable: constant and nonstop across power states, and
/// the host kernel's own clocksource (it keeps `tsc` only while the cores' TSCs agree, and
/// vCPU threads move between cores).
fn time_live_wanted(config: &VmConfig) -> bool {
    let primary_with_rings = config
        .replication
        .as_ref()
        .is_some_and(|r| r.role() == replica::role::Role::Primary && pair_time_rings());
    if (config.replication.is_some() && !primary_with_rings)
        || std::env::var_os("DITTO_TIME").is_some_and(|v| v == "syscall")
    {
        return false;
    }
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = flags
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|w| w == f);
    let source =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .unwrap_or_default();
    let stable = has("constant_tsc") && has("nonstop_tsc") && source.trim() == "tsc";
    if !stable {
        tracing::debug!("host TSC not stable: the vDSO takes the syscall for time");
    }
    stable
}

/// Whether a pair's replicas use time rings (docs/pair.md, "Time in a pair"):
/// `DITTO_PAIR_TIME=ring` in the environment; without it every clock read of a pair is a
/// syscall, recorded.
pub fn pair_time_rings() -> bool {
    std::env::var_os("DITTO_PAIR_TIME").is_some_and(|v| v == "ring")
}

/// Runs a program to completion.
pub fn run(config: &VmConfig) -> Result<RunOutcome, VmmError> {
    let t0 = Instant::now();
    let kvm = Kvm::new().map_err(VmmError::Kvm)?;
    if !kvm.check_extension(Cap::SyncRegs) {
        return Err(VmmError::MissingCap("KVM_CAP_SYNC_REGS"));
    }
    let vm = kvm.create_vm().map_err(VmmError::Kvm)?;
    let mut mem = GuestMemory::new(ADDRESS_SPACE.max(config.memory))?;
    // The doorbell pages at the top are the VMM's, not the program's (see reserve_top).
    mem.reserve_top(doorbell::AREA_SIZE);
    cpu::build_system_area(&mem)?;
    // Before the stack: AT_SYSINFO_EHDR names the image's fixed address (layout::VDSO).
    vdso::install(&mem).ok_or(cpu::CpuSetupError::TooSmall)?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: mem.size(),
        userspace_addr: mem.host_base(),
    };
    // SAFETY: the region is our own mapping, which outlives the VM (both are owned by
    // the Machine/Process that lives until every vCPU thread is joined).
    unsafe { vm.set_user_memory_region(region) }.map_err(VmmError::Kvm)?;
    // Before KVM_GET_SUPPORTED_CPUID: KVM reports (and accepts in XCR0) dynamically
    // enabled state components only once the process has permission for them.
    let host_xcr0 = host_xcr0_with_guest_permission();
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(VmmError::Kvm)?;
    let xcr0 = guest_xcr0(host_xcr0, &cpuid);

    let mut fs = FsContext::new(&config.root)?;
    for (guest, host) in &config.writable {
        fs.add_bind(guest, host)?;
    }
    for (guest, host) in &config.read_only {
        fs.add_read_only_bind(guest, host)?;
    }
    for (guest, host) in &config.writable_when_live {
        fs.add_bind_writable_when_live(guest, host)?;
    }
    if !config.writable.is_empty() || config.read_only_root {
        fs.set_read_only_root();
    }
    if config.root_writable_when_live {
        fs.set_root_writable_when_live();
    }
    if let Some(cwd) = &config.cwd {
        fs.set_cwd(cwd);
    }
    let program = resolve_program(&fs, &config.program, &config.env)?;
    let loaded = elf::load_program(&mem, &fs, &program)?;
    // The top of memory holds the doorbell shims and data pages.
    let layout = Layout::new(
        loaded.image_end,
        mem.size() - doorbell::AREA_SIZE,
        MAIN_STACK_SIZE,
    )?;
    let exe = absolute_guest_path(&fs, &program);
    let env = det_env(config, loaded.interp_base != 0);
    let (sp, proc_info) = stack::build(
        &mem,
        layout.top - 4096,
        &config.args,
        &env,
        &loaded,
        program.as_bytes(),
        config.seed,
    )
    .map_err(|_| VmmError::Stack)?;
    let mut aspace = AddressSpace::new(layout, config.memory);
    enter_images(&mut aspace, &loaded, &exe);
    let process = Arc::new(Process::new(mem, aspace, fs, std_fds(), exe));
    process.timekeeper.set_vdso_mapped();
    if let Some(rep) = config.replication.as_ref().filter(|_| pair_time_rings()) {
        process
            .timekeeper
            .set_ring(match rep.role() == replica::role::Role::Primary {
                true => det::abi::DITTO_RING_RECORD,
                false => det::abi::DITTO_RING_REPLAY,
            });
    }
    let _ = process.proc_info.set(proc_info);

    // SAFETY: umask(0) so the program's own umask (applied by the syscall layer) is the
    // only one; ditto creates no files of its own while the program runs.
    unsafe { libc::umask(0) };
    vcpu::install_kick_handler().map_err(|e| VmmError::Host(e.to_string()))?;
    // Before the guest runs: a program page that faults on the host must be EFAULT.
    devices::safecopy::install();
    let signals = forward_signals(process.clone())?;

    let machine = Arc::new(vcpu::Machine::new(
        vm,
        cpuid,
        xcr0,
        process.clone(),
        config.cores.clone(),
        time_live_wanted(config),
    ));
    let _ = process
        .kicker
        .set(Arc::new(vcpu::MachineKicker(Arc::downgrade(&machine))));
    let tid = process.new_thread();
    if let Some(rep) = &config.replication {
        use det::runtime::{DetRuntime, Policy};
        use replica::role::{Mode, Role};
        let policy = match (rep.mode(), rep.role()) {
            (Mode::Det, _) => Policy::Kendo,
            (Mode::Follow, Role::Primary) => Policy::Lead,
            (Mode::Follow, Role::Secondary) => Policy::Follow,
        };
        let link: Arc<dyn det::runtime::ScheduleLink> = rep.clone();
        let _ = process.det.set(DetRuntime::replicated(
            tid,
            config.det_preload.clone(),
            policy,
            rep.role() == Role::Primary,
            link,
        ));
        let _ = process.replication.set(rep.clone());
        rep.start(&process);
    } else if config.det {
        let preload = config.det_preload.clone();
        let _ = process.det.set(det::runtime::DetRuntime::new(tid, preload));
    }
    let regs = UserRegs {
        rip: loaded.start,
        rsp: sp,
        rflags: 0x202,
        ..Default::default()
    };
    let setup = t0.elapsed();
    machine
        .spawn(ThreadStart {
            regs,
            thread: ThreadState {
                tid,
                ..Default::default()
            },
        })
        .map_err(|e| VmmError::Host(format!("cannot start the main thread: {e}")))?;
    if config.filter_main {
        // Every thread this one starts exists now; what is left is waiting and reporting.
        devices::seccomp::apply_or_exit(devices::seccomp::Kind::Main);
    }
    let exit = loop {
        if let Some(r) = process.wait_exit(Duration::from_millis(200)) {
            break r;
        }
    };
    let wall = t0.elapsed();
    if let Some(rep) = &config.replication {
        rep.program_ended(&exit);
    }
    let t_stop = Instant::now();
    let stuck_threads = machine.shutdown(Duration::from_secs(2));
    let shutdown = t_stop.elapsed();
    // The signal thread notices the exit within its 50 ms wait; not joining it keeps
    // that wait off the program's exit path.
    drop(signals);
    use std::sync::atomic::Ordering::Relaxed;
    Ok(RunOutcome {
        exit,
        syscalls: process.stats.syscalls.load(Relaxed),
        doorbell_syscalls: process.stats.doorbell_syscalls.load(Relaxed),
        vcpus_created: process.stats.vcpus_created.load(Relaxed),
        exits: process.stats.exits.load(Relaxed),
        det_ops: process.det.get().map_or(0, |d| d.stats.ops.load(Relaxed)),
        det_turns: process.det.get().map_or(0, |d| d.stats.turns.load(Relaxed)),
        det_waits: process.det.get().map_or(0, |d| d.stats.waits.load(Relaxed)),
        det_posted: process.det.get().map_or(0, |d| d.posted()),
        det_ticked: process.det.get().map_or(0, |d| d.ticked()),
        threads: process.stats.threads_started.load(Relaxed),
        entry: machine.syscall_entry(),
        trap_round_trip: machine.trap_round_trip(),
        wall,
        setup,
        shutdown,
        stuck_threads,
    })
}
