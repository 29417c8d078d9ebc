//! The clients of `ditto bench failover`: one connection, one request at a time, each reply
//! checked and time-stamped, so that the longest gap between replies around a kill is what a
//! client saw.
//!
//! - redis: `INCR ctr`; every reply must be the previous plus one (a lost or repeated
//!   request shows as a wrong number).
//! - nginx: keep-alive `GET /small.html`; every response must be `200 OK` with the file's
//!   exact body.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How long the client waits for one reply before it gives up on the pair.
pub(super) const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the client asks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Protocol {
    /// `INCR ctr` to redis.
    Redis,
    /// `GET /small.html` to nginx, keep-alive.
    Http,
}

/// One connection to the server under test.
pub(super) struct Client {
    protocol: Protocol,
    w: TcpStream,
    r: BufReader<TcpStream>,
    /// The body every HTTP response must have.
    body: Vec<u8>,
    /// Replies so far.
    pub(super) count: u64,
}

impl Client {
    /// Connects to 127.0.0.1:`port`; `body` is what each HTTP response must carry.
    pub(super) fn connect(protocol: Protocol, port: u16, body: &[u8]) -> Result<Client, String> {
        let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(REPLY_TIMEOUT))
            .and_then(|()| s.set_nodelay(true))
            .map_err(|e| e.to_string())?;
        let r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        Ok(Client {
            protocol,
            w: s,
            r,
            body: body.to_vec(),
            count: 0,
        })
    }

    /// One request and its checked reply; an error in words when the reply is missing or
    /// wrong.
    pub(super) fn request(&mut self) -> Result<(), String> {
        let n = self.count + 1;
        let req: &[u8] = match self.protocol {
            Protocol::Redis => b"INCR ctr\r\n",
            Protocol::Http => b"GET /small.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        };
        self.w
            .write_all(req)
            .map_err(|e| format!("sending request {n}: {e}"))?;
        match self.protocol {
            Protocol::Redis => {
                let line = self.line(n)?;
                if line != format!(":{n}\r\n") {
                    return Err(format!("reply {n} is {line:?}, not :{n}"));
                }
            }
            Protocol::Http => self.http_response(n)?,
        }
        self.count = n;
        Ok(())
    }

    fn line(&mut self, n: u64) -> Result<String, String> {
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) => Err(format!("the connection closed before reply {n}")),
            Ok(_) => Ok(line),
            Err(e) => Err(format!("reading reply {n}: {e}")),
        }
    }

    fn http_response(&mut self, n: u64) -> Result<(), String> {
        let status = self.line(n)?;
        if status != "HTTP/1.1 200 OK\r\n" {
            return Err(format!("response {n}: {:?}", status.trim_end()));
        }
        let mut len = None;
        loop {
            let h = self.line(n)?;
            if h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse::<usize>().ok();
                }
            }
        }
        if len != Some(self.body.len()) {
            return Err(format!("response {n}: Content-Length {len:?}"));
        }
        let mut body = vec![0; self.body.len()];
        self.r
            .read_exact(&mut body)
            .map_err(|e| format!("response {n}: body: {e}"))?;
        if body != self.body {
            return Err(format!("response {n}: the body differs from the file"));
        }
        Ok(())
    }
}

/// What one client saw around one kill.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Gaps {
    /// Replies per second from the first reply to the kill.
    pub(super) replies_per_sec: f64,
    /// The longest gap between consecutive replies from the kill to `window` after it (the
    /// gap that spans the kill included), in milliseconds.
    pub(super) stall_ms: f64,
    /// The longest gap before the kill, in milliseconds: the client's normal jitter.
    pub(super) max_gap_before_ms: f64,
}

/// [`Gaps`] from the replies' time stamps (in order) and the kill's.
pub(super) fn gaps(stamps: &[Instant], kill: Instant, window: Duration) -> Option<Gaps> {
    let first = *stamps.first()?;
    let before = stamps.iter().filter(|&&t| t <= kill).count();
    let steady = kill.checked_duration_since(first)?.as_secs_f64();
    let ms = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64() * 1000.0;
    let mut stall: f64 = 0.0;
    let mut jitter: f64 = 0.0;
    for w in stamps.windows(2) {
        let gap = ms(w[0], w[1]);
        if w[1] <= kill {
            jitter = jitter.max(gap);
        } else if w[0] <= kill + window {
            stall = stall.max(gap);
        }
    }
    // No reply yet after the kill: the stall is at least the time since the last one.
    if stamps.last().is_some_and(|&t| t <= kill) {
        return None;
    }
    Some(Gaps {
        replies_per_sec: if steady > 0.0 {
            before as f64 / steady
        } else {
            0.0
        },
        stall_ms: stall,
        max_gap_before_ms: jitter,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stall_is_the_longest_gap_spanning_or_after_the_kill() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Replies every 10 ms, a 20 ms gap before the kill at 100 ms, then 150 ms of
        // silence across it, then every 10 ms again.
        let mut stamps: Vec<Instant> = (0..=60).step_by(10).map(at).collect();
        stamps.extend([80, 90].map(at));
        stamps.extend((240..=400).step_by(10).map(at));
        let g = gaps(&stamps, at(100), Duration::from_secs(1)).unwrap();
        assert!((g.stall_ms - 150.0).abs() < 1.0, "{g:?}");
        assert!((g.max_gap_before_ms - 20.0).abs() < 1.0, "{g:?}");
        // 9 replies in the 100 ms from the first reply to the kill.
        assert!((g.replies_per_sec - 90.0).abs() < 1.0, "{g:?}");
        // A gap that starts after the window (here 600 ms) does not count.
        stamps.extend((410..=700).step_by(10).map(at));
        stamps.extend([2000, 3000].map(at));
        let g = gaps(&stamps, at(100), Duration::from_millis(500)).unwrap();
        assert!((g.stall_ms - 150.0).abs() < 1.0, "{g:?}");
    }

    #[test]
    fn no_reply_after_the_kill_gives_no_gaps() {
        let t0 = Instant::now();
        let stamps = [t0, t0 + Duration::from_millis(5)];
        assert_eq!(
            gaps(
                &stamps,
                t0 + Duration::from_millis(10),
                Duration::from_secs(1)
            ),
            None
        );
    }
}
