//! Measures the engine's state per tracked account at 1,000,000 accounts (target: ≤ 160 bytes).
//!
//! A counting global allocator wraps `System` and keeps the live bytes *requested* (sizes passed to
//! alloc/dealloc/realloc; malloc's own per-chunk overhead is not included, see the RSS line). The
//! engine is built and fed one event for each of 1 M distinct accounts (and, in a second run, three
//! events per account); the outcomes are dropped as they come, the events are generated on the fly
//! and freed, so what stays live afterwards is the engine's state.
//!
//! Run: `cargo bench --bench state_memory` (harness = false: a plain `main`).

// A `GlobalAlloc` impl is `unsafe` by definition. The crate's lint level for `unsafe_code` is
// `deny` (not `forbid`) so that this one measurement binary can allow it; the library itself
// contains no unsafe code.
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use common::{stream_iter, T0_MS};
use resetguard::core::accounts::{quantise_risk, AccountStore, Entry};
use resetguard::core::dedupe::Dedupe;
use resetguard::core::hash::id_hash;
use resetguard::core::{Engine, OutcomeKind, Policy, TimeMode};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
            let now = LIVE.fetch_add(new_size, Relaxed) + new_size;
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> usize {
    LIVE.load(Relaxed)
}

fn rss_kb() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

const ACCOUNTS: usize = 1_000_000;
const STEP_US: i64 = 100;
const SEED: u64 = 0x5eed;
const ACCOUNT_SALT: u64 = 0x6163_636f_756e_7421;

fn run(events_per_account: usize) {
    let policy = Arc::new(Policy::default_with_version("bench"));
    let n = ACCOUNTS * events_per_account;

    // 1. The whole engine.
    let before = live();
    let rss_before = rss_kb();
    let mut engine =
        Engine::new(policy.clone(), resetguard::core::hash::Keys::demo().with_id_seed(SEED), TimeMode::Wall);
    let mut mix: std::collections::BTreeMap<OutcomeKind, usize> = Default::default();
    let mut dedupe_inserts = 0usize;
    for (i, ev) in stream_iter(n, ACCOUNTS, T0_MS, STEP_US, 21).enumerate() {
        let wall = T0_MS + (i as i64 * STEP_US) / 1000 + 2000;
        let kind = engine.process(&ev, 0, wall).outcome.kind();
        if !matches!(kind, OutcomeKind::Rejected | OutcomeKind::Duplicate) {
            dedupe_inserts += 1;
        }
        *mix.entry(kind).or_default() += 1;
    }
    let engine_bytes = live() - before;
    let rss_delta_kb = rss_kb().saturating_sub(rss_before);
    let tracked = engine.tracked_accounts();
    let estimate = engine.state_bytes();

    // 2. The dedupe set alone, with the same number of inserts (its size depends only on the count).
    let before = live();
    let mut dedupe = Dedupe::new(policy.dedupe_horizon.as_millis() as i64, policy.dedupe_max_entries);
    for i in 0..dedupe_inserts {
        dedupe.seen_or_insert(id_hash(SEED, &format!("e{i}")), T0_MS);
    }
    let dedupe_bytes = live() - before;
    drop(dedupe);

    // 3. The account store alone (cross-check of the per-account part), same keys and timing.
    let before = live();
    let mut store = AccountStore::new(&policy);
    let mut id = String::new();
    for (i, ev) in stream_iter(n, ACCOUNTS, T0_MS, STEP_US, 21).enumerate() {
        let v: serde_json::Value = serde_json::from_slice(&ev).unwrap_or_default();
        let acct = v["account_id"].as_str().unwrap_or_default();
        id.clear();
        id.push_str(v["event_id"].as_str().unwrap_or_default());
        let t = ((T0_MS + (i as i64 * STEP_US) / 1000) / 1000) as u32;
        let risk = v["risk"].as_f64().unwrap_or(0.0) as f32;
        store.add(
            id_hash(SEED ^ ACCOUNT_SALT, acct),
            Entry { t, risk_q: quantise_risk(risk), signal: 0, cell: 1 },
            &id,
            t,
            0,
        );
    }
    let store_bytes = live() - before;
    let store_estimate = store.heap_bytes();
    drop(store);

    let per = |b: usize| b as f64 / tracked as f64;
    println!("== {events_per_account} event(s) per account: {n} events, {tracked} tracked accounts");
    println!("   outcomes: {mix:?}");
    println!(
        "   engine heap (measured, live bytes requested): {:>11} B = {:>6.1} B/account",
        engine_bytes,
        per(engine_bytes)
    );
    println!(
        "   dedupe set ({} ids, measured alone):         {:>11} B = {:>6.1} B/account ({:.1} B/event)",
        dedupe_inserts,
        dedupe_bytes,
        per(dedupe_bytes),
        dedupe_bytes as f64 / dedupe_inserts as f64
    );
    let without = engine_bytes.saturating_sub(dedupe_bytes);
    println!("   engine heap minus dedupe:                    {:>11} B = {:>6.1} B/account", without, per(without));
    println!(
        "   AccountStore alone (measured):               {:>11} B = {:>6.1} B/account",
        store_bytes,
        per(store_bytes)
    );
    println!(
        "   AccountStore::heap_bytes() estimate:         {:>11} B = {:>6.1} B/account",
        store_estimate,
        per(store_estimate)
    );
    println!(
        "   Engine::state_bytes() estimate:              {:>11} B = {:>6.1} B/account ({:+.1}% vs measured)",
        estimate,
        per(estimate),
        (estimate as f64 / engine_bytes as f64 - 1.0) * 100.0
    );
    println!(
        "   RSS growth while feeding (incl. malloc overhead): {:>7} KiB = {:>6.1} B/account",
        rss_delta_kb,
        per(rss_delta_kb * 1024)
    );
    println!("   slot size: {} B (AccountStore::slot_size)", AccountStore::slot_size());
    drop(engine);
}

fn main() {
    // Each variant runs in its own process so the RSS figure starts from a clean heap. `cargo
    // bench` passes `--bench`; a variant is selected with `--events-per-account N`.
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--events-per-account") {
        let k: usize = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(1);
        run(k);
        println!("   peak live bytes during the run: {} MB", PEAK.load(Relaxed) >> 20);
        return;
    }
    let exe = std::env::current_exe().expect("current exe");
    for k in [1, 3] {
        let status =
            std::process::Command::new(&exe).args(["--events-per-account", &k.to_string()]).status().expect("spawn");
        assert!(status.success());
    }
}
