//! `ditto run`: one program in a process VM, its outcome turned into ditto's exit status.

use std::process::ExitCode;

use clap::Args;

use super::program::{vm_config, ProgramArgs};
use super::{EXIT_BAD_INPUT, EXIT_HOST_ERROR};

/// `ditto run`.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    program: ProgramArgs,
}

/// Whether `ditto run` runs ditto's threads without their seccomp filters.
pub fn no_seccomp(a: &RunArgs) -> bool {
    a.program.no_seccomp
}

/// Runs `ditto run`: the program, its outcome turned into ditto's exit status.
pub fn main(a: &RunArgs) -> ExitCode {
    let p = &a.program;
    let selection = match vm_config(p) {
        Ok(c) => c,
        Err((code, e)) => {
            eprintln!("ditto: {e}");
            return ExitCode::from(code);
        }
    };
    match vmm::run(&selection.config) {
        Ok(out) => {
            if let devices::exit::ExitReason::Signaled { report, .. } = &out.exit {
                if !report.is_empty() {
                    eprintln!("ditto: {report}");
                }
            }
            if p.stats {
                eprintln!(
                    "ditto: stats: status={} syscalls={} doorbell_syscalls={} exits={} det_ops={} det_turns={} det_waits={} det_posted={} det_ticked={} threads={} vcpus_created={} entry={:?} trap_us={:.1} setup={:.3}ms wall={:.3}ms shutdown={:.3}ms",
                    out.exit.status(),
                    out.syscalls,
                    out.doorbell_syscalls,
                    out.exits,
                    out.det_ops,
                    out.det_turns,
                    out.det_waits,
                    out.det_posted,
                    out.det_ticked,
                    out.threads,
                    out.vcpus_created,
                    out.entry,
                    out.trap_round_trip.map_or(0.0, |d| d.as_secs_f64() * 1e6),
                    out.setup.as_secs_f64() * 1e3,
                    out.wall.as_secs_f64() * 1e3,
                    out.shutdown.as_secs_f64() * 1e3
                );
            }
            if out.stuck_threads > 0 {
                eprintln!(
                    "ditto: warning: {} vCPU threads did not stop",
                    out.stuck_threads
                );
            }
            ExitCode::from(out.exit.status() as u8)
        }
        Err(e) => {
            eprintln!("ditto: {e}");
            ExitCode::from(if e.is_bad_input() {
                EXIT_BAD_INPUT
            } else {
                EXIT_HOST_ERROR
            })
        }
    }
}
