//! `ditto __replica` (hidden): one replica of a pair, started by the supervisor
//! ([`super::pair::supervisor`]). It connects the channel over the socket the supervisor
//! left at [`PEER_FD`], attaches the status page at [`STATUS_FD`], and runs the VM with
//! replication on; the secondary then writes its findings for the report.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use devices::replication::Replication;
use replica::findings::Mismatch;
use replica::report::{Divergence, DivergenceKind, Event, EventKind, Value};
use replica::role::Role;
use replica::setup::ReplicaSetup;
use replica::status::StatusPage;
use replica::ChannelConfig;

use super::pair::PairOptions;
use super::program::{vm_config, ProgramArgs};
use super::{EXIT_BAD_INPUT, EXIT_HOST_ERROR};
use replica::supervisor::{empty_report, PEER_FD, STATUS_FD};

/// `ditto __replica` (internal): one replica of a pair.
#[derive(Args)]
pub struct ReplicaArgs {
    /// primary or secondary.
    #[arg(long)]
    role: String,
    #[command(flatten)]
    options: PairOptions,
    /// The run's directory.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    program: ProgramArgs,
}

/// Whether a replica runs without seccomp filters.
pub fn no_seccomp(a: &ReplicaArgs) -> bool {
    a.program.no_seccomp
}

/// The report's view of a mismatch.
fn divergence_of(m: &Mismatch) -> Divergence {
    let kind = match m.kind {
        "output" => DivergenceKind::Output,
        "exit" => DivergenceKind::Exit,
        "missing_event" => DivergenceKind::MissingEvent,
        "extra_event" => DivergenceKind::ExtraEvent,
        "signal" => DivergenceKind::Signal,
        "schedule" => DivergenceKind::Schedule,
        _ => DivergenceKind::Syscall,
    };
    let mut primary = Value::of(&m.primary, m.first_differing_byte);
    if let Some(h) = m.primary_hash {
        primary.hash = format!("{h:016x}");
    }
    Divergence {
        kind,
        thread: m.thread,
        syscall_seq: m.syscall_seq,
        syscall: m.syscall.clone(),
        primary_syscall: m.primary_syscall.clone(),
        fd: m.fd,
        logical_time: m.logical_time,
        turn: m.turn,
        primary,
        secondary: Value::of(&m.secondary, m.first_differing_byte),
        first_differing_byte: m.first_differing_byte,
        detail: m.detail.clone(),
    }
}

/// Runs `ditto __replica`: one replica of a pair.
pub fn main(a: &ReplicaArgs) -> ExitCode {
    let role = match a.role.as_str() {
        "primary" => Role::Primary,
        "secondary" => Role::Secondary,
        other => {
            eprintln!("ditto: bad replica role '{other}'");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let mut selection = match vm_config(&a.program) {
        Ok(s) => s,
        Err((code, e)) => {
            eprintln!("ditto: {e}");
            return ExitCode::from(code);
        }
    };
    // SAFETY: the supervisor put these descriptors here for us; nothing else owns them.
    let (peer, status_fd) = unsafe {
        (
            OwnedFd::from_raw_fd(PEER_FD),
            OwnedFd::from_raw_fd(STATUS_FD),
        )
    };
    let status = match StatusPage::attach(status_fd) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ditto: {} replica: status page: {e}", a.role);
            return ExitCode::from(EXIT_HOST_ERROR);
        }
    };
    let mut channel = ChannelConfig::new(a.options.channel_size as usize);
    channel.max_lag_records = a.options.max_lag_records;
    channel.max_lag_bytes = a.options.max_lag_bytes;
    channel.peer_timeout = None;
    let rep = match Replication::connect(ReplicaSetup {
        role,
        mode: a.options.mode.into(),
        peer,
        channel,
        status,
        output_dir: a.out.clone(),
        failover: !a.options.no_failover,
    }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ditto: {} replica: {e}", a.role);
            return ExitCode::from(EXIT_HOST_ERROR);
        }
    };
    let c = &mut selection.config;
    if a.options.private_tmp && a.program.image.is_none() {
        // `--private-tmp`: a private, empty /tmp in each replica (and a read-only root
        // around it, in both): the secondary may not write the primary's files, and a
        // program that makes a temporary file (the fuzzer's work directory) must find the
        // same filesystem in both replicas, not a writable one in the primary only.
        let tmp = a.out.join(format!("{}-state", a.role)).join("tmp");
        if let Err(e) = std::fs::create_dir_all(&tmp) {
            eprintln!(
                "ditto: {} replica: cannot create {}: {e}",
                a.role,
                tmp.display()
            );
            return ExitCode::from(EXIT_HOST_ERROR);
        }
        c.writable.push(("/tmp".into(), tmp));
    }
    c.det = true;
    c.det_preload = Some(guest_images::progs::libditto());
    c.replication = Some(rep.clone());
    if a.options.trace {
        rep.enable_trace(a.options.trace_events as usize);
    }
    if role == Role::Secondary {
        // The secondary sees the host's files but changes none: its writes would land on
        // the primary's files. Only its own image state directory is writable, until it
        // takes over from a dead primary: then it writes what the primary wrote.
        let primary_root_read_only = !c.writable.is_empty() || c.read_only_root;
        let (rw, ro): (Vec<_>, Vec<_>) = std::mem::take(&mut c.writable)
            .into_iter()
            .partition(|(_, h)| h.starts_with(&a.out));
        c.writable = rw;
        c.writable_when_live = ro;
        c.read_only_root = true;
        c.root_writable_when_live = !primary_root_read_only;
    }
    let result = vmm::run(c);
    let code = match &result {
        Ok(out) => {
            if let devices::exit::ExitReason::Signaled { report, .. } = &out.exit {
                if !report.is_empty() {
                    eprintln!("ditto: {} replica: {report}", a.role);
                }
            }
            out.exit.status() as u8
        }
        Err(e) => {
            eprintln!("ditto: {} replica: {e}", a.role);
            if e.is_bad_input() {
                EXIT_BAD_INPUT
            } else {
                EXIT_HOST_ERROR
            }
        }
    };
    if let Some(trace) = rep.trace() {
        if let Err(e) = trace.save(&replica::trace::trace_path(&a.out, role)) {
            eprintln!("ditto: {} replica: {e}", a.role);
        }
    }
    // The VMM itself failed (not the program): never part of an `identical` pair, even when
    // both replicas' VMMs fail the same way.
    let vmm_error = match &result {
        Ok(out) => match &out.exit {
            devices::exit::ExitReason::Signaled { report, .. }
                if report.starts_with(vmm::VMM_ERROR_PREFIX) =>
            {
                Some(report.clone())
            }
            _ => None,
        },
        Err(e) => Some(e.to_string()),
    };
    match role {
        Role::Primary => {
            if let Some(e) = rep.primary_error().or(vmm_error) {
                let _ = std::fs::write(a.out.join("primary-error.txt"), e);
            }
        }
        Role::Secondary => {
            let f = rep.findings();
            let mut report = empty_report();
            report.secondary.error = None;
            report.first_divergence = f.mismatch.as_ref().map(divergence_of);
            report.last_common = f
                .history
                .iter()
                .map(|e| Event {
                    thread: e.thread,
                    syscall_seq: e.syscall_seq,
                    syscall: e.syscall.clone(),
                    kind: match e.kind {
                        "compared" => EventKind::Compared,
                        "exit" => EventKind::Exit,
                        _ => EventKind::Recorded,
                    },
                    result: e.result,
                    bytes: e.bytes,
                })
                .collect();
            report.channel_error = f.channel_error.clone();
            report.secondary.exit = Some(match (&result, &f.stopped) {
                (_, Some(why)) => format!("stopped: {why}"),
                (Ok(out), None) => match &out.exit {
                    devices::exit::ExitReason::Exited(s) => format!("exited {s}"),
                    devices::exit::ExitReason::Signaled { signal, .. } => {
                        format!("killed by signal {signal}")
                    }
                },
                (Err(e), None) => format!("failed: {e}"),
            });
            report.secondary.error = vmm_error;
            let _ = report.save(a.out.join("secondary-part.json"));
        }
    }
    ExitCode::from(code)
}
