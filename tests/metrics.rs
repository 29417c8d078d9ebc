//! `ditto pair --metrics ADDR`: a real redis pair under redis-benchmark, scraped over HTTP
//! while it serves, and the flag's bad input.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use replica::report::{Outcome, Report};

/// One HTTP/1.1 request to 127.0.0.1:`port`; the status line and the body.
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read the reply");
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    let status = head.lines().next().unwrap_or_default().to_string();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Content-Length");
    assert_eq!(body.len(), len, "body length vs Content-Length");
    (status, body.to_string())
}

/// The samples of a Prometheus text page, keyed by `name{labels}`; every sample's family
/// must have been announced by a TYPE line.
fn parse(text: &str) -> HashMap<String, u64> {
    let mut typed = Vec::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.push(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("sample line");
        let name = key.split('{').next().unwrap();
        assert!(typed.iter().any(|t| t == name), "{name} has no TYPE line");
        samples.insert(key.to_string(), value.parse().expect("integer sample"));
    }
    samples
}

fn get(m: &HashMap<String, u64>, key: &str) -> u64 {
    *m.get(key).unwrap_or_else(|| panic!("{key} missing: {m:?}"))
}

#[test]
fn a_redis_pair_is_scraped_under_load() {
    image_root("redis");
    let port = free_port();
    let metrics_port = free_port();
    let out = tempdir();
    let mut c = ditto();
    // Follow mode: this test is about the endpoint, not the schedule. (A det-mode redis
    // pair under this load used to diverge now and then, a lagging secondary's re-entry
    // refused after the primary's end: fixed in session 11, see README.)
    c.args(["pair", "--quiet", "--mode", "follow", "--out"])
        .arg(out.path())
        .args(["--metrics", &format!("127.0.0.1:{metrics_port}")])
        .args(["--image", "redis", "--", "--port", &port.to_string()]);
    let mut server = ServerProc::spawn(c);
    server.wait_port(port);

    let p = port.to_string();
    let load = std::thread::spawn(move || {
        client(&[
            "redis-benchmark",
            "-p",
            &p,
            "-n",
            "3000",
            "-c",
            "4",
            "-t",
            "set,get",
            "-q",
        ])
    });
    // Scrape while the load runs (bounded in count and time).
    let mut scrapes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !load.is_finished() && scrapes.len() < 200 && Instant::now() < deadline {
        let (status, body) = http_get(metrics_port, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        scrapes.push(parse(&body));
        std::thread::sleep(Duration::from_millis(100));
    }
    let bench = load.join().unwrap();
    assert!(bench.contains("GET: "), "{bench}");
    let (status, body) = http_get(metrics_port, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let last = parse(&body);
    scrapes.push(last.clone());
    assert!(
        scrapes.len() >= 3,
        "only {} scrapes under load",
        scrapes.len()
    );

    // Counters only grow, and grew under the load.
    for key in [
        "ditto_records_total",
        "ditto_record_bytes_total",
        "ditto_records_consumed_total",
        "ditto_exits_total{role=\"primary\"}",
    ] {
        let values: Vec<u64> = scrapes.iter().map(|m| get(m, key)).collect();
        assert!(values.windows(2).all(|w| w[0] <= w[1]), "{key}: {values:?}");
        assert!(
            values.last() > values.first(),
            "{key} did not grow: {values:?}"
        );
    }
    for m in &scrapes {
        assert_eq!(get(m, "ditto_replica_up{role=\"primary\"}"), 1);
        assert_eq!(get(m, "ditto_replica_up{role=\"secondary\"}"), 1);
        assert_eq!(get(m, "ditto_diverged"), 0);
        assert!(get(m, "ditto_lag_records") <= get(m, "ditto_records_total"));
    }
    // redis reads its clients' sockets (recorded) and answers them (compared).
    for role in ["primary", "secondary"] {
        for class in ["recorded", "input_by_fd", "output_by_fd"] {
            let key = format!("ditto_syscalls_total{{role=\"{role}\",class=\"{class}\"}}");
            assert!(get(&last, &key) > 0, "{key}: {body}");
        }
        assert!(get(&last, &format!("ditto_turns_total{{role=\"{role}\"}}")) > 0);
    }
    assert!(get(&last, "ditto_outputs_compared_total") > 0, "{body}");
    assert_eq!(get(&last, "ditto_pair_info{mode=\"follow\"}"), 1);

    // Another path is not the endpoint.
    let (status, _) = http_get(metrics_port, "/");
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");

    let o = server.stop(libc::SIGTERM);
    let r = Report::load(out.path().join("report.json")).expect("report.json");
    assert_eq!(r.outcome, Outcome::Identical, "{}", r.summary());
    assert!(o.status.success(), "{}", stderr(&o));
    // The report's totals include everything scraped before.
    assert!(r.counters.records >= get(&last, "ditto_records_total"));
    assert!(r.counters.compared_outputs >= get(&last, "ditto_outputs_compared_total"));
    // The endpoint lives as long as the pair.
    assert!(TcpStream::connect(("127.0.0.1", metrics_port)).is_err());
}

#[test]
fn a_metrics_address_in_use_is_a_one_line_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut c = ditto();
    c.args(["pair", "--quiet", "--metrics", &addr, "--"])
        .arg(prog("hello"));
    let o = output_within(c, 60);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--metrics") && err.contains(&addr), "{err}");

    let mut c = ditto();
    c.args(["pair", "--metrics", "not-an-address", "--"])
        .arg(prog("hello"));
    let o = output_within(c, 60);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not-an-address"), "{}", stderr(&o));
}
