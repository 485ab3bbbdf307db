//! State in the changelog topic, on Apache Kafka, with `resetguard run` as a child process.
//! (The warm standby's test, `a_warm_standby_takes_over_...`, is described at its function.)
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
use common::kafka::{unique_name, Isolation, KafkaBroker, Record};
use common::service::*;
use resetguard::core::changelog::{parse_key, read_batch, BatchEntry, Key};

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
    let coords = produce(broker, &t.input, &first);
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
        metric_sum(&m, "resetguard_changelog_account_states_total").unwrap_or(0.0)
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
    decide_second_batch(broker, &t, svc, &first, coords, "takeovers across the restart decided once, cooldowns kept");
}

/// An upgrade in place from one changelog record per account (record format 2, what versions
/// before 2026-12-02 wrote) to batch records (format 3), then to batches with name tables
/// (format 4, the default):
/// 1. format 2 decides batch 1: the changelog holds account records, no batch;
/// 2. restarted on format 3: it restores the same state from those records;
/// 3. SIGKILLed and restarted: the same state again;
/// 4. a second batch that needs the restored state decides exactly as expected, writing batches
///    (and tombstones for the records of the accounts it changes);
/// 5. restarted on format 4: the same state from both kinds of records.
#[test]
fn an_upgrade_from_one_record_per_account_to_batches_keeps_the_state() {
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "clog-fmt");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(broker, &t, dir.path(), &unique_name("clog-fmt-txn"), NO_TRIP, &[], None);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let format = |v: u8| {
        let text = text.replacen("[pipeline]\n", &format!("[pipeline]\nchangelog_record_version = {v}\n"), 1);
        std::fs::write(&cfg, text).unwrap();
    };
    let log = dir.path().join("service.log");

    format(2);
    let first = first_batch();
    let coords = produce(broker, &t.input, &first);
    let mut svc = Service::spawn(&cfg, &log);
    wait_committed_running(broker, &t, &mut svc, first.len() as i64, Duration::from_secs(120));
    let before = summary(&mut svc);
    let m = metrics(&mut svc);
    let accounts = before["accounts"].as_f64().unwrap();
    assert!(accounts >= 6_000.0, "state of batch 1: {before}");
    assert!(metric_with(&m, "resetguard_changelog_records_total", "kind=\"account\"") >= accounts, "{m}");
    assert_eq!(metric_with(&m, "resetguard_changelog_records_total", "kind=\"batch\""), 0.0, "{m}");
    svc.terminate_ok();

    format(3);
    let mut svc = Service::spawn(&cfg, &log);
    svc.wait_ready(READY);
    assert_eq!(summary(&mut svc), before, "format 3 restores what format 2 wrote");
    let m = metrics(&mut svc);
    assert!(metric_with(&m, "resetguard_partition_restores_total", "source=\"changelog\"") >= 1.0, "{m}");
    svc.kill();
    let mut svc = Service::spawn(&cfg, &log);
    svc.wait_ready(READY);
    assert_eq!(summary(&mut svc), before, "and again after a SIGKILL");
    decide_second_batch(broker, &t, svc, &first, coords, "decided once across the format change, cooldowns kept");
    // Batch 2 was written in batches, and a restore of both formats together still decides it
    // as it was decided: no notice again.
    let mut svc = Service::spawn(&cfg, &log);
    svc.wait_ready(READY);
    let m = metrics(&mut svc);
    assert_eq!(metric_with(&m, "resetguard_changelog_records_total", "kind=\"account\""), 0.0, "{m}");
    let after = summary(&mut svc);
    assert!(after["accounts"].as_f64().unwrap() >= accounts, "{after}");
    svc.terminate_ok();
    format(4);
    let mut svc = Service::spawn(&cfg, &log);
    svc.wait_ready(READY);
    assert_eq!(summary(&mut svc), after, "format 4 restores what formats 2 and 3 wrote");
    svc.terminate_ok();
}

/// A changelog topic that refuses records as large as resetguard's batches (`max.message.bytes`
/// of 4 KiB, set by hand, with the producer's `batch.size` below it, or librdkafka's own
/// batching of several records would exceed it whatever their size): the refused record is a
/// changelog batch, so the transaction is redone with smaller batches until they fit, instead
/// of stopping the service (a record that can never be produced). The state that then commits restores exactly after a SIGKILL, and
/// the second batch decides as expected.
#[test]
fn a_changelog_topic_with_a_small_record_limit_gets_smaller_batches() {
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "clog-small");
    let changelog = format!("{}-changelog", t.shadow);
    broker.create_topic_with_config(
        &changelog,
        PARTITIONS,
        &[("cleanup.policy", "compact"), ("max.message.bytes", "4096")],
    );
    let dir = tempfile::tempdir().unwrap();
    // Uncompressed, so that the limit applies to the batch's own bytes.
    let plain = [("compression.type", "none"), ("batch.size", "3000")];
    let cfg = write_config(broker, &t, dir.path(), &unique_name("clog-small-txn"), NO_TRIP, &plain, None);
    let log = dir.path().join("service.log");
    let first = first_batch();
    let coords = produce(broker, &t.input, &first);
    let mut svc = Service::spawn(&cfg, &log);
    wait_committed_running(broker, &t, &mut svc, first.len() as i64, Duration::from_secs(120));
    let before = summary(&mut svc);
    assert!(before["accounts"].as_u64().unwrap() >= 6_000, "{before}");
    let records: Vec<Record> = broker.read_all_committed(&changelog, Duration::from_secs(30));
    let largest = records.iter().filter_map(|r| r.payload.as_ref()).map(Vec::len).max().unwrap_or(0);
    let text = std::fs::read_to_string(&log).unwrap();
    let refused = text.matches("writing smaller ones").count();
    assert!(refused >= 1, "the refused batch was noticed (largest {largest} B):\n{text}");
    assert!(largest <= 4096, "batches were cut smaller: largest {largest} B after {refused} refusals");
    let batches = records.iter().filter(|r| r.key.as_deref().is_some_and(|k| matches!(parse_key(k), Key::Batch(_))));
    assert!(batches.count() > 3, "several batches per partition");
    svc.kill();
    let mut svc = Service::spawn(&cfg, &log);
    svc.wait_ready(READY);
    assert_eq!(summary(&mut svc), before, "the state the smaller batches hold");
    decide_second_batch(broker, &t, svc, &first, coords, "decided once, with smaller batches");
}

/// Produces [`second_batch`] for `svc` (whose state came back from batch 1), stops it, and checks
/// every input's outcome and that the notices are exactly the expected ones (`what` says why).
fn decide_second_batch(
    broker: &KafkaBroker,
    t: &Topics,
    mut svc: Service,
    first: &[Input],
    mut coords: Vec<(i32, i64)>,
    what: &str,
) {
    let second = second_batch(first);
    coords.extend(produce(broker, &t.input, &second));
    let all: Vec<Input> = first.iter().chain(&second).cloned().collect();
    wait_committed_running(broker, t, &mut svc, all.len() as i64, Duration::from_secs(120));
    svc.terminate_ok();
    let (notices, _) = check_outputs(broker, t, &all, &coords);
    let expected: BTreeSet<String> = all.iter().filter(|i| i.expect == Expect::Notice).map(|i| i.key.clone()).collect();
    assert_eq!(notices, expected, "{what}");
}

/// Waits until `svc`'s warm standby holds records and has not changed for a second (it has read
/// the changelog written so far).
fn wait_standby_settled(svc: &mut Service) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = -1.0;
    loop {
        let text = metrics(svc);
        let now = text
            .lines()
            .find_map(|l| l.strip_prefix("resetguard_standby_records "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if now > 0.0 && now == last {
            return now;
        }
        assert!(std::time::Instant::now() < deadline, "the standby did not settle (at {now} records)");
        last = now;
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `pipeline.standby = true` on two instances of a group:
/// 1. both decide a batch, each on its share of the partitions, and each standby follows the
///    changelog partitions its instance does not own (B's `resetguard_standby_records` gauge
///    settles at exactly A's accounts);
/// 2. one instance is SIGKILLed: the other takes its partitions and restores them from its standby
///    copy in memory (`source="standby"`), reading only what the copy lacked from Kafka;
/// 3. its state then covers every partition with exactly the accounts and cooldowns both had;
/// 4. A comes back and takes a share again: B's standby reads those partitions again from the
///    beginning (it had handed their copy over), and when A dies once more B restores them from
///    that copy, with the same state as before;
/// 5. stopped, and replaced by an instance without a standby that reads the whole changelog: the
///    two states have the same digest (a restore from the standby equals one from the changelog);
/// 6. a second batch that needs the restored state decides exactly as expected, no notice twice.
#[test]
fn a_warm_standby_takes_over_from_memory_with_the_state_the_changelog_holds() {
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "standby");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg_a = write_config(broker, &t, dir_a.path(), &unique_name("sb-a"), NO_TRIP, &[], None);
    let cfg_b = write_config(broker, &t, dir_b.path(), &unique_name("sb-b"), NO_TRIP, &[], None);
    let plain = std::fs::read_to_string(&cfg_b).unwrap();
    set_pipeline(&cfg_a, "standby = true");
    set_pipeline(&cfg_b, "standby = true");
    let (log_a, log_b) = (dir_a.path().join("service.log"), dir_b.path().join("service.log"));

    // 1. Two instances, a batch, and standbys that follow the other's partitions.
    let mut a = Service::spawn(&cfg_a, &log_a);
    let mut b = Service::spawn(&cfg_b, &log_b);
    a.wait_ready(READY);
    b.wait_ready(READY);
    let first = first_batch();
    let coords = produce(broker, &t.input, &first);
    wait_committed_running(broker, &t, &mut a, first.len() as i64, Duration::from_secs(120));
    b.assert_running("while the first batch was decided");
    let (sa, sb) = (summary(&mut a), summary(&mut b));
    let owned = |s: &serde_json::Value| s["partitions"].as_array().unwrap().len();
    assert!(owned(&sa) >= 1 && owned(&sb) >= 1, "both instances own partitions: {sa} / {sb}");
    let held_b = wait_standby_settled(&mut b);
    assert_eq!(held_b, sa["accounts"].as_f64().unwrap(), "B's standby holds A's accounts, not its own ({sb})");

    // 2. A dies; B restores A's partitions from its standby copy.
    a.kill();
    let all_partitions = owned(&sa) + owned(&sb);
    let take_over = |b: &mut Service| {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let s = summary(b);
            if owned(&s) == all_partitions {
                break s;
            }
            assert!(std::time::Instant::now() < deadline, "B did not take over A's partitions: {s}");
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let after = take_over(&mut b);
    let m = metrics(&mut b);
    assert!(metric_with(&m, "resetguard_partition_restores_total", "source=\"standby\"") >= owned(&sa) as f64, "{m}");
    let from_copy = metric_with(&m, "resetguard_restore_records_total", "source=\"standby\"");
    let from_kafka = metric_with(&m, "resetguard_restore_records_total", "source=\"changelog\"");
    assert!(from_copy >= sa["accounts"].as_f64().unwrap(), "A's accounts came from the copy: {from_copy}");
    assert!(from_kafka < from_copy, "only the tail was read from Kafka: {from_kafka} against {from_copy}");
    assert_eq!(metric_with(&m, "resetguard_partition_restores_total", "source=\"input\""), 0.0);

    // 3. Exactly the state both had.
    for k in ["accounts", "cooldowns"] {
        assert_eq!(after[k].as_u64(), Some(sa[k].as_u64().unwrap() + sb[k].as_u64().unwrap()), "{k}: {after}");
    }

    // 4. A again: B gives partitions back, follows them again, and takes them back from memory.
    let mut a = Service::spawn(&cfg_a, &log_a);
    a.wait_ready(READY);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let sa = loop {
        let s = summary(&mut a);
        if owned(&s) >= 1 && owned(&summary(&mut b)) + owned(&s) == all_partitions {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "A did not get a share back: {s}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let held_b = wait_standby_settled(&mut b);
    assert_eq!(held_b, sa["accounts"].as_f64().unwrap(), "B's standby read A's new share again: {sa}");
    let from_standby =
        |b: &mut Service| metric_with(&metrics(b), "resetguard_partition_restores_total", "source=\"standby\"");
    let restores_before = from_standby(&mut b);
    a.kill();
    let again = take_over(&mut b);
    assert!(from_standby(&mut b) >= restores_before + owned(&sa) as f64, "A's new share came from B's standby");
    assert_eq!(again, after, "the same state after the second failover");

    // 5. The same state as a restore from the whole changelog.
    b.terminate_ok();
    std::fs::write(&cfg_b, &plain).unwrap();
    let mut c = Service::spawn(&cfg_b, &log_b);
    c.wait_ready(READY);
    let from_log = summary(&mut c);
    assert_eq!(from_log, after, "restored from the standby copy = restored from the changelog");
    assert_eq!(metric_with(&metrics(&mut c), "resetguard_restore_records_total", "source=\"standby\""), 0.0);

    // 6. Decisions that need the restored state.
    decide_second_batch(broker, &t, c, &first, coords, "decided once across the failover");
}

/// A transaction ships its state changes while it is still open, not all at its commit: with a
/// commit interval far longer than this test, the changelog records of a few events are in the
/// log (read_uncommitted) while read_committed sees none of them (their transaction is open),
/// and they are visible once the shutdown commits it. Without the early send the records would
/// only leave at the commit, and the first wait below would run out.
#[test]
fn state_changes_travel_before_their_transaction_commits() {
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "early");
    let dir = tempfile::tempdir().unwrap();
    // The transaction may stay open for the whole test.
    let timeout = [("transaction.timeout.ms", "600000")];
    let cfg = write_config(broker, &t, dir.path(), &unique_name("early-txn"), NO_TRIP, &timeout, None);
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("commit_interval = \"100ms\""), "unexpected config layout:\n{text}");
    std::fs::write(&cfg, text.replacen("commit_interval = \"100ms\"", "commit_interval = \"300s\"", 1)).unwrap();
    let mut svc = Service::spawn(&cfg, &dir.path().join("service.log"));
    svc.wait_ready(READY);

    let t0 = now_ms() - 1_000;
    let inputs: Vec<Input> = (0..20)
        .map(|k| {
            let (a, id) = (format!("early-{k}"), format!("e-{k}"));
            input(&a, ev(&id, &a, t0 + k, "auth-service", "credential_stuffing", 0.95), Expect::NoAction, Some(&id))
        })
        .collect();
    produce(broker, &t.input, &inputs);

    let changelog = format!("{}-changelog", t.shadow);
    // Accounts with a state in the log (entries of batch records; the log also holds watermark
    // records). Distinct accounts: read_uncommitted also shows the records of a transaction that
    // was aborted and redone.
    let of_accounts = |records: Vec<Record>| {
        let mut keys: BTreeSet<u64> = BTreeSet::new();
        for r in records {
            let (Some(k), Some(v)) = (r.key, r.payload) else { continue };
            if let Key::Batch(_) = parse_key(&k) {
                for e in read_batch(&v).entries() {
                    if let Ok(BatchEntry::Put(account, _)) = e {
                        keys.insert(account);
                    }
                }
            }
        }
        keys.len()
    };
    let accounts = |isolation| of_accounts(broker.read_to_end(&changelog, isolation, Duration::from_secs(30)));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while accounts(Isolation::ReadUncommitted) < inputs.len() {
        svc.assert_running("while its changelog records were awaited");
        assert!(std::time::Instant::now() < deadline, "the open transaction's changelog records were not sent");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(accounts(Isolation::ReadUncommitted), inputs.len(), "a record for each changed account");
    assert_eq!(accounts(Isolation::ReadCommitted), 0, "the transaction is still open");

    svc.terminate_ok();
    let committed = of_accounts(broker.read_all_committed(&changelog, Duration::from_secs(30)));
    assert_eq!(committed, inputs.len(), "the shutdown committed them");
}
