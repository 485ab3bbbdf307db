//! Shared synthetic input for the benchmarks: realistic login-risk events (schema v1), deterministic
//! (a fixed-seed SplitMix64), about 250 bytes on average.
//!
//! The mix: UUID v4 event ids; account ids in three shapes (`acct-NNNNNNNNNN`, `usr_<16 hex>`,
//! `tenant-N/user-N`); six sources; the seven default signals weighted towards the cheap ones
//! (failed_login, new_device, unusual_time); risk mostly low; optional ip (v4 or v6), country,
//! user_agent, device_id, attributes and schema_version, each present in a share of events.

#![allow(dead_code)]

use std::fmt::Write as _;

use resetguard::core::event::format_rfc3339_ms;

/// 2026-11-26T08:00:00Z.
pub const T0_MS: i64 = 1_795_680_000_000;

/// Deterministic SplitMix64.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() >> 32) * n) >> 32
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A random permutation of `0..n` (Fisher–Yates).
pub fn permutation(n: usize, seed: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n as u32).collect();
    let mut rng = Rng(seed);
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

/// The account id of account number `n`: stable for a given `n`.
pub fn account_id(n: u32, out: &mut String) {
    let h = mix(u64::from(n) ^ 0x5eed);
    match h % 20 {
        0..=11 => {
            let _ = write!(out, "acct-{:010}", u64::from(n) * 7 + 1_000_000_000);
        }
        12..=16 => {
            let _ = write!(out, "usr_{:016x}", h);
        }
        _ => {
            let _ = write!(out, "tenant-{}/user-{}", h % 977, n);
        }
    }
}

pub fn uuid_v4(rng: &mut Rng, out: &mut String) {
    let a = rng.next_u64();
    let b = rng.next_u64();
    let _ = write!(
        out,
        "{:08x}-{:04x}-4{:03x}-{:x}{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        8 + (b >> 62),
        (b >> 48) & 0xfff,
        b & 0xffff_ffff_ffff
    );
}

const SOURCES: [(&str, u32); 6] = [
    ("auth-service", 40),
    ("risk-model-v3", 25),
    ("edge-waf", 15),
    ("mfa-gateway", 10),
    ("breach-monitor", 5),
    ("geo-velocity", 5),
];

const SIGNALS: [(&str, u32); 7] = [
    ("failed_login", 40),
    ("new_device", 20),
    ("unusual_time", 15),
    ("mfa_failure", 10),
    ("credential_stuffing", 7),
    ("impossible_travel", 5),
    ("breached_password", 3),
];

const COUNTRIES: [&str; 12] = ["US", "DE", "GB", "FR", "IN", "BR", "JP", "NL", "CA", "ES", "PL", "SE"];

const USER_AGENTS: [&str; 5] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) Gecko/20100101 Firefox/133.0",
    "okhttp/4.12.0",
    "MyBankApp/7.4.1 (Android 15; Pixel 8)",
];

fn weighted<'a>(rng: &mut Rng, table: &[(&'a str, u32)]) -> &'a str {
    let total: u32 = table.iter().map(|(_, w)| w).sum();
    let mut x = rng.below(u64::from(total)) as u32;
    for (name, w) in table {
        if x < *w {
            return name;
        }
        x -= w;
    }
    table[0].0
}

/// One serialized event for `account` at `t_ms`.
pub fn event(rng: &mut Rng, account: u32, t_ms: i64) -> Vec<u8> {
    let mut s = String::with_capacity(320);
    s.push_str("{\"event_id\":\"");
    uuid_v4(rng, &mut s);
    s.push_str("\",\"account_id\":\"");
    account_id(account, &mut s);
    s.push_str("\",\"occurred_at\":\"");
    let ts = format_rfc3339_ms(t_ms);
    match rng.below(20) {
        // Most producers send UTC with milliseconds; some whole seconds; a few a local offset.
        0..=15 => s.push_str(&ts),
        16..=18 => {
            s.push_str(&ts[..19]);
            s.push('Z');
        }
        _ => {
            let local = format_rfc3339_ms(t_ms + 3_600_000);
            s.push_str(&local[..23]);
            s.push_str("+01:00");
        }
    }
    let _ = write!(s, "\",\"source\":\"{}\",\"signal\":\"{}\"", weighted(rng, &SOURCES), weighted(rng, &SIGNALS));
    // Risk: mostly low (u^2), four decimals at most.
    let u = rng.unit();
    let _ = write!(s, ",\"risk\":{}", ((u * u) * 10_000.0).round() / 10_000.0);
    if rng.chance(0.85) {
        let h = rng.next_u64();
        if h % 10 < 7 {
            let _ = write!(
                s,
                ",\"ip\":\"{}.{}.{}.{}\"",
                1 + (h >> 8) % 223,
                (h >> 16) % 256,
                (h >> 24) % 256,
                1 + (h >> 32) % 254
            );
        } else {
            let _ = write!(
                s,
                ",\"ip\":\"2001:db8:{:x}:{:x}::{:x}\"",
                (h >> 8) & 0xffff,
                (h >> 24) & 0xffff,
                (h >> 40) & 0xffff
            );
        }
    }
    if rng.chance(0.8) {
        let _ = write!(s, ",\"country\":\"{}\"", COUNTRIES[rng.below(COUNTRIES.len() as u64) as usize]);
    }
    if rng.chance(0.15) {
        let _ = write!(s, ",\"device_id\":\"dev-{:016x}\"", mix(u64::from(account) ^ 0xd3));
    }
    if rng.chance(0.25) {
        let _ = write!(s, ",\"user_agent\":\"{}\"", USER_AGENTS[rng.below(USER_AGENTS.len() as u64) as usize]);
    }
    if rng.chance(0.1) {
        let _ = write!(
            s,
            ",\"attributes\":{{\"attempt\":{},\"method\":\"password\",\"flags\":[\"vpn\"]}}",
            1 + rng.below(5)
        );
    }
    if rng.chance(0.3) {
        s.push_str(",\"schema_version\":1");
    }
    s.push('}');
    s.into_bytes()
}

/// `n` events over `accounts` distinct accounts (`n / accounts` passes, each a fresh permutation),
/// event time advancing `step_us` microseconds per event from `t0_ms`. Generated lazily.
pub fn stream_iter(n: usize, accounts: usize, t0_ms: i64, step_us: i64, seed: u64) -> impl Iterator<Item = Vec<u8>> {
    let mut rng = Rng(seed);
    let mut perm: Vec<u32> = Vec::new();
    (0..n).map(move |i| {
        if i % accounts == 0 {
            perm = permutation(accounts, seed ^ mix(i as u64 / accounts as u64 + 1));
        }
        let t = t0_ms + (i as i64 * step_us) / 1000;
        event(&mut rng, perm[i % accounts], t)
    })
}

/// [`stream_iter`], collected.
pub fn stream(n: usize, accounts: usize, t0_ms: i64, step_us: i64, seed: u64) -> Vec<Vec<u8>> {
    stream_iter(n, accounts, t0_ms, step_us, seed).collect()
}

pub fn mean_len(events: &[Vec<u8>]) -> f64 {
    events.iter().map(Vec::len).sum::<usize>() as f64 / events.len() as f64
}
