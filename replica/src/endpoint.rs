//! One replica process's end of the pair: its role and schedule mode, the shared counters, and
//! the primary's or the secondary's side. The det runtime's [`ScheduleLink`] is implemented
//! here: turns, thread starts and timed-wait outcomes cross the channel.

use std::sync::{Arc, OnceLock, Weak};

use det::link::{ScheduleLink, TimedWait, WaitNews};
use det::record::RecordKind;
use det::{DetTid, Turn, TurnError};

use crate::findings::SecondaryFindings;
use crate::primary::Primary;
use crate::program::Program;
use crate::role::{Mode, Role};
use crate::secondary::Secondary;
use crate::setup::{ReplicaSetup, ReplicationError};
use crate::status::{Counter, StatusPage};
use crate::wire::{self, EndInfo, ThreadRecord};

/// The replication state of one replica process.
pub struct Endpoint {
    role: Role,
    mode: Mode,
    status: Arc<StatusPage>,
    primary: Option<Primary>,
    secondary: Option<Secondary>,
    /// Failover is on ([`ReplicaSetup::failover`]).
    failover: bool,
    /// Set once, before the program's first thread starts.
    program: OnceLock<Weak<dyn Program>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("role", &self.role)
            .field("mode", &self.mode)
            .finish()
    }
}

impl Endpoint {
    /// Connects to the other replica: the primary creates the channel and sends its memfd
    /// over `setup.peer`; the secondary receives and maps it.
    pub fn connect(setup: ReplicaSetup) -> Result<Self, ReplicationError> {
        let ReplicaSetup {
            role,
            mode,
            peer,
            channel,
            status,
            output_dir,
            failover,
        } = setup;
        let status = Arc::new(status);
        let (primary, secondary) = match role {
            Role::Primary => (
                Some(Primary::connect(peer, channel, status.clone(), failover)?),
                None,
            ),
            Role::Secondary => (
                None,
                Some(Secondary::connect(
                    peer,
                    output_dir,
                    status.clone(),
                    failover,
                )?),
            ),
        };
        Ok(Endpoint {
            role,
            mode,
            status,
            primary,
            secondary,
            failover,
            program: OnceLock::new(),
        })
    }

    /// Primary or secondary.
    pub fn role(&self) -> Role {
        self.role
    }

    /// det or follow.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The shared counters.
    pub fn status(&self) -> &StatusPage {
        &self.status
    }

    /// Whether failover is on: the secondary takes over when the primary dies, so the
    /// primary announces each output on an outside stream before it performs it.
    pub fn failover(&self) -> bool {
        self.failover
    }

    /// Secondary: whether it runs live, having taken over from a dead primary (failover).
    pub fn is_live(&self) -> bool {
        self.secondary.as_ref().is_some_and(Secondary::is_live)
    }

    /// The primary's side; None in the secondary.
    pub fn primary(&self) -> Option<&Primary> {
        self.primary.as_ref()
    }

    /// The secondary's side; None in the primary.
    pub fn secondary(&self) -> Option<&Secondary> {
        self.secondary.as_ref()
    }

    /// Binds to the program (before its first thread starts); the schedule link needs it.
    pub fn bind(&self, program: Weak<dyn Program>) {
        let _ = self.program.set(program);
    }

    fn program(&self) -> Option<Arc<dyn Program>> {
        self.program.get().and_then(|w| w.upgrade())
    }

    /// Publishes the det runtime's turn count and the VMM's own counters on the status page.
    pub fn publish_counters(&self, program: &dyn Program) {
        self.status
            .publish_replica(self.role == Role::Secondary, &program.counters());
        if let Some(turns) = program.turns_taken() {
            let c = match self.role {
                Role::Primary => Counter::PrimaryTurns,
                Role::Secondary => Counter::SecondaryTurns,
            };
            self.status.set(c, turns);
        }
    }

    /// The program ended (either role): final counters; the primary tells the secondary how
    /// it ended and closes the channel.
    pub fn program_ended(&self, end: EndInfo) {
        if let Some(p) = self.program() {
            self.publish_counters(&*p);
        }
        if let Some(primary) = &self.primary {
            primary.finish(end);
        }
    }

    /// Primary: why the channel broke, if it did (the secondary died or lagged out).
    pub fn primary_error(&self) -> Option<String> {
        self.primary.as_ref().and_then(Primary::error)
    }

    /// Secondary: what it found.
    pub fn findings(&self) -> SecondaryFindings {
        self.secondary
            .as_ref()
            .map(Secondary::findings)
            .unwrap_or_default()
    }

    /// Primary: sends a record that is not per-thread; nothing in the secondary.
    fn send(&self, kind: RecordKind, payload: &[u8]) {
        if let Some(p) = &self.primary {
            p.send(kind, payload);
        }
    }

    /// Primary: sends `tid`'s replicated event `seq`; nothing in the secondary.
    fn send_thread(&self, tid: u32, seq: u64, rec: &ThreadRecord) {
        if let Some(p) = &self.primary {
            p.send_thread(tid, seq, rec);
        }
    }

    /// Secondary with failover: receives the descriptors the primary passes until its end
    /// closes; a malformed message is a channel error that stops the program.
    pub fn receive_descriptors(&self) {
        let Some(s) = &self.secondary else { return };
        if let Err(why) = s.receive_descriptors() {
            if let Some(p) = self.program() {
                s.channel_failed(&*p, why);
            }
        }
    }

    /// Primary: output commit ([`Primary::commit`]); nothing in the secondary.
    pub fn commit(&self) {
        if let Some(p) = &self.primary {
            p.commit();
        }
    }
}

impl ScheduleLink for Endpoint {
    fn log_turn(&self, turn: Turn) {
        self.send(RecordKind::Turn, &turn.to_payload());
    }

    fn thread_started(&self, tid: DetTid) {
        self.send(RecordKind::ThreadStart, &wire::encode_thread_start(tid.0));
    }

    fn log_timed_wait(&self, tid: DetTid, outcome: TimedWait) {
        self.send_thread(
            tid.0,
            0,
            &ThreadRecord::TimedWait {
                took_turn: outcome.took_turn,
                timed_out: outcome.timed_out,
                at: outcome.reentry_at,
            },
        );
    }

    fn timed_wait_outcome(&self, tid: DetTid) -> Option<TimedWait> {
        let program = self.program()?;
        self.secondary.as_ref()?.timed_wait_outcome(&*program, tid)
    }

    fn follow_timed_wait(&self, tid: DetTid) -> WaitNews {
        match &self.secondary {
            Some(s) => s.follow_timed_wait(tid),
            None => WaitNews::Ended,
        }
    }

    fn schedule_diverged(&self, tid: DetTid, error: &TurnError) {
        let Some(s) = &self.secondary else { return };
        let program = self.program();
        s.schedule_diverged(program.as_deref(), tid, error);
    }
}
