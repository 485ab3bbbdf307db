//! Renders the replay timeline as an SVG: notices and held decisions per minute (stacked bars),
//! and one band per breaker cell showing when it was open or half-open. Pure (returns a string).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::core::breaker::CellState;

use super::report::Report;

const W: f64 = 1100.0;
const CHART_H: f64 = 260.0;
const LEFT: f64 = 70.0;
const BAND_H: f64 = 18.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub fn render(report: &Report) -> String {
    let minutes: Vec<(i64, u64, u64, u64)> =
        report.minutes().map(|(m, x)| (m, x.notices, x.held, x.decisions)).collect();
    let cells: Vec<String> = {
        let mut c: Vec<String> = report.breaker_transitions.iter().map(|t| t.cell.clone()).collect();
        c.sort();
        c.dedup();
        c
    };
    let height = 60.0 + CHART_H + 54.0 + cells.len() as f64 * (BAND_H + 6.0) + 40.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(s, r##"<rect width="100%" height="100%" fill="#fff"/>"##);
    let _ = write!(
        s,
        r#"<text x="{LEFT}" y="24" font-size="16">resetguard replay: policy {} ({}), {} events</text>"#,
        esc(&report.policy_version),
        report.mode,
        report.inputs
    );
    let (Some(first), Some(last)) = (minutes.first().map(|m| m.0), minutes.iter().map(|m| m.0).max()) else {
        s.push_str("</svg>");
        return s;
    };
    let span = (last - first + 1).max(1) as f64;
    let plot_w = W - LEFT - 20.0;
    let x_of = |m: i64| LEFT + (m - first) as f64 / span * plot_w;
    let bar_w = (plot_w / span).max(1.0);
    let max_y = minutes.iter().map(|m| m.3).max().unwrap_or(1).max(1) as f64;
    let top = 50.0;
    // Square-root scale: a handful of notices stays visible next to thousands held.
    let y_of = |v: f64| top + CHART_H - (v.max(0.0) / max_y).sqrt() * CHART_H;
    // Axes and labels.
    let _ = write!(
        s,
        r##"<line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="#333"/>"##,
        top + CHART_H,
        W - 20.0,
        top + CHART_H
    );
    let _ = write!(s, r##"<line x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{}" stroke="#333"/>"##, top + CHART_H);
    let _ = write!(
        s,
        r#"<text x="8" y="{}">{max_y:.0}/min</text><text x="8" y="{:.1}">{:.0}</text><text x="8" y="{}">0</text><text x="8" y="{}" font-size="10">(sqrt scale)</text>"#,
        top + 4.0,
        y_of(max_y / 4.0) + 4.0,
        max_y / 4.0,
        top + CHART_H,
        top + 18.0
    );
    for (m, notices, held, _) in &minutes {
        let x = x_of(*m);
        let yn = y_of(*notices as f64);
        let yh = y_of((*notices + *held) as f64);
        let _ = write!(
            s,
            r##"<rect x="{x:.1}" y="{yn:.1}" width="{bar_w:.1}" height="{:.1}" fill="#2e7d32"/>"##,
            top + CHART_H - yn
        );
        if *held > 0 {
            let _ = write!(
                s,
                r##"<rect x="{x:.1}" y="{yh:.1}" width="{bar_w:.1}" height="{:.1}" fill="#c62828"/>"##,
                yn - yh
            );
        }
    }
    // Decisions per minute (all cells) and the global cell's learned baseline.
    let line = |points: Vec<(f64, f64)>, color: &str, dash: &str| -> String {
        let pts: Vec<String> = points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        format!(
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" stroke-dasharray="{dash}" points="{}"/>"#,
            pts.join(" ")
        )
    };
    let decisions: Vec<(f64, f64)> =
        minutes.iter().map(|(m, _, _, d)| (x_of(*m) + bar_w / 2.0, y_of(*d as f64))).collect();
    s.push_str(&line(decisions, "#212121", "none"));
    let baseline: Vec<(f64, f64)> = report
        .minutes()
        .filter_map(|(m, x)| x.baseline_by_cell.get("global").map(|b| (x_of(m) + bar_w / 2.0, y_of(b.min(max_y)))))
        .collect();
    if !baseline.is_empty() {
        s.push_str(&line(baseline, "#1565c0", "4 3"));
    }
    let legend_y = top + CHART_H + 20.0;
    let _ = write!(
        s,
        r##"<rect x="{LEFT}" y="{}" width="10" height="10" fill="#2e7d32"/><text x="{}" y="{legend_y}">notices per minute</text><rect x="{}" y="{}" width="10" height="10" fill="#c62828"/><text x="{}" y="{legend_y}">held per minute</text><text x="{}" y="{legend_y}">{} .. {}</text><text x="{}" y="{}">black line: decisions per minute; dashed blue: learned baseline (global cell)</text>"##,
        legend_y - 9.0,
        LEFT + 14.0,
        LEFT + 160.0,
        legend_y - 9.0,
        LEFT + 174.0,
        LEFT + 330.0,
        esc(report.first_event_time.as_deref().unwrap_or("")),
        esc(report.last_event_time.as_deref().unwrap_or("")),
        LEFT,
        legend_y + 16.0
    );
    // Breaker bands: intervals per cell in each non-closed state.
    let mut state_since: BTreeMap<&str, (CellState, i64)> = BTreeMap::new();
    let mut intervals: Vec<(&str, CellState, i64, i64)> = Vec::new();
    for t in &report.breaker_transitions {
        if let Some((st, since)) = state_since.insert(&t.cell, (t.to, t.at_ms)) {
            intervals.push((&t.cell, st, since, t.at_ms));
        }
    }
    for (cell, (st, since)) in &state_since {
        intervals.push((cell, *st, *since, (last + 1) * 60_000));
    }
    let band_top = legend_y + 34.0;
    for (i, cell) in cells.iter().enumerate() {
        let y = band_top + i as f64 * (BAND_H + 6.0);
        let _ =
            write!(s, r#"<text x="8" y="{:.1}">{}</text>"#, y + 13.0, esc(&cell.chars().take(10).collect::<String>()));
        let _ = write!(s, r##"<rect x="{LEFT}" y="{y:.1}" width="{plot_w:.1}" height="{BAND_H}" fill="#e8f5e9"/>"##);
        for (c, st, from, to) in intervals.iter().filter(|iv| iv.0 == cell) {
            let _ = c;
            let color = match st {
                CellState::Open | CellState::ForcedOpen => "#c62828",
                CellState::HalfOpen => "#f9a825",
                CellState::ForcedClosed => "#1565c0",
                CellState::Closed => continue,
            };
            let x1 = x_of(from.div_euclid(60_000)).max(LEFT);
            let x2 = x_of(to.div_euclid(60_000)).max(x1 + 1.0);
            let _ =
                write!(s, r#"<rect x="{x1:.1}" y="{y:.1}" width="{:.1}" height="{BAND_H}" fill="{color}"/>"#, x2 - x1);
        }
    }
    let y = band_top + cells.len() as f64 * (BAND_H + 6.0) + 14.0;
    let _ = write!(
        s,
        r##"<text x="{LEFT}" y="{y:.1}">breaker bands: green closed, red open, amber half-open, blue forced closed</text>"##
    );
    s.push_str("</svg>");
    s
}
