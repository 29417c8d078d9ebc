//! A ditto guest's memory, as the VMM touches it: the one identity-mapped region
//! (`guest_mem`), the program's page protections it checks (`protect`), fault-safe copies and atomics on it (`safecopy`, whose faults become EFAULT
//! instead of a VMM crash), and the Linux error numbers those accesses fail with (`errno`).
//!
//! It is its own crate because both the syscall layer (`devices`) and the det runtime (`det`)
//! read and write guest memory, and neither should depend on the other for it.

pub mod errno;
pub mod guest_mem;
pub mod protect;
pub mod safecopy;

pub use errno::Errno;
pub use protect::{Access, PageProt};
