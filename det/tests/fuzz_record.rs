//! Fuzzing of the channel's record framing ([`det::record`]): arbitrary bytes and mutations of
//! valid encodings must decode to an error or a record, never panic, and valid encodings must
//! round-trip. `DITTO_FUZZ_CASES=N` runs N cases per property (the suite runs a few thousand).

use det::record::{Record, RecordKind, Reentry, HEADER_LEN, MAGIC, VERSION};
use det::tid::DetTid;
use det::turn::Turn;
use proptest::prelude::*;
use proptest::test_runner::Config;

/// Cases per property: modest in the suite, raised with `DITTO_FUZZ_CASES` for long runs.
fn config() -> Config {
    let cases = std::env::var("DITTO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

fn kind() -> impl Strategy<Value = RecordKind> {
    (1u8..=8).prop_map(|b| RecordKind::try_from(b).expect("1..=8 are kinds"))
}

fn encoded(kind: RecordKind, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Record { kind, seq, payload }
        .encode(&mut out)
        .expect("small payloads encode");
    out
}

/// Whatever `Record::decode` accepts is a whole record inside the buffer, and decoding its
/// re-encoding gives it back.
fn check_decode(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok((rec, used)) = Record::decode(bytes) {
        prop_assert!(used >= HEADER_LEN && used <= bytes.len());
        prop_assert_eq!(used, rec.encoded_len());
        prop_assert_eq!(&encoded(rec.kind, rec.seq, rec.payload)[..], &bytes[..used]);
    }
    let _ = Turn::from_payload(bytes);
    let _ = Reentry::from_payload(bytes);
    Ok(())
}

/// One mutation of a byte string: flip, overwrite, insert, delete, truncate or extend.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(prop::sample::Index, u8),
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Delete(prop::sample::Index),
    Truncate(prop::sample::Index),
    Extend(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Delete),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        proptest::collection::vec(any::<u8>(), 1..16).prop_map(Mutation::Extend),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len();
    match m {
        Mutation::Flip(i, b) if n > 0 => bytes[i.index(n)] ^= b,
        Mutation::Set(i, b) if n > 0 => bytes[i.index(n)] = *b,
        Mutation::Insert(i, b) => bytes.insert(i.index(n + 1), *b),
        Mutation::Delete(i) if n > 0 => drop(bytes.remove(i.index(n))),
        Mutation::Truncate(i) => bytes.truncate(i.index(n + 1)),
        Mutation::Extend(more) => bytes.extend_from_slice(more),
        _ => {}
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(
        mut bytes in proptest::collection::vec(any::<u8>(), 0..96),
        header in 0u8..3,
    ) {
        // Random bytes almost never pass the magic; give some of them a valid start so the
        // length, checksum and kind checks are reached too.
        if header > 0 && bytes.len() >= 3 {
            bytes[..2].copy_from_slice(&MAGIC.to_le_bytes());
            bytes[2] = VERSION;
        }
        check_decode(&bytes)?;
    }

    #[test]
    fn valid_records_roundtrip(
        kind in kind(),
        seq in any::<u64>(),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        trailing in proptest::collection::vec(any::<u8>(), 0..24),
    ) {
        let mut bytes = encoded(kind, seq, &payload);
        let len = bytes.len();
        bytes.extend_from_slice(&trailing);
        let (rec, used) = Record::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(used, len);
        prop_assert_eq!(rec, Record { kind, seq, payload: &payload });
    }

    #[test]
    fn mutated_records_never_panic(
        kind in kind(),
        seq in any::<u64>(),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let mut bytes = encoded(kind, seq, &payload);
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        check_decode(&bytes)?;
    }

    #[test]
    fn turn_and_reentry_payloads_roundtrip(tid in any::<u32>(), a in any::<u64>(), b in any::<u64>()) {
        let turn = Turn { tid: DetTid(tid), thread_seq: a, global_seq: b };
        prop_assert_eq!(Turn::from_payload(&turn.to_payload()), Ok(turn));
        let ev = Reentry { tid: DetTid(tid), at: a };
        prop_assert_eq!(Reentry::from_payload(&ev.to_payload()), Ok(ev));
    }
}
