//! Scaling a fleet out and back in while events flow, on Apache Kafka, with `resetguard run`
//! child processes, the changelog (the default) and the cooperative protocol (the default with it): 2 → 3 → 2
//! instances. Only the partitions that change owner are restored; a partition that stays with its
//! instance shows no restore (its `resetguard_partition_restores_total` series does not move);
//! no notice is sent twice and every input has exactly its expected outcome. The same scaling
//! with the eager protocol (`range`) and two shards decides every input once as well. A
//! transaction whose offsets a rebalance refused is redone, not restored.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::faults::*;
use common::kafka::{unique_name, KafkaBroker};
use common::service::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge;
use rdkafka::{Offset, TopicPartitionList};
use resetguard::kafka::txn::{TxnError, TxnWriter};

const EVENTS: usize = 90_000;
const PER_SECOND: u64 = 3_000;

/// Input partitions an instance owns, from its consumer-lag series (one per owned partition).
fn owned(svc: &mut Service) -> BTreeSet<String> {
    let Some((200, text)) = svc.get("/metrics") else { return BTreeSet::new() };
    text.lines()
        .filter(|l| l.starts_with("resetguard_consumer_lag_messages{"))
        .filter_map(|l| l.split("partition=\"").nth(1)?.split('"').next().map(str::to_string))
        .collect()
}

/// Restores per partition of an instance, whatever the cause and source: because the partition
/// came to it (`cause="assignment"`) or after an abort (`cause="abort"`). A commit that races a
/// rebalance's generation change is redone, not aborted, so it restores nothing.
fn restores(svc: &mut Service) -> BTreeMap<String, f64> {
    let Some((200, text)) = svc.get("/metrics") else { panic!("no metrics") };
    let mut m = BTreeMap::new();
    for l in text.lines().filter(|l| l.starts_with("resetguard_partition_restores_total{")) {
        let p = l.split("partition=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or_default().to_string();
        let v: f64 = l.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *m.entry(p).or_default() += v;
    }
    m
}

/// Waits until `fleet` owns every input partition, disjointly, each instance some.
fn wait_spread(fleet: &mut [&mut Service]) -> Vec<BTreeSet<String>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let sets: Vec<BTreeSet<String>> = fleet.iter_mut().map(|s| owned(s)).collect();
        let all: BTreeSet<&String> = sets.iter().flatten().collect();
        let sum: usize = sets.iter().map(BTreeSet::len).sum();
        if sets.iter().all(|s| !s.is_empty()) && sum == PARTITIONS as usize && all.len() == sum {
            return sets;
        }
        for s in fleet.iter_mut() {
            s.assert_running("while the group formed");
        }
        assert!(Instant::now() < deadline, "the fleet never spread the partitions: {sets:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until every instance is ready (their logs in the panic message otherwise).
fn ready(fleet: &mut [&mut Service]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !fleet.iter_mut().all(|s| matches!(s.get("/readyz"), Some((200, _)))) {
        if Instant::now() > deadline {
            let logs: Vec<String> = fleet.iter().map(|s| log_tail(&s.log, 40)).collect();
            panic!("not every instance turned ready; logs:\n{}", logs.join("\n-----\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_no_restore(what: &str, svc: &mut Service, stayed: &BTreeSet<String>, before: &BTreeMap<String, f64>) {
    let now = restores(svc);
    for p in stayed {
        let why: Vec<String> = svc
            .own_log()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("Partitions"))
            .map(str::to_string)
            .collect();
        assert_eq!(
            now.get(p),
            before.get(p),
            "{what}: partition {p} stayed but was restored (before {before:?}, now {now:?}); log:\n{}",
            why.join("\n")
        );
    }
}

#[test]
fn scaling_out_and_back_in_restores_only_the_partitions_that_move() {
    scale_out_and_in("cooperative-sticky", None);
}

/// The eager protocol (`range`) gives every partition up on each rebalance and restores the new
/// assignment, and two shards judge bursts of what is fetched: a rebalance in the middle of a
/// burst must neither lose nor repeat an input.
#[test]
fn the_eager_protocol_with_two_shards_scales_out_and_in_deciding_each_input_once() {
    scale_out_and_in("range", Some("shards = 2"));
}

/// 2 → 3 → 2 instances under a steady stream; with the cooperative protocol the partitions that
/// stay with their instance restore nothing. Every input ends with its expected outcome, and the
/// notices are those of one uninterrupted instance, none twice.
fn scale_out_and_in(strategy: &str, pipeline: Option<&str>) {
    let incremental = strategy.contains("cooperative");
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "scale");
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cfg: Vec<_> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let txn = unique_name(&format!("scale-{i}"));
            let cfg =
                write_config(broker, &t, d.path(), &txn, NO_TRIP, &[("partition.assignment.strategy", strategy)], None);
            if let Some(line) = pipeline {
                set_pipeline(&cfg, line);
            }
            cfg
        })
        .collect();
    let log = |i: usize| dirs[i].path().join("service.log");
    let inputs = crash_inputs(EVENTS);
    let schedule: Vec<u64> = (0..inputs.len() as u64).map(|i| i * 1000 / PER_SECOND).collect();

    let mut a = Service::spawn(&cfg[0], &log(0));
    let mut b = Service::spawn(&cfg[1], &log(1));
    ready(&mut [&mut a, &mut b]);
    let two = wait_spread(&mut [&mut a, &mut b]);
    let stream = Stream::start(broker, &t.input, inputs.clone(), schedule);
    wait_committed_running(broker, &t, &mut a, EVENTS as i64 / 5, Duration::from_secs(120));

    // Out: a third instance takes some partitions; those that stay restore nothing.
    let (ra, rb) = (restores(&mut a), restores(&mut b));
    let mut c = Service::spawn(&cfg[2], &log(2));
    ready(&mut [&mut c, &mut a, &mut b]);
    let three = wait_spread(&mut [&mut a, &mut b, &mut c]);
    let stayed_a: BTreeSet<String> = two[0].intersection(&three[0]).cloned().collect();
    let stayed_b: BTreeSet<String> = two[1].intersection(&three[1]).cloned().collect();
    if incremental {
        assert!(!stayed_a.is_empty() || !stayed_b.is_empty(), "some partitions stay put: {two:?} → {three:?}");
        assert_no_restore("scale-out, instance a", &mut a, &stayed_a, &ra);
        assert_no_restore("scale-out, instance b", &mut b, &stayed_b, &rb);
    }
    let moved = restores(&mut c).values().sum::<f64>();
    assert!(moved >= three[2].len() as f64, "the new instance restored what it took: {:?}", restores(&mut c));
    wait_committed_running(broker, &t, &mut a, EVENTS as i64 * 3 / 5, Duration::from_secs(120));

    // In: the third instance stops; its partitions go back; the others' stay put.
    let (ra, rb) = (restores(&mut a), restores(&mut b));
    c.terminate_ok();
    let back = wait_spread(&mut [&mut a, &mut b]);
    let kept_a: BTreeSet<String> = three[0].intersection(&back[0]).cloned().collect();
    let kept_b: BTreeSet<String> = three[1].intersection(&back[1]).cloned().collect();
    if incremental {
        assert_no_restore("scale-in, instance a", &mut a, &kept_a, &ra);
        assert_no_restore("scale-in, instance b", &mut b, &kept_b, &rb);
    }

    let (inputs, coords) = stream.finish();
    wait_committed_running(broker, &t, &mut a, inputs.len() as i64, Duration::from_secs(180));
    a.terminate_ok();
    b.terminate_ok();
    // Scaling is routine: no ERROR line for an SRE from restores reading to the end of
    // partitions, and with the cooperative protocol none at all (a commit redone after a
    // generation change included). The eager protocol may abort on revoke, and librdkafka logs
    // what the abort's purge does to the idempotent sequence as an error.
    for i in 0..3 {
        let errors: Vec<String> = std::fs::read_to_string(log(i))
            .unwrap()
            .lines()
            .filter(|l| l.contains("ERROR") && (incremental || l.contains("PartitionEOF")))
            .map(str::to_string)
            .collect();
        assert!(errors.is_empty(), "instance {i} logged errors:\n{}", errors.join("\n"));
    }
    eprintln!("partitions: {two:?} → {three:?} → {back:?}");
    let (notices, _) = check_outputs(broker, &t, &inputs, &coords);
    let expected: BTreeSet<String> =
        inputs.iter().filter(|i| i.expect == Expect::Notice).map(|i| i.key.clone()).collect();
    assert_eq!(notices, expected, "the same notices as one uninterrupted instance");
}

/// Polls both consumers until `a` owns `want_a` partitions and `b` (if any) the rest of `total`.
fn settle(a: &BaseConsumer, b: Option<&BaseConsumer>, want_a: usize, total: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let _ = a.poll(Duration::from_millis(50));
        if let Some(b) = b {
            let _ = b.poll(Duration::from_millis(50));
        }
        let na = a.assignment().map(|t| t.count()).unwrap_or(0);
        let nb = b.map_or(0, |b| b.assignment().map(|t| t.count()).unwrap_or(0));
        if na == want_a && na + nb == total {
            return;
        }
        assert!(Instant::now() < deadline, "the group never settled: a owns {na}, b owns {nb}");
    }
}

/// The race a scale-out brings: a transaction is open when the group's generation moves on,
/// and the group refuses its offsets (ILLEGAL_GENERATION; librdkafka then allows only an abort).
/// `TxnWriter::redo` aborts it after every record was delivered and sends the same records
/// again; committed with the consumer's current group metadata, the offsets go through, and a
/// read_committed reader sees each record exactly once, with its key, payload and headers.
#[test]
fn a_transaction_whose_offsets_a_rebalance_refused_is_redone_and_committed_once() {
    let broker = KafkaBroker::shared();
    let (input, output, group) = (unique_name("redo-in"), unique_name("redo-out"), unique_name("redo-group"));
    broker.create_topic(&input, 4);
    broker.create_topic(&output, 2);
    let (a, _b, before, offsets) = group_moved_on(broker, &input, &group);

    let mut w = TxnWriter::new(&broker.transactional_producer_config(&unique_name("redo-txn"))).expect("writer");
    const N: usize = 40;
    for i in 0..N {
        let (key, payload) = (format!("k{i}"), format!("{{\"n\":{i}}}"));
        let mut record = BaseRecord::with_opaque_to(&output, i).key(key.as_bytes()).payload(payload.as_bytes());
        if i % 2 == 0 {
            let headers = OwnedHeaders::new()
                .insert(Header { key: "notice_id", value: Some(key.as_bytes()) })
                .insert(Header { key: "empty", value: None::<&[u8]> });
            record = record.headers(headers);
        }
        w.send(record).expect("send");
    }

    let refused = w.commit(Some((&offsets, &before))).expect_err("offsets of an old generation must be refused");
    assert!(refused.refused_by_group(), "refused for another reason: {refused}");

    w.redo(&mut || {}).expect("redo");
    let now = a.group_metadata().expect("group metadata");
    w.commit(Some((&offsets, &now))).expect("the redone transaction commits");

    let seen = broker.read_all_committed(&output, Duration::from_secs(30));
    let keys: BTreeSet<&str> = seen.iter().filter_map(|r| r.key_str()).collect();
    assert_eq!(seen.len(), N, "each record once: {keys:?}");
    assert_eq!(keys.len(), N);
    for r in &seen {
        let key = r.key_str().unwrap();
        let i: usize = key[1..].parse().unwrap();
        assert_eq!(r.payload_str(), Some(format!("{{\"n\":{i}}}").as_str()));
        if i % 2 == 0 {
            assert_eq!(r.header("notice_id"), Some(Some(key.as_bytes())), "{key}");
            assert_eq!(r.header("empty"), Some(None), "{key}");
        } else {
            assert_eq!(r.header("notice_id"), None, "{key}");
        }
    }
    let committed: Vec<(i32, Option<i64>)> =
        broker.committed_offsets(&group, &input).into_iter().filter(|(_, o)| o.is_some()).collect();
    let mut mine: Vec<(i32, Option<i64>)> = offsets.elements().iter().map(|e| (e.partition(), Some(7))).collect();
    mine.sort_unstable();
    assert_eq!(committed, mine, "the offsets of the partitions `a` kept, and only those");
}

/// Two members of one group, `a` holding two of four partitions after `b` joined (the
/// cooperative protocol moves two partitions to `b` in two generations, and `a` keeps the other
/// two throughout); returns them with `a`'s group metadata from before `b` joined (an old
/// generation) and offsets (7) for the partitions `a` kept.
fn group_moved_on(
    broker: &KafkaBroker,
    input: &str,
    group: &str,
) -> (BaseConsumer, BaseConsumer, rdkafka::consumer::ConsumerGroupMetadata, TopicPartitionList) {
    let member = || -> BaseConsumer {
        let mut cfg = broker.consumer_config(group);
        cfg.set("partition.assignment.strategy", "cooperative-sticky");
        let c: BaseConsumer = cfg.create().expect("consumer");
        c.subscribe(&[input]).expect("subscribe");
        c
    };
    let a = member();
    settle(&a, None, 4, 4);
    let before = a.group_metadata().expect("group metadata");
    let b = member();
    settle(&a, Some(&b), 2, 4);
    let mut offsets = TopicPartitionList::new();
    for e in a.assignment().expect("assignment").elements() {
        offsets.add_partition_offset(e.topic(), e.partition(), Offset::Offset(7)).unwrap();
    }
    (a, b, before, offsets)
}

fn keyed<'a>(topic: &'a str, key: &'a str) -> BaseRecord<'a, [u8], [u8], usize> {
    BaseRecord::with_opaque_to(topic, 0).key(key.as_bytes()).payload(key.as_bytes())
}

/// Committing ahead (`TxnWriter::commit_ahead`, the pipeline's commit under load): records sent
/// while a commit runs in the background are kept for the next transaction, never joined to the
/// one committing. Here that commit is refused (its offsets are of an old generation): until it
/// is redone or aborted the writer refuses everything else; redone, it commits its own records
/// only, and the records kept meanwhile commit in the transaction after it, behind them on
/// every partition. Each record is seen once by a read_committed reader.
#[test]
fn records_sent_while_committing_ahead_wait_for_the_next_transaction() {
    let broker = KafkaBroker::shared();
    let (input, output, group) = (unique_name("ahead-in"), unique_name("ahead-out"), unique_name("ahead-group"));
    broker.create_topic(&input, 4);
    broker.create_topic(&output, 2);
    let (a, _b, before, offsets) = group_moved_on(broker, &input, &group);

    let mut w = TxnWriter::new(&broker.transactional_producer_config(&unique_name("ahead-txn"))).expect("writer");
    let first: Vec<String> = (0..30).map(|i| format!("first-{i}")).collect();
    let later: Vec<String> = (0..30).map(|i| format!("later-{i}")).collect();
    for k in &first {
        w.send(keyed(&output, k)).expect("send");
    }
    w.commit_ahead(Some((offsets.clone(), before))).expect("the commit starts");
    assert!(w.is_committing());
    for k in &later {
        w.send(keyed(&output, k)).expect("kept for the next transaction");
    }
    let refused = w.finish().expect("a result").expect_err("offsets of an old generation must be refused");
    assert!(refused.refused_by_group(), "refused for another reason: {refused}");
    assert!(w.finish().is_none(), "a result is handed over once");
    let again = w.commit(None).expect_err("a failed commit must be aborted or redone first");
    assert!(again.refused_by_group(), "{again}");

    w.redo(&mut || {}).expect("redo");
    let now = a.group_metadata().expect("group metadata");
    w.commit(Some((&offsets, &now))).expect("the redone transaction commits");
    let seen = broker.read_all_committed(&output, Duration::from_secs(30));
    let keys: BTreeSet<String> = seen.iter().filter_map(|r| r.key_str()).map(str::to_string).collect();
    assert_eq!(keys, first.iter().cloned().collect::<BTreeSet<_>>(), "only the first transaction's records");
    assert_eq!(seen.len(), first.len());

    assert!(w.is_open(), "the records kept make a transaction");
    w.commit(None).expect("the next transaction commits");
    let seen = broker.read_all_committed(&output, Duration::from_secs(30));
    let keys: Vec<&str> = seen.iter().filter_map(|r| r.key_str()).collect();
    assert_eq!(keys.len(), first.len() + later.len(), "each record once: {keys:?}");
    assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), keys.len());
    for p in 0..2 {
        let order: Vec<&str> = seen.iter().filter(|r| r.partition == p).filter_map(|r| r.key_str()).collect();
        let firsts = order.iter().take_while(|k| k.starts_with("first-")).count();
        assert!(order[firsts..].iter().all(|k| k.starts_with("later-")), "partition {p}: {order:?}");
    }
    let committed: Vec<(i32, Option<i64>)> =
        broker.committed_offsets(&group, &input).into_iter().filter(|(_, o)| o.is_some()).collect();
    assert_eq!(committed.len(), 2, "the offsets of the partitions `a` kept: {committed:?}");
}

/// A commit ahead that fails and is aborted takes the records kept meanwhile with it: they were
/// decided after the offsets that are now the committed ones, so the caller decides them again
/// from there. Nothing of either transaction is ever visible; what is sent afterwards is.
#[test]
fn an_aborted_commit_ahead_drops_the_records_kept_meanwhile() {
    let broker = KafkaBroker::shared();
    let (input, output, group) =
        (unique_name("ahead-abort-in"), unique_name("ahead-abort-out"), unique_name("ahead-abort-group"));
    broker.create_topic(&input, 4);
    broker.create_topic(&output, 2);
    let (_a, _b, before, offsets) = group_moved_on(broker, &input, &group);

    let mut w = TxnWriter::new(&broker.transactional_producer_config(&unique_name("ahead-abort-txn"))).expect("writer");
    for i in 0..20 {
        w.send(keyed(&output, &format!("refused-{i}"))).expect("send");
    }
    w.commit_ahead(Some((offsets, before))).expect("the commit starts");
    for i in 0..20 {
        w.send(keyed(&output, &format!("kept-{i}"))).expect("kept");
    }
    w.begin().expect("asked for while committing");
    let refused = w.commit(None).expect_err("the commit under way failed");
    assert!(refused.refused_by_group(), "{refused}");
    w.abort(&mut || {}).expect("abort");
    // The result is handed over once, also after another call surfaced it.
    assert!(matches!(w.finish(), Some(Err(e)) if e.refused_by_group()));
    assert!(!w.is_open() && !w.is_committing(), "nothing is left open or pending");
    w.send(keyed(&output, "after")).expect("send after the abort");
    w.commit(None).expect("commit");
    let seen = broker.read_all_committed(&output, Duration::from_secs(30));
    let keys: Vec<&str> = seen.iter().filter_map(|r| r.key_str()).collect();
    assert_eq!(keys, vec!["after"]);
    assert!(broker.committed_offsets(&group, &input).iter().all(|(_, o)| o.is_none()), "no offsets committed");
}

/// A record larger than the producer's `message.max.bytes`, sent while a commit runs in the
/// background, is refused at once with its tag, as librdkafka refuses it when nothing commits:
/// the caller writes a smaller one in its place within the same transaction (the pipeline's
/// DLQ degrade) instead of the whole transaction failing when the kept records are replayed.
#[test]
fn a_record_too_large_is_refused_when_sent_while_committing_ahead() {
    let broker = KafkaBroker::shared();
    let output = unique_name("ahead-large-out");
    broker.create_topic(&output, 2);
    let mut config = broker.transactional_producer_config(&unique_name("ahead-large-txn"));
    config.set("message.max.bytes", "10000");
    let mut w = TxnWriter::new(&config).expect("writer");
    let large = vec![b'x'; 20_000];
    let too_large = |tag: usize| BaseRecord::with_opaque_to(&output, tag).key(&b"large"[..]).payload(&large[..]);

    w.send(keyed(&output, "first")).expect("send");
    w.commit_ahead(None).expect("the commit starts");
    assert!(w.is_committing());
    let refused = w.send(too_large(7)).expect_err("too large while committing");
    assert!(matches!(&refused, TxnError::Poison { tag: 7, code: MessageSizeTooLarge, .. }), "{refused:?}");
    w.send(keyed(&output, "in-its-place")).expect("a smaller one is kept");
    assert!(matches!(w.finish(), Some(Ok(()))), "the commit under way is not touched");

    // The same record is refused the same way when nothing commits (by librdkafka itself),
    // and is no part of the transaction: sending the transaction again (`redo`, after the
    // group refused its offsets) does not send it again.
    let refused = w.send(too_large(8)).expect_err("too large");
    assert!(matches!(&refused, TxnError::Poison { tag: 8, code: MessageSizeTooLarge, .. }), "{refused:?}");
    w.redo(&mut || {}).expect("the transaction is sent again without the refused record");
    w.commit(None).expect("the next transaction commits");
    let seen = broker.read_all_committed(&output, Duration::from_secs(30));
    let keys: BTreeSet<&str> = seen.iter().filter_map(|r| r.key_str()).collect();
    assert_eq!(keys, BTreeSet::from(["first", "in-its-place"]));
    assert_eq!(seen.len(), 2);
}

/// A commit ahead whose producer was fenced meanwhile (another instance took over its
/// transactional id) fails, and the writer stays failed (`has_failed`, which the eager
/// rebalance callback asks to leave the recovery to the loop), refusing everything but `abort`
/// and `redo`. Nothing the fenced writer sent is ever visible; its successor's records are.
#[test]
fn a_fenced_commit_ahead_leaves_the_writer_failed_and_nothing_of_it_visible() {
    let broker = KafkaBroker::shared();
    let output = unique_name("ahead-fenced-out");
    broker.create_topic(&output, 1);
    let id = unique_name("ahead-fenced-txn");
    let mut w = TxnWriter::new(&broker.transactional_producer_config(&id)).expect("writer");
    w.send(keyed(&output, "fenced-before")).expect("send");
    let mut successor = TxnWriter::new(&broker.transactional_producer_config(&id)).expect("the successor fences it");
    w.commit_ahead(None).expect("the commit starts");
    w.send(keyed(&output, "fenced-meanwhile")).expect("kept while committing");
    w.wait_for_commit();
    assert!(w.has_failed(), "a fenced commit fails");
    assert!(w.send(keyed(&output, "fenced-after")).is_err(), "refused until aborted or redone");
    assert!(w.has_failed(), "still failed: the refusal does not clear it");
    assert!(matches!(w.finish(), Some(Err(_))), "the result is handed over");
    assert!(w.commit(None).is_err(), "a failed commit must be aborted or redone first");

    successor.send(keyed(&output, "successor")).expect("send");
    successor.commit(None).expect("the successor commits");
    let seen = broker.read_all_committed(&output, Duration::from_secs(30));
    let keys: Vec<&str> = seen.iter().filter_map(|r| r.key_str()).collect();
    assert_eq!(keys, vec!["successor"]);
}
