//! Working through held notices after an incident: list them, release them to the mailer (paced,
//! exactly once) or discard them. Does IO (Kafka); what is selected and the life of a held notice
//! are pure ([`select`], [`pace`]).
//!
//! State lives in Kafka only:
//!
//! - `topics.held`: the held records the pipeline wrote (read to its end, read_committed);
//! - `topics.control` (compacted): `held/<notice_id>` → `{"action":"released"|"discarded",
//!   "actor","reason","at","instance"}`, one per notice acted upon; the first action on a notice
//!   wins, and no action is ever written for a notice that is not pending, so compaction keeps
//!   that first one;
//! - `topics.audit`: one record per transaction, `{"at","actor","reason","action","scope",
//!   "instance","notice_ids"}` (also readable as `kafka::control::AuditRecord`);
//! - `topics.notices` (`topics.shadow` for shadow-mode decisions): where a release sends the notice,
//!   exactly as the pipeline would have (same JSON, same headers, plus `released_by`).
//!
//! Exactly once: every release and discard of the fleet runs under one fixed transactional id,
//! `<pipeline.group_id>-held-actions` (the group id is what the fleet shares; an instance's own
//! transactional id would let two instances release side by side). It first initialises transactions (which fences any
//! earlier release or discard still running under that id and aborts its open transaction), only
//! then reads the control topic and the notices topic, and writes each notice together with its
//! control record and the audit record in one transaction. A release interrupted at any point (a
//! flag, SIGKILL, a fence) and run again sends each remaining notice once: notices already sent
//! are committed together with their control record, and a notice found on the notices topic
//! without one is recorded as released without being sent again.
//!
//! Logs carry counts, never account ids.

pub mod pace;
pub mod select;
pub mod views;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tracing::{info, warn};

use crate::config::Settings;
use crate::core::event::format_rfc3339_ms;
use crate::core::outcome::NOTICE_SCHEMA;
use crate::kafka::client::{output_topics, producer_config, reader_config, Reader, ReaderContext};
use crate::kafka::txn::{TxnError, TxnWriter, NO_TAG};

pub use pace::Pacer;
pub use select::{
    check_actor_reason, control_key, notice_id_of_control_key, Applied, AuditRecord, ControlValue, HeldAction,
    HeldState, HeldView, Ledger, Scope, Selector,
};

/// Most notices per release transaction.
pub const RELEASE_BATCH: usize = 100;
/// Longest a release transaction stays open collecting notices.
pub const RELEASE_BATCH_AGE: Duration = Duration::from_secs(1);
/// Most notices per discard transaction (one audit record each; keeps it well under 1 MB).
pub const DISCARD_BATCH: usize = 5_000;
/// Timeout of single Kafka requests (metadata, init/commit/abort transactions).
const OP_TIMEOUT: Duration = Duration::from_secs(30);
/// Reading a topic fails when nothing arrives for this long before its end is reached.
const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of one release or discard transaction when Kafka aborts it.
const TXN_ATTEMPTS: usize = 3;

/// Why a listing, release or discard failed.
#[derive(Debug, thiserror::Error)]
pub enum HeldError {
    /// A bad request: selector, actor, reason or rate. Nothing was read or written.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Kafka could not be reached or refused; what was committed before stays committed.
    #[error("Kafka: {0}")]
    Kafka(String),
    /// Another release or discard started with the same transactional id and took over.
    #[error("stopped: another release or discard took over transactional id {0} (what was committed stays; run it again to continue)")]
    Fenced(String),
}

/// One pending held notice, as listed. No account id: the notice id identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldItem {
    pub notice_id: String,
    /// Breaker cell of the trigger's source.
    pub cell: String,
    /// The cell that held it.
    pub held_cell: String,
    pub held_reason: String,
    pub source: String,
    pub mode: String,
    pub policy_version: String,
    pub decided_at: String,
    pub held_at: String,
    /// Where the held record is on `topics.held`.
    pub partition: i32,
    pub offset: i64,
}

/// What `list` found: the pending notices matching the selector (oldest first) and how many
/// matching notices were already acted upon.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeldListing {
    pub items: Vec<HeldItem>,
    /// Distinct held notices matching the selector (pending + released + discarded).
    pub matched: usize,
    pub pending: usize,
    pub released: usize,
    pub discarded: usize,
    /// Records on the held topic that are not readable held records (skipped, never released).
    pub unreadable: usize,
}

/// What a release did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReleaseReport {
    /// Distinct held notices matching the selector.
    pub matched: usize,
    /// Notices this run sent to the notices topic (and recorded as released).
    pub sent: usize,
    /// Pending notices already on the notices topic: recorded as released, not sent again.
    pub already_sent: usize,
    /// Matching notices released earlier (no-op).
    pub already_released: usize,
    /// Matching notices discarded earlier (no-op: never sent).
    pub already_discarded: usize,
    /// Pending notices left because the release was interrupted.
    pub remaining: usize,
    pub interrupted: bool,
    pub transactions: usize,
    pub unreadable: usize,
}

impl ReleaseReport {
    /// Notices this run recorded as released (sent, or found already sent).
    pub fn released(&self) -> usize {
        self.sent + self.already_sent
    }
}

/// What a discard did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiscardReport {
    pub matched: usize,
    /// Notices this run recorded as discarded.
    pub discarded: usize,
    /// Matching notices released earlier (no-op: a sent notice cannot be discarded).
    pub already_released: usize,
    /// Matching notices discarded earlier (no-op).
    pub already_discarded: usize,
    pub transactions: usize,
    pub unreadable: usize,
}

/// Lists the pending held notices matching `selector` (the empty selector lists all), oldest
/// first, with counts of matching notices already released or discarded. Reads the control and
/// held topics to their end (read_committed); writes nothing.
pub fn list(settings: &Settings, selector: &Selector) -> Result<HeldListing, HeldError> {
    let listing = listing(settings, selector)?;
    info!(selector = %selector, pending = listing.pending, released = listing.released, discarded = listing.discarded,
        unreadable = listing.unreadable, "Held notices listed.");
    Ok(listing)
}

/// [`list`] without its log line, for views polled every few seconds (the incident console).
pub(crate) fn listing(settings: &Settings, selector: &Selector) -> Result<HeldListing, HeldError> {
    selector.check().map_err(HeldError::Invalid)?;
    let ledger = read_ledger(settings)?;
    let found = read_held(settings, selector, &ledger, false)?;
    let items: Vec<HeldItem> = found
        .pending
        .into_iter()
        .map(|p| HeldItem {
            notice_id: p.view.notice_id,
            cell: p.view.cell,
            held_cell: p.view.held_cell,
            held_reason: p.view.held_reason,
            source: p.view.source,
            mode: p.view.mode,
            policy_version: p.view.policy_version,
            decided_at: p.view.decided_at,
            held_at: p.view.held_at,
            partition: p.partition,
            offset: p.offset,
        })
        .collect();
    Ok(HeldListing {
        matched: found.matched,
        pending: items.len(),
        released: found.released,
        discarded: found.discarded,
        unreadable: found.unreadable,
        items,
    })
}

/// Pending held notices per cell that held them (fleet-wide: read from the held and control
/// topics, read_committed), for the `resetguard_held_pending` gauge. Writes and logs nothing.
pub fn pending_by_cell(settings: &Settings) -> Result<std::collections::BTreeMap<String, usize>, HeldError> {
    let ledger = read_ledger(settings)?;
    let found = read_held(settings, &Selector::everything(), &ledger, false)?;
    let mut by_cell = std::collections::BTreeMap::new();
    for p in found.pending {
        *by_cell.entry(p.view.held_cell).or_default() += 1;
    }
    Ok(by_cell)
}

/// Releases the pending held notices matching `selector` to the mailer, exactly once, at most
/// `rate_per_minute` per minute (see [`Pacer`]), oldest first. Each transaction (at most
/// [`RELEASE_BATCH`] notices or [`RELEASE_BATCH_AGE`]) holds the notices, their `held/<notice_id>`
/// control records and one audit record. Stops early, after committing what it has, when
/// `shutdown` is set (`interrupted` in the report). Blocking: call it from a plain thread (or
/// `spawn_blocking`), not from an async task.
pub fn release(
    settings: &Settings,
    selector: &Selector,
    actor: &str,
    reason: &str,
    rate_per_minute: u32,
    shutdown: &AtomicBool,
) -> Result<ReleaseReport, HeldError> {
    selector.check_for_action().map_err(HeldError::Invalid)?;
    check_actor_reason(actor, reason).map_err(HeldError::Invalid)?;
    crate::core::rules::check_release_rate(rate_per_minute).map_err(HeldError::Invalid)?;
    let mut txn = Txn::init(settings)?;
    // Fenced first, then read: nothing committed under this id can change what is read next.
    let ledger = read_ledger(settings)?;
    let found = read_held(settings, selector, &ledger, true)?;
    let mut report = ReleaseReport {
        matched: found.matched,
        already_released: found.released,
        already_discarded: found.discarded,
        unreadable: found.unreadable,
        remaining: found.pending.len(),
        ..ReleaseReport::default()
    };
    let target = |p: &Pending| {
        if p.view.mode == "shadow" {
            settings.topics.shadow.as_str()
        } else {
            settings.topics.notices.as_str()
        }
    };
    let mut wanted: HashMap<&str, HashSet<&str>> = HashMap::new();
    for p in &found.pending {
        wanted.entry(target(p)).or_default().insert(p.view.notice_id.as_str());
    }
    let mut on_topic: HashSet<String> = HashSet::new();
    for (topic, ids) in &wanted {
        scan(settings, topic, |m| {
            if let Some(id) = notice_id_of(m) {
                if ids.contains(id.as_str()) {
                    on_topic.insert(id);
                }
            }
        })?;
    }
    info!(selector = %selector, pending = found.pending.len(), already_sent = on_topic.len(),
        already_released = report.already_released, already_discarded = report.already_discarded,
        rate_per_minute, "Releasing held notices.");

    let scope = selector.scope();
    let mut pacer = Pacer::new(rate_per_minute);
    let start = Instant::now();
    let mut batch = Batch::default();
    let mut last_log = Instant::now();
    for p in &found.pending {
        if shutdown.load(Ordering::SeqCst) {
            report.interrupted = true;
            break;
        }
        let id = p.view.notice_id.as_str();
        let already = on_topic.contains(id);
        if !already {
            let wait = pacer.reserve(start.elapsed());
            if !batch.is_empty() && Instant::now() + wait >= batch.deadline {
                // Don't keep a transaction open while waiting.
                txn.commit_batch(&mut batch, audit(settings, actor, reason, "release", &scope))?;
                report.transactions += 1;
            }
            if !sleep_unless(wait, shutdown) {
                report.interrupted = true;
                break;
            }
        }
        let at = format_rfc3339_ms(wall_ms());
        let control = ControlValue {
            action: HeldAction::Released,
            actor: actor.to_string(),
            reason: reason.to_string(),
            at,
            instance: txn.id.clone(),
            already_sent: already,
        };
        if !already {
            let notice = p.notice.as_deref().unwrap_or_default();
            let headers = vec![
                ("notice_id", id.to_string()),
                ("schema", NOTICE_SCHEMA.to_string()),
                ("policy_version", p.view.policy_version.clone()),
                ("mode", p.view.mode.clone()),
                ("released_by", actor.to_string()),
            ];
            txn.add(
                &mut batch,
                Out {
                    topic: target(p).to_string(),
                    key: p.view.account_id.as_bytes().to_vec(),
                    payload: notice.to_vec(),
                    headers,
                },
            )?;
            report.sent += 1;
        } else {
            batch.already_sent.push(id.to_string());
            report.already_sent += 1;
        }
        txn.add(&mut batch, control_out(settings, id, &control))?;
        batch.notice_ids.push(id.to_string());
        report.remaining -= 1;
        if batch.notice_ids.len() >= RELEASE_BATCH || Instant::now() >= batch.deadline {
            txn.commit_batch(&mut batch, audit(settings, actor, reason, "release", &scope))?;
            report.transactions += 1;
        }
        if last_log.elapsed() >= Duration::from_secs(10) {
            last_log = Instant::now();
            info!(
                sent = report.sent,
                already_sent = report.already_sent,
                remaining = report.remaining,
                "Release in progress."
            );
        }
    }
    if !batch.is_empty() {
        txn.commit_batch(&mut batch, audit(settings, actor, reason, "release", &scope))?;
        report.transactions += 1;
    }
    report.interrupted |= report.remaining > 0;
    info!(
        sent = report.sent,
        already_sent = report.already_sent,
        remaining = report.remaining,
        interrupted = report.interrupted,
        transactions = report.transactions,
        "Release finished."
    );
    Ok(report)
}

/// Discards the pending held notices matching `selector`: they will never be sent. Writes a
/// `held/<notice_id>` control record `{"action":"discarded",...}` per notice and one audit record
/// per transaction (one transaction per [`DISCARD_BATCH`] notices), under the same transactional
/// id as releases (so a discard and a release never act on a notice at the same time).
pub fn discard(
    settings: &Settings,
    selector: &Selector,
    actor: &str,
    reason: &str,
) -> Result<DiscardReport, HeldError> {
    selector.check_for_action().map_err(HeldError::Invalid)?;
    check_actor_reason(actor, reason).map_err(HeldError::Invalid)?;
    let mut txn = Txn::init(settings)?;
    let ledger = read_ledger(settings)?;
    let found = read_held(settings, selector, &ledger, false)?;
    let mut report = DiscardReport {
        matched: found.matched,
        already_released: found.released,
        already_discarded: found.discarded,
        unreadable: found.unreadable,
        ..DiscardReport::default()
    };
    let scope = selector.scope();
    let mut batch = Batch::default();
    for p in &found.pending {
        let id = p.view.notice_id.as_str();
        let control = ControlValue {
            action: HeldAction::Discarded,
            actor: actor.to_string(),
            reason: reason.to_string(),
            at: format_rfc3339_ms(wall_ms()),
            instance: txn.id.clone(),
            already_sent: false,
        };
        txn.add(&mut batch, control_out(settings, id, &control))?;
        batch.notice_ids.push(id.to_string());
        if batch.notice_ids.len() >= DISCARD_BATCH {
            report.discarded += batch.notice_ids.len();
            txn.commit_batch(&mut batch, audit(settings, actor, reason, "discard", &scope))?;
            report.transactions += 1;
        }
    }
    if !batch.is_empty() {
        report.discarded += batch.notice_ids.len();
        txn.commit_batch(&mut batch, audit(settings, actor, reason, "discard", &scope))?;
        report.transactions += 1;
    }
    info!(selector = %selector, discarded = report.discarded, already_released = report.already_released,
        already_discarded = report.already_discarded, "Held notices discarded.");
    Ok(report)
}

// ---- reading ---------------------------------------------------------------------------------

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Sleeps `d` in slices, returning false as soon as `shutdown` is set.
fn sleep_unless(d: Duration, shutdown: &AtomicBool) -> bool {
    let until = Instant::now() + d;
    loop {
        if shutdown.load(Ordering::SeqCst) {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

fn kafka_err(what: &str, e: impl std::fmt::Display) -> HeldError {
    HeldError::Kafka(format!("{what}: {e}"))
}

/// A consumer that reads topics by assignment (never joins its group, never commits).
fn reader(settings: &Settings) -> Result<Reader, HeldError> {
    let c = reader_config(settings, "held");
    c.create_with_context(ReaderContext).map_err(|e| kafka_err("cannot create a Kafka consumer", e))
}

/// Reads every partition of `topic` from the beginning to its end as of now (the last stable
/// offset: read_committed), calling `f` for each record.
fn scan(settings: &Settings, topic: &str, f: impl FnMut(&BorrowedMessage<'_>)) -> Result<u64, HeldError> {
    read_to_end(settings, topic, None, f)
}

/// Reads the last (at most) `per_partition` records of every partition of `topic` up to its end
/// as of now (read_committed), calling `f` for each record.
pub(crate) fn tail(
    settings: &Settings,
    topic: &str,
    per_partition: i64,
    f: impl FnMut(&BorrowedMessage<'_>),
) -> Result<u64, HeldError> {
    read_to_end(settings, topic, Some(per_partition.max(1)), f)
}

/// Reads every partition of `topic` to its end, from the beginning or (`last`) from that many
/// offsets before the high watermark.
fn read_to_end(
    settings: &Settings,
    topic: &str,
    last: Option<i64>,
    mut f: impl FnMut(&BorrowedMessage<'_>),
) -> Result<u64, HeldError> {
    let consumer = reader(settings)?;
    let md =
        consumer.fetch_metadata(Some(topic), OP_TIMEOUT).map_err(|e| kafka_err(&format!("metadata of {topic}"), e))?;
    let partitions: Vec<i32> = match md.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => t.partitions().iter().map(|p| p.id()).collect(),
        _ => return Err(HeldError::Kafka(format!("topic {topic} does not exist"))),
    };
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let start = match last {
            None => Offset::Beginning,
            Some(n) => {
                let (low, high) = consumer
                    .fetch_watermarks(topic, p, OP_TIMEOUT)
                    .map_err(|e| kafka_err(&format!("watermarks of {topic}"), e))?;
                Offset::Offset(low.max(high - n))
            }
        };
        tpl.add_partition_offset(topic, p, start).map_err(|e| kafka_err("assignment", e))?;
    }
    consumer.assign(&tpl).map_err(|e| kafka_err(&format!("assigning {topic}"), e))?;
    // A partition is done once its end was reached; later records are still handed over.
    let mut done: HashSet<i32> = HashSet::new();
    let mut n = 0u64;
    let mut last_progress = Instant::now();
    while done.len() < partitions.len() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                if m.topic() == topic {
                    n += 1;
                    f(&m);
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                last_progress = Instant::now();
                done.insert(p);
            }
            Some(Err(e)) => {
                warn!(topic, error = %e, "Error while reading a topic; retrying.");
            }
            None => {}
        }
        if last_progress.elapsed() > READ_IDLE_TIMEOUT {
            return Err(HeldError::Kafka(format!(
                "reading {topic} stalled: no record for {READ_IDLE_TIMEOUT:?} before the end of {} of {} partitions",
                partitions.len() - done.len(),
                partitions.len()
            )));
        }
    }
    Ok(n)
}

/// The state of every held notice acted upon, from the control topic (first action wins).
fn read_ledger(settings: &Settings) -> Result<Ledger, HeldError> {
    let mut ledger = Ledger::new();
    let mut unreadable = 0usize;
    scan(settings, &settings.topics.control, |m| {
        let Some(id) = m.key().and_then(notice_id_of_control_key) else { return };
        let Some(payload) = m.payload() else { return }; // a tombstone
        match serde_json::from_slice::<ControlValue>(payload) {
            Ok(v) => {
                ledger.apply(id, v.action);
            }
            Err(_) => unreadable += 1,
        }
    })?;
    if unreadable > 0 {
        warn!(unreadable, "Unreadable held-notice control records were ignored.");
    }
    Ok(ledger)
}

struct Pending {
    view: HeldView,
    /// The notice to send, when asked for.
    notice: Option<Vec<u8>>,
    partition: i32,
    offset: i64,
}

#[derive(Default)]
struct Found {
    pending: Vec<Pending>,
    matched: usize,
    released: usize,
    discarded: usize,
    unreadable: usize,
}

/// The held records matching `selector`, one per notice id (the first), split by state; the
/// pending ones oldest first.
fn read_held(settings: &Settings, selector: &Selector, ledger: &Ledger, with_notice: bool) -> Result<Found, HeldError> {
    let mut found = Found::default();
    let mut seen: HashSet<String> = HashSet::new();
    scan(settings, &settings.topics.held, |m| {
        let Some(payload) = m.payload() else {
            found.unreadable += 1;
            return;
        };
        let view = match select::parse_held(payload) {
            Ok(v) => v,
            Err(_) => {
                found.unreadable += 1;
                return;
            }
        };
        if !selector.matches(&view) || seen.contains(&view.notice_id) {
            return;
        }
        let notice = if with_notice {
            match select::notice_json_from_held(payload) {
                Ok(n) => Some(n),
                Err(_) => {
                    found.unreadable += 1;
                    return;
                }
            }
        } else {
            None
        };
        seen.insert(view.notice_id.clone());
        found.matched += 1;
        match ledger.state(&view.notice_id) {
            HeldState::Pending => {
                found.pending.push(Pending { view, notice, partition: m.partition(), offset: m.offset() })
            }
            HeldState::Released => found.released += 1,
            HeldState::Discarded => found.discarded += 1,
        }
    })?;
    found.pending.sort_by(|a, b| {
        let t = |p: &Pending| p.view.held_at_ms.or(p.view.decided_at_ms).unwrap_or(i64::MAX);
        t(a).cmp(&t(b)).then_with(|| a.view.notice_id.cmp(&b.view.notice_id))
    });
    if found.unreadable > 0 {
        warn!(unreadable = found.unreadable, "Unreadable records on the held topic were skipped.");
    }
    Ok(found)
}

/// The notice id of a record on the notices topic: its `notice_id` header, else its JSON.
fn notice_id_of(m: &BorrowedMessage<'_>) -> Option<String> {
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            if h.key == "notice_id" {
                return h.value.and_then(|v| std::str::from_utf8(v).ok()).map(str::to_string);
            }
        }
    }
    #[derive(serde::Deserialize)]
    struct Id {
        notice_id: String,
    }
    serde_json::from_slice::<Id>(m.payload()?).ok().map(|i| i.notice_id)
}

// ---- writing ---------------------------------------------------------------------------------

/// One record to produce, kept until its transaction commits (to resend after an abort).
struct Out {
    topic: String,
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

fn control_out(settings: &Settings, notice_id: &str, v: &ControlValue) -> Out {
    Out {
        topic: settings.topics.control.clone(),
        key: control_key(notice_id).into_bytes(),
        payload: serde_json::to_vec(v).unwrap_or_default(),
        headers: Vec::new(),
    }
}

/// The parts of an audit record known before the batch is complete.
struct AuditHead {
    topic: String,
    actor: String,
    reason: String,
    action: &'static str,
    scope: Scope,
}

fn audit(settings: &Settings, actor: &str, reason: &str, action: &'static str, scope: &Scope) -> AuditHead {
    AuditHead {
        topic: settings.topics.audit.clone(),
        actor: actor.into(),
        reason: reason.into(),
        action,
        scope: scope.clone(),
    }
}

/// The records of the open transaction.
struct Batch {
    records: Vec<Out>,
    notice_ids: Vec<String>,
    already_sent: Vec<String>,
    deadline: Instant,
    /// A record may be missing from the open transaction: abort and send all again.
    dirty: bool,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            records: Vec::new(),
            notice_ids: Vec::new(),
            already_sent: Vec::new(),
            deadline: Instant::now() + RELEASE_BATCH_AGE,
            dirty: false,
        }
    }
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// The transactional writer of held actions, under the fleet's fixed held-actions id.
struct Txn {
    writer: TxnWriter,
    id: String,
}

impl Txn {
    /// Creates the producer and initialises transactions under `<group_id>-held-actions`,
    /// fencing any earlier holder of that id anywhere in the fleet.
    fn init(settings: &Settings) -> Result<Txn, HeldError> {
        let mut s = settings.clone();
        s.transactional_id = format!("{}-held-actions", settings.group_id);
        let mut writer = TxnWriter::new(&producer_config(&s)).map_err(|e| {
            kafka_err(&format!("cannot initialise transactions (transactional.id {})", s.transactional_id), e)
        })?;
        writer
            .fence(&output_topics(&s), &mut || None, &mut || {})
            .map_err(|e| kafka_err("cannot fence the output partitions", e))?;
        Ok(Txn { writer, id: s.transactional_id })
    }

    /// A fatal error is a fence when another release or discard took the id over.
    fn fatal(&self, e: TxnError) -> HeldError {
        let fenced = |code: RDKafkaErrorCode| {
            matches!(
                code,
                RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch
            )
        };
        match self.writer.producer().client().fatal_error() {
            Some((code, _)) if fenced(code) => HeldError::Fenced(self.id.clone()),
            _ => kafka_err("transaction failed", e),
        }
    }

    fn send(&mut self, out: &Out) -> Result<(), TxnError> {
        let mut headers = OwnedHeaders::new_with_capacity(out.headers.len());
        for (k, v) in &out.headers {
            headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
        }
        let record =
            BaseRecord::with_opaque_to(&out.topic, NO_TAG).key(&out.key[..]).payload(&out.payload[..]).headers(headers);
        self.writer.send(record)?;
        self.writer.poll();
        Ok(())
    }

    /// Adds a record to the batch and sends it within the open transaction (opened if needed).
    /// A failure here is retried when the batch commits.
    fn add(&mut self, batch: &mut Batch, out: Out) -> Result<(), HeldError> {
        if batch.records.is_empty() {
            batch.deadline = Instant::now() + RELEASE_BATCH_AGE;
        }
        let sent = self.send(&out);
        batch.records.push(out);
        match sent {
            Ok(()) => Ok(()),
            Err(e @ TxnError::Fatal { .. }) => Err(self.fatal(e)),
            Err(_) => {
                batch.dirty = true;
                Ok(())
            }
        }
    }

    fn abort(&mut self) -> Result<(), HeldError> {
        self.writer.abort(&mut || {}).map_err(|e| self.fatal(e))
    }

    /// Adds the audit record and commits the batch's transaction. When Kafka aborts it, the
    /// whole batch is sent again in a new transaction (up to [`TXN_ATTEMPTS`] times).
    fn commit_batch(&mut self, batch: &mut Batch, head: AuditHead) -> Result<(), HeldError> {
        let record = AuditRecord {
            at: format_rfc3339_ms(wall_ms()),
            actor: head.actor,
            reason: head.reason,
            action: head.action.to_string(),
            scope: head.scope,
            instance: self.id.clone(),
            notice_ids: std::mem::take(&mut batch.notice_ids),
            already_sent: std::mem::take(&mut batch.already_sent),
        };
        let audit = Out {
            topic: head.topic,
            key: b"held".to_vec(),
            payload: serde_json::to_vec(&record).unwrap_or_default(),
            headers: vec![("action", head.action.to_string())],
        };
        let mut last = String::from("a record could not be sent");
        let mut resend = batch.dirty;
        for attempt in 0..TXN_ATTEMPTS {
            if resend {
                warn!(attempt, error = %last, "Held-action transaction aborted; sending its records again.");
                self.abort()?;
            }
            match self.try_commit(batch, &audit, resend) {
                Ok(()) => {
                    *batch = Batch::default();
                    return Ok(());
                }
                Err(e @ TxnError::Fatal { .. }) => return Err(self.fatal(e)),
                Err(e @ TxnError::Poison { .. }) => {
                    self.abort()?;
                    return Err(kafka_err("a record can never be written", e));
                }
                Err(e) => last = e.to_string(),
            }
            resend = true;
        }
        self.abort()?;
        Err(HeldError::Kafka(format!("transaction aborted {TXN_ATTEMPTS} times, last: {last}")))
    }

    fn try_commit(&mut self, batch: &Batch, audit: &Out, resend: bool) -> Result<(), TxnError> {
        if resend {
            for r in &batch.records {
                self.send(r)?;
            }
        }
        self.send(audit)?;
        self.writer.commit(None)
    }
}
