//! The allowlists, one per kind of VMM thread, as tables of host syscalls.
//!
//! Each thread's filter is [`COMMON`] plus its kind's own rows. Filters stack on
//! the threads a filtered thread creates, so a creator's rows cover its children's
//! (a vCPU thread starts vCPU, doorbell-server and itimer threads). Nothing here
//! allows execve(at), fork (clone without CLONE_THREAD), ptrace, process_vm_*,
//! mount/unshare/setns, bpf, perf_event_open, module or kexec calls, keyctl,
//! userfaultfd, io_uring or rt_sigaction(SIGSYS); `golden.txt` beside this file
//! lists every kind's syscalls for review.

use libc::*;

use super::Kind;

/// What a row allows beyond the syscall number.
#[derive(Clone, Copy, Debug)]
pub enum Args {
    /// Any arguments.
    Any,
    /// `ioctl` with one of these requests.
    Ioctl(&'static [u64]),
    /// `clone` of a thread only (CLONE_THREAD set): never a new process.
    Thread,
    /// `rt_sigaction` for any signal but SIGSYS, so the report handler stays armed.
    NotSigsys,
    /// `mmap`/`mprotect` without PROT_EXEC: ditto never makes host memory executable
    /// (the guest's code runs from guest-physical pages, whatever their host prot).
    NoExec,
}

/// One row: a syscall and the arguments it may take.
pub type Row = (c_long, Args);

const ANY: Args = Args::Any;

/// `_IOC(dir, 0xAE, nr, size)`: a KVM ioctl request number.
const fn kvm(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xAE << 8) | nr
}
const W: u64 = 1;
const R: u64 = 2;

/// The ioctls a vCPU thread makes: its own KVM_RUN and register set-up, the vCPUs
/// and doorbells it creates for the guest's new threads, and the terminal and socket
/// requests the guest's ioctl handler forwards (`sys_file.rs`).
pub const VCPU_IOCTLS: &[u64] = &[
    kvm(0, 0x04, 0),                                          // KVM_GET_VCPU_MMAP_SIZE
    kvm(0, 0x41, 0),                                          // KVM_CREATE_VCPU
    kvm(W, 0x79, size_of::<kvm_bindings::kvm_ioeventfd>()),   // KVM_IOEVENTFD
    kvm(0, 0x80, 0),                                          // KVM_RUN
    kvm(R, 0x81, size_of::<kvm_bindings::kvm_regs>()),        // KVM_GET_REGS
    kvm(W, 0x82, size_of::<kvm_bindings::kvm_regs>()),        // KVM_SET_REGS
    kvm(R, 0x83, size_of::<kvm_bindings::kvm_sregs>()),       // KVM_GET_SREGS
    kvm(W, 0x84, size_of::<kvm_bindings::kvm_sregs>()),       // KVM_SET_SREGS
    kvm(W, 0x89, size_of::<kvm_bindings::kvm_msrs>()),        // KVM_SET_MSRS
    kvm(R, 0x8c, size_of::<kvm_bindings::kvm_fpu>()),         // KVM_GET_FPU
    kvm(W, 0x8d, size_of::<kvm_bindings::kvm_fpu>()),         // KVM_SET_FPU
    kvm(W, 0x90, size_of::<kvm_bindings::kvm_cpuid2>()),      // KVM_SET_CPUID2
    kvm(W, 0xa7, size_of::<kvm_bindings::kvm_xcrs>()),        // KVM_SET_XCRS
    kvm(0, 0xa3, 0),                                          // KVM_GET_TSC_KHZ (the vDSO's seed)
    kvm(W, 0xe1, size_of::<kvm_bindings::kvm_device_attr>()), // KVM_SET_DEVICE_ATTR (TSC offset 0)
    kvm(W, 0xe3, size_of::<kvm_bindings::kvm_device_attr>()), // KVM_HAS_DEVICE_ATTR
    0x5401,                                                   // TCGETS
    0x5402,                                                   // TCSETS
    0x5403,                                                   // TCSETSW
    0x5404,                                                   // TCSETSF
    0x540F,                                                   // TIOCGPGRP
    0x5410,                                                   // TIOCSPGRP
    0x5411,                                                   // TIOCOUTQ
    0x5413,                                                   // TIOCGWINSZ
    0x5414,                                                   // TIOCSWINSZ
    0x541B,                                                   // FIONREAD
    0x5421,                                                   // FIONBIO
];

/// What any Rust thread of ditto needs: memory, locks, time, its own signals
/// (kicks, the fault and report handlers), logging to stderr and its own exit.
pub const COMMON: &[Row] = &[
    (SYS_read, ANY),
    (SYS_write, ANY),
    (SYS_close, ANY),
    (SYS_futex, ANY),
    (SYS_mmap, Args::NoExec),
    (SYS_munmap, ANY),
    (SYS_mremap, ANY),
    (SYS_mprotect, Args::NoExec),
    (SYS_madvise, ANY),
    (SYS_brk, ANY),
    (SYS_rt_sigprocmask, ANY),
    (SYS_rt_sigreturn, ANY),
    (SYS_rt_sigaction, Args::NotSigsys),
    (SYS_sigaltstack, ANY),
    (SYS_sched_yield, ANY),
    (SYS_sched_getaffinity, ANY),
    (SYS_clock_gettime, ANY),
    (SYS_clock_nanosleep, ANY),
    (SYS_nanosleep, ANY),
    (SYS_gettid, ANY),
    (SYS_getpid, ANY),
    (SYS_getrandom, ANY),
    (SYS_tgkill, ANY),
    (SYS_restart_syscall, ANY),
    (SYS_exit, ANY),
    (SYS_exit_group, ANY),
];

/// What creating a thread takes (glibc's pthread_create and Rust's thread start).
/// clone3 is refused with ENOSYS by a filter of its own (its flags are in memory,
/// out of seccomp's sight), and glibc falls back to clone.
pub const THREADS: &[Row] = &[
    (SYS_clone, Args::Thread),
    (SYS_clone3, ANY),
    (SYS_set_robust_list, ANY),
    (SYS_rseq, ANY),
    (SYS_prctl, ANY),
    // A new VMM thread installs its own filter under its creator's (filters only
    // ever narrow what a thread may do).
    (SYS_seccomp, ANY),
];

/// The host calls the guest's syscall handlers make on its behalf
/// (`devices/src/syscalls`), plus the VMM's own reopen of /proc/self/fd/N.
pub const GUEST_SERVICE: &[Row] = &[
    (SYS_open, ANY),
    (SYS_openat, ANY),
    (SYS_openat2, ANY),
    (SYS_pread64, ANY),
    (SYS_pwrite64, ANY),
    (SYS_readv, ANY),
    (SYS_writev, ANY),
    (SYS_preadv, ANY),
    (SYS_pwritev, ANY),
    (SYS_preadv2, ANY),
    (SYS_pwritev2, ANY),
    (SYS_lseek, ANY),
    (SYS_dup, ANY),
    (SYS_dup2, ANY),
    (SYS_dup3, ANY),
    (SYS_fcntl, ANY),
    (SYS_ioctl, Args::Ioctl(VCPU_IOCTLS)),
    (SYS_fstat, ANY),
    (SYS_newfstatat, ANY),
    (SYS_statx, ANY),
    (SYS_fstatfs, ANY),
    (SYS_statfs, ANY),
    (SYS_getdents64, ANY),
    (SYS_readlink, ANY),
    (SYS_readlinkat, ANY),
    (SYS_mkdirat, ANY),
    (SYS_mknodat, ANY),
    (SYS_unlinkat, ANY),
    (SYS_renameat, ANY),
    (SYS_renameat2, ANY),
    (SYS_linkat, ANY),
    (SYS_symlinkat, ANY),
    (SYS_fchmod, ANY),
    (SYS_fchmodat, ANY),
    (SYS_fchown, ANY),
    (SYS_fchownat, ANY),
    (SYS_faccessat, ANY),
    (SYS_faccessat2, ANY),
    (SYS_utimensat, ANY),
    (SYS_ftruncate, ANY),
    (SYS_truncate, ANY),
    (SYS_fallocate, ANY),
    (SYS_fsync, ANY),
    (SYS_fdatasync, ANY),
    (SYS_sync, ANY),
    (SYS_syncfs, ANY),
    (SYS_flock, ANY),
    (SYS_fadvise64, ANY),
    (SYS_sendfile, ANY),
    (SYS_splice, ANY),
    (SYS_tee, ANY),
    (SYS_copy_file_range, ANY),
    (SYS_pipe, ANY),
    (SYS_pipe2, ANY),
    (SYS_eventfd2, ANY),
    (SYS_timerfd_create, ANY),
    (SYS_timerfd_settime, ANY),
    (SYS_timerfd_gettime, ANY),
    (SYS_memfd_create, ANY),
    (SYS_msync, ANY),
    (SYS_mincore, ANY),
    (SYS_socket, ANY),
    (SYS_socketpair, ANY),
    (SYS_bind, ANY),
    (SYS_listen, ANY),
    (SYS_accept, ANY),
    (SYS_accept4, ANY),
    (SYS_connect, ANY),
    (SYS_sendto, ANY),
    (SYS_recvfrom, ANY),
    (SYS_sendmsg, ANY),
    (SYS_recvmsg, ANY),
    (SYS_sendmmsg, ANY),
    (SYS_recvmmsg, ANY),
    (SYS_shutdown, ANY),
    (SYS_getsockopt, ANY),
    (SYS_setsockopt, ANY),
    (SYS_getsockname, ANY),
    (SYS_getpeername, ANY),
    (SYS_poll, ANY),
    (SYS_ppoll, ANY),
    (SYS_select, ANY),
    (SYS_pselect6, ANY),
    (SYS_epoll_create1, ANY),
    (SYS_epoll_ctl, ANY),
    (SYS_epoll_wait, ANY),
    (SYS_epoll_pwait, ANY),
    (SYS_epoll_pwait2, ANY),
    (SYS_uname, ANY),
    (SYS_sysinfo, ANY),
    (SYS_getrusage, ANY),
    (SYS_getrlimit, ANY),
    (SYS_prlimit64, ANY),
    (SYS_times, ANY),
    (SYS_gettimeofday, ANY),
    (SYS_time, ANY),
    (SYS_clock_getres, ANY),
    (SYS_getpriority, ANY),
    (SYS_getgroups, ANY),
    (SYS_getuid, ANY),
    (SYS_geteuid, ANY),
    (SYS_getgid, ANY),
    (SYS_getegid, ANY),
    (SYS_getppid, ANY),
    (SYS_getpgrp, ANY),
    (SYS_getpgid, ANY),
    (SYS_getsid, ANY),
    (SYS_getresuid, ANY),
    (SYS_getresgid, ANY),
    (SYS_umask, ANY),
    (SYS_sched_setaffinity, ANY),
    (SYS_rt_sigtimedwait, ANY),
];

/// The replica threads: the secondary's channel reader and the status thread that
/// publishes counters and, when asked, writes the stall description file. The reader also
/// takes over from a dead primary (failover): its descriptors replace the placeholders
/// (dup3), epoll interests are registered again, and TCP counters are read (TCP_INFO,
/// SIOCINQ) to drop input the primary logged but did not consume (recvfrom MSG_TRUNC).
pub const CHANNEL: &[Row] = &[
    (SYS_dup3, ANY),
    (SYS_epoll_ctl, ANY),
    (SYS_getsockopt, ANY),
    (SYS_fcntl, ANY),
    (
        SYS_ioctl,
        Args::Ioctl(&[0x541B /* FIONREAD */, 0x5411 /* TIOCOUTQ */]),
    ),
    (SYS_open, ANY),
    (SYS_openat, ANY),
    (SYS_recvmsg, ANY),
    (SYS_recvfrom, ANY),
    (SYS_poll, ANY),
    (SYS_ppoll, ANY),
    (SYS_pread64, ANY),
    (SYS_fstat, ANY),
    (SYS_statx, ANY),
    (SYS_lseek, ANY),
    (SYS_unlink, ANY),
    (SYS_unlinkat, ANY),
    (SYS_rename, ANY),
    (SYS_renameat, ANY),
    (SYS_renameat2, ANY),
];

/// The signal forwarder of `ditto run` and the itimer thread: wait for a signal or
/// a deadline, then kick vCPU threads (tgkill, in [`COMMON`]).
pub const SIGNALS: &[Row] = &[(SYS_rt_sigtimedwait, ANY)];

/// The supervisor of `ditto pair` once both replicas run: waits for them, signals
/// them, reads their status page and writes the report; its progress spinner thread
/// is a thread, never a process. Its event loop (pidfds, a signalfd, a timerfd) is
/// made before the filter, so under it the loop only waits and unregisters.
pub const SUPERVISOR: &[Row] = &[
    (SYS_epoll_wait, ANY),
    (SYS_epoll_pwait, ANY),
    (SYS_epoll_ctl, ANY),
    (SYS_wait4, ANY),
    (SYS_waitid, ANY),
    (SYS_kill, ANY),
    (SYS_rt_sigtimedwait, ANY),
    (SYS_open, ANY),
    (SYS_openat, ANY),
    (SYS_fstat, ANY),
    (SYS_newfstatat, ANY),
    (SYS_statx, ANY),
    (SYS_lseek, ANY),
    (SYS_getdents64, ANY),
    (SYS_mkdir, ANY),
    (SYS_mkdirat, ANY),
    (SYS_unlink, ANY),
    (SYS_unlinkat, ANY),
    (SYS_rename, ANY),
    (SYS_renameat, ANY),
    (SYS_renameat2, ANY),
    (SYS_fcntl, ANY),
    (SYS_fsync, ANY),
    (SYS_fdatasync, ANY),
    (SYS_poll, ANY),
    (SYS_ppoll, ANY),
    // TCGETS, TIOCGWINSZ (terminal checks); FIONBIO (`--metrics` clients made non-blocking)
    (SYS_ioctl, Args::Ioctl(&[0x5401, 0x5413, 0x5421])),
    // `--metrics`: the listener is bound before the filter; under it clients are accepted,
    // read and answered (std's socket reads and writes are recv and send).
    (SYS_accept4, ANY),
    (SYS_recvfrom, ANY),
    (SYS_sendto, ANY),
];

/// The main thread of `ditto run` and of a replica once the program runs: it waits
/// for the program's end (futex, in [`COMMON`]), stops the vCPU threads (tgkill,
/// joins), says goodbye on the channel (the primary's end record and acks, the
/// secondary's drain: socket reads and writes, polls), writes its files (the
/// secondary's findings, the primary's error) and removes a temporary state
/// directory. It creates no thread and no process after this point, and makes no KVM
/// call: dropping the VM only closes descriptors and unmaps memory.
pub const MAIN: &[Row] = &[
    (SYS_open, ANY),
    (SYS_openat, ANY),
    (SYS_fstat, ANY),
    (SYS_newfstatat, ANY),
    (SYS_statx, ANY),
    (SYS_lseek, ANY),
    (SYS_fcntl, ANY),
    (SYS_getdents64, ANY),
    (SYS_mkdir, ANY),
    (SYS_mkdirat, ANY),
    (SYS_unlink, ANY),
    (SYS_unlinkat, ANY),
    (SYS_rmdir, ANY),
    (SYS_rename, ANY),
    (SYS_renameat, ANY),
    (SYS_renameat2, ANY),
    (SYS_fsync, ANY),
    (SYS_fdatasync, ANY),
    (SYS_poll, ANY),
    (SYS_ppoll, ANY),
    (SYS_sendto, ANY),
    (SYS_recvfrom, ANY),
    (SYS_sendmsg, ANY),
    (SYS_recvmsg, ANY),
    (SYS_shutdown, ANY),
    (SYS_ioctl, Args::Ioctl(&[0x5401, 0x5413])), // TCGETS, TIOCGWINSZ (terminal checks)
];

/// The rows of `kind`'s filter, common rows first.
pub fn rows(kind: Kind) -> Vec<Row> {
    let own: &[&[Row]] = match kind {
        Kind::Vcpu | Kind::Server => &[THREADS, GUEST_SERVICE],
        Kind::Channel => &[CHANNEL],
        Kind::Signals => &[SIGNALS],
        Kind::Supervisor => &[THREADS, SUPERVISOR],
        Kind::Main => &[MAIN],
    };
    let mut v = COMMON.to_vec();
    for part in own {
        v.extend_from_slice(part);
    }
    v
}
