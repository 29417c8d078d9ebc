//! The report's `failover` object ([`Failover`]): which replica died during the run, how and
//! when, whether the death was injected (`ditto pair --kill-primary-after`), and what the
//! survivor did about it. The fields are defined in the module documentation of
//! [`crate::report`].

use serde::{Deserialize, Serialize, Serializer};
use std::fmt::Write as _;

use super::text::thousands;
use crate::findings::Takeover;

/// Which replica died.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Died {
    /// The primary died; the secondary drains its log and goes live (failover on).
    Primary,
    /// The secondary died; the primary serves on, unreplicated.
    Secondary,
}

impl Died {
    /// `"primary"` or `"secondary"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Died::Primary => "primary",
            Died::Secondary => "secondary",
        }
    }

    /// The other replica: the one that survived.
    pub fn survivor(self) -> &'static str {
        match self {
            Died::Primary => "secondary",
            Died::Secondary => "primary",
        }
    }
}

/// A replica died before the run's end. The takeover fields are `None` when no replica took
/// over: the secondary died (the primary never stopped serving), or the primary died and the
/// secondary did not go live (`--no-failover`, or it stopped before).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failover {
    /// Which replica died.
    pub died: Died,
    /// How, in words: `"killed by SIGKILL"`, `"exited 3"`, `"VMM error: ..."`.
    pub how: String,
    /// When its process was seen gone, in seconds since the replicas started.
    #[serde(serialize_with = "finite_or_zero")]
    pub at_seconds: f64,
    /// The time `--kill-primary-after` / `--kill-secondary-after` chose, in seconds since the
    /// replicas started, when this death was that kill; `None` when it was not injected.
    #[serde(default, serialize_with = "finite_or_null")]
    pub kill_after_seconds: Option<f64>,
    /// How the survivor noticed the death, as the secondary says (`None` when it did not go
    /// live).
    #[serde(default)]
    pub noticed: Option<String>,
    /// From the death being noticed to the survivor serving live, in milliseconds.
    #[serde(default, serialize_with = "finite_or_null")]
    pub takeover_ms: Option<f64>,
    /// Records the primary had logged that the secondary had not yet consumed when it
    /// noticed; it replayed them all before going live.
    #[serde(default)]
    pub records_drained: Option<u64>,
    /// Outside descriptors (listening sockets, connections, host files) the survivor took
    /// over.
    #[serde(default)]
    pub descriptors: Option<u64>,
    /// Of those, connected TCP sockets.
    #[serde(default)]
    pub connections: Option<u64>,
    /// Output calls the primary may have performed in part or in full when it died.
    #[serde(default)]
    pub in_doubt_outputs: Option<u64>,
    /// Bytes of the survivor's own writes skipped because the primary had already sent them.
    #[serde(default)]
    pub output_bytes_skipped: Option<u64>,
}

fn finite_or_zero<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(if v.is_finite() { *v } else { 0.0 })
}

fn finite_or_null<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(x) if x.is_finite() => s.serialize_some(x),
        _ => s.serialize_none(),
    }
}

impl Failover {
    /// A death the supervisor saw, with no takeover (yet): `how` and `at_seconds` are its.
    pub fn death(died: Died, how: impl Into<String>, at_seconds: f64) -> Failover {
        Failover {
            died,
            how: how.into(),
            at_seconds,
            kill_after_seconds: None,
            noticed: None,
            takeover_ms: None,
            records_drained: None,
            descriptors: None,
            connections: None,
            in_doubt_outputs: None,
            output_bytes_skipped: None,
        }
    }

    /// The secondary's part: it went live after the primary's death as `t` says. The
    /// supervisor fills in `how`, `at_seconds` and `kill_after_seconds`.
    pub fn taken_over(t: &Takeover) -> Failover {
        Failover {
            noticed: Some(t.noticed.clone()),
            takeover_ms: Some(t.takeover_ms),
            records_drained: Some(t.records_drained),
            descriptors: Some(t.descriptors),
            connections: Some(t.connections),
            in_doubt_outputs: Some(t.in_doubt_outputs),
            output_bytes_skipped: Some(t.output_bytes_skipped),
            ..Failover::death(Died::Primary, "", 0.0)
        }
    }

    /// Whether the survivor took over (the secondary went live).
    pub fn took_over(&self) -> bool {
        self.takeover_ms.is_some()
    }

    /// One line: `"the primary died (killed by SIGKILL, injected at 2.000 s) at 2.003 s"`.
    pub fn death_line(&self) -> String {
        let mut s = format!("the {} died ({}", self.died.as_str(), self.how);
        if let Some(k) = self.kill_after_seconds {
            let _ = write!(s, ", injected at {k:.3} s");
        }
        let _ = write!(s, ") at {:.3} s", self.at_seconds);
        s
    }

    /// One line on what the survivor did: `"the secondary took over in 12.3 ms: 40 records
    /// drained, 3 descriptors (2 connections), 1 in-doubt output, 0 output bytes skipped"`,
    /// or `"the primary served on, unreplicated"`.
    pub fn survivor_line(&self) -> String {
        match (self.died, self.takeover_ms) {
            (Died::Primary, Some(ms)) => {
                let n = |v: Option<u64>| thousands(v.unwrap_or(0));
                format!(
                    "the secondary took over in {ms:.1} ms: {} records drained, {} descriptors ({} connections), {} in-doubt outputs, {} output bytes skipped",
                    n(self.records_drained),
                    n(self.descriptors),
                    n(self.connections),
                    n(self.in_doubt_outputs),
                    n(self.output_bytes_skipped)
                )
            }
            (Died::Primary, None) => "the secondary did not take over".to_string(),
            (Died::Secondary, _) => "the primary served on, unreplicated".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_takeover_carries_the_secondarys_numbers() {
        let t = Takeover {
            noticed: "the primary is gone".into(),
            takeover_ms: 12.25,
            records_drained: 40,
            descriptors: 3,
            connections: 2,
            in_doubt_outputs: 1,
            output_bytes_skipped: 17,
        };
        let f = Failover::taken_over(&t);
        assert_eq!(f.died, Died::Primary);
        assert!(f.took_over());
        assert_eq!(f.records_drained, Some(40));
        assert_eq!(f.output_bytes_skipped, Some(17));
        assert_eq!(
            f.survivor_line(),
            "the secondary took over in 12.2 ms: 40 records drained, 3 descriptors (2 connections), 1 in-doubt outputs, 17 output bytes skipped"
        );
    }

    #[test]
    fn a_death_without_takeover_says_who_served_on() {
        let mut f = Failover::death(Died::Secondary, "killed by SIGKILL", 3.0);
        f.kill_after_seconds = Some(2.9994);
        assert!(!f.took_over());
        assert_eq!(
            f.death_line(),
            "the secondary died (killed by SIGKILL, injected at 2.999 s) at 3.000 s"
        );
        assert_eq!(f.survivor_line(), "the primary served on, unreplicated");
        let p = Failover::death(Died::Primary, "exited 3", 1.0);
        assert_eq!(p.survivor_line(), "the secondary did not take over");
    }

    #[test]
    fn non_finite_times_are_written_as_zero_or_null() {
        let mut f = Failover::death(Died::Primary, "killed by SIGKILL", f64::INFINITY);
        f.takeover_ms = Some(f64::NAN);
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["at_seconds"], 0.0);
        assert!(json["takeover_ms"].is_null());
        assert!(json["kill_after_seconds"].is_null());
        assert_eq!(json["died"], "primary");
    }
}
