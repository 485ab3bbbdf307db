//! The one transactional writer of resetguard: begin, send (a full queue is polled and retried),
//! commit within a bounded budget, abort, and the error classes every caller acts on. The
//! pipeline, admin actions and held release all write through it. Does IO.
//!
//! Error classes ([`TxnError`]):
//! - **abort**: the open transaction cannot commit (a broker outage outlasted the budget, a
//!   delivery failed, the coordinator expired it). The caller aborts and redoes its work; for
//!   the pipeline that means rewinding to the committed offsets and restoring.
//! - **poison**: one record can never be produced (too large for the producer or the topic,
//!   rejected as invalid). Retrying the same bytes can only fail again; the caller must write
//!   something else for it or stop.
//! - **fatal**: the producer cannot go on (fenced by a newer instance with the same
//!   transactional id, or librdkafka reports a fatal error). The process exits non-zero.
//!
//! **Redo.** An abort whose only cause is that the consumer group refused the offsets (its
//! generation moved on: a rebalance started while the commit was on its way) leaves every
//! record delivered and the caller's state right. [`TxnWriter::redo`] aborts it and sends the
//! same records again in a new transaction (the writer keeps them in a [`Journal`] while the
//! transaction is open), for the caller to commit with its consumer's current group metadata.
//! Whether that is allowed is the caller's call: only while it still owns every partition the
//! offsets are for.
//!
//! A broker outage is never fatal by itself: calls that time out are retried until the
//! transaction's budget (`transaction.timeout.ms`) is spent, then the transaction is aborted.
//!
//! **Fencing after init.** `init_transactions` asks the coordinator to abort whatever an earlier
//! producer with the same transactional id left open, and the coordinator does that by writing
//! abort markers to the partitions of that transaction. Apache Kafka 4.4 skips the marker of a
//! partition whose leader it cannot find or that answers UNKNOWN_TOPIC_OR_PARTITION ("likely
//! deleted already") and still records the abort as complete; right after a broker restart
//! that happens to partitions that are not loaded yet (seen here: a broker SIGKILLed mid
//! transaction, its expired transaction completed while the notices partition had no marker).
//! The open records of that transaction then stay open on the partition and the next commit of
//! the same producer id commits them too: a notice sent twice. [`TxnWriter::fence`] closes any
//! such leftover: one empty record to every partition of every output topic, then an abort,
//! whose markers (written now, by a live coordinator) abort everything the producer id left
//! open there; from then on the partitions know the new epoch and refuse any older straggler.

use std::ops::Range;
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig};
use rdkafka::{ClientContext, TopicPartitionList};
use tracing::warn;

/// Delivery tag of a record: the caller's index of what the record came from ([`NO_TAG`]: none).
pub type Tag = usize;
pub const NO_TAG: Tag = usize::MAX;

/// Header (value `1`) and key of the records [`TxnWriter::fence`] writes: empty, always aborted,
/// so never seen by a `read_committed` reader.
pub const FENCE_MARK: &str = "resetguard-fence";

/// librdkafka's default `transaction.timeout.ms`, used when the config does not say.
const DEFAULT_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest single blocking call; a longer outage is ridden out by retrying.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between retries of a call that failed at once (not by timing out).
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Pause between looks at what is still in flight ([`TxnWriter::wait_in_flight`]): short
/// against a commit (~5-15 ms), long against the few microseconds a look costs.
const IN_FLIGHT_NAP: Duration = Duration::from_micros(200);

/// Errors of a transactional write, each with its disposition (see the module docs).
#[derive(Debug, Clone, thiserror::Error)]
pub enum TxnError {
    #[error("the transaction must be aborted ({what}): {source}")]
    Abort {
        what: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error("a record for topic {topic} can never be produced ({code})")]
    Poison { tag: Tag, topic: String, code: RDKafkaErrorCode },
    #[error("fatal Kafka producer error ({what}): {source}")]
    Fatal {
        what: &'static str,
        #[source]
        source: KafkaError,
    },
}

impl TxnError {
    /// The consumer group refused the offsets because its generation moved on (a rebalance):
    /// the transaction must be aborted, but it may be redone ([`TxnWriter::redo`]).
    pub fn refused_by_group(&self) -> bool {
        matches!(self, TxnError::Abort { source: KafkaError::Transaction(t), .. }
            if matches!(t.code(), RDKafkaErrorCode::IllegalGeneration | RDKafkaErrorCode::RebalanceInProgress))
    }
}

/// The records sent in the open transaction, in order, so that [`TxnWriter::redo`] can send
/// them again. All bytes live in one arena, so keeping a record costs no allocation once the
/// arena has grown to a transaction's size.
#[derive(Default)]
struct Journal {
    topics: Vec<String>,
    bytes: Vec<u8>,
    /// Header name and value of every record, each a span of `bytes`.
    headers: Vec<(Range<usize>, Option<Range<usize>>)>,
    records: Vec<Entry>,
}

struct Entry {
    topic: usize,
    partition: Option<i32>,
    timestamp: Option<i64>,
    key: Option<Range<usize>>,
    payload: Option<Range<usize>>,
    /// Span of `Journal::headers`; `None`: the record had no headers at all.
    headers: Option<Range<usize>>,
    tag: Tag,
}

/// An arena above this size is given back after its transaction ends.
const JOURNAL_KEEP_BYTES: usize = 64 << 20;

impl Journal {
    fn keep(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        start..self.bytes.len()
    }

    fn record(&mut self, r: &BaseRecord<'_, [u8], [u8], Tag>) {
        let topic = match self.topics.iter().position(|t| t == r.topic) {
            Some(i) => i,
            None => {
                self.topics.push(r.topic.to_string());
                self.topics.len() - 1
            }
        };
        let key = r.key.map(|k| self.keep(k));
        let payload = r.payload.map(|p| self.keep(p));
        let headers = r.headers.as_ref().map(|hs| {
            let start = self.headers.len();
            for h in hs.iter() {
                let name = self.keep(h.key.as_bytes());
                let value = h.value.map(|v| self.keep(v));
                self.headers.push((name, value));
            }
            start..self.headers.len()
        });
        self.records.push(Entry {
            topic,
            partition: r.partition,
            timestamp: r.timestamp,
            key,
            payload,
            headers,
            tag: r.delivery_opaque,
        });
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    /// The `i`-th record kept, as it was sent.
    fn get(&self, i: usize) -> BaseRecord<'_, [u8], [u8], Tag> {
        let e = &self.records[i];
        let bytes = |r: &Range<usize>| &self.bytes[r.clone()];
        let headers = e.headers.clone().map(|span| {
            let mut hs = OwnedHeaders::new_with_capacity(span.len());
            for (name, value) in &self.headers[span] {
                // Names were `&str` when kept.
                let key = std::str::from_utf8(bytes(name)).unwrap_or_default();
                hs = hs.insert(Header { key, value: value.as_ref().map(bytes) });
            }
            hs
        });
        BaseRecord {
            topic: &self.topics[e.topic],
            partition: e.partition,
            payload: e.payload.as_ref().map(bytes),
            key: e.key.as_ref().map(bytes),
            timestamp: e.timestamp,
            headers,
            delivery_opaque: e.tag,
        }
    }

    /// Forgets the last record kept (its bytes stay until `clear`).
    fn forget_last(&mut self) {
        self.records.pop();
    }

    fn clear(&mut self) {
        if self.bytes.capacity() > JOURNAL_KEEP_BYTES {
            *self = Journal::default();
        } else {
            self.bytes.clear();
            self.headers.clear();
            self.records.clear();
        }
    }
}

/// A delivery that failed, reported by librdkafka on a poll.
#[derive(Debug, Clone)]
struct Failed {
    tag: Tag,
    topic: String,
    code: RDKafkaErrorCode,
}

/// Producer context: remembers failed deliveries (which record, why) for the commit to judge.
#[derive(Default)]
pub struct WriterContext {
    failures: Mutex<Vec<Failed>>,
}

impl ClientContext for WriterContext {
    /// librdkafka's log lines, as by default, except one: a transaction whose offsets the group
    /// refused in a rebalance ("generation id is not valid") is logged by librdkafka as an
    /// ERROR, though the pipeline redoes it as a matter of course (its own WARN says so).
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if fac == "TXNERR" && log_message.contains("generation id is not valid") {
            warn!(target: "librdkafka", "librdkafka: {fac} {log_message}");
        } else {
            DefaultClientContext.log(level, fac, log_message);
        }
    }
}

impl ProducerContext for WriterContext {
    type DeliveryOpaque = Tag;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: Tag) {
        if let Err((e, m)) = result {
            let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
            // Records purged by an abort are not failures of their own.
            if matches!(code, RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight) {
                return;
            }
            let failed = Failed { tag, topic: m.topic().to_string(), code };
            self.failures.lock().unwrap_or_else(|p| p.into_inner()).push(failed);
        }
    }
}

/// The bytes of a record's key, value and headers (names and values), without framing.
fn content_bytes(r: &BaseRecord<'_, [u8], [u8], Tag>) -> usize {
    let headers = r
        .headers
        .as_ref()
        .map_or(0, |hs| hs.iter().map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len)).sum::<usize>());
    r.key.map_or(0, <[u8]>::len) + r.payload.map_or(0, <[u8]>::len) + headers
}

/// Whether a produce error code means this record can never be written, however often retried.
pub fn is_permanent(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
    )
}

enum Class {
    Retry,
    Abort,
    Fatal,
}

/// The producer itself, shared with the thread that commits in the background
/// ([`TxnWriter::commit_ahead`]), and what a commit needs of it.
#[derive(Clone)]
struct Link {
    producer: Arc<BaseProducer<WriterContext>>,
    /// Total time a commit may take before the transaction is given up (aborted).
    budget: Duration,
    /// The producer's `message.max.bytes`: librdkafka refuses a larger record when it is sent.
    max_message_bytes: usize,
}

impl Link {
    /// Commits the open transaction: its offsets (when given) first, then whatever is still in
    /// flight, then `commit_transaction`. Calls that time out are retried until `deadline`;
    /// after that the transaction must be aborted.
    fn commit_open(
        &self,
        deadline: Instant,
        offsets: Option<(&TopicPartitionList, &ConsumerGroupMetadata)>,
    ) -> Result<(), TxnError> {
        if let Some((tpl, cgm)) = offsets {
            self.retry(deadline, "send_offsets_to_transaction", |p| {
                p.send_offsets_to_transaction(tpl, cgm, CALL_TIMEOUT)
            })?;
        }
        // What is still in flight then, `commit_transaction` flushes.
        self.wait_in_flight(deadline);
        self.check_deliveries()?;
        let committed = self.finish_commit(deadline);
        // A commit refused because a delivery failed: say which record.
        self.check_deliveries()?;
        committed
    }

    fn classify(&self, e: &KafkaError) -> Class {
        if self.producer.client().fatal_error().is_some() {
            return Class::Fatal;
        }
        match e {
            KafkaError::Transaction(t) if t.is_fatal() => Class::Fatal,
            KafkaError::Transaction(t) if t.txn_requires_abort() => Class::Abort,
            KafkaError::Transaction(t) if t.is_retriable() => Class::Retry,
            // rust-rdkafka's commit flushes first and reports a flush that timed out this way:
            // the broker is slow or away, which is what retrying is for.
            KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut) => Class::Retry,
            // Anything else: aborting is always safe (the work is redone); a producer that is
            // really broken reports fatal on the abort.
            _ => Class::Abort,
        }
    }

    fn error(&self, what: &'static str, e: KafkaError) -> TxnError {
        match self.classify(&e) {
            Class::Fatal => TxnError::Fatal { what, source: e },
            _ => TxnError::Abort { what, source: e },
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, Vec<Failed>> {
        self.producer.context().failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands one record to librdkafka, waiting for room in a full queue first.
    fn produce(&self, record: BaseRecord<'_, [u8], [u8], Tag>) -> Result<(), TxnError> {
        let mut record = record;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::ZERO);
                    std::thread::sleep(IN_FLIGHT_NAP);
                }
                Err((KafkaError::MessageProduction(code), r)) if is_permanent(code) => {
                    return Err(TxnError::Poison { tag: r.delivery_opaque, topic: r.topic.to_string(), code });
                }
                Err((e, _)) => return Err(self.error("send", e)),
            }
        }
    }

    /// Waits until every record sent is delivered (or failed), within the transaction budget;
    /// `what` names the abort if some are still in flight then. A failed delivery is the error
    /// of [`TxnWriter::check_deliveries`].
    fn deliver_all(&self, what: &'static str) -> Result<(), TxnError> {
        self.wait_in_flight(Instant::now() + self.budget);
        if self.producer.in_flight_count() > 0 {
            return Err(TxnError::Abort { what, source: KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut) });
        }
        self.check_deliveries()
    }

    /// Serves delivery reports until nothing is in flight or `deadline` passes, sleeping
    /// [`IN_FLIGHT_NAP`] between looks. rust-rdkafka's own flush polls in 100 ms steps, which
    /// made every commit last 100 ms (benches/pipeline.rs: commit 104 -> 4 ms). A poll with a
    /// timeout is no way to wait either: it lasts its whole timeout and rounds what is left down
    /// to whole milliseconds, so a 1 ms poll spins for all of it, taking a core from the broker
    /// and librdkafka while they finish the very deliveries waited for. Only failed deliveries
    /// are reported (`delivery.report.only.error`), so there is no report to wait on.
    fn wait_in_flight(&self, deadline: Instant) {
        loop {
            self.producer.poll(Duration::ZERO);
            if self.producer.in_flight_count() == 0 || Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(IN_FLIGHT_NAP);
        }
    }

    /// A failed delivery in the open transaction: poison if it can never succeed, else abort.
    fn check_deliveries(&self) -> Result<(), TxnError> {
        let failures = self.failures();
        if let Some(f) = failures.iter().find(|f| is_permanent(f.code)) {
            return Err(TxnError::Poison { tag: f.tag, topic: f.topic.clone(), code: f.code });
        }
        if let Some(f) = failures.first() {
            return Err(TxnError::Abort {
                what: "an output record was not delivered",
                source: KafkaError::MessageProduction(f.code),
            });
        }
        Ok(())
    }

    /// `commit_transaction` until it ends. Once librdkafka has started the commit (it reported
    /// a retriable transaction error), the commit goes on in the background and may only be
    /// resumed, never aborted ("Conflicting commit_transaction API call is already in
    /// progress"): it is retried past the budget until Kafka says committed, abortable or fatal
    /// (the coordinator expires it after `transaction.timeout.ms`). Before that (rust-rdkafka's
    /// flush timed out) the budget applies.
    fn finish_commit(&self, deadline: Instant) -> Result<(), TxnError> {
        let mut started = false;
        loop {
            match self.producer.commit_transaction(CALL_TIMEOUT) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // librdkafka has started the commit unless it refused outright (abortable,
                    // fatal, no transaction) or rust-rdkafka's flush before it timed out.
                    let in_progress = matches!(&e, KafkaError::Transaction(t)
                        if !t.txn_requires_abort() && t.code() != RDKafkaErrorCode::State);
                    started |= in_progress;
                    match self.classify(&e) {
                        Class::Fatal => return Err(TxnError::Fatal { what: "commit_transaction", source: e }),
                        _ if started && in_progress => {}
                        Class::Retry if Instant::now() < deadline => {}
                        _ => return Err(TxnError::Abort { what: "commit_transaction", source: e }),
                    }
                    warn!(error = %e, "Committing the transaction is taking long; resuming it.");
                    std::thread::sleep(RETRY_PAUSE);
                }
            }
        }
    }

    fn retry(
        &self,
        deadline: Instant,
        what: &'static str,
        call: impl Fn(&BaseProducer<WriterContext>) -> Result<(), KafkaError>,
    ) -> Result<(), TxnError> {
        loop {
            let started = Instant::now();
            match call(&self.producer) {
                Ok(()) => return Ok(()),
                Err(e) => match self.classify(&e) {
                    Class::Retry if Instant::now() < deadline => {
                        warn!(call = what, error = %e, "Transactional call failed; retrying.");
                        if started.elapsed() < RETRY_PAUSE {
                            std::thread::sleep(RETRY_PAUSE);
                        }
                    }
                    Class::Fatal => return Err(TxnError::Fatal { what, source: e }),
                    _ => return Err(TxnError::Abort { what, source: e }),
                },
            }
        }
    }
}

/// A commit to run in the background: its deadline and the offsets to commit with it.
type CommitJob = (Instant, Option<(TopicPartitionList, ConsumerGroupMetadata)>);

/// The thread that runs [`TxnWriter::commit_ahead`]'s commits, one at a time, for as long as its
/// writer lives (named `rg-commit`, so its CPU time can be told apart).
struct Committer {
    jobs: Sender<CommitJob>,
    /// Each commit's result and the moment it ended.
    results: Receiver<(Result<(), TxnError>, Instant)>,
}

impl Committer {
    fn start(link: Link) -> Result<Committer, TxnError> {
        let (jobs, job_rx) = channel::<CommitJob>();
        let (result_tx, results) = channel();
        std::thread::Builder::new()
            .name("rg-commit".into())
            .spawn(move || {
                // Ends when the writer (the sender of jobs) goes.
                for (deadline, offsets) in job_rx {
                    let result = link.commit_open(deadline, offsets.as_ref().map(|(t, g)| (t, g)));
                    if result_tx.send((result, Instant::now())).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| TxnError::Fatal {
                what: "starting the committing thread",
                source: KafkaError::ClientCreation(e.to_string()),
            })?;
        Ok(Committer { jobs, results })
    }

    /// The committing thread is gone (it panicked): what became of its commit is unknown, so
    /// the producer is replaced, as after any fatal error.
    fn gone() -> TxnError {
        TxnError::Fatal { what: "the committing thread ended", source: KafkaError::Canceled }
    }
}

/// The transactional producer and the state of its open transaction.
///
/// **Committing ahead.** [`TxnWriter::commit_ahead`] commits the open transaction on a thread of
/// its own while the caller goes on deciding. What the caller sends meanwhile is kept in order
/// (`pending`) and handed to librdkafka in the next transaction, which begins once that commit
/// has ended: records of two transactions never mix, and a record sent after a commit started is
/// never part of it. Every call but [`TxnWriter::send`] and [`TxnWriter::begin`] first waits for
/// a commit under way to end. [`TxnWriter::finish`] hands its result over, exactly once; if it
/// failed, the transaction is still open in librdkafka and every call but `finish`, `redo` and
/// `abort` refuses with that error until it is aborted (which drops `pending` too) or redone.
pub struct TxnWriter {
    link: Link,
    /// A transaction is open in librdkafka (also while it commits in the background).
    open: bool,
    /// What the open transaction sent, for [`TxnWriter::redo`] (emptied when one begins).
    journal: Journal,
    /// The thread that commits in the background (started by the first `commit_ahead`).
    committer: Option<Committer>,
    /// A commit runs in the background: its result is still to come from `committer`.
    committing: bool,
    /// Its result and the moment it ended, until [`TxnWriter::finish`] hands it over.
    settled: Option<(Result<(), TxnError>, Instant)>,
    /// The background commit failed: the transaction must be aborted or redone first.
    failure: Option<TxnError>,
    /// Records sent while a commit ran in the background, in order: the next transaction's.
    pending: Journal,
    /// A transaction was asked for while a commit ran in the background.
    pending_open: bool,
    /// When the last commit handed over ([`TxnWriter::finish`]) or made ([`TxnWriter::commit`])
    /// ended, for its duration: the loop may take a background result in later, and a commit of
    /// its own may run meanwhile (an eager revoke commits what was kept).
    commit_ended_at: Option<Instant>,
}

impl TxnWriter {
    /// Creates the producer from `config` (which carries `transactional.id`) and initialises
    /// transactions, fencing any earlier producer with the same id. Retries a broker that is
    /// not reachable yet for up to the transaction budget.
    pub fn new(config: &ClientConfig) -> Result<TxnWriter, KafkaError> {
        let mut w = TxnWriter::create(config)?;
        let deadline = Instant::now() + w.link.budget.max(Duration::from_secs(30));
        w.init(&mut || Instant::now() < deadline)?;
        Ok(w)
    }

    /// Creates the producer without initialising transactions (see [`TxnWriter::init`]).
    pub fn create(config: &ClientConfig) -> Result<TxnWriter, KafkaError> {
        let budget = config
            .get("transaction.timeout.ms")
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(DEFAULT_TRANSACTION_TIMEOUT, Duration::from_millis);
        let producer: BaseProducer<WriterContext> = config.create_with_context(WriterContext::default())?;
        let max_message_bytes = super::client::producer_max_bytes(config.get("message.max.bytes"));
        let link = Link { producer: Arc::new(producer), budget, max_message_bytes };
        Ok(TxnWriter {
            link,
            open: false,
            journal: Journal::default(),
            committer: None,
            committing: false,
            settled: None,
            failure: None,
            pending: Journal::default(),
            pending_open: false,
            commit_ended_at: None,
        })
    }

    /// Initialises transactions, retrying while the broker is unreachable and `go_on` says so
    /// (it is called between attempts, and may keep the caller's consumer alive).
    pub fn init(&mut self, go_on: &mut dyn FnMut() -> bool) -> Result<(), KafkaError> {
        loop {
            match self.link.producer.init_transactions(CALL_TIMEOUT) {
                Ok(()) => return Ok(()),
                Err(KafkaError::Transaction(e)) if e.is_retriable() && go_on() => {
                    warn!(error = %e, "Initialising transactions failed; retrying.");
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn producer(&self) -> &BaseProducer<WriterContext> {
        &self.link.producer
    }

    /// A transaction is open, or asked for while the previous one commits in the background.
    pub fn is_open(&self) -> bool {
        self.open || self.pending_open
    }

    /// A commit runs in the background, or ended and its result was not handed over yet.
    pub fn is_committing(&self) -> bool {
        self.committing || self.settled.is_some()
    }

    /// A commit running in the background has ended (or none runs): [`TxnWriter::finish`]
    /// will not wait.
    pub fn commit_ended(&mut self) -> bool {
        if !self.committing {
            return true;
        }
        let (result, at) = match self.committer.as_ref().map(|c| c.results.try_recv()) {
            Some(Ok(ended)) => ended,
            Some(Err(TryRecvError::Empty)) => return false,
            Some(Err(TryRecvError::Disconnected)) | None => (Err(Committer::gone()), Instant::now()),
        };
        self.ended(result, at);
        true
    }

    /// Serves delivery reports without waiting (left to the committing thread while one runs).
    pub fn poll(&self) {
        if !self.committing {
            self.link.producer.poll(Duration::ZERO);
        }
    }

    /// Waits for the commit running in the background to end and keeps its result for
    /// [`TxnWriter::finish`].
    fn join(&mut self) {
        if !self.committing {
            return;
        }
        let (result, at) = match &self.committer {
            Some(c) => c.results.recv().unwrap_or_else(|_| (Err(Committer::gone()), Instant::now())),
            None => (Err(Committer::gone()), Instant::now()),
        };
        self.ended(result, at);
    }

    /// The background commit ended with `result` at `at`.
    fn ended(&mut self, result: Result<(), TxnError>, at: Instant) {
        self.committing = false;
        match &result {
            Ok(()) => self.open = false,
            Err(e) => self.failure = Some(e.clone()),
        }
        self.settled = Some((result, at));
    }

    /// Waits for a commit running in the background to end; its result stays for
    /// [`TxnWriter::finish`].
    pub fn wait_for_commit(&mut self) {
        self.join();
    }

    /// The result of the commit started by [`TxnWriter::commit_ahead`], waiting for it to end;
    /// `None` if there is none to hand over. Each result is handed over once.
    pub fn finish(&mut self) -> Option<Result<(), TxnError>> {
        self.join();
        let (result, at) = self.settled.take()?;
        self.commit_ended_at = Some(at);
        Some(result)
    }

    /// Ends a background commit first; refuses while a failed one is not aborted or redone.
    fn settle(&mut self) -> Result<(), TxnError> {
        self.join();
        match &self.failure {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Opens a transaction unless one is open. While a commit runs in the background, the
    /// transaction is only asked for: it begins when that commit has ended. The records sent
    /// meanwhile are handed to librdkafka then, first thing.
    pub fn begin(&mut self) -> Result<(), TxnError> {
        if self.committing {
            self.pending_open = true;
            return Ok(());
        }
        self.settle()?;
        if self.open {
            return Ok(());
        }
        self.link.failures().clear();
        self.journal.clear();
        self.link.producer.begin_transaction().map_err(|e| self.link.error("begin_transaction", e))?;
        self.open = true;
        if std::mem::take(&mut self.pending_open) {
            // `journal` is empty: the pending records become this transaction's journal.
            std::mem::swap(&mut self.journal, &mut self.pending);
            for i in 0..self.journal.len() {
                self.link.produce(self.journal.get(i))?;
            }
        }
        Ok(())
    }

    /// Sends one record in the open transaction (opened if needed). A full local queue is
    /// drained by polling and the send retried; a record that can never be produced is
    /// [`TxnError::Poison`] with its tag, and the transaction stays usable. While a commit runs
    /// in the background the record is kept for the next transaction (see the type's docs).
    pub fn send(&mut self, record: BaseRecord<'_, [u8], [u8], Tag>) -> Result<(), TxnError> {
        if self.committing {
            // librdkafka would refuse it only at the next `begin`, where the caller could not
            // write a smaller one in its place; refuse it now, as librdkafka does when it is
            // sent. What is counted here is less than librdkafka counts (no framing), so no
            // record librdkafka takes is refused; one within the framing of the limit is still
            // refused at `begin`, and the transaction is then redone.
            if content_bytes(&record) > self.link.max_message_bytes {
                return Err(TxnError::Poison {
                    tag: record.delivery_opaque,
                    topic: record.topic.to_string(),
                    code: RDKafkaErrorCode::MessageSizeTooLarge,
                });
            }
            self.pending_open = true;
            self.pending.record(&record);
            return Ok(());
        }
        self.begin()?;
        self.journal.record(&record);
        let sent = self.link.produce(record);
        if matches!(sent, Err(TxnError::Poison { .. })) {
            // Refused before it was queued: not part of the transaction, so `redo` must not
            // send it again (the caller writes a smaller one in its place, or stops).
            self.journal.forget_last();
        }
        sent
    }

    /// Commits the open transaction, with the consumed offsets when given, and waits for it.
    /// A commit under way in the background ends first, and a transaction asked for meanwhile
    /// begins (with its pending records) and is the one committed. Calls that time out are
    /// retried until the budget is spent; then the transaction must be aborted.
    pub fn commit(&mut self, offsets: Option<(&TopicPartitionList, &ConsumerGroupMetadata)>) -> Result<(), TxnError> {
        self.settle()?;
        if !self.open && self.pending_open {
            self.begin()?;
        }
        if !self.open {
            return Ok(());
        }
        let committed = self.link.commit_open(Instant::now() + self.link.budget, offsets);
        self.commit_ended_at = Some(Instant::now());
        committed?;
        self.open = false;
        Ok(())
    }

    /// When the commit whose result was handed over last, or the last one made by
    /// [`TxnWriter::commit`], ended.
    pub fn last_commit_ended(&self) -> Option<Instant> {
        self.commit_ended_at
    }

    /// A background commit failed, and the transaction was not aborted or redone since.
    pub fn has_failed(&self) -> bool {
        self.failure.is_some()
    }

    /// Starts committing the open transaction (as [`TxnWriter::commit`]) on a thread of its own
    /// and returns at once; [`TxnWriter::finish`] gives the result. A commit under way ends
    /// first, and a failed one is this call's error.
    pub fn commit_ahead(
        &mut self,
        offsets: Option<(TopicPartitionList, ConsumerGroupMetadata)>,
    ) -> Result<(), TxnError> {
        self.settle()?;
        if !self.open && self.pending_open {
            self.begin()?;
        }
        if !self.open {
            return Ok(());
        }
        if self.committer.is_none() {
            self.committer = Some(Committer::start(self.link.clone())?);
        }
        let deadline = Instant::now() + self.link.budget;
        let sent = self.committer.as_ref().is_some_and(|c| c.jobs.send((deadline, offsets)).is_ok());
        if !sent {
            return Err(Committer::gone());
        }
        self.committing = true;
        Ok(())
    }

    /// Sends the open transaction's records again in a new transaction, after the group refused
    /// its offsets ([`TxnError::refused_by_group`]); the caller then commits with its consumer's
    /// current group metadata. First every record of it must be delivered, so that none is in
    /// flight when it is aborted (nothing of it can land after the abort and join the new
    /// transaction); a delivery that failed or did not end within the budget makes this an
    /// ordinary abort (the error). The new transaction holds the same records in the same order,
    /// with the same delivery tags. Records sent after its commit started stay pending, for the
    /// transaction after it.
    pub fn redo(&mut self, keep_alive: &mut dyn FnMut()) -> Result<(), TxnError> {
        self.join();
        self.link.deliver_all("records of the transaction to redo not delivered in time")?;
        let journal = std::mem::take(&mut self.journal);
        let pending = std::mem::take(&mut self.pending);
        let pending_open = std::mem::take(&mut self.pending_open);
        self.abort(keep_alive)?;
        self.begin()?;
        self.journal = journal;
        self.pending = pending;
        self.pending_open = pending_open;
        for i in 0..self.journal.len() {
            self.link.produce(self.journal.get(i))?;
        }
        Ok(())
    }

    /// Closes whatever an earlier producer with this transactional id left open on `topics` (see
    /// the module docs): one empty record (key and header [`FENCE_MARK`]) to every partition,
    /// delivered, then aborted. With `offsets` (asked again on every attempt: the consumer may
    /// rejoin its group meanwhile) the consumer's offsets are added too, so a consumer-offset
    /// commit left pending in the group is closed as well; that part is given up after the
    /// transaction budget (a warning), the partitions never are. Call it right after
    /// `init_transactions`, before the first transaction. An outage is waited out (`keep_alive`
    /// between attempts); only a fatal error ends it. Returns the number of partitions fenced.
    pub fn fence(
        &mut self,
        topics: &[&str],
        offsets: &mut dyn FnMut() -> Option<(TopicPartitionList, ConsumerGroupMetadata)>,
        keep_alive: &mut dyn FnMut(),
    ) -> Result<usize, TxnError> {
        let offsets_until = Instant::now() + self.link.budget;
        loop {
            let with = if Instant::now() < offsets_until { offsets() } else { None };
            match self.try_fence(topics, with.as_ref().map(|(t, g)| (t, g))) {
                Ok(n) => {
                    self.abort(keep_alive)?;
                    return Ok(n);
                }
                Err(TxnError::Fatal { what, source }) => return Err(TxnError::Fatal { what, source }),
                Err(e) => {
                    warn!(error = %e, "Fencing the output partitions failed; retrying.");
                    self.abort(keep_alive)?;
                    keep_alive();
                    std::thread::sleep(RETRY_PAUSE);
                }
            }
        }
    }

    fn try_fence(
        &mut self,
        topics: &[&str],
        offsets: Option<(&TopicPartitionList, &ConsumerGroupMetadata)>,
    ) -> Result<usize, TxnError> {
        let mut partitions = Vec::new();
        for topic in topics {
            let metadata = self
                .link
                .producer
                .client()
                .fetch_metadata(Some(topic), CALL_TIMEOUT)
                .map_err(|source| TxnError::Abort { what: "fetch_metadata for the fence", source })?;
            for t in metadata.topics().iter().filter(|t| t.name() == *topic && t.error().is_none()) {
                partitions.extend(t.partitions().iter().map(|p| (*topic, p.id())));
            }
        }
        for &(topic, partition) in &partitions {
            let headers = OwnedHeaders::new().insert(Header { key: FENCE_MARK, value: Some("1") });
            let record = BaseRecord::with_opaque_to(topic, NO_TAG)
                .partition(partition)
                .key(FENCE_MARK.as_bytes())
                .payload(&[][..])
                .headers(headers);
            match self.send(record) {
                Ok(()) => {}
                Err(TxnError::Poison { code, .. }) => {
                    return Err(TxnError::Abort { what: "a fence record", source: KafkaError::MessageProduction(code) })
                }
                Err(e) => return Err(e),
            }
        }
        // Delivered, so every partition is part of the transaction before it is aborted.
        self.link.deliver_all("fence records not delivered in time")?;
        if let Some((tpl, cgm)) = offsets.filter(|(tpl, _)| tpl.count() > 0) {
            self.link
                .producer
                .send_offsets_to_transaction(tpl, cgm, CALL_TIMEOUT)
                .map_err(|e| self.link.error("send_offsets_to_transaction (fence)", e))?;
        }
        Ok(partitions.len())
    }

    /// Drops the records of the transaction being aborted that are still queued, and serves the
    /// delivery reports of those in flight: librdkafka's abort waits for them, and rust-rdkafka's
    /// `abort_transaction` does not poll, so without this an abort during an outage never ends
    /// ("Failed to flush all outstanding messages").
    fn drop_outstanding(&self) {
        // Only what is still queued locally: voiding the acknowledgements of requests in flight
        // would leave the fate of records already on the broker unknown.
        self.link.producer.purge(PurgeConfig::default().queue());
        self.link.wait_in_flight(Instant::now() + Duration::from_secs(1));
    }

    /// Aborts the open transaction. A broker that is away is waited for (calling `keep_alive`
    /// between attempts, so the caller can keep its consumer in the group); only a fatal error
    /// ends the wait.
    pub fn abort(&mut self, keep_alive: &mut dyn FnMut()) -> Result<(), TxnError> {
        self.join();
        self.failure = None;
        self.pending.clear();
        self.pending_open = false;
        if !self.open {
            return Ok(());
        }
        loop {
            self.drop_outstanding();
            match self.link.producer.abort_transaction(CALL_TIMEOUT) {
                Ok(()) => break,
                Err(KafkaError::Transaction(t)) if t.code() == RDKafkaErrorCode::State && !t.is_fatal() => {
                    // No transaction in progress any more: nothing to abort.
                    break;
                }
                Err(KafkaError::Transaction(t)) if t.code() == RDKafkaErrorCode::Conflict && !t.is_fatal() => {
                    // A commit librdkafka started earlier is still going on and refuses the
                    // abort ("Conflicting commit_transaction API call is already in progress"):
                    // resume it until it ends, committed or aborted. Either way the transaction
                    // is over, and the caller goes on from the offsets Kafka has committed.
                    match self.link.producer.commit_transaction(CALL_TIMEOUT) {
                        Ok(()) => {
                            warn!("The transaction to abort had a commit in progress; it committed.");
                            break;
                        }
                        Err(e) => {
                            if let Class::Fatal = self.link.classify(&e) {
                                return Err(TxnError::Fatal { what: "commit_transaction before an abort", source: e });
                            }
                            warn!(error = %e, "A commit in progress blocks the abort; resuming it.");
                            keep_alive();
                        }
                    }
                }
                Err(e) => match self.link.classify(&e) {
                    Class::Fatal => return Err(TxnError::Fatal { what: "abort_transaction", source: e }),
                    _ => {
                        warn!(error = %e, "Aborting the transaction failed; retrying.");
                        keep_alive();
                        std::thread::sleep(RETRY_PAUSE);
                    }
                },
            }
        }
        self.open = false;
        self.link.failures().clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Seen = (
        String,
        Option<i32>,
        Option<i64>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<Vec<(String, Option<Vec<u8>>)>>,
        Tag,
    );

    fn seen(r: &BaseRecord<'_, [u8], [u8], Tag>) -> Seen {
        let headers =
            r.headers.as_ref().map(|hs| hs.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect());
        (
            r.topic.to_string(),
            r.partition,
            r.timestamp,
            r.key.map(<[u8]>::to_vec),
            r.payload.map(<[u8]>::to_vec),
            headers,
            r.delivery_opaque,
        )
    }

    #[test]
    fn the_journal_gives_back_every_record_as_it_was_sent_in_order() {
        let mut j = Journal::default();
        let mut sent = Vec::new();
        for round in 0..2 {
            j.clear();
            sent.clear();
            for i in 0..50usize {
                let topic = ["notices", "changelog", "audit"][i % 3];
                let key = format!("account-{i}-{round}");
                let payload = vec![i as u8; i * 7];
                let mut r = BaseRecord::with_opaque_to(topic, i);
                if i % 4 != 0 {
                    r = r.key(key.as_bytes());
                }
                if i % 5 != 0 {
                    r = r.payload(&payload[..]);
                }
                if i % 2 == 0 {
                    r = r.partition(i as i32 % 3);
                }
                if i % 3 == 0 {
                    r = r.timestamp(1_700_000_000_000 + i as i64);
                }
                match i % 3 {
                    0 => {}
                    1 => r = r.headers(OwnedHeaders::new()),
                    _ => {
                        r = r.headers(
                            OwnedHeaders::new()
                                .insert(Header { key: "notice_id", value: Some(key.as_bytes()) })
                                .insert(Header { key: "null", value: None::<&[u8]> }),
                        )
                    }
                }
                j.record(&r);
                sent.push(seen(&r));
            }
            assert_eq!(j.len(), sent.len());
            let again: Vec<Seen> = (0..j.len()).map(|i| seen(&j.get(i))).collect();
            assert_eq!(again, sent, "round {round}");
        }
        // Three topics, each kept once however many records went to it.
        assert_eq!(j.topics.len(), 3);
    }
}
