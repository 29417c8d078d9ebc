//! A program that runs out of memory, threads or descriptors gets Linux's errors
//! (ENOMEM, EAGAIN, EMFILE), alone and as a pair (the secondary sees the same), and a
//! program blocked for ever in a write to a full pipe does not keep ditto from stopping
//! on SIGTERM. Every wait is bounded; only processes these tests start are signalled.

mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use replica::report::{Outcome, Report};

/// Each case and the line Linux gives (ENOMEM 12, EAGAIN 11, EMFILE 24).
const CASES: [(&str, &str); 3] = [
    ("mem", "mem err=12\ndone\n"),
    ("threads", "threads err=11\ndone\n"),
    ("fds", "fds err=24\ndone\n"),
];

#[test]
fn running_out_gives_linux_errors() {
    let p = prog("exhaust");
    for (case, want) in CASES {
        let mut c = ditto();
        c.args(["run", "--"]).arg(&p).arg(case);
        let o = output_within(c, 120);
        assert!(o.status.success(), "{case}: {}", stderr(&o));
        assert_eq!(stdout(&o), want, "{case}: {}", stderr(&o));
    }
}

/// The same natively, where the limit can be set without taking the machine down
/// (descriptors: RLIMIT_NOFILE is the test's own, normally 1024 or more).
#[test]
fn descriptors_run_out_as_natively() {
    let p = prog("exhaust");
    let o = native(&[p.to_str().unwrap(), "fds"], b"");
    assert_eq!(stdout(&o), "fds err=24\ndone\n");
}

#[test]
fn a_pair_sees_the_same_errors_in_both_modes() {
    let p = prog("exhaust");
    for mode in ["det", "follow"] {
        for (case, want) in CASES {
            let out = tempdir();
            let mut c = ditto();
            c.args(["pair", "--quiet", "--mode", mode, "--out"])
                .arg(out.path())
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
            assert!(o.status.success(), "{mode} {case}: {}", stderr(&o));
            assert_eq!(stdout(&o), want, "{mode} {case}");
            let secondary = std::fs::read(out.path().join("secondary.stdout")).unwrap();
            assert_eq!(secondary, o.stdout, "{mode} {case}: secondary output");
        }
    }
}

/// The program fills a pipe nobody reads and then blocks in write for ever; ditto must
/// still stop on SIGTERM (to its own PID), promptly.
#[test]
fn a_write_blocked_for_ever_does_not_stop_sigterm() {
    let p = prog("exhaust");
    let mut child = ditto()
        .args(["run", "--"])
        .arg(&p)
        .arg("pipe")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ditto");
    // The program says when the pipe is full; poll for that line rather than sleep.
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let mut seen = Vec::new();
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.ends_with(b"\n") {
                let _ = tx.send(String::from_utf8_lossy(&seen).into_owned());
            }
        }
    });
    let line = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(l) => l,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the program did not fill its pipe within 60 s");
        }
    };
    assert_eq!(line, "pipe full errno=11\n");
    // Give the program a moment to be inside the blocking write; being early is harmless
    // (SIGTERM then lands while it is still running guest code).
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: signalling the child this test started, not yet waited for.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ditto did not stop within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "a SIGTERM'd run does not report success");
}
