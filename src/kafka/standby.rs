//! Warm standby (`pipeline.standby = true`): a thread that follows every partition of the
//! changelog topic (read_committed) and keeps, per partition, the newest record of each key and
//! the offset it has read to. When a partition is assigned to this instance, its restore applies
//! that copy from memory and reads from Kafka only the changelog written since
//! ([`super::changelog::ChangelogReader::read`] from the standby's offset): a failover or a scale-out
//! reads the tail of the log instead of all of it. The state it yields is the same as a read from
//! the beginning (the copy is the compacted prefix of the same committed log).
//!
//! What it costs: the changelog's live records of every partition in memory (about key + value +
//! 48 bytes each), and one more consumer reading every changelog write of the fleet.
//! librdkafka's assignors do not know about standbys, so this instance is not preferred for the
//! partitions it follows; every instance following every partition makes that moot
//! (docs/changelog.md, "Warm standby").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hashbrown::HashMap;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::config::Settings;
use crate::telemetry::Metrics;

use super::changelog::ApplyRecord;
use super::client::{reader_config, Reader, ReaderContext};
use super::pipeline::PipelineError;

/// The followed copy of one changelog partition.
#[derive(Default)]
struct Copy {
    /// Key → newest value (tombstones remove the key).
    records: HashMap<Box<[u8]>, Box<[u8]>>,
    /// The offset after the last record applied: a read from here completes the copy.
    next: i64,
}

#[derive(Default)]
struct Followed {
    partitions: HashMap<u32, Copy>,
    /// Records held over all partitions.
    records: usize,
}

impl Followed {
    fn apply(&mut self, partition: u32, offset: i64, key: &[u8], value: Option<&[u8]>) {
        let copy = self.partitions.entry(partition).or_default();
        match value {
            Some(v) => {
                if copy.records.insert(key.into(), v.into()).is_none() {
                    self.records += 1;
                }
            }
            None => {
                if copy.records.remove(key).is_some() {
                    self.records -= 1;
                }
            }
        }
        copy.next = copy.next.max(offset + 1);
    }
}

pub struct Standby {
    followed: Arc<Mutex<Followed>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Standby {
    /// Starts following the `partitions` partitions of `topics.changelog` from the beginning.
    pub fn start(s: &Settings, partitions: usize, metrics: &Metrics) -> Result<Standby, PipelineError> {
        let mut cfg = reader_config(s, "standby");
        cfg.set("enable.partition.eof", "false");
        let consumer: Reader = cfg
            .create_with_context(ReaderContext)
            .map_err(|e| PipelineError::Startup(format!("cannot create the standby reader: {e}")))?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            let _ = tpl.add_partition_offset(&s.topics.changelog, p as i32, Offset::Beginning);
        }
        consumer.assign(&tpl).map_err(|e| PipelineError::Startup(format!("cannot assign the standby reader: {e}")))?;
        let followed = Arc::new(Mutex::new(Followed::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (followed, stop, gauge) = (followed.clone(), stop.clone(), metrics.standby_records.clone());
            std::thread::Builder::new()
                .name("rg-standby".into())
                .spawn(move || follow(&consumer, &followed, &stop, &gauge))
                .map_err(|e| PipelineError::Startup(format!("cannot start the standby thread: {e}")))?
        };
        info!(partitions, topic = %s.topics.changelog, "Warm standby following the changelog.");
        Ok(Standby { followed, stop, thread: Some(thread) })
    }

    /// Applies the followed copy of `partition` through `apply` and returns the offset to read
    /// the rest of the changelog from and how many records it applied (`None`: nothing followed
    /// yet).
    pub fn replay(&self, partition: u32, apply: &mut ApplyRecord<'_>) -> Option<(i64, u64)> {
        let followed = self.followed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let copy = followed.partitions.get(&partition)?;
        let mut applied = 0;
        for (k, v) in &copy.records {
            apply(partition, k, Some(v));
            applied += 1;
        }
        Some((copy.next, applied))
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The standby thread: applies every committed changelog record, in offset order per partition.
/// Errors are logged and retried (librdkafka reconnects); a restore never waits for it.
fn follow(consumer: &Reader, followed: &Mutex<Followed>, stop: &AtomicBool, gauge: &prometheus::IntGauge) {
    while !stop.load(Ordering::SeqCst) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if let Some(key) = m.key() {
                    let mut f = followed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    f.apply(m.partition() as u32, m.offset(), key, m.payload());
                    gauge.set(f.records as i64);
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => warn!(error = %e, "Standby changelog read error; retrying."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_keeps_the_newest_value_per_key_and_drops_tombstoned_keys() {
        let mut f = Followed::default();
        f.apply(2, 0, b"a", Some(b"1"));
        f.apply(2, 1, b"b", Some(b"1"));
        f.apply(2, 2, b"a", Some(b"2"));
        f.apply(2, 5, b"b", None);
        f.apply(3, 7, b"c", Some(b"9"));
        let copy = &f.partitions[&2];
        assert_eq!(copy.next, 6);
        assert_eq!(f.records, 2, "a on 2, c on 3");
        assert_eq!(copy.records.len(), 1);
        assert_eq!(&*copy.records[&b"a"[..]], b"2");
        assert_eq!(f.partitions[&3].next, 8);
    }
}
