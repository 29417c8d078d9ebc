//! What a replica process is given to connect to the other, and why that can fail.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use crate::role::{Mode, Role};
use crate::status::StatusPage;
use crate::{ChannelConfig, ChannelError};

/// Errors of setting replication up.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The channel could not be created or attached.
    #[error("replication channel: {0}")]
    Channel(#[from] ChannelError),
    /// The secondary's output files could not be created.
    #[error("cannot create {path}: {source}")]
    Output {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What a replica process is given.
pub struct ReplicaSetup {
    /// Primary or secondary.
    pub role: Role,
    /// det or follow.
    pub mode: Mode,
    /// Connected to the other replica: the channel's memfd crosses it, and its hang-up is
    /// how each side notices the other's death.
    pub peer: OwnedFd,
    /// Ring size and lag bounds (the primary creates the channel).
    pub channel: ChannelConfig,
    /// The counters page shared with the supervisor.
    pub status: StatusPage,
    /// Secondary: where its program's stdout and stderr go (`secondary.stdout`, `.stderr`).
    pub output_dir: PathBuf,
    /// Secondary: when the primary dies without ending its log, replay what it logged and
    /// then go live on its descriptors (failover) instead of stopping.
    pub failover: bool,
}
