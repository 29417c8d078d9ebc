//! Support shared by the tests and the benchmark: reproducible payloads and spawning a peer
//! process that inherits one end of a socket pair.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// The descriptor number at which [`spawn_with_socket`] places the socket in the child.
pub const CHILD_SOCKET_FD: RawFd = 3;

/// Whether a TCP connection with local port `port` is open or half-closed (ESTABLISHED or
/// CLOSE_WAIT in /proc/net/tcp or tcp6): the server side of a connection not yet closed.
pub fn tcp_connections_open(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let local_port = f
                    .get(1)
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| u16::from_str_radix(p, 16).ok());
                // 01 ESTABLISHED, 08 CLOSE_WAIT.
                local_port == Some(port) && matches!(f.get(3), Some(&"01") | Some(&"08"))
            })
    })
}

/// Waits (at most `timeout`) until [`tcp_connections_open`] is false; returns whether it
/// got there. Servers are stopped only once idle: a stop signal that lands while a server
/// still winds a connection down races with it (civetweb's workers read its stop flag with
/// no synchronization), which a pair would report as a divergence.
pub fn wait_connections_closed(port: u16, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while tcp_connections_open(port) {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

/// A xorshift64* step: cheap, reproducible, good enough for test data.
pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// The payload of record `seq` in a stream of random sizes below `max_len`: both ends compute
/// it, so the receiver can check every byte.
pub fn payload(seq: u64, max_len: usize) -> Vec<u8> {
    let mut x = mix(seq.wrapping_add(0x9e37_79b9_7f4a_7c15));
    let len = (x % max_len.max(1) as u64) as usize;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x = mix(x);
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Spawns `cmd` with `sock` as its descriptor [`CHILD_SOCKET_FD`], and closes our copy so that
/// the child's death hangs up the pair. Other descriptors stay close-on-exec, so a sibling
/// spawned concurrently does not keep the socket alive.
pub fn spawn_with_socket(cmd: &mut Command, sock: OwnedFd) -> io::Result<Child> {
    let raw = sock.as_raw_fd();
    // SAFETY: dup2 and fcntl are async-signal-safe, the only calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec set, so clear it by hand then.
            let ret = if raw == CHILD_SOCKET_FD {
                libc::fcntl(raw, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, CHILD_SOCKET_FD)
            };
            if ret < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let child = cmd.spawn();
    drop(sock);
    child
}

/// The socket a child spawned by [`spawn_with_socket`] inherited.
pub fn inherited_socket() -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: by the spawn_with_socket contract, descriptor 3 is ours and open.
    unsafe { OwnedFd::from_raw_fd(CHILD_SOCKET_FD) }
}

/// A connected Unix stream socket pair, close-on-exec.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = std::os::unix::net::UnixStream::pair()?;
    Ok((a.into(), b.into()))
}
