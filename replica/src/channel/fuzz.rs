//! Fuzzing of the consumer's reading of the ring: the peer writes what it likes into the data
//! area and the head counter, and the consumer must answer with records or errors, never a
//! panic or a read outside the ring. `DITTO_FUZZ_CASES=N` runs N cases per property.

use super::*;
use crate::testkit::payload;
use det::record::RecordKind;
use proptest::prelude::*;
use proptest::test_runner::Config;

/// Cases per property: modest in the suite, raised with `DITTO_FUZZ_CASES` for long runs.
fn config() -> Config {
    let cases = std::env::var("DITTO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// What a faulty producer may do to the head counter.
#[derive(Debug, Clone)]
enum Head {
    /// Leave the honest value.
    Honest,
    /// Move it by a small amount (possibly unaligned, possibly behind the tail).
    Nudge(i16),
    /// Any value at all.
    Wild(u64),
}

fn head() -> impl Strategy<Value = Head> {
    prop_oneof![
        Just(Head::Honest),
        any::<i16>().prop_map(Head::Nudge),
        any::<u64>().prop_map(Head::Wild),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Valid records, then patches of arbitrary bytes over the ring and a tampered head: every
    /// read returns a record in sequence or an error, and a corrupt record stays reported.
    #[test]
    fn a_hostile_ring_never_panics_the_consumer(
        sizes in proptest::collection::vec(0usize..600, 0..12),
        patches in proptest::collection::vec(
            (any::<prop::sample::Index>(), proptest::collection::vec(any::<u8>(), 1..64)),
            0..6,
        ),
        pad_at in proptest::option::of(any::<prop::sample::Index>()),
        head in head(),
        reads_first in 0usize..4,
    ) {
        let (mut p, fd) = Channel::create_with(ChannelConfig { spin: 1, ..ChannelConfig::new(4096) })
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut c = Consumer::attach(fd).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut sent = 0u64;
        for (i, s) in sizes.iter().enumerate() {
            if p.try_send(RecordKind::SyscallResult, &payload(i as u64, *s)).is_err() {
                break;
            }
            sent += 1;
            // Reading some early records moves the tail, so later ones wrap with padding.
            if i < reads_first {
                prop_assert_eq!(c.try_recv().map(|r| r.seq).ok(), Some(i as u64));
            }
        }
        let cap = p.ring.capacity() as usize;
        for (at, bytes) in &patches {
            let at = at.index(cap);
            let n = bytes.len().min(cap - at);
            // SAFETY: `at + n <= cap`: inside the data area. This test plays a faulty producer.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.ring.data().add(at), n) };
        }
        if let Some(at) = pad_at {
            let at = at.index(cap / 8) * 8;
            // SAFETY: 8-aligned and below `cap`, a multiple of 8: inside the data area.
            unsafe { (p.ring.data().add(at) as *mut u64).write_unaligned(PAD_MARKER) };
        }
        let honest = p.ring.header().head.pos.load(Acquire);
        let pos = match head {
            Head::Honest => honest,
            Head::Nudge(d) => honest.wrapping_add_signed(i64::from(d)),
            Head::Wild(v) => v,
        };
        p.ring.header().head.pos.store(pos, Release);
        let mut expect = c.cur.seq;
        let mut last_err: Option<String> = None;
        for _ in 0..(sent + 4) {
            match c.try_recv() {
                Ok(r) => {
                    prop_assert!(last_err.is_none(), "a record after {:?}", last_err);
                    prop_assert_eq!(r.seq, expect);
                    prop_assert!(r.payload.len() <= cap);
                    expect += 1;
                }
                Err(ChannelError::WouldBlock) => break,
                Err(e) => {
                    // A bad record is reported again, never skipped.
                    let e = e.to_string();
                    if let Some(prev) = &last_err {
                        prop_assert_eq!(prev, &e);
                    }
                    last_err = Some(e);
                }
            }
        }
        prop_assert!(expect <= sent || head_is_tampered(&head));
    }
}

fn head_is_tampered(h: &Head) -> bool {
    !matches!(h, Head::Honest)
}
