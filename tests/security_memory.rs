//! Issue 17, the VMM's own memory safety: program pages that fault on the host (defect 3),
//! the FPU state of signal frames (defect 8), FS bases KVM refuses (defect 11) and
//! overflowing ELF headers (defect 15). Each test runs a guest program under `ditto run`
//! in a real VM and, where the case exists natively, compares with a native run.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{native, output_within, prog, run_in, stderr, stdout, tempdir};

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// A file page past EOF as an open() path, a read-only shared file page as
/// rt_sigprocmask's and clock_gettime's output, and futex words on a past-EOF page:
/// natively all EFAULT; under ditto the same, and ditto exits with the program's status
/// instead of dying of SIGBUS/SIGSEGV.
#[test]
fn faulting_file_pages_are_efault_not_a_vmm_crash() {
    let dir = tempdir();
    let p = prog("memfault");
    let argv = [s(&p), dir.path().to_str().unwrap()];
    let want = native(&argv, b"");
    assert_eq!(want.status.code(), Some(3), "native: {}", stderr(&want));
    assert!(stdout(&want).contains("open_eof=-1 errno=14"));
    let o = run_in(&[], &argv, b"");
    assert_eq!(o.status.code(), Some(3), "ditto: {}", stderr(&o));
    assert_eq!(stdout(&o), stdout(&want));
}

/// A file mapped with MAP_FIXED over the doorbell pages the VMM keeps at the top of
/// guest memory: refused (main mapped it, and the VMM died of SIGBUS reading its
/// doorbell page).
#[test]
fn doorbell_pages_cannot_be_mapped_over() {
    let dir = tempdir();
    let p = prog("memfault");
    let d = dir.path().to_str().unwrap();
    // Creates the empty file the doorbell mode maps.
    assert_eq!(native(&[s(&p), d], b"").status.code(), Some(3));
    let o = run_in(&["--memory", "1G"], &[s(&p), d, "doorbell"], b"");
    assert_eq!(o.status.code(), Some(3), "ditto: {}", stderr(&o));
    assert_eq!(stdout(&o), "mmap_doorbell=-1 errno=12\nsurvived\n");
}

/// Under `--det` futex is emulated on guest memory by the VMM itself.
#[test]
fn det_futex_on_a_faulting_page_is_efault() {
    let dir = tempdir();
    let p = prog("memfault");
    let argv = [s(&p), dir.path().to_str().unwrap(), "futex"];
    let want = native(&argv, b"");
    assert_eq!(want.status.code(), Some(3), "native: {}", stderr(&want));
    assert!(stdout(&want).contains("futex_wait_eof=-1 errno=14"));
    let o = run_in(&["--det"], &argv, b"");
    assert_eq!(o.status.code(), Some(3), "ditto --det: {}", stderr(&o));
    assert_eq!(stdout(&o), stdout(&want));
}

/// arch_prctl(ARCH_SET_FS) and clone(CLONE_SETTLS) with bases at or above TASK_SIZE_MAX:
/// EPERM and FS unchanged, as natively.
#[test]
fn refused_fs_bases_are_eperm() {
    let p = prog("badtls");
    let want = native(&[s(&p)], b"");
    assert!(want.status.success(), "native: {}", stderr(&want));
    assert!(stdout(&want).contains("set_fs_noncanonical=-1 errno=1"));
    let o = run_in(&[], &[s(&p)], b"");
    assert!(o.status.success(), "ditto: {}", stderr(&o));
    assert_eq!(stdout(&o), stdout(&want));
}

/// A handler that leaves a nested handler by siglongjmp and then returns: the state it
/// returns to is the one in its own frame, as natively.
#[test]
fn nested_signal_restores_its_own_fpu_state() {
    let p = prog("sigfpu");
    let want = native(&[s(&p), "nested"], b"");
    assert_eq!(
        stdout(&want),
        "frame_xmm=1\nxmm_kept=1\nsurvived\n",
        "native: {}",
        stderr(&want)
    );
    let o = run_in(&[], &[s(&p), "nested"], b"");
    assert!(o.status.success(), "ditto: {}", stderr(&o));
    assert_eq!(stdout(&o), stdout(&want));
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// 30,000 signals whose handler leaves by siglongjmp: ditto's memory must not grow with
/// them (main kept ~450 bytes per signal: ~13 MB here, 136 MB after 300k).
#[test]
fn siglongjmp_out_of_handlers_leaks_nothing() {
    const SIGNALS: u64 = 30_000;
    let p = prog("sigfpu");
    let mut child = common::ditto()
        .args(["run", "--", s(&p), "leak", &SIGNALS.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // A watchdog: the child is killed (by its own PID) if the exchange takes too long,
    // which ends the line reads below.
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(120)).is_err() {
            // SAFETY: kill on the PID of the child this test spawned and has not reaped.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || lines.next().and_then(|l| l.ok()).unwrap_or_default();
    assert_eq!(next(), "warm");
    let before = vm_rss_kib(pid);
    stdin.write_all(b"a").unwrap();
    assert_eq!(next(), "done");
    let after = vm_rss_kib(pid);
    stdin.write_all(b"b").unwrap();
    let status = child.wait().unwrap();
    let _ = done_tx.send(());
    watchdog.join().unwrap();
    assert!(status.success(), "ditto: {status:?}");
    let grown = after.saturating_sub(before);
    assert!(
        grown < 6 * 1024,
        "VmRSS grew by {grown} KiB over {SIGNALS} signals ({before} -> {after} KiB)"
    );
}

/// An ELF whose entry point overflows the load base: one line and status 2, not a
/// wrapped entry address (a crash at a random place, or a panic in debug builds).
#[test]
fn overflowing_elf_entry_is_a_one_line_error() {
    let dir = tempdir();
    let mut elf = std::fs::read(prog("hello")).unwrap();
    // e_type = ET_DYN, so the entry is added to the load base; e_entry near 2^64.
    elf[16..18].copy_from_slice(&3u16.to_le_bytes());
    elf[24..32].copy_from_slice(&0xffff_ffff_ffff_f000u64.to_le_bytes());
    let path = dir.path().join("badentry");
    std::fs::write(&path, elf).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_ditto"));
    c.args(["run", "--", s(&path)]);
    let o = output_within(c, 30);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("entry point overflows"), "{err}");
}
