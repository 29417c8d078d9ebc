//! The subcommands, one module each, and the exit statuses they share.
//!
//! - [`run`]: `ditto run`, one program in a process VM.
//! - [`program`]: the flags that select a program, shared by `run`, `pair` and `__replica`,
//!   and the VM configuration they resolve to.
//! - [`pair`]: `ditto pair`, the pair's flags and its demo; [`pair::supervisor`] is the
//!   supervisor of the two replica processes, which needs only `replica` (not the VMM).
//! - [`replica`]: `ditto __replica` (hidden), one replica of a pair: runs the VM.
//! - [`compare`]: `ditto compare`, reading reports back.
//! - [`image`]: `ditto image`, and an image's preparation for `--image`.
//! - [`bench`]: `ditto bench`, its flags; the benchmarks are in [`crate::bench`].

pub mod bench;
pub mod compare;
pub mod image;
pub mod pair;
pub mod program;
pub mod replica;
pub mod run;

/// Exit status for bad usage or bad input (a bad flag, a missing or malformed
/// program or image).
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit status when the host cannot run the program (no KVM, out of resources).
pub const EXIT_HOST_ERROR: u8 = 1;
