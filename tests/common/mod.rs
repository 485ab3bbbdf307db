//! Shared helpers for integration tests: `mod common;` in a test crate.

pub mod kafka;
pub mod events;
pub mod service;
pub mod schemas;
