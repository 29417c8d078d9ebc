//! The initial stack of the main thread: argc, argv, envp and the auxiliary vector,
//! laid out as the Linux kernel does. AT_SYSINFO_EHDR names ditto's vDSO (`crate::vdso`),
//! which glibc, static or dynamic, uses for clock_gettime, gettimeofday, time, clock_getres
//! and getcpu; AT_RANDOM comes from the seed.

use devices::guest_mem::GuestMemory;
use devices::process::ProcInfo;
use devices::Errno;

use crate::elf::LoadedProgram;

const AT_NULL: u64 = 0;
const AT_PHDR: u64 = 3;
const AT_PHENT: u64 = 4;
const AT_PHNUM: u64 = 5;
const AT_PAGESZ: u64 = 6;
const AT_BASE: u64 = 7;
const AT_FLAGS: u64 = 8;
const AT_ENTRY: u64 = 9;
const AT_UID: u64 = 11;
const AT_EUID: u64 = 12;
const AT_GID: u64 = 13;
const AT_EGID: u64 = 14;
const AT_PLATFORM: u64 = 15;
const AT_HWCAP: u64 = 16;
const AT_CLKTCK: u64 = 17;
const AT_SECURE: u64 = 23;
const AT_RANDOM: u64 = 25;
const AT_HWCAP2: u64 = 26;
const AT_EXECFN: u64 = 31;
const AT_SYSINFO_EHDR: u64 = 33;

/// The 16 AT_RANDOM bytes for a seed (splitmix64): the same seed gives the same
/// stack protector canary and pointer guard in every run and both replicas.
pub fn at_random(seed: u64) -> [u8; 16] {
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&next().to_le_bytes());
    out[8..].copy_from_slice(&next().to_le_bytes());
    out
}

fn hwcap() -> u64 {
    std::arch::x86_64::__cpuid(1).edx as u64
}

/// Builds the stack below `top` and returns the initial RSP (pointing at argc), with
/// where the strings and the auxiliary vector lie (for /proc/self/{cmdline,environ,auxv}).
pub fn build(
    mem: &GuestMemory,
    top: u64,
    args: &[Vec<u8>],
    env: &[Vec<u8>],
    prog: &LoadedProgram,
    execfn: &[u8],
    seed: u64,
) -> Result<(u64, ProcInfo), Errno> {
    let mut sp = top;
    let mut push_bytes = |data: &[u8]| -> Result<u64, Errno> {
        // Arguments and environment can be as large as the caller likes: ENOMEM (no room) rather
        // than a wrap below guest address 0.
        sp = (data.len() as u64)
            .checked_add(1)
            .and_then(|n| sp.checked_sub(n))
            .ok_or(Errno::ENOMEM)?;
        mem.write_bytes(sp, data)?;
        mem.write_bytes(sp + data.len() as u64, &[0])?;
        Ok(sp)
    };
    let execfn_at = push_bytes(execfn)?;
    let platform_at = push_bytes(b"x86_64")?;
    let mut env_ptrs = Vec::with_capacity(env.len());
    for e in env.iter().rev() {
        env_ptrs.push(push_bytes(e)?);
    }
    env_ptrs.reverse();
    let mut arg_ptrs = Vec::with_capacity(args.len());
    for a in args.iter().rev() {
        arg_ptrs.push(push_bytes(a)?);
    }
    arg_ptrs.reverse();
    sp = (sp & !15).checked_sub(16).ok_or(Errno::ENOMEM)?;
    let random_at = sp;
    mem.write_bytes(random_at, &at_random(seed))?;

    // SAFETY: these getters cannot fail.
    let (uid, euid, gid, egid) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    };
    let auxv: Vec<(u64, u64)> = vec![
        (AT_PHDR, prog.phdr),
        (AT_PHENT, 56),
        (AT_PHNUM, prog.phnum),
        (AT_PAGESZ, 4096),
        (AT_BASE, prog.interp_base),
        (AT_FLAGS, 0),
        (AT_ENTRY, prog.entry),
        (AT_UID, uid as u64),
        (AT_EUID, euid as u64),
        (AT_GID, gid as u64),
        (AT_EGID, egid as u64),
        (AT_SECURE, 0),
        (AT_RANDOM, random_at),
        (AT_HWCAP, hwcap()),
        (AT_HWCAP2, 0),
        (AT_CLKTCK, 100),
        (AT_PLATFORM, platform_at),
        (AT_EXECFN, execfn_at),
        (AT_SYSINFO_EHDR, crate::layout::VDSO),
        (AT_NULL, 0),
    ];
    let words = 1 + arg_ptrs.len() + 1 + env_ptrs.len() + 1 + auxv.len() * 2;
    sp = (words as u64)
        .checked_mul(8)
        .and_then(|n| sp.checked_sub(n))
        .ok_or(Errno::ENOMEM)?
        & !15;
    let env_start = env_ptrs.first().copied().unwrap_or(platform_at);
    let auxv_start = sp + (3 + arg_ptrs.len() + env_ptrs.len()) as u64 * 8;
    let info = ProcInfo {
        arg_start: arg_ptrs.first().copied().unwrap_or(env_start),
        arg_end: env_start,
        env_start,
        env_end: platform_at,
        auxv_start,
        auxv_end: auxv_start + auxv.len() as u64 * 16,
    };
    let mut w = sp;
    let mut put = |v: u64| -> Result<(), Errno> {
        mem.write_obj(w, &v)?;
        w += 8;
        Ok(())
    };
    put(arg_ptrs.len() as u64)?;
    for p in &arg_ptrs {
        put(*p)?;
    }
    put(0)?;
    for p in &env_ptrs {
        put(*p)?;
    }
    put(0)?;
    for (k, v) in auxv {
        put(k)?;
        put(v)?;
    }
    Ok((sp, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_depends_only_on_seed() {
        assert_eq!(at_random(1), at_random(1));
        assert_ne!(at_random(1), at_random(2));
    }

    #[test]
    fn layout_is_linux_like() {
        let mem = GuestMemory::new(16 << 20).unwrap();
        let top = 16 << 20;
        let prog = LoadedProgram::default();
        let (sp, info) = build(
            &mem,
            top,
            &[b"prog".to_vec(), b"a1".to_vec()],
            &[b"K=V".to_vec()],
            &prog,
            b"/prog",
            7,
        )
        .unwrap();
        assert_eq!(sp % 16, 0);
        assert_eq!(mem.read_obj::<u64>(sp).unwrap(), 2);
        let argv0: u64 = mem.read_obj(sp + 8).unwrap();
        assert_eq!(mem.read_cstring(argv0, 100).unwrap().as_bytes(), b"prog");
        assert_eq!(mem.read_obj::<u64>(sp + 24).unwrap(), 0);
        let env0: u64 = mem.read_obj(sp + 32).unwrap();
        assert_eq!(mem.read_cstring(env0, 100).unwrap().as_bytes(), b"K=V");
        assert_eq!(mem.read_obj::<u64>(sp + 48).unwrap(), AT_PHDR);
        let args = mem
            .read_bytes(info.arg_start, info.arg_end - info.arg_start)
            .unwrap();
        assert_eq!(args, b"prog\0a1\0");
        let env = mem
            .read_bytes(info.env_start, info.env_end - info.env_start)
            .unwrap();
        assert_eq!(env, b"K=V\0");
        assert_eq!(info.auxv_start, sp + 48);
        assert_eq!(mem.read_obj::<u64>(info.auxv_end - 16).unwrap(), AT_NULL);
        assert_eq!(
            mem.read_obj::<u64>(info.auxv_end - 32).unwrap(),
            AT_SYSINFO_EHDR
        );
        assert_eq!(
            mem.read_obj::<u64>(info.auxv_end - 24).unwrap(),
            crate::layout::VDSO
        );
    }
}
