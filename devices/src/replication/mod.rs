//! Replication of one program between two VMM processes (DESIGN.md §6): the primary runs it
//! for real and logs what the secondary cannot compute by itself; the secondary runs the
//! same program, replays the log and compares its outputs.
//!
//! Every syscall goes through [`serve`] when a [`Replication`] is attached to the process.
//! Its class (the syscall tables' [`Class`], refined by descriptor for I/O) decides:
//! - **Local**: both replicas execute it (memory, threads, the program's own files and pipes).
//! - **Recorded**: the primary executes it and ships the result and the guest memory it
//!   wrote ([`effects::written`]); the secondary copies them in without executing anything.
//!   Descriptors created by recorded calls (sockets, accepted connections, timers) become
//!   placeholders in the secondary (unbound AF_UNIX sockets), so the secondary never touches
//!   the network and descriptor numbers stay the same.
//! - **Compared**: output leaving the program (stdout, stderr, sockets). Both replicas compute
//!   the bytes ([`effects::would_output`]); the primary waits until the secondary holds every
//!   record sent so far (output commit), performs the output and ships the bytes; the secondary
//!   compares its own bytes with them and keeps them in files of its own (`secondary.stdout`,
//!   `secondary.stderr`, and `secondary.net` for everything else, in order).
//!
//! This module keeps what each call means: its treatment, which guest memory it reads and
//! writes ([`effects`]), the descriptors it creates. What the records are and what they decide
//! is replica's: the two meet through [`replica::call`] only. The syscall context is replica's
//! [`Call`]; `primary` hands replica what an executed call wrote or output to record;
//! `secondary` asks replica what to do with a call (replay these bytes, this result; these
//! output bytes agree; stop, it diverged) and places memory and descriptors accordingly.
//!
//! The schedule is made identical by the det runtime in both replicas (the
//! [`ScheduleLink`](det::link::ScheduleLink) implementation in `link`): Kendo on both sides plus the primary's re-entry times in `det` mode,
//! or the primary's turn log in `follow` mode.
//!
//! Signals: under replication an asynchronous signal reaches a handler only right after a
//! Recorded or Compared call (its record names it), so the secondary delivers it at the same
//! point of the same thread. Signals the secondary's program raises itself are not queued.
//!
//! Records are routed by deterministic thread id: the secondary's reader thread
//! demultiplexes the channel into one queue per thread, and each thread takes its own records
//! in order; replica checks that each is the record of the call (its syscall number and
//! per-thread replicated-event number).

pub mod effects;
mod hostfs;
mod in_doubt;
mod input;
mod link;
mod primary;
mod program;
mod secondary;
mod takeover;
pub mod time;

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use replica::call::{call_result, record_result, Call};
use replica::endpoint::Endpoint;
use replica::program::Program;
use replica::status::StatusPage;
use replica::trace::{Trace, TraceEvent, TraceKind, Tracer};
use replica::wire::EndInfo;

use crate::errno::Errno;
use crate::exit::ExitReason;
use crate::process::Process;
use crate::sync::lock;
use crate::syscalls::{Class, SysResult, SyscallCtx, SyscallEntry, ThreadAction};

use replica::findings::SecondaryFindings;
use replica::role::{Mode, Role};
use replica::setup::{ReplicaSetup, ReplicationError};

/// The replication state of one replica process: replica's [`Endpoint`], bound to the
/// process whose syscalls it serves.
pub struct Replication {
    endpoint: Endpoint,
    /// Which calls touch the host's files outside the replica's own state ([`hostfs`]).
    host_files: hostfs::HostFiles,
    /// `--trace`: the per-thread rings of this replica's recent events.
    tracer: OnceLock<Tracer>,
    /// Secondary: input bytes replayed per outside descriptor ([`in_doubt`]).
    replayed_input: in_doubt::ReplayedInput,
    /// Secondary: the placeholders holding the primary's descriptors, and the program's
    /// epoll interests ([`takeover`]).
    held: takeover::Held,
    /// The pair's output directory (the [`takeover::FDS_DUMP_ENV`] test hook writes there).
    output_dir: std::path::PathBuf,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication")
            .field("role", &self.endpoint.role())
            .field("mode", &self.endpoint.mode())
            .finish()
    }
}

impl Replication {
    /// Connects to the other replica: the primary creates the channel and sends its memfd
    /// over `setup.peer`; the secondary receives and maps it.
    pub fn connect(setup: ReplicaSetup) -> Result<Arc<Self>, ReplicationError> {
        let host_files = hostfs::HostFiles::new(&setup.output_dir);
        let output_dir = setup.output_dir.clone();
        Ok(Arc::new(Replication {
            endpoint: Endpoint::connect(setup)?,
            host_files,
            tracer: OnceLock::new(),
            replayed_input: Default::default(),
            held: takeover::Held::default(),
            output_dir,
        }))
    }

    /// `--trace`: keeps the last `capacity` events of each thread from now on.
    pub fn enable_trace(&self, capacity: usize) {
        let _ = self.tracer.set(Tracer::new(capacity));
    }

    /// What the trace rings hold now (None without `--trace`).
    pub fn trace(&self) -> Option<Trace> {
        self.tracer.get().map(|t| t.snapshot(self.role()))
    }

    /// `--trace`: a signal handler of `tid` is entered.
    pub fn trace_signal(&self, process: &Process, tid: i64, signal: i32) {
        if let Some(t) = self.tracer.get() {
            let (logical_time, turn) = det_position(process, tid);
            t.push_signal(tid, signal, turn, logical_time);
        }
    }

    /// Whether this replica is a secondary that took over from a dead primary (failover):
    /// its program then runs as an unreplicated one does, signals included.
    pub fn is_live(&self) -> bool {
        self.endpoint.is_live()
    }

    /// Primary or secondary.
    pub fn role(&self) -> Role {
        self.endpoint.role()
    }

    /// det or follow.
    pub fn mode(&self) -> Mode {
        self.endpoint.mode()
    }

    /// The shared counters.
    pub fn status(&self) -> &StatusPage {
        self.endpoint.status()
    }

    /// Binds to the program (before its first thread starts). The secondary starts its
    /// reader thread and makes its signal state replay-only.
    pub fn start(self: &Arc<Self>, process: &Arc<Process>) {
        let program: Weak<Process> = Arc::downgrade(process);
        self.endpoint.bind(program);
        {
            // The turn counter of the status line, from the det runtime's own count.
            let me = self.clone();
            let weak = Arc::downgrade(process);
            let _ = std::thread::Builder::new()
                .name("replica-status".into())
                .spawn(move || {
                    crate::seccomp::apply_or_exit(crate::seccomp::Kind::Channel);
                    loop {
                        let Some(p) = weak.upgrade() else { return };
                        me.endpoint.publish_counters(&*p);
                        if p.exiting() {
                            return;
                        }
                        if let Some(s) = me.endpoint.secondary() {
                            s.describe_if_asked(&*p);
                        }
                        drop(p);
                        std::thread::sleep(Duration::from_millis(100));
                    }
                });
        }
        if self.role() == Role::Secondary {
            process.signals.set_replay_only();
            let me = self.clone();
            let p = process.clone();
            let _ = std::thread::Builder::new()
                .name("replica-reader".into())
                .spawn(move || {
                    crate::seccomp::apply_or_exit(crate::seccomp::Kind::Channel);
                    if let Some(s) = me.endpoint.secondary() {
                        s.reader(&*p);
                    }
                });
            if self.endpoint.secondary().is_some_and(|s| s.failover()) {
                self.start_holding(process);
            }
        }
    }

    /// Secondary with failover: a thread receives the descriptors the primary passes, and
    /// the program's standard descriptors hold the primary's (passed at connect).
    fn start_holding(self: &Arc<Self>, process: &Arc<Process>) {
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("replica-handoff".into())
            .spawn(move || {
                crate::seccomp::apply_or_exit(crate::seccomp::Kind::Channel);
                me.endpoint.receive_descriptors();
            });
        let Some(s) = self.endpoint.secondary() else {
            return;
        };
        for fd in 0..3u32 {
            let tag = replica::handoff::Tag::stdio(fd);
            // Received at connect (Secondary::connect): no wait.
            match s.take_descriptor(tag, Duration::ZERO) {
                Ok(Some(primary)) => {
                    if let Ok(f) = lock(&process.fds).get(fd as i64) {
                        f.hold_takeover(primary);
                        self.held.add(&f);
                    }
                }
                Ok(None) => {}
                Err(why) => tracing::warn!(fd, "failover: {why}"),
            }
        }
    }

    /// Secondary: takes the primary's descriptor `index` of the current call, waiting
    /// briefly for the receiver (it was sent before the call's record). `Ok(None)`:
    /// no failover, or the primary had none.
    fn primary_descriptor(
        &self,
        ctx: &SyscallCtx<'_>,
        index: u32,
    ) -> Result<Option<std::os::fd::OwnedFd>, String> {
        let Some(s) = self.endpoint.secondary() else {
            return Ok(None);
        };
        let tag = replica::handoff::Tag {
            thread: det_tid(ctx),
            event: ctx.thread.replicated_events,
            index,
        };
        s.take_descriptor(tag, HANDOFF_WAIT)
    }

    /// Primary with failover: input from TCP connections is logged before it is consumed.
    fn peeks_input(&self) -> bool {
        self.endpoint
            .primary()
            .is_some_and(|p| p.passes_descriptors())
    }

    /// Secondary: the program's epoll_ctl succeeded; tracked for failover ([`takeover`]).
    pub fn epoll_ctl_done(&self, epoll: i32, op: i32, target: i32, events: u32, data: u64) {
        if self.role() == Role::Secondary {
            lock(&self.held.epolls).ctl(epoll, op, target, events, data);
        }
    }

    /// Secondary: the program made a new epoll of host number `epoll`.
    pub fn epoll_created(&self, epoll: i32) {
        if self.role() == Role::Secondary {
            lock(&self.held.epolls).created(epoll);
        }
    }

    /// The program ended (either role): final counters; the primary tells the secondary how
    /// it ended and closes the channel.
    pub fn program_ended(&self, exit: &ExitReason) {
        let end = match exit {
            ExitReason::Exited(s) => EndInfo {
                status: s & 0xff,
                signal: 0,
            },
            ExitReason::Signaled { signal, .. } => EndInfo {
                status: exit.status(),
                signal: *signal,
            },
        };
        self.endpoint.program_ended(end);
    }

    /// Primary: why the channel broke, if it did (the secondary died or lagged out).
    pub fn primary_error(&self) -> Option<String> {
        self.endpoint.primary_error()
    }

    /// Secondary: what it found.
    pub fn findings(&self) -> SecondaryFindings {
        self.endpoint.findings()
    }

    /// Secondary: the descriptor `fd` the primary's call returned cannot be given the same
    /// number here (`why`): reported as a divergence, and the thread stops.
    pub fn descriptor_mismatch(&self, ctx: &mut SyscallCtx<'_>, fd: i64, why: String) -> SysResult {
        if let Some(s) = self.endpoint.secondary() {
            s.descriptor_mismatch(&*ctx, fd, why);
        }
        stop_thread(ctx)
    }
}

/// How long the secondary waits for a descriptor whose record it replays: it was sent
/// first, so only the receiver thread's scheduling can delay it.
const HANDOFF_WAIT: Duration = Duration::from_secs(5);

/// The calling thread's deterministic id.
fn det_tid(ctx: &SyscallCtx<'_>) -> u32 {
    ctx.process
        .det
        .get()
        .and_then(|d| d.det_tid(ctx.thread.tid))
        .map_or(u32::MAX, |d| d.0)
}

/// The call, as replica sees it ([`replica::call`]).
impl Call for SyscallCtx<'_> {
    fn thread(&self) -> u32 {
        det_tid(self)
    }

    fn nr(&self) -> u64 {
        self.nr
    }

    fn syscall_seq(&self) -> u64 {
        self.thread.syscalls
    }

    fn event(&self) -> u64 {
        self.thread.replicated_events
    }

    fn position(&self) -> (Option<u64>, Option<u64>) {
        det_position(self.process, self.thread.tid)
    }

    fn program(&self) -> &dyn Program {
        &**self.process
    }
}

/// The thread stops: the program ended or diverged.
fn stop_thread(ctx: &mut SyscallCtx<'_>) -> SysResult {
    ctx.action = ThreadAction::Stop;
    Err(Errno::EINTR)
}

/// A recorded result as the call's.
fn to_result(ret: i64) -> SysResult {
    call_result(ret).map_err(Errno)
}

/// A call's result as a record carries it.
fn to_ret(r: &SysResult) -> i64 {
    record_result(r.map_err(|e| e.0))
}

/// How a syscall is treated in this call: its class, refined by descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Treatment {
    Local,
    Recorded,
    Compared,
    Exit,
}

fn treatment(
    rep: &Replication,
    ctx: &SyscallCtx<'_>,
    entry: &SyscallEntry,
    a: [u64; 6],
) -> Treatment {
    if entry.class != Class::Unsupported && hostfs::outside(&rep.host_files, ctx.process, ctx.nr, a)
    {
        return Treatment::Recorded;
    }
    let external = || {
        effects::io_fd(ctx.process, ctx.nr, a).is_some_and(|fd| {
            lock(&ctx.process.fds)
                .get(fd)
                .is_ok_and(|f| f.is_external())
        })
    };
    match entry.class {
        Class::Local if ctx.nr as i64 == libc::SYS_exit_group => Treatment::Exit,
        Class::Local | Class::Unsupported => Treatment::Local,
        Class::Recorded => Treatment::Recorded,
        Class::Compared => Treatment::Compared,
        Class::InputByFd if external() => Treatment::Recorded,
        Class::OutputByFd if external() => Treatment::Compared,
        Class::InputByFd | Class::OutputByFd => Treatment::Local,
    }
}

/// Serves one syscall of a replicated program (see the module documentation).
pub fn serve(
    rep: &Replication,
    ctx: &mut SyscallCtx<'_>,
    entry: &SyscallEntry,
    a: [u64; 6],
) -> SysResult {
    let handler = entry.handler;
    let how = treatment(rep, ctx, entry, a);
    let local = |ctx: &mut SyscallCtx<'_>,
                 h: &mut dyn FnMut(&mut SyscallCtx<'_>, [u64; 6]) -> SysResult| {
        crate::syscalls::serve_local(ctx, entry, a, how == Treatment::Recorded, h)
    };
    tracing::trace!(
        target: "ditto::turns",
        role = ?rep.role(),
        tid = det_tid(ctx),
        seq = ctx.thread.syscalls,
        syscall = entry.name,
        ?how,
        "syscall"
    );
    // Failover: a secondary that took over serves every call itself, as a primary without
    // a peer.
    let live = rep.role() == Role::Secondary && rep.endpoint.is_live();
    let result = match (rep.role(), how) {
        (_, Treatment::Local) => local(ctx, &mut |c, a| handler(c, a)),
        (Role::Secondary, Treatment::Compared) if live => {
            // The output the takeover let on may be one the primary had announced.
            let doubt = rep
                .endpoint
                .secondary()
                .and_then(|s| s.take_in_doubt(det_tid(ctx), ctx.nr));
            match doubt {
                Some(doubt) => {
                    let ours = effects::would_output(ctx.process, ctx.nr, a).unwrap_or_default();
                    local(ctx, &mut |c, a| {
                        in_doubt::complete(rep, c, a, &ours, doubt, handler)
                    })
                }
                None => local(ctx, &mut |c, a| handler(c, a)),
            }
        }
        (Role::Secondary, _) if live => local(ctx, &mut |c, a| handler(c, a)),
        (Role::Primary, Treatment::Exit) => {
            takeover::dump_at_exit(ctx.process, &rep.output_dir, false);
            primary::exit(rep, ctx, (a[0] & 0xff) as i64);
            local(ctx, &mut |c, a| handler(c, a))
        }
        (Role::Secondary, Treatment::Exit) => {
            if !secondary::exit(rep, ctx, (a[0] & 0xff) as i64) {
                return stop_thread(ctx);
            }
            takeover::dump_at_exit(ctx.process, &rep.output_dir, true);
            local(ctx, &mut |c, a| handler(c, a))
        }
        (Role::Primary, Treatment::Recorded) => {
            let plan = effects::plan(ctx.process, ctx.nr, a);
            ctx.reentry_at = None;
            // A record exists only for a call the handler served: the det layer answers a
            // few calls without it (libditto's own open, a call made as the program ends),
            // alike in both replicas, and on the secondary those never reach the replay
            // that would take the record.
            let mut served = false;
            // Failover: TCP input is peeked, logged, then discarded (`input`).
            let peek = rep.peeks_input().then(|| input::peek_for(ctx, a)).flatten();
            let mut peeked = None;
            let r = local(ctx, &mut |c, a| {
                served = true;
                match &peek {
                    Some(p) => {
                        let (r, reader) = p.serve(c, a, handler);
                        peeked = reader;
                        r
                    }
                    None => handler(c, a),
                }
            });
            if served {
                primary::recorded(rep, ctx, a, &plan, to_ret(&r));
            }
            if let (Some(p), Some(_reader), Ok(n)) = (&peek, peeked, &r) {
                p.consume(*n);
            }
            r
        }
        (Role::Secondary, Treatment::Recorded) => {
            local(ctx, &mut |c, a| secondary::replay(rep, c, a, handler))
        }
        (Role::Primary, Treatment::Compared) => {
            let ours = effects::would_output(ctx.process, ctx.nr, a).unwrap_or_default();
            if rep.endpoint.failover() {
                in_doubt::announce(rep, ctx, a);
            }
            // The output may show time values any thread's vDSO read: they go first.
            time::ship_all(rep, ctx.process);
            rep.endpoint.commit();
            let r = local(ctx, &mut |c, a| handler(c, a));
            primary::compared(rep, ctx, a, &ours, to_ret(&r));
            r
        }
        (Role::Secondary, Treatment::Compared) => {
            local(ctx, &mut |c, a| secondary::compare(rep, c, a, handler))
        }
    };
    if let Some(t) = rep.tracer.get() {
        trace_call(t, ctx, entry, how, &result);
    }
    result
}

/// The det runtime's (logical time, turns granted) for `tid`; None without one.
fn det_position(process: &Process, tid: i64) -> (Option<u64>, Option<u64>) {
    let det = process.det.get();
    (
        det.and_then(|d| d.logical_time(tid)),
        det.map(|d| d.stats.turns.load(Ordering::Relaxed)),
    )
}

/// `--trace`: one served syscall into its thread's ring.
fn trace_call(
    t: &Tracer,
    ctx: &SyscallCtx<'_>,
    entry: &SyscallEntry,
    how: Treatment,
    result: &SysResult,
) {
    let treatment = match how {
        Treatment::Local => "local",
        Treatment::Recorded => "recorded",
        Treatment::Compared => "compared",
        Treatment::Exit => "exit",
    };
    let (logical_time, turn) = det_position(ctx.process, ctx.thread.tid);
    t.push(
        ctx.thread.tid,
        TraceEvent {
            seq: ctx.thread.syscalls,
            kind: TraceKind::Syscall,
            syscall: entry.name.to_string(),
            treatment: treatment.into(),
            event: (how != Treatment::Local).then_some(ctx.thread.replicated_events),
            result: to_ret(result),
            turn,
            logical_time,
        },
    );
}
