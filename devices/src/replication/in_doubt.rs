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
//!
//! Input goes the other way: the primary logs what it read before it consumes it (it peeks,
//! publishes the record, then discards), so a primary that dies in between leaves bytes in
//! the socket that the secondary already replayed. At the takeover the secondary compares,
//! per TCP socket, the bytes it replayed with the bytes consumed from the socket
//! (`tcpi_bytes_received - SIOCINQ`, less the peer's FIN) and discards the difference
//! ([`reconcile_input`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use replica::call::InDoubt;
use replica::wire::Stream;

use super::Replication;
use crate::errno::Errno;
use crate::fd_table::OpenFile;
use crate::process::Process;
use crate::sync::lock;
use crate::syscalls::{Handler, SysResult, SyscallCtx};

/// Secondary: the input bytes replayed per outside open file, keyed by the open file's
/// address (held alive by the weak reference, so the key stays unique).
#[derive(Default)]
pub(super) struct ReplayedInput(Mutex<HashMap<usize, (Weak<OpenFile>, u64)>>);

/// Secondary: a replayed read-class call on an outside descriptor returned `ret` bytes.
pub(super) fn note_replayed_input(rep: &Replication, ctx: &SyscallCtx<'_>, a: [u64; 6], ret: i64) {
    let reads = [
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
    ];
    if ret <= 0 || !reads.contains(&(ctx.nr as i64)) {
        return;
    }
    let Ok(file) = lock(&ctx.process.fds).get(a[0] as i64) else {
        return;
    };
    if !file.is_external() {
        return;
    }
    let mut map = lock(&rep.replayed_input.0);
    let entry = map
        .entry(Arc::as_ptr(&file) as usize)
        .or_insert_with(|| (Arc::downgrade(&file), 0));
    entry.1 += ret as u64;
}

/// The offset of `tcpi_bytes_received` (u64) in `struct tcp_info` (Linux 4.1 and later).
const TCPI_BYTES_RECEIVED: usize = 128;

/// Bytes consumed from TCP socket `fd` by its readers: `tcpi_bytes_received - SIOCINQ`,
/// less the peer's FIN once it came. None if it is not a TCP socket.
fn tcp_consumed(fd: i32) -> Option<u64> {
    let inq = || {
        let mut v: libc::c_int = 0;
        // SAFETY: SIOCINQ (FIONREAD) writes one int.
        (unsafe { libc::ioctl(fd, libc::FIONREAD, &mut v) } == 0).then_some(v as u64)
    };
    for _ in 0..16 {
        let before = inq()?;
        let info = tcp_info(fd)?;
        if inq()? != before {
            continue;
        }
        let mut received = [0u8; 8];
        received.copy_from_slice(&info[TCPI_BYTES_RECEIVED..TCPI_BYTES_RECEIVED + 8]);
        // tcpi_state is the first byte; the peer's FIN counts in bytes_received from
        // CLOSE_WAIT on (and in LAST_ACK, CLOSING, TIME_WAIT).
        let fin = matches!(
            info[0] as i32,
            8 /* CLOSE_WAIT */ | 9 /* LAST_ACK */ | 11 /* CLOSING */ | 6 /* TIME_WAIT */
        );
        return Some(
            u64::from_le_bytes(received)
                .saturating_sub(before)
                .saturating_sub(fin as u64),
        );
    }
    None
}

/// `struct tcp_info` of socket `fd`, at least up to `tcpi_bytes_received`.
fn tcp_info(fd: i32) -> Option<[u8; 256]> {
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
    (r == 0 && len as usize >= TCPI_BYTES_RECEIVED + 8).then_some(info)
}

/// At the takeover, after the primary's descriptors replaced their placeholders: bytes the
/// secondary replayed that the dead primary had not yet discarded from its sockets are
/// discarded now. Returns the bytes discarded.
pub(super) fn reconcile_input(process: &Process) -> u64 {
    let Some(rep) = process.replication.get() else {
        return 0;
    };
    let files: Vec<(Arc<OpenFile>, u64)> = lock(&rep.replayed_input.0)
        .drain()
        .filter_map(|(_, (w, n))| w.upgrade().map(|f| (f, n)))
        .collect();
    let mut discarded = 0;
    for (file, replayed) in files {
        let fd = file.raw();
        let Some(consumed) = tcp_consumed(fd) else {
            continue;
        };
        if consumed > replayed {
            tracing::warn!(
                fd,
                consumed,
                replayed,
                "the primary consumed input it never logged: it is lost"
            );
            continue;
        }
        let mut left = replayed - consumed;
        while left > 0 {
            let n = left.min(1 << 30) as usize;
            // SAFETY: MSG_TRUNC on a TCP socket discards up to `n` queued bytes without
            // copying; no buffer is written.
            let r = unsafe {
                libc::recv(
                    fd,
                    std::ptr::null_mut(),
                    n,
                    libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                )
            };
            if r <= 0 {
                break;
            }
            left -= r as u64;
            discarded += r as u64;
        }
    }
    discarded
}

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
        let info = tcp_info(fd)?;
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
    fn a_tcp_socket_counts_what_its_readers_consumed_not_what_waits_or_the_fin() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        assert_eq!(tcp_consumed(s.as_raw_fd()), Some(0));
        c.write_all(b"0123456789").unwrap();
        let mut four = [0u8; 4];
        s.read_exact(&mut four).unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while tcp_consumed(s.as_raw_fd()) != Some(4) && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(tcp_consumed(s.as_raw_fd()), Some(4));
        drop(c);
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"456789");
        assert_eq!(tcp_consumed(s.as_raw_fd()), Some(10), "the FIN is no byte");
        let (r, _w) = std::io::pipe().unwrap();
        assert_eq!(tcp_consumed(r.as_raw_fd()), None);
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
