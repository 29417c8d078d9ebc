//! `ditto run --det`: deterministic execution of real programs in real VMs (issue 4).
//!
//! Each determinism check has a twin without `--det` that must see at least two different
//! outputs over the same runs, which proves the check could fail.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;

const RUNS: usize = 10;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The distinct stdouts of `RUNS` runs of `ditto run [extra] -- argv`, each one checked to
/// succeed and to contain `expect`.
fn outputs(extra: &[&str], argv: &[&str], expect: &str) -> BTreeSet<String> {
    (0..RUNS)
        .map(|_| {
            let o = run_in(extra, argv, b"");
            assert!(o.status.success(), "{extra:?} {argv:?}: {}", stderr(&o));
            let out = stdout(&o);
            assert!(out.contains(expect), "{argv:?}: {out}");
            out
        })
        .collect()
}

/// The "could fail" twin of a determinism check: batches of `RUNS` runs without `--det`
/// until one shows at least two outputs. Whether a batch varies is up to the host's
/// scheduler (a quiet machine can run one in lockstep), so up to three batches are tried.
fn varies(argv: &[&str], expect: &str) -> BTreeSet<String> {
    varies_with(&[], argv, expect)
}

/// [`varies`], with `extra` ditto options (none of them `--det`).
fn varies_with(extra: &[&str], argv: &[&str], expect: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        seen = outputs(extra, argv, expect);
        if seen.len() >= 2 {
            break;
        }
    }
    seen
}

// racey: 4 threads, 1000 lock acquisitions each. Natively the lock order (and so the
// signature) varies; 1000 is enough for that to show on a 2-core host in 10 runs.
const RACEY: &[&str] = &["4", "1000"];
// prodcons: 3 producers, 500 records each, through one pipe and one eventfd.
const PRODCONS: &[&str] = &["3", "500"];

fn argv<'a>(prog: &'a Path, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![s(prog)];
    v.extend_from_slice(args);
    v
}

#[test]
fn racey_is_deterministic_under_det() {
    let p = prog("racey-det");
    let sigs = outputs(&["--det"], &argv(&p, RACEY), "signature=");
    assert_eq!(sigs.len(), 1, "--det gave several signatures: {sigs:?}");
}

#[test]
fn racey_varies_without_det() {
    let p = prog("racey-det");
    let sigs = varies(&argv(&p, RACEY), "signature=");
    assert!(
        sigs.len() >= 2,
        "3 batches of 10 runs without --det each agreed: {sigs:?}"
    );
}

#[test]
fn prodcons_is_deterministic_under_det() {
    let p = prog("prodcons-det");
    let sums = outputs(&["--det"], &argv(&p, PRODCONS), "items=1500 ");
    assert_eq!(sums.len(), 1, "--det gave several checksums: {sums:?}");
}

#[test]
fn prodcons_varies_without_det() {
    let p = prog("prodcons-det");
    let sums = varies(&argv(&p, PRODCONS), "items=1500 ");
    assert!(
        sums.len() >= 2,
        "3 batches of 10 runs without --det each agreed: {sums:?}"
    );
}

/// sendto and fcntl's flag calls on a socket take no turn under --det (sys_det.rs,
/// `orders_nothing_outside`): 300 of them cost no more turns than the program's start.
#[test]
fn socket_sends_and_flag_calls_take_no_turn() {
    let p = prog("bench");
    let o = run_in(&["--det", "--stats"], &[s(&p), "sock", "100"], b"");
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).starts_with("sock 300 "), "{}", stdout(&o));
    let turns = stats_counter(&stderr(&o), "det_turns");
    let syscalls = stats_counter(&stderr(&o), "syscalls");
    assert!(syscalls >= 300, "{}", stderr(&o));
    // The socket itself and the program's start and exit take a few turns; each of the
    // 300 calls would take one.
    assert!(turns < 50, "{turns} turns: {}", stderr(&o));
}

#[test]
fn pthread_test_passes_under_det_static() {
    let p = prog("pthread_test-det");
    let o = run_in(&["--det", "--stats"], &[s(&p), "4", "500"], b"");
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).ends_with("PASS\n"), "{}", stdout(&o));
    // The det hypercalls were served (libditto found ditto) and threads got det ids.
    let det_ops = stats_counter(&stderr(&o), "det_ops");
    assert!(det_ops > 1000, "only {det_ops} det ops");
}

#[test]
fn pthread_test_passes_under_det_dynamic_with_preloaded_libditto() {
    let dir = tempdir();
    let root = dyn_root(dir.path(), &prog("pthread_test-dyn"));
    let o = run_in(
        &["--det", "--stats", "--root", s(&root)],
        &["/prog", "4", "500"],
        b"",
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).ends_with("PASS\n"), "{}", stdout(&o));
    // The det hypercalls were served: libditto was preloaded and found ditto.
    let det_ops = stats_counter(&stderr(&o), "det_ops");
    assert!(
        det_ops > 1000,
        "only {det_ops} det ops: libditto not preloaded?"
    );
    // The root was not written to.
    assert!(!root.join(".ditto").exists());
}

#[test]
fn racey_dynamic_is_deterministic_with_preloaded_libditto() {
    let dir = tempdir();
    let root = dyn_root(dir.path(), &prog("racey-dyn"));
    let sigs = outputs(
        &["--det", "--root", s(&root)],
        &argv(Path::new("/prog"), RACEY),
        "signature=",
    );
    assert_eq!(sigs.len(), 1, "--det gave several signatures: {sigs:?}");
}

/// The twin of the check above: the same dynamic build, without `--det`, varies. With
/// 1000 acquisitions per thread a dynamic program's threads (each started ~1 ms apart under
/// ditto) can each finish before the next starts, so every run agrees; 20,000 makes them
/// overlap.
#[test]
fn racey_dynamic_varies_without_det() {
    let dir = tempdir();
    let root = dyn_root(dir.path(), &prog("racey-dyn"));
    let sigs = varies_with(
        &["--root", s(&root)],
        &argv(Path::new("/prog"), &["4", "20000"]),
        "signature=",
    );
    assert!(
        sigs.len() >= 2,
        "3 batches of 10 runs without --det each agreed: {sigs:?}"
    );
}

#[test]
fn det_hypercalls_are_enosys_without_det() {
    // libditto natively falls back to plain pthreads: the -det build passes without --det,
    // and no det op is counted.
    let p = prog("pthread_test-det");
    let o = run_in(&["--stats"], &[s(&p), "2", "200"], b"");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).ends_with("PASS\n"));
    assert!(stderr(&o).contains("det_ops=0 "), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("unsupported syscall"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn pbzip2_output_is_identical_under_det() {
    let root = image_root("pbzip2");
    let dir = tempdir();
    let blob = dir.path().join("blob");
    write_blob(&blob, 3 << 20);
    let input = std::fs::read(&blob).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["--root", s(&root)];
        args.extend_from_slice(extra);
        run_in(&args, &["/usr/bin/pbzip2", "-p4", "-c", "-b5"], &input)
    };
    let plain = run(&[]);
    assert!(
        plain.status.success(),
        "pbzip2 without --det: {}",
        stderr(&plain)
    );
    let det = run(&["--det"]);
    assert!(det.status.success(), "pbzip2 --det: {}", stderr(&det));
    assert!(!plain.stdout.is_empty());
    assert!(
        det.stdout == plain.stdout,
        "pbzip2 -p4 output differs under --det"
    );
    // pbzip2 orders its blocks whatever its threads do, so equal outputs alone cannot show
    // that --det kept the program correct: the host's bzip2 decompresses the --det output
    // back to the input.
    let back = bzip2_decompress(&det.stdout);
    assert!(
        back == input,
        "pbzip2 --det output does not decompress to the input"
    );
}

/// `bunzip2 -c` of `data`, run natively (an oracle independent of ditto).
fn bzip2_decompress(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("bzip2")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the host's bzip2");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let o = child.wait_with_output().expect("bzip2 -dc");
    writer.join().expect("writer").expect("write to bzip2");
    assert!(o.status.success(), "bzip2 -dc: {}", stderr(&o));
    o.stdout
}

/// libditto's work hints: each libbz2 call ticks its thread's logical time by its input
/// size (one tick per 4096 bytes, once per call even though libbz2 calls its own entry
/// points), DITTO_WORK_HINTS=0 turns them off, and neither changes pbzip2's output, in
/// compression (BZ2_bzBuffToBuffCompress) or decompression (BZ2_bzDecompress).
#[test]
fn pbzip2_work_hints_tick_logical_time() {
    const BLOCK: usize = 500_000; // -b5
    let root = image_root("pbzip2");
    let dir = tempdir();
    let blob = dir.path().join("blob");
    write_blob(&blob, 3 << 20);
    let input = std::fs::read(&blob).unwrap();
    let run = |hints: &str, argv: &[&str], input: &[u8]| {
        let o = run_in_env(
            &["--det", "--stats", "--root", s(&root)],
            argv,
            input,
            &[("DITTO_WORK_HINTS", hints)],
        );
        assert!(o.status.success(), "pbzip2 {argv:?}: {}", stderr(&o));
        o
    };
    let compress = ["/usr/bin/pbzip2", "-p2", "-c", "-b5"];
    let hinted = run("1", &compress, &input);
    let plain = run("0", &compress, &input);
    let per_block: u64 = input.chunks(BLOCK).map(|b| (b.len() / 4096) as u64).sum();
    assert_eq!(stats_counter(&stderr(&hinted), "det_ticked"), per_block);
    assert_eq!(stats_counter(&stderr(&plain), "det_ticked"), 0);
    assert!(
        hinted.stdout == plain.stdout,
        "hints changed pbzip2's output"
    );

    let decompress = ["/usr/bin/pbzip2", "-p2", "-d", "-c"];
    let back = run("1", &decompress, &hinted.stdout);
    assert!(
        back.stdout == input,
        "pbzip2 -d did not give the input back"
    );
    // pbzip2 -d hands each compressed block to BZ2_bzDecompress whole: one tick per 4 KiB
    // of compressed input, less under a tick of rounding per block.
    let compressed_ticks = (hinted.stdout.len() / 4096) as u64;
    let blocks = input.len().div_ceil(BLOCK) as u64;
    let ticked = stats_counter(&stderr(&back), "det_ticked");
    assert!(
        ticked <= compressed_ticks && ticked + 2 * blocks >= compressed_ticks,
        "decompression ticked {ticked} for {} compressed bytes in {blocks} blocks",
        hinted.stdout.len()
    );
}
