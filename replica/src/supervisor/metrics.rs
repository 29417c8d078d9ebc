//! `ditto pair --metrics ADDR`: the pair's counters as Prometheus text at `/metrics`, served
//! by the supervisor's own event loop while the pair runs.
//!
//! The numbers come from the status page (what both replicas publish) and the [`Pair`]
//! (which replica still runs), so scraping costs the replicas nothing. The endpoint is a
//! subscriber of the loop, not a thread: the listener and every connection are
//! non-blocking fds in the same epoll set, so a slow or silent client can never hold the
//! supervisor, and under its seccomp filter the endpoint needs only accept4, recvfrom, sendto
//! and ioctl(FIONBIO). At most [`MAX_CONNECTIONS`] clients are served at once; a request larger than
//! [`MAX_REQUEST`] or a method other than GET gets an error status and is closed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::events::SharedPair;
use crate::role::Mode;
use crate::status::{Counter, StatusPage, SYSCALL_CLASSES};

/// Clients served at once; more are accepted and closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// The largest request head read; a longer one is answered 431 and closed.
pub const MAX_REQUEST: usize = 8192;

/// One client: what it sent so far, then what is left to write back.
struct Connection {
    stream: TcpStream,
    request: Vec<u8>,
    reply: Option<(Vec<u8>, usize)>,
}

/// The `/metrics` endpoint, one subscriber of the supervisor's loop.
pub(super) struct MetricsEndpoint<'a> {
    listener: TcpListener,
    connections: HashMap<RawFd, Connection>,
    status: &'a StatusPage,
    mode: Mode,
    pair: SharedPair,
}

impl<'a> MetricsEndpoint<'a> {
    /// Serves on `listener` (bound by the caller, so that a bad address is the caller's
    /// one-line error before any replica starts).
    pub fn new(
        listener: TcpListener,
        status: &'a StatusPage,
        mode: Mode,
        pair: SharedPair,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(MetricsEndpoint {
            listener,
            connections: HashMap::new(),
            status,
            mode,
            pair,
        })
    }

    fn accept_all(&mut self, ops: &mut EventOps) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock: all taken; anything else (ECONNABORTED, EMFILE): that client
                // is gone or cannot be served now, the listener stays.
                Err(_) => return,
            };
            if self.connections.len() >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            if ops.add(Events::new(&stream, EventSet::IN)).is_err() {
                continue;
            }
            self.connections.insert(
                fd,
                Connection {
                    stream,
                    request: Vec::new(),
                    reply: None,
                },
            );
        }
    }

    /// Reads what `fd`'s client sent; once the head is complete, answers it.
    /// Returns false when the connection is done (answered, failed or closed).
    fn serve(&mut self, fd: RawFd, ops: &mut EventOps) -> bool {
        let Some(conn) = self.connections.get_mut(&fd) else {
            return false;
        };
        if conn.reply.is_none() {
            let mut buf = [0u8; 2048];
            loop {
                match conn.stream.read(&mut buf) {
                    Ok(0) => return false,
                    Ok(n) => conn.request.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => return false,
                }
                if conn.request.len() > MAX_REQUEST {
                    break;
                }
            }
            let complete = conn.request.windows(4).any(|w| w == b"\r\n\r\n");
            if !complete && conn.request.len() <= MAX_REQUEST {
                return true;
            }
            let body = render(self.status, self.mode, &self.pair);
            conn.reply = Some((respond(&conn.request, &body), 0));
        }
        let Some((reply, sent)) = conn.reply.as_mut() else {
            return false;
        };
        while *sent < reply.len() {
            match conn.stream.write(&reply[*sent..]) {
                Ok(0) => return false,
                Ok(n) => *sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The rest when the client reads: wait for room, not for input.
                    let _ = ops.modify(Events::new(&conn.stream, EventSet::OUT));
                    return true;
                }
                Err(_) => return false,
            }
        }
        false
    }
}

impl MutEventSubscriber for MetricsEndpoint<'_> {
    fn init(&mut self, ops: &mut EventOps) {
        super::events::registered(
            "metrics listener",
            ops.add(Events::new(&self.listener, EventSet::IN)),
        );
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.listener.as_raw_fd() {
            self.accept_all(ops);
            return;
        }
        let hung_up = events
            .event_set()
            .intersects(EventSet::ERROR | EventSet::HANG_UP)
            && !events.event_set().contains(EventSet::IN);
        if hung_up || !self.serve(fd, ops) {
            if let Some(conn) = self.connections.remove(&fd) {
                let _ = ops.remove(Events::new(&conn.stream, EventSet::empty()));
            }
        }
    }
}

/// The HTTP reply to `request`: the metrics for `GET /metrics`, an error status otherwise.
fn respond(request: &[u8], body: &str) -> Vec<u8> {
    let head_end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(request.len());
    let line = request[..head_end]
        .split(|&b| b == b'\n')
        .next()
        .unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, target) = (words.next(), words.next());
    let path = target.map(|t| t.split('?').next().unwrap_or(t));
    let (status, ctype, body) = if request.len() > MAX_REQUEST {
        ("431 Request Header Fields Too Large", "text/plain", "")
    } else if method != Some("GET") && method != Some("HEAD") {
        ("405 Method Not Allowed", "text/plain", "only GET\n")
    } else if path != Some("/metrics") {
        ("404 Not Found", "text/plain", "try /metrics\n")
    } else {
        ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
    };
    let body = if method == Some("HEAD") { "" } else { body };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// One metric family: its help, type and samples (labels, value).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

fn single(v: u64) -> Vec<(String, u64)> {
    vec![(String::new(), v)]
}

fn per_role(primary: u64, secondary: u64) -> Vec<(String, u64)> {
    vec![
        ("role=\"primary\"".into(), primary),
        ("role=\"secondary\"".into(), secondary),
    ]
}

/// The Prometheus text exposition of the pair's counters now.
pub(super) fn render(st: &StatusPage, mode: Mode, pair: &SharedPair) -> String {
    let (primary_up, secondary_up, failovers) = {
        let p = pair.borrow();
        (
            p.primary_exit.is_none(),
            p.secondary_exit.is_none(),
            p.failed_over(st.get(Counter::TakeoverMicros) != 0) as u64,
        )
    };
    render_counters(st, mode, primary_up, secondary_up, failovers)
}

fn render_counters(
    st: &StatusPage,
    mode: Mode,
    primary_up: bool,
    secondary_up: bool,
    failovers: u64,
) -> String {
    let sent = st.get(Counter::RecordsSent);
    let bytes = st.get(Counter::RecordBytes);
    let (p, s) = (st.replica(false), st.replica(true));
    let mut out = String::new();
    family(
        &mut out,
        "ditto_pair_info",
        "gauge",
        "The pair's schedule mode (always 1).",
        &[(format!("mode=\"{}\"", mode.name()), 1)],
    );
    family(
        &mut out,
        "ditto_records_total",
        "counter",
        "Records the primary sent to the secondary.",
        &single(sent),
    );
    family(
        &mut out,
        "ditto_record_bytes_total",
        "counter",
        "Payload bytes of the records the primary sent.",
        &single(bytes),
    );
    family(
        &mut out,
        "ditto_records_consumed_total",
        "counter",
        "Records the secondary consumed.",
        &single(st.get(Counter::RecordsConsumed)),
    );
    family(
        &mut out,
        "ditto_turns_total",
        "counter",
        "Turns (token grants) each replica's threads took.",
        &per_role(
            st.get(Counter::PrimaryTurns),
            st.get(Counter::SecondaryTurns),
        ),
    );
    family(
        &mut out,
        "ditto_outputs_compared_total",
        "counter",
        "Outputs the secondary compared with the primary's.",
        &single(st.get(Counter::ComparedOutputs)),
    );
    family(
        &mut out,
        "ditto_output_bytes_compared_total",
        "counter",
        "Output bytes the secondary compared.",
        &single(st.get(Counter::BytesCompared)),
    );
    family(
        &mut out,
        "ditto_recorded_syscalls_total",
        "counter",
        "Syscalls the secondary replayed from the primary's records.",
        &single(st.get(Counter::RecordedSyscalls)),
    );
    family(
        &mut out,
        "ditto_signals_replayed_total",
        "counter",
        "Signals the secondary replayed.",
        &single(st.get(Counter::Signals)),
    );
    family(
        &mut out,
        "ditto_lag_records",
        "gauge",
        "Records sent and not yet consumed by the secondary.",
        &single(sent.saturating_sub(st.get(Counter::RecordsConsumed))),
    );
    family(
        &mut out,
        "ditto_lag_bytes",
        "gauge",
        "Payload bytes sent and not yet consumed by the secondary.",
        &single(bytes.saturating_sub(st.get(Counter::RecordBytesConsumed))),
    );
    family(
        &mut out,
        "ditto_replica_up",
        "gauge",
        "1 while the replica's process runs.",
        &per_role(primary_up as u64, secondary_up as u64),
    );
    family(
        &mut out,
        "ditto_diverged",
        "gauge",
        "1 once the secondary found a divergence.",
        &single((st.get(Counter::Diverged) != 0) as u64),
    );
    family(
        &mut out,
        "ditto_failovers_total",
        "counter",
        "Failovers: a replica died and the other carries the program on (the secondary live, or the primary serving unreplicated); at most 1 per pair.",
        &single(failovers),
    );
    family(
        &mut out,
        "ditto_exits_total",
        "counter",
        "VM exits (KVM_RUN returns) of each replica's vCPUs.",
        &per_role(p.exits, s.exits),
    );
    family(
        &mut out,
        "ditto_doorbell_syscalls_total",
        "counter",
        "Syscalls each replica served through the exitless doorbell.",
        &per_role(p.doorbell_syscalls, s.doorbell_syscalls),
    );
    let by_class: Vec<(String, u64)> = [("primary", &p), ("secondary", &s)]
        .into_iter()
        .flat_map(|(role, c)| {
            SYSCALL_CLASSES
                .iter()
                .zip(c.syscalls_by_class)
                .map(move |(class, v)| (format!("role=\"{role}\",class=\"{class}\""), v))
        })
        .collect();
    family(
        &mut out,
        "ditto_syscalls_total",
        "counter",
        "Syscalls each replica served, by replication class.",
        &by_class,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::ReplicaCounters;

    fn page() -> StatusPage {
        let st = StatusPage::create().unwrap();
        st.add(Counter::RecordsSent, 10);
        st.add(Counter::RecordsConsumed, 4);
        st.add(Counter::RecordBytes, 1000);
        st.add(Counter::RecordBytesConsumed, 300);
        st.set(Counter::PrimaryTurns, 9);
        st.publish_replica(
            true,
            &ReplicaCounters {
                exits: 5,
                doorbell_syscalls: 0,
                syscalls_by_class: [1, 2, 3, 0, 0, 0],
            },
        );
        st
    }

    #[test]
    fn exposition_has_every_family_and_the_lag() {
        let text = render_counters(&page(), Mode::Det, true, false, 0);
        for line in [
            "ditto_records_total 10",
            "ditto_lag_records 6",
            "ditto_lag_bytes 700",
            "ditto_turns_total{role=\"primary\"} 9",
            "ditto_replica_up{role=\"primary\"} 1",
            "ditto_replica_up{role=\"secondary\"} 0",
            "ditto_exits_total{role=\"secondary\"} 5",
            "ditto_syscalls_total{role=\"secondary\",class=\"compared\"} 3",
            "ditto_diverged 0",
            "ditto_failovers_total 0",
            "ditto_pair_info{mode=\"det\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        let after = render_counters(&page(), Mode::Det, true, false, 1);
        assert!(
            after.lines().any(|l| l == "ditto_failovers_total 1"),
            "{after}"
        );
        // Every sample belongs to a family announced just before it.
        let mut typed = std::collections::HashSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(typed.contains(name), "{name} has no TYPE line");
            }
        }
    }

    #[test]
    fn only_get_metrics_is_served() {
        let ok = String::from_utf8(respond(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            "a 1\n",
        ))
        .unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(ok.contains("Content-Length: 4\r\n") && ok.ends_with("\r\n\r\na 1\n"));
        let q = String::from_utf8(respond(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", "b")).unwrap();
        assert!(q.starts_with("HTTP/1.1 200"));
        let head = String::from_utf8(respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", "abc")).unwrap();
        assert!(head.contains("Content-Length: 0") && head.ends_with("\r\n\r\n"));
        let nf = String::from_utf8(respond(b"GET / HTTP/1.1\r\n\r\n", "x")).unwrap();
        assert!(nf.starts_with("HTTP/1.1 404"));
        let post = String::from_utf8(respond(b"POST /metrics HTTP/1.1\r\n\r\n", "x")).unwrap();
        assert!(post.starts_with("HTTP/1.1 405"));
        let big = vec![b'a'; MAX_REQUEST + 1];
        assert!(String::from_utf8(respond(&big, "x"))
            .unwrap()
            .starts_with("HTTP/1.1 431"));
        assert!(String::from_utf8(respond(b"\xff\xfe\r\n\r\n", "x"))
            .unwrap()
            .starts_with("HTTP/1.1 405"));
    }
}
