//! The processes a benchmark starts: the ditto executable, a free port, a child that is
//! always stopped (by its own PID, then its descendants') and commands bounded in time.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The running ditto executable, to start runs of it.
pub(crate) fn ditto_exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("ditto"))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> Result<u16, String> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port())
}

/// A process this benchmark started; stopped by its own PID only (and, if it must be
/// killed, the processes it started, found by PID under /proc).
pub(crate) struct Proc(Option<Child>);

/// How a [`Proc`] ended when it was stopped.
pub(crate) struct Stopped {
    /// Its exit status, `None` when it could not be waited for.
    pub(crate) status: Option<ExitStatus>,
    /// Whether it had to be killed after the grace period.
    pub(crate) killed: bool,
    /// Its stderr, when that was piped.
    pub(crate) stderr: String,
}

/// The processes `pid` started, from /proc/PID/task/TID/children.
pub(crate) fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for k in kids
            .split_whitespace()
            .filter_map(|k| k.parse::<u32>().ok())
        {
            if !out.contains(&k) {
                out.push(k);
            }
        }
    }
    out
}

/// The processes below `pid` (children first, then theirs).
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for k in children(p) {
            if !out.contains(&k) {
                out.push(k);
                todo.push(k);
            }
        }
    }
    out
}

/// Polls `c` until it exits or `timeout` passes.
fn wait_child(c: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match c.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

impl Proc {
    /// Wraps a child this benchmark spawned.
    pub(crate) fn new(child: Child) -> Proc {
        Proc(Some(child))
    }

    /// Its PID, unless it was already waited for.
    pub(crate) fn id(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_child(self.0.as_mut()?, timeout)
    }

    /// Waits up to 60 s for something to accept connections on 127.0.0.1:`port`; an error
    /// if the process exits first.
    pub(crate) fn wait_port(&mut self, port: u16) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if let Some(c) = self.0.as_mut() {
                if let Ok(Some(s)) = c.try_wait() {
                    return Err(format!("server exited early: {s}"));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("nothing listened on {port} within 60 s"))
    }

    /// SIGTERM, bounded wait, and the process's stderr.
    pub(crate) fn stop(self) -> String {
        self.terminate(Duration::from_secs(20)).stderr
    }

    /// SIGTERM to the process (unless it already exited), up to `grace` for it to exit;
    /// then SIGKILL to the processes it started (so that a supervisor such as `ditto pair`
    /// sees them end and can still write its report), 5 s more, and SIGKILL to it.
    pub(crate) fn terminate(mut self, grace: Duration) -> Stopped {
        let Some(mut c) = self.0.take() else {
            return Stopped {
                status: None,
                killed: false,
                stderr: String::new(),
            };
        };
        let mut status = c.try_wait().ok().flatten();
        if status.is_none() {
            // SAFETY: signalling a child this benchmark started and has not yet waited for.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            status = wait_child(&mut c, grace);
        }
        let killed = status.is_none();
        if killed {
            for pid in descendants(c.id()) {
                // SAFETY: a process that our child started (read from /proc just now).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            status = wait_child(&mut c, Duration::from_secs(5));
            if status.is_none() {
                let _ = c.kill();
            }
        }
        let stderr = c
            .wait_with_output()
            .map(|o| {
                status = status.or(Some(o.status));
                String::from_utf8_lossy(&o.stderr).into_owned()
            })
            .unwrap_or_default();
        Stopped {
            status,
            killed,
            stderr,
        }
    }
}

/// Runs a command to its end, with its stdout and stderr captured; kills it (by its PID)
/// after `timeout`.
pub(crate) fn output_bounded(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{name}: {e}"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let status = wait_child(&mut child, timeout);
    let timed_out = status.is_none();
    let status = match status {
        Some(s) => s,
        None => {
            let _ = child.kill();
            child.wait().map_err(|e| format!("{name}: {e}"))?
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if timed_out {
        return Err(format!(
            "{name} did not finish within {} s",
            timeout.as_secs()
        ));
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
