//! Shared helpers for integration tests: `mod common;` in a test crate.

pub mod events;
pub mod faults;
pub mod kafka;
pub mod schemas;
pub mod service;
pub mod webdriver;
