//! The exactly-once loop: consume input partitions, run each message through the core, produce
//! its output record, and commit outputs together with the consumed offsets in one Kafka
//! transaction every `commit_interval`. Runs on a dedicated OS thread because librdkafka's
//! transactional calls block. Does IO; decisions are the core's.
//!
//! State is rebuilt from the input topic itself: on every assignment (and after an aborted
//! transaction) each partition is re-read from `now - lookback` up to its committed offset in
//! restore mode (state only, no outputs, breaker not charged), then processed live.

// hashbrown (foldhash): the per-message maps here are on the hot path; SipHash costs more.
use hashbrown::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{error, info, warn};

use crate::config::Settings;
use crate::core::breaker::{CellSnapshot, CellState};
use crate::core::{Engine, Outcome, TimeMode};
use crate::telemetry::Metrics;

use super::client::{consumer_config, producer_config};
use super::records::{record_for, Origin};

/// A manual action from the admin API, applied by the pipeline thread, made durable in the
/// control topic and recorded in the audit topic (one transaction), then answered.
pub enum AdminCommand {
    Breaker { cell: String, action: BreakerAction, actor: String, reason: String, reply: Reply },
    Allow { account_id: String, expires_ms: Option<i64>, actor: String, reason: String, reply: Reply },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerAction {
    Open { ttl: Duration },
    Close { ttl: Duration },
    Clear,
}

pub type Reply = tokio::sync::oneshot::Sender<Result<serde_json::Value, String>>;

/// Errors that stop the pipeline. Each has a disposition: startup and fatal errors exit non-zero.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("startup failed: {0}")]
    Startup(String),
    #[error("fatal Kafka error, exiting so the orchestrator restarts the service: {0}")]
    Fatal(String),
}

/// Live status shared with the HTTP server and the demo.
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
}

#[derive(Debug)]
enum TxnError {
    Abortable(String),
    Fatal(String),
}

/// State of the open transaction, shared with the rebalance callback.
#[derive(Default)]
struct Txn {
    open: bool,
    /// Next offset to consume per (input topic index, partition), for `send_offsets_to_transaction`.
    offsets: HashMap<(usize, i32), i64>,
    /// Event times of notices in the open transaction, for the event-to-notice histogram.
    notice_event_ms: Vec<i64>,
}

struct Shared {
    producer: BaseProducer,
    txn: Mutex<Txn>,
    inputs: Vec<String>,
    /// Per (topic index, partition): the committed offset restore mode runs up to.
    restore_until: Mutex<HashMap<(usize, i32), i64>>,
    rebalanced: AtomicBool,
    /// Set while draining: an assignment arriving now is not restored (the member is leaving).
    leaving: AtomicBool,
    /// Set by the callback when it failed to commit on revoke.
    callback_failure: Mutex<Option<TxnError>>,
    lookback_ms: i64,
    metrics: Metrics,
    timeout: Duration,
}

struct Ctx {
    shared: Arc<Shared>,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let s = &self.shared;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS if s.leaving.load(Ordering::SeqCst) => {
                // Draining: take nothing on (restore planning would block the drain).
                if let Err(e) = consumer.assign(&TopicPartitionList::new()) {
                    warn!(error = %e, "Declining an assignment while draining failed.");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let plan = plan_restore(consumer, tpl, s);
                let mut assign = TopicPartitionList::new();
                let mut until = s.restore_until.lock().unwrap_or_else(|p| p.into_inner());
                until.clear();
                for p in &plan {
                    let _ = assign.add_partition_offset(&s.inputs[p.topic], p.partition, Offset::Offset(p.start));
                    if p.start < p.until {
                        until.insert((p.topic, p.partition), p.until);
                    }
                }
                if let Err(e) = consumer.assign(&assign) {
                    error!(error = %e, "Assigning partitions failed.");
                }
                info!(partitions = plan.len(), restoring = until.len(), "Partitions assigned.");
                s.rebalanced.store(true, Ordering::SeqCst);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Finish the open transaction before the partitions go (or abort if the
                // assignment was lost: the offsets would be rejected anyway).
                let result =
                    if consumer.assignment_lost() { abort(s).map_err(TxnError::Fatal) } else { commit(s, consumer) };
                if let Err(e) = result {
                    warn!(error = ?e, "Ending the transaction on revoke failed.");
                    *s.callback_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
                if let Err(e) = consumer.unassign() {
                    error!(error = %e, "Unassigning partitions failed.");
                }
                info!(partitions = tpl.count(), "Partitions revoked.");
                s.rebalanced.store(true, Ordering::SeqCst);
            }
            other => error!(code = ?other, "Rebalance error."),
        }
    }
}

struct RestorePlan {
    topic: usize,
    partition: i32,
    start: i64,
    until: i64,
}

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// For each partition: the committed offset (or the low watermark), and where restore starts.
fn plan_restore<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tpl: &TopicPartitionList,
    s: &Shared,
) -> Vec<RestorePlan> {
    let committed = consumer.committed_offsets(tpl.clone(), s.timeout).unwrap_or_else(|_| tpl.clone());
    let mut by_time = TopicPartitionList::new();
    for e in tpl.elements() {
        let _ = by_time.add_partition_offset(e.topic(), e.partition(), Offset::Offset(wall_ms() - s.lookback_ms));
    }
    let starts = consumer.offsets_for_times(by_time, s.timeout).ok();
    let mut plan = Vec::new();
    for e in committed.elements() {
        let Some(topic) = s.inputs.iter().position(|t| t == e.topic()) else { continue };
        let low = consumer.fetch_watermarks(e.topic(), e.partition(), s.timeout).map(|w| w.0).unwrap_or(0);
        let until = match e.offset() {
            Offset::Offset(o) if o >= 0 => o,
            _ => low,
        };
        let start = starts
            .as_ref()
            .and_then(|t| t.find_partition(e.topic(), e.partition()))
            .and_then(|x| match x.offset() {
                Offset::Offset(o) if o >= 0 => Some(o),
                _ => None,
            })
            .unwrap_or(until)
            .clamp(low, until);
        plan.push(RestorePlan { topic, partition: e.partition(), start, until });
    }
    plan
}

fn classify(e: KafkaError) -> Result<bool, TxnError> {
    match e {
        KafkaError::Transaction(t) if t.is_retriable() => Ok(true),
        KafkaError::Transaction(t) if t.txn_requires_abort() => Err(TxnError::Abortable(t.to_string())),
        other => Err(TxnError::Fatal(other.to_string())),
    }
}

/// Commits the open transaction with the consumed offsets. Retriable errors are retried.
fn commit<C: ConsumerContext>(s: &Shared, consumer: &BaseConsumer<C>) -> Result<(), TxnError> {
    let mut txn = s.txn.lock().unwrap_or_else(|p| p.into_inner());
    if !txn.open {
        return Ok(());
    }
    let started = Instant::now();
    let mut tpl = TopicPartitionList::new();
    for ((t, p), o) in &txn.offsets {
        let _ = tpl.add_partition_offset(&s.inputs[*t], *p, Offset::Offset(*o));
    }
    let Some(cgm) = consumer.group_metadata() else {
        return Err(TxnError::Abortable("no consumer group metadata (not in a group)".into()));
    };
    for attempt in 0.. {
        match s.producer.send_offsets_to_transaction(&tpl, &cgm, s.timeout) {
            Ok(()) => break,
            Err(e) => match classify(e) {
                Ok(true) if attempt < 10 => continue,
                Ok(_) => return Err(TxnError::Abortable("send_offsets_to_transaction kept failing".into())),
                Err(e) => return Err(e),
            },
        }
    }
    drain_in_flight(&s.producer, s.timeout);
    for attempt in 0.. {
        match s.producer.commit_transaction(s.timeout) {
            Ok(()) => break,
            Err(e) => match classify(e) {
                Ok(true) if attempt < 10 => continue,
                Ok(_) => return Err(TxnError::Abortable("commit_transaction kept failing".into())),
                Err(e) => return Err(e),
            },
        }
    }
    txn.open = false;
    txn.offsets.clear();
    let now = wall_ms();
    for ms in txn.notice_event_ms.drain(..) {
        s.metrics.event_to_notice.observe((now - ms).max(0) as f64 / 1000.0);
    }
    s.metrics.transactions.with_label_values(&["commit"]).inc();
    s.metrics.transaction_commit_seconds.observe(started.elapsed().as_secs_f64());
    Ok(())
}

/// Waits until the open transaction's records are delivered, polling in 1 ms steps.
/// `BaseProducer::commit_transaction` flushes first, but its flush polls in `poll(100 ms)` steps
/// and `BaseProducer::poll` always blocks for its whole timeout: a single record still in flight
/// (linger.ms, the produce round trip) made every commit take 100 ms, as long as the commit
/// interval itself. benches/pipeline.rs, A/B: commit 104 ms -> 4 ms mean, throughput x2.2,
/// event-to-notice p50 210 -> 60 ms. With nothing left in flight, that flush returns at once.
/// On timeout, `commit_transaction` decides as before.
fn drain_in_flight(producer: &BaseProducer, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        producer.poll(Duration::from_millis(1));
    }
}

fn abort(s: &Shared) -> Result<(), String> {
    let mut txn = s.txn.lock().unwrap_or_else(|p| p.into_inner());
    if !txn.open {
        return Ok(());
    }
    s.producer.abort_transaction(s.timeout).map_err(|e| e.to_string())?;
    txn.open = false;
    txn.offsets.clear();
    txn.notice_event_ms.clear();
    s.metrics.transactions.with_label_values(&["abort"]).inc();
    Ok(())
}

/// Outcome counts kept locally and flushed to Prometheus on each tick (not per event).
#[derive(Default)]
struct Tally {
    outcomes: HashMap<(&'static str, &'static str), u64>,
    consumed_by_cell: Vec<u64>,
    /// Inputs that did not decode far enough to have a source.
    consumed_invalid: u64,
}

/// Runs the pipeline until `shutdown` is set or a fatal error occurs.
pub fn run_pipeline(
    settings: Arc<Settings>,
    metrics: Metrics,
    status: Arc<Status>,
    shutdown: Arc<AtomicBool>,
    commands: std::sync::mpsc::Receiver<AdminCommand>,
) -> Result<(), PipelineError> {
    let policy = settings.policy.clone();
    let producer: BaseProducer = producer_config(&settings)
        .create()
        .map_err(|e| PipelineError::Startup(format!("cannot create the Kafka producer: {e}")))?;
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout).map_err(|e| {
        PipelineError::Startup(format!(
            "cannot initialise transactions (transactional.id {}): {e}",
            settings.transactional_id
        ))
    })?;
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
        producer,
        txn: Mutex::new(Txn::default()),
        inputs: settings.topics.input.clone(),
        restore_until: Mutex::new(HashMap::new()),
        rebalanced: AtomicBool::new(false),
        leaving: AtomicBool::new(false),
        callback_failure: Mutex::new(None),
        lookback_ms: lookback.as_millis() as i64,
        metrics: metrics.clone(),
        timeout,
    });
    let consumer: BaseConsumer<Ctx> = consumer_config(&settings)
        .create_with_context(Ctx { shared: shared.clone() })
        .map_err(|e| PipelineError::Startup(format!("cannot create the Kafka consumer: {e}")))?;
    let inputs: Vec<&str> = settings.topics.input.iter().map(String::as_str).collect();
    consumer.subscribe(&inputs).map_err(|e| PipelineError::Startup(format!("cannot subscribe to {inputs:?}: {e}")))?;
    metrics.build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), &policy.version, policy.mode.as_str()]).set(1);

    let mut engine = Engine::new(policy.clone(), settings.hash_seed, TimeMode::Wall);
    let total_partitions = input_partitions(&consumer, &settings)?;
    // Overrides and allow-list changes of the fleet apply before the first decision.
    let control = control_reader(&settings)?;
    let mut last_policy: Option<String> = None;
    let applied = read_control(&control, &mut engine, &settings, true, &mut last_policy);
    info!(records = applied, "Control topic applied.");
    if last_policy.as_deref() != Some(policy.version.as_str()) {
        if let Some(previous) = &last_policy {
            // A new policy may decide very differently: ramp the caps up instead of trusting it.
            warn!(previous = %previous, current = %policy.version, "Policy version changed; ramping the breaker caps up.");
            engine.breaker_mut().start_policy_ramp(wall_ms());
        }
        record_policy_version(&shared, &settings)?;
    }
    let mut restore_until: HashMap<(usize, i32), i64> = HashMap::new();
    let mut tally = Tally::default();
    let mut batch = 0usize;
    let mut deadline = Instant::now() + settings.commit_interval;
    let mut next_tick = Instant::now();
    let mut next_lag = Instant::now();
    let mut result = Ok(());

    'outer: while !shutdown.load(Ordering::SeqCst) {
        let wait = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(100));
        let polled = consumer.poll(wait);
        if shared.rebalanced.swap(false, Ordering::SeqCst) {
            // Eager rebalance: everything was revoked (and committed) or freshly assigned.
            engine.reset_state();
            restore_until = shared.restore_until.lock().unwrap_or_else(|p| p.into_inner()).clone();
            batch = 0;
            let n = consumer.assignment().map(|a| a.count()).unwrap_or(0);
            status.assigned_partitions.store(n, Ordering::SeqCst);
            // This instance's share of the fleet-wide caps follows its share of the partitions.
            engine.breaker_mut().set_share(n as f64 / total_partitions.max(1) as f64);
            status.ready.store(false, Ordering::SeqCst);
            metrics.ready.set(0);
        }
        if let Some(e) = shared.callback_failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
            if let Err(e) = handle_txn_error(e, &shared, &consumer, &mut engine, &mut restore_until) {
                result = Err(e);
                break 'outer;
            }
        }
        while let Ok(cmd) = commands.try_recv() {
            if let Err(e) = admin_command(cmd, &shared, &consumer, &mut engine, &settings) {
                result = Err(e);
                break 'outer;
            }
        }
        match polled {
            Some(Ok(m)) => {
                let Some(topic) = shared.inputs.iter().position(|t| t == m.topic()) else { continue };
                let (partition, offset) = (m.partition(), m.offset());
                let payload = m.payload().unwrap_or(&[]);
                let now = wall_ms();
                if let Some(&until) = restore_until.get(&(topic, partition)) {
                    if offset < until {
                        let at = m.timestamp().to_millis().unwrap_or(now);
                        engine.restore(payload, partition as u32, now, at);
                        continue;
                    }
                    restore_until.remove(&(topic, partition));
                }
                if let Err(e) = begin_if_needed(&shared) {
                    result = Err(e);
                    break 'outer;
                }
                let processed = engine.process(payload, partition as u32, now);
                let outcome = &processed.outcome;
                *tally.outcomes.entry((outcome.kind().as_str(), outcome.reason())).or_default() += 1;
                match processed.cell {
                    Some(c) => {
                        let c = c as usize;
                        if tally.consumed_by_cell.len() <= c {
                            tally.consumed_by_cell.resize(c + 1, 0);
                        }
                        tally.consumed_by_cell[c] += 1;
                    }
                    None => tally.consumed_invalid += 1,
                }
                count_status(&status, outcome, &metrics, now);
                let origin = Origin { topic: m.topic(), partition, offset, key: m.key(), payload };
                if let Some(rec) = record_for(outcome, &origin, &settings.topics, policy.mode) {
                    if let Outcome::Notice(d) = outcome {
                        shared.txn.lock().unwrap_or_else(|p| p.into_inner()).notice_event_ms.push(d.event_ms);
                    }
                    let mut record =
                        BaseRecord::to(rec.topic).key(&rec.key[..]).payload(&rec.payload[..]).headers(rec.headers);
                    loop {
                        match shared.producer.send(record) {
                            Ok(()) => break,
                            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                                record = r;
                                shared.producer.poll(Duration::from_millis(5));
                            }
                            Err((e, _)) => {
                                // The transaction cannot be committed without this record.
                                warn!(error = %e, "Producing an output record failed; aborting the transaction.");
                                if let Err(e) = handle_txn_error(
                                    TxnError::Abortable(e.to_string()),
                                    &shared,
                                    &consumer,
                                    &mut engine,
                                    &mut restore_until,
                                ) {
                                    result = Err(e);
                                    break 'outer;
                                }
                                continue 'outer;
                            }
                        }
                    }
                }
                shared.txn.lock().unwrap_or_else(|p| p.into_inner()).offsets.insert((topic, partition), offset + 1);
                batch += 1;
                if batch % 1024 == 0 {
                    shared.producer.poll(Duration::ZERO);
                }
            }
            Some(Err(e)) => {
                if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
                    result = Err(PipelineError::Fatal(e.to_string()));
                    break;
                }
                warn!(error = %e, "Consumer error.");
            }
            None => {}
        }
        let now_i = Instant::now();
        if now_i >= deadline || batch >= settings.max_batch {
            if batch > 0 {
                match commit(&shared, &consumer) {
                    Ok(()) => {
                        status.commits.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if let Err(e) = handle_txn_error(e, &shared, &consumer, &mut engine, &mut restore_until) {
                            result = Err(e);
                            break;
                        }
                    }
                }
            }
            batch = 0;
            deadline = Instant::now() + settings.commit_interval;
        }
        if now_i >= next_tick {
            next_tick = now_i + Duration::from_millis(100);
            read_control(&control, &mut engine, &settings, false, &mut None);
            if !restore_until.is_empty() {
                // A partition is restored once its position reached the committed offset.
                if let Ok(pos) = consumer.position() {
                    for e in pos.elements() {
                        let Some(t) = shared.inputs.iter().position(|x| x == e.topic()) else { continue };
                        if let (Offset::Offset(p), Some(&until)) = (e.offset(), restore_until.get(&(t, e.partition())))
                        {
                            if p >= until {
                                restore_until.remove(&(t, e.partition()));
                            }
                        }
                    }
                }
            }
            tick(&mut engine, &metrics, &status, &mut tally, restore_until.is_empty());
        }
        if now_i >= next_lag {
            next_lag = now_i + Duration::from_secs(5);
            report_lag(&consumer, &metrics, shared.timeout.min(Duration::from_secs(2)));
        }
    }

    // Drain: finish the open transaction, then leave the group.
    let drain = shutdown.load(Ordering::SeqCst);
    if result.is_ok() {
        if let Err(e) = commit(&shared, &consumer) {
            warn!(error = ?e, "Final commit failed; aborting the open transaction.");
            let _ = abort(&shared);
        }
    } else {
        let _ = abort(&shared);
    }
    tick(&mut engine, &metrics, &status, &mut tally, false);
    shared.leaving.store(true, Ordering::SeqCst);
    consumer.unsubscribe();
    // Serve the revoke callback so the member leaves the group cleanly.
    let leave_by = Instant::now() + Duration::from_secs(2);
    while Instant::now() < leave_by && consumer.assignment().map(|a| a.count()).unwrap_or(0) > 0 {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    if drain {
        info!("Pipeline drained.");
    }
    result
}

/// Partitions of the input topics, for this instance's share of the fleet's caps.
fn input_partitions(consumer: &BaseConsumer<Ctx>, s: &Settings) -> Result<usize, PipelineError> {
    let mut total = 0;
    for t in &s.topics.input {
        let md = consumer
            .fetch_metadata(Some(t), Duration::from_secs(10))
            .map_err(|e| PipelineError::Startup(format!("cannot read metadata of {t}: {e}")))?;
        let n = md.topics().iter().find(|x| x.name() == t).map_or(0, |x| x.partitions().len());
        if n == 0 {
            return Err(PipelineError::Startup(format!("input topic {t} does not exist")));
        }
        total += n;
    }
    Ok(total)
}

/// A reader of the whole control topic (no group: every instance reads everything).
fn control_reader(s: &Settings) -> Result<BaseConsumer, PipelineError> {
    let mut cfg = rdkafka::ClientConfig::new();
    for (k, v) in &s.kafka {
        cfg.set(k, v);
    }
    cfg.set("group.id", format!("{}-control-reader", s.group_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false");
    let c: BaseConsumer =
        cfg.create().map_err(|e| PipelineError::Startup(format!("cannot create the control reader: {e}")))?;
    let md = c
        .fetch_metadata(Some(&s.topics.control), Duration::from_secs(10))
        .map_err(|e| PipelineError::Startup(format!("cannot read metadata of {}: {e}", s.topics.control)))?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            let _ = tpl.add_partition_offset(t.name(), p.id(), Offset::Beginning);
        }
    }
    c.assign(&tpl).map_err(|e| PipelineError::Startup(format!("cannot assign the control topic: {e}")))?;
    Ok(c)
}

/// Applies control records. At startup (`to_end`) reads up to the end of the topic; afterwards
/// takes what arrived. Records of this instance were applied when they were made.
fn read_control(
    c: &BaseConsumer,
    engine: &mut Engine,
    s: &Settings,
    to_end: bool,
    last_policy: &mut Option<String>,
) -> usize {
    use super::control::{parse, Control};
    let mut ends: HashMap<i32, i64> = HashMap::new();
    if to_end {
        if let Ok(a) = c.assignment() {
            for e in a.elements() {
                if let Ok((_, high)) = c.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10)) {
                    ends.insert(e.partition(), high);
                }
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut applied = 0;
    loop {
        let reached = ends.is_empty()
            || c.position().is_ok_and(|pos| {
                pos.elements().iter().all(|e| match (e.offset(), ends.get(&e.partition())) {
                    (Offset::Offset(o), Some(&h)) => o >= h,
                    (_, Some(&h)) => h == 0,
                    _ => true,
                })
            });
        if to_end && reached {
            break;
        }
        let timeout = if to_end { Duration::from_millis(100) } else { Duration::ZERO };
        let Some(msg) = c.poll(timeout) else {
            if !to_end || Instant::now() > deadline {
                break;
            }
            continue;
        };
        let Ok(m) = msg else { continue };
        let now = wall_ms();
        match parse(m.key().unwrap_or(&[]), m.payload()) {
            Some(Control::Override(o)) if to_end || o.instance != s.transactional_id => {
                let b = engine.breaker_mut();
                let r = if o.until_ms <= o.at_ms {
                    b.clear_override(&o.cell, &o.actor, &o.reason, now).map(|_| ())
                } else {
                    b.apply_override(&o.cell, o.open, o.until_ms, &o.actor, &o.reason, now)
                };
                if let Err(e) = r {
                    warn!(cell = %o.cell, error = %e, "Control record not applied.");
                }
                applied += 1;
            }
            Some(Control::Allow(a)) if to_end || a.instance != s.transactional_id => {
                match a.expires_ms {
                    Some(until) => engine.allow_account(&a.account_id, until),
                    None => {
                        engine.disallow_account(&a.account_id);
                    }
                }
                applied += 1;
            }
            Some(Control::PolicyVersion(v)) => *last_policy = Some(v.version),
            Some(_) => {}
            None => warn!(offset = m.offset(), "Malformed control record skipped."),
        }
    }
    applied
}

/// Records the running policy version in the control topic (its own small transaction).
fn record_policy_version(s: &Shared, settings: &Settings) -> Result<(), PipelineError> {
    use super::control::{PolicyVersionRecord, POLICY_VERSION_KEY};
    let rec = PolicyVersionRecord {
        version: settings.policy.version.clone(),
        at_ms: wall_ms(),
        instance: settings.transactional_id.clone(),
    };
    let payload = serde_json::to_vec(&rec).unwrap_or_default();
    let fatal = |e: KafkaError| PipelineError::Startup(format!("cannot record the policy version: {e}"));
    s.producer.begin_transaction().map_err(fatal)?;
    s.producer
        .send(BaseRecord::to(&settings.topics.control).key(POLICY_VERSION_KEY).payload(&payload[..]))
        .map_err(|(e, _)| fatal(e))?;
    s.producer.commit_transaction(s.timeout).map_err(fatal)
}

/// Applies one admin command, writes its control and audit records and commits them.
fn admin_command(
    cmd: AdminCommand,
    s: &Shared,
    consumer: &BaseConsumer<Ctx>,
    engine: &mut Engine,
    settings: &Settings,
) -> Result<(), PipelineError> {
    use super::control::{allow_key, override_key, AllowRecord, AuditRecord, OverrideRecord};
    let now = wall_ms();
    let instance = settings.transactional_id.clone();
    // Each command yields: its answer, its control record, and what the audit record says.
    let (result, control, actor, reason, action, scope, reply) = match cmd {
        AdminCommand::Breaker { cell, action, actor, reason, reply } => {
            let b = engine.breaker_mut();
            let (r, open, until, verb) = match action {
                BreakerAction::Open { ttl } => (
                    b.force(&cell, true, ttl, &actor, &reason, now).map(Some),
                    true,
                    now + ttl.as_millis() as i64,
                    "open",
                ),
                BreakerAction::Close { ttl } => (
                    b.force(&cell, false, ttl, &actor, &reason, now).map(Some),
                    false,
                    now + ttl.as_millis() as i64,
                    "close",
                ),
                BreakerAction::Clear => (b.clear_override(&cell, &actor, &reason, now), false, now, "clear"),
            };
            let rec = OverrideRecord {
                cell: cell.clone(),
                open,
                until_ms: until,
                at_ms: now,
                actor: actor.clone(),
                reason: reason.clone(),
                instance: instance.clone(),
            };
            (
                r.map(|t| serde_json::to_value(t).unwrap_or_default()),
                (override_key(&cell), serde_json::to_vec(&rec).unwrap_or_default()),
                actor,
                reason,
                format!("breaker_{verb}"),
                serde_json::json!({ "cell": cell, "until_ms": until }),
                reply,
            )
        }
        AdminCommand::Allow { account_id, expires_ms, actor, reason, reply } => {
            match expires_ms {
                Some(until) => engine.allow_account(&account_id, until),
                None => {
                    engine.disallow_account(&account_id);
                }
            }
            let rec = AllowRecord {
                account_id: account_id.clone(),
                expires_ms,
                at_ms: now,
                actor: actor.clone(),
                reason: reason.clone(),
                instance: instance.clone(),
            };
            (
                Ok(serde_json::json!({ "applied": true })),
                (allow_key(&account_id), serde_json::to_vec(&rec).unwrap_or_default()),
                actor,
                reason,
                if expires_ms.is_some() { "allow_list_add".to_string() } else { "allow_list_remove".to_string() },
                serde_json::json!({ "account_id": account_id, "expires_ms": expires_ms }),
                reply,
            )
        }
    };
    let audit = AuditRecord { at: crate::core::event::format_rfc3339_ms(now), actor, reason, action, scope, instance };
    if let Err(e) = result {
        let _ = reply.send(Err(e));
        return Ok(());
    }
    begin_if_needed(s)?;
    let audit_bytes = serde_json::to_vec(&audit).unwrap_or_default();
    let sends = [
        (settings.topics.control.as_str(), control.0.as_bytes().to_vec(), control.1),
        (settings.topics.audit.as_str(), audit.actor.as_bytes().to_vec(), audit_bytes),
    ];
    for (topic, key, payload) in &sends {
        if let Err((e, _)) = s.producer.send(BaseRecord::to(topic).key(&key[..]).payload(&payload[..])) {
            let _ = reply.send(Err(format!("could not record the action: {e}")));
            return abort(s).map_err(PipelineError::Fatal);
        }
    }
    match commit(s, consumer) {
        Ok(()) => {
            info!(action = %audit.action, "Manual action applied and recorded.");
            let _ = reply.send(result);
            Ok(())
        }
        Err(TxnError::Abortable(m)) => {
            let _ = reply.send(Err(format!("could not record the action: {m}")));
            abort(s).map_err(PipelineError::Fatal)
        }
        Err(TxnError::Fatal(m)) => {
            let _ = reply.send(Err(m.clone()));
            Err(PipelineError::Fatal(m))
        }
    }
}

fn begin_if_needed(s: &Shared) -> Result<(), PipelineError> {
    let mut txn = s.txn.lock().unwrap_or_else(|p| p.into_inner());
    if !txn.open {
        s.producer.begin_transaction().map_err(|e| PipelineError::Fatal(format!("begin_transaction: {e}")))?;
        txn.open = true;
    }
    Ok(())
}

/// Abortable: abort, drop state, and restore every assigned partition up to its committed
/// offset, then go on. Fatal: stop.
fn handle_txn_error(
    e: TxnError,
    s: &Shared,
    consumer: &BaseConsumer<Ctx>,
    engine: &mut Engine,
    restore_until: &mut HashMap<(usize, i32), i64>,
) -> Result<(), PipelineError> {
    match e {
        TxnError::Fatal(m) => {
            error!(error = %m, "Fatal transaction error.");
            Err(PipelineError::Fatal(m))
        }
        TxnError::Abortable(m) => {
            warn!(error = %m, "Transaction aborted; rewinding to the committed offsets.");
            abort(s).map_err(PipelineError::Fatal)?;
            engine.reset_state();
            let assignment = consumer.assignment().map_err(|e| PipelineError::Fatal(e.to_string()))?;
            restore_until.clear();
            for p in plan_restore(consumer, &assignment, s) {
                consumer
                    .seek(&s.inputs[p.topic], p.partition, Offset::Offset(p.start), s.timeout)
                    .map_err(|e| PipelineError::Fatal(format!("seek after abort failed: {e}")))?;
                if p.start < p.until {
                    restore_until.insert((p.topic, p.partition), p.until);
                }
            }
            Ok(())
        }
    }
}

fn count_status(status: &Status, outcome: &Outcome, metrics: &Metrics, now: i64) {
    status.consumed.fetch_add(1, Ordering::Relaxed);
    match outcome {
        Outcome::Notice(d) => {
            status.notices.fetch_add(1, Ordering::Relaxed);
            metrics.event_to_decision.observe((now - d.event_ms).max(0) as f64 / 1000.0);
        }
        Outcome::Held(d, h) => {
            status.held.fetch_add(1, Ordering::Relaxed);
            metrics.notices_held.with_label_values(&[h.cell.as_str(), h.reason.as_str()]).inc();
            metrics.event_to_decision.observe((now - d.event_ms).max(0) as f64 / 1000.0);
        }
        Outcome::NoAction(_) => {
            status.no_action.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            status.dlq.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Timer work every 100 ms: engine expiry, breaker transitions (logged once each), gauges.
fn tick(engine: &mut Engine, m: &Metrics, status: &Status, tally: &mut Tally, restored: bool) {
    let now = wall_ms();
    engine.tick(now);
    for t in engine.drain_transitions() {
        warn!(cell = %t.cell, from = t.from.as_str(), to = t.to.as_str(), cause = t.cause.as_str(),
            decisions_this_minute = t.decisions_this_minute, threshold = t.threshold, "Breaker cell changed state.");
        if matches!(t.to, CellState::Open | CellState::ForcedOpen) {
            m.breaker_trips.with_label_values(&[&t.cell, t.cause.as_str()]).inc();
        }
    }
    for ((kind, reason), n) in tally.outcomes.drain() {
        m.outcomes.with_label_values(&[kind, reason]).inc_by(n);
        match kind {
            "rejected" => m.events_rejected.with_label_values(&[reason]).inc_by(n),
            "late" => m.events_late.inc_by(n),
            "duplicate" => m.events_duplicate.inc_by(n),
            "notice" if engine.policy().mode == crate::core::policy::Mode::Shadow => m.notices_would_send.inc_by(n),
            "notice" => m.notices_sent.inc_by(n),
            "held" => {}
            _ => {}
        }
        if matches!(kind, "rejected" | "late" | "duplicate") {
            let label = if kind == "rejected" { reason } else { kind };
            m.dlq_records.with_label_values(&[label]).inc_by(n);
        }
    }
    if tally.consumed_invalid > 0 {
        m.events_consumed.with_label_values(&["_invalid"]).inc_by(tally.consumed_invalid);
        tally.consumed_invalid = 0;
    }
    for (cell, n) in tally.consumed_by_cell.iter_mut().enumerate() {
        if *n > 0 {
            m.events_consumed.with_label_values(&[engine.breaker().cell_name(cell as u8)]).inc_by(*n);
            *n = 0;
        }
    }
    let snap = engine.breaker().snapshot();
    for c in &snap {
        for st in CellState::ALL {
            m.breaker_state.with_label_values(&[&c.cell, st.as_str()]).set(i64::from(c.state == st));
        }
        m.cell_decision_rate.with_label_values(&[&c.cell]).set(f64::from(c.decisions_this_minute));
        m.cell_baseline.with_label_values(&[&c.cell]).set(c.baseline_per_minute);
    }
    m.budget_remaining.set(i64::from(engine.breaker().global_remaining()));
    m.cap_factor.set(engine.breaker().share() * engine.breaker().ramp_factor());
    m.tracked_accounts.set(engine.tracked_accounts() as i64);
    if now % 5_000 < 100 {
        m.state_bytes.set(engine.state_bytes() as i64);
    }
    if let Some(wm) = engine.min_watermark() {
        m.watermark_lag_seconds.set((now - wm).max(0) as f64 / 1000.0);
    }
    let ready = restored && status.assigned_partitions.load(Ordering::SeqCst) > 0;
    status.ready.store(ready, Ordering::SeqCst);
    m.ready.set(i64::from(ready));
    *status.breaker.lock().unwrap_or_else(|p| p.into_inner()) = snap;
}

fn report_lag(consumer: &BaseConsumer<Ctx>, m: &Metrics, timeout: Duration) {
    let Ok(pos) = consumer.position() else { return };
    for e in pos.elements() {
        if let (Offset::Offset(p), Ok((_, high))) =
            (e.offset(), consumer.fetch_watermarks(e.topic(), e.partition(), timeout))
        {
            m.consumer_lag.with_label_values(&[e.topic(), &e.partition().to_string()]).set((high - p).max(0));
        }
    }
}
