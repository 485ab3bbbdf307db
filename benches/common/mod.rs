//! Shared synthetic input for the benchmarks: realistic login-risk events (schema v1), deterministic
//! (a fixed-seed SplitMix64), about 250 bytes on average.
//!
//! The mix: UUID v4 event ids; account ids in three shapes (`acct-NNNNNNNNNN`, `usr_<16 hex>`,
//! `tenant-N/user-N`); six sources; the seven default signals weighted towards the cheap ones
//! (failed_login, new_device, unusual_time); risk mostly low; optional ip (v4 or v6), country,
//! user_agent, device_id, attributes and schema_version, each present in a share of events.

#![allow(dead_code)]

pub mod cpu;

use std::fmt::Write as _;

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, ProducerContext};
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

// ---------------------------------------------------------------------------------------------
// The realistic workload: production on a bad day (issue 10)
// ---------------------------------------------------------------------------------------------

/// The breaker cell (source) of the incident: a detector that flags a flood of accounts.
pub const INCIDENT_SOURCE: &str = "bulk-risk-scan";
/// The source of the takeover pairs in the bursts.
pub const TAKEOVER_SOURCE: &str = "device-intel";

/// What a message of the realistic workload is (its intended outcome class).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RealKind {
    /// An ordinary event of the account population (a share of them out of order, within the
    /// allowed lateness).
    Plain,
    /// Invalid: bad JSON, a missing field, a value out of range... (a DLQ record, `rejected`).
    Malformed,
    /// The exact bytes of an earlier valid message, re-sent (a DLQ record, `duplicate`).
    Duplicate,
    /// Half of a takeover pair in a burst (credential stuffing, then impossible travel: a decision).
    Takeover,
    /// The incident: one source flags an account with a deciding signal.
    Incident,
}

/// The shape of the realistic workload; everything else follows from `events` and `seed`.
#[derive(Debug, Clone)]
pub struct RealSpec {
    pub events: usize,
    /// Distinct accounts of the population (default `events / 5`, 200 k at 1 M events).
    pub accounts: usize,
    /// Event time of the last event; the first is one hour earlier (a consumer catching up).
    pub end_ms: i64,
    pub seed: u64,
    /// Shares of malformed and duplicate messages (0.5 % each by default).
    pub malformed: f64,
    pub duplicates: f64,
    /// Accounts the incident flags (default 4 % of the events: 40 k at 1 M), within
    /// `incident_minutes` of event time starting 35 minutes into the hour.
    pub incident_accounts: usize,
    pub incident_minutes: i64,
    /// Takeover bursts (one every 6 minutes of event time, each over 20 s) and pairs per burst
    /// (default `events / 5000`: 200 at 1 M).
    pub bursts: usize,
    pub pairs_per_burst: usize,
}

impl RealSpec {
    pub fn new(events: usize, end_ms: i64) -> RealSpec {
        RealSpec {
            events,
            accounts: (events / 5).max(1000),
            end_ms,
            seed: 0xbad_da7,
            malformed: 0.005,
            duplicates: 0.005,
            incident_accounts: events / 25,
            incident_minutes: 5,
            bursts: 10,
            pairs_per_burst: (events / 5000).max(2),
        }
    }

    pub fn start_ms(&self) -> i64 {
        self.end_ms - 3_600_000
    }
}

/// What was generated, by kind.
#[derive(Debug, Clone, Default)]
pub struct RealCounts {
    pub events: usize,
    pub bytes: usize,
    pub plain: usize,
    pub out_of_order: usize,
    pub malformed: usize,
    pub duplicates: usize,
    pub takeover_pairs: usize,
    pub incident: usize,
}

/// Malformed message number `k` (cycling through eight kinds of breakage), for `account` at `t_ms`.
fn malformed(rng: &mut Rng, k: usize, account: u32, t_ms: i64) -> Vec<u8> {
    let ok = event(rng, account, t_ms);
    let ts = format_rfc3339_ms(t_ms);
    let mut acct = String::new();
    account_id(account, &mut acct);
    match k % 8 {
        // Cut off mid-message (a producer crash, a bad proxy).
        0 => ok[..ok.len() / 2 + rng.below(ok.len() as u64 / 3) as usize].to_vec(),
        // A required field missing.
        1 => format!(r#"{{"event_id":"m-{k}","occurred_at":"{ts}","source":"auth-service","signal":"failed_login","risk":0.2}}"#)
            .into_bytes(),
        2 => format!(r#"{{"event_id":"m-{k}","account_id":"{acct}","occurred_at":"{ts}","source":"risk-model-v3","signal":"new_device"}}"#)
            .into_bytes(),
        // Values out of range or of the wrong type.
        3 => format!(r#"{{"event_id":"m-{k}","account_id":"{acct}","occurred_at":"{ts}","source":"risk-model-v3","signal":"mfa_failure","risk":1.7}}"#)
            .into_bytes(),
        4 => format!(r#"{{"event_id":"m-{k}","account_id":"{acct}","occurred_at":"{ts}","source":"edge-waf","signal":"failed_login","risk":"0.4"}}"#)
            .into_bytes(),
        // A signal the policy does not know, a time that is not one.
        5 => format!(r#"{{"event_id":"m-{k}","account_id":"{acct}","occurred_at":"{ts}","source":"edge-waf","signal":"bot_score","risk":0.3}}"#)
            .into_bytes(),
        6 => format!(r#"{{"event_id":"m-{k}","account_id":"{acct}","occurred_at":"{}","source":"auth-service","signal":"failed_login","risk":0.1}}"#, &ts[..10])
            .into_bytes(),
        // Not UTF-8 (a binary payload on the wrong topic).
        _ => {
            let mut b = vec![0xff, 0xfe];
            b.extend_from_slice(&ok[2..40]);
            b
        }
    }
}

fn takeover_event(k: usize, account: u32, t_ms: i64, second: bool) -> Vec<u8> {
    let mut acct = String::new();
    account_id(account, &mut acct);
    let (signal, risk) = if second { ("impossible_travel", 0.9) } else { ("credential_stuffing", 0.95) };
    format!(
        r#"{{"event_id":"ato-{k}-{}","account_id":"{acct}","occurred_at":"{}","source":"{TAKEOVER_SOURCE}","signal":"{signal}","risk":{risk},"ip":"203.0.113.{}","country":"BR"}}"#,
        u8::from(second),
        format_rfc3339_ms(t_ms),
        1 + k % 250
    )
    .into_bytes()
}

fn incident_event(rng: &mut Rng, account: u32, t_ms: i64) -> Vec<u8> {
    let mut s = String::with_capacity(200);
    s.push_str("{\"event_id\":\"");
    uuid_v4(rng, &mut s);
    s.push_str("\",\"account_id\":\"");
    account_id(account, &mut s);
    let _ = write!(
        s,
        "\",\"occurred_at\":\"{}\",\"source\":\"{INCIDENT_SOURCE}\",\"signal\":\"breached_password\",\"risk\":1.0,\"schema_version\":1}}",
        format_rfc3339_ms(t_ms)
    );
    s.into_bytes()
}

/// Generates the realistic workload, message by message in produce order, into
/// `sink(key, payload, kind)`. Deterministic for a given spec.
///
/// Event time advances evenly over the hour `[end_ms - 1 h, end_ms]`. Into the ordinary traffic
/// (permutation passes over the population, as [`stream_iter`]; 5 % of events stamped up to 90 s
/// early, inside the 2-minute allowed lateness) it mixes: malformed messages; exact re-sends of
/// one of the last 1,024 valid messages (same key, so the same partition, always after the
/// original); `bursts` takeover bursts, each of `pairs_per_burst` pairs within 20 s of event time,
/// the trigger 20 to 200 messages after the first half; and the incident, `incident_accounts`
/// distinct accounts flagged with `breached_password` 1.0 (a decision each) by
/// [`INCIDENT_SOURCE`], spread evenly over `incident_minutes`.
pub fn realistic(spec: &RealSpec, mut sink: impl FnMut(&[u8], &[u8], RealKind)) -> RealCounts {
    let n = spec.events;
    let accounts = spec.accounts;
    let start = spec.start_ms();
    let mut rng = Rng(spec.seed);
    let mut c = RealCounts { events: n, ..RealCounts::default() };
    let t_of = |i: usize| start + (i as i64 * 3_600_000) / n.max(1) as i64;
    let slot_of = |t: i64| (((t - start) * n as i64) / 3_600_000).clamp(0, n as i64) as usize;
    // The incident: slots [inc_a, inc_b), `incident_accounts` of them flagged, evenly spaced.
    let (inc_a, inc_b) = (slot_of(start + 35 * 60_000), slot_of(start + (35 + spec.incident_minutes) * 60_000));
    let inc_slots = (inc_b - inc_a).max(1);
    let incident_total = spec.incident_accounts.min(inc_slots);
    let incident_accts = permutation(accounts, spec.seed ^ 0x1c1d);
    // Takeover bursts: burst b starts at minute 3 + 6 b, lasts 20 s.
    let burst_len = slot_of(start + 20_000).max(1);
    let bursts: Vec<usize> = (0..spec.bursts).map(|b| slot_of(start + (3 + 6 * b as i64) * 60_000)).collect();
    let mut pending: std::collections::VecDeque<(usize, u32, usize)> = std::collections::VecDeque::new();
    let mut recent: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(1024);
    let mut recent_next = 0usize;
    let mut perm: Vec<u32> = Vec::new();
    let mut plain_i = 0usize;
    let mut key = String::new();
    let mut pairs = 0usize;
    let mut incident_done = 0usize;
    for i in 0..n {
        let t = t_of(i);
        let mut remember = true;
        let (k, v, kind): (Vec<u8>, Vec<u8>, RealKind) =
            if (inc_a..inc_b).contains(&i) && ((i - inc_a + 1) * incident_total / inc_slots) > incident_done {
                let a = incident_accts[incident_done % accounts];
                incident_done += 1;
                key.clear();
                account_id(a, &mut key);
                (key.clone().into_bytes(), incident_event(&mut rng, a, t), RealKind::Incident)
            } else if pending.front().is_some_and(|&(due, _, _)| due <= i) {
                let (_, a, k) = pending.pop_front().unwrap_or_default();
                key.clear();
                account_id(a, &mut key);
                (key.clone().into_bytes(), takeover_event(k, a, t, true), RealKind::Takeover)
            } else if bursts.iter().any(|&b| (b..b + burst_len).contains(&i)) && {
                // This burst's share of its slots, evenly spread.
                let b = bursts.iter().copied().filter(|&b| b <= i).max().unwrap_or(0);
                let done_here = (i - b) * spec.pairs_per_burst / burst_len;
                let due_here = (i - b + 1) * spec.pairs_per_burst / burst_len;
                due_here > done_here
            } {
                let a = rng.below(accounts as u64) as u32;
                let k = pairs;
                pairs += 1;
                pending.push_back((i + 20 + rng.below(180) as usize, a, k));
                key.clear();
                account_id(a, &mut key);
                (key.clone().into_bytes(), takeover_event(k, a, t, false), RealKind::Takeover)
            } else if rng.chance(spec.malformed) {
                remember = false;
                let a = rng.below(accounts as u64) as u32;
                key.clear();
                account_id(a, &mut key);
                c.malformed += 1;
                (key.clone().into_bytes(), malformed(&mut rng, c.malformed, a, t), RealKind::Malformed)
            } else if !recent.is_empty() && rng.chance(spec.duplicates) {
                remember = false;
                c.duplicates += 1;
                let (k, v) = recent[rng.below(recent.len() as u64) as usize].clone();
                (k, v, RealKind::Duplicate)
            } else {
                if plain_i % accounts == 0 {
                    perm = permutation(accounts, spec.seed ^ mix(plain_i as u64 / accounts as u64 + 1));
                }
                let a = perm[plain_i % accounts];
                plain_i += 1;
                let et = if rng.chance(0.05) {
                    c.out_of_order += 1;
                    t - 1 - rng.below(90_000) as i64
                } else {
                    t
                };
                key.clear();
                account_id(a, &mut key);
                c.plain += 1;
                (key.clone().into_bytes(), event(&mut rng, a, et), RealKind::Plain)
            };
        if kind == RealKind::Incident {
            c.incident += 1;
        }
        c.bytes += v.len();
        sink(&k, &v, kind);
        if remember {
            if recent.len() < 1024 {
                recent.push((k, v));
            } else {
                recent[recent_next] = (k, v);
                recent_next = (recent_next + 1) % 1024;
            }
        }
    }
    c.takeover_pairs = pairs - pending.len();
    c
}

/// Sends `rec`, serving delivery reports while the producer's queue is full; any other error
/// ends the bench.
pub fn send_waiting<C: ProducerContext<DeliveryOpaque = ()>>(p: &BaseProducer<C>, mut rec: BaseRecord<'_, [u8], [u8]>) {
    loop {
        match p.send(rec) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                p.poll(Duration::from_millis(10));
            }
            Err((e, _)) => panic!("send: {e}"),
        }
    }
}

/// One event of a takeover pair (source `device-intel`): `credential_stuffing` 0.95 then
/// `impossible_travel` 0.9 for the same account decides.
pub fn takeover(id: &str, account: &str, t_ms: i64, signal: &str, risk: f64) -> Vec<u8> {
    format!(
        r#"{{"event_id":"{id}","account_id":"{account}","occurred_at":"{}","source":"device-intel","signal":"{signal}","risk":{risk},"ip":"203.0.113.7","country":"BR"}}"#,
        format_rfc3339_ms(t_ms)
    )
    .into_bytes()
}
