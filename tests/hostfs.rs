//! The host's files in a pair (docs/pair.md, "Host files"): a program that makes, writes,
//! reads back, renames and unlinks files in a host directory, and appends to a log from
//! several threads, runs as a pair in both modes with the same result as natively, and every
//! host file is written once (by the primary). `ditto run` does the same as before.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use common::*;
use replica::report::{Outcome, Report};

/// hostfiles' arguments: threads, jobs per thread.
const ARGS: [&str; 2] = ["4", "6"];

/// A pair needs two cores (one per replica); these machines have two.
static ONE_PAIR_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What a run left in its directory: each file's name and contents, with app.log's lines
/// sorted (threads append in whatever order they ran).
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let mut bytes = std::fs::read(e.path()).unwrap();
        if name == "app.log" {
            let mut lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
            lines.sort();
            bytes = lines.concat();
        }
        m.insert(name, bytes);
    }
    m
}

/// The native run's stdout and what it left behind.
fn native_run(prog: &Path) -> (Output, BTreeMap<String, Vec<u8>>) {
    let dir = tempdir();
    let o = Command::new(prog)
        .args(ARGS)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "native: {}", stdout(&o));
    (o, contents(dir.path()))
}

/// Every line the program appends, once: the log must hold exactly these.
fn expected_log() -> Vec<u8> {
    let (t, n): (u32, u32) = (ARGS[0].parse().unwrap(), ARGS[1].parse().unwrap());
    let mut lines: Vec<String> = (0..t)
        .flat_map(|t| (0..n).map(move |j| format!("t={t} j={j}\n")))
        .collect();
    lines.sort();
    lines.concat().into_bytes()
}

#[test]
fn host_files_are_written_once_and_read_back_alike_in_both_modes() {
    let _turn = ONE_PAIR_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let prog = prog("hostfiles-dyn");
    let (native, native_files) = native_run(&prog);
    assert_eq!(native_files["app.log"], expected_log());
    assert_eq!(native_files.len(), 13, "{:?}", native_files.keys());
    for mode in ["det", "follow"] {
        for round in 0..3 {
            let dir = tempdir();
            let out = tempdir();
            let mut c = ditto();
            c.current_dir(dir.path())
                .args(["pair", "--quiet", "--mode", mode, "--out"])
                .arg(out.path())
                .arg("--")
                .arg(&prog)
                .args(ARGS);
            let o = output_within(c, 120);
            let r = Report::load(out.path().join("report.json")).expect("report.json");
            let what = format!("{mode} round {round}");
            assert_eq!(
                r.outcome,
                Outcome::Identical,
                "{what}: {}\nstderr: {}",
                r.summary(),
                stderr(&o)
            );
            assert!(o.status.success(), "{what}: {:?} {}", o.status, stderr(&o));
            assert_eq!(stdout(&o), stdout(&native), "{what}");
            let secondary = std::fs::read(out.path().join("secondary.stdout")).unwrap();
            assert_eq!(secondary, o.stdout, "{what}: the secondary's stdout");
            // Written once: the log holds each line once (a second writer would double
            // them), and the files are the native run's, no more (no second mkstemp file,
            // no leftover) and no fewer.
            let files = contents(dir.path());
            assert_eq!(files["app.log"], expected_log(), "{what}");
            assert_eq!(files, native_files, "{what}");
            // The secondary changed nothing of its own outside its state: its run
            // directory holds no program file.
            assert!(!out.path().join("app.log").exists(), "{what}");
        }
    }
}

#[test]
fn a_single_run_still_writes_the_files_itself() {
    let prog = prog("hostfiles-dyn");
    let (native, native_files) = native_run(&prog);
    let dir = tempdir();
    let mut c = ditto();
    c.current_dir(dir.path())
        .arg("run")
        .arg("--")
        .arg(&prog)
        .args(ARGS);
    let o = output_within(c, 60);
    assert!(o.status.success(), "{:?} {}", o.status, stderr(&o));
    assert_eq!(stdout(&o), stdout(&native));
    assert_eq!(contents(dir.path()), native_files);
}

/// A map of a host file the pair writes is refused alike in both replicas (the secondary
/// holds a placeholder): ENODEV and an identical report, where natively it maps.
#[test]
fn a_map_of_a_written_host_file_is_refused_alike_in_both_replicas() {
    let _turn = ONE_PAIR_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let prog = prog("hostfiles-dyn");
    let dir = tempdir();
    let native = Command::new(&prog)
        .arg("mmap")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(stdout(&native), "mmap=ok m\n");
    for mode in ["det", "follow"] {
        let out = tempdir();
        let mut c = ditto();
        c.current_dir(dir.path())
            .args(["pair", "--quiet", "--mode", mode, "--out"])
            .arg(out.path())
            .arg("--")
            .arg(&prog)
            .arg("mmap");
        let o = output_within(c, 60);
        let r = Report::load(out.path().join("report.json")).expect("report.json");
        assert_eq!(r.outcome, Outcome::Identical, "{mode}: {}", r.summary());
        assert_eq!(
            stdout(&o),
            format!("mmap=errno {}\n", libc::ENODEV),
            "{mode}"
        );
        assert!(!dir.path().join("m.bin").exists(), "{mode}");
    }
}

/// /dev/urandom opened and read as a file (busybox hexdump): its bytes are input from
/// outside, so the secondary is given the primary's and prints the same; each replica
/// reading its own diverged on main.
#[test]
fn random_devices_read_alike_in_both_replicas() {
    let _turn = ONE_PAIR_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for mode in ["det", "follow"] {
        let out = tempdir();
        let mut c = ditto();
        c.args(["pair", "--quiet", "--mode", mode, "--out"])
            .arg(out.path())
            .arg("--")
            .arg(busybox())
            .args(["hexdump", "-n", "16", "-e", "16/1 \"%02x\" \"\\n\""])
            .arg("/dev/urandom");
        let o = output_within(c, 120);
        let r = Report::load(out.path().join("report.json")).expect("report.json");
        assert_eq!(r.outcome, Outcome::Identical, "{mode}: {}", r.summary());
        assert!(o.status.success(), "{}", stderr(&o));
        let hex = stdout(&o);
        assert_eq!(hex.trim().len(), 32, "{hex}");
        let secondary = std::fs::read_to_string(out.path().join("secondary.stdout")).unwrap();
        assert_eq!(secondary, hex);
    }
}

/// Directories that ditto resolves itself ("/", ".", "..", and in an image run the bound
/// working directory) are directories to lstat, fstatat/statx/faccessat with
/// AT_SYMLINK_NOFOLLOW and readlink (EINVAL), natively and under `ditto run`; a real symlink
/// is still one. Each check is a line of lstat_dirs' output, so a failure names its call.
#[test]
fn resolver_opened_directories_are_not_symlinks() {
    let prog = prog("lstat_dirs");
    let dir = tempdir();
    let native = Command::new(&prog)
        .arg("/tmp")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(native.status.success(), "native: {}", stdout(&native));
    let mut c = ditto();
    c.current_dir(dir.path())
        .arg("run")
        .arg("--")
        .arg(&prog)
        .arg("/tmp");
    let o = output_within(c, 60);
    assert_eq!(stdout(&o), stdout(&native), "ditto run: {}", stderr(&o));
    assert!(o.status.success(), "ditto run: {}", stderr(&o));
}
