//! `ditto pair`: runs a program as two replicas, primary and secondary, each a ditto VMM
//! process pinned to its own cores, and reports whether they diverged (DESIGN.md §5-6).
//!
//! This module holds the flags, checks them, resolves the program and prepares the run's
//! directory; [`replica::supervisor`] then starts and watches the two `ditto __replica` processes
//! ([`crate::cmd::replica`]) and writes the report. Without a program, [`demo`] runs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use replica::report::{Died, Outcome, Report};
use replica::role::Mode;

use super::image;
use super::program::{parse_bytes, parse_cores, vm_config, CoreList, ProgramArgs};
use super::{EXIT_BAD_INPUT, EXIT_HOST_ERROR};

mod demo;
mod fault;

/// Exit status of `ditto pair` when the replicas diverged.
pub const EXIT_DIVERGED: u8 = 3;
/// Exit status when a replica died (and the other did not carry on) or the channel failed.
pub const EXIT_REPLICA_FAILED: u8 = 4;

/// How the replicas agree on the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Both compute the Kendo schedule; re-entry times cross the channel.
    Det,
    /// The secondary follows the primary's logged turns.
    Follow,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Det => Mode::Det,
            ModeArg::Follow => Mode::Follow,
        }
    }
}

/// Channel and mode options, shared by the supervisor and the replicas.
#[derive(Args, Clone, Debug)]
pub struct PairOptions {
    /// How the replicas agree on the thread schedule.
    #[arg(long, value_enum, default_value = "det")]
    pub(crate) mode: ModeArg,
    /// The channel's ring size (K, M or G suffix).
    #[arg(long, default_value = "64M", value_parser = parse_ring)]
    pub(crate) channel_size: u64,
    /// Backpressure: the primary waits while this many records are unconsumed.
    #[arg(long, default_value_t = 65536)]
    pub(crate) max_lag_records: u64,
    /// Backpressure: the primary waits while this many bytes are unconsumed.
    #[arg(long, default_value = "32M", value_parser = parse_ring)]
    pub(crate) max_lag_bytes: u64,
    /// Keep each replica's recent events per thread (syscalls with their treatment and
    /// result, turns, signals) and write them to OUT/trace-{primary,secondary}.json for
    /// `ditto compare --trace OUT`.
    #[arg(long)]
    pub(crate) trace: bool,
    /// With --trace: events kept per thread (the last ones).
    #[arg(long, default_value_t = replica::trace::DEFAULT_CAPACITY as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) trace_events: u64,
    /// A host program (not an image) gets an empty /tmp of its own in each replica,
    /// OUT/primary-state/tmp and OUT/secondary-state/tmp, and a read-only root in both;
    /// without it the primary writes the host's files and the secondary none, so a
    /// program that makes temporary files diverges. The host's /tmp is hidden then.
    #[arg(long)]
    pub(crate) private_tmp: bool,
    /// Keep today's behaviour when the primary dies: the pair ends with a replica failure.
    /// By default the secondary replays what the primary logged and then takes over its
    /// connections and files (docs/pair.md, Failover).
    #[arg(long)]
    pub(crate) no_failover: bool,
}

/// A channel size or lag bound ([`parse_bytes`]), between 64K and 4G.
fn parse_ring(s: &str) -> Result<u64, String> {
    let v = parse_bytes(s)?;
    if !(64 << 10..=4 << 30).contains(&v) {
        return Err(format!("size '{}' must be between 64K and 4G", s.trim()));
    }
    Ok(v)
}

/// `ditto pair`.
#[derive(Args, Clone)]
pub struct PairArgs {
    #[command(flatten)]
    options: PairOptions,
    /// Host cores for the primary's vCPUs.
    #[arg(long, value_parser = parse_cores)]
    primary_cores: Option<CoreList>,
    /// Host cores for the secondary's vCPUs (disjoint from the primary's).
    #[arg(long, value_parser = parse_cores)]
    secondary_cores: Option<CoreList>,
    /// Where to write the JSON report (default: OUT/report.json).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Directory for the run's files: the report, the secondary's stdout/stderr, each
    /// replica's image state (default: a new directory under the system temp dir).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the status line even when stderr is not a terminal (once a second).
    #[arg(long)]
    status: bool,
    /// Do not print the readable summary at the end.
    #[arg(long)]
    quiet: bool,
    /// Seconds the secondary may make no progress after the primary ended before it is
    /// stopped; the report then says what each of its threads was waiting for.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    stall_timeout: u64,
    /// Serve the pair's counters as Prometheus text at http://ADDR/metrics while it runs
    /// (records, lag, turns, outputs compared, exits and syscalls by class, replicas up).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Fault injection: SIGKILL the primary's VMM process this long after the replicas
    /// start (300ms, 1.5s, 2m), or at a random time in a range (1s..3s). The time chosen is
    /// printed and in the report.
    #[arg(long, value_name = "DURATION")]
    kill_primary_after: Option<String>,
    /// Fault injection: SIGKILL the secondary's VMM process, as --kill-primary-after.
    #[arg(long, value_name = "DURATION")]
    kill_secondary_after: Option<String>,
    #[command(flatten)]
    program: ProgramArgs,
}

/// Host cores online, at least 1.
fn online_cores() -> usize {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).max(1) as usize
}

/// The argument list that selects the same program in a replica.
fn program_flags(p: &ProgramArgs, cores: &[usize], state: Option<&Path>) -> Vec<String> {
    let mut v = Vec::new();
    match &p.image {
        Some(i) => {
            v.push("--image".into());
            v.push(i.clone());
            if let Some(s) = state {
                v.push("--state".into());
                v.push(s.display().to_string());
            }
        }
        None => {
            v.push("--root".into());
            v.push(p.root.display().to_string());
        }
    }
    v.push("--memory".into());
    v.push(p.memory.to_string());
    v.push("--seed".into());
    v.push(p.seed.to_string());
    if p.no_seccomp {
        v.push("--no-seccomp".into());
    }
    for set in &p.env {
        v.push(format!("--env={set}"));
    }
    v.push("--cores".into());
    v.push(
        cores
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    v
}

/// The `__replica` flags that carry the pair's channel and mode options.
fn option_flags(o: &PairOptions) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--mode".into(),
        match o.mode {
            ModeArg::Det => "det".into(),
            ModeArg::Follow => "follow".into(),
        },
        "--channel-size".into(),
        o.channel_size.to_string(),
        "--max-lag-records".into(),
        o.max_lag_records.to_string(),
        "--max-lag-bytes".into(),
        o.max_lag_bytes.to_string(),
        "--trace-events".into(),
        o.trace_events.to_string(),
    ];
    if o.trace {
        v.push("--trace".into());
    }
    if o.private_tmp {
        v.push("--private-tmp".into());
    }
    if o.no_failover {
        v.push("--no-failover".into());
    }
    v
}

/// The program as the report names it: `--image NAME` and the arguments.
fn program_words(p: &ProgramArgs) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    if let Some(i) = &p.image {
        v.push(format!("--image {i}"));
    }
    v.extend(p.command.iter().map(|c| c.to_string_lossy().into_owned()));
    v
}

/// Whether `ditto pair` runs without seccomp filters (its replicas too).
pub fn no_seccomp(a: &PairArgs) -> bool {
    a.program.no_seccomp
}

/// Runs `ditto pair`. Without a program or image: the demo, a replicated redis driven by a
/// short built-in load, then stopped.
pub fn main(a: &PairArgs) -> ExitCode {
    if a.program.image.is_none() && a.program.command.is_empty() {
        return demo::demo(a);
    }
    match supervise(a) {
        Ok(code) => ExitCode::from(code),
        Err((code, msg)) => {
            eprintln!("ditto: {msg}");
            ExitCode::from(code)
        }
    }
}

/// Checks the flags, resolves the program and prepares the run's directory, then hands the
/// pair to the [`replica::supervisor`]; the exit status follows its report.
fn supervise(a: &PairArgs) -> Result<u8, (u8, String)> {
    let p = &a.program;
    let kill = fault::kill_from_flags(
        a.kill_primary_after.as_deref(),
        a.kill_secondary_after.as_deref(),
    )
    .map_err(|e| (EXIT_BAD_INPUT, e))?;
    if p.cores.is_some() {
        return Err((
            EXIT_BAD_INPUT,
            "ditto pair takes --primary-cores and --secondary-cores, not --cores".into(),
        ));
    }
    let n = online_cores();
    let primary_cores = a
        .primary_cores
        .clone()
        .map(|c| c.0)
        .unwrap_or_else(|| vec![0]);
    let secondary_cores = a
        .secondary_cores
        .clone()
        .map(|c| c.0)
        .unwrap_or_else(|| vec![if n > 1 { 1 } else { 0 }]);
    if n > 1 && primary_cores.iter().any(|c| secondary_cores.contains(c)) {
        return Err((
            EXIT_BAD_INPUT,
            format!(
                "--primary-cores {primary_cores:?} and --secondary-cores {secondary_cores:?} overlap; replicas run on disjoint cores"
            ),
        ));
    }
    // Bound before anything starts: an address in use is the user's one-line error.
    let metrics = a
        .metrics
        .map(|addr| {
            std::net::TcpListener::bind(addr).map_err(|e| {
                (
                    EXIT_BAD_INPUT,
                    format!("--metrics: cannot listen on {addr}: {e}"),
                )
            })
        })
        .transpose()?;
    // Resolve (and build) the program once here, so bad input fails before any replica.
    drop(vm_config(p)?);
    let out = match &a.out {
        Some(d) => d.clone(),
        None => tempfile::Builder::new()
            .prefix("ditto-pair-")
            .tempdir()
            .map_err(|e| {
                (
                    EXIT_HOST_ERROR,
                    format!("cannot create a run directory: {e}"),
                )
            })?
            .keep(),
    };
    std::fs::create_dir_all(&out).map_err(|e| {
        (
            EXIT_HOST_ERROR,
            format!("cannot create {}: {e}", out.display()),
        )
    })?;
    // A given --state directory seeds both replicas' own state directories (a config
    // with the port to use, say); each replica then writes only to its own copy.
    if let Some(seed) = &p.state {
        for role in ["primary-state", "secondary-state"] {
            image::copy_tree(seed, &out.join(role)).map_err(|e| {
                (
                    EXIT_HOST_ERROR,
                    format!("cannot seed {role} from {}: {e}", seed.display()),
                )
            })?;
        }
    }
    let report_path = a.report.clone().unwrap_or_else(|| out.join("report.json"));
    let mut primary_flags = option_flags(&a.options);
    primary_flags.extend(["--out".into(), out.display().to_string()]);
    let mut secondary_flags = primary_flags.clone();
    primary_flags.extend(program_flags(
        p,
        &primary_cores,
        Some(&out.join("primary-state")),
    ));
    secondary_flags.extend(program_flags(
        p,
        &secondary_cores,
        Some(&out.join("secondary-state")),
    ));
    let plan = replica::supervisor::Plan {
        mode: a.options.mode.into(),
        primary_cores,
        secondary_cores,
        primary_flags,
        secondary_flags,
        command: p.command.clone(),
        program_words: program_words(p),
        out,
        report_path,
        status: a.status,
        quiet: a.quiet,
        stall_timeout: a.stall_timeout,
        metrics,
        restrict: || devices::seccomp::apply_or_exit(devices::seccomp::Kind::Supervisor),
        failover: !a.options.no_failover,
        kill,
    };
    let report = replica::supervisor::supervise(plan).map_err(|e| (EXIT_HOST_ERROR, e))?;
    if p.stats {
        let c = &report.counters;
        eprintln!(
            "ditto: stats: outcome={} primary_turns={} secondary_turns={} primary_exits={} secondary_exits={} records={} compared_outputs={} wall={:.3}ms",
            report.outcome,
            c.primary_turns,
            c.secondary_turns,
            c.primary_exits,
            c.secondary_exits,
            c.records,
            c.compared_outputs,
            report.wall_seconds * 1e3
        );
    }
    Ok(exit_status(&report))
}

/// `ditto pair`'s exit status for a finished run: the program's own when the replicas
/// were identical; the survivor's when one died and the other carried on.
fn exit_status(report: &Report) -> u8 {
    let status = |s: Option<i32>| s.unwrap_or(1).clamp(0, 255) as u8;
    match report.outcome {
        Outcome::Diverged => EXIT_DIVERGED,
        Outcome::ChannelError | Outcome::ReplicaFailed => EXIT_REPLICA_FAILED,
        Outcome::Identical => status(report.primary.exit_status),
        Outcome::FailedOver => match report.failover.as_ref().map(|f| f.died) {
            Some(Died::Primary) => status(report.secondary.exit_status),
            Some(Died::Secondary) => status(report.primary.exit_status),
            None => EXIT_REPLICA_FAILED,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replica::report::{Failover, ReplicaSummary};

    #[test]
    fn a_failed_over_pair_exits_with_the_survivors_status() {
        let mut r = Report::new("det", vec!["x".into()]);
        r.primary = ReplicaSummary::killed(vec![0], 9);
        r.secondary = ReplicaSummary::exited(vec![1], 3);
        r.outcome = Outcome::FailedOver;
        r.failover = Some(Failover::death(Died::Primary, "killed by SIGKILL", 1.0));
        assert_eq!(exit_status(&r), 3);
        r.primary = ReplicaSummary::exited(vec![0], 0);
        r.secondary = ReplicaSummary::killed(vec![1], 9);
        r.failover = Some(Failover::death(Died::Secondary, "killed by SIGKILL", 1.0));
        assert_eq!(exit_status(&r), 0);
        r.outcome = Outcome::ReplicaFailed;
        assert_eq!(exit_status(&r), EXIT_REPLICA_FAILED);
    }
}
