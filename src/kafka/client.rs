//! Builds librdkafka client configurations: the operator's `[kafka]` pass-through properties plus
//! the settings exactly-once depends on, which resetguard always sets itself; and the context of
//! the readers, which says how librdkafka's errors are logged.

use std::collections::BTreeMap;

use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, ClientContext};

use crate::config::Settings;

fn base(props: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in props {
        c.set(k, v);
    }
    c
}

/// librdkafka's default `message.max.bytes`.
const PRODUCER_DEFAULT_MAX_BYTES: usize = 1_000_000;

/// The producer's `message.max.bytes` from its configured value (librdkafka's default if unset
/// or not a number): the largest record librdkafka takes from this service.
pub fn producer_max_bytes(configured: Option<&str>) -> usize {
    configured.and_then(|v| v.parse::<usize>().ok()).unwrap_or(PRODUCER_DEFAULT_MAX_BYTES)
}

/// Consumer of the input topics: manual offsets committed inside transactions, read_committed.
pub fn consumer_config(s: &Settings) -> ClientConfig {
    let mut c = base(&s.kafka);
    c.set("group.id", &s.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        // The end of a partition tells a restore that it is complete when the committed offset
        // sits behind records a read_committed consumer never sees (aborted, markers).
        .set("enable.partition.eof", "true");
    if !s.kafka.contains_key("partition.assignment.strategy") {
        // Incremental: a rebalance moves only the partitions that change owner, the others keep
        // their state and keep deciding (docs/changelog.md, "Rebalancing"). Without the
        // changelog, eager `range` (every partition restored from the input anyway).
        c.set("partition.assignment.strategy", if s.changelog { "cooperative-sticky" } else { "range" });
    }
    if s.static_membership {
        // The instance name (the transactional id, stable across restarts) lets a restarted
        // instance take its partitions back without a rebalance of the others.
        c.set("group.instance.id", &s.transactional_id);
    }
    // Defaults an operator may override in [kafka].
    for (k, v) in [
        ("auto.offset.reset", "earliest"),
        // Without this a consumer slower than its fetcher stalls ~1 s each time the queue refills.
        ("fetch.queue.backoff.ms", "10"),
        ("session.timeout.ms", "10000"),
        ("heartbeat.interval.ms", "1000"),
        // Consumer lag comes from these statistics, not from blocking watermark requests.
        ("statistics.interval.ms", "2000"),
    ] {
        if !s.kafka.contains_key(k) {
            c.set(k, v);
        }
    }
    c
}

/// Logs an error librdkafka reports on a client. The end of a partition (`enable.partition.eof`,
/// which the input consumer and the readers use to know a read is complete) is no error, but
/// librdkafka reports it here too: at ERROR level that was a line per partition per read.
pub fn log_client_error(error: KafkaError, reason: &str) {
    match error {
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {
            tracing::debug!(reason, "End of partition.")
        }
        e => tracing::error!(error = %e, reason, "librdkafka error."),
    }
}

/// Context of the readers ([`reader_config`]): librdkafka's defaults, errors logged by
/// [`log_client_error`].
pub struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(error, reason)
    }
}

impl ConsumerContext for ReaderContext {}

/// A consumer built from [`reader_config`].
pub type Reader = BaseConsumer<ReaderContext>;

/// A consumer that reads topics by assignment from their beginning (never joins its group,
/// never commits): `read_committed`, the end of a partition reported, and the same fetch
/// back-off as the input consumer. `role` names its group id (`<group>-<role>-reader`).
pub fn reader_config(s: &Settings, role: &str) -> ClientConfig {
    let mut c = base(&s.kafka);
    c.set("group.id", format!("{}-{role}-reader", s.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    if !s.kafka.contains_key("fetch.queue.backoff.ms") {
        // librdkafka's default (1 s) stalls a reader faster than its fetcher each time the
        // queue refills.
        c.set("fetch.queue.backoff.ms", "10");
    }
    c
}

/// Whether the consumer uses the cooperative (incremental) rebalance protocol.
pub fn cooperative(s: &Settings) -> bool {
    consumer_config(s).get("partition.assignment.strategy").is_some_and(|v| v.contains("cooperative"))
}

/// Transactional, idempotent producer of all outputs.
pub fn producer_config(s: &Settings) -> ClientConfig {
    let mut c = base(&s.kafka);
    c.set("transactional.id", &s.transactional_id).set("enable.idempotence", "true");
    for (k, v) in [
        // linger.ms=0 collapses throughput; 5 ms keeps latency low.
        ("linger.ms", "5"),
        ("transaction.timeout.ms", "30000"),
        // Must stay below transaction.timeout.ms.
        ("message.timeout.ms", "25000"),
        ("compression.type", "lz4"),
        // The writer acts on failed deliveries only (txn.rs); a success report per record was
        // served on the pipeline thread for nothing (~1 µs per produced record, measured).
        ("delivery.report.only.error", "true"),
        // The first retry of a transactional request the coordinator refused as
        // CONCURRENT_TRANSACTIONS (its last state change still being written): librdkafka's
        // 100 ms default made one commit in ten wait ~100 ms for its offsets (BENCHMARKS.md,
        // "Commits that spun and commits that waited for a retry"). Retries still back off
        // exponentially up to retry.backoff.max.ms (1 s).
        ("retry.backoff.ms", "10"),
    ] {
        if !s.kafka.contains_key(k) {
            c.set(k, v);
        }
    }
    c
}

/// Admin client for topic setup.
pub fn admin_config(s: &Settings) -> ClientConfig {
    base(&s.kafka)
}

/// Every topic the transactional producers write: the ones a fence covers (`TxnWriter::fence`).
pub fn output_topics(s: &Settings) -> Vec<&str> {
    let t = &s.topics;
    let mut topics = vec![
        t.notices.as_str(),
        t.shadow.as_str(),
        t.held.as_str(),
        t.dlq.as_str(),
        t.control.as_str(),
        t.audit.as_str(),
    ];
    if s.changelog {
        topics.push(t.changelog.as_str());
    }
    topics.sort_unstable();
    topics.dedup();
    topics
}
