//! Smoke tests for the real-Kafka test harness (tests/common/kafka.rs): exactly-once
//! semantics must hold on the broker the integration tests run against, and the fault tests' stream
//! must know every record it put in the topic.

mod common;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::kafka::{block_on, produce_one_async, Isolation, KafkaBroker, Record};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

fn keys(records: &[Record]) -> Vec<&str> {
    records.iter().map(|r| r.key_str().expect("record has a key")).collect()
}

/// Sends `(key, payload)` records inside the producer's open transaction and waits until
/// every one is acknowledged by the broker (so they are in the partition log).
fn send_all(producer: &FutureProducer, topic: &str, records: &[(&str, &str)]) {
    let pending: Vec<_> = records
        .iter()
        .map(|(k, v)| produce_one_async(producer, topic, Some(k.as_bytes()), Some(v.as_bytes()), &[]))
        .collect();
    for delivery in pending {
        block_on(delivery);
    }
}

/// Polls a subscribed consumer until `n` records arrived (asserting no more than `n`).
fn consume_n(consumer: &BaseConsumer, n: usize) -> Vec<Record> {
    let deadline = Instant::now() + TIMEOUT;
    let mut out = Vec::new();
    while out.len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} records consumed", out.len());
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => out.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
                headers: Vec::new(),
            }),
            Some(Err(e)) => panic!("consume: {e}"),
        }
    }
    out
}

#[test]
fn committed_transaction_with_consumer_offsets_is_seen_exactly_once() {
    let broker = KafkaBroker::start();
    eprintln!("broker startup took {:.2?}", broker.startup_time);
    broker.create_topic("risk-events", 2);
    broker.create_topic("reset-decisions", 2);

    let inputs: Vec<(String, String)> =
        (0..10).map(|i| (format!("acct-{i}"), format!("{{\"account\":\"acct-{i}\",\"score\":{i}}}"))).collect();
    let input_refs: Vec<(&str, &str)> = inputs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    broker.produce("risk-events", &input_refs);

    // consume -> transform -> produce + offsets in one transaction
    let group = "resetguard-eos";
    let consumer = broker.read_committed_consumer(group);
    consumer.subscribe(&["risk-events"]).expect("subscribe");
    let consumed = consume_n(&consumer, inputs.len());

    let producer = broker.transactional_producer("resetguard-eos-tx");
    producer.begin_transaction().expect("begin_transaction");
    let pending: Vec<_> = consumed
        .iter()
        .map(|r| {
            let decision = format!("decided:{}", r.payload_str().expect("payload"));
            let src_offset = r.offset.to_string();
            produce_one_async(
                &producer,
                "reset-decisions",
                r.key.as_deref(),
                Some(decision.as_bytes()),
                &[("src-offset", src_offset.as_bytes())],
            )
        })
        .collect();
    for delivery in pending {
        block_on(delivery);
    }
    let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    for r in &consumed {
        let next = next_offsets.entry(r.partition).or_insert(0);
        *next = (*next).max(r.offset + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for (&p, &next) in &next_offsets {
        tpl.add_partition_offset("risk-events", p, Offset::Offset(next)).expect("offset tpl");
    }
    let cgm = consumer.group_metadata().expect("consumer group metadata");
    producer.send_offsets_to_transaction(&tpl, &cgm, TIMEOUT).expect("send_offsets_to_transaction");
    producer.commit_transaction(TIMEOUT).expect("commit_transaction");

    // read_committed sees every output exactly once, with the right contents
    let out = broker.read_all_committed("reset-decisions", TIMEOUT);
    assert_eq!(out.len(), inputs.len(), "output records: {out:?}");
    let mut got: Vec<(String, String, String)> = out
        .iter()
        .map(|r| {
            let src = r.header("src-offset").flatten().expect("src-offset header");
            (
                r.key_str().expect("key").to_string(),
                r.payload_str().expect("payload").to_string(),
                String::from_utf8(src.to_vec()).expect("utf8 header"),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String, String)> = consumed
        .iter()
        .map(|r| {
            (
                r.key_str().expect("key").to_string(),
                format!("decided:{}", r.payload_str().expect("payload")),
                r.offset.to_string(),
            )
        })
        .collect();
    want.sort();
    assert_eq!(got, want);
    let mut input_keys: Vec<&str> = inputs.iter().map(|(k, _)| k.as_str()).collect();
    input_keys.sort_unstable();
    let mut out_keys = keys(&out);
    out_keys.sort_unstable();
    assert_eq!(out_keys, input_keys);
    // No hidden duplicates below the read_committed view either.
    assert_eq!(broker.read_to_end("reset-decisions", Isolation::ReadUncommitted, TIMEOUT).len(), inputs.len());

    // The input offsets were committed atomically with the outputs.
    let committed = broker.committed_offsets(group, "risk-events");
    let want_committed: Vec<(i32, Option<i64>)> = (0..2).map(|p| (p, next_offsets.get(&p).copied())).collect();
    assert_eq!(committed, want_committed);
    let total: i64 = committed.iter().map(|(_, o)| o.unwrap_or(0)).sum();
    assert_eq!(total, inputs.len() as i64);

    // Dropping the broker stops it and removes its files.
    drop(consumer);
    drop(producer);
    let addr = broker.bootstrap.clone();
    let dir = broker.dir().to_path_buf();
    TcpStream::connect(&addr).expect("broker listening before drop");
    drop(broker);
    assert!(TcpStream::connect(&addr).is_err(), "broker still listening after drop");
    assert!(!dir.exists(), "broker dir {} left behind", dir.display());
}

#[test]
fn aborted_transaction_is_invisible_to_read_committed() {
    let broker = KafkaBroker::start();
    eprintln!("broker startup took {:.2?}", broker.startup_time);
    let topic = "reset-requests";
    broker.create_topic(topic, 1);
    let producer = broker.transactional_producer("resetguard-abort-tx");

    producer.begin_transaction().expect("begin 1");
    send_all(&producer, topic, &[("c1", "commit-1"), ("c2", "commit-2")]);
    producer.commit_transaction(TIMEOUT).expect("commit 1");
    assert_eq!(keys(&broker.read_all_committed(topic, TIMEOUT)), ["c1", "c2"]);

    producer.begin_transaction().expect("begin 2");
    send_all(&producer, topic, &[("a1", "abort-1"), ("a2", "abort-2"), ("a3", "abort-3")]);
    // The open transaction's records are in the log, but read_committed stops before them.
    assert_eq!(keys(&broker.read_to_end(topic, Isolation::ReadUncommitted, TIMEOUT)), ["c1", "c2", "a1", "a2", "a3"]);
    assert_eq!(keys(&broker.read_to_end(topic, Isolation::ReadCommitted, TIMEOUT)), ["c1", "c2"]);
    producer.abort_transaction(TIMEOUT).expect("abort 2");

    producer.begin_transaction().expect("begin 3");
    send_all(&producer, topic, &[("c3", "commit-3")]);
    producer.commit_transaction(TIMEOUT).expect("commit 3");

    let committed = broker.read_all_committed(topic, TIMEOUT);
    assert_eq!(keys(&committed), ["c1", "c2", "c3"]);
    let payloads: Vec<&str> = committed.iter().map(|r| r.payload_str().expect("payload")).collect();
    assert_eq!(payloads, ["commit-1", "commit-2", "commit-3"]);
    assert!(committed.iter().all(|r| r.headers.is_empty()));

    // Proof the aborted records really were written (filtering is the broker's/isolation's job).
    let raw = broker.read_to_end(topic, Isolation::ReadUncommitted, TIMEOUT);
    assert_eq!(keys(&raw), ["c1", "c2", "a1", "a2", "a3", "c3"]);
    // Offsets skip the control records (commit/abort markers) between the data records.
    let offsets: Vec<i64> = raw.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [0, 1, 3, 4, 5, 7]);
}

/// The fault tests' stream (tests/common/faults.rs) finds a record the producer wrote twice (as
/// an idempotent producer can around a broker kill): the first copy in the log keeps the input's
/// expected outcome, the later one expects the duplicate's rejection. Here the copies are
/// written before the stream, so the stream's own writes are the later ones.
#[test]
fn a_stream_accounts_for_inputs_the_producer_wrote_twice() {
    use common::faults::Stream;
    use common::service::{crash_inputs, produce, Expect, Topics};
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "copies");
    let inputs = crash_inputs(300);
    let plain = inputs.iter().position(|i| i.expect == Expect::NoAction && i.event_id.is_some()).unwrap();
    let notice = inputs.iter().position(|i| i.expect == Expect::Notice).unwrap();
    let early: Vec<(i32, i64)> =
        [plain, notice].iter().map(|&i| produce(broker, &t.input, &inputs[i..=i])[0]).collect();
    let stream = Stream::paced(broker, &t.input, inputs.clone(), Duration::from_millis(300));
    let (got, coords) = stream.finish();
    assert_eq!(got.len(), inputs.len() + 2, "two more records than inputs");
    assert_eq!(coords.len(), got.len());
    assert_eq!((coords[plain], coords[notice]), (early[0], early[1]), "the first copies keep the outcomes");
    let extras = &got[inputs.len()..];
    for i in [plain, notice] {
        assert!(extras.iter().any(|x| x.bytes == inputs[i].bytes), "input {i} has its later copy");
    }
    for extra in extras {
        assert_eq!(extra.expect, Expect::Dlq("event_id_seen"));
        assert_eq!(extra.event_id, None, "the copy's rejection is not a second outcome of the event");
    }
    let distinct: std::collections::BTreeSet<_> = coords.iter().collect();
    assert_eq!(distinct.len(), coords.len(), "every record in the topic is one input");
}
