use std::sync::Arc;

use super::*;
use crate::call::test_call::TestCall;
use crate::program::Program;
use crate::status::StatusPage;

const READ: u64 = libc::SYS_read as u64;
const WRITE: u64 = libc::SYS_write as u64;
const EXIT_GROUP: u64 = libc::SYS_exit_group as u64;

fn secondary() -> (Secondary, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let status = Arc::new(StatusPage::create().expect("status page"));
    (Secondary::unconnected(dir.path().into(), status), dir)
}

fn syscall(nr: u64, ret: i64, signal: i32, writes: Vec<(u64, Vec<u8>)>) -> ThreadRecord {
    ThreadRecord::Syscall {
        nr: nr as u32,
        syscall_no: 9,
        ret,
        signal,
        writes,
    }
}

fn output(ret: i64, asked: u64, data: Option<&[u8]>, hash_of: &[u8]) -> ThreadRecord {
    ThreadRecord::Output {
        nr: WRITE as u32,
        syscall_no: 5,
        fd: 1,
        ret,
        signal: 0,
        asked,
        hash: wire::output_hash(hash_of),
        data: data.map(<[u8]>::to_vec),
    }
}

#[test]
fn a_recorded_call_replays_its_writes_reentry_time_and_signal() {
    let (s, _dir) = secondary();
    let writes = vec![
        (0x1000, b"abcd".to_vec()),
        (REENTRY_ADDR, 77u64.to_le_bytes().to_vec()),
    ];
    s.queue(3, 2, syscall(READ, 4, 10, writes));
    let call = TestCall::new(3, READ, 9, 2);
    let replay = s.take_recorded(&call).expect("replay");
    assert_eq!(
        replay,
        Replay {
            ret: 4,
            writes: vec![(0x1000, b"abcd".to_vec())],
            reentry_at: Some(77),
            signal: Some(10),
        }
    );
    s.replayed(&call, &replay, 4);
    assert_eq!(s.status.get(Counter::RecordedSyscalls), 1);
    assert_eq!(s.status.get(Counter::Signals), 1);
    let f = s.findings();
    assert!(f.mismatch.is_none());
    let ev = f.history.back().expect("agreed event");
    assert_eq!(
        (ev.kind, ev.result, ev.bytes, ev.thread),
        ("recorded", 4, 4, 3)
    );
    assert_eq!(ev.syscall, "read");
    assert_eq!(call.program.ended_by(), None);
}

#[test]
fn a_record_of_another_syscall_is_a_mismatch_that_stops_the_program() {
    let (s, _dir) = secondary();
    s.queue(0, 1, syscall(libc::SYS_getrandom as u64, 8, 0, Vec::new()));
    let call = TestCall::new(0, READ, 4, 1);
    assert_eq!(s.take_recorded(&call), None);
    let m = s.findings().mismatch.expect("mismatch");
    assert_eq!(m.kind, "syscall");
    assert_eq!(m.syscall, "read");
    assert_eq!(m.primary_syscall.as_deref(), Some("getrandom"));
    assert_eq!(m.primary, b"#9 getrandom");
    assert_eq!(m.secondary, b"#4 read");
    assert_eq!((m.logical_time, m.turn), (Some(40), Some(12)));
    assert_eq!(call.program.ended_by(), Some(libc::SIGKILL));
    assert_eq!(s.status.get(Counter::Diverged), 1);
}

#[test]
fn a_record_of_another_event_is_a_mismatch() {
    let (s, _dir) = secondary();
    s.queue(0, 2, syscall(READ, 0, 0, Vec::new()));
    let call = TestCall::new(0, READ, 4, 1);
    assert_eq!(s.take_recorded(&call), None);
    assert!(s.findings().mismatch.is_some());
}

#[test]
fn an_output_record_for_a_recorded_call_stops_the_thread_unreported() {
    // Same syscall and event, other kind: the thread stops, as before the move.
    let (s, _dir) = secondary();
    s.queue(0, 1, output(1, 1, Some(b"x"), b"x"));
    let call = TestCall::new(0, WRITE, 5, 1);
    assert_eq!(s.take_recorded(&call), None);
    assert!(s.findings().mismatch.is_none());
}

#[test]
fn a_failed_placement_and_a_taken_descriptor_are_reported() {
    let (s, _dir) = secondary();
    let replay = Replay {
        ret: 6,
        writes: vec![(1, vec![0; 2]), (2, vec![0; 4])],
        reentry_at: None,
        signal: None,
    };
    let call = TestCall::new(1, READ, 3, 1);
    s.replay_failed(&call, &replay, "no buffer");
    let m = s.findings().mismatch.expect("mismatch");
    assert_eq!((m.kind, m.detail.as_str()), ("syscall", "no buffer"));
    assert_eq!(m.primary, b"2 parts, 6 bytes");

    let (s, _dir) = secondary();
    let call = TestCall::new(1, libc::SYS_socket as u64, 3, 1);
    s.descriptor_mismatch(&call, 5, "still open".into());
    let m = s.findings().mismatch.expect("mismatch");
    assert_eq!((m.fd, m.primary.as_slice()), (Some(5), b"5".as_slice()));
    assert_eq!(m.syscall, "socket");
}

#[test]
fn equal_output_is_kept_and_counted() {
    let (s, dir) = secondary();
    s.queue(0, 1, output(3, 5, Some(b"hel"), b"hel"));
    let call = TestCall::new(0, WRITE, 5, 1);
    let out = s.compare_output(&call, b"hello").expect("agreement");
    assert_eq!(
        out,
        ComparedOutput {
            ret: 3,
            signal: None
        }
    );
    assert_eq!(s.status.get(Counter::ComparedOutputs), 1);
    assert_eq!(s.status.get(Counter::BytesCompared), 3);
    let kept = std::fs::read(dir.path().join("secondary.stdout")).expect("stdout");
    assert_eq!(kept, b"hel");
    assert_eq!(
        s.findings().history.back().map(|e| e.kind),
        Some("compared")
    );
}

#[test]
fn output_travelling_as_a_hash_is_compared_by_hash() {
    let (s, _dir) = secondary();
    s.queue(0, 1, output(5, 5, None, b"hello"));
    assert!(s
        .compare_output(&TestCall::new(0, WRITE, 5, 1), b"hello")
        .is_some());

    let (s, _dir) = secondary();
    s.queue(0, 1, output(5, 5, None, b"hello"));
    assert!(s
        .compare_output(&TestCall::new(0, WRITE, 5, 1), b"hellO")
        .is_none());
    let m = s.findings().mismatch.expect("mismatch");
    assert_eq!(m.primary_hash, Some(wire::output_hash(b"hello")));
    // Only the hash travelled: no byte can be named.
    assert_eq!(m.first_differing_byte, None);
}

#[test]
fn differing_output_names_its_first_differing_byte() {
    let (s, _dir) = secondary();
    s.queue(0, 1, output(5, 5, Some(b"hello"), b"hello"));
    let call = TestCall::new(0, WRITE, 5, 1);
    assert_eq!(s.compare_output(&call, b"help!"), None);
    let m = s.findings().mismatch.expect("mismatch");
    assert_eq!(m.kind, "output");
    assert_eq!(m.fd, Some(1));
    assert_eq!(m.first_differing_byte, Some(3));
    assert_eq!(m.primary, b"hello");
    assert_eq!(m.secondary, b"help!");
    assert_eq!(
        m.detail,
        "output to fd 1 differs: the primary wrote 5 bytes, the secondary would write 5"
    );
    assert_eq!(call.program.ended_by(), Some(libc::SIGKILL));
}

#[test]
fn output_of_another_length_differs_where_the_shorter_ends() {
    let (s, _dir) = secondary();
    s.queue(0, 1, output(5, 5, None, b"hello"));
    assert_eq!(
        s.compare_output(&TestCall::new(0, WRITE, 5, 1), b"hel"),
        None
    );
    let m = s.findings().mismatch.expect("mismatch");
    assert_eq!(m.first_differing_byte, Some(3));
}

#[test]
fn exit_status_must_be_the_primarys() {
    let (s, _dir) = secondary();
    s.queue(0, 1, syscall(EXIT_GROUP, 0, 0, Vec::new()));
    assert!(s.compare_exit(&TestCall::new(0, EXIT_GROUP, 7, 1), 0));
    assert_eq!(s.findings().history.back().map(|e| e.kind), Some("exit"));

    let (s, _dir) = secondary();
    s.queue(0, 1, syscall(EXIT_GROUP, 0, 0, Vec::new()));
    assert!(!s.compare_exit(&TestCall::new(0, EXIT_GROUP, 7, 1), 3));
    let m = s.findings().mismatch.expect("mismatch");
    assert_eq!(m.kind, "exit");
    assert_eq!(m.detail, "the primary exited with 0, the secondary with 3");
    assert_eq!(m.first_differing_byte, Some(0));
}

#[test]
fn a_stopping_secondary_takes_nothing() {
    let (s, _dir) = secondary();
    let call = TestCall::new(0, READ, 1, 1);
    call.program.end_by_signal(libc::SIGKILL);
    assert_eq!(s.take_recorded(&call), None);
    assert!(s.findings().mismatch.is_none());
}

#[test]
fn going_live_keeps_the_takeover_and_publishes_its_time() {
    let (s, _dir) = secondary();
    assert_eq!(s.status.get(Counter::TakeoverMicros), 0);
    let t = crate::findings::Takeover {
        noticed: "the primary is gone".into(),
        takeover_ms: 12.3456,
        records_drained: 7,
        ..Default::default()
    };
    s.went_live(t.clone());
    assert_eq!(s.findings().takeover, Some(t));
    assert_eq!(s.status.get(Counter::TakeoverMicros), 12_346);
    // An instant takeover still reads as live.
    s.went_live(crate::findings::Takeover::default());
    assert_eq!(s.status.get(Counter::TakeoverMicros), 1);
}
