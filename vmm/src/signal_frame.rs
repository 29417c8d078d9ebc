//! The signal frame on the program's stack, laid out as Linux x86-64 does
//! (`struct rt_sigframe`): the return address (the libc's restorer, which calls
//! rt_sigreturn), the ucontext with the interrupted registers and signal mask, and the
//! siginfo. Handlers that inspect their `ucontext_t` see what they would natively,
//! the FPU/SSE state included: it lies above the frame in FXSAVE layout, pointed to by
//! `uc_mcontext.fpstate`, and rt_sigreturn restores it from there (see `fpstate`).

use crate::fpstate::{FXSAVE_ALIGN, FXSAVE_SIZE};
use devices::guest_mem::GuestMemory;
use devices::process::GUEST_PID;
use devices::signals::SigAction;
use devices::syscalls::UserRegs;
use devices::Errno;

/// Bytes below RSP that the ABI's red zone reserves.
const RED_ZONE: u64 = 128;
/// sizeof(struct ucontext) in the kernel's x86-64 layout.
const UCONTEXT_SIZE: u64 = 304;
/// sizeof(siginfo_t).
const SIGINFO_SIZE: u64 = 128;
/// Offset of uc_mcontext in the ucontext.
const MCONTEXT: u64 = 40;
/// Offset of uc_sigmask.
const SIGMASK: u64 = MCONTEXT + 256;
/// Offset of uc_mcontext.fpstate (after 23 words: gregs, csgsfs, err, trapno, oldmask,
/// cr2).
const FPSTATE: u64 = MCONTEXT + 23 * 8;
/// RFLAGS bits a program may change through sigreturn (Linux's FIX_EFLAGS, less TF).
const USER_FLAGS: u64 = 0x40CD5;

/// The mcontext greg order: r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip, eflags.
fn gregs(r: &UserRegs) -> [u64; 18] {
    [
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx, r.rdx,
        r.rax, r.rcx, r.rsp, r.rip, r.rflags,
    ]
}

/// What rt_sigreturn finds in a frame.
#[derive(Debug)]
pub struct Restored {
    /// The registers to resume.
    pub regs: UserRegs,
    /// The signal mask to restore.
    pub mask: u64,
    /// The FPU/SSE state in FXSAVE layout; None when the frame's fpstate is NULL
    /// (Linux then resets the FPU to its initial state).
    pub fpu: Option<[u8; FXSAVE_SIZE]>,
}

/// Builds the frame for `sig` below `ctx.rsp`, with the interrupted FPU/SSE state
/// `fpu` (FXSAVE layout), and returns the registers that enter the handler.
pub fn build(
    mem: &GuestMemory,
    ctx: &UserRegs,
    sig: i32,
    act: &SigAction,
    old_mask: u64,
    fpu: &[u8; FXSAVE_SIZE],
    altstack: Option<(u64, u64)>,
) -> Result<UserRegs, Errno> {
    // SA_ONSTACK with an alternate stack the thread is not already on: the frame goes at
    // its top, as Linux's get_sigframe; uc_stack describes it either way.
    let on_alt =
        altstack.is_some_and(|(b, n)| devices::syscalls::sys_signal::on_stack(ctx.rsp, b, n));
    let switch = act.flags & libc::SA_ONSTACK as u64 != 0 && altstack.is_some() && !on_alt;
    let mut sp = match altstack {
        Some((base, size)) if switch => base.checked_add(size).ok_or(Errno::EFAULT)?,
        _ => ctx.rsp.checked_sub(RED_ZONE).ok_or(Errno::EFAULT)?,
    };
    // As Linux's get_sigframe: the FPU area first, 64-byte aligned, then the frame.
    sp = sp.checked_sub(FXSAVE_SIZE as u64).ok_or(Errno::EFAULT)? & !(FXSAVE_ALIGN - 1);
    let fpstate = sp;
    sp = sp.checked_sub(SIGINFO_SIZE).ok_or(Errno::EFAULT)? & !15;
    let info = sp;
    sp = sp.checked_sub(UCONTEXT_SIZE).ok_or(Errno::EFAULT)? & !15;
    let uc = sp;
    // The return address sits just below the ucontext; at handler entry RSP+8 must
    // be 16-byte aligned, as after a call.
    let ret = uc.checked_sub(8).ok_or(Errno::EFAULT)?;

    let mut siginfo = [0u8; SIGINFO_SIZE as usize];
    siginfo[0..4].copy_from_slice(&sig.to_le_bytes());
    siginfo[16..20].copy_from_slice(&(GUEST_PID as i32).to_le_bytes());
    mem.write_bytes(info, &siginfo)?;

    let mut ucontext = [0u8; UCONTEXT_SIZE as usize];
    // uc_stack: { ss_sp at 16, ss_flags at 24, ss_size at 32 }.
    let (ss_sp, ss_flags, ss_size) = match altstack {
        None => (0, libc::SS_DISABLE, 0),
        Some((b, n)) => (
            b,
            if switch || on_alt {
                libc::SS_ONSTACK
            } else {
                0
            },
            n,
        ),
    };
    ucontext[16..24].copy_from_slice(&ss_sp.to_le_bytes());
    ucontext[24..28].copy_from_slice(&ss_flags.to_le_bytes());
    ucontext[32..40].copy_from_slice(&ss_size.to_le_bytes());
    for (i, v) in gregs(ctx).iter().enumerate() {
        let at = MCONTEXT as usize + i * 8;
        ucontext[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    // cs (0x33) and ss (0x2b) in the csgsfs word; oldmask.
    let csgsfs: u64 = 0x33 | (0x2b << 48);
    let at = MCONTEXT as usize + 18 * 8;
    ucontext[at..at + 8].copy_from_slice(&csgsfs.to_le_bytes());
    let at = MCONTEXT as usize + 21 * 8;
    ucontext[at..at + 8].copy_from_slice(&old_mask.to_le_bytes());
    ucontext[SIGMASK as usize..SIGMASK as usize + 8].copy_from_slice(&old_mask.to_le_bytes());
    ucontext[FPSTATE as usize..FPSTATE as usize + 8].copy_from_slice(&fpstate.to_le_bytes());
    mem.write_bytes(fpstate, fpu)?;
    mem.write_bytes(uc, &ucontext)?;
    mem.write_obj(ret, &act.restorer)?;

    Ok(UserRegs {
        rip: act.handler,
        rsp: ret,
        rdi: sig as u64,
        rsi: info,
        rdx: uc,
        rax: 0,
        // DF and TF cleared, as the kernel does for handlers.
        rflags: (ctx.rflags & !0x500) | 0x202,
        ..*ctx
    })
}

/// Reads the context rt_sigreturn restores; `rsp` is the program's RSP at the
/// rt_sigreturn syscall (the handler's `ret` popped the return address, so it
/// points at the ucontext). Any part of the frame, the FPU area included, that is not
/// readable program memory is EFAULT, which the caller turns into SIGSEGV as Linux does.
pub fn restore(mem: &GuestMemory, rsp: u64) -> Result<Restored, Errno> {
    // rsp is the program's: near the top of the address space the sum would wrap to a
    // small (system area) address in release builds and panic in debug ones.
    let g: [u64; 18] = mem.read_obj(rsp.checked_add(MCONTEXT).ok_or(Errno::EFAULT)?)?;
    let mask: u64 = mem.read_obj(rsp.checked_add(SIGMASK).ok_or(Errno::EFAULT)?)?;
    let fp_at: u64 = mem.read_obj(rsp.checked_add(FPSTATE).ok_or(Errno::EFAULT)?)?;
    let fpu = if fp_at == 0 {
        None
    } else {
        Some(mem.read_obj::<[u8; FXSAVE_SIZE]>(fp_at)?)
    };
    let regs = UserRegs {
        r8: g[0],
        r9: g[1],
        r10: g[2],
        r11: g[3],
        r12: g[4],
        r13: g[5],
        r14: g[6],
        r15: g[7],
        rdi: g[8],
        rsi: g[9],
        rbp: g[10],
        rbx: g[11],
        rdx: g[12],
        rax: g[13],
        rcx: g[14],
        rsp: g[15],
        rip: g[16],
        rflags: (g[17] & USER_FLAGS) | 0x202,
    };
    Ok(Restored { regs, mask, fpu })
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::guest_mem::USER_START;

    #[test]
    fn frame_roundtrip_and_alignment() {
        let mem = GuestMemory::new(16 << 20).unwrap();
        let ctx = UserRegs {
            rax: 1,
            rbx: 2,
            rcx: 3,
            r15: 15,
            rsp: USER_START + (1 << 20) + 8,
            rip: 0x401000,
            rflags: 0x246,
            ..Default::default()
        };
        let act = SigAction {
            handler: 0x402000,
            restorer: 0x403000,
            ..Default::default()
        };
        let mut fpu = [0u8; FXSAVE_SIZE];
        fpu[160] = 0xab;
        let h = build(&mem, &ctx, libc::SIGTERM, &act, 0x5, &fpu, None).unwrap();
        assert_eq!(h.rip, 0x402000);
        assert_eq!((h.rsp + 8) % 16, 0);
        assert!(h.rsp + RED_ZONE < ctx.rsp);
        assert_eq!(h.rdi, libc::SIGTERM as u64);
        assert_eq!(mem.read_obj::<u64>(h.rsp).unwrap(), 0x403000);
        assert_eq!(mem.read_obj::<i32>(h.rsi).unwrap(), libc::SIGTERM);
        // The handler's `ret` pops the restorer; rt_sigreturn sees RSP = ucontext.
        let back = restore(&mem, h.rsp + 8).unwrap();
        assert_eq!(
            back.regs,
            UserRegs {
                rflags: 0x246,
                ..ctx
            }
        );
        assert_eq!(back.mask, 0x5);
        assert_eq!(back.fpu.unwrap()[160], 0xab);
        // The FPU area lies above the frame, 64-byte aligned, below the red zone.
        let fp_at: u64 = mem.read_obj(h.rdx + FPSTATE).unwrap();
        assert_eq!(fp_at % 64, 0);
        assert!(fp_at > h.rsi && fp_at + 512 <= ctx.rsp - RED_ZONE);
        // A frame whose fpstate points outside program memory is bad.
        mem.write_obj(h.rdx + FPSTATE, &8u64).unwrap();
        assert_eq!(restore(&mem, h.rdx).unwrap_err(), Errno::EFAULT);
        mem.write_obj(h.rdx + FPSTATE, &0u64).unwrap();
        assert!(restore(&mem, h.rdx).unwrap().fpu.is_none());
    }

    #[test]
    fn sa_onstack_frame_goes_on_the_alternate_stack() {
        let mem = GuestMemory::new(16 << 20).unwrap();
        let ctx = UserRegs {
            rsp: USER_START + (1 << 20),
            ..Default::default()
        };
        let alt = (USER_START + (4 << 20), 64 << 10);
        let mut act = SigAction {
            handler: 0x402000,
            flags: libc::SA_ONSTACK as u64,
            ..Default::default()
        };
        let h = build(&mem, &ctx, 23, &act, 0, &[0; FXSAVE_SIZE], Some(alt)).unwrap();
        assert!(h.rsp > alt.0 && h.rsp < alt.0 + alt.1, "{:#x}", h.rsp);
        // uc_stack says the handler runs on it.
        assert_eq!(mem.read_obj::<i32>(h.rdx + 24).unwrap(), libc::SS_ONSTACK);
        // Without SA_ONSTACK the thread's own stack is used.
        act.flags = 0;
        let h = build(&mem, &ctx, 23, &act, 0, &[0; FXSAVE_SIZE], Some(alt)).unwrap();
        assert!(h.rsp < ctx.rsp && h.rsp > ctx.rsp - 4096);
    }

    #[test]
    fn bad_stack_is_efault() {
        let mem = GuestMemory::new(16 << 20).unwrap();
        let ctx = UserRegs {
            rsp: 0x1000,
            ..Default::default()
        };
        assert_eq!(
            build(
                &mem,
                &ctx,
                15,
                &SigAction::default(),
                0,
                &[0; FXSAVE_SIZE],
                None
            )
            .unwrap_err(),
            Errno::EFAULT
        );
        assert!(restore(&mem, 8).is_err());
        assert_eq!(restore(&mem, u64::MAX - 8).unwrap_err(), Errno::EFAULT);
        let top = UserRegs {
            rsp: 100,
            ..Default::default()
        };
        assert!(build(
            &mem,
            &top,
            15,
            &SigAction::default(),
            0,
            &[0; FXSAVE_SIZE],
            None
        )
        .is_err());
    }
}
