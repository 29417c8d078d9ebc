//! Failover (issue 14, docs/pair.md "Failover"): real clients over 127.0.0.1 talk to a pair
//! while this test SIGKILLs one replica's VMM at a random point. The survivor must keep every
//! connection, lose and repeat nothing, and the report must say `failed_over`.
//!
//! - redis under a client that sends `INCR ctr` over one connection: every reply is the
//!   previous plus one, across the kill, and `GET ctr` afterwards is the client's count
//!   ([`REDIS_KILLS_PER_MODE`] kills in each mode).
//! - A 50 MB download from nginx, the primary killed mid-transfer: the body is complete and
//!   byte-identical.
//! - civetweb under wrk, the primary killed: every response byte-identical (wrk's Lua hook
//!   compares each body), no socket error or timeout, and a later request is served.
//! - poolwrite, a thread pool writing numbered records into a host file (pwrite and
//!   O_APPEND), the primary killed mid-way: the file is what a native run writes.
//! - The secondary killed: the primary keeps serving and the report says so.
//!
//! Kill points are random; the seed is printed, and `FAILOVER_SEED=N` replays one. Only the
//! replica processes of pairs these tests started are killed, by the PIDs their pair wrote
//! (`OUT/primary.pid`, `OUT/secondary.pid`), checked to be that pair's children first. Every
//! wait is bounded in count and time.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

/// `ditto pair`'s modes.
const MODES: [&str; 2] = ["det", "follow"];

/// How many times the redis test kills a primary in each mode (issue 14 asks for 20). Each
/// kill is a fresh pair: about ... s per kill on the 2-core CI machine (see the report).
const REDIS_KILLS_PER_MODE: usize = 20;

/// How long a client waits for one reply before the test fails: far above the issue's
/// aim for the client-visible stall (200 ms), far below "the service is gone".
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A pair takes two cores (one per replica); these machines have two.
static ONE_PAIR_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_pair_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_PAIR_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Random kill points: xorshift64*, seeded from `FAILOVER_SEED` or the clock. The seed is
/// printed so that a failing kill point can be replayed.
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Rng {
        let seed = std::env::var("FAILOVER_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("{test}: FAILOVER_SEED={seed}");
        Rng(seed | 1)
    }

    /// Uniform in `lo..hi` (well enough for kill points).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        lo + self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % (hi - lo).max(1)
    }
}

/// `ditto pair --quiet --mode MODE --out OUT ARGS...`, started in `cwd` when given.
fn start_pair(mode: &str, out: &Path, cwd: Option<&Path>, args: &[&str]) -> ServerProc {
    let mut c = ditto();
    if let Some(dir) = cwd {
        c.current_dir(dir);
    }
    c.args(["pair", "--quiet", "--mode", mode, "--out"])
        .arg(out)
        .args(args);
    ServerProc::spawn(c)
}

/// The processes `pid` started, from /proc/PID/task/TID/children.
fn children(pid: u32) -> Vec<i32> {
    let mut kids = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
    {
        let Ok(t) = t else { continue };
        let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        kids.extend(
            text.split_whitespace()
                .filter_map(|k| k.parse::<i32>().ok()),
        );
    }
    kids
}

/// SIGKILLs the `role` replica of the pair `pair` (whose run directory is `out`) and returns
/// when. The PID comes from `OUT/<role>.pid` and must be a child of the pair's process.
fn kill_replica(pair_pid: u32, out: &Path, role: &str) -> Instant {
    let file = out.join(format!("{role}.pid"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "no {} within 10 s",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        children(pair_pid).contains(&pid),
        "{role}.pid says {pid}, which is no child of the pair {pair_pid}"
    );
    // SAFETY: SIGKILL to a replica VMM of the pair this test started: its PID is the pair's
    // record and a child of that pair's process (checked just above).
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(
        rc,
        0,
        "kill {role} {pid}: {}",
        std::io::Error::last_os_error()
    );
    Instant::now()
}

/// The pair's report as JSON. Read as a plain value: the `failover` object is issue 14's.
fn report_json(out: &Path) -> serde_json::Value {
    let path = out.join("report.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Checks that the report says the pair failed over after `died` died; its `failover`
/// object.
fn assert_failed_over(out: &Path, died: &str, what: &str) -> serde_json::Value {
    let r = report_json(out);
    assert_eq!(
        r["outcome"], "failed_over",
        "{what}: the report does not say failed_over: {r:#}"
    );
    let f = r["failover"].clone();
    assert_eq!(f["died"], died, "{what}: {f:#}");
    assert_eq!(f["how"], "killed by SIGKILL", "{what}: {f:#}");
    // The takeover's fields are the secondary's: null when the secondary is the one that
    // died and the primary simply serves on.
    let mut keys = vec!["at_seconds"];
    if died == "primary" {
        keys.extend([
            "takeover_ms",
            "records_drained",
            "descriptors",
            "connections",
        ]);
    }
    for key in keys {
        assert!(!f[key].is_null(), "{what}: failover.{key} missing: {f:#}");
    }
    f
}

/// Stops a pair that failed over (SIGTERM to `ditto pair`, which forwards it to the
/// survivor) once the server on `port` has closed its connections.
fn stop_pair(pair: ServerProc, port: u16, what: &str) -> std::process::Output {
    assert!(
        wait_connections_closed(port, 20),
        "{what}: the server did not close its connections"
    );
    let (o, killed) = pair.stop_or_kill(libc::SIGTERM, 20);
    assert!(
        !killed,
        "{what}: the pair did not stop within 20 s of SIGTERM; stderr ends:\n{}",
        tail(&stderr(&o))
    );
    assert!(!stderr(&o).contains("panicked"), "{what}: {}", stderr(&o));
    o
}

/// The last 10 lines of `text`.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Stops a pair whose test failed (if it still runs; killed with its replicas if SIGTERM
/// does not end it within 20 s) and says how it ended: its exit status, its report's
/// outcome and errors, and the last lines of its stderr.
fn pair_end(pair: ServerProc, out: &Path) -> String {
    let (o, killed) = pair.stop_or_kill(libc::SIGTERM, 20);
    let r: serde_json::Value = std::fs::read_to_string(out.join("report.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    format!(
        "the pair ended with {}{}; report: outcome {}, primary {} {}, secondary {} {}; stderr ends:\n{}",
        o.status,
        if killed { " (killed: SIGTERM did not stop it within 20 s)" } else { "" },
        r["outcome"],
        r["primary"]["exit"],
        r["primary"]["error"],
        r["secondary"]["exit"],
        r["secondary"]["error"],
        tail(&stderr(&o))
    )
}

/// A redis client that sends `INCR ctr` over one connection and checks every reply.
struct IncrClient {
    w: TcpStream,
    r: BufReader<TcpStream>,
    /// The replies so far, each the previous plus one.
    count: u64,
}

impl IncrClient {
    fn connect(port: u16) -> IncrClient {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
        s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        IncrClient {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
            count: 0,
        }
    }

    /// One `INCR ctr`; an error in words when the reply is missing or not `count + 1`.
    fn incr(&mut self) -> Result<(), String> {
        self.w
            .write_all(b"INCR ctr\r\n")
            .map_err(|e| format!("sending INCR #{}: {e}", self.count + 1))?;
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) => {
                return Err(format!(
                    "the connection closed before reply #{}",
                    self.count + 1
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(format!("reading reply #{}: {e}", self.count + 1)),
        }
        let want = format!(":{}\r\n", self.count + 1);
        if line != want {
            return Err(format!("reply {line:?} where {want:?} was due"));
        }
        self.count += 1;
        Ok(())
    }
}

/// One redis pair, one client, one kill of `role` at a random point: the client's count
/// runs on without a gap or a repeat, and `GET ctr` on a new connection equals it.
fn redis_incr_across_a_kill(mode: &str, role: &str, rng: &mut Rng, what: &str) {
    let port = free_port();
    let p = port.to_string();
    let out = tempdir();
    let mut pair = start_pair(
        mode,
        out.path(),
        None,
        &["--image", "redis", "--", "--port", &p],
    );
    pair.wait_port(port);
    let pair_pid = pair.id();
    let mut client = IncrClient::connect(port);
    // The kill comes from another thread, at a random time: it may land while redis reads,
    // computes or writes a reply. Not before the first reply, though: that reply shows the
    // connection's accept is in the log (it waited for output commit), so the kill cannot
    // fall in the window the design leaves between an accept and its descriptor reaching
    // the secondary.
    let replies = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let kill_after = Duration::from_millis(rng.range(50, 1500));
    let started = Instant::now();
    let killer = {
        let replies = replies.clone();
        let out = out.path().to_path_buf();
        let role = role.to_string();
        std::thread::spawn(move || {
            let limit = Instant::now() + Duration::from_secs(30);
            while started.elapsed() < kill_after
                || replies.load(std::sync::atomic::Ordering::Relaxed) == 0
            {
                if Instant::now() > limit {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let n = replies.load(std::sync::atomic::Ordering::Relaxed);
            Some((kill_replica(pair_pid, &out, &role), n))
        })
    };
    let mut killer = Some(killer);
    let mut killed: Option<(Instant, u64)> = None;
    let deadline = started + Duration::from_secs(60);
    // The client runs as fast as the pair answers; after the kill, until it has 200 more
    // replies and half a second has passed.
    loop {
        if killer.as_ref().is_some_and(|k| k.is_finished()) {
            let k = killer.take().unwrap().join().expect("the killer thread");
            killed = Some(k.unwrap_or_else(|| panic!("{what}: no reply within 30 s")));
        }
        if let Some((at, n)) = killed {
            if client.count >= n + 200 && at.elapsed() >= Duration::from_millis(500) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "{what}: the client ran 60 s");
        if let Err(e) = client.incr() {
            // The kill may be under way: wait for the killer (bounded by its own limit).
            if let Some(k) = killer.take() {
                killed = k.join().expect("the killer thread");
            }
            let when = match killed {
                Some((at, n)) => format!(
                    "{} replies after the kill ({} ms ago)",
                    client.count.saturating_sub(n),
                    at.elapsed().as_millis()
                ),
                None => "before the kill".into(),
            };
            panic!(
                "{what}: {e} ({when}, {} replies in all); {}",
                client.count,
                pair_end(pair, out.path())
            );
        }
        replies.store(client.count, std::sync::atomic::Ordering::Relaxed);
    }
    let count = client.count;
    drop(client);
    assert_eq!(
        redis_cli(port, &["GET", "ctr"]),
        count.to_string(),
        "{what}: GET ctr after the failover"
    );
    stop_pair(pair, port, what);
    let f = assert_failed_over(out.path(), role, what);
    if role == "primary" {
        assert!(
            f["connections"].as_u64() >= Some(1),
            "{what}: the client's connection is not among those taken over: {f:#}"
        );
    }
}

#[test]
fn redis_counts_on_across_primary_kills_in_both_modes() {
    let _turn = one_pair_at_a_time();
    image_root("redis");
    let mut rng = Rng::new("redis_counts_on_across_primary_kills_in_both_modes");
    let t0 = Instant::now();
    for mode in MODES {
        for round in 0..REDIS_KILLS_PER_MODE {
            let what = format!("{mode} kill {}/{REDIS_KILLS_PER_MODE}", round + 1);
            redis_incr_across_a_kill(mode, "primary", &mut rng, &what);
        }
    }
    eprintln!(
        "{} redis kills in {:.1} s",
        2 * REDIS_KILLS_PER_MODE,
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn the_primary_serves_on_when_the_secondary_is_killed() {
    let _turn = one_pair_at_a_time();
    image_root("redis");
    let mut rng = Rng::new("the_primary_serves_on_when_the_secondary_is_killed");
    for mode in MODES {
        redis_incr_across_a_kill(
            mode,
            "secondary",
            &mut rng,
            &format!("{mode}, secondary killed"),
        );
    }
}

/// Reads an HTTP/1.1 response head from `r`; its status line and Content-Length.
fn read_head(r: &mut impl BufRead) -> (String, u64) {
    let mut status = String::new();
    r.read_line(&mut status).expect("status line");
    let mut len = None;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("header line");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok();
            }
        }
    }
    (status.trim_end().to_string(), len.expect("Content-Length"))
}

#[test]
fn a_50_mb_download_from_nginx_survives_a_primary_kill() {
    let _turn = one_pair_at_a_time();
    const SIZE: usize = 50 << 20;
    let mut rng = Rng::new("a_50_mb_download_from_nginx_survives_a_primary_kill");
    for mode in MODES {
        let port = free_port();
        // Pairs run nginx without its thread pool (docs/pair.md, Limits).
        let state = nginx_state_with(port, "big.bin", SIZE, false);
        let want = Sha256::digest(std::fs::read(state.path().join("srv/www/big.bin")).unwrap());
        let out = tempdir();
        let st = state.path().to_str().unwrap();
        let mut pair = start_pair(mode, out.path(), None, &["--image", "nginx", "--state", st]);
        pair.wait_port(port);
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut r = BufReader::with_capacity(1 << 16, s);
        let (status, len) = read_head(&mut r);
        assert_eq!(status, "HTTP/1.1 200 OK", "{mode}");
        assert_eq!(len, SIZE as u64, "{mode}");
        // Kill somewhere between 5 and 40 MB: the loopback socket buffers hold a few MB, so
        // nginx still has at least 10 MB to send. The client stops reading for 100 ms first,
        // so that the primary is blocked in a send with a full buffer when it dies.
        let kill_at = rng.range(5 << 20, 40 << 20);
        let mut hash = Sha256::new();
        let mut got = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        let mut killed = false;
        let what = format!("{mode}: kill at {kill_at} bytes");
        while got < len {
            if !killed && got >= kill_at {
                std::thread::sleep(Duration::from_millis(100));
                kill_replica(pair.id(), out.path(), "primary");
                killed = true;
            }
            let want_now = buf.len().min((len - got) as usize);
            match r.read(&mut buf[..want_now]) {
                Ok(0) => panic!(
                    "{what}: the body ended after {got} of {len} bytes; {}",
                    pair_end(pair, out.path())
                ),
                Ok(n) => {
                    hash.update(&buf[..n]);
                    got += n as u64;
                }
                Err(e) => panic!(
                    "{what}: after {got} of {len} bytes: {e}; {}",
                    pair_end(pair, out.path())
                ),
            }
        }
        assert!(killed, "{what}: the body ended before the kill point");
        assert_eq!(hash.finalize(), want, "{what}: the body differs");
        // Connection: close: nothing follows the body but the end of the stream.
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest);
        assert!(
            rest.is_empty(),
            "{what}: {} bytes after the body",
            rest.len()
        );
        // The survivor serves a new request.
        let page = Command::new("curl")
            .args(["-sSf", "-m", "20", &format!("http://127.0.0.1:{port}/")])
            .output()
            .unwrap();
        if !page.status.success() {
            panic!(
                "{what}: curl after the failover: {}; {}",
                stderr(&page),
                pair_end(pair, out.path())
            );
        }
        let index = std::fs::read(image_root("nginx").join("srv/www/index.html")).unwrap();
        assert_eq!(
            page.stdout, index,
            "{what}: the index page after the failover"
        );
        stop_pair(pair, port, &what);
        assert_failed_over(out.path(), "primary", &what);
    }
}

/// wrk's Lua hooks: every response's status and body are checked against the expected file
/// (its path is the script's first argument); `done` prints the totals of all threads.
const WRK_CHECK: &str = r#"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  local f = assert(io.open(args[1], "rb"))
  expected = f:read("*a")
  f:close()
  good = 0
  bad = 0
end
function response(status, headers, body)
  if status == 200 and body == expected then good = good + 1 else bad = bad + 1 end
end
function done(summary, latency, requests)
  local g, b = 0, 0
  for _, t in ipairs(threads) do g = g + t:get("good"); b = b + t:get("bad") end
  io.write(string.format("failover-check good=%d bad=%d\n", g, b))
end
"#;

/// civetweb under wrk (8 keep-alive connections, 6 s) with the primary killed 1 to 2.5 s in.
///
/// Allowed: no socket error of any kind (connect, read, write, timeout) and no response that
/// is not the file, byte for byte. The issue promises that clients see no reset and that no
/// output is lost or repeated; wrk's connections are all open long before the kill, so the
/// one window the design leaves (a connection the primary accepted but never passed on)
/// cannot arise. wrk's timeout (2 s) is 10 times the aim for the stall (200 ms), and the run
/// goes on at least 3.5 s after the kill, so a server that stalls shows as timeouts (with a
/// longer timeout than what is left of the run, requests stuck at the end count as nothing).
#[test]
fn civetweb_under_wrk_survives_a_primary_kill() {
    let _turn = one_pair_at_a_time();
    let root = image_root("mongoose");
    let file = root.join("srv/www/50k.html");
    let mut rng = Rng::new("civetweb_under_wrk_survives_a_primary_kill");
    let scripts = tempdir();
    let script = scripts.path().join("check.lua");
    std::fs::write(&script, WRK_CHECK).unwrap();
    for mode in MODES {
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
        let out = tempdir();
        let st = state.path().to_str().unwrap();
        let mut pair = start_pair(
            mode,
            out.path(),
            None,
            &["--image", "mongoose", "--state", st],
        );
        pair.wait_port(port);
        let kill_after = Duration::from_millis(rng.range(1000, 2500));
        let what = format!("{mode}: kill {} ms into wrk", kill_after.as_millis());
        let pair_pid = pair.id();
        let out_dir = out.path().to_path_buf();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(kill_after);
            kill_replica(pair_pid, &out_dir, "primary");
        });
        let url = format!("http://127.0.0.1:{port}/50k.html");
        let mut wrk = Command::new("wrk");
        wrk.args(["-t2", "-c8", "-d6s", "--timeout", "2s", "-s"])
            .arg(&script)
            .arg(&url)
            .arg("--")
            .arg(&file);
        let o = output_within(wrk, 60);
        killer.join().expect("the killer thread");
        let text = stdout(&o);
        if !o.status.success()
            || !text.contains("Requests/sec")
            || text.contains("Socket errors")
            || text.contains("Non-2xx or 3xx")
        {
            panic!(
                "{what}: wrk: {text}{}; {}",
                stderr(&o),
                pair_end(pair, out.path())
            );
        }
        let (good, bad) = text
            .lines()
            .find_map(|l| l.strip_prefix("failover-check good="))
            .and_then(|l| l.split_once(" bad="))
            .map(|(g, b)| (g.parse::<u64>().unwrap(), b.trim().parse::<u64>().unwrap()))
            .unwrap_or_else(|| panic!("{what}: no check line: {text}"));
        assert_eq!(bad, 0, "{what}: {bad} responses were not the file: {text}");
        let requests: u64 = text
            .lines()
            .find_map(|l| l.trim().split_once(" requests in "))
            .and_then(|(n, _)| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{what}: no request count: {text}"));
        assert!(good > 0 && good == requests, "{what}: {text}");
        // A new connection is served too.
        let page = Command::new("curl")
            .args(["-sSf", "-m", "20", &url])
            .output()
            .unwrap();
        if !page.status.success() {
            panic!(
                "{what}: curl after the failover: {}; {}",
                stderr(&page),
                pair_end(pair, out.path())
            );
        }
        assert_eq!(page.stdout, std::fs::read(&file).unwrap(), "{what}");
        stop_pair(pair, port, &what);
        assert_failed_over(out.path(), "primary", &what);
    }
}

/// poolwrite's arguments: threads, records per thread, microseconds of sleep per record.
const POOL: [&str; 3] = ["4", "250", "4000"];
/// The size of the file poolwrite writes: 64 bytes per record.
const POOL_BYTES: u64 = 4 * 250 * 64;

/// A thread pool writes numbered records to a host file (docs/pair.md, Host files) and the
/// primary is killed once a random 20 to 60 % of them are in the file: the file ends up what
/// a native run writes (pwrite: byte for byte; O_APPEND: the same records, each once, in
/// whatever order the threads ran), and the program's one line of output appears once.
#[test]
fn a_thread_pool_writing_a_host_file_survives_a_primary_kill() {
    let _turn = one_pair_at_a_time();
    let prog = prog("poolwrite-dyn");
    let mut rng = Rng::new("a_thread_pool_writing_a_host_file_survives_a_primary_kill");
    for how in ["pwrite", "append"] {
        let native_dir = tempdir();
        let native = Command::new(&prog)
            .arg(how)
            .args(POOL)
            .current_dir(native_dir.path())
            .output()
            .unwrap();
        assert!(native.status.success(), "native {how}: {}", stdout(&native));
        let native_file = std::fs::read(native_dir.path().join("records.bin")).unwrap();
        assert_eq!(native_file.len() as u64, POOL_BYTES);
        for mode in MODES {
            let dir = tempdir();
            let out = tempdir();
            let mut args = vec!["--", prog.to_str().unwrap(), how];
            args.extend(POOL);
            let pair = start_pair(mode, out.path(), Some(dir.path()), &args);
            let kill_at = rng.range(POOL_BYTES / 5, POOL_BYTES * 3 / 5);
            let what = format!("{mode} {how}: kill at {kill_at} of {POOL_BYTES} bytes");
            let records = dir.path().join("records.bin");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let len = std::fs::metadata(&records).map_or(0, |m| m.len());
                if len >= kill_at {
                    assert!(
                        len < POOL_BYTES,
                        "{what}: the file was complete before the kill"
                    );
                    break;
                }
                if Instant::now() > deadline {
                    panic!(
                        "{what}: {len} bytes after 60 s; {}",
                        pair_end(pair, out.path())
                    );
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            kill_replica(pair.id(), out.path(), "primary");
            let o = pair.wait_exit(120);
            let r = report_json(out.path());
            assert_eq!(
                stdout(&o),
                stdout(&native),
                "{what}: stdout; the pair ended with {}, outcome {}, primary {}, secondary {} {}",
                o.status,
                r["outcome"],
                r["primary"]["exit"],
                r["secondary"]["exit"],
                r["secondary"]["error"]
            );
            let file = std::fs::read(&records).unwrap();
            if how == "pwrite" {
                assert!(
                    file == native_file,
                    "{what}: the file differs from the native run's"
                );
            } else {
                let sorted = |b: &[u8]| {
                    let mut v: Vec<Vec<u8>> = b.chunks(64).map(|c| c.to_vec()).collect();
                    v.sort();
                    v
                };
                assert!(
                    sorted(&file) == sorted(&native_file),
                    "{what}: the records differ from the native run's"
                );
            }
            let f = assert_failed_over(out.path(), "primary", &what);
            assert!(f["descriptors"].as_u64() >= Some(1), "{what}: {f:#}");
            assert_eq!(r["secondary"]["exit_status"], 0, "{what}: {r:#}");
        }
    }
}

/// A pair stopped (SIGTERM to `ditto pair`) 20 ms after its primary was killed stops, and
/// its report says the primary died, killed by SIGKILL: `replica_failed` with
/// `--no-failover`; by default `failed_over` if the secondary went live before the stop
/// reached it, else `replica_failed`. Never `identical` (on e5f12d5 it said `identical`, with
/// the primary "killed by signal 9").
#[test]
fn a_pair_stopped_just_after_its_primary_died_does_not_report_identical() {
    let _turn = one_pair_at_a_time();
    image_root("redis");
    for (flag, allowed) in [
        (None, &["failed_over", "replica_failed"][..]),
        (Some("--no-failover"), &["replica_failed"][..]),
    ] {
        for mode in MODES {
            let port = free_port();
            let p = port.to_string();
            let out = tempdir();
            let mut args: Vec<&str> = flag.into_iter().collect();
            args.extend(["--image", "redis", "--", "--port", &p]);
            let mut pair = start_pair(mode, out.path(), None, &args);
            pair.wait_port(port);
            kill_replica(pair.id(), out.path(), "primary");
            std::thread::sleep(Duration::from_millis(20));
            let (o, killed) = pair.stop_or_kill(libc::SIGTERM, 20);
            let what = format!("{mode} {flag:?}");
            assert!(
                !killed,
                "{what}: SIGTERM did not stop the pair within 20 s; stderr ends:\n{}",
                tail(&stderr(&o))
            );
            let r = report_json(out.path());
            let outcome = r["outcome"].as_str().unwrap_or_default();
            assert!(
                allowed.contains(&outcome),
                "{what}: exit {}; {r:#}",
                o.status
            );
            assert_eq!(r["failover"]["died"], "primary", "{what}: {r:#}");
            assert_eq!(r["failover"]["how"], "killed by SIGKILL", "{what}: {r:#}");
        }
    }
}
