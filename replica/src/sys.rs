//! Thin wrappers over the Linux calls the channel needs: memfd, mmap, futex, SCM_RIGHTS, poll.
//! Errors are plain `io::Error`s; the channel module gives them meaning.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A memfd of `size` bytes, sealed against shrinking and growing so that a peer's mapping can
/// never turn into SIGBUS.
pub fn sealed_memfd(name: &CStr, size: usize) -> io::Result<OwnedFd> {
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: `name` is NUL-terminated and outlives the call.
    let fd = check(unsafe { libc::memfd_create(name.as_ptr(), flags) })?;
    // SAFETY: memfd_create just returned this descriptor and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = libc::off_t::try_from(size).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: plain syscalls on a descriptor we own.
    unsafe {
        check(libc::ftruncate(fd.as_raw_fd(), len))?;
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        check(libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals))?;
    }
    Ok(fd)
}

/// The file's size and whether it is sealed against shrinking.
pub fn size_and_shrink_seal(fd: BorrowedFd) -> io::Result<(u64, bool)> {
    // SAFETY: fstat writes into the zeroed stat buffer we pass; fcntl only reads the fd.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        check(libc::fstat(fd.as_raw_fd(), &mut st))?;
        let seals = check(libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS))?;
        Ok((st.st_size as u64, seals & libc::F_SEAL_SHRINK != 0))
    }
}

/// A shared read-write mapping of a whole file, unmapped on drop.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; who may touch which bytes is the ring protocol's
// business, enforced by `&mut self` on the producer and consumer.
unsafe impl Send for Mapping {}
// SAFETY: shared references give out only the raw base pointer; every access through it is
// an `unsafe` block of the ring's, which touches the header's atomics from any thread and
// the data area only under the producer's or consumer's `&mut self` (an `AckWatch` reads
// the header alone).
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` MAP_SHARED, so that both processes see the same pages.
    pub fn new(fd: BorrowedFd, len: usize) -> io::Result<Self> {
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: a fresh mapping chosen by the kernel; it aliases no Rust object.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast()).ok_or(io::ErrorKind::Other)?;
        Ok(Mapping { ptr, len })
    }

    /// The first byte (page-aligned).
    pub fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we mapped exactly this range and no reference into it outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Sleeps while `word` holds `expected`, for at most `timeout`. Shared (not PRIVATE) futex:
/// the word lives in a MAP_SHARED mapping and the waker is another process. Spurious returns
/// are fine: every caller re-checks its condition.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call; the kernel only
    // reads it and the timespec.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}

/// Wakes every waiter on `word`, in any process.
pub fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE does not dereference the rest.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}

/// Whether the peer of a connected socket has gone (closed, shut down or errored).
pub fn hung_up(sock: BorrowedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    let gone = libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR | libc::POLLNVAL;
    n > 0 && pfd.revents & gone != 0
}

// Room for one descriptor, u64-aligned as cmsghdr wants.
const CMSG_WORDS: usize = 4;

/// Sends `fd` with one data byte (a stream socket drops ancillary data sent with none).
pub fn send_fd(sock: BorrowedFd, fd: BorrowedFd) -> io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u64; CMSG_WORDS];
    // SAFETY: msghdr is plain data; the cmsg macros stay inside `cbuf`, which CMSG_SPACE(4)
    // (24 bytes) fits, and sendmsg only reads the buffers that outlive the call.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(4) as _;
        libc::CMSG_DATA(cmsg)
            .cast::<i32>()
            .write_unaligned(fd.as_raw_fd());
        let n = libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives one descriptor sent by [`send_fd`]; `Ok(None)` if the message carried none.
pub fn recv_fd(sock: BorrowedFd) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u64; CMSG_WORDS];
    // SAFETY: as in `send_fd`; recvmsg writes at most msg_controllen bytes into `cbuf`, and we
    // walk only the headers it reports, taking ownership of each descriptor exactly once.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
        let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut got = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<i32>();
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    // Extra descriptors are closed by dropping them.
                    let fd = OwnedFd::from_raw_fd(data.add(i).read_unaligned());
                    got.get_or_insert(fd);
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 && got.is_none() {
            return Err(io::Error::other("descriptor truncated (MSG_CTRUNC)"));
        }
        Ok(got)
    }
}

/// The most descriptors [`send_fds`] and [`recv_fds`] carry in one message.
pub const MAX_FDS_PER_MESSAGE: usize = 4;
// Room for MAX_FDS_PER_MESSAGE descriptors: CMSG_SPACE(16) = 32 bytes, plus slack.
const MULTI_CMSG_WORDS: usize = 8;

/// Sends `data` with up to [`MAX_FDS_PER_MESSAGE`] descriptors, without blocking past the
/// socket's send timeout (SO_SNDTIMEO) and without SIGPIPE.
pub fn send_fds(sock: BorrowedFd, data: &[u8], fds: &[BorrowedFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS_PER_MESSAGE || data.is_empty() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut cbuf = [0u64; MULTI_CMSG_WORDS];
    let fd_bytes = 4 * fds.len() as u32;
    // SAFETY: msghdr is plain data; sendmsg only reads `data` (through the iovec, never
    // written) and `cbuf`, whose CMSG_SPACE(16) = 32 bytes fit its 64; the cmsg header is
    // written inside `cbuf` only when there are descriptors to send.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(fd_bytes) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
            let out = libc::CMSG_DATA(cmsg).cast::<i32>();
            for (i, fd) in fds.iter().enumerate() {
                out.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
        if libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One message received by [`recv_fds`].
#[derive(Debug)]
pub struct FdMessage {
    /// Data bytes received (at most the buffer's length).
    pub len: usize,
    /// The descriptors it carried, owned (closed on drop).
    pub fds: Vec<OwnedFd>,
    /// The data or the descriptors did not fit (MSG_TRUNC or MSG_CTRUNC).
    pub truncated: bool,
}

/// Receives one message into `buf` with its descriptors (close-on-exec), blocking;
/// `Ok(None)`: the peer hung up.
pub fn recv_fds(sock: BorrowedFd, buf: &mut [u8]) -> io::Result<Option<FdMessage>> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; MULTI_CMSG_WORDS];
    // SAFETY: recvmsg writes at most iov_len bytes into `buf` and msg_controllen bytes into
    // `cbuf`; we walk only the headers it reports and take ownership of each descriptor in
    // them exactly once (the kernel installed them in this process for us).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
        let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut fds = Vec::new();
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<i32>();
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if n == 0 && fds.is_empty() {
            return Ok(None);
        }
        let truncated = msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0;
        Ok(Some(FdMessage {
            len: n as usize,
            fds,
            truncated,
        }))
    }
}

/// A connected pair of SOCK_SEQPACKET Unix sockets, close-on-exec.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut sv = [0i32; 2];
    let ty = libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC;
    // SAFETY: socketpair writes two descriptors into `sv`, which we then own.
    unsafe {
        check(libc::socketpair(libc::AF_UNIX, ty, 0, sv.as_mut_ptr()))?;
        Ok((OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])))
    }
}

/// Sets a socket's send timeout (SO_SNDTIMEO): a send blocked longer fails with EAGAIN.
pub fn set_send_timeout(sock: BorrowedFd, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt reads one timeval that outlives the call.
    check(unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    })?;
    Ok(())
}
