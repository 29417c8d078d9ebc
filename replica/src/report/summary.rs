//! A report's readable form ([`Report::summary`]): the outcome, the replicas' ends, the first
//! divergence with both values' excerpts as text and hex, the last common events and the
//! counters.

use std::fmt::{self, Write as _};

use super::text::{cores, shell_words, thousands};
use super::{Counters, Divergence, Event, Outcome, Report, Value};

impl Report {
    /// A readable multi-line summary: the outcome on the first line, then the run, the
    /// replicas' ends, the first divergence (where, both values, excerpts), the last common
    /// events and the counters.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        self.write_summary(&mut out)
            .expect("writing to a String cannot fail");
        out
    }

    fn headline(&self) -> String {
        let c = &self.counters;
        match self.outcome {
            Outcome::Identical => format!(
                "identical: {} records, {} bytes compared, {} turns",
                thousands(c.records),
                thousands(c.bytes_compared),
                thousands(c.turns)
            ),
            Outcome::Diverged => match &self.first_divergence {
                Some(d) => format!("diverged: {}", d.headline()),
                None => "diverged (the report holds no divergence)".to_string(),
            },
            Outcome::ReplicaFailed => {
                let both = [("primary", &self.primary), ("secondary", &self.secondary)];
                // The replicas that did not exit normally; both when each did.
                let mut failed: Vec<String> = both
                    .iter()
                    .filter(|(_, r)| {
                        r.error.is_some()
                            || r.exit_status.is_none()
                            || !r.exit.as_deref().unwrap_or("").starts_with("exited ")
                    })
                    .map(|(name, r)| format!("{name} {}", r.describe()))
                    .collect();
                if failed.is_empty() {
                    failed = both
                        .iter()
                        .map(|(name, r)| format!("{name} {}", r.describe()))
                        .collect();
                }
                format!("replica failed: {}", failed.join("; "))
            }
            Outcome::ChannelError => format!(
                "channel error: {}",
                self.channel_error.as_deref().unwrap_or("(no message)")
            ),
            Outcome::FailedOver => match &self.failover {
                Some(f) => format!("failed over: {}; {}", f.death_line(), f.survivor_line()),
                None => "failed over (the report holds no failover)".to_string(),
            },
        }
    }

    fn write_summary(&self, out: &mut String) -> fmt::Result {
        writeln!(out, "{}", self.headline())?;
        writeln!(
            out,
            "run:       {} mode, {:.3} s: {}",
            self.mode,
            self.wall_seconds,
            shell_words(&self.program)
        )?;
        for (name, r) in [("primary:", &self.primary), ("secondary:", &self.secondary)] {
            writeln!(
                out,
                "{name:<10} cores {}, {}",
                cores(&r.cores),
                r.describe()
            )?;
        }
        if let Some(f) = &self.failover {
            if self.outcome != Outcome::FailedOver {
                writeln!(out, "failover:  {}; {}", f.death_line(), f.survivor_line())?;
            }
        }
        if let Some(e) = &self.channel_error {
            if self.outcome != Outcome::ChannelError {
                writeln!(out, "channel:   {e}")?;
            }
        }
        if let Some(d) = &self.first_divergence {
            writeln!(out)?;
            write_divergence(out, d)?;
        }
        writeln!(out)?;
        write_events(out, &self.last_common)?;
        writeln!(out)?;
        write_counters(out, &self.counters)
    }
}

fn write_divergence(out: &mut String, d: &Divergence) -> fmt::Result {
    writeln!(out, "first divergence: {}", d.kind)?;
    writeln!(out, "  where:      {}", d.location())?;
    if let Some(p) = &d.primary_syscall {
        if *p != d.syscall {
            writeln!(
                out,
                "  syscalls:   primary {p}, secondary {}",
                if d.syscall.is_empty() {
                    "(none)"
                } else {
                    &d.syscall
                }
            )?;
        }
    }
    let mut when = Vec::new();
    if let Some(t) = d.logical_time {
        when.push(format!("logical time {}", thousands(t)));
    }
    if let Some(t) = d.turn {
        when.push(format!("turn {}", thousands(t)));
    }
    if !when.is_empty() {
        writeln!(out, "  when:       {}", when.join(", "))?;
    }
    if !d.detail.is_empty() {
        writeln!(out, "  detail:     {}", d.detail)?;
    }
    if let Some(b) = d.first_differing_byte {
        writeln!(out, "  first differing byte: {}", thousands(b))?;
    }
    writeln!(out, "  primary:    {}", d.primary.describe())?;
    writeln!(out, "  secondary:  {}", d.secondary.describe())?;
    let sides = [("primary", &d.primary), ("secondary", &d.secondary)];
    let with_bytes = sides
        .iter()
        .filter(|(_, v)| v.number.is_none() && v.len > 0)
        .count();
    if with_bytes == 0 {
        return Ok(());
    }
    for (name, v) in sides {
        if v.number.is_some() {
            continue;
        }
        if v.excerpt_hex.is_empty() && v.len > 0 {
            writeln!(
                out,
                "  {name:<10}  (hash only: its bytes did not cross the channel)"
            )?;
        } else {
            writeln!(
                out,
                "  {name:<10}  text from byte {}: \"{}\"",
                v.excerpt_offset, v.excerpt_text
            )?;
        }
    }
    write_hex_rows(out, &d.primary, &d.secondary, d.first_differing_byte)
}

/// Both excerpts as a hex dump, 16 bytes a row, the primary's row above the secondary's, with
/// `^^` under the first differing byte.
fn write_hex_rows(out: &mut String, p: &Value, s: &Value, diff: Option<u64>) -> fmt::Result {
    let mut sides = Vec::new();
    for (name, v) in [("primary", p), ("secondary", s)] {
        if v.number.is_some() {
            continue;
        }
        if let Some(bytes) = v.excerpt().filter(|b| !b.is_empty()) {
            sides.push((name, v.excerpt_offset, bytes));
        }
    }
    if sides.is_empty() {
        return Ok(());
    }
    let lo = sides.iter().map(|(_, o, _)| *o).min().unwrap_or(0) / 16 * 16;
    let hi = sides
        .iter()
        .map(|(_, o, b)| o + b.len() as u64)
        .max()
        .unwrap_or(0);
    writeln!(out, "  hex:")?;
    let mut row = lo;
    while row < hi {
        for (name, off, bytes) in &sides {
            let mut line = format!("    {name:<10} {row:08x} ");
            for at in row..row + 16 {
                match at.checked_sub(*off).and_then(|i| bytes.get(i as usize)) {
                    Some(b) => write!(line, " {b:02x}")?,
                    None => line.push_str("   "),
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        if let Some(d) = diff.filter(|d| (row..row + 16).contains(d)) {
            let indent = 4 + 10 + 1 + 8 + 1 + 1 + 3 * (d - row) as usize;
            writeln!(out, "{:indent$}^^", "")?;
        }
        row += 16;
    }
    Ok(())
}

fn write_events(out: &mut String, events: &[Event]) -> fmt::Result {
    if events.is_empty() {
        return writeln!(out, "last common events: none");
    }
    writeln!(
        out,
        "last {} common event{} (oldest first):",
        events.len(),
        if events.len() == 1 { "" } else { "s" }
    )?;
    let name_w = events
        .iter()
        .map(|e| e.syscall.chars().count())
        .max()
        .unwrap_or(0)
        .max("syscall".len());
    writeln!(
        out,
        "  {:>6}  {:>8}  {:<name_w$}  {:<8}  {:>12}  {:>10}",
        "thread", "seq", "syscall", "kind", "result", "bytes"
    )?;
    for e in events {
        writeln!(
            out,
            "  {:>6}  {:>8}  {:<name_w$}  {:<8}  {:>12}  {:>10}",
            e.thread,
            e.syscall_seq,
            e.syscall,
            e.kind.as_str(),
            e.result,
            thousands(e.bytes)
        )?;
    }
    Ok(())
}

fn write_counters(out: &mut String, c: &Counters) -> fmt::Result {
    writeln!(out, "counters:")?;
    let rows = [
        (
            "records",
            format!(
                "{} ({} bytes)",
                thousands(c.records),
                thousands(c.record_bytes)
            ),
        ),
        ("recorded syscalls", thousands(c.recorded_syscalls)),
        (
            "compared outputs",
            format!(
                "{} ({} bytes)",
                thousands(c.compared_outputs),
                thousands(c.bytes_compared)
            ),
        ),
        ("turns", thousands(c.turns)),
        ("reentries", thousands(c.reentries)),
        ("signals", thousands(c.signals)),
        (
            "max lag",
            format!(
                "{} records, {} bytes",
                thousands(c.max_lag_records),
                thousands(c.max_lag_bytes)
            ),
        ),
    ];
    for (name, v) in rows {
        writeln!(out, "  {name:<18} {v}")?;
    }
    Ok(())
}
