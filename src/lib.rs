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
//! - [`config`]: service configuration (`resetguard.toml`), validated into `Settings`
//! - [`kafka`]: Kafka adapters and the exactly-once loop (IO)
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`, the admin API and the incident console `/console` (IO)
//! - [`app`]: wiring of `resetguard run`
//! - [`held`]: listing, releasing (paced, exactly once) and discarding held notices, and the console's views of
//!   the held queue, audit trail and last notices (Kafka IO)
//! - [`demo`]: the zero-setup demo (embedded broker, simulated traffic) and the traffic generator
//! - [`telemetry`]: metrics (injected registry) and logging setup
pub mod app;
pub mod config;
pub mod core;
pub mod demo;
pub mod held;
pub mod http;
pub mod kafka;
pub mod replay;
pub mod telemetry;
