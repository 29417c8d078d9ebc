//! `ditto bench servers`: redis, nginx and pbzip2 from their images, each run natively
//! (the same binaries, through the image's own ld.so) and in ditto in one invocation.
//! Servers listen on 127.0.0.1 only; every load run is bounded in count or time.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use guest_images::image::{self, BuildOptions, Image};

use super::proc::{ditto_exe, free_port, output_bounded, Proc};

/// One benchmark row.
pub struct ServerRow {
    /// What ran.
    pub name: String,
    /// Requests (or runs) per second natively.
    pub native: f64,
    /// The same in ditto.
    pub ditto: f64,
    /// Syscalls the program made per request in ditto.
    pub syscalls_per_req: f64,
    /// Of a request's time in ditto, the estimated syscall transport (exit) cost, in µs.
    pub exit_us: f64,
    /// For the threads chart: the configuration (`run`, `run --det`) and worker threads.
    pub series: Option<(&'static str, u32)>,
}

/// Per-syscall transport costs measured in this run.
struct Costs {
    trap_ns: f64,
    doorbell_ns: f64,
}

/// Counters from `ditto run --stats`.
#[derive(Default)]
struct RunStats {
    syscalls: f64,
    doorbell: f64,
}

fn parse_stats(stderr: &str) -> RunStats {
    let get = |key: &str| {
        stderr
            .split(&format!(" {key}="))
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    RunStats {
        syscalls: get("syscalls"),
        doorbell: get("doorbell_syscalls"),
    }
}

/// Runs an image's program natively: the same binary and libraries, through the
/// image's own dynamic loader.
pub(crate) fn native_cmd(img: &Image, program: &str) -> Command {
    let root = &img.root;
    let mut c = Command::new(root.join("lib64/ld-linux-x86-64.so.2"));
    c.arg("--library-path")
        .arg(format!(
            "{}:{}",
            root.join("lib/x86_64-linux-gnu").display(),
            root.join("usr/lib/x86_64-linux-gnu").display()
        ))
        .arg(root.join(program.trim_start_matches('/')));
    c
}

fn spawn(mut c: Command) -> Result<Proc, String> {
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c.spawn().map(Proc::new).map_err(|e| e.to_string())
}

fn ditto_server(image: &str, state: &Path, extra: &[&str]) -> Result<Proc, String> {
    let mut c = Command::new(ditto_exe());
    c.args(["run", "--stats", "--image", image, "--state"])
        .arg(state)
        .arg("--")
        .args(extra);
    spawn(c)
}

/// redis-benchmark's requests per second (sum over the tests it ran) and the number
/// of requests it made; an error if it takes longer than `timeout`.
pub(crate) fn redis_benchmark(
    port: u16,
    n: u64,
    clients: u32,
    pipeline: u32,
    timeout: Duration,
) -> Result<(f64, f64), String> {
    let mut cmd = Command::new("redis-benchmark");
    cmd.args([
        "-p",
        &port.to_string(),
        "-t",
        "set,get",
        "-n",
        &n.to_string(),
    ])
    .args([
        "-c",
        &clients.to_string(),
        "-P",
        &pipeline.to_string(),
        "--csv",
    ]);
    let out = output_bounded(cmd, timeout)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("\"SET\"") || l.starts_with("\"GET\""))
        .filter_map(|l| l.split(',').nth(1)?.trim_matches('"').parse().ok())
        .collect();
    if rps.len() != 2 {
        return Err(format!("unexpected redis-benchmark output: {text}"));
    }
    // Two tests of n requests each: overall rate is the harmonic combination.
    let secs: f64 = rps.iter().map(|r| n as f64 / r).sum();
    Ok((2.0 * n as f64 / secs, 2.0 * n as f64))
}

fn wrk(url: &str, secs: u32) -> Result<(f64, f64), String> {
    wrk_with(url, secs, 10)
}

/// wrk for `secs` seconds with `connections` connections: requests per second and the
/// number of requests (bounded: wrk is killed 30 s after its duration).
pub(crate) fn wrk_with(url: &str, secs: u32, connections: u32) -> Result<(f64, f64), String> {
    let threads = connections.clamp(1, 2);
    let mut cmd = Command::new("wrk");
    cmd.args([
        format!("-t{threads}"),
        format!("-c{connections}"),
        format!("-d{secs}s"),
        url.to_string(),
    ]);
    let out = output_bounded(cmd, Duration::from_secs(u64::from(secs) + 30))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("unexpected wrk output: {text}"))?;
    let total = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(rps * secs as f64);
    Ok((rps, total))
}

fn row(
    name: String,
    native: f64,
    ditto: f64,
    requests: f64,
    stats: &RunStats,
    costs: &Costs,
) -> ServerRow {
    let trapped = stats.syscalls - stats.doorbell;
    let exit_ns = trapped * costs.trap_ns + stats.doorbell * costs.doorbell_ns;
    ServerRow {
        name,
        native,
        ditto,
        syscalls_per_req: stats.syscalls / requests.max(1.0),
        exit_us: exit_ns / requests.max(1.0) / 1e3,
        series: None,
    }
}

fn redis_rows(n: u64, costs: &Costs) -> Result<Vec<ServerRow>, String> {
    let img = image::open("redis", &BuildOptions::default()).map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for (clients, pipeline) in [(1, 1), (1, 16), (50, 1), (50, 16)] {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = free_port()?;
        let mut p = spawn(native_redis(&img, tmp.path(), port)?)?;
        p.wait_port(port)?;
        let timeout = Duration::from_secs(30 + n / 100);
        let (native, _) = redis_benchmark(port, n, clients, pipeline, timeout)?;
        p.stop();

        let port = free_port()?;
        let state = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut p = ditto_server("redis", state.path(), &["--port", &port.to_string()])?;
        p.wait_port(port)?;
        let (ditto, requests) = redis_benchmark(port, n, clients, pipeline, timeout)?;
        let stats = parse_stats(&p.stop());
        let name = format!("redis set,get -n {n} -c {clients} -P {pipeline}");
        rows.push(row(name, native, ditto, requests, &stats, costs));
    }
    Ok(rows)
}

/// The image's redis-server run natively on `port`, its configuration and data in `dir`.
pub(crate) fn native_redis(img: &Image, dir: &Path, port: u16) -> Result<Command, String> {
    let conf = std::fs::read_to_string(img.root.join("etc/redis/ditto.conf"))
        .map_err(|e| e.to_string())?;
    let native_conf = dir.join("native.conf");
    std::fs::write(
        &native_conf,
        conf.replace("dir /var/lib/redis", &format!("dir {}", dir.display())),
    )
    .map_err(|e| e.to_string())?;
    let mut c = native_cmd(img, "/usr/bin/redis-server");
    c.arg(&native_conf).args(["--port", &port.to_string()]);
    Ok(c)
}

/// The image's nginx run natively on `port` with the image's configuration `conf` (host
/// paths put in), serving `file` with `body` from `dir`/www; its other files in `dir`.
pub(crate) fn native_nginx(
    img: &Image,
    conf: &str,
    dir: &Path,
    port: u16,
    (file, body): (&str, &[u8]),
) -> Result<Command, String> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).map_err(|e| e.to_string())?;
    std::fs::write(www.join(file), body).map_err(|e| e.to_string())?;
    let native_conf = dir.join("nginx.conf");
    std::fs::write(&native_conf, nginx_conf(conf, port, &img.root, dir, &www))
        .map_err(|e| e.to_string())?;
    let mut c = native_cmd(img, "/usr/sbin/nginx");
    c.arg("-c")
        .arg(&native_conf)
        .args(["-e", "stderr", "-p"])
        .arg(dir);
    Ok(c)
}

/// The image's civetweb run natively on `port` with `threads` workers and the image's
/// configuration `conf` (written to `dir`), serving the image's document root.
pub(crate) fn native_mongoose(
    img: &Image,
    conf: &str,
    dir: &Path,
    port: u16,
    threads: u32,
) -> Result<Command, String> {
    let native_conf = dir.join("civetweb.conf");
    let listen = format!("listening_ports 127.0.0.1:{port}");
    std::fs::write(
        &native_conf,
        conf.replace("listening_ports 127.0.0.1:8081", &listen)
            .replace(
                "document_root /srv/www",
                &format!("document_root {}", img.root.join("srv/www").display()),
            ),
    )
    .map_err(|e| e.to_string())?;
    let mut c = native_cmd(img, "/usr/bin/civetweb");
    c.arg(&native_conf)
        .args(["-num_threads", &threads.to_string()]);
    Ok(c)
}

/// The contents of the nginx benchmark's file of `size` bytes.
pub(crate) fn test_body(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 7 % 251) as u8).collect()
}

/// Writes the image configuration `conf`, with `from` replaced by `to`, to STATE/`rel`.
fn state_conf(state: &Path, rel: &str, conf: &str, from: &str, to: &str) -> Result<(), String> {
    let path = state.join(rel);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    std::fs::write(path, conf.replace(from, to)).map_err(|e| e.to_string())
}

/// Prepares a `ditto run --image nginx` state directory: the image's configuration
/// `conf` listening on `port`, and `file` with `body` in its document root.
pub(crate) fn nginx_state(
    state: &Path,
    conf: &str,
    port: u16,
    file: &str,
    body: &[u8],
) -> Result<(), String> {
    let listen = format!("listen 127.0.0.1:{port};");
    state_conf(
        state,
        "etc/nginx/ditto.conf",
        conf,
        "listen 127.0.0.1:8080;",
        &listen,
    )?;
    std::fs::create_dir_all(state.join("srv/www")).map_err(|e| e.to_string())?;
    std::fs::write(state.join("srv/www").join(file), body).map_err(|e| e.to_string())
}

/// Prepares a `ditto run --image mongoose` state directory: the image's civetweb
/// configuration `conf` listening on `port` instead of 8081.
pub(crate) fn mongoose_state(state: &Path, conf: &str, port: u16) -> Result<(), String> {
    let listen = format!("listening_ports 127.0.0.1:{port}");
    let from = "listening_ports 127.0.0.1:8081";
    state_conf(state, "etc/civetweb/ditto.conf", conf, from, &listen)
}

fn nginx_conf(conf: &str, port: u16, root: &Path, var: &Path, www: &Path) -> String {
    conf.replace(
        "listen 127.0.0.1:8080;",
        &format!("listen 127.0.0.1:{port};"),
    )
    .replace(
        "/etc/nginx/mime.types",
        &root.join("etc/nginx/mime.types").display().to_string(),
    )
    .replace("/var/lib/nginx", &var.display().to_string())
    .replace("/srv/www", &www.display().to_string())
}

fn nginx_rows(secs: u32, costs: &Costs) -> Result<Vec<ServerRow>, String> {
    let img = image::open("nginx", &BuildOptions::default()).map_err(|e| e.to_string())?;
    let conf = std::fs::read_to_string(img.root.join("etc/nginx/ditto.conf"))
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for (file, size) in [("small.html", 612usize), ("big.bin", 1 << 20)] {
        let body = test_body(size);
        // Native: the image's nginx with host paths in its configuration.
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = free_port()?;
        let mut p = spawn(native_nginx(&img, &conf, tmp.path(), port, (file, &body))?)?;
        p.wait_port(port)?;
        let (native, _) = wrk(&format!("http://127.0.0.1:{port}/{file}"), secs)?;
        p.stop();

        // ditto: the image's own configuration, with the port changed in the state.
        let port = free_port()?;
        let state = tempfile::tempdir().map_err(|e| e.to_string())?;
        nginx_state(state.path(), &conf, port, file, &body)?;
        let mut p = ditto_server("nginx", state.path(), &[])?;
        p.wait_port(port)?;
        let (ditto, requests) = wrk(&format!("http://127.0.0.1:{port}/{file}"), secs)?;
        let stats = parse_stats(&p.stop());
        rows.push(row(
            format!("nginx wrk {secs}s {file} ({size} B)"),
            native,
            ditto,
            requests,
            &stats,
            costs,
        ));
    }
    Ok(rows)
}

/// Writes the pbzip2 input, `mb` MiB, to DIR/data and returns its path.
pub(crate) fn pbzip2_input(dir: &Path, mb: usize) -> Result<PathBuf, String> {
    let data: Vec<u8> = {
        let mut x: u64 = 88172645463325252;
        (0..mb << 20)
            .map(|i| {
                // Half random, half text-like, so bzip2 has real work.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 2 == 0 {
                    x as u8
                } else {
                    b"ditto replicates "[i % 17]
                }
            })
            .collect()
    };
    let file = dir.join("data");
    std::fs::write(&file, &data).map_err(|e| e.to_string())?;
    Ok(file)
}

fn pbzip2_rows(mb: usize, costs: &Costs) -> Result<Vec<ServerRow>, String> {
    let img = image::open("pbzip2", &BuildOptions::default()).map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = pbzip2_input(dir.path(), mb)?;
    let mut rows = Vec::new();
    for threads in [1, 2] {
        let p = format!("-p{threads}");
        let t = Instant::now();
        let mut c = native_cmd(&img, "/usr/bin/pbzip2");
        let st = c
            .args([p.as_str(), "-c"])
            .arg(&file)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        let native = t.elapsed().as_secs_f64();
        if !st.success() {
            return Err(format!("native pbzip2 failed: {st}"));
        }
        let t = Instant::now();
        let out = Command::new(ditto_exe())
            .current_dir(dir.path())
            .args([
                "run",
                "--stats",
                "--image",
                "pbzip2",
                "--",
                p.as_str(),
                "-c",
                "data",
            ])
            .stdout(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        let ditto = t.elapsed().as_secs_f64();
        if !out.status.success() {
            return Err(format!("pbzip2 in ditto failed: {}", out.status));
        }
        let stats = parse_stats(&String::from_utf8_lossy(&out.stderr));
        // Rows compare rates: one run per second.
        rows.push(row(
            format!("pbzip2 {p} {mb} MB (runs/s)"),
            1.0 / native,
            1.0 / ditto,
            1.0,
            &stats,
            costs,
        ));
    }
    Ok(rows)
}

/// The thesis's Mongoose workload: civetweb from the `mongoose` image, wrk with 100
/// connections on the 50 KB file, at 4, 8 and 16 worker threads; native, in ditto, and in
/// ditto with `--det`.
fn mongoose_rows(secs: u32, costs: &Costs) -> Result<Vec<ServerRow>, String> {
    let img = image::open("mongoose", &BuildOptions::default()).map_err(|e| e.to_string())?;
    let conf = std::fs::read_to_string(img.root.join("etc/civetweb/ditto.conf"))
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for threads in [4, 8, 16] {
        let t = threads.to_string();
        let port = free_port()?;
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut p = spawn(native_mongoose(&img, &conf, tmp.path(), port, threads)?)?;
        p.wait_port(port)?;
        let url = format!("http://127.0.0.1:{port}/50k.html");
        let (native, _) = wrk_with(&url, secs, 100)?;
        p.stop();
        for det in [false, true] {
            let port = free_port()?;
            let state = tempfile::tempdir().map_err(|e| e.to_string())?;
            mongoose_state(state.path(), &conf, port)?;
            let mut c = Command::new(ditto_exe());
            c.args(["run", "--stats"]);
            if det {
                c.arg("--det");
            }
            c.args(["--image", "mongoose", "--state"])
                .arg(state.path())
                .args(["--", "-num_threads", &t]);
            let mut p = spawn(c)?;
            p.wait_port(port)?;
            let (ditto, requests) =
                wrk_with(&format!("http://127.0.0.1:{port}/50k.html"), secs, 100)?;
            let stats = parse_stats(&p.stop());
            let mode = if det { " --det" } else { "" };
            let mut r = row(
                format!("mongoose{mode} {threads} threads, wrk -c100 50 KB"),
                native,
                ditto,
                requests,
                &stats,
                costs,
            );
            r.series = Some((if det { "ditto run --det" } else { "ditto run" }, threads));
            rows.push(r);
        }
    }
    Ok(rows)
}

/// Measures the two syscall paths' costs in this run (the #PF trap and the doorbell).
fn costs() -> Result<Costs, String> {
    let bench = guest_images::progs::path("bench").ok_or("guest program 'bench' is not built")?;
    let measure = |path: &str| -> Result<f64, String> {
        let out = Command::new(ditto_exe())
            .env("DITTO_SYSCALL_PATH", path)
            .arg("run")
            .arg("--")
            .arg(&bench)
            .args(["getpid", "20000"])
            .output()
            .map_err(|e| e.to_string())?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| "bench getpid failed".to_string())
    };
    Ok(Costs {
        trap_ns: measure("trap")?,
        doorbell_ns: measure("doorbell")?,
    })
}

/// All server benchmarks; `quick` shortens them (fewer requests, shorter wrk runs,
/// smaller pbzip2 input) for a fast look.
pub fn run(quick: bool, only: Option<&str>) -> Result<Vec<ServerRow>, String> {
    let want = |name: &str| only.is_none_or(|o| o == name);
    if let Some(o) = only.filter(|o| !["pbzip2", "redis", "nginx", "mongoose"].contains(o)) {
        return Err(format!(
            "unknown workload {o:?}: expected pbzip2, redis, nginx or mongoose"
        ));
    }
    let costs = costs()?;
    eprintln!(
        "ditto: bench: syscall transport in this run: trap {:.1} us, doorbell {:.1} us",
        costs.trap_ns / 1e3,
        costs.doorbell_ns / 1e3
    );
    let mut rows = Vec::new();
    let secs = if quick { 3 } else { 10 };
    if want("pbzip2") {
        rows.extend(pbzip2_rows(if quick { 20 } else { 100 }, &costs)?);
    }
    if want("redis") {
        rows.extend(redis_rows(if quick { 10_000 } else { 100_000 }, &costs)?);
    }
    if want("nginx") {
        rows.extend(nginx_rows(secs, &costs)?);
    }
    if want("mongoose") {
        rows.extend(mongoose_rows(secs, &costs)?);
    }
    Ok(rows)
}

/// Runs `ditto bench servers` and prints its table.
pub fn main(quick: bool, only: Option<&str>, svg: Option<&Path>) -> ExitCode {
    match run(quick, only) {
        Ok(rows) => {
            let chart = svg.map(|dir| threads_chart(&rows, dir));
            println!("| workload | native /s | ditto /s | slowdown | syscalls/req | exit µs/req | other µs/req |");
            println!("|---|---:|---:|---:|---:|---:|---:|");
            for r in rows {
                let per_req_us = 1e6 / r.ditto;
                println!(
                    "| {} | {:.1} | {:.1} | {:.2}x | {:.1} | {:.1} | {:.1} |",
                    r.name,
                    r.native,
                    r.ditto,
                    r.native / r.ditto,
                    r.syscalls_per_req,
                    r.exit_us,
                    (per_req_us - r.exit_us).max(0.0)
                );
            }
            match chart {
                Some(Err(e)) => {
                    eprintln!("ditto: bench: {e}");
                    ExitCode::from(1)
                }
                Some(Ok(Some(path))) => {
                    println!("\nChart: {}", path.display());
                    ExitCode::SUCCESS
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            eprintln!("ditto: bench: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--svg`: civetweb's requests per second against worker threads, natively and in ditto;
/// None when no row has threads (civetweb was not measured).
fn threads_chart(rows: &[ServerRow], dir: &Path) -> Result<Option<PathBuf>, String> {
    let mut native: Vec<(u32, f64)> = Vec::new();
    let mut series: Vec<(String, Vec<(u32, f64)>)> = Vec::new();
    for r in rows {
        let Some((label, threads)) = r.series else {
            continue;
        };
        if !native.iter().any(|p| p.0 == threads) {
            native.push((threads, r.native));
        }
        match series.iter_mut().find(|s| s.0 == label) {
            Some(s) => s.1.push((threads, r.ditto)),
            None => series.push((label.to_string(), vec![(threads, r.ditto)])),
        }
    }
    if native.is_empty() {
        return Ok(None);
    }
    series.insert(0, ("native".to_string(), native));
    let path = dir.join("civetweb-threads.svg");
    super::plot::throughput_chart(
        &path,
        "civetweb, wrk -c100 on a 50 KB file: requests/s against worker threads",
        &series,
    )?;
    Ok(Some(path))
}
