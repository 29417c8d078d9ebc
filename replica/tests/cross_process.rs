//! The channel between two processes: the test is one end, `channel_peer` the other, and the
//! memfd travels over a Unix socket pair with SCM_RIGHTS.

use replica::testkit::{payload, socketpair, spawn_with_socket};
use replica::{recv_fd, send_fd, Channel, ChannelConfig, ChannelError, Consumer, Producer};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HEADER_PAGE: usize = 4096;

fn peer(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_channel_peer"));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Spawns a consumer peer and hands it a fresh channel; returns the producer (watching the
/// socket), the memfd and the child.
fn with_consumer(config: ChannelConfig, args: &[&str], watch: bool) -> (Producer, OwnedFd, Child) {
    let (mine, theirs) = socketpair().unwrap();
    let child = spawn_with_socket(&mut peer(args), theirs).unwrap();
    let (p, fd) = Channel::create_with(config).unwrap();
    send_fd(mine.as_fd(), fd.as_fd()).unwrap();
    let p = if watch { p.watch_socket(mine) } else { p };
    (p, fd, child)
}

fn output(child: Child) -> (bool, String) {
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn streams_100k_records_of_random_sizes() {
    const N: u64 = 100_000;
    let (mut p, _fd, child) = with_consumer(
        ChannelConfig::new(1 << 20),
        &["consume", &N.to_string(), "4096"],
        true,
    );
    let mut bytes = 0;
    for s in 0..N {
        let data = payload(s, 4096);
        bytes += data.len() as u64;
        assert_eq!(p.send(det::RecordKind::SyscallResult, &data).unwrap(), s);
        assert!(p.stats().lag_bytes() <= 1 << 20);
    }
    p.wait_acked(N - 1).unwrap();
    assert_eq!(p.stats().lag_records(), 0);
    let (ok, text) = output(child);
    assert!(ok, "{text}");
    assert_eq!(text.trim(), format!("ok {N} {bytes}"));
}

#[test]
fn a_corrupted_byte_is_reported_by_the_other_process() {
    let (mine, theirs) = socketpair().unwrap();
    let child = spawn_with_socket(&mut peer(&["until-error"]), theirs).unwrap();
    let (mut p, fd) = Channel::create(1 << 16).unwrap();
    send_fd(mine.as_fd(), fd.as_fd()).unwrap();
    // Five 100-byte records of 120 ring bytes each; the consumer waits for our go.
    for s in 0..5 {
        p.send(det::RecordKind::OutputHash, &[s as u8; 100])
            .unwrap();
    }
    let len = HEADER_PAGE + (1 << 16);
    // SAFETY: a fresh shared mapping of the whole memfd, our own view to play a faulty writer;
    // the byte flipped is inside it, and it is unmapped right after.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        );
        assert_ne!(map, libc::MAP_FAILED);
        *map.cast::<u8>().add(HEADER_PAGE + 240 + 20 + 50) ^= 0x40;
        libc::munmap(map, len);
    }
    let mut sock = std::os::unix::net::UnixStream::from(mine);
    sock.write_all(b"g").unwrap();
    let (ok, text) = output(child);
    assert!(ok, "{text}");
    assert!(
        text.starts_with("Corrupt { offset: 240, ring_offset: 240, source: ChecksumMismatch"),
        "{text}"
    );
    drop(p);
}

#[test]
fn the_producer_waits_for_a_slow_consumer() {
    let config = ChannelConfig {
        max_lag_records: 8,
        ..ChannelConfig::new(1 << 16)
    };
    let (mut p, _fd, child) = with_consumer(config, &["consume", "64", "512", "300"], true);
    let start = Instant::now();
    for s in 0..64 {
        p.send(det::RecordKind::SyscallResult, &payload(s, 512))
            .unwrap();
        assert!(p.stats().lag_records() <= 8);
        if s < 8 {
            assert!(
                start.elapsed() < Duration::from_millis(250),
                "record {s} waited"
            );
        }
    }
    // The ninth record waited for the consumer's 300 ms start delay.
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
    p.wait_acked(63).unwrap();
    let (ok, text) = output(child);
    assert!(ok, "{text}");
}

fn kill(child: &Child) {
    // SAFETY: signalling our own child by its PID; it is not reaped yet, so the PID is its.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
}

/// Fills the ring of a consumer that never reads, kills it, and times the next send.
fn killed_consumer(watch: bool, timeout: Duration) -> Duration {
    let config = ChannelConfig {
        max_lag_records: 4,
        peer_timeout: Some(timeout),
        ..ChannelConfig::new(1 << 16)
    };
    let (mut p, _fd, mut child) = with_consumer(config, &["stall"], watch);
    for _ in 0..4 {
        p.try_send(det::RecordKind::End, &[]).unwrap();
    }
    assert!(matches!(
        p.try_send(det::RecordKind::End, &[]),
        Err(ChannelError::WouldBlock)
    ));
    kill(&child);
    let start = Instant::now();
    let e = p.send(det::RecordKind::End, &[]).unwrap_err();
    let took = start.elapsed();
    eprintln!("PeerGone after {took:?} (socket watched: {watch})");
    assert!(matches!(e, ChannelError::PeerGone), "{e}");
    child.wait().unwrap();
    took
}

#[test]
fn a_killed_consumer_is_peer_gone() {
    // Watching the socket: the hang-up is seen at the next poll, long before the timeout.
    let took = killed_consumer(true, Duration::from_secs(20));
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Without the socket: the timeout.
    let took = killed_consumer(false, Duration::from_millis(300));
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[test]
fn a_dead_producer_is_drained_then_peer_gone() {
    let (mine, theirs) = socketpair().unwrap();
    let child = spawn_with_socket(&mut peer(&["produce-exit", "500"]), theirs).unwrap();
    let fd = recv_fd(mine.as_fd()).unwrap();
    let mut c = Consumer::attach(fd).unwrap().watch_socket(mine);
    for s in 0..500 {
        let r = c.recv().unwrap();
        assert_eq!((r.seq, r.payload), (s, &payload(s, 256)[..]));
    }
    assert!(matches!(c.recv(), Err(ChannelError::PeerGone)));
    assert!(output(child).0);
}
