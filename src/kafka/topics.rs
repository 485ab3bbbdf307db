//! Topic setup at startup: create missing topics when the config says so, otherwise fail with a
//! clear error naming the missing topics. Does IO (admin requests).

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::Settings;

use super::client::{admin_config, output_topics, producer_max_bytes};
use super::pipeline::PipelineError;

/// Ensures the topics exist. Returns the names of topics created.
pub async fn ensure_topics(s: &Settings) -> Result<Vec<String>, PipelineError> {
    let admin: AdminClient<DefaultClientContext> =
        admin_config(s).create().map_err(|e| PipelineError::Startup(format!("cannot create admin client: {e}")))?;
    let t = &s.topics;
    let mut wanted: Vec<&str> = t.input.iter().map(String::as_str).collect();
    wanted.extend(output_topics(s));
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| PipelineError::Startup(format!("cannot reach Kafka to read metadata: {e}")))?;
    let existing: Vec<String> =
        metadata.topics().iter().filter(|t| t.error().is_none()).map(|t| t.name().to_string()).collect();
    let missing: Vec<&str> = wanted.iter().copied().filter(|w| !existing.iter().any(|e| e == w)).collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    if !t.create {
        return Err(PipelineError::Startup(format!(
            "topics missing: {} (set topics.create = true to create them)",
            missing.join(", ")
        )));
    }
    // The changelog has one partition per input partition, of all input topics in order.
    let input_partitions: i32 = t
        .input
        .iter()
        .map(|i| {
            metadata
                .topics()
                .iter()
                .find(|m| m.name() == i && m.error().is_none())
                .map_or(t.partitions, |m| m.partitions().len() as i32)
        })
        .sum();
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|name| {
            if *name == t.control {
                // The latest override per cell and action per held notice is what counts.
                NewTopic::new(name, 1, TopicReplication::Fixed(t.replication)).set("cleanup.policy", "compact")
            } else if *name == t.changelog {
                // Batches no account needs any more get tombstones (docs/changelog.md).
                // A restore reads what the cleaner has not compacted yet: the active segment
                // (never cleaned) and the dirty part of the rest. Small segments rolled often and
                // a low dirty ratio keep that tail short (docs/changelog.md, "How it is read").
                NewTopic::new(name, input_partitions, TopicReplication::Fixed(t.replication))
                    .set("cleanup.policy", "compact")
                    .set("min.compaction.lag.ms", "0")
                    .set("segment.ms", "600000")
                    .set("segment.bytes", "16777216")
                    .set("min.cleanable.dirty.ratio", "0.1")
            } else {
                NewTopic::new(name, t.partitions, TopicReplication::Fixed(t.replication))
            }
        })
        .collect();
    let results = admin
        .create_topics(new.iter(), &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))))
        .await
        .map_err(|e| PipelineError::Startup(format!("cannot create topics: {e}")))?;
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok(name) => created.push(name),
            // Another instance of the fleet, starting at the same time, created it.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(PipelineError::Startup(format!("cannot create topic {name}: {code}"))),
        }
    }
    // Later lookups (partition counts, fencing, assignment) need the new topics in the metadata.
    for name in &missing {
        match partition_ids(admin.inner(), name, SHOW_WAIT) {
            Ok(ids) if !ids.is_empty() => {}
            Ok(_) => {
                return Err(PipelineError::Startup(format!(
                    "topic {name} was created but is not in the metadata after {}s",
                    SHOW_WAIT.as_secs()
                )))
            }
            Err(e) => return Err(PipelineError::Startup(format!("cannot read metadata of {name}: {e}"))),
        }
    }
    Ok(created)
}

/// How long a topic just created may take to show in the metadata with its partitions.
pub const SHOW_WAIT: Duration = Duration::from_secs(30);

/// The partition ids of `topic` in the metadata (a partition without a leader counts), asked
/// again for up to `wait` while the topic is missing, has an error or shows no partitions: a
/// topic just created (by this instance or by another one of the fleet starting at the same
/// time) reaches every broker's metadata a moment later. Empty if it never shows. Blocks
/// (startup only).
pub fn partition_ids<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    wait: Duration,
) -> Result<Vec<i32>, KafkaError> {
    let deadline = Instant::now() + wait;
    loop {
        let md = client.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let ids: Vec<i32> = md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or_else(Vec::new, |t| t.partitions().iter().map(|p| p.id()).collect());
        if !ids.is_empty() || Instant::now() >= deadline {
            return Ok(ids);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The largest record `topic` accepts from this service: the smaller of the topic's
/// `max.message.bytes` (asked from the broker; unknown if the broker does not say) and the
/// producer's `message.max.bytes`.
pub async fn record_limit(s: &Settings, topic: &str) -> usize {
    let producer_max = producer_max_bytes(s.kafka.get("message.max.bytes").map(String::as_str));
    let Ok(admin) = admin_config(s).create::<AdminClient<DefaultClientContext>>() else { return producer_max };
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let topic_max = match admin.describe_configs([&ResourceSpecifier::Topic(topic)], &opts).await {
        Ok(results) => results
            .into_iter()
            .flatten()
            .find_map(|r| r.get("max.message.bytes").and_then(|e| e.value.as_deref()?.parse::<usize>().ok())),
        Err(e) => {
            tracing::warn!(topic, error = %e, "Cannot read the topic's max.message.bytes; assuming the producer's limit.");
            None
        }
    };
    topic_max.map_or(producer_max, |t| t.min(producer_max))
}
