//! Simulated upstream traffic for the demo and `resetguard generate`: ordinary logins, genuine
//! account takeovers, and a buggy model flooding distinct accounts. Pure (returns JSON bytes).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::core::event::format_rfc3339_ms;

/// Sources of ordinary traffic.
pub const SOURCES: [&str; 4] = ["auth-service", "device-intel", "breached-pw-check", "risk-model-v7"];
/// The source that goes wrong in the demo.
pub const BUGGY_SOURCE: &str = "risk-model-v7";

pub struct Traffic {
    rng: StdRng,
    seq: u64,
    prefix: String,
}

impl Traffic {
    pub fn new(seed: u64, prefix: &str) -> Self {
        Traffic { rng: StdRng::seed_from_u64(seed), seq: 0, prefix: prefix.to_string() }
    }

    fn event(&mut self, account: &str, source: &str, signal: &str, risk: f64, t_ms: i64) -> (String, Vec<u8>) {
        self.seq += 1;
        let id = format!("{}-{:010}", self.prefix, self.seq);
        let ip = format!("198.51.100.{}", self.rng.random_range(1..255));
        let json = format!(
            r#"{{"event_id":"{id}","account_id":"{account}","occurred_at":"{}","source":"{source}","signal":"{signal}","risk":{risk:.3},"ip":"{ip}","country":"NL","schema_version":1}}"#,
            format_rfc3339_ms(t_ms)
        );
        (account.to_string(), json.into_bytes())
    }

    /// One ordinary event: a random account among `population`, low risk, mostly harmless signals.
    pub fn ordinary(&mut self, population: u64, t_ms: i64) -> (String, Vec<u8>) {
        let account = format!("user-{:08}", self.rng.random_range(0..population));
        let source = SOURCES[self.rng.random_range(0..SOURCES.len())];
        let signals = ["failed_login", "new_device", "unusual_time", "mfa_failure"];
        let signal = signals[self.rng.random_range(0..signals.len())];
        let risk = self.rng.random_range(0.05..0.6);
        self.event(&account, source, signal, risk, t_ms)
    }

    /// A genuine takeover: two strong signals on one account from two ordinary sources.
    pub fn takeover(&mut self, account: &str, t_ms: i64) -> Vec<(String, Vec<u8>)> {
        vec![
            self.event(account, "auth-service", "credential_stuffing", 0.95, t_ms),
            self.event(account, "device-intel", "impossible_travel", 0.9, t_ms + 500),
        ]
    }

    /// The buggy model flags an account as breached with high confidence.
    pub fn flood(&mut self, n: u64, t_ms: i64) -> (String, Vec<u8>) {
        let account = format!("victim-{n:08}");
        self.event(&account, BUGGY_SOURCE, "breached_password", 1.0, t_ms)
    }
}
