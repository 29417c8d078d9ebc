//! Control messages (sendmsg/recvmsg ancillary data): a bounded walk over the headers,
//! and SCM_RIGHTS descriptors translated between the guest table and host descriptors.
//!
//! The control buffer is a VMM-local copy, but its headers are the program's: every
//! length in it is checked against what is left of the buffer before it is used.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use super::util::file;
use super::SyscallCtx;
use crate::errno::Errno;
use crate::fd_table::OpenFile;
use crate::sync::lock;

/// sizeof(struct cmsghdr) on x86-64: u64 length, i32 level, i32 type.
const HDR: usize = 16;

/// One control message header, as found in a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cmsg {
    /// Offset of the header in the buffer.
    pub off: usize,
    /// cmsg_len: header plus data, unpadded.
    pub len: usize,
    /// cmsg_level.
    pub level: i32,
    /// cmsg_type.
    pub kind: i32,
}

impl Cmsg {
    /// Whether it carries descriptors.
    fn is_rights(&self) -> bool {
        self.level == libc::SOL_SOCKET && self.kind == libc::SCM_RIGHTS
    }
}

fn ne_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

fn ne_i32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// CMSG_ALIGN.
fn align(len: usize) -> Option<usize> {
    Some(len.checked_add(7)? & !7)
}

/// The headers of a control buffer, walked as Linux's `for_each_cmsghdr`: a header
/// whose length is below the header size or runs past the buffer is EINVAL (`CMSG_OK`),
/// as Linux's sendmsg answers. Every step advances by at least one header, so the walk
/// ends whatever the lengths say.
pub fn walk(control: &[u8]) -> Result<Vec<Cmsg>, Errno> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off.checked_add(HDR).is_some_and(|end| end <= control.len()) {
        let bad = || Errno::EINVAL;
        let len = usize::try_from(ne_u64(control, off).ok_or_else(bad)?).map_err(|_| bad())?;
        let level = ne_i32(control, off + 8).ok_or_else(bad)?;
        let kind = ne_i32(control, off + 12).ok_or_else(bad)?;
        if len < HDR || len > control.len() - off {
            return Err(Errno::EINVAL);
        }
        out.push(Cmsg {
            off,
            len,
            level,
            kind,
        });
        match align(len).and_then(|step| off.checked_add(step)) {
            Some(next) => off = next,
            None => break,
        }
    }
    Ok(out)
}

/// The descriptor slots of an SCM_RIGHTS message: offsets of whole `int`s in its data.
fn fd_slots(c: &Cmsg) -> impl Iterator<Item = usize> {
    let n = (c.len - HDR) / 4;
    let first = c.off + HDR;
    (0..n).map(move |i| first + 4 * i)
}

/// Rewrites the guest descriptors of SCM_RIGHTS messages into host descriptors, in
/// place, for sendmsg. The returned open files must live until the host call is done:
/// a number the program closes meanwhile must not let the VMM send whatever host
/// descriptor reuses it.
pub fn rights_to_host(
    ctx: &SyscallCtx<'_>,
    control: &mut [u8],
) -> Result<Vec<Arc<OpenFile>>, Errno> {
    let mut held = Vec::new();
    for c in walk(control)? {
        if !c.is_rights() {
            continue;
        }
        for at in fd_slots(&c) {
            let fd = ne_i32(control, at).ok_or(Errno::EINVAL)?;
            let f = file(ctx, fd as u32 as u64)?;
            control[at..at + 4].copy_from_slice(&f.raw().to_ne_bytes());
            held.push(f);
        }
    }
    Ok(held)
}

/// What recvmsg's control data becomes for the program.
pub struct Received {
    /// The control buffer with guest descriptor numbers (possibly shorter than what the
    /// host returned).
    pub control: Vec<u8>,
    /// Some descriptors did not fit the guest table: MSG_CTRUNC, as Linux sets.
    pub truncated: bool,
}

/// Installs the host descriptors of received SCM_RIGHTS messages in the guest table.
///
/// Every host descriptor is owned before any is installed, so none leaks: when the
/// table fills up, the rest are closed, the message keeps only those installed and
/// the caller sets MSG_CTRUNC (Linux's `scm_detach_fds`).
pub fn rights_from_host(ctx: &SyscallCtx<'_>, control: &[u8], cloexec: bool) -> Received {
    // The host kernel wrote this buffer; a malformed one cannot come from it, but stop
    // at the first bad header rather than trust it.
    let msgs = walk(control).unwrap_or_default();
    let owned: Vec<(Cmsg, Vec<OwnedFd>)> = msgs
        .iter()
        .map(|c| {
            let fds = if c.is_rights() {
                fd_slots(c)
                    .filter_map(|at| ne_i32(control, at))
                    .filter(|&fd| fd >= 0)
                    // SAFETY: the host kernel just installed these descriptors for
                    // this recvmsg; nothing else knows their numbers yet.
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
                    .collect()
            } else {
                Vec::new()
            };
            (*c, fds)
        })
        .collect();
    let mut out = Vec::with_capacity(control.len());
    let mut truncated = false;
    let mut table = lock(&ctx.process.fds);
    for (c, fds) in owned {
        let data_end = c.off + c.len;
        if !c.is_rights() {
            out.extend_from_slice(&control[c.off..data_end]);
        } else {
            let mut guest = Vec::new();
            for host in fds {
                if truncated {
                    // Dropping closes it.
                    continue;
                }
                match table.install(host, cloexec) {
                    Ok(n) => guest.push(n as i32),
                    Err(_) => truncated = true,
                }
            }
            if guest.is_empty() {
                continue;
            }
            let len = HDR + 4 * guest.len();
            out.extend_from_slice(&(len as u64).to_ne_bytes());
            out.extend_from_slice(&c.level.to_ne_bytes());
            out.extend_from_slice(&c.kind.to_ne_bytes());
            for g in guest {
                out.extend_from_slice(&g.to_ne_bytes());
            }
        }
        // Pad to the next header, as CMSG_SPACE does, but never past what the host
        // returned (a last message may end unpadded).
        let padded = align(out.len()).unwrap_or(out.len()).min(control.len());
        if padded > out.len() {
            out.resize(padded, 0);
        }
    }
    Received {
        control: out,
        truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(len: u64, level: i32, kind: i32) -> Vec<u8> {
        let mut v = len.to_ne_bytes().to_vec();
        v.extend_from_slice(&level.to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v
    }

    #[test]
    fn wrapping_length_is_einval_not_a_loop() {
        // A valid empty message, then one whose length wraps the offset back to 0.
        let mut b = hdr(16, 0, 0);
        b.extend(hdr(u64::MAX - 15, 0, 0));
        assert_eq!(walk(&b), Err(Errno::EINVAL));
        let b = hdr(u64::MAX, 0, 0);
        assert_eq!(walk(&b), Err(Errno::EINVAL));
    }

    #[test]
    fn short_and_overlong_headers_are_einval() {
        assert_eq!(walk(&hdr(8, 0, 0)), Err(Errno::EINVAL));
        assert_eq!(walk(&hdr(17, 0, 0)), Err(Errno::EINVAL));
    }

    #[test]
    fn walks_aligned_messages() {
        let mut b = hdr(20, libc::SOL_SOCKET, libc::SCM_RIGHTS);
        b.extend([1, 0, 0, 0, 0, 0, 0, 0]);
        b.extend(hdr(16, 0, 0));
        let w = walk(&b).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w[1].off, 24);
        assert_eq!(fd_slots(&w[0]).collect::<Vec<_>>(), vec![16]);
        // A buffer too short for a header holds no message (Linux's CMSG_FIRSTHDR).
        assert!(walk(&[0u8; 15]).unwrap().is_empty());
    }
}
