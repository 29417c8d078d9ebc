//! CPU state for a ditto vCPU: page tables, GDT/IDT/TSS, the CPL0 stubs, and the
//! special registers and MSRs every vCPU starts with.
//!
//! The syscall entry works on both kinds of host without knowing which it is:
//! - On VMX/SVM, `syscall` enters CPL0 at LSTAR, where the stub does `out` to
//!   `SYSCALL_PORT` (the VMM serves the call) and `sysretq`.
//! - On kvm_pvm, `syscall` jumps to LSTAR but stays at CPL3; the LSTAR page is
//!   supervisor-only, so the fetch raises #PF, whose CPL0 handler does `out` to
//!   `EXC_PORT_BASE + 14`; the VMM sees `rip == LSTAR`, serves the call, and points
//!   the exception frame's rip at the return address before the handler's `iretq`.
//!
//! The VMM records which exit it saw first ([`SyscallEntry`]). CPL0 code uses only
//! push, add, out, iretq and sysretq: kvm_pvm emulates CPL0 and knows little else.

use kvm_bindings::{kvm_fpu, kvm_segment, kvm_sregs};

use crate::layout::{self, sel};
use devices::guest_mem::GuestMemory;

/// Port the LSTAR stub writes to (VMX/SVM syscall path).
pub const SYSCALL_PORT: u16 = 0xF0;
/// Exception vector v's handler writes to port `EXC_PORT_BASE + v`.
pub const EXC_PORT_BASE: u16 = 0xA0;

/// How syscalls reach the VMM on this host, detected from the first one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallEntry {
    /// `syscall` entered CPL0 and the LSTAR stub exited (VMX/SVM).
    NativeStub,
    /// `syscall` faulted on the supervisor-only LSTAR page (kvm_pvm).
    PageFaultTrap,
}

const PTE_P: u64 = 1;
const PTE_RW: u64 = 2;
const PTE_US: u64 = 4;
const PTE_PS: u64 = 0x80;

/// Errors from building the system area.
#[derive(Debug, thiserror::Error)]
pub enum CpuSetupError {
    /// Guest memory larger than the page directories cover.
    #[error("guest memory of {0} GiB is more than the {max} GiB supported", max = layout::MAX_GIB)]
    TooMuchMemory(u64),
    /// A write into the system area failed (memory smaller than 2 MiB).
    #[error("guest memory too small for the system area")]
    TooSmall,
}

/// Writes page tables, GDT, IDT, stubs and TSSs into the system area.
pub fn build_system_area(mem: &GuestMemory) -> Result<(), CpuSetupError> {
    let size = mem.size();
    // One more 2 MiB page right after RAM: the doorbell MMIO window (no memslot, so
    // stores there reach KVM's ioeventfds).
    let mapped = size + (2 << 20);
    let gib = mapped.div_ceil(1 << 30);
    if gib > layout::MAX_GIB {
        return Err(CpuSetupError::TooMuchMemory(gib));
    }
    let w = |addr: u64, v: u64| mem.write_system_u64(addr, v).ok_or(CpuSetupError::TooSmall);
    let user_dir = PTE_P | PTE_RW | PTE_US;
    w(layout::PML4, layout::PDPT | user_dir)?;
    for g in 0..gib {
        let pd = layout::PD_BASE + g * 0x1000;
        w(layout::PDPT + g * 8, pd | user_dir)?;
        for j in 0..512u64 {
            let addr = (g << 30) + (j << 21);
            if addr >= mapped {
                break;
            }
            let entry = if addr == 0 {
                layout::LOW_PT | user_dir
            } else {
                addr | user_dir | PTE_PS
            };
            w(pd + j * 8, entry)?;
        }
    }
    // First 2 MiB: page 0 absent (NULL guard), the rest supervisor-only.
    for k in 1..512u64 {
        w(layout::LOW_PT + k * 8, (k << 12) | PTE_P | PTE_RW)?;
    }
    // Except the vDSO's pages (ditto.h): the parameter page user read-only, the image user
    // read+execute (no NX bit anywhere), both read-only for the program.
    let mut page = layout::VVAR;
    while page < layout::VDSO + layout::VDSO_SIZE {
        w(layout::LOW_PT + (page >> 12) * 8, page | PTE_P | PTE_US)?;
        page += 0x1000;
    }

    let gdt: [u64; 7] = [
        0,
        0,
        0x00AF_9B00_0000_FFFF, // 0x10 kernel code64
        0x00CF_9300_0000_FFFF, // 0x18 kernel data
        0x00CF_FB00_0000_FFFF, // 0x23 user code32
        0x00CF_F300_0000_FFFF, // 0x2b user data
        0x00AF_FB00_0000_FFFF, // 0x33 user code64
    ];
    for (i, d) in gdt.iter().enumerate() {
        w(layout::GDT + i as u64 * 8, *d)?;
    }
    for v in 0..layout::MAX_VCPUS {
        let tss = layout::tss(v);
        let (lo, hi) = tss_descriptor(tss);
        let at = layout::GDT + sel::TSS0 as u64 + 16 * v;
        w(at, lo)?;
        w(at + 8, hi)?;
        // TSS: RSP0 at offset 4; I/O map base past the limit (no I/O bitmap).
        mem.write_system(tss + 4, &layout::kstack_top(v).to_le_bytes())
            .ok_or(CpuSetupError::TooSmall)?;
        mem.write_system(tss + 102, &104u16.to_le_bytes())
            .ok_or(CpuSetupError::TooSmall)?;
    }

    for vec in 0..32u64 {
        let stub = layout::EXC_STUBS + vec * layout::STUB_SIZE;
        mem.write_system(stub, &exception_stub(vec as u8))
            .ok_or(CpuSetupError::TooSmall)?;
        // #BP is reachable from CPL3 (int3), like on Linux.
        let dpl3 = vec == 3;
        let (lo, hi) = idt_gate(stub, dpl3);
        w(layout::IDT + vec * 16, lo)?;
        w(layout::IDT + vec * 16 + 8, hi)?;
    }
    mem.write_system(layout::LSTAR_PAGE, &lstar_stub())
        .ok_or(CpuSetupError::TooSmall)?;
    Ok(())
}

/// `[push $0;] out %al, $(EXC_PORT_BASE+vec); add $8, %rsp; iretq`
fn exception_stub(vec: u8) -> Vec<u8> {
    let has_error_code = matches!(vec, 8 | 10..=14 | 17 | 21 | 29 | 30);
    let mut s = Vec::with_capacity(16);
    if !has_error_code {
        s.extend_from_slice(&[0x6a, 0x00]);
    }
    s.extend_from_slice(&[0xe6, EXC_PORT_BASE as u8 + vec]);
    s.extend_from_slice(&[0x48, 0x83, 0xc4, 0x08]);
    s.extend_from_slice(&[0x48, 0xcf]);
    s
}

/// `out %al, $SYSCALL_PORT; sysretq`
fn lstar_stub() -> [u8; 5] {
    [0xe6, SYSCALL_PORT as u8, 0x48, 0x0f, 0x07]
}

fn idt_gate(handler: u64, dpl3: bool) -> (u64, u64) {
    let attr: u64 = if dpl3 { 0xEE } else { 0x8E };
    let lo = (handler & 0xFFFF)
        | ((sel::KERNEL_CS as u64) << 16)
        | (attr << 40)
        | (((handler >> 16) & 0xFFFF) << 48);
    (lo, handler >> 32)
}

fn tss_descriptor(base: u64) -> (u64, u64) {
    let limit = 0x67u64;
    let lo = (limit & 0xFFFF)
        | ((base & 0xFF_FFFF) << 16)
        | (0x89u64 << 40)
        | (((base >> 24) & 0xFF) << 56);
    (lo, base >> 32)
}

fn segment(selector: u16, code: bool, user: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        type_: if code { 0xB } else { 0x3 },
        present: 1,
        dpl: if user { 3 } else { 0 },
        db: if code { 0 } else { 1 },
        s: 1,
        l: if code { 1 } else { 0 },
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Special registers for vCPU `index`, starting at CPL3.
pub fn user_sregs(mut sregs: kvm_sregs, index: u64) -> kvm_sregs {
    sregs.cs = segment(sel::USER_CS, true, true);
    let ds = segment(sel::USER_DS, false, true);
    sregs.ds = ds;
    sregs.es = ds;
    sregs.ss = ds;
    let mut fs = ds;
    fs.selector = 0;
    sregs.fs = fs;
    sregs.gs = fs;
    sregs.tr = kvm_segment {
        base: layout::tss(index),
        limit: 0x67,
        selector: sel::TSS0 + 16 * index as u16,
        type_: 0xB,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.ldt = kvm_segment {
        selector: 0,
        type_: 2,
        present: 1,
        unusable: 1,
        ..Default::default()
    };
    sregs.gdt.base = layout::GDT;
    sregs.gdt.limit = (sel::TSS0 as u64 + 16 * layout::MAX_VCPUS - 1) as u16;
    sregs.idt.base = layout::IDT;
    sregs.idt.limit = 256 * 16 - 1;
    sregs.cr0 = 0x8005_0033; // PG | WP | NE | ET | MP | PE
    sregs.cr3 = layout::PML4;
    sregs.cr4 = 0x0004_0620; // OSXSAVE | OSXMMEXCPT | OSFXSR | PAE
    sregs.efer = 0xD01; // NXE | LMA | LME | SCE
    sregs
}

/// MSR numbers the vCPU setup writes.
pub mod msr {
    /// Segment selectors for syscall/sysret.
    pub const STAR: u32 = 0xC000_0081;
    /// 64-bit syscall target.
    pub const LSTAR: u32 = 0xC000_0082;
    /// Compatibility-mode syscall target.
    pub const CSTAR: u32 = 0xC000_0083;
    /// RFLAGS bits cleared by syscall.
    pub const SFMASK: u32 = 0xC000_0084;
    /// FS base (TLS).
    pub const FS_BASE: u32 = 0xC000_0100;
    /// GS base.
    pub const GS_BASE: u32 = 0xC000_0101;
    /// Swapped GS base.
    pub const KERNEL_GS_BASE: u32 = 0xC000_0102;
}

/// The MSR values every vCPU starts with, given its FS base.
pub fn initial_msrs(fs_base: u64) -> Vec<(u32, u64)> {
    let star = ((sel::USER32_CS as u64 - 3) << 48) | ((sel::KERNEL_CS as u64) << 32);
    vec![
        (msr::STAR, star),
        (msr::LSTAR, layout::LSTAR_PAGE),
        (msr::CSTAR, layout::LSTAR_PAGE),
        // Nothing masked: on kvm_pvm the #PF frame then carries the program's own
        // RFLAGS, so returning through it restores them exactly.
        (msr::SFMASK, 0),
        (msr::FS_BASE, fs_base),
        (msr::GS_BASE, 0),
        (msr::KERNEL_GS_BASE, 0),
    ]
}

/// The FPU state of a fresh Linux thread.
/// The CPUID table of vCPU `index`: KVM's supported table with the APIC ids set to the
/// vCPU's index. KVM_GET_SUPPORTED_CPUID reports the initial APIC id of whichever host core
/// the VMM happened to run on, and on hosts where KVM emulates the guest's cpuid (Intel
/// kvm_pvm, with CPUID faulting; VMX/SVM) the program would read that: an input that
/// differs between replicas and from run to run. Where cpuid runs natively (AMD kvm_pvm)
/// the table is not consulted and nothing changes.
pub fn cpuid_for_vcpu(base: &kvm_bindings::CpuId, index: u64) -> kvm_bindings::CpuId {
    let mut cpuid = base.clone();
    let id = index as u32;
    for e in cpuid.as_mut_slice() {
        match e.function {
            // EBX[31:24]: initial APIC id.
            1 => e.ebx = (e.ebx & 0x00ff_ffff) | ((id & 0xff) << 24),
            // EDX: x2APIC id of the extended topology leaves.
            0xb | 0x1f => e.edx = id,
            _ => {}
        }
    }
    cpuid
}

pub fn initial_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// The signal Linux would send for an exception vector.
pub fn vector_signal(vec: u8) -> i32 {
    match vec {
        0 | 7 | 16 | 19 => libc::SIGFPE,
        1 | 3 => libc::SIGTRAP,
        6 => libc::SIGILL,
        17 => libc::SIGBUS,
        _ => libc::SIGSEGV,
    }
}

/// The exception's mnemonic, for reports.
pub fn vector_name(vec: u8) -> &'static str {
    match vec {
        0 => "divide error (#DE)",
        1 => "debug (#DB)",
        3 => "breakpoint (#BP)",
        4 => "overflow (#OF)",
        5 => "bound range (#BR)",
        6 => "invalid opcode (#UD)",
        7 => "device not available (#NM)",
        8 => "double fault (#DF)",
        10 => "invalid TSS (#TS)",
        11 => "segment not present (#NP)",
        12 => "stack fault (#SS)",
        13 => "general protection (#GP)",
        14 => "page fault (#PF)",
        16 => "x87 FP error (#MF)",
        17 => "alignment check (#AC)",
        19 => "SIMD FP error (#XM)",
        _ => "exception",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_vcpu_reads_its_own_apic_id() {
        let mut base = kvm_bindings::CpuId::new(3).unwrap();
        let s = base.as_mut_slice();
        s[0].function = 1;
        s[0].ebx = 0x0708_0800; // APIC id 7 from whichever host core, other fields kept
        s[1].function = 0xb;
        s[1].edx = 7;
        s[2].function = 0;
        s[2].ebx = 0x756e_6547;
        let c = cpuid_for_vcpu(&base, 3);
        assert_eq!(c.as_slice()[0].ebx, 0x0308_0800);
        assert_eq!(c.as_slice()[1].edx, 3);
        assert_eq!(c.as_slice()[2].ebx, 0x756e_6547);
    }

    #[test]
    fn stubs_fit_and_encode_port() {
        for v in 0..32u8 {
            let s = exception_stub(v);
            assert!(s.len() as u64 <= layout::STUB_SIZE);
            let out = s.iter().position(|&b| b == 0xe6).unwrap();
            assert_eq!(s[out + 1], EXC_PORT_BASE as u8 + v);
            assert_eq!(&s[s.len() - 2..], &[0x48, 0xcf]);
        }
        // #PF pushes its own error code, #UD does not.
        assert_eq!(exception_stub(14)[0], 0xe6);
        assert_eq!(exception_stub(6)[0], 0x6a);
    }

    #[test]
    fn gate_and_tss_encoding() {
        let (lo, hi) = idt_gate(0x1234_5678_9abc, true);
        assert_eq!(lo & 0xFFFF, 0x9abc);
        assert_eq!((lo >> 48) & 0xFFFF, 0x5678);
        assert_eq!(hi, 0x1234);
        assert_eq!((lo >> 40) & 0xFF, 0xEE);
        let (lo, _) = tss_descriptor(0x63000);
        assert_eq!((lo >> 16) & 0xFF_FFFF, 0x63000);
    }

    #[test]
    fn page_tables_guard_null_and_system_area() {
        let mem = GuestMemory::new(1 << 30).unwrap();
        build_system_area(&mem).unwrap();
        assert_eq!(mem.read_system_u64(layout::LOW_PT).unwrap(), 0);
        let e = mem.read_system_u64(layout::LOW_PT + 8).unwrap();
        assert_eq!(e & PTE_US, 0);
        // The vDSO's pages are the only user pages there, and the program cannot write them.
        for k in 1..512u64 {
            let e = mem.read_system_u64(layout::LOW_PT + k * 8).unwrap();
            let vdso = (layout::VVAR..layout::VDSO + layout::VDSO_SIZE).contains(&(k << 12));
            assert_eq!(e & PTE_US != 0, vdso, "page {k:#x}");
            assert_eq!(e & PTE_RW != 0, !vdso, "page {k:#x}");
        }
        let pd1 = mem.read_system_u64(layout::PD_BASE + 8).unwrap();
        assert_eq!(pd1, (2 << 20) | PTE_P | PTE_RW | PTE_US | PTE_PS);
        assert!(build_system_area(&GuestMemory::new(66 << 30).unwrap()).is_err());
    }

    #[test]
    fn signals() {
        assert_eq!(vector_signal(0), libc::SIGFPE);
        assert_eq!(vector_signal(6), libc::SIGILL);
        assert_eq!(vector_signal(14), libc::SIGSEGV);
    }
}
