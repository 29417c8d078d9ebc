//! ditto's vDSO: clock reads without VM exits in a single VM (docs/det.md, "Time without
//! exits"), and in a pair by syscall, recorded, or with time rings (docs/pair.md, "Time in a
//! pair"), recorded without exits. Real programs (`vdsotime`, static and
//! dynamic) in real VMs; each check fails when the program's time reads are syscalls again
//! (`DITTO_TIME=syscall` shows it: the exit counts go up by the number of reads).

mod common;

use std::path::Path;

use common::*;
use replica::report::{Outcome, Report};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `vdsotime args` (`prog`: static or `-dyn` with `root`) under `ditto run --stats
/// extra`, checks it printed `expect`, and returns the syscalls the VMM served.
fn syscalls_of(
    extra: &[&str],
    root: Option<&Path>,
    prog: &str,
    args: &[&str],
    expect: &str,
) -> u64 {
    let mut flags: Vec<&str> = vec!["--stats"];
    flags.extend_from_slice(extra);
    if let Some(r) = root {
        flags.extend(["--root", s(r)]);
    }
    let mut argv = vec![prog];
    argv.extend_from_slice(args);
    let o = run_in(&flags, &argv, b"");
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(stdout(&o), expect, "{}", stderr(&o));
    stats_counter(&stderr(&o), "syscalls")
}

/// 100k clock_gettime calls in a static program take at most 1,000 syscalls (VM exits or
/// doorbell rings), with and without `--det` (clock_gettime is no det point there).
#[test]
fn clock_reads_make_no_exits_in_a_single_vm() {
    let p = prog("vdsotime");
    for extra in [&[][..], &["--det"][..]] {
        let n = syscalls_of(extra, None, s(&p), &["loop", "100000"], "loop ok\n");
        assert!(n <= 1000, "{extra:?}: {n} syscalls for 100k clock reads");
    }
}

/// glibc through ld.so finds AT_SYSINFO_EHDR and uses the vDSO just as static glibc does.
#[test]
fn dynamic_glibc_uses_the_vdso() {
    let dir = tempdir();
    let root = dyn_root(dir.path(), &prog("vdsotime-dyn"));
    let n = syscalls_of(&[], Some(&root), "/prog", &["loop", "100000"], "loop ok\n");
    assert!(n <= 1000, "{n} syscalls for 100k clock reads");
    let n = syscalls_of(&[], Some(&root), "/prog", &["raw", "300"], "raw ok\n");
    assert!(n <= 1000, "{n} syscalls");
}

/// Four threads, 100k reads each: no read is earlier than one another thread made and
/// published before it.
#[test]
fn monotonic_never_goes_back_across_threads() {
    let p = prog("vdsotime");
    for extra in [&[][..], &["--det"][..]] {
        let n = syscalls_of(
            extra,
            None,
            s(&p),
            &["threads", "4", "100000"],
            "threads ok\n",
        );
        assert!(n <= 1000, "{extra:?}: {n} syscalls for 400k clock reads");
    }
}

/// REALTIME stays within 10 ms of the host kernel's clock (a file's mtime, bracketed by two
/// reads) over 2 s, across recalibrations; gettimeofday and time agree with it.
#[test]
fn realtime_follows_the_host() {
    let p = prog("vdsotime");
    syscalls_of(&[], None, s(&p), &["host", "7"], "host ok\n");
}

/// A static program whose clock_gettime is its own `syscall` still works, and its values
/// fit between the vDSO's before and after (the VMM computes time as the vDSO does).
#[test]
fn raw_syscalls_agree_with_the_vdso() {
    let p = prog("vdsotime");
    let n = syscalls_of(&[], None, s(&p), &["raw", "3000"], "raw ok\n");
    assert!(n >= 3000, "the raw reads are syscalls: {n}");
    // And with every read a syscall (the vDSO's own fallback path).
    let n = syscalls_of(&[], None, s(&p), &["loop", "2000"], "loop ok\n");
    assert!(n < 1000);
    let o = run_in_env(
        &["--stats"],
        &[s(&p), "loop", "2000"],
        b"",
        &[("DITTO_TIME", "syscall")],
    );
    assert_eq!(stdout(&o), "loop ok\n", "{}", stderr(&o));
    assert!(
        stats_counter(&stderr(&o), "syscalls") >= 2000,
        "{}",
        stderr(&o)
    );
}

/// auxv and /proc/self/maps show the vDSO; clocks it does not serve, bad clock ids,
/// clock_getres and getcpu answer as natively.
#[test]
fn unserved_clocks_and_maps_as_natively() {
    let p = prog("vdsotime");
    let native = native(&[s(&p), "misc"], b"");
    assert!(native.status.success(), "{}", stdout(&native));
    let o = run_in(&[], &[s(&p), "misc"], b"");
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(stdout(&o), stdout(&native));
}

/// In a pair without time rings every clock read is a syscall (the page stays in SYSCALL
/// mode), recorded by the primary and replayed by the secondary: the pair is identical in
/// both modes, and every read is an exit in each replica.
#[test]
fn pairs_read_time_by_syscall_and_stay_identical() {
    for mode in ["det", "follow"] {
        let (out, r) = pair_of(mode, "syscall", &["loop", "3000"]);
        assert_eq!(out, "loop ok\n");
        let c = &r.counters;
        assert!(c.recorded_syscalls >= 3000, "{mode}: {c:?}");
        assert!(
            c.primary_exits >= 3000 && c.secondary_exits >= 3000,
            "{mode}: {c:?}"
        );
    }
}

/// `ditto pair --mode mode` of `vdsotime args` with time rings (`DITTO_PAIR_TIME=ring`, or
/// `time` as given): checks the pair stayed identical and the program succeeded, and returns
/// its stdout and report.
fn pair_of(mode: &str, time: &str, args: &[&str]) -> (String, Report) {
    let p = prog("vdsotime");
    let out = tempdir();
    let mut c = ditto();
    c.env("DITTO_PAIR_TIME", time)
        .args(["pair", "--quiet", "--mode", mode, "--out"])
        .arg(out.path())
        .arg("--")
        .arg(&p)
        .args(args);
    let o = output_within(c, 300);
    let r = Report::load(out.path().join("report.json")).expect("report.json");
    assert_eq!(
        r.outcome,
        Outcome::Identical,
        "{mode} {args:?}: {}",
        r.summary()
    );
    assert!(o.status.success(), "{mode} {args:?}: {}", stderr(&o));
    (stdout(&o), r)
}

/// With time rings, 100k clock_gettime, gettimeofday and time reads make at most 1,000 VM
/// exits in each replica, in both modes, and the pair stays identical: the primary's vDSO
/// records the values in its thread's ring, the secondary's replays them. (Without rings,
/// `DITTO_PAIR_TIME=syscall`, each read is an exit in both replicas: over 100k each.)
#[test]
fn pairs_with_time_rings_read_time_without_exits() {
    for mode in ["det", "follow"] {
        let (out, r) = pair_of(mode, "ring", &["mixed", "100000"]);
        assert_eq!(out, "mixed ok\n");
        let c = &r.counters;
        assert!(
            c.primary_exits <= 1000 && c.secondary_exits <= 1000,
            "{mode}: exits {} / {} for 100k clock reads",
            c.primary_exits,
            c.secondary_exits
        );
        assert!(c.recorded_syscalls < 100, "{mode}: {}", c.recorded_syscalls);
    }
}

/// Values the program prints (REALTIME, MONOTONIC, gettimeofday) come out of the secondary
/// exactly as out of the primary (the pair compares every output byte), and they are real
/// times, not zeros.
#[test]
fn pairs_with_time_rings_replay_the_values_output_shows() {
    for mode in ["det", "follow"] {
        let (out, _) = pair_of(mode, "ring", &["print", "3000"]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3001, "{mode}");
        assert_eq!(lines[3000], "print ok");
        let last: Vec<&str> = lines[2999].split(' ').collect();
        let real: u64 = last[1].parse().unwrap();
        assert!(real > 1_700_000_000_000_000_000, "{mode}: {}", lines[2999]);
    }
}

/// A thread that reads the time, prints it and exits at once: its value reaches the
/// secondary before the output is let out, and before the thread is gone.
#[test]
fn pairs_with_time_rings_ship_a_short_threads_time() {
    for mode in ["det", "follow"] {
        let (out, _) = pair_of(mode, "ring", &["tprint", "20"]);
        assert_eq!(out.lines().count(), 21, "{mode}: {out}");
        assert!(out.ends_with("tprint ok\n"));
    }
}
