//! Signal delivery on a worker: building a signal frame on the program's stack and
//! entering the handler (or the default action), and rt_sigreturn restoring the
//! interrupted context from that frame.

use kvm_ioctls::VcpuFd;

use devices::exit::ExitReason;
use devices::syscalls::sys_signal::signal_name;
use devices::syscalls::{ThreadAction, UserRegs};

use super::exits::Resume;
use super::worker::VcpuLocal;
use super::Machine;
use crate::{cpu, fpstate, signal_frame};

impl Machine {
    /// Runs the handler of the next deliverable signal of `tid`, whose interrupted
    /// context is `ctx`; or applies its default action.
    pub(super) fn deliver_signal(
        &self,
        vcpu: &mut VcpuFd,
        local: &mut VcpuLocal,
        tid: i64,
        ctx: &UserRegs,
        resume: Resume,
    ) -> ThreadAction {
        let signals = &self.process.signals;
        while let Some((sig, old_mask)) = signals.take_deliverable(tid) {
            // Taken, even if ignored below: a POSIX timer may send this signal again. (Its
            // siginfo fields are not in the frame: signals here carry only their number.)
            let _ = self.process.ptimers.delivered(sig, tid);
            let act = self.process.sigaction(sig);
            if act.handler == libc::SIG_IGN as u64
                || (act.handler == libc::SIG_DFL as u64 && devices::signals::default_ignored(sig))
            {
                continue;
            }
            if act.handler == libc::SIG_DFL as u64 {
                self.process.finish(ExitReason::Signaled {
                    signal: sig,
                    report: String::new(),
                });
                return ThreadAction::Stop;
            }
            // The interrupted FPU state goes into the frame; if KVM cannot read it, the
            // handler's return resets it rather than restore another thread's.
            let fpu = vcpu
                .get_fpu()
                .map_or([0; fpstate::FXSAVE_SIZE], |f| fpstate::to_fxsave(&f));
            let alt = signals.altstack(tid);
            let frame = signal_frame::build(&self.process.mem, ctx, sig, &act, old_mask, &fpu, alt);
            let handler = match frame {
                Ok(h) => {
                    if let Some(rep) = self.process.replication.get() {
                        rep.trace_signal(&self.process, tid, sig);
                    }
                    h
                }
                Err(_) => {
                    self.fatal_program(
                        libc::SIGSEGV,
                        format!(
                            "thread {tid} killed by SIGSEGV: no room on its stack (rsp={:#x}) for a {} handler",
                            ctx.rsp,
                            signal_name(sig)
                        ),
                    );
                    return ThreadAction::Stop;
                }
            };
            let nodefer = act.flags & libc::SA_NODEFER as u64 != 0;
            let during = old_mask
                | act.mask
                | if nodefer {
                    0
                } else {
                    devices::signals::bit(sig)
                };
            signals.set_mask(tid, during);
            if act.flags & libc::SA_RESETHAND as u64 != 0 {
                self.process.set_sigaction(sig, Default::default());
            }
            if !self.set_context(vcpu, local, resume, &handler) {
                return ThreadAction::Stop;
            }
            return ThreadAction::Continue;
        }
        // Nothing deliverable after all: resume the interrupted context as it was, with
        // the mask a sigsuspend replaced.
        signals.restore_saved_mask(tid);
        if resume != Resume::User {
            self.set_context(vcpu, local, resume, ctx);
        }
        ThreadAction::Continue
    }

    /// rt_sigreturn: restores the context saved by `deliver_signal`.
    pub(super) fn sigreturn(
        &self,
        vcpu: &mut VcpuFd,
        local: &mut VcpuLocal,
        tid: i64,
        rsp: u64,
        resume: Resume,
    ) -> ThreadAction {
        match signal_frame::restore(&self.process.mem, rsp) {
            Ok(frame) => {
                self.process.signals.set_mask(tid, frame.mask);
                let fpu = frame
                    .fpu
                    .map_or_else(cpu::initial_fpu, |b| fpstate::from_fxsave(&b));
                let _ = vcpu.set_fpu(&fpu);
                if self.set_context(vcpu, local, resume, &frame.regs) {
                    ThreadAction::Continue
                } else {
                    ThreadAction::Stop
                }
            }
            Err(_) => {
                self.fatal_program(
                    libc::SIGSEGV,
                    format!("thread {tid} killed by SIGSEGV: rt_sigreturn with a bad frame at rsp={rsp:#x}"),
                );
                ThreadAction::Stop
            }
        }
    }
}
