//! What a replicated syscall does to the program, beyond RAX, spelled out per syscall:
//! - for a Recorded call, the guest memory it writes ([`written`], after a [`plan`] made
//!   before the call for the sizes the call overwrites), which the primary ships and the
//!   secondary copies in instead of executing the call;
//! - for a Compared call, the bytes it would output ([`would_output`]), which both replicas
//!   compute the same way, and the side effects the secondary must mimic without performing
//!   the output ([`mimic_output`]).

use crate::errno::Errno;
use crate::process::Process;
use crate::sync::lock;
use guest_memory::Access;

/// Most bytes one output call is compared over; beyond that only the length counts.
const OUTPUT_CAP: u64 = 64 << 20;

/// Sizes read before a Recorded call: buffers whose capacity the call reads and overwrites.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Capacity of a sockaddr buffer (accept, recvfrom, getsockname...) or of getsockopt's
    /// value: `*addrlen` before the call.
    cap: u32,
    /// recvmsg: the msghdr fields that bound what the kernel writes.
    msg: Option<MsgHdr>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct MsgHdr {
    name: u64,
    namelen: u32,
    iov: u64,
    iovlen: u64,
    control: u64,
    controllen: u64,
}

fn read_u32(p: &Process, gva: u64) -> Result<u32, Errno> {
    p.mem.read_obj::<u32>(gva)
}

fn read_u64(p: &Process, gva: u64) -> Result<u64, Errno> {
    p.mem.read_obj::<u64>(gva)
}

fn read_msghdr(p: &Process, gva: u64) -> Result<MsgHdr, Errno> {
    Ok(MsgHdr {
        name: read_u64(p, gva)?,
        namelen: read_u32(p, gva + 8)?,
        iov: read_u64(p, gva + 16)?,
        iovlen: read_u64(p, gva + 24)?,
        control: read_u64(p, gva + 32)?,
        controllen: read_u64(p, gva + 40)?,
    })
}

/// Reads what a Recorded call's outputs depend on, before the call.
#[allow(non_upper_case_globals)]
pub fn plan(p: &Process, nr: u64, a: [u64; 6]) -> Plan {
    use libc::*;
    let mut plan = Plan::default();
    match nr as i64 {
        SYS_accept | SYS_accept4 | SYS_getsockname | SYS_getpeername if a[2] != 0 => {
            plan.cap = read_u32(p, a[2]).unwrap_or(0);
        }
        SYS_recvfrom if a[5] != 0 => plan.cap = read_u32(p, a[5]).unwrap_or(0),
        SYS_getsockopt if a[4] != 0 => plan.cap = read_u32(p, a[4]).unwrap_or(0),
        SYS_recvmsg => plan.msg = read_msghdr(p, a[1]).ok(),
        _ => {}
    }
    plan
}

/// The iovec array at `iov` (`n` entries), as (base, len) pairs.
fn iovecs(p: &Process, iov: u64, n: u64) -> Result<Vec<(u64, u64)>, Errno> {
    if n > 1024 {
        return Err(Errno::EINVAL);
    }
    (0..n)
        .map(|i| Ok((read_u64(p, iov + 16 * i)?, read_u64(p, iov + 16 * i + 8)?)))
        .collect()
}

/// The first `total` bytes scattered over `iov`, as ranges.
fn scatter(out: &mut Vec<(u64, u64)>, iov: &[(u64, u64)], mut total: u64) {
    for &(base, len) in iov {
        if total == 0 {
            break;
        }
        let n = len.min(total);
        out.push((base, n));
        total -= n;
    }
}

/// Ranges of guest memory (address, length) that a Recorded call wrote, given its result.
#[allow(non_upper_case_globals)]
pub fn written(p: &Process, nr: u64, a: [u64; 6], plan: &Plan, ret: i64) -> Vec<(u64, u64)> {
    use libc::*;
    let mut w = Vec::new();
    let nr = nr as i64;
    if ret < 0 {
        return written_before_failing(p, nr, a);
    }
    let r = ret as u64;
    match nr {
        // Lengths from `ret` are clamped to the call's own buffer: on the secondary `ret` is
        // the primary's, and a record must not make it write past what its call names.
        SYS_read | SYS_pread64 => opt(&mut w, a[1], r.min(a[2])),
        SYS_getrandom => opt(&mut w, a[0], r.min(a[1])),
        SYS_readv | SYS_preadv | SYS_preadv2 => {
            if let Ok(iov) = iovecs(p, a[1], a[2]) {
                scatter(&mut w, &iov, r);
            }
        }
        SYS_recvfrom => {
            opt(&mut w, a[1], r.min(a[2]));
            addr_out(p, &mut w, a[4], a[5], plan.cap);
        }
        SYS_recvmsg => {
            if let Some(m) = plan.msg {
                if let Ok(iov) = iovecs(p, m.iov, m.iovlen) {
                    scatter(&mut w, &iov, r);
                }
                let hdr = a[1];
                w.push((hdr + 8, 4)); // msg_namelen
                w.push((hdr + 40, 8)); // msg_controllen
                w.push((hdr + 48, 4)); // msg_flags
                if m.name != 0 {
                    let got = read_u32(p, hdr + 8).unwrap_or(0);
                    if got.min(m.namelen) > 0 {
                        w.push((m.name, u64::from(got.min(m.namelen))));
                    }
                }
                if m.control != 0 {
                    let got = read_u64(p, hdr + 40).unwrap_or(0).min(m.controllen);
                    if got > 0 {
                        w.push((m.control, got));
                    }
                }
            }
        }
        SYS_accept | SYS_accept4 | SYS_getsockname | SYS_getpeername => {
            addr_out(p, &mut w, a[1], a[2], plan.cap)
        }
        SYS_getsockopt => addr_out(p, &mut w, a[3], a[4], plan.cap),
        SYS_socketpair => opt(&mut w, a[3], 8),
        SYS_clock_gettime | SYS_clock_getres => opt(&mut w, a[1], 16),
        SYS_gettimeofday => {
            opt(&mut w, a[0], 16);
            opt(&mut w, a[1], 8);
        }
        SYS_time => opt(&mut w, a[0], 8),
        SYS_times => opt(&mut w, a[0], 32),
        SYS_poll | SYS_ppoll => opt(&mut w, a[0], a[1].saturating_mul(8)),
        SYS_select | SYS_pselect6 => {
            let set = a[0].div_ceil(64).saturating_mul(8);
            opt(&mut w, a[1], set);
            opt(&mut w, a[2], set);
            opt(&mut w, a[3], set);
            opt(&mut w, a[4], 16);
        }
        SYS_epoll_wait | SYS_epoll_pwait | SYS_epoll_pwait2 => {
            opt(&mut w, a[1], r.min(a[2]).saturating_mul(12))
        }
        SYS_rt_sigtimedwait => opt(&mut w, a[1], 128),
        SYS_uname => opt(&mut w, a[0], 390),
        SYS_sysinfo => opt(&mut w, a[0], 112),
        SYS_getrlimit => opt(&mut w, a[1], 16),
        SYS_prlimit64 => opt(&mut w, a[3], 16),
        SYS_getrusage => opt(&mut w, a[1], 144),
        SYS_getgroups if a[0] > 0 => opt(&mut w, a[1], r.min(a[0]).saturating_mul(4)),
        SYS_getresuid | SYS_getresgid => {
            opt(&mut w, a[0], 4);
            opt(&mut w, a[1], 4);
            opt(&mut w, a[2], 4);
        }
        SYS_sched_getaffinity => opt(&mut w, a[2], r.min(a[1])),
        SYS_fstat => opt(&mut w, a[1], 144),
        SYS_stat | SYS_lstat => opt(&mut w, a[1], 144),
        SYS_readlink => opt(&mut w, a[1], r.min(a[2])),
        SYS_readlinkat => opt(&mut w, a[2], r.min(a[3])),
        SYS_getdents64 => opt(&mut w, a[1], r.min(a[2])),
        SYS_fcntl if a[1] as i32 == F_GETLK || a[1] as i32 == F_OFD_GETLK => opt(&mut w, a[2], 32),
        SYS_copy_file_range => {
            opt(&mut w, a[1], 8);
            opt(&mut w, a[3], 8);
        }
        SYS_newfstatat => opt(&mut w, a[2], 144),
        SYS_statx => opt(&mut w, a[4], 256),
        SYS_fstatfs => opt(&mut w, a[1], 120),
        SYS_getcpu => {
            opt(&mut w, a[0], 4);
            opt(&mut w, a[1], 4);
        }
        SYS_timerfd_gettime => opt(&mut w, a[1], 32),
        SYS_timerfd_settime => opt(&mut w, a[3], 32),
        SYS_setitimer => opt(&mut w, a[2], 32),
        SYS_getitimer => opt(&mut w, a[1], 32),
        SYS_timer_create => opt(&mut w, a[2], 4),
        SYS_timer_settime => opt(&mut w, a[3], 32),
        SYS_timer_gettime => opt(&mut w, a[1], 32),
        SYS_ioctl => match a[1] {
            FIONREAD => opt(&mut w, a[2], 4),
            TIOCGWINSZ => opt(&mut w, a[2], 8),
            TCGETS => opt(&mut w, a[2], 36),
            TIOCGPGRP => opt(&mut w, a[2], 4),
            _ => {}
        },
        _ => {}
    }
    w
}

/// What a failed Recorded call may have written: the outputs a call writes one after
/// another, so that it can fail on a later one (a bad pointer) after writing an earlier one,
/// as Linux does (getcpu's cpu before its node), or write one as it fails (the remaining
/// time of a sleep that a signal ended), where the program can write them.
///
/// The primary ships each as its memory holds it after the call, written or not, and the
/// secondary, whose memory there is the primary's before the call, copies them in: an
/// output the call did not reach is copied over itself. Without them the secondary kept
/// its old bytes where the primary's call had written (sysfuzz seeds 14 and 21: a getcpu
/// into the fuzzer's scratch memory with a bad node pointer, and later calls read paths
/// from there). Both replicas list the same ranges: the call's arguments and the program's
/// protections are the same in both, and a Recorded call changes no protection.
#[allow(non_upper_case_globals)]
fn written_before_failing(p: &Process, nr: i64, a: [u64; 6]) -> Vec<(u64, u64)> {
    use libc::*;
    let mut w = Vec::new();
    match nr {
        SYS_nanosleep => opt(&mut w, a[1], 16),
        SYS_clock_nanosleep => opt(&mut w, a[3], 16),
        SYS_getcpu => {
            opt(&mut w, a[0], 4);
            opt(&mut w, a[1], 4);
        }
        SYS_gettimeofday => {
            opt(&mut w, a[0], 16);
            opt(&mut w, a[1], 8);
        }
        SYS_getresuid | SYS_getresgid => {
            opt(&mut w, a[0], 4);
            opt(&mut w, a[1], 4);
            opt(&mut w, a[2], 4);
        }
        SYS_select | SYS_pselect6 => {
            let set = a[0].div_ceil(64).saturating_mul(8);
            opt(&mut w, a[1], set);
            opt(&mut w, a[2], set);
            opt(&mut w, a[3], set);
            opt(&mut w, a[4], 16);
        }
        SYS_copy_file_range => {
            opt(&mut w, a[1], 8);
            opt(&mut w, a[3], 8);
        }
        _ => {}
    }
    w.retain(|&(gva, len)| p.mem.accessible(gva, len, Access::Write) == len);
    w
}

fn opt(w: &mut Vec<(u64, u64)>, gva: u64, len: u64) {
    if gva != 0 && len > 0 {
        w.push((gva, len));
    }
}

/// The sockaddr pattern: `*len` (4 bytes) and up to the pre-call capacity of `addr`.
fn addr_out(p: &Process, w: &mut Vec<(u64, u64)>, addr: u64, len: u64, cap: u32) {
    if len == 0 {
        return;
    }
    w.push((len, 4));
    let got = read_u32(p, len).unwrap_or(0);
    if addr != 0 && got.min(cap) > 0 {
        w.push((addr, u64::from(got.min(cap))));
    }
}

/// Where a replayed call's results go on the secondary, and how many landed at another
/// address than the primary's.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Placed {
    /// Bytes written.
    pub bytes: u64,
    /// Parts written at the secondary's own address where it differs from the primary's.
    pub relocated: usize,
}

/// Why a replayed result could not be placed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlaceError {
    /// The secondary's call has no buffer, or a buffer of another size, for part `index`.
    #[error("the primary's result part {index} is {primary_len} bytes at {primary_addr:#x}; the secondary's call {secondary}")]
    Shape {
        /// Which part of the result.
        index: usize,
        /// Its address in the primary.
        primary_addr: u64,
        /// Its size.
        primary_len: usize,
        /// What the secondary's call has in its place.
        secondary: String,
    },
    /// The secondary's buffer cannot be written.
    #[error(
        "the primary's result part {index} does not fit at {addr:#x} in the secondary's memory"
    )]
    Fault {
        /// Which part of the result.
        index: usize,
        /// The secondary's address.
        addr: u64,
    },
}

/// Secondary: copies a Recorded call's results (the primary's `(address, bytes)` parts, in
/// the order [`written`] lists them) into the buffers the *secondary's own* arguments name.
///
/// The replicas' address spaces are the same function of the same calls, but glibc makes a
/// few of those calls from data races (which thread creates a malloc arena first decides
/// whether its heap needs trimming, so one replica's thread can make an extra munmap), so a
/// heap buffer can sit at another address in each. Writing at the primary's addresses would
/// then corrupt whatever the secondary keeps there while its own buffer stays stale. The
/// parts are matched by position instead: after each one is written the ranges are
/// recomputed, because some depend on values an earlier part wrote (`*addrlen`,
/// `msg_namelen`). A part whose size differs is a divergence.
pub fn place(
    p: &Process,
    nr: u64,
    a: [u64; 6],
    plan: &Plan,
    ret: i64,
    parts: &[(u64, Vec<u8>)],
) -> Result<Placed, PlaceError> {
    let mut placed = Placed::default();
    for (index, (primary_addr, data)) in parts.iter().enumerate() {
        let ranges = written(p, nr, a, plan, ret);
        let shape = |secondary: String| PlaceError::Shape {
            index,
            primary_addr: *primary_addr,
            primary_len: data.len(),
            secondary,
        };
        let &(addr, len) = ranges
            .get(index)
            .ok_or_else(|| shape(format!("writes only {} parts", ranges.len())))?;
        if len != data.len() as u64 {
            return Err(shape(format!("has {len} bytes at {addr:#x}")));
        }
        p.mem
            .write_bytes(addr, data)
            .map_err(|_| PlaceError::Fault { index, addr })?;
        placed.bytes += len;
        if addr != *primary_addr {
            placed.relocated += 1;
        }
    }
    Ok(placed)
}

/// Reads the ranges out of guest memory (primary, after the call).
pub fn capture(p: &Process, ranges: &[(u64, u64)]) -> Vec<(u64, Vec<u8>)> {
    ranges
        .iter()
        .filter_map(|&(gva, len)| p.mem.read_bytes(gva, len).ok().map(|b| (gva, b)))
        .collect()
}

/// The descriptor whose nature decides an I/O call's class, if the call is about one:
/// stat-like calls only with AT_EMPTY_PATH and an empty path (fstat by another name), and
/// fcntl except the commands that create descriptors (those run in both replicas).
#[allow(non_upper_case_globals)]
pub fn io_fd(p: &Process, nr: u64, a: [u64; 6]) -> Option<i64> {
    use libc::*;
    let empty_path = |flags: u64, path: u64| {
        flags & AT_EMPTY_PATH as u64 != 0
            && (path == 0 || p.mem.read_obj::<u8>(path).is_ok_and(|b| b == 0))
    };
    match nr as i64 {
        SYS_splice => Some(a[2] as i64),
        SYS_newfstatat if !empty_path(a[3], a[1]) => None,
        SYS_statx if !empty_path(a[2], a[1]) => None,
        SYS_fcntl if matches!(a[1] as i32, F_DUPFD | F_DUPFD_CLOEXEC) => None,
        _ => Some(a[0] as i64),
    }
}

/// The bytes a Compared call would output, computed from its arguments alone (so the
/// secondary, which does not perform it, gets the same bytes). At most [`OUTPUT_CAP`].
#[allow(non_upper_case_globals)]
pub fn would_output(p: &Process, nr: u64, a: [u64; 6]) -> Result<Vec<u8>, Errno> {
    use libc::*;
    let gather = |iov: Vec<(u64, u64)>| -> Result<Vec<u8>, Errno> {
        let mut out = Vec::new();
        for (base, len) in iov {
            let room = OUTPUT_CAP - out.len() as u64;
            // The call writes only what it can read before a fault (util::iovecs).
            let want = len.min(room);
            let n = p.mem.accessible(base, want, Access::Read);
            out.extend_from_slice(&p.mem.read_bytes(base, n)?);
            if n < want || out.len() as u64 >= OUTPUT_CAP {
                break;
            }
        }
        Ok(out)
    };
    match nr as i64 {
        SYS_write | SYS_pwrite64 | SYS_sendto => {
            let n = p.mem.accessible(a[1], a[2].min(OUTPUT_CAP), Access::Read);
            p.mem.read_bytes(a[1], n)
        }
        SYS_writev | SYS_pwritev | SYS_pwritev2 => gather(iovecs(p, a[1], a[2])?),
        SYS_sendmsg => {
            let m = read_msghdr(p, a[1])?;
            gather(iovecs(p, m.iov, m.iovlen)?)
        }
        SYS_sendfile => {
            let file = lock(&p.fds).get(a[1] as i64)?;
            let offset = if a[2] != 0 {
                read_u64(p, a[2])? as i64
            } else {
                // SAFETY: lseek on a descriptor the OpenFile keeps open; no memory involved.
                let cur = unsafe { libc::lseek(file.raw(), 0, SEEK_CUR) };
                if cur < 0 {
                    return Err(Errno::last());
                }
                cur
            };
            let len = a[3].min(OUTPUT_CAP) as usize;
            let mut buf = vec![0u8; len];
            // SAFETY: buf has len writable bytes; the descriptor is kept open by `file`.
            let n = unsafe { libc::pread(file.raw(), buf.as_mut_ptr().cast(), len, offset) };
            if n < 0 {
                return Err(Errno::last());
            }
            buf.truncate(n as usize);
            Ok(buf)
        }
        _ => Ok(Vec::new()),
    }
}

/// The side effects of a Compared call that the secondary must reproduce without
/// outputting anything: sendfile moves the input file's offset.
pub fn mimic_output(p: &Process, nr: u64, a: [u64; 6], ret: i64) {
    if nr as i64 != libc::SYS_sendfile || ret <= 0 {
        return;
    }
    if a[2] != 0 {
        if let Ok(off) = read_u64(p, a[2]) {
            let _ = p.mem.write_obj(a[2], &off.wrapping_add(ret as u64));
        }
    } else if let Ok(file) = lock(&p.fds).get(a[1] as i64) {
        // SAFETY: lseek on a descriptor kept open by `file`.
        unsafe { libc::lseek(file.raw(), ret, libc::SEEK_CUR) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::test_process as process;

    #[test]
    fn replayed_result_goes_to_the_secondarys_own_buffer() {
        let p = process();
        // The primary's read filled its buffer at 0x50_0000; the secondary's buffer for
        // the same call is at 0x60_0000, and 0x50_0000 holds something else of its own.
        p.mem.write_bytes(0x50_0000, b"keep").unwrap();
        let a = [3, 0x60_0000, 64, 0, 0, 0];
        let plan = plan(&p, libc::SYS_read as u64, a);
        let parts = vec![(0x50_0000, b"GET / HTTP/1.1".to_vec())];
        let placed = place(&p, libc::SYS_read as u64, a, &plan, 14, &parts).unwrap();
        assert_eq!(
            placed,
            Placed {
                bytes: 14,
                relocated: 1
            }
        );
        assert_eq!(p.mem.read_bytes(0x60_0000, 14).unwrap(), b"GET / HTTP/1.1");
        assert_eq!(p.mem.read_bytes(0x50_0000, 4).unwrap(), b"keep");
    }

    #[test]
    fn address_length_written_first_sizes_the_address() {
        let p = process();
        // accept(fd, addr, &len) with len 128 before the call: the primary wrote len = 16
        // and then 16 bytes of sockaddr_in.
        let (addr, lenp) = (0x40_0000u64, 0x40_1000u64);
        p.mem.write_obj(lenp, &128u32).unwrap();
        let a = [3, addr, lenp, 0, 0, 0];
        let nr = libc::SYS_accept4 as u64;
        let plan = plan(&p, nr, a);
        let parts = vec![(lenp, 16u32.to_le_bytes().to_vec()), (addr, vec![7; 16])];
        let placed = place(&p, nr, a, &plan, 5, &parts).unwrap();
        assert_eq!(
            placed,
            Placed {
                bytes: 20,
                relocated: 0
            }
        );
        assert_eq!(p.mem.read_obj::<u32>(lenp).unwrap(), 16);
        assert_eq!(p.mem.read_bytes(addr, 16).unwrap(), vec![7; 16]);
    }

    #[test]
    fn a_failed_calls_earlier_outputs_are_replayed_where_writable() {
        let p = process();
        let efault = -(libc::EFAULT as i64);
        // getcpu(&cpu, bad node): the primary wrote the cpu before the node faulted.
        let nr = libc::SYS_getcpu as u64;
        let a = [0x60_0000, 0x3e7, 0, 0, 0, 0];
        assert_eq!(
            written(&p, nr, a, &Plan::default(), efault),
            vec![(0x60_0000, 4)]
        );
        p.mem.write_obj(0x60_0000, &0xffff_ffffu32).unwrap();
        let parts = vec![(0x60_0000, 0u32.to_le_bytes().to_vec())];
        place(&p, nr, a, &Plan::default(), efault, &parts).unwrap();
        assert_eq!(p.mem.read_obj::<u32>(0x60_0000).unwrap(), 0);
        // A bad cpu pointer first: the call stopped there, and the node it did not reach
        // is copied as the primary holds it, unchanged.
        let a = [0x3e7, 0x60_0000, 0, 0, 0, 0];
        assert_eq!(
            written(&p, nr, a, &Plan::default(), efault),
            vec![(0x60_0000, 4)]
        );
        // A call with one output writes nothing when it fails.
        let a = [0, 0x60_0000, 0, 0, 0, 0];
        let nr = libc::SYS_clock_gettime as u64;
        assert!(written(&p, nr, a, &Plan::default(), -22).is_empty());
    }

    #[test]
    fn a_result_that_does_not_fit_is_a_divergence() {
        let p = process();
        let a = [3, 0x60_0000, 64, 0, 0, 0];
        let nr = libc::SYS_read as u64;
        let plan = plan(&p, nr, a);
        // The record claims 20 bytes for a result of 14: not the secondary's call's shape.
        let parts = vec![(0x60_0000, vec![1; 20])];
        let e = place(&p, nr, a, &plan, 14, &parts).unwrap_err();
        assert!(matches!(e, PlaceError::Shape { index: 0, .. }), "{e}");
        // Two parts where the call writes one.
        let parts = vec![(0x60_0000, vec![1; 14]), (0x70_0000, vec![2; 4])];
        let e = place(&p, nr, a, &plan, 14, &parts).unwrap_err();
        assert!(e.to_string().contains("writes only 1 parts"), "{e}");
    }

    #[test]
    fn a_primary_result_longer_than_the_secondarys_buffer_is_refused() {
        let p = process();
        p.mem.write_bytes(0x60_0040, b"neighbour").unwrap();
        // read(fd, buf, 64) where the primary's record claims 100 bytes were read: the
        // ranges stop at the secondary's 64, so the 100-byte part is a divergence, and the
        // bytes after the buffer stay as they were.
        let nr = libc::SYS_read as u64;
        let a = [3, 0x60_0000, 64, 0, 0, 0];
        assert_eq!(
            written(&p, nr, a, &Plan::default(), 100),
            vec![(0x60_0000, 64)]
        );
        let e = place(
            &p,
            nr,
            a,
            &Plan::default(),
            100,
            &[(0x60_0000, vec![9; 100])],
        );
        assert!(
            matches!(e, Err(PlaceError::Shape { index: 0, .. })),
            "{e:?}"
        );
        assert_eq!(p.mem.read_bytes(0x60_0040, 9).unwrap(), b"neighbour");
        for (nr, a, ret, want) in [
            (libc::SYS_getrandom, [0x60_0000, 16, 0, 0, 0, 0], 4096, 16),
            (
                libc::SYS_sched_getaffinity,
                [0, 8, 0x60_0000, 0, 0, 0],
                128,
                8,
            ),
            (libc::SYS_epoll_wait, [3, 0x60_0000, 2, 0, 0, 0], 1000, 24),
            (libc::SYS_getgroups, [2, 0x60_0000, 0, 0, 0, 0], 1 << 40, 8),
        ] {
            let w = written(&p, nr as u64, a, &Plan::default(), ret);
            assert_eq!(w.iter().map(|r| r.1).sum::<u64>(), want, "{nr}");
        }
    }

    #[test]
    fn scatter_stops_at_the_total() {
        let mut w = Vec::new();
        scatter(&mut w, &[(0x1000, 10), (0x2000, 10), (0x3000, 10)], 15);
        assert_eq!(w, vec![(0x1000, 10), (0x2000, 5)]);
    }
}
