//! The text files of the process and thread directories, in Linux's formats
//! (fs/proc/task_mmu.c, fs/proc/array.c, fs/proc/fd.c).

use std::fmt::Write;

use super::system::cpus;
use super::TaskFile;
use super::Virtual;
use crate::address_space::PAGE_SIZE;
use crate::errno::Errno;
use crate::process::{Process, GUEST_PID};
use crate::sync::lock;
use crate::vma::Vma;

/// Width Linux pads a maps line to before the name (25 + 6 * sizeof(void *) - 1).
const MAPS_NAME_COLUMN: usize = 72;

/// The program's name as comm shows it: the executable's base name, 15 bytes at most.
pub fn comm(p: &Process) -> String {
    let base = p.exe_path.rsplit('/').next().unwrap_or("");
    let mut n = base.len().min(15);
    while !base.is_char_boundary(n) {
        n -= 1;
    }
    base[..n].to_string()
}

fn dev_parts(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// One maps line.
fn maps_line(out: &mut Vec<u8>, start: u64, v: &Vma) {
    let flag = |bit: i32, c: char| if v.prot & bit as u32 != 0 { c } else { '-' };
    let (offset, (maj, min), ino) = match &v.file {
        Some(f) => (f.offset, dev_parts(f.dev), f.ino),
        None => (0, (0, 0), 0),
    };
    let mut line = format!(
        "{:08x}-{:08x} {}{}{}{} {:08x} {:02x}:{:02x} {} ",
        start,
        v.end,
        flag(libc::PROT_READ, 'r'),
        flag(libc::PROT_WRITE, 'w'),
        flag(libc::PROT_EXEC, 'x'),
        if v.shared { 's' } else { 'p' },
        offset,
        maj,
        min,
        ino
    )
    .into_bytes();
    let name: Option<Vec<u8>> = match (&v.file, v.name) {
        (Some(f), _) => Some(
            f.path
                .iter()
                .flat_map(|&b| {
                    if b == b'\n' {
                        b"\\012".to_vec()
                    } else {
                        vec![b]
                    }
                })
                .collect(),
        ),
        (None, Some(n)) => Some(n.as_bytes().to_vec()),
        (None, None) => None,
    };
    if let Some(name) = name {
        if line.len() < MAPS_NAME_COLUMN {
            line.resize(MAPS_NAME_COLUMN, b' ');
        }
        line.push(b' ');
        line.extend_from_slice(&name);
    }
    line.push(b'\n');
    out.extend_from_slice(&line);
}

/// /proc/self/maps: the mapping table, never the VMM-owned pages.
pub fn maps(p: &Process) -> Vec<u8> {
    let asp = lock(&p.aspace);
    let mut out = Vec::new();
    // The vDSO and its parameter page lie below every program mapping, in the system area
    // (ditto.h): VMM pages, but the program's to read and call, as on Linux.
    if p.timekeeper.vdso_mapped() {
        use det::abi::{DITTO_VDSO_ADDR, DITTO_VDSO_SIZE, DITTO_VVAR_ADDR};
        let r = libc::PROT_READ as u32;
        let vvar = Vma::anon(DITTO_VVAR_ADDR + 4096, r, false, Some("[vvar]"));
        maps_line(&mut out, DITTO_VVAR_ADDR, &vvar);
        let end = DITTO_VDSO_ADDR + DITTO_VDSO_SIZE;
        let vdso = Vma::anon(end, r | libc::PROT_EXEC as u32, false, Some("[vdso]"));
        maps_line(&mut out, DITTO_VDSO_ADDR, &vdso);
    }
    for (start, v) in asp.vmas().iter() {
        maps_line(&mut out, start, v);
    }
    out
}

/// Guest memory between two recorded bounds, or nothing if they no longer read.
fn live_range(p: &Process, start: u64, end: u64) -> Vec<u8> {
    if end <= start {
        return Vec::new();
    }
    p.mem.read_bytes(start, end - start).unwrap_or_default()
}

fn sig_sets(p: &Process, tid: i64) -> (u64, u64, u64) {
    let blocked = p.signals.mask(tid);
    let (mut ign, mut cgt) = (0u64, 0u64);
    for sig in 1..=64 {
        let h = p.sigaction(sig).handler;
        let bit = 1u64 << (sig - 1);
        match h {
            0 => {}
            1 => ign |= bit,
            _ => cgt |= bit,
        }
    }
    (blocked, ign, cgt)
}

fn status(p: &Process, tid: i64) -> Vec<u8> {
    let (vm, rss) = lock(&p.aspace).vmas().totals();
    let layout = lock(&p.aspace).layout();
    let stk = layout.top.saturating_sub(layout.stack_bottom);
    let umask = p.umask.load(std::sync::atomic::Ordering::Relaxed);
    let fds = lock(&p.fds).numbers().last().map_or(0, |&n| n + 1);
    let fdsize = (fds.max(64) as u64).next_power_of_two();
    let (blocked, ign, cgt) = sig_sets(p, tid);
    let creds = lock(&p.creds).clone();
    let (u, g, caps) = (creds.uid, creds.gid, creds.caps);
    let groups: String = creds.groups.iter().map(|g| format!("{g} ")).collect();
    let kb = |b: u64| b / 1024;
    let n = cpus();
    let mut s = String::new();
    let _ = write!(
        s,
        "Name:\t{}\nUmask:\t{umask:04o}\nState:\tR (running)\nTgid:\t{GUEST_PID}\nNgid:\t0\n\
         Pid:\t{tid}\nPPid:\t0\nTracerPid:\t0\nUid:\t{}\t{}\t{}\t{}\n\
         Gid:\t{}\t{}\t{}\t{}\nFDSize:\t{fdsize}\nGroups:\t{groups}\n\
         NStgid:\t{GUEST_PID}\nNSpid:\t{tid}\nNSpgid:\t{GUEST_PID}\nNSsid:\t{GUEST_PID}\n\
         Kthread:\t0\n",
        comm(p),
        u.real,
        u.effective,
        u.saved,
        u.fs,
        g.real,
        g.effective,
        g.saved,
        g.fs,
    );
    for (k, v) in [
        ("VmPeak", vm),
        ("VmSize", vm),
        ("VmLck", 0),
        ("VmPin", 0),
        ("VmHWM", rss),
        ("VmRSS", rss),
        ("RssAnon", rss),
        ("RssFile", 0),
        ("RssShmem", 0),
        ("VmData", vm.saturating_sub(stk)),
        ("VmStk", stk),
        ("VmExe", 0),
        ("VmLib", 0),
        ("VmPTE", 0),
        ("VmSwap", 0),
        ("HugetlbPages", 0),
    ] {
        let _ = writeln!(s, "{k}:\t{:8} kB", kb(v));
    }
    let _ = write!(
        s,
        "CoreDumping:\t0\nTHP_enabled:\t0\nuntag_mask:\t0xffffffffffffffff\nThreads:\t{}\n\
         SigQ:\t0/63936\nSigPnd:\t{:016x}\nShdPnd:\t0000000000000000\nSigBlk:\t{blocked:016x}\n\
         SigIgn:\t{ign:016x}\nSigCgt:\t{cgt:016x}\nCapInh:\t{:016x}\n\
         CapPrm:\t{:016x}\nCapEff:\t{:016x}\nCapBnd:\t{:016x}\n\
         CapAmb:\t{:016x}\nNoNewPrivs:\t0\nSeccomp:\t0\nSeccomp_filters:\t0\n\
         Speculation_Store_Bypass:\tthread vulnerable\nSpeculationIndirectBranch:\tconditional enabled\n\
         Cpus_allowed:\t{:x}\nCpus_allowed_list:\t0-{}\nMems_allowed:\t1\nMems_allowed_list:\t0\n\
         voluntary_ctxt_switches:\t0\nnonvoluntary_ctxt_switches:\t0\n",
        p.live_threads(),
        p.signals.blocked_pending(tid),
        caps.inheritable,
        caps.permitted,
        caps.effective,
        caps.bounding,
        caps.ambient,
        if n >= 64 { u64::MAX } else { (1u64 << n) - 1 },
        n.saturating_sub(1)
    );
    s.into_bytes()
}

fn stat(p: &Process, tid: i64) -> Vec<u8> {
    let (vm, rss) = lock(&p.aspace).vmas().totals();
    let layout = lock(&p.aspace).layout();
    let info = p.proc_info.get().copied().unwrap_or_default();
    let (blocked, ign, cgt) = sig_sets(p, tid);
    let start_ticks = 0u64;
    format!(
        "{tid} ({}) R 0 {GUEST_PID} {GUEST_PID} 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 {} 0 {start_ticks} \
         {vm} {} 18446744073709551615 0 0 {} 0 0 0 {blocked} {ign} {cgt} 0 0 0 17 0 0 0 0 0 0 \
         0 0 {} {} {} {} {} 0\n",
        comm(p),
        p.live_threads(),
        rss / PAGE_SIZE,
        layout.top,
        layout.brk_start,
        info.arg_start,
        info.arg_end,
        info.env_start,
        info.env_end,
    )
    .into_bytes()
}

fn statm(p: &Process) -> Vec<u8> {
    let (vm, rss) = lock(&p.aspace).vmas().totals();
    format!(
        "{} {} 0 0 0 {} 0\n",
        vm / PAGE_SIZE,
        rss / PAGE_SIZE,
        rss / PAGE_SIZE
    )
    .into_bytes()
}

/// The text of a per-process (`tid` None) or per-thread file.
pub fn generate(p: &Process, f: TaskFile, tid: Option<i64>) -> Result<Vec<u8>, Errno> {
    let t = tid.unwrap_or(GUEST_PID);
    let info = p.proc_info.get().copied().unwrap_or_default();
    Ok(match f {
        TaskFile::Maps => maps(p),
        TaskFile::Status => status(p, t),
        TaskFile::Stat => stat(p, t),
        TaskFile::Statm => statm(p),
        TaskFile::Cmdline => live_range(p, info.arg_start, info.arg_end),
        TaskFile::Environ => live_range(p, info.env_start, info.env_end),
        TaskFile::Auxv => live_range(p, info.auxv_start, info.auxv_end),
        TaskFile::Comm => format!("{}\n", comm(p)).into_bytes(),
    })
}

/// /proc/self/fdinfo/N.
pub fn fdinfo(p: &Process, n: i64) -> Result<Vec<u8>, Errno> {
    let (f, cloexec) = {
        let t = lock(&p.fds);
        (t.get(n)?, t.cloexec(n)?)
    };
    let raw = f.raw();
    // SAFETY: lseek and fcntl on a descriptor we hold a reference to.
    let pos = match f.virt() {
        Some(v) => v.position(raw),
        None => unsafe { libc::lseek(raw, 0, libc::SEEK_CUR) }.max(0) as u64,
    };
    // SAFETY: as above.
    let mut flags = unsafe { libc::fcntl(raw, libc::F_GETFL) }.max(0) & !libc::O_CLOEXEC;
    if cloexec {
        flags |= libc::O_CLOEXEC;
    }
    // SAFETY: libc::stat is plain data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat into a buffer of the right size.
    unsafe { libc::fstat(raw, &mut st) };
    let ino = match f.virt() {
        Some(v) => v.node.ino(),
        None => st.st_ino,
    };
    Ok(format!("pos:\t{pos}\nflags:\t0{flags:o}\nmnt_id:\t0\nino:\t{ino}\n").into_bytes())
}
