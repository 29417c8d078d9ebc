//! System-wide /proc files. Most are fixed text; cpuinfo, meminfo, stat, uptime and
//! loadavg describe the guest's view (its CPUs, its memory) and the latter three change
//! with time, so replicas may read different text from them.

use std::fmt::Write;

use crate::errno::Errno;
use crate::process::Process;
use crate::sync::lock;

/// Directories below /proc that hold system files.
pub const DIRS: &[&str] = &["sys", "sys/kernel", "sys/net", "sys/net/core", "sys/vm"];

/// Whether a file's text depends on time (uptime, load, counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// The same text every time.
    Fixed,
    /// Changes with time or load.
    TimeDependent,
}

/// System files below /proc.
pub const FILES: &[(&str, Timing)] = &[
    ("cpuinfo", Timing::Fixed),
    ("loadavg", Timing::TimeDependent),
    ("meminfo", Timing::TimeDependent),
    ("stat", Timing::TimeDependent),
    ("sys/kernel/hostname", Timing::Fixed),
    ("sys/kernel/osrelease", Timing::Fixed),
    ("sys/kernel/ostype", Timing::Fixed),
    ("sys/kernel/pid_max", Timing::Fixed),
    ("sys/net/core/somaxconn", Timing::Fixed),
    ("sys/vm/max_map_count", Timing::Fixed),
    ("sys/vm/overcommit_memory", Timing::Fixed),
    ("uptime", Timing::TimeDependent),
    ("version", Timing::Fixed),
];

/// Whether system file `name` (a path below /proc) has fixed text (see `procfs::constant`).
/// cpuinfo counts the VMM's CPUs, which do not change while the program runs.
pub fn constant(name: &str) -> bool {
    FILES.iter().any(|&(f, t)| f == name && t == Timing::Fixed)
}

/// The number of CPUs the program sees: the VMM's affinity, which sched_getaffinity reports.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn uname() -> libc::utsname {
    // SAFETY: utsname is plain data; all-zero is valid.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname fills the struct we pass.
    unsafe { libc::uname(&mut u) };
    u
}

fn field(f: &[libc::c_char]) -> String {
    let b: Vec<u8> = f
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&b).into_owned()
}

/// Seconds since the host booted (CLOCK_BOOTTIME), which the guest's clocks share.
pub fn uptime_secs() -> f64 {
    // SAFETY: timespec is plain data.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime fills the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// The text of system file `f`.
pub fn generate(p: &Process, f: &str) -> Result<Vec<u8>, Errno> {
    let n = cpus();
    let mut s = String::new();
    match f {
        "cpuinfo" => {
            for i in 0..n {
                let _ = write!(
                    s,
                    "processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: ditto virtual CPU\n\
                     cpu MHz\t\t: 2000.000\ncache size\t: 0 KB\nphysical id\t: 0\nsiblings\t: {n}\n\
                     core id\t\t: {i}\ncpu cores\t: {n}\napicid\t\t: {i}\nflags\t\t: fpu sse sse2\n\
                     bogomips\t: 4000.00\nclflush size\t: 64\ncache_alignment\t: 64\n\n"
                );
            }
        }
        "meminfo" => {
            // The program's memory is what it may commit (`--memory`); what its
            // mappings commit is in use. The address space beyond is no memory.
            let (total, committed) = {
                let asp = lock(&p.aspace);
                (asp.commit_limit() / 1024, asp.committed() / 1024)
            };
            let free = total.saturating_sub(committed);
            let _ = write!(
                s,
                "MemTotal:       {total:8} kB\nMemFree:        {free:8} kB\n\
                 MemAvailable:   {free:8} kB\nBuffers:               0 kB\n\
                 Cached:                0 kB\nSwapTotal:             0 kB\nSwapFree:              0 kB\n\
                 CommitLimit:    {total:8} kB\nCommitted_AS:   {committed:8} kB\n"
            );
        }
        "stat" => {
            let ticks = (uptime_secs() * 100.0) as u64;
            let _ = writeln!(
                s,
                "cpu  {} 0 0 0 0 0 0 0 0 0",
                ticks.saturating_mul(n as u64)
            );
            for i in 0..n {
                let _ = writeln!(s, "cpu{i} {ticks} 0 0 0 0 0 0 0 0 0");
            }
            let boot = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .saturating_sub(uptime_secs() as u64);
            let _ = write!(
                s,
                "intr 0\nctxt 0\nbtime {boot}\nprocesses {}\nprocs_running 1\nprocs_blocked 0\n",
                p.signals.tids().len()
            );
        }
        "uptime" => {
            let _ = writeln!(s, "{:.2} 0.00", uptime_secs());
        }
        "loadavg" => {
            let _ = writeln!(
                s,
                "0.00 0.00 0.00 1/{} {}",
                p.live_threads(),
                crate::process::GUEST_PID
            );
        }
        "version" => {
            let u = uname();
            let _ = writeln!(
                s,
                "{} version {} (ditto) {}",
                field(&u.sysname),
                field(&u.release),
                field(&u.version)
            );
        }
        "sys/kernel/hostname" => {
            let _ = writeln!(s, "{}", field(&uname().nodename));
        }
        "sys/kernel/osrelease" => {
            let _ = writeln!(s, "{}", field(&uname().release));
        }
        "sys/kernel/ostype" => s.push_str("Linux\n"),
        "sys/kernel/pid_max" => s.push_str("4194304\n"),
        "sys/net/core/somaxconn" => s.push_str("4096\n"),
        "sys/vm/max_map_count" => s.push_str("65530\n"),
        // Strict accounting, as `address_space` counts (glibc then gives a shrinking
        // arena's pages back with mmap(PROT_NONE), which uncommits them).
        "sys/vm/overcommit_memory" => s.push_str("2\n"),
        _ => return Err(Errno::ENOENT),
    }
    Ok(s.into_bytes())
}
