//! ditto's own threads run under seccomp filters: a forbidden host syscall from a
//! VMM thread ends ditto with exit 148 and a one-line report, and the guest-service
//! calls a real program needs still work under them.

mod common;

const HOOK: &str = "DITTO_TEST_SECCOMP_VIOLATION";

fn run_with_hook(kind: &str, extra: &[&str], prog: &str) -> std::process::Output {
    let mut c = common::ditto();
    c.env(HOOK, kind)
        .arg("run")
        .args(extra)
        .arg("--")
        .arg(common::prog(prog));
    common::output_within(c, 60)
}

fn report_lines(o: &std::process::Output) -> Vec<String> {
    common::stderr(o)
        .lines()
        .filter(|l| l.starts_with("ditto: seccomp:"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_forbidden_syscall_on_a_vcpu_thread_ends_ditto_with_a_report() {
    let o = run_with_hook("vcpu", &[], "hello");
    assert_eq!(o.status.code(), Some(148), "{}", common::stderr(&o));
    assert_eq!(
        report_lines(&o),
        ["ditto: seccomp: thread vcpu made forbidden syscall 101 (ptrace)"],
        "{}",
        common::stderr(&o)
    );
    // The guest never ran: the filter is in place before its first instruction.
    assert!(
        !common::stdout(&o).contains("hello"),
        "{}",
        common::stdout(&o)
    );
}

#[test]
fn a_forbidden_syscall_on_the_signal_thread_is_caught_too() {
    let o = run_with_hook("signals", &[], "hello");
    assert_eq!(o.status.code(), Some(148), "{}", common::stderr(&o));
    assert_eq!(
        report_lines(&o),
        ["ditto: seccomp: thread signals made forbidden syscall 101 (ptrace)"]
    );
}

/// The main thread of `ditto run` is filtered too once the program runs (kind "main").
#[test]
fn a_forbidden_syscall_on_the_main_thread_is_caught() {
    let o = run_with_hook("main", &[], "hello");
    assert_eq!(o.status.code(), Some(148), "{}", common::stderr(&o));
    assert_eq!(
        report_lines(&o),
        ["ditto: seccomp: thread main made forbidden syscall 101 (ptrace)"],
        "{}",
        common::stderr(&o)
    );
}

#[test]
fn no_seccomp_runs_without_filters() {
    // The twin of the tests above: without filters the hook never fires and the
    // program runs to its end.
    let o = run_with_hook("vcpu", &["--no-seccomp"], "hello");
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
    assert!(report_lines(&o).is_empty());
    assert!(common::stdout(&o).contains("hello"));
}

#[test]
fn the_guest_service_calls_work_under_the_filters() {
    let prog = common::prog("seccomp_probe");
    let p = prog.to_str().unwrap();
    let native = common::native(&[p], b"");
    assert_eq!(native.status.code(), Some(0), "{}", common::stdout(&native));
    let o = common::run_in(&[], &[p], b"");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}\n{}",
        common::stdout(&o),
        common::stderr(&o)
    );
    assert!(report_lines(&o).is_empty(), "{}", common::stderr(&o));
    assert_eq!(common::stdout(&o), common::stdout(&native));
    assert!(common::stdout(&o).ends_with("done\n"));
}

#[test]
fn a_forbidden_syscall_in_a_replica_or_the_supervisor_is_caught() {
    // "main": each replica's main thread, filtered once its program runs.
    for kind in ["channel", "supervisor", "main"] {
        let mut c = common::ditto();
        let out = common::tempdir();
        c.env(HOOK, kind)
            .arg("pair")
            .arg("--out")
            .arg(out.path())
            .arg("--")
            .arg(common::prog("pthread_test"));
        let o = common::output_within(c, 90);
        let want = format!("ditto: seccomp: thread {kind} made forbidden syscall 101 (ptrace)");
        assert!(
            report_lines(&o).contains(&want),
            "{kind}: {}",
            common::stderr(&o)
        );
        assert_ne!(o.status.code(), Some(0), "{kind}");
    }
}

#[test]
fn pairs_run_under_the_filters_in_both_modes() {
    // prodcons replicates reliably in both modes (tests/pair.rs runs its dynamic twin);
    // a failure here that `--no-seccomp` does not share is an allowlist gap.
    for mode in ["det", "follow"] {
        let mut c = common::ditto();
        let out = common::tempdir();
        c.arg("pair")
            .arg("--mode")
            .arg(mode)
            .arg("--out")
            .arg(out.path())
            .arg("--")
            .arg(common::prog("prodcons"));
        let o = common::output_within(c, 90);
        assert_eq!(o.status.code(), Some(0), "{mode}: {}", common::stderr(&o));
        assert!(
            report_lines(&o).is_empty(),
            "{mode}: {}",
            common::stderr(&o)
        );
    }
}
