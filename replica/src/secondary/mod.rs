//! The secondary's side of replication.

pub mod intake;
