//! resetguard: stands between login-risk detectors and the password-reset mailer.
//!
//! ```text
//!  login-risk-events ──► kafka::pipeline ──► core::Engine ──► outcome ──► kafka::pipeline ──► password-reset-notices
//!   (Kafka, JSON v1)      consume, batch      decode, dedupe,             (one per event)      password-reset-held
//!                         transactions        watermark, windows,                             resetguard-dlq
//!                                             cooldown, breaker                               (one Kafka transaction
//!                                                                                              with the offsets)
//!  replay (files) ─────────────────────────► core::Engine ──► notices.jsonl, held.jsonl, rejected.jsonl, report.json
//! ```
//!
//! Modules:
//! - [`core`]: the pure decision core (no IO, time injected)
//! - [`replay`]: `resetguard replay`, the core over a file with event time as the clock (file IO)
//! - [`telemetry`]: metrics (injected registry) and logging setup
pub mod core;
pub mod replay;
pub mod telemetry;
