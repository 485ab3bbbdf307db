//! Warm standby (`pipeline.standby = true`): a thread that follows every partition of the
//! changelog topic (read_committed) that this instance does not own and keeps, per partition,
//! the state its records hold, decoded (an [`Engine::standby`] per partition, fed by
//! [`Engine::load_state`]), and the offset it has read to. When a partition is assigned to this
//! instance, its restore takes that state over ([`Engine::adopt_partition`]: the partition's
//! store and dedupe ids move whole, nothing is decoded, copied or fetched) and reads from Kafka
//! only the changelog written since ([`super::changelog::ChangelogReader::read`] from the
//! standby's offset): a failover or a scale-out reads the tail of the log instead of all of it,
//! and the hand-over costs the same for 10 accounts or 10 million. The state it yields is the
//! same as a read from the beginning (the copy is the compacted prefix of the same committed
//! log, decoded the same way).
//!
//! While this instance owns a partition, the standby skips its records (the live engine holds
//! that state). When the partition goes to another instance ([`Standby::keep_only`]), the
//! standby reads it again from the beginning, in the background.
//!
//! What it costs: the decoded state of every other partition's live accounts in memory (as
//! much as their owners hold for them), decoding their changelog writes on this thread, and
//! one more consumer reading them. librdkafka's assignors do not know about standbys, so this
//! instance is not preferred for the partitions it follows; every instance following every
//! partition makes that moot (docs/changelog.md, "Warm standby").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hashbrown::{HashMap, HashSet};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::config::Settings;
use crate::core::hash::Keys;
use crate::core::{Engine, Policy};
use crate::telemetry::Metrics;

use super::client::{reader_config, Reader, ReaderContext};
use super::pipeline::PipelineError;

/// The followed state of one changelog partition.
struct Copy {
    /// The partition's records applied in log order, decoded.
    engine: Engine,
    /// The offset after the last record applied: a read from here completes the copy.
    next: i64,
}

struct Followed {
    partitions: HashMap<u32, Copy>,
    /// Partitions this instance owns (their copies were handed over): their records are skipped.
    given: HashSet<u32>,
    /// Partitions no longer owned, to be read again from the beginning: skipped until the
    /// follow thread has moved its reader back ([`follow`]).
    reread: HashSet<u32>,
    /// What each partition's engine is built from.
    policy: Policy,
    keys: Keys,
    /// Accounts held over all partitions.
    accounts: usize,
    /// Records that did not decode (skipped, as a restore skips them), also counted in
    /// `resetguard_standby_invalid_records_total`.
    invalid: u64,
    invalid_metric: prometheus::IntCounter,
}

impl Followed {
    fn new(policy: &Policy, keys: Keys, invalid_metric: prometheus::IntCounter) -> Followed {
        Followed {
            partitions: HashMap::new(),
            given: HashSet::new(),
            reread: HashSet::new(),
            policy: policy.clone(),
            keys,
            accounts: 0,
            invalid: 0,
            invalid_metric,
        }
    }

    fn apply(&mut self, partition: u32, offset: i64, key: &[u8], value: Option<&[u8]>) {
        if self.given.contains(&partition) || self.reread.contains(&partition) {
            return;
        }
        let (policy, keys) = (&self.policy, &self.keys);
        let copy = self
            .partitions
            .entry(partition)
            .or_insert_with(|| Copy { engine: Engine::standby(policy, keys.clone()), next: 0 });
        let before = copy.engine.tracked_accounts();
        if let Err(e) = copy.engine.load_state(partition, key, value) {
            if self.invalid == 0 {
                warn!(changelog_partition = partition, offset, error = %e,
                    "A changelog record does not decode; the standby skips it, as a restore would (further ones are only counted).");
            }
            self.invalid += 1;
            self.invalid_metric.inc();
        }
        self.accounts = (self.accounts + copy.engine.tracked_accounts()).saturating_sub(before);
        copy.next = copy.next.max(offset + 1);
    }

    /// The reader's position in `partition` is `offset`: every record before it was applied
    /// (what lies between the last record and it are transaction markers).
    fn passed(&mut self, partition: u32, offset: i64) {
        if let Some(copy) = self.partitions.get_mut(&partition) {
            copy.next = copy.next.max(offset);
        }
    }

    /// The copy of `partition` leaves (handed over, or dropped to be read again).
    fn take(&mut self, partition: u32) -> Option<Copy> {
        let copy = self.partitions.remove(&partition)?;
        self.accounts = self.accounts.saturating_sub(copy.engine.tracked_accounts());
        Some(copy)
    }

    /// This instance now owns `partition`: its copy (if any) is handed over and its records are
    /// skipped from now on.
    fn give(&mut self, partition: u32) -> Option<Copy> {
        self.given.insert(partition);
        self.reread.remove(&partition);
        self.take(partition)
    }

    /// This instance owns only `owned`: every other partition it was given is to be read again.
    fn keep_only(&mut self, owned: &[u32]) {
        let released: Vec<u32> = self.given.iter().copied().filter(|p| !owned.contains(p)).collect();
        for p in released {
            self.given.remove(&p);
            self.reread.insert(p);
        }
    }

    /// The reader was moved back to the beginning of `partitions`: they are followed afresh.
    fn restarted(&mut self, partitions: &[u32]) {
        for p in partitions {
            // Given again meanwhile: it stays skipped.
            if self.reread.remove(p) {
                self.take(*p);
            }
        }
    }
}

pub struct Standby {
    followed: Arc<Mutex<Followed>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Standby {
    /// Starts following the `partitions` partitions of `topics.changelog` from the beginning,
    /// decoding them under `policy` (the instance's).
    pub fn start(
        s: &Settings,
        partitions: usize,
        policy: &Policy,
        metrics: &Metrics,
    ) -> Result<Standby, PipelineError> {
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
        let followed =
            Arc::new(Mutex::new(Followed::new(policy, s.keys.clone(), metrics.standby_invalid_records.clone())));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (followed, stop, gauge) = (followed.clone(), stop.clone(), metrics.standby_records.clone());
            let topic = s.topics.changelog.clone();
            std::thread::Builder::new()
                .name("rg-standby".into())
                .spawn(move || follow(&consumer, &topic, &followed, &stop, &gauge))
                .map_err(|e| PipelineError::Startup(format!("cannot start the standby thread: {e}")))?
        };
        info!(partitions, topic = %s.topics.changelog, "Warm standby following the changelog.");
        Ok(Standby { followed, stop, thread: Some(thread) })
    }

    /// Hands the followed state of `partition` to `engine` ([`Engine::adopt_partition`], in
    /// O(1)) and returns the offset to read the rest of the changelog from and how many
    /// accounts and cooldowns it handed over (`None`: nothing followed yet). From now on this
    /// instance owns the partition: the standby skips its records until [`Standby::keep_only`]
    /// says otherwise.
    pub fn adopt(&self, partition: u32, engine: &mut Engine) -> Option<(i64, u64)> {
        let copy = self.lock().give(partition)?;
        Some((copy.next, engine.adopt_partition(copy.engine, partition)))
    }

    /// This instance owns only the `owned` partitions (global numbers) now: the others it took
    /// over are followed again, read from the beginning in the background.
    pub fn keep_only(&self, owned: &[u32]) {
        self.lock().keep_only(owned);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Followed> {
        self.followed.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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

/// The standby thread: applies every committed changelog record of the partitions it follows, in
/// offset order per partition; pauses the partitions its instance owns, and moves its reader back
/// to the beginning of those the instance gave up. Errors are logged and retried (librdkafka
/// reconnects); a restore never waits for it.
fn follow(consumer: &Reader, topic: &str, followed: &Mutex<Followed>, stop: &AtomicBool, gauge: &prometheus::IntGauge) {
    let lock = || followed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let one = |p: u32| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, p as i32);
        tpl
    };
    // Partitions the instance owns are not fetched (their records would only be skipped).
    let mut paused: HashSet<u32> = HashSet::new();
    let mut last_position = std::time::Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if last_position.elapsed() >= Duration::from_millis(100) {
            last_position = std::time::Instant::now();
            // Released partitions go back to their beginning before the next poll: no record of
            // them is applied between the seek and the fresh start (a seek discards what was
            // fetched before it, and their records are skipped until `restarted`).
            let due: Vec<u32> = lock().reread.iter().copied().collect();
            let moved: Vec<u32> = due
                .into_iter()
                .filter(|&p| {
                    if paused.contains(&p) {
                        if let Err(e) = consumer.resume(&one(p)) {
                            warn!(changelog_partition = p, error = %e, "The standby cannot resume a released partition; retrying.");
                            return false;
                        }
                        paused.remove(&p);
                    }
                    match consumer.seek(topic, p as i32, Offset::Beginning, Duration::from_secs(1)) {
                        Ok(()) => true,
                        Err(e) => {
                            warn!(changelog_partition = p, error = %e, "The standby cannot go back to a released partition's beginning; retrying.");
                            false
                        }
                    }
                })
                .collect();
            let mut f = lock();
            f.restarted(&moved);
            // A partition's log usually ends in a transaction marker, which is never delivered:
            // the reader's position passes it, so a restore need not fetch it.
            if let Ok(pos) = consumer.position() {
                for e in pos.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        f.passed(e.partition() as u32, o);
                    }
                }
            }
            // Also when no record comes: a hand-over or a re-read changes what it holds.
            gauge.set(f.accounts as i64);
            let owned: Vec<u32> = f.given.iter().copied().filter(|p| !paused.contains(p)).collect();
            drop(f);
            for p in owned {
                match consumer.pause(&one(p)) {
                    Ok(()) => {
                        paused.insert(p);
                    }
                    Err(e) => {
                        warn!(changelog_partition = p, error = %e, "The standby cannot pause a partition its instance owns; its records are skipped.")
                    }
                }
            }
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if let Some(key) = m.key() {
                    let mut f = lock();
                    f.apply(m.partition() as u32, m.offset(), key, m.payload());
                    gauge.set(f.accounts as i64);
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
    use crate::core::changelog::{parse_key, Key};
    use crate::core::event::format_rfc3339_ms;
    use crate::core::TimeMode;

    #[test]
    fn the_copy_holds_what_the_records_hold_and_hands_it_over_as_a_load_would() {
        let policy = Policy::default_with_version("v1");
        let now = 1_780_000_000_000;
        let mut live = Engine::new(Arc::new(policy.clone()), Keys::demo(), TimeMode::Wall);
        // One record per account (format 2), so the test can expire and spoil single accounts;
        // batches through a standby: tests/changelog_restore.rs (`Read::Standby`).
        live.track_changes_as(2);
        let mut sent = Vec::new();
        let events = [
            ("a", 2, "impossible_travel"),
            ("a", 2, "breached_password"),
            ("b", 2, "new_device"),
            ("c", 3, "mfa_failure"),
        ];
        for (i, (account, p, signal)) in events.iter().enumerate() {
            let ev = format!(
                r#"{{"event_id":"e{i}","account_id":"{account}","occurred_at":"{}","source":"src-{p}","signal":"{signal}","risk":0.9}}"#,
                format_rfc3339_ms(now)
            );
            live.process(ev.as_bytes(), *p, now);
            sent.push(ev);
        }
        let mut log: Vec<(u32, Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        live.drain_changes(|p, k, v| log.push((p, k.to_vec(), v.map(<[u8]>::to_vec))));
        // One account of partition 2 expires (a tombstone), and one record is garbage.
        let gone = log.iter().find(|(p, k, _)| *p == 2 && matches!(parse_key(k), Key::Account(_))).unwrap().1.clone();
        log.push((2, gone, None));
        log.push((3, log.iter().find(|(p, _, _)| *p == 3).unwrap().1.clone(), Some(b"not a record".to_vec())));

        let invalid = prometheus::IntCounter::new("invalid", "invalid").unwrap();
        let mut f = Followed::new(&policy, Keys::demo(), invalid.clone());
        for (offset, (p, k, v)) in log.iter().enumerate() {
            f.apply(*p, 10 * offset as i64, k, v.as_deref());
        }
        assert_eq!((f.invalid, invalid.get()), (1, 1));
        assert_eq!(f.accounts, 2, "a and b on 2 less the tombstoned one, c on 3");
        let last = |p: u32| log.iter().rposition(|r| r.0 == p).unwrap() as i64;
        assert_eq!(f.partitions[&2].next, 10 * last(2) + 1);
        assert_eq!(f.partitions[&3].next, 10 * last(3) + 1);
        // Past a transaction marker; a partition without records gets no copy.
        f.passed(3, 10 * last(3) + 2);
        f.passed(4, 7);
        assert_eq!(f.partitions[&3].next, 10 * last(3) + 2);
        assert!(!f.partitions.contains_key(&4));

        // The hand-over leaves an engine as loading partition 2's records does.
        let fresh = || Engine::new(Arc::new(policy.clone()), Keys::demo(), TimeMode::Wall);
        let (mut loaded, mut adopted) = (fresh(), fresh());
        for (p, k, v) in log.iter().filter(|r| r.0 == 2) {
            loaded.load_state(*p, k, v.as_deref()).unwrap();
        }
        let next = f.partitions[&2].next;
        let copy = f.give(2).unwrap();
        assert_eq!(copy.next, next);
        assert_eq!(adopted.adopt_partition(copy.engine, 2), 1);
        assert_eq!(adopted.state_dump(), loaded.state_dump());
        assert_eq!(adopted.breaker().cell_count(), loaded.breaker().cell_count(), "no cell named twice");
        assert_eq!(adopted.tracked_accounts(), 1);
        assert_eq!(adopted.watermark(2), loaded.watermark(2));
        assert!(adopted.watermark(2).is_some());
        assert_eq!(f.accounts, 1, "only c on 3 is still followed");
        // The ids came over too: b's event re-sent is a duplicate (a's account was deleted).
        let again = adopted.process(sent[2].as_bytes(), 2, now + 1_000).outcome;
        assert_eq!(again, crate::core::Outcome::Duplicate);

        // Owned here: its records are skipped; released: skipped until the reader is back at the
        // beginning, then followed afresh.
        let (k2, v2) = (log[0].1.clone(), log[0].2.clone());
        f.apply(2, 1000, &k2, v2.as_deref());
        assert!(!f.partitions.contains_key(&2));
        f.keep_only(&[2, 3]);
        assert!(f.given.contains(&2) && f.reread.is_empty(), "still owned");
        f.keep_only(&[3]);
        assert!(f.reread.contains(&2) && !f.given.contains(&2));
        f.apply(2, 1001, &k2, v2.as_deref());
        assert!(!f.partitions.contains_key(&2), "not before the reader went back");
        f.restarted(&[2]);
        f.apply(2, 0, &k2, v2.as_deref());
        assert_eq!((f.partitions[&2].next, f.accounts), (1, 2));
        // Released and given back before the reader went back: it stays skipped.
        assert!(f.give(2).is_some());
        f.keep_only(&[]);
        assert!(f.give(2).is_none());
        f.restarted(&[2]);
        f.apply(2, 5, &k2, v2.as_deref());
        assert!(!f.partitions.contains_key(&2) && f.given.contains(&2));
    }
}
