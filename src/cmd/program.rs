//! How a program is selected and run: the flags shared by `ditto run`, `ditto pair` and
//! `__replica` ([`ProgramArgs`]), their value parsers, and the VM configuration they
//! resolve to ([`vm_config`]), for a program on the host or an image's entry.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use clap::Args;

use super::image;
use super::{EXIT_BAD_INPUT, EXIT_HOST_ERROR};

/// How a program is selected and run; shared by every command that runs one.
#[derive(Args, Clone, Debug)]
pub struct ProgramArgs {
    /// Directory that the program's paths resolve in (it cannot see outside it).
    #[arg(long, default_value = "/", conflicts_with = "image")]
    pub(crate) root: PathBuf,
    /// Run an image's entry program (built from Debian packages on first use); the
    /// arguments after `--` are appended to the image's own. The image is read-only;
    /// its writable directories live in the state directory, and the host's working
    /// directory is visible (read-write) at its own path.
    #[arg(long)]
    pub(crate) image: Option<String>,
    /// The run's own directory for an image's writable paths (default: a temporary
    /// directory removed when the program ends).
    #[arg(long, requires = "image")]
    pub(crate) state: Option<PathBuf>,
    /// Memory the program may commit (K, M or G suffix; rounded up to 2 MiB): Linux's
    /// CommitLimit under strict overcommit, so a mapping past it is ENOMEM. Its address
    /// space is 32 GiB whatever this is (reservations commit nothing), or this if larger.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub(crate) memory: u64,
    /// Host cores to pin every vCPU thread to, e.g. `0`, `0,1` or `0-1`.
    #[arg(long, value_parser = parse_cores)]
    pub(crate) cores: Option<CoreList>,
    /// Seed for the program's AT_RANDOM bytes.
    #[arg(long, default_value_t = 0x0d1770)]
    pub(crate) seed: u64,
    /// Print counters on exit: syscalls, exits, det turns and waits, vCPUs, syscall entry
    /// path and the trap's round trip, timings (`ditto pair`: each replica's turns and exits).
    #[arg(long)]
    pub(crate) stats: bool,
    /// Deterministic execution (docs/det.md): serve the det hypercalls of ditto.h, order
    /// futexes, clone/exit and shared-object syscalls by logical time, and preload libditto
    /// into dynamic programs.
    #[arg(long)]
    pub(crate) det: bool,
    /// Sets an environment variable for the program (repeatable), e.g.
    /// `--env GODEBUG=asyncpreemptoff=1`. An image's program otherwise gets only the image's
    /// environment; a host program gets ditto's own, which this adds to or overrides.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env_var)]
    pub(crate) env: Vec<String>,
    /// Run ditto's own threads without their seccomp filters (for debugging ditto;
    /// by default each kind of VMM thread may make only the host syscalls it needs).
    #[arg(long)]
    pub(crate) no_seccomp: bool,
    /// The program and its arguments. Without one, ditto runs its built-in demo: the
    /// project's pthread test program (threads, mutexes, condvars, TLS).
    #[arg(last = true, value_name = "PROGRAM ARGS")]
    pub(crate) command: Vec<std::ffi::OsString>,
}

/// Parses `4G`, `512M`, `65536K` or a byte count.
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
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

/// Checks a `--env` value: `KEY=VALUE` with a non-empty key (the value may be empty or
/// hold `=`).
pub(crate) fn parse_env_var(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((key, _)) if !key.is_empty() && !s.contains('\0') => Ok(s.to_string()),
        _ => Err(format!(
            "bad environment variable '{s}': expected KEY=VALUE"
        )),
    }
}

/// Applies `--env` settings to `env`: each replaces a variable of the same name or is
/// added, in the order given.
fn apply_env(env: &mut Vec<Vec<u8>>, sets: &[String]) {
    for set in sets {
        let key_len = set.find('=').map_or(set.len(), |i| i + 1);
        let key = &set.as_bytes()[..key_len];
        env.retain(|e| !e.starts_with(key));
        env.push(set.as_bytes().to_vec());
    }
}

/// Parses a guest memory size ([`parse_bytes`]), rounded up to 2 MiB.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
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
pub(crate) fn parse_cores(s: &str) -> Result<CoreList, String> {
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
    let img = image::open_for_run(name).map_err(|e| (image::exit_code(&e), e.to_string()))?;
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
    apply_env(&mut env, &p.env);
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
        image::copy_tree(&img.root.join(rel), &host).map_err(|e| {
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
            writable_when_live: Vec::new(),
            root_writable_when_live: false,
            replication: None,
            filter_main: true,
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
    let mut env = env_of_host();
    apply_env(&mut env, &p.env);
    Ok(Selection {
        config: vmm::VmConfig {
            root: p.root.clone(),
            program: args[0].clone(),
            args,
            env,
            memory: p.memory,
            cores: p.cores.as_ref().map(|c| c.0.clone()),
            seed: p.seed,
            writable: Vec::new(),
            cwd: None,
            det: p.det,
            det_preload: p.det.then(guest_images::progs::libditto),
            read_only: Vec::new(),
            read_only_root: false,
            writable_when_live: Vec::new(),
            root_writable_when_live: false,
            replication: None,
            filter_main: true,
        },
        _state: None,
    })
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

    #[test]
    fn env_settings_replace_or_add() {
        assert!(parse_env_var("A=1").is_ok());
        assert!(parse_env_var("A=").is_ok());
        assert!(parse_env_var("GODEBUG=a=1,b=2").is_ok());
        assert!(parse_env_var("A").is_err());
        assert!(parse_env_var("=1").is_err());
        let mut env = vec![b"A=0".to_vec(), b"AB=x".to_vec(), b"C=3".to_vec()];
        apply_env(&mut env, &["A=1".into(), "D=".into(), "A=2".into()]);
        assert_eq!(
            env,
            vec![
                b"AB=x".to_vec(),
                b"C=3".to_vec(),
                b"D=".to_vec(),
                b"A=2".to_vec()
            ]
        );
    }
}
