//! Property tests of the pure decision core (`resetguard::core`), black box: bytes and times in,
//! outcomes out.
//!
//! - `every_input_gets_exactly_one_outcome_and_valid_events_are_never_rejected`: arbitrary bytes,
//!   valid events, mutated events (each with the outcome the contract promises), re-sent inputs,
//!   late and out-of-order events over several partitions, ticks; both time modes. Also checks
//!   duplicates and lateness against an independent model of dedupe and per-partition watermarks.
//! - `the_same_inputs_give_the_same_outcomes`: two fresh engines (also with another seed).
//! - `no_account_is_decided_twice_within_the_cooldown`
//! - `short_score_is_the_capped_sum_per_signal_kind` (engine explanations) and
//!   `account_store_short_score_is_the_capped_sum_per_signal_kind` (`AccountStore::add`).
//! - `a_new_source_sends_at_most_the_spike_floor_in_its_first_minute` (default policy) and
//!   `a_new_source_sends_at_most_min_floor_and_burst_in_its_first_minute` (random breaker policy).
//! - `a_sharded_engine_decides_exactly_like_one_shard`: the differential test of
//!   `Engine::process_batch` on several shards against `Engine::process` on one.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use common::events::*;
use proptest::prelude::*;
use proptest::test_runner::Config;
use resetguard::core::accounts::{quantise_risk, AccountStore, Entry};
use resetguard::core::breaker::HeldReason;
use resetguard::core::changelog::{self, parse_key, read_batch, BatchEntry, Key};
use resetguard::core::event::RejectReason;
use resetguard::core::outcome::{Outcome, OutcomeKind, WindowKind};
use resetguard::core::{Engine, Policy, Processed, TimeMode};

/// Wall clock for inputs that do not care: far after every generated event time.
const LATER: i64 = T0 + 400 * 86_400_000;

fn engine(policy: Policy, seed: u64, mode: TimeMode) -> Engine {
    Engine::new(Arc::new(policy), resetguard::core::hash::Keys::demo().with_id_seed(seed), mode)
}

fn default_policy() -> Policy {
    Policy::default_with_version("props-v1")
}

/// `n` cases, or `PROPTEST_CASES` when set (for longer runs).
fn cases(n: u32) -> Config {
    let n = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(n);
    Config { cases: n, max_shrink_iters: 2000, ..Config::default() }
}

// ---------------------------------------------------------------------------------------------
// Mixed input streams
// ---------------------------------------------------------------------------------------------

/// Partitions used by the streams (no two of them share a watermark).
const PARTITIONS: [u32; 6] = [0, 1, 2, 3, 7, 1000];

#[derive(Debug, Clone)]
enum Step {
    /// Arbitrary bytes.
    Raw(Vec<u8>, usize),
    /// A valid event; `offset_ms` from the current clock (negative: older, maybe late).
    Valid {
        acct: usize,
        src: usize,
        sig: usize,
        risk: f64,
        offset_ms: i64,
        part: usize,
    },
    /// A valid event, then mutated.
    Mutated {
        acct: usize,
        src: usize,
        sig: usize,
        risk: f64,
        offset_ms: i64,
        part: usize,
        m: Mutation,
    },
    /// Re-sends an earlier input (index modulo the inputs so far) on some partition.
    Resend(usize, usize),
    /// Moves the clock forward.
    Advance(i64),
    Tick,
}

fn arb_risk() -> impl Strategy<Value = f64> + Clone {
    prop_oneof![2 => 0.0..=1.0f64, 1 => Just(1.0), 1 => Just(0.0), 1 => 0.9..=1.0f64]
}

fn arb_step() -> impl Strategy<Value = Step> {
    let valid =
        (0usize..40, 0usize..SOURCES.len(), 0usize..7, arb_risk(), -10 * MINUTE..=MINUTE, 0usize..PARTITIONS.len());
    prop_oneof![
        1 => (prop::collection::vec(any::<u8>(), 0..300), 0usize..PARTITIONS.len()).prop_map(|(b, p)| Step::Raw(b, p)),
        8 => valid.clone().prop_map(|(acct, src, sig, risk, offset_ms, part)| Step::Valid { acct, src, sig, risk, offset_ms, part }),
        5 => (valid, arb_mutation()).prop_map(|((acct, src, sig, risk, offset_ms, part), m)| Step::Mutated {
            acct, src, sig, risk, offset_ms, part, m
        }),
        2 => (any::<usize>(), 0usize..PARTITIONS.len()).prop_map(|(i, p)| Step::Resend(i, p)),
        2 => (0i64..30_000).prop_map(Step::Advance),
        1 => Just(Step::Tick),
    ]
}

/// One concrete call on the engine.
#[derive(Debug, Clone)]
enum Call {
    Process(Input),
    Tick(i64),
}

#[derive(Debug, Clone)]
struct Input {
    bytes: Vec<u8>,
    partition: u32,
    wall_ms: i64,
    /// The promise for this input (`None` for arbitrary bytes and re-sends).
    expect: Option<Expect>,
    /// Event id and time carried if it decodes (`None`: unknown).
    meta: Option<(String, i64)>,
    /// Index of the input this one re-sends.
    resend_of: Option<usize>,
}

/// Turns steps into calls. The clock stays within 40 minutes of `T0` (less than the dedupe
/// horizon), and the wall clock runs 61 s ahead of it, so every generated event time is fresh.
fn materialize(steps: &[Step], ancient_first: Option<usize>) -> Vec<Call> {
    let mut clock = T0;
    let wall = |clock: i64| clock + 61_000;
    let mut calls = Vec::new();
    let mut inputs: Vec<Input> = Vec::new();
    if let Some(i) = ancient_first {
        // A valid event dated long ago that decides (breached_password, risk 1), then a tick.
        let ev = Ev::new("ancient-0", "acct-ancient", T0, "auth-service", "breached_password", 1.0);
        let m = Mutation::Ancient(i).apply(&ev, wall(clock));
        let input = Input {
            bytes: m.bytes,
            partition: 0,
            wall_ms: wall(clock),
            expect: Some(m.expect),
            meta: m.t_ms.map(|t| (m.event_id, t)),
            resend_of: None,
        };
        inputs.push(input.clone());
        calls.push(Call::Process(input));
        calls.push(Call::Tick(wall(clock)));
    }
    for (n, step) in steps.iter().enumerate() {
        let input = match step {
            Step::Raw(b, p) => Input {
                bytes: b.clone(),
                partition: PARTITIONS[*p],
                wall_ms: wall(clock),
                expect: None,
                meta: None,
                resend_of: None,
            },
            Step::Valid { acct, src, sig, risk, offset_ms, part } => {
                let ev = Ev::new(
                    &format!("e{n}"),
                    &account_name(*acct),
                    clock + offset_ms,
                    SOURCES[*src],
                    DEFAULT_SIGNALS[*sig],
                    *risk,
                );
                Input {
                    bytes: ev.bytes(),
                    partition: PARTITIONS[*part],
                    wall_ms: wall(clock),
                    expect: Some(Expect::Valid),
                    meta: Some((ev.event_id.clone(), ev.t_ms)),
                    resend_of: None,
                }
            }
            Step::Mutated { acct, src, sig, risk, offset_ms, part, m } => {
                let ev = Ev::new(
                    &format!("m{n}"),
                    &account_name(*acct),
                    clock + offset_ms,
                    SOURCES[*src],
                    DEFAULT_SIGNALS[*sig],
                    *risk,
                );
                let out = m.apply(&ev, wall(clock));
                Input {
                    bytes: out.bytes,
                    partition: PARTITIONS[*part],
                    wall_ms: wall(clock),
                    expect: Some(out.expect),
                    meta: out.t_ms.map(|t| (out.event_id, t)),
                    resend_of: None,
                }
            }
            Step::Resend(i, p) => {
                if inputs.is_empty() {
                    continue;
                }
                let k = i % inputs.len();
                let orig = &inputs[k];
                Input {
                    bytes: orig.bytes.clone(),
                    partition: PARTITIONS[*p],
                    wall_ms: wall(clock),
                    expect: None,
                    meta: orig.meta.clone(),
                    resend_of: Some(k),
                }
            }
            Step::Advance(ms) => {
                clock = (clock + ms).min(T0 + 40 * MINUTE);
                continue;
            }
            Step::Tick => {
                calls.push(Call::Tick(wall(clock)));
                continue;
            }
        };
        inputs.push(input.clone());
        calls.push(Call::Process(input));
    }
    calls
}

fn run(e: &mut Engine, calls: &[Call]) -> (Vec<Processed>, Vec<usize>) {
    let mut out = Vec::new();
    let mut freed = Vec::new();
    for c in calls {
        match c {
            Call::Process(i) => out.push(e.process(&i.bytes, i.partition, i.wall_ms)),
            Call::Tick(w) => freed.push(e.tick(*w)),
        }
    }
    (out, freed)
}

fn mode_of(event_time: bool) -> TimeMode {
    if event_time {
        TimeMode::EventTime
    } else {
        TimeMode::Wall
    }
}

fn short(o: &Outcome) -> String {
    match o {
        Outcome::Rejected(r) => format!("Rejected({:?}: {})", r.reason, r.detail),
        Outcome::Notice(d) => format!("Notice({} by {})", d.account_id, d.cell),
        Outcome::Held(d, h) => format!("Held({} by {}, {:?})", d.account_id, d.cell, h.reason),
        other => format!("{other:?}"),
    }
}

proptest! {
    #![proptest_config(cases(192))]

    #[test]
    fn every_input_gets_exactly_one_outcome_and_valid_events_are_never_rejected(
        steps in prop::collection::vec(arb_step(), 1..250),
        event_time in any::<bool>(),
        ancient_first in prop::option::weighted(0.2, 0usize..ANCIENT_TIMESTAMPS.len()),
    ) {
        let calls = materialize(&steps, ancient_first);
        let policy = default_policy();
        let lateness = policy.allowed_lateness.as_millis() as i64;
        let cooldown_ms = policy.cooldown.as_millis() as i64;
        let horizon = policy.dedupe_horizon.as_millis() as i64;
        let mut e = engine(policy, 42, mode_of(event_time));

        let mut tally = Tally::default();
        let mut inputs = 0u64;
        // Independent model of dedupe and watermarks, over inputs that decoded: when each id was
        // first seen on the engine's clock (the wall clock, or the newest event time).
        let mut seen: HashMap<String, i64> = HashMap::new();
        let mut event_clock = i64::MIN;
        let mut newest: HashMap<u32, i64> = HashMap::new();
        let mut model_ok = true;
        let mut outcomes: Vec<Outcome> = Vec::new();
        let mut all_inputs: Vec<&Input> = Vec::new();

        for c in &calls {
            let input = match c {
                Call::Tick(w) => { e.tick(*w); continue; }
                Call::Process(i) => i,
            };
            let p = e.process(&input.bytes, input.partition, input.wall_ms);
            inputs += 1;
            tally.add(&p.outcome);
            let o = &p.outcome;
            let ctx = || format!("input #{} {:?} -> {}", all_inputs.len(), String::from_utf8_lossy(&input.bytes[..input.bytes.len().min(300)]), short(o));

            if let Some(expect) = &input.expect {
                prop_assert!(expect.admits(o), "promise {:?} broken: {}", expect, ctx());
            }
            if let Some(k) = input.resend_of {
                if let Outcome::Rejected(r) = &outcomes[k] {
                    if r.reason != RejectReason::FutureTimestamp {
                        prop_assert_eq!(o.reject_reason(), Some(r.reason), "a re-sent invalid input is rejected the same way: {}", ctx());
                    }
                }
            }
            // Decoded inputs: duplicate, late, or a decision path, as the model says.
            if !matches!(o, Outcome::Rejected(_)) {
                match &input.meta {
                    None => model_ok = false,
                    Some(_) if !model_ok => {}
                    Some((id, t)) => {
                        prop_assert_eq!(p.event_ms, Some(*t), "event time: {}", ctx());
                        event_clock = event_clock.max(*t);
                        let now = if event_time { event_clock } else { input.wall_ms };
                        // Within the horizon an id is a duplicate; past it, it may be forgotten.
                        let remembered = seen.get(id).copied();
                        if remembered.is_some_and(|first| now - first < horizon) {
                            prop_assert_eq!(o.kind(), OutcomeKind::Duplicate, "re-sent id within the horizon: {}", ctx());
                        } else if remembered.is_some() && o.kind() == OutcomeKind::Duplicate {
                            // Still remembered past the horizon: allowed (at most two horizons).
                        } else {
                            seen.insert(id.clone(), now);
                            let newest_p = newest.get(&input.partition).copied();
                            // Its own watermark, or, for a partition that has none yet, the
                            // lowest watermark of the others minus one cooldown.
                            let watermark = match newest_p {
                                Some(n) => Some(n - lateness),
                                None => newest.values().min().map(|n| n - lateness - cooldown_ms),
                            };
                            let late = watermark.is_some_and(|w| *t < w);
                            if late {
                                prop_assert_eq!(o.kind(), OutcomeKind::Late, "behind the watermark: {}", ctx());
                            } else {
                                prop_assert!(
                                    matches!(o.kind(), OutcomeKind::NoAction | OutcomeKind::Notice | OutcomeKind::Held),
                                    "fresh, not late: {}", ctx()
                                );
                                newest.insert(input.partition, newest_p.map_or(*t, |n| n.max(*t)));
                            }
                        }
                    }
                }
            }
            if let Some(d) = o.decision() {
                prop_assert!(d.notice_id.starts_with("rn_") && d.notice_id.len() == 35, "{}", d.notice_id);
                prop_assert!(d.explanation.score >= d.explanation.threshold, "decided below the threshold: {:?}", d.explanation);
            }
            outcomes.push(p.outcome.clone());
            all_inputs.push(input);
        }
        prop_assert_eq!(tally.total(), inputs, "one outcome per input: {}", tally.summary());
        prop_assert_eq!(outcomes.len() as u64, inputs);
    }

    #[test]
    fn the_same_inputs_give_the_same_outcomes(
        steps in prop::collection::vec(arb_step(), 1..250),
        event_time in any::<bool>(),
        other_seed in any::<u64>(),
    ) {
        let calls = materialize(&steps, None);
        let mode = mode_of(event_time);
        let (a, fa) = run(&mut engine(default_policy(), 7, mode), &calls);
        let (b, fb) = run(&mut engine(default_policy(), 7, mode), &calls);
        prop_assert_eq!(&a, &b, "two fresh engines, same seed");
        prop_assert_eq!(&fa, &fb);
        // The seed keys the id hashes only: outcomes do not depend on it.
        let (c, _) = run(&mut engine(default_policy(), other_seed, mode), &calls);
        prop_assert_eq!(&a, &c, "another seed");
    }
}

// ---------------------------------------------------------------------------------------------
// Cooldown
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct CoolEv {
    acct: usize,
    /// Offset from T0 in ms.
    at: i64,
    /// 0: breached_password 1.0 (decides alone); 1: credential_stuffing; 2: impossible_travel; 3: failed_login.
    kind: usize,
    risk: f64,
    part: u32,
    tick: bool,
}

fn arb_cool_events(span_ms: i64) -> impl Strategy<Value = Vec<CoolEv>> {
    prop::collection::vec(
        (0usize..4, 0..span_ms, 0usize..4, 0.5..=1.0f64, 0u32..4, prop::bool::weighted(0.1))
            .prop_map(|(acct, at, kind, risk, part, tick)| CoolEv { acct, at, kind, risk, part, tick }),
        1..300,
    )
}

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn no_account_is_decided_twice_within_the_cooldown(
        cooldown_s in prop::sample::select(vec![30u64, 300, 1200]),
        sorted in any::<bool>(),
        event_time in any::<bool>(),
        evs in arb_cool_events(100 * MINUTE),
    ) {
        let toml = format!("version = \"cool\"\n[window]\nallowed_lateness = \"10m\"\n[decision]\ncooldown = \"{cooldown_s}s\"\n");
        let policy = Policy::from_toml(&toml).expect("valid policy");
        let mut e = engine(policy, 3, mode_of(event_time));
        let mut evs = evs;
        if sorted {
            // Roughly in order: sorted by time, so lateness only comes from partitions.
            evs.sort_by_key(|c| c.at);
        }
        let mut decisions: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
        let mut wall = T0;
        for (i, c) in evs.iter().enumerate() {
            let (signal, risk) = match c.kind {
                0 => ("breached_password", 1.0),
                1 => ("credential_stuffing", c.risk),
                2 => ("impossible_travel", c.risk),
                _ => ("failed_login", c.risk),
            };
            let t = T0 + c.at;
            wall = wall.max(t + 1_000);
            let p = e.process(&event(&format!("c{i}"), &account_name(c.acct), t, "s", signal, risk), c.part, wall);
            if let Some(d) = p.outcome.decision() {
                prop_assert_eq!(d.account_id.clone(), account_name(c.acct));
                decisions.entry(c.acct).or_default().push(p.event_ms.expect("decoded"));
            }
            if c.tick {
                e.tick(wall);
            }
        }
        for (acct, mut ts) in decisions {
            ts.sort_unstable();
            for w in ts.windows(2) {
                // The core keeps event time in whole seconds.
                let gap_s = w[1].div_euclid(1000) - w[0].div_euclid(1000);
                prop_assert!(
                    gap_s >= cooldown_s as i64,
                    "account {} decided at {} and {} ({} s apart, cooldown {} s)",
                    acct, format_ms(w[0]), format_ms(w[1]), gap_s, cooldown_s
                );
            }
        }
    }
}

fn format_ms(ms: i64) -> String {
    resetguard::core::event::format_rfc3339_ms(ms)
}

// ---------------------------------------------------------------------------------------------
// Window score
// ---------------------------------------------------------------------------------------------

/// A policy with `signals` (weight, cap), named `sig_0`, `sig_1`, ..., a `window_s` short window,
/// no slow window, a tiny threshold and a 1 s cooldown (so every in-order event decides and its
/// decision shows the score).
fn window_policy(signals: &[(f64, f64)], window_s: u64) -> Policy {
    let mut toml = format!(
        "version = \"win\"\n[window]\nlength = \"{window_s}s\"\nallowed_lateness = \"1h\"\nmax_events_per_account = 255\n\
         [slow_window]\nenabled = false\n[decision]\nthreshold = 0.0001\ncooldown = \"1s\"\n"
    );
    for (i, (w, c)) in signals.iter().enumerate() {
        toml.push_str(&format!("[signals.sig_{i}]\nweight = {w}\ncap = {c}\n"));
    }
    Policy::from_toml(&toml).expect("valid policy")
}

/// Σ over signal kinds of min(Σ weight × risk, cap), in f64, straight from the policy.
fn expected_score(signals: &[(f64, f64)], evs: &[(usize, f64)]) -> (f64, BTreeMap<usize, (u32, f64, f64)>) {
    let mut per: BTreeMap<usize, (u32, f64)> = BTreeMap::new();
    for &(s, risk) in evs {
        let e = per.entry(s).or_default();
        e.0 += 1;
        e.1 += signals[s].0 * risk;
    }
    let mut total = 0.0;
    let mut out = BTreeMap::new();
    for (s, (n, sum)) in per {
        let counted = sum.min(signals[s].1);
        total += counted;
        out.insert(s, (n, sum, counted));
    }
    (total, out)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-3 + 1e-5 * b.abs()
}

fn arb_signals() -> impl Strategy<Value = Vec<(f64, f64)>> {
    prop::collection::vec((0.05..2.0f64, 0.05..3.0f64), 1..6)
}

proptest! {
    #![proptest_config(cases(160))]

    #[test]
    fn short_score_is_the_capped_sum_per_signal_kind(
        signals in arb_signals(),
        window_s in 60u64..=3600,
        raw in prop::collection::vec((0usize..6, 0.01..=1.0f64, 0u64..1000, 0u32..1000), 1..40),
        event_time in any::<bool>(),
    ) {
        let policy = window_policy(&signals, window_s);
        let mut e = engine(policy, 11, mode_of(event_time));
        // Distinct seconds, in order, all within one window (span ≤ window - 1 s).
        let mut secs: Vec<u64> = raw.iter().map(|r| r.2 * (window_s - 1) / 999).collect();
        secs.sort_unstable();
        secs.dedup();
        let base = T0_MINUTE;
        let mut sent: Vec<(usize, f64)> = Vec::new();
        let mut ids: Vec<String> = Vec::new();
        for (k, s) in secs.iter().enumerate() {
            let (sig, risk, _, ms) = raw[k];
            let sig = sig % signals.len();
            let t = base + *s as i64 * 1000 + i64::from(ms);
            let id = format!("w{k}");
            let p = e.process(&event(&id, "acct-w", t, "s", &format!("sig_{sig}"), risk), 0, t + 500);
            sent.push((sig, risk));
            ids.push(id);
            let (want, per) = expected_score(&signals, &sent);
            let d = match p.outcome.decision() {
                Some(d) => d,
                None => return Err(TestCaseError::fail(format!("event {k} did not decide: {:?}", p.outcome))),
            };
            let x = &d.explanation;
            prop_assert_eq!(x.window.kind, WindowKind::Short);
            prop_assert!(close(f64::from(x.score), want), "score {} want {} after {:?}", x.score, want, sent);
            // The explanation agrees with the score, signal by signal.
            prop_assert_eq!(x.contributions.len(), per.len());
            for c in &x.contributions {
                let idx: usize = c.signal.trim_start_matches("sig_").parse().expect("sig_N");
                let (n, sum, counted) = per[&idx];
                prop_assert_eq!(c.count, n);
                prop_assert!(close(f64::from(c.sum), sum), "{:?} vs {}", c, sum);
                prop_assert!(close(f64::from(c.counted), counted), "{:?} vs {}", c, counted);
            }
            let tail: Vec<String> = ids[ids.len().saturating_sub(10)..].to_vec();
            prop_assert_eq!(&x.evidence, &tail, "evidence: the newest 10 ids, oldest first");
            prop_assert_eq!(x.window.start.clone(), format_ms((base / 1000 + secs[0] as i64) * 1000));
            prop_assert_eq!(x.window.end.clone(), format_ms((base / 1000 + *s as i64) * 1000));
        }
    }

    #[test]
    fn account_store_short_score_is_the_capped_sum_per_signal_kind(
        signals in arb_signals(),
        window_s in 60u64..=3600,
        raw in prop::collection::vec((0usize..6, 0.0..=1.0f64, 0u64..1000), 1..=32),
        key in any::<u64>(),
    ) {
        // Any order within one window: out-of-order events count too.
        let policy = window_policy(&signals, window_s);
        prop_assume!(raw.len() <= policy.max_events_per_account);
        let mut store = AccountStore::new(&policy);
        let base_s = (T0 / 1000) as u32;
        let mut sent = Vec::new();
        for (k, &(sig, risk, at)) in raw.iter().enumerate() {
            let sig = sig % signals.len();
            let t = base_s + (at * (window_s - 1) / 999) as u32;
            let entry = Entry { t, risk_q: quantise_risk(risk as f32), signal: sig as u8, cell: 1 };
            let scores = store.add(key, entry, &format!("a{k}"), base_s, 0);
            sent.push((sig, risk));
            let (want, _) = expected_score(&signals, &sent);
            prop_assert!(close(f64::from(scores.short), want), "score {} want {} after {:?}", scores.short, want, sent);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Breaker
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct BreakerCase {
    spike_floor: u32,
    cell_burst: u32,
    global_burst: u32,
    cell_rate: u32,
    global_rate: u32,
    global_floor: u32,
    probe_budget: u32,
    open_s: u32,
    half_open_s: u32,
    warmup: u32,
    spike_factor: f64,
    alpha: f64,
}

impl BreakerCase {
    fn toml(&self) -> String {
        format!(
            "version = \"brk\"\n[breaker]\nspike_floor = {}\ncell_burst = {}\nglobal_burst = {}\ncell_rate_per_minute = {}\n\
             global_rate_per_minute = {}\nglobal_spike_floor = {}\nprobe_budget = {}\nopen_duration = \"{}s\"\n\
             half_open_duration = \"{}s\"\nwarmup_minutes = {}\nspike_factor = {}\newma_alpha = {}\n",
            self.spike_floor,
            self.cell_burst,
            self.global_burst,
            self.cell_rate,
            self.global_rate,
            self.global_floor,
            self.probe_budget,
            self.open_s,
            self.half_open_s,
            self.warmup,
            self.spike_factor,
            self.alpha
        )
    }
}

fn arb_breaker_case() -> impl Strategy<Value = BreakerCase> {
    (
        (1u32..80, 1u32..80, 0u32..100, 1u32..600, 0u32..600, 1u32..300),
        (0u32..10, 1u32..600, 1u32..120, 0u32..20, 1.0..8.0f64, 0.01..=1.0f64),
    )
        .prop_map(
            |(
                (spike_floor, cell_burst, gb, cell_rate, gr, global_floor),
                (probe_budget, open_s, half_open_s, warmup, spike_factor, alpha),
            )| {
                BreakerCase {
                    spike_floor,
                    cell_burst,
                    global_burst: cell_burst + gb,
                    cell_rate,
                    global_rate: cell_rate + gr,
                    global_floor,
                    probe_budget,
                    open_s,
                    half_open_s,
                    warmup,
                    spike_factor,
                    alpha,
                }
            },
        )
}

/// One input of a breaker stream: at `at_ms` into the minute, a deciding event for a new account
/// from the source under test, a deciding event from another source, or a non-deciding one.
#[derive(Debug, Clone)]
struct BreakerEv {
    at_ms: i64,
    kind: u8,
    delay_ms: i64,
}

fn arb_breaker_stream() -> impl Strategy<Value = Vec<BreakerEv>> {
    prop::collection::vec(
        (0i64..60_000, prop::sample::select(vec![0u8, 0, 0, 0, 1, 2]), 0i64..2_000)
            .prop_map(|(at_ms, kind, delay_ms)| BreakerEv { at_ms, kind, delay_ms }),
        1..400,
    )
}

const SRC: &str = "risk-model-v7";

/// Runs a stream inside one minute (of the engine's clock) on a fresh engine; returns the notices
/// of `SRC` and the time span of its decisions; fails if `SRC` sends after its cell tripped.
fn run_breaker_stream(policy: Policy, stream: &mut [BreakerEv], event_time: bool) -> Result<(u32, i64), TestCaseError> {
    let mut e = engine(policy, 5, mode_of(event_time));
    // The clock is wall time in Wall mode and event time in EventTime mode: keep whichever drives
    // the breaker inside [M, M + 60 s).
    let m = T0_MINUTE + 10 * MINUTE;
    stream.sort_by_key(|b| b.at_ms);
    let mut sent = 0u32;
    let mut tripped = false;
    let (mut first, mut last) = (None, 0i64);
    for (i, b) in stream.iter().enumerate() {
        let clock = m + b.at_ms;
        let (t, wall) = if event_time { (clock, clock + b.delay_ms) } else { (clock - b.delay_ms, clock) };
        let bytes = match b.kind {
            0 => event(&format!("b{i}"), &format!("victim-{i}"), t, SRC, "breached_password", 1.0),
            1 => event(&format!("b{i}"), &format!("other-{i}"), t, "auth-service", "breached_password", 1.0),
            _ => event(&format!("b{i}"), &format!("quiet-{i}"), t, SRC, "failed_login", 0.2),
        };
        let p = e.process(&bytes, (i % 3) as u32, wall);
        if i % 7 == 0 {
            e.tick(wall);
        }
        match &p.outcome {
            Outcome::Notice(d) if d.cell == SRC => {
                prop_assert!(
                    !tripped,
                    "a notice from {} after its cell tripped in the same minute (probes while open)",
                    SRC
                );
                sent += 1;
                first.get_or_insert(clock);
                last = clock;
            }
            Outcome::Held(d, h) if d.cell == SRC => {
                first.get_or_insert(clock);
                last = clock;
                if h.cell == SRC && matches!(h.reason, HeldReason::Spike | HeldReason::BreakerOpen) {
                    tripped = true;
                }
            }
            _ => {}
        }
        if b.kind == 0 {
            prop_assert!(p.outcome.decision().is_some(), "a breached_password at risk 1 decides: {:?}", p.outcome);
        }
    }
    Ok((sent, first.map_or(0, |f| last - f)))
}

proptest! {
    #![proptest_config(cases(160))]

    #[test]
    fn a_new_source_sends_at_most_the_spike_floor_in_its_first_minute(
        mut stream in arb_breaker_stream(),
        event_time in any::<bool>(),
    ) {
        let policy = default_policy();
        let bound = policy.breaker.spike_floor.min(policy.breaker.cell_burst);
        let (sent, _) = run_breaker_stream(policy, &mut stream, event_time)?;
        prop_assert!(sent <= bound, "{} notices from a new source in one minute, bound {}", sent, bound);
    }

    #[test]
    fn a_new_source_sends_at_most_min_floor_and_burst_in_its_first_minute(
        case in arb_breaker_case(),
        mut stream in arb_breaker_stream(),
        event_time in any::<bool>(),
    ) {
        let policy = Policy::from_toml(&case.toml()).expect("valid policy");
        let (sent, span_ms) = run_breaker_stream(policy, &mut stream, event_time)?;
        // The cell's cap refills at its rate while the minute runs: burst + what refilled.
        let period_ns = 60_000_000_000u64 / u64::from(case.cell_rate);
        let refilled = (span_ms as u64 * 1_000_000 / period_ns) as u32;
        let bound = case.spike_floor.min(case.cell_burst + refilled);
        prop_assert!(sent <= bound, "{} notices in one minute, floor {} burst {} refilled {}", sent, case.spike_floor, case.cell_burst, refilled);
    }

    #[test]
    fn a_new_source_sends_at_most_min_floor_and_burst_when_the_cap_cannot_refill(
        mut case in arb_breaker_case(),
        mut stream in arb_breaker_stream(),
        event_time in any::<bool>(),
    ) {
        // One notice per minute: nothing refills within the minute, so the bound is exactly
        // min(spike_floor, cell_burst).
        case.cell_rate = 1;
        let policy = Policy::from_toml(&case.toml()).expect("valid policy");
        let (sent, _) = run_breaker_stream(policy, &mut stream, event_time)?;
        let bound = case.spike_floor.min(case.cell_burst);
        prop_assert!(sent <= bound, "{} notices in one minute, floor {} burst {}", sent, case.spike_floor, case.cell_burst);
    }
}

// ---------------------------------------------------------------------------------------------
// Directed cases found while writing the properties
// ---------------------------------------------------------------------------------------------

/// A Go detector that forgets to set the time sends `0001-01-01T00:00:00Z` (Go's zero time): a
/// valid RFC 3339 timestamp. In event-time mode the breaker's clock then starts two millennia ago,
/// and the next current event must not crash the engine.
#[test]
fn an_event_at_go_zero_time_then_a_current_one_does_not_panic() {
    for first_is_decision in [true, false] {
        let mut e = engine(default_policy(), 1, TimeMode::EventTime);
        let signal = if first_is_decision { "breached_password" } else { "new_device" };
        let zero = Ev::new("zero", "acct-z", T0, "detector-go", signal, 1.0);
        let bytes = Mutation::Ancient(0).apply(&zero, T0).bytes;
        let o = e.process(&bytes, 0, T0).outcome;
        assert_eq!(o.reject_reason(), Some(RejectReason::InvalidTimestamp), "year 0001 is rejected: {o:?}");
        e.tick(T0);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let o = e.process(&event("now", "acct-n", T0, "auth-service", "breached_password", 1.0), 0, T0).outcome;
            e.tick(T0 + 1000);
            o
        }));
        match result {
            Ok(o) => assert_eq!(o.kind(), OutcomeKind::Notice, "{o:?}"),
            Err(p) => {
                let msg =
                    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                panic!("engine panicked after a year-0001 event (first is a decision: {first_is_decision}): {msg:?}");
            }
        }
    }
}

/// The short window is a window: two signals further apart than its length never add up, even
/// when the older one arrives second (out of order, within the allowed lateness).
#[test]
fn signals_further_apart_than_the_window_do_not_add_up_when_the_older_arrives_second() {
    // allowed_lateness longer than the window (an operator raised it, as the runbook suggests).
    let policy =
        Policy::from_toml("version = \"v\"\n[window]\nlength = \"5m\"\nallowed_lateness = \"10m\"\n").expect("valid");
    let mut e = engine(policy, 1, TimeMode::EventTime);
    let newer = e.process(&event("b", "acct-x", T0 + 10 * MINUTE, "s", "credential_stuffing", 1.0), 0, LATER).outcome;
    assert_eq!(newer, Outcome::NoAction(resetguard::core::outcome::NoActionReason::BelowThreshold));
    let older = e.process(&event("a", "acct-x", T0, "s", "impossible_travel", 1.0), 0, LATER).outcome;
    assert!(
        older.decision().is_none(),
        "0.6 at T0+10m and 0.7 at T0 are 10 minutes apart, the window is 5 minutes: {}",
        short(&older)
    );

    // The same with the default policy when one account's events come from two partitions.
    let mut e = engine(default_policy(), 1, TimeMode::EventTime);
    e.process(&event("c", "acct-y", T0 + 20 * MINUTE, "s", "credential_stuffing", 1.0), 0, LATER);
    let older = e.process(&event("d", "acct-y", T0, "s", "impossible_travel", 1.0), 1, LATER).outcome;
    assert!(older.decision().is_none(), "20 minutes apart, window 15 minutes: {}", short(&older));
}

/// Past 1024 cooldown entries, `tick` prunes the ones behind the lowest watermark. An account's
/// event on a partition without a watermark (newly assigned) must still find its cooldown.
#[test]
fn cooldown_survives_ledger_pruning() {
    let mut e = engine(default_policy(), 1, TimeMode::EventTime);
    for i in 0..1100 {
        let o = e
            .process(&event(&format!("p{i}"), &format!("acct-{i}"), T0, "s", "breached_password", 1.0), 0, LATER)
            .outcome;
        assert!(o.decision().is_some(), "{o:?}");
    }
    // Partition 0 moves 25 h on; a tick at a whole minute prunes the ledger.
    let later = T0_MINUTE + 25 * 60 * MINUTE;
    e.process(&event("move", "acct-mover", later, "s", "new_device", 0.1), 0, LATER);
    e.tick(later);
    // acct-0 again, 10 s after its decision, on partition 1 (no watermark yet): within the
    // 24 h cooldown of its first decision.
    let o = e.process(&event("again", "acct-0", T0 + 10_000, "s", "breached_password", 1.0), 1, LATER).outcome;
    assert!(o.decision().is_none(), "second decision 10 s after the first: {}", short(&o));
}

/// The contract asks for a JSON object; an array in field order is not one.
#[test]
fn an_array_in_field_order_is_not_an_event() {
    let mut e = engine(default_policy(), 1, TimeMode::EventTime);
    let ev = Ev::new("arr", "acct-a", T0, "s", "breached_password", 1.0);
    let o = e.process(&Mutation::ArrayInFieldOrder.apply(&ev, LATER).bytes, 0, LATER).outcome;
    assert_eq!(o.reject_reason(), Some(RejectReason::NotAnObject), "{}", short(&o));
}

// ---------------------------------------------------------------------------------------------
// Sharded engine: the same outcomes, state and changelog as one shard
// ---------------------------------------------------------------------------------------------

/// The calls of `steps`, with every input that carries an account moved to the partition of its
/// account (inputs are keyed by account, as the sharded engine assumes), and re-sends to the
/// partition of what they re-send.
fn keyed_calls(steps: &[Step]) -> Vec<Call> {
    let mut calls = materialize(steps, None);
    let mut partitions: Vec<u32> = Vec::new();
    for c in &mut calls {
        let Call::Process(i) = c else { continue };
        let account = serde_json::from_slice::<serde_json::Value>(&i.bytes)
            .ok()
            .and_then(|v| v.get("account_id").and_then(|a| a.as_str()).map(str::to_string));
        if let Some(k) = i.resend_of {
            i.partition = partitions[k];
        } else if let Some(a) = account {
            let h = a.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            i.partition = PARTITIONS[(h % PARTITIONS.len() as u64) as usize];
        }
        partitions.push(i.partition);
    }
    calls
}

type Log = Vec<(u32, Vec<u8>, Option<Vec<u8>>)>;

/// The records of one drain, sorted; a batch record's entries as records of their own (keyed
/// `e` + account hash, the account record as version 2 writes it), since the order of accounts
/// in a batch (and so of its name tables) follows the shard's hash order.
fn drain_sorted(e: &mut Engine, log: &mut Log) -> Log {
    let mut out: Log = Vec::new();
    e.drain_changes(|p, k, v| out.push((p, k.to_vec(), v.map(<[u8]>::to_vec))));
    log.extend(out.iter().cloned());
    let mut flat: Log = Vec::new();
    for (p, k, v) in out {
        match (parse_key(&k), &v) {
            (Key::Batch(_), Some(v)) => {
                for entry in read_batch(v).entries() {
                    let (key, value) = match entry.expect("a batch this engine wrote decodes") {
                        BatchEntry::Put(key, rec) => {
                            let mut v2 = Vec::new();
                            changelog::encode(&rec.decode().expect("a record this engine wrote decodes"), 2, &mut v2);
                            (key, Some(v2))
                        }
                        BatchEntry::Gone(key) => (key, None),
                    };
                    flat.push((p, [&b"e"[..], &key.to_be_bytes()].concat(), value));
                }
            }
            _ => flat.push((p, k, v)),
        }
    }
    flat.sort();
    flat
}

proptest! {
    #![proptest_config(cases(96))]

    /// The reference (one shard, one `process` call per input) against `shards` shards judging
    /// batches side by side (`process_batch`, batches cut at random and wherever the wall clock
    /// moves): the same outcomes in the same order, the same freed counts on each tick, the same
    /// changelog records on each drain, the same state at the end; and the reference's changelog
    /// loaded into a sharded engine gives back the same state.
    #[test]
    fn a_sharded_engine_decides_exactly_like_one_shard(
        steps in prop::collection::vec(arb_step(), 1..300),
        cuts in prop::collection::vec(1usize..40, 1..20),
        shards in 2usize..5,
        event_time in any::<bool>(),
    ) {
        let calls = keyed_calls(&steps);
        let mode = mode_of(event_time);
        let mut one = engine(default_policy(), 11, mode);
        let mut many = engine(default_policy(), 11, mode).with_shards(shards).unwrap();
        prop_assert_eq!(many.shard_count(), shards);
        one.track_changes();
        many.track_changes();
        let (mut log_one, mut log_many) = (Log::new(), Log::new());

        let (mut expected, mut got) = (Vec::new(), Vec::new());
        let mut batch: Vec<(&[u8], u32)> = Vec::new();
        let mut batch_wall = 0;
        let mut cut = cuts.iter().cycle();
        let mut limit = *cut.next().unwrap();
        let flush = |many: &mut Engine, batch: &mut Vec<(&[u8], u32)>, wall: i64, got: &mut Vec<Processed>| {
            if !batch.is_empty() {
                many.process_batch(batch, wall, got);
                batch.clear();
            }
        };
        for c in &calls {
            match c {
                Call::Tick(w) => {
                    flush(&mut many, &mut batch, batch_wall, &mut got);
                    prop_assert_eq!(one.tick(*w), many.tick(*w), "accounts freed by a tick");
                    prop_assert_eq!(drain_sorted(&mut one, &mut log_one), drain_sorted(&mut many, &mut log_many));
                }
                Call::Process(i) => {
                    expected.push(one.process(&i.bytes, i.partition, i.wall_ms));
                    if i.wall_ms != batch_wall || batch.len() >= limit {
                        flush(&mut many, &mut batch, batch_wall, &mut got);
                        limit = *cut.next().unwrap();
                    }
                    batch_wall = i.wall_ms;
                    batch.push((&i.bytes, i.partition));
                }
            }
        }
        flush(&mut many, &mut batch, batch_wall, &mut got);
        prop_assert_eq!(expected.len(), got.len());
        for (n, (a, b)) in expected.iter().zip(&got).enumerate() {
            prop_assert_eq!(a, b, "outcome of input #{}", n);
        }
        prop_assert_eq!(drain_sorted(&mut one, &mut log_one), drain_sorted(&mut many, &mut log_many));
        prop_assert_eq!(one.state_dump(), many.state_dump());
        prop_assert_eq!(one.state_summary(), many.state_summary());

        let mut restored = engine(default_policy(), 11, mode).with_shards(shards).unwrap();
        for (p, k, v) in &log_one {
            restored.load_state(*p, k, v.as_deref()).unwrap();
        }
        prop_assert_eq!(restored.state_dump(), one.state_dump(), "the reference's changelog loaded into {} shards", shards);
    }
}
