//! Restore planning: for each assigned input partition, where the committed history ends (live
//! processing starts there) and where re-reading it for state starts (`now - lookback`). The
//! decision per partition is pure ([`plan_partition`]); the lookups go through [`Lookups`] and
//! are retried, because a wrong answer here means lost cooldowns or mass duplicates. Does IO
//! through the trait only.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{error, info, warn};

/// Where one partition's restore starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionPlan {
    /// Index of the input topic in `topics.input`.
    pub topic: usize,
    pub partition: i32,
    /// First offset re-read for state only (no outputs).
    pub start: i64,
    /// First offset processed live: the committed offset, moved into the retained range.
    pub until: i64,
    /// Committed records deleted by retention before they were processed (0 normally).
    pub gap: i64,
    /// The committed offset was beyond the end of the partition (topic truncated or recreated):
    /// everything retained is processed live.
    pub reset: bool,
}

/// The decision for one partition, from what the broker said.
/// - `committed`: the group's committed offset (`None`: the group never committed here).
/// - `low`/`high`: the partition's first retained offset and its end.
/// - `by_time`: the first offset at or after `now - lookback` (`None`: no record that recent).
pub fn plan_partition(
    topic: usize,
    partition: i32,
    committed: Option<i64>,
    low: i64,
    high: i64,
    by_time: Option<i64>,
) -> PartitionPlan {
    let high = high.max(low);
    let (until, gap, reset) = match committed {
        // Never committed: auto.offset.reset = earliest, nothing to restore.
        None => (low, 0, false),
        // Retention deleted records this group had not processed yet: they are gone; go on from
        // the first retained one and say how many were lost.
        Some(c) if c < low => (low, low - c, false),
        // The partition is shorter than what was committed: the topic was recreated or
        // truncated, so nothing retained was processed under this offset. Process it all.
        Some(c) if c > high => (low, 0, true),
        Some(c) => (c, 0, false),
    };
    let start = by_time.unwrap_or(until).max(low).min(until);
    PartitionPlan { topic, partition, start, until, gap, reset }
}

/// The offset lookups restore planning needs (the consumer in production, a fake in tests).
pub trait Lookups {
    fn committed(&self, tpl: &TopicPartitionList, timeout: Duration) -> Result<TopicPartitionList, KafkaError>;
    fn offsets_for_times(&self, tpl: &TopicPartitionList, timeout: Duration) -> Result<TopicPartitionList, KafkaError>;
    fn watermarks(&self, topic: &str, partition: i32, timeout: Duration) -> Result<(i64, i64), KafkaError>;
}

impl<C: ConsumerContext> Lookups for BaseConsumer<C> {
    fn committed(&self, tpl: &TopicPartitionList, timeout: Duration) -> Result<TopicPartitionList, KafkaError> {
        self.committed_offsets(tpl.clone(), timeout)
    }

    fn offsets_for_times(&self, tpl: &TopicPartitionList, timeout: Duration) -> Result<TopicPartitionList, KafkaError> {
        Consumer::offsets_for_times(self, tpl.clone(), timeout)
    }

    fn watermarks(&self, topic: &str, partition: i32, timeout: Duration) -> Result<(i64, i64), KafkaError> {
        self.fetch_watermarks(topic, partition, timeout)
    }
}

/// Restore planning failed for longer than its budget: the assignment cannot be trusted.
#[derive(Debug, thiserror::Error)]
#[error("cannot plan the restore of {topic}[{partition}]: {what} kept failing for {budget:?} (last error: {last})")]
pub struct PlanError {
    pub topic: String,
    pub partition: i32,
    pub what: &'static str,
    pub budget: Duration,
    pub last: String,
}

/// Per-call timeout of a lookup; a slower broker is retried until the budget is spent.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// Plans the restore of `partitions` (topic index, partition). Every lookup is retried until
/// `budget` is spent (a committed offset can be unstable until a dead member's transaction
/// times out); then the plan fails. It never falls back to a default offset.
pub fn plan(
    lookups: &dyn Lookups,
    inputs: &[String],
    partitions: &[(usize, i32)],
    lookback_ms: i64,
    now_ms: i64,
    budget: Duration,
) -> Result<Vec<PartitionPlan>, PlanError> {
    let deadline = Instant::now() + budget;
    let mut tpl = TopicPartitionList::new();
    let mut by_time = TopicPartitionList::new();
    for &(t, p) in partitions {
        tpl.add_partition(&inputs[t], p);
        let _ = by_time.add_partition_offset(&inputs[t], p, Offset::Offset(now_ms.saturating_sub(lookback_ms)));
    }
    let first = partitions.first().map_or((String::new(), -1), |&(t, p)| (inputs[t].clone(), p));
    let fail = |what: &'static str, topic: &str, partition: i32, last: String| PlanError {
        topic: topic.to_string(),
        partition,
        what,
        budget,
        last,
    };
    let committed = retry(deadline, || lookups.committed(&tpl, CALL_TIMEOUT).and_then(all_ok), "committed offsets")
        .map_err(|e| fail("reading committed offsets", &first.0, first.1, e))?;
    let starts =
        retry(deadline, || lookups.offsets_for_times(&by_time, CALL_TIMEOUT).and_then(all_ok), "offsets by time")
            .map_err(|e| fail("looking up offsets by time", &first.0, first.1, e))?;
    let mut out = Vec::with_capacity(partitions.len());
    for &(t, p) in partitions {
        let topic = inputs[t].as_str();
        let (low, high) = retry(deadline, || lookups.watermarks(topic, p, CALL_TIMEOUT), "watermarks")
            .map_err(|e| fail("reading watermarks", topic, p, e))?;
        let committed = committed.find_partition(topic, p).and_then(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(o),
            _ => None,
        });
        let by_time = starts.find_partition(topic, p).and_then(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(o),
            _ => None,
        });
        let plan = plan_partition(t, p, committed, low, high, by_time);
        info!(topic, partition = p, committed = ?committed, first_retained = low, end = high, restore_from = plan.start,
            live_from = plan.until, "Restore planned.");
        if plan.gap > 0 {
            error!(topic, partition = p, committed = ?committed, first_retained = low, lost = plan.gap,
                "Retention deleted input records before they were processed; going on from the first retained one.");
        }
        if plan.reset {
            warn!(topic, partition = p, committed = ?committed, end = high,
                "The committed offset is beyond the end of the partition (topic recreated or truncated); processing it from the start.");
        }
        out.push(plan);
    }
    Ok(out)
}

/// A partition-level error inside a successful answer counts as a failed lookup.
fn all_ok(tpl: TopicPartitionList) -> Result<TopicPartitionList, KafkaError> {
    for e in tpl.elements() {
        e.error()?;
    }
    Ok(tpl)
}

fn retry<T>(deadline: Instant, mut call: impl FnMut() -> Result<T, KafkaError>, what: &str) -> Result<T, String> {
    loop {
        match call() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < deadline => {
                warn!(lookup = what, error = %e, "Offset lookup failed; retrying.");
                std::thread::sleep(RETRY_PAUSE);
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::RDKafkaErrorCode;
    use std::cell::Cell;

    #[test]
    fn committed_offset_inside_the_retained_range_restores_up_to_it() {
        let p = plan_partition(0, 1, Some(500), 100, 900, Some(200));
        assert_eq!((p.start, p.until, p.gap, p.reset), (200, 500, 0, false));
    }

    #[test]
    fn retention_gap_goes_on_from_the_first_retained_offset_and_counts_the_lost_records() {
        // Regression: the restore plan used to panic here (`clamp` with low > high) inside the
        // rebalance callback, aborting the process on every restart.
        let p = plan_partition(0, 0, Some(40), 100, 900, Some(100));
        assert_eq!((p.start, p.until, p.gap, p.reset), (100, 100, 60, false));
    }

    #[test]
    fn committed_offset_beyond_the_end_processes_the_partition_live_instead_of_restoring_it() {
        // Regression: records of a recreated topic became restore-only and got no outcome.
        let p = plan_partition(0, 0, Some(5_000), 0, 300, Some(0));
        assert_eq!((p.start, p.until, p.gap, p.reset), (0, 0, 0, true));
    }

    #[test]
    fn no_committed_offset_and_no_recent_record_mean_no_restore() {
        assert_eq!(plan_partition(0, 0, None, 7, 90, Some(10)).until, 7);
        let p = plan_partition(0, 0, Some(50), 0, 90, None);
        assert_eq!((p.start, p.until), (50, 50));
    }

    /// Lookups that fail `failures` times, then answer.
    struct Flaky {
        failures: Cell<u32>,
        committed: i64,
    }

    fn err() -> KafkaError {
        KafkaError::MetadataFetch(RDKafkaErrorCode::UnstableOffsetCommit)
    }

    impl Lookups for Flaky {
        fn committed(&self, tpl: &TopicPartitionList, _: Duration) -> Result<TopicPartitionList, KafkaError> {
            if self.failures.get() > 0 {
                self.failures.set(self.failures.get() - 1);
                return Err(err());
            }
            let mut out = TopicPartitionList::new();
            for e in tpl.elements() {
                let _ = out.add_partition_offset(e.topic(), e.partition(), Offset::Offset(self.committed));
            }
            Ok(out)
        }
        fn offsets_for_times(&self, tpl: &TopicPartitionList, _: Duration) -> Result<TopicPartitionList, KafkaError> {
            let mut out = TopicPartitionList::new();
            for e in tpl.elements() {
                let _ = out.add_partition_offset(e.topic(), e.partition(), Offset::Offset(3));
            }
            Ok(out)
        }
        fn watermarks(&self, _: &str, _: i32, _: Duration) -> Result<(i64, i64), KafkaError> {
            Ok((0, 1_000))
        }
    }

    #[test]
    fn a_failing_committed_offset_lookup_is_retried_not_replaced_by_the_oldest_offset() {
        // Regression: a failed lookup used to plan the partition from its first retained offset,
        // live, with an empty dedupe set: mass duplicates.
        let inputs = vec!["in".to_string()];
        let flaky = Flaky { failures: Cell::new(3), committed: 700 };
        let plan = plan(&flaky, &inputs, &[(0, 0), (0, 1)], 1_000, 10_000, Duration::from_secs(30)).unwrap();
        assert_eq!(plan.len(), 2);
        assert!(plan.iter().all(|p| p.start == 3 && p.until == 700), "{plan:?}");
        assert_eq!(flaky.failures.get(), 0);
    }

    #[test]
    fn a_lookup_that_keeps_failing_fails_the_plan_loudly() {
        let inputs = vec!["in".to_string()];
        let flaky = Flaky { failures: Cell::new(u32::MAX), committed: 700 };
        let e = plan(&flaky, &inputs, &[(0, 2)], 1_000, 10_000, Duration::from_millis(300)).unwrap_err();
        assert_eq!((e.topic.as_str(), e.partition, e.what), ("in", 2, "reading committed offsets"));
        assert!(e.to_string().contains("kept failing"), "{e}");
    }
}
