use super::compare::delta;
use super::text::{cores, escape_text, shell_words};
use super::*;
use proptest::prelude::*;
use std::fs;

fn sample_divergence() -> Divergence {
    let p = b"hello world, line 1\nline 2 of the primary\n";
    let s = b"hello world, line 1\nline 2 of the SECONDARY\n";
    let at = first_difference(p, s);
    Divergence {
        kind: DivergenceKind::Output,
        thread: 1,
        syscall_seq: 42,
        syscall: "write".into(),
        primary_syscall: Some("write".into()),
        fd: Some(1),
        logical_time: Some(17),
        turn: Some(321),
        primary: Value::of(p, at),
        secondary: Value::of(s, at),
        first_differing_byte: at,
        detail: "stdout differs".into(),
    }
}

fn sample(outcome: Outcome) -> Report {
    let mut r = Report::new("det", vec!["/bin/prog".into(), "an arg".into()]);
    r.outcome = outcome;
    r.primary = ReplicaSummary::exited(vec![0, 1], 0);
    r.secondary = ReplicaSummary::exited(vec![2, 3], 0);
    r.counters = Counters {
        records: 1234,
        record_bytes: 98765,
        recorded_syscalls: 1000,
        compared_outputs: 200,
        bytes_compared: 56789,
        turns: 321,
        reentries: 3,
        signals: 1,
        max_lag_records: 12,
        max_lag_bytes: 4096,
        primary_turns: 321,
        secondary_turns: 320,
        primary_exits: 5000,
        secondary_exits: 4900,
    };
    for i in 0..20u64 {
        r.push_common(Event {
            thread: (i % 2) as u32,
            syscall_seq: 10 + i,
            syscall: if i % 3 == 0 { "write" } else { "clock_gettime" }.into(),
            kind: if i % 3 == 0 {
                EventKind::Compared
            } else {
                EventKind::Recorded
            },
            result: i as i64,
            bytes: 100 * i,
        });
    }
    if outcome == Outcome::Diverged {
        r.first_divergence = Some(sample_divergence());
    }
    r.wall_seconds = 1.5;
    r
}

#[test]
fn first_difference_cases() {
    assert_eq!(first_difference(b"", b""), None);
    assert_eq!(first_difference(b"abc", b"abc"), None);
    assert_eq!(first_difference(b"abc", b"abd"), Some(2));
    assert_eq!(first_difference(b"xbc", b"abc"), Some(0));
    assert_eq!(first_difference(b"ab", b"abc"), Some(2));
    assert_eq!(first_difference(b"abc", b""), Some(0));
    let long = vec![7u8; 1000];
    let mut other = long.clone();
    other[777] = 8;
    assert_eq!(first_difference(&long, &other), Some(777));
    assert_eq!(first_difference(&long, &long[..640]), Some(640));
}

fn check_first_difference(a: &[u8], b: &[u8]) {
    match first_difference(a, b) {
        None => assert_eq!(a, b),
        Some(i) => {
            let i = i as usize;
            assert_eq!(a[..i], b[..i], "bytes before {i} must agree");
            if i < a.len() && i < b.len() {
                assert_ne!(a[i], b[i]);
            } else {
                assert_eq!(i, a.len().min(b.len()));
                assert_ne!(a.len(), b.len());
            }
        }
    }
}

proptest! {
    #[test]
    fn first_difference_is_the_first_differing_position(
        a in proptest::collection::vec(0u8..3, 0..300),
        b in proptest::collection::vec(0u8..3, 0..300),
    ) {
        check_first_difference(&a, &b);
    }

    #[test]
    fn first_difference_after_a_long_common_prefix(
        base in proptest::collection::vec(any::<u8>(), 0..1000),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        cut in any::<prop::sample::Index>(),
    ) {
        let mut other = base.clone();
        if !other.is_empty() {
            let i = at.index(other.len());
            other[i] ^= flip;
            prop_assert_eq!(first_difference(&base, &other), Some(i as u64));
        }
        let short = &base[..cut.index(base.len() + 1)];
        check_first_difference(&base, short);
        check_first_difference(&base, &other);
    }
}

#[test]
fn hash_is_xxh3_64_with_seed_0() {
    // The XXH3-64 of the empty input, from the xxHash reference.
    assert_eq!(hash64(b""), 0x2d06_8005_38d3_94c2);
    assert_eq!(Value::of(b"", None).hash, "2d06800538d394c2");
    assert_ne!(hash64(b"a"), hash64(b"b"));
}

#[test]
fn value_excerpt_starts_before_the_difference() {
    let bytes: Vec<u8> = (0..200u8).collect();
    let v = Value::of(&bytes, Some(100));
    assert_eq!(v.len, 200);
    assert_eq!(v.hash.len(), 16);
    assert_eq!(v.excerpt_offset, 100 - EXCERPT_BEFORE);
    assert_eq!(v.excerpt().unwrap(), bytes[84..148].to_vec());
    assert_eq!(v.excerpt_hex.len(), 128);
    assert_eq!(&v.excerpt_hex[..4], "5455");

    let start = Value::of(&bytes, None);
    assert_eq!(start.excerpt_offset, 0);
    assert_eq!(start.excerpt().unwrap(), bytes[..64].to_vec());
    // Near the start, and past the end (the shorter value of a prefix pair).
    assert_eq!(Value::of(&bytes, Some(5)).excerpt_offset, 0);
    let tail = Value::of(&bytes[..30], Some(30));
    assert_eq!(tail.excerpt_offset, 14);
    assert_eq!(tail.excerpt().unwrap(), bytes[14..30].to_vec());
    let past = Value::of(&bytes[..10], Some(500));
    assert_eq!((past.excerpt_offset, past.excerpt_hex.as_str()), (10, ""));
    let short = Value::of(b"hi", Some(1));
    assert_eq!(
        (short.excerpt_text.as_str(), short.excerpt_hex.as_str()),
        ("hi", "6869")
    );
}

#[test]
fn excerpt_text_escapes_control_characters() {
    let v = Value::of("a\\b\n\t\r\0\x1b[31m é \u{202e}x".as_bytes(), None);
    assert_eq!(v.excerpt_text, r"a\\b\n\t\r\0\x1b[31m é \u{202e}x");
    let bad = Value::of(&[b'o', b'k', 0xff, 0xc3, b'!', 0x7f], None);
    assert_eq!(bad.excerpt_text, r"ok\xff\xc3!\x7f");
    assert_eq!(escape_text("\u{85}".as_bytes()), r"\u{85}");
}

#[test]
fn number_and_hashed_values() {
    let n = Value::of_number(-11);
    assert_eq!(n.len, 8);
    assert_eq!(n.number, Some(-11));
    assert_eq!(n.excerpt_text, "-11");
    assert_eq!(n.excerpt_hex, "f5ffffffffffffff");
    assert_eq!(n.hash, format!("{:016x}", hash64(&(-11i64).to_le_bytes())));
    let h = Value::hashed(5, 0xab);
    assert_eq!(h.hash, "00000000000000ab");
    assert_eq!((h.len, h.excerpt_hex.as_str()), (5, ""));
}

#[test]
fn push_common_keeps_the_last_sixteen() {
    let r = sample(Outcome::Identical);
    assert_eq!(r.last_common.len(), LAST_COMMON_MAX);
    assert_eq!(r.last_common[0].syscall_seq, 14);
    assert_eq!(r.last_common[15].syscall_seq, 29);
}

#[test]
fn json_round_trip_and_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    for outcome in [
        Outcome::Identical,
        Outcome::Diverged,
        Outcome::ReplicaFailed,
        Outcome::FailedOver,
        Outcome::ChannelError,
    ] {
        let r = sample(outcome);
        r.save(&path).unwrap();
        assert_eq!(Report::load(&path).unwrap(), r);
    }
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.ends_with("}\n"));
    assert!(text.contains("\"outcome\": \"channel_error\""), "{text}");
    assert!(text.contains("\"first_divergence\": null"), "{text}");
    assert!(text.contains("\"schema\": 1"), "{text}");

    let mut r = sample(Outcome::Diverged);
    r.first_divergence.as_mut().unwrap().kind = DivergenceKind::MissingEvent;
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains("\"kind\":\"missing_event\""), "{json}");
    assert!(json.contains("\"kind\":\"recorded\""), "{json}");
    // Nothing but the report is left in the directory: the temporary file was renamed.
    r.save(&path).unwrap();
    let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn non_finite_wall_time_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    let mut r = sample(Outcome::Identical);
    r.wall_seconds = f64::NAN;
    r.save(&path).unwrap();
    assert_eq!(Report::load(&path).unwrap().wall_seconds, 0.0);
}

#[test]
fn unknown_fields_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    let mut json = serde_json::to_value(sample(Outcome::Identical)).unwrap();
    json["added_later"] = serde_json::json!({"x": 1});
    fs::write(&path, json.to_string()).unwrap();
    assert_eq!(Report::load(&path).unwrap(), sample(Outcome::Identical));
}

#[test]
fn reports_without_per_replica_counters_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    let mut json = serde_json::to_value(sample(Outcome::Identical)).unwrap();
    let counters = json["counters"].as_object_mut().unwrap();
    for key in [
        "primary_turns",
        "secondary_turns",
        "primary_exits",
        "secondary_exits",
    ] {
        assert!(counters.remove(key).is_some(), "{key} is written");
    }
    fs::write(&path, json.to_string()).unwrap();
    let c = Report::load(&path).unwrap().counters;
    assert_eq!((c.primary_turns, c.secondary_exits), (0, 0));
    assert_eq!(c.turns, 321);
}

#[test]
fn load_errors_are_one_line_and_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let e = Report::load(&missing).unwrap_err();
    assert!(matches!(e, ReportError::Io { .. }), "{e:?}");

    let bad = dir.path().join("bad.json");
    fs::write(&bad, "garbage").unwrap();
    let e2 = Report::load(&bad).unwrap_err();
    assert!(matches!(e2, ReportError::Parse { .. }), "{e2:?}");
    assert!(e2.to_string().contains("line 1 column 1"), "{e2}");

    let newer = dir.path().join("newer.json");
    let mut json = serde_json::to_value(sample(Outcome::Identical)).unwrap();
    json["schema"] = 2.into();
    fs::write(&newer, json.to_string()).unwrap();
    let e3 = Report::load(&newer).unwrap_err();
    assert!(
        matches!(e3, ReportError::Schema { found: Some(2), .. }),
        "{e3:?}"
    );
    assert!(e3.to_string().contains("schema 2"), "{e3}");

    let other = dir.path().join("other.json");
    fs::write(&other, "[1, 2]").unwrap();
    let e4 = Report::load(&other).unwrap_err();
    assert!(
        matches!(e4, ReportError::Schema { found: None, .. }),
        "{e4:?}"
    );

    let partial = dir.path().join("partial.json");
    fs::write(&partial, "{\n  \"schema\": 1,\n  \"mode\": \"det\"\n}").unwrap();
    let e5 = Report::load(&partial).unwrap_err();
    assert!(e5.to_string().contains("missing field"), "{e5}");

    let e6 = sample(Outcome::Identical)
        .save(dir.path().join("no/such/dir/r.json"))
        .unwrap_err();
    assert!(matches!(e6, ReportError::Write { .. }), "{e6:?}");

    for (e, name) in [
        (e, "missing.json"),
        (e2, "bad.json"),
        (e3, "newer.json"),
        (e4, "other.json"),
        (e5, "partial.json"),
        (e6, "r.json"),
    ] {
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains(name), "{msg}");
    }
}

#[test]
fn identical_summary() {
    let s = sample(Outcome::Identical).summary();
    let first = s.lines().next().unwrap();
    assert_eq!(
        first,
        "identical: 1,234 records, 56,789 bytes compared, 321 turns"
    );
    assert!(s.contains("'an arg'"), "{s}");
    assert!(s.contains("cores 0-1, exited 0"), "{s}");
    assert!(s.contains("cores 2-3, exited 0"), "{s}");
    assert!(s.contains("last 16 common events"), "{s}");
    assert!(
        s.contains("max lag            12 records, 4,096 bytes"),
        "{s}"
    );
    assert!(!s.contains("first divergence"), "{s}");
}

#[test]
fn divergence_summary_has_the_key_facts() {
    let s = sample(Outcome::Diverged).summary();
    let first = s.lines().next().unwrap();
    assert_eq!(
        first,
        "diverged: output at thread 1, syscall #42 write (fd 1), first differing byte 34"
    );
    for fact in [
        "logical time 17, turn 321",
        "first differing byte: 34",
        "detail:     stdout differs",
        "text from byte 18: \"1\\nline 2 of the primary\\n\"",
        "text from byte 18: \"1\\nline 2 of the SECONDARY\\n\"",
        "42 bytes, hash ",
        "44 bytes, hash ",
        "clock_gettime",
        "recorded",
        "compared outputs   200 (56,789 bytes)",
    ] {
        assert!(s.contains(fact), "missing {fact:?} in\n{s}");
    }
    // The caret stands under the first differing byte (34 = row 0x20, column 2).
    let lines: Vec<&str> = s.lines().collect();
    let caret = lines.iter().position(|l| l.trim() == "^^").unwrap();
    let secondary_row = lines[caret - 1];
    assert!(secondary_row.contains("secondary  00000020"), "{s}");
    let col = lines[caret].find('^').unwrap();
    assert_eq!(&secondary_row[col..col + 2], "53"); // 'S'
    assert_eq!(&lines[caret - 2][col..col + 2], "70"); // 'p'
}

#[test]
fn other_outcomes_summaries() {
    let mut r = sample(Outcome::ReplicaFailed);
    r.secondary = ReplicaSummary::killed(vec![2], 9);
    let s = r.summary();
    assert_eq!(
        s.lines().next().unwrap(),
        "replica failed: secondary killed by SIGKILL (status 137)"
    );
    r.secondary = ReplicaSummary::failed(vec![], "cannot map guest memory");
    assert!(r
        .summary()
        .lines()
        .next()
        .unwrap()
        .contains("secondary did not finish; error: cannot map guest memory"));
    let mut c = sample(Outcome::ChannelError);
    c.channel_error = Some("corrupt record at stream offset 64".into());
    assert_eq!(
        c.summary().lines().next().unwrap(),
        "channel error: corrupt record at stream offset 64"
    );
    let mut n = sample(Outcome::Diverged);
    let d = n.first_divergence.as_mut().unwrap();
    d.kind = DivergenceKind::Syscall;
    d.primary = Value::of_number(5);
    d.secondary = Value::hashed(3, 1);
    d.first_differing_byte = None;
    let s = n.summary();
    assert!(s.contains("primary:    result 5"), "{s}");
    assert!(s.contains("(hash only"), "{s}");
    assert!(!s.contains("hex:"), "{s}");
}

#[test]
fn comparison_lines_up_two_runs() {
    let a = sample(Outcome::Identical);
    let mut b = sample(Outcome::Diverged);
    b.counters.records += 66;
    b.counters.turns -= 21;
    let s = compare_reports(&a, &b);
    assert!(
        s.lines()
            .any(|l| l.starts_with("outcome") && l.contains("identical") && l.contains("diverged")),
        "{s}"
    );
    assert!(
        s.lines()
            .any(|l| l.starts_with("records ") && l.ends_with("+66")),
        "{s}"
    );
    assert!(
        s.lines()
            .any(|l| l.starts_with("turns ") && l.ends_with("-21")),
        "{s}"
    );
    assert!(
        s.lines()
            .any(|l| l.starts_with("wall_seconds") && l.ends_with("+0.000")),
        "{s}"
    );
    assert!(s.contains("program: /bin/prog 'an arg'"), "{s}");
    assert!(s.contains("first   none"), "{s}");
    assert!(s.contains("only the second run diverged"), "{s}");

    let c = sample(Outcome::Diverged);
    let same = compare_reports(&b, &c);
    assert!(same.contains("same place in both runs (output at thread 1, syscall #42 write (fd 1)); the values are the same"), "{same}");
    let mut d = c.clone();
    d.first_divergence.as_mut().unwrap().syscall_seq = 43;
    assert!(compare_reports(&c, &d).contains("diverged at different places"));
    let mut e = c.clone();
    e.first_divergence.as_mut().unwrap().secondary = Value::of(b"other", None);
    assert!(compare_reports(&c, &e).contains("the values differ"));
    assert!(compare_reports(&a, &a).contains("neither run diverged"));
}

#[test]
fn helpers() {
    assert_eq!(thousands(0), "0");
    assert_eq!(thousands(999), "999");
    assert_eq!(thousands(1000), "1,000");
    assert_eq!(thousands(1_234_567), "1,234,567");
    assert_eq!(cores(&[]), "any");
    assert_eq!(cores(&[3, 0, 1, 2, 6]), "0-3,6");
    assert_eq!(signal_name(9), "SIGKILL");
    assert_eq!(signal_name(40), "signal 40");
    assert_eq!(delta(5, 3), "-2");
    assert_eq!(
        shell_words(&["a".into(), "it's".into(), String::new()]),
        r"a 'it'\''s' ''"
    );
}

fn sample_failover() -> Failover {
    Failover {
        kill_after_seconds: Some(1.75),
        at_seconds: 1.752,
        how: "killed by SIGKILL".into(),
        ..Failover::taken_over(&crate::findings::Takeover {
            noticed: "the primary is gone".into(),
            takeover_ms: 8.5,
            records_drained: 120,
            descriptors: 4,
            connections: 2,
            in_doubt_outputs: 1,
            output_bytes_skipped: 6,
        })
    }
}

#[test]
fn a_failover_round_trips_and_reads_in_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    let mut r = sample(Outcome::FailedOver);
    r.failover = Some(sample_failover());
    r.save(&path).unwrap();
    assert_eq!(Report::load(&path).unwrap(), r);
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"outcome\": \"failed_over\""), "{text}");
    assert!(text.contains("\"died\": \"primary\""), "{text}");
    assert!(text.contains("\"kill_after_seconds\": 1.75"), "{text}");
    assert!(text.contains("\"records_drained\": 120"), "{text}");
    let s = r.summary();
    assert_eq!(
        s.lines().next().unwrap(),
        "failed over: the primary died (killed by SIGKILL, injected at 1.750 s) at 1.752 s; \
         the secondary took over in 8.5 ms: 120 records drained, 4 descriptors (2 connections), \
         1 in-doubt outputs, 6 output bytes skipped"
    );

    // A death that nobody took over is a replica failure; the summary still shows it.
    let mut failed = sample(Outcome::ReplicaFailed);
    failed.failover = Some(Failover::death(Died::Primary, "killed by SIGKILL", 2.0));
    let s = failed.summary();
    assert!(s.starts_with("replica failed: "), "{s}");
    assert!(
        s.contains("failover:  the primary died (killed by SIGKILL) at 2.000 s; the secondary did not take over"),
        "{s}"
    );
    let json = serde_json::to_value(&failed).unwrap();
    assert!(json["failover"]["takeover_ms"].is_null(), "{json}");
    assert!(json["failover"]["kill_after_seconds"].is_null(), "{json}");

    let cmp = compare_reports(&failed, &r);
    assert!(
        cmp.lines().any(|l| l.starts_with("failover ")
            && l.contains("primary killed by SIGKILL at 2.000 s, not taken over")
            && l.contains("primary killed by SIGKILL at 1.752 s, taken over in 8.5 ms")),
        "{cmp}"
    );
}

#[test]
fn reports_written_before_failover_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.json");
    let mut json = serde_json::to_value(sample(Outcome::ReplicaFailed)).unwrap();
    json.as_object_mut().unwrap().remove("failover");
    assert!(json.get("failover").is_none());
    fs::write(&path, json.to_string()).unwrap();
    let r = Report::load(&path).unwrap();
    assert_eq!(r.failover, None);
    assert_eq!(r, sample(Outcome::ReplicaFailed));
    assert!(!r.summary().contains("failover"), "{}", r.summary());
    // And a failover object written without its optional fields (an older writer of it).
    let mut json = serde_json::to_value(sample(Outcome::FailedOver)).unwrap();
    json["failover"] = serde_json::json!({
        "died": "secondary", "how": "killed by SIGKILL", "at_seconds": 3.5
    });
    fs::write(&path, json.to_string()).unwrap();
    let f = Report::load(&path).unwrap().failover.unwrap();
    assert_eq!(
        f,
        Failover::death(Died::Secondary, "killed by SIGKILL", 3.5)
    );
}
