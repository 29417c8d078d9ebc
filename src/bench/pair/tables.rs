//! The tables `ditto bench pair` prints: times and overheads beside the thesis's figures,
//! each pair run's report counters, and the channel's throughput.

use super::workloads::ChannelRows;
use super::{Config, Ctx, Row, CONFIGS};

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

pub(super) fn print_tables(rows: &[Row], ctx: &Ctx) {
    if rows.is_empty() {
        return;
    }
    println!(
        "Overhead = extra time per unit of work, median of {} run(s); native runs, the single VM and the primary on cores {}, the secondary on cores {}. The thesis's figures are against native Linux.",
        ctx.reps, ctx.primary_cores, ctx.secondary_cores
    );
    println!();
    println!("| workload | unit | native | run | run --det | pair det | pair follow |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for r in rows {
        let digits = if r.higher_is_better { 1 } else { 2 };
        let cells: Vec<String> = r.cells.iter().map(|c| c.show(digits)).collect();
        println!("| {} | {} | {} |", r.name, r.unit, cells.join(" | "));
    }
    println!();
    println!("| workload | run vs native | run --det vs native | pair det vs native | pair follow vs native | run --det vs run | pair det vs run | pair follow vs run | thesis follow | thesis det |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        use Config::*;
        let o = |c, b| r.overhead(c, b);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            o(Run, Native),
            o(RunDet, Native),
            o(PairDet, Native),
            o(PairFollow, Native),
            o(RunDet, Run),
            o(PairDet, Run),
            o(PairFollow, Run),
            r.thesis_follow,
            r.thesis_det
        );
    }
    print_per_request(rows);
    println!();
    println!("| workload | pair mode | outcome | records | MB of records | MB compared | max lag (records / KiB) |");
    println!("|---|---|---|---:|---:|---:|---:|");
    for r in rows {
        for (i, cfg) in CONFIGS.into_iter().enumerate() {
            let (Some(mode), Some(p)) = (cfg.pair_mode(), r.cells[i].pair.as_ref()) else {
                continue;
            };
            let outs = &r.cells[i].outcomes;
            let outcome = if outs.iter().all(|o| o == &outs[0]) {
                outs[0].clone()
            } else {
                let n = outs.iter().filter(|o| *o == "identical").count();
                format!("identical {n} of {}, else {}", outs.len(), p.outcome)
            };
            println!(
                "| {} | {mode} | {outcome} | {} | {:.1} | {:.1} | {} / {:.0} |",
                r.name,
                p.records,
                mib(p.record_bytes),
                mib(p.bytes_compared),
                p.max_lag_records,
                p.max_lag_bytes as f64 / 1024.0
            );
        }
    }
    let notes: Vec<String> =
        rows.iter()
            .flat_map(|r| {
                CONFIGS.into_iter().enumerate().flat_map(move |(i, cfg)| {
                    r.cells[i].problems.iter().map(move |(tag, why)| {
                        format!("- {}, {}: {tag}: {why}", r.name, cfg.label())
                    })
                })
            })
            .collect();
    if !notes.is_empty() {
        println!();
        println!("Runs with a problem (`*` in the table: some runs of that cell had one; only values marked kept are in the medians):");
        for n in notes {
            println!("{n}");
        }
    }
}

/// Turns and exits per request of each configuration that ran in ditto: where the time
/// goes besides the program's own work.
fn print_per_request(rows: &[Row]) {
    use Config::*;
    println!();
    println!("Per request (redis-benchmark's requests, wrk's, pbzip2's 900 kB blocks), counted over the whole run, start-up included; median over the runs that counted. A pair's exits: primary / secondary.");
    println!();
    println!("| workload | turns/request run --det | pair det | pair follow | exits/request run | run --det | pair det | pair follow |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let turns = |cfg: Config| {
            r.cells[cfg.index()]
                .per_request_median(|p| Some(p.turns))
                .map_or("—".into(), |v| format!("{v:.1}"))
        };
        let exits = |cfg: Config| {
            let c = &r.cells[cfg.index()];
            match (
                c.per_request_median(|p| Some(p.exits)),
                c.per_request_median(|p| p.secondary_exits),
            ) {
                (Some(p), Some(s)) => format!("{p:.1} / {s:.1}"),
                (Some(p), None) => format!("{p:.1}"),
                _ => "—".into(),
            }
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            turns(RunDet),
            turns(PairDet),
            turns(PairFollow),
            exits(Run),
            exits(RunDet),
            exits(PairDet),
            exits(PairFollow)
        );
    }
}

pub(super) fn print_channel(rows: &ChannelRows) {
    println!();
    println!("| channel record | records | records/s | MB/s | avg lag (records / KiB) | max lag (records / KiB) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (size, count, r) in rows {
        match r {
            Ok(v) => {
                // The median run by throughput.
                let mut v = v.clone();
                v.sort_by(|a, b| a.records_per_sec().total_cmp(&b.records_per_sec()));
                let m = v[v.len() / 2];
                println!(
                    "| {size} B | {count} | {:.0} | {:.1} | {:.0} / {:.0} | {} / {:.0} |",
                    m.records_per_sec(),
                    m.mb_per_sec(),
                    m.avg_lag_records,
                    m.avg_lag_bytes / 1024.0,
                    m.max_lag_records,
                    m.max_lag_bytes as f64 / 1024.0
                );
            }
            Err(e) => println!("| {size} B | {count} | failed: {e} | | | |"),
        }
    }
}
