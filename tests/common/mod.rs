//! Shared helpers for integration tests: `mod common;` in a test crate.

pub mod events;
pub mod faults;
pub mod kafka;
pub mod schemas;
pub mod service;
pub mod webdriver;

/// Logs of in-process services into the test's captured output (shown when it fails), when
/// `RG_TEST_TRACE` holds a filter such as `info,rdkafka=warn`; off otherwise.
#[allow(dead_code)]
pub fn trace() {
    if let Ok(filter) = std::env::var("RG_TEST_TRACE") {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .try_init();
    }
}
