//! The `ditto` command line: argument parsing and wiring only.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod bench;
mod bench_det;
mod bench_pair;
mod bench_servers;
mod compare_cmd;
mod image_cmd;
mod pair;

/// Exit status for bad usage or bad input (a bad flag, a missing or malformed
/// program or image).
const EXIT_BAD_INPUT: u8 = 2;
/// Exit status when the host cannot run the program (no KVM, out of resources).
const EXIT_HOST_ERROR: u8 = 1;

#[derive(Parser)]
#[command(
    name = "ditto",
    version,
    about = "Run a multithreaded Linux program in a KVM process VM whose kernel is ditto",
    after_help = "Exit status: the program's own status; 128+N when it was killed by signal N \
(a fault in the program prints a one-line report); 2 for bad usage or input (bad flag, \
missing or malformed program or image); 1 when the host cannot run VMs."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one program in a process VM.
    Run(RunArgs),
    /// Measure ditto against native runs of the same programs.
    Bench(bench::BenchArgs),
    /// Build, list and extend images made from Debian packages.
    Image(image_cmd::ImageArgs),
    /// Run a program as two replicas (primary and secondary) on disjoint cores, keep them
    /// in lockstep and report any divergence (docs/pair.md).
    Pair(pair::PairArgs),
    /// One replica of a pair (started by `ditto pair`).
    #[command(name = "__replica", hide = true)]
    Replica(pair::ReplicaArgs),
    /// Summarise a `ditto pair` report, or line up two reports side by side.
    #[command(after_help = compare_cmd::AFTER_HELP)]
    Compare(compare_cmd::CompareArgs),
}

/// How a program is selected and run; shared by every command that runs one.
#[derive(Args, Clone, Debug)]
pub struct ProgramArgs {
    /// Directory that the program's paths resolve in (it cannot see outside it).
    #[arg(long, default_value = "/", conflicts_with = "image")]
    root: PathBuf,
    /// Run an image's entry program (built from Debian packages on first use); the
    /// arguments after `--` are appended to the image's own. The image is read-only;
    /// its writable directories live in the state directory, and the host's working
    /// directory is visible (read-write) at its own path.
    #[arg(long)]
    image: Option<String>,
    /// The run's own directory for an image's writable paths (default: a temporary
    /// directory removed when the program ends).
    #[arg(long, requires = "image")]
    state: Option<PathBuf>,
    /// Guest memory size (K, M or G suffix; rounded up to 2 MiB). KVM's set-up cost
    /// grows with it (about 0.7 ms per GiB on kvm_pvm), so the default is modest.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    memory: u64,
    /// Host cores to pin every vCPU thread to, e.g. `0`, `0,1` or `0-1`.
    #[arg(long, value_parser = parse_cores)]
    cores: Option<CoreList>,
    /// Seed for the program's AT_RANDOM bytes.
    #[arg(long, default_value_t = 0x0d1770)]
    seed: u64,
    /// Print counters (syscalls, vCPUs, syscall entry path, timings) on exit.
    #[arg(long)]
    stats: bool,
    /// Deterministic execution (docs/det.md): serve the det hypercalls of ditto.h, order
    /// futexes, clone/exit and shared-object syscalls by logical time, and preload libditto
    /// into dynamic programs.
    #[arg(long)]
    det: bool,
    /// Run ditto's own threads without their seccomp filters (for debugging ditto;
    /// by default each kind of VMM thread may make only the host syscalls it needs).
    #[arg(long)]
    no_seccomp: bool,
    /// The program and its arguments. Without one, ditto runs its built-in demo: the
    /// project's pthread test program (threads, mutexes, condvars, TLS).
    #[arg(last = true, value_name = "PROGRAM ARGS")]
    command: Vec<std::ffi::OsString>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    program: ProgramArgs,
}

/// Parses `4G`, `512M`, `65536K` or a byte count.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size '{s}': expected e.g. 512M or 4G"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// Parses a guest memory size ([`parse_bytes`]), rounded up to 2 MiB.
fn parse_size(s: &str) -> Result<u64, String> {
    let bytes = parse_bytes(s)?;
    let two_mib = 2u64 << 20;
    let rounded = bytes.div_ceil(two_mib) * two_mib;
    if !(16 << 20..=64 << 30).contains(&rounded) {
        return Err(format!("size '{s}' must be between 16M and 64G"));
    }
    Ok(rounded)
}

/// A list of host cores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreList(pub Vec<usize>);

/// Parses a core list like `0,2-3`, checking each core exists on this host.
fn parse_cores(s: &str) -> Result<CoreList, String> {
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    let mut cores = Vec::new();
    for part in s.split(',') {
        let bad = || format!("bad core list '{s}': expected e.g. 0 or 0,1 or 0-1");
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (
                a.trim().parse::<usize>().map_err(|_| bad())?,
                b.trim().parse::<usize>().map_err(|_| bad())?,
            ),
            None => {
                let c = part.trim().parse::<usize>().map_err(|_| bad())?;
                (c, c)
            }
        };
        if lo > hi {
            return Err(bad());
        }
        for c in lo..=hi {
            if c >= online {
                return Err(format!(
                    "core {c} does not exist (this host has cores 0-{})",
                    online - 1
                ));
            }
            if !cores.contains(&c) {
                cores.push(c);
            }
        }
    }
    Ok(CoreList(cores))
}

/// The program `ditto run` runs when none is given.
const DEFAULT_PROGRAM: &str = "pthread_test";

/// A resolved program selection: the VM configuration plus whatever must live as
/// long as the run (a temporary state directory).
pub struct Selection {
    /// The VM configuration.
    pub config: vmm::VmConfig,
    /// Removed when dropped.
    _state: Option<tempfile::TempDir>,
}

fn env_of_host() -> Vec<Vec<u8>> {
    std::env::vars_os()
        .map(|(k, v)| {
            let mut e = k.as_bytes().to_vec();
            e.push(b'=');
            e.extend_from_slice(v.as_bytes());
            e
        })
        .collect()
}

/// Builds the VM configuration for `--image NAME [-- ARGS]`: the image's entry, its
/// arguments and then the user's, its environment, a read-only root, and its writable
/// directories in the run's state directory.
fn image_selection(p: &ProgramArgs, name: &str) -> Result<Selection, (u8, String)> {
    let img =
        image_cmd::open_for_run(name).map_err(|e| (image_cmd::exit_code(&e), e.to_string()))?;
    let m = &img.manifest;
    let mut args: Vec<Vec<u8>> = vec![m.entry.as_bytes().to_vec()];
    args.extend(m.args.iter().map(|a| a.as_bytes().to_vec()));
    args.extend(p.command.iter().map(|a| a.as_bytes().to_vec()));
    let mut env: Vec<Vec<u8>> = m
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}").into_bytes())
        .collect();
    if !m.env.contains_key("PATH") {
        env.push(b"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_vec());
    }
    let (state_dir, temp) = match &p.state {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix(&format!("ditto-{name}-"))
                .tempdir()
                .map_err(|e| {
                    (
                        EXIT_HOST_ERROR,
                        format!("cannot create a state directory: {e}"),
                    )
                })?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let mut writable = Vec::new();
    for w in &m.writable {
        let rel = w.trim_start_matches('/');
        let host = state_dir.join(rel);
        image_cmd::copy_tree(&img.root.join(rel), &host).map_err(|e| {
            (
                EXIT_HOST_ERROR,
                format!("cannot prepare {}: {e}", host.display()),
            )
        })?;
        writable.push((w.clone(), host));
    }
    // The host's working directory appears at its own path (like a volume), so
    // `ditto run --image pbzip2 -- -c FILE` finds FILE and can write next to it.
    let mut cwd = "/".to_string();
    if let Ok(here) = std::env::current_dir() {
        if let Some(h) = here.to_str().filter(|h| *h != "/") {
            writable.push((h.to_string(), here.clone()));
            cwd = h.to_string();
        }
    }
    Ok(Selection {
        config: vmm::VmConfig {
            root: img.root.clone(),
            program: m.entry.as_bytes().to_vec(),
            args,
            env,
            memory: p.memory,
            cores: p.cores.as_ref().map(|c| c.0.clone()),
            seed: p.seed,
            writable,
            cwd: Some(cwd),
            det: p.det,
            det_preload: p.det.then(guest_images::progs::libditto),
            read_only: Vec::new(),
            read_only_root: false,
            replication: None,
        },
        _state: temp,
    })
}

/// Builds the VM configuration for a program selection.
pub fn vm_config(p: &ProgramArgs) -> Result<Selection, (u8, String)> {
    if let Some(name) = &p.image {
        return image_selection(p, name);
    }
    let mut args: Vec<Vec<u8>> = p.command.iter().map(|a| a.as_bytes().to_vec()).collect();
    if args.is_empty() {
        let demo = guest_images::progs::path(DEFAULT_PROGRAM).ok_or_else(|| {
            (
                EXIT_BAD_INPUT,
                format!("no program given and the built-in {DEFAULT_PROGRAM} is missing"),
            )
        })?;
        eprintln!(
            "ditto: no program given; running the built-in demo {}",
            demo.display()
        );
        args.push(demo.as_os_str().as_bytes().to_vec());
    }
    Ok(Selection {
        config: vmm::VmConfig {
            root: p.root.clone(),
            program: args[0].clone(),
            args,
            env: env_of_host(),
            memory: p.memory,
            cores: p.cores.as_ref().map(|c| c.0.clone()),
            seed: p.seed,
            writable: Vec::new(),
            cwd: None,
            det: p.det,
            det_preload: p.det.then(guest_images::progs::libditto),
            read_only: Vec::new(),
            read_only_root: false,
            replication: None,
        },
        _state: None,
    })
}

/// Runs a program and turns the outcome into ditto's exit status.
fn run(p: &ProgramArgs) -> ExitCode {
    let selection = match vm_config(p) {
        Ok(c) => c,
        Err((code, e)) => {
            eprintln!("ditto: {e}");
            return ExitCode::from(code);
        }
    };
    match vmm::run(&selection.config) {
        Ok(out) => {
            if let devices::process::ExitReason::Signaled { report, .. } = &out.exit {
                if !report.is_empty() {
                    eprintln!("ditto: {report}");
                }
            }
            if p.stats {
                eprintln!(
                    "ditto: stats: status={} syscalls={} doorbell_syscalls={} exits={} det_ops={} det_posted={} det_ticked={} threads={} vcpus_created={} entry={:?} setup={:.3}ms wall={:.3}ms shutdown={:.3}ms",
                    out.exit.status(),
                    out.syscalls,
                    out.doorbell_syscalls,
                    out.exits,
                    out.det_ops,
                    out.det_posted,
                    out.det_ticked,
                    out.threads,
                    out.vcpus_created,
                    out.entry,
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DITTO_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let no_seccomp = match &cli.command {
        Command::Run(r) => r.program.no_seccomp,
        Command::Pair(p) => pair::no_seccomp(p),
        Command::Replica(r) => pair::replica_no_seccomp(r),
        _ => false,
    };
    if no_seccomp {
        devices::seccomp::disable();
    } else {
        // Armed before any thread exists, so every filtered thread reports.
        devices::seccomp::install_handler();
    }
    match cli.command {
        Command::Run(r) => run(&r.program),
        Command::Bench(b) => bench::main(&b),
        Command::Image(i) => image_cmd::main(&i),
        Command::Pair(p) => pair::main(&p),
        Command::Replica(r) => pair::replica_main(&r),
        Command::Compare(c) => compare_cmd::main(&c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("17M").unwrap(), 18 << 20);
        assert!(parse_size("1M").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn cores() {
        assert_eq!(parse_cores("0").unwrap(), CoreList(vec![0]));
        assert!(parse_cores("0-").is_err());
        assert!(parse_cores("100000").is_err());
        assert!(parse_cores("1-0").is_err());
    }
}
