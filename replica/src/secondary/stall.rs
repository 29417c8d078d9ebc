//! The secondary's answer to the supervisor's question of what it waits for
//! ([`STALL_REQUEST`]), for the report of a pair that stopped making progress.

use super::Secondary;
use crate::findings::{STALL_FILE, STALL_REQUEST};
use crate::program::Program;
use crate::status::Counter;
use crate::sync::lock;

impl Secondary {
    /// Secondary: if the supervisor asked ([`STALL_REQUEST`]), writes what its threads
    /// wait for to [`STALL_FILE`]: the det runtime's state and the records buffered per
    /// thread.
    pub fn describe_if_asked(&self, program: &dyn Program) {
        let request = self.output_dir.join(STALL_REQUEST);
        if std::fs::remove_file(&request).is_err() {
            return;
        }
        let mut text = format!(
            "{} records consumed, {} turns taken\n",
            self.status.get(Counter::RecordsConsumed),
            self.status.get(Counter::SecondaryTurns)
        );
        if let Some(schedule) = program.describe_schedule() {
            text.push_str(&schedule);
        }
        {
            let q = lock(&self.queues);
            let mut buffered: Vec<_> = q
                .by_tid
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(t, v)| format!("t{t}: {}", v.len()))
                .collect();
            buffered.sort();
            text.push_str(&format!(
                "  records buffered per thread: {}\n",
                if buffered.is_empty() {
                    "none".to_string()
                } else {
                    buffered.join(", ")
                }
            ));
            if let Some(closed) = &q.closed {
                text.push_str(&format!("  channel: {closed}\n"));
            } else if q.end.is_some() {
                text.push_str("  the primary's log is complete\n");
            }
        }
        if let Some(late) = lock(&self.late_schedule).as_ref() {
            text.push_str(&format!("  {late}\n"));
        }
        // Written aside and renamed, so that the supervisor never reads half of it.
        let part = self.output_dir.join(format!("{STALL_FILE}.part"));
        if std::fs::write(&part, text).is_ok() {
            let _ = std::fs::rename(&part, self.output_dir.join(STALL_FILE));
        }
    }
}
