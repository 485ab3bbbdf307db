//! The incident this product exists for, replayed against the decision core.
//!
//! On 3 March 2014 Twitter "unintentionally sent some password reset notices [...] due to a system
//! error": thousands of users were told their account "may have been compromised" and had their
//! password reset, although nothing had happened to them. resetguard stands between the detectors
//! and the reset mailer so that a detector gone wrong cannot do that again.
//!
//! - `twitter_2014_system_error_reset_flood_is_held_in_event_time` and `..._in_wall_time`: an hour of
//!   ordinary traffic (with ordinary genuine takeovers) teaches the breaker its baselines; then
//!   `risk-model-v7` flags 40,000 distinct accounts within 3 minutes while ordinary traffic and
//!   genuine compromises reported by other sources continue; then 20 more ordinary minutes.
//!   Asserted: `risk-model-v7` sends at most the configured cell burst during and after the
//!   incident and every other decision of it is held; every genuine compromise reported by another
//!   source during the incident (and every ordinary takeover before it) gets a notice; one outcome
//!   per input; no `notice_id` twice.
//! - `replayed_topic_yields_only_duplicates_and_no_new_notices`: the same ordinary hour re-sent right
//!   after it: only duplicates, no notice; re-sent again past the dedupe horizon: still no notice.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use common::events::*;
use resetguard::core::breaker::CellState;
use resetguard::core::outcome::{Outcome, OutcomeKind};
use resetguard::core::{Engine, Policy, TimeMode};

/// The policy of the scenario: the defaults, written out so the assertions can name them.
const POLICY: &str = r#"
version = "incident-replay-1"
mode = "live"

[decision]
threshold = 1.0
cooldown = "24h"
dedupe_horizon = "1h"

[window]
length = "15m"
allowed_lateness = "2m"

[breaker]
global_rate_per_minute = 600
global_burst = 100
cell_rate_per_minute = 300
cell_burst = 50
spike_factor = 4.0
spike_floor = 30
global_spike_floor = 120
ewma_alpha = 0.1
warmup_minutes = 10
open_duration = "10m"
probe_budget = 5
half_open_duration = "2m"
"#;

const BUGGY: &str = "risk-model-v7";
const SOURCES4: [&str; 4] = ["auth-service", "device-intel", "breached-pw-check", BUGGY];
const PARTITIONS: u64 = 6;

const START: i64 = T0_MINUTE;
const INCIDENT_START: i64 = START + 60 * MINUTE;
const INCIDENT_END: i64 = INCIDENT_START + 3 * MINUTE;
const END: i64 = INCIDENT_END + 20 * MINUTE;
const FLAGGED: usize = 40_000;

/// What an input is, for the assertions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    /// Low-risk background signal: never decides.
    Noise,
    /// One event of a genuine takeover (`n`-th victim), reported by `source`; the last event of the
    /// takeover crosses the threshold.
    Genuine { n: usize, last: bool },
    /// One of the accounts the buggy model flagged by mistake.
    Flagged,
}

#[derive(Debug, Clone)]
struct Msg {
    t_ms: i64,
    arrival_ms: i64,
    partition: u32,
    bytes: Vec<u8>,
    account: String,
    tag: Tag,
}

#[derive(Debug, Clone)]
struct Victim {
    account: String,
    source: &'static str,
    /// Event time of the deciding (last) event.
    decided_ms: i64,
}

fn partition_of(account: &str) -> u32 {
    // FNV-1a: a stable key → partition mapping, like a keyed Kafka topic.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in account.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % PARTITIONS) as u32
}

struct Gen {
    rng: Rng,
    msgs: Vec<Msg>,
    victims: Vec<Victim>,
    next_id: u64,
}

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen { rng: Rng::new(seed), msgs: Vec::new(), victims: Vec::new(), next_id: 0 }
    }

    fn push(&mut self, account: &str, t_ms: i64, source: &str, signal: &str, risk: f64, tag: Tag) {
        self.next_id += 1;
        let id = format!("{source}:{:016x}", self.next_id);
        let ev = Ev::new(&id, account, t_ms, source, signal, risk).with("ip", serde_json::json!("198.51.100.7"));
        let delay = self.rng.range(50, 20_000);
        self.msgs.push(Msg {
            t_ms,
            arrival_ms: t_ms + delay,
            partition: partition_of(account),
            bytes: ev.bytes(),
            account: account.to_string(),
            tag,
        });
    }

    /// Background traffic: about 10 events per second from the four sources over 200,000 accounts,
    /// each worth at most 0.05 of the threshold.
    fn noise(&mut self, from: i64, to: i64) {
        let mut t = from;
        while t < to {
            let account = format!("user-{}", self.rng.below(200_000));
            let source = *self.rng.pick(&SOURCES4);
            let (signal, weight) = *self.rng.pick(&[
                ("failed_login", 0.1),
                ("new_device", 0.2),
                ("unusual_time", 0.1),
                ("mfa_failure", 0.3),
                ("credential_stuffing", 0.6),
                ("impossible_travel", 0.7),
                ("breached_password", 1.0),
            ]);
            let risk = self.rng.unit() * 0.05 / weight;
            self.push(&account, t, source, signal, risk, Tag::Noise);
            t += self.rng.range(1, 200);
        }
    }

    /// A genuine takeover reported by `source`, crossing the threshold with its last event at `at`.
    fn takeover(&mut self, source: &'static str, at: i64, prefix: &str) {
        let n = self.victims.len();
        let account = format!("{prefix}-{n}");
        let steps: &[(&str, f64)] = match source {
            // 3 × 0.09 + 0.6 + 0.3 = 1.17
            "auth-service" => &[
                ("failed_login", 0.9),
                ("failed_login", 0.9),
                ("failed_login", 0.9),
                ("credential_stuffing", 1.0),
                ("mfa_failure", 1.0),
            ],
            // 0.2 + 0.2 (cap 0.4) + 0.7 = 1.1
            "device-intel" => &[("new_device", 1.0), ("new_device", 1.0), ("impossible_travel", 1.0)],
            // 1.0
            "breached-pw-check" => &[("breached_password", 1.0)],
            // 0.54 + 0.63 = 1.17
            _ => &[("credential_stuffing", 0.9), ("impossible_travel", 0.9)],
        };
        let k = steps.len() as i64;
        // 30 s apart, more than the largest delivery delay: they arrive in order, the last decides.
        for (i, (signal, risk)) in steps.iter().enumerate() {
            let t = at - (k - 1 - i as i64) * 30_000;
            let last = i as i64 == k - 1;
            self.push(&account, t, source, signal, *risk, Tag::Genuine { n, last });
        }
        self.victims.push(Victim { account, source, decided_ms: at });
    }

    /// Ordinary genuine takeovers: one every 3 minutes, rotating over the sources.
    fn takeovers(&mut self, from: i64, to: i64, prefix: &str) {
        let mut at = from + 90_000;
        let mut k = 0;
        while at < to {
            let source = SOURCES4[k % SOURCES4.len()];
            self.takeover(source, at, prefix);
            at += 3 * MINUTE;
            k += 1;
        }
    }

    /// The system error: `BUGGY` flags `n` distinct accounts within [from, to), each enough to decide.
    fn flood(&mut self, from: i64, to: i64, n: usize) {
        for k in 0..n {
            let account = format!("flagged-{k}");
            let t = from + (k as i64 * (to - from)) / n as i64;
            if k % 2 == 0 {
                self.push(&account, t, BUGGY, "breached_password", 1.0, Tag::Flagged);
            } else {
                // 0.57 + 0.9 = 1.47: the second event decides.
                self.push(&account, (t - 4_000).max(from), BUGGY, "credential_stuffing", 0.95, Tag::Flagged);
                self.push(&account, t, BUGGY, "breached_password", 0.9, Tag::Flagged);
            }
        }
    }

    /// Messages in arrival order (stable for equal arrivals).
    fn into_feed(mut self) -> (Vec<Msg>, Vec<Victim>) {
        self.msgs.sort_by_key(|m| m.arrival_ms);
        (self.msgs, self.victims)
    }
}

/// Drives an engine over a feed: one `process` per message, a `tick` per second of the fake wall
/// clock (arrival time). Returns the outcomes, aligned with the feed.
fn drive(e: &mut Engine, feed: &[Msg]) -> Vec<(Outcome, Option<i64>)> {
    let mut out = Vec::with_capacity(feed.len());
    let mut next_tick = feed.first().map_or(0, |m| m.arrival_ms);
    for m in feed {
        while next_tick <= m.arrival_ms {
            e.tick(next_tick);
            next_tick += SECOND;
        }
        let p = e.process(&m.bytes, m.partition, m.arrival_ms);
        out.push((p.outcome, p.event_ms));
    }
    out
}

fn scenario_policy() -> Policy {
    Policy::from_toml(POLICY).expect("the scenario policy is valid")
}

fn incident_scenario(mode: TimeMode) {
    let policy = scenario_policy();
    let burst = policy.breaker.cell_burst as usize;
    assert_eq!(burst, 50);

    let mut g = Gen::new(0x7717_7e12_2014);
    g.noise(START, END);
    g.takeovers(START, INCIDENT_START - 3 * MINUTE, "victim-before");
    let before = g.victims.len();
    // Genuine compromises reported by the other sources while the flood runs: 3 each.
    let during_sources = ["auth-service", "device-intel", "breached-pw-check"];
    for (k, at) in (0..9).map(|k| (k, INCIDENT_START + 10_000 + k as i64 * 18_000)) {
        g.takeover(during_sources[k % 3], at, "victim-during");
    }
    let during = g.victims.len();
    g.flood(INCIDENT_START, INCIDENT_END, FLAGGED);
    g.takeovers(INCIDENT_END, END - 2 * MINUTE, "victim-after");
    let (feed, victims) = g.into_feed();

    let mut e = Engine::new(Arc::new(policy), resetguard::core::hash::Keys::demo(), mode);
    let outcomes = drive(&mut e, &feed);

    // One outcome per input.
    let mut tally = Tally::default();
    for (o, _) in &outcomes {
        tally.add(o);
    }
    assert_eq!(outcomes.len(), feed.len());
    assert_eq!(tally.total(), feed.len() as u64, "outcomes counted == inputs counted: {}", tally.summary());
    for (m, (o, _)) in feed.iter().zip(&outcomes) {
        assert!(
            matches!(o.kind(), OutcomeKind::NoAction | OutcomeKind::Notice | OutcomeKind::Held),
            "{} at {}: every input of the scenario is valid, fresh and on time: {o:?}",
            m.account,
            format_ms(m.t_ms)
        );
    }

    // Decisions by account.
    let mut decisions: HashMap<&str, Vec<&Outcome>> = HashMap::new();
    for (m, (o, _)) in feed.iter().zip(&outcomes) {
        if o.decision().is_some() {
            decisions.entry(m.account.as_str()).or_default().push(o);
        }
    }

    // Background traffic never decides (a check of the generator).
    let noise_decisions =
        feed.iter().zip(&outcomes).filter(|(m, (o, _))| m.tag == Tag::Noise && o.decision().is_some()).count();
    assert_eq!(noise_decisions, 0, "background traffic decided");

    // The flood: each flagged account decided once, all attributed to the buggy source.
    let flagged_decisions: Vec<&Outcome> = feed
        .iter()
        .zip(&outcomes)
        .filter(|(m, (o, _))| m.tag == Tag::Flagged && o.decision().is_some())
        .map(|(_, (o, _))| o)
        .collect();
    assert_eq!(flagged_decisions.len(), FLAGGED, "each flagged account crosses the threshold once");
    let flagged_accounts: HashSet<&str> =
        flagged_decisions.iter().map(|o| o.decision().map_or("", |d| d.account_id.as_str())).collect();
    assert_eq!(flagged_accounts.len(), FLAGGED);
    assert!(flagged_decisions.iter().all(|o| o.decision().is_some_and(|d| d.cell == BUGGY)));

    // The buggy source during and after the incident: at most the cell burst of notices, every
    // other decision held.
    let mut buggy_notices = 0usize;
    let mut buggy_held = 0usize;
    let mut buggy_incident_decisions = 0usize;
    let mut held_reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for (o, t) in &outcomes {
        let Some(d) = o.decision() else { continue };
        let t = t.expect("decided events decoded");
        if d.cell != BUGGY || t < INCIDENT_START {
            continue;
        }
        match o {
            Outcome::Notice(_) => buggy_notices += 1,
            Outcome::Held(_, h) => {
                buggy_held += 1;
                *held_reasons.entry(h.reason.as_str()).or_default() += 1;
            }
            _ => unreachable!(),
        }
        if t < INCIDENT_END {
            buggy_incident_decisions += 1;
            assert!(matches!(o, Outcome::Notice(_) | Outcome::Held(..)), "{o:?}");
        }
    }
    let incident_notices = outcomes
        .iter()
        .filter(|(o, t)| {
            matches!(o, Outcome::Notice(d) if d.cell == BUGGY)
                && t.is_some_and(|t| (INCIDENT_START..INCIDENT_END).contains(&t))
        })
        .count();
    assert!(
        buggy_notices <= burst,
        "{BUGGY} sent {buggy_notices} notices during and after the incident, cell burst is {burst}"
    );
    assert!(buggy_incident_decisions >= FLAGGED);
    assert_eq!(
        buggy_incident_decisions - incident_notices,
        outcomes
            .iter()
            .filter(|(o, t)| matches!(o, Outcome::Held(d, _) if d.cell == BUGGY)
                && t.is_some_and(|t| (INCIDENT_START..INCIDENT_END).contains(&t)))
            .count(),
        "every decision of {BUGGY} in the incident that was not one of the few notices is held"
    );
    assert!(buggy_held >= FLAGGED - burst);

    // Genuine compromises reported by other sources during the incident: each gets its notice.
    let notice_of = |v: &Victim| -> Option<&Outcome> {
        let ds = decisions.get(v.account.as_str())?;
        assert_eq!(ds.len(), 1, "{}: one decision per incident, got {ds:?}", v.account);
        Some(ds[0])
    };
    for v in &victims[before..during] {
        assert!((INCIDENT_START..INCIDENT_END).contains(&v.decided_ms));
        let o = notice_of(v).unwrap_or_else(|| panic!("{} ({}) was not decided", v.account, v.source));
        match o {
            Outcome::Notice(d) => {
                assert_eq!(d.cell, v.source);
                assert_eq!(d.account_id, v.account);
            }
            other => {
                panic!("{} reported by {} during the incident: expected a notice, got {other:?}", v.account, v.source)
            }
        }
    }
    assert!(during - before >= 5);
    // Ordinary takeovers before the incident: notices, from every source (the buggy one included).
    for v in &victims[..before] {
        let o = notice_of(v).unwrap_or_else(|| panic!("{} ({}) was not decided", v.account, v.source));
        assert_eq!(o.kind(), OutcomeKind::Notice, "{} ({}) before the incident: {o:?}", v.account, v.source);
    }
    // After the incident, the other sources' takeovers still get their notices.
    for v in victims[during..].iter().filter(|v| v.source != BUGGY) {
        let o = notice_of(v).unwrap_or_else(|| panic!("{} ({}) was not decided", v.account, v.source));
        assert_eq!(o.kind(), OutcomeKind::Notice, "{} ({}) after the incident: {o:?}", v.account, v.source);
    }
    // Each genuine takeover decided on its last event.
    for (m, (o, _)) in feed.iter().zip(&outcomes) {
        if let Tag::Genuine { n, last } = m.tag {
            assert_eq!(
                o.decision().is_some(),
                last,
                "{} (victim {n}): decides on the crossing event only: {o:?}",
                m.account
            );
        }
    }

    // No notice_id twice (among notices, and among all decisions).
    let mut ids = HashSet::new();
    for (o, _) in &outcomes {
        if let Outcome::Notice(d) = o {
            assert!(ids.insert(d.notice_id.clone()), "notice_id {} twice", d.notice_id);
        }
    }
    let mut all_ids = HashSet::new();
    for (o, _) in &outcomes {
        if let Some(d) = o.decision() {
            assert!(all_ids.insert(d.notice_id.clone()), "decision notice_id {} twice", d.notice_id);
        }
    }

    // The buggy source's cell tripped on a spike; the global cell never opened.
    let transitions = e.drain_transitions();
    assert!(transitions.iter().any(|t| t.cell == BUGGY && t.to == CellState::Open), "{transitions:?}");
    assert!(
        transitions.iter().all(|t| t.cell != "global"),
        "one source's flood must not trip the breaker for everybody: {transitions:?}"
    );

    let mut notices_by_cell: BTreeMap<String, usize> = BTreeMap::new();
    for (o, _) in &outcomes {
        if let Outcome::Notice(d) = o {
            *notices_by_cell.entry(d.cell.clone()).or_default() += 1;
        }
    }
    println!(
        "[{mode:?}] inputs={} outcomes: {} | {BUGGY}: {} decisions in the incident, {buggy_notices} notices during+after \
         (burst {burst}), {buggy_held} held {held_reasons:?} | genuine during the incident: {} notices | notices by cell \
         {notices_by_cell:?} | transitions: {}",
        feed.len(),
        tally.summary(),
        buggy_incident_decisions,
        during - before,
        transitions.iter().map(|t| format!("{}:{}->{}", t.cell, t.from.as_str(), t.to.as_str())).collect::<Vec<_>>().join(", ")
    );
}

fn format_ms(ms: i64) -> String {
    resetguard::core::event::format_rfc3339_ms(ms)
}

#[test]
fn twitter_2014_system_error_reset_flood_is_held_in_event_time() {
    incident_scenario(TimeMode::EventTime);
}

#[test]
fn twitter_2014_system_error_reset_flood_is_held_in_wall_time() {
    // The fake wall clock is each message's arrival: its event time plus 50 ms to 20 s.
    incident_scenario(TimeMode::Wall);
}

/// An upstream replays the topic: the same ordinary hour (with its genuine takeovers) again.
#[test]
fn replayed_topic_yields_only_duplicates_and_no_new_notices() {
    for mode in [TimeMode::EventTime, TimeMode::Wall] {
        let mut g = Gen::new(0x2e91_a7ed);
        g.noise(START, START + 60 * MINUTE);
        g.takeovers(START, START + 57 * MINUTE, "victim");
        let (feed, victims) = g.into_feed();

        let mut e = Engine::new(Arc::new(scenario_policy()), resetguard::core::hash::Keys::demo(), mode);
        let first = drive(&mut e, &feed);
        let mut first_tally = Tally::default();
        for (o, _) in &first {
            first_tally.add(o);
        }
        let first_notices = first_tally.get(OutcomeKind::Notice);
        assert_eq!(first_notices, victims.len() as u64, "[{mode:?}] the hour's takeovers: {}", first_tally.summary());
        assert!(first_notices >= 15);

        // The replay starts a minute after the hour ends and takes 5 minutes of wall time.
        let replay_start = feed.last().map_or(START, |m| m.arrival_ms) + MINUTE;
        let n = feed.len() as i64;
        let replay: Vec<Msg> = feed
            .iter()
            .enumerate()
            .map(|(i, m)| Msg { arrival_ms: replay_start + i as i64 * 5 * MINUTE / n, ..m.clone() })
            .collect();
        let second = drive(&mut e, &replay);
        let mut tally = Tally::default();
        for (o, _) in &second {
            tally.add(o);
        }
        println!("[{mode:?}] first pass: {} | replay: {}", first_tally.summary(), tally.summary());
        assert_eq!(tally.total(), replay.len() as u64);
        assert_eq!(tally.get(OutcomeKind::Duplicate), replay.len() as u64, "[{mode:?}] replay: {}", tally.summary());
        assert_eq!(tally.get(OutcomeKind::Notice), 0);
        assert_eq!(tally.get(OutcomeKind::Held), 0);

        // Replayed once more, 3 hours later (past the 1 h dedupe horizon on the wall clock): the
        // ids may be forgotten, but the events are behind the watermark or in cooldown. No notice.
        let late_start = replay_start + 3 * 60 * MINUTE;
        let again: Vec<Msg> = feed
            .iter()
            .enumerate()
            .map(|(i, m)| Msg { arrival_ms: late_start + i as i64 * 5 * MINUTE / n, ..m.clone() })
            .collect();
        let third = drive(&mut e, &again);
        let mut t3 = Tally::default();
        for (o, _) in &third {
            t3.add(o);
        }
        println!("[{mode:?}] replay after the horizon: {}", t3.summary());
        assert_eq!(t3.total(), again.len() as u64);
        assert_eq!(t3.get(OutcomeKind::Notice) + t3.get(OutcomeKind::Held), 0, "[{mode:?}] {}", t3.summary());
        assert_eq!(t3.get(OutcomeKind::Rejected), 0);
    }
}
