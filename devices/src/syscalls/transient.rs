//! Follow mode's transient reads of constant files: an open of a file whose text cannot
//! depend on the schedule, the reads of its descriptor and its close take no turn.
//!
//! Why: whether a thread makes such calls at all can be timing. glibc reads some files once
//! per process, in whichever thread gets there first: malloc's `check_may_shrink_heap` reads
//! /proc/sys/vm/overcommit_memory (openat, read of one byte, close) in the first thread that
//! shrinks a non-main arena's heap. In a `vips --vips-concurrency=4` follow pair that was
//! thread 1003 in the primary and another thread in the secondary, which asked for turns the
//! primary never gave it. The calls order nothing: the text is fixed, so no other thread's
//! call can change what is read, and the open file is the caller's alone.
//!
//! What qualifies, narrowly:
//! - `open`/`openat` with flags that only read ([`read_only`]: no O_CREAT, O_TRUNC,
//!   O_PATH, O_DIRECTORY, O_TMPFILE, no write access) of an existing virtual /proc file of
//!   fixed text (`procfs::constant`: /proc/sys/*, /proc/cpuinfo, /proc/version; not
//!   /proc/self/status or maps, which change with threads and memory);
//! - `read`, `pread64`, `readv`, `preadv`, `preadv2`, `lseek` and `close` of a descriptor
//!   open on such a file (fstat and newfstatat are no det point anyway).
//!
//! Left out: host files (under `--root /` a file the pair never opened for writing could
//! qualify, but another process may write it meanwhile, and the secondary's reads of host
//! files are the primary's records: they must stay in the thread's order), and the host's
//! sysfs (/sys/devices/system/cpu/online is a host file for ditto).
//!
//! The descriptor number: Linux gives the lowest free one, and an open that takes no turn
//! would race with the lowest-free allocations of other threads' ordered calls, giving them
//! different numbers in the two replicas (a secondary installs a Recorded descriptor at the
//! primary's number, which would then be taken). So once the program has had a second
//! thread (`ExitState::ever_threaded`, the same in both replicas at any point of a thread's
//! program), a transient open takes the *highest* free number below
//! min(RLIMIT_NOFILE's soft limit, 1024) (`FdTable::install_high`), which the lowest-first
//! allocations never meet while the program has fewer descriptors open than that. This
//! deviates from Linux: only in multithreaded follow-mode pairs, and only for these opens;
//! a program cannot rely on the number anyway, since another thread could take the lowest
//! one first. Two transient opens at the same time may get each other's numbers in the
//! secondary; each replica's thread then uses its own consistently, and nothing compares a
//! Local call's result. A `dup2` to a number near 1024, or a program with about 1000
//! descriptors open, could meet a transient number: not handled.

use super::sys_det::DetHandler;
use super::util::{file, path};
use super::{SysResult, SyscallCtx};
use crate::procfs::{file as procfile, Virtual};
use crate::sync::lock;

/// The highest descriptor number plus one that a transient open takes: select()'s
/// FD_SETSIZE, lowered to the program's RLIMIT_NOFILE soft limit.
pub const CEILING: usize = 1024;

/// O_LARGEFILE as the kernel spells it on x86-64 (the libc crate's constant is 0 there, as
/// glibc's; the program may still pass the bit).
const KERNEL_O_LARGEFILE: i32 = 0o100000;

/// Whether open flags `flags` only read: read-only access, and nothing beyond flags that
/// change neither the file nor what the open makes of it (close-on-exec, no controlling
/// terminal, non-blocking, large file, no atime update, no final symlink).
pub fn read_only(flags: i32) -> bool {
    const HARMLESS: i32 = libc::O_CLOEXEC
        | libc::O_NOCTTY
        | libc::O_NONBLOCK
        | libc::O_LARGEFILE
        | KERNEL_O_LARGEFILE
        | libc::O_NOATIME
        | libc::O_NOFOLLOW;
    flags & libc::O_ACCMODE == libc::O_RDONLY && flags & !HARMLESS == 0
}

/// Whether `nr` is a call on descriptor `args[0]` that takes no turn when that descriptor is
/// open on a constant file.
#[allow(non_upper_case_globals)] // libc spells the syscall numbers SYS_name.
fn reads_or_closes(nr: u64) -> bool {
    use libc::*;
    matches!(
        nr as i64,
        SYS_read | SYS_pread64 | SYS_readv | SYS_preadv | SYS_preadv2 | SYS_lseek | SYS_close
    )
}

/// Serves call `args` as a transient one when it is one (module documentation), without a
/// turn: an open here, a read, seek or close by `h`. None: it is not, and takes its turn.
/// Only for the follow mode's policies (Lead and Follow); `recorded` calls (the secondary
/// replays the primary's record) never are.
pub fn serve(
    ctx: &mut SyscallCtx<'_>,
    args: [u64; 6],
    recorded: bool,
    h: &mut DetHandler<'_>,
) -> Option<SysResult> {
    if recorded {
        return None;
    }
    match ctx.nr as i64 {
        libc::SYS_open => open(ctx, libc::AT_FDCWD as u32 as u64, args[0], args[1] as i32),
        libc::SYS_openat => open(ctx, args[0], args[1], args[2] as i32),
        _ if reads_or_closes(ctx.nr) && on_constant_file(ctx, args[0]) => Some(h(ctx, args)),
        _ => None,
    }
}

/// Whether guest descriptor `fd` is open on a constant /proc file.
fn on_constant_file(ctx: &SyscallCtx<'_>, fd: u64) -> bool {
    file(ctx, fd).is_ok_and(|f| f.virt().is_some_and(|v| crate::procfs::constant(&v.node)))
}

/// A transient open, or None when the call is not one.
fn open(ctx: &mut SyscallCtx<'_>, dfd: u64, path_gva: u64, flags: i32) -> Option<SysResult> {
    if !read_only(flags) {
        return None;
    }
    let p = path(ctx, path_gva).ok()?;
    let (node, guest_path) = super::proc_paths::constant_node(ctx, dfd, &p)?;
    Some(open_constant(ctx, node, guest_path, flags))
}

fn open_constant(
    ctx: &SyscallCtx<'_>,
    node: crate::procfs::Node,
    guest_path: Vec<u8>,
    flags: i32,
) -> SysResult {
    let process = ctx.process;
    let f = procfile::open(process, node, guest_path, flags)?;
    let cloexec = flags & libc::O_CLOEXEC != 0;
    let mut fds = lock(&process.fds);
    let fd = if process.exit.ever_threaded() {
        fds.install_high(f, cloexec, ceiling())?
    } else {
        // One thread: nothing races with this open, and Linux's lowest number is the same
        // in both replicas.
        fds.install_shared(f, cloexec)?
    };
    Ok(fd as u64)
}

/// [`CEILING`], lowered to the soft RLIMIT_NOFILE the program sees (the VMM's: getrlimit is
/// passed through), so the number is one Linux could have given.
fn ceiling() -> usize {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return CEILING;
    }
    usize::try_from(r.rlim_cur).map_or(CEILING, |c| c.min(CEILING))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_read_only_opens_qualify() {
        for f in [
            libc::O_RDONLY,
            libc::O_RDONLY | libc::O_CLOEXEC,
            libc::O_CLOEXEC | KERNEL_O_LARGEFILE | libc::O_NOCTTY,
            libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOATIME,
        ] {
            assert!(read_only(f), "{f:#o}");
        }
        for f in [
            libc::O_WRONLY,
            libc::O_RDWR,
            libc::O_RDONLY | libc::O_CREAT,
            libc::O_RDONLY | libc::O_TRUNC,
            libc::O_PATH,
            libc::O_RDONLY | libc::O_DIRECTORY,
            libc::O_TMPFILE,
            libc::O_RDONLY | libc::O_APPEND,
            libc::O_RDONLY | libc::O_DSYNC,
            libc::O_RDONLY | libc::O_ASYNC,
        ] {
            assert!(!read_only(f), "{f:#o}");
        }
    }

    #[test]
    fn the_descriptor_calls_that_skip_the_turn() {
        for nr in [
            libc::SYS_read,
            libc::SYS_pread64,
            libc::SYS_lseek,
            libc::SYS_close,
        ] {
            assert!(reads_or_closes(nr as u64));
        }
        for nr in [
            libc::SYS_write,
            libc::SYS_dup,
            libc::SYS_fcntl,
            libc::SYS_mmap,
            libc::SYS_openat,
        ] {
            assert!(!reads_or_closes(nr as u64));
        }
    }

    #[test]
    fn the_ceiling_is_at_most_fd_setsize() {
        let c = ceiling();
        assert!(c > 0 && c <= CEILING);
    }
}
