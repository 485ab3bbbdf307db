//! Fault injection against a real Apache Kafka broker, with `resetguard run` as a child process:
//! the broker SIGKILLed and restarted on the same data dir, the broker frozen (SIGSTOP) for longer
//! than the transaction timeout, input records deleted by retention past the committed offset, a
//! DLQ record larger than the DLQ topic accepts, and admin actions whose records cannot be written
//! or meet a full producer queue. Every test checks the output topics with a read_committed reader
//! against what each generated input must become (its `Expect`), never against resetguard's own
//! counters; the service must keep running through every fault and exit 0 on SIGTERM.
//!
//! What the service must provide for these tests (beyond the README):
//! * DLQ records too large for the DLQ topic carry a prefix of the original bytes and the headers
//!   `truncated` = `true` and `original_bytes` = the input's length in bytes.
//! * Records skipped because retention deleted them before they were consumed are counted in the
//!   counter `resetguard_input_gap_records_total` on `/metrics` (labels free; summed here).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::events::Rng;
use common::faults::*;
use common::kafka::{unique_name, KafkaBroker};
use common::service::*;

/// Notices expected from the inputs (accounts whose input expects a notice).
fn expected_notices(inputs: &[Input]) -> BTreeSet<String> {
    inputs.iter().filter(|i| i.expect == Expect::Notice).map(|i| i.key.clone()).collect()
}

/// A stream for the pipeline: one in `decide_every` inputs is a single-event decision (its own
/// account, `breached_password` at risk 1.0 from `source`), one in `dlq_every` an unknown signal
/// (DLQ), the rest ordinary no-action events on a pool of accounts. Event times are a little in
/// the past and increase by 100 µs per input.
fn decision_mix(
    tag: &str,
    n: usize,
    decide_every: usize,
    dlq_every: usize,
    source: &str,
    expect_decision: Expect,
) -> Vec<Input> {
    let t0 = now_ms() - 60_000;
    (0..n)
        .map(|i| {
            let t = t0 + (i / 10) as i64;
            if i % decide_every == 0 {
                let (a, id) = (format!("{tag}-d{i}"), format!("{tag}-de{i}"));
                input(&a, ev(&id, &a, t, source, "breached_password", 1.0), expect_decision, Some(&id))
            } else if i % dlq_every == 1 {
                let (a, id) = (format!("{tag}-x{}", i % 1000), format!("{tag}-xe{i}"));
                input(&a, ev(&id, &a, t, "auth-service", "telepathy", 0.5), Expect::Dlq("unknown_signal"), Some(&id))
            } else {
                let (a, id) = (format!("{tag}-a{}", i % 5000), format!("{tag}-e{i}"));
                input(&a, ev(&id, &a, t, "auth-service", "failed_login", 0.2), Expect::NoAction, Some(&id))
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// a. broker SIGKILLed mid-transaction and restarted
// ---------------------------------------------------------------------------------------------

#[test]
fn broker_killed_mid_stream_loses_and_duplicates_nothing() {
    let mut broker = KafkaBroker::start_dedicated();
    let t = Topics::create(&broker, "bkill");
    let dir = tempfile::tempdir().unwrap();
    // One transaction per commit interval (100 ms): a transaction is open whenever the broker dies.
    let cfg = write_config(&broker, &t, dir.path(), &unique_name("bkill-txn"), NO_TRIP, &[], Some(50_000));
    let log = dir.path().join("service.log");
    let inputs = crash_inputs(60_000);
    let total = inputs.len() as i64;

    let mut svc = Service::spawn(&cfg, &log);
    svc.wait_ready(Duration::from_secs(60));
    let stream = Stream::paced(&broker, &t.input, inputs.clone(), Duration::from_secs(20));
    // Kill once the service is well into the stream (a transaction is open every 100 ms).
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed_sum(&broker, &t) < total / 5 {
        svc.assert_running("before the broker was killed");
        assert!(Instant::now() < deadline, "no progress before the kill");
        std::thread::sleep(Duration::from_millis(50));
    }
    broker.kill();
    std::thread::sleep(Duration::from_secs(10));
    svc.assert_running("while the broker was down");
    broker.restart();
    let (inputs, coords) = stream.finish();
    let total = inputs.len() as i64;
    // Generous: reconnects, a possible fencing and re-initialisation, the group's rebalance.
    wait_committed_running(&broker, &t, &mut svc, total, Duration::from_secs(150));
    svc.assert_running("after the broker came back");
    svc.terminate_ok();

    let (notices, _) = check_outputs(&broker, &t, &inputs, &coords);
    assert_eq!(notices, expected_notices(&inputs), "the notice set equals the expected set");
}

// ---------------------------------------------------------------------------------------------
// b. broker frozen longer than transaction.timeout.ms
// ---------------------------------------------------------------------------------------------

#[test]
fn broker_frozen_longer_than_the_transaction_timeout() {
    let mut broker = KafkaBroker::start_dedicated();
    let t = Topics::create(&broker, "bfreeze");
    let dir = tempfile::tempdir().unwrap();
    // write_config sets transaction.timeout.ms = 10000.
    let cfg = write_config(&broker, &t, dir.path(), &unique_name("bfreeze-txn"), NO_TRIP, &[], Some(50_000));
    assert!(std::fs::read_to_string(&cfg).unwrap().contains("\"transaction.timeout.ms\" = \"10000\""));
    let log = dir.path().join("service.log");
    let inputs = crash_inputs(60_000);
    let total = inputs.len() as i64;

    let mut svc = Service::spawn(&cfg, &log);
    svc.wait_ready(Duration::from_secs(60));
    // The inputs go in three parts, each delivered before the next step, so the test's own
    // producer has nothing in flight while the broker is frozen (a frozen broker can time out
    // the requests of any client, and an input whose fate is unknown would make the expected
    // outcomes unknown). The freeze comes right after the second part (20,000 inputs) is in the
    // topic, while the service is busy with it: its transaction is open when the broker stops.
    let (first, rest) = inputs.split_at(20_000);
    let (second, third) = rest.split_at(20_000);
    let mut coords = produce(&broker, &t.input, first);
    wait_committed_running(&broker, &t, &mut svc, first.len() as i64, Duration::from_secs(60));
    coords.extend(produce(&broker, &t.input, second));
    broker.freeze();
    std::thread::sleep(Duration::from_secs(15));
    broker.thaw();
    svc.assert_running("while the broker was frozen");
    coords.extend(produce(&broker, &t.input, third));
    wait_committed_running(&broker, &t, &mut svc, total, Duration::from_secs(150));
    svc.assert_running("after the broker thawed");
    svc.terminate_ok();

    let (notices, _) = check_outputs(&broker, &t, &inputs, &coords);
    assert_eq!(notices, expected_notices(&inputs), "the notice set equals the expected set");
}

// ---------------------------------------------------------------------------------------------
// c. retention deleted records past the committed offset
// ---------------------------------------------------------------------------------------------

const GAP_METRIC: &str = "resetguard_input_gap_records_total";

#[test]
fn retention_gap_past_the_committed_offset_is_counted_and_skipped() {
    let broker = KafkaBroker::start_dedicated();
    // Segments roll after 1 s (on the next append) and an inactive segment whose newest record
    // is older than 3 s is deleted by the next retention check (every second on the test broker).
    let t = create_topics(
        &broker,
        "gap",
        &TopicConfigs { input: &[("retention.ms", "3000"), ("segment.ms", "1000")], ..Default::default() },
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&broker, &t, dir.path(), &unique_name("gap-txn"), NO_TRIP, &[], None);
    let log = dir.path().join("service.log");
    // Every batch has takeovers (both events in the batch), DLQ-bound inputs and ordinary traffic;
    // batches use distinct accounts and event ids.
    let batch = |tag: &str, n: usize| -> Vec<Input> { decision_mix(tag, n, 20, 10, "auth-service", Expect::Notice) };

    // 1. First batch, consumed and committed; then a clean stop.
    let mut svc = Service::spawn(&cfg, &log);
    svc.wait_ready(Duration::from_secs(60));
    let first = batch("gap1", 3000);
    let first_coords = produce(&broker, &t.input, &first);
    wait_committed_running(&broker, &t, &mut svc, first.len() as i64, Duration::from_secs(60));
    svc.terminate_ok();
    let committed: Vec<(i32, Option<i64>)> = broker.committed_offsets(&t.group, &t.input);

    // 2. Second batch while the service is down: it will be deleted before anyone reads it.
    std::thread::sleep(Duration::from_millis(1500));
    let second = batch("gap2", 3000);
    produce(&broker, &t.input, &second);
    // 3. Once the second batch is older than retention.ms, a third batch rolls every partition's
    //    segment, which makes the second batch's segments deletable.
    std::thread::sleep(Duration::from_millis(4500));
    let third = batch("gap3", 3000);
    let third_coords = produce(&broker, &t.input, &third);
    let third_start: Vec<i64> = (0..PARTITIONS)
        .map(|p| third_coords.iter().filter(|(q, _)| *q == p).map(|(_, o)| *o).min().expect("batch on every partition"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let marks = loop {
        let marks = broker.watermarks_of(&t.input);
        if marks.iter().all(|(p, low, _)| *low >= third_start[*p as usize]) {
            break marks;
        }
        assert!(Instant::now() < deadline, "retention did not delete the second batch: {marks:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        marks.iter().all(|(p, low, _)| *low == third_start[*p as usize]),
        "test setup: retention must delete exactly the batches before the third: {marks:?}, third starts {third_start:?}"
    );
    let gap: i64 = marks
        .iter()
        .map(|(p, low, _)| {
            let c = committed.iter().find(|(q, _)| q == p).and_then(|(_, o)| *o).unwrap_or(0);
            assert!(*low > c, "partition {p}: low watermark {low} not past the committed offset {c}");
            low - c
        })
        .sum();
    assert_eq!(gap, second.len() as i64, "test setup: the gap is the second batch");
    eprintln!("gap: committed {committed:?}, watermarks {marks:?}, {gap} records deleted unread");

    // 4. Restart: the service must skip the gap, count it, and process everything after it.
    let mut svc = Service::spawn(&cfg, &log);
    let done_before = (first.len() + third.len()) as i64;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        svc.assert_running("after a restart over a retention gap");
        let done: i64 = committed_sum(&broker, &t);
        // The committed offsets count the gap too (they are positions, not records).
        if done >= done_before + gap {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the input after the gap was not processed: committed {done} of {}; log tail:\n{}",
            done_before + gap,
            log_tail(&log, 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let fourth = batch("gap4", 1000);
    let fourth_coords = produce(&broker, &t.input, &fourth);
    wait_committed_running(&broker, &t, &mut svc, done_before + gap + fourth.len() as i64, Duration::from_secs(60));
    // The counter (flushed on the service's own schedule): wait for it, then judge its value.
    let deadline = Instant::now() + Duration::from_secs(30);
    let counted = loop {
        let v = svc.metric(GAP_METRIC);
        if v == Some(gap as f64) || Instant::now() >= deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(counted, Some(gap as f64), "{GAP_METRIC} on /metrics must count the {gap} records deleted unread");
    svc.assert_running("at the end");
    svc.terminate_ok();

    let all: Vec<Input> = first.iter().chain(&third).chain(&fourth).cloned().collect();
    let coords: Vec<(i32, i64)> = first_coords.iter().chain(&third_coords).chain(&fourth_coords).copied().collect();
    let (notices, _) = check_outputs(&broker, &t, &all, &coords);
    assert_eq!(notices, expected_notices(&all), "every input outside the gap gets its outcome");
}

// ---------------------------------------------------------------------------------------------
// d. a DLQ record larger than the DLQ topic accepts
// ---------------------------------------------------------------------------------------------

#[test]
fn oversize_dlq_record_is_truncated_and_the_pipeline_keeps_flowing() {
    const DLQ_MAX: usize = 2048;
    let broker = KafkaBroker::shared();
    let max = DLQ_MAX.to_string();
    let t = create_topics(
        broker,
        "bigdlq",
        &TopicConfigs { dlq: &[("max.message.bytes", max.as_str())], ..Default::default() },
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(broker, &t, dir.path(), &unique_name("bigdlq-txn"), NO_TRIP, &[], None);
    let log = dir.path().join("service.log");

    // ~10 KB, under the 16 KiB input limit, invalid (user_agent longer than 1024 characters) and
    // incompressible (random text), so lz4 cannot make it fit.
    let mut rng = Rng::new(now_ms() as u64);
    let ua = random_text(&mut rng, 10_000);
    let big_bytes = format!(
        r#"{{"event_id":"big-1","account_id":"big-acct","occurred_at":"{}","source":"auth-service","signal":"new_device","risk":0.3,"user_agent":"{ua}"}}"#,
        resetguard::core::event::format_rfc3339_ms(now_ms() - 30_000)
    )
    .into_bytes();
    assert!(big_bytes.len() > 9_000 && big_bytes.len() < 16 * 1024);
    let big = input("big-acct", big_bytes.clone(), Expect::Dlq("field_length"), Some("big-1"));
    let mut first = mixed_inputs(0);
    let mid = first.len() / 2;
    first.insert(mid, big);

    let mut svc = Service::spawn(&cfg, &log);
    svc.wait_ready(Duration::from_secs(60));
    let mut coords = produce(broker, &t.input, &first);
    let big_coords = coords[mid];
    wait_committed_running(broker, &t, &mut svc, first.len() as i64, Duration::from_secs(60));
    // The pipeline keeps flowing after it.
    let second = decision_mix("bigdlq2", 2000, 20, 10, "auth-service", Expect::Notice);
    coords.extend(produce(broker, &t.input, &second));
    let all: Vec<Input> = first.iter().chain(&second).cloned().collect();
    wait_committed_running(broker, &t, &mut svc, all.len() as i64, Duration::from_secs(60));
    svc.assert_running("at the end");
    svc.terminate_ok();

    let out = check_outputs_allowing_truncation(broker, &t, &all, &coords);
    assert_eq!(out.notice_accounts, expected_notices(&all));
    let dlq_of_big: Vec<_> = out
        .dlq
        .iter()
        .filter(|r| {
            header_str(r, "source_partition") == big_coords.0.to_string()
                && header_str(r, "source_offset") == big_coords.1.to_string()
        })
        .collect();
    assert_eq!(dlq_of_big.len(), 1, "one DLQ record for the oversize input");
    let r = dlq_of_big[0];
    assert_eq!(header_str(r, "source_topic"), t.input);
    assert_eq!(header_str(r, "truncated"), "true");
    assert_eq!(header_str(r, "original_bytes"), big_bytes.len().to_string());
    assert_eq!(header_str(r, "reason"), "field_length");
    let payload = r.payload.as_deref().unwrap_or(&[]);
    assert!(payload.len() < DLQ_MAX, "the truncated payload ({} bytes) fits the topic's limit", payload.len());
    assert!(big_bytes.starts_with(payload), "the truncated payload is a prefix of the original bytes");
    let truncated = out.dlq.iter().filter(|r| r.header("truncated").is_some()).count();
    assert_eq!(truncated, 1, "only the oversize record is truncated");
}

// ---------------------------------------------------------------------------------------------
// e. admin actions: a write that fails, and actions under producer back-pressure
// ---------------------------------------------------------------------------------------------

#[test]
fn admin_action_whose_write_fails_loses_no_batch() {
    let broker = KafkaBroker::shared();
    // The audit record of an action with a long (incompressible) reason does not fit.
    let t = create_topics(
        broker,
        "admfail",
        &TopicConfigs { audit: &[("max.message.bytes", "1024")], ..Default::default() },
    );
    let dir = tempfile::tempdir().unwrap();
    // Large batches (one transaction per commit interval): an admin command then meets a
    // transaction that holds stream outputs, as it does in production. (With a commit every 100
    // inputs the loop is commit-bound and commands land between transactions.)
    let cfg = write_config(broker, &t, dir.path(), &unique_name("admfail-txn"), NO_TRIP, &[], Some(50_000));
    let log = dir.path().join("service.log");
    let inputs = decision_mix("admfail", 30_000, 3, 10, "auth-service", Expect::Notice);
    let total = inputs.len() as i64;

    let mut svc = Service::spawn(&cfg, &log);
    svc.wait_ready(Duration::from_secs(60));
    let stream = Stream::paced(broker, &t.input, inputs.clone(), Duration::from_secs(15));
    let mut rng = Rng::new(now_ms() as u64);
    // admin.rs caps the reason at 1024 bytes: 1000 random characters plus the rest of the audit
    // record exceed the topic's 1024 bytes. The cell has no traffic, so whether the failed
    // override stays in memory or not changes no outcome.
    let mut answers = Vec::new();
    for k in 0..5 {
        // Spread over the stream, while transactions with stream records are open.
        let at = Instant::now() + Duration::from_millis(2000);
        while Instant::now() < at {
            svc.assert_running("during the stream");
            std::thread::sleep(Duration::from_millis(50));
        }
        let body = serde_json::json!({"ttl": "5m", "actor": "chaos-test", "reason": random_text(&mut rng, 1000)});
        let (code, text) = svc.admin("POST", &format!("/admin/breaker/quiet-source-{k}/open"), &body);
        eprintln!("admin call {k}: sent {} of {total}, committed {}", stream.sent(), committed_sum(broker, &t));
        answers.push((code, text));
    }
    eprintln!("answers to the failing admin calls: {answers:?}");
    let (inputs, coords) = stream.finish();
    let total = inputs.len() as i64;
    wait_committed_running(broker, &t, &mut svc, total, Duration::from_secs(90));
    svc.assert_running("at the end");
    svc.terminate_ok();

    for (code, text) in &answers {
        assert!(*code >= 400, "an admin action whose audit record cannot be written must fail, got {code}: {text}");
    }
    let (notices, _) = check_outputs(broker, &t, &inputs, &coords);
    assert_eq!(notices, expected_notices(&inputs), "no outcome lost or doubled around the failed admin writes");
    let audit = broker.read_all_committed(&audit_topic(&t), Duration::from_secs(30));
    assert!(audit.is_empty(), "no audit record of an action that failed: {}", audit.len());
}

#[test]
fn admin_actions_under_producer_back_pressure_lose_nothing() {
    let broker = KafkaBroker::shared();
    let t = create_topics(broker, "admload", &TopicConfigs::default());
    let dir = tempfile::tempdir().unwrap();
    // A small producer queue: outputs meet QueueFull all the time.
    let cfg = write_config(
        broker,
        &t,
        dir.path(),
        &unique_name("admload-txn"),
        NO_TRIP,
        &[("queue.buffering.max.messages", "1000")],
        Some(50_000),
    );
    let log = dir.path().join("service.log");
    // 200 k inputs: half DLQ-bound, 1 in 20 a decision of model-x (the cell forced open midway:
    // notice or held), 1 in 20 a decision of auth-service (notice), the rest ordinary.
    let n = 200_000;
    let t0 = now_ms() - 60_000;
    let inputs: Vec<Input> = (0..n)
        .map(|i| {
            let tm = t0 + (i / 10) as i64;
            if i % 2 == 1 {
                let (a, id) = (format!("al-x{}", i % 1000), format!("al-xe{i}"));
                input(&a, ev(&id, &a, tm, "auth-service", "telepathy", 0.5), Expect::Dlq("unknown_signal"), Some(&id))
            } else if i % 20 == 0 {
                let (a, id) = (format!("al-m{i}"), format!("al-me{i}"));
                input(&a, ev(&id, &a, tm, "model-x", "breached_password", 1.0), Expect::Decision, Some(&id))
            } else if i % 20 == 10 {
                let (a, id) = (format!("al-d{i}"), format!("al-de{i}"));
                input(&a, ev(&id, &a, tm, "auth-service", "breached_password", 1.0), Expect::Notice, Some(&id))
            } else {
                let (a, id) = (format!("al-a{}", i % 5000), format!("al-e{i}"));
                input(&a, ev(&id, &a, tm, "auth-service", "failed_login", 0.2), Expect::NoAction, Some(&id))
            }
        })
        .collect();
    let total = inputs.len() as i64;
    // All of it is there before the service starts: it consumes at full speed, and its ~110 k
    // outputs meet a producer queue of 1000 that is full most of the time.
    let coords = produce(broker, &t.input, &inputs);

    let mut svc = Service::spawn(&cfg, &log);
    // Ready = partitions assigned (nothing to restore): it is consuming now.
    svc.wait_ready(Duration::from_secs(60));
    let open = svc.admin(
        "POST",
        "/admin/breaker/model-x/open",
        &serde_json::json!({"ttl": "30m", "actor": "load-test", "reason": "force-open under load"}),
    );
    eprintln!("force-open answered {} with {} of {total} committed", open.0, committed_sum(broker, &t));
    // Allow-list changes for as long as the stream flows (at least one).
    let expires = resetguard::core::event::format_rfc3339_ms(now_ms() + 86_400_000);
    let mut allows = Vec::new();
    loop {
        let account = format!("vip-{}", allows.len());
        let body = serde_json::json!({"account_id": account, "expires_at": expires, "actor": "load-test", "reason": "allow under load"});
        allows.push(svc.admin("POST", "/admin/allow-list", &body));
        svc.assert_running("during the stream");
        let done = committed_sum(broker, &t);
        if done >= total || allows.len() >= 200 {
            eprintln!("{} allow-list changes while the stream flowed (committed {done} of {total})", allows.len());
            break;
        }
    }
    wait_committed_running(broker, &t, &mut svc, total, Duration::from_secs(120));
    svc.assert_running("at the end");
    svc.terminate_ok();

    assert_eq!(open.0, 200, "force-open under load must succeed: {}", open.1);
    for (code, text) in &allows {
        assert_eq!(*code, 200, "allow-list change under load must succeed: {text}");
    }
    let (notices, held) = check_outputs(broker, &t, &inputs, &coords);
    let expected: BTreeSet<String> = expected_notices(&inputs);
    assert_eq!(notices.iter().filter(|a| a.starts_with("al-d")).cloned().collect::<BTreeSet<_>>(), expected);
    assert!(held.iter().all(|a| a.starts_with("al-m")), "only the forced-open cell holds");
    let audit = broker.read_all_committed(&audit_topic(&t), Duration::from_secs(30));
    let actions: BTreeSet<String> =
        audit.iter().map(|r| json(r)["action"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(audit.len(), 1 + allows.len(), "one audit record per action: {actions:?}");
    assert_eq!(actions, BTreeSet::from(["allow_list_add".to_string(), "breaker_open".to_string()]));
}

// ---------------------------------------------------------------------------------------------
// f. the group fences the instance's static membership (FENCED_INSTANCE_ID, fatal in librdkafka)
// ---------------------------------------------------------------------------------------------

/// What a broker outage longer than the session timeout can do (see the frozen-broker test): the
/// group fences the service's consumer with a membership under its own `group.instance.id`, an
/// error librdkafka makes fatal for that consumer. Here another consumer joins under the same
/// instance name, on purpose. The service must replace its consumer (which fences the intruder
/// in turn), restore the assignment, and decide everything once.
#[test]
fn a_consumer_fenced_under_its_instance_name_is_replaced_and_loses_nothing() {
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "fenced");
    let dir = tempfile::tempdir().unwrap();
    let txn_id = unique_name("fenced-txn");
    let cfg = write_config(broker, &t, dir.path(), &txn_id, NO_TRIP, &[], None);
    let log = dir.path().join("service.log");
    let inputs = crash_inputs(20_000);
    let (first, second) = inputs.split_at(10_000);

    let mut svc = Service::spawn(&cfg, &log);
    svc.wait_ready(Duration::from_secs(60));
    let mut coords = produce(broker, &t.input, first);
    wait_committed_running(broker, &t, &mut svc, first.len() as i64, Duration::from_secs(60));
    assert_eq!(svc.metric("resetguard_consumer_renewals_total"), Some(0.0));

    // The intruder: same group, same instance name, the service's (default) rebalance protocol.
    // Joining fences the service's member.
    let intruder: BaseConsumer = broker
        .consumer_config(&t.group)
        .set("group.instance.id", &txn_id)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()
        .unwrap();
    intruder.subscribe(&[t.input.as_str()]).unwrap();
    // The service takes its membership back (fencing the intruder in turn: its polls fail).
    let deadline = Instant::now() + Duration::from_secs(60);
    while svc.metric("resetguard_consumer_renewals_total").unwrap_or(0.0) < 1.0 {
        svc.assert_running("after its consumer was fenced");
        assert!(Instant::now() < deadline, "the fenced consumer was not replaced; log tail:\n{}", log_tail(&log, 40));
        let _ = intruder.poll(Duration::from_millis(100));
    }
    drop(intruder);

    coords.extend(produce(broker, &t.input, second));
    wait_committed_running(broker, &t, &mut svc, inputs.len() as i64, Duration::from_secs(120));
    assert_eq!(svc.metric("resetguard_consumer_renewals_total"), Some(1.0), "one replacement, no ping-pong");
    svc.assert_running("after the second batch");
    svc.terminate_ok();

    let (notices, _) = check_outputs(broker, &t, &inputs, &coords);
    assert_eq!(notices, expected_notices(&inputs), "the notice set equals the expected set");
}
