//! `ditto compare --html OUT.html REPORT [--trace DIR]`: one self-contained HTML page of a
//! pair run: both replicas as lanes per thread along the global turn order, recorded inputs
//! and compared outputs marked, the first divergence with both values and the first
//! differing byte, and (with the traces) the events leading up to it.
//!
//! Self-contained means no network and no other file: the styles, the SVG timeline and
//! the script are inline, and the data the script reads is a JSON block in the page. The
//! SVG is drawn here, so the page shows everything with scripts off; the script only adds
//! the details of a clicked event and the line that counts what was drawn.

use std::fmt::Write as _;

use super::{Divergence, EventKind, Report, Value};
use crate::trace::align::{self, describe, Alignment};
use crate::trace::{Trace, TraceEvent, TraceKind};

/// Horizontal room per event slot, in pixels.
const SLOT: f64 = 9.0;
/// Height of one lane.
const LANE: f64 = 22.0;
/// Width of the lane labels.
const LABEL: f64 = 130.0;
/// The widest timeline drawn; longer runs are compressed to fit.
const MAX_WIDTH: f64 = 6000.0;

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One mark on the timeline.
struct Mark {
    lane: usize,
    slot: usize,
    class: &'static str,
    text: String,
}

/// A value's excerpt as hex bytes and text, the byte at `diff` (an offset in the whole
/// value) marked.
fn value_html(v: &Value, diff: Option<u64>) -> String {
    let bytes: Vec<u8> = (0..v.excerpt_hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&v.excerpt_hex[2 * i..2 * i + 2], 16).ok())
        .collect();
    if bytes.is_empty() {
        return format!(
            "<span class=num>{}</span> <span class=dim>({} bytes, hash {})</span>",
            esc(&v.excerpt_text),
            v.len,
            esc(&v.hash)
        );
    }
    let marked = diff.and_then(|d| d.checked_sub(v.excerpt_offset));
    let (mut hex, mut text) = (String::new(), String::new());
    for (i, b) in bytes.iter().enumerate() {
        let here = marked == Some(i as u64);
        let h = format!("{b:02x}");
        let t = if b.is_ascii_graphic() || *b == b' ' {
            esc(&(*b as char).to_string())
        } else {
            "·".into()
        };
        if here {
            let _ = write!(hex, "<mark>{h}</mark> ");
            let _ = write!(text, "<mark>{t}</mark>");
        } else {
            let _ = write!(hex, "{h} ");
            text.push_str(&t);
        }
    }
    format!(
        "<div class=bytes><code>{}</code><br><code class=hex>{}</code></div><span class=dim>{} bytes in all; excerpt from byte {}</span>",
        text,
        hex.trim_end(),
        v.len,
        v.excerpt_offset
    )
}

fn divergence_html(d: &Divergence) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<section id=divergence><h2>First divergence: {kind} in thread {t}, syscall #{seq} ({sc})</h2><p>{detail}</p>",
        kind = esc(&format!("{:?}", d.kind).to_lowercase()),
        t = d.thread,
        seq = d.syscall_seq,
        sc = esc(&d.syscall),
        detail = esc(&d.detail),
    );
    if let Some(b) = d.first_differing_byte {
        let _ = write!(out, "<p>first differing byte: <b>{b}</b></p>");
    }
    let _ = write!(
        out,
        "<table class=values><tr><th>primary{}</th><td>{}</td></tr><tr><th>secondary</th><td>{}</td></tr></table></section>",
        d.primary_syscall
            .as_deref()
            .map(|s| format!(" ({})", esc(s)))
            .unwrap_or_default(),
        value_html(&d.primary, d.first_differing_byte),
        value_html(&d.secondary, d.first_differing_byte)
    );
    out
}

fn mark_class(e: &TraceEvent) -> &'static str {
    match (e.kind, e.treatment.as_str()) {
        (TraceKind::Signal, _) => "sig",
        (_, "recorded") => "rec",
        (_, "compared") => "out",
        (_, "exit") => "exit",
        _ => "loc",
    }
}

/// Lanes and marks from the two traces: two lanes (primary, secondary) per thread, events
/// placed by their turn (the global order), ties by their order in the thread.
fn trace_marks(p: &Trace, s: &Trace, a: &Alignment) -> (Vec<String>, Vec<Mark>, Option<usize>) {
    let mut tids: Vec<i64> = p
        .threads
        .iter()
        .chain(&s.threads)
        .map(|t| t.thread)
        .collect();
    tids.sort_unstable();
    tids.dedup();
    let mut keyed = Vec::new();
    let mut lanes = Vec::new();
    for (ti, tid) in tids.iter().enumerate() {
        for (ri, (trace, role)) in [(p, "primary"), (s, "secondary")].into_iter().enumerate() {
            lanes.push(format!("{tid} {role}"));
            let Some(t) = trace.thread(*tid) else {
                continue;
            };
            for (i, e) in t.events.iter().enumerate() {
                keyed.push(((e.turn.unwrap_or(0), e.seq, i), 2 * ti + ri, e));
            }
        }
    }
    // Slots: one per distinct (turn, seq) position, in order.
    let mut keys: Vec<(u64, u64)> = keyed.iter().map(|k| (k.0 .0, k.0 .1)).collect();
    keys.sort_unstable();
    keys.dedup();
    let slot_of = |turn: u64, seq: u64| keys.binary_search(&(turn, seq)).unwrap_or(0);
    let marks: Vec<Mark> = keyed
        .iter()
        .map(|((turn, seq, _), lane, e)| Mark {
            lane: *lane,
            slot: slot_of(*turn, *seq),
            class: mark_class(e),
            text: format!(
                "thread {} {}: {}",
                tids[lane / 2],
                if lane % 2 == 0 {
                    "primary"
                } else {
                    "secondary"
                },
                describe(e)
            ),
        })
        .collect();
    let parting = a.first.as_ref().and_then(|f| {
        let e = f.secondary.as_ref().or(f.primary.as_ref())?;
        Some(slot_of(e.turn.unwrap_or(0), e.seq))
    });
    (lanes, marks, parting)
}

/// Lanes from the report alone: the agreed events it keeps, one lane per thread.
fn report_marks(r: &Report) -> (Vec<String>, Vec<Mark>, Option<usize>) {
    let mut tids: Vec<u32> = r.last_common.iter().map(|e| e.thread).collect();
    if let Some(d) = &r.first_divergence {
        tids.push(d.thread);
    }
    tids.sort_unstable();
    tids.dedup();
    let lanes = tids.iter().map(|t| format!("t{t} (both)")).collect();
    let lane = |t: u32| tids.binary_search(&t).unwrap_or(0);
    let mut marks: Vec<Mark> = r
        .last_common
        .iter()
        .enumerate()
        .map(|(i, e)| Mark {
            lane: lane(e.thread),
            slot: i,
            class: match e.kind {
                EventKind::Recorded => "rec",
                EventKind::Compared => "out",
                EventKind::Signal => "sig",
                EventKind::Exit => "exit",
                EventKind::Turn => "loc",
            },
            text: format!(
                "t{} syscall #{} {} -> {} ({:?})",
                e.thread, e.syscall_seq, e.syscall, e.result, e.kind
            ),
        })
        .collect();
    let parting = r.first_divergence.as_ref().map(|d| {
        marks.push(Mark {
            lane: lane(d.thread),
            slot: r.last_common.len(),
            class: "div",
            text: format!(
                "t{} syscall #{} {}: {}",
                d.thread, d.syscall_seq, d.syscall, d.detail
            ),
        });
        r.last_common.len()
    });
    (lanes, marks, parting)
}

fn timeline_svg(lanes: &[String], marks: &[Mark], parting: Option<usize>) -> String {
    let slots = marks.iter().map(|m| m.slot + 1).max().unwrap_or(1).max(1);
    let step = (MAX_WIDTH / slots as f64).min(SLOT);
    let width = LABEL + step * slots as f64 + 20.0;
    let height = LANE * lanes.len().max(1) as f64 + 10.0;
    let mut svg = format!("<svg id=timeline width='{width:.0}' height='{height:.0}'>");
    for (i, name) in lanes.iter().enumerate() {
        let y = LANE * i as f64 + LANE / 2.0;
        let _ = write!(
            svg,
            "<text x='4' y='{:.1}' class=lane>{}</text><line x1='{LABEL}' x2='{:.0}' y1='{y:.1}' y2='{y:.1}' class=axis />",
            y + 4.0,
            esc(name),
            width - 10.0
        );
    }
    if let Some(p) = parting {
        let x = LABEL + step * (p as f64 + 0.5);
        let _ = write!(
            svg,
            "<line x1='{x:.1}' x2='{x:.1}' y1='0' y2='{height:.0}' class=parting><title>first divergence</title></line>"
        );
    }
    for (i, m) in marks.iter().enumerate() {
        let x = LABEL + step * (m.slot as f64 + 0.5);
        let y = LANE * m.lane as f64 + LANE / 2.0;
        let shape = match m.class {
            "rec" => format!("<circle cx='{x:.1}' cy='{y:.1}' r='4'"),
            "out" => format!(
                "<rect x='{:.1}' y='{:.1}' width='8' height='8'",
                x - 4.0,
                y - 4.0
            ),
            "sig" | "exit" => format!(
                "<polygon points='{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}'",
                x,
                y - 5.0,
                x + 5.0,
                y + 4.0,
                x - 5.0,
                y + 4.0
            ),
            "div" => format!("<circle cx='{x:.1}' cy='{y:.1}' r='6'"),
            _ => format!(
                "<rect x='{:.1}' y='{:.1}' width='1.5' height='8'",
                x - 0.75,
                y - 4.0
            ),
        };
        let _ = write!(
            svg,
            "{shape} class='m {}' data-i='{i}'><title>{}</title></{}>",
            m.class,
            esc(&m.text),
            shape[1..].split(' ').next().unwrap_or("rect")
        );
    }
    svg.push_str("</svg>");
    svg
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.15em}.dim{color:#777}.num{font-family:monospace}\
.ok{color:#176f2c}.bad{color:#b00020}#divergence{border:2px solid #b00020;padding:.5em 1em;border-radius:6px}\
.values th{text-align:left;padding-right:1em;vertical-align:top}.bytes code{font-size:13px}.hex{color:#555}\
mark{background:#ffb3b3;color:#000;font-weight:bold}.scroll{overflow-x:auto;border:1px solid #ddd;margin:1em 0}\
.lane{font:12px monospace;fill:#333}.axis{stroke:#e4e4e4}.parting{stroke:#b00020;stroke-width:2;stroke-dasharray:4 3}\
.m{cursor:pointer}.rec{fill:#1f6fd1}.out{fill:#e07b00}.sig{fill:#8a2be2}.exit{fill:#333}.loc{fill:#bbb}\
.div{fill:none;stroke:#b00020;stroke-width:3}#details{font-family:monospace;min-height:1.4em}\
.legend span{margin-right:1.2em}pre{background:#f6f6f6;padding:.6em;overflow-x:auto}";

const SCRIPT: &str = "(function(){var d=JSON.parse(document.getElementById('data').textContent);\
var marks=document.querySelectorAll('#timeline .m');var out=document.getElementById('details');\
marks.forEach(function(m){m.addEventListener('click',function(){out.textContent=d.marks[+m.dataset.i];});});\
document.getElementById('drawn').textContent='timeline: '+marks.length+' events drawn in '+d.lanes+' lanes; '+\
(d.parting===null?'no divergence':'first divergence at slot '+d.parting)+' (click an event for details)';})();";

/// The page for `report`, with the traces of the same run if given.
pub fn render_html(report: &Report, traces: Option<(&Trace, &Trace)>) -> String {
    let alignment = traces.map(|(p, s)| align::align(p, s));
    let (lanes, marks, parting) = match (traces, &alignment) {
        (Some((p, s)), Some(a)) => trace_marks(p, s, a),
        _ => report_marks(report),
    };
    let program = report.program.join(" ");
    let outcome = report.outcome.as_str();
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>ditto pair: {}</title><style>{STYLE}</style></head><body>",
        esc(&program)
    );
    let _ = write!(
        page,
        "<h1>ditto pair: <code>{}</code></h1><p>mode <b>{}</b>, outcome <b class={}>{}</b>, {:.2} s; {} records, {} outputs compared, {} turns</p>",
        esc(&program),
        esc(&report.mode),
        if report.first_divergence.is_none() && outcome == "identical" { "ok" } else { "bad" },
        esc(outcome),
        report.wall_seconds,
        report.counters.records,
        report.counters.compared_outputs,
        report.counters.turns
    );
    if let Some(f) = &report.failover {
        let _ = write!(
            page,
            "<h2>Failover</h2><p id=failover>{}; {}.</p>",
            esc(&f.death_line()),
            esc(&f.survivor_line())
        );
    }
    if let Some(d) = &report.first_divergence {
        page.push_str(&divergence_html(d));
    }
    let _ = write!(
        page,
        "<h2>Timeline{}</h2><p class=legend><span><svg width=10 height=10><circle cx=5 cy=5 r=4 class=rec /></svg> recorded input</span><span><svg width=10 height=10><rect width=8 height=8 class=out /></svg> compared output</span><span><svg width=10 height=10><rect width=2 height=8 class=loc /></svg> local</span><span><svg width=10 height=10><polygon points='5,0 10,9 0,9' class=sig /></svg> signal / exit</span><span class=bad>- - first divergence</span></p><p id=drawn class=dim></p><div class=scroll>{}</div><p id=details></p>",
        if traces.is_some() { " (both replicas, from their traces, along the turn order)" } else { " (the events both replicas agreed on last, from the report)" },
        timeline_svg(&lanes, &marks, parting)
    );
    if let Some(a) = &alignment {
        let _ = write!(
            page,
            "<h2>The traces lined up</h2><pre>{}</pre>",
            esc(&align::render(a))
        );
    }
    let data = serde_json::json!({
        "lanes": lanes.len(),
        "parting": parting,
        "marks": marks.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
    });
    // `</` would end the script element early.
    let data = data.to_string().replace("</", "<\\/");
    let _ = writeln!(
        page,
        "<script type=application/json id=data>{data}</script><script>{SCRIPT}</script></body></html>"
    );
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{DivergenceKind, Outcome};

    #[test]
    fn escaping_covers_markup_and_script_ends() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let mut r = Report::new("det", vec!["</script><b>".into()]);
        r.outcome = Outcome::Identical;
        let page = render_html(&r, None);
        assert!(!page.contains("</script><b>"));
        assert_eq!(page.matches("</script>").count(), 2);
    }

    #[test]
    fn a_failover_is_in_the_summary() {
        let mut r = Report::new("follow", vec!["redis-server".into()]);
        r.outcome = Outcome::FailedOver;
        let mut f = crate::report::Failover::death(
            crate::report::Died::Secondary,
            "killed by SIGKILL",
            2.5,
        );
        f.kill_after_seconds = Some(2.4);
        r.failover = Some(f);
        let page = render_html(&r, None);
        assert!(
            page.contains("outcome <b class=bad>failed_over</b>"),
            "{page}"
        );
        assert!(page.contains(
            "<h2>Failover</h2><p id=failover>the secondary died (killed by SIGKILL, injected at 2.400 s) at 2.500 s; the primary served on, unreplicated.</p>"
        ), "{page}");
    }

    #[test]
    fn a_divergence_shows_both_values_and_marks_the_differing_byte() {
        let mut r = Report::new("follow", vec!["race".into()]);
        r.outcome = Outcome::Diverged;
        r.first_divergence = Some(Divergence {
            kind: DivergenceKind::Output,
            thread: 0,
            syscall_seq: 108,
            syscall: "write".into(),
            primary_syscall: Some("write".into()),
            fd: Some(1),
            logical_time: None,
            turn: None,
            primary: Value::of(b"counter=19868928\n", Some(10)),
            secondary: Value::of(b"counter=19999999\n", Some(10)),
            first_differing_byte: Some(10),
            detail: "output to fd 1 differs".into(),
        });
        let page = render_html(&r, None);
        assert!(page.contains("First divergence: output in thread 0, syscall #108 (write)"));
        assert!(page.contains("first differing byte: <b>10</b>"));
        assert!(page.contains("counter=19<mark>8</mark>68928"), "{page}");
        assert!(page.contains("counter=19<mark>9</mark>99999"));
        assert!(page.contains("class='m div'"));
    }
}
