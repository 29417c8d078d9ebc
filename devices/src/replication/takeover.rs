//! Failover in the syscall layer (docs/pair.md, Descriptors at failover): the secondary's
//! placeholders hold the primary's own host descriptors ([`Held`]), and when the program
//! goes live each placeholder's host number becomes the primary's description
//! ([`take_over_descriptors`]).
//!
//! Epoll: a guest epoll is a host epoll that the secondary's program filled with its
//! placeholders. Replacing a placeholder's number with dup3 closes the placeholder's file,
//! which drops it from every epoll, so the secondary tracks what the program registered
//! ([`EpollInterests`]) and registers the swapped descriptors again. Registering reports
//! the current readiness, so no edge is lost; an edge-triggered waiter may see one spurious
//! wake-up, and an EPOLLONESHOT interest comes back armed.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, Weak};

use replica::program::WentLive;

use crate::fd_table::OpenFile;
use crate::process::Process;
use crate::sync::lock;

/// Debug hook for tests (tests/failover_fds.rs): at the program's exit_group each replica
/// writes, in its output directory, its outside descriptors (`primary.fds`: guest fd, st_dev,
/// st_ino of the host descriptor) or the primary's descriptors it holds (`secondary.held`);
/// with the value `takeover` the secondary then takes them over and writes what its guest
/// descriptors are afterwards (`secondary.takeover`, first line the counts).
pub const FDS_DUMP_ENV: &str = "DITTO_TEST_FDS_DUMP";

/// What one program registered in one epoll: target host fd -> (events, data).
type Interests = HashMap<RawFd, (u32, u64)>;

/// Per host epoll descriptor, the interests the program registered in it (secondary only).
#[derive(Debug, Default)]
pub struct EpollInterests {
    by_epoll: HashMap<RawFd, Interests>,
}

impl EpollInterests {
    /// A new epoll got host number `epoll`: whatever an old one of that number had is gone.
    pub fn created(&mut self, epoll: RawFd) {
        self.by_epoll.remove(&epoll);
    }

    /// The program's successful epoll_ctl(`epoll`, `op`, `target`, {`events`, `data`}).
    pub fn ctl(&mut self, epoll: RawFd, op: i32, target: RawFd, events: u32, data: u64) {
        let set = self.by_epoll.entry(epoll).or_default();
        match op {
            libc::EPOLL_CTL_ADD | libc::EPOLL_CTL_MOD => {
                set.insert(target, (events, data));
            }
            libc::EPOLL_CTL_DEL => {
                set.remove(&target);
            }
            _ => {}
        }
    }

    /// Every tracked (epoll, target, events, data) whose target is in `targets`.
    pub fn on(&self, targets: &HashSet<RawFd>) -> Vec<(RawFd, RawFd, u32, u64)> {
        let mut v: Vec<_> = self
            .by_epoll
            .iter()
            .flat_map(|(&ep, set)| {
                set.iter()
                    .filter(|(t, _)| targets.contains(t))
                    .map(move |(&t, &(ev, data))| (ep, t, ev, data))
            })
            .collect();
        v.sort_unstable();
        v
    }
}

/// The secondary's placeholders that hold a primary's descriptor, wherever they are (the
/// descriptor table, an accept's [`ParkedFd`](crate::syscalls::ParkedFd), a call in flight).
#[derive(Debug, Default)]
pub struct Held {
    files: Mutex<Vec<Weak<OpenFile>>>,
    /// The program's epoll registrations, to redo on the swapped descriptors.
    pub epolls: Mutex<EpollInterests>,
}

impl Held {
    /// Remembers `file`, which holds a primary's descriptor.
    pub fn add(&self, file: &Arc<OpenFile>) {
        let mut files = lock(&self.files);
        // Closed placeholders leave dead entries; sweep them now and then, so a server that
        // accepts millions of connections keeps a list as long as its open ones.
        if files.len() >= 64 && files.len().is_power_of_two() {
            files.retain(|w| w.strong_count() > 0);
        }
        files.push(Arc::downgrade(file));
    }

    /// The placeholders still open that hold a primary's descriptor, each once.
    fn alive(&self) -> Vec<Arc<OpenFile>> {
        let mut seen = HashSet::new();
        lock(&self.files)
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|f| f.holds_takeover() && seen.insert(Arc::as_ptr(f)))
            .collect()
    }
}

/// The outside descriptors the primary passed replace their placeholders in `process`:
/// called once, with every program thread parked or replaying nothing.
pub(crate) fn take_over_descriptors(process: &Process) -> WentLive {
    let Some(rep) = process.replication.get() else {
        return WentLive::default();
    };
    let held = &rep.held;
    let files = held.alive();
    let targets: HashSet<RawFd> = files.iter().map(|f| f.raw()).collect();
    // Registered still? MOD with the same interest says so (ENOENT: the program's DEL, or
    // a close, removed it); done before the swap, whose dup3 drops the placeholder's
    // registrations.
    let again: Vec<_> = lock(&held.epolls)
        .on(&targets)
        .into_iter()
        .filter(|&(ep, t, ev, data)| still_registered(ep, t, ev, data))
        .collect();
    let mut went = WentLive::default();
    for f in &files {
        let Some(primary) = f.take_takeover() else {
            continue;
        };
        match swap(&primary, f.raw()) {
            Ok(()) => {
                f.taken_over();
                went.descriptors += 1;
                if connected_tcp(f.raw()) {
                    went.connections += 1;
                }
            }
            Err(errno) => tracing::warn!(
                fd = f.raw(),
                errno,
                "failover: cannot take over the primary's descriptor"
            ),
        }
    }
    for (ep, t, ev, data) in again {
        if let Err(errno) = epoll_ctl(ep, libc::EPOLL_CTL_ADD, t, ev, data) {
            tracing::warn!(
                epoll = ep,
                fd = t,
                errno,
                "failover: cannot register a taken-over descriptor again"
            );
        }
    }
    went
}

/// Puts `primary`'s open file description at host number `at` (close-on-exec, as every
/// VMM descriptor is).
fn swap(primary: &OwnedFd, at: RawFd) -> Result<(), i32> {
    // SAFETY: dup3 onto a number this process owns through the placeholder's OpenFile,
    // which stays valid: only the description behind the number changes.
    let r = unsafe { libc::dup3(primary.as_raw_fd(), at, libc::O_CLOEXEC) };
    if r < 0 {
        return Err(crate::errno::Errno::last().0);
    }
    Ok(())
}

fn epoll_ctl(ep: RawFd, op: i32, fd: RawFd, events: u32, data: u64) -> Result<(), i32> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: epoll_ctl reads one epoll_event that outlives the call.
    let r = unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) };
    if r < 0 {
        return Err(crate::errno::Errno::last().0);
    }
    Ok(())
}

/// Whether `fd` is still registered in `ep` (MOD with its own interest). MOD refuses
/// EPOLLEXCLUSIVE (EINVAL), which only ADD may set: such an interest counts as registered.
fn still_registered(ep: RawFd, fd: RawFd, events: u32, data: u64) -> bool {
    match epoll_ctl(ep, libc::EPOLL_CTL_MOD, fd, events, data) {
        Ok(()) => true,
        Err(e) => e == libc::EINVAL && events & libc::EPOLLEXCLUSIVE as u32 != 0,
    }
}

fn sockopt_int(fd: RawFd, level: i32, name: i32) -> Option<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let r = unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut i32).cast(), &mut len) };
    (r == 0).then_some(v)
}

/// Whether `fd` is a TCP socket with a connection (ESTABLISHED or closing, not LISTEN).
fn connected_tcp(fd: RawFd) -> bool {
    let tcp = sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && sockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL) == Some(libc::IPPROTO_TCP);
    if !tcp {
        return false;
    }
    // SAFETY: tcp_info is plain data.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // ESTABLISHED 1, FIN_WAIT1 4, FIN_WAIT2 5, CLOSE_WAIT 8, LAST_ACK 9, CLOSING 11.
    r == 0 && matches!(info.tcpi_state, 1 | 4 | 5 | 8 | 9 | 11)
}

/// [`FDS_DUMP_ENV`]: the dump of one replica at its exit_group.
pub(super) fn dump_at_exit(process: &Process, dir: &std::path::Path, secondary: bool) {
    let Ok(what) = std::env::var(FDS_DUMP_ENV) else {
        return;
    };
    let files: Vec<(i64, Arc<OpenFile>)> = {
        let t = lock(&process.fds);
        t.numbers()
            .into_iter()
            .filter_map(|n| t.get(n).ok().map(|f| (n, f)))
            .collect()
    };
    let mut out = String::new();
    for (n, f) in &files {
        let id = if secondary {
            f.with_takeover(|fd| file_id(fd.as_raw_fd())).flatten()
        } else if f.is_external() {
            file_id(f.raw())
        } else {
            None
        };
        if let Some((dev, ino)) = id {
            out.push_str(&format!("{n} {dev} {ino}\n"));
        }
    }
    let name = if secondary {
        "secondary.held"
    } else {
        "primary.fds"
    };
    let _ = std::fs::write(dir.join(name), out);
    if secondary && what == "takeover" {
        let went = take_over_descriptors(process);
        let mut out = format!(
            "descriptors {} connections {}\n",
            went.descriptors, went.connections
        );
        for (n, f) in &files {
            if let Some((dev, ino)) = file_id(f.raw()) {
                let kind = if f.is_placeholder() {
                    "placeholder"
                } else {
                    "own"
                };
                out.push_str(&format!("{n} {dev} {ino} {kind}\n"));
            }
        }
        let _ = std::fs::write(dir.join("secondary.takeover"), out);
    }
}

/// (st_dev, st_ino) of a host descriptor.
fn file_id(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: fstat writes into the zeroed stat buffer; it changes nothing about the file.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(fd, &mut st) == 0).then_some((st.st_dev, st.st_ino))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd};

    fn socketpair() -> (OwnedFd, OwnedFd) {
        let mut sv = [0i32; 2];
        // SAFETY: socketpair writes two descriptors that we then own.
        unsafe {
            let ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
            assert_eq!(libc::socketpair(libc::AF_UNIX, ty, 0, sv.as_mut_ptr()), 0);
            (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1]))
        }
    }

    fn epoll() -> OwnedFd {
        // SAFETY: epoll_create1 returns a new descriptor that we then own.
        unsafe { OwnedFd::from_raw_fd(libc::epoll_create1(libc::EPOLL_CLOEXEC)) }
    }

    fn ready(ep: &OwnedFd) -> Vec<u64> {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 8];
        // SAFETY: epoll_wait writes at most 8 events into `evs`.
        let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), evs.as_mut_ptr(), 8, 0) };
        assert!(n >= 0);
        evs[..n as usize].iter().map(|e| e.u64).collect()
    }

    #[test]
    fn interests_follow_add_mod_del_and_a_new_epoll_forgets_the_old() {
        let mut i = EpollInterests::default();
        i.ctl(5, libc::EPOLL_CTL_ADD, 7, 1, 70);
        i.ctl(5, libc::EPOLL_CTL_ADD, 8, 1, 80);
        i.ctl(5, libc::EPOLL_CTL_MOD, 7, 4, 71);
        i.ctl(6, libc::EPOLL_CTL_ADD, 7, 1, 700);
        i.ctl(5, libc::EPOLL_CTL_DEL, 8, 0, 0);
        let targets: HashSet<RawFd> = [7, 8].into();
        assert_eq!(i.on(&targets), vec![(5, 7, 4, 71), (6, 7, 1, 700)]);
        i.created(6);
        assert_eq!(i.on(&targets), vec![(5, 7, 4, 71)]);
        assert!(i.on(&[9].into()).is_empty());
    }

    /// A placeholder registered in an epoll is swapped for another socket (the primary's):
    /// the epoll reports the new one's readiness with the program's data, and a placeholder
    /// the program deleted from the epoll stays out of it.
    #[test]
    fn a_swapped_descriptor_is_registered_again_with_its_interest() {
        let ep = epoll();
        let (placeholder, _p) = socketpair();
        let (gone, _g) = socketpair();
        let (primary, peer) = socketpair();
        let (primary2, peer2) = socketpair();
        let mut interests = EpollInterests::default();
        for (fd, data) in [(&placeholder, 11u64), (&gone, 22)] {
            epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), 1, data).unwrap();
            interests.ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), 1, data);
        }
        epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_DEL, gone.as_raw_fd(), 0, 0).unwrap();
        // Not tracked: the DEL above stands for one the tracker missed, which MOD finds.
        let targets: HashSet<RawFd> = [placeholder.as_raw_fd(), gone.as_raw_fd()].into();
        let again: Vec<_> = interests
            .on(&targets)
            .into_iter()
            .filter(|&(e, t, ev, d)| still_registered(e, t, ev, d))
            .collect();
        assert_eq!(
            again,
            vec![(ep.as_raw_fd(), placeholder.as_raw_fd(), 1, 11)]
        );
        swap(&primary, placeholder.as_raw_fd()).unwrap();
        swap(&primary2, gone.as_raw_fd()).unwrap();
        assert!(ready(&ep).is_empty(), "dup3 dropped the old registrations");
        for (e, t, ev, d) in again {
            epoll_ctl(e, libc::EPOLL_CTL_ADD, t, ev, d).unwrap();
        }
        // SAFETY: writes one byte from a live buffer.
        unsafe {
            assert_eq!(libc::write(peer.as_raw_fd(), b"x".as_ptr().cast(), 1), 1);
            assert_eq!(libc::write(peer2.as_raw_fd(), b"y".as_ptr().cast(), 1), 1);
        }
        assert_eq!(ready(&ep), vec![11]);
        // The placeholder's number now reads what the primary's peer wrote.
        let mut b = [0u8; 1];
        // SAFETY: reads one byte into a live buffer.
        let n = unsafe { libc::read(placeholder.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
        assert_eq!((n, b[0]), (1, b'x'));
    }

    #[test]
    fn held_files_are_listed_once_while_alive() {
        let held = Held::default();
        let (a, _a) = socketpair();
        let (b, _b) = socketpair();
        let f = Arc::new(OpenFile::placeholder(a, Some(b)));
        held.add(&f);
        held.add(&f);
        assert_eq!(held.alive().len(), 1);
        f.take_takeover();
        assert!(held.alive().is_empty(), "taken over: nothing left to take");
        let (c, _c) = socketpair();
        let (d, _d) = socketpair();
        let g = Arc::new(OpenFile::placeholder(c, Some(d)));
        held.add(&g);
        drop(g);
        assert!(held.alive().is_empty(), "closed: dropped");
    }

    #[test]
    fn a_listening_socket_is_not_a_connection_and_an_accepted_one_is() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!connected_tcp(l.as_raw_fd()));
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        assert!(connected_tcp(c.as_raw_fd()) && connected_tcp(s.as_raw_fd()));
        let (u, _u) = socketpair();
        assert!(!connected_tcp(u.as_raw_fd()));
    }
}
