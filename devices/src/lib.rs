//! What a ditto program talks to: guest memory, the descriptor table, the
//! deterministic address-space allocator, confined path resolution, and the Linux
//! syscall layer grouped by subsystem (`syscalls::sys_*`), each syscall tagged with
//! its replication class, and the replication layer of a pair (`replication`).

pub mod address_space;
pub mod det_runtime;
pub mod fd_table;
pub mod itimer;
pub mod path;
pub mod process;
pub mod procfs;
pub mod replication;
pub mod seccomp;
pub mod signals;
pub mod syscalls;
pub mod vma;

pub use guest_memory::{errno, guest_mem, safecopy, Errno};
