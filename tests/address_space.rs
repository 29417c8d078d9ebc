//! Issue 13: the guest's address space is larger than the memory it may commit. A program
//! reserves far more address space than `--memory` (PROT_NONE, MAP_NORESERVE) and commits
//! a little of it, as V8, the JVM, Go and glibc's per-thread malloc arenas do; `--memory`
//! limits what it commits (ENOMEM past it, Linux's strict overcommit), and a page it did
//! not map costs no host memory: touching it ends the program. Every wait is bounded.

mod common;

use common::*;
use replica::report::{Outcome, Report};

/// The memory limit the cases run under: far below what they reserve.
const MEMORY: [&str; 2] = ["--memory", "512M"];

/// Runs `reserve CASE` under `ditto run --memory 512M`.
fn run_case(case: &str) -> std::process::Output {
    let p = prog("reserve");
    let mut c = ditto();
    c.arg("run").args(MEMORY).arg("--").arg(&p).arg(case);
    output_within(c, 120)
}

/// 16 x 1 GiB reservations, 1 MiB of each committed, under a 512 MiB limit: the same
/// as natively (where the default overcommit heuristic lets the reservations through).
#[test]
fn reservations_far_beyond_memory_work_as_natively() {
    let p = prog("reserve");
    let want = "reserve: 16 GiB reserved, 16 MiB committed, ok\n";
    let n = native(&[p.to_str().unwrap(), "reserve"], b"");
    assert_eq!(stdout(&n), want, "native: {}", stderr(&n));
    let o = run_case("reserve");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), want, "{}", stderr(&o));
}

/// 40 threads each with its own 64 MiB malloc arena (2.5 GiB reserved), under 512 MiB.
#[test]
fn forty_malloc_arenas_fit_in_512m() {
    let p = prog("reserve");
    let want = "arenas: 40 threads, 41 arenas, ok\n";
    let n = native(&[p.to_str().unwrap(), "arenas"], b"");
    assert_eq!(stdout(&n), want, "native: {}", stderr(&n));
    let o = run_case("arenas");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), want, "{}", stderr(&o));
}

/// Committing past `--memory` is ENOMEM, whether by mmap or by mprotect of a
/// reservation; the reservation itself is free.
#[test]
fn committing_past_memory_is_enomem() {
    let o = run_case("limit");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "limit: rw=12 none=ok protect=12\n",
        "{}",
        stderr(&o)
    );
}

/// A write into a reservation the program never made accessible does not go through (it
/// would cost host memory beyond the limit): the program is killed by a signal, as
/// natively (SIGSEGV there).
#[test]
fn touching_a_reservation_kills_the_program() {
    use std::os::unix::process::ExitStatusExt;
    let p = prog("reserve");
    let n = native(&[p.to_str().unwrap(), "touch"], b"");
    assert_eq!(n.status.signal(), Some(libc::SIGSEGV));
    let o = run_case("touch");
    assert_eq!(stdout(&o), "touch: before\n", "{}", stderr(&o));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("killed by SIG"),
        "no kill reported: {}",
        stderr(&o)
    );
}

/// The reservation program as a pair in both modes: identical, and the same output.
#[test]
fn reservations_in_a_pair_are_identical() {
    let p = prog("reserve");
    for mode in ["det", "follow"] {
        for (case, want) in [
            (
                "reserve",
                "reserve: 16 GiB reserved, 16 MiB committed, ok\n",
            ),
            ("limit", "limit: rw=12 none=ok protect=12\n"),
        ] {
            let out = tempdir();
            let mut c = ditto();
            c.args(["pair", "--quiet", "--mode", mode, "--out"])
                .arg(out.path())
                .args(MEMORY)
                .arg("--")
                .arg(&p)
                .arg(case);
            let o = output_within(c, 180);
            let r = Report::load(out.path().join("report.json")).expect("report.json");
            assert_eq!(
                r.outcome,
                Outcome::Identical,
                "{mode} {case}: {}\n{}",
                r.summary(),
                stderr(&o)
            );
            assert_eq!(stdout(&o), want, "{mode} {case}: {}", stderr(&o));
            let secondary = std::fs::read(out.path().join("secondary.stdout")).unwrap();
            assert_eq!(secondary, o.stdout, "{mode} {case}: secondary output");
        }
    }
}

/// /proc/meminfo says what the program may commit: MemTotal is `--memory`, and what the
/// program's mappings commit is taken from it.
#[test]
fn meminfo_shows_the_commit_limit() {
    let bb = busybox();
    let o = run_in(
        &MEMORY,
        &[bb.to_str().unwrap(), "cat", "/proc/meminfo"],
        b"",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert_eq!(field("MemTotal:"), 512 * 1024);
    assert_eq!(field("CommitLimit:"), 512 * 1024);
    let committed = field("Committed_AS:");
    assert!(committed > 0 && committed < 64 * 1024, "{committed}");
    assert_eq!(field("MemFree:"), 512 * 1024 - committed);
}
