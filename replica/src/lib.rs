//! Replication between the primary and the secondary VMM processes (DESIGN.md §6).
//!
//! - [`channel`]: the shared-memory record ring between the two processes, handed over a
//!   Unix socket, with backpressure, peer-death detection and acknowledgements for output
//!   commit.
//! - [`status`]: the counters page both replicas update and `ditto pair` reads.
//! - [`report`]: the JSON report of a `ditto pair` run (its schema is defined there), its
//!   readable summary, and two runs side by side.
//! - [`testkit`]: payload patterns and child spawning shared by tests and the benchmark.
//! - [`bench`]: the channel's cross-process throughput benchmark (`channel_peer bench`,
//!   `ditto bench pair`).

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod bench;
pub mod channel;
pub mod report;
pub mod status;
mod sys;
pub mod testkit;

pub use channel::{
    recv_fd, send_fd, Channel, ChannelConfig, ChannelError, Consumer, Producer, Stats,
};
