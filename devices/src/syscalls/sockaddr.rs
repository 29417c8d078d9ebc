//! Socket addresses: guest sockaddrs copied in (AF_UNIX paths confined to the root),
//! and (addr, len*) out-parameters whose length the host never reads from guest memory.

use std::ffi::CString;
use std::os::fd::RawFd;

use super::util::buf;
use super::SyscallCtx;
use crate::errno::Errno;
use crate::path::Resolved;

/// Largest sockaddr a program may pass (sizeof(struct sockaddr_storage)).
const SOCKADDR_MAX: u64 = 128;

/// sizeof(sun_path).
const SUN_PATH: usize = 108;

/// A guest sockaddr in VMM memory, ready for the host.
pub struct HostSockaddr {
    /// The bytes to hand the host.
    pub bytes: Vec<u8>,
    /// The descriptor an AF_UNIX path goes through; it must outlive the host call.
    _through: Option<Resolved>,
}

impl HostSockaddr {
    /// (pointer, length) for a host call.
    pub fn raw(&self) -> (u64, u64) {
        (self.bytes.as_ptr() as u64, self.bytes.len() as u64)
    }
}

/// How an AF_UNIX path is used: bind creates the last component, connect and sendto
/// follow it to an existing socket.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum UnixUse {
    /// bind.
    Create,
    /// connect, sendto, sendmsg.
    Reach,
}

/// Copies a guest sockaddr. A pathname AF_UNIX address is resolved by the confined
/// resolver and handed to the host as `/proc/self/fd/<dir>/<name>` (bind) or
/// `/proc/self/fd/<socket>` (connect) of the VMM, so `..`, symlinks and relative names
/// resolve inside the root as every other path does, never by string joining.
pub fn sockaddr_in(
    ctx: &SyscallCtx<'_>,
    addr: u64,
    len: u64,
    how: UnixUse,
) -> Result<HostSockaddr, Errno> {
    if len > SOCKADDR_MAX {
        return Err(Errno::EINVAL);
    }
    let sa = ctx.process.mem.read_bytes(addr, len)?;
    let is_unix = sa.len() >= 2 && u16::from_ne_bytes([sa[0], sa[1]]) == libc::AF_UNIX as u16;
    // An abstract address (sun_path[0] == 0) or an unnamed one names no file.
    if !is_unix || sa.get(2).is_none_or(|&b| b == 0) {
        return Ok(HostSockaddr {
            bytes: sa,
            _through: None,
        });
    }
    // Linux ends sun_path at the first NUL or at the address length.
    let path = &sa[2..];
    let path = &path[..path.iter().position(|&b| b == 0).unwrap_or(path.len())];
    let guest = CString::new(path).map_err(|_| Errno::EINVAL)?;
    let resolved = match how {
        UnixUse::Create => ctx.process.fs.parent(None, &guest, true)?,
        UnixUse::Reach => ctx.process.fs.target(None, &guest, false)?,
    };
    let host = host_path(&resolved);
    if host.len() >= SUN_PATH {
        return Err(Errno::ENAMETOOLONG);
    }
    let mut bytes = sa[..2].to_vec();
    bytes.extend_from_slice(&host);
    bytes.push(0);
    Ok(HostSockaddr {
        bytes,
        _through: Some(resolved),
    })
}

/// The host path that names a resolved object through the VMM's descriptor for it.
fn host_path(r: &Resolved) -> Vec<u8> {
    let (dirfd, name): (RawFd, CString) = r.at();
    if dirfd == libc::AT_FDCWD {
        return name.into_bytes();
    }
    let mut v = format!("/proc/self/fd/{dirfd}/").into_bytes();
    v.extend_from_slice(name.as_bytes());
    v
}

/// "127.0.0.1:6379" or "[::1]:80" for an AF_INET/AF_INET6 sockaddr.
pub fn describe_inet(sa: &[u8]) -> Option<String> {
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

/// An (addr, len*) out-parameter pair (accept, getsockname, recvfrom, getsockopt).
///
/// The length is read from the program once, into `len`; the buffer is checked against
/// that value and the host gets a pointer to the VMM's copy, so another guest thread
/// that changes the length meanwhile cannot make the host write past the checked
/// buffer. `finish` writes the host's answer back.
pub struct OutLen {
    lenp: u64,
    len: u32,
    addr: *mut u8,
    active: bool,
}

impl OutLen {
    /// For accept/getsockname/recvfrom: a NULL `addr` means no address is wanted and
    /// `lenp` is not touched, as Linux does.
    pub fn addr(ctx: &SyscallCtx<'_>, addr: u64, lenp: u64) -> Result<OutLen, Errno> {
        if addr == 0 {
            return Ok(OutLen {
                lenp: 0,
                len: 0,
                addr: std::ptr::null_mut(),
                active: false,
            });
        }
        Self::read(ctx, addr, lenp)
    }

    /// For getsockopt: the length is always read; a NULL value buffer stays NULL for
    /// the host to refuse.
    pub fn opt(ctx: &SyscallCtx<'_>, addr: u64, lenp: u64) -> Result<OutLen, Errno> {
        Self::read(ctx, addr, lenp)
    }

    fn read(ctx: &SyscallCtx<'_>, addr: u64, lenp: u64) -> Result<OutLen, Errno> {
        let len: u32 = ctx.process.mem.read_obj(lenp)?;
        // Linux takes the length as an int and refuses a negative one.
        if (len as i32) < 0 {
            return Err(Errno::EINVAL);
        }
        // The answer goes back there: check it now, before the host acts.
        buf(ctx, lenp, 4)?;
        let addr = if addr == 0 {
            std::ptr::null_mut()
        } else {
            buf(ctx, addr, u64::from(len))?
        };
        Ok(OutLen {
            lenp,
            len,
            addr,
            active: true,
        })
    }

    /// The checked buffer, for the host.
    pub fn buf(&self) -> u64 {
        self.addr as u64
    }

    /// The VMM-local length, for the host (NULL when no address is wanted).
    pub fn len_ptr(&mut self) -> u64 {
        if self.active {
            &mut self.len as *mut u32 as u64
        } else {
            0
        }
    }

    /// Writes the length the host answered back to the program.
    pub fn finish(&self, ctx: &SyscallCtx<'_>) -> Result<(), Errno> {
        if self.active {
            ctx.process.mem.write_obj(self.lenp, &self.len)?;
        }
        Ok(())
    }
}
