//! State in the changelog topic, on Apache Kafka, with `resetguard run` as a child process.
//!
//! `an_upgrade_restores_from_the_input_once_then_from_the_changelog_with_equal_state`:
//! 1. the previous way (`pipeline.changelog = false`) processes a first batch, then stops;
//! 2. the upgraded instance finds no changelog: it rebuilds state from the input topic once and
//!    writes all of it to the changelog; its state summary is taken, then it is SIGKILLed;
//! 3. the next start restores from the changelog only (no input partition re-read: the restore
//!    counters say so), and its state digest equals the one before the kill;
//! 4. a second batch needs that state: takeovers whose first signal came before the kill are
//!    decided, accounts decided before are in cooldown, re-sent events are duplicates. Every input
//!    has exactly its expected outcome, and no notice is sent twice.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::faults::*;
use common::kafka::{unique_name, KafkaBroker};
use common::service::*;

const READY: Duration = Duration::from_secs(120);

fn summary(svc: &mut Service) -> serde_json::Value {
    let (code, body) = svc.admin("GET", "/admin/state", &serde_json::Value::Null);
    assert_eq!(code, 200, "GET /admin/state: {body}");
    serde_json::from_str(&body).unwrap()
}

fn metrics(svc: &mut Service) -> String {
    svc.get("/metrics").map(|(_, t)| t).unwrap_or_default()
}

/// Batch 1: ordinary events, the first signal of takeovers, accounts decided now.
fn first_batch() -> Vec<Input> {
    let t = now_ms() - 60_000;
    let mut v = crash_inputs(6_000);
    for k in 0..60 {
        let (a, id) = (format!("straddle-{k}"), format!("s1-{k}"));
        v.push(input(&a, ev(&id, &a, t + k, "auth-service", "credential_stuffing", 0.95), Expect::NoAction, Some(&id)));
        let (a, id) = (format!("cool-{k}"), format!("k1-{k}"));
        v.push(input(&a, ev(&id, &a, t + k, "breach-check", "breached_password", 1.0), Expect::Notice, Some(&id)));
    }
    v
}

/// Batch 2: only right if batch 1's state came back.
fn second_batch(first: &[Input]) -> Vec<Input> {
    let t = now_ms() - 30_000;
    let mut v = followups(first);
    for k in 0..60 {
        let (a, id) = (format!("straddle-{k}"), format!("s2-{k}"));
        v.push(input(&a, ev(&id, &a, t + k, "device-intel", "impossible_travel", 0.9), Expect::Notice, Some(&id)));
        let (a, id) = (format!("cool-{k}"), format!("k2-{k}"));
        v.push(input(&a, ev(&id, &a, t + k, "breach-check", "breached_password", 1.0), Expect::NoAction, Some(&id)));
    }
    v
}

#[test]
fn an_upgrade_restores_from_the_input_once_then_from_the_changelog_with_equal_state() {
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "clog");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(broker, &t, dir.path(), &unique_name("clog-txn"), NO_TRIP, &[], None);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let with_changelog = |on: bool| {
        std::fs::write(&cfg, text.replacen("[pipeline]\n", &format!("[pipeline]\nchangelog = {on}\n"), 1)).unwrap();
    };
    let log = dir.path().join("service.log");

    // 1. The previous version's way: state only from the input topic.
    with_changelog(false);
    let first = first_batch();
    let mut coords = produce(broker, &t.input, &first);
    let mut svc = Service::spawn(&cfg, &log);
    wait_committed_running(broker, &t, &mut svc, first.len() as i64, Duration::from_secs(120));
    svc.terminate_ok();

    // 2. Upgraded: no changelog yet, so the input is re-read once and the state written out.
    with_changelog(true);
    let mut svc = Service::spawn(&cfg, &log);
    svc.wait_ready(READY);
    let before = summary(&mut svc);
    let m = metrics(&mut svc);
    let from_input = metric_with(&m, "resetguard_partition_restores_total", "source=\"input\"");
    assert!(from_input >= 1.0, "the upgrade rebuilt state from the input topic:\n{m}");
    assert!(
        metric_with(&m, "resetguard_changelog_records_total", "kind=\"account\"")
            >= before["accounts"].as_f64().unwrap(),
        "every account rebuilt was written to the changelog"
    );
    let accounts = before["accounts"].as_u64().unwrap();
    assert!(accounts >= 6_000, "state of batch 1: {before}");
    assert!(before["cooldowns"].as_u64().unwrap() >= 60, "{before}");
    svc.kill();

    // 3. From the changelog only, and the same state.
    let mut svc = Service::spawn(&cfg, &log);
    svc.wait_ready(READY);
    let after = summary(&mut svc);
    assert_eq!(after, before, "the state restored from the changelog equals the state before the kill");
    let m = metrics(&mut svc);
    assert_eq!(
        metric_with(&m, "resetguard_partition_restores_total", "source=\"input\""),
        0.0,
        "no input re-read:\n{m}"
    );
    assert!(metric_with(&m, "resetguard_partition_restores_total", "source=\"changelog\"") >= 1.0, "{m}");
    assert_eq!(metric_with(&m, "resetguard_restore_records_total", "source=\"input\""), 0.0);

    // 4. A second batch that needs the restored state.
    let second = second_batch(&first);
    coords.extend(produce(broker, &t.input, &second));
    let all: Vec<Input> = first.iter().chain(&second).cloned().collect();
    wait_committed_running(broker, &t, &mut svc, all.len() as i64, Duration::from_secs(120));
    svc.terminate_ok();
    let (notices, _) = check_outputs(broker, &t, &all, &coords);
    let expected: BTreeSet<String> = all.iter().filter(|i| i.expect == Expect::Notice).map(|i| i.key.clone()).collect();
    assert_eq!(notices, expected, "takeovers across the restart decided once, cooldowns kept");
}
