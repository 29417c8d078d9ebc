//! Real servers from Debian packages in ditto, driven by real clients (redis-cli,
//! redis-benchmark, curl) over 127.0.0.1 only. Every wait is bounded, and only the
//! ditto processes these tests start are ever signalled.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// `ditto run ARGS` as a server process.
fn start(args: &[&str]) -> ServerProc {
    let mut c = ditto();
    c.arg("run").args(args);
    ServerProc::spawn(c)
}

#[test]
fn redis_answers_real_clients_and_shuts_down_cleanly() {
    image_root("redis");
    let port = free_port();
    let state = tempdir();
    let p = port.to_string();
    let mut server = start(&[
        "--image",
        "redis",
        "--state",
        state.path().to_str().unwrap(),
        "--",
        "--port",
        &p,
    ]);
    server.wait_port(port);
    assert_eq!(redis_cli(port, &["PING"]), "PONG");
    assert_eq!(redis_cli(port, &["SET", "k", "v1"]), "OK");
    assert_eq!(redis_cli(port, &["GET", "k"]), "v1");
    for n in 1..=3 {
        assert_eq!(redis_cli(port, &["INCR", "counter"]), n.to_string());
    }
    assert_eq!(redis_cli(port, &["LPUSH", "list", "a", "b", "c"]), "3");
    assert_eq!(redis_cli(port, &["LRANGE", "list", "0", "-1"]), "c\nb\na");
    assert_eq!(redis_cli(port, &["EXPIRE", "k", "100"]), "1");
    let ttl: i64 = redis_cli(port, &["TTL", "k"]).parse().unwrap();
    assert!((1..=100).contains(&ttl), "ttl {ttl}");
    let digest = redis_cli(port, &["DEBUG", "DIGEST"]);
    assert_eq!(digest.len(), 40, "{digest}");
    assert_ne!(digest, "0".repeat(40));

    // A short benchmark: every request must succeed.
    let bench = client(&[
        "redis-benchmark",
        "-p",
        &p,
        "-t",
        "set,get",
        "-n",
        "2000",
        "-c",
        "4",
        "-q",
    ]);
    let lines: Vec<&str> = bench
        .lines()
        .filter(|l| l.contains("requests per second"))
        .collect();
    assert_eq!(lines.len(), 2, "{bench}");
    assert!(!bench.to_lowercase().contains("error"), "{bench}");
    assert_eq!(redis_cli(port, &["GET", "k"]), "v1");

    let out = server.stop(libc::SIGTERM);
    // redis logs to stdout (logfile ""): its own handler ran and it exited 0.
    let log = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.contains("Received SIGTERM") && log.contains("ready to exit"),
        "{log}"
    );
}

#[test]
fn redis_port_in_use_is_one_line() {
    image_root("redis");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let o = ditto()
        .args(["run", "--image", "redis", "--", "--port", &port])
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    let err = stderr(&o);
    let ours: Vec<&str> = err.lines().filter(|l| l.starts_with("ditto:")).collect();
    assert_eq!(
        ours,
        vec![format!("ditto: 127.0.0.1:{port} is already in use on this host").as_str()],
        "{err}"
    );
}

#[test]
fn nginx_serves_files_keepalive_and_404() {
    let port = free_port();
    let state = nginx_state(port, "big.bin", 1 << 20);
    let mut server = start(&[
        "--image",
        "nginx",
        "--state",
        state.path().to_str().unwrap(),
    ]);
    server.wait_port(port);
    let base = format!("http://127.0.0.1:{port}");
    let dir = tempdir();
    let got = dir.path().join("big.bin");
    let code = client(&[
        "curl",
        "-s",
        "-o",
        got.to_str().unwrap(),
        "-w",
        "%{http_code}",
        &format!("{base}/big.bin"),
    ]);
    assert_eq!(code, "200");
    assert_eq!(
        std::fs::read(&got).unwrap(),
        std::fs::read(state.path().join("srv/www/big.bin")).unwrap(),
        "1 MB file differs"
    );
    // Three requests on one connection: curl reports one connect in total.
    let url = format!("{base}/index.html");
    let mut argv = vec!["curl", "-s", "-w", "%{num_connects} %{http_code}\n"];
    for _ in 0..3 {
        argv.extend(["-o", "/dev/null", url.as_str()]);
    }
    let connects = client(&argv);
    let lines: Vec<&str> = connects.lines().collect();
    assert_eq!(
        lines,
        vec!["1 200", "0 200", "0 200"],
        "keep-alive not used: {connects}"
    );
    let code = client(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{base}/missing"),
    ]);
    assert_eq!(code, "404");
    let out = server.stop(libc::SIGINT);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

fn pbzip2(args: &[&str], cwd: &Path) -> Output {
    let o = ditto()
        .current_dir(cwd)
        .args(["run", "--image", "pbzip2", "--"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "pbzip2 {args:?}: {}", stderr(&o));
    o
}

#[test]
fn pbzip2_round_trip_and_host_bunzip2_accepts() {
    image_root("pbzip2");
    let dir = tempdir();
    write_blob(&dir.path().join("data"), 20 << 20);
    let z = pbzip2(&["-p2", "-c", "data"], dir.path());
    std::fs::write(dir.path().join("data.bz2"), &z.stdout).unwrap();
    let host = Command::new("bunzip2")
        .arg("-c")
        .arg(dir.path().join("data.bz2"))
        .output()
        .unwrap();
    assert!(host.status.success());
    assert_eq!(
        host.stdout,
        std::fs::read(dir.path().join("data")).unwrap(),
        "host bunzip2 disagrees"
    );
    let back = pbzip2(&["-p2", "-d", "-c", "data.bz2"], dir.path());
    assert_eq!(
        back.stdout,
        std::fs::read(dir.path().join("data")).unwrap(),
        "round trip differs"
    );
}

#[test]
fn unknown_image_lists_known_ones() {
    let o = ditto().args(["run", "--image", "nosuch"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    for name in ["busybox", "python3", "redis", "nginx", "pbzip2"] {
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn image_root_is_read_only_and_state_is_writable() {
    let bb = image_root("busybox");
    assert!(bb.join("bin/busybox").exists());
    let state = tempdir();
    let o = ditto()
        .args([
            "run",
            "--image",
            "busybox",
            "--state",
            state.path().to_str().unwrap(),
            "--",
            "-c",
        ])
        .arg("echo x > /etc/new; echo rc=$?; echo y > /tmp/new && read v < /tmp/new && echo got=$v")
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(out.contains("rc=1"), "{out}{}", stderr(&o));
    assert!(out.contains("got=y"), "{out}");
    assert!(!bb.join("etc/new").exists(), "the image was modified");
    assert_eq!(
        std::fs::read_to_string(state.path().join("tmp/new")).unwrap(),
        "y\n"
    );
}
