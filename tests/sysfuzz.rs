//! The syscall fuzzer (guest-images/progs/sysfuzz.c) under `ditto run` and as a pair, and
//! the defects it found. Every run is bounded; only processes these tests start are
//! signalled (by `common::output_within`).

mod common;

use std::path::Path;
use std::process::Output;

use common::*;
use replica::report::{Outcome, Report};

/// Calls per seed: enough for every syscall number to come up several times.
const CALLS: &str = "2000";

fn fuzz(seed: u64) -> Output {
    let p = prog("sysfuzz");
    let mut c = ditto();
    c.args(["run", "--"])
        .arg(&p)
        .args([&seed.to_string(), CALLS]);
    output_within(c, 90)
}

/// What a run must never show, whatever the program did to itself: a VMM panic, an
/// internal error, or a status that is neither the program's own nor a signal's.
fn assert_vmm_sound(seed: u64, o: &Output) {
    let err = stderr(o);
    assert!(!err.contains("panicked"), "seed {seed}: VMM panic:\n{err}");
    assert!(
        !err.contains("internal error"),
        "seed {seed}: VMM error:\n{err}"
    );
    let code = o.status.code().expect("ditto exits, it is not killed");
    // 0: the program finished; 128+n: ditto reports a guest killed by signal n.
    assert!(
        code == 0 || (129..=128 + 64).contains(&code),
        "seed {seed}: exit {code}:\n{err}"
    );
}

#[test]
fn many_seeds_run_without_vmm_panic_or_hang() {
    for seed in 1..=24 {
        let o = fuzz(seed);
        assert_vmm_sound(seed, &o);
    }
}

/// The program ends as it does natively (exit 0 with its digest line). It did not while
/// ditto's syscall layer wrote into guest pages that were read-only, PROT_NONE or
/// unmapped (see `buffers_in_protected_memory_fault_as_on_linux`): the fuzzer's pointers
/// into its own read-only data and past its guard page corrupted it.
///
/// Seed 143 is here because it once hung natively as well as under ditto: the fuzzer
/// turned fcntl's command 0-2 into an untamed F_SETFL that dropped O_NONBLOCK, and a
/// later read waited for ever. The native run is bounded so that such a fuzzer defect
/// fails the test instead of hanging it.
#[test]
fn many_seeds_end_as_natively() {
    let p = prog("sysfuzz");
    for seed in (1..=24).chain([143]) {
        let mut n = std::process::Command::new(&p);
        n.args([&seed.to_string(), CALLS]);
        // Bounded, so a fuzzer defect that waits for ever fails here instead of hanging
        // the suite; generously, because the fuzzer's sync(2) waits for the whole host's
        // writeback, and right after the suite's builds that took over 30 s (a fresh-clone
        // CI run, 2026-12-08) while the same seeds take 20-60 ms on a quiet host.
        let native = output_within(n, 180);
        assert_eq!(native.status.code(), Some(0), "seed {seed} natively");
        let o = fuzz(seed);
        assert_vmm_sound(seed, &o);
        assert_eq!(o.status.code(), Some(0), "seed {seed}: {}", stderr(&o));
        assert!(stdout(&o).starts_with(&format!("sysfuzz seed={seed} calls=")));
    }
}

/// ppoll, pselect6 and epoll_pwait(2) with a signal mask of the wrong size: EINVAL at
/// once natively; ditto ignored the size and, with no descriptors and no timeout, its
/// vCPU thread sat in a host ppoll for ever (the fuzzer's 1-in-8 hang).
#[test]
fn a_wrong_sigset_size_is_einval_not_a_wait() {
    let p = prog("sigsetsize");
    let want = native(&[p.to_str().unwrap()], b"");
    assert!(want.status.success());
    let mut c = ditto();
    c.args(["run", "--"]).arg(&p);
    let o = output_within(c, 30);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), stdout(&want));
    assert!(stdout(&o).contains("ppoll ret=-1 errno=22"));
    assert!(stdout(&o).ends_with("done\n"));
}

/// read() into a read-only page, a PROT_NONE page and an unmapped page: EFAULT on Linux,
/// the page untouched (found by the fuzzer: ditto checked a buffer only against the
/// bounds of guest memory, so all three succeeded and the read-only page was overwritten).
#[test]
fn buffers_in_protected_memory_fault_as_on_linux() {
    let p = prog("protbuf");
    let want = native(&[p.to_str().unwrap()], b"");
    assert!(want.status.success());
    assert!(stdout(&want).contains("ro ret=-1 errno=14 intact=1"));
    let mut c = ditto();
    c.args(["run", "--"]).arg(&p);
    let o = output_within(c, 30);
    assert_eq!(stdout(&o), stdout(&want), "{}", stderr(&o));
}

fn report(out: &Path) -> Report {
    Report::load(out.join("report.json")).expect("report.json")
}

/// Seeds as a pair in each mode: the secondary sees the same results (and so the same
/// digest, or the same crash), and the report says identical. Each diverged once:
/// - 3 at its work directory: the secondary's root was read-only and the primary's
///   writable, so mkdtemp failed in the secondary alone (`--private-tmp` gives each
///   replica its own /tmp);
/// - 8 hung under `--det`: a read of a blocking epoll descriptor waited for POLLIN for
///   ever where Linux answers EINVAL at once;
/// - 13: an O_CREAT open of "/nonexistent/q" (Recorded: a change outside) was answered
///   ENOENT by the det layer without its handler in both replicas, yet the primary
///   recorded it, and the secondary's next replicated call met that record;
/// - 14 (and 21): getcpu into the scratch memory with a bad node pointer wrote the cpu and
///   failed with EFAULT; the record of a failed call carried no memory, so the secondary's
///   scratch kept its old bytes, and a later path read from there differed;
/// - 20: a bind of an AF_UNIX socket to "d/x" in the work directory made the socket file
///   in the primary's /tmp only (bind is Recorded), so a later chown of "d/x" succeeded
///   in the primary and failed with ENOENT in the secondary.
#[test]
fn pairs_of_fuzz_runs_are_identical_in_both_modes() {
    // `--private-tmp` hides the host's /tmp, where a clone's build directory (and so the
    // guest program) may lie: run a copy from /var/tmp, in a working directory there.
    let home = tempfile::tempdir_in("/var/tmp").expect("a directory in /var/tmp");
    let p = home.path().join("sysfuzz");
    std::fs::copy(prog("sysfuzz"), &p).unwrap();
    for mode in ["det", "follow"] {
        for seed in [3u64, 8, 13, 14, 20] {
            let out = tempdir();
            let mut c = ditto();
            c.args(["pair", "--quiet", "--private-tmp", "--mode", mode, "--out"])
                .arg(out.path())
                .arg("--")
                .arg(&p)
                .current_dir(home.path())
                .args([&seed.to_string(), CALLS]);
            let o = output_within(c, 180);
            let r = report(out.path());
            assert_eq!(
                r.outcome,
                Outcome::Identical,
                "{mode} seed {seed}: {}\n{}",
                r.summary(),
                stderr(&o)
            );
            let secondary = std::fs::read(out.path().join("secondary.stdout")).unwrap();
            assert_eq!(secondary, o.stdout, "{mode} seed {seed}");
            assert!(
                stdout(&o).starts_with(&format!("sysfuzz seed={seed} ")),
                "{mode} seed {seed}: {}",
                stderr(&o)
            );
        }
    }
}
