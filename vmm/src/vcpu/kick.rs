//! The kick: a real-time signal that takes a worker out of KVM_RUN (through
//! `kvm_run.immediate_exit`) and makes its blocking host calls return EINTR, for signal
//! delivery to a running program thread and for shutdown.

use std::cell::Cell;
use std::sync::atomic::Ordering;

use kvm_bindings::kvm_run;

use devices::sync::lock;

use super::Machine;

/// The signal used to kick vCPU threads out of KVM_RUN and blocking host calls.
pub fn kick_signal() -> i32 {
    libc::SIGRTMIN() + 2
}

thread_local! {
    /// This thread's kvm_run, for the kick handler to set `immediate_exit`.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// Makes `run` (the calling worker's kvm_run, or null when it stops) the mapping the
/// kick handler marks on this thread.
pub(super) fn set_kvm_run(run: *mut kvm_run) {
    KVM_RUN.with(|c| c.set(run));
}

extern "C" fn on_kick(_: libc::c_int) {
    let p = KVM_RUN.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: p is this thread's own kvm_run mapping, alive while the worker runs;
        // immediate_exit is a plain byte KVM reads at the next KVM_RUN.
        unsafe { std::ptr::addr_of_mut!((*p).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler (no SA_RESTART, so blocking host calls return EINTR).
pub fn install_kick_handler() -> std::io::Result<()> {
    // SAFETY: a plain sigaction with an async-signal-safe handler.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(kick_signal(), &sa, std::ptr::null_mut()) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Interrupts the host threads running a program thread, so it reaches a signal
/// delivery point: its vCPU leaves KVM_RUN, its blocking host calls return EINTR.
pub struct MachineKicker(pub std::sync::Weak<Machine>);

impl devices::signals::Kicker for MachineKicker {
    fn kick(&self, tid: i64) {
        let Some(m) = self.0.upgrade() else { return };
        let Some(index) = lock(&m.running).get(&tid).copied() else {
            return;
        };
        let pool = lock(&m.pool);
        if let Some(w) = pool.workers.get(index) {
            for t in &w.threads {
                if let (false, Some(j)) = (t.done.load(Ordering::SeqCst), &t.join) {
                    use std::os::unix::thread::JoinHandleExt;
                    // SAFETY: the thread is joinable, so its pthread_t is valid.
                    unsafe { libc::pthread_kill(j.as_pthread_t(), kick_signal()) };
                }
            }
        }
    }
}
