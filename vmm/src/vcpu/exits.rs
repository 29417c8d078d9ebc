//! Serving one exit of a worker's exit loop: the syscall ports (the #PF trap, the
//! VMX/SVM LSTAR stub, and the doorbell shim's sleep when its spin ran out), exceptions
//! turned into fault reports, the syscall dispatch on the vCPU thread, and how the
//! program's context is set when it resumes (`Resume`).

use std::sync::{Arc, Mutex};

use kvm_ioctls::{SyncReg, VcpuFd};

use devices::sync::lock;
use devices::syscalls::sys_signal::signal_name;
use devices::syscalls::{CpuOps, SyscallCtx, ThreadAction, ThreadStart, ThreadState, UserRegs};
use devices::Errno;

use super::regs::{set_msrs, to_kvm, to_user};
use super::worker::VcpuLocal;
use super::Machine;
use crate::cpu::{self, EXC_PORT_BASE, SYSCALL_PORT};
use crate::{doorbell, layout};

/// Where the program resumes after the VMM handled an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Resume {
    /// The vCPU was interrupted at CPL3 (a kick).
    User,
    /// In the #PF handler at CPL0; its iretq uses the exception frame at this address.
    Frame(u64),
    /// In the LSTAR stub at CPL0 (VMX/SVM); its sysretq uses RCX/R11.
    Stub,
}

/// The vCPU-side operations the syscall layer may ask for.
struct VcpuOps<'a> {
    vcpu: &'a VcpuFd,
    machine: &'a Arc<Machine>,
}

impl CpuOps for VcpuOps<'_> {
    fn set_fs_base(&mut self, base: u64) -> Result<(), Errno> {
        set_msrs(self.vcpu, &[(cpu::msr::FS_BASE, base)]).map_err(|_| Errno::EPERM)
    }

    fn spawn_thread(&mut self, start: ThreadStart) -> Result<(), Errno> {
        self.machine.spawn(start)
    }
}

impl Machine {
    /// Serves an exit through I/O port `port`: a syscall, or an exception vector.
    pub(super) fn on_port(
        self: &Arc<Self>,
        vcpu: &mut VcpuFd,
        local: &mut VcpuLocal,
        current: &Arc<Mutex<ThreadState>>,
        port: u16,
    ) -> ThreadAction {
        let regs = vcpu.sync_regs_mut().regs;
        let mut guard = lock(current);
        let thread: &mut ThreadState = &mut guard;
        if port == SYSCALL_PORT {
            let mut user = to_user(&regs);
            user.rip = regs.rcx;
            user.rflags = regs.r11;
            drop(guard);
            return self.syscall(vcpu, local, current, user, Resume::Stub);
        }
        if !(EXC_PORT_BASE..EXC_PORT_BASE + 32).contains(&port) {
            self.fatal_program(
                libc::SIGSEGV,
                format!(
                    "thread {} killed by SIGSEGV: I/O to port {port:#x} at rip={:#x}",
                    thread.tid, regs.rip
                ),
            );
            return ThreadAction::Stop;
        }
        let vec = (port - EXC_PORT_BASE) as u8;
        let mem = &self.process.mem;
        let frame = regs.rsp;
        let read = |i: u64| mem.read_system_u64(frame + 8 * i).unwrap_or(0);
        let (err, frip, fcs, fflags, frsp) = (read(0), read(1), read(2), read(3), read(4));
        if vec == 14 && frip == doorbell::WAIT_ADDR && fcs & 3 == 3 && self.doorbell() {
            // The shim's spin ran out: sleep until the server answers, without
            // holding the thread state the server needs.
            drop(guard);
            let page = doorbell::shim_page(mem.size(), local.index) + 4096;
            let Some(host) = mem.system_range(page, 4096) else {
                return ThreadAction::Stop;
            };
            let data = doorbell::DataPage::new(host);
            if !data.wait_ack(regs.rax, || self.process.exiting()) {
                return ThreadAction::Stop;
            }
            let (ret, outcome) = data.result();
            let bounce = outcome == doorbell::Outcome::Bounced;
            // Leaving through here to take a signal says nothing about the server's speed.
            if !data.last_was_blocking() && outcome != doorbell::Outcome::AnsweredThenSignal {
                local.slow_waits += 1;
            }
            self.review_doorbell(vcpu, local, &data);
            let mut user = to_user(&regs);
            user.rsp = frsp;
            user.rip = data.rip();
            user.rflags = fflags;
            if bounce {
                user.rax = data.nr();
                return self.syscall(vcpu, local, current, user, Resume::Frame(frame));
            }
            let tid = lock(current).tid;
            mem.write_system_u64(frame + 8, data.rip());
            vcpu.sync_regs_mut().regs.rax = ret;
            vcpu.set_sync_dirty_reg(SyncReg::Register);
            if self.process.signals.has_deliverable(tid) {
                user.rax = ret;
                return self.deliver_signal(vcpu, local, tid, &user, Resume::Frame(frame));
            }
            return ThreadAction::Continue;
        }
        if vec == 14 && frip == layout::LSTAR_PAGE && fcs & 3 == 3 {
            let mut user = to_user(&regs);
            user.rsp = frsp;
            user.rip = regs.rcx;
            // The frame's RFLAGS, not R11: after a doorbell bounce the shim has used
            // R11 as scratch.
            user.rflags = fflags;
            drop(guard);
            let action = self.syscall(vcpu, local, current, user, Resume::Frame(frame));
            local.trapped += 1;
            if local.doorbell_on {
                if let Some(data) = self.data_page(local.index).filter(|d| d.want_trap()) {
                    data.set_want_trap(false);
                    self.fall_back_to_trap(vcpu, local);
                }
            }
            if !local.doorbell_on
                && !local.doorbell_failed
                && local.trapped >= local.switch_after
                && self.doorbell()
            {
                self.enable_doorbell(vcpu, local, current);
            }
            return action;
        }
        let signal = cpu::vector_signal(vec);
        let mut detail = format!("{} ", cpu::vector_name(vec));
        if vec == 14 {
            let cr2 = vcpu.get_sregs().map(|s| s.cr2).unwrap_or(0);
            let access = if err & 0x10 != 0 {
                "exec"
            } else if err & 2 != 0 {
                "write"
            } else {
                "read"
            };
            let why = if err & 1 != 0 {
                "protection"
            } else {
                "not present"
            };
            detail.push_str(&format!("at address {cr2:#x} ({access}, {why})"));
        } else {
            detail.push_str(&format!("at address {frip:#x}"));
        }
        self.fatal_program(
            signal,
            format!(
                "thread {} killed by {}: {detail}, rip={frip:#x} rsp={frsp:#x}",
                thread.tid,
                signal_name(signal)
            ),
        );
        ThreadAction::Stop
    }

    /// Serves a syscall trapped on this vCPU (`user` is the program's context with
    /// `rip` the return address), with signal delivery before it (a pending signal
    /// runs its handler first and the syscall restarts after) and after it.
    pub(super) fn syscall(
        self: &Arc<Self>,
        vcpu: &mut VcpuFd,
        local: &mut VcpuLocal,
        current: &Arc<Mutex<ThreadState>>,
        user: UserRegs,
        resume: Resume,
    ) -> ThreadAction {
        let tid = lock(current).tid;
        // A replicated program takes asynchronous signals only right after a Recorded or
        // Compared call, where the replication layer names them (devices::replication).
        let replicated = self.process.replication.get().is_some_and(|r| !r.is_live());
        if !replicated
            && self.process.signals.has_deliverable(tid)
            && user.rax as i64 != libc::SYS_rt_sigreturn
        {
            // Deliver first; the handler returns to the `syscall` instruction again.
            let restart = UserRegs {
                rip: user.rip.wrapping_sub(2),
                ..user
            };
            return self.deliver_signal(vcpu, local, tid, &restart, resume);
        }
        let (ret, action, signal_after) = {
            let mut guard = lock(current);
            let (ret, action) = self.serve(vcpu, &mut guard, &user);
            (ret, action, guard.signal_after.take())
        };
        if action == ThreadAction::SigReturn {
            return self.sigreturn(vcpu, local, tid, user.rsp, resume);
        }
        self.set_return(vcpu, resume, &user, ret);
        let deliver = if replicated {
            signal_after.is_some()
        } else {
            self.process.signals.has_deliverable(tid)
        };
        if action == ThreadAction::Continue && deliver && !self.process.exiting() {
            let after = UserRegs { rax: ret, ..user };
            return self.deliver_signal(vcpu, local, tid, &after, resume);
        }
        action
    }

    /// The common case: only RAX (and the return address) change.
    fn set_return(&self, vcpu: &mut VcpuFd, resume: Resume, user: &UserRegs, ret: u64) {
        if let Resume::Frame(frame) = resume {
            // The handler's iretq returns to the instruction after `syscall`.
            self.process.mem.write_system_u64(frame + 8, user.rip);
        }
        vcpu.sync_regs_mut().regs.rax = ret;
        vcpu.set_sync_dirty_reg(SyncReg::Register);
    }

    /// Makes the program resume with exactly `u` (all GPRs, rip, rsp, rflags).
    pub(super) fn set_context(
        &self,
        vcpu: &mut VcpuFd,
        local: &VcpuLocal,
        resume: Resume,
        u: &UserRegs,
    ) -> bool {
        let mut k = to_kvm(u);
        match resume {
            Resume::User => {}
            Resume::Frame(frame) => {
                // Stay in the #PF handler: its iretq takes rip/rflags/rsp from the frame.
                let mem = &self.process.mem;
                mem.write_system_u64(frame + 8, u.rip);
                mem.write_system_u64(frame + 24, u.rflags);
                mem.write_system_u64(frame + 32, u.rsp);
                let cur = vcpu.sync_regs_mut().regs;
                k.rsp = cur.rsp;
                k.rip = cur.rip;
                k.rflags = cur.rflags;
            }
            Resume::Stub => {
                // sysretq would clobber RCX/R11: leave the stub and enter CPL3 directly.
                if vcpu
                    .set_sregs(&cpu::user_sregs(local.base_sregs, local.index))
                    .is_err()
                {
                    return false;
                }
            }
        }
        vcpu.sync_regs_mut().regs = k;
        vcpu.set_sync_dirty_reg(SyncReg::Register);
        true
    }

    /// Dispatches the syscall in `user` through the table, on the vCPU thread.
    fn serve(
        self: &Arc<Self>,
        vcpu: &VcpuFd,
        thread: &mut ThreadState,
        user: &UserRegs,
    ) -> (u64, ThreadAction) {
        let mut ops = VcpuOps {
            vcpu,
            machine: self,
        };
        let mut ctx = SyscallCtx {
            process: &self.process,
            nr: user.rax,
            thread,
            regs: user,
            cpu: &mut ops,
            action: ThreadAction::Continue,
            reentry_at: None,
        };
        let args = [user.rdi, user.rsi, user.rdx, user.r10, user.r8, user.r9];
        let ret = self.table.dispatch(&mut ctx, user.rax, args);
        (ret, ctx.action)
    }
}
