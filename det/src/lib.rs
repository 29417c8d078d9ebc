//! Pure algorithms for deterministic execution, with no KVM and no I/O.
//!
//! - [`tid`]: deterministic thread ids, handed out in creation order under the token.
//! - [`sched`]: Kendo-style logical clocks and the det token (the `det` mode).
//! - [`turn`]: the turn log of the `follow` mode: the primary appends, the secondary follows.
//! - [`record`]: the framing of records on the replication channel.
//!
//! Everything here is a state machine driven by its callers: nothing blocks, nothing iterates
//! a hash map, and nothing panics on data that comes from a guest or from the channel.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod link;
pub mod record;
pub mod sched;
pub mod tid;
pub mod turn;

pub use record::{Record, RecordError, RecordKind, Reentry};
pub use sched::{Phase, SchedError, Start, TokenScheduler};
pub use tid::{DetTid, DetTidAllocator, TidError};
pub use turn::{FollowPoll, Turn, TurnError, TurnFollower, TurnLog};
