//! The channel's cross-process throughput benchmark: one process produces records of a fixed
//! size, a consumer process reads them (framing and checksum checked), and the producer
//! samples how far the consumer is behind.
//!
//! [`stream`] is the producer's side. The consumer is any program that calls [`consume`] with
//! the same record count, its socket at [`CHILD_SOCKET_FD`](crate::testkit::CHILD_SOCKET_FD)
//! (`channel_peer bench-consume COUNT`, or `ditto bench pair`, which starts itself as its own
//! consumer).

use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::testkit::{inherited_socket, socketpair, spawn_with_socket};
use crate::{recv_fd, send_fd, Channel, ChannelConfig, Consumer};

/// Either end gives up after this long without progress from the other, so that a stuck
/// peer ends the benchmark with an error instead of hanging it.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// The ring size the benchmark uses.
pub const RING_BYTES: usize = 8 << 20;

/// What one [`stream`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamResult {
    /// Payload bytes per record.
    pub size: usize,
    /// Records sent (and acknowledged).
    pub count: u64,
    /// Seconds from the first send to the last acknowledgement.
    pub secs: f64,
    /// Mean of the sampled lag (records sent, not yet consumed), sampled every 64 sends.
    pub avg_lag_records: f64,
    /// Mean of the sampled lag in ring bytes.
    pub avg_lag_bytes: f64,
    /// The largest sampled lag in records.
    pub max_lag_records: u64,
    /// The largest sampled lag in ring bytes.
    pub max_lag_bytes: u64,
}

impl StreamResult {
    /// Records per second.
    pub fn records_per_sec(&self) -> f64 {
        self.count as f64 / self.secs
    }

    /// Payload megabytes (10^6 bytes) per second.
    pub fn mb_per_sec(&self) -> f64 {
        (self.count * self.size as u64) as f64 / self.secs / 1e6
    }
}

/// Streams `count` records of `size` bytes to a consumer started from `consumer` (which must
/// call [`consume`] with the same `count`), and waits for it to end.
pub fn stream(size: usize, count: u64, consumer: &mut Command) -> Result<StreamResult, String> {
    if count == 0 {
        return Err("the benchmark needs at least one record".into());
    }
    let (mine, theirs) = socketpair().map_err(|e| format!("socketpair: {e}"))?;
    let mut child =
        spawn_with_socket(consumer, theirs).map_err(|e| format!("spawn the consumer: {e}"))?;
    let result = produce(size, count, mine);
    if result.is_err() {
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(|e| format!("wait for the consumer: {e}"))?;
    let r = result?;
    if !status.success() {
        return Err(format!("the consumer failed: {status}"));
    }
    Ok(r)
}

fn produce(size: usize, count: u64, sock: std::os::fd::OwnedFd) -> Result<StreamResult, String> {
    let mut config = ChannelConfig::new(RING_BYTES);
    config.peer_timeout = Some(PEER_TIMEOUT);
    let (p, fd) = Channel::create_with(config).map_err(|e| format!("create: {e}"))?;
    send_fd(sock.as_fd(), fd.as_fd()).map_err(|e| format!("send the memfd: {e}"))?;
    drop(fd);
    let mut p = p.watch_socket(sock);
    let buf = vec![0x5a; size];
    let (mut lag_rec, mut lag_bytes, mut samples) = (0u64, 0u64, 0u64);
    let (mut max_rec, mut max_bytes) = (0u64, 0u64);
    let start = Instant::now();
    for i in 0..count {
        p.send(det::RecordKind::SyscallResult, &buf)
            .map_err(|e| format!("send record {i}: {e}"))?;
        if i % 64 == 0 {
            let st = p.stats();
            lag_rec += st.lag_records();
            lag_bytes += st.lag_bytes();
            max_rec = max_rec.max(st.lag_records());
            max_bytes = max_bytes.max(st.lag_bytes());
            samples += 1;
        }
    }
    p.wait_acked(count - 1)
        .map_err(|e| format!("wait for the last acknowledgement: {e}"))?;
    Ok(StreamResult {
        size,
        count,
        secs: start.elapsed().as_secs_f64(),
        avg_lag_records: lag_rec as f64 / samples as f64,
        avg_lag_bytes: lag_bytes as f64 / samples as f64,
        max_lag_records: max_rec,
        max_lag_bytes: max_bytes,
    })
}

/// The consumer's side of [`stream`]: receives the memfd on the inherited socket and reads
/// `count` records (framing and checksum checked).
pub fn consume(count: u64) -> Result<(), String> {
    let sock = inherited_socket();
    let fd = recv_fd(sock.as_fd()).map_err(|e| format!("receive the memfd: {e}"))?;
    let mut c = Consumer::attach(fd)
        .map_err(|e| format!("attach: {e}"))?
        .watch_socket(sock);
    c.set_peer_timeout(Some(PEER_TIMEOUT));
    for i in 0..count {
        c.recv().map_err(|e| format!("record {i}: {e}"))?;
    }
    Ok(())
}
