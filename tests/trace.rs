//! `ditto pair --trace` and `ditto compare --trace`: real pairs, their trace files, and the
//! two replicas lined up.

mod common;

use common::*;
use replica::report::{Outcome, Report};
use replica::role::Role;
use replica::trace::{trace_path, Trace, TraceKind};

fn report(out: &std::path::Path) -> Report {
    Report::load(out.join("report.json")).expect("report.json")
}

fn compare_trace(out: &std::path::Path) -> std::process::Output {
    ditto()
        .args(["compare", "--trace"])
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn an_identical_pair_leaves_bounded_traces_that_do_not_part() {
    let out = tempdir();
    let mut c = ditto();
    c.args([
        "pair",
        "--quiet",
        "--mode",
        "det",
        "--trace",
        "--trace-events",
        "40",
        "--out",
    ])
    .arg(out.path())
    .arg("--")
    .arg(prog("pthread_test-det"))
    .args(["4", "500"]);
    let o = output_within(c, 240);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(report(out.path()).outcome, Outcome::Identical);
    let p = Trace::load(&trace_path(out.path(), Role::Primary)).unwrap();
    let s = Trace::load(&trace_path(out.path(), Role::Secondary)).unwrap();
    assert_eq!((p.role.as_str(), s.role.as_str()), ("primary", "secondary"));
    assert!(
        p.threads.len() > 1,
        "pthread_test runs threads: {:?}",
        p.threads.len()
    );
    for t in p.threads.iter().chain(&s.threads) {
        assert!(
            t.events.len() <= 40,
            "thread {}: {}",
            t.thread,
            t.events.len()
        );
        // Oldest first, seq never goes back.
        assert!(t.events.windows(2).all(|w| w[0].seq <= w[1].seq));
    }
    // Same threads in both, and a thread that made more than 40 events dropped the oldest.
    let tids = |t: &Trace| t.threads.iter().map(|t| t.thread).collect::<Vec<_>>();
    assert_eq!(tids(&p), tids(&s));
    assert!(p.threads.iter().any(|t| t.dropped > 0));
    let events = p.threads.iter().flat_map(|t| &t.events);
    assert!(events
        .clone()
        .any(|e| e.treatment == "compared" && e.syscall == "write"));
    assert!(
        events.clone().all(|e| e.turn.is_some()),
        "det mode: every event has its turn"
    );

    let cmp = compare_trace(out.path());
    assert_eq!(cmp.status.code(), Some(0), "{}", stdout(&cmp));
    assert!(
        stdout(&cmp).contains("the traces do not part"),
        "{}",
        stdout(&cmp)
    );
}

#[test]
fn a_racy_pair_parts_where_the_report_says() {
    let p = prog("race_counter-dyn");
    for _ in 0..4 {
        let out = tempdir();
        let mut c = ditto();
        c.args(["pair", "--quiet", "--mode", "follow", "--trace", "--out"])
            .arg(out.path())
            .arg("--")
            .arg(&p)
            .args(["4", "10000000"]);
        let o = output_within(c, 120);
        let r = report(out.path());
        let cmp = compare_trace(out.path());
        if r.outcome == Outcome::Identical {
            // Both replicas lost the same updates: their traces agree.
            assert_eq!(cmp.status.code(), Some(0), "{}", stdout(&cmp));
            continue;
        }
        assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
        let d = r.first_divergence.expect("a divergence");
        let text = stdout(&cmp);
        assert_eq!(cmp.status.code(), Some(1), "{text}");
        assert!(text.contains("first parting: thread 1000"), "{text}");
        let line = format!("seq {} write", d.syscall_seq);
        assert!(
            text.contains(&format!("primary:   {line}")),
            "{line}\n{text}"
        );
        assert!(
            text.contains(&format!("secondary: {line}")),
            "{line}\n{text}"
        );
        assert!(text.contains("leading up to it:"), "{text}");
        // The secondary's trace ends at the diverging write, the primary's goes on to exit.
        let s = Trace::load(&trace_path(out.path(), Role::Secondary)).unwrap();
        let main = s.thread(1000).unwrap();
        let last_write = main
            .events
            .iter()
            .rev()
            .find(|e| e.kind == TraceKind::Syscall && e.syscall == "write")
            .unwrap();
        assert_eq!(last_write.seq, d.syscall_seq);
        // With a report too, both are printed.
        let both = ditto()
            .args(["compare", "--trace"])
            .arg(out.path())
            .arg(out.path().join("report.json"))
            .output()
            .unwrap();
        assert_eq!(both.status.code(), Some(1));
        assert!(stdout(&both).contains("first parting") && stdout(&both).contains("diverged"));
        check_html_page(out.path(), &d);
        return;
    }
    panic!("race_counter never diverged in 4 follow pairs");
}

#[test]
fn missing_or_corrupt_traces_are_one_line_errors() {
    let dir = tempdir();
    let o = compare_trace(dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("trace-primary.json"), "{}", stderr(&o));
    std::fs::write(dir.path().join("trace-primary.json"), "{\"schema\":1,").unwrap();
    let o = compare_trace(dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a ditto trace"), "{}", stderr(&o));
}

/// `ditto compare --html` of the run in `out`, opened from the disk in headless Chromium:
/// a screenshot is taken, and the page as the browser built it holds the divergence's
/// text and the line only its inline script writes.
fn check_html_page(out: &std::path::Path, d: &replica::report::Divergence) {
    let page = out.join("pair.html");
    let o = ditto()
        .args(["compare", "--html"])
        .arg(&page)
        .arg("--trace")
        .arg(out)
        .arg(out.join("report.json"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page must not reach out"
    );
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok()
        })
        .expect(
            "headless Chromium is needed for this test (.ci/run installs the chromium package)",
        );
    let url = format!("file://{}", page.display());
    let browser = |extra: &[&str]| {
        let mut c = std::process::Command::new(chromium);
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1400,1000",
        ])
        .args(extra)
        .arg(&url)
        .current_dir(out);
        output_within(c, 120)
    };
    let shot = out.join("pair.png");
    let o = browser(&[&format!("--screenshot={}", shot.display())]);
    assert!(o.status.success(), "{}", stderr(&o));
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    let dom = stdout(&browser(&["--dump-dom"]));
    let heading = format!(
        "First divergence: output in thread {}, syscall #{} (write)",
        d.thread, d.syscall_seq
    );
    assert!(dom.contains(&heading), "{heading} not on the page");
    // Written by the page's script: digits appear only if it ran.
    let drawn = dom
        .split("timeline: ")
        .filter_map(|rest| rest.split(' ').next())
        .any(|n| n.parse::<u32>().is_ok_and(|n| n > 10));
    assert!(drawn, "the page's script did not run");
    assert!(dom.contains("first divergence at slot"));
}
