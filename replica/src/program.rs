//! What the replication layer needs of the program it replicates, implemented by the syscall
//! layer for its process: whether it is ending, how far it got, how to stop it, and its det
//! runtime's turn log. The replication layer never sees the process itself.

use det::{Turn, TurnError};

/// The replicated program, as the replication layer sees it.
pub trait Program: Send + Sync {
    /// The program is ending (exit_group, a fatal signal, a stop).
    fn exiting(&self) -> bool;
    /// Ends the program as killed by `signal`, without running a handler.
    fn end_by_signal(&self, signal: i32);
    /// Syscalls the program made so far: the secondary's progress.
    fn syscalls(&self) -> u64;
    /// Threads still running.
    fn live_threads(&self) -> usize;
    /// Turns of the primary's log the det runtime holds and has not granted yet; None
    /// without a det runtime (turn records are then dropped).
    fn turns_held(&self) -> Option<usize>;
    /// Hands one turn of the primary's log to the det runtime.
    fn push_turn(&self, turn: Turn) -> Result<(), TurnError>;
    /// The primary's log is complete or cut off: no more turns will come.
    fn close_log(&self);
    /// Turns taken so far; None without a det runtime.
    fn turns_taken(&self) -> Option<u64>;
    /// The VMM's own counters (exits, syscalls by class) for the status page.
    fn counters(&self) -> crate::status::ReplicaCounters;
    /// The det runtime's state in words, for a stall report; None without one.
    fn describe_schedule(&self) -> Option<String>;
    /// Failover: the secondary's program goes live. Its det runtime stops following the
    /// primary and decides like a primary that logs nowhere, and the outside descriptors the
    /// primary passed replace their placeholders. Called once, after every record the
    /// primary logged is consumed.
    fn go_live(&self) -> WentLive;
}

/// What [`Program::go_live`] took over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WentLive {
    /// Outside descriptors whose placeholders now hold the primary's host descriptions.
    pub descriptors: u64,
    /// Of those, connected TCP sockets.
    pub connections: u64,
}
