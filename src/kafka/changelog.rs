//! The changelog topic's IO. Writing: the pipeline drains the engine's changed accounts into the
//! open transaction (as batch records, [`crate::core::Engine::drain_changes`]) before it
//! commits ([`send_changes`]), so state, outputs and offsets
//! commit or abort together. Reading: a restore reads the changelog partitions of the assigned
//! input partitions to their end ([`ChangelogReader::read`]). The record format is the core's
//! ([`crate::core::changelog`]).
//!
//! Changelog partition `i` holds the state of global input partition `i`: the partitions of
//! `topics.input`, numbered in order across the topics ([`PartitionIndex`]).

use std::time::{Duration, Instant};

use hashbrown::HashMap;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::config::Settings;
use crate::core::changelog::{parse_key, Key};
use crate::core::Engine;
use crate::telemetry::Metrics;

use super::client::{reader_config, Reader, ReaderContext};
use super::pipeline::PipelineError;
use super::txn::{TxnError, TxnWriter, NO_TAG};

/// Global numbering of the input partitions: partition `p` of `topics.input[t]` is
/// `base[t] + p`. The engine's watermarks and the changelog's partitions use it.
#[derive(Debug, Clone, Default)]
pub struct PartitionIndex {
    base: Vec<u32>,
    total: u32,
}

impl PartitionIndex {
    /// From the partition count of each input topic, in `topics.input` order.
    pub fn new(counts: &[usize]) -> Self {
        let mut base = Vec::with_capacity(counts.len());
        let mut total = 0u32;
        for &n in counts {
            base.push(total);
            total += n as u32;
        }
        PartitionIndex { base, total }
    }

    pub fn global(&self, topic: usize, partition: i32) -> u32 {
        self.base.get(topic).copied().unwrap_or(0) + partition.max(0) as u32
    }

    pub fn total(&self) -> usize {
        self.total as usize
    }
}

/// Sends every change the engine tracked since the last call into the open transaction, as
/// records of `topic` in the changelog partition of the input partition they belong to. Changes
/// of partitions not in `owned` (global numbers) are dropped: another instance owns that state.
pub fn send_changes(
    engine: &mut Engine,
    writer: &mut TxnWriter,
    topic: &str,
    owned: &[u32],
    metrics: &Metrics,
) -> Result<usize, TxnError> {
    let mut failed: Option<TxnError> = None;
    let (mut batches, mut accounts, mut tombstones, mut watermarks, mut bytes) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let drained = engine.drain_changes(|p, key, value| {
        if failed.is_some() || !owned.contains(&p) {
            return;
        }
        let mut record = BaseRecord::with_opaque_to(topic, NO_TAG).key(key).partition(p as i32);
        if let Some(v) = value {
            record = record.payload(v);
        }
        match (parse_key(key), value) {
            (_, None) => tombstones += 1,
            (Key::Batch(_), Some(_)) => batches += 1,
            (Key::Watermark, Some(_)) => watermarks += 1,
            (_, Some(_)) => accounts += 1,
        }
        bytes += (key.len() + value.map_or(0, <[u8]>::len)) as u64;
        if let Err(e) = writer.send(record) {
            failed = Some(e);
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    metrics.changelog_records.with_label_values(&["batch"]).inc_by(batches);
    metrics.changelog_records.with_label_values(&["account"]).inc_by(accounts);
    metrics.changelog_records.with_label_values(&["tombstone"]).inc_by(tombstones);
    metrics.changelog_records.with_label_values(&["watermark"]).inc_by(watermarks);
    metrics.changelog_account_states.inc_by(drained.states);
    metrics.changelog_bytes.inc_by(bytes);
    Ok(drained.records)
}

/// Applies one changelog record (partition, key, value or `None` for a tombstone); false if it
/// did not decode.
pub type ApplyRecord<'a> = dyn FnMut(u32, &[u8], Option<&[u8]>) -> bool + 'a;

/// Reads changelog partitions from their beginning, or from where a warm standby's copy ends
/// (no consumer group: nothing is committed).
pub struct ChangelogReader {
    /// read_committed: its end offset of a partition is the last stable offset.
    consumer: Reader,
    /// read_uncommitted, only asked for end offsets: the high watermark.
    uncommitted: Reader,
    topic: String,
}

/// What a restore read from one changelog partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionRead {
    /// State records (accounts, tombstones, watermark) applied.
    pub records: u64,
    /// Records that did not decode (skipped; the accounts they held start empty).
    pub invalid: u64,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

impl ChangelogReader {
    pub fn new(s: &Settings) -> Result<ChangelogReader, PipelineError> {
        let mut cfg = reader_config(s, "changelog");
        // Big fetches for a restore's bulk; and a short fetch wait, or the fetch that meets a
        // partition's end (often only a transaction marker past a warm standby's copy) may be
        // held by the broker for up to 500 ms (its default) before the end is known.
        for (k, v) in
            [("fetch.max.bytes", "104857600"), ("max.partition.fetch.bytes", "16777216"), ("fetch.wait.max.ms", "10")]
        {
            if !s.kafka.contains_key(k) {
                cfg.set(k, v);
            }
        }
        let consumer: Reader = cfg
            .create_with_context(ReaderContext)
            .map_err(|e| PipelineError::Startup(format!("cannot create the changelog reader: {e}")))?;
        cfg.set("isolation.level", "read_uncommitted");
        let uncommitted: Reader = cfg
            .create_with_context(ReaderContext)
            .map_err(|e| PipelineError::Startup(format!("cannot create the changelog reader: {e}")))?;
        Ok(ChangelogReader { consumer, uncommitted, topic: s.topics.changelog.clone() })
    }

    /// Partitions of the changelog topic.
    pub fn partitions(&self) -> Result<usize, PipelineError> {
        super::topics::partition_ids(self.consumer.client(), &self.topic, super::topics::SHOW_WAIT)
            .map(|ids| ids.len())
            .map_err(|e| PipelineError::Startup(format!("cannot read metadata of {}: {e}", self.topic)))
    }

    /// Reads `partitions` to their end, handing each record to `apply` (partition, key, value or
    /// `None` for a tombstone; `apply` returns false if the record did not decode), each from
    /// its offset in `from` (where a warm standby's copy ends) or else from its beginning. `beat`
    /// is called while waiting. Fails when Kafka does not answer within `budget`.
    ///
    /// A read_committed reader sees nothing past a transaction still open, not even records
    /// committed after it. The owner of a partition is the only live writer of its changelog
    /// partition, so an open transaction there belongs to an instance that stopped (it ends
    /// within `transaction.timeout.ms`) or to a fence (aborted at once): the read waits until
    /// the last stable offset reaches the high watermark, or it could miss the state a later
    /// owner committed behind that transaction.
    pub fn read(
        &self,
        partitions: &[u32],
        from: &HashMap<u32, i64>,
        budget: Duration,
        beat: &mut dyn FnMut(),
        apply: &mut ApplyRecord<'_>,
    ) -> Result<HashMap<u32, PartitionRead>, PipelineError> {
        let deadline = Instant::now() + budget;
        let fail = |what: String| PipelineError::Fatal(format!("cannot read the changelog {}: {what}", self.topic));
        let mut out: HashMap<u32, PartitionRead> = partitions.iter().map(|&p| (p, PartitionRead::default())).collect();
        // Partition → end offset when the read started; empty partitions are done at once.
        let mut pending: HashMap<u32, i64> = HashMap::new();
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            let mut waited = false;
            let (low, high) = loop {
                let ends = self
                    .consumer
                    .fetch_watermarks(&self.topic, p as i32, CALL_TIMEOUT)
                    .and_then(|c| Ok((c, self.uncommitted.fetch_watermarks(&self.topic, p as i32, CALL_TIMEOUT)?.1)));
                match ends {
                    Ok(((low, stable), end)) if stable >= end => break (low, stable),
                    Ok(((_, stable), end)) if Instant::now() < deadline => {
                        if !waited {
                            info!(changelog_partition = p, last_stable = stable, end,
                                "An open transaction (of a stopped instance, or a fence) holds the changelog partition; waiting for it to end.");
                            waited = true;
                        }
                    }
                    Ok(((_, stable), end)) => {
                        return Err(fail(format!(
                            "partition {p} kept an open transaction for {budget:?} (last stable offset {stable}, end {end})"
                        )))
                    }
                    Err(e) if Instant::now() < deadline => {
                        warn!(partition = p, error = %e, "Reading the changelog's end offsets failed; retrying.");
                    }
                    Err(e) => return Err(fail(format!("end offsets of partition {p}: {e}"))),
                }
                beat();
                std::thread::sleep(Duration::from_millis(100));
            };
            // From where a warm standby's copy ends, if it holds one past the log's start.
            let start = from.get(&p).copied().filter(|&o| o > low);
            if high > start.unwrap_or(low) {
                pending.insert(p, high);
                let _ =
                    tpl.add_partition_offset(&self.topic, p as i32, start.map_or(Offset::Beginning, Offset::Offset));
            }
        }
        if pending.is_empty() {
            return Ok(out);
        }
        self.consumer.assign(&tpl).map_err(|e| fail(format!("assign: {e}")))?;
        let mut last_position_check = Instant::now();
        while !pending.is_empty() {
            if Instant::now() > deadline {
                let _ = self.consumer.unassign();
                return Err(fail(format!("{} partitions not read to their end within {budget:?}", pending.len())));
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let p = m.partition() as u32;
                    if let Some(key) = m.key() {
                        let r = out.entry(p).or_default();
                        r.records += 1;
                        if !apply(p, key, m.payload()) {
                            r.invalid += 1;
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    pending.remove(&(p as u32));
                }
                Some(Err(e)) => warn!(error = %e, "Changelog read error."),
                None => beat(),
            }
            if last_position_check.elapsed() > Duration::from_millis(200) {
                // A partition ending in transaction markers may never deliver its last offset.
                last_position_check = Instant::now();
                beat();
                if let Ok(pos) = self.consumer.position() {
                    for e in pos.elements() {
                        if let (Offset::Offset(o), Some(&end)) = (e.offset(), pending.get(&(e.partition() as u32))) {
                            if o >= end {
                                pending.remove(&(e.partition() as u32));
                            }
                        }
                    }
                }
            }
        }
        let _ = self.consumer.unassign();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_numbered_across_the_input_topics_in_order() {
        let ix = PartitionIndex::new(&[6, 3]);
        assert_eq!(ix.global(0, 0), 0);
        assert_eq!(ix.global(0, 5), 5);
        assert_eq!(ix.global(1, 0), 6);
        assert_eq!(ix.global(1, 2), 8);
        assert_eq!(ix.total(), 9);
    }
}
