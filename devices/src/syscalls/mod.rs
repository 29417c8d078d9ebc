//! The Linux syscall layer: what the program's `syscall` instruction reaches.
//!
//! Each subsystem lives in its own `sys_<subsystem>.rs` and exports one table,
//! `TABLE`, listing every syscall it serves with its replication class (DESIGN.md §6).
//! [`SyscallTable::new`] merges them into one lookup array, indexed by number.
//! Anything not in a table gets ENOSYS and a one-line warning, once per syscall.

use std::sync::Arc;

use crate::errno::Errno;
use crate::fd_table::OpenFile;
use crate::process::Process;

mod cmsg;
use replica::syscall_names as names;
mod proc_paths;
mod sockaddr;
pub mod sys_det;
pub mod sys_file;
pub mod sys_fs;
pub mod sys_host;
pub mod sys_identity;
pub mod sys_memory;
pub mod sys_poll;
pub mod sys_signal;
pub mod sys_socket;
pub mod sys_thread;
pub mod sys_time;
pub mod sys_timer;
mod transient;
mod util;

/// How a syscall behaves under replication (DESIGN.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Executed by each replica on its own resources; deterministic under the schedule.
    Local,
    /// Executed by the primary; result and returned bytes are logged and replayed.
    Recorded,
    /// Output leaving the program: performed by the primary, hashed and compared.
    Compared,
    /// Input through a descriptor: Local for files, pipes and eventfds of the
    /// program's own, Recorded for sockets, terminals and, in a pair, host files outside
    /// the replica's state that it opened to write or had changed (`replication::hostfs`).
    InputByFd,
    /// Output through a descriptor: Local for the replica's own files, Compared for
    /// sockets, stdout, stderr and, in a pair, host files outside the replica's state.
    OutputByFd,
    /// Not provided: ENOSYS and a warning (fork, execve...).
    Unsupported,
}

impl Class {
    /// Its place in [`replica::status::SYSCALL_CLASSES`] (the metrics' `class` label) and
    /// in [`Stats::syscalls_by_class`](crate::process::Stats::syscalls_by_class).
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// The general-purpose registers of the calling thread, as the program left them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct UserRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// Per-thread state the syscall layer keeps.
#[derive(Clone, Debug, Default)]
pub struct ThreadState {
    /// The thread id the program sees.
    pub tid: i64,
    /// CLONE_CHILD_CLEARTID / set_tid_address: zeroed and woken at exit.
    pub clear_child_tid: u64,
    /// The blocked-signal mask the thread starts with (afterwards the mask lives in
    /// `Process::signals`, where other threads can see it).
    pub sigmask: u64,
    /// FS base (TLS).
    pub fs_base: u64,
    /// Syscalls this thread has made (for reports, and the per-thread syscall number that
    /// replication keys its records by).
    pub syscalls: u64,
    /// Replication: the signal to deliver right after the current syscall (the only point
    /// where a replicated program takes asynchronous signals).
    pub signal_after: Option<i32>,
    /// Replication: Recorded and Compared calls this thread has made (the key its records
    /// are matched by; Local calls such as futexes may differ in number between replicas).
    pub replicated_events: u64,
    /// Under `--det`: the descriptor of an accept that waited off the token, installed at
    /// the call's re-entry turn ([`ParkedFd`]).
    pub parked_fd: Option<ParkedFd>,
    /// Under `--det`: the thread still holds the turn it re-entered with after a sleep, until
    /// its next syscall or det hypercall ([`SyscallTable::dispatch`] ends it first).
    pub holds_reentry_turn: bool,
    /// A Kendo primary's blocking call returned and its record goes out after it; the
    /// thread's next call tells the det runtime so (`DetRuntime::blocking_recorded`).
    pub blocking_unrecorded: bool,
}

/// Under `--det`, an accepted connection is not given a descriptor number when it arrives,
/// which is not a det point: it waits here until the accepting thread's re-entry turn
/// (`sys_det::external`), so that its number follows the token order like every other
/// descriptor's. (Installed on arrival, it could take a number that another thread's open
/// then skips on one replica and not on the other, or land while a descriptor that a turn
/// later closes is still open.)
#[derive(Clone, Debug)]
pub struct ParkedFd {
    /// The open file.
    pub file: Arc<OpenFile>,
    /// O_CLOEXEC.
    pub cloexec: bool,
    /// The number to take: the primary's, on a pair's secondary; else the lowest free one.
    pub at: Option<i64>,
}

/// How a new thread starts (clone).
#[derive(Clone, Debug)]
pub struct ThreadStart {
    /// Registers at the first instruction.
    pub regs: UserRegs,
    /// The thread's state, tid included.
    pub thread: ThreadState,
}

/// What the syscall layer needs from the vCPU that made the call.
pub trait CpuOps {
    /// Sets the calling thread's FS base.
    fn set_fs_base(&mut self, base: u64) -> Result<(), Errno>;
    /// Starts a new thread on a vCPU (pooled or new).
    fn spawn_thread(&mut self, start: ThreadStart) -> Result<(), Errno>;
}

/// What the calling thread does after the syscall returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadAction {
    /// Return to the program with RAX set.
    Continue,
    /// The thread ends (exit).
    ExitThread(i32),
    /// The program ended (exit_group, or a fatal signal); stop this thread.
    Stop,
    /// rt_sigreturn: restore the context saved in the signal frame at the program's RSP.
    SigReturn,
}

/// Everything a handler can touch.
pub struct SyscallCtx<'a> {
    /// The program.
    pub process: &'a Arc<Process>,
    /// The syscall number being served.
    pub nr: u64,
    /// The calling thread.
    pub thread: &'a mut ThreadState,
    /// The caller's registers (clone copies them).
    pub regs: &'a UserRegs,
    /// vCPU operations.
    pub cpu: &'a mut dyn CpuOps,
    /// Set by handlers that end the thread or the program.
    pub action: ThreadAction,
    /// Det mode of a pair: the logical time at which an external call re-entered the token
    /// competition (set by the primary's det layer, by the secondary's replay).
    pub reentry_at: Option<u64>,
}

/// A handler's result: RAX on success, or an errno.
pub type SysResult = Result<u64, Errno>;

/// A handler: the six argument registers in ABI order (rdi, rsi, rdx, r10, r8, r9).
pub type Handler = fn(&mut SyscallCtx<'_>, [u64; 6]) -> SysResult;

/// One row of a subsystem table.
#[derive(Clone, Copy)]
pub struct SyscallEntry {
    /// The syscall number.
    pub nr: i64,
    /// Its name (as in `man 2`).
    pub name: &'static str,
    /// Its replication class.
    pub class: Class,
    /// The code that serves it.
    pub handler: Handler,
}

/// Builds a table row from a libc `SYS_*` constant, a class and a handler.
#[macro_export]
macro_rules! sys {
    ($nr:ident, $class:ident, $handler:path) => {
        $crate::syscalls::SyscallEntry {
            nr: libc::$nr,
            name: {
                let s = stringify!($nr);
                // SAFETY-free const slicing: drop the "SYS_" prefix.
                match s.as_bytes() {
                    [b'S', b'Y', b'S', b'_', rest @ ..] => match std::str::from_utf8(rest) {
                        Ok(n) => n,
                        Err(_) => s,
                    },
                    _ => s,
                }
            },
            class: $crate::syscalls::Class::$class,
            handler: $handler,
        }
    };
}

/// Highest syscall number the table covers (x86-64 numbers are below this).
const TABLE_SIZE: usize = 512;

/// All subsystem tables, merged for O(1) dispatch.
pub struct SyscallTable {
    by_nr: Vec<Option<SyscallEntry>>,
}

/// The subsystem tables, in one place.
pub fn subsystem_tables() -> [&'static [SyscallEntry]; 11] {
    [
        sys_memory::TABLE,
        sys_thread::TABLE,
        sys_file::TABLE,
        sys_fs::TABLE,
        sys_socket::TABLE,
        sys_poll::TABLE,
        sys_time::TABLE,
        sys_timer::TABLE,
        sys_identity::TABLE,
        sys_signal::TABLE,
        sys_host::TABLE,
    ]
}

impl Default for SyscallTable {
    fn default() -> Self {
        Self::new()
    }
}

impl SyscallTable {
    /// Merges the subsystem tables.
    pub fn new() -> Self {
        let mut by_nr = vec![None; TABLE_SIZE];
        for table in subsystem_tables() {
            for e in table {
                if let Some(slot) = usize::try_from(e.nr).ok().and_then(|i| by_nr.get_mut(i)) {
                    *slot = Some(*e);
                }
            }
        }
        SyscallTable { by_nr }
    }

    /// The entry for `nr`, if ditto knows it.
    pub fn get(&self, nr: u64) -> Option<&SyscallEntry> {
        usize::try_from(nr)
            .ok()
            .and_then(|i| self.by_nr.get(i))
            .and_then(|e| e.as_ref())
    }

    /// Serves one syscall and returns the value for RAX.
    pub fn dispatch(&self, ctx: &mut SyscallCtx<'_>, nr: u64, args: [u64; 6]) -> u64 {
        use std::sync::atomic::Ordering;
        // A pair's time rings: their private calls are no syscalls of the program, and
        // every syscall first settles the thread's ring (replication::time).
        if let Some(ret) = crate::replication::time::private_call(ctx, nr, args) {
            return ret;
        }
        if let Some(ret) = crate::replication::time::before_syscall(ctx) {
            return ret;
        }
        ctx.process.stats.syscalls.fetch_add(1, Ordering::Relaxed);
        ctx.thread.syscalls += 1;
        if std::mem::take(&mut ctx.thread.blocking_unrecorded) {
            if let Some(det) = ctx.process.det.get() {
                det.blocking_recorded(ctx.thread.tid);
            }
        }
        ctx.process.timekeeper.tick();
        if std::mem::take(&mut ctx.thread.holds_reentry_turn) {
            if let Some(det) = ctx.process.det.get() {
                // Not in a section any more (a stop, an exiting program): nothing to end.
                let _ = det.det_end(ctx.thread.tid);
            }
        }
        if let Some(entry) = sys_det::private(nr) {
            return sys_det::serve_private(ctx, entry, args).unwrap_or_else(|e| e.as_return());
        }
        let Some(entry) = self.get(nr) else {
            ctx.process.warn_unsupported(nr, &names::name(nr));
            return Errno::ENOSYS.as_return();
        };
        if entry.class == Class::Unsupported {
            ctx.process.warn_unsupported(nr, entry.name);
        }
        ctx.process.stats.syscalls_by_class[entry.class.index()].fetch_add(1, Ordering::Relaxed);
        let handler = entry.handler;
        let result = match ctx.process.replication.get() {
            Some(rep) => crate::replication::serve(rep, ctx, entry, args),
            None => serve_local(ctx, entry, args, false, &mut |c, a| handler(c, a)),
        };
        let ret = match result {
            Ok(v) => v,
            Err(e) => e.as_return(),
        };
        // Every syscall with its arguments and result, for diagnosing a guest that hangs or
        // spins (RUST_LOG=ditto::syscalls=trace); off, it costs one level check.
        tracing::trace!(
            target: "ditto::syscalls",
            tid = ctx.thread.tid,
            seq = ctx.thread.syscalls,
            "{}({:#x}, {:#x}, {:#x}, {:#x}, {:#x}, {:#x}) = {}",
            entry.name,
            args[0],
            args[1],
            args[2],
            args[3],
            args[4],
            args[5],
            ret as i64
        );
        ret
    }
}

/// Runs `h` for `entry` the way this process runs syscalls itself: under the det runtime's
/// rules when there is one. `recorded`: a pair's Recorded call, whose answer is the
/// primary's handler's alone (see [`sys_det::serve`]).
pub fn serve_local(
    ctx: &mut SyscallCtx<'_>,
    entry: &SyscallEntry,
    args: [u64; 6],
    recorded: bool,
    h: &mut sys_det::DetHandler<'_>,
) -> SysResult {
    match ctx.process.det.get() {
        Some(det) => sys_det::serve(det, ctx, entry, args, recorded, h),
        None => h(ctx, args),
    }
}

/// EPIPE raises SIGPIPE (for the replication layer's replayed writes).
pub fn util_epipe(ctx: &mut SyscallCtx<'_>, r: SysResult) -> SysResult {
    util::epipe_kills(ctx, r)
}

/// The handler of every `Unsupported` row.
pub fn unsupported(_: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    Err(Errno::ENOSYS)
}

/// The handler of calls that are known and deliberately answered ENOSYS without a
/// warning, because libc has a fallback (clone3, rseq).
pub fn enosys_quiet(_: &mut SyscallCtx<'_>, _: [u64; 6]) -> SysResult {
    Err(Errno::ENOSYS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn class_indexes_match_the_metrics_names() {
        let all = [
            Class::Local,
            Class::Recorded,
            Class::Compared,
            Class::InputByFd,
            Class::OutputByFd,
            Class::Unsupported,
        ];
        assert_eq!(all.len(), replica::status::SYSCALL_CLASSES.len());
        for c in all {
            let snake: String = format!("{c:?}")
                .chars()
                .enumerate()
                .flat_map(|(i, ch)| {
                    let lower = ch.to_ascii_lowercase();
                    if ch.is_ascii_uppercase() && i > 0 {
                        vec!['_', lower]
                    } else {
                        vec![lower]
                    }
                })
                .collect();
            assert_eq!(replica::status::SYSCALL_CLASSES[c.index()], snake);
        }
    }

    #[test]
    fn no_syscall_is_listed_twice() {
        let mut seen = BTreeMap::new();
        for table in subsystem_tables() {
            for e in table {
                if let Some(prev) = seen.insert(e.nr, e.name) {
                    panic!("syscall {} listed as {} and {}", e.nr, prev, e.name);
                }
                assert!((e.nr as usize) < TABLE_SIZE, "{} out of range", e.name);
            }
        }
        assert!(seen.len() > 150, "only {} syscalls", seen.len());
    }

    #[test]
    fn names_drop_prefix() {
        let t = SyscallTable::new();
        assert_eq!(t.get(libc::SYS_read as u64).unwrap().name, "read");
        assert_eq!(
            t.get(libc::SYS_execve as u64).unwrap().class,
            Class::Unsupported
        );
        assert!(t.get(100_000).is_none());
    }
}
