//! The compatibility corpus: multithreaded programs from Debian that ditto was never tuned
//! for (compressors, language runtimes, OpenMP, servers), plus a daemon that drops root.
//! Each runs natively (the image's own binary and libraries, through the image's ld.so),
//! under `ditto run`, and as a pair in both modes; the outputs must all be the same and
//! both pairs identical. Inputs are small, so the whole corpus stays within CI's budget.
//! Every wait is bounded; only processes these tests start are signalled.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use replica::report::{Outcome, Report};

const MODES: [&str; 2] = ["det", "follow"];

/// A pair needs two cores; the tests of this file take turns so timings are not each
/// other's load.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The image's entry run natively: its own ld.so and libraries, the image's environment
/// variables that matter (PYTHONHOME), in `cwd`.
fn native_in_image(image: &str, entry: &str, args: &[&str], cwd: &Path) -> Output {
    let root = image_root(image);
    let libs = format!(
        "{r}/lib/x86_64-linux-gnu:{r}/usr/lib/x86_64-linux-gnu:{r}/usr/lib",
        r = root.display()
    );
    let mut c = Command::new(root.join("lib64/ld-linux-x86-64.so.2"));
    c.arg("--library-path")
        .arg(libs)
        .arg(root.join(entry.trim_start_matches('/')))
        .args(args)
        .current_dir(cwd);
    if image.starts_with("python3") {
        c.env("PYTHONHOME", root.join("usr"));
    }
    let o = output_within(c, 120);
    assert!(o.status.success(), "native {image}: {}", stderr(&o));
    o
}

/// Runs `ditto run --image IMAGE -- ARGS` in `cwd`; its output and wall time.
fn ditto_run(image: &str, args: &[&str], cwd: &Path) -> (Output, Duration) {
    ditto_run_with(image, &[], args, cwd)
}

/// `ditto_run` with ditto options (`--memory`, ...) before `--image`.
fn ditto_run_with(image: &str, opts: &[&str], args: &[&str], cwd: &Path) -> (Output, Duration) {
    let mut c = ditto();
    c.arg("run")
        .args(opts)
        .args(["--image", image, "--"])
        .args(args)
        .current_dir(cwd);
    let t = Instant::now();
    let o = output_within(c, 120);
    let took = t.elapsed();
    assert!(o.status.success(), "ditto run {image}: {}", stderr(&o));
    (o, took)
}

/// Runs a pair in `mode`; checks the report says identical and the secondary's stdout is
/// the primary's. The primary's output and the wall time.
fn ditto_pair(mode: &str, image: &str, args: &[&str], cwd: &Path) -> (Output, Duration) {
    ditto_pair_with(mode, image, &[], args, cwd)
}

/// `ditto_pair` with ditto options (`--memory`, ...) before `--image`.
fn ditto_pair_with(
    mode: &str,
    image: &str,
    opts: &[&str],
    args: &[&str],
    cwd: &Path,
) -> (Output, Duration) {
    let out = tempdir();
    let mut c = ditto();
    c.args(["pair", "--quiet", "--mode", mode, "--out"])
        .arg(out.path())
        .args(opts)
        .args(["--image", image, "--"])
        .args(args)
        .current_dir(cwd);
    let t = Instant::now();
    let o = output_within(c, 180);
    let took = t.elapsed();
    let r = Report::load(out.path().join("report.json")).expect("report.json");
    assert_eq!(
        r.outcome,
        Outcome::Identical,
        "{image} {mode}: {}\nstderr: {}",
        r.summary(),
        stderr(&o)
    );
    assert!(o.status.success(), "{image} {mode}: {}", stderr(&o));
    let secondary = std::fs::read(out.path().join("secondary.stdout")).unwrap();
    assert_eq!(
        secondary, o.stdout,
        "{image} {mode}: the replicas' outputs differ"
    );
    (o, took)
}

/// The whole check for a batch program: native, run, det pair, follow pair all write the
/// same stdout; `check` also vets it (decompresses, parses). Prints the pair/run times.
fn corpus(image: &str, entry: &str, args: &[&str], cwd: &Path, check: impl Fn(&[u8])) {
    let _turn = one_at_a_time();
    let native = native_in_image(image, entry, args, cwd);
    check(&native.stdout);
    let (run, run_t) = ditto_run(image, args, cwd);
    assert_eq!(
        run.stdout, native.stdout,
        "{image}: ditto run differs from native"
    );
    for mode in MODES {
        let (pair, pair_t) = ditto_pair(mode, image, args, cwd);
        assert_eq!(
            pair.stdout, native.stdout,
            "{image} {mode}: pair differs from native"
        );
        eprintln!(
            "TIMING {image} {mode}: run {:.2}s pair {:.2}s ({:.1}x)",
            run_t.as_secs_f64(),
            pair_t.as_secs_f64(),
            pair_t.as_secs_f64() / run_t.as_secs_f64()
        );
    }
}

/// 300 KB of compressible text in a fresh directory under /tmp (which every image has, so
/// the working directory's own path resolves inside the guest).
fn text_input() -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::Builder::new()
        .prefix("ditto-compat")
        .tempdir_in("/tmp")
        .unwrap();
    let text = guest_images::image::recipes::generated_text(300 << 10).into_bytes();
    std::fs::write(dir.path().join("in.txt"), &text).unwrap();
    (dir, text)
}

/// Decompresses with a host tool reading stdin.
fn host_decompress(tool: &[&str], data: &[u8]) -> Vec<u8> {
    let o = native(tool, data);
    assert!(o.status.success(), "{tool:?}: {}", stderr(&o));
    o.stdout
}

#[test]
fn pigz_parallel_gzip() {
    let (dir, text) = text_input();
    corpus(
        "pigz",
        "/usr/bin/pigz",
        &["-p4", "-c", "in.txt"],
        dir.path(),
        |out| {
            assert_eq!(host_decompress(&["gzip", "-dc"], out), text);
        },
    );
}

#[test]
fn pigz_parallel_gunzip_round_trip() {
    let (dir, text) = text_input();
    let gz = host_decompress(&["gzip", "-9c"], &text);
    std::fs::write(dir.path().join("in.gz"), gz).unwrap();
    corpus(
        "pigz",
        "/usr/bin/pigz",
        &["-p4", "-dc", "in.gz"],
        dir.path(),
        |out| {
            assert_eq!(out, text);
        },
    );
}

#[test]
fn zstd_multithreaded() {
    let (dir, text) = text_input();
    corpus(
        "zstd",
        "/usr/bin/zstd",
        &["-T4", "-q", "-c", "in.txt"],
        dir.path(),
        |out| {
            assert_eq!(host_decompress(&["zstd", "-dcq"], out), text);
        },
    );
}

#[test]
fn lbzip2_parallel_bzip2() {
    let (dir, text) = text_input();
    corpus(
        "lbzip2",
        "/usr/bin/lbzip2",
        &["-n4", "-c", "in.txt"],
        dir.path(),
        |out| {
            assert_eq!(host_decompress(&["bunzip2", "-c"], out), text);
        },
    );
}

#[test]
fn lbzip2_parallel_decompression() {
    let (dir, text) = text_input();
    let bz = host_decompress(&["bzip2", "-c"], &text);
    std::fs::write(dir.path().join("in.bz2"), bz).unwrap();
    corpus(
        "lbzip2",
        "/usr/bin/lbzip2",
        &["-n4", "-dc", "in.bz2"],
        dir.path(),
        |out| {
            assert_eq!(out, text);
        },
    );
}

#[test]
fn sevenzip_multithreaded_xz() {
    let (dir, text) = text_input();
    let args = ["a", "-txz", "-mmt4", "-an", "-so", "in.txt"];
    corpus("7zip", "/usr/bin/7zz", &args, dir.path(), |out| {
        assert_eq!(host_decompress(&["xz", "-dc"], out), text);
    });
}

/// GraphicsMagick's `gm convert` with four OpenMP threads (blur, resize, rotate are
/// parallel loops over rows), writing a PPM to stdout.
const GM_ARGS: [&str; 15] = [
    "convert",
    "-limit",
    "threads",
    "4",
    "-size",
    "1024x1024",
    "gradient:red-blue",
    "-blur",
    "0x3",
    "-resize",
    "50%",
    "-rotate",
    "30",
    "-depth",
    "8",
];

/// A PPM's header and size: what `gm` writes for GM_ARGS plus `ppm:-`.
fn check_ppm(out: &[u8]) {
    assert!(out.starts_with(b"P6\n"), "not a PPM");
    assert!(out.len() > 512 * 512 * 3, "{} bytes", out.len());
}

/// GraphicsMagick (OpenMP) natively, under `ditto run` and as a det pair.
#[test]
fn graphicsmagick_openmp() {
    let _turn = one_at_a_time();
    let dir = tempfile::Builder::new()
        .prefix("ditto-compat")
        .tempdir_in("/tmp")
        .unwrap();
    let mut args = GM_ARGS.to_vec();
    args.push("ppm:-");
    let native = native_in_image("graphicsmagick", "/usr/bin/gm", &args, dir.path());
    check_ppm(&native.stdout);
    let (run, _) = ditto_run("graphicsmagick", &args, dir.path());
    assert!(run.stdout == native.stdout, "ditto run differs from native");
    let (pair, _) = ditto_pair("det", "graphicsmagick", &args, dir.path());
    assert!(pair.stdout == native.stdout, "det pair differs from native");
}

/// The same as a follow pair. It stopped in 3 of 3 runs while libgomp's loop claims were
/// not ordered (issue 13 item 2; libditto.c, "OpenMP"): the secondary's threads split a
/// dynamic loop otherwise than the primary's, and one reached the loop's barrier with its
/// next logged turn still due. Its output must equal the det pair's, that is native's.
#[test]
fn graphicsmagick_openmp_follow_pair() {
    let _turn = one_at_a_time();
    let dir = tempfile::Builder::new()
        .prefix("ditto-compat")
        .tempdir_in("/tmp")
        .unwrap();
    let mut args = GM_ARGS.to_vec();
    args.push("ppm:-");
    let native = native_in_image("graphicsmagick", "/usr/bin/gm", &args, dir.path());
    let (pair, _) = ditto_pair("follow", "graphicsmagick", &args, dir.path());
    check_ppm(&pair.stdout);
    assert!(
        pair.stdout == native.stdout,
        "follow pair differs from native"
    );
}

/// OpenMP: FastTree's OpenMP build infers a tree with libgomp's thread team.
#[test]
fn fasttree_openmp() {
    let dir = tempfile::Builder::new()
        .prefix("ditto-compat")
        .tempdir_in("/tmp")
        .unwrap();
    let mut fa = String::new();
    // 24 sequences of 200 bases, each a few mutations from the one before.
    let mut seq: Vec<u8> = (0..200).map(|i| b"ACGT"[(i * 7 + i / 3) % 4]).collect();
    let mut x: u64 = 12345;
    for n in 0..24 {
        for _ in 0..6 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let at = (x >> 33) as usize % seq.len();
            seq[at] = b"ACGT"[(x >> 20) as usize % 4];
        }
        fa.push_str(&format!(">s{n}\n{}\n", String::from_utf8_lossy(&seq)));
    }
    std::fs::write(dir.path().join("aln.fa"), fa).unwrap();
    corpus(
        "fasttree",
        "/usr/bin/fasttreeMP",
        &["-nt", "-quiet", "aln.fa"],
        dir.path(),
        |out| {
            let tree = String::from_utf8_lossy(out);
            assert!(
                tree.trim_end().ends_with(");") && tree.contains("s23"),
                "{tree}"
            );
        },
    );
}

const PY_THREADS: &str = "\
import threading
lock = threading.Lock()
total = [0]
def add(n):
    for _ in range(n):
        with lock:
            total[0] += 1
ts = [threading.Thread(target=add, args=(3000,)) for _ in range(4)]
for t in ts: t.start()
for t in ts: t.join()
ev = threading.Event(); got = []
def waiter():
    ev.wait(); got.append('woken')
w = threading.Thread(target=waiter); w.start(); ev.set(); w.join()
print('total', total[0], got[0])
";

const PY_FUTURES: &str = "\
import concurrent.futures, hashlib
def work(i):
    h = hashlib.sha256()
    for j in range(2000):
        h.update(f'{i}:{j}'.encode())
    return i, h.hexdigest()[:16]
with concurrent.futures.ThreadPoolExecutor(max_workers=4) as ex:
    for i, d in sorted(ex.map(work, range(12))):
        print(i, d)
";

fn python(script: &str, check: impl Fn(&[u8])) {
    let dir = tempfile::Builder::new()
        .prefix("ditto-compat")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::write(dir.path().join("t.py"), script).unwrap();
    corpus(
        "python3-stdlib",
        "/usr/bin/python3.11",
        &["t.py"],
        dir.path(),
        check,
    );
}

#[test]
#[ignore = "a data race in CPython by design, both modes: a thread that waits 5 ms for the GIL \
            sets gil_drop_request (Python/ceval_gil.h, take_gil) and the holder reads it between \
            bytecodes with no synchronisation, so each replica switches threads at another \
            bytecode; reports: det diverged at a thread's clock_gettime where the primary made a \
            timed futex wait; follow reports a schedule divergence (README Compatibility)"]
fn python_threads_lock_and_event() {
    python(PY_THREADS, |out| assert_eq!(out, b"total 12000 woken\n"));
}

#[test]
#[ignore = "the same CPython GIL race as python_threads_lock_and_event: det pairs diverge at a \
            clock_gettime (2026-12-07: thread 0 syscall #11154), follow pairs report a schedule \
            divergence; identical in 1 det run of several"]
fn python_concurrent_futures_pool() {
    python(PY_FUTURES, |out| {
        assert_eq!(String::from_utf8_lossy(out).lines().count(), 12);
    });
}

/// Node.js worker_threads: eight Workers hash their inputs and post the digests back. The
/// image's node cannot run natively from the host (it looks for /usr/share/nodejs in the
/// host's root), so the output is checked against the known digests (sha256 of
/// "I:0".."I:4999", first 16 hex digits) instead. Each Worker is a V8 isolate that
/// reserves its own code range and heap cages: under ditto's default 1 GiB, eight of them
/// fit only because reserving address space commits no memory (tests/address_space.rs).
const NODE_WORKERS_JS: &str = "\
const { Worker, isMainThread, parentPort, workerData } = require('worker_threads');
const crypto = require('crypto');
if (isMainThread) {
  const res = []; let done = 0;
  for (let i = 0; i < 8; i++) {
    const w = new Worker(__filename, { workerData: i });
    w.on('message', (m) => { res[m.i] = m.d; if (++done === 8) res.forEach((d, i) => console.log(i, d)); });
  }
} else {
  const h = crypto.createHash('sha256');
  for (let j = 0; j < 5000; j++) h.update(`${workerData}:${j}`);
  parentPort.postMessage({ i: workerData, d: h.digest('hex').slice(0, 16) });
}
";

/// What NODE_WORKERS_JS prints (computed outside node: Python's hashlib).
const NODE_WORKERS_OUT: &str = "0 d865b092b680a97b\n1 c151a3ccd1de1050\n2 78397bcf7e736fca\n\
                                3 79d7eed36bb46b6a\n4 0e907f8cf89f1e1f\n5 db67e6bc53b642a4\n\
                                6 84a4090af069c712\n7 ed3b6346c4095012\n";

/// A directory under /tmp holding the script, as the working directory of the run.
fn node_workers_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("ditto-compat")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::write(dir.path().join("w.js"), NODE_WORKERS_JS).unwrap();
    dir
}

/// Node.js worker_threads under `ditto run`. (It once spun forever in node's realpath of
/// the script: the working directory, a bind, lstat'ed as a symlink to itself.)
#[test]
fn nodejs_worker_threads() {
    let _turn = one_at_a_time();
    let dir = node_workers_dir();
    let (run, _) = ditto_run("nodejs", &["w.js"], dir.path());
    assert_eq!(stdout(&run), NODE_WORKERS_OUT, "stderr: {}", stderr(&run));
}

/// The same as a pair in both modes.
#[test]
#[ignore = "det pair diverges: the secondary's tgkill (a Worker thread's once, the main \
            thread's once) meets the primary's clock_gettime (timing-dependent call \
            counts); follow pair stops ('sleeps in a futex wait that no thread can end'): \
            V8's parallel GC jobs decide under their mutex from lock-free worklist sizes \
            whether a thread waits or joins, so the replicas take different numbers of \
            turns (README Compatibility); see the --single-threaded-gc test below"]
fn nodejs_worker_threads_pair() {
    let _turn = one_at_a_time();
    let dir = node_workers_dir();
    for mode in MODES {
        let (pair, _) = ditto_pair(mode, "nodejs", &["w.js"], dir.path());
        assert_eq!(stdout(&pair), NODE_WORKERS_OUT, "{mode}");
    }
}

/// The follow pair with V8's GC on the main thread alone (`--single-threaded-gc`). Without
/// it V8's parallel scavenger job (DefaultJobState) decides, under its pthread mutex, from
/// lock-free worklist sizes (GetMaxConcurrency) whether the joining thread waits on the
/// job's condition variable and whether a platform worker keeps running: a decision no turn
/// orders, so the replicas take different numbers of turns and the secondary stops (4 of 4
/// follow pairs, 2026-12-07); with the flag 5 of 5 were identical that day.
#[test]
#[ignore = "flaky: on 2026-12-08 2 of 5 follow pairs with --single-threaded-gc stopped (one \
            with the binary from before that day's changes), 'due to take its turn but sleeps \
            in a futex wait that no thread can end', four of V8's platform worker threads \
            waiting on one futex (the platform's task queue): V8 posts other jobs than the \
            parallel GC to those workers, and which worker takes a task is decided without a \
            turn (README Compatibility)"]
fn nodejs_worker_threads_follow_pair_single_threaded_gc() {
    let _turn = one_at_a_time();
    let dir = node_workers_dir();
    let (pair, _) = ditto_pair(
        "follow",
        "nodejs",
        &["--single-threaded-gc", "w.js"],
        dir.path(),
    );
    assert_eq!(stdout(&pair), NODE_WORKERS_OUT);
}

/// A Go HTTP server from Debian (webhook), under a real client (curl): under `ditto run`
/// and as a pair in both modes. Go's runtime preempts goroutines with SIGURG, which its
/// handler takes only on a sigaltstack.
#[test]
fn webhook_go_http_server_run() {
    webhook(&["run"]);
}

/// The same as a pair in both modes.
#[test]
#[ignore = "data races in Go's runtime by design: sysmon's retake preempts (tgkill SIGURG) \
            from unsynchronised reads of other Ms' P state, and which M runs which goroutine is \
            decided by compare-and-swap (wakep, run-queue stealing); README Compatibility has \
            the traces"]
fn webhook_go_http_server_pair() {
    webhook(&MODES);
}

fn webhook(hows: &[&str]) {
    let _turn = one_at_a_time();
    let dir = tempfile::Builder::new()
        .prefix("ditto-compat")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::write(
        dir.path().join("hooks.json"),
        r#"[{"id":"hello","execute-command":"/bin/true","response-message":"hi"}]"#,
    )
    .unwrap();
    for &how in hows {
        let port = free_port();
        let p = port.to_string();
        let out = tempdir();
        let mut c = ditto();
        if how == "run" {
            c.arg("run");
        } else {
            c.args(["pair", "--quiet", "--mode", how, "--out"])
                .arg(out.path());
        }
        c.args([
            "--image",
            "webhook",
            "--",
            "-hooks",
            "hooks.json",
            "-ip",
            "127.0.0.1",
        ])
        .args(["-port", &p])
        .current_dir(dir.path());
        let t = Instant::now();
        let mut server = ServerProc::spawn(c);
        server.wait_port(port);
        for _ in 0..3 {
            let body = client(&[
                "curl",
                "-s",
                "-m",
                "20",
                &format!("http://127.0.0.1:{p}/hooks/none"),
            ]);
            assert_eq!(body, "Hook not found.", "{how}");
        }
        let o = server.stop(libc::SIGTERM);
        eprintln!("TIMING webhook {how}: {:.2}s", t.elapsed().as_secs_f64());
        if how != "run" {
            let r = Report::load(out.path().join("report.json")).expect("report.json");
            assert_eq!(
                r.outcome,
                Outcome::Identical,
                "{how}: {}\n{}",
                r.summary(),
                stderr(&o)
            );
        }
    }
}

/// A daemon started as root binds its port, drops to nobody with setgroups/setgid/setuid
/// and serves a real client: under `ditto run` and as a pair in both modes. (Before the
/// virtual credentials, setgroups was EPERM and it exited at once.)
#[test]
fn privdrop_daemon_serves_after_dropping_root() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED privdrop: the test starts the daemon as root and runs as uid != 0");
        return;
    }
    let _turn = one_at_a_time();
    let prog = prog("privdrop");
    let expected = "ok starts-as-root\nok getresuid\nok getresgid\nok getgroups\n\
                    ok status-uid\nok status-gid\nok no-way-back\nok no-setgroups\n\
                    ok capabilities-gone\nlistening\nserved: world\n";
    let ask = |port: u16| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"world\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, "hello world from uid 65534\n");
    };
    for how in ["run", "det", "follow"] {
        let port = free_port();
        let p = port.to_string();
        let out = tempdir();
        let mut c = ditto();
        if how == "run" {
            c.arg("run");
        } else {
            c.args(["pair", "--quiet", "--mode", how, "--out"])
                .arg(out.path());
        }
        c.arg("--").arg(&prog).arg(&p);
        let mut server = ServerProc::spawn(c);
        server.wait_port(port);
        ask(port);
        let o = server.wait_exit(60);
        assert!(o.status.success(), "{how}: {:?} {}", o.status, stderr(&o));
        assert_eq!(stdout(&o), expected, "{how}");
        if how != "run" {
            let r = Report::load(out.path().join("report.json")).expect("report.json");
            assert_eq!(r.outcome, Outcome::Identical, "{how}: {}", r.summary());
        }
    }
}
