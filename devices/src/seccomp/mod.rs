//! Seccomp filters on ditto's own threads: each kind of VMM thread installs an
//! allowlist of the host syscalls it needs ([`tables`]) before its loop, so a
//! hijacked thread cannot exec, fork, trace or reach the kernel's wider surface.
//!
//! A forbidden call traps: the SIGSYS handler installed before any filter writes
//! one line naming the thread and the syscall and ends ditto with status 148 (as
//! Firecracker does). `--no-seccomp` turns the filters off for debugging.

pub mod tables;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use tables::Args;

/// ditto's exit status when a thread makes a forbidden syscall.
pub const EXIT_SECCOMP: i32 = 148;

/// The test-only hook: when this variable names a kind, a thread of that kind makes
/// a forbidden syscall right after installing its filter.
pub const VIOLATION_ENV: &str = "DITTO_TEST_SECCOMP_VIOLATION";

/// The kinds of VMM thread, each with its own allowlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A vCPU thread: runs guest code and serves its syscalls by passthrough.
    Vcpu,
    /// A doorbell server: serves the syscalls of the vCPU it belongs to.
    Server,
    /// A replica's channel reader or status thread.
    Channel,
    /// The signal forwarder of `ditto run` and the itimer thread.
    Signals,
    /// The supervisor of `ditto pair`, once both replicas run.
    Supervisor,
    /// The main thread of `ditto run` and of a replica, once the program's first thread
    /// runs: it waits for the end, shuts the machine down and writes its reports.
    Main,
}

impl Kind {
    /// Every kind, in the order of the golden file.
    pub const ALL: [Kind; 6] = [
        Kind::Vcpu,
        Kind::Server,
        Kind::Channel,
        Kind::Signals,
        Kind::Supervisor,
        Kind::Main,
    ];

    /// The kind's name, as the report line and the test hook spell it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Vcpu => "vcpu",
            Kind::Server => "server",
            Kind::Channel => "channel",
            Kind::Signals => "signals",
            Kind::Supervisor => "supervisor",
            Kind::Main => "main",
        }
    }
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The rules did not compile (a bug in [`tables`]).
    #[error("cannot build the {kind} filter: {source}")]
    Build {
        /// The thread kind.
        kind: &'static str,
        /// seccompiler's reason.
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("cannot install the {kind} filter: {source}")]
    Install {
        /// The thread kind.
        kind: &'static str,
        /// seccompiler's reason.
        source: seccompiler::Error,
    },
}

static ENABLED: AtomicBool = AtomicBool::new(true);
static HANDLER: Once = Once::new();

thread_local! {
    // Read by the SIGSYS handler: a const-initialised Cell of a 'static str needs
    // no lazy initialisation or allocation there.
    static THREAD_KIND: Cell<&'static str> = const { Cell::new("main") };
}

/// Turns the filters off for this process (`--no-seccomp`); call before any thread
/// starts.
pub fn disable() {
    ENABLED.store(false, Ordering::SeqCst);
}

/// Whether threads install filters.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

/// Installs the filter for `kind` on the calling thread (and so on every thread it
/// creates from now on), after arming the SIGSYS report handler. Does nothing when
/// filters are off.
pub fn apply(kind: Kind) -> Result<(), SeccompError> {
    if !enabled() {
        return Ok(());
    }
    install_handler();
    THREAD_KIND.with(|k| k.set(kind.name()));
    // Compiled once per kind: vCPU threads start while the program runs (every new guest
    // thread may need one), and compiling the rules costs far more than installing them.
    static COMPILED: [std::sync::OnceLock<Vec<BpfProgram>>; Kind::ALL.len()] =
        [const { std::sync::OnceLock::new() }; Kind::ALL.len()];
    let slot = &COMPILED[kind as usize];
    let filters = match slot.get() {
        Some(f) => f,
        None => {
            let built = build(kind, SeccompAction::Trap)?;
            slot.get_or_init(|| built)
        }
    };
    for f in filters {
        seccompiler::apply_filter(f).map_err(|source| SeccompError::Install {
            kind: kind.name(),
            source,
        })?;
    }
    if std::env::var_os(VIOLATION_ENV).is_some_and(|v| v == kind.name()) {
        // SAFETY: ptrace with an invalid request changes nothing even unfiltered;
        // under the filter it never reaches the kernel.
        unsafe { libc::syscall(libc::SYS_ptrace, -1i64, 0, 0, 0) };
    }
    Ok(())
}

/// [`apply`], ending ditto when the filter cannot be installed: a VMM thread must
/// never run unfiltered by accident.
pub fn apply_or_exit(kind: Kind) {
    if let Err(e) = apply(kind) {
        eprintln!("ditto: seccomp: {e}");
        // SAFETY: _exit ends the process without running anything else.
        unsafe { libc::_exit(1) };
    }
}

/// The BPF programs for `kind`, to install in order: clone3 refused with ENOSYS,
/// then the allowlist whose mismatch action is `mismatch`.
pub fn build(kind: Kind, mismatch: SeccompAction) -> Result<Vec<BpfProgram>, SeccompError> {
    let err = |source| SeccompError::Build {
        kind: kind.name(),
        source,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, args) in tables::rows(kind) {
        let conds: Vec<Vec<SeccompCondition>> = match args {
            Args::Any => Vec::new(),
            Args::Ioctl(reqs) => reqs
                .iter()
                .map(|&r| cond(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, r).map(|c| vec![c]))
                .collect::<Result<_, _>>()
                .map_err(err)?,
            Args::Thread => {
                let t = libc::CLONE_THREAD as u64;
                vec![vec![cond(
                    0,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(t),
                    t,
                )
                .map_err(err)?]]
            }
            Args::NoExec => {
                let x = libc::PROT_EXEC as u64;
                vec![vec![cond(
                    2,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(x),
                    0,
                )
                .map_err(err)?]]
            }
            Args::NotSigsys => vec![vec![cond(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Ne,
                libc::SIGSYS as u64,
            )
            .map_err(err)?]],
        };
        let entry = rules.entry(nr).or_default();
        for c in conds {
            entry.push(SeccompRule::new(c).map_err(err)?);
        }
    }
    let allow = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(err)?;
    let no_clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .map_err(err)?;
    Ok(vec![
        no_clone3.try_into().map_err(err)?,
        allow.try_into().map_err(err)?,
    ])
}

fn cond(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, len, op, value)
}

/// Arms the SIGSYS handler once per process (before the first filter, so that no
/// thread ever traps without it).
pub fn install_handler() {
    HANDLER.call_once(|| {
        // SAFETY: a zeroed sigaction with our handler and an empty mask is valid;
        // the handler only calls async-signal-safe functions.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_sigsys as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut());
        }
    });
}

/// Formats the report line into `buf`, returning its length.
fn report_line(buf: &mut [u8; 192], thread: &str, nr: i32) -> usize {
    let mut n = 0;
    let mut put = |s: &[u8]| {
        for &b in s {
            if n < buf.len() {
                buf[n] = b;
                n += 1;
            }
        }
    };
    put(b"ditto: seccomp: thread ");
    put(thread.as_bytes());
    put(b" made forbidden syscall ");
    let mut digits = [0u8; 12];
    let mut i = digits.len();
    let mut v = nr.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    if nr < 0 {
        put(b"-");
    }
    put(&digits[i..]);
    let name = usize::try_from(nr)
        .ok()
        .and_then(|i| replica::syscall_names::NAMES.get(i))
        .filter(|s| !s.is_empty());
    put(b" (");
    put(name.map_or(&b"unknown"[..], |s| s.as_bytes()));
    put(b")\n");
    n
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // The syscall number of a SIGSYS from seccomp sits after the call address in the
    // siginfo union (struct { void *call_addr; int syscall; unsigned arch; }).
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a full siginfo_t; offset 24 lies inside it.
        unsafe { std::ptr::read_unaligned((info as *const u8).add(24) as *const i32) }
    };
    let thread = THREAD_KIND.try_with(|k| k.get()).unwrap_or("?");
    let mut buf = [0u8; 192];
    let len = report_line(&mut buf, thread, nr);
    // SAFETY: write and _exit are async-signal-safe and allowed to every kind.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::_exit(EXIT_SECCOMP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a filtered call returns in these tests instead of trapping.
    const SENTINEL: i32 = 4095;

    fn golden_text() -> String {
        let mut s = String::new();
        for kind in Kind::ALL {
            let mut names: Vec<String> = tables::rows(kind)
                .iter()
                .map(|&(nr, _)| replica::syscall_names::name(nr as u64))
                .collect();
            names.sort();
            names.dedup();
            s.push_str(&format!("{}: {}\n", kind.name(), names.join(" ")));
        }
        s
    }

    #[test]
    fn lists_match_the_golden_file() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/seccomp/golden.txt");
        let now = golden_text();
        if std::env::var_os("DITTO_UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &now).unwrap();
        }
        let golden = std::fs::read_to_string(path).unwrap_or_default();
        assert_eq!(
            now, golden,
            "allowlists changed: review, then rerun with DITTO_UPDATE_GOLDEN=1"
        );
    }

    #[test]
    fn programs_stay_small_and_never_allow_the_dangerous_calls() {
        for kind in Kind::ALL {
            let progs = build(kind, SeccompAction::Trap).unwrap();
            let len: usize = progs.iter().map(|p| p.len()).sum();
            assert!(len < 4096, "{}: {len} instructions", kind.name());
            for (nr, _) in tables::rows(kind) {
                assert!(
                    ![
                        libc::SYS_execve,
                        libc::SYS_execveat,
                        libc::SYS_fork,
                        libc::SYS_vfork,
                        libc::SYS_ptrace,
                        libc::SYS_process_vm_readv,
                        libc::SYS_process_vm_writev,
                        libc::SYS_mount,
                        libc::SYS_unshare,
                        libc::SYS_setns,
                        libc::SYS_bpf,
                        libc::SYS_perf_event_open,
                        libc::SYS_init_module,
                        libc::SYS_finit_module,
                        libc::SYS_kexec_load,
                        libc::SYS_keyctl,
                        libc::SYS_userfaultfd,
                        libc::SYS_io_uring_setup,
                    ]
                    .contains(&nr),
                    "{} allows {nr}",
                    kind.name()
                );
            }
        }
    }

    #[test]
    fn report_line_names_thread_and_call() {
        let mut buf = [0u8; 192];
        let n = report_line(&mut buf, "vcpu", 59);
        assert_eq!(
            &buf[..n],
            b"ditto: seccomp: thread vcpu made forbidden syscall 59 (execve)\n"
        );
        let n = report_line(&mut buf, "server", 100_000);
        assert_eq!(
            &buf[..n],
            b"ditto: seccomp: thread server made forbidden syscall 100000 (unknown)\n"
        );
    }

    /// The result of a raw syscall: Err(errno) on failure.
    fn sys(nr: libc::c_long, a: [u64; 4]) -> Result<i64, i32> {
        // SAFETY: each call below passes arguments that touch no memory of ours
        // or point at valid NUL-terminated strings.
        let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3]) };
        if r < 0 {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        } else {
            Ok(r)
        }
    }

    /// Runs `kind`'s rules with mismatch Errno(SENTINEL) in a fresh thread and reports,
    /// per probe, whether the filter refused it.
    fn probe(kind: Kind) -> Vec<(&'static str, bool)> {
        std::thread::spawn(move || {
            for p in build(kind, SeccompAction::Errno(SENTINEL as u32)).unwrap() {
                seccompiler::apply_filter(&p).unwrap();
            }
            let missing = c"/nonexistent-ditto-seccomp".as_ptr() as u64;
            let refused = |r: Result<i64, i32>| r == Err(SENTINEL);
            let mut out = vec![
                ("getpid", refused(sys(libc::SYS_getpid, [0; 4]))),
                ("gettid", refused(sys(libc::SYS_gettid, [0; 4]))),
                ("sched_yield", refused(sys(libc::SYS_sched_yield, [0; 4]))),
                ("execve", refused(sys(libc::SYS_execve, [missing, 0, 0, 0]))),
                (
                    "ptrace",
                    refused(sys(libc::SYS_ptrace, [u64::MAX, 0, 0, 0])),
                ),
                // KVM_CREATE_VM on no descriptor: only the filter can answer SENTINEL.
                (
                    "ioctl(KVM_CREATE_VM)",
                    refused(sys(libc::SYS_ioctl, [u64::MAX, 0xAE01, 0, 0])),
                ),
                (
                    "rt_sigaction(SIGSYS)",
                    refused(sys(libc::SYS_rt_sigaction, [libc::SIGSYS as u64, 0, 0, 8])),
                ),
                (
                    "openat(AT_FDCWD)",
                    refused(sys(
                        libc::SYS_openat,
                        [libc::AT_FDCWD as u64, missing, libc::O_RDONLY as u64, 0],
                    )),
                ),
            ];
            // Executable host memory, never needed by ditto.
            out.push((
                "mmap(PROT_EXEC)",
                refused(sys(
                    libc::SYS_mmap,
                    [
                        0,
                        4096,
                        (libc::PROT_READ | libc::PROT_EXEC) as u64,
                        (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                    ],
                )),
            ));
            // A process clone: if a filter ever let it through, the child leaves at once.
            let fork = sys(libc::SYS_clone, [libc::SIGCHLD as u64, 0, 0, 0]);
            if fork == Ok(0) {
                // SAFETY: the child of a clone that should not have happened.
                unsafe { libc::_exit(0) };
            }
            out.push(("clone(fork)", refused(fork)));
            // clone3 is never run: ENOSYS where threads may be made (glibc falls back
            // to clone), refused like anything else elsewhere.
            let c3 = sys(libc::SYS_clone3, [0, 0, 0, 0]);
            out.push((
                "clone3 is ENOSYS",
                c3 != Err(libc::ENOSYS) && c3 != Err(SENTINEL),
            ));
            out
        })
        .join()
        .unwrap()
    }

    fn check(kind: Kind, may_open: bool) {
        for (what, refused) in probe(kind) {
            let want = match what {
                "getpid" | "gettid" | "sched_yield" => false,
                "openat(AT_FDCWD)" => !may_open,
                "clone3 is ENOSYS" => false,
                _ => true,
            };
            assert_eq!(refused, want, "{}: {what}", kind.name());
        }
    }

    #[test]
    fn vcpu_filter() {
        // Serving the guest's /proc/self/fd/N reopens through the VMM's own
        // /proc/self/fd, an AT_FDCWD path.
        check(Kind::Vcpu, true);
    }

    #[test]
    fn server_filter() {
        check(Kind::Server, true);
    }

    #[test]
    fn channel_filter() {
        check(Kind::Channel, true);
    }

    #[test]
    fn signals_filter() {
        check(Kind::Signals, false);
    }

    #[test]
    fn supervisor_filter() {
        check(Kind::Supervisor, true);
    }
}
