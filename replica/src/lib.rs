//! Replication between the primary and the secondary VMM processes (DESIGN.md §6).
//!
//! - [`channel`]: the shared-memory record ring between the two processes, handed over a
//!   Unix socket, with backpressure, peer-death detection and acknowledgements for output
//!   commit.
//! - [`status`]: the counters page both replicas update and `ditto pair` reads.
//! - [`report`]: the JSON report of a `ditto pair` run (its schema is defined there), its
//!   readable summary, and two runs side by side.
//! - [`wire`]: the payloads of the replication records (the ABI above the channel's framing).
//! - [`role`]: primary or secondary, det or follow.
//! - [`handoff`]: failover's descriptor channel: the primary's outside descriptors, passed
//!   to the secondary with SCM_RIGHTS ahead of the records that create them.
//! - [`findings`]: what the secondary finds (mismatch, agreed events), for the report.
//! - [`endpoint`]: one replica process's end of the pair ([`endpoint::Endpoint`]): role,
//!   counters, the primary's or the secondary's side, and the det runtime's schedule link.
//! - [`call`]: the one interface between the syscall layer and replication for a syscall:
//!   the primary's records of it, the secondary's decisions about it.
//! - [`primary`]: the primary's side: records, fragmentation, output commit.
//! - [`secondary`]: the secondary's side: intake of the primary's records into per-thread
//!   queues, taking them, the drain after the log's end, mismatches and agreed events.
//! - [`program`]: what replication needs of the replicated program (implemented by the
//!   syscall layer), so that this crate never depends on it.
//! - [`setup`]: what a replica process is given to connect.
//! - [`trace`]: `ditto pair --trace`: per-thread rings of each replica's recent events, the
//!   trace file's schema, and lining two traces up (`ditto compare --trace`).
//! - [`syscall_names`]: x86-64 syscall names, for reports and messages.
//! - [`testkit`]: payload patterns and child spawning shared by tests and the benchmark.
//! - [`bench`]: the channel's cross-process throughput benchmark (`channel_peer bench`,
//!   `ditto bench pair`).

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod bench;
pub mod call;
pub mod channel;
pub mod endpoint;
pub mod findings;
pub mod handoff;
pub mod primary;
pub mod program;
pub mod report;
pub mod role;
pub mod secondary;
pub mod setup;
pub mod status;
pub mod supervisor;
mod sync;
mod sys;
pub mod syscall_names;
pub mod testkit;
pub mod trace;
pub mod wire;

pub use channel::{
    recv_fd, send_fd, Channel, ChannelConfig, ChannelError, Consumer, Producer, Stats,
};
