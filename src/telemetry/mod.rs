//! Telemetry: the Prometheus metrics (registered into an injected registry) and log setup.
pub mod metrics;
pub use metrics::Metrics;
