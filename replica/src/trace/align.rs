//! Lining up the two replicas' traces (`ditto compare --trace`): per thread, the events both
//! replicas replicated are matched by their replicated-event number (the key the records
//! themselves are matched by: local calls such as futexes may differ in number between
//! replicas, so syscall counts do not line up), and the first place they part is found.

use std::fmt::Write as _;

use super::{ThreadTrace, Trace, TraceEvent, TraceKind};

/// How many events of each replica are shown before a parting.
pub const CONTEXT: usize = 8;

/// Where one thread's replicas part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parting {
    /// The thread.
    pub thread: i64,
    /// The replicated-event number where they part.
    pub event: u64,
    /// The primary's event there (None: the primary has none).
    pub primary: Option<TraceEvent>,
    /// The secondary's event there (None: the secondary has none).
    pub secondary: Option<TraceEvent>,
    /// What differs, in words.
    pub why: String,
    /// The primary's events just before (oldest first).
    pub primary_before: Vec<TraceEvent>,
    /// The secondary's events just before (oldest first).
    pub secondary_before: Vec<TraceEvent>,
}

/// One thread in both traces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadAlignment {
    /// The thread.
    pub thread: i64,
    /// Events kept by the primary / the secondary.
    pub events: (usize, usize),
    /// Replicated events both kept and agree on.
    pub agreed: u64,
    /// The last replicated event number they agree on.
    pub agreed_through: Option<u64>,
    /// Where they part, if they do within what both kept.
    pub parting: Option<Parting>,
}

/// The two traces lined up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alignment {
    /// Every thread of either trace, by id.
    pub threads: Vec<ThreadAlignment>,
    /// The parting earliest in the primary's global order (its turn count), if any.
    pub first: Option<Parting>,
}

fn replicated(t: Option<&ThreadTrace>) -> Vec<(u64, usize)> {
    t.map(|t| {
        t.events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == TraceKind::Syscall)
            .filter_map(|(i, e)| e.event.map(|n| (n, i)))
            .collect()
    })
    .unwrap_or_default()
}

fn before(t: Option<&ThreadTrace>, index: Option<usize>) -> Vec<TraceEvent> {
    let Some(t) = t else { return Vec::new() };
    let end = index.unwrap_or(t.events.len());
    t.events[end.saturating_sub(CONTEXT)..end].to_vec()
}

/// What differs between two events matched by their replicated-event number.
fn difference(p: &TraceEvent, s: &TraceEvent) -> Option<String> {
    if p.syscall != s.syscall {
        Some(format!(
            "the primary made {} where the secondary made {}",
            p.syscall, s.syscall
        ))
    } else if p.treatment != s.treatment {
        Some(format!(
            "{} was {} in the primary, {} in the secondary",
            p.syscall, p.treatment, s.treatment
        ))
    } else if p.result != s.result {
        Some(format!(
            "{} returned {} in the primary, {} in the secondary",
            p.syscall, p.result, s.result
        ))
    } else {
        None
    }
}

/// Whether the secondary's event `b` (at `sidx` of `s`) is a call the secondary's stop cut
/// short rather than a parting: a replicated call ends with the primary's result in the
/// secondary, except when the secondary stops (a divergence found elsewhere, the pair
/// stopped) while the call waits for that result; it then ends with EINTR, as the thread's
/// last event. Taken for a parting, it hid the real one on another thread.
///
/// The call the report names as the first divergence ends the same way (the secondary stops
/// inside it, having found the mismatch), so it is never taken for a cut one: `reported`
/// is the report's (syscall, the thread's syscall number) when the report names a call.
fn cut_by_the_stop(
    a: &TraceEvent,
    b: &TraceEvent,
    s: Option<&ThreadTrace>,
    sidx: Option<usize>,
    reported: Option<(&str, u64)>,
) -> bool {
    let last = s.is_some_and(|t| sidx == Some(t.events.len().saturating_sub(1)));
    let named = reported.is_some_and(|(name, seq)| b.syscall == name && b.seq == seq);
    last && !named
        && a.syscall == b.syscall
        && a.treatment == b.treatment
        && b.result == -i64::from(libc::EINTR)
        && a.result != b.result
}

fn align_thread(
    tid: i64,
    p: Option<&ThreadTrace>,
    s: Option<&ThreadTrace>,
    reported: Option<(&str, u64)>,
) -> ThreadAlignment {
    let (pe, se) = (replicated(p), replicated(s));
    let mut out = ThreadAlignment {
        thread: tid,
        events: (
            p.map_or(0, |t| t.events.len()),
            s.map_or(0, |t| t.events.len()),
        ),
        agreed: 0,
        agreed_through: None,
        parting: None,
    };
    // Only what both rings still hold can be compared.
    let start = match (pe.first(), se.first()) {
        (Some(a), Some(b)) => a.0.max(b.0),
        (Some(a), None) => a.0,
        (None, Some(b)) => b.0,
        (None, None) => return out,
    };
    let mut pi = pe.iter().skip_while(|e| e.0 < start).peekable();
    let mut si = se.iter().skip_while(|e| e.0 < start).peekable();
    loop {
        let (pn, sn) = (pi.peek().copied(), si.peek().copied());
        let (event, pidx, sidx) = match (pn, sn) {
            (None, None) => break,
            (Some(a), Some(b)) if a.0 == b.0 => (a.0, Some(a.1), Some(b.1)),
            (Some(a), Some(b)) if a.0 < b.0 => (a.0, Some(a.1), None),
            (Some(a), None) => (a.0, Some(a.1), None),
            (_, Some(b)) => (b.0, None, Some(b.1)),
        };
        let pev = pidx.map(|i| &p.expect("indexed").events[i]);
        let sev = sidx.map(|i| &s.expect("indexed").events[i]);
        let why = match (pev, sev) {
            (Some(a), Some(b)) => difference(a, b),
            // The secondary ends with a thread the primary went on with: it stopped there
            // (its own trace ends, as after a divergence) only if nothing follows.
            (Some(a), None) => Some(format!(
                "the primary made {} (replicated event {event}); the secondary has no such event",
                a.syscall
            )),
            (None, Some(b)) => Some(format!(
                "the secondary made {} (replicated event {event}); the primary has no such event",
                b.syscall
            )),
            (None, None) => None,
        };
        if let Some(why) = why {
            // A thread whose secondary simply stopped sooner (the program ended, the pair was
            // stopped) has nothing after its last event: not a parting unless the secondary's
            // trace holds something at or after it.
            let secondary_went_on = se.last().is_some_and(|l| l.0 >= event);
            let primary_went_on = pe.last().is_some_and(|l| l.0 >= event);
            if pev.is_some() && sev.is_none() && !secondary_went_on {
                break;
            }
            if sev.is_some() && pev.is_none() && !primary_went_on {
                break;
            }
            if let (Some(a), Some(b)) = (pev, sev) {
                if cut_by_the_stop(a, b, s, sidx, reported) {
                    break;
                }
            }
            out.parting = Some(Parting {
                thread: tid,
                event,
                primary: pev.cloned(),
                secondary: sev.cloned(),
                why,
                primary_before: before(p, pidx),
                secondary_before: before(s, sidx),
            });
            break;
        }
        out.agreed += 1;
        out.agreed_through = Some(event);
        if pidx.is_some() {
            pi.next();
        }
        if sidx.is_some() {
            si.next();
        }
    }
    out
}

/// Lines up `primary` and `secondary` thread by thread.
pub fn align(primary: &Trace, secondary: &Trace) -> Alignment {
    align_with_report(primary, secondary, None)
}

/// [`align`], knowing the call the pair's report names as the first divergence (its
/// syscall and the thread's syscall number), which is a parting even where the secondary's
/// stop cut it short.
pub fn align_with_report(
    primary: &Trace,
    secondary: &Trace,
    reported: Option<(&str, u64)>,
) -> Alignment {
    let mut tids: Vec<i64> = primary
        .threads
        .iter()
        .chain(&secondary.threads)
        .map(|t| t.thread)
        .collect();
    tids.sort_unstable();
    tids.dedup();
    let threads: Vec<ThreadAlignment> = tids
        .iter()
        .map(|&t| align_thread(t, primary.thread(t), secondary.thread(t), reported))
        .collect();
    let first = threads
        .iter()
        .filter_map(|t| t.parting.as_ref())
        .min_by_key(|p| {
            p.primary
                .as_ref()
                .or(p.secondary.as_ref())
                .and_then(|e| e.turn)
                .unwrap_or(u64::MAX)
        })
        .cloned();
    Alignment { threads, first }
}

/// One event in a line: `seq 12 read -> 5 (recorded #3, turn 40)`.
pub fn describe(e: &TraceEvent) -> String {
    let mut s = match e.kind {
        TraceKind::Syscall => format!("seq {} {} -> {}", e.seq, e.syscall, e.result),
        TraceKind::Signal => format!("seq {} signal {} after {}", e.seq, e.result, e.syscall),
    };
    let mut notes = Vec::new();
    if !e.treatment.is_empty() {
        notes.push(match e.event {
            Some(n) => format!("{} #{n}", e.treatment),
            None => e.treatment.clone(),
        });
    }
    if let Some(t) = e.turn {
        notes.push(format!("turn {t}"));
    }
    if !notes.is_empty() {
        let _ = write!(s, " ({})", notes.join(", "));
    }
    s
}

/// The alignment as text: a line per thread, then the first parting with the events that
/// led to it in two columns.
pub fn render(a: &Alignment) -> String {
    let mut out = String::new();
    for t in &a.threads {
        let _ = write!(
            out,
            "thread {}: {} events kept by the primary, {} by the secondary; ",
            t.thread, t.events.0, t.events.1
        );
        match (&t.parting, t.agreed_through) {
            (Some(p), _) => {
                let _ = writeln!(
                    out,
                    "{} replicated events agree, then they part at event {}",
                    t.agreed, p.event
                );
            }
            (None, Some(n)) => {
                let _ = writeln!(out, "{} replicated events agree (through #{n})", t.agreed);
            }
            (None, None) => {
                let _ = writeln!(out, "no replicated event kept by both");
            }
        }
    }
    let Some(p) = &a.first else {
        let _ = writeln!(out, "the traces do not part");
        return out;
    };
    let _ = writeln!(
        out,
        "\nfirst parting: thread {}, replicated event {}",
        p.thread, p.event
    );
    let _ = writeln!(out, "  {}", p.why);
    let show = |e: &Option<TraceEvent>| e.as_ref().map_or("(none)".to_string(), describe);
    let _ = writeln!(out, "  primary:   {}", show(&p.primary));
    let _ = writeln!(out, "  secondary: {}", show(&p.secondary));
    let rows = p.primary_before.len().max(p.secondary_before.len());
    if rows > 0 {
        let _ = writeln!(out, "  leading up to it:");
        let width = 44;
        let _ = writeln!(out, "    {:<width$} | secondary", "primary");
        let pad = |v: &[TraceEvent], i: usize| {
            let skip = rows - v.len();
            i.checked_sub(skip)
                .and_then(|j| v.get(j))
                .map(describe)
                .unwrap_or_default()
        };
        for i in 0..rows {
            let _ = writeln!(
                out,
                "    {:<width$} | {}",
                pad(&p.primary_before, i),
                pad(&p.secondary_before, i)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::call;
    use super::*;

    fn trace(role: &str, threads: Vec<(i64, Vec<TraceEvent>)>) -> Trace {
        Trace {
            schema: super::super::TRACE_SCHEMA,
            role: role.into(),
            capacity: 100,
            threads: threads
                .into_iter()
                .map(|(thread, events)| ThreadTrace {
                    thread,
                    dropped: 0,
                    events,
                })
                .collect(),
        }
    }

    #[test]
    fn identical_traces_agree_even_with_different_local_calls() {
        let p = trace(
            "primary",
            vec![(
                1000,
                vec![
                    call(1, "read", "recorded", Some(1)),
                    call(2, "futex", "local", None),
                    call(3, "write", "compared", Some(2)),
                ],
            )],
        );
        // One futex call more: futexes are local and may differ in number.
        let s = trace(
            "secondary",
            vec![(
                1000,
                vec![
                    call(1, "read", "recorded", Some(1)),
                    call(2, "futex", "local", None),
                    call(3, "futex", "local", None),
                    call(4, "write", "compared", Some(2)),
                ],
            )],
        );
        let a = align(&p, &s);
        assert_eq!(a.first, None);
        assert_eq!(a.threads[0].agreed, 2);
        assert!(render(&a).contains("do not part"));
    }

    #[test]
    fn the_first_parting_is_found_with_what_led_to_it() {
        let p = trace(
            "primary",
            vec![
                (
                    1000,
                    vec![
                        call(1, "read", "recorded", Some(1)),
                        call(2, "clock_gettime", "recorded", Some(2)),
                    ],
                ),
                (1001, vec![call(1, "write", "compared", Some(1))]),
            ],
        );
        let s = trace(
            "secondary",
            vec![
                (
                    1000,
                    vec![
                        call(1, "read", "recorded", Some(1)),
                        call(2, "write", "compared", Some(2)),
                    ],
                ),
                (1001, vec![call(1, "write", "compared", Some(1))]),
            ],
        );
        let a = align(&p, &s);
        let first = a.first.clone().unwrap();
        assert_eq!((first.thread, first.event), (1000, 2));
        assert!(first.why.contains("clock_gettime") && first.why.contains("write"));
        assert_eq!(first.primary_before.len(), 1);
        let text = render(&a);
        assert!(
            text.contains("first parting: thread 1000, replicated event 2"),
            "{text}"
        );
        assert!(text.contains("seq 1 read -> 0 (recorded #1"), "{text}");
        assert_eq!(a.threads[1].parting, None);
    }

    #[test]
    fn a_secondary_that_stopped_sooner_has_not_parted() {
        let p = trace(
            "primary",
            vec![(
                1000,
                vec![
                    call(1, "read", "recorded", Some(1)),
                    call(2, "read", "recorded", Some(2)),
                ],
            )],
        );
        let s = trace(
            "secondary",
            vec![(1000, vec![call(1, "read", "recorded", Some(1))])],
        );
        let a = align(&p, &s);
        assert_eq!(a.first, None);
        // But a different result is.
        let mut s2 = s.clone();
        s2.threads[0].events[0].result = 7;
        let a = align(&p, &s2);
        assert!(a
            .first
            .unwrap()
            .why
            .contains("returned 0 in the primary, 7"));
    }

    #[test]
    fn a_call_the_secondarys_stop_cut_short_is_not_a_parting() {
        let mut p = trace(
            "primary",
            vec![
                (
                    1000,
                    vec![
                        call(1, "read", "recorded", Some(1)),
                        call(2, "fcntl", "recorded", Some(2)),
                    ],
                ),
                (
                    1001,
                    vec![
                        call(1, "nanosleep", "recorded", Some(1)),
                        call(2, "nanosleep", "recorded", Some(2)),
                    ],
                ),
            ],
        );
        let mut s = trace(
            "secondary",
            vec![
                (
                    1000,
                    vec![
                        call(1, "read", "recorded", Some(1)),
                        call(2, "clock_gettime", "recorded", Some(2)),
                    ],
                ),
                (
                    1001,
                    vec![
                        call(1, "nanosleep", "recorded", Some(1)),
                        call(2, "nanosleep", "recorded", Some(2)),
                    ],
                ),
            ],
        );
        // Thread 1001's last call was waiting for the primary's result when the secondary
        // stopped, and earlier in the turn order than thread 1000's real parting.
        s.threads[1].events[1].result = -4;
        p.threads[1].events[1].turn = Some(1);
        let a = align(&p, &s);
        let first = a.first.unwrap();
        assert_eq!((first.thread, first.event), (1000, 2), "{}", first.why);
        assert_eq!(a.threads[1].parting, None);
        // Not the last event: a real parting.
        s.threads[1]
            .events
            .push(call(3, "nanosleep", "recorded", Some(3)));
        let a = align(&p, &s);
        assert_eq!(a.first.unwrap().thread, 1001);
    }

    /// A compared write whose bytes differed: the secondary stops inside it, so it ends with
    /// EINTR as the thread's last event, like a call the stop cut short; the report names it,
    /// and it is the parting (`race_counter`'s pairs came out "do not part" without this).
    #[test]
    fn the_call_the_report_names_is_a_parting_even_when_cut_short() {
        let p = trace(
            "primary",
            vec![(
                1000,
                vec![
                    call(1, "read", "recorded", Some(1)),
                    call(2, "write", "compared", Some(2)),
                    call(3, "exit_group", "exit", Some(3)),
                ],
            )],
        );
        let mut s = trace(
            "secondary",
            vec![(
                1000,
                vec![
                    call(1, "read", "recorded", Some(1)),
                    call(2, "write", "compared", Some(2)),
                ],
            )],
        );
        s.threads[0].events[1].result = -4;
        assert_eq!(align(&p, &s).first, None);
        let a = align_with_report(&p, &s, Some(("write", 2)));
        let first = a.first.expect("the reported write parts");
        assert_eq!((first.thread, first.event), (1000, 2));
        // Another call's number does not make this one a parting.
        assert_eq!(align_with_report(&p, &s, Some(("write", 7))).first, None);
    }
}
