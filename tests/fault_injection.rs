//! `ditto pair --kill-primary-after` / `--kill-secondary-after`: a real redis pair, one
//! replica SIGKILLed by the supervisor at the time the flag chose, a real client over
//! 127.0.0.1 checking every reply; and the flags' bad values. Every wait is bounded; only
//! processes these tests start are signalled (the supervisor kills its own replica).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use replica::report::{Died, Outcome, Report};

/// The pairs take turns: one pair's timing is not another's load.
static ONE_PAIR_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_pair_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_PAIR_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn report(out: &Path) -> Report {
    Report::load(out.join("report.json")).expect("report.json")
}

/// The pid a replica's file in the run directory holds (written when the replicas start).
fn pid_file(out: &Path, role: &str) -> i32 {
    let text = std::fs::read_to_string(out.join(format!("{role}.pid")))
        .unwrap_or_else(|e| panic!("{role}.pid: {e}"));
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{role}.pid: {text:?}"))
}

/// Whether process `pid` is gone or a zombie (dead, not yet reaped by the supervisor).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name's closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

/// One RESP request on `conn`; the integer reply.
fn incr(conn: &mut BufReader<TcpStream>) -> i64 {
    conn.get_mut()
        .write_all(b"*2\r\n$4\r\nINCR\r\n$3\r\nctr\r\n")
        .expect("send INCR");
    let mut line = String::new();
    conn.read_line(&mut line).expect("read the INCR reply");
    line.strip_prefix(':')
        .and_then(|v| v.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("INCR replied {line:?}"))
}

/// What the client saw: replies before and after the replica's death, all correct, and
/// the longest wait for one reply (the client-visible stall around the death).
struct Seen {
    before: u64,
    after: u64,
    longest_wait: Duration,
}

/// INCRs `ctr` over one connection until the replica `victim` is dead and `after_death`
/// more replies came, each reply exactly the previous plus one; at most 90 s and 200,000
/// requests.
fn count_across_the_kill(port: u16, victim: i32, after_death: u64) -> Seen {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut conn = BufReader::new(stream);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = Seen {
        before: 0,
        after: 0,
        longest_wait: Duration::ZERO,
    };
    let mut last = 0;
    for _ in 0..200_000 {
        let asked = Instant::now();
        let v = incr(&mut conn);
        seen.longest_wait = seen.longest_wait.max(asked.elapsed());
        assert_eq!(v, last + 1, "a reply was lost or repeated");
        last = v;
        if dead(victim) {
            seen.after += 1;
            if seen.after >= after_death {
                return seen;
            }
        } else {
            seen.before += 1;
            // No need to hammer the pair while it replicates.
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(
            Instant::now() < deadline,
            "the replica {victim} was not killed within 90 s ({} replies)",
            seen.before
        );
    }
    panic!("200,000 requests and the replica {victim} is still alive");
}

/// The value of the sample `name` (no labels) on the pair's `/metrics` page at `port`.
fn metric(port: u16, name: &str) -> u64 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).expect("read /metrics");
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in {page}"))
}

/// Starts a redis pair with `flags`, waits until it serves; the pair and its port.
fn redis_pair(mode: &str, out: &Path, flags: &[&str]) -> (ServerProc, u16) {
    image_root("redis");
    let port = free_port();
    let mut c = ditto();
    c.args(["pair", "--quiet", "--mode", mode, "--out"])
        .arg(out)
        .args(flags)
        .args(["--image", "redis", "--", "--port", &port.to_string()]);
    let mut server = ServerProc::spawn(c);
    server.wait_port(port);
    (server, port)
}

/// The secondary killed mid-run: the primary keeps answering the same connection with
/// correct replies, the pair exits with the primary's status, and the report says it
/// failed over, with the kill's time; in both modes. With `--no-failover` the same death
/// is a replica failure (exit 4), still reported with its kill.
#[test]
fn a_killed_secondary_leaves_the_primary_serving() {
    let _turn = one_pair_at_a_time();
    for (mode, failover) in [("det", true), ("follow", true), ("follow", false)] {
        let out = tempdir();
        let metrics_port = free_port();
        let metrics_addr = format!("127.0.0.1:{metrics_port}");
        let mut flags = vec![
            "--kill-secondary-after",
            "3s..5s",
            "--metrics",
            &metrics_addr,
            "--status",
        ];
        if !failover {
            flags.push("--no-failover");
        }
        let (server, port) = redis_pair(mode, out.path(), &flags);
        let primary = pid_file(out.path(), "primary");
        let secondary = pid_file(out.path(), "secondary");
        assert_ne!(primary, secondary);
        let seen = count_across_the_kill(port, secondary, 300);
        assert!(
            !dead(primary),
            "{mode}: the primary died with the secondary"
        );
        assert_eq!(
            metric(metrics_port, "ditto_failovers_total"),
            failover as u64,
            "{mode}"
        );
        // The count the client kept is the server's.
        let total = seen.before + seen.after;
        assert_eq!(redis_cli(port, &["GET", "ctr"]), total.to_string());
        // The status line is printed once a second without a terminal: one more after the
        // death for sure.
        std::thread::sleep(Duration::from_millis(1500));
        let o = server.stop(libc::SIGTERM);
        // The status line shows the death.
        let err = stderr(&o);
        assert!(
            err.contains("ditto: the secondary (pid ")
                && err.contains("will be killed with SIGKILL at"),
            "{err}"
        );
        assert!(
            err.lines().any(|l| l.starts_with("ditto: pair ")
                && l.contains(", SECONDARY DIED at ")
                && l.ends_with("(killed by SIGKILL): primary serving unreplicated")),
            "{err}"
        );
        let r = report(out.path());
        let f = r.failover.clone().expect("a failover object");
        assert_eq!(f.died, Died::Secondary, "{}", r.summary());
        assert_eq!(f.how, "killed by SIGKILL", "{}", r.summary());
        let k = f.kill_after_seconds.expect("the injected kill's time");
        assert!((3.0..=5.0).contains(&k), "{mode}: kill at {k}");
        // Seen gone after the kill; not necessarily at once: a killed VMM's exit (its
        // guest memory torn down) took 3 s once on a loaded host.
        assert!(f.at_seconds >= k, "{mode}: {}", r.summary());
        assert_eq!(f.takeover_ms, None, "{}", r.summary());
        assert_eq!(r.secondary.exit.as_deref(), Some("killed by SIGKILL"));
        assert_eq!(r.primary.exit_status, Some(0), "{}", r.summary());
        if failover {
            assert_eq!(r.outcome, Outcome::FailedOver, "{}", r.summary());
            assert_eq!(o.status.code(), Some(0), "{mode}: {}", stderr(&o));
            assert!(r
                .summary()
                .starts_with("failed over: the secondary died (killed by SIGKILL, injected at "));
        } else {
            assert_eq!(r.outcome, Outcome::ReplicaFailed, "{}", r.summary());
            assert_eq!(o.status.code(), Some(4), "{mode}: {}", stderr(&o));
        }
        eprintln!(
            "{mode} failover={failover}: {} replies before the kill at {k:.3} s, {} after; longest wait for a reply {:.1} ms",
            seen.before,
            seen.after,
            seen.longest_wait.as_secs_f64() * 1000.0
        );
    }
}

/// The primary killed with `--no-failover`: today's replica failure (exit 4), and the
/// report has the death and the kill's time.
#[test]
fn a_killed_primary_without_failover_is_a_replica_failure() {
    let _turn = one_pair_at_a_time();
    image_root("redis");
    let out = tempdir();
    let port = free_port().to_string();
    let mut c = ditto();
    c.args(["pair", "--quiet", "--mode", "follow", "--out"])
        .arg(out.path())
        .args(["--no-failover", "--kill-primary-after", "1500ms"])
        .args(["--image", "redis", "--", "--port", &port]);
    // Nothing waits for redis to listen: the kill may come before it does.
    let o = output_within(c, 90);
    let primary = pid_file(out.path(), "primary");
    assert_ne!(primary, pid_file(out.path(), "secondary"));
    assert!(dead(primary));
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the primary (pid ") && stderr(&o).contains("at 1.500 s"),
        "{}",
        stderr(&o)
    );
    let r = report(out.path());
    assert_eq!(r.outcome, Outcome::ReplicaFailed, "{}", r.summary());
    assert_eq!(r.primary.exit.as_deref(), Some("killed by SIGKILL"));
    let f = r.failover.clone().expect("a failover object");
    assert_eq!(f.died, Died::Primary);
    assert_eq!(f.how, "killed by SIGKILL");
    assert_eq!(f.kill_after_seconds, Some(1.5));
    assert_eq!(f.takeover_ms, None);
    assert!(r
        .summary()
        .contains("failover:  the primary died (killed by SIGKILL, injected at 1.500 s)"));
}

/// The primary killed with failover on (the default): the secondary replays what the
/// primary logged, goes live and runs the program to its end; the pair exits with the
/// survivor's status and the report has the takeover; in both modes. The program is a
/// busybox shell counting in a loop without syscalls (no fork: ditto has none), long
/// enough to outlive the kill by seconds.
#[test]
fn a_killed_primary_fails_over_to_the_secondary() {
    let _turn = one_pair_at_a_time();
    for mode in ["det", "follow"] {
        let out = tempdir();
        let mut c = ditto();
        c.args(["pair", "--quiet", "--mode", mode, "--out"])
            .arg(out.path())
            .args(["--kill-primary-after", "1s", "--"])
            .arg(busybox())
            .args([
                "sh",
                "-c",
                "i=0; while [ $i -lt 4000000 ]; do i=$((i+1)); done; echo done $i; exit 3",
            ]);
        let o = output_within(c, 180);
        let r = report(out.path());
        assert_eq!(r.outcome, Outcome::FailedOver, "{mode}: {}", r.summary());
        assert_eq!(o.status.code(), Some(3), "{mode}: {}", stderr(&o));
        // The survivor wrote to the primary's stdout, which it took over.
        assert_eq!(stdout(&o), "done 4000000\n", "{mode}: {}", stderr(&o));
        assert_eq!(r.primary.exit.as_deref(), Some("killed by SIGKILL"));
        assert_eq!(
            r.secondary.exit.as_deref(),
            Some("exited 3"),
            "{}",
            r.summary()
        );
        let f = r.failover.clone().expect("a failover object");
        assert_eq!(f.died, Died::Primary);
        assert_eq!(f.how, "killed by SIGKILL");
        assert_eq!(f.kill_after_seconds, Some(1.0));
        assert!(f.at_seconds >= 1.0, "{}", r.summary());
        assert!(f.noticed.is_some(), "{}", r.summary());
        let ms = f.takeover_ms.expect("the takeover time");
        assert!((0.0..60_000.0).contains(&ms), "{}", r.summary());
        assert!(f.records_drained.is_some() && f.output_bytes_skipped.is_some());
        // At least stdin, stdout and stderr.
        assert!(f.descriptors >= Some(3), "{}", r.summary());
        assert!(
            r.summary().starts_with(
                "failed over: the primary died (killed by SIGKILL, injected at 1.000 s)"
            ),
            "{}",
            r.summary()
        );
        eprintln!("{mode}: {}", r.summary().lines().next().unwrap());
    }
}

/// Bad DURATION values and both flags at once: one line of error, exit 2, before any
/// replica starts.
#[test]
fn bad_kill_times_are_one_line_errors() {
    for (flags, what) in [
        (
            vec!["--kill-primary-after", "soon"],
            "'soon' is not a duration",
        ),
        (vec!["--kill-secondary-after", "5"], "'5' is not a duration"),
        (
            vec!["--kill-primary-after", "1.5h"],
            "'1.5h' is not a duration",
        ),
        (vec!["--kill-primary-after=-1s"], "'-1s' is not a duration"),
        (
            vec!["--kill-secondary-after", "3s..1s"],
            "ends before it starts",
        ),
        (
            vec!["--kill-primary-after", "2000m"],
            "longer than 24 hours",
        ),
        (
            vec!["--kill-primary-after", "1s", "--kill-secondary-after", "1s"],
            "exclude each other",
        ),
    ] {
        let o = ditto()
            .arg("pair")
            .args(&flags)
            .arg("--")
            .arg(prog("hello"))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{flags:?}: {err}");
        assert!(err.starts_with("ditto: --kill-"), "{err}");
        assert!(err.contains(what), "{flags:?}: {err}");
    }
}
