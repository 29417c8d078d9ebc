//! The pool of vCPU workers: spawning a program thread on an idle vCPU or a new one,
//! the host threads (workers and doorbell servers) the shutdown must stop, and the
//! shutdown itself. The pool's side of the worker state machine (see the module docs
//! of `vcpu`): an index in `Pool::idle` is a worker that is `Idle` or about to be;
//! `Pool::closed` means every worker is headed for `Stopped`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::sync::lock;
use devices::syscalls::{ThreadStart, ThreadState};
use devices::Errno;

use super::kick::kick_signal;
use super::Machine;
use crate::layout;

/// A host thread the shutdown must stop: a vCPU thread or a doorbell server.
pub(super) struct HostThread {
    /// Set by the thread itself as its last act.
    pub(super) done: Arc<AtomicBool>,
    /// None once joined.
    pub(super) join: Option<JoinHandle<()>>,
}

/// One vCPU's host threads and the channel that hands its worker a program thread.
pub(super) struct Worker {
    /// None once the pool is closed: the worker's `recv` then fails and it stops.
    start_tx: Option<Sender<ThreadStart>>,
    /// The worker thread first, then its doorbell server if it started one.
    pub(super) threads: Vec<HostThread>,
}

/// Every vCPU's worker, by vCPU index.
#[derive(Default)]
pub(super) struct Pool {
    /// Indexed by vCPU index.
    pub(super) workers: Vec<Worker>,
    /// Workers offered for reuse (pushed by an exiting thread's worker).
    pub(super) idle: Vec<usize>,
    /// Set by shutdown: no more threads start.
    closed: bool,
}

/// Starts a named host thread whose `done` flag it sets when `f` returns.
pub(super) fn spawn_host_thread(
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> Result<HostThread, Errno> {
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let join = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            f();
            done2.store(true, Ordering::SeqCst);
        })
        .map_err(|_| Errno::EAGAIN)?;
    Ok(HostThread {
        done,
        join: Some(join),
    })
}

/// Host CPUs this process may use.
pub(super) fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Pins the calling thread to `cores` (the `--cores` option).
pub(super) fn pin_current_thread(cores: &[usize]) {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays in bounds for indices < 1024,
    // which the CLI checked.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cores {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

impl Machine {
    /// Starts a program thread on an idle vCPU, or on a new one.
    pub fn spawn(self: &Arc<Self>, start: ThreadStart) -> Result<(), Errno> {
        let mut pool = lock(&self.pool);
        if pool.closed {
            return Err(Errno::EAGAIN);
        }
        let mut start = start;
        if let Some(i) = pool.idle.pop() {
            let Some(tx) = pool.workers[i].start_tx.as_ref() else {
                return Err(Errno::EAGAIN);
            };
            match tx.send(start) {
                Ok(()) => return Ok(()),
                // The idle worker is gone; start the thread on a new vCPU instead.
                Err(e) => start = e.0,
            }
        }
        let index = pool.workers.len() as u64;
        if index >= layout::MAX_VCPUS {
            return Err(Errno::EAGAIN);
        }
        let vcpu = self.vm.create_vcpu(index).map_err(|e| Errno(e.errno()))?;
        self.process
            .stats
            .vcpus_created
            .fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = channel::<ThreadStart>();
        tx.send(start).map_err(|_| Errno::EAGAIN)?;
        let current = Arc::new(Mutex::new(ThreadState::default()));
        let mut threads = Vec::new();
        let machine = self.clone();
        threads.push(spawn_host_thread(format!("vcpu{index}"), move || {
            devices::seccomp::apply_or_exit(devices::seccomp::Kind::Vcpu);
            machine.worker(vcpu, index, rx, current)
        })?);
        pool.workers.push(Worker {
            start_tx: Some(tx),
            threads,
        });
        Ok(())
    }

    /// Stops every vCPU thread and joins them: idle ones see their channel close,
    /// running or blocked ones are kicked (repeatedly, so a kick that lands just
    /// before a blocking call is retried). Returns the number that did not stop
    /// within `timeout`.
    pub fn shutdown(&self, timeout: Duration) -> usize {
        let mut workers = {
            let mut pool = lock(&self.pool);
            pool.closed = true;
            pool.idle.clear();
            for w in pool.workers.iter_mut() {
                w.start_tx = None;
            }
            std::mem::take(&mut pool.workers)
                .into_iter()
                .flat_map(|w| w.threads)
                .collect::<Vec<HostThread>>()
        };
        let deadline = Instant::now() + timeout;
        loop {
            let mut running = 0;
            for w in &workers {
                if !w.done.load(Ordering::SeqCst) {
                    running += 1;
                    if let Some(j) = &w.join {
                        use std::os::unix::thread::JoinHandleExt;
                        // SAFETY: the thread is joinable (not yet joined), so its
                        // pthread_t is valid even if it has just exited.
                        unsafe { libc::pthread_kill(j.as_pthread_t(), kick_signal()) };
                    }
                }
            }
            if running == 0 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut stuck = 0;
        for w in workers.iter_mut() {
            if w.done.load(Ordering::SeqCst) {
                if let Some(j) = w.join.take() {
                    let _ = j.join();
                }
            } else {
                stuck += 1;
            }
        }
        stuck
    }
}
