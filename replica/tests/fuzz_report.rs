//! Fuzzing of the pair report parser ([`Report::parse`], what `ditto report` and `Report::load`
//! read): arbitrary bytes, arbitrary JSON and mutations of valid reports must give a report or
//! an error, never a panic; valid reports round-trip. `DITTO_FUZZ_CASES=N` runs N cases per
//! property (the suite runs a few thousand).

use proptest::prelude::*;
use proptest::test_runner::Config;
use replica::report::{
    first_difference, Counters, Died, Divergence, DivergenceKind, Event, EventKind, Failover,
    Outcome, ReplicaSummary, Report, Value,
};

/// Cases per property: modest in the suite, raised with `DITTO_FUZZ_CASES` for long runs.
fn config() -> Config {
    let cases = std::env::var("DITTO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

fn text() -> impl Strategy<Value = String> {
    // Control characters, quotes, backslashes and non-ASCII, which JSON must escape.
    "[a-z\"\\\\\u{0}-\u{1f}é€\u{202e}\u{1F600} ]{0,12}"
}

fn summary() -> impl Strategy<Value = ReplicaSummary> {
    (
        proptest::collection::vec(0usize..512, 0..3),
        any::<Option<i32>>(),
        proptest::option::of(text()),
        proptest::option::of(text()),
    )
        .prop_map(|(cores, exit_status, exit, error)| ReplicaSummary {
            cores,
            exit_status,
            exit,
            error,
        })
}

fn divergence() -> impl Strategy<Value = Divergence> {
    let kinds = [
        DivergenceKind::Output,
        DivergenceKind::Syscall,
        DivergenceKind::Exit,
        DivergenceKind::MissingEvent,
        DivergenceKind::ExtraEvent,
        DivergenceKind::Signal,
        DivergenceKind::Schedule,
    ];
    (
        (
            prop::sample::select(kinds.to_vec()),
            any::<u32>(),
            any::<u64>(),
            text(),
        ),
        (
            proptest::option::of(text()),
            any::<Option<i64>>(),
            any::<Option<u64>>(),
            any::<Option<u64>>(),
        ),
        (
            proptest::collection::vec(any::<u8>(), 0..80),
            proptest::collection::vec(any::<u8>(), 0..80),
            any::<i64>(),
            text(),
        ),
    )
        .prop_map(
            |(
                (kind, thread, syscall_seq, syscall),
                (primary_syscall, fd, logical_time, turn),
                (p, s, n, detail),
            )| {
                let at = first_difference(&p, &s);
                Divergence {
                    kind,
                    thread,
                    syscall_seq,
                    syscall,
                    primary_syscall,
                    fd,
                    logical_time,
                    turn,
                    primary: Value::of(&p, at),
                    secondary: if n % 2 == 0 {
                        Value::of(&s, at)
                    } else {
                        Value::of_number(n)
                    },
                    first_differing_byte: at,
                    detail,
                }
            },
        )
}

fn event() -> impl Strategy<Value = Event> {
    let kinds = [
        EventKind::Recorded,
        EventKind::Compared,
        EventKind::Signal,
        EventKind::Exit,
        EventKind::Turn,
    ];
    (
        any::<u32>(),
        any::<u64>(),
        text(),
        prop::sample::select(kinds.to_vec()),
        any::<i64>(),
        any::<u64>(),
    )
        .prop_map(
            |(thread, syscall_seq, syscall, kind, result, bytes)| Event {
                thread,
                syscall_seq,
                syscall,
                kind,
                result,
                bytes,
            },
        )
}

fn failover() -> impl Strategy<Value = Failover> {
    (
        prop::sample::select(vec![Died::Primary, Died::Secondary]),
        text(),
        0u32..100_000,
        proptest::option::of(0u32..100_000),
        proptest::option::of((
            text(),
            0u32..100_000,
            proptest::collection::vec(any::<u64>(), 5),
        )),
    )
        .prop_map(|(died, how, at_ms, kill_ms, takeover)| {
            // Whole milliseconds: integer-valued f64s round-trip exactly through JSON.
            let mut f = Failover::death(died, how, f64::from(at_ms));
            f.kill_after_seconds = kill_ms.map(f64::from);
            if let Some((noticed, ms, n)) = takeover {
                f.noticed = Some(noticed);
                f.takeover_ms = Some(f64::from(ms));
                f.records_drained = Some(n[0]);
                f.descriptors = Some(n[1]);
                f.connections = Some(n[2]);
                f.in_doubt_outputs = Some(n[3]);
                f.output_bytes_skipped = Some(n[4]);
            }
            f
        })
}

fn report() -> impl Strategy<Value = Report> {
    let outcomes = [
        Outcome::Identical,
        Outcome::Diverged,
        Outcome::ReplicaFailed,
        Outcome::ChannelError,
        Outcome::FailedOver,
    ];
    (
        (
            text(),
            proptest::collection::vec(text(), 0..3),
            prop::sample::select(outcomes.to_vec()),
        ),
        (summary(), summary(), proptest::option::of(divergence())),
        (
            proptest::collection::vec(event(), 0..4),
            proptest::collection::vec(any::<u64>(), 10),
            proptest::option::of(text()),
            0u32..100_000,
        ),
        proptest::option::of(failover()),
    )
        .prop_map(
            |(
                (mode, program, outcome),
                (primary, secondary, first_divergence),
                (last_common, c, channel_error, ms),
                failover,
            )| {
                let mut r = Report::new(mode, program);
                r.outcome = outcome;
                r.primary = primary;
                r.secondary = secondary;
                r.first_divergence = first_divergence;
                r.last_common = last_common;
                r.counters = Counters {
                    records: c[0],
                    record_bytes: c[1],
                    recorded_syscalls: c[2],
                    compared_outputs: c[3],
                    bytes_compared: c[4],
                    turns: c[5],
                    reentries: c[6],
                    signals: c[7],
                    max_lag_records: c[8],
                    max_lag_bytes: c[9],
                    ..Counters::default()
                };
                r.channel_error = channel_error;
                // Whole milliseconds as an integer-valued f64 round-trip exactly through JSON.
                r.wall_seconds = f64::from(ms);
                r.failover = failover;
                r
            },
        )
}

/// One mutation of the JSON text.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, Vec<u8>),
    Delete(prop::sample::Index, prop::sample::Index),
    Truncate(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Bytes that change JSON structure or types, and large or odd numbers.
    let tokens = prop::sample::select(vec![
        b"{".to_vec(),
        b"}".to_vec(),
        b"[".to_vec(),
        b"]".to_vec(),
        b"\"".to_vec(),
        b",".to_vec(),
        b":".to_vec(),
        b"null".to_vec(),
        b"-1".to_vec(),
        b"1e999".to_vec(),
        b"18446744073709551616".to_vec(),
        b"\\u0000".to_vec(),
        b"\\ud800".to_vec(),
        vec![0xff, 0xfe],
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".to_vec(),
    ]);
    prop_oneof![
        (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<prop::sample::Index>(), tokens).prop_map(|(i, t)| Mutation::Insert(i, t)),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len();
    match m {
        Mutation::Flip(i, b) if n > 0 => bytes[i.index(n)] ^= b,
        Mutation::Insert(i, t) => {
            let at = i.index(n + 1);
            bytes.splice(at..at, t.iter().copied());
        }
        Mutation::Delete(i, len) if n > 0 => {
            let at = i.index(n);
            let end = at + len.index((n - at).min(16) + 1);
            bytes.drain(at..end);
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(n + 1)),
        _ => {}
    }
}

/// Whatever parses serialises and parses back to the same report.
fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(r) = Report::parse("fuzz", bytes) {
        let again = serde_json::to_vec(&r).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = Report::parse("fuzz", &again).map_err(|e| TestCaseError::fail(e.to_string()))?;
        // A NaN-free report compares equal to itself; parsed numbers are never NaN.
        prop_assert_eq!(back, r);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        check(&bytes)?;
    }

    #[test]
    fn reports_roundtrip(r in report()) {
        let text = serde_json::to_vec_pretty(&r).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = Report::parse("fuzz", &text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, r);
    }

    #[test]
    fn mutated_reports_never_panic(
        r in report(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let mut text = serde_json::to_vec(&r).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for m in &mutations {
            mutate(&mut text, m);
        }
        check(&text)?;
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let mut text = b"{\"schema\":".to_vec();
    text.extend(std::iter::repeat_n(b'[', 1 << 20));
    assert!(Report::parse("deep", &text).is_err());
}

#[test]
fn load_reads_what_parse_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.json");
    let r = Report::new("det", vec!["prog".into()]);
    r.save(&path).expect("save");
    assert_eq!(Report::load(&path).expect("load"), r);
}

/// Found by `mutated_reports_never_panic` with 1M cases: without serde_json's exact float
/// parsing, a long `wall_seconds` came back one ULP off after a save and load.
#[test]
fn long_floats_survive_a_reparse() {
    let text = serde_json::to_string(&Report::new("det", vec![])).expect("json");
    let field = "\"wall_seconds\":0.0";
    assert!(text.contains(field), "{text}");
    let text = text.replace(field, "\"wall_seconds\":1184467440737095516161450.0");
    check(text.as_bytes()).expect("round-trip");
}
