//! Criterion benchmarks of the pure decision core (see BENCHMARKS.md for how to run and read them).
//!
//! Groups:
//! - `decode`: `core::event::decode` of realistic ~250-byte events, next to two baselines over the
//!   same bytes: `std::str::from_utf8` (a floor: touching the bytes once) and
//!   `serde_json::from_slice::<serde_json::Value>` (a generic JSON parse into a DOM).
//! - `rfc3339`: the timestamp parse alone (a part of `decode`).
//! - `score`: `AccountStore::add` with 1,000,000 accounts tracked.
//! - `breaker`: `Breaker::check` on a closed cell (no spike) and on an open cell.
//! - `engine`: `Engine::process`, the whole core per event, over pre-serialized events touching
//!   1,000,000 distinct accounts (and, for comparison, 10,000: a cache-resident state).
//! - `decision`: what a decision costs beyond an event. Over 10,000 fresh accounts each gets a
//!   takeover pair; `plain_event` times the pair's first event (no decision), `deciding_event`
//!   the second (the score crosses the threshold and the decision is built), `notice_record` and
//!   `held_record` the output record of that decision (`kafka::records::record_for`: JSON
//!   payload, key and headers), and `notice_json` (the payload alone).
//! - `shards`: the engine's parallel path. Events over 100,000 accounts keyed to 12 partitions,
//!   judged per event (`process`, the reference) and in bursts of 512 (`Engine::process_batch`)
//!   on 1 shard and on 2 (and on as many as the machine has cores, when more): the engine's own
//!   scaling with threads, without Kafka.
//! - `restore`: bringing one partition's state into an engine, per account (100,000 accounts of
//!   3 events each): `changelog_load` decodes their changelog records (`Engine::load_state`, what
//!   a restore read from Kafka applies, the dedupe memory filled as they load) and replays the
//!   breaker history (`Engine::after_load`). Then, outside criterion (each hand-over consumes a
//!   standby copy that takes a load to build): `standby_handover`, a warm standby's decoded copy
//!   taken over (`Engine::adopt_partition`) at 1,000 and at 100,000 accounts, the median of 5
//!   each, printed.
//! - `changelog`: the write side of the changelog. `drain_10k_*` drain 10,000 changed accounts
//!   into records of each format; `decide_500k_untracked` and `decide_500k_tracked` decide the
//!   end-to-end bench's generator pattern (100,000 accounts, five passes, bursts of 512) without
//!   and with tracking changes and draining them every 2,048 changed accounts: their ratio is
//!   what the changelog costs the deciding thread.

mod common;

/// As in the service binary (`src/main.rs`): mimalloc, not glibc malloc (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use common::{mean_len, mix, permutation, stream, Rng, T0_MS};
use resetguard::core::accounts::{quantise_risk, AccountStore, Entry};
use resetguard::core::breaker::HeldReason;
use resetguard::core::breaker::{Breaker, Verdict};
use resetguard::core::event::{decode, parse_rfc3339_ms};
use resetguard::core::outcome::{HeldInfo, Outcome};
use resetguard::core::{Engine, OutcomeKind, Policy, TimeMode};
use resetguard::kafka::records::{record_for, Origin};

/// Whether a group is selected by the command line's filter (criterion applies the filter to
/// benchmark ids itself, but the groups' setup, which builds 1 M-account states, would still run):
/// a group runs when there is no filter, or the filter names it (`engine`, `score/add_1M`, ...).
fn wanted(group: &str) -> bool {
    let mut args = std::env::args().skip(1);
    let mut filter = None;
    while let Some(a) = args.next() {
        if a.starts_with("--") {
            if !matches!(a.as_str(), "--bench" | "--test" | "--list" | "--verbose" | "--quiet" | "--noplot" | "--exact")
            {
                args.next(); // an option with a value: --measurement-time 3, ...
            }
        } else {
            filter = Some(a);
        }
    }
    let Some(f) = filter else { return true };
    let g = f.split('/').next().unwrap_or_default();
    let names = |n: &str| !g.is_empty() && (n.starts_with(g) || g.starts_with(n));
    // A filter that names no group (a regex, a bench name alone) keeps every group's setup.
    names(group)
        || !["decode", "rfc3339", "score", "breaker", "engine", "decision", "shards", "restore", "changelog"]
            .into_iter()
            .any(names)
}

const DECODE_EVENTS: usize = 10_000;
const ACCOUNTS: usize = 1_000_000;
/// Event time advances 100 µs per event (10,000 events/s): one pass over 1 M accounts is 100 s of
/// event time, so the 2nd and 3rd event of an account fall inside its 15-minute short window.
const STEP_US: i64 = 100;

fn decode_group(c: &mut Criterion) {
    if !wanted("decode") && !wanted("rfc3339") {
        return;
    }
    let policy = Policy::default_with_version("bench");
    let events = stream(DECODE_EVENTS, DECODE_EVENTS, T0_MS, STEP_US, 1);
    let now = T0_MS + 3_600_000;
    let bytes: usize = events.iter().map(Vec::len).sum();
    eprintln!("decode: {} events, mean {:.1} bytes, {} bytes total", events.len(), mean_len(&events), bytes);
    for e in &events {
        assert!(decode(e, &policy, now).is_ok(), "{}", String::from_utf8_lossy(e));
    }

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("baseline_from_utf8", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for e in &events {
                n += std::str::from_utf8(black_box(e)).map_or(0, str::len);
            }
            n
        })
    });
    g.bench_function("baseline_serde_json_value", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for e in &events {
                let v: serde_json::Value = serde_json::from_slice(black_box(e)).unwrap_or_default();
                n += v.as_object().map_or(0, |o| o.len());
            }
            n
        })
    });
    g.bench_function("decode", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for e in &events {
                if let Ok(ev) = decode(black_box(e), &policy, now) {
                    n = n.wrapping_add(ev.occurred_at_ms as u64);
                }
            }
            n
        })
    });
    g.finish();

    // The timestamp parse on its own, over the timestamps of the same events.
    let stamps: Vec<String> = events
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_slice(e).unwrap_or_default();
            v["occurred_at"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    let mut g = c.benchmark_group("rfc3339");
    g.throughput(Throughput::Elements(stamps.len() as u64));
    g.bench_function("parse_rfc3339_ms", |b| {
        b.iter(|| {
            let mut n = 0i64;
            for s in &stamps {
                n = n.wrapping_add(parse_rfc3339_ms(black_box(s)).unwrap_or(0));
            }
            n
        })
    });
    g.finish();
}

/// Pre-generated inputs of one `add` call.
struct AddInput {
    key: u64,
    entry: Entry,
    id: String,
}

fn score_group(c: &mut Criterion) {
    if !wanted("score") {
        return;
    }
    let policy = Policy::default_with_version("bench");
    let sig = |i: u64| (i % policy.signals.len() as u64) as u8;
    let t0_s = (T0_MS / 1000) as u32;
    // Account keys are uniform 64-bit hashes in production (xxh3 of the account id).
    let keys: Vec<u64> = (0..ACCOUNTS as u64).map(|i| mix(i ^ 0xacc7)).collect();

    let mut g = c.benchmark_group("score");
    g.throughput(Throughput::Elements(1));
    // Two steady states: revisits 1,000 s apart (the previous entry has left the 15 min window and
    // is evicted: about 1 entry per account), and 300 s apart (about 3 entries in the window).
    for (name, revisit_s) in [("add_1M_accounts_1_in_window", 1000u64), ("add_1M_accounts_3_in_window", 300u64)] {
        let mut store = AccountStore::new(&policy);
        let mut rng = Rng(7);
        // Step `i` visits account `perm_at(i)` at event time t0 + i × revisit_s / 1M seconds.
        let t_at = |i: u64| t0_s + (i * revisit_s / ACCOUNTS as u64) as u32;
        let make = |i: u64, rng: &mut Rng| -> AddInput {
            let mut id = String::with_capacity(36);
            common::uuid_v4(rng, &mut id);
            let u = rng.unit() as f32;
            let entry = Entry { t: 0, risk_q: quantise_risk(u * u), signal: sig(i), cell: (i % 6) as u8 + 1 };
            AddInput { key: keys[perm_at(i)], entry, id }
        };
        // Pre-populate: three passes so the store is in its steady state before measuring.
        let warm = 3 * ACCOUNTS as u64;
        for i in 0..warm {
            let inp = make(i, &mut rng);
            let t = t_at(i);
            store.add(inp.key, Entry { t, ..inp.entry }, &inp.id, t, 0);
        }
        assert_eq!(store.len(), ACCOUNTS);
        // Inputs of the measured calls, generated ahead: steps warm .. warm + 1M, then the same
        // accounts in the same order again with time moving on (a new pass).
        let inputs: Vec<AddInput> = (0..ACCOUNTS as u64).map(|k| make(warm + k, &mut rng)).collect();
        let mut step = warm;
        g.bench_function(name, |b| {
            b.iter(|| {
                let inp = &inputs[(step % ACCOUNTS as u64) as usize];
                let t = t_at(step);
                step += 1;
                store.add(black_box(inp.key), Entry { t, ..inp.entry }, &inp.id, t, 0)
            })
        });
        eprintln!(
            "score/{name}: {} accounts tracked, store heap estimate {} MB",
            store.len(),
            store.heap_bytes() >> 20
        );
    }
    g.finish();
}

/// Account number visited at step `i`: passes over a fixed permutation of all accounts.
fn perm_at(i: u64) -> usize {
    use std::sync::OnceLock;
    static PERM: OnceLock<Vec<u32>> = OnceLock::new();
    let p = PERM.get_or_init(|| permutation(ACCOUNTS, 99));
    p[(i % ACCOUNTS as u64) as usize] as usize
}

fn breaker_group(c: &mut Criterion) {
    if !wanted("breaker") {
        return;
    }
    let policy = Policy::default_with_version("bench");
    let mut g = c.benchmark_group("breaker");
    g.throughput(Throughput::Elements(1));

    // Closed, no spike, default policy: one decision every 2.5 s from one source (24/min, under
    // the 30/min spike floor and the 300/min cell cap); the breaker's minute rolls every 24 checks.
    {
        let mut br = Breaker::new(policy.breaker.clone());
        let cells: Vec<u8> = ["auth-service", "risk-model-v3", "edge-waf"].iter().map(|s| br.cell_for(s)).collect();
        let cell = cells[0];
        let mut now = T0_MS;
        g.bench_function("check_closed_default_policy", |b| {
            b.iter(|| {
                now += 2500;
                let v = br.check(black_box(cell), now);
                debug_assert_eq!(v, Verdict::Send);
                v
            })
        });
        assert!(br.drain_transitions().is_empty(), "the closed-cell bench must not trip");
    }
    // Closed, no spike, high rate: a policy with caps and floors far above the traffic, a decision
    // every millisecond (the minute rolls every 60,000 checks).
    {
        let p = Policy::from_toml(
            "version = \"bench\"\n[breaker]\nglobal_rate_per_minute = 1000000\nglobal_burst = 1000000\n\
             cell_rate_per_minute = 1000000\ncell_burst = 1000000\nspike_floor = 10000000\nglobal_spike_floor = 10000000\n",
        )
        .expect("bench policy");
        let mut br = Breaker::new(p.breaker.clone());
        let cell = br.cell_for("auth-service");
        let mut now = T0_MS;
        g.bench_function("check_closed_high_rate", |b| {
            b.iter(|| {
                now += 1;
                br.check(black_box(cell), now)
            })
        });
        assert!(br.drain_transitions().is_empty(), "the closed-cell bench must not trip");
    }
    // Open: the cell tripped on a spike (31 decisions in one minute > floor 30) and stays open for
    // 10 minutes; every check is held with `breaker_open`.
    {
        let mut br = Breaker::new(policy.breaker.clone());
        let cell = br.cell_for("buggy-detector");
        let now = T0_MS;
        for _ in 0..31 {
            br.check(cell, now);
        }
        assert!(matches!(br.check(cell, now), Verdict::Hold { .. }));
        g.bench_function("check_open_cell", |b| b.iter(|| br.check(black_box(cell), now)));
    }
    g.finish();
}

/// The engine bench policy: defaults, with the breaker's caps and floors far above the traffic so
/// every decision takes the full `Notice` path and the outcome mix stays stationary.
fn engine_policy() -> Policy {
    Policy::from_toml(
        "version = \"bench\"\n[breaker]\nglobal_rate_per_minute = 1000000\nglobal_burst = 1000000\n\
         cell_rate_per_minute = 1000000\ncell_burst = 1000000\nspike_floor = 10000000\nglobal_spike_floor = 10000000\n",
    )
    .expect("bench policy")
}

/// Live-service lag between an event's time and the wall clock passed to `process`.
const WALL_LAG_MS: i64 = 2000;

fn wall_for(i: usize, base: usize) -> i64 {
    T0_MS + ((base + i) as i64 * STEP_US) / 1000 + WALL_LAG_MS
}

fn engine_group(c: &mut Criterion) {
    if !wanted("engine") {
        return;
    }
    let policy = Arc::new(engine_policy());
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    g.sample_size(30);
    // The same per-account pattern over 1 M accounts (state ~250 MB: every event misses the CPU
    // caches) and over 10 k accounts (state ~2.5 MB: cache-resident), to tell memory stalls from
    // CPU work.
    engine_bench(&mut g, &policy, "process_1M_accounts", ACCOUNTS);
    engine_bench(&mut g, &policy, "process_10k_accounts_cache_resident", 10_000);
    g.finish();
}

fn engine_bench(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    policy: &Arc<Policy>,
    name: &str,
    accounts: usize,
) {
    // Warm-up stream: one event for each account (not timed). Measured stream: two more events
    // per account (two more permutations), event time continuing.
    let warm = stream(accounts, accounts, T0_MS, STEP_US, 11);
    let t1 = T0_MS + (accounts as i64 * STEP_US) / 1000;
    let measured = stream(2 * accounts, accounts, t1, STEP_US, 12);
    eprintln!(
        "engine/{name}: warm-up {} events, measured stream {} events, mean {:.1} bytes",
        warm.len(),
        measured.len(),
        mean_len(&measured)
    );

    let fresh = || {
        let mut e = Engine::new(policy.clone(), resetguard::core::hash::Keys::demo(), TimeMode::Wall);
        for (i, ev) in warm.iter().enumerate() {
            black_box(e.process(ev, 0, wall_for(i, 0)));
        }
        e
    };

    // Outcome mix of one full pass (printed once, for the record).
    {
        let mut e = fresh();
        let mut mix: std::collections::BTreeMap<OutcomeKind, usize> = Default::default();
        for (i, ev) in measured.iter().enumerate() {
            *mix.entry(e.process(ev, 0, wall_for(i, accounts)).outcome.kind()).or_default() += 1;
        }
        eprintln!(
            "engine/{name}: outcome mix over the measured stream: {mix:?}; tracked accounts {}",
            e.tracked_accounts()
        );
    }

    let mut engine = fresh();
    let mut cursor = 0usize;
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                if cursor == measured.len() {
                    // Stream exhausted: a fresh engine with the warm-up applied (not timed).
                    engine = fresh();
                    cursor = 0;
                }
                let n = left.min(measured.len() - cursor);
                let start = Instant::now();
                for (i, ev) in measured.iter().enumerate().skip(cursor).take(n) {
                    black_box(engine.process(black_box(ev), 0, wall_for(i, accounts)));
                }
                spent += start.elapsed();
                cursor += n;
                left -= n;
            }
            spent
        })
    });
}

const DECISION_ACCOUNTS: usize = 10_000;

/// Takeover pairs over `DECISION_ACCOUNTS` fresh accounts (`round` makes them fresh again): the
/// first event of a pair alone stays under the threshold, the second decides.
fn takeover_pairs(round: usize) -> Vec<(Vec<u8>, Vec<u8>, i64)> {
    (0..DECISION_ACCOUNTS)
        .map(|i| {
            let n = round * DECISION_ACCOUNTS + i;
            let t = T0_MS + n as i64 * 10;
            let account = format!("acct-{n:08}");
            (
                common::takeover(
                    &format!("{n:08}-aaaa-4bbb-8ccc-dddddddddd01"),
                    &account,
                    t,
                    "credential_stuffing",
                    0.95,
                ),
                common::takeover(
                    &format!("{n:08}-aaaa-4bbb-8ccc-dddddddddd02"),
                    &account,
                    t + 5,
                    "impossible_travel",
                    0.9,
                ),
                t + 5 + WALL_LAG_MS,
            )
        })
        .collect()
}

fn decision_group(c: &mut Criterion) {
    if !wanted("decision") {
        return;
    }
    let policy = Arc::new(engine_policy());
    let fresh = || Engine::new(policy.clone(), resetguard::core::hash::Keys::demo(), TimeMode::Wall);
    // Rounds of fresh accounts, made once (not timed); the engine is renewed after the last.
    let rounds: Vec<_> = (0..8).map(takeover_pairs).collect();
    let decision = {
        let mut e = fresh();
        let mut notices = 0;
        let mut last = None;
        for (a, b, wall) in &rounds[0] {
            assert_eq!(e.process(a, 0, *wall).outcome.kind(), OutcomeKind::NoAction);
            let out = e.process(b, 0, *wall).outcome;
            notices += usize::from(out.kind() == OutcomeKind::Notice);
            last = Some(out);
        }
        assert_eq!(notices, DECISION_ACCOUNTS, "every pair's second event decides");
        last.and_then(|o| o.decision().cloned()).expect("a decision")
    };
    let mut g = c.benchmark_group("decision");
    g.throughput(Throughput::Elements(1));
    g.sample_size(30);
    // `timed_second`: which event of each pair is timed (the other is processed untimed, so the
    // state is the same in both).
    for (name, timed_second) in [("plain_event", false), ("deciding_event", true)] {
        let mut engine = fresh();
        let (mut round, mut cursor) = (0usize, 0usize);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    if cursor == DECISION_ACCOUNTS {
                        round = (round + 1) % rounds.len();
                        cursor = 0;
                        if round == 0 {
                            engine = fresh();
                        }
                    }
                    let (a, b, wall) = &rounds[round][cursor];
                    cursor += 1;
                    if timed_second {
                        black_box(engine.process(a, 0, *wall));
                        let start = Instant::now();
                        black_box(engine.process(black_box(b), 0, *wall));
                        spent += start.elapsed();
                    } else {
                        let start = Instant::now();
                        black_box(engine.process(black_box(a), 0, *wall));
                        spent += start.elapsed();
                        black_box(engine.process(b, 0, *wall));
                    }
                }
                spent
            })
        });
    }
    let topics = resetguard::config::TopicsFile::default();
    let origin = Origin { topic: "login-risk-events", partition: 0, offset: 0, key: None, payload: b"" };
    let notice = Outcome::Notice(Box::new(decision.clone()));
    let held = Outcome::Held(
        Box::new(decision),
        HeldInfo {
            reason: HeldReason::BreakerOpen,
            cell: "device-intel".into(),
            held_at: "2026-11-26T10:00:00.000Z".into(),
        },
    );
    for (name, outcome) in [("notice_record", &notice), ("held_record", &held)] {
        g.bench_function(name, |b| {
            b.iter(|| record_for(black_box(outcome), &origin, &topics, resetguard::core::policy::Mode::Live, 1 << 20))
        });
    }
    // The notice payload alone.
    let d = notice.decision().expect("a decision");
    g.bench_function("notice_json", |b| b.iter(|| black_box(d).notice_json()));
    g.finish();
}

const SHARD_ACCOUNTS: usize = 100_000;
const SHARD_PARTITIONS: u64 = 12;
const BURST: usize = 512;

fn shards_group(c: &mut Criterion) {
    if !wanted("shards") {
        return;
    }
    let policy = Arc::new(engine_policy());
    let warm = stream(SHARD_ACCOUNTS, SHARD_ACCOUNTS, T0_MS, STEP_US, 21);
    let t1 = T0_MS + (SHARD_ACCOUNTS as i64 * STEP_US) / 1000;
    let measured = stream(2 * SHARD_ACCOUNTS, SHARD_ACCOUNTS, t1, STEP_US, 22);
    // Each event on the partition of its account (inputs are keyed by account).
    let keyed = |events: &[Vec<u8>]| -> Vec<u32> {
        events
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_slice(e).expect("bench event");
                let a = v["account_id"].as_str().expect("account_id");
                (xxhash_rust::xxh3::xxh3_64(a.as_bytes()) % SHARD_PARTITIONS) as u32
            })
            .collect()
    };
    let (warm_p, measured_p) = (keyed(&warm), keyed(&measured));
    let fresh = |shards: usize| {
        let mut e = Engine::new(policy.clone(), resetguard::core::hash::Keys::demo(), TimeMode::Wall)
            .with_shards(shards)
            .expect("shard threads");
        let mut out = Vec::new();
        for (i, chunk) in warm.chunks(BURST).enumerate() {
            let batch: Vec<(&[u8], u32)> = chunk.iter().zip(&warm_p[i * BURST..]).map(|(b, &p)| (&b[..], p)).collect();
            out.clear();
            e.process_batch(&batch, wall_for(i * BURST + chunk.len(), 0), &mut out);
        }
        e
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut variants: Vec<(String, usize, bool)> = vec![("process_1_shard".into(), 1, false)];
    for n in [1, 2, cores] {
        if !variants.iter().any(|v| v.2 && v.1 == n) {
            variants.push((format!("batch_{n}_shard{}", if n == 1 { "" } else { "s" }), n, true));
        }
    }
    eprintln!("shards: {} accounts, {} partitions, bursts of {BURST}, {cores} cores", SHARD_ACCOUNTS, SHARD_PARTITIONS);
    let mut g = c.benchmark_group("shards");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    for (name, shards, batched) in variants {
        let mut engine = fresh(shards);
        let mut cursor = 0usize;
        let mut out = Vec::with_capacity(BURST);
        g.bench_function(&name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    if cursor == measured.len() {
                        engine = fresh(shards);
                        cursor = 0;
                    }
                    let n = left.min(measured.len() - cursor).min(BURST);
                    let wall = wall_for(cursor + n, SHARD_ACCOUNTS);
                    let batch: Vec<(&[u8], u32)> = measured[cursor..cursor + n]
                        .iter()
                        .zip(&measured_p[cursor..])
                        .map(|(b, &p)| (&b[..], p))
                        .collect();
                    out.clear();
                    let start = Instant::now();
                    if batched {
                        engine.process_batch(black_box(&batch), wall, &mut out);
                    } else {
                        for &(bytes, p) in &batch {
                            out.push(engine.process(black_box(bytes), p, wall));
                        }
                    }
                    spent += start.elapsed();
                    black_box(&out);
                    cursor += n;
                    left -= n;
                }
                spent
            })
        });
    }
    g.finish();
}

const RESTORE_ACCOUNTS: usize = 100_000;

fn restore_group(c: &mut Criterion) {
    if !wanted("restore") {
        return;
    }
    let policy = Arc::new(Policy::default_with_version("bench"));
    let keys = resetguard::core::hash::Keys::demo();
    // One partition's changelog of `accounts` accounts: 3 events each, drained once (batch
    // records, the default format).
    let changelog = |accounts: usize| {
        let mut live = Engine::new(policy.clone(), keys.clone(), TimeMode::Wall);
        live.track_changes();
        let events = stream(3 * accounts, accounts, T0_MS, STEP_US, 7);
        let wall = T0_MS + 3 * accounts as i64 * STEP_US / 1000 + 1_000;
        for e in &events {
            live.process(e, 0, wall);
        }
        let mut log: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        live.drain_changes(|_, k, v| log.push((k.to_vec(), v.map(<[u8]>::to_vec))));
        log
    };
    let log = changelog(RESTORE_ACCOUNTS);
    let events = stream(3 * RESTORE_ACCOUNTS, RESTORE_ACCOUNTS, T0_MS, STEP_US, 7);
    let wall = T0_MS + 3 * RESTORE_ACCOUNTS as i64 * STEP_US / 1000 + 1_000;
    let standby = |records: &[(Vec<u8>, Option<Vec<u8>>)]| {
        let mut s = Engine::standby(&policy, keys.clone());
        for (k, v) in records {
            s.load_state(0, k, v.as_deref()).unwrap();
        }
        s
    };
    eprintln!("restore: {} accounts, {} changelog records", RESTORE_ACCOUNTS, log.len());
    let mut g = c.benchmark_group("restore");
    g.throughput(Throughput::Elements(RESTORE_ACCOUNTS as u64));
    g.sample_size(10);
    g.bench_function("changelog_load", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let mut e = Engine::new(policy.clone(), keys.clone(), TimeMode::Wall);
                let start = Instant::now();
                for (k, v) in &log {
                    e.load_state(0, black_box(k), v.as_deref()).unwrap();
                }
                e.after_load(&[0]);
                spent += start.elapsed();
                assert_eq!(e.tracked_accounts(), RESTORE_ACCOUNTS);
            }
            spent
        })
    });
    g.finish();
    for accounts in [1_000, RESTORE_ACCOUNTS] {
        let small = if accounts < RESTORE_ACCOUNTS { Some(changelog(accounts)) } else { None };
        let records = small.as_deref().unwrap_or(&log);
        let mut times: Vec<Duration> = (0..5)
            .map(|_| {
                let (copy, mut e) = (standby(records), Engine::new(policy.clone(), keys.clone(), TimeMode::Wall));
                // The live engine already holds another partition's accounts, as at a failover.
                for ev in &events {
                    e.process(ev, 1, wall);
                }
                let before = e.tracked_accounts();
                let start = Instant::now();
                let adopted = e.adopt_partition(black_box(copy), 0);
                e.after_load(&[0]);
                let spent = start.elapsed();
                assert_eq!(e.tracked_accounts(), before + accounts);
                assert!(adopted as usize >= accounts, "accounts and cooldowns: {adopted}");
                spent
            })
            .collect();
        times.sort();
        eprintln!("restore/standby_handover: {accounts} accounts: median {:?} of 5", times[2]);
    }
}

/// The changelog's write side: draining 10,000 changed accounts (3 events each) into records,
/// as batch records with name tables (format 4, the default), without (format 3) and as one
/// record per account (format 2). Prints the bytes each format writes per account.
fn changelog_group(c: &mut Criterion) {
    if !wanted("changelog") {
        return;
    }
    const ACCOUNTS: usize = 10_000;
    let policy = Arc::new(Policy::default_with_version("bench"));
    let keys = resetguard::core::hash::Keys::demo();
    let events = stream(3 * ACCOUNTS, ACCOUNTS, T0_MS, STEP_US, 11);
    let wall = T0_MS + 3 * ACCOUNTS as i64 * STEP_US / 1000 + 1_000;
    let mut g = c.benchmark_group("changelog");
    g.throughput(Throughput::Elements(ACCOUNTS as u64));
    g.sample_size(20);
    let formats = [("drain_10k_named_batches", 4u8), ("drain_10k_batches", 3), ("drain_10k_per_account", 2)];
    // An engine of `format` whose 10,000 accounts changed since its last drain.
    let changed = |format: u8| {
        let mut e = Engine::new(policy.clone(), keys.clone(), TimeMode::Wall);
        e.track_changes_as(format);
        for ev in &events {
            e.process(ev, 0, wall);
        }
        e
    };
    // The drain's bytes (keys and values).
    let drain = |e: &mut Engine| {
        let mut bytes = 0usize;
        e.drain_changes(|_, k, v| bytes += k.len() + v.map_or(0, <[u8]>::len));
        bytes
    };
    for (_, format) in formats {
        let bytes = drain(&mut changed(format));
        eprintln!("changelog format {format}: {:.1} bytes per account", bytes as f64 / ACCOUNTS as f64);
    }
    for (name, format) in formats {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let mut e = changed(format);
                    let start = Instant::now();
                    black_box(drain(&mut e));
                    spent += start.elapsed();
                }
                spent
            })
        });
    }
    g.finish();
    tracking_cost(c, &policy, &keys);
}

/// What the changelog costs the deciding thread per event: the generator's pattern of the
/// end-to-end bench (100,000 accounts, each visited once per pass in a new order, five passes,
/// 6 partitions, bursts of 512 through `process_batch`) decided without tracking changes
/// (`pipeline.changelog = false`), and with tracking and a drain whenever 2,048 accounts
/// changed (the default `changelog_flush_accounts`), as the pipeline does. The ratio of the two
/// is the pipeline thread's share of the changelog's cost (BENCHMARKS.md, "Changelog cost").
fn tracking_cost(c: &mut Criterion, policy: &Arc<Policy>, keys: &resetguard::core::hash::Keys) {
    const ACCOUNTS: usize = 100_000;
    const EVENTS: usize = 5 * ACCOUNTS;
    const BURST: usize = 512;
    const FLUSH_AT: usize = 2048;
    let events = stream(EVENTS, ACCOUNTS, T0_MS, 2, 21);
    let partition = |i: usize| (common::mix(i as u64) % 6) as u32;
    let wall = T0_MS + (EVENTS as i64 * 2) / 1000 + 2_000;
    let run = |track: bool| {
        let mut e = Engine::new(policy.clone(), keys.clone(), TimeMode::Wall);
        if track {
            e.track_changes();
        }
        let mut out = Vec::with_capacity(BURST);
        let mut bytes = 0usize;
        let start = Instant::now();
        for (b, chunk) in events.chunks(BURST).enumerate() {
            let batch: Vec<(&[u8], u32)> =
                chunk.iter().enumerate().map(|(i, ev)| (&ev[..], partition(b * BURST + i))).collect();
            out.clear();
            e.process_batch(&batch, wall, &mut out);
            black_box(&out);
            if track && e.pending_changes() >= FLUSH_AT {
                e.drain_changes(|_, k, v| bytes += k.len() + v.map_or(0, <[u8]>::len));
            }
        }
        if track {
            e.drain_changes(|_, k, v| bytes += k.len() + v.map_or(0, <[u8]>::len));
        }
        (start.elapsed(), bytes)
    };
    let mut g = c.benchmark_group("changelog");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.sample_size(10);
    for (name, track) in [("decide_500k_untracked", false), ("decide_500k_tracked", true)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| run(track).0).sum());
        });
    }
    let (_, bytes) = run(true);
    eprintln!("changelog/decide_500k_tracked: {:.1} changelog bytes per event", bytes as f64 / EVENTS as f64);
    g.finish();
}

criterion_group!(
    benches,
    changelog_group,
    decode_group,
    score_group,
    breaker_group,
    engine_group,
    decision_group,
    shards_group,
    restore_group
);

criterion_main!(benches);
