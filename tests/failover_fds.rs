//! Failover's descriptors (docs/pair.md, Descriptors at failover): a pair's secondary holds
//! the primary's own host descriptions of everything outside the program, at the guest
//! numbers the primary has them, and takes them over. Real pairs of `outside_fds` (a TCP
//! listener, a connected client, the accepted connection, a socketpair, a timerfd, a host
//! file, stdio), compared through the `DITTO_TEST_FDS_DUMP` hook: each replica writes, at
//! exit_group, (guest fd, st_dev, st_ino) of the primary's descriptors it has or holds.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use common::*;
use replica::report::{Outcome, Report};

/// Pairs take turns: two cores, one per replica.
static ONE_PAIR_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// outside_fds's descriptors that reach outside: stdio, listener, client, accepted,
/// socketpair (2), timerfd, held.txt.
const OUTSIDE: [i64; 10] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];

/// Runs outside_fds as a pair in `mode` with the dump hook set to `dump`.
fn pair(mode: &str, dump: &str, extra: &[&str]) -> (Output, tempfile::TempDir) {
    let cwd = tempdir();
    let out = tempdir();
    let mut c = ditto();
    c.current_dir(cwd.path())
        .env("DITTO_TEST_FDS_DUMP", dump)
        .args(["pair", "--quiet", "--mode", mode])
        .args(extra)
        .arg("--out")
        .arg(out.path())
        .arg("--")
        .arg(prog("outside_fds"));
    let o = output_within(c, 120);
    let r = Report::load(out.path().join("report.json")).expect("report.json");
    assert_eq!(
        r.outcome,
        Outcome::Identical,
        "{mode}: {}\nstderr: {}",
        r.summary(),
        stderr(&o)
    );
    assert!(o.status.success(), "{mode}: {:?} {}", o.status, stderr(&o));
    assert_eq!(stdout(&o), "got ping ready 1\n", "{mode}");
    (o, out)
}

/// A dump: guest fd -> (st_dev, st_ino, the rest of the line).
fn dump(dir: &Path, name: &str) -> BTreeMap<i64, (u64, u64, String)> {
    let text = std::fs::read_to_string(dir.join(name))
        .unwrap_or_else(|e| panic!("{name}: {e} (the dump hook wrote nothing)"));
    text.lines()
        .filter(|l| !l.starts_with("descriptors"))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let fd = w[0].parse().expect("fd");
            let id = (w[1].parse().expect("dev"), w[2].parse().expect("ino"));
            (fd, (id.0, id.1, w[3..].join(" ")))
        })
        .collect()
}

#[test]
fn the_secondary_holds_the_primarys_descriptions_and_takes_them_over() {
    let _turn = ONE_PAIR_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for mode in ["det", "follow"] {
        let (_o, out) = pair(mode, "takeover", &[]);
        let primary = dump(out.path(), "primary.fds");
        assert_eq!(
            primary.keys().copied().collect::<Vec<_>>(),
            OUTSIDE,
            "{mode}: the primary's outside descriptors"
        );
        // Sockets have inode numbers of their own: a placeholder (the secondary's own
        // AF_UNIX socket) can never match the primary's.
        let held = dump(out.path(), "secondary.held");
        assert_eq!(held, primary, "{mode}: what the secondary holds");
        let text = std::fs::read_to_string(out.path().join("secondary.takeover")).unwrap();
        assert_eq!(
            text.lines().next(),
            Some("descriptors 10 connections 2"),
            "{mode}: {text}"
        );
        let after = dump(out.path(), "secondary.takeover");
        for (fd, (dev, ino, _)) in &primary {
            assert_eq!(
                after.get(fd),
                Some(&(*dev, *ino, "own".to_string())),
                "{mode}: guest fd {fd} after the takeover"
            );
        }
    }
}

#[test]
fn without_failover_the_secondary_holds_nothing() {
    let _turn = ONE_PAIR_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (_o, out) = pair("det", "held", &["--no-failover"]);
    assert_eq!(dump(out.path(), "primary.fds").len(), OUTSIDE.len());
    assert!(dump(out.path(), "secondary.held").is_empty());
}
