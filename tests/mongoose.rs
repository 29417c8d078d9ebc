//! The mongoose image (civetweb 1.15 from Debian) in ditto: its static files come back
//! byte-identical through curl and under concurrent load, with and without `--det`, and
//! `-num_threads` after the image's arguments takes effect, and as a `ditto pair` in both modes
//! the replicas agree on every response byte. Clients talk to 127.0.0.1 only,
//! every wait is bounded, and only the ditto processes these tests start are ever signalled.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use guest_images::image::recipes::generated_text;

/// `ditto pair`'s modes.
const PAIR_MODES: &[&str] = &["det", "follow"];

/// The image's static files: name and size (the thesis's 1, 50, 100 and 200 KB).
const FILES: [(&str, usize); 4] = [
    ("1k.html", 1 << 10),
    ("50k.html", 50 << 10),
    ("100k.html", 100 << 10),
    ("200k.html", 200 << 10),
];

/// A ditto process running civetweb; killed (by its own PID) if the test fails.
struct Server {
    proc: ServerProc,
    port: u16,
    _state: tempfile::TempDir,
}

impl Server {
    /// Starts `ditto run [flags] --image mongoose --state STATE -- [args]` with a state
    /// directory whose ditto.conf listens on a free port.
    fn start(flags: &[&str], args: &[&str]) -> Server {
        let mut cmd = vec!["run"];
        cmd.extend(flags);
        Server::start_with(&cmd, args)
    }

    /// Like [`start`](Self::start), with the whole ditto command before `--image`
    /// (`run --det`, `pair --mode follow ...`).
    fn start_with(command: &[&str], args: &[&str]) -> Server {
        let root = image_root("mongoose");
        let port = free_port();
        let state = tempdir();
        let conf = std::fs::read_to_string(root.join("etc/civetweb/ditto.conf")).unwrap();
        assert!(conf.contains("listening_ports 127.0.0.1:8081\n"), "{conf}");
        std::fs::create_dir_all(state.path().join("etc/civetweb")).unwrap();
        std::fs::write(
            state.path().join("etc/civetweb/ditto.conf"),
            conf.replace(
                "listening_ports 127.0.0.1:8081",
                &format!("listening_ports 127.0.0.1:{port}"),
            ),
        )
        .unwrap();
        let mut c = ditto();
        c.args(command)
            .args(["--image", "mongoose", "--state"])
            .arg(state.path())
            .arg("--")
            .args(args);
        let mut proc = ServerProc::spawn(c);
        proc.wait_port(port);
        Server {
            proc,
            port,
            _state: state,
        }
    }

    fn url(&self, file: &str) -> String {
        format!("http://127.0.0.1:{}/{file}", self.port)
    }

    /// Sends `sig` to the ditto process, waits (bounded) for it to end, and checks that
    /// civetweb's own handler ran and the run exited 0. Returns ditto's stderr.
    fn stop(self, sig: i32) -> String {
        let out: Output = self.proc.stop(sig);
        let log = format!("{}{}", stdout(&out), stderr(&out));
        assert_eq!(out.status.code(), Some(0), "{log}");
        assert!(
            log.contains(&format!("Exiting on signal {sig}")),
            "civetweb's handler did not run: {log}"
        );
        assert!(!log.contains("unsupported syscall"), "{log}");
        stderr(&out)
    }
}

/// The image's copy of each static file, checked against the recipe's generator.
fn expected() -> Vec<(&'static str, Vec<u8>)> {
    let root: PathBuf = image_root("mongoose");
    FILES
        .iter()
        .map(|&(name, size)| {
            let data = std::fs::read(root.join("srv/www").join(name)).unwrap();
            assert_eq!(data.len(), size, "{name}");
            assert!(
                data == generated_text(size).as_bytes(),
                "{name} in the image"
            );
            (name, data)
        })
        .collect()
}

/// Fetches every file with curl and compares it byte for byte; also a 404.
fn curl_all_files(server: &Server) {
    let dir = tempdir();
    for (name, want) in expected() {
        let got = dir.path().join(name);
        let out = Command::new("curl")
            .args(["-s", "-m", "30", "-o"])
            .arg(&got)
            .args(["-w", "%{http_code}"])
            .arg(server.url(name))
            .output()
            .expect("curl");
        assert!(out.status.success(), "curl {name}: {}", stderr(&out));
        assert_eq!(stdout(&out), "200", "{name}");
        assert!(std::fs::read(&got).unwrap() == want, "{name} differs");
    }
    let out = Command::new("curl")
        .args(["-s", "-m", "30", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(server.url("missing.html"))
        .output()
        .expect("curl");
    assert_eq!(stdout(&out), "404");
}

/// One HTTP/1.1 keep-alive connection that reconnects when the server closes it.
struct Client {
    port: u16,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    fn connect(&mut self) -> Result<&mut BufReader<TcpStream>, String> {
        if self.conn.is_none() {
            let s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .map_err(|e| e.to_string())?;
            s.set_write_timeout(Some(Duration::from_secs(30)))
                .map_err(|e| e.to_string())?;
            self.conn = Some(BufReader::new(s));
        }
        self.conn
            .as_mut()
            .ok_or_else(|| "no connection".to_string())
    }

    /// GET /`name`: the status and the body (read by Content-Length).
    fn get(&mut self, name: &str) -> Result<(u32, Vec<u8>), String> {
        let r = self.connect()?;
        r.get_mut()
            .write_all(format!("GET /{name} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| format!("status: {e}"))?;
        let status: u32 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let (mut len, mut close) = (None, false);
        loop {
            line.clear();
            r.read_line(&mut line).map_err(|e| format!("header: {e}"))?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap_or((l, ""));
            let (k, v) = (k.to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                len = v.parse::<usize>().ok();
            } else if k == "connection" && v.eq_ignore_ascii_case("close") {
                close = true;
            }
        }
        let len = len.ok_or("no Content-Length")?;
        let mut body = vec![0; len];
        r.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
        if close {
            self.conn = None;
        }
        Ok((status, body))
    }
}

/// `threads` clients, each making `per_thread` requests on keep-alive connections over the
/// four files; every response must be 200 with exactly the file's bytes.
fn load(port: u16, threads: usize, per_thread: usize) {
    let files = std::sync::Arc::new(expected());
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let files = files.clone();
            std::thread::spawn(move || -> Result<usize, String> {
                let mut c = Client { port, conn: None };
                for i in 0..per_thread {
                    let (name, want) = &files[(t + i) % files.len()];
                    let (status, body) = c.get(name).map_err(|e| format!("{name}: {e}"))?;
                    if status != 200 || body != *want {
                        return Err(format!(
                            "thread {t} request {i} {name}: status {status}, {} bytes",
                            body.len()
                        ));
                    }
                }
                Ok(per_thread)
            })
        })
        .collect();
    let mut done = 0;
    for w in workers {
        done += w.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(done, threads * per_thread);
}

/// `threads=N` from ditto's `--stats` line.
fn threads_stat(err: &str) -> usize {
    err.lines()
        .find(|l| l.starts_with("ditto: stats:"))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("threads="))
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no threads= in {err}"))
}

#[test]
fn static_files_are_byte_identical_through_curl() {
    let server = Server::start(&[], &[]);
    curl_all_files(&server);
    server.stop(libc::SIGTERM);
}

#[test]
fn concurrent_load_every_response_is_correct() {
    let server = Server::start(&[], &[]);
    let t = Instant::now();
    load(server.port, 8, 250);
    eprintln!("2000 requests in {:?}", t.elapsed());
    server.stop(libc::SIGINT);
}

#[test]
fn det_mode_serves_byte_identical_files() {
    let server = Server::start(&["--det"], &[]);
    let t = Instant::now();
    curl_all_files(&server);
    load(server.port, 4, 25);
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    server.stop(libc::SIGTERM);
}

#[test]
fn pair_has_zero_divergence_and_compares_every_response_byte() {
    for &mode in PAIR_MODES {
        let out = tempdir();
        let o = out.path().to_str().unwrap();
        let server = Server::start_with(&["pair", "--quiet", "--mode", mode, "--out", o], &[]);
        curl_all_files(&server);
        let (threads, per_thread) = (8, 40);
        load(server.port, threads, per_thread);
        let files = expected();
        let body_bytes: usize = files.iter().map(|(_, b)| b.len()).sum::<usize>()
            + (0..threads)
                .flat_map(|t| (0..per_thread).map(move |i| (t + i) % 4))
                .map(|f| files[f].1.len())
                .sum::<usize>();
        assert!(
            wait_connections_closed(server.port, 20),
            "{mode}: civetweb did not close its connections"
        );
        let o = server.proc.stop(libc::SIGTERM);
        let r = replica::report::Report::load(out.path().join("report.json")).unwrap();
        assert_eq!(
            r.outcome,
            replica::report::Outcome::Identical,
            "{mode}: {}\n{}",
            r.summary(),
            stderr(&o)
        );
        assert_eq!(o.status.code(), Some(0), "{mode}: {}", stderr(&o));
        assert!(
            r.counters.bytes_compared >= body_bytes as u64,
            "{mode}: compared {} bytes, the clients received {body_bytes} bytes of bodies",
            r.counters.bytes_compared
        );
    }
}

#[test]
fn num_threads_after_the_image_args_takes_effect() {
    // civetweb's threads: the main one, the master (accept) thread and num_threads workers.
    let server = Server::start(&["--stats"], &["-num_threads", "16"]);
    // Twelve idle connections each hold a worker (waiting for a request); with 16 workers
    // a request still gets one. (The image's default of 8 would leave it queued.)
    let idle: Vec<TcpStream> = (0..12)
        .map(|_| TcpStream::connect(("127.0.0.1", server.port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut c = Client {
        port: server.port,
        conn: None,
    };
    let t = Instant::now();
    let (status, body) = c.get("1k.html").unwrap();
    assert_eq!((status, body.len()), (200, 1024));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    drop(idle);
    drop(c);
    let err = server.stop(libc::SIGTERM);
    assert_eq!(threads_stat(&err), 16 + 2, "{err}");

    let server = Server::start(&["--stats"], &["-num_threads", "3"]);
    curl_all_files(&server);
    let err = server.stop(libc::SIGTERM);
    assert_eq!(threads_stat(&err), 3 + 2, "{err}");
}
