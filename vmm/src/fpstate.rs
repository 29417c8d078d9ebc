//! The FPU/SSE state a signal frame carries, in the 512-byte FXSAVE layout Linux uses
//! for `uc_mcontext.fpregs` (`struct _fpstate_64`).
//!
//! Keeping the interrupted state in the frame on the program's stack, as Linux does,
//! rather than in a VMM-side stack of saved states, means a handler that leaves with
//! siglongjmp leaks nothing, nested signals each restore their own state, and a
//! handler can inspect or edit the state it returns to.

use kvm_bindings::kvm_fpu;

/// Size of the FXSAVE area.
pub const FXSAVE_SIZE: usize = 512;
/// Alignment Linux gives the area in a signal frame.
pub const FXSAVE_ALIGN: u64 = 64;

/// MXCSR bits the program may set; the others are reserved and would make the state
/// unloadable (Linux masks them the same way, with the CPU's MXCSR_MASK).
const MXCSR_MASK: u32 = 0xffff;

/// The FXSAVE image of `f`.
pub fn to_fxsave(f: &kvm_fpu) -> [u8; FXSAVE_SIZE] {
    let mut b = [0u8; FXSAVE_SIZE];
    b[0..2].copy_from_slice(&f.fcw.to_le_bytes());
    b[2..4].copy_from_slice(&f.fsw.to_le_bytes());
    b[4] = f.ftwx;
    b[6..8].copy_from_slice(&f.last_opcode.to_le_bytes());
    b[8..16].copy_from_slice(&f.last_ip.to_le_bytes());
    b[16..24].copy_from_slice(&f.last_dp.to_le_bytes());
    b[24..28].copy_from_slice(&f.mxcsr.to_le_bytes());
    b[28..32].copy_from_slice(&MXCSR_MASK.to_le_bytes());
    for (i, r) in f.fpr.iter().enumerate() {
        b[32 + i * 16..48 + i * 16].copy_from_slice(r);
    }
    for (i, r) in f.xmm.iter().enumerate() {
        b[160 + i * 16..176 + i * 16].copy_from_slice(r);
    }
    b
}

/// The state an FXSAVE image from the program describes, with reserved MXCSR bits
/// cleared so that KVM can always load it.
pub fn from_fxsave(b: &[u8; FXSAVE_SIZE]) -> kvm_fpu {
    let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u64_at = |i: usize| u64::from(u32_at(i)) | (u64::from(u32_at(i + 4)) << 32);
    let mut f = kvm_fpu {
        fcw: u16_at(0),
        fsw: u16_at(2),
        ftwx: b[4],
        last_opcode: u16_at(6),
        last_ip: u64_at(8),
        last_dp: u64_at(16),
        mxcsr: u32_at(24) & MXCSR_MASK,
        ..Default::default()
    };
    for (i, r) in f.fpr.iter_mut().enumerate() {
        r.copy_from_slice(&b[32 + i * 16..48 + i * 16]);
    }
    for (i, r) in f.xmm.iter_mut().enumerate() {
        r.copy_from_slice(&b[160 + i * 16..176 + i * 16]);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_layout() {
        let mut f = kvm_fpu {
            fcw: 0x37f,
            fsw: 0x1234,
            ftwx: 0x5a,
            last_opcode: 0x7ff,
            last_ip: 0x1122_3344_5566_7788,
            last_dp: 0x99aa_bbcc_ddee_ff00,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        f.fpr[7] = [7; 16];
        f.xmm[15] = [0xee; 16];
        f.xmm[0][3] = 9;
        let b = to_fxsave(&f);
        // glibc's struct _libc_fpstate: mxcsr at 24, _st at 32, _xmm at 160.
        assert_eq!(u32::from_le_bytes(b[24..28].try_into().unwrap()), 0x1f80);
        assert_eq!(b[32 + 7 * 16], 7);
        assert_eq!(b[160 + 3], 9);
        assert_eq!(b[160 + 15 * 16], 0xee);
        let back = from_fxsave(&b);
        assert_eq!(back.fcw, f.fcw);
        assert_eq!(back.fsw, f.fsw);
        assert_eq!(back.ftwx, f.ftwx);
        assert_eq!(back.last_ip, f.last_ip);
        assert_eq!(back.last_dp, f.last_dp);
        assert_eq!(back.fpr, f.fpr);
        assert_eq!(back.xmm, f.xmm);
        assert_eq!(back.mxcsr, f.mxcsr);
    }

    #[test]
    fn reserved_mxcsr_bits_are_dropped() {
        let mut b = [0u8; FXSAVE_SIZE];
        b[24..28].copy_from_slice(&0xffff_1f80u32.to_le_bytes());
        assert_eq!(from_fxsave(&b).mxcsr, 0x1f80);
    }
}
