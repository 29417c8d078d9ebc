//! Exactly-once output across a failover (docs/pair.md, Failover): an output the primary may
//! have performed in part or in full when it died is completed, not repeated.
//!
//! Before a Compared call outputs to a TCP socket or a regular file, the primary records
//! where the stream stands ([`replica::wire::ThreadRecord::Intent`]) and the output commit
//! makes the secondary hold that record before any byte leaves. If the primary dies before
//! the output's own record, the live secondary measures the same stream again (the host
//! description is the primary's, passed ahead of time) and the difference is what the
//! primary did: those bytes are skipped, the rest written. The counters are the kernel's,
//! read from the shared description:
//! - a TCP socket: bytes ever queued on it, `tcpi_bytes_acked + SIOCOUTQ` (the unacked and
//!   unsent bytes plus the acknowledged ones), read until two SIOCOUTQ readings around
//!   TCP_INFO agree (ACKs move bytes from one term to the other, never the sum);
//! - a regular file: its offset, or with O_APPEND its size.
//!
//! Outputs on anything else (pipes, terminals, UDP and AF_UNIX sockets) have no intent: if
//! the primary died inside one, the secondary performs it again (at least once).

use replica::call::InDoubt;
use replica::wire::Stream;

use super::Replication;
use crate::errno::Errno;
use crate::sync::lock;
use crate::syscalls::{Handler, SysResult, SyscallCtx};

/// Where the stream behind host descriptor `fd` stands: (kind, position, size); None for
/// streams without such counters.
pub fn stream_position(fd: i32) -> Option<(Stream, u64, u64)> {
    // SAFETY: fstat into a zeroed stat on a descriptor the VMM owns.
    let st = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(fd, &mut st) == 0).then_some(st)?
    };
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => {
            // SAFETY: lseek on a descriptor the VMM owns; SEEK_CUR with 0 moves nothing.
            let off = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
            (off >= 0).then_some((Stream::File, off as u64, st.st_size as u64))
        }
        libc::S_IFSOCK => tcp_queued(fd).map(|q| (Stream::Tcp, q, 0)),
        _ => None,
    }
}

/// The offset of `tcpi_bytes_acked` (u64) in `struct tcp_info` (Linux 4.1 and later).
const TCPI_BYTES_ACKED: usize = 120;

/// Bytes ever queued on TCP socket `fd`: `tcpi_bytes_acked + SIOCOUTQ`. None if it is not
/// a TCP socket (or the kernel is too old to say).
fn tcp_queued(fd: i32) -> Option<u64> {
    let outq = || {
        let mut v: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one int.
        (unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut v) } == 0).then_some(v as u64)
    };
    for _ in 0..16 {
        let before = outq()?;
        let mut info = [0u8; 256];
        let mut len = info.len() as libc::socklen_t;
        // SAFETY: TCP_INFO writes at most `len` bytes into `info`.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if r != 0 || (len as usize) < TCPI_BYTES_ACKED + 8 {
            return None;
        }
        let mut acked = [0u8; 8];
        acked.copy_from_slice(&info[TCPI_BYTES_ACKED..TCPI_BYTES_ACKED + 8]);
        if outq()? == before {
            return Some(u64::from_le_bytes(acked) + before);
        }
    }
    None
}

/// Primary, before a Compared call's output commit: records where its outside stream stands.
pub(super) fn announce(rep: &Replication, ctx: &SyscallCtx<'_>, a: [u64; 6]) {
    let Some(p) = rep.endpoint.primary() else {
        return;
    };
    let Some(fd) = super::effects::io_fd(ctx.process, ctx.nr, a) else {
        return;
    };
    let Ok(file) = lock(&ctx.process.fds).get(fd) else {
        return;
    };
    let Some((stream, position, size)) = stream_position(file.raw()) else {
        return;
    };
    let doubt = InDoubt {
        fd: fd as i32,
        stream,
        position,
        size,
    };
    p.record_intent(ctx, ctx.thread.replicated_events + 1, doubt);
}

/// Live secondary: the Compared call the primary died in, `doubt` its intent. Measures the
/// stream, skips what the primary did (`ours` is what the call outputs) and does the rest
/// with `handler`.
pub(super) fn complete(
    rep: &Replication,
    ctx: &mut SyscallCtx<'_>,
    a: [u64; 6],
    ours: &[u8],
    doubt: InDoubt,
    handler: Handler,
) -> SysResult {
    let asked = ours.len() as u64;
    let host = lock(&ctx.process.fds)
        .get(i64::from(doubt.fd))
        .map(|f| f.raw());
    let now = host.ok().and_then(stream_position);
    let done = match now {
        Some((Stream::Tcp, queued, _)) if doubt.stream == Stream::Tcp => {
            queued.saturating_sub(doubt.position)
        }
        Some((Stream::File, off, size)) if doubt.stream == Stream::File => {
            let append = host.is_ok_and(|h| {
                // SAFETY: F_GETFL on a descriptor the VMM owns.
                let fl = unsafe { libc::fcntl(h, libc::F_GETFL) };
                fl >= 0 && fl & libc::O_APPEND != 0
            });
            if append {
                size.saturating_sub(doubt.size)
            } else {
                off.saturating_sub(doubt.position)
            }
        }
        _ => 0,
    };
    let done = done.min(asked);
    tracing::info!(
        fd = doubt.fd,
        stream = ?doubt.stream,
        asked,
        done,
        "an output in doubt at the takeover"
    );
    if let Some(s) = rep.endpoint.secondary() {
        s.resolved_in_doubt(done);
    }
    if done == 0 {
        return handler(ctx, a);
    }
    if done == asked {
        return Ok(asked);
    }
    // The rest of a plain write or send is written here; a vectored or message call returns
    // the primary's part as a short count, and the program writes the rest itself, as it
    // must after any short write.
    match ctx.nr as i64 {
        libc::SYS_write | libc::SYS_sendto => {
            let mut rest = a;
            rest[1] = a[1] + done;
            rest[2] = a[2] - done;
            match handler(ctx, rest) {
                Ok(n) => Ok(done + n),
                Err(Errno::EINTR) | Err(Errno::EAGAIN) => Ok(done),
                Err(e) => Err(e),
            }
        }
        _ => Ok(done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn a_tcp_socket_counts_every_byte_queued_on_it() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let (kind, start, _) = stream_position(s.as_raw_fd()).unwrap();
        assert_eq!(kind, Stream::Tcp);
        s.write_all(&[7u8; 100_000]).unwrap();
        let mut got = vec![0u8; 100_000];
        c.read_exact(&mut got).unwrap();
        let (_, end, _) = stream_position(s.as_raw_fd()).unwrap();
        assert_eq!(end - start, 100_000);
        // The connecting side counts its SYN once acknowledged; its writes count the same.
        let (_, c0, _) = stream_position(c.as_raw_fd()).unwrap();
        c.write_all(b"hello").unwrap();
        let (_, c1, _) = stream_position(c.as_raw_fd()).unwrap();
        assert_eq!(c1 - c0, 5);
    }

    #[test]
    fn a_file_reports_its_offset_and_size_and_a_pipe_nothing() {
        let dir = std::env::temp_dir().join(format!("ditto-in-doubt-{}", std::process::id()));
        let mut f = std::fs::File::create(&dir).unwrap();
        f.write_all(b"0123456789").unwrap();
        assert_eq!(stream_position(f.as_raw_fd()), Some((Stream::File, 10, 10)));
        let _ = std::fs::remove_file(&dir);
        let (r, _w) = std::io::pipe().unwrap();
        assert_eq!(stream_position(r.as_raw_fd()), None);
        let u = std::os::unix::net::UnixDatagram::unbound().unwrap();
        assert_eq!(stream_position(u.as_raw_fd()), None);
    }
}
