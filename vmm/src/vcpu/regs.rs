//! Register plumbing between KVM and the syscall layer: `kvm_regs` <-> `UserRegs`, and
//! MSR writes that fail unless KVM took every one.

use kvm_bindings::{kvm_regs, Msrs};
use kvm_ioctls::VcpuFd;

use devices::syscalls::UserRegs;

/// Sets `values` (index, data) on the vCPU; all of them or an error.
pub(super) fn set_msrs(vcpu: &VcpuFd, values: &[(u32, u64)]) -> Result<(), kvm_ioctls::Error> {
    let entries: Vec<kvm_bindings::kvm_msr_entry> = values
        .iter()
        .map(|&(index, data)| kvm_bindings::kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| kvm_ioctls::Error::new(libc::EINVAL))?;
    // KVM_SET_MSRS stops at the first MSR it refuses (a non-canonical base) and returns
    // how many it set; anything short of all of them is a failure, not a success that
    // leaves the rest stale.
    let set = vcpu.set_msrs(&msrs)?;
    if set != entries.len() {
        return Err(kvm_ioctls::Error::new(libc::EPERM));
    }
    Ok(())
}

/// The program-visible registers of a KVM register set.
pub(super) fn to_user(r: &kvm_regs) -> UserRegs {
    UserRegs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    }
}

/// The KVM register set for program registers `u`.
pub(super) fn to_kvm(u: &UserRegs) -> kvm_regs {
    kvm_regs {
        rax: u.rax,
        rbx: u.rbx,
        rcx: u.rcx,
        rdx: u.rdx,
        rsi: u.rsi,
        rdi: u.rdi,
        rsp: u.rsp,
        rbp: u.rbp,
        r8: u.r8,
        r9: u.r9,
        r10: u.r10,
        r11: u.r11,
        r12: u.r12,
        r13: u.r13,
        r14: u.r14,
        r15: u.r15,
        rip: u.rip,
        rflags: u.rflags,
    }
}
