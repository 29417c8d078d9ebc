//! Helpers shared by the integration tests: the ditto binary, the project's guest
//! programs, and image roots built from Debian packages.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The ditto binary under test.
pub fn ditto() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ditto"))
}

/// A guest program built by guest-images.
pub fn prog(name: &str) -> PathBuf {
    guest_images::progs::path(name).unwrap_or_else(|| panic!("guest program {name} not built"))
}

/// Runs `ditto run [extra] -- argv...` with stdin from `input`.
pub fn run_in(extra: &[&str], argv: &[&str], input: &[u8]) -> Output {
    let mut c = ditto();
    c.arg("run").args(extra).arg("--").args(argv);
    run_with_input(c, input)
}

/// `run_in` with extra environment variables for ditto (and so for a `--root` program, which
/// gets the host's environment).
pub fn run_in_env(extra: &[&str], argv: &[&str], input: &[u8], env: &[(&str, &str)]) -> Output {
    let mut c = ditto();
    c.envs(env.iter().copied())
        .arg("run")
        .args(extra)
        .arg("--")
        .args(argv);
    run_with_input(c, input)
}

/// Runs a command natively with stdin from `input`.
pub fn native(argv: &[&str], input: &[u8]) -> Output {
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..]);
    run_with_input(c, input)
}

fn run_with_input(mut c: Command, input: &[u8]) -> Output {
    use std::io::Write;
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    // A program may exit, or close its stdin, before it has read all of `input` (head,
    // a program that fails early): then the write fails with EPIPE, which is no error of
    // the harness; the caller's checks on the program's output and status decide. It is
    // said on stderr so that a test failing for that reason shows it. Any other write
    // error is the harness's and fails the test.
    let writer = std::thread::spawn(move || {
        let mut written = 0;
        while written < data.len() {
            match stdin.write(&data[written..]) {
                Ok(0) => panic!("stdin write returned 0 after {written} bytes"),
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    eprintln!(
                        "note: the program closed its stdin after {written} of {} bytes",
                        data.len()
                    );
                    return;
                }
                Err(e) => panic!("writing the program's stdin: {e}"),
            }
        }
    });
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("the stdin writer failed");
    out
}

/// Builds (once per test binary) an image from Debian packages and returns its root.
pub fn image_root(name: &str) -> PathBuf {
    static ROOTS: OnceLock<std::sync::Mutex<std::collections::BTreeMap<String, PathBuf>>> =
        OnceLock::new();
    let roots = ROOTS.get_or_init(Default::default);
    let mut map = roots.lock().unwrap();
    if let Some(p) = map.get(name) {
        return p.clone();
    }
    let img = guest_images::image::open(name, &guest_images::image::BuildOptions::default())
        .unwrap_or_else(|e| panic!("building image {name}: {e}"));
    map.insert(name.to_string(), img.root.clone());
    img.root
}

/// Debian's busybox-static binary (from the busybox image).
pub fn busybox() -> PathBuf {
    image_root("busybox").join("bin/busybox")
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A temp dir for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Writes `len` bytes of deterministic pseudo-random data.
pub fn write_blob(path: &Path, len: usize) {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(path, data).unwrap();
}

/// Runs `c` to completion, but kills it (by its own PID) and fails the test if it takes
/// longer than `secs`: a feature that breaks must fail the test, not hang it.
pub fn output_within(mut c: Command, secs: u64) -> Output {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            // SAFETY: killing the child this helper started, by its PID.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("command did not finish within {secs} s");
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; a race with other processes is
/// possible but harmless in practice for tests that retry nothing).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Waits (at most `secs`) until the server on `port` has closed every connection
/// ([`replica::testkit::wait_connections_closed`]). Returns whether it got there.
///
/// A pair is stopped only once its server is idle. Servers such as civetweb end a
/// keep-alive connection early when they see their stop flag, a plain variable the main
/// thread sets and the workers read without synchronization; with a connection still
/// being wound down at the signal, whether a worker reads once more or closes first is a
/// data race that no schedule replay covers (docs/det.md, "What det cannot fix").
#[allow(dead_code)]
pub fn wait_connections_closed(port: u16, secs: u64) -> bool {
    replica::testkit::wait_connections_closed(port, std::time::Duration::from_secs(secs))
}

/// A ditto process running a server; killed (by its own PID) when dropped, so a failing
/// test leaves nothing behind.
pub struct ServerProc {
    child: Option<std::process::Child>,
}

impl ServerProc {
    /// Starts `cmd` with its output captured.
    pub fn spawn(mut cmd: Command) -> ServerProc {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ditto");
        ServerProc { child: Some(child) }
    }

    /// The ditto process's PID (while it has not been waited for).
    pub fn id(&self) -> u32 {
        self.child
            .as_ref()
            .expect("the process was already waited for")
            .id()
    }

    /// Waits (at most 60 s) until 127.0.0.1:`port` accepts connections.
    pub fn wait_port(&mut self, port: u16) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let out = self.child.take().unwrap().wait_with_output().unwrap();
                panic!("server exited early ({status}): {}", stderr(&out));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("server did not listen on {port} within 60 s");
    }

    /// Waits (at most `secs`) for the process to end by itself.
    pub fn wait_exit(mut self, secs: u64) -> Output {
        let mut child = self.child.take().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("process did not end within {secs} s");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }

    /// Sends `sig` to the ditto process and waits (at most `secs`) for it to end; if it
    /// does not, SIGKILLs the processes it started (a pair's replicas, found under /proc)
    /// and then it. Its output, and whether it had to be killed. Never panics: for tests
    /// that want to say more than "it did not stop".
    pub fn stop_or_kill(mut self, sig: i32, secs: u64) -> (Output, bool) {
        let mut child = self.child.take().unwrap();
        let pid = child.id();
        // SAFETY: signalling a child process this test started (not yet waited for).
        unsafe { libc::kill(pid as i32, sig) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        let mut killed = false;
        while child.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() > deadline {
                killed = true;
                let mut kids = Vec::new();
                for t in std::fs::read_dir(format!("/proc/{pid}/task"))
                    .into_iter()
                    .flatten()
                {
                    let Ok(t) = t else { continue };
                    let text =
                        std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                    kids.extend(
                        text.split_whitespace()
                            .filter_map(|k| k.parse::<i32>().ok()),
                    );
                }
                for k in kids {
                    // SAFETY: a process that our child started, read from /proc just now.
                    unsafe { libc::kill(k, libc::SIGKILL) };
                }
                let _ = child.kill();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        (child.wait_with_output().unwrap(), killed)
    }

    /// Sends `sig` to the ditto process and waits (at most 20 s) for it to end.
    pub fn stop(mut self, sig: i32) -> Output {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling a child process this test started (not yet waited for, so
        // its PID is still ours).
        unsafe { libc::kill(child.id() as i32, sig) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                // What ditto said before it hung is the only clue a rare hang leaves.
                let out = child.wait_with_output().unwrap();
                let err = String::from_utf8_lossy(&out.stderr);
                let tail: Vec<&str> = err.lines().rev().take(40).collect();
                panic!(
                    "server did not stop within 20 s of signal {sig}; its stderr ended:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs a client program (redis-cli, wrk...) to completion; it must succeed. Its stdout.
pub fn client(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .expect(argv[0]);
    assert!(out.status.success(), "{argv:?}: {}", stderr(&out));
    stdout(&out)
}

/// One redis-cli command against 127.0.0.1:`port`; its reply, trimmed.
pub fn redis_cli(port: u16, cmd: &[&str]) -> String {
    let p = port.to_string();
    let mut argv = vec!["redis-cli", "-p", &p];
    argv.extend(cmd);
    client(&argv).trim_end().to_string()
}

/// A state directory for the nginx image that listens on 127.0.0.1:`port` and serves a
/// `blob_len`-byte file `/blob_name` besides the image's own pages.
pub fn nginx_state(port: u16, blob_name: &str, blob_len: usize) -> tempfile::TempDir {
    nginx_state_with(port, blob_name, blob_len, true)
}

/// [`nginx_state`], with the image's `aio threads` (file reads on its thread pool) or
/// without (the event loop reads files itself). Pairs need it off: the pool hands
/// finished reads back through nginx's own spinlock, outside every det section.
pub fn nginx_state_with(
    port: u16,
    blob_name: &str,
    blob_len: usize,
    aio_threads: bool,
) -> tempfile::TempDir {
    let root = image_root("nginx");
    let state = tempdir();
    let mut conf = std::fs::read_to_string(root.join("etc/nginx/ditto.conf")).unwrap();
    assert!(conf.contains("listen 127.0.0.1:8080;"));
    if !aio_threads {
        assert!(conf.contains("aio threads;"));
        conf = conf.replace("aio threads;", "aio off;");
    }
    std::fs::create_dir_all(state.path().join("etc/nginx")).unwrap();
    std::fs::write(
        state.path().join("etc/nginx/ditto.conf"),
        conf.replace(
            "listen 127.0.0.1:8080;",
            &format!("listen 127.0.0.1:{port};"),
        ),
    )
    .unwrap();
    std::fs::create_dir_all(state.path().join("srv/www")).unwrap();
    write_blob(&state.path().join("srv/www").join(blob_name), blob_len);
    state
}

/// One counter from the `--stats` line in `err` (ditto's stderr); panics naming the key
/// and the text when it is missing, so a changed stats format fails loudly.
pub fn stats_counter(err: &str, key: &str) -> u64 {
    err.split(&format!(" {key}="))
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in the stats line: {err}"))
}

/// A root with ld.so, libc (and libdl, libpthread) and `prog` at /prog, from the python3
/// image (glibc 2.36): for the dynamic builds of the guest programs.
pub fn dyn_root(dir: &Path, prog: &Path) -> PathBuf {
    let image = image_root("python3");
    let root = dir.join("root");
    let lib = root.join("usr/lib/x86_64-linux-gnu");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::create_dir_all(root.join("usr/lib64")).unwrap();
    std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
    std::os::unix::fs::symlink("usr/lib64", root.join("lib64")).unwrap();
    for name in ["libc.so.6", "libdl.so.2", "libpthread.so.0"] {
        std::fs::copy(
            image.join("usr/lib/x86_64-linux-gnu").join(name),
            lib.join(name),
        )
        .unwrap();
    }
    std::fs::copy(
        image.join("usr/lib64/ld-linux-x86-64.so.2"),
        root.join("usr/lib64/ld-linux-x86-64.so.2"),
    )
    .unwrap();
    std::fs::copy(prog, root.join("prog")).unwrap();
    root
}
