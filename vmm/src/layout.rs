//! The system area: the low 2 MiB of guest memory, which the program can never touch
//! (page 0 is not present; pages 1..511 are supervisor-only), but for the vDSO's pages at
//! the top, which it may read and call (addresses from ditto.h).
//!
//! ```text
//! 0x000000  NULL guard page (not present)
//! 0x001000  PML4
//! 0x002000  PDPT
//! 0x003000  page table for the first 2 MiB (4 KiB pages)
//! 0x004000  page directories, one per GiB of guest memory (up to 65)
//! 0x050000  GDT: fixed descriptors, then one 16-byte TSS descriptor per vCPU
//! 0x060000  IDT (256 gates)
//! 0x061000  exception stubs, 16 bytes per vector
//! 0x062000  the LSTAR page (syscall entry; see `cpu`)
//! 0x063000  TSSs, 128 bytes per vCPU
//! 0x080000  kernel stacks, 1 KiB per vCPU (only exception frames live there)
//! 0x1FC000  the vDSO's parameter page (user read-only; `devices::timekeeper` writes it)
//! 0x1FD000  the vDSO image, 3 pages (user read+execute; `crate::vdso`)
//! 0x200000  end: program memory starts here (devices::guest_mem::USER_START)
//! ```

/// Guest physical address of the PML4.
pub const PML4: u64 = 0x1000;
/// Guest physical address of the PDPT.
pub const PDPT: u64 = 0x2000;
/// Guest physical address of the 4 KiB page table for the first 2 MiB.
pub const LOW_PT: u64 = 0x3000;
/// First page directory.
pub const PD_BASE: u64 = 0x4000;
/// Most GiB of guest memory the page directories can cover.
pub const MAX_GIB: u64 = 65;
/// The GDT.
pub const GDT: u64 = 0x50000;
/// The IDT.
pub const IDT: u64 = 0x60000;
/// Exception stubs, `STUB_SIZE` bytes per vector.
pub const EXC_STUBS: u64 = 0x61000;
/// Bytes per exception stub.
pub const STUB_SIZE: u64 = 16;
/// The LSTAR page: `syscall` jumps here.
pub const LSTAR_PAGE: u64 = 0x62000;
/// First TSS.
pub const TSS_BASE: u64 = 0x63000;
/// Bytes per TSS slot.
pub const TSS_SLOT: u64 = 128;
/// First kernel stack.
pub const KSTACK_BASE: u64 = 0x80000;
/// Bytes per kernel stack.
pub const KSTACK_SIZE: u64 = 1024;
/// Most vCPUs (threads alive at once) one program can have.
pub const MAX_VCPUS: u64 = 512;
/// The vDSO's parameter page (ditto.h `DITTO_VVAR_ADDR`).
pub const VVAR: u64 = det::abi::DITTO_VVAR_ADDR;
/// The vDSO image (ditto.h `DITTO_VDSO_ADDR`).
pub const VDSO: u64 = det::abi::DITTO_VDSO_ADDR;
/// Bytes reserved for the vDSO image.
pub const VDSO_SIZE: u64 = det::abi::DITTO_VDSO_SIZE;

/// GDT selectors, in Linux's layout so that sysret works and the program sees
/// the selector values it would see natively.
pub mod sel {
    /// Kernel code (64-bit).
    pub const KERNEL_CS: u16 = 0x10;
    /// Kernel data.
    pub const KERNEL_DS: u16 = 0x18;
    /// User code (32-bit); sysret's base.
    pub const USER32_CS: u16 = 0x23;
    /// User data.
    pub const USER_DS: u16 = 0x2b;
    /// User code (64-bit).
    pub const USER_CS: u16 = 0x33;
    /// First TSS descriptor; vCPU i uses `TSS0 + 16*i`.
    pub const TSS0: u16 = 0x38;
}

/// Top of vCPU `i`'s kernel stack.
pub fn kstack_top(i: u64) -> u64 {
    KSTACK_BASE + (i + 1) * KSTACK_SIZE
}

/// Address of vCPU `i`'s TSS.
pub fn tss(i: u64) -> u64 {
    TSS_BASE + i * TSS_SLOT
}

// The regions above must not overlap and must end below program memory; checked at
// compile time so a layout change that breaks this does not build.
const _: () = {
    assert!(PD_BASE + MAX_GIB * 0x1000 <= GDT);
    assert!(GDT + sel::TSS0 as u64 + 16 * MAX_VCPUS <= IDT);
    assert!(EXC_STUBS + 32 * STUB_SIZE <= LSTAR_PAGE);
    assert!(TSS_BASE + MAX_VCPUS * TSS_SLOT <= KSTACK_BASE);
    assert!(KSTACK_BASE + MAX_VCPUS * KSTACK_SIZE <= VVAR);
    assert!(VVAR + 0x1000 == VDSO);
    assert!(VDSO + VDSO_SIZE <= devices::guest_mem::USER_START);
};
