//! Failover: the primary's input from a TCP connection is logged before it is consumed
//! (docs/pair.md, Descriptors at failover). The kernel acknowledges bytes on arrival, so bytes
//! a dead primary had read but not logged would be lost to the secondary that takes the
//! connection over. So a Recorded read, recvfrom or recvmsg on an outside TCP stream socket
//! peeks (MSG_PEEK) into the program's buffer, the call's record is published, and only then
//! are exactly those bytes discarded from the socket (MSG_TRUNC, no copy).
//!
//! One reader at a time per socket holds [`InputOrder::reader`](crate::fd_table::InputOrder)
//! from its peek until its discard, so two threads never peek the same bytes. A blocking
//! reader waits for data without the lock (a peek with the program's own flags), then takes
//! it and peeks again without waiting.
//!
//! Not covered (those calls consume as before): MSG_WAITALL (a peek that may not wait could
//! return less), the program's own MSG_PEEK or MSG_TRUNC, MSG_OOB, readv and recvmmsg.

use std::sync::{Arc, MutexGuard};

use crate::errno::Errno;
use crate::fd_table::OpenFile;
use crate::sync::lock;
use crate::syscalls::{Handler, SysResult, SyscallCtx, SyscallEntry};

/// Peeks that lost their bytes to another reader before a call gives up peeking and reads
/// (consuming) under the lock: progress, at the cost of that call's guarantee.
const MAX_RETRIES: usize = 1000;

/// The guest's flags that a peek cannot stand in for.
const NOT_PEEKED: i32 = libc::MSG_WAITALL | libc::MSG_PEEK | libc::MSG_TRUNC | libc::MSG_OOB;

/// One call's peek: the socket, and where its flags are in the call's arguments.
pub(super) struct Peek {
    file: Arc<OpenFile>,
    /// The argument that holds the flags (None: read, which has none).
    flags_arg: Option<usize>,
}

/// The peek for this call, if it reads a TCP stream socket outside the program.
pub(super) fn peek_for(ctx: &SyscallCtx<'_>, a: [u64; 6]) -> Option<Peek> {
    let flags_arg = match ctx.nr as i64 {
        libc::SYS_read => None,
        libc::SYS_recvfrom => Some(3),
        libc::SYS_recvmsg => Some(2),
        _ => return None,
    };
    if flags_arg.is_some_and(|i| a[i] as i32 & NOT_PEEKED != 0) {
        return None;
    }
    let file = lock(&ctx.process.fds).get(a[0] as i64).ok()?;
    if !file.is_external() {
        return None;
    }
    let tcp = *file.input.tcp.get_or_init(|| is_tcp_stream(file.raw()));
    tcp.then_some(Peek { file, flags_arg })
}

impl Peek {
    /// Serves the call by peeking; the guard returned (when the peek got bytes) keeps other
    /// readers of the socket out until [`Peek::consume`].
    pub(super) fn serve<'f>(
        &'f self,
        ctx: &mut SyscallCtx<'_>,
        a: [u64; 6],
        handler: Handler,
    ) -> (SysResult, Option<MutexGuard<'f, ()>>) {
        let Some(recvfrom) = recvfrom_handler() else {
            return (handler(ctx, a), None);
        };
        // read(fd, buf, n) is recvfrom(fd, buf, n, 0, NULL, NULL) on a socket.
        let (h, base, flags_at) = match self.flags_arg {
            None => (recvfrom, [a[0], a[1], a[2], 0, 0, 0], 3),
            Some(i) => (handler, a, i),
        };
        let with = |extra: i32| {
            let mut v = base;
            v[flags_at] |= extra as u64;
            v
        };
        for _ in 0..MAX_RETRIES {
            let guard = lock(&self.file.input.reader);
            match h(ctx, with(libc::MSG_PEEK | libc::MSG_DONTWAIT)) {
                Err(Errno(e)) if e == libc::EAGAIN => drop(guard),
                Ok(n) if n > 0 => return (Ok(n), Some(guard)),
                other => return (other, None),
            }
            // Nothing there: wait as the program asked (blocking or not), without the lock.
            match h(ctx, with(libc::MSG_PEEK)) {
                Ok(n) if n > 0 => continue,
                other => return (other, None),
            }
        }
        tracing::warn!(
            fd = self.file.raw(),
            "input: the socket's bytes kept going to other readers; read without a peek"
        );
        // Under the lock, so that no peeker sees these bytes; they are consumed here.
        let _reader = lock(&self.file.input.reader);
        (h(ctx, base), None)
    }

    /// After the call's record is published: discards the `n` bytes the peek returned.
    pub(super) fn consume(&self, n: u64) {
        // SAFETY: recv with MSG_TRUNC and no buffer on a TCP socket discards bytes without
        // writing anywhere; the descriptor is alive through `self.file`.
        let r = unsafe {
            libc::recv(
                self.file.raw(),
                std::ptr::null_mut(),
                n as usize,
                libc::MSG_TRUNC | libc::MSG_DONTWAIT,
            )
        };
        if r != n as isize {
            tracing::warn!(
                fd = self.file.raw(),
                peeked = n,
                discarded = r,
                "input: the discard after a peek took a different count"
            );
        }
    }
}

fn recvfrom_handler() -> Option<Handler> {
    crate::syscalls::sys_socket::TABLE
        .iter()
        .find(|e: &&SyscallEntry| e.nr == libc::SYS_recvfrom)
        .map(|e| e.handler)
}

fn sockopt(fd: i32, level: i32, name: i32) -> Option<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let r = unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut i32).cast(), &mut len) };
    (r == 0).then_some(v)
}

/// Whether host descriptor `fd` is a TCP stream socket.
fn is_tcp_stream(fd: i32) -> bool {
    sockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && sockopt(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL) == Some(libc::IPPROTO_TCP)
}
