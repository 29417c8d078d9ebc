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
//! - [`findings`]: what the secondary finds (mismatch, agreed events), for the report.
//! - [`secondary`]: the secondary's side: intake of the primary's records.
//! - [`syscall_names`]: x86-64 syscall names, for reports and messages.
//! - [`testkit`]: payload patterns and child spawning shared by tests and the benchmark.
//! - [`bench`]: the channel's cross-process throughput benchmark (`channel_peer bench`,
//!   `ditto bench pair`).

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod bench;
pub mod channel;
pub mod findings;
pub mod report;
pub mod role;
pub mod secondary;
pub mod status;
mod sys;
pub mod syscall_names;
pub mod testkit;
pub mod wire;

pub use channel::{
    recv_fd, send_fd, Channel, ChannelConfig, ChannelError, Consumer, Producer, Stats,
};
