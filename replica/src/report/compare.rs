//! Two runs' reports side by side ([`compare_reports`], `ditto compare A B`).

use std::fmt::{self, Write as _};

use super::text::{shell_words, thousands};
use super::Report;

/// Two runs side by side: outcome, mode, program, replicas' ends, wall time and every counter
/// with the second run's delta, the first divergence of each, and whether both point at the
/// same place.
pub fn compare_reports(a: &Report, b: &Report) -> String {
    let mut out = String::new();
    write_comparison(&mut out, a, b).expect("writing to a String cannot fail");
    out
}

fn write_comparison(out: &mut String, a: &Report, b: &Report) -> fmt::Result {
    let counters = |r: &Report| {
        let c = &r.counters;
        [
            ("records", c.records),
            ("record_bytes", c.record_bytes),
            ("recorded_syscalls", c.recorded_syscalls),
            ("compared_outputs", c.compared_outputs),
            ("bytes_compared", c.bytes_compared),
            ("turns", c.turns),
            ("reentries", c.reentries),
            ("signals", c.signals),
            ("max_lag_records", c.max_lag_records),
            ("max_lag_bytes", c.max_lag_bytes),
        ]
    };
    let mut rows: Vec<(String, String, String, String)> = vec![
        (
            "outcome".into(),
            a.outcome.to_string(),
            b.outcome.to_string(),
            String::new(),
        ),
        ("mode".into(), a.mode.clone(), b.mode.clone(), String::new()),
        (
            "primary".into(),
            a.primary.describe(),
            b.primary.describe(),
            String::new(),
        ),
        (
            "secondary".into(),
            a.secondary.describe(),
            b.secondary.describe(),
            String::new(),
        ),
        (
            "failover".into(),
            failover_cell(a),
            failover_cell(b),
            String::new(),
        ),
        (
            "wall_seconds".into(),
            format!("{:.3}", a.wall_seconds),
            format!("{:.3}", b.wall_seconds),
            format!("{:+.3}", b.wall_seconds - a.wall_seconds),
        ),
    ];
    for ((name, x), (_, y)) in counters(a).into_iter().zip(counters(b)) {
        rows.push((name.into(), thousands(x), thousands(y), delta(x, y)));
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows
        .iter()
        .map(|r| r.1.chars().count())
        .max()
        .unwrap_or(0)
        .max("first".len());
    let w2 = rows
        .iter()
        .map(|r| r.2.chars().count())
        .max()
        .unwrap_or(0)
        .max("second".len());
    writeln!(
        out,
        "{:<w0$}  {:<w1$}  {:<w2$}  delta",
        "", "first", "second"
    )?;
    for (name, x, y, d) in &rows {
        let line = format!("{name:<w0$}  {x:<w1$}  {y:<w2$}  {d}");
        writeln!(out, "{}", line.trim_end())?;
    }
    if a.program == b.program {
        writeln!(out, "program: {}", shell_words(&a.program))?;
    } else {
        writeln!(out, "program (first):  {}", shell_words(&a.program))?;
        writeln!(out, "program (second): {}", shell_words(&b.program))?;
    }
    writeln!(out)?;
    writeln!(out, "first divergence:")?;
    for (name, r) in [("first", a), ("second", b)] {
        let d = match &r.first_divergence {
            Some(d) => d.headline(),
            None => "none".to_string(),
        };
        writeln!(out, "  {name:<7} {d}")?;
    }
    let verdict = match (&a.first_divergence, &b.first_divergence) {
        (None, None) => "neither run diverged".to_string(),
        (Some(_), None) => "only the first run diverged".to_string(),
        (None, Some(_)) => "only the second run diverged".to_string(),
        (Some(x), Some(y)) if x.same_place(y) => {
            let same_values = x.primary.hash == y.primary.hash
                && x.secondary.hash == y.secondary.hash
                && x.primary.len == y.primary.len
                && x.secondary.len == y.secondary.len;
            format!(
                "same place in both runs ({} at {}); the values {}",
                x.kind,
                x.location(),
                if same_values {
                    "are the same"
                } else {
                    "differ"
                }
            )
        }
        (Some(_), Some(_)) => "the runs diverged at different places".to_string(),
    };
    writeln!(out, "{verdict}")
}

/// A report's failover in one short cell: `"primary killed by SIGKILL at 2.003 s, taken
/// over in 12.3 ms"`, or `"none"`.
fn failover_cell(r: &Report) -> String {
    let Some(f) = &r.failover else {
        return "none".into();
    };
    let mut s = format!("{} {} at {:.3} s", f.died.as_str(), f.how, f.at_seconds);
    match f.takeover_ms {
        Some(ms) => {
            let _ = write!(s, ", taken over in {ms:.1} ms");
        }
        None if f.died == super::Died::Secondary => s.push_str(", primary served on"),
        None => s.push_str(", not taken over"),
    }
    s
}

pub(super) fn delta(x: u64, y: u64) -> String {
    match y.cmp(&x) {
        std::cmp::Ordering::Equal => String::new(),
        std::cmp::Ordering::Greater => format!("+{}", thousands(y - x)),
        std::cmp::Ordering::Less => format!("-{}", thousands(x - y)),
    }
}
