//! The exitless syscall path on kvm_pvm ("doorbell", DESIGN.md §1).
//!
//! On kvm_pvm a trapped syscall costs ~35 µs, most of it the userspace exit of a vCPU
//! running natively at CPL3. The doorbell avoids that exit: each vCPU's LSTAR points
//! at its own CPL3 shim, which stores the syscall's registers in a data page, writes
//! to an MMIO address that KVM turns into an eventfd signal in the kernel (~3 µs, no
//! userspace exit), and spins on an acknowledgement. A host "server" thread per vCPU
//! waits on that eventfd, serves the call through the same syscall table, and writes
//! the result and the acknowledgement.
//!
//! Two escapes keep it correct:
//! - calls that need the vCPU itself (clone, exit, arch_prctl...) are *bounced*: the
//!   server answers "bounce" and the shim re-issues the call through the #PF path;
//! - a spin that runs out (a blocking call, or no free core) jumps to a
//!   supervisor-only address; the #PF reaches the VMM's vCPU thread, which sleeps on
//!   a futex until the server acknowledges, so blocked calls do not burn a core.
//!
//! The shim and data page are program-writable: this is a replication monitor, not a
//! sandbox, and a program that scribbles on them only breaks itself (the server
//! checks every pointer as usual). The VMM stays the authority on every result.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::layout;

/// Bytes of user memory at the top of guest memory reserved for shims and data pages.
pub const AREA_SIZE: u64 = 2 * 4096 * layout::MAX_VCPUS;
/// Spin iterations (each a `pause`) before the shim gives up and sleeps in the VMM.
pub const SPIN_LIMIT: u32 = 4000;
/// How long a server keeps polling for the next request after answering one.
pub const POLL_WINDOW: std::time::Duration = std::time::Duration::from_micros(50);
/// Trapped syscalls a vCPU makes before it switches to the doorbell.
pub const SWITCH_AFTER: u64 = 64;
/// Supervisor-only address the shim jumps to when its spin runs out.
pub const WAIT_ADDR: u64 = layout::LSTAR_PAGE + 0x800;

/// Offsets in the data page.
mod off {
    pub const SEQ: u64 = 0x00;
    pub const ACK: u64 = 0x08;
    pub const NR: u64 = 0x10;
    pub const ARGS: u64 = 0x18;
    pub const RET: u64 = 0x48;
    pub const BOUNCE: u64 = 0x50;
    pub const RIP: u64 = 0x58;
    pub const WAITING: u64 = 0x60;
    pub const POLLING: u64 = 0x68;
    pub const BLOCKING: u64 = 0x70;
    pub const LAST_BLOCKING: u64 = 0x78;
    pub const RING_TSC: u64 = 0x80;
    pub const WANT_TRAP: u64 = 0x88;
    /// 512-bit bitmap: syscall numbers the shim sends straight to the trap path.
    pub const TRAP_BITMAP: u64 = 0x100;
}

/// Where in the data page the thread's time ring lies (ditto.h; a pair with time rings,
/// `devices::time_ring`): the rest of the page, past the doorbell's own words.
pub const TIME_RING_OFFSET: u64 = 0x200;
const _: () = assert!(off::TRAP_BITMAP + 64 <= TIME_RING_OFFSET);
const _: () = assert!(TIME_RING_OFFSET + devices::time_ring::SIZE <= 4096);

/// Where vCPU `index`'s shim page is, for guest memory of `mem_size` bytes.
pub fn shim_page(mem_size: u64, index: u64) -> u64 {
    mem_size - AREA_SIZE + index * 2 * 4096
}

/// The doorbell MMIO address of vCPU `index` (just past RAM; see cpu::build_system_area).
pub fn doorbell_addr(mem_size: u64, index: u64) -> u64 {
    mem_size + index * 8
}

/// A tiny x86-64 encoder for the shim, with RIP-relative references to the data page.
struct Asm {
    code: Vec<u8>,
    base: u64,
    data: u64,
}

impl Asm {
    fn rex(reg: u8) -> u8 {
        0x48 | if reg >= 8 { 4 } else { 0 }
    }
    fn disp(&self, field: u64, extra: u64) -> [u8; 4] {
        let next = self.base + self.code.len() as u64 + 4 + extra;
        ((self.data + field).wrapping_sub(next) as i64 as i32).to_le_bytes()
    }
    /// mov %reg, field(%rip)
    fn store(&mut self, reg: u8, field: u64) {
        self.code
            .extend_from_slice(&[Self::rex(reg), 0x89, ((reg & 7) << 3) | 5]);
        let d = self.disp(field, 0);
        self.code.extend_from_slice(&d);
    }
    /// mov field(%rip), %reg
    fn load(&mut self, reg: u8, field: u64) {
        self.code
            .extend_from_slice(&[Self::rex(reg), 0x8b, ((reg & 7) << 3) | 5]);
        let d = self.disp(field, 0);
        self.code.extend_from_slice(&d);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.code.extend_from_slice(b);
    }
    fn movabs_r11(&mut self, imm: u64) {
        self.code.extend_from_slice(&[0x49, 0xbb]);
        self.code.extend_from_slice(&imm.to_le_bytes());
    }
}

const RAX: u8 = 0;
const RCX: u8 = 1;
const RDX: u8 = 2;
const RSI: u8 = 6;
const RDI: u8 = 7;
const R8: u8 = 8;
const R9: u8 = 9;
const R10: u8 = 10;

/// The shim for one vCPU. It clobbers only rax, rcx and r11, which `syscall`
/// clobbers anyway, and never touches the program's stack (the red zone is safe).
pub fn shim(shim_page: u64, doorbell: u64) -> Vec<u8> {
    let mut a = Asm {
        code: Vec::new(),
        base: shim_page,
        data: shim_page + 4096,
    };
    // Calls that wait for the outside world trap directly: the vCPU thread then waits
    // itself, one wake-up instead of the server's and then the vCPU thread's.
    a.bytes(&[0x48, 0x3d, 0x00, 0x02, 0x00, 0x00]); // cmp $512, %rax
    let jae_at = a.code.len();
    a.bytes(&[0x73, 0x00]); // jae ring (patched)
    a.bytes(&[0x48, 0x0f, 0xa3, 0x05]); // bt %rax, TRAP_BITMAP(%rip)
    let d = a.disp(off::TRAP_BITMAP, 0);
    a.bytes(&d);
    let jnc_at = a.code.len();
    a.bytes(&[0x73, 0x00]); // jnc ring (patched)
    a.movabs_r11(layout::LSTAR_PAGE);
    a.bytes(&[0x41, 0xff, 0xe3]); // jmp *%r11: the #PF syscall path
    let ring = a.code.len();
    a.code[jae_at + 1] = (ring - (jae_at + 2)) as u8;
    a.code[jnc_at + 1] = (ring - (jnc_at + 2)) as u8;
    a.store(RAX, off::NR);
    for (i, r) in [RDI, RSI, RDX, R10, R8, R9].into_iter().enumerate() {
        a.store(r, off::ARGS + 8 * i as u64);
    }
    a.store(RCX, off::RIP);
    // Time the ring (rdtsc runs natively at CPL3), so the server can tell how long
    // the wake-up took; rdtsc clobbers rdx, which is reloaded from the data page.
    a.bytes(&[0x0f, 0x31]); // rdtsc
    a.bytes(&[0x48, 0xc1, 0xe2, 0x20]); // shl $32, %rdx
    a.bytes(&[0x48, 0x09, 0xd0]); // or %rdx, %rax
    a.store(RAX, off::RING_TSC);
    a.load(RDX, off::ARGS + 16);
    a.load(RAX, off::SEQ);
    a.bytes(&[0x48, 0xff, 0xc0]); // inc %rax
    a.store(RAX, off::SEQ);
    // Skip the doorbell while the server polls. mfence orders the SEQ store before
    // the POLLING load; the server clears POLLING and then rechecks SEQ, so one of
    // the two always sees the other.
    a.bytes(&[0x0f, 0xae, 0xf0]); // mfence
    a.bytes(&[0x48, 0x83, 0x3d]); // cmpq $0, POLLING(%rip)
    let d = a.disp(off::POLLING, 1);
    a.bytes(&d);
    a.bytes(&[0x00]);
    let skip_at = a.code.len();
    a.bytes(&[0x75, 0x00]); // jne after the doorbell (patched)
    a.movabs_r11(doorbell);
    a.bytes(&[0x49, 0x89, 0x03]); // mov %rax, (%r11): the doorbell
    let after = a.code.len();
    a.code[skip_at + 1] = (after - (skip_at + 2)) as u8;
    a.bytes(&[0x41, 0xbb]); // mov $SPIN_LIMIT, %r11d
    a.bytes(&SPIN_LIMIT.to_le_bytes());
    let spin = a.code.len();
    // cmp ACK(%rip), %rax
    a.bytes(&[0x48, 0x3b, 0x05]);
    let d = a.disp(off::ACK, 0);
    a.bytes(&d);
    let je_at = a.code.len();
    a.bytes(&[0x74, 0x00]); // je done (patched)
                            // A call the server expects to block: stop spinning and sleep in the VMM now.
    a.bytes(&[0x48, 0x83, 0x3d]); // cmpq $0, BLOCKING(%rip)
    let d = a.disp(off::BLOCKING, 1);
    a.bytes(&d);
    a.bytes(&[0x00]);
    let jne_wait_at = a.code.len();
    a.bytes(&[0x75, 0x00]); // jne wait (patched)
    a.bytes(&[0xf3, 0x90]); // pause
    a.bytes(&[0x49, 0xff, 0xcb]); // dec %r11
    let back = spin as i64 - (a.code.len() as i64 + 2);
    a.bytes(&[0x75, back as i8 as u8]); // jne spin
    let wait = a.code.len();
    a.code[jne_wait_at + 1] = (wait - (jne_wait_at + 2)) as u8;
    a.movabs_r11(WAIT_ADDR);
    a.bytes(&[0x41, 0xff, 0xe3]); // jmp *%r11: sleep in the VMM
    let done = a.code.len();
    a.code[je_at + 1] = (done - (je_at + 2)) as u8;
    // cmpq $ANSWERED, BOUNCE(%rip)
    a.bytes(&[0x48, 0x83, 0x3d]);
    let d = a.disp(off::BOUNCE, 1);
    a.bytes(&d);
    a.bytes(&[Outcome::Answered as u8]);
    let jne_at = a.code.len();
    a.bytes(&[0x75, 0x00]); // jne not_answered (patched)
    a.load(RAX, off::RET);
    a.bytes(&[0xff, 0xe1]); // jmp *%rcx
    let not_answered = a.code.len();
    a.code[jne_at + 1] = (not_answered - (jne_at + 2)) as u8;
    // An answer with a signal to deliver: leave through the VMM's sleep path, which finds
    // the answer at once and delivers the signal on the call's return, as Linux does
    // (rax still holds the sequence number the sleep path expects).
    a.bytes(&[0x48, 0x83, 0x3d]); // cmpq $ANSWERED_THEN_SIGNAL, BOUNCE(%rip)
    let d = a.disp(off::BOUNCE, 1);
    a.bytes(&d);
    a.bytes(&[Outcome::AnsweredThenSignal as u8]);
    let back = wait as i64 - (a.code.len() as i64 + 2);
    a.bytes(&[0x74, back as i8 as u8]); // je wait
    a.load(RAX, off::NR);
    a.movabs_r11(layout::LSTAR_PAGE);
    a.bytes(&[0x41, 0xff, 0xe3]); // jmp *%r11: the #PF syscall path
    a.code
}

/// How the server answered a request: the value of the data page's BOUNCE word, which
/// the shim reads (part of the shim's ABI with the server).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Outcome {
    /// The call was served; the shim returns RET to the program without an exit.
    Answered = 0,
    /// The call needs the vCPU: the shim re-issues it through the #PF path.
    Bounced = 1,
    /// The call was served and left a signal the calling thread must take on its
    /// return (a self-directed kill or tgkill, say): the shim exits to the VMM, which
    /// returns RET and delivers the signal first, as Linux does.
    AnsweredThenSignal = 2,
}

/// The server's record of how fast it answers rings. On a busy 2-core host the
/// server thread may wait for a core after each ring, and then trapping (one exit,
/// ~35 µs) is cheaper than the doorbell; the server notices and asks to switch back.
#[derive(Debug)]
pub struct WakeStats {
    tsc_per_us: f64,
    slow_us: f64,
    count: u64,
    slow: u64,
}

/// A wake-up slower than this makes trapping the better path, where the trap path's own
/// round trip was not measured.
const SLOW_WAKE_US: f64 = 30.0;

impl WakeStats {
    /// Starts counting, with the TSC rate measured by [`tsc_per_us`]; a wake-up slower
    /// than `trap`, the trap path's round trip where it was measured, is slow: trapping
    /// would have answered sooner.
    pub fn new(tsc_per_us: f64, trap: Option<std::time::Duration>) -> Self {
        WakeStats {
            tsc_per_us,
            slow_us: trap.map_or(SLOW_WAKE_US, |t| t.as_secs_f64() * 1e6),
            count: 0,
            slow: 0,
        }
    }

    /// Records one woken (not polled) request rung at `ring_tsc`; returns true when
    /// over the last 256 such requests more than a quarter were slow.
    pub fn record(&mut self, ring_tsc: u64) -> bool {
        // SAFETY: rdtsc has no preconditions on x86-64.
        let now = unsafe { std::arch::x86_64::_rdtsc() };
        let us = now.saturating_sub(ring_tsc) as f64 / self.tsc_per_us;
        self.count += 1;
        if us > self.slow_us {
            self.slow += 1;
        }
        if self.count < 256 {
            return false;
        }
        let too_slow = self.slow * 4 > self.count;
        self.count = 0;
        self.slow = 0;
        too_slow
    }
}

/// TSC ticks per microsecond, measured over a short sleep.
pub fn tsc_per_us() -> f64 {
    let t0 = std::time::Instant::now();
    // SAFETY: rdtsc has no preconditions on x86-64.
    let c0 = unsafe { std::arch::x86_64::_rdtsc() };
    std::thread::sleep(std::time::Duration::from_millis(2));
    // SAFETY: as above.
    let c1 = unsafe { std::arch::x86_64::_rdtsc() };
    let us = t0.elapsed().as_secs_f64() * 1e6;
    ((c1 - c0) as f64 / us).max(1.0)
}

/// A request read from a data page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Sequence number the shim wrote.
    pub seq: u64,
    /// Syscall number.
    pub nr: u64,
    /// Arguments.
    pub args: [u64; 6],
    /// Return address.
    pub rip: u64,
}

/// Typed access to one vCPU's data page, through atomics: the program's vCPU and
/// the server thread use it concurrently.
pub struct DataPage {
    base: *mut u8,
}

// SAFETY: the page lives in guest memory, which outlives every thread using it; all
// accesses are atomic.
unsafe impl Send for DataPage {}

impl DataPage {
    /// Wraps the host address of a data page (from GuestMemory::system_range).
    pub fn new(host: *mut u8) -> Self {
        DataPage { base: host }
    }

    fn word(&self, field: u64) -> &AtomicU64 {
        // SAFETY: base is a page-aligned host pointer into guest memory that lives as
        // long as the VM; field offsets are 8-aligned and inside the page.
        unsafe { AtomicU64::from_ptr(self.base.add(field as usize) as *mut u64) }
    }

    /// The latest request.
    pub fn request(&self) -> Request {
        let seq = self.word(off::SEQ).load(Ordering::Acquire);
        let mut args = [0u64; 6];
        for (i, a) in args.iter_mut().enumerate() {
            *a = self.word(off::ARGS + 8 * i as u64).load(Ordering::Relaxed);
        }
        Request {
            seq,
            nr: self.word(off::NR).load(Ordering::Relaxed),
            args,
            rip: self.word(off::RIP).load(Ordering::Relaxed),
        }
    }

    /// Publishes the outcome of `seq` (with its result `ret`, unless bounced) and wakes a
    /// sleeping vCPU thread.
    pub fn complete(&self, seq: u64, ret: u64, outcome: Outcome) {
        self.word(off::RET).store(ret, Ordering::Relaxed);
        self.word(off::BOUNCE)
            .store(outcome as u64, Ordering::Relaxed);
        self.word(off::ACK).store(seq, Ordering::SeqCst);
        if self.word(off::WAITING).load(Ordering::SeqCst) != 0 {
            let p = self.word(off::ACK).as_ptr();
            // SAFETY: futex wake on a word of guest memory we own.
            unsafe { libc::syscall(libc::SYS_futex, p, libc::FUTEX_WAKE, i32::MAX) };
        }
    }

    /// Sleeps until the request `seq` is acknowledged (the shim's spin ran out).
    /// Returns false if interrupted (the program is stopping).
    pub fn wait_ack(&self, seq: u64, stopping: impl Fn() -> bool) -> bool {
        let ack = self.word(off::ACK);
        self.word(off::WAITING).store(1, Ordering::SeqCst);
        let mut ok = true;
        loop {
            let cur = ack.load(Ordering::SeqCst);
            if cur == seq {
                break;
            }
            if stopping() {
                ok = false;
                break;
            }
            // The futex word is ACK's low half (little-endian).
            let p = ack.as_ptr() as *const u32;
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 50_000_000,
            };
            // SAFETY: futex wait on guest memory we own, with a timeout.
            unsafe { libc::syscall(libc::SYS_futex, p, libc::FUTEX_WAIT, cur as u32, &ts) };
        }
        self.word(off::WAITING).store(0, Ordering::SeqCst);
        ok
    }

    /// Tells the shim that the call being served may block for long, so it should
    /// sleep in the VMM instead of spinning.
    pub fn set_blocking(&self, on: bool) {
        self.word(off::BLOCKING).store(on as u64, Ordering::SeqCst);
    }

    /// Records, before serving a request, whether it is expected to block.
    pub fn mark_request(&self, blocking: bool) {
        self.word(off::LAST_BLOCKING)
            .store(blocking as u64, Ordering::SeqCst);
        self.set_blocking(blocking);
    }

    /// Whether the last request was one expected to block (then sleeping in the VMM
    /// was intended, not a sign of a slow server).
    pub fn last_was_blocking(&self) -> bool {
        self.word(off::LAST_BLOCKING).load(Ordering::SeqCst) != 0
    }

    /// Tells the shim whether the server is polling (then it skips the doorbell).
    pub fn set_polling(&self, on: bool) {
        self.word(off::POLLING).store(on as u64, Ordering::SeqCst);
    }

    /// TSC value the shim read just before ringing.
    pub fn ring_tsc(&self) -> u64 {
        self.word(off::RING_TSC).load(Ordering::Acquire)
    }

    /// The server asks the vCPU thread to go back to trapping (see `WakeStats`).
    pub fn set_want_trap(&self, on: bool) {
        self.word(off::WANT_TRAP).store(on as u64, Ordering::SeqCst);
    }

    /// Whether the server asked to go back to trapping.
    pub fn want_trap(&self) -> bool {
        self.word(off::WANT_TRAP).load(Ordering::SeqCst) != 0
    }

    /// The sequence number the shim last wrote.
    pub fn seq(&self) -> u64 {
        self.word(off::SEQ).load(Ordering::Acquire)
    }

    /// The result and outcome of the last completed request.
    pub fn result(&self) -> (u64, Outcome) {
        let outcome = match self.word(off::BOUNCE).load(Ordering::Acquire) {
            0 => Outcome::Answered,
            2 => Outcome::AnsweredThenSignal,
            _ => Outcome::Bounced,
        };
        (self.word(off::RET).load(Ordering::Acquire), outcome)
    }

    /// The syscall number of the last request.
    pub fn nr(&self) -> u64 {
        self.word(off::NR).load(Ordering::Acquire)
    }

    /// The return address of the last request.
    pub fn rip(&self) -> u64 {
        self.word(off::RIP).load(Ordering::Acquire)
    }
}

/// Syscalls that usually wait for something (another thread, a client, a timer):
/// spinning on them only takes a core from the threads that would end the wait.
pub fn may_block(nr: u64, args: &[u64; 6]) -> bool {
    match nr as i64 {
        libc::SYS_futex => matches!(
            args[1] as i32 & libc::FUTEX_CMD_MASK,
            libc::FUTEX_WAIT | libc::FUTEX_WAIT_BITSET
        ),
        libc::SYS_accept
        | libc::SYS_accept4
        | libc::SYS_epoll_wait
        | libc::SYS_epoll_pwait
        | libc::SYS_epoll_pwait2
        | libc::SYS_poll
        | libc::SYS_ppoll
        | libc::SYS_select
        | libc::SYS_pselect6
        | libc::SYS_nanosleep
        | libc::SYS_clock_nanosleep
        | libc::SYS_rt_sigtimedwait
        | libc::SYS_pause
        | libc::SYS_rt_sigsuspend
        | libc::SYS_wait4
        | libc::SYS_connect => true,
        _ => false,
    }
}

/// The shim's bitmap of syscalls that go straight to the trap path: those that wait for
/// the outside world (readiness, accept, sleeps, signal waits). futex waits are not here:
/// they are often short, and the server's "blocking" hint covers the long ones.
pub fn trap_bitmap() -> [u8; 64] {
    let mut bits = [0u8; 64];
    for nr in [
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
        libc::SYS_poll,
        libc::SYS_ppoll,
        libc::SYS_select,
        libc::SYS_pselect6,
        libc::SYS_accept,
        libc::SYS_accept4,
        libc::SYS_nanosleep,
        libc::SYS_clock_nanosleep,
        libc::SYS_rt_sigtimedwait,
        libc::SYS_pause,
        libc::SYS_rt_sigsuspend,
        libc::SYS_wait4,
    ] {
        bits[nr as usize / 8] |= 1 << (nr % 8);
    }
    bits
}

/// Where the bitmap goes: the data page of the shim at `shim_page`.
pub fn trap_bitmap_addr(shim_page: u64) -> u64 {
    shim_page + 4096 + off::TRAP_BITMAP
}

/// Syscalls the server cannot serve because they act on the calling vCPU.
pub fn must_bounce(nr: u64) -> bool {
    matches!(
        nr as i64,
        libc::SYS_clone
            | libc::SYS_exit
            | libc::SYS_exit_group
            | libc::SYS_arch_prctl
            | libc::SYS_rt_sigreturn
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 256 wake-ups of ~100 "µs" (one TSC tick per µs): slow only against a faster trap.
    fn verdict(trap: Option<std::time::Duration>) -> bool {
        let mut w = WakeStats::new(1.0, trap);
        (0..256).fold(false, |_, _| {
            // SAFETY: rdtsc has no preconditions on x86-64.
            let now = unsafe { std::arch::x86_64::_rdtsc() };
            w.record(now - 100)
        })
    }

    #[test]
    fn a_wake_up_is_slow_only_against_the_measured_trap() {
        use std::time::Duration;
        assert!(!verdict(Some(Duration::from_millis(1))));
        assert!(verdict(Some(Duration::from_micros(50))));
        // Unmeasured: the fixed 30 µs.
        assert!(verdict(None));
    }

    #[test]
    fn shim_fits_and_references_data_page() {
        let base = 0x1_0000_0000 - AREA_SIZE;
        let code = shim(base, 0x1_0000_0000);
        assert!(code.len() < 4096);
        // The prefix: cmp $512,%rax; jae; bt %rax,BITMAP(%rip); jnc; movabs; jmp *%r11.
        assert_eq!(&code[..6], &[0x48, 0x3d, 0x00, 0x02, 0x00, 0x00]);
        assert_eq!(&code[8..12], &[0x48, 0x0f, 0xa3, 0x05]);
        assert_eq!(
            i32::from_le_bytes(code[12..16].try_into().unwrap()) as u64,
            4096 + off::TRAP_BITMAP - 16
        );
        let p = 31; // after the 31-byte prefix
                    // The first store puts rax at data+NR.
        assert_eq!(&code[p..p + 3], &[0x48, 0x89, 0x05]);
        assert_eq!(
            i32::from_le_bytes(code[p + 3..p + 7].try_into().unwrap()) as u64,
            4096 + 0x10 - (p as u64 + 7)
        );
        // Stores are 7 bytes each: rax, rdi, rsi, rdx, then r10, which needs REX.R
        // and lands at data+ARGS+24.
        let r10 = p + 28;
        assert_eq!(&code[r10..r10 + 3], &[0x4c, 0x89, 0x15]);
        assert_eq!(
            i32::from_le_bytes(code[r10 + 3..r10 + 7].try_into().unwrap()) as u64,
            4096 + off::ARGS + 24 - (r10 as u64 + 7)
        );
        let bits = trap_bitmap();
        assert_ne!(
            bits[libc::SYS_epoll_wait as usize / 8] & (1 << (libc::SYS_epoll_wait % 8)),
            0
        );
        assert_eq!(
            bits[libc::SYS_read as usize / 8] & (1 << (libc::SYS_read % 8)),
            0
        );
    }

    #[test]
    fn bounce_set() {
        assert!(must_bounce(libc::SYS_clone as u64));
        assert!(!must_bounce(libc::SYS_getpid as u64));
    }
}
