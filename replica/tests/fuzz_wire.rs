//! Fuzzing of the replication payload decoders ([`replica::wire`]): what the
//! secondary reads from the primary. Arbitrary bytes and mutations of valid encodings must
//! give an error or a value, never a panic; valid encodings round-trip.
//! `DITTO_FUZZ_CASES=N` runs N cases per property (the suite runs a few thousand).

use det::record::RecordKind;
use proptest::prelude::*;
use proptest::test_runner::Config;
use replica::wire::{
    decode_fragment, decode_thread_start, encode_thread_start, fragments, EndInfo, Reassembler,
    ThreadRecord, FRAGMENT_HEADER,
};

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

/// Every record kind, including those that are not per-thread (their decoding must fail).
fn any_kind() -> impl Strategy<Value = RecordKind> {
    (1u8..=8).prop_map(|b| RecordKind::try_from(b).expect("1..=8 are kinds"))
}

/// Records in their canonical form: the one decoding gives back (`Output` data is present
/// when non-empty or when the call returned 0).
fn thread_record() -> impl Strategy<Value = ThreadRecord> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..48);
    prop_oneof![
        (
            any::<u32>(),
            any::<u64>(),
            any::<i64>(),
            any::<i32>(),
            proptest::collection::vec((any::<u64>(), bytes()), 0..4)
        )
            .prop_map(
                |(nr, syscall_no, ret, signal, writes)| ThreadRecord::Syscall {
                    nr,
                    syscall_no,
                    ret,
                    signal,
                    writes
                }
            ),
        (
            (any::<u32>(), any::<u64>(), any::<i32>(), any::<i64>()),
            (any::<i32>(), any::<u64>(), any::<u64>(), bytes())
        )
            .prop_map(|((nr, syscall_no, fd, ret), (signal, asked, hash, d))| {
                let data = (ret == 0 || !d.is_empty()).then_some(d);
                ThreadRecord::Output {
                    nr,
                    syscall_no,
                    fd,
                    ret,
                    signal,
                    asked,
                    hash,
                    data,
                }
            }),
        (any::<bool>(), any::<bool>(), any::<Option<u64>>()).prop_map(
            |(took_turn, timed_out, at)| ThreadRecord::TimedWait {
                took_turn,
                timed_out,
                at
            }
        ),
        any::<u64>().prop_map(|at| ThreadRecord::Reentry { at }),
    ]
}

/// One mutation of a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Delete(prop::sample::Index),
    Truncate(prop::sample::Index),
    Extend(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
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
        Mutation::Insert(i, b) => bytes.insert(i.index(n + 1), *b),
        Mutation::Delete(i) if n > 0 => drop(bytes.remove(i.index(n))),
        Mutation::Truncate(i) => bytes.truncate(i.index(n + 1)),
        Mutation::Extend(more) => bytes.extend_from_slice(more),
        _ => {}
    }
}

/// Runs every decoder on `p` (as a payload of `kind` where the decoder takes one); whatever
/// decodes re-encodes to a payload that decodes to the same value.
fn check_all(kind: RecordKind, p: &[u8]) -> Result<(), TestCaseError> {
    if let Ok((tid, seq, rec)) = ThreadRecord::decode(kind, p) {
        prop_assert_eq!(rec.kind(), kind);
        let mut again = Vec::new();
        rec.encode(tid, seq, &mut again);
        prop_assert_eq!(ThreadRecord::decode(kind, &again), Ok((tid, seq, rec)));
    }
    if let Ok(end) = EndInfo::decode(p) {
        prop_assert_eq!(&end.encode()[..], p);
    }
    if let Ok(tid) = decode_thread_start(p) {
        prop_assert_eq!(&encode_thread_start(tid)[..], p);
    }
    if let Ok(f) = decode_fragment(p) {
        prop_assert_eq!(f.data.len() + FRAGMENT_HEADER, p.len());
    }
    let mut r = Reassembler::default();
    if let Ok(Some((k, whole))) = r.push(p) {
        prop_assert_eq!(whole.len() + FRAGMENT_HEADER, p.len());
        prop_assert!(k != RecordKind::Fragment);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_payloads_never_panic(
        kind in any_kind(),
        p in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        check_all(kind, &p)?;
    }

    #[test]
    fn thread_records_roundtrip(rec in thread_record(), tid in any::<u32>(), seq in any::<u64>()) {
        let mut p = Vec::new();
        rec.encode(tid, seq, &mut p);
        prop_assert_eq!(ThreadRecord::decode(rec.kind(), &p), Ok((tid, seq, rec)));
    }

    #[test]
    fn mutated_thread_records_never_panic(
        rec in thread_record(),
        as_kind in any_kind(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let mut p = Vec::new();
        rec.encode(7, 9, &mut p);
        for m in &mutations {
            mutate(&mut p, m);
        }
        check_all(rec.kind(), &p)?;
        check_all(as_kind, &p)?;
    }

    #[test]
    fn end_and_thread_start_roundtrip(status in any::<i32>(), signal in any::<i32>(), tid in any::<u32>()) {
        let end = EndInfo { status, signal };
        prop_assert_eq!(EndInfo::decode(&end.encode()), Ok(end));
        prop_assert_eq!(decode_thread_start(&encode_thread_start(tid)), Ok(tid));
    }

    #[test]
    fn fragments_reassemble(
        rec in thread_record(),
        tid in any::<u32>(),
        max in (FRAGMENT_HEADER + 1)..64,
    ) {
        let mut whole = Vec::new();
        rec.encode(tid, 3, &mut whole);
        let kind = rec.kind();
        let pieces = fragments(kind, &whole, max);
        let mut r = Reassembler::default();
        let (last, init) = pieces.split_last().expect("at least one fragment");
        if kind == RecordKind::Reentry {
            // Reentry records are never fragmented: the reassembler refuses the kind.
            prop_assert!(r.push(last).is_err());
            return Ok(());
        }
        for f in init {
            prop_assert_eq!(r.push(f), Ok(None));
        }
        prop_assert_eq!(r.push(last), Ok(Some((kind, whole.clone()))));
        prop_assert_eq!(r.held_bytes(), 0);
        prop_assert_eq!(ThreadRecord::decode(kind, &whole), Ok((tid, 3, rec)));
    }

    #[test]
    fn mutated_fragment_streams_never_panic(
        rec in thread_record(),
        max in (FRAGMENT_HEADER + 1)..40,
        mutations in proptest::collection::vec((any::<prop::sample::Index>(), mutation()), 0..6),
    ) {
        let mut whole = Vec::new();
        rec.encode(1, 2, &mut whole);
        let mut pieces = fragments(rec.kind(), &whole, max);
        for (i, m) in &mutations {
            let n = pieces.len();
            mutate(&mut pieces[i.index(n)], m);
        }
        let mut r = Reassembler::default();
        let mut given = 0u64;
        for f in &pieces {
            given += f.len() as u64;
            if let Ok(Some((kind, whole))) = r.push(f) {
                let _ = ThreadRecord::decode(kind, &whole);
            }
            // The reassembler holds no more than it was given.
            prop_assert!(r.held_bytes() <= given);
        }
    }
}
