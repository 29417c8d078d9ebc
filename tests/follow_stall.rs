//! Issue 13's class: a follow-mode pair whose secondary stalls because one replica takes an
//! implicit det point (a turn) that the other never makes.
//!
//! `pbzip2 -p2 -c` on the bench's 8 MB input (`ditto bench pair --quick --only pbzip2`)
//! stalled about one run in three on an Intel kvm_pvm host: glibc's main arena grew its
//! heap (brk) in the primary's main thread but not in the secondary's, because whether the
//! producer's next malloc finds room depends on when a consumer thread frees an earlier
//! block into that arena, which no det point orders. brk was a turn, so the primary's log
//! had one more turn of the main thread than the secondary ever took; every later turn of
//! that thread was off by one, and the thread ended up asleep in `pthread_join` while the
//! log said its turn came next. Every run here must finish identical.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use replica::report::{Outcome, Report};

/// How many pairs are run: with the old brk turn, ~1 in 3 stalled, so 8 runs all passing
/// by chance had a probability of about 4%.
const RUNS: usize = 8;

/// The bench's pbzip2 input (src/bench/servers.rs `pbzip2_input`): half random bytes, half
/// text, so that bzip2 has real work and blocks compress to different sizes.
fn bench_input(path: &Path, mb: usize) {
    let mut x: u64 = 88172645463325252;
    let text = b"ditto replicates ";
    let data: Vec<u8> = (0..mb << 20)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 2 == 0 {
                x as u8
            } else {
                text[i % text.len()]
            }
        })
        .collect();
    std::fs::write(path, data).expect("write the input");
}

#[test]
fn pbzip2_p2_follow_pairs_never_stall() {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("SKIPPED pbzip2_p2_follow_pairs_never_stall: a pair needs 2 CPUs");
        return;
    }
    image_root("pbzip2");
    let dir = tempdir();
    let input = dir.path().join("data");
    bench_input(&input, 8);
    let mut first: Option<Vec<u8>> = None;
    for run in 0..RUNS {
        let out = tempdir();
        let mut c = ditto();
        c.current_dir(dir.path())
            .args([
                "pair",
                "--quiet",
                "--mode",
                "follow",
                "--stall-timeout",
                "5",
            ])
            .arg("--out")
            .arg(out.path())
            .args(["--image", "pbzip2", "--", "-p2", "-c", "data"]);
        let o = output_within(c, 240);
        let r = Report::load(out.path().join("report.json")).expect("report.json");
        assert_eq!(
            r.outcome,
            Outcome::Identical,
            "run {run}: {}\nsecondary: {:?}\nstderr: {}",
            r.summary(),
            r.secondary.error,
            stderr(&o)
        );
        assert!(
            o.status.success(),
            "run {run}: {:?}: {}",
            o.status,
            stderr(&o)
        );
        let secondary = std::fs::read(out.path().join("secondary.stdout")).expect("stdout");
        assert_eq!(
            secondary, o.stdout,
            "run {run}: the replicas' outputs differ"
        );
        match &first {
            None => {
                // The compressed stream is real: it decompresses to the input.
                let packed = dir.path().join("out.bz2");
                std::fs::write(&packed, &o.stdout).expect("write");
                let plain = Command::new("bunzip2")
                    .arg("-c")
                    .arg(&packed)
                    .output()
                    .expect("bunzip2");
                assert!(plain.status.success(), "bunzip2 failed");
                assert!(
                    plain.stdout == std::fs::read(&input).expect("input"),
                    "pbzip2's output does not decompress to the input"
                );
                first = Some(o.stdout);
            }
            Some(f) => assert!(*f == o.stdout, "run {run}: output differs from run 0"),
        }
    }
}
