//! The workloads of `ditto bench pair`, each in every configuration: pbzip2 as a batch run,
//! redis, nginx and mongoose as servers under a bounded load, and the channel alone.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use guest_images::image::{self, BuildOptions};

use super::{sample, stop, with_stderr, Config, Ctx, Row, Sample, CONFIGS, CONSUMER_ENV};
use crate::bench::proc::{ditto_exe, free_port, Proc};
use crate::bench::servers::{
    mongoose_state, native_cmd, native_mongoose, native_nginx, native_redis, nginx_state,
    pbzip2_input, redis_benchmark, test_body, wrk_with,
};

/// One batch run (pbzip2) in `dir` that does `requests` units of work: wall seconds,
/// bounded by `timeout`.
fn batch(
    ctx: &mut Ctx,
    cfg: Config,
    (what, native): (&str, Command),
    dir: &Path,
    (args, requests): (&[String], f64),
    timeout: Duration,
) -> Result<Sample, String> {
    let out = ctx.out_dir(what, cfg)?;
    let mut cmd = ctx.command(cfg, &out, ("pbzip2", native), false, args)?;
    cmd.current_dir(dir);
    let t = Instant::now();
    let mut p = Proc::new(
        cmd.spawn()
            .map_err(|e| format!("cannot start ditto: {e}"))?,
    );
    let status = p.wait_exit(timeout);
    let wall = t.elapsed().as_secs_f64();
    let measured = match status {
        None => {
            let s = p.terminate(Duration::from_secs(10));
            let how = if s.killed { "; killed" } else { "" };
            Err((
                "timeout".to_string(),
                format!("still running after {} s{how}", timeout.as_secs()),
            ))
        }
        // A pair's 3 (diverged) and 4 (replica failed) are explained by its report.
        Some(st)
            if st.success()
                || (cfg.pair_mode().is_some()
                    && [
                        crate::cmd::pair::EXIT_DIVERGED,
                        crate::cmd::pair::EXIT_REPLICA_FAILED,
                    ]
                    .map(i32::from)
                    .contains(&st.code().unwrap_or(0))) =>
        {
            Ok((wall, requests))
        }
        Some(st) => Err(("failed".to_string(), with_stderr(st, &out))),
    };
    let s = sample(measured, None, &out, cfg);
    ctx.done(&out, &s, what, cfg);
    Ok(s)
}

/// A server workload: the image, its arguments and state files for a port, and the load.
struct Server<'a> {
    image: &'static str,
    /// The native server on a port, with the run's directory for its files.
    native: &'a dyn Fn(&Path, u16) -> Result<Command, String>,
    args: &'a dyn Fn(u16) -> Vec<String>,
    prepare: &'a dyn Fn(&Path, u16) -> Result<(), String>,
    /// Requests per second and the number of requests.
    load: &'a dyn Fn(u16) -> Result<(f64, f64), String>,
}

/// One server run: start, wait for the port, load, stop.
fn serve(ctx: &mut Ctx, cfg: Config, what: &str, srv: &Server) -> Result<Sample, String> {
    let out = ctx.out_dir(what, cfg)?;
    let port = free_port()?;
    for state in Ctx::state_dirs(cfg, &out) {
        (srv.prepare)(&state, port)?;
    }
    let native = (srv.native)(&out, port)?;
    let args = if cfg == Config::Native {
        Vec::new()
    } else {
        (srv.args)(port)
    };
    let mut cmd = ctx.command(cfg, &out, (srv.image, native), true, &args)?;
    let mut p = Proc::new(
        cmd.spawn()
            .map_err(|e| format!("cannot start ditto: {e}"))?,
    );
    let (measured, ended) = match p.wait_port(port) {
        // wait_port's error says how the server ended when it ended by itself.
        Err(e) => (Err(("no server".to_string(), with_stderr(e, &out))), true),
        Ok(()) => (
            (srv.load)(port).map_err(|e| ("load failed".to_string(), e)),
            false,
        ),
    };
    if !ended {
        // Bounded; a server that keeps a connection open is stopped anyway.
        replica::testkit::wait_connections_closed(port, Duration::from_secs(10));
    }
    let note = stop(p, cfg, &out, ended);
    let s = sample(measured, note, &out, cfg);
    ctx.done(&out, &s, what, cfg);
    Ok(s)
}

pub(super) fn pbzip2_rows(ctx: &mut Ctx, mb: usize) -> Result<Vec<Row>, String> {
    let img = image::open("pbzip2", &BuildOptions::default()).map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    pbzip2_input(dir.path(), mb)?;
    let mut rows = Vec::new();
    // pbzip2's unit of work: its default 900,000-byte blocks.
    let blocks = ((mb << 20) as f64 / 900_000.0).ceil();
    for (threads, thesis) in [(2, ("0.89%", "14.27%")), (4, ("4.08%", "29.47%"))] {
        let what = format!("pbzip2 -p{threads} {mb} MB");
        let mut row = Row::new(what.clone(), "s", false, thesis);
        let args: Vec<String> = vec![format!("-p{threads}"), "-c".into(), "data".into()];
        for _ in 0..ctx.reps {
            for (i, cfg) in CONFIGS.into_iter().enumerate() {
                // Ten times the single VM's time, at least a minute.
                let base = row.cells[Config::Run.index()].median().unwrap_or(mb as f64);
                let timeout = Duration::from_secs_f64((base * 10.0).max(60.0));
                let mut native = native_cmd(&img, "/usr/bin/pbzip2");
                native.current_dir(dir.path());
                let work = (args.as_slice(), blocks);
                let s = batch(ctx, cfg, (&what, native), dir.path(), work, timeout)?;
                row.cells[i].add(s);
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

fn server_rows(
    ctx: &mut Ctx,
    what: &str,
    thesis: (&'static str, &'static str),
    srv: &Server,
) -> Result<Row, String> {
    let mut row = Row::new(what.to_string(), "req/s", true, thesis);
    for _ in 0..ctx.reps {
        for (i, cfg) in CONFIGS.into_iter().enumerate() {
            let s = serve(ctx, cfg, what, srv)?;
            row.cells[i].add(s);
        }
    }
    Ok(row)
}

pub(super) fn redis_rows(ctx: &mut Ctx, n: u64) -> Result<Vec<Row>, String> {
    let img = image::open("redis", &BuildOptions::default()).map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for (clients, thesis) in [
        (2, ("11.9%", "30.4%")),
        (16, ("26.9%", "41.1%")),
        (50, ("—", "—")),
    ] {
        // SET and GET, n each, at no less than 50 requests a second.
        let timeout = Duration::from_secs(30 + 2 * n / 50);
        let load = move |port| redis_benchmark(port, n, clients, 1, timeout);
        let img = &img;
        let srv = Server {
            image: "redis",
            native: &|dir, port| native_redis(img, dir, port),
            args: &|port| vec!["--port".into(), port.to_string()],
            prepare: &|_, _| Ok(()),
            load: &load,
        };
        let what = format!("redis set,get -n {n} -c {clients}");
        rows.push(server_rows(ctx, &what, thesis, &srv)?);
    }
    Ok(rows)
}

pub(super) fn nginx_rows(ctx: &mut Ctx, secs: u32) -> Result<Vec<Row>, String> {
    let img = image::open("nginx", &BuildOptions::default()).map_err(|e| e.to_string())?;
    // Without the image's thread pool (`aio threads`): the pool hands finished reads back
    // through nginx's own spinlock, which follow mode cannot order (docs/pair.md), and one
    // configuration for all five columns keeps them comparable. A 612-byte file is read in
    // the event loop either way.
    let conf = std::fs::read_to_string(img.root.join("etc/nginx/ditto.conf"))
        .map_err(|e| e.to_string())?
        .replace("aio threads;", "aio off;");
    let body = test_body(612);
    let img = &img;
    let srv = Server {
        image: "nginx",
        native: &|dir, port| native_nginx(img, &conf, dir, port, ("small.html", &body)),
        args: &|_| Vec::new(),
        prepare: &|state, port| nginx_state(state, &conf, port, "small.html", &body),
        load: &|port| wrk_with(&format!("http://127.0.0.1:{port}/small.html"), secs, 10),
    };
    let what = format!("nginx wrk -c10 {secs}s small.html (612 B)");
    Ok(vec![server_rows(ctx, &what, ("1-2%", "1.6-3%"), &srv)?])
}

pub(super) fn mongoose_rows(ctx: &mut Ctx, secs: u32) -> Result<Vec<Row>, String> {
    let img = image::open("mongoose", &BuildOptions::default()).map_err(|e| e.to_string())?;
    let conf = std::fs::read_to_string(img.root.join("etc/civetweb/ditto.conf"))
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for (threads, thesis) in [
        (4, ("1.35%", "25.22%")),
        (8, ("0.27%", "15.72%")),
        (16, ("0.23%", "9.82%")),
    ] {
        let args = move |_| vec!["-num_threads".to_string(), threads.to_string()];
        let img = &img;
        let conf = &conf;
        let srv = Server {
            image: "mongoose",
            native: &|dir, port| native_mongoose(img, conf, dir, port, threads),
            args: &args,
            prepare: &|state, port| mongoose_state(state, conf, port),
            load: &|port| wrk_with(&format!("http://127.0.0.1:{port}/50k.html"), secs, 100),
        };
        let what = format!("mongoose {threads} threads, wrk -c100 {secs}s 50 KB");
        rows.push(server_rows(ctx, &what, thesis, &srv)?);
    }
    Ok(rows)
}

/// The channel benchmark's results: record size, record count, and each repetition's result.
pub(super) type ChannelRows = Vec<(
    usize,
    u64,
    Result<Vec<replica::bench::StreamResult>, String>,
)>;

/// The channel benchmark at 64 B and 1 KiB records.
pub(super) fn channel(reps: usize) -> ChannelRows {
    // channel_peer bench's counts: well under a second each, so --quick keeps them.
    [(64usize, 2_000_000u64), (1024, 500_000)]
        .into_iter()
        .map(|(size, count)| {
            let runs = (0..reps)
                .map(|_| {
                    let mut consumer = Command::new(ditto_exe());
                    consumer
                        .args(["bench", "pair", "--only", "channel"])
                        .env(CONSUMER_ENV, count.to_string())
                        .stdin(Stdio::null());
                    let r = replica::bench::stream(size, count, &mut consumer);
                    match &r {
                        Ok(r) => eprintln!(
                            "ditto: bench pair: channel {size} B: {:.0} records/s",
                            r.records_per_sec()
                        ),
                        Err(e) => eprintln!("ditto: bench pair: channel {size} B: {e}"),
                    }
                    r
                })
                .collect();
            (size, count, runs)
        })
        .collect()
}
