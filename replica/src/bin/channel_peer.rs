//! The other process of the channel tests and the benchmark. Consumer modes read a memfd
//! from the socket at descriptor 3 (see `replica::testkit::spawn_with_socket`):
//!
//! - `consume COUNT MAX_LEN [DELAY_MS]`: after DELAY_MS, reads COUNT records of the test
//!   pattern, checking every byte; prints `ok RECORDS BYTES`.
//! - `until-error`: after a byte arrives on the socket, reads until an error; prints it (a Debug line) and exits 0.
//! - `stall`: attaches, prints `ready`, and never reads.
//! - `bench-consume COUNT`: reads COUNT records (framing and checksum checked only).
//!
//! Producer modes: `produce-exit COUNT` sends a memfd on descriptor 3, writes COUNT records
//! of the pattern (max 256 bytes) and exits without closing the channel, as a crash would;
//! `bench [SCALE]` runs the cross-process benchmark, spawning itself as the consumer.

use replica::testkit::{inherited_socket, payload};
use replica::{recv_fd, send_fd, Channel, Consumer};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::{exit, Command};
use std::time::Duration;

fn attach() -> Consumer {
    let sock = inherited_socket();
    let fd = recv_fd(sock.as_fd()).expect("receive the memfd");
    Consumer::attach(fd).expect("attach").watch_socket(sock)
}

fn arg(args: &[String], i: usize) -> u64 {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("consume") => consume(arg(&args, 2), arg(&args, 3) as usize, arg(&args, 4)),
        Some("until-error") => {
            let sock = inherited_socket();
            let fd = recv_fd(sock.as_fd()).expect("receive the memfd");
            let mut c = Consumer::attach(fd).expect("attach");
            // Wait for the go byte: the test corrupts the ring before we read.
            let mut go = [0u8];
            std::os::unix::net::UnixStream::from(sock)
                .read_exact(&mut go)
                .expect("go byte");
            loop {
                if let Err(e) = c.recv() {
                    println!("{e:?}");
                    return;
                }
            }
        }
        Some("stall") => {
            let _c = attach();
            println!("ready");
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        Some("bench-consume") => {
            if let Err(e) = replica::bench::consume(arg(&args, 2)) {
                eprintln!("bench-consume: {e}");
                exit(1);
            }
        }
        Some("produce-exit") => {
            let sock = inherited_socket();
            let (mut p, fd) = Channel::create(1 << 16).expect("create");
            send_fd(sock.as_fd(), fd.as_fd()).expect("send the memfd");
            for s in 0..arg(&args, 2) {
                p.send(det::RecordKind::SyscallResult, &payload(s, 256))
                    .expect("send");
            }
            // Leave without running destructors: the consumer must notice the death.
            exit(0);
        }
        Some("bench") => bench(arg(&args, 2).max(1)),
        _ => {
            eprintln!(
                "usage: channel_peer consume|until-error|stall|bench-consume|produce-exit|bench"
            );
            exit(2);
        }
    }
}

fn consume(count: u64, max_len: usize, delay_ms: u64) {
    let mut c = attach();
    std::thread::sleep(Duration::from_millis(delay_ms));
    let mut bytes = 0;
    for seq in 0..count {
        let r = match c.recv() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("record {seq}: {e}");
                exit(1);
            }
        };
        if r.seq != seq || r.payload != payload(seq, max_len) {
            eprintln!(
                "record {seq}: wrong contents (seq {}, {} bytes)",
                r.seq,
                r.payload.len()
            );
            exit(1);
        }
        bytes += r.payload.len() as u64;
    }
    println!("ok {count} {bytes}");
}

/// Streams records of each size to a consumer process (this program, `bench-consume`) and
/// prints throughput and lag.
fn bench(scale: u64) {
    let exe = std::env::current_exe().expect("own path");
    for (size, count) in [(64usize, 2_000_000u64), (1024, 500_000), (65536, 16_000)] {
        let count = count * scale;
        let mut cmd = Command::new(&exe);
        cmd.args(["bench-consume", &count.to_string()]);
        let r = replica::bench::stream(size, count, &mut cmd).unwrap_or_else(|e| {
            eprintln!("bench: {e}");
            exit(1);
        });
        println!(
            "{size:>6} B x {count:>8}: {:>10.0} rec/s {:>8.1} MB/s  avg lag {:.0} rec / {:.0} KiB  ({:.2} s)",
            r.records_per_sec(),
            r.mb_per_sec(),
            r.avg_lag_records,
            r.avg_lag_bytes / 1024.0,
            r.secs,
        );
    }
}
