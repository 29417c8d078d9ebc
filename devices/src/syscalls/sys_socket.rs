//! Sockets, passed through to the host on host descriptors. AF_UNIX paths are
//! placed under the program's root.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use super::util::{buf, epipe_kills, file, install, iovecs, opt_buf, sc};
use super::{ParkedFd, SysResult, SyscallCtx, SyscallEntry};
use crate::errno::Errno;
use crate::fd_table::OpenFile;
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

const SOCKADDR_MAX: u64 = 128;

fn socket(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let fd = sc(
        libc::SYS_socket,
        [a[0], a[1] | libc::SOCK_CLOEXEC as u64, a[2], 0, 0, 0],
    )?;
    install(ctx, fd, a[1] & libc::SOCK_CLOEXEC as u64 != 0)
}

fn socketpair(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    buf(ctx, a[3], 8)?;
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
    let cloexec = a[1] & libc::SOCK_CLOEXEC as u64 != 0;
    let x = install(ctx, sv[0] as u64, cloexec)?;
    let y = install(ctx, sv[1] as u64, cloexec)?;
    ctx.process.mem.write_obj(a[3], &[x as i32, y as i32])?;
    Ok(0)
}

/// Copies a guest sockaddr, rewriting an AF_UNIX path into the root.
fn sockaddr_in(ctx: &SyscallCtx<'_>, addr: u64, len: u64) -> Result<Vec<u8>, Errno> {
    if len > SOCKADDR_MAX {
        return Err(Errno::EINVAL);
    }
    let mut sa = ctx.process.mem.read_bytes(addr, len)?;
    if sa.len() > 2 && u16::from_ne_bytes([sa[0], sa[1]]) == libc::AF_UNIX as u16 && sa[2] != 0 {
        let end = sa[2..]
            .iter()
            .position(|&b| b == 0)
            .map_or(sa.len(), |i| i + 2);
        let host = ctx.process.fs.host_socket_path(&sa[2..end]);
        if host.len() >= 108 {
            return Err(Errno::ENAMETOOLONG);
        }
        sa.truncate(2);
        sa.extend_from_slice(&host);
        sa.push(0);
    }
    Ok(sa)
}

fn bind(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let sa = sockaddr_in(ctx, a[1], a[2])?;
    let r = sc(
        libc::SYS_bind,
        [f.raw() as u64, sa.as_ptr() as u64, sa.len() as u64, 0, 0, 0],
    );
    if r == Err(Errno(libc::EADDRINUSE)) {
        if let Some(addr) = describe_inet(&sa) {
            eprintln!("ditto: {addr} is already in use on this host");
        }
    }
    r
}

/// "127.0.0.1:6379" or "[::1]:80" for an AF_INET/AF_INET6 sockaddr.
fn describe_inet(sa: &[u8]) -> Option<String> {
    let family = u16::from_ne_bytes([*sa.first()?, *sa.get(1)?]);
    let port = u16::from_be_bytes([*sa.get(2)?, *sa.get(3)?]);
    match family as i32 {
        libc::AF_INET => {
            let ip = std::net::Ipv4Addr::new(*sa.get(4)?, *sa.get(5)?, *sa.get(6)?, *sa.get(7)?);
            Some(format!("{ip}:{port}"))
        }
        libc::AF_INET6 => {
            let b: [u8; 16] = sa.get(8..24)?.try_into().ok()?;
            Some(format!("[{}]:{port}", std::net::Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

fn connect(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let sa = sockaddr_in(ctx, a[1], a[2])?;
    sc(
        libc::SYS_connect,
        [f.raw() as u64, sa.as_ptr() as u64, sa.len() as u64, 0, 0, 0],
    )
}

fn listen(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    sc(libc::SYS_listen, [f.raw() as u64, a[1], 0, 0, 0, 0])
}

/// (addr, addrlen*) out-parameters: both checked, addrlen read for the buffer size.
fn addr_out(ctx: &SyscallCtx<'_>, addr: u64, lenp: u64) -> Result<(u64, u64), Errno> {
    if addr == 0 {
        return Ok((0, 0));
    }
    let len: u32 = ctx.process.mem.read_obj(lenp)?;
    let a = buf(ctx, addr, len as u64)?;
    let l = buf(ctx, lenp, 4)?;
    Ok((a as u64, l as u64))
}

fn accept(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    accept4(ctx, [a[0], a[1], a[2], 0, 0, 0])
}

fn accept4(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let (addr, lenp) = addr_out(ctx, a[1], a[2])?;
    let fd = sc(
        libc::SYS_accept4,
        [
            f.raw() as u64,
            addr,
            lenp,
            a[3] | libc::SOCK_CLOEXEC as u64,
            0,
            0,
        ],
    )?;
    let cloexec = a[3] & libc::SOCK_CLOEXEC as u64 != 0;
    if ctx.process.det.get().is_some() {
        // SAFETY: fd was just returned by a successful accept4 and is ours.
        let host = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        ctx.thread.parked_fd = Some(ParkedFd {
            file: Arc::new(OpenFile::new(host)),
            cloexec,
            at: None,
        });
        // The number comes at the re-entry turn (ParkedFd).
        return Ok(0);
    }
    install(ctx, fd, cloexec)
}

fn getsockname(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let (addr, lenp) = addr_out(ctx, a[1], a[2])?;
    sc(libc::SYS_getsockname, [f.raw() as u64, addr, lenp, 0, 0, 0])
}

fn getpeername(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let (addr, lenp) = addr_out(ctx, a[1], a[2])?;
    sc(libc::SYS_getpeername, [f.raw() as u64, addr, lenp, 0, 0, 0])
}

fn setsockopt(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let v = opt_buf(ctx, a[3], a[4])?;
    sc(
        libc::SYS_setsockopt,
        [f.raw() as u64, a[1], a[2], v as u64, a[4], 0],
    )
}

fn getsockopt(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let (v, lenp) = addr_out(ctx, a[3], a[4])?;
    sc(
        libc::SYS_getsockopt,
        [f.raw() as u64, a[1], a[2], v, lenp, 0],
    )
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
    let p = buf(ctx, a[1], a[2])?;
    let sa = if a[4] != 0 {
        Some(sockaddr_in(ctx, a[4], a[5])?)
    } else {
        None
    };
    let (sap, sal) = sa
        .as_ref()
        .map_or((0, 0), |s| (s.as_ptr() as u64, s.len() as u64));
    let r = sc(
        libc::SYS_sendto,
        [f.raw() as u64, p as u64, a[2], a[3], sap, sal],
    );
    nosignal(ctx, a[3], r)
}

fn recvfrom(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let p = buf(ctx, a[1], a[2])?;
    let (addr, lenp) = addr_out(ctx, a[4], a[5])?;
    sc(
        libc::SYS_recvfrom,
        [f.raw() as u64, p as u64, a[2], a[3], addr, lenp],
    )
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

const SOL_SOCKET: i32 = libc::SOL_SOCKET;
const SCM_RIGHTS: i32 = libc::SCM_RIGHTS;

/// Rewrites the descriptors inside SCM_RIGHTS control messages, in place.
/// `to_host` translates guest -> host on send; otherwise host fds are installed in
/// the guest table on receive.
fn translate_rights(ctx: &SyscallCtx<'_>, control: &mut [u8], to_host: bool) -> Result<(), Errno> {
    let mut off = 0usize;
    while off + 16 <= control.len() {
        let len = u64::from_ne_bytes(
            control[off..off + 8]
                .try_into()
                .map_err(|_| Errno::EINVAL)?,
        ) as usize;
        let level = i32::from_ne_bytes(
            control[off + 8..off + 12]
                .try_into()
                .map_err(|_| Errno::EINVAL)?,
        );
        let kind = i32::from_ne_bytes(
            control[off + 12..off + 16]
                .try_into()
                .map_err(|_| Errno::EINVAL)?,
        );
        if len < 16 || off + len > control.len() {
            break;
        }
        if level == SOL_SOCKET && kind == SCM_RIGHTS {
            for i in (off + 16..off + len).step_by(4) {
                if i + 4 > off + len {
                    break;
                }
                let fd =
                    i32::from_ne_bytes(control[i..i + 4].try_into().map_err(|_| Errno::EINVAL)?);
                let out = if to_host {
                    file(ctx, fd as u64)?.raw()
                } else {
                    install(ctx, fd as u64, false)? as i32
                };
                control[i..i + 4].copy_from_slice(&out.to_ne_bytes());
            }
        }
        off += (len + 7) & !7;
    }
    Ok(())
}

fn sendmsg(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let f = file(ctx, a[0])?;
    let m: GuestMsghdr = ctx.process.mem.read_obj(a[1])?;
    let iov = iovecs(ctx, m.iov, m.iovlen)?;
    let name = if m.name != 0 {
        Some(sockaddr_in(ctx, m.name, m.namelen as u64)?)
    } else {
        None
    };
    let mut control = if m.control != 0 {
        if m.controllen > 65536 {
            return Err(Errno::EINVAL);
        }
        ctx.process.mem.read_bytes(m.control, m.controllen)?
    } else {
        Vec::new()
    };
    translate_rights(ctx, &mut control, true)?;
    // SAFETY: msghdr is plain data; zeroed is valid, and we fill every used field.
    let mut hm: libc::msghdr = unsafe { std::mem::zeroed() };
    if let Some(n) = &name {
        hm.msg_name = n.as_ptr() as *mut libc::c_void;
        hm.msg_namelen = n.len() as u32;
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
    let mut m: GuestMsghdr = ctx.process.mem.read_obj(a[1])?;
    let iov = iovecs(ctx, m.iov, m.iovlen)?;
    let name = if m.name != 0 {
        buf(ctx, m.name, m.namelen as u64)?
    } else {
        std::ptr::null_mut()
    };
    if m.controllen > 65536 {
        return Err(Errno::EINVAL);
    }
    let mut control = vec![
        0u8;
        if m.control != 0 {
            m.controllen as usize
        } else {
            0
        }
    ];
    // SAFETY: msghdr is plain data; zeroed is valid.
    let mut hm: libc::msghdr = unsafe { std::mem::zeroed() };
    hm.msg_name = name as *mut libc::c_void;
    hm.msg_namelen = if name.is_null() { 0 } else { m.namelen };
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
    translate_rights(ctx, &mut control, false)?;
    if !control.is_empty() {
        ctx.process.mem.write_bytes(m.control, &control)?;
    }
    m.namelen = hm.msg_namelen;
    m.controllen = hm.msg_controllen as u64;
    m.flags = hm.msg_flags;
    ctx.process.mem.write_obj(a[1], &m)?;
    Ok(n)
}
