//! `ditto pair` without a program: the demo, a replicated redis driven by a short built-in
//! load, then stopped as a user's Ctrl-C would.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use replica::role::Mode;

use super::{main, PairArgs};
use crate::cmd::EXIT_HOST_ERROR;
use replica::supervisor::block_forwarded_signals;

/// The image the demo runs when `ditto pair` is given no program.
const DEMO_IMAGE: &str = "redis";
/// Requests the demo's built-in client makes.
const DEMO_REQUESTS: usize = 300;

/// `ditto pair` without a program: redis (built on first use) as a pair on a free port,
/// a short load from a built-in client (SET, GET, INCR, LPUSH, EXPIRE, DEBUG DIGEST), then
/// SIGTERM, and the report's summary.
pub(super) fn demo(a: &PairArgs) -> ExitCode {
    let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => {
            eprintln!("ditto: cannot find a free port: {e}");
            return ExitCode::from(EXIT_HOST_ERROR);
        }
    };
    eprintln!(
        "ditto: no program given; running the demo: the {DEMO_IMAGE} image as a pair ({} mode) on 127.0.0.1:{port}, {DEMO_REQUESTS} requests, then SIGTERM",
        Mode::from(a.options.mode).name()
    );
    let mut program = a.program.clone();
    program.image = Some(DEMO_IMAGE.into());
    program.command = vec!["--port".into(), port.to_string().into()];
    let args = PairArgs {
        options: a.options.clone(),
        primary_cores: a.primary_cores.clone(),
        secondary_cores: a.secondary_cores.clone(),
        report: a.report.clone(),
        out: a.out.clone(),
        status: a.status,
        quiet: a.quiet,
        stall_timeout: a.stall_timeout,
        metrics: a.metrics,
        kill_primary_after: a.kill_primary_after.clone(),
        kill_secondary_after: a.kill_secondary_after.clone(),
        program,
    };
    // The load runs beside the supervisor; when done it asks the supervisor to stop the
    // primary, exactly as a user's Ctrl-C would. Blocked first, so that the SIGTERM reaches
    // the supervisor's forwarder and no other thread.
    block_forwarded_signals();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = demo_load(port);
        // SAFETY: signalling our own process; the supervisor's forwarder takes SIGTERM.
        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        let _ = tx.send(r);
    });
    let code = main(&args);
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(n)) => eprintln!("ditto: demo: {n} requests answered"),
        Ok(Err(e)) => eprintln!("ditto: demo load failed: {e}"),
        Err(_) => eprintln!("ditto: demo load did not finish"),
    }
    code
}

/// Speaks RESP to redis: `DEMO_REQUESTS` commands, every reply checked.
fn demo_load(port: u16) -> std::io::Result<usize> {
    use std::io::{BufRead, BufReader, Write};
    // The first run builds the image from Debian packages, which takes a while.
    let deadline = Instant::now() + Duration::from_secs(600);
    let stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let mut call = |parts: &[&str]| -> std::io::Result<String> {
        let mut req = format!("*{}\r\n", parts.len());
        for p in parts {
            req.push_str(&format!("${}\r\n{p}\r\n", p.len()));
        }
        w.write_all(req.as_bytes())?;
        let mut line = String::new();
        r.read_line(&mut line)?;
        if let Some(n) = line
            .strip_prefix('$')
            .and_then(|n| n.trim().parse::<usize>().ok())
        {
            let mut body = vec![0u8; n + 2];
            std::io::Read::read_exact(&mut r, &mut body)?;
            return Ok(String::from_utf8_lossy(&body[..n]).into_owned());
        }
        if line.starts_with('-') {
            return Err(std::io::Error::other(line.trim().to_string()));
        }
        Ok(line.trim().to_string())
    };
    let mut n = 0;
    for i in 0..DEMO_REQUESTS / 3 {
        let k = format!("key:{}", i % 16);
        call(&["SET", &k, &i.to_string()])?;
        call(&["INCR", "counter"])?;
        call(&["LPUSH", "list", &k])?;
        n += 3;
    }
    call(&["EXPIRE", "list", "600"])?;
    let digest = call(&["DEBUG", "DIGEST"])?;
    eprintln!("ditto: demo: DEBUG DIGEST {digest}");
    Ok(n + 2)
}
