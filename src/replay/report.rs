//! The replay report (`report.json`): counts per outcome and reason, per source, breaker
//! transitions, and a per-minute timeline. Pure data.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::core::breaker::{CellSnapshot, CellState, Transition};
use crate::core::event::format_rfc3339_ms;
use crate::core::{Outcome, Policy};

/// One minute of the timeline (processing clock = event time in replay).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Minute {
    pub minute: String,
    pub inputs: u64,
    pub decisions: u64,
    pub notices: u64,
    pub held: u64,
    /// Per cell: decisions this minute.
    pub decisions_by_cell: BTreeMap<String, u64>,
    /// Per cell: the learned baseline (decisions per minute) as the minute began.
    pub baseline_by_cell: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub policy_version: String,
    pub mode: &'static str,
    pub lines: u64,
    pub blank_lines: u64,
    pub inputs: u64,
    /// outcome → reason → count (reason `""` where the outcome has none).
    pub outcomes: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    /// source cell → outcome → count.
    pub per_source: BTreeMap<String, BTreeMap<&'static str, u64>>,
    pub first_event_time: Option<String>,
    pub last_event_time: Option<String>,
    pub tracked_accounts_peak: u64,
    pub breaker_trips: Vec<Transition>,
    pub breaker_transitions: Vec<Transition>,
    pub breaker_final: Vec<CellSnapshot>,
    pub timeline: Vec<Minute>,
    #[serde(skip)]
    minute_index: BTreeMap<i64, usize>,
    #[serde(skip)]
    first_ms: Option<i64>,
    #[serde(skip)]
    last_ms: Option<i64>,
}

impl Report {
    pub fn new(policy: &Policy) -> Self {
        Report {
            policy_version: policy.version.clone(),
            mode: policy.mode.as_str(),
            lines: 0,
            blank_lines: 0,
            inputs: 0,
            outcomes: BTreeMap::new(),
            per_source: BTreeMap::new(),
            first_event_time: None,
            last_event_time: None,
            tracked_accounts_peak: 0,
            breaker_trips: Vec::new(),
            breaker_transitions: Vec::new(),
            breaker_final: Vec::new(),
            timeline: Vec::new(),
            minute_index: BTreeMap::new(),
            first_ms: None,
            last_ms: None,
        }
    }

    pub fn record(&mut self, outcome: &Outcome, cell: Option<&str>, now_ms: i64) {
        self.inputs += 1;
        let kind = outcome.kind().as_str();
        *self.outcomes.entry(kind).or_default().entry(outcome.reason()).or_default() += 1;
        if let Some(cell) = cell {
            *self.per_source.entry(cell.to_string()).or_default().entry(kind).or_default() += 1;
        }
        if now_ms == i64::MIN {
            return;
        }
        self.first_ms = Some(self.first_ms.map_or(now_ms, |f| f.min(now_ms)));
        self.last_ms = Some(self.last_ms.map_or(now_ms, |l| l.max(now_ms)));
        self.first_event_time = self.first_ms.map(format_rfc3339_ms);
        self.last_event_time = self.last_ms.map(format_rfc3339_ms);
        let minute = now_ms.div_euclid(60_000);
        let idx = match self.minute_index.get(&minute) {
            Some(&i) => i,
            None => {
                self.timeline.push(Minute { minute: format_rfc3339_ms(minute * 60_000), ..Minute::default() });
                self.minute_index.insert(minute, self.timeline.len() - 1);
                self.timeline.len() - 1
            }
        };
        let m = &mut self.timeline[idx];
        m.inputs += 1;
        if let Some(d) = outcome.decision() {
            m.decisions += 1;
            *m.decisions_by_cell.entry(d.cell.clone()).or_default() += 1;
            match outcome {
                Outcome::Notice(_) => m.notices += 1,
                _ => m.held += 1,
            }
        }
    }

    /// Records the breaker's learned baselines for the minute containing `now_ms` (once per minute).
    pub fn baselines(&mut self, now_ms: i64, cells: &[CellSnapshot]) {
        let minute = now_ms.div_euclid(60_000);
        if let Some(&i) = self.minute_index.get(&minute) {
            let m = &mut self.timeline[i];
            if m.baseline_by_cell.is_empty() {
                m.baseline_by_cell = cells.iter().map(|c| (c.cell.clone(), c.baseline_per_minute)).collect();
            }
        }
    }

    pub fn transition(&mut self, t: Transition) {
        if matches!(t.to, CellState::Open | CellState::ForcedOpen) {
            self.breaker_trips.push(t.clone());
        }
        self.breaker_transitions.push(t);
    }

    pub fn count(&self, kind: &str) -> u64 {
        self.outcomes.get(kind).map_or(0, |r| r.values().sum())
    }

    /// Minute index (ms / 60 000) of the timeline's entries, in order of appearance.
    pub fn minutes(&self) -> impl Iterator<Item = (i64, &Minute)> {
        self.minute_index.iter().map(move |(m, &i)| (*m, &self.timeline[i]))
    }

    /// A short human summary for the terminal.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "replayed {} events (policy {}, mode {}), {} to {}\n",
            self.inputs,
            self.policy_version,
            self.mode,
            self.first_event_time.as_deref().unwrap_or("-"),
            self.last_event_time.as_deref().unwrap_or("-")
        ));
        for (kind, reasons) in &self.outcomes {
            let total: u64 = reasons.values().sum();
            let detail: Vec<String> =
                reasons.iter().filter(|(r, _)| !r.is_empty()).map(|(r, n)| format!("{r} {n}")).collect();
            if detail.is_empty() {
                s.push_str(&format!("  {kind:<10} {total}\n"));
            } else {
                s.push_str(&format!("  {kind:<10} {total}  ({})\n", detail.join(", ")));
            }
        }
        if self.breaker_trips.is_empty() {
            s.push_str("  breaker    never tripped\n");
        } else {
            for t in &self.breaker_trips {
                s.push_str(&format!(
                    "  breaker    cell {} {} at {} ({}, {} decisions this minute, threshold {:.0})\n",
                    t.cell,
                    t.to.as_str(),
                    format_rfc3339_ms(t.at_ms),
                    t.cause.as_str(),
                    t.decisions_this_minute,
                    t.threshold
                ));
            }
        }
        s
    }
}
