//! `ditto compare`: reports written with replica::report, read back by the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use replica::report::{
    first_difference, Counters, Divergence, DivergenceKind, Event, EventKind, Outcome,
    ReplicaSummary, Report, Value,
};

fn ditto_compare(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ditto"))
        .arg("compare")
        .args(args)
        .output()
        .expect("run ditto")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn report(outcome: Outcome) -> Report {
    let mut r = Report::new("follow", vec!["/bin/echo".into(), "hello".into()]);
    r.outcome = outcome;
    r.primary = ReplicaSummary::exited(vec![0], 0);
    r.secondary = ReplicaSummary::exited(vec![1], 0);
    r.counters = Counters {
        records: 1234,
        record_bytes: 40_000,
        recorded_syscalls: 900,
        compared_outputs: 300,
        bytes_compared: 56_789,
        turns: 321,
        ..Counters::default()
    };
    r.push_common(Event {
        thread: 0,
        syscall_seq: 41,
        syscall: "clock_gettime".into(),
        kind: EventKind::Recorded,
        result: 0,
        bytes: 16,
    });
    r.wall_seconds = 0.25;
    if outcome == Outcome::Diverged {
        let p = b"hello, primary\n";
        let s = b"hello, secondary\n";
        let at = first_difference(p, s);
        r.first_divergence = Some(Divergence {
            kind: DivergenceKind::Output,
            thread: 1,
            syscall_seq: 42,
            syscall: "write".into(),
            primary_syscall: Some("write".into()),
            fd: Some(1),
            logical_time: Some(17),
            turn: Some(300),
            primary: Value::of(p, at),
            secondary: Value::of(s, at),
            first_differing_byte: at,
            detail: "stdout differs".into(),
        });
    }
    r
}

fn save(dir: &Path, name: &str, r: &Report) -> PathBuf {
    let path = dir.join(name);
    r.save(&path).unwrap();
    path
}

#[test]
fn summary_of_one_report_and_its_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let same = save(dir.path(), "same.json", &report(Outcome::Identical));
    let o = ditto_compare(&[&same]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(
        out.lines().next(),
        Some("identical: 1,234 records, 56,789 bytes compared, 321 turns")
    );
    assert!(out.contains("clock_gettime"), "{out}");

    let diverged = save(dir.path(), "diverged.json", &report(Outcome::Diverged));
    let o = ditto_compare(&[&diverged]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(
        out.lines().next(),
        Some("diverged: output at thread 1, syscall #42 write (fd 1), first differing byte 7")
    );
    for fact in [
        "logical time 17, turn 300",
        "text from byte 0: \"hello, primary\\n\"",
        "text from byte 0: \"hello, secondary\\n\"",
        "^^",
    ] {
        assert!(out.contains(fact), "missing {fact:?} in\n{out}");
    }

    let mut failed = report(Outcome::ReplicaFailed);
    failed.secondary = ReplicaSummary::killed(vec![1], 9);
    let failed = save(dir.path(), "failed.json", &failed);
    let o = ditto_compare(&[&failed]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("replica failed: secondary killed by SIGKILL"));
}

#[test]
fn two_reports_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let same = save(dir.path(), "same.json", &report(Outcome::Identical));
    let mut d = report(Outcome::Diverged);
    d.counters.records += 66;
    let diverged = save(dir.path(), "diverged.json", &d);

    let o = ditto_compare(&[&same, &diverged]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "the first report decides: {}",
        stderr(&o)
    );
    let out = stdout(&o);
    assert!(
        out.contains(&format!("first:  {}", same.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("second: {}", diverged.display())),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("outcome") && l.contains("identical") && l.contains("diverged")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("records ") && l.ends_with("+66")),
        "{out}"
    );
    assert!(out.contains("only the second run diverged"), "{out}");

    let o = ditto_compare(&[&diverged, &diverged]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("same place in both runs"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn unreadable_reports_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = save(dir.path(), "good.json", &report(Outcome::Identical));
    let corrupt = dir.path().join("corrupt.json");
    std::fs::write(&corrupt, "{\"schema\": 1, \"mode\": ").unwrap();
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "garbage").unwrap();
    let newer = dir.path().join("newer.json");
    std::fs::write(&newer, "{\"schema\": 99}").unwrap();
    let missing = dir.path().join("missing.json");

    let cases: [(&[&Path], &Path, &str); 5] = [
        (&[&corrupt], &corrupt, "EOF while parsing"),
        (&[&garbage], &garbage, "expected value at line 1 column 1"),
        (&[&newer], &newer, "schema 99"),
        (&[&missing], &missing, "No such file"),
        (&[&good, &garbage], &garbage, "expected value"),
    ];
    for (args, bad, why) in cases {
        let o = ditto_compare(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        let want = format!("ditto: cannot read report {}: ", bad.display());
        assert!(err.starts_with(&want), "{err}");
        assert!(err.contains(why), "{err}");
        assert!(o.stdout.is_empty(), "{}", stdout(&o));
    }
}
