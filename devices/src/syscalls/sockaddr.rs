//! Socket addresses: guest sockaddrs copied in (AF_UNIX paths confined to the root),
//! and (addr, len*) out-parameters whose length the host never reads from guest memory.

use guest_memory::Access;
use std::ffi::CString;
use std::os::fd::RawFd;
use std::sync::Mutex;

use super::util::buf;
use super::SyscallCtx;
use crate::errno::Errno;
use crate::path::Resolved;
use crate::sync::lock;

/// Largest sockaddr a program may pass (sizeof(struct sockaddr_storage)).
pub const SOCKADDR_MAX: u64 = 128;

/// sizeof(sun_path).
const SUN_PATH: usize = 108;

/// A guest sockaddr in VMM memory, ready for the host.
pub struct HostSockaddr {
    /// The bytes to hand the host.
    pub bytes: Vec<u8>,
    /// The descriptor an AF_UNIX path goes through; it must outlive the host call.
    _through: Option<Resolved>,
    /// The AF_UNIX path as the program gave it (what getsockname answers after bind).
    guest_path: Vec<u8>,
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
            guest_path: Vec::new(),
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
        guest_path: path.to_vec(),
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
/// buffer. An address is received into a VMM buffer and copied out (after an AF_UNIX
/// name of the VMM's is turned back into the program's path); an option value, which
/// may be large, is written by the host into the checked guest buffer. `finish` writes
/// the answer back.
pub struct OutLen {
    lenp: u64,
    /// The program's length, as read once.
    guest_len: u32,
    guest_addr: u64,
    /// The length the host reads and answers in.
    len: u32,
    /// Option values: the checked guest buffer. Addresses: null (see `local`).
    addr: *mut u8,
    /// Addresses: the VMM buffer the host writes the address into.
    local: Option<Box<[u8; SOCKADDR_MAX as usize]>>,
    active: bool,
}

impl OutLen {
    /// For accept/getsockname/recvfrom: a NULL `addr` means no address is wanted and
    /// `lenp` is not touched, as Linux does.
    pub fn addr(ctx: &SyscallCtx<'_>, addr: u64, lenp: u64) -> Result<OutLen, Errno> {
        if addr == 0 {
            return Ok(OutLen {
                lenp: 0,
                guest_len: 0,
                guest_addr: 0,
                len: 0,
                addr: std::ptr::null_mut(),
                local: None,
                active: false,
            });
        }
        let mut out = Self::read(ctx, addr, lenp)?;
        out.local = Some(Box::new([0; SOCKADDR_MAX as usize]));
        out.len = SOCKADDR_MAX as u32;
        out.addr = std::ptr::null_mut();
        Ok(out)
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
        buf(ctx, lenp, 4, Access::Write)?;
        let p = if addr == 0 {
            std::ptr::null_mut()
        } else {
            buf(ctx, addr, u64::from(len), Access::Write)?
        };
        Ok(OutLen {
            lenp,
            guest_len: len,
            guest_addr: addr,
            len,
            addr: p,
            local: None,
            active: true,
        })
    }

    /// The buffer the host writes into.
    pub fn buf(&mut self) -> u64 {
        match &mut self.local {
            Some(b) => b.as_mut_ptr() as u64,
            None => self.addr as u64,
        }
    }

    /// The VMM-local length, for the host (NULL when no address is wanted).
    pub fn len_ptr(&mut self) -> u64 {
        if self.active {
            &mut self.len as *mut u32 as u64
        } else {
            0
        }
    }

    /// Writes the host's answer back to the program: for an address, as much of it as
    /// the program's buffer holds, and its full length, as Linux does.
    pub fn finish(&self, ctx: &SyscallCtx<'_>) -> Result<(), Errno> {
        if !self.active {
            return Ok(());
        }
        let mem = &ctx.process.mem;
        let Some(local) = &self.local else {
            return mem.write_obj(self.lenp, &self.len);
        };
        let got = &local[..(self.len as usize).min(local.len())];
        let sa = guest_sockaddr(got);
        let n = sa.len().min(self.guest_len as usize);
        mem.write_bytes(self.guest_addr, &sa[..n])?;
        mem.write_obj(self.lenp, &(sa.len() as u32))
    }
}

/// Host AF_UNIX names the VMM bound for the program, with the program's path for each.
/// The VMM runs one program, so one table per VMM process is the program's.
static BOUND: Mutex<Vec<BoundName>> = Mutex::new(Vec::new());

/// How many bound names are remembered; the oldest go first (a socket bound that long
/// ago answers getsockname with its host name, which is harmless).
const BOUND_MAX: usize = 1024;

struct BoundName {
    host: Vec<u8>,
    guest: Vec<u8>,
    /// Keeps the directory descriptor in the host name open, so its number is not
    /// reused for another name while this entry stands.
    _dir: Resolved,
}

/// Records a successful bind of `sa` (from `sockaddr_in`), so that the host name it
/// bound answers as the program's path.
pub fn remember_bound(sa: HostSockaddr) {
    let Some(dir) = sa._through else {
        return;
    };
    let guest = sa.guest_path;
    let host = sun_path(&sa.bytes).to_vec();
    let mut t = lock(&BOUND);
    t.retain(|b| b.host != host);
    if t.len() >= BOUND_MAX {
        t.remove(0);
    }
    t.push(BoundName {
        host,
        guest,
        _dir: dir,
    });
}

/// The path of an AF_UNIX sockaddr, without the family and the terminating NUL.
fn sun_path(sa: &[u8]) -> &[u8] {
    let p = sa.get(2..).unwrap_or_default();
    &p[..p.iter().position(|&b| b == 0).unwrap_or(p.len())]
}

/// An address the host answered, as the program should see it: an AF_UNIX name the
/// VMM bound for the program becomes the path the program bound.
pub fn guest_sockaddr(sa: &[u8]) -> Vec<u8> {
    let is_unix = sa.len() > 2 && u16::from_ne_bytes([sa[0], sa[1]]) == libc::AF_UNIX as u16;
    if !is_unix || sa[2] == 0 {
        return sa.to_vec();
    }
    let host = sun_path(sa);
    let t = lock(&BOUND);
    match t.iter().rev().find(|b| b.host == host) {
        Some(b) => {
            let mut v = sa[..2].to_vec();
            v.extend_from_slice(&b.guest);
            v.push(0);
            v
        }
        None => sa.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    fn unix(path: &[u8]) -> Vec<u8> {
        let mut v = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(path);
        v.push(0);
        v
    }

    #[test]
    fn bound_names_answer_as_the_programs_path() {
        let dir: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let host = b"/proc/self/fd/999999/s.sock";
        let sa = HostSockaddr {
            bytes: unix(host),
            _through: Some(Resolved::Parent(dir, c"s.sock".to_owned())),
            guest_path: b"/../s.sock".to_vec(),
        };
        remember_bound(sa);
        assert_eq!(guest_sockaddr(&unix(host)), unix(b"/../s.sock"));
        // Names the VMM did not bind, abstract names and other families pass unchanged.
        assert_eq!(guest_sockaddr(&unix(b"/elsewhere")), unix(b"/elsewhere"));
        let abs = unix(b"\0abstract");
        assert_eq!(guest_sockaddr(&abs), abs);
        let inet = [2u8, 0, 0, 80, 127, 0, 0, 1];
        assert_eq!(guest_sockaddr(&inet), inet.to_vec());
        assert_eq!(sun_path(&unix(b"/a")), b"/a");
        assert_eq!(sun_path(&[1, 0]), b"");
    }
}
