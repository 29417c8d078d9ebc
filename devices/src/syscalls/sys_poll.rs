//! Readiness: poll, select and epoll over guest descriptors. select is served by
//! ppoll, so guest fd_sets never meet host descriptor numbers.

use super::util::{buf, elem, file, install, opt_buf, sc};
use super::{SysResult, SyscallCtx, SyscallEntry};
use crate::errno::Errno;
use crate::sync::lock;
use crate::sys;
use guest_memory::Access;

/// The readiness table.
pub const TABLE: &[SyscallEntry] = &[
    sys!(SYS_poll, Recorded, poll),
    sys!(SYS_ppoll, Recorded, ppoll),
    sys!(SYS_select, Recorded, select),
    sys!(SYS_pselect6, Recorded, pselect6),
    sys!(SYS_epoll_create, Local, epoll_create),
    sys!(SYS_epoll_create1, Local, epoll_create1),
    sys!(SYS_epoll_ctl, Local, epoll_ctl),
    sys!(SYS_epoll_wait, Recorded, epoll_wait),
    sys!(SYS_epoll_pwait, Recorded, epoll_pwait),
    sys!(SYS_epoll_pwait2, Recorded, epoll_pwait2),
];

const MAX_POLL_FDS: u64 = 65536;

/// The kernel's `sizeof(sigset_t)`: the only signal-mask size these calls accept.
const SIGSET_SIZE: u64 = 8;

/// Linux's first check of a (mask, size) argument pair: a mask given with any size but
/// the kernel's is EINVAL, before descriptors or the timeout are looked at. Without it a
/// call with a bad size and no descriptors would block forever where Linux returns.
fn sigmask_size(mask: u64, size: u64) -> Result<(), Errno> {
    if mask != 0 && size != SIGSET_SIZE {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// Checks a guest signal-mask argument as `set_user_sigmask` does: the size, then that
/// the mask can be read (EFAULT). The mask itself is not applied during the wait.
fn check_sigmask(ctx: &SyscallCtx<'_>, mask: u64, size: u64) -> Result<(), Errno> {
    sigmask_size(mask, size)?;
    if mask != 0 {
        ctx.process.mem.read_obj::<u64>(mask)?;
    }
    Ok(())
}

/// Polls guest pollfds with an optional host timespec pointer.
fn poll_guest(ctx: &SyscallCtx<'_>, fds: u64, nfds: u64, ts: *const libc::timespec) -> SysResult {
    if nfds > MAX_POLL_FDS {
        return Err(Errno::EINVAL);
    }
    let mut host: Vec<libc::pollfd> = Vec::with_capacity(nfds as usize);
    let mut held = Vec::new();
    let mut invalid = vec![false; nfds as usize];
    {
        let table = lock(&ctx.process.fds);
        for i in 0..nfds {
            let g: libc::pollfd = ctx.process.mem.read_obj(elem(fds, i, 8)?)?;
            let fd = if g.fd < 0 {
                -1
            } else {
                match table.get(g.fd as i64) {
                    Ok(f) => {
                        let raw = f.raw();
                        held.push(f);
                        raw
                    }
                    Err(_) => {
                        invalid[i as usize] = true;
                        -1
                    }
                }
            };
            host.push(libc::pollfd {
                fd,
                events: g.events,
                revents: 0,
            });
        }
    }
    let n_invalid = invalid.iter().filter(|&&b| b).count() as u64;
    // A bad descriptor is ready at once (POLLNVAL), so do not block.
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let ts = if n_invalid > 0 {
        &zero as *const libc::timespec
    } else {
        ts
    };
    let n = sc(
        libc::SYS_ppoll,
        [host.as_mut_ptr() as u64, nfds, ts as u64, 0, 8, 0],
    )?;
    for (i, h) in host.iter().enumerate() {
        let revents = if invalid[i] {
            libc::POLLNVAL
        } else {
            h.revents
        };
        // revents is the last field of struct pollfd; elem() succeeded for i above.
        ctx.process
            .mem
            .write_obj(elem(fds, i as u64, 8)? + 6, &revents)?;
    }
    drop(held);
    Ok(n + n_invalid)
}

fn poll(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let timeout = a[2] as i32;
    let ts = libc::timespec {
        tv_sec: (timeout.max(0) / 1000) as i64,
        tv_nsec: ((timeout.max(0) % 1000) * 1_000_000) as i64,
    };
    let p = if timeout < 0 {
        std::ptr::null()
    } else {
        &ts as *const libc::timespec
    };
    poll_guest(ctx, a[0], a[1], p)
}

fn ppoll(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let ts = opt_buf(ctx, a[2], 16, Access::Read)?;
    check_sigmask(ctx, a[3], a[4])?;
    poll_guest(ctx, a[0], a[1], ts as *const libc::timespec)
}

/// select over guest fd_sets, by way of poll.
fn select_common(
    ctx: &SyscallCtx<'_>,
    nfds: u64,
    sets: [u64; 3],
    ts: *const libc::timespec,
) -> SysResult {
    // nfds is an `int`: the upper half is not looked at, a negative count is EINVAL, and
    // Linux caps a large one at its table size rather than refuse it.
    let nfds = nfds as i32;
    if nfds < 0 {
        return Err(Errno::EINVAL);
    }
    let nfds = (nfds as u64).min(MAX_POLL_FDS);
    let words = nfds.div_ceil(64);
    let mut bits: [Vec<u64>; 3] = Default::default();
    for (k, &s) in sets.iter().enumerate() {
        bits[k] = if s != 0 {
            (0..words)
                .map(|w| ctx.process.mem.read_obj::<u64>(elem(s, w, 8)?))
                .collect::<Result<_, _>>()?
        } else {
            vec![0; words as usize]
        };
    }
    let events = [libc::POLLIN, libc::POLLOUT, libc::POLLPRI];
    let mut fds: Vec<(i32, libc::pollfd)> = Vec::new();
    let mut held = Vec::new();
    for fd in 0..nfds {
        let (w, b) = ((fd / 64) as usize, fd % 64);
        let mut ev = 0;
        for k in 0..3 {
            if bits[k][w] >> b & 1 == 1 {
                ev |= events[k];
            }
        }
        if ev != 0 {
            let f = file(ctx, fd)?;
            fds.push((
                fd as i32,
                libc::pollfd {
                    fd: f.raw(),
                    events: ev,
                    revents: 0,
                },
            ));
            held.push(f);
        }
    }
    let mut host: Vec<libc::pollfd> = fds.iter().map(|(_, p)| *p).collect();
    sc(
        libc::SYS_ppoll,
        [
            host.as_mut_ptr() as u64,
            host.len() as u64,
            ts as u64,
            0,
            8,
            0,
        ],
    )?;
    let mut out: [Vec<u64>; 3] = [
        vec![0; words as usize],
        vec![0; words as usize],
        vec![0; words as usize],
    ];
    let mut count = 0;
    for ((fd, want), got) in fds.iter().zip(&host) {
        let (w, b) = ((*fd / 64) as usize, *fd % 64);
        let ready = [
            got.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0,
            got.revents & (libc::POLLOUT | libc::POLLERR) != 0,
            got.revents & libc::POLLPRI != 0,
        ];
        for k in 0..3 {
            if want.events & events[k] != 0 && ready[k] {
                out[k][w] |= 1 << b;
                count += 1;
            }
        }
    }
    for (k, &s) in sets.iter().enumerate() {
        if s != 0 {
            for (w, v) in out[k].iter().enumerate() {
                ctx.process.mem.write_obj(elem(s, w as u64, 8)?, v)?;
            }
        }
    }
    Ok(count)
}

fn select(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let ts = if a[4] != 0 {
        let tv: [i64; 2] = ctx.process.mem.read_obj(a[4])?;
        if tv[0] < 0 || !(0..1_000_000).contains(&tv[1]) {
            return Err(Errno::EINVAL);
        }
        Some(libc::timespec {
            tv_sec: tv[0],
            tv_nsec: tv[1] * 1000,
        })
    } else {
        None
    };
    let p = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    select_common(ctx, a[0], [a[1], a[2], a[3]], p)
}

fn pselect6(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let ts = opt_buf(ctx, a[4], 16, Access::Read)?;
    // The sixth argument points at { const sigset_t *ss; size_t ss_len; }.
    if a[5] != 0 {
        let pack: [u64; 2] = ctx.process.mem.read_obj(a[5])?;
        check_sigmask(ctx, pack[0], pack[1])?;
    }
    select_common(ctx, a[0], [a[1], a[2], a[3]], ts as *const libc::timespec)
}

fn epoll_create(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    if a[0] as i32 <= 0 {
        return Err(Errno::EINVAL);
    }
    epoll_create1(ctx, [0; 6])
}

fn epoll_create1(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let fd = sc(
        libc::SYS_epoll_create1,
        [a[0] | libc::EPOLL_CLOEXEC as u64, 0, 0, 0, 0, 0],
    )?;
    if let Some(rep) = ctx.process.replication.get() {
        rep.epoll_created(fd as i32);
    }
    install(ctx, fd, a[0] & libc::EPOLL_CLOEXEC as u64 != 0)
}

fn epoll_ctl(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let ep = file(ctx, a[0])?;
    let target = file(ctx, a[2])?;
    // struct epoll_event is packed: u32 events, u64 data; data is opaque to us.
    let ev = opt_buf(ctx, a[3], 12, Access::Read)?;
    let r = sc(
        libc::SYS_epoll_ctl,
        [ep.raw() as u64, a[1], target.raw() as u64, ev as u64, 0, 0],
    )?;
    // A pair's secondary registers the primary's descriptors again when it takes them over
    // (replication::takeover), so it tracks what the program registered for them.
    if let Some(rep) = ctx.process.replication.get() {
        if target.holds_takeover() {
            let ev: [u8; 12] = match a[3] {
                0 => [0; 12],
                gva => ctx.process.mem.read_obj(gva).unwrap_or([0; 12]),
            };
            let events = u32::from_le_bytes([ev[0], ev[1], ev[2], ev[3]]);
            let mut data = [0u8; 8];
            data.copy_from_slice(&ev[4..]);
            let data = u64::from_le_bytes(data);
            rep.epoll_ctl_done(ep.raw(), a[1] as i32, target.raw(), events, data);
        }
    }
    Ok(r)
}

fn epoll_pwait(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    // Linux sets the mask before it looks at the epoll descriptor.
    check_sigmask(ctx, a[4], a[5])?;
    epoll_wait(ctx, [a[0], a[1], a[2], a[3], 0, 0])
}

fn epoll_wait(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let ep = file(ctx, a[0])?;
    let max = a[2] as i32;
    if max <= 0 || max > 1 << 20 {
        return Err(Errno::EINVAL);
    }
    let evs = buf(ctx, a[1], max as u64 * 12, Access::Write)?;
    sc(
        libc::SYS_epoll_pwait,
        [ep.raw() as u64, evs as u64, a[2], a[3], 0, 8],
    )
}

fn epoll_pwait2(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    check_sigmask(ctx, a[4], a[5])?;
    let ep = file(ctx, a[0])?;
    let max = a[2] as i32;
    if max <= 0 || max > 1 << 20 {
        return Err(Errno::EINVAL);
    }
    let evs = buf(ctx, a[1], max as u64 * 12, Access::Write)?;
    let ts = opt_buf(ctx, a[3], 16, Access::Read)?;
    sc(
        libc::SYS_epoll_pwait2,
        [ep.raw() as u64, evs as u64, a[2], ts as u64, 0, 8],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_with_the_wrong_size_is_einval() {
        assert_eq!(sigmask_size(0x1000, 7), Err(Errno::EINVAL));
        assert_eq!(sigmask_size(0x1000, 0), Err(Errno::EINVAL));
        assert_eq!(sigmask_size(0x1000, 1 << 40), Err(Errno::EINVAL));
        assert_eq!(sigmask_size(0x1000, SIGSET_SIZE), Ok(()));
        // No mask: the size is not looked at.
        assert_eq!(sigmask_size(0, 7), Ok(()));
    }
}
