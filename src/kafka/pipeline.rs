//! The exactly-once loop: consume input partitions, run each message through the core, produce
//! its output record, and commit outputs together with the consumed offsets in one Kafka
//! transaction every `commit_interval`. Runs on a dedicated OS thread because librdkafka's
//! transactional calls block. Does IO; decisions are the core's.
//!
//! One event, from poll to commit: [`Pipeline::on_message`] → `Engine::process` → [`record_for`]
//! → [`TxnWriter::send`] (tagged with the input's coordinates) → [`Pipeline::commit`] (outputs and
//! offsets in one transaction; the outcome tallies reach the metrics only then).
//!
//! State lives in the compacted changelog topic ([`super::changelog`]): every transaction also
//! carries the state of every account its inputs changed (in batch records), so state, outputs
//! and offsets commit together. On every assignment and after every abort, each partition's
//! state is read back from the changelog (in proportion to its live accounts), and the
//! breaker's history is replayed from the decisions recorded there. A partition without a
//! changelog yet (the first start of this version, or `pipeline.changelog = false`) is rebuilt
//! from the input topic instead ([`super::restore`]): re-read from `now - lookback` up to its
//! committed offset in restore mode (state and breaker history, no outputs), after which, with
//! the changelog on, its whole state is written to the changelog once. Live decisions start
//! only when every assigned partition has finished restoring. Every abort, whatever caused it,
//! goes through [`Pipeline::recover`]: abort, reset state, rewind to the committed offsets,
//! restore.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// hashbrown (foldhash): the per-message maps here are on the hot path; SipHash costs more.
use hashbrown::HashMap;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::BaseRecord;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{error, info, warn};

use crate::config::Settings;
use crate::core::breaker::{Cause, CellSnapshot, CellState};
use crate::core::{Engine, Outcome, Processed, TimeMode};
use crate::telemetry::Metrics;

use super::admin;
pub use super::admin::{AdminCommand, BreakerAction, Reply};
use super::changelog::{send_changes, ChangelogReader, PartitionIndex};
use super::client::{consumer_config, log_client_error, output_topics, producer_config};
use super::control::{trip_key, TripRecord};
use super::control_reader::ControlReader;
use super::records::{record_for, Origin, DLQ_RECORD_OVERHEAD};
use super::restore::{self, PartitionPlan};
use super::standby::Standby;
use super::txn::{Tag, TxnError, TxnWriter, NO_TAG};

/// Errors that stop the pipeline. Each has a disposition: startup and fatal errors exit non-zero.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("startup failed: {0}")]
    Startup(String),
    #[error("fatal Kafka error, exiting so the orchestrator restarts the service: {0}")]
    Fatal(String),
    #[error("fatal Kafka error, exiting so the orchestrator restarts the service: {0}")]
    Transaction(#[from] TxnError),
    #[error("the assignment cannot be restored, exiting so the orchestrator restarts the service: {0}")]
    Restore(#[from] restore::PlanError),
}

/// Live status shared with the HTTP server and the demo. Counters move when their transaction
/// commits.
#[derive(Default)]
pub struct Status {
    pub ready: AtomicBool,
    pub assigned_partitions: AtomicUsize,
    pub consumed: AtomicU64,
    pub notices: AtomicU64,
    pub held: AtomicU64,
    pub dlq: AtomicU64,
    pub no_action: AtomicU64,
    pub commits: AtomicU64,
    pub breaker: Mutex<Vec<CellSnapshot>>,
    /// Wall time (ms) the pipeline loop last came round (0: not started): `/healthz`.
    pub heartbeat_ms: std::sync::atomic::AtomicI64,
    /// `pipeline.stall_timeout` in ms (0: never stalled).
    pub stall_timeout_ms: std::sync::atomic::AtomicI64,
}

impl Status {
    /// The loop came round (or is waiting for Kafka, which a restart would not cure).
    pub fn beat(&self) {
        self.heartbeat_ms.store(wall_ms(), Ordering::Relaxed);
    }
}

/// Input coordinates: (index in `topics.input`, partition).
type Tp = (usize, i32);

/// What the rebalance callback saw, for the loop to act on after the poll.
enum RebalanceEvent {
    /// Eager protocol: the whole new assignment (nothing is fetched until the loop assigns it).
    Assigned(Vec<Tp>),
    /// Cooperative protocol: partitions added to the assignment. The loop restores them and
    /// assigns them (`incremental_assign`); the others keep deciding.
    AssignedSome(Vec<Tp>),
    /// Cooperative protocol: partitions taken away. The loop commits the open transaction (state
    /// changes included), drops their state and unassigns them (`incremental_unassign`), which
    /// completes the revocation; if the assignment was `lost`, it aborts instead.
    RevokedSome {
        parts: Vec<Tp>,
        lost: bool,
    },
    /// Everything was revoked; `committed`: the open transaction was committed first (else it
    /// was aborted and its outcomes will be redone by the next owner).
    Revoked {
        committed: bool,
    },
    Fatal(TxnError),
}

/// State shared with the rebalance callback (which runs inside `consumer.poll`).
struct Shared {
    writer: Mutex<TxnWriter>,
    /// Next offset to consume per partition in the open transaction.
    offsets: Mutex<HashMap<Tp, i64>>,
    inputs: Vec<String>,
    events: Mutex<Vec<RebalanceEvent>>,
    /// Set while draining: an assignment arriving now is declined (the member is leaving).
    leaving: AtomicBool,
    /// Consumer lag per partition from librdkafka's statistics (no blocking watermark calls).
    lag: Mutex<HashMap<Tp, i64>>,
    /// The engine holds state changes not yet sent to the changelog: committing the open
    /// transaction now (on revoke) would commit offsets without the state they built.
    unflushed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn offsets_tpl(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (&(t, p), &o) in lock(&self.offsets).iter() {
            let _ = tpl.add_partition_offset(&self.inputs[t], p, Offset::Offset(o));
        }
        tpl
    }

    /// The offsets of the open transaction, which are forgotten here: they go with its commit.
    fn take_offsets(&self) -> TopicPartitionList {
        let tpl = self.offsets_tpl();
        lock(&self.offsets).clear();
        tpl
    }

    fn topic_index(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|t| t == name)
    }

    /// Commits the open transaction with its offsets (the consumer's current group metadata).
    fn commit<C: ConsumerContext>(&self, writer: &mut TxnWriter, consumer: &BaseConsumer<C>) -> Result<(), TxnError> {
        if !writer.is_open() {
            return Ok(());
        }
        let tpl = self.offsets_tpl();
        let result = match consumer.group_metadata() {
            Some(cgm) if tpl.count() > 0 => writer.commit(Some((&tpl, &cgm))),
            Some(_) => writer.commit(None),
            None => Err(TxnError::Abort {
                what: "no consumer group metadata (not in a group)",
                source: KafkaError::Subscription("not in a group".into()),
            }),
        };
        if result.is_ok() {
            lock(&self.offsets).clear();
        }
        result
    }
}

struct Ctx {
    shared: Arc<Shared>,
}

impl ClientContext for Ctx {
    fn stats(&self, statistics: Statistics) {
        let mut lag = lock(&self.shared.lag);
        lag.clear();
        for (name, topic) in &statistics.topics {
            let Some(t) = self.shared.topic_index(name) else { continue };
            for (&p, part) in &topic.partitions {
                // librdkafka's own consumer_lag counts from the consumer's committed offset,
                // which transactional commits never update: measure from what was consumed to
                // the last stable offset (read_committed) instead.
                let consumed = if part.app_offset >= 0 { part.app_offset } else { part.next_offset };
                let end = if part.ls_offset >= 0 { part.ls_offset } else { part.hi_offset };
                if p >= 0 && consumed >= 0 && end >= 0 {
                    lag.insert((t, p), (end - consumed).max(0));
                }
            }
        }
    }

    /// The end of a partition (`enable.partition.eof`, used by restores) is no error; librdkafka
    /// also reports it here, which would print an ERROR line per partition per fetch at the end.
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(error, reason)
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let s = &self.shared;
        if matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative) {
            return self.rebalance_incrementally(consumer, err, tpl);
        }
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let parts: Vec<Tp> = tpl
                    .elements()
                    .iter()
                    .filter_map(|e| s.topic_index(e.topic()).map(|t| (t, e.partition())))
                    .collect();
                // Nothing is fetched here: the loop plans the restore (blocking lookups, retried)
                // and assigns each partition at the offset it must start from.
                if let Err(e) = consumer.assign(&TopicPartitionList::new()) {
                    warn!(error = %e, "Taking the assignment over from the callback failed.");
                }
                if !s.leaving.load(Ordering::SeqCst) {
                    info!(partitions = parts.len(), "Partitions assigned.");
                    lock(&s.events).push(RebalanceEvent::Assigned(parts));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Finish the open transaction before the partitions go, or abort it if the
                // assignment was lost (its offsets would be refused anyway). The loop may be in
                // the middle of an abort itself (it holds the writer): then nothing is open.
                let mut writer = s.writer.try_lock();
                if let Ok(w) = &mut writer {
                    // A commit running in the background ends first: the partitions go only
                    // once their offsets are committed (or known refused).
                    w.wait_for_commit();
                }
                let event = match writer {
                    // The background commit failed: the loop aborts (or replaces the producer)
                    // when it takes that result in, right after this poll, and the rewind redoes
                    // every input since the last commit. Aborting here too would report one
                    // fault twice (a fenced producer: two replacements of the producer).
                    Ok(w) if w.has_failed() => RebalanceEvent::Revoked { committed: false },
                    Ok(mut w) if w.is_open() => {
                        let unflushed = s.unflushed.load(Ordering::SeqCst);
                        if unflushed {
                            info!("State changes of the open transaction are not in the changelog yet; aborting it on revoke (the next owner redoes its inputs).");
                        }
                        let ended = if consumer.assignment_lost() || unflushed {
                            w.abort(&mut || {}).map(|()| false)
                        } else {
                            match s.commit(&mut w, consumer) {
                                Ok(()) => Ok(true),
                                Err(TxnError::Fatal { what, source }) => Err(TxnError::Fatal { what, source }),
                                Err(e) => {
                                    warn!(error = %e, "Committing on revoke failed; aborting.");
                                    w.abort(&mut || {}).map(|()| false)
                                }
                            }
                        };
                        match ended {
                            Ok(committed) => RebalanceEvent::Revoked { committed },
                            Err(e) => RebalanceEvent::Fatal(e),
                        }
                    }
                    _ => RebalanceEvent::Revoked { committed: false },
                };
                lock(&s.offsets).clear();
                if let Err(e) = consumer.unassign() {
                    warn!(error = %e, "Unassigning partitions failed.");
                }
                info!(partitions = tpl.count(), "Partitions revoked.");
                lock(&s.events).push(event);
            }
            other => error!(code = ?other, "Rebalance error."),
        }
    }
}

impl Ctx {
    /// Cooperative protocol: only the partitions that move are named. The loop does the work
    /// after the poll (librdkafka waits for its `incremental_(un)assign` call to go on), except
    /// while leaving, when the open transaction is already committed.
    fn rebalance_incrementally(&self, consumer: &BaseConsumer<Ctx>, err: RDKafkaRespErr, tpl: &TopicPartitionList) {
        let s = &self.shared;
        let parts: Vec<Tp> =
            tpl.elements().iter().filter_map(|e| s.topic_index(e.topic()).map(|t| (t, e.partition()))).collect();
        let leaving = s.leaving.load(Ordering::SeqCst);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                info!(partitions = parts.len(), "Partitions added to the assignment.");
                if leaving {
                    let _ = consumer.incremental_assign(tpl);
                } else {
                    lock(&s.events).push(RebalanceEvent::AssignedSome(parts));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                info!(partitions = parts.len(), "Partitions taken from the assignment.");
                let lost = consumer.assignment_lost();
                if leaving || lost {
                    // Leaving: the open transaction is committed already. Lost: its offsets would
                    // be refused; the loop aborts it. Either way the member may rejoin at once
                    // (the loop may be inside a wait that polls, e.g. fencing a new producer,
                    // which needs a valid group membership).
                    if let Err(e) = unassign_some(consumer, tpl) {
                        warn!(error = %e, "Removing partitions from the assignment failed.");
                    }
                }
                if leaving {
                    lock(&s.events).push(RebalanceEvent::Revoked { committed: true });
                } else {
                    lock(&s.events).push(RebalanceEvent::RevokedSome { parts, lost });
                }
            }
            other => error!(code = ?other, "Rebalance error."),
        }
    }
}

/// `incremental_unassign` of the partitions of `tpl` that are assigned (the others may not be:
/// a restore fetches only some). Called even when none is: that call completes the revocation.
fn unassign_some<C: ConsumerContext>(consumer: &BaseConsumer<C>, tpl: &TopicPartitionList) -> Result<(), KafkaError> {
    let current = consumer.assignment()?;
    let mut some = TopicPartitionList::new();
    for e in tpl.elements() {
        if current.find_partition(e.topic(), e.partition()).is_some() {
            some.add_partition(e.topic(), e.partition());
        }
    }
    consumer.incremental_unassign(&some)
}

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Outcome counts of the open transaction: they reach the metrics and the status when it
/// commits, and are dropped when it aborts (its inputs are redone).
#[derive(Default)]
struct Tally {
    outcomes: HashMap<(&'static str, &'static str), u64>,
    held: HashMap<(u8, &'static str), u64>,
    /// Decisions (notice or held) by the breaker cell of their source.
    decisions: HashMap<(u8, &'static str), u64>,
    consumed_by_cell: Vec<u64>,
    /// Inputs that did not decode far enough to have a source.
    consumed_invalid: u64,
    /// Event-to-decision latencies (ms) of decisions, and event times of notices.
    decision_latency_ms: Vec<i64>,
    notice_event_ms: Vec<i64>,
    truncated: u64,
    events: u64,
}

impl Tally {
    fn clear(&mut self) {
        self.outcomes.clear();
        self.held.clear();
        self.decisions.clear();
        self.consumed_by_cell.iter_mut().for_each(|n| *n = 0);
        self.consumed_invalid = 0;
        self.decision_latency_ms.clear();
        self.notice_event_ms.clear();
        self.truncated = 0;
        self.events = 0;
    }

    fn add(&mut self, outcome: &Outcome, cell: Option<u8>, now: i64, engine: &Engine) {
        self.events += 1;
        *self.outcomes.entry((outcome.kind().as_str(), outcome.reason())).or_default() += 1;
        match cell {
            Some(c) => {
                let c = c as usize;
                if self.consumed_by_cell.len() <= c {
                    self.consumed_by_cell.resize(c + 1, 0);
                }
                self.consumed_by_cell[c] += 1;
            }
            None => self.consumed_invalid += 1,
        }
        if let (Some(c), Outcome::Notice(_) | Outcome::Held(..)) = (cell, outcome) {
            *self.decisions.entry((c, outcome.kind().as_str())).or_default() += 1;
        }
        match outcome {
            Outcome::Notice(d) => {
                self.decision_latency_ms.push(now - d.event_ms);
                self.notice_event_ms.push(d.event_ms);
            }
            Outcome::Held(d, h) => {
                self.decision_latency_ms.push(now - d.event_ms);
                let held_by = engine.breaker().cell_index(&h.cell).unwrap_or(crate::core::breaker::GLOBAL);
                *self.held.entry((held_by, h.reason.as_str())).or_default() += 1;
            }
            _ => {}
        }
    }

    /// The transaction committed: everything counted becomes visible.
    fn publish(&mut self, m: &Metrics, status: &Status, engine: &Engine) {
        let shadow = engine.policy().mode == crate::core::policy::Mode::Shadow;
        for ((kind, reason), &n) in &self.outcomes {
            m.outcomes.with_label_values(&[kind, reason]).inc_by(n);
            match *kind {
                "rejected" => m.events_rejected.with_label_values(&[reason]).inc_by(n),
                "late" => m.events_late.inc_by(n),
                "duplicate" => m.events_duplicate.inc_by(n),
                "notice" if shadow => m.notices_would_send.inc_by(n),
                "notice" => m.notices_sent.inc_by(n),
                _ => {}
            }
            let counter = match *kind {
                "notice" => &status.notices,
                "held" => &status.held,
                "no_action" => &status.no_action,
                _ => {
                    let label = if *kind == "rejected" { reason } else { kind };
                    m.dlq_records.with_label_values(&[label]).inc_by(n);
                    &status.dlq
                }
            };
            counter.fetch_add(n, Ordering::Relaxed);
        }
        for (&(cell, reason), &n) in &self.held {
            m.notices_held.with_label_values(&[engine.breaker().cell_name(cell), reason]).inc_by(n);
        }
        for (&(cell, kind), &n) in &self.decisions {
            m.decisions.with_label_values(&[engine.breaker().cell_name(cell), kind]).inc_by(n);
        }
        if self.consumed_invalid > 0 {
            m.events_consumed.with_label_values(&["_invalid"]).inc_by(self.consumed_invalid);
        }
        for (cell, &n) in self.consumed_by_cell.iter().enumerate() {
            if n > 0 {
                m.events_consumed.with_label_values(&[engine.breaker().cell_name(cell as u8)]).inc_by(n);
            }
        }
        for &ms in &self.decision_latency_ms {
            m.event_to_decision.observe(ms.max(0) as f64 / 1000.0);
        }
        let now = wall_ms();
        for &ms in &self.notice_event_ms {
            m.event_to_notice.observe((now - ms).max(0) as f64 / 1000.0);
        }
        m.dlq_truncated.inc_by(self.truncated);
        status.consumed.fetch_add(self.events, Ordering::Relaxed);
        self.clear();
    }
}

/// Where the loop is with its assignment.
enum Phase {
    /// No partitions.
    Idle,
    /// Re-reading committed history for state; per partition still restoring: where live starts.
    Restoring(HashMap<Tp, i64>),
    Live,
}

/// A transaction committing in the background (`Pipeline::commit_ahead`) and what its commit
/// makes visible.
struct Ticket {
    started: Instant,
    /// Outcome counts of its inputs.
    tally: Tally,
    /// Its records' delivery tags are those below this.
    tags_end: usize,
    /// The input offsets it commits.
    offsets: TopicPartitionList,
    /// Times it was redone after the group refused its offsets.
    redos: usize,
}

/// How many times an input's DLQ record was refused by Kafka as too large; after the first, it
/// is written without its payload; after the second, the pipeline stops (see `on_poison`).
type Degraded = HashMap<(usize, i32, i64), u8>;

struct Pipeline {
    settings: Arc<Settings>,
    metrics: Metrics,
    status: Arc<Status>,
    shared: Arc<Shared>,
    consumer: Arc<BaseConsumer<Ctx>>,
    engine: Engine,
    control: ControlReader,
    /// Reads state back from the changelog (`None`: `pipeline.changelog = false`).
    changelog: Option<ChangelogReader>,
    /// Follows the changelog of the partitions not owned, for restores from memory (`None`:
    /// `pipeline.standby = false`).
    standby: Option<Standby>,
    partitions: PartitionIndex,
    /// The consumer uses the cooperative rebalance protocol (`cooperative-sticky`).
    cooperative: bool,
    /// Why the next restore happens (`assignment` or `abort`), for the restore metrics.
    restore_cause: &'static str,
    /// Counts re-positionings of the whole assignment (`set_fetch`): a message fetched before
    /// one is stale.
    fetch_epoch: u64,
    /// Counts rewinds to the committed offsets (`rewind`): messages polled before one are
    /// fetched again.
    rewinds: u64,
    /// Reused buffer of the engine's outcomes for a burst (see `process_burst`).
    processed: Vec<Processed>,
    /// When state changes were last sent to the changelog (see `flush_changelog_early`).
    changelog_sent_at: Instant,
    lookback_ms: i64,
    plan_budget: Duration,
    /// Largest DLQ payload that fits the DLQ topic and the producer.
    dlq_payload_max: usize,
    owned: Vec<Tp>,
    plans: Vec<PartitionPlan>,
    phase: Phase,
    tally: Tally,
    /// Input coordinates of the records not yet committed, by delivery tag less `origins_base`.
    origins: Vec<(usize, i32, i64)>,
    /// Delivery tag of `origins[0]`: tags count on across transactions, so that the records of
    /// a transaction committing in the background and of the one after it never share one.
    origins_base: usize,
    /// The transaction committing in the background (see `commit_ahead`).
    committing: Option<Ticket>,
    /// An empty tally, to count the next transaction in while one commits.
    spare_tally: Tally,
    degraded: Degraded,
    batch: usize,
    /// When the producer was replaced after a fatal error (see `renew_producer`).
    renewals: Vec<Instant>,
    /// When the consumer was replaced after a fatal error (see `renew_consumer`).
    consumer_renewals: Vec<Instant>,
}

/// Least time between two sends of state changes made because the loop had nothing more to
/// decide (see `Pipeline::flush_changelog_early`).
const IDLE_SEND_GAP: Duration = Duration::from_millis(25);
/// Smallest size at which the changelog's batch records are cut after the topic refused larger
/// ones (a few accounts per record; an account's state is never split).
const MIN_CHANGELOG_BATCH: usize = 1024;

/// Whether another replacement is allowed: fewer than [`MAX_RENEWALS`] in the last
/// [`RENEWAL_WINDOW`] (records this one when it is).
fn may_renew(renewals: &mut Vec<Instant>) -> bool {
    let now = Instant::now();
    renewals.retain(|t| now.duration_since(*t) < RENEWAL_WINDOW);
    if renewals.len() >= MAX_RENEWALS {
        return false;
    }
    renewals.push(now);
    true
}

/// Most producer replacements within [`RENEWAL_WINDOW`] before a fatal error stops the process.
const MAX_RENEWALS: usize = 3;
const RENEWAL_WINDOW: Duration = Duration::from_secs(600);
/// Most messages judged as one burst (see `Pipeline::process_burst`): enough to keep the
/// engine's shards busy, few enough that a burst is judged within a millisecond or two.
const MAX_BURST: usize = 512;

/// Times one commit may be redone after the group refused its offsets, before it is aborted
/// and restored like any other: a rebalance has two generations (cooperative rounds).
const MAX_REDOS: usize = 3;

/// Longest wait for the watermark queries that wake the fetchers after a rebalance, all of them.
const WAKE_TIMEOUT: Duration = Duration::from_millis(200);

/// Runs the pipeline until `shutdown` is set or a fatal error occurs. `dlq_record_limit` is the
/// largest record the DLQ topic and the producer accept (see `topics::record_limit`).
pub fn run_pipeline(
    settings: Arc<Settings>,
    metrics: Metrics,
    status: Arc<Status>,
    shutdown: Arc<AtomicBool>,
    commands: std::sync::mpsc::Receiver<AdminCommand>,
    dlq_record_limit: usize,
) -> Result<(), PipelineError> {
    let mut p = Pipeline::start(settings, metrics, status, dlq_record_limit)?;
    let result = p.run(&shutdown, &commands);
    p.drain(result, shutdown.load(Ordering::SeqCst))
}

impl Pipeline {
    fn start(
        settings: Arc<Settings>,
        metrics: Metrics,
        status: Arc<Status>,
        dlq_record_limit: usize,
    ) -> Result<Pipeline, PipelineError> {
        let policy = settings.policy.clone();
        let config = producer_config(&settings);
        let mut writer = TxnWriter::new(&config).map_err(|e| {
            PipelineError::Startup(format!(
                "cannot initialise transactions (transactional.id {}): {e}",
                settings.transactional_id
            ))
        })?;
        let fenced = writer
            .fence(&output_topics(&settings), &mut || None, &mut || {})
            .map_err(|e| PipelineError::Startup(format!("cannot fence the output partitions: {e}")))?;
        info!(partitions = fenced, "Output partitions fenced.");
        let txn_timeout = config
            .get("transaction.timeout.ms")
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(Duration::from_secs(60), Duration::from_millis);
        let lookback = [
            policy.window + policy.allowed_lateness,
            if policy.slow.enabled { policy.slow.length } else { Duration::ZERO },
            policy.cooldown,
        ]
        .into_iter()
        .max()
        .unwrap_or_default()
            + policy.allowed_lateness
            + Duration::from_secs(300);
        let shared = Arc::new(Shared {
            writer: Mutex::new(writer),
            offsets: Mutex::new(HashMap::new()),
            inputs: settings.topics.input.clone(),
            events: Mutex::new(Vec::new()),
            leaving: AtomicBool::new(false),
            lag: Mutex::new(HashMap::new()),
            unflushed: AtomicBool::new(false),
        });
        let consumer: BaseConsumer<Ctx> = consumer_config(&settings)
            .create_with_context(Ctx { shared: shared.clone() })
            .map_err(|e| PipelineError::Startup(format!("cannot create the Kafka consumer: {e}")))?;
        let inputs: Vec<&str> = settings.topics.input.iter().map(String::as_str).collect();
        consumer
            .subscribe(&inputs)
            .map_err(|e| PipelineError::Startup(format!("cannot subscribe to {inputs:?}: {e}")))?;
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), &policy.version, policy.mode.as_str()])
            .set(1);
        for topic in &settings.topics.input {
            // Present from the first scrape, so the alert on it sees a zero, not no data.
            metrics.input_gap_records.with_label_values(&[topic]);
            metrics.input_offset_resets.with_label_values(&[topic]);
        }
        status.stall_timeout_ms.store(settings.stall_timeout.as_millis() as i64, Ordering::Relaxed);
        let mut engine = Engine::new(policy.clone(), settings.keys.clone(), TimeMode::Wall)
            .with_shards(settings.shards)
            .map_err(|e| PipelineError::Startup(format!("pipeline.shards: {e}")))?;
        info!(shards = settings.shards, "Engine ready.");
        let partitions = PartitionIndex::new(&input_partitions(&consumer, &settings)?);
        let total_partitions = partitions.total();
        let changelog = if settings.changelog {
            let reader = ChangelogReader::new(&settings)?;
            let have = reader.partitions()?;
            if have < total_partitions {
                return Err(PipelineError::Startup(format!(
                    "topics.changelog: {} has {have} partitions, needs at least {total_partitions} (one per input partition); recreate it or set pipeline.changelog = false",
                    settings.topics.changelog
                )));
            }
            engine.track_changes_as(settings.changelog_record_version);
            Some(reader)
        } else {
            None
        };
        let standby = match &changelog {
            Some(_) if settings.standby => Some(Standby::start(&settings, total_partitions, &policy, &metrics)?),
            _ => None,
        };
        // Overrides and allow-list changes of the fleet apply before the first decision.
        let control = ControlReader::new(&settings)?;
        let (applied, last_policy) = control.read_to_end(&mut engine, wall_ms());
        info!(records = applied, "Control topic applied.");
        let cooperative = super::client::cooperative(&settings);
        let mut p = Pipeline {
            settings,
            metrics,
            status,
            shared,
            consumer: Arc::new(consumer),
            engine,
            control,
            changelog,
            standby,
            partitions,
            cooperative,
            restore_cause: "assignment",
            fetch_epoch: 0,
            rewinds: 0,
            processed: Vec::new(),
            changelog_sent_at: Instant::now(),
            lookback_ms: lookback.as_millis() as i64,
            // A committed offset stays unstable until a dead member's transaction times out
            // (transaction.timeout.ms, then the coordinator's abort sweep): wait that out twice.
            plan_budget: (txn_timeout * 2 + Duration::from_secs(30)).max(Duration::from_secs(120)),
            dlq_payload_max: dlq_record_limit.saturating_sub(DLQ_RECORD_OVERHEAD),
            owned: Vec::new(),
            plans: Vec::new(),
            phase: Phase::Idle,
            tally: Tally::default(),
            origins: Vec::new(),
            origins_base: 0,
            committing: None,
            spare_tally: Tally::default(),
            degraded: Degraded::new(),
            batch: 0,
            renewals: Vec::new(),
            consumer_renewals: Vec::new(),
        };
        let version = p.settings.policy.version.clone();
        if last_policy.as_deref() != Some(version.as_str()) {
            if let Some(previous) = &last_policy {
                // A new policy may decide very differently: ramp the caps up instead of trusting it.
                warn!(previous = %previous, current = %version, "Policy version changed; ramping the breaker caps up.");
                p.engine.breaker_mut().start_policy_ramp(wall_ms());
            }
            p.record_policy_version()?;
        }
        Ok(p)
    }

    /// Records the running policy version in the control topic (its own small transaction).
    fn record_policy_version(&mut self) -> Result<(), PipelineError> {
        use super::control::{PolicyVersionRecord, POLICY_VERSION_KEY};
        let rec = PolicyVersionRecord {
            version: self.settings.policy.version.clone(),
            at_ms: wall_ms(),
            instance: self.settings.transactional_id.clone(),
        };
        let payload = serde_json::to_vec(&rec).unwrap_or_default();
        let fatal = |e: TxnError| PipelineError::Startup(format!("cannot record the policy version: {e}"));
        let mut w = lock(&self.shared.writer);
        let record = BaseRecord::with_opaque_to(&self.settings.topics.control, NO_TAG)
            .key(POLICY_VERSION_KEY.as_bytes())
            .payload(&payload[..]);
        if let Err(e) = w.send(record).and_then(|()| w.commit(None)) {
            let _ = w.abort(&mut || {});
            return Err(fatal(e));
        }
        Ok(())
    }

    fn run(
        &mut self,
        shutdown: &AtomicBool,
        commands: &std::sync::mpsc::Receiver<AdminCommand>,
    ) -> Result<(), PipelineError> {
        let commit_interval = self.settings.commit_interval;
        let mut deadline = Instant::now() + commit_interval;
        let mut next_tick = Instant::now();
        // Checked with each tick, at the top of the next turn: no message of the old consumer is
        // held then.
        let mut fatal_check_due = false;
        while !shutdown.load(Ordering::SeqCst) {
            if std::mem::take(&mut fatal_check_due) {
                if let Some((code, reason)) = self.consumer.client().fatal_error() {
                    self.renew_consumer(&format!("{code:?}: {reason}"))?;
                }
            }
            // A commit that ended in the background: its outcomes count, and the next transaction
            // begins, handing what was decided meanwhile to librdkafka.
            if self.committing.is_some() && lock(&self.shared.writer).commit_ended() {
                self.settle()?;
            }
            // While a commit runs, the loop looks every millisecond whether it ended, so that the
            // next transaction's records get on their way early (and the next commit, if due,
            // starts). Whole milliseconds: rust-rdkafka's poll rounds what is left of its timeout
            // down to whole milliseconds and spins through a remainder below one.
            let wait = if self.committing.is_some() {
                Duration::from_millis(1)
            } else {
                deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(100))
            };
            let wait = Duration::from_millis(wait.as_micros().div_ceil(1000) as u64);
            let consumer = self.consumer.clone();
            let mut polled = consumer.poll(wait);
            let rewinds = self.rewinds;
            if matches!(self.phase, Phase::Live) {
                // Live: what is already fetched is judged as one burst (the engine's shards work
                // on it side by side), up to the first poll that brought a rebalance or anything
                // but a message, which is handled below as on its own.
                let room = self.settings.max_batch.saturating_sub(self.batch).clamp(1, MAX_BURST);
                let mut burst = Vec::new();
                while burst.len() < room && lock(&self.shared.events).is_empty() {
                    match polled {
                        Some(Ok(m)) if self.shared.topic_index(m.topic()).is_some() => {
                            burst.push(m);
                            polled = if burst.len() < room { consumer.poll(Duration::ZERO) } else { None };
                        }
                        _ => break,
                    }
                }
                if !self.cooperative && !lock(&self.shared.events).is_empty() {
                    // Eager protocol: a poll of this burst ran the revoke callback, which ended
                    // the open transaction without these messages and gave every partition up.
                    // They are fetched again, by whoever owns them, from the committed offsets.
                    burst.clear();
                }
                // Nothing more fetched (the poll came back empty or at a partition's end, not
                // cut short by a full burst): the loop is about to wait, a good moment to ship
                // the state changes of the open transaction (`flush_changelog_early`).
                let quiet = burst.len() < room && matches!(polled, None | Some(Err(KafkaError::PartitionEOF(_))));
                if !burst.is_empty() {
                    // Cooperative protocol: the callback only queued the change (handled below,
                    // after these), so every message of the burst is still owned.
                    self.process_burst(&burst, quiet)?;
                } else if quiet && lock(&self.shared.events).is_empty() && lock(&self.shared.writer).is_open() {
                    self.flush_changelog_early(true)?;
                }
            }
            // A message polled together with a rebalance belongs to the old assignment: it is
            // fetched again from the committed offsets. So is one polled before a rewind.
            let epoch = self.fetch_epoch;
            let rebalanced = self.on_rebalance_events()?;
            if self.rewinds != rewinds {
                polled = None;
            }
            match polled {
                // With the cooperative protocol, partitions that stayed keep their position
                // (unless the whole assignment was re-positioned meanwhile).
                Some(Ok(m)) if !rebalanced || (self.fetch_epoch == epoch && self.kept(&m)) => self.on_message(&m)?,
                Some(Ok(_)) => {}
                Some(Err(KafkaError::MessageConsumptionFatal(_))) => fatal_check_due = true,
                Some(Err(KafkaError::PartitionEOF(p))) => self.reached_end(p)?,
                Some(Err(e)) => warn!(error = %e, "Consumer error."),
                None => {}
            }
            if !matches!(self.phase, Phase::Restoring(_)) {
                // Admin actions run between transactions, never inside the pipeline's own.
                while let Ok(cmd) = commands.try_recv() {
                    self.commit()?;
                    let mut w = lock(&self.shared.writer);
                    admin::execute(cmd, &mut w, &mut self.engine, &self.settings, wall_ms())?;
                }
            }
            let now = Instant::now();
            // Committing ahead, a commit that comes due while the last one still runs starts when
            // that one has ended, and the loop goes on deciding meanwhile (this transaction grows),
            // unless it is full: a slow broker gets fewer, larger transactions, not a loop that
            // waits for it.
            let due = now >= deadline && self.committing.is_none();
            if due || self.batch >= self.settings.max_batch {
                if self.settings.commit_ahead {
                    self.commit_ahead()?;
                } else {
                    self.commit()?;
                }
                // The interval counts from the start of this commit, so a notice waits for the
                // rest of one interval and one commit, not for a commit, an interval and another
                // commit; but at least half an interval of deciding follows each commit, so
                // slow commits (a struggling broker) do not follow each other back to back.
                deadline = (now + commit_interval).max(Instant::now() + commit_interval / 2);
            }
            if now >= next_tick {
                next_tick = now + Duration::from_millis(100);
                self.status.beat();
                fatal_check_due = true;
                self.tick()?;
            }
        }
        Ok(())
    }

    /// Acts on what the rebalance callback saw; `true` if it saw anything.
    fn on_rebalance_events(&mut self) -> Result<bool, PipelineError> {
        if self.committing.is_some() && !lock(&self.shared.events).is_empty() {
            // Partitions come and go only between transactions: the one committing ends first
            // (and is redone now if the group refused it, while the events that say whether
            // every partition of it is still owned are still queued).
            self.settle()?;
        }
        let events = std::mem::take(&mut *lock(&self.shared.events));
        let any = !events.is_empty();
        let incremental =
            events.iter().any(|e| matches!(e, RebalanceEvent::AssignedSome(_) | RebalanceEvent::RevokedSome { .. }));
        for e in events {
            match e {
                RebalanceEvent::Revoked { committed } => {
                    self.metrics.rebalances.inc();
                    if committed {
                        self.after_commit();
                    } else {
                        self.after_abort();
                    }
                    self.unassigned();
                }
                RebalanceEvent::Assigned(parts) => {
                    self.owned = parts;
                    self.status.assigned_partitions.store(self.owned.len(), Ordering::SeqCst);
                    self.restore_all()?;
                }
                RebalanceEvent::AssignedSome(parts) => {
                    self.metrics.rebalances.inc();
                    self.add_partitions(parts)?;
                }
                RebalanceEvent::RevokedSome { parts, lost } => {
                    self.metrics.rebalances.inc();
                    self.remove_partitions(&parts, lost)?;
                }
                RebalanceEvent::Fatal(e) => {
                    // Ending the transaction on revoke failed fatally; the partitions are gone.
                    self.renew_producer(e)?;
                    self.after_abort();
                    self.unassigned();
                }
            }
        }
        if incremental && matches!(self.phase, Phase::Live) {
            self.wake_fetchers();
        }
        Ok(any)
    }

    /// librdkafka pauses the fetchers of every assigned partition while the application handles
    /// a cooperative rebalance, and resumes them when the loop calls `incremental_(un)assign`;
    /// but the resume does not wake the broker threads, which sleep up to one second (their
    /// fixed IO wait) before fetching again. Measured here: the partitions that stayed were
    /// fetched 0.67 s after the resume, twice per scale-out (BENCHMARKS.md, "Rebalance pause").
    /// Any request to a partition's leader wakes its broker thread, which then fetches every
    /// resumed partition it leads: a watermark query per owned partition does that (the answer
    /// is not used; a few milliseconds per rebalance). All of them within [`WAKE_TIMEOUT`], and
    /// none after one failed: a broker that does not answer cannot be fetched from either, and
    /// the loop must not wait for it partition by partition.
    fn wake_fetchers(&self) {
        let deadline = Instant::now() + WAKE_TIMEOUT;
        for &(t, p) in &self.owned {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Err(e) = self.consumer.fetch_watermarks(&self.shared.inputs[t], p, left) {
                tracing::debug!(error = %e, partition = p, "Waking the fetchers failed; leaving them to librdkafka.");
                break;
            }
        }
    }

    /// A message polled in the same call as a rebalance is kept only if the cooperative protocol
    /// left its partition (and its position) alone.
    fn kept(&self, m: &BorrowedMessage<'_>) -> bool {
        self.cooperative
            && matches!(self.phase, Phase::Live)
            && self.shared.topic_index(m.topic()).is_some_and(|t| self.owned.contains(&(t, m.partition())))
    }

    /// Cooperative protocol, partitions added: restored from the changelog while the others keep
    /// their state (no engine reset, the breaker keeps its history), then fetched from their
    /// committed offsets. Without a changelog for one of them, or while a restore is under way,
    /// everything owned is restored again instead.
    fn add_partitions(&mut self, parts: Vec<Tp>) -> Result<(), PipelineError> {
        let parts: Vec<Tp> = parts.into_iter().filter(|p| !self.owned.contains(p)).collect();
        if parts.is_empty() {
            // librdkafka waits for this call, also for nothing, before the rebalance goes on.
            return self
                .consumer
                .incremental_assign(&TopicPartitionList::new())
                .map_err(|e| PipelineError::Fatal(format!("cannot complete the assignment: {e}")));
        }
        if !matches!(self.phase, Phase::Live) {
            self.owned.extend(parts);
            self.status.assigned_partitions.store(self.owned.len(), Ordering::SeqCst);
            return self.restore_all();
        }
        // Reading the new partitions' state can take seconds: not with a transaction open.
        self.commit()?;
        if !matches!(self.phase, Phase::Live) {
            // The commit failed and a restore of everything owned started: include the new ones.
            self.owned.extend(parts);
            self.status.assigned_partitions.store(self.owned.len(), Ordering::SeqCst);
            return self.restore_all();
        }
        let mut plans =
            restore::plan(&*self.consumer, &self.shared.inputs, &parts, self.lookback_ms, wall_ms(), self.plan_budget)?;
        self.record_plan_metrics(&plans);
        self.metrics.restores.inc();
        self.restore_from_changelog(&mut plans)?;
        self.owned.extend(parts.iter().copied());
        self.status.assigned_partitions.store(self.owned.len(), Ordering::SeqCst);
        if plans.iter().any(|p| p.start < p.until) {
            // No changelog for it yet: rebuild everything owned from the input once.
            return self.restore_all();
        }
        let mut tpl = TopicPartitionList::new();
        for p in &plans {
            let _ = tpl.add_partition_offset(&self.shared.inputs[p.topic], p.partition, Offset::Offset(p.until));
        }
        self.consumer
            .incremental_assign(&tpl)
            .map_err(|e| PipelineError::Fatal(format!("cannot add partitions to the assignment: {e}")))?;
        self.plans.extend(plans);
        self.reshare();
        info!(added = parts.len(), owned = self.owned.len(), "Partitions added; the others kept deciding.");
        Ok(())
    }

    /// Cooperative protocol, partitions taken away: commit what was done for them (or abort if
    /// the assignment was lost), forget their state, unassign them.
    fn remove_partitions(&mut self, parts: &[Tp], lost: bool) -> Result<(), PipelineError> {
        let ended = if lost || !matches!(self.phase, Phase::Live) {
            Err(TxnError::Abort {
                what: if lost { "the assignment was lost" } else { "partitions revoked during a restore" },
                source: KafkaError::Subscription("revoked".into()),
            })
        } else {
            self.try_commit()
        };
        self.owned.retain(|p| !parts.contains(p));
        self.plans.retain(|p| !parts.contains(&(p.topic, p.partition)));
        for &(t, p) in parts {
            self.engine.forget_partition_state(self.partitions.global(t, p));
        }
        self.release_to_standby();
        let mut tpl = TopicPartitionList::new();
        for &(t, p) in parts {
            tpl.add_partition(&self.shared.inputs[t], p);
        }
        if !lost {
            // A lost assignment was given up in the callback already.
            if let Err(e) = unassign_some(&self.consumer, &tpl) {
                warn!(error = %e, "Removing partitions from the assignment failed.");
            }
        }
        self.status.assigned_partitions.store(self.owned.len(), Ordering::SeqCst);
        info!(removed = parts.len(), owned = self.owned.len(), committed = ended.is_ok(), "Partitions removed.");
        match ended {
            Ok(()) => {
                self.reshare();
                if self.owned.is_empty() {
                    self.unassigned();
                }
                Ok(())
            }
            // What the open transaction did for the partitions that stay is redone.
            Err(e) if lost || !matches!(self.phase, Phase::Live) => {
                if matches!(self.phase, Phase::Live) {
                    self.recover(&e)
                } else {
                    self.restore_all()
                }
            }
            Err(e) => self.on_txn_error(e),
        }
    }

    /// This instance's share of the fleet's caps changed with its partitions: the caps follow
    /// (carrying the budget left, never more: no budget is minted by moving partitions around).
    fn reshare(&mut self) {
        let share = self.share();
        self.engine.breaker_mut().set_share(share);
    }

    /// The warm standby follows again the partitions no longer owned that it handed over.
    fn release_to_standby(&self) {
        if let Some(standby) = &self.standby {
            let owned: Vec<u32> = self.owned.iter().map(|&(t, p)| self.partitions.global(t, p)).collect();
            standby.keep_only(&owned);
        }
    }

    /// Owned / all input partitions: this instance's share of the fleet's caps.
    fn share(&self) -> f64 {
        self.owned.len() as f64 / self.partitions.total().max(1) as f64
    }

    /// The partitions were revoked: nothing is owned until the next assignment.
    fn unassigned(&mut self) {
        self.owned.clear();
        self.release_to_standby();
        self.plans.clear();
        self.phase = Phase::Idle;
        self.set_ready(false);
        self.status.assigned_partitions.store(0, Ordering::SeqCst);
    }

    /// Plans and starts the restore of every owned partition, from a clean engine.
    fn restore_all(&mut self) -> Result<(), PipelineError> {
        self.set_ready(false);
        let share = self.share();
        self.engine.begin_restore(share);
        if self.owned.is_empty() {
            self.phase = Phase::Idle;
            return Ok(());
        }
        let mut plans = restore::plan(
            &*self.consumer,
            &self.shared.inputs,
            &self.owned,
            self.lookback_ms,
            wall_ms(),
            self.plan_budget,
        )?;
        self.restore_from_changelog(&mut plans)?;
        self.record_plan_metrics(&plans);
        let mut tpl = TopicPartitionList::new();
        let mut until = HashMap::new();
        for p in &plans {
            let topic = &self.shared.inputs[p.topic];
            if p.start < p.until {
                let _ = tpl.add_partition_offset(topic, p.partition, Offset::Offset(p.start));
                until.insert((p.topic, p.partition), p.until);
            }
        }
        self.plans = plans;
        self.metrics.restores.inc();
        info!(partitions = self.plans.len(), restoring = until.len(), "Restoring state.");
        if until.is_empty() {
            return self.go_live();
        }
        self.set_fetch(&tpl).map_err(|e| PipelineError::Fatal(format!("cannot assign for restore: {e}")))?;
        self.phase = Phase::Restoring(until);
        Ok(())
    }

    /// Reads the owned partitions' state from the changelog (after the plan: the committed
    /// offsets are stable then, so the transaction that committed them, changelog records
    /// included, is complete) and replays the breaker history it records. A partition with state
    /// there needs no input re-read; one without (no changelog yet) keeps its input plan and is
    /// written to the changelog in full once rebuilt.
    fn restore_from_changelog(&mut self, plans: &mut [PartitionPlan]) -> Result<(), PipelineError> {
        let cause = std::mem::replace(&mut self.restore_cause, "assignment");
        let Some(reader) = &self.changelog else {
            for p in plans.iter() {
                let g = self.partitions.global(p.topic, p.partition).to_string();
                self.metrics.partition_restores.with_label_values(&[&g, "input", cause]).inc();
            }
            return Ok(());
        };
        let started = Instant::now();
        let global: Vec<u32> = plans.iter().map(|p| self.partitions.global(p.topic, p.partition)).collect();
        // A warm standby's state first; the changelog from where it ends.
        let (mut from, mut from_standby) = (HashMap::new(), HashMap::new());
        self.release_to_standby();
        if let Some(standby) = &self.standby {
            for &g in &global {
                if let Some((next, adopted)) = standby.adopt(g, &mut self.engine) {
                    from.insert(g, next);
                    from_standby.insert(g, adopted);
                }
            }
        }
        let (engine, status) = (&mut self.engine, &self.status);
        let mut apply = |p: u32, key: &[u8], value: Option<&[u8]>| match engine.load_state(p, key, value) {
            Ok(()) => true,
            Err(e) => {
                warn!(changelog_partition = p, error = %e, "A changelog record does not decode; skipping it (its account starts empty).");
                false
            }
        };
        let standby_done = started.elapsed();
        let read = reader.read(&global, &from, self.plan_budget, &mut || status.beat(), &mut apply)?;
        let read_done = started.elapsed();
        let mut loaded = Vec::new();
        let (mut records, mut standby_records) = (0, 0);
        for (plan, &g) in plans.iter_mut().zip(&global) {
            let r = read.get(&g).copied().unwrap_or_default();
            // A standby copy exists once the partition's changelog held a record.
            let warm = from_standby.get(&g).copied();
            records += r.records;
            standby_records += warm.unwrap_or(0);
            if r.invalid > 0 {
                self.metrics.restore_records.with_label_values(&["changelog_invalid"]).inc_by(r.invalid);
            }
            let label = g.to_string();
            if r.records > 0 || warm.is_some() {
                loaded.push(g);
                // The changelog holds everything up to the committed offset.
                plan.start = plan.until;
                let source = if warm.is_some() { "standby" } else { "changelog" };
                self.metrics.partition_restores.with_label_values(&[&label, source, cause]).inc();
            } else if plan.start < plan.until {
                info!(topic = %self.shared.inputs[plan.topic], partition = plan.partition,
                    "No changelog for this partition yet: rebuilding its state from the input topic once, then writing it to the changelog.");
                self.metrics.partition_restores.with_label_values(&[&label, "input", cause]).inc();
            }
        }
        self.metrics.restore_records.with_label_values(&["changelog"]).inc_by(records);
        self.metrics.restore_records.with_label_values(&["standby"]).inc_by(standby_records);
        let replayed = self.engine.after_load(&loaded);
        let source = if from_standby.is_empty() { "changelog" } else { "standby" };
        self.metrics.changelog_restore_seconds.with_label_values(&[source]).observe(started.elapsed().as_secs_f64());
        info!(
            partitions = loaded.len(),
            records,
            standby_records,
            decisions_replayed = replayed,
            tracked_accounts = self.engine.tracked_accounts(),
            seconds = started.elapsed().as_secs_f64(),
            standby_seconds = standby_done.as_secs_f64(),
            changelog_seconds = (read_done - standby_done).as_secs_f64(),
            "State read from the changelog."
        );
        Ok(())
    }

    /// Sends the engine's state changes into the open transaction (before it commits).
    fn flush_changelog(&mut self) -> Result<(), TxnError> {
        if self.changelog.is_none() || self.engine.pending_changes() == 0 {
            self.shared.unflushed.store(false, Ordering::SeqCst);
            return Ok(());
        }
        let owned: Vec<u32> = self.owned.iter().map(|&(t, p)| self.partitions.global(t, p)).collect();
        let mut w = lock(&self.shared.writer);
        send_changes(&mut self.engine, &mut w, &self.settings.topics.changelog, &owned, &self.metrics)?;
        self.shared.unflushed.store(false, Ordering::SeqCst);
        self.changelog_sent_at = Instant::now();
        Ok(())
    }

    fn record_plan_metrics(&self, plans: &[PartitionPlan]) {
        for p in plans {
            let topic = &self.shared.inputs[p.topic];
            if p.gap > 0 {
                self.metrics.input_gap_records.with_label_values(&[topic]).inc_by(p.gap as u64);
            }
            if p.reset {
                self.metrics.input_offset_resets.with_label_values(&[topic]).inc();
            }
        }
    }

    /// Fetches exactly `tpl` (partitions at offsets). Under the cooperative protocol the
    /// assignment may only change incrementally: what is assigned is taken away, then `tpl` added.
    fn set_fetch(&mut self, tpl: &TopicPartitionList) -> Result<(), KafkaError> {
        self.fetch_epoch += 1;
        if !self.cooperative {
            return self.consumer.assign(tpl);
        }
        let current = self.consumer.assignment()?;
        if current.count() > 0 {
            self.consumer.incremental_unassign(&current)?;
        }
        self.consumer.incremental_assign(tpl)
    }

    /// Every owned partition is restored: fetch each from its first live offset.
    fn go_live(&mut self) -> Result<(), PipelineError> {
        let mut tpl = TopicPartitionList::new();
        for p in &self.plans {
            let _ = tpl.add_partition_offset(&self.shared.inputs[p.topic], p.partition, Offset::Offset(p.until));
        }
        self.set_fetch(&tpl).map_err(|e| PipelineError::Fatal(format!("cannot assign partitions: {e}")))?;
        // Partitions paused when their restore ended fetch again.
        let _ = self.consumer.resume(&tpl);
        self.engine.finish_restore(wall_ms());
        self.phase = Phase::Live;
        info!(partitions = self.plans.len(), "State restored; deciding live.");
        Ok(())
    }

    fn on_message(&mut self, m: &BorrowedMessage<'_>) -> Result<(), PipelineError> {
        let Some(topic) = self.shared.topic_index(m.topic()) else { return Ok(()) };
        let (partition, offset) = (m.partition(), m.offset());
        match &mut self.phase {
            Phase::Idle => Ok(()),
            Phase::Restoring(until) => {
                let Some(&end) = until.get(&(topic, partition)) else { return Ok(()) };
                if offset < end {
                    let now = wall_ms();
                    let at = m.timestamp().to_millis().unwrap_or(now);
                    let g = self.partitions.global(topic, partition);
                    self.engine.restore(m.payload().unwrap_or(&[]), g, now, at);
                }
                if offset + 1 >= end {
                    self.restored(topic, partition)?;
                }
                Ok(())
            }
            Phase::Live => self.process(m, topic),
        }
    }

    /// The consumer read a partition to its end (the last stable offset). A restore whose last
    /// committed records are followed only by records it never sees (aborted transactions of a
    /// killed instance, transaction markers) gets no message at or past its end, and its
    /// position stays short of it: reaching the end of the partition completes it. librdkafka
    /// names only the partition, so with several input topics this is left to messages and
    /// positions.
    fn reached_end(&mut self, partition: i32) -> Result<(), PipelineError> {
        if self.shared.inputs.len() == 1
            && matches!(&self.phase, Phase::Restoring(u) if u.contains_key(&(0, partition)))
        {
            self.restored(0, partition)?;
        }
        Ok(())
    }

    /// A partition reached its first live offset; the last one to get there starts live decisions.
    fn restored(&mut self, topic: usize, partition: i32) -> Result<(), PipelineError> {
        let Phase::Restoring(until) = &mut self.phase else { return Ok(()) };
        if until.remove(&(topic, partition)).is_some() {
            // Fetch nothing more from it until every partition is restored.
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&self.shared.inputs[topic], partition);
            let _ = self.consumer.pause(&tpl);
        }
        if until.is_empty() {
            self.go_live()?;
        }
        Ok(())
    }

    fn process(&mut self, m: &BorrowedMessage<'_>, topic: usize) -> Result<(), PipelineError> {
        // Every input is in a transaction, also one without an output record: its offset is
        // committed with the others (and its outcome counted then).
        let begun = lock(&self.shared.writer).begin();
        if let Err(e) = begun {
            return self.on_txn_error(e);
        }
        let now = wall_ms();
        let payload = m.payload().unwrap_or(&[]);
        let processed = self.engine.process(payload, self.partitions.global(topic, m.partition()), now);
        let rewinds = self.rewinds;
        self.emit(m, topic, &processed, now)?;
        if self.rewinds != rewinds {
            // The transaction failed and was rewound: the message is fetched again.
            return Ok(());
        }
        lock(&self.shared.offsets).insert((topic, m.partition()), m.offset() + 1);
        self.flush_changelog_early(false)
    }

    /// [`Pipeline::process`] for messages fetched together (live, of input topics, in poll
    /// order), with one clock reading: the engine judges them as one batch
    /// ([`Engine::process_batch`], side by side on its shards), then their outputs are sent in
    /// order. A transaction that fails part way rewinds, and the rest of the burst is dropped
    /// with it: it is fetched again from the committed offsets.
    fn process_burst(&mut self, msgs: &[BorrowedMessage<'_>], idle: bool) -> Result<(), PipelineError> {
        let begun = lock(&self.shared.writer).begin();
        if let Err(e) = begun {
            return self.on_txn_error(e);
        }
        let now = wall_ms();
        let mut topics = Vec::with_capacity(msgs.len());
        let mut batch = Vec::with_capacity(msgs.len());
        for m in msgs {
            let topic = self.shared.topic_index(m.topic()).unwrap_or(0);
            topics.push(topic);
            batch.push((m.payload().unwrap_or(&[]), self.partitions.global(topic, m.partition())));
        }
        let mut processed = std::mem::take(&mut self.processed);
        processed.clear();
        self.engine.process_batch(&batch, now, &mut processed);
        let rewinds = self.rewinds;
        let mut result = Ok(());
        // The next offset of each partition, recorded once per burst (a rewind drops them).
        let mut next: smallvec::SmallVec<[((usize, i32), i64); 8]> = smallvec::SmallVec::new();
        for ((m, &topic), p) in msgs.iter().zip(&topics).zip(&processed) {
            result = self.emit(m, topic, p, now);
            if result.is_err() || self.rewinds != rewinds {
                break;
            }
            let at = (topic, m.partition());
            match next.iter_mut().find(|(k, _)| *k == at) {
                Some((_, o)) => *o = m.offset() + 1,
                None => next.push((at, m.offset() + 1)),
            }
        }
        self.processed = processed;
        if self.rewinds != rewinds {
            result?;
            return Ok(());
        }
        lock(&self.shared.offsets).extend(next);
        result?;
        self.flush_changelog_early(idle)
    }

    /// Counts an input's outcome and sends its output record into the open transaction; the
    /// caller records its offset unless the transaction was rewound meanwhile.
    fn emit(
        &mut self,
        m: &BorrowedMessage<'_>,
        topic: usize,
        processed: &Processed,
        now: i64,
    ) -> Result<(), PipelineError> {
        let (partition, offset) = (m.partition(), m.offset());
        let payload = m.payload().unwrap_or(&[]);
        if self.changelog.is_some() {
            self.shared.unflushed.store(true, Ordering::Relaxed);
        }
        let outcome = &processed.outcome;
        self.tally.add(outcome, processed.cell, now, &self.engine);
        let origin = Origin { topic: m.topic(), partition, offset, key: m.key(), payload };
        let coord = (topic, partition, offset);
        let mut level = self.degraded.get(&coord).copied().unwrap_or(0);
        loop {
            let max = if level == 0 { self.dlq_payload_max } else { 0 };
            let Some(rec) = record_for(outcome, &origin, &self.settings.topics, self.engine.policy().mode, max) else {
                break;
            };
            if origin.payload.len() > max && rec.topic == self.settings.topics.dlq {
                self.tally.truncated += 1;
            }
            let tag: Tag = self.origins_base + self.origins.len();
            let record = BaseRecord::with_opaque_to(rec.topic, tag)
                .key(&rec.key[..])
                .payload(&rec.payload[..])
                .headers(rec.headers);
            let sent = lock(&self.shared.writer).send(record);
            match sent {
                Ok(()) => {
                    self.origins.push(coord);
                    break;
                }
                // Refused before it was queued: write less of it at once, or stop.
                Err(TxnError::Poison { topic: t, code, .. }) => {
                    level = self.degrade(coord, &t, code)?;
                }
                Err(e) => return self.on_txn_error(e),
            }
        }
        self.batch += 1;
        if self.batch % 1024 == 0 {
            lock(&self.shared.writer).poll();
        }
        Ok(())
    }

    /// Ships the changelog records of a transaction while it goes on deciding, once
    /// `changelog_flush_accounts` accounts changed, or when the loop has nothing more fetched
    /// (`idle`: the poll came back empty or at a partition's end) and [`IDLE_SEND_GAP`] (or a
    /// quarter of a shorter commit interval) has passed since the last send: its commit then
    /// waits only for the rest. Under a backlog the bursts are full, the loop is seldom idle and
    /// changes coalesce per `changelog_flush_accounts`; at a steady rate the records travel
    /// between bursts instead of all at the commit, which kept each commit waiting for a whole
    /// interval's records (benches/pipeline.rs, latency). The gap bounds what a hot account
    /// costs: about one record per gap (four per default transaction), not one per burst.
    fn flush_changelog_early(&mut self, idle: bool) -> Result<(), PipelineError> {
        let flush_at = self.settings.changelog_flush_accounts;
        let pending = self.engine.pending_changes();
        let gap = (self.settings.commit_interval / 4).min(IDLE_SEND_GAP);
        let idle_due = idle && self.changelog_sent_at.elapsed() >= gap;
        if flush_at > 0 && pending > 0 && (idle_due || pending >= flush_at) {
            if let Err(e) = self.flush_changelog() {
                return self.on_txn_error(e);
            }
        }
        Ok(())
    }

    /// An output for input `coord` can never be produced as it is. A DLQ record is written
    /// again without its payload (level 1); anything else, or a second refusal, stops the
    /// process: retrying the same bytes forever would stall every partition behind it.
    fn degrade(
        &mut self,
        coord: (usize, i32, i64),
        topic: &str,
        code: rdkafka::error::RDKafkaErrorCode,
    ) -> Result<u8, PipelineError> {
        let level = self.degraded.entry(coord).or_insert(0);
        if topic != self.settings.topics.dlq || *level >= 1 {
            error!(topic, input_partition = coord.1, input_offset = coord.2, code = %code,
                "An output record can never be produced; stopping.");
            return Err(PipelineError::Fatal(format!(
                "the output for input {}[{}] offset {} cannot be written to {topic}: {code} (check the topic's max.message.bytes and the producer's message.max.bytes)",
                self.shared.inputs[coord.0], coord.1, coord.2
            )));
        }
        *level = 1;
        warn!(topic, input_partition = coord.1, input_offset = coord.2, code = %code,
            "A DLQ record was refused; writing it without its payload.");
        Ok(1)
    }

    fn on_txn_error(&mut self, e: TxnError) -> Result<(), PipelineError> {
        match e {
            TxnError::Fatal { .. } => {
                self.renew_producer(e)?;
                self.rewind()
            }
            TxnError::Poison { ref topic, code, .. }
                if *topic == self.settings.topics.changelog
                    && crate::core::changelog::batched(self.settings.changelog_record_version) =>
            {
                // A batch record larger than the topic (`max.message.bytes`) or the producer
                // accepts: the transaction is redone with smaller batches, down to
                // `MIN_CHANGELOG_BATCH`.
                let size = self.engine.changelog_batch_bytes();
                if size <= MIN_CHANGELOG_BATCH {
                    return Err(PipelineError::Fatal(format!(
                        "a changelog record of at most {size} bytes before compression can never be produced: {e}"
                    )));
                }
                let smaller = (size / 4).max(MIN_CHANGELOG_BATCH);
                warn!(topic = %topic, code = ?code, batch_bytes = smaller,
                    "The changelog topic refused a batch record as too large; writing smaller ones from now on. The topic's max.message.bytes must hold the producer's batch.size (librdkafka packs several records per request) and message.max.bytes must hold a batch (512 KiB).");
                self.engine.set_changelog_batch_bytes(smaller);
                self.recover(&e)
            }
            TxnError::Poison { tag, ref topic, code } => {
                let Some(&coord) = tag.checked_sub(self.origins_base).and_then(|i| self.origins.get(i)) else {
                    return Err(PipelineError::Fatal(format!("an output record can never be produced: {e}")));
                };
                self.degrade(coord, &topic.clone(), code)?;
                self.recover(&e)
            }
            TxnError::Abort { .. } => self.recover(&e),
        }
    }

    /// The one way back from an aborted transaction: abort, drop the state its inputs built,
    /// rewind every partition to its committed offset, and restore.
    fn recover(&mut self, why: &TxnError) -> Result<(), PipelineError> {
        warn!(error = %why, "Transaction aborted; rewinding to the committed offsets and restoring.");
        self.settle_quietly();
        let aborted = {
            let consumer = &self.consumer;
            let status = &self.status;
            let mut w = lock(&self.shared.writer);
            // While Kafka is away, keep serving the consumer (group membership, callbacks);
            // what it delivers meanwhile is fetched again after the rewind.
            w.abort(&mut || {
                status.beat();
                let _ = consumer.poll(Duration::from_millis(100));
            })
        };
        match aborted {
            Err(e) => self.renew_producer(e)?,
            // A produce request of the aborted transaction may still be on its way (a frozen
            // broker holds it in its socket buffer). Under the classic transaction protocol,
            // landing after the abort with the same producer epoch it would join the next
            // transaction and be committed with it: a notice sent twice (tests/faults.rs,
            // broker frozen). A new producer bumps the epoch, so such a straggler is refused.
            Ok(()) => self.new_producer()?,
        }
        self.rewind()
    }

    /// After the open transaction is gone (aborted, or its producer replaced): drop what it
    /// counted, take in any rebalance seen meanwhile, and restore the owned partitions from
    /// their committed offsets.
    fn rewind(&mut self) -> Result<(), PipelineError> {
        self.rewinds += 1;
        self.restore_cause = "abort";
        lock(&self.shared.offsets).clear();
        self.after_abort();
        self.on_rebalance_events()?;
        // Also with nothing owned (a lost assignment): what the aborted transaction did must not
        // outlive it. Its dedupe memory, kept by a partition's removal, would make the re-read
        // inputs duplicates once the partitions come back.
        self.restore_all()
    }

    /// The producer hit a fatal error. A transaction the coordinator expired while the broker
    /// was unreachable or frozen ends this way too (the coordinator bumps the producer epoch, and
    /// librdkafka reports the next call as fenced or in an invalid state), so, like Kafka
    /// Streams, a new producer with the same transactional id takes over: initialising it aborts
    /// whatever the old one left open. A second instance really running with the same id would
    /// fence it right back: after [`MAX_RENEWALS`] renewals within [`RENEWAL_WINDOW`] the error
    /// stands and the process exits.
    fn renew_producer(&mut self, e: TxnError) -> Result<(), PipelineError> {
        if !may_renew(&mut self.renewals) {
            error!(error = %e, renewals = self.renewals.len(), "Fatal producer error again; another instance may use the same transactional.id. Exiting.");
            return Err(e.into());
        }
        warn!(error = %e, "Fatal producer error; replacing the producer and restoring from the committed offsets.");
        self.new_producer()
    }

    /// The consumer hit a fatal error. librdkafka raises one when the group fences this static
    /// member (FENCED_INSTANCE_ID): after a broker outage longer than the session timeout it
    /// rejoins under the same `group.instance.id`, and the broker, handling the requests queued
    /// during the outage, can fence the old membership with the new one. The consumer is dead
    /// for good then, and nothing would be decided again: like a fatal producer, a new consumer
    /// with the same configuration takes over. Its assignment is restored like any other (from
    /// the changelog and the committed offsets); the open transaction is aborted, and a new
    /// producer fences its stragglers. Another process really running with the same instance
    /// name would fence it right back: after [`MAX_RENEWALS`] within [`RENEWAL_WINDOW`] the
    /// error stands and the process exits.
    fn renew_consumer(&mut self, why: &str) -> Result<(), PipelineError> {
        if !may_renew(&mut self.consumer_renewals) {
            error!(
                error = why,
                renewals = self.consumer_renewals.len(),
                "Fatal consumer error again; another instance may use the same group.instance.id. Exiting."
            );
            return Err(PipelineError::Fatal(format!("the consumer failed: {why}")));
        }
        warn!(error = why, "Fatal consumer error; replacing the consumer and restoring its assignment.");
        self.settle_quietly();
        let aborted = lock(&self.shared.writer).abort(&mut || self.status.beat());
        let consumer: BaseConsumer<Ctx> = consumer_config(&self.settings)
            .create_with_context(Ctx { shared: self.shared.clone() })
            .map_err(|e| PipelineError::Fatal(format!("cannot create a new Kafka consumer: {e}")))?;
        let inputs: Vec<&str> = self.settings.topics.input.iter().map(String::as_str).collect();
        consumer
            .subscribe(&inputs)
            .map_err(|e| PipelineError::Fatal(format!("cannot subscribe the new consumer to {inputs:?}: {e}")))?;
        // The old consumer (closed without leaving the group: it is fenced already) goes first,
        // and what its callbacks reported goes with it.
        drop(std::mem::replace(&mut self.consumer, Arc::new(consumer)));
        lock(&self.shared.events).clear();
        self.shared.unflushed.store(false, Ordering::SeqCst);
        self.fetch_epoch += 1;
        self.metrics.consumer_renewals.inc();
        // Everything owned is lost with the old consumer: nothing is owned until the new one is
        // assigned, and the rewind starts the engine over like after any abort.
        self.unassigned();
        match aborted {
            Err(e) => self.renew_producer(e)?,
            // A new producer epoch fences records of the aborted transaction still in flight.
            Ok(()) => self.new_producer()?,
        }
        self.rewind()
    }

    /// Replaces the transactional producer: `init_transactions` under the same id aborts
    /// whatever the old one left open and bumps the producer epoch, fencing its stragglers.
    /// While Kafka is away the consumer is kept served and the wait goes on: an outage is not
    /// fatal.
    fn new_producer(&mut self) -> Result<(), PipelineError> {
        // The old producer goes, and with it what a background commit would report.
        self.settle_quietly();
        let mut fresh = TxnWriter::create(&producer_config(&self.settings)).map_err(|source| {
            PipelineError::Transaction(TxnError::Fatal { what: "creating a new producer", source })
        })?;
        let consumer = &self.consumer;
        let status = &self.status;
        fresh
            .init(&mut || {
                status.beat();
                let _ = consumer.poll(Duration::from_millis(100));
                true
            })
            .map_err(|source| {
                PipelineError::Transaction(TxnError::Fatal { what: "init_transactions of a new producer", source })
            })?;
        // Any offset will do for the owned partitions: the fence is aborted, and its marker
        // closes every consumer-offset commit the old producer left pending in the group.
        let (owned, inputs) = (&self.owned, &self.settings.topics.input);
        let mut offsets = || {
            let group = consumer.group_metadata()?;
            let mut tpl = TopicPartitionList::new();
            for &(t, p) in owned {
                let _ = tpl.add_partition_offset(&inputs[t], p, Offset::Offset(0));
            }
            Some((tpl, group))
        };
        let fenced = fresh.fence(&output_topics(&self.settings), &mut offsets, &mut || {
            status.beat();
            let _ = consumer.poll(Duration::from_millis(100));
        })?;
        info!(partitions = fenced, "Output partitions fenced by the new producer.");
        let old = std::mem::replace(&mut *lock(&self.shared.writer), fresh);
        drop(old);
        lock(&self.shared.offsets).clear();
        self.metrics.producer_renewals.inc();
        Ok(())
    }

    /// Outcomes of the open transaction count (it was committed outside `finish_commit`: on
    /// revoke, by the callback).
    fn after_commit(&mut self) {
        self.tally.publish(&self.metrics, &self.status, &self.engine);
        self.forget_origins();
        self.batch = 0;
        self.metrics.transactions.with_label_values(&["commit"]).inc();
        self.status.commits.fetch_add(1, Ordering::Relaxed);
    }

    fn after_abort(&mut self) {
        self.tally.clear();
        self.forget_origins();
        self.batch = 0;
        // Settled before every abort (`settle_quietly`); one left here would be stale.
        self.committing = None;
        self.metrics.transactions.with_label_values(&["abort"]).inc();
    }

    fn forget_origins(&mut self) {
        self.origins_base += self.origins.len();
        self.origins.clear();
    }

    /// Commits everything decided so far and waits for it; an error goes through `on_txn_error`.
    fn commit(&mut self) -> Result<(), PipelineError> {
        match self.try_commit() {
            Ok(()) => Ok(()),
            Err(e) => self.on_txn_error(e),
        }
    }

    /// Starts committing the open transaction in the background, once the commit before it has
    /// ended; deciding goes on meanwhile, into the next transaction (see `TxnWriter`,
    /// "Committing ahead"). If this commit fails, the loop rewinds to the last committed offsets
    /// as after any abort, and what was decided since is redone with it. An error goes through
    /// `on_txn_error`.
    fn commit_ahead(&mut self) -> Result<(), PipelineError> {
        match self.finish_commit().and_then(|()| self.start_commit()) {
            Ok(()) => Ok(()),
            Err(e) => self.on_txn_error(e),
        }
    }

    /// Commits everything decided so far and waits for it (nothing if no transaction is open).
    fn try_commit(&mut self) -> Result<(), TxnError> {
        self.finish_commit()?;
        self.start_commit()?;
        self.finish_commit()
    }

    /// Takes in a background commit that ended (or waits for it): see `finish_commit`. An error
    /// goes through `on_txn_error`; on success, a transaction asked for meanwhile begins.
    fn settle(&mut self) -> Result<(), PipelineError> {
        let result = self.finish_commit().and_then(|()| {
            let mut w = lock(&self.shared.writer);
            if w.is_open() {
                w.begin()
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => Ok(()),
            Err(e) => self.on_txn_error(e),
        }
    }

    /// Takes in a background commit before its transaction's work is given up anyway (an
    /// abort, a new producer or consumer, shutdown): its outcomes count if it committed; if it
    /// failed, the rewind that follows redoes its inputs.
    fn settle_quietly(&mut self) {
        let Some(t) = self.committing.take() else { return };
        let result = lock(&self.shared.writer).finish();
        match result {
            Some(Err(e)) => {
                warn!(error = %e, "The transaction committing in the background failed; its inputs are redone.")
            }
            _ => self.committed(t),
        }
    }

    /// Sends the pending state changes and starts committing the open transaction with its
    /// offsets (nothing if none is open); `finish_commit` takes the result.
    fn start_commit(&mut self) -> Result<(), TxnError> {
        let started = Instant::now();
        self.flush_changelog()?;
        {
            let mut w = lock(&self.shared.writer);
            if !w.is_open() {
                return Ok(());
            }
            let offsets = self.shared.take_offsets();
            let with = match self.consumer.group_metadata() {
                Some(cgm) if offsets.count() > 0 => Some((offsets.clone(), cgm)),
                Some(_) => None,
                None => {
                    return Err(TxnError::Abort {
                        what: "no consumer group metadata (not in a group)",
                        source: KafkaError::Subscription("not in a group".into()),
                    })
                }
            };
            w.commit_ahead(with)?;
            let tally = std::mem::replace(&mut self.tally, std::mem::take(&mut self.spare_tally));
            let tags_end = self.origins_base + self.origins.len();
            self.committing = Some(Ticket { started, tally, tags_end, offsets, redos: 0 });
        }
        self.batch = 0;
        Ok(())
    }

    /// Waits for the commit started by `start_commit` (nothing if none), and redoes it if the
    /// group refused its offsets while every partition they are for is still owned. Committed:
    /// its outcomes count.
    fn finish_commit(&mut self) -> Result<(), TxnError> {
        let Some(mut t) = self.committing.take() else { return Ok(()) };
        let result = lock(&self.shared.writer).finish();
        match result {
            None | Some(Ok(())) => {}
            Some(Err(e)) if e.refused_by_group() => self.redo(&mut t, e)?,
            Some(Err(e)) => return Err(e),
        }
        self.committed(t);
        Ok(())
    }

    /// A transaction whose offsets the group refused (a rebalance moved its generation on): sent
    /// again and committed with the consumer's current group metadata, at most [`MAX_REDOS`]
    /// times, while `still_owns` allows; else the refusal stands (the caller aborts).
    fn redo(&mut self, t: &mut Ticket, refused: TxnError) -> Result<(), TxnError> {
        let mut refused = refused;
        let mut w = lock(&self.shared.writer);
        loop {
            if t.redos >= MAX_REDOS || !self.still_owns(&t.offsets) {
                return Err(refused);
            }
            t.redos += 1;
            warn!(error = %refused, "The group refused the offsets (a rebalance moved its generation on); every partition they are for is still owned: sending the transaction again.");
            self.metrics.transactions.with_label_values(&["redo"]).inc();
            let status = &self.status;
            w.redo(&mut || status.beat())?;
            let committed = match self.consumer.group_metadata() {
                Some(cgm) if t.offsets.count() > 0 => w.commit(Some((&t.offsets, &cgm))),
                Some(_) => w.commit(None),
                None => Err(TxnError::Abort {
                    what: "no consumer group metadata (not in a group)",
                    source: KafkaError::Subscription("not in a group".into()),
                }),
            };
            match committed {
                Ok(()) => return Ok(()),
                Err(e) if e.refused_by_group() => refused = e,
                Err(e) => return Err(e),
            }
        }
    }

    /// A transaction's commit ended well: its outcomes become visible.
    fn committed(&mut self, t: Ticket) {
        let Ticket { started, mut tally, tags_end, .. } = t;
        // From the start to the end of the commit itself, not to when the loop took it in.
        let ended = lock(&self.shared.writer).last_commit_ended().filter(|at| *at >= started);
        let took = ended.unwrap_or_else(Instant::now).saturating_duration_since(started);
        self.metrics.transaction_commit_seconds.observe(took.as_secs_f64());
        tally.publish(&self.metrics, &self.status, &self.engine);
        self.spare_tally = tally;
        let done = tags_end.saturating_sub(self.origins_base).min(self.origins.len());
        self.origins.drain(..done);
        self.origins_base += done;
        self.metrics.transactions.with_label_values(&["commit"]).inc();
        self.status.commits.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a transaction whose offsets the group refused may be redone with the consumer's
    /// current group metadata: only with the cooperative protocol (a generation change there
    /// takes no partition away until this loop gives it up), only while librdkafka still has
    /// every partition of the offsets assigned and the assignment was not lost, and only if no
    /// revocation of a lost assignment or of everything is waiting for the loop. Then the new
    /// generation is one in which this member owns all of them, as it did while consuming.
    fn still_owns(&self, offsets: &TopicPartitionList) -> bool {
        if !self.cooperative || self.consumer.assignment_lost() {
            return false;
        }
        let pending_loss = lock(&self.shared.events)
            .iter()
            .any(|e| !matches!(e, RebalanceEvent::AssignedSome(_) | RebalanceEvent::RevokedSome { lost: false, .. }));
        if pending_loss {
            return false;
        }
        let Ok(assigned) = self.consumer.assignment() else { return false };
        offsets.count() > 0
            && offsets.elements().iter().all(|e| assigned.find_partition(e.topic(), e.partition()).is_some())
    }

    fn set_ready(&self, ready: bool) {
        self.status.ready.store(ready, Ordering::SeqCst);
        self.metrics.ready.set(i64::from(ready));
    }

    /// Timer work every 100 ms: restore progress, control records, engine expiry, breaker
    /// transitions (logged once each), gauges.
    fn tick(&mut self) -> Result<(), PipelineError> {
        let now = wall_ms();
        if let Phase::Restoring(until) = &self.phase {
            // A partition whose last records are transaction markers never delivers the offset
            // its restore ends at: its position says it is done.
            let mut done = Vec::new();
            if let Ok(pos) = self.consumer.position() {
                for e in pos.elements() {
                    let Some(t) = self.shared.topic_index(e.topic()) else { continue };
                    if let (Offset::Offset(p), Some(&end)) = (e.offset(), until.get(&(t, e.partition()))) {
                        if p >= end {
                            done.push((t, e.partition()));
                        }
                    }
                }
            }
            for (t, p) in done {
                self.restored(t, p)?;
            }
            return Ok(());
        }
        self.control.read_new(&mut self.engine, now);
        self.engine.tick(now);
        if self.engine.pending_changes() > 0 {
            // Expired accounts ("gone" entries) and compaction work wait for the next commit
            // like any other change.
            self.shared.unflushed.store(true, Ordering::SeqCst);
        }
        let m = &self.metrics;
        let mut trips = Vec::new();
        for t in self.engine.drain_transitions() {
            warn!(cell = %t.cell, from = t.from.as_str(), to = t.to.as_str(), cause = t.cause.as_str(),
                decisions_this_minute = t.decisions_this_minute, threshold = t.threshold, "Breaker cell changed state.");
            if matches!(t.to, CellState::Open | CellState::ForcedOpen) {
                m.breaker_trips.with_label_values(&[&t.cell, t.cause.as_str()]).inc();
            }
            if t.to == CellState::Open
                && matches!(t.cause, Cause::Spike | Cause::SpikeWhileProbing | Cause::ReplaySuspected)
            {
                trips.push(t);
            }
        }
        // The fleet's other instances open the same cell (their control readers apply this).
        for t in trips {
            let rec = TripRecord {
                cell: t.cell.clone(),
                at_ms: t.at_ms,
                cause: t.cause.as_str().to_string(),
                decisions_this_minute: t.decisions_this_minute,
                threshold: t.threshold,
                instance: self.settings.transactional_id.clone(),
            };
            let payload = serde_json::to_vec(&rec).unwrap_or_default();
            let key = trip_key(&t.cell);
            let record = BaseRecord::with_opaque_to(&self.settings.topics.control, NO_TAG)
                .key(key.as_bytes())
                .payload(&payload[..]);
            let sent = lock(&self.shared.writer).send(record);
            if let Err(e) = sent {
                return self.on_txn_error(e);
            }
        }
        let m = &self.metrics;
        let snap = self.engine.breaker().snapshot();
        for c in &snap {
            for st in CellState::ALL {
                m.breaker_state.with_label_values(&[&c.cell, st.as_str()]).set(i64::from(c.state == st));
            }
            m.cell_decision_rate.with_label_values(&[&c.cell]).set(f64::from(c.decisions_this_minute));
            m.cell_baseline.with_label_values(&[&c.cell]).set(c.baseline_per_minute);
        }
        let b = self.engine.breaker();
        m.budget_remaining.set(i64::from(b.global_remaining()));
        m.cap_factor.set(b.share() * b.ramp_factor());
        m.tracked_accounts.set(self.engine.tracked_accounts() as i64);
        if now % 5_000 < 100 {
            m.state_bytes.set(self.engine.state_bytes() as i64);
        }
        if let Some(wm) = self.engine.min_watermark() {
            m.watermark_lag_seconds.set((now - wm).max(0) as f64 / 1000.0);
        }
        self.report_lag();
        self.set_ready(matches!(self.phase, Phase::Live));
        *lock(&self.status.breaker) = snap;
        Ok(())
    }

    /// Lag gauges of owned partitions from the latest statistics; series of partitions this
    /// instance no longer owns are removed.
    fn report_lag(&self) {
        let lag = lock(&self.shared.lag);
        for &(t, p) in &self.owned {
            if let Some(&l) = lag.get(&(t, p)) {
                self.metrics.consumer_lag.with_label_values(&[&self.shared.inputs[t], &p.to_string()]).set(l);
            }
        }
        for (t, topic) in self.shared.inputs.iter().enumerate() {
            for p in 0..self.partitions.total() as i32 {
                if !self.owned.contains(&(t, p)) {
                    let _ = self.metrics.consumer_lag.remove_label_values(&[topic, &p.to_string()]);
                }
            }
        }
    }

    /// Drain: finish the open transaction, then leave the group.
    fn drain(mut self, result: Result<(), PipelineError>, shutdown: bool) -> Result<(), PipelineError> {
        let result = match result {
            Ok(()) => self.commit(),
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.settle_quietly();
            let _ = lock(&self.shared.writer).abort(&mut || {});
        }
        self.shared.leaving.store(true, Ordering::SeqCst);
        self.consumer.unsubscribe();
        // Serve the revoke callback so the member leaves the group cleanly.
        let leave_by = Instant::now() + Duration::from_secs(2);
        while Instant::now() < leave_by && lock(&self.shared.events).is_empty() {
            let _ = self.consumer.poll(Duration::from_millis(50));
        }
        self.set_ready(false);
        if shutdown && result.is_ok() {
            info!("Pipeline drained.");
        }
        result
    }
}

/// Partitions of each input topic, in `topics.input` order.
fn input_partitions(consumer: &BaseConsumer<Ctx>, s: &Settings) -> Result<Vec<usize>, PipelineError> {
    let mut counts = Vec::new();
    for t in &s.topics.input {
        let n = super::topics::partition_ids(consumer.client(), t, super::topics::SHOW_WAIT)
            .map(|ids| ids.len())
            .map_err(|e| PipelineError::Startup(format!("cannot read metadata of {t}: {e}")))?;
        if n == 0 {
            return Err(PipelineError::Startup(format!("input topic {t} does not exist")));
        }
        counts.push(n);
    }
    Ok(counts)
}
