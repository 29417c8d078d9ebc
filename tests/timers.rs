//! POSIX timers (timer_create, timer_settime, timer_gettime, timer_getoverrun,
//! timer_delete): guest-images/progs/ptimer.c under `ditto run` and in a pair of each mode,
//! against the same program run natively. The program prints only what does not depend
//! on the schedule (errnos, ids, which thread took a signal, counts reached), so the outputs
//! must be equal.

mod common;

use std::path::Path;

use common::*;
use replica::report::{Outcome, Report};

/// A pair needs two cores (one per replica); these tests take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The program's output natively, checked for the facts the tests rely on.
fn native_output(p: &Path) -> String {
    let n = native(&[p.to_str().unwrap()], b"");
    assert!(n.status.success(), "native: {}", stderr(&n));
    let out = stdout(&n);
    for line in [
        "first timer id: 5\n",
        "periodic: 5 expiries, delete 0\n",
        "SIGEV_THREAD_ID handled by the target thread: yes\n",
        "TIMER_ABSTIME: SIGALRM by default, not before the deadline: yes\n",
        "gettime: remaining decreases: yes, interval 3s\n",
        "getoverrun in the handler counted the blocked expiries: yes\n",
        "sigwaitinfo: the timer's signal, si_code SI_TIMER yes, si_value 4242, si_timerid is the id yes, si_overrun 0\n",
        "SIGEV_THREAD function ran with its sigev_value: yes\n",
        "done\n",
    ] {
        assert!(out.contains(line), "native output lacks {line:?}:\n{out}");
    }
    out
}

#[test]
fn posix_timers_under_run_match_native() {
    let _turn = one_at_a_time();
    let p = prog("ptimer");
    let want = native_output(&p);
    let o = output_within(
        {
            let mut c = ditto();
            c.args(["run", "--"]).arg(&p);
            c
        },
        60,
    );
    assert!(o.status.success(), "{:?}: {}", o.status, stderr(&o));
    assert_eq!(stdout(&o), want, "stderr: {}", stderr(&o));
    assert!(
        !stderr(&o).contains("unsupported syscall"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_program_cannot_hold_more_than_4096_timers() {
    let _turn = one_at_a_time();
    let p = prog("ptimer");
    let mut c = ditto();
    c.args(["run", "--"]).arg(&p).arg("exhaust");
    let o = output_within(c, 60);
    assert!(o.status.success(), "{:?}: {}", o.status, stderr(&o));
    assert_eq!(
        stdout(&o),
        "created 4096, then EAGAIN\ndelete one: 0, create again: 0\n",
        "stderr: {}",
        stderr(&o)
    );
}

#[test]
fn posix_timers_replicate_in_both_modes() {
    let _turn = one_at_a_time();
    let p = prog("ptimer");
    let want = native_output(&p);
    for mode in ["det", "follow"] {
        for _ in 0..3 {
            let out = tempdir();
            let mut c = ditto();
            c.args(["pair", "--quiet", "--mode", mode, "--out"])
                .arg(out.path())
                .arg("--")
                .arg(&p);
            let o = output_within(c, 120);
            let r = Report::load(out.path().join("report.json")).expect("report.json");
            assert_eq!(
                r.outcome,
                Outcome::Identical,
                "{mode}: {}\nstderr: {}",
                r.summary(),
                stderr(&o)
            );
            assert!(o.status.success(), "{mode}: {:?}: {}", o.status, stderr(&o));
            assert_eq!(stdout(&o), want, "{mode}: stderr: {}", stderr(&o));
            let secondary = std::fs::read(out.path().join("secondary.stdout")).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&secondary),
                want,
                "{mode}: secondary"
            );
        }
    }
}
