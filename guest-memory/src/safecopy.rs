//! Fault-safe access to guest memory, the way Linux's exception tables and gVisor's
//! safecopy do it.
//!
//! The program can place pages in its memory that fault when the VMM touches them: a
//! shared file page past the end of its file (SIGBUS), a read-only shared file page
//! written to (SIGSEGV). Natively the kernel turns such a fault inside a syscall into
//! EFAULT; a plain Rust load or store would instead kill the whole VMM. So every VMM
//! access to program memory goes through the small assembly routines below. Their
//! faulting instructions lie between two known labels, and a SIGSEGV/SIGBUS handler,
//! installed once before any guest memory exists, moves a fault there (when the fault
//! address is inside registered guest memory) to a fixup label that makes the routine
//! return 1. Any other fault goes to the handler that was there before (Rust's stack
//! overflow reporter) or the default action, so genuine VMM bugs still crash loudly.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Once;

use crate::errno::Errno;

/// A guest page faulted during a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SafeCopyError {
    /// The page is not readable/writable on the host (past EOF, read-only, unmapped).
    #[error("guest memory fault")]
    Fault,
}

impl From<SafeCopyError> for Errno {
    fn from(_: SafeCopyError) -> Self {
        Errno::EFAULT
    }
}

// Every routine returns 0 in eax on success. None of them touches the stack before its
// last instruction that may fault, so the shared fixup can return straight to the
// caller with eax = 1. The ABI guarantees DF = 0 on entry, as `rep movsb` needs.
core::arch::global_asm!(
    ".pushsection .text.ditto_safecopy,\"ax\",@progbits",
    ".p2align 4",
    ".globl ditto_safecopy_start",
    ".hidden ditto_safecopy_start",
    "ditto_safecopy_start:",
    // u32 ditto_safe_memcpy(dst: rdi, src: rsi, len: rdx)
    ".globl ditto_safe_memcpy",
    ".hidden ditto_safe_memcpy",
    "ditto_safe_memcpy:",
    "mov rcx, rdx",
    "rep movsb",
    "xor eax, eax",
    "ret",
    // u32 ditto_safe_load32(src: rdi, out: rsi)
    ".globl ditto_safe_load32",
    ".hidden ditto_safe_load32",
    "ditto_safe_load32:",
    "mov eax, dword ptr [rdi]",
    "mov dword ptr [rsi], eax",
    "xor eax, eax",
    "ret",
    // u32 ditto_safe_load64(src: rdi, out: rsi)
    ".globl ditto_safe_load64",
    ".hidden ditto_safe_load64",
    "ditto_safe_load64:",
    "mov rax, qword ptr [rdi]",
    "mov qword ptr [rsi], rax",
    "xor eax, eax",
    "ret",
    // u32 ditto_safe_store32(dst: rdi, val: esi): xchg, a sequentially consistent store
    ".globl ditto_safe_store32",
    ".hidden ditto_safe_store32",
    "ditto_safe_store32:",
    "xchg dword ptr [rdi], esi",
    "xor eax, eax",
    "ret",
    // u32 ditto_safe_store64(dst: rdi, val: rsi)
    ".globl ditto_safe_store64",
    ".hidden ditto_safe_store64",
    "ditto_safe_store64:",
    "xchg qword ptr [rdi], rsi",
    "xor eax, eax",
    "ret",
    // u32 ditto_safe_cas32(ptr: rdi, expected: esi, new: edx, prev_out: rcx)
    ".globl ditto_safe_cas32",
    ".hidden ditto_safe_cas32",
    "ditto_safe_cas32:",
    "mov eax, esi",
    "lock cmpxchg dword ptr [rdi], edx",
    "mov dword ptr [rcx], eax",
    "xor eax, eax",
    "ret",
    // u32 ditto_safe_cas64(ptr: rdi, expected: rsi, new: rdx, prev_out: rcx)
    ".globl ditto_safe_cas64",
    ".hidden ditto_safe_cas64",
    "ditto_safe_cas64:",
    "mov rax, rsi",
    "lock cmpxchg qword ptr [rdi], rdx",
    "mov qword ptr [rcx], rax",
    "xor eax, eax",
    "ret",
    ".globl ditto_safecopy_fixup",
    ".hidden ditto_safecopy_fixup",
    "ditto_safecopy_fixup:",
    "mov eax, 1",
    "ret",
    ".popsection",
);

extern "C" {
    fn ditto_safecopy_start();
    fn ditto_safecopy_fixup();
    fn ditto_safe_memcpy(dst: *mut u8, src: *const u8, len: usize) -> u32;
    fn ditto_safe_load32(src: *const u32, out: *mut u32) -> u32;
    fn ditto_safe_load64(src: *const u64, out: *mut u64) -> u32;
    fn ditto_safe_store32(dst: *mut u32, val: u32) -> u32;
    fn ditto_safe_store64(dst: *mut u64, val: u64) -> u32;
    fn ditto_safe_cas32(ptr: *mut u32, expected: u32, new: u32, prev: *mut u32) -> u32;
    fn ditto_safe_cas64(ptr: *mut u64, expected: u64, new: u64, prev: *mut u64) -> u32;
}

fn status(r: u32) -> Result<(), SafeCopyError> {
    if r == 0 {
        Ok(())
    } else {
        Err(SafeCopyError::Fault)
    }
}

/// Host ranges whose faults may be fixed up: the guest mappings alive now. A fixed table
/// of atomics, because the signal handler may read nothing that takes a lock.
const MAX_RANGES: usize = 256;
/// A slot's start while its owner is filling it in.
const BUSY: u64 = 1;
static RANGE_START: [AtomicU64; MAX_RANGES] = [const { AtomicU64::new(0) }; MAX_RANGES];
static RANGE_END: [AtomicU64; MAX_RANGES] = [const { AtomicU64::new(0) }; MAX_RANGES];

/// A registration of a host range as guest memory; unregisters on drop.
#[derive(Debug)]
pub struct GuestRange {
    slot: Option<usize>,
}

impl GuestRange {
    /// Registers `[start, start+len)` so that faults there inside the safe routines
    /// become errors. Installs the fault handler first. When the table is full the
    /// range stays unprotected (a fault there crashes the VMM, as before this module);
    /// 256 live guest mappings is far above what one VMM process holds.
    pub fn register(start: u64, len: u64) -> GuestRange {
        install();
        let Some(end) = start.checked_add(len) else {
            return GuestRange { slot: None };
        };
        for (i, s) in RANGE_START.iter().enumerate() {
            if s.compare_exchange(0, BUSY, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                RANGE_END[i].store(end, Ordering::SeqCst);
                s.store(start, Ordering::SeqCst);
                return GuestRange { slot: Some(i) };
            }
        }
        tracing::warn!("safecopy: range table full; guest faults at {start:#x} are fatal");
        GuestRange { slot: None }
    }
}

impl Drop for GuestRange {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            RANGE_START[i].store(BUSY, Ordering::SeqCst);
            RANGE_END[i].store(0, Ordering::SeqCst);
            RANGE_START[i].store(0, Ordering::SeqCst);
        }
    }
}

fn in_guest(addr: u64) -> bool {
    RANGE_START.iter().zip(RANGE_END.iter()).any(|(s, e)| {
        let s = s.load(Ordering::SeqCst);
        s > BUSY && addr >= s && addr < e.load(Ordering::SeqCst)
    })
}

/// The actions SIGSEGV and SIGBUS had before ours: (handler, flags).
static OLD_SEGV: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
static OLD_BUS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

fn old_action(sig: libc::c_int) -> &'static [AtomicUsize; 2] {
    if sig == libc::SIGBUS {
        &OLD_BUS
    } else {
        &OLD_SEGV
    }
}

extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let start = ditto_safecopy_start as *const () as u64;
    let fixup = ditto_safecopy_fixup as *const () as u64;
    // SAFETY: the kernel passes a valid siginfo and ucontext to an SA_SIGINFO handler;
    // si_addr is the fault address for SIGSEGV/SIGBUS.
    unsafe {
        let uc = uc as *mut libc::ucontext_t;
        let rip = &mut (*uc).uc_mcontext.gregs[libc::REG_RIP as usize];
        let addr = (*info).si_addr() as u64;
        let rip_now = *rip as u64;
        if (start..fixup).contains(&rip_now) && in_guest(addr) {
            *rip = fixup as i64;
            return;
        }
        chain(sig, info, uc as *mut libc::c_void);
    }
}

/// Hands a fault that is not ours to the previous handler, or dies of it.
///
/// # Safety
///
/// Called only from `on_fault` with its arguments.
unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let old = old_action(sig);
    let handler = old[0].load(Ordering::SeqCst);
    let flags = old[1].load(Ordering::SeqCst) as libc::c_int;
    if handler != libc::SIG_DFL && handler != libc::SIG_IGN {
        if flags & libc::SA_SIGINFO != 0 {
            // SAFETY: the previous SA_SIGINFO handler has this signature.
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { std::mem::transmute(handler) };
            f(sig, info, uc);
        } else {
            // SAFETY: a plain handler takes the signal number.
            let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
            f(sig);
        }
        return;
    }
    // Default action: reset and raise; the signal is blocked while we run, so it is
    // delivered (and kills the process with a core) as soon as we return.
    // SAFETY: sigaction and raise are async-signal-safe; the struct is zeroed plain data.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &act, std::ptr::null_mut());
        libc::raise(sig);
    }
}

/// Installs the SIGSEGV/SIGBUS handler (once per process). [`GuestRange::register`]
/// calls it, so it is in place before any guest memory exists; the VMM also calls it
/// at start.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for sig in [libc::SIGSEGV, libc::SIGBUS] {
            // SAFETY: installing a handler with a zeroed, then filled, sigaction; the
            // old action is saved before ours can run (the store below happens before
            // any guest range is registered, and our handler only chains for faults
            // that are not ours).
            unsafe {
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = on_fault as *const () as usize;
                act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut act.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut old) == 0 {
                    old_action(sig)[0].store(old.sa_sigaction, Ordering::SeqCst);
                    old_action(sig)[1].store(old.sa_flags as usize, Ordering::SeqCst);
                }
                libc::sigaction(sig, &act, std::ptr::null_mut());
            }
        }
    });
}

/// Copies `len` bytes from `src` to `dst`; either may be guest memory.
///
/// # Safety
///
/// Both ranges must lie inside mappings (guest memory or VMM memory) that stay mapped
/// for the call; the guest part may fault, the VMM part must not.
pub unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) -> Result<(), SafeCopyError> {
    // SAFETY: the caller's contract; a guest fault returns 1 through the fixup.
    status(unsafe { ditto_safe_memcpy(dst, src, len) })
}

/// A 32-bit word in guest memory that the VMM accesses atomically and fault-safely:
/// futex words under `--det`.
#[derive(Clone, Copy, Debug)]
pub struct GuestU32<'a> {
    p: *mut u32,
    _life: PhantomData<&'a AtomicU32>,
}

impl<'a> From<&'a AtomicU32> for GuestU32<'a> {
    fn from(w: &'a AtomicU32) -> Self {
        GuestU32 {
            p: w.as_ptr(),
            _life: PhantomData,
        }
    }
}

impl GuestU32<'_> {
    /// Wraps a host pointer to a guest word.
    ///
    /// # Safety
    ///
    /// `p` must be 4-byte aligned and inside guest memory that stays mapped (possibly
    /// faulting) for the wrapper's life.
    pub unsafe fn from_ptr(p: *mut u32) -> Self {
        GuestU32 {
            p,
            _life: PhantomData,
        }
    }

    /// A sequentially consistent load (x86 loads are).
    pub fn load(&self) -> Result<u32, SafeCopyError> {
        let mut v = 0;
        // SAFETY: p is valid per from_ptr/From; a fault becomes an error.
        status(unsafe { ditto_safe_load32(self.p, &mut v) })?;
        Ok(v)
    }

    /// A sequentially consistent store.
    pub fn store(&self, v: u32) -> Result<(), SafeCopyError> {
        // SAFETY: as for load.
        status(unsafe { ditto_safe_store32(self.p, v) })
    }

    /// Compare-and-exchange: Ok(Ok(prev)) if swapped, Ok(Err(actual)) if not.
    pub fn compare_exchange(&self, cur: u32, new: u32) -> Result<Result<u32, u32>, SafeCopyError> {
        let mut prev = 0;
        // SAFETY: as for load.
        status(unsafe { ditto_safe_cas32(self.p, cur, new, &mut prev) })?;
        Ok(if prev == cur { Ok(prev) } else { Err(prev) })
    }
}

/// A 64-bit word in guest memory that the VMM accesses atomically and fault-safely:
/// the det page's slots.
#[derive(Clone, Copy, Debug)]
pub struct GuestU64<'a> {
    p: *mut u64,
    _life: PhantomData<&'a AtomicU64>,
}

impl<'a> From<&'a AtomicU64> for GuestU64<'a> {
    fn from(w: &'a AtomicU64) -> Self {
        GuestU64 {
            p: w.as_ptr(),
            _life: PhantomData,
        }
    }
}

impl GuestU64<'_> {
    /// Wraps a host pointer to a guest word.
    ///
    /// # Safety
    ///
    /// `p` must be 8-byte aligned and inside guest memory that stays mapped (possibly
    /// faulting) for the wrapper's life.
    pub unsafe fn from_ptr(p: *mut u64) -> Self {
        GuestU64 {
            p,
            _life: PhantomData,
        }
    }

    /// A sequentially consistent load.
    pub fn load(&self) -> Result<u64, SafeCopyError> {
        let mut v = 0;
        // SAFETY: p is valid per from_ptr/From; a fault becomes an error.
        status(unsafe { ditto_safe_load64(self.p, &mut v) })?;
        Ok(v)
    }

    /// A sequentially consistent store.
    pub fn store(&self, v: u64) -> Result<(), SafeCopyError> {
        // SAFETY: as for load.
        status(unsafe { ditto_safe_store64(self.p, v) })
    }

    /// Compare-and-exchange: Ok(Ok(prev)) if swapped, Ok(Err(actual)) if not.
    pub fn compare_exchange(&self, cur: u64, new: u64) -> Result<Result<u64, u64>, SafeCopyError> {
        let mut prev = 0;
        // SAFETY: as for load.
        status(unsafe { ditto_safe_cas64(self.p, cur, new, &mut prev) })?;
        Ok(if prev == cur { Ok(prev) } else { Err(prev) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two pages, the second PROT_NONE, registered as guest memory.
    struct Trap {
        base: *mut u8,
        _reg: GuestRange,
    }

    impl Trap {
        fn new() -> Trap {
            // SAFETY: a fresh anonymous mapping, checked below.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    8192,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(base, libc::MAP_FAILED);
            // SAFETY: our own mapping's second page.
            let r = unsafe { libc::mprotect(base.cast::<u8>().add(4096).cast(), 4096, 0) };
            assert_eq!(r, 0);
            Trap {
                base: base.cast(),
                _reg: GuestRange::register(base as u64, 8192),
            }
        }
    }

    impl Drop for Trap {
        fn drop(&mut self) {
            // SAFETY: unmapping the mapping made in new().
            unsafe { libc::munmap(self.base.cast(), 8192) };
        }
    }

    #[test]
    fn fault_on_prot_none_is_an_error() {
        let t = Trap::new();
        let mut buf = [0u8; 64];
        // SAFETY: both ranges are mapped; the source crosses into the PROT_NONE page.
        let r = unsafe { copy(buf.as_mut_ptr(), t.base.add(4096 - 16), 64) };
        assert_eq!(r, Err(SafeCopyError::Fault));
        // SAFETY: as above, a write into the PROT_NONE page.
        let r = unsafe { copy(t.base.add(4096 + 8), buf.as_ptr(), 8) };
        assert_eq!(r, Err(SafeCopyError::Fault));
        // SAFETY: the first page is readable and writable.
        let r = unsafe { copy(buf.as_mut_ptr(), t.base, 64) };
        assert_eq!(r, Ok(()));
        // SAFETY: aligned words inside the PROT_NONE page.
        let (w32, w64) = unsafe {
            (
                GuestU32::from_ptr(t.base.add(4096).cast()),
                GuestU64::from_ptr(t.base.add(4104).cast()),
            )
        };
        assert_eq!(w32.load(), Err(SafeCopyError::Fault));
        assert_eq!(w32.store(1), Err(SafeCopyError::Fault));
        assert_eq!(w32.compare_exchange(0, 1), Err(SafeCopyError::Fault));
        assert_eq!(w64.load(), Err(SafeCopyError::Fault));
        assert_eq!(w64.store(1), Err(SafeCopyError::Fault));
        assert_eq!(w64.compare_exchange(0, 1), Err(SafeCopyError::Fault));
    }

    #[test]
    fn atomics_work_on_good_memory() {
        let a = AtomicU32::new(5);
        let w = GuestU32::from(&a);
        assert_eq!(w.load(), Ok(5));
        assert_eq!(w.compare_exchange(4, 9), Ok(Err(5)));
        assert_eq!(w.compare_exchange(5, 9), Ok(Ok(5)));
        w.store(11).unwrap();
        assert_eq!(a.load(Ordering::SeqCst), 11);
        let b = AtomicU64::new(1 << 40);
        let w = GuestU64::from(&b);
        assert_eq!(w.load(), Ok(1 << 40));
        assert_eq!(w.compare_exchange(1 << 40, 3), Ok(Ok(1 << 40)));
        w.store(7).unwrap();
        assert_eq!(b.load(Ordering::SeqCst), 7);
    }

    #[test]
    fn copies_every_length() {
        let src: Vec<u8> = (0..=255).collect();
        for len in [0, 1, 7, 8, 255, 256] {
            let mut dst = vec![0u8; 256];
            // SAFETY: both buffers hold 256 bytes.
            unsafe { copy(dst.as_mut_ptr(), src.as_ptr(), len) }.unwrap();
            assert_eq!(&dst[..len], &src[..len]);
        }
    }
}
