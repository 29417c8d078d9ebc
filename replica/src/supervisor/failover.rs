//! Failover in the supervisor (docs/pair.md, Failover): the injected kill
//! (`--kill-primary-after`, `--kill-secondary-after`), telling a replica's death from its
//! end, and the report's `failover` object and outcome.
//!
//! A replica *died* when its VMM process was killed by a signal (SIGKILL, a crash) or its
//! VMM failed (it wrote [`vmm_error_file`]); the secondary only while the primary still
//! ran (after the primary's end a secondary that dies merely did not finish comparing, and
//! the stall stop's kill is the supervisor's own). The first death counts. With failover on,
//! a dead primary leaves the secondary running: it drains the log and goes live, and from
//! then on the forwarded signals go to it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::events::{registered, SharedPair};
use crate::report::{signal_name, Died, Failover, Report};

/// The file a replica writes in the run directory when its VMM (not its program) failed:
/// one line, the error.
pub fn vmm_error_file(role: Died) -> &'static str {
    match role {
        Died::Primary => "primary-vmm-error.txt",
        Died::Secondary => "secondary-vmm-error.txt",
    }
}

/// `--kill-primary-after` / `--kill-secondary-after`: SIGKILL to `target`'s VMM process
/// `after` the replicas start (the caller has picked it from a range if one was given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kill {
    /// The replica to kill.
    pub target: Died,
    /// When, from the replicas' start.
    pub after: Duration,
}

/// A replica's death as the supervisor saw it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Death {
    /// Which one.
    pub died: Died,
    /// How, in words: `"killed by SIGKILL"`, `"VMM error: ..."`.
    pub how: String,
    /// When it was reaped.
    pub at: Instant,
}

/// Whether `status` (just reaped) is a death of `role`, and how: killed by a signal, or its
/// VMM failed (the replica wrote [`vmm_error_file`] in `out`).
pub(super) fn death_of(role: Died, status: ExitStatus, out: &Path) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        return Some(format!("killed by {}", signal_name(sig)));
    }
    let e = std::fs::read_to_string(out.join(vmm_error_file(role))).ok()?;
    let e = e.lines().next().unwrap_or("").trim();
    Some(if e.starts_with("VMM error: ") {
        e.to_string()
    } else {
        format!("VMM error: {e}")
    })
}

/// Sends SIGKILL to one replica when its time comes: a one-shot timerfd, armed at an
/// absolute CLOCK_MONOTONIC time so that `after` counts from the replicas' start, not from
/// when the loop was set up.
pub(super) struct KillTimer {
    timer: OwnedFd,
    kill: Kill,
    pair: SharedPair,
}

impl KillTimer {
    /// Arms the timer for `start + kill.after`, `start` being CLOCK_MONOTONIC when the
    /// replicas were started.
    pub fn new(kill: Kill, start: libc::timespec, pair: SharedPair) -> io::Result<Self> {
        let flags = libc::TFD_NONBLOCK | libc::TFD_CLOEXEC;
        // SAFETY: a new timerfd; it returns a new descriptor or -1.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: timerfd_create just returned this descriptor; it is ours.
        let timer = unsafe { OwnedFd::from_raw_fd(fd) };
        let nanos = start.tv_nsec as u128 + kill.after.as_nanos();
        let at = libc::timespec {
            tv_sec: start.tv_sec + (nanos / 1_000_000_000) as libc::time_t,
            tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: at,
        };
        // SAFETY: arming our own timerfd with a valid itimerspec; no old value asked for.
        let r = unsafe {
            libc::timerfd_settime(
                timer.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(KillTimer { timer, kill, pair })
    }
}

/// CLOCK_MONOTONIC now (the clock of [`KillTimer`]).
pub(super) fn monotonic_now() -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts
}

impl MutEventSubscriber for KillTimer {
    fn init(&mut self, ops: &mut EventOps) {
        registered(
            "kill timer",
            ops.add(Events::new(&self.timer, EventSet::IN)),
        );
    }

    fn process(&mut self, _events: Events, ops: &mut EventOps) {
        let _ = ops.remove(Events::new(&self.timer, EventSet::IN));
        let mut guard = self.pair.borrow_mut();
        let pair = &mut *guard;
        let (child, ended) = match self.kill.target {
            Died::Primary => (&mut pair.primary, pair.primary_exit.is_some()),
            Died::Secondary => (&mut pair.secondary, pair.secondary_exit.is_some()),
        };
        let name = self.kill.target.as_str();
        if ended {
            eprintln!(
                "ditto: the {name} ended before its kill at {:.3} s",
                self.kill.after.as_secs_f64()
            );
            return;
        }
        let pid = child.id();
        // Unreaped (its exit is not recorded), so the pid is still this child's.
        if child.kill().is_ok() {
            eprintln!(
                "ditto: killed the {name} (pid {pid}) with SIGKILL at {:.3} s (chosen: {:.3} s)",
                pair.started.elapsed().as_secs_f64(),
                self.kill.after.as_secs_f64()
            );
            pair.killed = Some(self.kill);
        }
    }
}

/// Fills `report.failover` from the supervisor's view and the secondary's part (which
/// carries the takeover, if the secondary went live), and returns whether the run failed
/// over: a death the survivor carried on from, with failover on.
pub(super) fn fill_failover(
    report: &mut Report,
    death: Option<&Death>,
    killed: Option<Kill>,
    started: Instant,
    failover: bool,
    primary_ended: Option<(Instant, String)>,
) -> bool {
    let part = report.failover.take();
    let (died, how, at) = match (death, &part) {
        (Some(d), _) => (d.died, d.how.clone(), d.at),
        // The secondary went live, so the primary's log ended without its end record, yet
        // its process ended without a signal or VMM error: it died all the same.
        (None, Some(_)) => match primary_ended {
            Some((at, how)) => (Died::Primary, how, at),
            None => (Died::Primary, "unknown".to_string(), Instant::now()),
        },
        (None, None) => return false,
    };
    let mut f = match part {
        Some(p) if died == Died::Primary => p,
        _ => Failover::death(died, "", 0.0),
    };
    f.died = died;
    f.how = how;
    f.at_seconds = at.saturating_duration_since(started).as_secs_f64();
    f.kill_after_seconds = killed
        .filter(|k| k.target == died)
        .map(|k| k.after.as_secs_f64());
    let carried_on = match died {
        Died::Primary => {
            f.took_over()
                && report.secondary.exit_status.is_some()
                && report.secondary.error.is_none()
        }
        // The primary ran on to its own end, its VMM intact.
        Died::Secondary => {
            report.primary.exit_status.is_some()
                && report
                    .primary
                    .exit
                    .as_deref()
                    .is_some_and(|e| e.starts_with("exited "))
        }
    };
    report.failover = Some(f);
    failover && carried_on
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::findings::Takeover;
    use crate::report::ReplicaSummary;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn deaths_are_signals_or_vmm_errors() {
        let dir = tempfile::tempdir().unwrap();
        let killed = ExitStatus::from_raw(libc::SIGKILL);
        assert_eq!(
            death_of(Died::Primary, killed, dir.path()).as_deref(),
            Some("killed by SIGKILL")
        );
        let exited = ExitStatus::from_raw(3 << 8);
        assert_eq!(death_of(Died::Primary, exited, dir.path()), None);
        std::fs::write(
            dir.path().join(vmm_error_file(Died::Secondary)),
            "cannot map guest memory\n",
        )
        .unwrap();
        assert_eq!(
            death_of(Died::Secondary, exited, dir.path()).as_deref(),
            Some("VMM error: cannot map guest memory")
        );
        assert_eq!(death_of(Died::Primary, exited, dir.path()), None);
    }

    fn report(primary: ReplicaSummary, secondary: ReplicaSummary) -> Report {
        let mut r = Report::new("det", vec!["x".into()]);
        r.primary = primary;
        r.secondary = secondary;
        r
    }

    #[test]
    fn a_dead_secondary_under_a_primary_that_ran_on_is_a_failover() {
        let t0 = Instant::now();
        let death = Death {
            died: Died::Secondary,
            how: "killed by SIGKILL".into(),
            at: t0 + Duration::from_millis(2500),
        };
        let kill = Kill {
            target: Died::Secondary,
            after: Duration::from_millis(2490),
        };
        let mut r = report(
            ReplicaSummary::exited(vec![0], 0),
            ReplicaSummary::killed(vec![1], 9),
        );
        assert!(fill_failover(
            &mut r,
            Some(&death),
            Some(kill),
            t0,
            true,
            None
        ));
        let f = r.failover.clone().unwrap();
        assert_eq!(
            (f.died, f.how.as_str()),
            (Died::Secondary, "killed by SIGKILL")
        );
        assert!((f.at_seconds - 2.5).abs() < 1e-9);
        assert_eq!(f.kill_after_seconds, Some(2.49));
        assert!(!f.took_over());
        // Without failover the same death is reported, but it is no failover.
        let mut r2 = r.clone();
        r2.failover = None;
        assert!(!fill_failover(&mut r2, Some(&death), None, t0, false, None));
        assert_eq!(r2.failover.unwrap().kill_after_seconds, None);
        // A primary that then died too did not carry on.
        let mut r3 = report(
            ReplicaSummary::killed(vec![0], 9),
            ReplicaSummary::killed(vec![1], 9),
        );
        assert!(!fill_failover(&mut r3, Some(&death), None, t0, true, None));
    }

    #[test]
    fn a_dead_primary_fails_over_only_when_the_secondary_went_live() {
        let t0 = Instant::now();
        let death = Death {
            died: Died::Primary,
            how: "killed by SIGKILL".into(),
            at: t0 + Duration::from_secs(1),
        };
        let mut r = report(
            ReplicaSummary::killed(vec![0], 9),
            ReplicaSummary::exited(vec![1], 0),
        );
        // The secondary stopped instead of going live (no takeover in its part).
        assert!(!fill_failover(&mut r, Some(&death), None, t0, true, None));
        assert_eq!(r.failover.as_ref().unwrap().died, Died::Primary);
        // It went live: its part carries the takeover, the supervisor adds the rest.
        r.failover = Some(Failover::taken_over(&Takeover {
            noticed: "the primary is gone".into(),
            takeover_ms: 3.0,
            records_drained: 5,
            ..Default::default()
        }));
        let kill = Kill {
            target: Died::Primary,
            after: Duration::from_millis(990),
        };
        assert!(fill_failover(
            &mut r,
            Some(&death),
            Some(kill),
            t0,
            true,
            None
        ));
        let f = r.failover.unwrap();
        assert_eq!(f.how, "killed by SIGKILL");
        assert_eq!(f.records_drained, Some(5));
        assert_eq!(f.kill_after_seconds, Some(0.99));
    }
}
