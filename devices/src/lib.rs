//! What a ditto program talks to: guest memory, the descriptor table, the
//! deterministic address-space allocator, confined path resolution, and the Linux
//! syscall layer grouped by subsystem (`syscalls::sys_*`), each syscall tagged with
//! its replication class, and the replication layer of a pair (`replication`). The det
//! runtime lives in the `det` crate and is re-exported here as `det_runtime`.

pub mod address_space;
pub mod creds;
pub mod exit;
pub mod fd_table;
pub mod itimer;
pub mod path;
pub mod process;
pub mod procfs;
pub mod ptimer;
pub mod replication;
pub mod seccomp;
pub mod signals;
pub mod sync;
pub mod syscalls;
pub mod time_ring;
pub mod timekeeper;
pub mod vma;

pub use guest_memory::{errno, guest_mem, safecopy, Errno};

/// The det runtime (in det/, which does not depend on devices) sees the process through
/// this view.
impl det::runtime::ProcessView for process::Process {
    fn exiting(&self) -> bool {
        process::Process::exiting(self)
    }

    fn memory(&self) -> &guest_mem::GuestMemory {
        &self.mem
    }
}
