use super::*;
use crate::testkit::payload;
use det::record::{RecordKind, HEADER_LEN};
use proptest::prelude::*;
use std::os::fd::FromRawFd;

fn pair(config: ChannelConfig) -> (Producer, Consumer) {
    let (p, fd) = Channel::create_with(config).unwrap();
    (p, Consumer::attach(fd).unwrap())
}

fn small(capacity: usize) -> ChannelConfig {
    ChannelConfig {
        spin: 10,
        ..ChannelConfig::new(capacity)
    }
}

/// Sends records `seqs` of the test pattern, each at most `max` bytes.
fn send_range(p: &mut Producer, seqs: std::ops::Range<u64>, max: usize) {
    for s in seqs {
        assert_eq!(
            p.try_send(RecordKind::SyscallResult, &payload(s, max))
                .unwrap(),
            s
        );
    }
}

fn expect(c: &mut Consumer, seq: u64, max: usize) {
    let r = c.try_recv().unwrap();
    assert_eq!((r.kind, r.seq), (RecordKind::SyscallResult, seq));
    assert_eq!(r.payload, payload(seq, max));
}

#[test]
fn records_roundtrip_with_stats() {
    let (mut p, mut c) = pair(small(4096));
    assert!(matches!(c.try_recv(), Err(ChannelError::WouldBlock)));
    send_range(&mut p, 0..5, 100);
    assert_eq!(p.stats().lag_records(), 5);
    for s in 0..5 {
        expect(&mut c, s, 100);
    }
    let st = c.stats();
    assert_eq!(
        (st.records_sent, st.records_acked, st.lag_bytes()),
        (5, 5, 0)
    );
    assert!(st.to_string().contains("lag 0 rec / 0 B"));
    drop(p);
    assert!(matches!(c.try_recv(), Err(ChannelError::Closed)));
}

#[test]
fn size_limits_and_bad_layouts_are_errors() {
    let (mut p, fd) = Channel::create(4096).unwrap();
    assert_eq!(p.max_payload(), 2048 - HEADER_LEN);
    let big = vec![0; p.max_payload() + 1];
    let e = p.try_send(RecordKind::End, &big).unwrap_err();
    assert!(matches!(e, ChannelError::TooLarge { .. }));
    p.try_send(RecordKind::End, &big[1..]).unwrap();
    drop(fd);
    // An unsealed memfd, and a sealed one without our header.
    // SAFETY: memfd_create with a static name returns a fresh descriptor that we own.
    let fd = unsafe { OwnedFd::from_raw_fd(libc::memfd_create(c"x".as_ptr(), 0)) };
    let e = Consumer::attach(fd).err().unwrap();
    assert!(matches!(e, ChannelError::BadLayout(_)), "{e}");
    let fd = sys::sealed_memfd(c"y", HEADER_PAGE + 4096).unwrap();
    let e = Consumer::attach(fd).err().unwrap();
    assert!(matches!(e, ChannelError::BadLayout(_)), "{e}");
}

#[test]
fn byte_and_record_bounds_give_backpressure() {
    let (mut p, mut c) = pair(ChannelConfig {
        max_lag_records: 3,
        ..small(4096)
    });
    send_range(&mut p, 0..3, 50);
    assert!(matches!(
        p.try_send(RecordKind::End, &[]),
        Err(ChannelError::WouldBlock)
    ));
    expect(&mut c, 0, 50);
    send_range(&mut p, 3..4, 50);

    // 100-byte payloads take 120 ring bytes: a 500-byte bound admits four.
    let (mut p, mut c) = pair(ChannelConfig {
        max_lag_bytes: 500,
        ..small(4096)
    });
    for s in 0..4 {
        p.try_send(RecordKind::End, &[7; 100]).unwrap();
        assert_eq!(p.stats().lag_bytes(), 120 * (s + 1));
    }
    assert!(matches!(
        p.try_send(RecordKind::End, &[7; 100]),
        Err(ChannelError::WouldBlock)
    ));
    c.try_recv().unwrap();
    p.try_send(RecordKind::End, &[7; 100]).unwrap();
    // A record above the byte bound still passes through an empty ring.
    let (mut p, _c) = pair(ChannelConfig {
        max_lag_bytes: 64,
        ..small(4096)
    });
    p.try_send(RecordKind::End, &[0; 1000]).unwrap();
}

#[test]
fn blocked_send_resumes_when_the_consumer_reads() {
    let (mut p, mut c) = pair(ChannelConfig {
        max_lag_records: 2,
        ..small(4096)
    });
    send_range(&mut p, 0..2, 10);
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        for s in 0..3 {
            let r = c.recv().unwrap();
            assert_eq!(r.seq, s);
        }
        c
    });
    let t = Instant::now();
    p.send(RecordKind::End, &[]).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    p.wait_acked(2).unwrap();
    assert!(matches!(
        p.wait_acked(3),
        Err(ChannelError::NotSent { seq: 3, sent: 3 })
    ));
    let c = reader.join().unwrap();
    assert_eq!(c.stats().lag_records(), 0);
}

#[test]
fn a_consumer_that_stops_reading_is_gone_after_the_timeout() {
    let (mut p, _c) = pair(ChannelConfig {
        max_lag_records: 1,
        peer_timeout: Some(Duration::from_millis(200)),
        ..small(4096)
    });
    p.send(RecordKind::End, &[]).unwrap();
    let t = Instant::now();
    assert!(matches!(
        p.send(RecordKind::End, &[]),
        Err(ChannelError::PeerGone)
    ));
    assert!(
        (200..2000).contains(&t.elapsed().as_millis()),
        "{:?}",
        t.elapsed()
    );
    assert!(matches!(p.wait_acked(0), Err(ChannelError::PeerGone)));
    drop(_c);
    // A consumer that closed its end is gone at once.
    let t = Instant::now();
    assert!(matches!(
        p.send(RecordKind::End, &[]),
        Err(ChannelError::PeerGone)
    ));
    assert!(t.elapsed() < Duration::from_millis(150));
}

/// Stream offsets of the records of `sizes`, sent from an empty ring with no wrap.
fn frames(sizes: &[usize]) -> Vec<(u64, u64)> {
    let mut at = 0;
    sizes
        .iter()
        .map(|&s| {
            let f = (at, (HEADER_LEN + s) as u64);
            at += align(f.1);
            f
        })
        .collect()
}

#[test]
fn corrupt_records_are_reported_at_their_offset() {
    type Check = fn(&RecordError) -> bool;
    let cases: [(usize, u8, Check); 4] = [
        (0, 0xff, |e| matches!(e, RecordError::BadMagic(_))),
        (30, 0x01, |e| {
            matches!(e, RecordError::ChecksumMismatch { .. })
        }),
        (7, 0x01, |e| matches!(e, RecordError::LengthTooLarge { .. })), // len > 16 MiB
        (6, 0x10, |e| matches!(e, RecordError::Truncated { .. })),      // 1 MiB: beyond the ring
    ];
    for (byte, mask, is) in cases {
        let (mut p, mut c) = pair(small(4096));
        send_range(&mut p, 0..4, 64);
        expect(&mut c, 0, 64);
        let second = align((HEADER_LEN + payload(0, 64).len()) as u64);
        // SAFETY: in the data area; this test plays a faulty producer.
        unsafe { *p.ring.data().add(second as usize + byte) ^= mask };
        for _ in 0..2 {
            match c.try_recv() {
                Err(ChannelError::Corrupt { offset, source, .. }) => {
                    assert_eq!(offset, second);
                    assert!(is(&source), "byte {byte}: {source}");
                }
                other => panic!("byte {byte}: {other:?}"),
            }
        }
    }
}

#[test]
fn wild_counters_are_errors() {
    let (p, mut c) = pair(small(4096));
    p.ring.header().head.pos.store(3 * 4096, Release);
    assert!(matches!(
        c.try_recv(),
        Err(ChannelError::BadCounters { .. })
    ));
    p.ring.header().head.pos.store(8, Release);
    c.cur.head_seen = 0;
    // Eight zero bytes: a header cut short by the published head.
    let e = c.try_recv().unwrap_err();
    assert!(matches!(e, ChannelError::Corrupt { offset: 0, .. }), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Sends and receives in random batches through a small ring, so records wrap with
    /// padding at every offset; all arrive intact and in order.
    #[test]
    fn wraparound_keeps_every_record(
        max in 1usize..1500,
        batches in proptest::collection::vec((0usize..8, 0usize..8), 1..60),
    ) {
        let (mut p, mut c) = pair(small(4096));
        let (mut sent, mut got) = (0u64, 0u64);
        for (n_send, n_recv) in batches {
            for _ in 0..n_send {
                match p.try_send(RecordKind::Turn, &payload(sent, max)) {
                    Ok(s) => { prop_assert_eq!(s, sent); sent += 1; }
                    Err(ChannelError::WouldBlock) => break,
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
            }
            for _ in 0..n_recv {
                match c.try_recv() {
                    Ok(r) => {
                        prop_assert_eq!(r.seq, got);
                        prop_assert_eq!(r.payload, &payload(got, max)[..]);
                        got += 1;
                    }
                    Err(ChannelError::WouldBlock) => break,
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
            }
            prop_assert!(p.stats().lag_bytes() <= 4096);
        }
        while got < sent {
            prop_assert_eq!(c.try_recv().map(|r| r.seq).ok(), Some(got));
            got += 1;
        }
        prop_assert_eq!(p.stats().lag_records(), 0);
    }

    /// Any flipped bit inside a published record makes it Corrupt at its own offset, and
    /// the records before it still arrive.
    #[test]
    fn a_flipped_bit_is_caught_at_its_record(
        sizes in proptest::collection::vec(0usize..300, 1..10),
        pick in any::<u64>(),
    ) {
        let (mut p, mut c) = pair(small(4096));
        for s in &sizes {
            p.try_send(RecordKind::OutputHash, &vec![0xa5; *s]).unwrap();
        }
        let frames = frames(&sizes);
        let total: u64 = frames.iter().map(|f| f.1).sum();
        let mut bit = pick % (total * 8);
        let (i, (at, _)) = frames.iter().copied().enumerate().find(|(_, (_, len))| {
            let inside = bit < len * 8;
            if !inside { bit -= len * 8; }
            inside
        }).unwrap();
        // SAFETY: inside the data area; this test plays a faulty producer.
        unsafe { *p.ring.data().add((at + bit / 8) as usize) ^= 1 << (bit % 8) };
        for s in 0..i as u64 {
            prop_assert_eq!(c.try_recv().unwrap().seq, s);
        }
        match c.try_recv() {
            Err(ChannelError::Corrupt { offset, .. }) => prop_assert_eq!(offset, at),
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        }
    }
}
