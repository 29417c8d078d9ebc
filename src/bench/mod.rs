//! The benchmarks `ditto bench` runs; each measures ditto against native runs of the same
//! programs in one invocation.
//!
//! - [`syscall`]: syscall round trip, compute, memcpy, thread create+join, start-up.
//! - [`servers`]: redis, nginx, pbzip2 and mongoose from their images.
//! - [`det`]: what deterministic execution (`--det`) costs.
//! - [`failover`]: how long a pair takes to fail over, and the stall its clients see.
//! - [`pair`]: what replication (`ditto pair`) costs, and the channel's throughput.
//! - [`proc`]: starting, bounding and stopping the processes they measure.

pub mod det;
pub mod failover;
pub mod pair;
pub mod plot;
pub mod proc;
pub mod servers;
pub mod syscall;
