//! Sockets, passed through to the host on host descriptors. AF_UNIX paths are
//! placed under the program's root.

use guest_memory::Access;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use super::cmsg;
use super::sockaddr::{
    describe_inet, guest_sockaddr, remember_bound, sockaddr_in, OutLen, UnixUse, SOCKADDR_MAX,
};
use super::util::{buf, data_buf, epipe_kills, file, install, install_pair, iovecs, opt_buf, sc};
use super::{ParkedFd, SysResult, SyscallCtx, SyscallEntry};
use crate::errno::Errno;
use crate::fd_table::OpenFile;
use crate::sync::lock;
use crate::sys;

/// The socket table.
pub const TABLE: &[SyscallEntry] = &[
    sys!(SYS_socket, Recorded, socket),
    sys!(SYS_socketpair, Recorded, socketpair),
    sys!(SYS_bind, Recorded, bind),
    sys!(SYS_listen, Recorded, listen),
    sys!(SYS_accept, Recorded, accept),
    sys!(SYS_accept4, Recorded, accept4),
    sys!(SYS_connect, Recorded, connect),
    sys!(SYS_getsockname, Recorded, getsockname),
    sys!(SYS_getpeername, Recorded, getpeername),
    sys!(SYS_setsockopt, Recorded, setsockopt),
    sys!(SYS_getsockopt, Recorded, getsockopt),
    sys!(SYS_shutdown, Compared, shutdown),
    sys!(SYS_sendto, OutputByFd, sendto),
    sys!(SYS_recvfrom, InputByFd, recvfrom),
    sys!(SYS_sendmsg, OutputByFd, sendmsg),
    sys!(SYS_recvmsg, InputByFd, recvmsg),
];

fn socket(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let fd = sc(
        libc::SYS_socket,
        [a[0], a[1] | libc::SOCK_CLOEXEC as u64, a[2], 0, 0, 0],
    )?;
    install(ctx, fd, a[1] & libc::SOCK_CLOEXEC as u64 != 0)
}

fn socketpair(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    buf(ctx, a[3], 8, Access::Write)?;
    let mut sv = [0i32; 2];
    sc(
        libc::SYS_socketpair,
        [
            a[0],
            a[1] | libc::SOCK_CLOEXEC as u64,
            a[2],
            sv.as_mut_ptr() as u64,
            0,
            0,
        ],
    )?;
    install_pair(ctx, sv, a[1] & libc::SOCK_CLOEXEC as u64 != 0, a[3])
}

fn bind(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let sa = sockaddr_in(ctx, a[1], a[2], UnixUse::Create)?;
    let (p, l) = sa.raw();
    let r = sc(libc::SYS_bind, [f.raw() as u64, p, l, 0, 0, 0]);
    if r == Err(Errno(libc::EADDRINUSE)) {
        if let Some(addr) = describe_inet(&sa.bytes) {
            eprintln!("ditto: {addr} is already in use on this host");
        }
    }
    if r.is_ok() {
        remember_bound(sa);
    }
    r
}

fn connect(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let sa = sockaddr_in(ctx, a[1], a[2], UnixUse::Reach)?;
    let (p, l) = sa.raw();
    sc(libc::SYS_connect, [f.raw() as u64, p, l, 0, 0, 0])
}

fn listen(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    sc(libc::SYS_listen, [f.raw() as u64, a[1], 0, 0, 0, 0])
}

fn accept(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    accept4(ctx, [a[0], a[1], a[2], 0, 0, 0])
}

fn accept4(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let mut out = OutLen::addr(ctx, a[1], a[2])?;
    let fd = sc(
        libc::SYS_accept4,
        [
            f.raw() as u64,
            out.buf(),
            out.len_ptr(),
            a[3] | libc::SOCK_CLOEXEC as u64,
            0,
            0,
        ],
    )?;
    // SAFETY: fd was just returned by a successful accept4 and is ours; owning it at
    // once closes it on every early return below.
    let host = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    out.finish(ctx)?;
    let cloexec = a[3] & libc::SOCK_CLOEXEC as u64 != 0;
    if ctx.process.det.get().is_some() {
        ctx.thread.parked_fd = Some(ParkedFd {
            file: Arc::new(OpenFile::new(host)),
            cloexec,
            at: None,
        });
        // The number comes at the re-entry turn (ParkedFd).
        return Ok(0);
    }
    lock(&ctx.process.fds)
        .install(host, cloexec)
        .map(|fd| fd as u64)
}

fn getsockname(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let mut out = OutLen::addr(ctx, a[1], a[2])?;
    let r = sc(
        libc::SYS_getsockname,
        [f.raw() as u64, out.buf(), out.len_ptr(), 0, 0, 0],
    )?;
    out.finish(ctx)?;
    Ok(r)
}

fn getpeername(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let mut out = OutLen::addr(ctx, a[1], a[2])?;
    let r = sc(
        libc::SYS_getpeername,
        [f.raw() as u64, out.buf(), out.len_ptr(), 0, 0, 0],
    )?;
    out.finish(ctx)?;
    Ok(r)
}

fn setsockopt(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let v = opt_buf(ctx, a[3], a[4], Access::Read)?;
    sc(
        libc::SYS_setsockopt,
        [f.raw() as u64, a[1], a[2], v as u64, a[4], 0],
    )
}

fn getsockopt(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let mut out = OutLen::opt(ctx, a[3], a[4])?;
    let r = sc(
        libc::SYS_getsockopt,
        [f.raw() as u64, a[1], a[2], out.buf(), out.len_ptr(), 0],
    )?;
    out.finish(ctx)?;
    Ok(r)
}

fn shutdown(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    sc(libc::SYS_shutdown, [f.raw() as u64, a[1], 0, 0, 0, 0])
}

fn nosignal(ctx: &mut SyscallCtx<'_>, flags: u64, r: SysResult) -> SysResult {
    if flags & libc::MSG_NOSIGNAL as u64 != 0 {
        r
    } else {
        epipe_kills(ctx, r)
    }
}

fn sendto(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let (p, len) = data_buf(ctx, a[1], a[2], Access::Read)?;
    let sa = if a[4] != 0 {
        Some(sockaddr_in(ctx, a[4], a[5], UnixUse::Reach)?)
    } else {
        None
    };
    let (sap, sal) = sa.as_ref().map_or((0, 0), |s| s.raw());
    let r = sc(
        libc::SYS_sendto,
        [f.raw() as u64, p as u64, len, a[3], sap, sal],
    );
    nosignal(ctx, a[3], r)
}

fn recvfrom(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let (p, len) = data_buf(ctx, a[1], a[2], Access::Write)?;
    let mut out = OutLen::addr(ctx, a[4], a[5])?;
    let n = sc(
        libc::SYS_recvfrom,
        [
            f.raw() as u64,
            p as u64,
            len,
            a[3],
            out.buf(),
            out.len_ptr(),
        ],
    )?;
    out.finish(ctx)?;
    Ok(n)
}

/// struct msghdr as the program lays it out.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct GuestMsghdr {
    name: u64,
    namelen: u32,
    _pad: u32,
    iov: u64,
    iovlen: u64,
    control: u64,
    controllen: u64,
    flags: i32,
    _pad2: u32,
}

/// Offsets of the msghdr fields recvmsg answers in (the rest is the program's).
const MSG_NAMELEN_OFF: u64 = 8;
const MSG_CONTROLLEN_OFF: u64 = 40;
const MSG_FLAGS_OFF: u64 = 48;

/// Largest control buffer the VMM copies (Linux's default optmem_max is 20 KiB).
const CONTROL_MAX: u64 = 65536;

fn sendmsg(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    // One copy of the header: every length below is this copy's, never re-read.
    let m: GuestMsghdr = ctx.process.mem.read_obj(a[1])?;
    let iov = iovecs(ctx, m.iov, m.iovlen, Access::Read)?;
    let name = if m.name != 0 {
        Some(sockaddr_in(ctx, m.name, m.namelen as u64, UnixUse::Reach)?)
    } else {
        None
    };
    let mut control = if m.control != 0 && m.controllen != 0 {
        if m.controllen > CONTROL_MAX {
            return Err(Errno(libc::ENOBUFS));
        }
        ctx.process.mem.read_bytes(m.control, m.controllen)?
    } else {
        Vec::new()
    };
    // Held until the host call is done (see rights_to_host).
    let _held = cmsg::rights_to_host(ctx, &mut control)?;
    // SAFETY: msghdr is plain data; zeroed is valid, and we fill every used field.
    let mut hm: libc::msghdr = unsafe { std::mem::zeroed() };
    if let Some(n) = &name {
        hm.msg_name = n.bytes.as_ptr() as *mut libc::c_void;
        hm.msg_namelen = n.bytes.len() as u32;
    }
    hm.msg_iov = iov.as_ptr() as *mut libc::iovec;
    hm.msg_iovlen = iov.len();
    if !control.is_empty() {
        hm.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        hm.msg_controllen = control.len();
    }
    let r = sc(
        libc::SYS_sendmsg,
        [f.raw() as u64, &hm as *const _ as u64, a[2], 0, 0, 0],
    );
    nosignal(ctx, a[2], r)
}

fn recvmsg(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let m: GuestMsghdr = ctx.process.mem.read_obj(a[1])?;
    // The answer goes back into the header: check it is writable before receiving.
    buf(
        ctx,
        a[1],
        std::mem::size_of::<GuestMsghdr>() as u64,
        Access::Write,
    )?;
    let iov = iovecs(ctx, m.iov, m.iovlen, Access::Write)?;
    // The sender's address arrives in a VMM buffer, to be copied out as getsockname's.
    let mut name = [0u8; SOCKADDR_MAX as usize];
    if m.name != 0 {
        buf(ctx, m.name, m.namelen as u64, Access::Write)?;
    }
    // The host writes at most this much; a larger buffer is simply not filled further.
    let control_len = if m.control != 0 {
        m.controllen.min(CONTROL_MAX)
    } else {
        0
    };
    buf(ctx, m.control, control_len, Access::Write)?;
    let mut control = vec![0u8; control_len as usize];
    // SAFETY: msghdr is plain data; zeroed is valid.
    let mut hm: libc::msghdr = unsafe { std::mem::zeroed() };
    if m.name != 0 {
        hm.msg_name = name.as_mut_ptr() as *mut libc::c_void;
        hm.msg_namelen = name.len() as u32;
    }
    hm.msg_iov = iov.as_ptr() as *mut libc::iovec;
    hm.msg_iovlen = iov.len();
    if !control.is_empty() {
        hm.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        hm.msg_controllen = control.len();
    }
    // Received descriptors arrive close-on-exec on the host side.
    let flags = a[2] | libc::MSG_CMSG_CLOEXEC as u64;
    let n = sc(
        libc::SYS_recvmsg,
        [f.raw() as u64, &mut hm as *mut _ as u64, flags, 0, 0, 0],
    )?;
    control.truncate(hm.msg_controllen);
    let cloexec = a[2] & libc::MSG_CMSG_CLOEXEC as u64 != 0;
    let got = cmsg::rights_from_host(ctx, &control, cloexec);
    let mut msg_flags = hm.msg_flags;
    if got.truncated {
        msg_flags |= libc::MSG_CTRUNC;
    }
    if !got.control.is_empty() {
        ctx.process.mem.write_bytes(m.control, &got.control)?;
    }
    let mem = &ctx.process.mem;
    if m.name != 0 {
        let sa = guest_sockaddr(&name[..(hm.msg_namelen as usize).min(name.len())]);
        let fits = sa.len().min(m.namelen as usize);
        mem.write_bytes(m.name, &sa[..fits])?;
        mem.write_obj(a[1] + MSG_NAMELEN_OFF, &(sa.len() as u32))?;
    }
    mem.write_obj(a[1] + MSG_CONTROLLEN_OFF, &(got.control.len() as u64))?;
    mem.write_obj(a[1] + MSG_FLAGS_OFF, &msg_flags)?;
    Ok(n)
}
