//! Exhaustive small-schedule checker.
//!
//! N simulated threads run small programs of det sections, ticks and leave/re-enter pairs
//! against a token policy. A depth-first search visits every interleaving of the host-level
//! steps (each det_start attempt, critical section, det_end, tick, ...) and collects the order
//! in which the critical sections ran. Deterministic execution means one order for all
//! interleavings. States are memoized; since a state includes the order so far, merging equal
//! states loses no distinct outcome.

use det::{DetTid, Start, TokenScheduler};
use std::collections::{BTreeSet, HashSet};
use std::hash::Hash;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// det_start; critical section (appends the thread's id, unless elided); det_end.
    Section,
    Tick(u64),
    /// Block in a syscall with a pledged re-entry time.
    Leave(u64),
    Reenter(u64),
    /// Block in a syscall without a pledge, then re-enter at the earliest allowed time,
    /// read from the scheduler at that moment (what an unlogged primary would do).
    LeaveUnpledged,
    ReenterAtFloor,
    /// Added by the checker at the end of every program: a finished thread must leave the
    /// competition, or the threads behind its logical time would wait for it forever.
    Exit,
}

use Op::*;

enum Outcome {
    Granted,
    Elided,
    Wait,
}

trait Policy: Clone + Eq + Hash {
    fn start(&mut self, tid: u32) -> Outcome;
    fn end(&mut self, tid: u32);
    fn other(&mut self, tid: u32, op: Op);
}

impl Policy for TokenScheduler {
    fn start(&mut self, tid: u32) -> Outcome {
        match self.det_start(DetTid(tid)).expect("det_start") {
            Start::Granted(_) => Outcome::Granted,
            Start::Elided => Outcome::Elided,
            Start::Wait => Outcome::Wait,
        }
    }

    fn end(&mut self, tid: u32) {
        self.det_end(DetTid(tid)).expect("det_end");
    }

    fn other(&mut self, tid: u32, op: Op) {
        let tid = DetTid(tid);
        match op {
            Tick(n) => self.det_tick(tid, n),
            Leave(at) => self.leave(tid, Some(at)),
            Reenter(at) => self.reenter(tid, at),
            LeaveUnpledged => self.leave(tid, None),
            Exit => self.exit(tid),
            ReenterAtFloor => {
                let at = self.reentry_floor(tid).expect("floor");
                self.reenter(tid, at)
            }
            Section => unreachable!("sections are stepped by the checker"),
        }
        .expect("program op");
    }
}

/// A deliberately broken policy: whoever asks first while the token is free gets it.
#[derive(Clone, PartialEq, Eq, Hash)]
struct FirstComeFirstServed(Option<u32>);

impl Policy for FirstComeFirstServed {
    fn start(&mut self, tid: u32) -> Outcome {
        if self.0.is_some() {
            return Outcome::Wait;
        }
        self.0 = Some(tid);
        Outcome::Granted
    }

    fn end(&mut self, _: u32) {
        self.0 = None;
    }

    fn other(&mut self, _: u32, _: Op) {}
}

/// Where a thread is inside its current `Section` op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Sub {
    Outside,
    Granted,
    ReadyToEnd,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct State<P> {
    policy: P,
    pc: Vec<usize>,
    sub: Vec<Sub>,
    order: Vec<u32>,
}

struct Report {
    orders: BTreeSet<Vec<u32>>,
    states: usize,
    deadlocks: usize,
}

/// One host-level step of thread `t`, or `None` if it cannot change anything now.
fn step<P: Policy>(s: &State<P>, t: usize, programs: &[Vec<Op>]) -> Option<State<P>> {
    let mut next = s.clone();
    let tid = t as u32;
    match s.sub[t] {
        Sub::Granted => {
            next.order.push(tid);
            next.sub[t] = Sub::ReadyToEnd;
        }
        Sub::ReadyToEnd => {
            next.policy.end(tid);
            next.sub[t] = Sub::Outside;
            next.pc[t] += 1;
        }
        Sub::Outside => match *programs[t].get(s.pc[t])? {
            Section => match next.policy.start(tid) {
                Outcome::Granted => next.sub[t] = Sub::Granted,
                Outcome::Elided => next.sub[t] = Sub::ReadyToEnd,
                Outcome::Wait => {}
            },
            op => {
                next.policy.other(tid, op);
                next.pc[t] += 1;
            }
        },
    }
    // A det_start that must keep waiting changes nothing: not a step.
    (next != *s).then_some(next)
}

fn check<P: Policy>(policy: P, programs: &[Vec<Op>]) -> Report {
    let programs: Vec<Vec<Op>> = programs
        .iter()
        .map(|p| p.iter().copied().chain([Exit]).collect())
        .collect();
    let programs = &programs[..];
    let n = programs.len();
    let init = State {
        policy,
        pc: vec![0; n],
        sub: vec![Sub::Outside; n],
        order: Vec::new(),
    };
    let mut report = Report {
        orders: BTreeSet::new(),
        states: 0,
        deadlocks: 0,
    };
    let mut seen = HashSet::from([init.clone()]);
    let mut stack = vec![init];
    while let Some(s) = stack.pop() {
        report.states += 1;
        let in_section = s.sub.iter().filter(|&&x| x == Sub::Granted).count();
        assert!(in_section <= 1, "two critical sections at once");
        let mut moved = false;
        for t in 0..n {
            if let Some(next) = step(&s, t, programs) {
                moved = true;
                if seen.insert(next.clone()) {
                    stack.push(next);
                }
            }
        }
        if !moved {
            if (0..n).all(|t| s.pc[t] == programs[t].len()) {
                report.orders.insert(s.order);
            } else {
                report.deadlocks += 1;
            }
        }
    }
    report
}

/// The order Kendo promises, computed from the programs alone: every non-elided section
/// sorted by (logical time at its start, thread id).
fn kendo_order(programs: &[Vec<Op>]) -> Vec<u32> {
    let mut keys = Vec::new();
    for (t, program) in programs.iter().enumerate() {
        let (mut time, mut skip) = (0, false);
        for &op in program {
            match op {
                Section if skip => skip = false,
                Section => {
                    keys.push((time, t as u32));
                    time += 1;
                }
                Tick(0) => skip = true,
                Tick(n) => time += n,
                Reenter(at) => time = at,
                Leave(_) | LeaveUnpledged | ReenterAtFloor | Exit => {}
            }
        }
    }
    keys.sort();
    keys.into_iter().map(|(_, t)| t).collect()
}

fn assert_deterministic(programs: &[Vec<Op>]) -> Report {
    let n = programs.len() as u32;
    let report = check(TokenScheduler::with_threads(n), programs);
    assert_eq!(report.deadlocks, 0);
    let expected = BTreeSet::from([kendo_order(programs)]);
    assert_eq!(report.orders, expected, "after {} states", report.states);
    report
}

#[test]
fn three_threads_four_sections_have_one_order() {
    let programs = vec![vec![Section; 4]; 3];
    let report = assert_deterministic(&programs);
    let round_robin: Vec<u32> = (0..12).map(|i| i % 3).collect();
    assert_eq!(report.orders.first(), Some(&round_robin));
}

#[test]
fn four_threads_three_sections_have_one_order() {
    assert_deterministic(&vec![vec![Section; 3]; 4]);
}

#[test]
fn ticks_and_elided_sections_keep_one_order() {
    assert_deterministic(&[
        vec![Section, Tick(2), Section, Section, Tick(1), Section],
        vec![Tick(1), Section, Section, Tick(3), Section, Section],
        vec![
            Section,
            Tick(0),
            Section,
            Section,
            Section,
            Tick(5),
            Section,
        ],
    ]);
}

#[test]
fn pledged_leave_and_reenter_keep_one_order() {
    assert_deterministic(&[
        vec![Section, Section, Section, Section],
        vec![Section, Leave(3), Reenter(3), Section, Section],
        vec![Section, Section, Tick(1), Section, Section],
    ]);
}

#[test]
fn first_come_first_served_is_caught() {
    // 3 threads x 2 sections: every interleaving of sections is possible, 6!/(2!)^3 of them.
    let report = check(FirstComeFirstServed(None), &vec![vec![Section; 2]; 3]);
    assert_eq!(report.deadlocks, 0);
    assert_eq!(report.orders.len(), 90);
}

#[test]
fn unlogged_reentry_is_caught() {
    // Re-entering at whatever floor the moment gives depends on how far the others got.
    let programs = [
        vec![LeaveUnpledged, ReenterAtFloor, Section, Section],
        vec![Section, Section, Section],
    ];
    let report = check(TokenScheduler::with_threads(2), &programs);
    assert!(report.orders.len() > 1, "{:?}", report.orders);
}
