//! Deterministic execution (`ditto run --det`): the private det hypercalls and the implicit
//! det points.
//!
//! - The hypercalls `det_start`, `det_end` and `det_tick` have numbers in a private range
//!   defined once, in `guest-images/include/ditto.h` (det/build.rs turns its `#define`s
//!   into the constants of [`abi`]). Without `--det` they answer ENOSYS, which is what
//!   libditto and `ditto_present()` expect natively, and nothing else here runs.
//! - With `--det`, [`serve`] wraps the ordinary handlers of the syscalls whose order between
//!   threads matters ([`det_kind`]): they run under the token (an implicit det section), futexes
//!   are emulated with FIFO wake order, clone hands out the next deterministic thread id, and
//!   calls that wait for the outside world leave the token competition. Thread exit is a det
//!   point too ([`thread_gone`], called by the vCPU layer).
//!
//! Policy for reads and writes (chosen by what the descriptor is on the host):
//! - regular files, block devices, non-terminal character devices: under the token;
//! - pipes, FIFOs and anonymous-inode objects (eventfd...): under the token, without
//!   blocking: poll first; if the call would block, the section ends (+1 logical time) and
//!   the call is tried again in a later turn, so every attempt happens in token order;
//! - sockets and terminals: writes under the token; reads leave the competition while they
//!   block and re-enter at the earliest allowed point (input from outside is not
//!   deterministic in a single run).

use guest_memory::Access;
use std::time::{Duration, Instant};

use super::util::{buf, file, path};
use super::{Class, ParkedFd, SysResult, SyscallCtx, SyscallEntry};
use crate::errno::Errno;
use crate::process::Process;
use crate::safecopy::GuestU32;
use crate::sync::lock;
use crate::syscalls::sys_thread;
use det::runtime::{DetPage, DetRuntime, FutexWait, Policy, LIBDITTO_GUEST_PATH};

/// The det hypercall numbers, generated from `guest-images/include/ditto.h` (by det/build.rs;
/// defined once, in `det::abi`).
pub use det::abi;

/// The private det hypercalls. They are not in the Linux-numbered table: dispatch routes
/// the private range here.
pub const TABLE: &[SyscallEntry] = &[
    SyscallEntry {
        nr: abi::DITTO_SYS_DET_START as i64,
        name: "ditto_det_start",
        class: Class::Local,
        handler: det_start,
    },
    SyscallEntry {
        nr: abi::DITTO_SYS_DET_END as i64,
        name: "ditto_det_end",
        class: Class::Local,
        handler: det_end,
    },
    SyscallEntry {
        nr: abi::DITTO_SYS_DET_TICK as i64,
        name: "ditto_det_tick",
        class: Class::Local,
        handler: det_tick,
    },
    SyscallEntry {
        nr: abi::DITTO_SYS_DET_SLOT as i64,
        name: "ditto_det_slot",
        class: Class::Local,
        handler: det_slot,
    },
];

/// The private hypercall with number `nr`, if it is one.
pub fn private(nr: u64) -> Option<&'static SyscallEntry> {
    TABLE.iter().find(|e| e.nr as u64 == nr)
}

/// Serves a private hypercall: ENOSYS (quietly) without `--det`.
pub fn serve_private(ctx: &mut SyscallCtx<'_>, entry: &SyscallEntry, args: [u64; 6]) -> SysResult {
    if ctx.process.det.get().is_none() {
        return Err(Errno::ENOSYS);
    }
    (entry.handler)(ctx, args)
}

fn runtime<'a>(ctx: &SyscallCtx<'a>) -> Result<&'a DetRuntime, Errno> {
    let process: &'a Process = ctx.process;
    process.det.get().ok_or(Errno::ENOSYS)
}

fn det_start(ctx: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    let det = runtime(ctx)?;
    det.det_start(ctx.process, ctx.thread.tid)?;
    Ok(0)
}

fn det_end(ctx: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    runtime(ctx)?.det_end(ctx.thread.tid)?;
    Ok(0)
}

fn det_tick(ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    runtime(ctx)?.det_tick(ctx.thread.tid, a[0])?;
    Ok(0)
}

fn det_slot(ctx: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    let det = runtime(ctx)?;
    let process = ctx.process;
    det.det_slot(process, ctx.thread.tid, || {
        // Under the token, like every mmap under --det, so both replicas place it alike.
        let mut asp = lock(&process.aspace);
        let gva = asp.alloc(DetPage::BYTES, 0)?;
        let host = process
            .mem
            .reset_range(gva, DetPage::BYTES)
            .and_then(|()| process.mem.pin(gva, DetPage::BYTES))
            .and_then(|()| process.mem.user_bounds(gva, DetPage::BYTES));
        match host {
            // SAFETY: user_bounds checked that the page lies in guest memory, which stays
            // mapped for the process's lifetime, longer than its det runtime; the page is
            // page-aligned (alloc), so every word is 8-byte aligned.
            Ok(host) => Ok(unsafe { DetPage::new(gva, host) }),
            Err(e) => {
                asp.release(gva, gva + DetPage::BYTES);
                Err(e)
            }
        }
    })
}

/// How `--det` treats a syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetKind {
    /// Not a det point: served as without `--det`.
    Free,
    /// Under the token (shared state: descriptors, the address space).
    Ordered,
    /// Emulated futex.
    Futex,
    /// Thread creation: the child gets the next deterministic id.
    Clone,
    /// A read-like call on a descriptor (policy by descriptor type).
    Input,
    /// A write-like call on a descriptor (policy by descriptor type).
    Output,
    /// Waits for the outside world: leaves the competition while it blocks.
    External,
    /// open/openat: ordered, and serves libditto's virtual path.
    Open,
}

/// The det treatment of syscall `nr`.
#[allow(non_upper_case_globals)] // libc spells the syscall numbers SYS_name.
pub fn det_kind(nr: u64) -> DetKind {
    use libc::*;
    match nr as i64 {
        SYS_futex => DetKind::Futex,
        SYS_clone => DetKind::Clone,
        SYS_read | SYS_pread64 | SYS_readv | SYS_preadv | SYS_preadv2 => DetKind::Input,
        SYS_write | SYS_pwrite64 | SYS_writev | SYS_pwritev | SYS_pwritev2 => DetKind::Output,
        SYS_open | SYS_openat => DetKind::Open,
        SYS_openat2
        | SYS_creat
        | SYS_close
        | SYS_close_range
        | SYS_dup
        | SYS_dup2
        | SYS_dup3
        | SYS_fcntl
        | SYS_pipe
        | SYS_pipe2
        | SYS_eventfd
        | SYS_eventfd2
        | SYS_socket
        | SYS_socketpair
        | SYS_epoll_create
        | SYS_epoll_create1
        | SYS_epoll_ctl
        | SYS_timerfd_create
        | SYS_signalfd
        | SYS_signalfd4
        | SYS_memfd_create
        | SYS_mmap
        | SYS_munmap
        | SYS_mremap
        | SYS_brk
        | SYS_lseek
        | SYS_ftruncate
        | SYS_sendto
        | SYS_sendmsg
        | SYS_sendfile
        | SYS_copy_file_range
        | SYS_splice
        | SYS_kill
        | SYS_tgkill
        | SYS_tkill
        | SYS_rt_sigqueueinfo
        | SYS_rt_tgsigqueueinfo
        | SYS_sched_yield => DetKind::Ordered,
        SYS_poll | SYS_ppoll | SYS_select | SYS_pselect6 | SYS_epoll_wait | SYS_epoll_pwait
        | SYS_epoll_pwait2 | SYS_nanosleep | SYS_clock_nanosleep | SYS_accept | SYS_accept4
        | SYS_connect | SYS_recvfrom | SYS_recvmsg | SYS_recvmmsg | SYS_pause
        | SYS_rt_sigsuspend | SYS_rt_sigtimedwait => DetKind::External,
        _ => DetKind::Free,
    }
}

/// Whether a program's making call `nr` at all depends on timing. Under Lead and Follow (the
/// `follow` mode, whose log must hold the same turns, thread by thread, on both replicas)
/// such a call takes no turn; see the det runtime's "Futexes in the follow mode" for futexes,
/// the first of these.
///
/// - `sched_yield`: how often a program yields in a spin loop.
/// - `brk`: glibc grows or trims its main arena when a malloc finds no room at the top or a
///   free leaves too much there, and other threads free into that arena (a consumer freeing
///   the producer's blocks) with no det point between. pbzip2 -p2's main thread made one
///   brk more in the primary than in the secondary; the brk was a turn, so every later turn
///   of that thread was off by one and the secondary stalled. glibc calls brk only under the
///   main arena's lock, and the break is the only state a brk changes (the heap is apart
///   from the mmap area, address_space.rs), so the turn ordered nothing that a replica's
///   own order does not.
/// - anonymous `mmap`, `munmap` and `mremap`: for the same reason glibc's other arenas
///   grow and shrink their heaps (a `new_heap` is an mmap and an munmap of the aligned
///   excess), a large malloc is an mmap and its free an munmap, and which arena a thread
///   takes is decided by trylocks on the arenas' invisible locks. How often a worker
///   thread does any of these depends on how much of the work it claimed, which real
///   programs decide with atomics (bwa mem's `kt_for` steals indices with
///   `__sync_fetch_and_add`): in 2 of 3 follow pairs of `bwa mem -t4` the secondary's
///   pipeline thread asked for a turn the primary never took. What such a call changes is
///   the address space, which no other thread's call reads except through a race in the
///   program; the cost is that two threads mapping at the same time may get each other's
///   addresses in the secondary. A file mapping stays ordered: it reads the file, which
///   other threads' writes change.
#[allow(non_upper_case_globals)]
fn timing_made(nr: u64, args: [u64; 6]) -> bool {
    use libc::*;
    match nr as i64 {
        SYS_sched_yield | SYS_brk | SYS_munmap | SYS_mremap => true,
        SYS_mmap => args[3] as i32 & MAP_ANONYMOUS != 0,
        _ => false,
    }
}

/// Whether an Ordered call is one whose outcome no other thread's order can change: on a
/// descriptor that reaches outside the program (a socket, a terminal; in a pair, what the
/// descriptor table marks so, alike in both replicas, as `io` decides), a `sendto` or
/// `sendmsg` (socket output: what the peer takes depends on the peer, and the bytes on the
/// thread's own memory), or an `fcntl` that reads or sets the descriptor's flags
/// (F_GETFL/F_SETFL/F_GETFD/F_SETFD, per-description state like the socket options that
/// setsockopt, never a det point, sets). Another thread could only change the outcome by
/// using the same descriptor at the same time without synchronisation, which is a race in
/// the program, as it is for the calls that are no det point. Descriptor allocation
/// (F_DUPFD), pipes, files and the program's own sockets stay ordered. civetweb makes six
/// such fcntls and ten sends per request: a third of its turns.
fn orders_nothing_outside(ctx: &SyscallCtx<'_>, a: [u64; 6]) -> bool {
    let unordered = match ctx.nr as i64 {
        libc::SYS_sendto | libc::SYS_sendmsg => true,
        libc::SYS_fcntl => matches!(
            a[1] as i32,
            libc::F_GETFL | libc::F_SETFL | libc::F_GETFD | libc::F_SETFD
        ),
        _ => false,
    };
    unordered
        && file(ctx, a[0])
            .is_ok_and(|f| f.is_external() || fd_kind(f.raw()) == Some(FdKind::External))
}

/// The handler a det wrapper runs: the table's, or the replication layer's replay/compare.
pub type DetHandler<'h> = dyn FnMut(&mut SyscallCtx<'_>, [u64; 6]) -> SysResult + 'h;

/// Serves a Linux syscall under `--det`: `h` (the entry's handler, or what replication puts
/// in its place), wrapped as [`det_kind`] says.
///
/// `recorded`: a pair's Recorded call. An open of a path whose top-level directory is
/// missing is then not answered here (ENOENT without a det point) but by `h`: on the
/// secondary `h` replays the primary's record, and the host's root, which both replicas
/// see, may have changed between the primary's call and the secondary's (a top-level
/// directory the program itself made or removed), so the secondary's own look would not
/// be the primary's answer.
pub fn serve(
    det: &DetRuntime,
    ctx: &mut SyscallCtx<'_>,
    entry: &SyscallEntry,
    args: [u64; 6],
    recorded: bool,
    h: &mut DetHandler<'_>,
) -> SysResult {
    let (process, tid, _) = (ctx.process, ctx.thread.tid, entry);
    // Follow mode: a transient read of a constant file takes no turn (transient.rs).
    if det.policy() != Policy::Kendo && det_kind(ctx.nr) != DetKind::Free {
        if let Some(r) = super::transient::serve(ctx, args, recorded, h) {
            return r;
        }
    }
    let kind = match det_kind(ctx.nr) {
        DetKind::Ordered if det.policy() != Policy::Kendo && timing_made(ctx.nr, args) => {
            DetKind::Free
        }
        DetKind::Ordered if orders_nothing_outside(ctx, args) => DetKind::Free,
        kind => kind,
    };
    match kind {
        DetKind::Free => h(ctx, args),
        DetKind::Ordered => det.ordered(process, tid, || h(ctx, args))?,
        DetKind::Futex => futex(det, ctx, args),
        DetKind::Clone => det.clone_thread(process, tid, || h(ctx, args)),
        DetKind::External => external(det, ctx, h, args),
        DetKind::Open => {
            let (path_arg, flags) = if ctx.nr as i64 == libc::SYS_open {
                (args[0], args[1])
            } else {
                (args[1], args[2])
            };
            if let Ok(p) = path(ctx, path_arg) {
                let p = p.as_bytes();
                if let Some(host) = det
                    .preload()
                    .filter(|_| p == LIBDITTO_GUEST_PATH.as_bytes())
                {
                    return det.ordered(process, tid, || open_preload(ctx, host, flags))?;
                }
                if !recorded && process.fs.top_level_missing(p) {
                    return Err(Errno::ENOENT);
                }
            }
            det.ordered(process, tid, || h(ctx, args))?
        }
        DetKind::Input | DetKind::Output => {
            let write = det_kind(ctx.nr) == DetKind::Output;
            io(det, ctx, h, args, write)
        }
    }
}

/// A call that waits for the outside world: it leaves the token competition while it blocks
/// and re-enters at a point that depends on real time. A pair's primary reports that point
/// (`ctx.reentry_at`, shipped with the call's record); its secondary, which replays the call
/// instead of blocking, re-enters at exactly the primary's point.
fn external(
    det: &DetRuntime,
    ctx: &mut SyscallCtx<'_>,
    h: &mut DetHandler<'_>,
    args: [u64; 6],
) -> SysResult {
    let tid = ctx.thread.tid;
    let secondary = ctx
        .process
        .replication
        .get()
        .is_some_and(|r| r.role() == replica::role::Role::Secondary);
    // A secondary that went live (failover) blocks for real, as a primary does.
    let r = if secondary && !det.is_live() {
        det.blocking_replayed(tid, || {
            let r = h(ctx, args);
            if ctx.action == super::ThreadAction::Stop {
                return None;
            }
            Some((r, ctx.reentry_at))
        })?
    } else {
        let (r, at) = det.blocking(tid, || h(ctx, args))?;
        ctx.reentry_at = at;
        // A Kendo primary's call whose record goes out after this returns: the thread's
        // next call tells the runtime it has (`DetRuntime::blocking_recorded`).
        ctx.thread.blocking_unrecorded = at.is_some() && ctx.process.replication.get().is_some();
        r
    };
    // The return is itself ordered: until the thread takes a turn, nothing it does next
    // (plain memory writes included) can be seen by others before the turns that came
    // first. Without it a pair's secondary, which gets the result from the log at once,
    // could run ahead of the event that caused the result (a signal, a wake-up).
    // An accepted connection gets its descriptor number in this turn (ParkedFd).
    let process = ctx.process;
    let parked = ctx.thread.parked_fd.take();
    let install = || parked.map(|p| install_parked(process, p));
    // After a sleep the thread keeps its re-entry turn until its next syscall, so that what
    // it reads right after waking is ordered against the threads whose turns come next.
    // A sleep is how programs poll a flag another thread sets (`while (!done) sleep(..)`:
    // civetweb waits so for its master thread at shutdown); without this, a replica whose
    // poller is preempted between its turn and its read sees a write the other did not.
    let sleep = matches!(
        ctx.nr as i64,
        libc::SYS_nanosleep | libc::SYS_clock_nanosleep
    );
    let installed = if sleep {
        let (installed, holds) = det.ordered_holding(process, tid, install)?;
        ctx.thread.holds_reentry_turn = holds;
        installed
    } else {
        det.ordered(process, tid, install)?
    };
    match installed {
        Some(Ok(fd)) if r.is_ok() => Ok(fd),
        Some(Err(Err(e))) if r.is_ok() => Err(e),
        Some(Err(Ok(at))) if r.is_ok() => match process.replication.get() {
            Some(rep) => rep.descriptor_mismatch(
                ctx,
                at,
                format!(
                    "the primary's call returned descriptor {at}, which is still open in the secondary"
                ),
            ),
            None => Err(Errno::EMFILE),
        },
        _ => r,
    }
}

/// Installs a parked descriptor: at the primary's number on a pair's secondary, else at the
/// lowest free one. `Err(Ok(at))`: that number is still open here.
fn install_parked(process: &Process, p: ParkedFd) -> Result<u64, Result<i64, Errno>> {
    let mut fds = lock(&process.fds);
    match p.at {
        None => fds
            .install_shared(p.file, p.cloexec)
            .map(|fd| fd as u64)
            .map_err(Err),
        Some(at) if fds.get(at).is_ok() => Err(Ok(at)),
        Some(at) => fds
            .install_at(at, p.file, p.cloexec)
            .map(|()| at as u64)
            .map_err(Err),
    }
}

/// Opens the host libditto.so for the program (read-only, whatever it asked).
fn open_preload(ctx: &mut SyscallCtx<'_>, host: &std::path::Path, flags: u64) -> SysResult {
    let f = std::fs::File::open(host).map_err(Errno::from)?;
    let cloexec = flags & libc::O_CLOEXEC as u64 != 0;
    lock(&ctx.process.fds)
        .install(f.into(), cloexec)
        .map(|fd| fd as u64)
}

/// What a descriptor is, for the read/write policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FdKind {
    /// Never blocks for long: run under the token.
    File,
    /// Pipe, FIFO, eventfd and other anonymous-inode objects: poll, then run or retry.
    Pollable,
    /// Socket or terminal: input from outside.
    External,
}

fn fd_kind(fd: i32) -> Option<FdKind> {
    // SAFETY: fstat on a descriptor the caller holds a reference to, into a local.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `st` is a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return None;
    }
    Some(match st.st_mode & libc::S_IFMT {
        libc::S_IFIFO | 0 => FdKind::Pollable,
        libc::S_IFSOCK => FdKind::External,
        // SAFETY: isatty on a held descriptor.
        libc::S_IFCHR if unsafe { libc::isatty(fd) } == 1 => FdKind::External,
        _ => FdKind::File,
    })
}

fn ready(fd: i32, events: i16) -> bool {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one pollfd on the stack, timeout 0.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (events | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

fn nonblocking(fd: i32) -> bool {
    // SAFETY: F_GETFL on a held descriptor.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    fl >= 0 && fl & libc::O_NONBLOCK != 0
}

/// Runs `call` with O_NONBLOCK set on `fd`'s file description when `blocking`, and puts
/// the flags back after. No other program thread can see the flag meanwhile: the call runs
/// under the token, and a program's pipes and anonymous objects are its own.
fn without_blocking(fd: i32, blocking: bool, call: impl FnOnce() -> SysResult) -> SysResult {
    if !blocking {
        return call();
    }
    // SAFETY: F_GETFL/F_SETFL on a descriptor the caller holds a reference to.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if fl < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
        return Err(Errno::EAGAIN);
    }
    let r = call();
    // SAFETY: as above; restores the flags read before.
    unsafe { libc::fcntl(fd, libc::F_SETFL, fl) };
    r
}

fn io(
    det: &DetRuntime,
    ctx: &mut SyscallCtx<'_>,
    h: &mut DetHandler<'_>,
    a: [u64; 6],
    write: bool,
) -> SysResult {
    let process = ctx.process;
    let tid = ctx.thread.tid;
    // A bad descriptor is answered by the handler, in order like any call.
    let Ok(f) = file(ctx, a[0]) else {
        return det.ordered(process, tid, || h(ctx, a))?;
    };
    let fd = f.raw();
    // What reaches outside the program is treated alike whatever the host object is, so
    // that a pair's replicas, whose standard descriptors differ, take the same det points.
    let kind = if f.is_external() {
        Some(FdKind::External)
    } else {
        fd_kind(fd)
    };
    match kind {
        Some(FdKind::External) if !write => external(det, ctx, h, a),
        Some(FdKind::Pollable) if !det.in_section(tid) => {
            let events = if write { libc::POLLOUT } else { libc::POLLIN };
            Ok(det.retry_ordered(process, tid, || {
                if ready(fd, events) {
                    return Some(h(ctx, a));
                }
                // Not ready: the call is made without blocking, so an object that is never
                // ready in this direction but answers at once (read of an epoll or pidfd,
                // write of a timerfd: EINVAL) answers as natively instead of being retried
                // for ever. A blocking descriptor's EAGAIN means: try again in a later turn.
                let blocking = !nonblocking(fd);
                let r = without_blocking(fd, blocking, || h(ctx, a));
                if blocking && r == Err(Errno::EAGAIN) {
                    None
                } else {
                    Some(r)
                }
            })??)
        }
        _ => det.ordered(process, tid, || h(ctx, a))?,
    }
}

/// The end of a program thread, called by the vCPU layer when the thread has left its
/// vCPU: a det point under `--det` (see [`DetRuntime::thread_exit`]), else the plain
/// CLONE_CHILD_CLEARTID wake. `vcpu_free` offers the vCPU for reuse; it runs before the
/// joiner is woken, so a program that creates and joins threads one after another reuses
/// one vCPU.
pub fn thread_gone(process: &Process, tid: i64, clear_child_tid: u64, vcpu_free: impl FnOnce()) {
    match process.det.get() {
        Some(det) => det.thread_exit(process, tid, clear_child_tid, vcpu_free),
        None => {
            vcpu_free();
            sys_thread::clear_child_tid(process, clear_child_tid)
        }
    }
}

/// The futex word at `gva`, checked and aligned. The program may have mapped a file page
/// there that faults on the host, so the word is only touched fault-safely (EFAULT).
fn word<'a>(ctx: &SyscallCtx<'a>, gva: u64) -> Result<GuestU32<'a>, Errno> {
    if !gva.is_multiple_of(4) {
        return Err(Errno::EINVAL);
    }
    let p = buf(ctx, gva, 4, Access::Read)?;
    // SAFETY: p points at 4 bytes of guest memory, 4-byte aligned, which stays mapped for
    // the process's lifetime ('a); the guest accesses the word atomically too.
    Ok(unsafe { GuestU32::from_ptr(p as *mut u32) })
}

/// The deadline of a futex wait: relative for FUTEX_WAIT, absolute on the chosen clock for
/// FUTEX_WAIT_BITSET.
fn deadline(
    ctx: &SyscallCtx<'_>,
    absolute: bool,
    op: i32,
    gva: u64,
) -> Result<Option<Instant>, Errno> {
    if gva == 0 {
        return Ok(None);
    }
    let ts: libc::timespec = ctx.process.mem.read_obj(gva)?;
    if ts.tv_sec < 0 || !(0..1_000_000_000).contains(&ts.tv_nsec) {
        return Err(Errno::EINVAL);
    }
    let t = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    let rel = if absolute {
        let clk = if op & libc::FUTEX_CLOCK_REALTIME != 0 {
            libc::CLOCK_REALTIME
        } else {
            libc::CLOCK_MONOTONIC
        };
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime into a local.
        unsafe { libc::clock_gettime(clk, &mut now) };
        t.saturating_sub(Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
    } else {
        t
    };
    Ok(Instant::now().checked_add(rel))
}

fn count(v: u64) -> u64 {
    (v as i32).max(0) as u64
}

/// Compare-and-swap attempts FUTEX_WAKE_OP makes on a contended word.
const WAKE_OP_TRIES: u32 = 1 << 20;

/// FUTEX_WAKE_OP's operation on the second word; returns whether its comparison holds.
fn wake_op(w: GuestU32<'_>, val3: u32) -> Result<bool, Errno> {
    let sext12 = |v: u32| ((v << 20) as i32) >> 20;
    let op = (val3 >> 28) & 7;
    let shift = (val3 >> 28) & 8 != 0;
    let cmp = (val3 >> 24) & 15;
    let mut oparg = sext12((val3 >> 12) & 0xfff) as u32;
    let cmparg = sext12(val3 & 0xfff);
    if shift {
        oparg = 1u32.checked_shl(oparg & 31).unwrap_or(0);
    }
    let apply = |old: u32| -> Option<u32> {
        Some(match op {
            0 => oparg,
            1 => old.wrapping_add(oparg),
            2 => old | oparg,
            3 => old & !oparg,
            4 => old ^ oparg,
            _ => return None,
        })
    };
    if op > 4 || cmp > 5 {
        return Err(Errno::ENOSYS);
    }
    // Another thread may keep changing the word; the bound turns a livelock into a
    // retry for the program (EAGAIN), and a faulting page into EFAULT.
    let mut cur = w.load()?;
    let mut done = None;
    for _ in 0..WAKE_OP_TRIES {
        let new = apply(cur).ok_or(Errno::ENOSYS)?;
        match w.compare_exchange(cur, new)? {
            Ok(_) => {
                done = Some(cur);
                break;
            }
            Err(now) => cur = now,
        }
    }
    let old = done.ok_or(Errno::EAGAIN)? as i32;
    Ok(match cmp {
        0 => old == cmparg,
        1 => old != cmparg,
        2 => old < cmparg,
        3 => old <= cmparg,
        4 => old > cmparg,
        _ => old >= cmparg,
    })
}

/// futex under `--det`: emulated, so that wake order and re-entry follow the token.
fn futex(det: &DetRuntime, ctx: &mut SyscallCtx<'_>, a: [u64; 6]) -> SysResult {
    let op = a[1] as i32;
    let cmd = op & libc::FUTEX_CMD_MASK;
    let process = ctx.process;
    let tid = ctx.thread.tid;
    let bitset = |cmd_plain: i32| {
        if cmd == cmd_plain {
            Ok(u32::MAX)
        } else if a[5] as u32 == 0 {
            Err(Errno::EINVAL)
        } else {
            Ok(a[5] as u32)
        }
    };
    match cmd {
        libc::FUTEX_WAIT | libc::FUTEX_WAIT_BITSET => {
            let bits = bitset(libc::FUTEX_WAIT)?;
            let w = word(ctx, a[0])?;
            let until = deadline(ctx, cmd == libc::FUTEX_WAIT_BITSET, op, a[3])?;
            let wait = FutexWait {
                val: a[2] as u32,
                bitset: bits,
                deadline: until,
            };
            det.futex_wait(process, tid, a[0], w, wait)
        }
        libc::FUTEX_WAKE | libc::FUTEX_WAKE_BITSET => {
            let bits = bitset(libc::FUTEX_WAKE)?;
            word(ctx, a[0])?;
            det.futex_wake(process, tid, a[0], count(a[2]), bits)
        }
        libc::FUTEX_REQUEUE | libc::FUTEX_CMP_REQUEUE => {
            let w = word(ctx, a[0])?;
            word(ctx, a[4])?;
            let check = (cmd == libc::FUTEX_CMP_REQUEUE).then_some((w, a[5] as u32));
            let counts = (count(a[2]), count(a[3]));
            det.futex_requeue(process, tid, (a[0], a[4]), counts, check)
        }
        libc::FUTEX_WAKE_OP => {
            word(ctx, a[0])?;
            let w2 = word(ctx, a[4])?;
            det.futex_wake_op(
                process,
                tid,
                (a[0], a[4]),
                (count(a[2]), count(a[3])),
                || wake_op(w2, a[5] as u32),
            )
        }
        // PI futexes: as without --det.
        _ => Err(Errno::ENOSYS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn abi_matches_ditto_h() {
        // The constants come from ditto.h through build.rs; this checks the header's shape
        // didn't change under us (consecutive numbers, far above Linux's table).
        assert_eq!(abi::DITTO_SYS_BASE, 0x1D170);
        assert_eq!(abi::DITTO_SYS_DET_START, abi::DITTO_SYS_BASE);
        assert_eq!(abi::DITTO_SYS_DET_END, abi::DITTO_SYS_BASE + 1);
        assert_eq!(abi::DITTO_SYS_DET_TICK, abi::DITTO_SYS_BASE + 2);
        assert_eq!(abi::DITTO_SYS_DET_SLOT, abi::DITTO_SYS_BASE + 3);
        assert_eq!(abi::DITTO_DET_SLOT_SIZE, 64);
        assert_eq!(abi::DITTO_SLOT_IDLE, 0);
        assert_eq!(abi::DITTO_SLOT_IN_SECTION, 1);
        assert_eq!(abi::DITTO_SLOT_ENDED, 2);
        assert_eq!(abi::DITTO_SLOT_CALL, 3);
        assert_eq!(abi::DITTO_SLOT_STATE_MASK, 3);
        assert_eq!(abi::DITTO_SLOT_TICK_SHIFT, 2);
        let h = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../guest-images/include/ditto.h"
        ))
        .unwrap();
        assert!(h.contains(&format!(
            "#define DITTO_SYS_BASE {:#X}",
            abi::DITTO_SYS_BASE
        )));
        for nr in [
            abi::DITTO_SYS_DET_START,
            abi::DITTO_SYS_DET_END,
            abi::DITTO_SYS_DET_TICK,
            abi::DITTO_SYS_DET_SLOT,
        ] {
            assert!(private(nr).is_some());
        }
        assert!(private(abi::DITTO_SYS_BASE + 4).is_none());
        assert!(private(libc::SYS_read as u64).is_none());
    }

    #[test]
    fn kinds() {
        assert_eq!(det_kind(libc::SYS_futex as u64), DetKind::Futex);
        assert_eq!(det_kind(libc::SYS_write as u64), DetKind::Output);
        assert_eq!(det_kind(libc::SYS_getpid as u64), DetKind::Free);
        assert_eq!(det_kind(libc::SYS_poll as u64), DetKind::External);
        assert_eq!(det_kind(libc::SYS_mmap as u64), DetKind::Ordered);
    }

    #[test]
    fn wake_op_decodes_linux_encoding() {
        let w = AtomicU32::new(5);
        // FUTEX_OP(FUTEX_OP_SET, 1, FUTEX_OP_CMP_GT, 1): glibc's old condvar encoding.
        let val3 = (4 << 24) | (1 << 12) | 1; // op SET is 0
        assert_eq!(wake_op((&w).into(), val3), Ok(true));
        assert_eq!(w.load(Ordering::SeqCst), 1);
        // ADD 2, compare old == 1.
        let val3 = (1 << 28) | (2 << 12) | 1; // cmp EQ is 0
        assert_eq!(wake_op((&w).into(), val3), Ok(true));
        assert_eq!(w.load(Ordering::SeqCst), 3);
        assert_eq!(wake_op((&w).into(), 7 << 28), Err(Errno::ENOSYS));
    }

    #[test]
    fn fd_kinds() {
        let mut p = [0i32; 2];
        // SAFETY: pipe into a local array.
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        assert_eq!(fd_kind(p[0]), Some(FdKind::Pollable));
        assert!(!ready(p[0], libc::POLLIN));
        assert!(ready(p[1], libc::POLLOUT));
        // SAFETY: eventfd with no flags.
        let e = unsafe { libc::eventfd(0, 0) };
        assert_eq!(fd_kind(e), Some(FdKind::Pollable));
        let f = tempfile::tempfile().unwrap();
        use std::os::fd::AsRawFd;
        assert_eq!(fd_kind(f.as_raw_fd()), Some(FdKind::File));
        assert_eq!(fd_kind(-1), None);
        for fd in [p[0], p[1], e] {
            // SAFETY: closing descriptors this test opened.
            unsafe { libc::close(fd) };
        }
    }
}
