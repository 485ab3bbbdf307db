//! The incident console: one HTML page, its script and its style sheet, embedded in the binary
//! and served under `/console` (no build step, no CDN), plus the per-minute history of decisions
//! and breaker states it draws ([`Timeline`], sampled from the pipeline's shared status once a
//! second). Does IO (HTTP, a sampling task); decides nothing.
//!
//! The page holds no data and needs no token to load; everything it shows comes from the
//! token-protected admin API (`/admin/...`), which the script calls with the token the operator
//! typed into its login form. The token stays in the page's memory: never in a URL, a cookie or
//! storage, and never logged.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::core::breaker::{CellSnapshot, CellState};
use crate::kafka::Status;

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// Minutes of history kept for the picture.
pub const HISTORY_MINUTES: usize = 180;

/// The page and its assets. Strict headers: scripts and styles from this server only, no
/// framing, nothing cached, no referrer.
pub fn router() -> Router {
    Router::new()
        .route("/console", get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }))
        .route("/console/", get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }))
        .route("/console/console.js", get(|| async { asset(CONSOLE_JS, "text/javascript; charset=utf-8") }))
        .route("/console/console.css", get(|| async { asset(CONSOLE_CSS, "text/css; charset=utf-8") }))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
             form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

/// One minute of the picture: notices sent and decisions held by this instance's pipeline, and
/// the most severe state each breaker cell was seen in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Minute {
    /// Start of the minute, ms since the epoch.
    pub minute_ms: i64,
    pub notices: u64,
    pub held: u64,
    /// Per cell: the most severe state seen during the minute (closed cells are left out).
    pub cells: BTreeMap<String, CellState>,
    /// Per cell: the highest decisions-per-minute count and spike threshold seen.
    pub peak: BTreeMap<String, (u32, f64)>,
}

/// The per-minute history of the last [`HISTORY_MINUTES`] minutes, fed with samples of the
/// pipeline's committed counters. Pure: time comes in.
#[derive(Debug, Default)]
pub struct Timeline {
    minutes: VecDeque<Minute>,
    /// Counter values at the previous sample: (notices, held).
    last: Option<(u64, u64)>,
}

/// Severity of a state for the bands: what an operator most needs to see wins.
fn severity(s: CellState) -> u8 {
    match s {
        CellState::Closed => 0,
        CellState::ForcedClosed => 1,
        CellState::HalfOpen => 2,
        CellState::Open => 3,
        CellState::ForcedOpen => 4,
    }
}

impl Timeline {
    /// Adds a sample taken at `now_ms`: the pipeline's committed totals of notices and held
    /// decisions (the difference to the previous sample goes to this minute) and the cells.
    pub fn sample(&mut self, now_ms: i64, notices: u64, held: u64, cells: &[CellSnapshot]) {
        let minute_ms = now_ms.div_euclid(60_000) * 60_000;
        if self.minutes.back().is_none_or(|m| m.minute_ms < minute_ms) {
            self.minutes.push_back(Minute {
                minute_ms,
                notices: 0,
                held: 0,
                cells: BTreeMap::new(),
                peak: BTreeMap::new(),
            });
            while self.minutes.len() > HISTORY_MINUTES {
                self.minutes.pop_front();
            }
        }
        let (dn, dh) = match self.last {
            // Counters only grow; a smaller value (a new Status) counts from zero.
            Some((n0, h0)) => (notices.checked_sub(n0).unwrap_or(notices), held.checked_sub(h0).unwrap_or(held)),
            None => (0, 0),
        };
        self.last = Some((notices, held));
        let Some(m) = self.minutes.back_mut() else { return };
        m.notices += dn;
        m.held += dh;
        for c in cells {
            if c.state != CellState::Closed {
                let worst = m.cells.entry(c.cell.clone()).or_insert(c.state);
                if severity(c.state) > severity(*worst) {
                    *worst = c.state;
                }
            }
            let p = m.peak.entry(c.cell.clone()).or_insert((0, c.spike_threshold));
            if c.decisions_this_minute >= p.0 {
                *p = (c.decisions_this_minute, c.spike_threshold);
            }
        }
    }

    /// The minutes kept, oldest first.
    pub fn minutes(&self) -> Vec<Minute> {
        self.minutes.iter().cloned().collect()
    }
}

/// Samples `status` into `timeline` once a second until `shutdown`.
pub async fn sample_until(status: Arc<Status>, timeline: Arc<Mutex<Timeline>>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let cells = status.breaker.lock().map(|b| b.clone()).unwrap_or_default();
        let now = chrono::Utc::now().timestamp_millis();
        let (n, h) = (status.notices.load(Ordering::Relaxed), status.held.load(Ordering::Relaxed));
        if let Ok(mut t) = timeline.lock() {
            t.sample(now, n, h, &cells);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(name: &str, state: CellState, count: u32) -> CellSnapshot {
        CellSnapshot {
            cell: name.into(),
            state,
            since_ms: 0,
            cause: None,
            decisions_this_minute: count,
            baseline_per_minute: 0.0,
            spike_threshold: 10.0,
            warming_up: false,
            forced_until_ms: None,
            cap_per_minute: 600.0,
            cap_burst: 50,
        }
    }

    const T0: i64 = 1_780_000_020_000; // 20 s into a minute

    #[test]
    fn counter_differences_land_in_their_minute_with_the_most_severe_cell_state() {
        let mut t = Timeline::default();
        t.sample(T0, 100, 5, &[cell("global", CellState::Closed, 3)]);
        t.sample(T0 + 1_000, 110, 5, &[cell("m7", CellState::Open, 30)]);
        t.sample(T0 + 2_000, 110, 45, &[cell("m7", CellState::HalfOpen, 12)]);
        t.sample(T0 + 60_000, 112, 47, &[cell("m7", CellState::Closed, 1)]);
        let m = t.minutes();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].notices, m[0].held), (10, 40), "the first sample is the baseline, not a count");
        assert_eq!(m[0].cells.get("m7"), Some(&CellState::Open), "open outranks half-open");
        assert_eq!(m[0].peak.get("m7"), Some(&(30, 10.0)));
        assert!(!m[0].cells.contains_key("global"), "closed cells draw no band");
        assert_eq!((m[1].notices, m[1].held), (2, 2));
        assert_eq!(m[1].minute_ms - m[0].minute_ms, 60_000);
    }

    #[test]
    fn history_keeps_the_last_minutes_only() {
        let mut t = Timeline::default();
        for i in 0..(HISTORY_MINUTES as i64 + 20) {
            t.sample(T0 + i * 60_000, i as u64, 0, &[]);
        }
        let m = t.minutes();
        assert_eq!(m.len(), HISTORY_MINUTES);
        assert_eq!(m.iter().map(|m| m.notices).sum::<u64>(), HISTORY_MINUTES as u64);
    }
}
