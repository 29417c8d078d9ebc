//! The descriptor channel of failover (docs/pair.md, Descriptors at failover): the primary
//! passes the host descriptors its recorded calls create (sockets, accepted connections,
//! timers, host files) and its standard descriptors to the secondary with SCM_RIGHTS, so that
//! the secondary holds the primary's own open file descriptions and can take them over when
//! it goes live.
//!
//! The channel is a SOCK_SEQPACKET socket pair made by the primary at connect; one end
//! crosses the peer socket right after the ring's memfd. Each message is one [`Tag`] header
//! and up to [`MAX_FDS_PER_MESSAGE`] descriptors, the tag's index counting from the header's.
//! The primary sends a call's descriptors before it publishes the call's record, so a record
//! the secondary replays always has its descriptors in the socket or already received.
//!
//! The secondary's receiver thread drains the socket into [`Held`], a map keyed by tag that
//! the replay takes from ([`Held::take`]). It holds at most [`MAX_HELD`] descriptors not yet
//! taken; past that it stops reading and the primary's send times out ([`SEND_TIMEOUT`]),
//! which breaks replication rather than blocking the program.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::sync::lock;
pub use crate::sys::MAX_FDS_PER_MESSAGE;

/// The thread of the [`Tag`]s of the primary's standard descriptors (event 0; a call's
/// replicated event number starts at 1, so no call's tag is ever one of them).
pub const STDIO_THREAD: u32 = u32::MAX;

/// The messages of the primary's standard descriptors (0, 1, 2), the first on the channel.
pub const STDIO_MESSAGES: usize = 3;

/// Descriptors received and not taken yet that the secondary holds at most.
pub const MAX_HELD: usize = 4096;

/// How long the primary's send of one message may block on a full socket (a secondary
/// holding [`MAX_HELD`] descriptors) before replication breaks.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

const MAGIC: u32 = u32::from_le_bytes(*b"DFD1");
/// magic u32, thread u32, event u64, first index u32, descriptor count u32 (little-endian).
const HEADER_LEN: usize = 24;

/// Errors of the descriptor channel.
#[derive(Debug, Error)]
pub enum HandoffError {
    /// A system call failed.
    #[error("descriptor channel I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A message that is not one the primary sends (what is wrong is the text).
    #[error("malformed descriptor message: {0}")]
    Malformed(String),
}

/// Which descriptor a message carries: the primary's replicated event `event` of det thread
/// `thread`, its `index`th created descriptor (a socketpair makes two).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag {
    /// The det thread id.
    pub thread: u32,
    /// The thread's replicated event number (0 for the standard descriptors).
    pub event: u64,
    /// Which of the call's descriptors (for stdio: the descriptor number).
    pub index: u32,
}

impl Tag {
    /// The primary's standard descriptor `fd` (0, 1 or 2).
    pub fn stdio(fd: u32) -> Self {
        Tag {
            thread: STDIO_THREAD,
            event: 0,
            index: fd,
        }
    }
}

fn encode(first: Tag, count: usize) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&first.thread.to_le_bytes());
    b[8..16].copy_from_slice(&first.event.to_le_bytes());
    b[16..20].copy_from_slice(&first.index.to_le_bytes());
    b[20..24].copy_from_slice(&(count as u32).to_le_bytes());
    b
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// Checks one received message: its header names `fds.len()` descriptors from a tag.
fn decode(data: &[u8], fds: usize, truncated: bool) -> Result<(Tag, usize), HandoffError> {
    let bad = |why: String| Err(HandoffError::Malformed(why));
    if truncated {
        return bad("truncated (data or descriptors did not fit)".into());
    }
    if data.len() != HEADER_LEN {
        return bad(format!("{} bytes, expected {HEADER_LEN}", data.len()));
    }
    if u32_at(data, 0) != MAGIC {
        return bad("bad magic".into());
    }
    let mut ev = [0u8; 8];
    ev.copy_from_slice(&data[8..16]);
    let tag = Tag {
        thread: u32_at(data, 4),
        event: u64::from_le_bytes(ev),
        index: u32_at(data, 16),
    };
    let count = u32_at(data, 20) as usize;
    if count > MAX_FDS_PER_MESSAGE {
        return bad(format!(
            "{count} descriptors, at most {MAX_FDS_PER_MESSAGE}"
        ));
    }
    if count != fds {
        return bad(format!("header names {count} descriptors, {fds} came"));
    }
    if tag.index.checked_add(count.max(1) as u32).is_none() {
        return bad("index out of range".into());
    }
    Ok((tag, count))
}

/// Primary: sends `fds` as the descriptors `first`, `first.index + 1`, ... An empty `fds`
/// says the descriptor `first` is missing (closed before it could be passed), so that the
/// secondary need not wait for it.
pub fn send(sock: BorrowedFd, first: Tag, fds: &[BorrowedFd]) -> Result<(), HandoffError> {
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(HandoffError::Malformed(format!(
            "{} descriptors in one message",
            fds.len()
        )));
    }
    Ok(crate::sys::send_fds(sock, &encode(first, fds.len()), fds)?)
}

/// Primary: the channel's two ends, its own with the send timeout set.
pub fn pair() -> Result<(OwnedFd, OwnedFd), HandoffError> {
    let (ours, theirs) = crate::sys::seqpacket_pair()?;
    crate::sys::set_send_timeout(ours.as_fd(), SEND_TIMEOUT)?;
    Ok((ours, theirs))
}

/// A received descriptor, or the primary's word that it had none.
type Slot = Option<OwnedFd>;

#[derive(Default)]
struct HeldState {
    by_tag: HashMap<Tag, Slot>,
    /// Why no more will come: the primary's end closed, or the channel failed.
    closed: Option<String>,
}

/// Secondary: the descriptors the primary passed, by tag, until the replay takes them.
#[derive(Default)]
pub struct Held {
    state: Mutex<HeldState>,
    changed: Condvar,
}

impl Held {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Receives messages from `sock` until the primary's end closes (Ok) or a message is
    /// malformed or the socket fails (Err, and the map is closed with the reason).
    pub fn receive(&self, sock: BorrowedFd) -> Result<(), HandoffError> {
        let r = self.receive_inner(sock);
        let why = match &r {
            Ok(()) => "the primary's descriptor channel closed".to_string(),
            Err(e) => e.to_string(),
        };
        self.close(why);
        r
    }

    fn receive_inner(&self, sock: BorrowedFd) -> Result<(), HandoffError> {
        while self.receive_one(sock)? {}
        Ok(())
    }

    /// Receives exactly `n` messages (the standard descriptors the primary sends at connect,
    /// before anything else), blocking. A hang-up before them is an error.
    pub fn receive_first(&self, sock: BorrowedFd, n: usize) -> Result<(), HandoffError> {
        for _ in 0..n {
            if !self.receive_one(sock)? {
                return Err(HandoffError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
        Ok(())
    }

    /// One message into the map; false: the primary's end closed.
    fn receive_one(&self, sock: BorrowedFd) -> Result<bool, HandoffError> {
        // One byte more than a header: a longer message shows as a wrong length.
        let mut buf = [0u8; HEADER_LEN + 1];
        loop {
            let msg = match crate::sys::recv_fds(sock, &mut buf) {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            self.insert_message(&buf[..msg.len], msg.fds, msg.truncated)?;
            return Ok(true);
        }
    }

    /// Takes one message's descriptors into the map, waiting while it is full.
    fn insert_message(
        &self,
        data: &[u8],
        fds: Vec<OwnedFd>,
        truncated: bool,
    ) -> Result<(), HandoffError> {
        let (first, count) = decode(data, fds.len(), truncated)?;
        let mut st = lock(&self.state);
        while st.by_tag.len() + count > MAX_HELD && st.closed.is_none() {
            st = self
                .changed
                .wait(st)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        let slots: Vec<(Tag, Slot)> = if count == 0 {
            vec![(first, None)]
        } else {
            fds.into_iter()
                .enumerate()
                .map(|(i, fd)| {
                    let tag = Tag {
                        index: first.index + i as u32,
                        ..first
                    };
                    (tag, Some(fd))
                })
                .collect()
        };
        for (tag, _) in &slots {
            if st.by_tag.contains_key(tag) {
                return Err(HandoffError::Malformed(format!("{tag:?} passed twice")));
            }
        }
        st.by_tag.extend(slots);
        drop(st);
        self.changed.notify_all();
        Ok(())
    }

    /// No more descriptors will come (`why`); waiters for missing ones give up.
    pub fn close(&self, why: String) {
        let mut st = lock(&self.state);
        if st.closed.is_none() {
            st.closed = Some(why);
        }
        drop(st);
        self.changed.notify_all();
    }

    /// Takes the descriptor `tag`, waiting up to `wait` for the receiver to read it.
    /// `Ok(None)`: the primary said it had none. Err: it did not come (why).
    pub fn take(&self, tag: Tag, wait: Duration) -> Result<Option<OwnedFd>, String> {
        let deadline = Instant::now() + wait;
        let mut st = lock(&self.state);
        loop {
            if let Some(slot) = st.by_tag.remove(&tag) {
                drop(st);
                self.changed.notify_all();
                return Ok(slot);
            }
            if let Some(why) = &st.closed {
                return Err(format!(
                    "the primary's descriptor {tag:?} never came ({why})"
                ));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "the primary's descriptor {tag:?} did not come within {wait:?}"
                ));
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    /// Descriptors received and not taken.
    pub fn len(&self) -> usize {
        lock(&self.state).by_tag.len()
    }

    /// Whether none is waiting to be taken.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::sync::Arc;

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    fn ino(fd: BorrowedFd) -> (u64, u64) {
        // SAFETY: fstat writes into the zeroed stat buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
        (st.st_dev, st.st_ino)
    }

    fn tag(thread: u32, event: u64, index: u32) -> Tag {
        Tag {
            thread,
            event,
            index,
        }
    }

    #[test]
    fn descriptors_cross_with_their_tags_and_are_the_same_files() {
        let (ours, theirs) = pair().unwrap();
        let a = devnull();
        let f = tempfile_fd();
        send(ours.as_fd(), tag(3, 7, 0), &[a.as_fd(), f.as_fd()]).unwrap();
        send(ours.as_fd(), Tag::stdio(1), &[a.as_fd()]).unwrap();
        send(ours.as_fd(), tag(3, 9, 0), &[]).unwrap();
        drop(ours);
        let held = Held::new();
        held.receive(theirs.as_fd()).unwrap();
        assert_eq!(held.len(), 4);
        let short = Duration::from_millis(10);
        let got = held.take(tag(3, 7, 1), short).unwrap().unwrap();
        assert_eq!(ino(got.as_fd()), ino(f.as_fd()));
        let got = held.take(tag(3, 7, 0), short).unwrap().unwrap();
        assert_eq!(ino(got.as_fd()), ino(a.as_fd()));
        assert!(held.take(Tag::stdio(1), short).unwrap().is_some());
        assert!(held.take(tag(3, 9, 0), short).unwrap().is_none());
        // Closed and gone: an error at once, not a wait.
        let err = held
            .take(tag(3, 7, 0), Duration::from_secs(60))
            .unwrap_err();
        assert!(err.contains("never came"), "{err}");
    }

    fn tempfile_fd() -> OwnedFd {
        let path = std::env::temp_dir().join(format!("handoff-test-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        f.into()
    }

    #[test]
    fn the_first_messages_are_read_at_once_and_a_hang_up_before_them_is_an_error() {
        let (ours, theirs) = pair().unwrap();
        send(ours.as_fd(), Tag::stdio(0), &[devnull().as_fd()]).unwrap();
        send(ours.as_fd(), Tag::stdio(1), &[]).unwrap();
        let held = Held::new();
        held.receive_first(theirs.as_fd(), 2).unwrap();
        assert!(held.take(Tag::stdio(0), Duration::ZERO).unwrap().is_some());
        assert!(held.take(Tag::stdio(1), Duration::ZERO).unwrap().is_none());
        drop(ours);
        assert!(held.receive_first(theirs.as_fd(), 1).is_err());
    }

    #[test]
    fn a_missing_descriptor_times_out_while_the_channel_is_open() {
        let held = Held::new();
        let t0 = Instant::now();
        let err = held
            .take(tag(1, 1, 0), Duration::from_millis(50))
            .unwrap_err();
        assert!(err.contains("did not come"), "{err}");
        assert!(t0.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn a_waiting_take_gets_what_arrives_later() {
        let held = Arc::new(Held::new());
        let h = held.clone();
        let waiter = std::thread::spawn(move || h.take(tag(2, 5, 0), Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        held.insert_message(&encode(tag(2, 5, 0), 1), vec![devnull()], false)
            .unwrap();
        assert!(waiter.join().unwrap().unwrap().is_some());
    }

    fn malformed(data: &[u8], fds: usize, truncated: bool) -> String {
        let held = Held::new();
        let fds = (0..fds).map(|_| devnull()).collect();
        match held.insert_message(data, fds, truncated) {
            Err(HandoffError::Malformed(why)) => why,
            other => panic!("expected a malformed message, got {other:?}"),
        }
    }

    #[test]
    fn malformed_messages_are_errors() {
        let good = encode(tag(1, 2, 0), 1);
        assert!(malformed(&good[..10], 1, false).contains("bytes"));
        let mut bad_magic = good;
        bad_magic[0] ^= 1;
        assert!(malformed(&bad_magic, 1, false).contains("magic"));
        assert!(malformed(&good, 2, false).contains("came"));
        assert!(malformed(&good, 0, false).contains("came"));
        assert!(malformed(&good, 1, true).contains("truncated"));
        let too_many = encode(tag(1, 2, 0), MAX_FDS_PER_MESSAGE + 1);
        assert!(malformed(&too_many, MAX_FDS_PER_MESSAGE + 1, false).contains("at most"));
        let overflow = encode(tag(1, 2, u32::MAX), 1);
        assert!(malformed(&overflow, 1, false).contains("range"));
        let held = Held::new();
        held.insert_message(&good, vec![devnull()], false).unwrap();
        let twice = held.insert_message(&good, vec![devnull()], false);
        assert!(matches!(twice, Err(HandoffError::Malformed(w)) if w.contains("twice")));
    }

    #[test]
    fn a_malformed_message_on_the_socket_closes_the_map() {
        let (ours, theirs) = pair().unwrap();
        crate::sys::send_fds(ours.as_fd(), b"not a header", &[]).unwrap();
        let held = Held::new();
        assert!(held.receive(theirs.as_fd()).is_err());
        let err = held
            .take(tag(0, 1, 0), Duration::from_secs(60))
            .unwrap_err();
        assert!(err.contains("malformed"), "{err}");
    }

    #[test]
    fn a_full_map_stops_reading_until_the_replay_takes_one() {
        let held = Arc::new(Held::new());
        for i in 0..MAX_HELD as u64 {
            held.insert_message(&encode(tag(0, i + 1, 0), 0), vec![], false)
                .unwrap();
        }
        let h = held.clone();
        let receiver = std::thread::spawn(move || {
            h.insert_message(&encode(tag(9, 1, 0), 1), vec![devnull()], false)
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!receiver.is_finished(), "the receiver must wait for room");
        assert_eq!(held.len(), MAX_HELD);
        held.take(tag(0, 1, 0), Duration::ZERO).unwrap();
        receiver.join().unwrap().unwrap();
        assert!(held.take(tag(9, 1, 0), Duration::ZERO).unwrap().is_some());
    }
}
