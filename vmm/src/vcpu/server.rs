//! The doorbell servers (see `crate::doorbell` for the protocol): one host thread per
//! vCPU that switched to the exitless syscall path, which waits on the vCPU's ioeventfd
//! (or polls its data page right after an answer), serves the request through the
//! syscall table or bounces it to the trap path, and acknowledges it. Also the vCPU
//! side's switch between trapping and the doorbell (`enable_doorbell`,
//! `review_doorbell`, `fall_back_to_trap`).
//!
//! The wait is a plain blocking `read` of one eventfd per server, not an epoll loop:
//! see ARCHITECTURE.md on why event-manager is not used here.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_ioctls::{IoEventAddress, NoDatamatch, VcpuFd};
use vmm_sys_util::eventfd::EventFd;

use devices::sync::lock;
use devices::syscalls::sys_det;
use devices::syscalls::{CpuOps, SyscallCtx, ThreadAction, ThreadStart, ThreadState, UserRegs};
use devices::Errno;

use super::pool::{num_cpus, pin_current_thread, spawn_host_thread, HostThread};
use super::regs::set_msrs;
use super::worker::VcpuLocal;
use super::Machine;
use crate::{cpu, doorbell, layout};

/// The server thread has no vCPU: calls that need one are bounced before dispatch,
/// so these are never reached; refusing keeps a mistake visible.
struct ServerOps;

impl CpuOps for ServerOps {
    fn set_fs_base(&mut self, _: u64) -> Result<(), Errno> {
        Err(Errno::ENOSYS)
    }

    fn spawn_thread(&mut self, _: ThreadStart) -> Result<(), Errno> {
        Err(Errno::ENOSYS)
    }
}

impl Machine {
    /// Under `--det`, a call that may wait (for the token, an emulated futex, or the
    /// outside world) is served on the vCPU thread: a hand-off then wakes one thread,
    /// not a server thread and then a vCPU thread. Calls that go ahead at once (det_end,
    /// det_tick, a det_start or det point by the token holder, det-free calls) stay on
    /// the doorbell and cost no exit.
    pub(super) fn det_must_bounce(&self, tid: i64, req: &doorbell::Request) -> bool {
        let Some(det) = self.process.det.get() else {
            return false;
        };
        if req.nr == sys_det::abi::DITTO_SYS_DET_END || req.nr == sys_det::abi::DITTO_SYS_DET_TICK {
            return false;
        }
        let is_start = req.nr == sys_det::abi::DITTO_SYS_DET_START;
        match sys_det::det_kind(req.nr) {
            _ if is_start => !det.can_proceed(tid),
            sys_det::DetKind::Free => false,
            sys_det::DetKind::Futex | sys_det::DetKind::External | sys_det::DetKind::Clone => true,
            _ => doorbell::may_block(req.nr, &req.args) || !det.can_proceed(tid),
        }
    }

    /// Starts vCPU `index`'s doorbell server: its eventfd is signalled by KVM when
    /// the shim writes the doorbell address.
    fn start_server(
        self: &Arc<Self>,
        index: u64,
        current: Arc<Mutex<ThreadState>>,
    ) -> Result<HostThread, Errno> {
        let mem_size = self.process.mem.size();
        let evt = EventFd::new(libc::EFD_CLOEXEC).map_err(Errno::from)?;
        self.vm
            .register_ioevent(
                &evt,
                &IoEventAddress::Mmio(doorbell::doorbell_addr(mem_size, index)),
                NoDatamatch,
            )
            .map_err(|e| Errno(e.errno()))?;
        let page = doorbell::shim_page(mem_size, index);
        self.process
            .mem
            .write_system(doorbell::trap_bitmap_addr(page), &doorbell::trap_bitmap())
            .ok_or(Errno::ENOMEM)?;
        self.process
            .mem
            .write_system(
                page,
                &doorbell::shim(page, doorbell::doorbell_addr(mem_size, index)),
            )
            .ok_or(Errno::ENOMEM)?;
        let data = self
            .process
            .mem
            .system_range(page + 4096, 4096)
            .ok_or(Errno::ENOMEM)?;
        let data = doorbell::DataPage::new(data);
        // Read before the vCPU can make a request, so the first one is never taken
        // for an old one.
        let last = data.seq();
        let machine = self.clone();
        spawn_host_thread(format!("server{index}"), move || {
            devices::seccomp::apply_or_exit(devices::seccomp::Kind::Server);
            machine.serve_doorbell(evt, data, last, current)
        })
    }

    /// The doorbell server loop: one request at a time, for whichever program thread
    /// runs on this vCPU.
    fn serve_doorbell(
        self: &Arc<Self>,
        evt: EventFd,
        data: doorbell::DataPage,
        mut last: u64,
        current: Arc<Mutex<ThreadState>>,
    ) {
        if let Some(c) = &self.cores {
            pin_current_thread(c);
        }
        // Polling for the next request right after answering one saves the eventfd
        // wake-up (most of a doorbell's cost) for back-to-back syscalls; it is bounded
        // and off when the program is pinned to one core, where it would only steal
        // the vCPU's time.
        let poll = self.cores.as_ref().map_or(num_cpus() > 1, |c| c.len() > 1);
        let mut poll_until: Option<Instant> = None;
        let mut answered = Instant::now();
        let mut wake_stats = doorbell::WakeStats::new(
            *self.tsc_per_us.get_or_init(doorbell::tsc_per_us),
            self.trap_round_trip(),
        );
        while !self.process.exiting() {
            let req = data.request();
            if req.seq == last {
                match poll_until {
                    Some(t) if Instant::now() < t => {
                        std::hint::spin_loop();
                        continue;
                    }
                    Some(_) => {
                        // Stop polling, then look once more: the shim may have seen
                        // "polling" and skipped the doorbell just before.
                        data.set_polling(false);
                        poll_until = None;
                        continue;
                    }
                    None => {}
                }
                let mut count = 0u64;
                // A raw read: EventFd::read retries on EINTR, which would make the
                // shutdown kick useless.
                // SAFETY: reading 8 bytes into a u64 from our own eventfd.
                unsafe {
                    libc::read(
                        evt.as_raw_fd(),
                        &mut count as *mut u64 as *mut libc::c_void,
                        8,
                    )
                };
                continue;
            }
            last = req.seq;
            let arrived = Instant::now();
            // Only wake-ups count: a request found while polling cost no wake-up.
            if poll_until.is_none() && wake_stats.record(data.ring_tsc()) && !self.doorbell_pinned {
                data.set_want_trap(true);
            }
            let tid = lock(&current).tid;
            if doorbell::must_bounce(req.nr)
                || self.process.signals.has_deliverable(tid)
                || data.want_trap()
                || self.det_must_bounce(tid, &req)
            {
                data.set_polling(false);
                poll_until = None;
                data.complete(req.seq, 0, doorbell::Outcome::Bounced);
                continue;
            }
            let user = UserRegs {
                rax: req.nr,
                rdi: req.args[0],
                rsi: req.args[1],
                rdx: req.args[2],
                r10: req.args[3],
                r8: req.args[4],
                r9: req.args[5],
                rip: req.rip,
                rcx: req.rip,
                ..Default::default()
            };
            let blocking = doorbell::may_block(req.nr, &req.args);
            data.mark_request(blocking);
            let mut thread = lock(&current);
            let mut ops = ServerOps;
            let mut ctx = SyscallCtx {
                process: &self.process,
                nr: req.nr,
                thread: &mut thread,
                regs: &user,
                cpu: &mut ops,
                action: ThreadAction::Continue,
                reentry_at: None,
            };
            let ret = self.table.dispatch(&mut ctx, req.nr, req.args);
            drop(thread);
            if blocking {
                data.set_blocking(false);
            }
            self.process
                .stats
                .doorbell_syscalls
                .fetch_add(1, Ordering::Relaxed);
            // Poll for the next request only in a syscall-dense phase: a call that
            // blocked, or one that came after a long gap, suggests the thread is
            // computing or waiting, and polling would only take a core from it.
            let dense = arrived.duration_since(answered) < doorbell::POLL_WINDOW;
            if poll && !blocking && dense {
                data.set_polling(true);
                poll_until = Some(Instant::now() + doorbell::POLL_WINDOW);
            }
            // A signal the call left for this thread (it signalled itself, or the signal
            // came while it was served) is taken on the call's return, as on Linux, not
            // at some later exit: a handler that leaves by siglongjmp would otherwise
            // jump from a later call into a frame that has returned.
            let outcome = if self.process.signals.has_deliverable(tid) {
                doorbell::Outcome::AnsweredThenSignal
            } else {
                doorbell::Outcome::Answered
            };
            data.complete(req.seq, ret, outcome);
            answered = Instant::now();
        }
    }

    /// Moves this vCPU to the doorbell path: starts its server and points LSTAR at its
    /// shim. Done lazily, after `SWITCH_AFTER` trapped syscalls, because registering
    /// an ioeventfd makes VM teardown ~10 ms slower, which short programs should not
    /// pay. A failure just keeps the #PF path.
    pub(super) fn enable_doorbell(
        self: &Arc<Self>,
        vcpu: &VcpuFd,
        local: &mut VcpuLocal,
        current: &Arc<Mutex<ThreadState>>,
    ) {
        if !local.server_started {
            let server = match self.start_server(local.index, current.clone()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(vcpu = local.index, %e, "doorbell unavailable, staying on the #PF path");
                    local.doorbell_failed = true;
                    return;
                }
            };
            if let Some(w) = lock(&self.pool).workers.get_mut(local.index as usize) {
                w.threads.push(server);
            }
            local.server_started = true;
        }
        let shim = doorbell::shim_page(self.process.mem.size(), local.index);
        if set_msrs(vcpu, &[(cpu::msr::LSTAR, shim)]).is_ok() {
            local.doorbell_on = true;
            local.slow_waits = 0;
            local.seq_at_switch = self.data_page(local.index).map_or(0, |d| d.seq());
        }
    }

    /// Goes back to trapping when the doorbell is slower: on a busy host the server
    /// thread waits for a core, and every call ends in the shim's sleep path anyway.
    pub(super) fn review_doorbell(
        &self,
        vcpu: &VcpuFd,
        local: &mut VcpuLocal,
        data: &doorbell::DataPage,
    ) {
        let requests = data.seq().saturating_sub(local.seq_at_switch);
        if requests < 256 || self.doorbell_pinned {
            return;
        }
        if local.slow_waits * 4 > requests {
            tracing::debug!(
                vcpu = local.index,
                requests,
                slow = local.slow_waits,
                "doorbell slower than trapping"
            );
            self.fall_back_to_trap(vcpu, local);
        }
        local.seq_at_switch = data.seq();
        local.slow_waits = 0;
    }

    /// Points LSTAR back at the trap page and waits longer before the next try.
    pub(super) fn fall_back_to_trap(&self, vcpu: &VcpuFd, local: &mut VcpuLocal) {
        if set_msrs(vcpu, &[(cpu::msr::LSTAR, layout::LSTAR_PAGE)]).is_ok() {
            local.doorbell_on = false;
            local.trapped = 0;
            local.switch_after = (local.switch_after * 4).min(1 << 20);
        }
    }

    /// Host access to vCPU `index`'s doorbell data page.
    pub(super) fn data_page(&self, index: u64) -> Option<doorbell::DataPage> {
        let page = doorbell::shim_page(self.process.mem.size(), index) + 4096;
        self.process
            .mem
            .system_range(page, 4096)
            .map(doorbell::DataPage::new)
    }
}
