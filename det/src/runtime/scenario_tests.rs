//! A scenario of three threads (sections, elision, futex wait and wake, timed waits, an
//! external blocking call) run by a primary and then by a secondary under another
//! real-time order, in both modes: the secondary must reproduce the primary's schedule.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guest_memory::Errno;

use super::testing::*;
use super::{DetRuntime, FutexWait, Policy, ProcessView, TimedWait};
use crate::DetTid;

/// One replica's run of [`scenario`].
struct Run {
    rt: DetRuntime,
    p: FakeProcess,
    primary: bool,
    /// (thread, op) in the order the ops ran under the token.
    trace: Mutex<Vec<(i64, &'static str)>>,
    /// Each thread's futex results and final logical time.
    results: Mutex<BTreeMap<i64, Vec<String>>>,
    /// The external calls' re-entry times: the primary's, in thread order.
    reentries: Mutex<BTreeMap<i64, VecDeque<Option<u64>>>>,
    words: [AtomicU32; 3],
    /// Real-time pause between a thread's ops, in µs, by thread (1001..).
    pause_us: [u64; 3],
    /// How long the external call of t1 blocks, in ms.
    ext_ms: u64,
}

impl Run {
    fn new(rt: DetRuntime, primary: bool, pause_us: [u64; 3], ext_ms: u64) -> Self {
        Run {
            rt,
            p: process(),
            primary,
            trace: Mutex::default(),
            results: Mutex::default(),
            reentries: Mutex::default(),
            words: Default::default(),
            pause_us,
            ext_ms,
        }
    }

    fn pause(&self, t: i64) {
        std::thread::sleep(Duration::from_micros(self.pause_us[(t - 1001) as usize]));
    }

    fn ord(&self, t: i64, op: &'static str) {
        self.pause(t);
        let trace = &self.trace;
        self.rt
            .ordered(&self.p, t, || trace.lock().unwrap().push((t, op)))
            .unwrap();
    }

    fn note(&self, t: i64, what: String) {
        self.results
            .lock()
            .unwrap()
            .entry(t)
            .or_default()
            .push(what);
    }

    /// A futex wait on word `i` for value 0. The secondary's deadline is far away: it
    /// must not matter.
    fn wait(&self, t: i64, i: usize, timeout: Option<Duration>) -> Result<u64, Errno> {
        let deadline = timeout.map(|d| {
            Instant::now()
                + if self.primary {
                    d
                } else {
                    Duration::from_secs(10)
                }
        });
        let w = FutexWait {
            val: 0,
            bitset: u32::MAX,
            deadline,
        };
        let r = self
            .rt
            .futex_wait(&self.p, t, 64 * i as u64, (&self.words[i]).into(), w);
        self.note(t, format!("wait {i}: {r:?}"));
        r
    }

    /// Sets word `i` under the token and wakes one waiter.
    fn post(&self, t: i64, i: usize, op: &'static str) {
        let (trace, word) = (&self.trace, &self.words[i]);
        self.rt
            .ordered(&self.p, t, || {
                word.store(1, Ordering::SeqCst);
                trace.lock().unwrap().push((t, op));
            })
            .unwrap();
        let n = self.rt.futex_wake(&self.p, t, 64 * i as u64, 1, u32::MAX);
        self.note(t, format!("wake {i}: {n:?}"));
    }

    /// An external blocking call: the primary's re-entry time is recorded, and the
    /// secondary replays it.
    fn ext(&self, t: i64) {
        let block = || std::thread::sleep(Duration::from_millis(self.ext_ms));
        if self.primary {
            let ((), at) = self.rt.blocking(t, block).unwrap();
            let mut r = self.reentries.lock().unwrap();
            r.entry(t).or_default().push_back(at);
        } else {
            let replay = || {
                block();
                let at = self.reentries.lock().unwrap().get_mut(&t)?.pop_front()?;
                Some(((), at))
            };
            self.rt.blocking_replayed(t, replay).unwrap();
        }
    }

    fn worker(&self, t: i64) {
        let (rt, p) = (&self.rt, &self.p);
        match t {
            1001 => {
                self.ord(t, "a0");
                // An elided section takes no turn.
                rt.det_tick(t, 0).unwrap();
                rt.det_start(p, t).unwrap();
                rt.det_end(t).unwrap();
                // The program's own section, with an implicit point nested in it.
                rt.det_start(p, t).unwrap();
                self.ord(t, "a1 nested");
                rt.det_end(t).unwrap();
                self.ext(t);
                while self.wait(t, 0, None) == Ok(0) {}
                self.ord(t, "a2");
                self.post(t, 2, "a3 post 2");
            }
            1002 => {
                for op in ["b0", "b1", "b2", "b3"] {
                    self.ord(t, op);
                }
                self.post(t, 0, "b4 post 0");
                // Nobody posts word 1: a timeout.
                let timeout = Some(Duration::from_millis(15));
                assert_eq!(self.wait(t, 1, timeout), Err(Errno::ETIMEDOUT));
                self.ord(t, "b5");
            }
            _ => {
                self.ord(t, "c0");
                self.ord(t, "c1");
                // Posted by t1 well before the deadline.
                while self.wait(t, 2, Some(Duration::from_secs(2))) == Ok(0) {}
                self.ord(t, "c2");
            }
        }
        self.note(t, format!("time {:?}", rt.logical_time(t)));
        rt.thread_exit(p, t, 0, || {});
    }
}

/// Three threads with sections, elision, futex wait/wake, a timed wait that times out,
/// one that is woken, and an external blocking call.
fn scenario(run: &Run) {
    let (rt, p) = (&run.rt, &run.p);
    // A failing or stuck worker ends the program, so that the others stop too and the
    // test fails instead of hanging.
    struct EndOnPanic<'a>(&'a FakeProcess);
    impl Drop for EndOnPanic<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.finish(101);
            }
        }
    }
    let done = AtomicU32::new(0);
    std::thread::scope(|s| {
        for t in [1001, 1002, 1003] {
            rt.clone_thread(p, 1000, || Ok(t as u64)).unwrap();
            let done = &done;
            s.spawn(move || {
                let _guard = EndOnPanic(&run.p);
                run.worker(t);
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        // Kendo: out of the others' way while it waits for them.
        rt.det_tick(1000, 1 << 20).unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while done.load(Ordering::SeqCst) < 3 && !p.exiting() {
            if Instant::now() > until {
                p.finish(124);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    assert!(!p.exiting(), "the scenario failed: {:?}", p.exit_reason());
    rt.thread_exit(p, 1000, 0, || {});
    assert_eq!(rt.det_tid(1000), None);
}

fn same_schedule(a: &Run, b: &Run) {
    assert_eq!(*a.trace.lock().unwrap(), *b.trace.lock().unwrap());
    assert_eq!(*a.results.lock().unwrap(), *b.results.lock().unwrap());
    let turns = |r: &Run| r.rt.stats.turns.load(Ordering::Relaxed);
    assert_eq!(turns(a), turns(b));
}

/// Follow mode orders the sections (the trace and the turns) and replays the primary's
/// timeouts; it does not order futex wakes against waits, so how many waiters a wake
/// found and how often a wait loop was woken before it saw its word set depend on real
/// time. Those are left out; a wait loop's final result, every timeout and each thread's
/// final logical time stay in.
fn same_follow_schedule(lead: &Run, follow: &Run) {
    assert_eq!(*lead.trace.lock().unwrap(), *follow.trace.lock().unwrap());
    let ordered = |r: &Run| {
        let results = r.results.lock().unwrap();
        results
            .iter()
            .map(|(t, v)| {
                let kept: Vec<String> = v
                    .iter()
                    .filter(|w| !w.starts_with("wake ") && !w.ends_with(": Ok(0)"))
                    .cloned()
                    .collect();
                (*t, kept)
            })
            .collect::<BTreeMap<_, _>>()
    };
    let (l, f) = (ordered(lead), ordered(follow));
    assert_eq!(l, f);
    // Not vacuous: the timeout and each loop's ending EAGAIN are compared.
    assert!(
        l[&1002].contains(&format!("wait 1: {:?}", Err::<u64, _>(Errno::ETIMEDOUT))),
        "{l:?}"
    );
    assert!(
        l[&1001].iter().any(|w| w.starts_with("wait 0: Err")),
        "{l:?}"
    );
    let turns = |r: &Run| r.rt.stats.turns.load(Ordering::Relaxed);
    assert_eq!(turns(lead), turns(follow));
}

/// What the primary's scenario must report: t2 timed out (Kendo: in a turn), t3 was
/// woken (reported under Kendo only: follow mode's secondary needs only the timeouts).
fn check_outcomes(link: &TestLink, kendo: bool) {
    let logged = link.logged.lock().unwrap();
    let t2: Vec<_> = logged.iter().filter(|(t, _)| *t == DetTid(2)).collect();
    assert_eq!(t2.len(), 1, "{logged:?}");
    if !kendo {
        let timed_out = TimedWait {
            took_turn: false,
            timed_out: true,
            reentry_at: None,
        };
        assert_eq!(t2[0].1, timed_out);
        assert!(!logged.iter().any(|(t, _)| *t == DetTid(3)), "{logged:?}");
        return;
    }
    assert!(t2[0].1.took_turn && t2[0].1.timed_out);
    assert_eq!(t2[0].1.reentry_at.is_some(), kendo);
    let woken = TimedWait {
        took_turn: false,
        timed_out: false,
        reentry_at: None,
    };
    assert_eq!(
        logged
            .iter()
            .filter(|(t, _)| *t == DetTid(3))
            .collect::<Vec<_>>(),
        [&(DetTid(3), woken)]
    );
}

#[test]
fn follow_takes_the_leads_turns() {
    let started = Instant::now();
    let lead_link = Arc::new(TestLink::default());
    let rt = DetRuntime::replicated(1000, None, Policy::Lead, true, lead_link.clone());
    let lead = Run::new(rt, true, [300, 0, 150], 30);
    scenario(&lead);
    check_outcomes(&lead_link, false);
    let turns = lead_link.turns.lock().unwrap().clone();
    assert_eq!(
        turns.len() as u64,
        lead.rt.stats.turns.load(Ordering::Relaxed)
    );
    assert!(turns
        .iter()
        .enumerate()
        .all(|(i, t)| t.global_seq == i as u64));

    let follow_link = Arc::new(TestLink::replaying(&lead_link));
    let rt = DetRuntime::replicated(1000, None, Policy::Follow, false, follow_link.clone());
    // Another real-time order: t1 first and fast, t3 slow.
    let follow = Run::new(rt, false, [0, 100, 400], 1);
    *follow.reentries.lock().unwrap() = lead.reentries.lock().unwrap().clone();
    std::thread::scope(|s| {
        s.spawn(|| {
            for (i, &turn) in turns.iter().enumerate() {
                if i % 4 == 0 {
                    std::thread::sleep(Duration::from_micros(500));
                }
                follow.rt.push_turn(turn).unwrap();
            }
            follow.rt.close_log();
        });
        scenario(&follow);
    });
    same_follow_schedule(&lead, &follow);
    assert!(follow_link.diverged.lock().unwrap().is_empty());
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn kendo_secondary_replays_reentries_and_timeouts() {
    let started = Instant::now();
    let plink = Arc::new(TestLink::default());
    let rt = DetRuntime::replicated(1000, None, Policy::Kendo, true, plink.clone());
    let primary = Run::new(rt, true, [300, 0, 150], 30);
    scenario(&primary);
    check_outcomes(&plink, true);
    // Kendo logs the turns granted while a thread was away in a blocking call (t1's
    // external call), and only those: fewer than all turns, in grant order.
    let turns = plink.turns.lock().unwrap().clone();
    let all = primary.rt.stats.turns.load(Ordering::Relaxed);
    assert!(!turns.is_empty() && (turns.len() as u64) < all, "{turns:?}");
    assert!(turns.windows(2).all(|w| w[0].global_seq < w[1].global_seq));
    let at = primary.reentries.lock().unwrap()[&1001][0];
    assert!(at.is_some());

    let slink = Arc::new(TestLink::replaying(&plink));
    let rt = DetRuntime::replicated(1000, None, Policy::Kendo, false, slink);
    // As the channel would deliver them; the secondary takes no turn the log does not
    // show while its t1 waits for its record.
    for t in turns {
        rt.push_turn(t).unwrap();
    }
    let secondary = Run::new(rt, false, [0, 100, 400], 1);
    *secondary.reentries.lock().unwrap() = primary.reentries.lock().unwrap().clone();
    scenario(&secondary);
    same_schedule(&primary, &secondary);
    // The logical times agree too (each thread's last note).
    assert!(secondary.results.lock().unwrap()[&1001]
        .last()
        .unwrap()
        .starts_with("time Some("));
    assert!(started.elapsed() < Duration::from_secs(3));
}
