//! `resetguard replay`: runs the core over a file of events (JSON lines, optionally gzip, or stdin)
//! with event time as the clock, and writes notices, held decisions, rejections and a report.
//! Does file IO; all decisions are the core's.

pub mod report;
pub mod timeline;

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::core::event::format_rfc3339_ms;
use crate::core::{Engine, Outcome, Policy, TimeMode};
use report::Report;

/// What to replay and where to write.
#[derive(Debug, Clone)]
pub struct ReplayArgs {
    pub input: PathBuf,
    pub out: PathBuf,
    /// Wall clock for the future-timestamp check (real history is never in the future).
    pub now_ms: i64,
    /// The deployment's keys (the same secret as the service gives the same `notice_id`s).
    pub keys: crate::core::hash::Keys,
    /// Print progress every this many lines (0: never).
    pub progress_every: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read input {path}: {source}")]
    Input { path: String, source: io::Error },
    #[error("cannot write output {path}: {source}")]
    Output { path: String, source: io::Error },
}

/// One line of `rejected.jsonl`: a rejected, late or duplicate input.
#[derive(Serialize)]
struct RejectedLine<'a> {
    line: u64,
    outcome: &'static str,
    reason: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    detail: &'a str,
}

struct Outputs {
    notices: BufWriter<File>,
    held: BufWriter<File>,
    rejected: BufWriter<File>,
}

fn create(dir: &Path, name: &str) -> Result<BufWriter<File>, ReplayError> {
    let path = dir.join(name);
    File::create(&path)
        .map(|f| BufWriter::with_capacity(1 << 20, f))
        .map_err(|source| ReplayError::Output { path: path.display().to_string(), source })
}

/// Opens the input: `-` is stdin; gzip is detected by its magic bytes.
pub fn open_input(path: &Path) -> Result<Box<dyn BufRead>, ReplayError> {
    let err = |source| ReplayError::Input { path: path.display().to_string(), source };
    let raw: Box<dyn Read> =
        if path.as_os_str() == "-" { Box::new(io::stdin()) } else { Box::new(File::open(path).map_err(err)?) };
    let mut reader = BufReader::with_capacity(1 << 20, raw);
    let head = reader.fill_buf().map_err(err)?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(BufReader::with_capacity(1 << 20, flate2::read::MultiGzDecoder::new(reader))))
    } else {
        Ok(Box::new(reader))
    }
}

/// Replays `args.input` through a fresh engine and writes the outputs. Returns the report.
pub fn replay(policy: Arc<Policy>, args: &ReplayArgs) -> Result<Report, ReplayError> {
    std::fs::create_dir_all(&args.out)
        .map_err(|source| ReplayError::Output { path: args.out.display().to_string(), source })?;
    let mut out = Outputs {
        notices: create(&args.out, "notices.jsonl")?,
        held: create(&args.out, "held.jsonl")?,
        rejected: create(&args.out, "rejected.jsonl")?,
    };
    let mut input = open_input(&args.input)?;
    let mut engine = Engine::new(policy.clone(), args.keys.clone(), TimeMode::EventTime);
    let mut report = Report::new(&policy);
    let mut buf = Vec::with_capacity(4096);
    let mut line_no = 0u64;
    let mut last_minute = i64::MIN;
    let werr = |p: &str| {
        let path = args.out.join(p).display().to_string();
        move |source| ReplayError::Output { path, source }
    };
    loop {
        buf.clear();
        let n = input
            .read_until(b'\n', &mut buf)
            .map_err(|source| ReplayError::Input { path: args.input.display().to_string(), source })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            report.blank_lines += 1;
            continue;
        }
        let processed = engine.process(&buf, 0, args.now_ms);
        let cell = processed.cell.map(|c| engine.breaker().cell_name(c).to_string());
        let now = engine.now(args.now_ms);
        report.record(&processed.outcome, cell.as_deref(), now);
        match &processed.outcome {
            Outcome::Notice(d) => {
                out.notices.write_all(&d.notice_json()).map_err(werr("notices.jsonl"))?;
                out.notices.write_all(b"\n").map_err(werr("notices.jsonl"))?;
            }
            Outcome::Held(d, h) => {
                out.held.write_all(&d.held_json(h)).map_err(werr("held.jsonl"))?;
                out.held.write_all(b"\n").map_err(werr("held.jsonl"))?;
            }
            Outcome::Rejected(_) | Outcome::Late { .. } | Outcome::Duplicate => {
                let detail = match &processed.outcome {
                    Outcome::Rejected(r) => r.detail.clone(),
                    Outcome::Late { event_ms, watermark_ms } => format!(
                        "event time {} is behind the watermark {}",
                        format_rfc3339_ms(*event_ms),
                        format_rfc3339_ms(*watermark_ms)
                    ),
                    _ => String::new(),
                };
                let rec = RejectedLine {
                    line: line_no,
                    outcome: processed.outcome.kind().as_str(),
                    reason: match &processed.outcome {
                        Outcome::Rejected(r) => r.reason.as_str(),
                        Outcome::Late { .. } => "behind_watermark",
                        _ => "event_id_seen",
                    },
                    detail: &detail,
                };
                serde_json::to_writer(&mut out.rejected, &rec).map_err(|e| werr("rejected.jsonl")(e.into()))?;
                out.rejected.write_all(b"\n").map_err(werr("rejected.jsonl"))?;
            }
            Outcome::NoAction(_) => {}
        }
        for t in engine.drain_transitions() {
            report.transition(t);
        }
        if now != i64::MIN && now.div_euclid(60_000) != last_minute {
            last_minute = now.div_euclid(60_000);
            report.baselines(now, &engine.breaker().snapshot());
        }
        if line_no % 1024 == 0 {
            engine.tick(args.now_ms);
            report.tracked_accounts_peak = report.tracked_accounts_peak.max(engine.tracked_accounts() as u64);
        }
        if args.progress_every > 0 && line_no % args.progress_every == 0 {
            eprintln!(
                "replay: {line_no} lines, {} notices, {} held, {} rejected/late/duplicate",
                report.count("notice"),
                report.count("held"),
                report.count("rejected") + report.count("late") + report.count("duplicate")
            );
        }
    }
    engine.tick(args.now_ms);
    for t in engine.drain_transitions() {
        report.transition(t);
    }
    report.lines = line_no;
    report.breaker_final = engine.breaker().snapshot();
    for (name, w) in
        [("notices.jsonl", &mut out.notices), ("held.jsonl", &mut out.held), ("rejected.jsonl", &mut out.rejected)]
    {
        w.flush().map_err(werr(name))?;
    }
    let report_path = args.out.join("report.json");
    let f = File::create(&report_path).map_err(werr("report.json"))?;
    serde_json::to_writer_pretty(BufWriter::new(f), &report).map_err(|e| werr("report.json")(e.into()))?;
    let svg = timeline::render(&report);
    std::fs::write(args.out.join("timeline.svg"), svg).map_err(werr("timeline.svg"))?;
    Ok(report)
}
