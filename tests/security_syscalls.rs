//! Issue 17, syscall arguments: lengths the host must not re-read from guest memory,
//! timer values near the top of time_t, control messages with absurd lengths, stray
//! flag registers, descriptors that must not leak when the table is full, and AF_UNIX
//! paths that must stay inside the root. Each runs a guest program of
//! guest-images/progs/ under `ditto run` and, where Linux answers the same, compares
//! with the native run.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{ditto, native, output_within, prog, stderr, stdout};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `ditto run [extra] -- argv...`, bounded in time.
fn run_within(extra: &[&str], argv: &[&str], secs: u64) -> std::process::Output {
    let mut c = ditto();
    c.arg("run").args(extra).arg("--").args(argv);
    output_within(c, secs)
}

#[test]
fn addrlen_grown_while_blocked_does_not_widen_the_write() {
    // The 4-byte buffer sits 16 bytes below the top of the program's part of guest memory
    // (the main stack's end): above it lie the VMM's doorbell pages (4 MiB,
    // vmm::doorbell::AREA_SIZE), which a write past the checked buffer would reach.
    let p = prog("addrlen_race");
    let out = run_within(&["--memory", "256M"], &[s(&p), "stack"], 30);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert_eq!(
        text, "recvfrom=1 len=16\ncanary intact\naccept=fd len=16\ncanary intact\ndone\n",
        "the host wrote past the checked buffer"
    );
}

#[test]
fn huge_timer_values_neither_panic_nor_stop_other_timers() {
    let p = prog("hugetimeout");
    for case in ["value", "interval", "wait"] {
        let out = run_within(&[], &[s(&p), case], 30);
        let want = native(&[s(&p), case], b"");
        assert!(out.status.success(), "{case}: {}", stderr(&out));
        assert_eq!(stdout(&out), stdout(&want), "{case}: {}", stderr(&out));
    }
    let out = run_within(&[], &[s(&p)], 30);
    assert_eq!(
        stdout(&out),
        "value: set=0 long=1\ninterval: sig=14\nwait: sig=14\ndone\n"
    );
}

#[test]
fn wrapping_cmsg_len_is_einval_not_a_hang() {
    let p = prog("cmsgwrap");
    let out = run_within(&[], &[s(&p)], 30);
    let want = native(&[s(&p)], b"");
    assert_eq!(
        stdout(&want),
        "wrap: ret=-1 errno=22\nlong: ret=-1 errno=22\nrights: ok\ndone\n"
    );
    assert_eq!(stdout(&out), stdout(&want), "{}", stderr(&out));
}

#[test]
fn preadv_and_pwritev_ignore_the_flags_register() {
    let p = prog("pwritev_flags");
    let out = run_within(&[], &[s(&p)], 30);
    let want = native(&[s(&p)], b"");
    assert_eq!(stdout(&want), "file=BBAAAAAA\nread=AA\ndone\n");
    assert_eq!(stdout(&out), stdout(&want), "{}", stderr(&out));
}

/// Number of host descriptors `pid` holds.
fn host_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn full_descriptor_table_leaks_no_host_descriptors() {
    let p = prog("fdleak");
    let mut child = ditto()
        .args(["run", "--", s(&p), "wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let next = |lines: &mut Vec<String>| -> String {
        match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(l) => {
                lines.push(l.clone());
                l
            }
            Err(_) => {
                // SAFETY: killing the child this test started, by its PID.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                panic!("fdleak stopped answering; output so far: {lines:?}");
            }
        }
    };
    assert_eq!(next(&mut lines), "ready1");
    let before = host_fds(pid);
    stdin.write_all(b"g").unwrap();
    while next(&mut lines) != "ready2" {}
    let after = host_fds(pid);
    stdin.write_all(b"g").unwrap();
    while next(&mut lines) != "done" {}
    let _ = child.wait();
    assert!(
        after <= before + 4,
        "ditto's host descriptors grew from {before} to {after}: {lines:?}"
    );
    let want = native(&[s(&p)], b"");
    let got: String = lines
        .iter()
        .filter(|l| !l.starts_with("ready"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(got, stdout(&want));
    assert_eq!(
        got,
        "pipe2: emfile=500 slot_kept=1\nsocketpair: emfile=500 slot_kept=1\n\
         recvmsg: ret=1 ctrunc=1 nfds=1\ndone\n"
    );
}

#[test]
fn unix_socket_paths_stay_inside_the_root() {
    let dir = common::tempdir();
    let root = dir.path().join("root");
    let cwd = dir.path().join("a/b");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::copy(prog("unixpath"), root.join("unixpath")).unwrap();
    let mut c: Command = ditto();
    // ditto's own cwd is two levels below the root's parent, so that a relative name
    // joined as a string would also land beside the root.
    c.current_dir(&cwd)
        .args(["run", "--root", s(&root), "--", "/unixpath"]);
    let out = output_within(c, 30);
    let text = stdout(&out);
    for name in ["esc1.sock", "esc2.sock"] {
        assert!(
            !dir.path().join(name).exists(),
            "{name} was created outside the root: {text}"
        );
    }
    assert_eq!(
        text,
        "bind1=0\nbind2=0\nname1=/../esc1.sock len=16\nconnect=0\nrecv=x\ndone\n",
        "{}",
        stderr(&out)
    );
    assert!(root.join("esc1.sock").exists() && root.join("esc2.sock").exists());
}
