//! End-to-end benchmark of `resetguard run` on a real Apache Kafka broker (started on loopback by
//! the test harness, `tests/common/kafka.rs`). See BENCHMARKS.md, "End-to-end (Kafka)".
//!
//! ```sh
//! cargo bench --bench pipeline                         # both workloads, 3 alternating runs, 30 s latency
//! PIPELINE_BENCH_EVENTS=100000 PIPELINE_BENCH_RUNS=1 cargo bench --bench pipeline
//! PIPELINE_BENCH_WORKLOAD=realistic PIPELINE_BENCH_PERF=/tmp/rg.perf cargo bench --bench pipeline
//! ```
//!
//! Two throughput workloads (`PIPELINE_BENCH_WORKLOAD=generator|realistic|both|none`, default both;
//! `none` measures only the latency):
//! the *generator* workload (N = `PIPELINE_BENCH_EVENTS`, default 500,000; described in 1.) and
//! the *realistic* one (issue 10; N = `PIPELINE_BENCH_REALISTIC_EVENTS`, default 1,000,000;
//! `benches/common::realistic`): production on a bad day. Its event times spread over the hour
//! before production (a consumer catching up, every event behind the wall clock; 5 % of them out
//! of order within the allowed lateness), N / 5 accounts, 0.5 % malformed messages (cut-off JSON,
//! missing fields, values out of range or of the wrong type, unknown signals, bad timestamps, not
//! UTF-8), 0.5 % exact re-sends of a recent message (duplicates), ten takeover bursts of N / 5,000
//! pairs within 20 s each, and an incident: one source (`bulk-risk-scan`) flags N / 25 distinct
//! accounts (40,000 at 1 M) with a deciding signal within 5 minutes of event time. Its policy
//! (`realistic_policy`) lets the incident's cell trip after a quarter of it, so the breaker holds
//! the rest (~30,000 held records at 1 M). Each round checks that every input had exactly one
//! outcome and that the outcomes match what was generated (rejected = malformed, duplicate =
//! re-sent, held only in the incident's cell), so a broken workload fails loudly.
//! `PIPELINE_BENCH_PERF=<file>` records the first measured resetguard round of each workload
//! with `perf record -g --call-graph dwarf` (`PERF` names the perf binary): the realistic one
//! into `<file>`, the generator's into `<file>.generator` and its first round without the
//! changelog into `<file>.generator.off`.
//!
//! 1. **Input.** One input topic (`PIPELINE_BENCH_PARTITIONS`, default 6 partitions), pre-produced
//!    with N realistic ~250-byte login-risk events (`benches/common`: six sources, seven signals,
//!    risk mostly low, optional fields), keyed by account id, lz4-compressed like a typical
//!    upstream producer. Mixed in: one takeover pair (credential_stuffing 0.95, then
//!    impossible_travel 0.9: a notice) per 1,000 events and one invalid message (DLQ) per 2,000.
//!    Event times span the last ~60 s before production. The policy is the default one with a
//!    breaker that does not trip (decisions become notices, not held records), so the output
//!    volume does not depend on breaker timing.
//! 2. **Throughput**, one unmeasured warm-up round (the broker JVM starts cold;
//!    `PIPELINE_BENCH_WARMUP=false` skips it), then `PIPELINE_BENCH_RUNS` rounds (default 3),
//!    alternating on the same topic:
//!    - *bare*: an rdkafka `BaseConsumer` with exactly resetguard's consumer configuration
//!      (`resetguard::kafka::client::consumer_config`: read_committed, fetch.queue.backoff.ms=10,
//!      ...) in a fresh group, polling one message at a time and touching its payload, until it
//!      has seen all N. Rate = N / (last message - first message).
//!    - *resetguard*: `resetguard::app::run` in-process (pipeline thread, HTTP server on a
//!      1-thread tokio runtime) with a fresh group and transactional id, exactly-once,
//!      `commit_interval` `PIPELINE_BENCH_COMMIT_INTERVAL` (default 100ms). Rate = N / (first
//!      committed transaction - the moment `Status::consumed`, which counts inputs once their
//!      transaction has committed, reaches N); afterwards the group's committed offsets
//!      (OffsetFetch, require-stable) must sum to N. Also printed: the steady-state rate from
//!      the first committed transaction to the last.
//!    - *bare EOS copy*: the least any exactly-once pipeline that writes one record per input
//!      costs on this broker (resetguard writes about one changelog record per input): a consumer
//!      and a transactional producer with resetguard's client configurations copy each input
//!      unchanged to the same partition of a fresh topic, committing offsets with the copies every
//!      `commit_interval`; no decoding, no state. Rate = N / (first message .. last commit).
//!
//!    - *resetguard without the changelog* (generator workload; `pipeline.changelog = false`):
//!      the changelog's cost is the ratio of the two. Every other round runs it first, so that
//!      the order (the broker still busy after the copy) favours neither.
//!
//!    Ratio = median resetguard rate / median bare rate; also against the bare EOS copy. For
//!    every run the bench also prints the CPU time it cost per event (`common::cpu`, from
//!    `/proc`): of resetguard's pipeline thread, of librdkafka's threads, of the bench's other
//!    threads (the bare runs' poll loops) and of the broker (the whole JVM), over the steady
//!    part of the run (resetguard: first to last commit, startup and group join left out; the
//!    bare runs: first to last message). On a shared machine CPU per event varies less than a
//!    rate does, and it says which part a change moved. From what runs outside the pipeline
//!    thread, less the broker's idle CPU (measured once per workload), it prints a ceiling: the
//!    rate this machine's cores would allow if deciding cost nothing.
//! 3. **Latency**: a fresh input topic and resetguard instance, then a steady trickle of
//!    `PIPELINE_BENCH_LATENCY_RATE` events/s (default 200) for `PIPELINE_BENCH_LATENCY_SECS`
//!    (default 30 s), `PIPELINE_BENCH_NOTICES_PER_SEC` (default 20) of them triggering a notice
//!    (the second event of a takeover pair), each event stamped `occurred_at` = produce time. A
//!    read_committed consumer of the notice topic (fetch.wait.max.ms=10) matches every notice to
//!    its trigger by account id: latency = visible - occurred_at. Also printed: quantiles of
//!    `resetguard_event_to_notice_seconds` (interpolated in its buckets; measures event time to
//!    the return of `commit_transaction`, not visibility) and of
//!    `resetguard_transaction_commit_seconds`.
//!
//! `PIPELINE_BENCH_KAFKA="k=v;k=v"` adds librdkafka properties to resetguard's `[kafka]` (and so
//! to the bare consumer), e.g. `debug=eos` with `RUST_LOG=librdkafka=debug`.
//! `PIPELINE_BENCH_PIPELINE="k = v;k = v"` adds `[pipeline]` settings, e.g.
//! `changelog_flush_accounts = 0` for the commit-time-only changelog send.
//! `PIPELINE_BENCH_VARIANT="k = v;k = v"` runs resetguard a second time in each round, right
//! after the first, with those `[pipeline]` settings added (e.g. `commit_ahead = false`: every
//! commit waited for), and reports its rate against the default run of the same round (every
//! other round runs the variant first);
//! `PIPELINE_BENCH_SHARDS=N` is the variant `shards = N`.
//!
//! Run by `cargo test --all-targets` (no `--bench` argument) it does a small smoke run instead
//! (20,000 events of each workload, one round, 5 s of latency), so the bench cannot rot.

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/kafka.rs"]
mod kafka;

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use resetguard::config::Settings;
use resetguard::core::event::{format_rfc3339_ms, parse_rfc3339_ms};
use resetguard::kafka::Status;
use tokio_util::sync::CancellationToken;

use common::cpu::CpuUse;
use kafka::{unique_name, KafkaBroker};

/// The service binary's allocator (src/main.rs), so resetguard runs here as it runs deployed.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Breaker limits no run of this bench reaches: every decision is a notice.
const NO_TRIP: &str = "[breaker]\nglobal_rate_per_minute = 1000000\nglobal_burst = 100000\ncell_rate_per_minute = 1000000\ncell_burst = 100000\nspike_floor = 1000000\nglobal_spike_floor = 1000000\n";

/// Which input a throughput run reads (`PIPELINE_BENCH_WORKLOAD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// The bench's own generator: an even stream, no breaker trip (every figure before issue 10).
    Generator,
    /// Production on a bad day (`benches/common::realistic`).
    Realistic,
}

#[derive(Clone)]
struct Opts {
    /// `PIPELINE_BENCH_WORKLOAD`: `generator`, `realistic` or `both` (the default).
    workloads: Vec<Workload>,
    /// Events of the generator workload.
    events: usize,
    /// Events of the realistic workload (`PIPELINE_BENCH_REALISTIC_EVENTS`).
    realistic_events: usize,
    /// `PIPELINE_BENCH_PERF=<file>`: `perf record` the first measured resetguard round of the
    /// realistic workload into `<file>`, of the generator into `<file>.generator` (and its
    /// first round without the changelog into `<file>.generator.off`).
    perf: Option<String>,
    runs: usize,
    /// One unmeasured round first.
    warmup: bool,
    partitions: i32,
    commit_interval: String,
    /// Extra `[kafka]` properties for resetguard (and the bare consumer), `k=v;k=v`.
    kafka_extra: Vec<(String, String)>,
    /// Extra `[pipeline]` settings for resetguard, TOML lines joined by `;`
    /// (`PIPELINE_BENCH_PIPELINE="changelog_flush_accounts = 0"`).
    pipeline_extra: String,
    /// A second resetguard run in each round, right after the first, with these `[pipeline]`
    /// lines added: `PIPELINE_BENCH_VARIANT="commit_ahead = false"`, or
    /// `PIPELINE_BENCH_SHARDS=N` for `shards = N` (the parallel engine).
    variant: Option<String>,
    latency_secs: u64,
    latency_rate: u64,
    notices_per_sec: u64,
}

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v}: cannot parse")),
        Err(_) => default,
    }
}

impl Opts {
    fn from_env(smoke: bool) -> Opts {
        let workloads = match std::env::var("PIPELINE_BENCH_WORKLOAD").as_deref() {
            Err(_) | Ok("both") => vec![Workload::Generator, Workload::Realistic],
            Ok("generator") => vec![Workload::Generator],
            Ok("realistic") => vec![Workload::Realistic],
            // Only the latency part.
            Ok("none") => vec![],
            Ok(other) => panic!("PIPELINE_BENCH_WORKLOAD={other}: expected generator, realistic or both"),
        };
        Opts {
            workloads,
            events: env_or("PIPELINE_BENCH_EVENTS", if smoke { 20_000 } else { 500_000 }),
            realistic_events: env_or("PIPELINE_BENCH_REALISTIC_EVENTS", if smoke { 20_000 } else { 1_000_000 }),
            perf: std::env::var("PIPELINE_BENCH_PERF").ok().filter(|v| !v.is_empty()),
            runs: env_or("PIPELINE_BENCH_RUNS", if smoke { 1 } else { 3 }),
            warmup: env_or("PIPELINE_BENCH_WARMUP", !smoke),
            partitions: env_or("PIPELINE_BENCH_PARTITIONS", 6),
            commit_interval: env_or("PIPELINE_BENCH_COMMIT_INTERVAL", "100ms".to_string()),
            pipeline_extra: std::env::var("PIPELINE_BENCH_PIPELINE").unwrap_or_default().replace(';', "\n"),
            variant: std::env::var("PIPELINE_BENCH_VARIANT")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| v.replace(';', "\n"))
                .or_else(|| {
                    let n: usize =
                        std::env::var("PIPELINE_BENCH_SHARDS").ok()?.parse().expect("PIPELINE_BENCH_SHARDS: a count");
                    Some(format!("shards = {n}"))
                }),
            kafka_extra: std::env::var("PIPELINE_BENCH_KAFKA")
                .unwrap_or_default()
                .split(';')
                .filter(|kv| !kv.trim().is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("PIPELINE_BENCH_KAFKA: {kv} is not k=v"));
                    (k.trim().to_string(), v.trim().to_string())
                })
                .collect(),
            latency_secs: env_or("PIPELINE_BENCH_LATENCY_SECS", if smoke { 5 } else { 30 }),
            latency_rate: env_or("PIPELINE_BENCH_LATENCY_RATE", 200),
            notices_per_sec: env_or("PIPELINE_BENCH_NOTICES_PER_SEC", 20),
        }
    }
}

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

// ---------------------------------------------------------------------------------------------
// Topics and service configuration
// ---------------------------------------------------------------------------------------------

struct Outputs {
    notices: String,
    held: String,
    dlq: String,
    shadow: String,
}

impl Outputs {
    fn create(broker: &KafkaBroker, tag: &str, partitions: i32) -> Outputs {
        let o = Outputs {
            notices: unique_name(&format!("{tag}-notices")),
            held: unique_name(&format!("{tag}-held")),
            dlq: unique_name(&format!("{tag}-dlq")),
            shadow: unique_name(&format!("{tag}-shadow")),
        };
        for t in [&o.notices, &o.held, &o.dlq, &o.shadow] {
            broker.create_topic(t, partitions);
        }
        o
    }
}

/// Writes policy.toml and resetguard.toml into `dir` and loads them.
/// `policy` is the policy file's body after its `version` line (e.g. [`NO_TRIP`]).
fn settings(
    broker: &KafkaBroker,
    dir: &Path,
    input: &str,
    out: &Outputs,
    group: &str,
    opts: &Opts,
    policy: &str,
) -> Settings {
    std::fs::write(dir.join("policy.toml"), format!("version = \"bench-1\"\n{policy}")).unwrap();
    std::fs::write(dir.join("deployment.secret"), "bench-deployment-secret-9e4b2f7c16a03d85").unwrap();
    let extra: String = opts.kafka_extra.iter().map(|(k, v)| format!("{k:?} = {v:?}\n")).collect();
    let cfg = format!(
        r#"
policy = "policy.toml"
[kafka]
"bootstrap.servers" = "{bootstrap}"
"broker.address.family" = "v4"
{extra}[topics]
input = ["{input}"]
notices = "{notices}"
held = "{held}"
dlq = "{dlq}"
shadow = "{shadow}"
control = "{shadow}-control"
audit = "{shadow}-audit"
changelog = "{shadow}-changelog"
create = true
partitions = {partitions}
[pipeline]
group_id = "{group}"
transactional_id = "{txn}"
commit_interval = "{commit_interval}"
drain_timeout = "30s"
{pipeline_extra}
[http]
listen = "127.0.0.1:0"
[secret]
file = "deployment.secret"
"#,
        bootstrap = broker.bootstrap,
        notices = out.notices,
        held = out.held,
        dlq = out.dlq,
        shadow = out.shadow,
        txn = unique_name("bench-txn"),
        commit_interval = opts.commit_interval,
        pipeline_extra = opts.pipeline_extra,
        partitions = opts.partitions,
    );
    let path = dir.join("resetguard.toml");
    std::fs::write(&path, cfg).unwrap();
    Settings::load(&path).unwrap_or_else(|e| panic!("bench config: {e:?}"))
}

/// A running in-process resetguard (`app::run`).
struct Service {
    rt: tokio::runtime::Runtime,
    handle: tokio::task::JoinHandle<Result<(), resetguard::kafka::PipelineError>>,
    token: CancellationToken,
    status: Arc<Status>,
    registry: prometheus::Registry,
}

impl Service {
    fn start(settings: Settings) -> Service {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let registry = prometheus::Registry::new();
        let status = Arc::new(Status::default());
        let token = CancellationToken::new();
        let handle = rt.spawn(resetguard::app::run(settings, registry.clone(), status.clone(), token.clone()));
        Service { rt, handle, token, status, registry }
    }

    fn check_alive(&mut self) {
        if self.handle.is_finished() {
            let r = self.rt.block_on(&mut self.handle);
            panic!("resetguard stopped early: {r:?}");
        }
    }

    fn stop(self) -> Stopped {
        self.token.cancel();
        let r = self.rt.block_on(self.handle).expect("service task");
        if let Err(e) = r {
            panic!("resetguard failed: {e}");
        }
        let load = |a: &AtomicU64| a.load(Ordering::SeqCst);
        let s = &self.status;
        Stopped {
            consumed: load(&s.consumed),
            notices: load(&s.notices),
            held: load(&s.held),
            dlq: load(&s.dlq),
            no_action: load(&s.no_action),
            commits: load(&s.commits),
            registry: self.registry,
        }
    }
}

struct Stopped {
    consumed: u64,
    notices: u64,
    held: u64,
    dlq: u64,
    no_action: u64,
    commits: u64,
    registry: prometheus::Registry,
}

/// A gathered histogram: (count, sum, buckets as (upper bound, cumulative count)).
type Hist = (u64, f64, Vec<(f64, u64)>);

/// The histogram `name` in `registry`.
fn histogram(registry: &prometheus::Registry, name: &str) -> Option<Hist> {
    let fam = registry.gather().into_iter().find(|f| f.name() == name)?;
    let m = fam.get_metric().first()?;
    let h = m.get_histogram();
    let buckets = h.get_bucket().iter().map(|b| (b.upper_bound(), b.cumulative_count())).collect();
    Some((h.get_sample_count(), h.get_sample_sum(), buckets))
}

/// Prometheus' `histogram_quantile`: linear interpolation inside the bucket holding the rank.
fn bucket_quantile(q: f64, count: u64, buckets: &[(f64, u64)]) -> f64 {
    if count == 0 {
        return f64::NAN;
    }
    let rank = q * count as f64;
    let (mut lo, mut below) = (0.0, 0u64);
    for &(ub, cum) in buckets {
        if cum as f64 >= rank {
            let inside = (cum - below) as f64;
            return if inside == 0.0 { ub } else { lo + (ub - lo) * (rank - below as f64) / inside };
        }
        lo = ub;
        below = cum;
    }
    f64::INFINITY
}

// ---------------------------------------------------------------------------------------------
// Producing
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct CountingContext {
    failed: AtomicU64,
}

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            if self.failed.fetch_add(1, Ordering::Relaxed) < 5 {
                eprintln!("delivery failed: {e}");
            }
        }
    }
}

/// Invalid inputs cycled through (each becomes a DLQ record).
fn invalid(k: usize, t_ms: i64) -> Vec<u8> {
    match k % 4 {
        0 => b"{\"event_id\":\"trunc".to_vec(),
        1 => format!(
            r#"{{"event_id":"bad-{k}","account_id":"bad-{k}","occurred_at":"{}","source":"auth-service","signal":"failed_login","risk":1.5}}"#,
            format_rfc3339_ms(t_ms)
        )
        .into_bytes(),
        2 => format!(
            r#"{{"event_id":"bad-{k}","account_id":"bad-{k}","occurred_at":"{}","source":"auth-service","signal":"telepathy","risk":0.5}}"#,
            format_rfc3339_ms(t_ms)
        )
        .into_bytes(),
        _ => vec![0xff, 0xfe, 0x00, 0x01],
    }
}

fn send(p: &BaseProducer<CountingContext>, topic: &str, key: &[u8], payload: &[u8]) {
    common::send_waiting(p, BaseRecord::to(topic).key(key).payload(payload));
}

/// A producer for pre-filling a topic fast: large lz4 batches, a deep queue (like a busy
/// upstream producer).
fn bulk_producer(broker: &KafkaBroker) -> BaseProducer<CountingContext> {
    broker
        .producer_config()
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create_with_context(CountingContext::default())
        .unwrap()
}

/// Pre-produces `n` events into `topic`; returns (bytes, takeover pairs, invalid).
fn preproduce(broker: &KafkaBroker, topic: &str, n: usize) -> (usize, usize, usize) {
    let p = bulk_producer(broker);
    let accounts = (n / 5).max(1000);
    let step_us = (60_000_000 / n as i64).max(1);
    let t0 = wall_ms() - 65_000;
    let mut rng = common::Rng(0x0be7c4);
    let mut perm: Vec<u32> = Vec::new();
    let (mut bytes, mut pairs, mut bad) = (0usize, 0usize, 0usize);
    let mut pending_trigger: Option<(String, i64)> = None;
    let mut key = String::new();
    let mut i = 0usize;
    while i < n {
        let t = t0 + (i as i64 * step_us) / 1000;
        let (k, v): (Vec<u8>, Vec<u8>) = if i % 1000 == 500 {
            // First half of a takeover; its trigger follows 100 events later (same partition).
            let a = format!("ato-{i}");
            pending_trigger = Some((a.clone(), t));
            pairs += 1;
            let v = common::takeover(&format!("ato-e{i}a"), &a, t, "credential_stuffing", 0.95);
            (a.into_bytes(), v)
        } else if i % 1000 == 600 && pending_trigger.is_some() {
            let (a, _) = pending_trigger.take().unwrap();
            let v = common::takeover(&format!("ato-e{i}b"), &a, t, "impossible_travel", 0.9);
            (a.into_bytes(), v)
        } else if i % 2000 == 1234 {
            bad += 1;
            (format!("bad-{i}").into_bytes(), invalid(bad, t))
        } else {
            if i % accounts == 0 || perm.is_empty() {
                perm = common::permutation(accounts, 0x5eed ^ common::mix(i as u64 / accounts as u64 + 1));
            }
            let acct = perm[i % accounts];
            key.clear();
            common::account_id(acct, &mut key);
            (key.clone().into_bytes(), common::event(&mut rng, acct, t))
        };
        bytes += v.len();
        send(&p, topic, &k, &v);
        if i % 1000 == 0 {
            p.poll(Duration::ZERO);
        }
        i += 1;
    }
    p.flush(Duration::from_secs(120)).expect("flushing the pre-produced events");
    let failed = p.context().failed.load(Ordering::SeqCst);
    assert_eq!(failed, 0, "{failed} events not delivered");
    (bytes, pairs, bad)
}

// ---------------------------------------------------------------------------------------------
// Throughput
// ---------------------------------------------------------------------------------------------

struct Bare {
    rate: f64,
    wall: Duration,
    /// CPU from the first message until all `n` were read (copied and committed).
    cpu: CpuUse,
}

/// A bare `BaseConsumer` with resetguard's consumer configuration reads all `n` messages.
fn bare_run(broker: &KafkaBroker, settings: &Settings, input: &str, n: u64) -> Bare {
    let mut cfg = resetguard::kafka::client::consumer_config(settings);
    cfg.set("group.id", unique_name("bench-bare"));
    let c: BaseConsumer = cfg.create().unwrap();
    let began = Instant::now();
    c.subscribe(&[input]).unwrap();
    let (mut count, mut sum) = (0u64, 0u64);
    let (mut first, mut cpu_first) = (None, CpuUse::default());
    let deadline = began + Duration::from_secs(900);
    while count < n {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if first.is_none() {
                    first = Some(Instant::now());
                    cpu_first = CpuUse::now(broker.pid());
                }
                count += 1;
                sum += m.payload().map_or(0, |p| u64::from(p[0]) + p.len() as u64);
            }
            Some(Err(e)) => eprintln!("bare consumer: {e}"),
            None => {}
        }
        assert!(Instant::now() < deadline, "bare consumer: only {count} of {n} in time");
    }
    let end = Instant::now();
    let cpu = CpuUse::now(broker.pid()).since(&cpu_first).of_events(n - 1);
    std::hint::black_box(sum);
    let span = end - first.unwrap();
    Bare { rate: n as f64 / span.as_secs_f64(), wall: end - began, cpu }
}

/// The least an exactly-once pipeline that writes one record per input costs on this broker (as
/// resetguard does with its changelog): a consumer and a transactional producer with resetguard's
/// own client configurations copy every input, unchanged, to the same partition of a fresh
/// topic, committing the offsets with the copies every `commit_interval`, and nothing else (no
/// decoding, no state). Rate = N / (first message .. last commit).
fn copier_run(broker: &KafkaBroker, settings: &Settings, input: &str, n: u64, partitions: i32) -> Bare {
    let out = unique_name("tp-copy");
    broker.create_topic(&out, partitions);
    let mut cpu_first = CpuUse::default();
    let mut ccfg = resetguard::kafka::client::consumer_config(settings);
    ccfg.set("group.id", unique_name("bench-copier"));
    ccfg.remove("group.instance.id");
    let c: BaseConsumer = ccfg.create().unwrap();
    let mut pcfg = resetguard::kafka::client::producer_config(settings);
    pcfg.set("transactional.id", unique_name("bench-copier-txn"));
    let p: BaseProducer = pcfg.create().unwrap();
    p.init_transactions(Duration::from_secs(30)).unwrap();
    let began = Instant::now();
    c.subscribe(&[input]).unwrap();
    let interval = settings.commit_interval;
    let mut offsets: HashMap<i32, i64> = HashMap::new();
    let (mut count, mut open, mut first) = (0u64, false, None);
    let mut next_commit = Instant::now() + interval;
    let deadline = began + Duration::from_secs(900);
    let commit = |offsets: &mut HashMap<i32, i64>| {
        let mut tpl = TopicPartitionList::new();
        for (&part, &o) in offsets.iter() {
            tpl.add_partition_offset(input, part, Offset::Offset(o)).unwrap();
        }
        let cgm = c.group_metadata().unwrap();
        p.send_offsets_to_transaction(&tpl, &cgm, Duration::from_secs(30)).unwrap();
        while p.in_flight_count() > 0 {
            p.poll(Duration::from_millis(1));
        }
        p.commit_transaction(Duration::from_secs(30)).unwrap();
        offsets.clear();
    };
    loop {
        let wait = next_commit.saturating_duration_since(Instant::now()).min(Duration::from_millis(100));
        match c.poll(wait) {
            None => {}
            // The end of a partition (`enable.partition.eof`, resetguard's consumer setting).
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => eprintln!("bare EOS copy: {e}"),
            Some(Ok(m)) => {
                if first.is_none() {
                    first = Some(Instant::now());
                    cpu_first = CpuUse::now(broker.pid());
                }
                if !open {
                    p.begin_transaction().unwrap();
                    open = true;
                }
                let mut rec = BaseRecord::<[u8], [u8]>::to(&out).partition(m.partition());
                if let Some(k) = m.key() {
                    rec = rec.key(k);
                }
                if let Some(v) = m.payload() {
                    rec = rec.payload(v);
                }
                common::send_waiting(&p, rec);
                offsets.insert(m.partition(), m.offset() + 1);
                count += 1;
            }
        }
        if open && (Instant::now() >= next_commit || count >= n) {
            commit(&mut offsets);
            open = false;
            next_commit = Instant::now() + interval;
            if count >= n {
                break;
            }
        }
        assert!(Instant::now() < deadline, "copier: only {count} of {n} in time");
    }
    let end = Instant::now();
    let cpu = CpuUse::now(broker.pid()).since(&cpu_first).of_events(n - 1);
    Bare { rate: n as f64 / (end - first.unwrap()).as_secs_f64(), wall: end - began, cpu }
}

struct Rg {
    /// N / (first consumed .. all committed).
    rate: f64,
    /// (N - first commit) / (first commit .. all committed).
    steady: f64,
    wall: Duration,
    /// CPU from the first commit until all offsets were committed (the steady part).
    cpu: CpuUse,
    stopped: Stopped,
}

#[allow(clippy::too_many_arguments)]
fn rg_run(
    broker: &KafkaBroker,
    dir: &Path,
    input: &str,
    opts: &Opts,
    n: u64,
    run: usize,
    changelog: bool,
    policy: &str,
) -> Rg {
    let out = Outputs::create(broker, &format!("tp{run}{}", if changelog { "" } else { "nc" }), opts.partitions);
    let group = unique_name("bench-rg");
    let mut s = settings(broker, dir, input, &out, &group, opts, policy);
    s.changelog = changelog;
    let began = Instant::now();
    let mut svc = Service::start(s);
    let mut first_commit: Option<(Instant, i64, CpuUse)> = None;
    let deadline = began + Duration::from_secs(900);
    // Progress is read in-process: the service counts its inputs once their transaction has
    // committed. Asking the broker for the group's offsets every 10 ms, as this loop once did,
    // cost the broker ~15 % of what it spent per event on resetguard (BENCHMARKS.md), a load
    // the bare runs never carried; the broker is asked once, at the end.
    let end = loop {
        std::thread::sleep(Duration::from_millis(2));
        let now = Instant::now();
        let committed = svc.status.consumed.load(Ordering::Relaxed) as i64;
        if committed > 0 && first_commit.is_none() {
            first_commit = Some((now, committed, CpuUse::now(broker.pid())));
        }
        if committed >= n as i64 {
            break now;
        }
        svc.check_alive();
        assert!(now < deadline, "resetguard did not commit {n} offsets in time");
    };
    let (t1, c1, cpu_first) = first_commit.unwrap();
    let cpu = CpuUse::now(broker.pid()).since(&cpu_first).of_events((n as i64 - c1).max(0) as u64);
    // What the service counted is what Kafka committed: the group's offsets (require-stable).
    let committed = || -> i64 { broker.committed_offsets(&group, input).iter().map(|(_, o)| o.unwrap_or(0)).sum() };
    let check_by = Instant::now() + Duration::from_secs(30);
    while committed() < n as i64 {
        assert!(Instant::now() < check_by, "the service counted {n} inputs committed; the group's offsets say fewer");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped = svc.stop();
    // A run that committed everything in one transaction has no span to measure a rate over.
    let (rate, steady) = if end > t1 {
        let span = (end - t1).as_secs_f64();
        (n as f64 / span, (n as f64 - c1 as f64) / span)
    } else {
        (f64::NAN, f64::NAN)
    };
    Rg { rate, steady, wall: end - began, cpu, stopped }
}

/// The bare exactly-once copy's rates and resetguard's ratio to them, as report lines.
fn copy_lines(copy_rates: &[f64], rg_rates: &[f64]) -> String {
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    format!(
        "bare EOS copy (one record per input, offsets in the same transaction): median {:.0} msgs/s (runs: {})\nratio resetguard / bare EOS copy: {:.2} (per round: {})\n",
        median(copy_rates),
        list(copy_rates),
        median(rg_rates) / median(copy_rates),
        copy_rates.iter().zip(rg_rates).map(|(c, r)| format!("{:.2}", r / c)).collect::<Vec<_>>().join(", ")
    )
}

/// The variant run of a round (`PIPELINE_BENCH_VARIANT`, `PIPELINE_BENCH_SHARDS`): its label
/// and `opts` with its lines added to `[pipeline]`.
fn variant(opts: &Opts) -> Option<(String, Opts)> {
    let lines = opts.variant.clone()?;
    let mut o = opts.clone();
    o.pipeline_extra = format!("{}\n{lines}", o.pipeline_extra);
    Some((lines.replace('\n', "; "), o))
}

/// Report lines of the variant runs against the default runs of the same rounds.
fn variant_lines(label: Option<&str>, default: &[f64], variant: &[f64]) -> String {
    let Some(label) = label else { return String::new() };
    let per = default.iter().zip(variant).map(|(a, b)| format!("{:.2}", b / a)).collect::<Vec<_>>().join(", ");
    format!(
        "{label}: median {:.0} events/s, {:.2}x the default (per round: {per})\n",
        median(variant),
        median(variant) / median(default)
    )
}

/// CPU per event of the round with the median total, and the ceiling it sets: what the rest
/// (librdkafka, the broker, the bench's other threads) costs per event bounds the rate on this
/// machine's cores even if deciding cost nothing.
fn cpu_lines(label: &str, runs: &[CpuUse], bare: f64, idle_cores: f64) -> String {
    let c = median_cpu(runs);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The broker's idle work (its timers, metadata, group heartbeats) is paid per second,
    // not per event: left out of the ceiling.
    let rest = (c.librdkafka + c.other + c.broker_busy(idle_cores)).as_secs_f64() / c.events.max(1) as f64;
    let ceiling = if rest > 0.0 { cores as f64 / rest } else { f64::NAN };
    format!(
        "CPU µs per event, {label} (the round with the median total, first .. last commit): {}\n  without the pipeline thread's part and the broker's idle {idle_cores:.2} cores: at most {ceiling:.0} events/s on {cores} cores even if deciding were free ({:.2}x the bare consumer)\n",
        c.per_event(),
        ceiling / bare
    )
}

/// CPU per event of the bare consumer and the bare EOS copy (rounds with the median total).
fn bare_cpu_lines(bare: &[CpuUse], copy: &[CpuUse]) -> String {
    format!(
        "CPU µs per event, bare consumer: {}\nCPU µs per event, bare EOS copy: {}\n",
        median_cpu(bare).per_event(),
        median_cpu(copy).per_event()
    )
}

/// The run whose CPU per event (all parts) is the median (the lower middle one of an even count).
fn median_cpu(v: &[CpuUse]) -> CpuUse {
    let mut s = v.to_vec();
    let total = |c: &CpuUse| (c.pipeline + c.librdkafka + c.other + c.broker).as_secs_f64() / c.events.max(1) as f64;
    s.sort_by(|a, b| total(a).total_cmp(&total(b)));
    s.get(s.len().saturating_sub(1) / 2).copied().unwrap_or_default()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

// ---------------------------------------------------------------------------------------------
// Latency
// ---------------------------------------------------------------------------------------------

struct Latency {
    /// Milliseconds, sorted.
    samples: Vec<i64>,
    /// Milliseconds from occurred_at to the notice's decided_at, sorted.
    to_decision: Vec<i64>,
    /// The slowest samples: (latency ms, of which to decided_at, sent at s since the trickle started).
    slowest: Vec<(i64, i64, f64)>,
    triggers: usize,
    unmatched_notices: usize,
    histogram: Option<Hist>,
    decision_histogram: Option<Hist>,
    commit_histogram: Option<Hist>,
    stopped_commits: u64,
}

fn latency_run(broker: &KafkaBroker, dir: &Path, opts: &Opts) -> Latency {
    let input = unique_name("lat-in");
    broker.create_topic(&input, opts.partitions);
    let out = Outputs::create(broker, "lat", opts.partitions);
    let group = unique_name("bench-lat");
    let s = settings(broker, dir, &input, &out, &group, opts, NO_TRIP);
    let mut svc = Service::start(s);
    let ready_by = Instant::now() + Duration::from_secs(60);
    while !(svc.status.ready.load(Ordering::SeqCst) && svc.status.assigned_partitions.load(Ordering::SeqCst) > 0) {
        svc.check_alive();
        assert!(Instant::now() < ready_by, "resetguard not ready within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    // What resetguard (its loop and clients) and the broker spend while nothing arrives: the
    // part of the per-event figures that is paid per second, not per event.
    let idle = CpuUse::now(broker.pid());
    std::thread::sleep(Duration::from_secs(3));
    eprintln!("latency: resetguard ready, no input, for 3 s: {}", CpuUse::now(broker.pid()).since(&idle).cores());

    // Trigger send time (= occurred_at) per account; filled before the trigger is sent.
    let sent: Arc<Mutex<HashMap<String, i64>>> = Arc::new(Mutex::new(HashMap::new()));
    // (account, visible at, decided_at of the notice).
    type Seen = Vec<(String, i64, Option<i64>)>;
    let seen: Arc<Mutex<Seen>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));

    // The notice reader: read_committed, from the beginning of the (fresh) notice topic.
    let reader = {
        let c: BaseConsumer = broker
            .consumer_config(&unique_name("bench-lat-reader"))
            .set("fetch.wait.max.ms", "10")
            .set("fetch.queue.backoff.ms", "10")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..opts.partitions {
            tpl.add_partition_offset(&out.notices, p, Offset::Beginning).unwrap();
        }
        c.assign(&tpl).unwrap();
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                    let now = wall_ms();
                    let v: serde_json::Value =
                        serde_json::from_slice(m.payload().unwrap_or(b"null")).unwrap_or_default();
                    if let Some(a) = v["account_id"].as_str() {
                        let decided = v["decided_at"].as_str().and_then(parse_rfc3339_ms);
                        seen.lock().unwrap().push((a.to_string(), now, decided));
                    }
                }
            }
        })
    };

    // The trickle: `rate` events/s on a fixed schedule; per `rate / notices` slots, one takeover
    // pair (first event, then the trigger on the next slot) and ordinary events.
    let p: BaseProducer<CountingContext> =
        broker.producer_config().create_with_context(CountingContext::default()).unwrap();
    kafka::warm_up(p.client());
    let period = Duration::from_secs_f64(1.0 / opts.latency_rate as f64);
    let every = (opts.latency_rate / opts.notices_per_sec.max(1)).max(3);
    let total = opts.latency_rate * opts.latency_secs;
    let warmup_slots = opts.latency_rate * 2;
    let mut rng = common::Rng(0x1a7e);
    let mut key = String::new();
    let mut triggers = 0usize;
    let start = Instant::now();
    let mut steady_cpu = None;
    for k in 0..total {
        if k == warmup_slots {
            steady_cpu = Some(CpuUse::now(broker.pid()));
        }
        let at = start + period * k as u32;
        if let Some(d) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let t = wall_ms();
        let pair = k / every;
        let acct = format!("lat-ato-{pair}");
        match k % every {
            0 => send(
                &p,
                &input,
                acct.as_bytes(),
                &common::takeover(&format!("lat-{k}"), &acct, t, "credential_stuffing", 0.95),
            ),
            1 => {
                if k >= warmup_slots {
                    sent.lock().unwrap().insert(acct.clone(), t);
                    triggers += 1;
                }
                send(
                    &p,
                    &input,
                    acct.as_bytes(),
                    &common::takeover(&format!("lat-{k}"), &acct, t, "impossible_travel", 0.9),
                );
            }
            _ => {
                let a = rng.below(50_000) as u32;
                key.clear();
                common::account_id(a, &mut key);
                send(&p, &input, key.as_bytes(), &common::event(&mut rng, a, t));
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let produce_secs = start.elapsed().as_secs_f64();
    eprintln!("latency: produced {total} events in {produce_secs:.1} s ({:.0}/s)", total as f64 / produce_secs);
    if let Some(c) = steady_cpu {
        // The bench's own producer and notice reader run in this process: their librdkafka
        // threads count under librdkafka, the rest under "other".
        let c = CpuUse::now(broker.pid()).since(&c).of_events(total.saturating_sub(warmup_slots));
        eprintln!("latency: after the warm-up, {}; per event {}", c.cores(), c.per_event());
    }

    // Wait for the last notices.
    let wait_by = Instant::now() + Duration::from_secs(15);
    loop {
        let matched = {
            let sent = sent.lock().unwrap();
            seen.lock().unwrap().iter().filter(|(a, _, _)| sent.contains_key(a)).count()
        };
        if matched >= triggers || Instant::now() > wait_by {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    let stopped = svc.stop();
    let sent = sent.lock().unwrap();
    let seen = seen.lock().unwrap();
    let mut samples = Vec::new();
    let mut slowest = Vec::new();
    let t_start = wall_ms() - (start.elapsed().as_millis() as i64);
    let mut unmatched = 0usize;
    let mut to_decision = Vec::new();
    for (a, visible, decided) in seen.iter() {
        match sent.get(a) {
            Some(t) => {
                samples.push(visible - t);
                let d = decided.map_or(-1, |d| d - t);
                to_decision.push(d);
                slowest.push((visible - t, d, (t - t_start) as f64 / 1000.0));
            }
            None if a.starts_with("lat-ato-") => {} // warm-up pairs
            None => unmatched += 1,
        }
    }
    samples.sort_unstable();
    to_decision.sort_unstable();
    slowest.sort_by_key(|x| std::cmp::Reverse(x.0));
    slowest.truncate(5);
    Latency {
        samples,
        to_decision,
        slowest,
        triggers,
        unmatched_notices: unmatched,
        histogram: histogram(&stopped.registry, "resetguard_event_to_notice_seconds"),
        decision_histogram: histogram(&stopped.registry, "resetguard_event_to_decision_seconds"),
        commit_histogram: histogram(&stopped.registry, "resetguard_transaction_commit_seconds"),
        stopped_commits: stopped.commits,
    }
}

fn pct(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return -1;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

// ---------------------------------------------------------------------------------------------

/// The sum of the counter (or counter vector) `name` over its series whose labels include every
/// `(label, value)` of `filter`.
fn counter_sum(registry: &prometheus::Registry, name: &str, filter: &[(&str, &str)]) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| filter.iter().all(|(l, v)| m.get_label().iter().any(|p| p.name() == *l && p.value() == *v)))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// Every series of the counter vector `name`: (labels joined with `/`, value), largest first.
fn counter_series(registry: &prometheus::Registry, name: &str) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .map(|m| {
            let labels = m.get_label().iter().map(|p| p.value().to_string()).collect::<Vec<_>>().join("/");
            (labels, m.get_counter().get_value() as u64)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

/// Starts `perf record` on this process when `PIPELINE_BENCH_PERF` names an output file.
fn perf_start(opts: &Opts) -> Option<std::process::Child> {
    let out = opts.perf.as_ref()?;
    let child = std::process::Command::new(std::env::var("PERF").unwrap_or_else(|_| "/usr/bin/perf".into()))
        .args(["record", "-g", "--call-graph", "dwarf,16384", "-F", "499", "-o", out, "-p"])
        .arg(std::process::id().to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("PIPELINE_BENCH_PERF: cannot start perf: {e}"));
    std::thread::sleep(Duration::from_secs(2));
    eprintln!("perf recording into {out} (pid {})", child.id());
    Some(child)
}

/// `opts` with `PIPELINE_BENCH_PERF`'s file name extended by `suffix`.
fn perf_into(opts: &Opts, suffix: &str) -> Opts {
    Opts { perf: opts.perf.as_ref().map(|f| format!("{f}{suffix}")), ..opts.clone() }
}

fn perf_stop(child: Option<std::process::Child>) {
    if let Some(mut c) = child {
        let _ = std::process::Command::new("kill").args(["-INT", &c.id().to_string()]).status();
        let _ = c.wait();
    }
}

/// The bench's own generator (`benches/common::event`), the workload of every earlier figure:
/// bare, then resetguard with and without the changelog, per round. Returns its report lines.
fn generator_workload(broker: &KafkaBroker, dir: &Path, opts: &Opts) -> String {
    let n = opts.events;
    let input = unique_name("tp-in");
    broker.create_topic(&input, opts.partitions);
    let t = Instant::now();
    let (bytes, pairs, bad) = preproduce(broker, &input, n);
    eprintln!(
        "generator: produced {n} events ({:.0} bytes mean, {pairs} takeover pairs, {bad} invalid) in {:.1?}",
        bytes as f64 / n as f64,
        t.elapsed()
    );

    // Bare consumer settings: resetguard's own consumer configuration for this input.
    let probe_out = Outputs { notices: "-".into(), held: "-".into(), dlq: "-".into(), shadow: "-".into() };
    let bare_settings = settings(broker, dir, &input, &probe_out, "unused", opts, NO_TRIP);

    let (mut bare_rates, mut rg_rates, mut steady_rates) = (Vec::new(), Vec::new(), Vec::new());
    let (mut copy_rates, mut variant_rates) = (Vec::new(), Vec::new());
    let (mut bare_cpu, mut copy_cpu) = (Vec::new(), Vec::new());
    // What the broker spends doing nothing (per second, not per event).
    let idle = CpuUse::idle_cores(broker.pid(), Duration::from_secs(3));
    eprintln!("broker idle: {idle:.2} cores");
    // The same pipeline with `pipeline.changelog = false`, and the changelog's bytes per event.
    let (mut off_rates, mut changelog_bytes) = (Vec::new(), Vec::new());
    // CPU per run by part (less noisy than the rates on a shared machine).
    let (mut cpu_on, mut cpu_off) = (Vec::new(), Vec::new());
    let mut last_rg = None;
    if opts.warmup {
        // The broker JVM is fresh (C1-only JIT): one unmeasured round of each warms it up.
        let t = Instant::now();
        let _ = bare_run(broker, &bare_settings, &input, n as u64);
        let _ = rg_run(broker, dir, &input, opts, n as u64, usize::MAX, true, NO_TRIP);
        eprintln!("warm-up round (not counted) in {:.1?}", t.elapsed());
    }
    for run in 0..opts.runs {
        let b = bare_run(broker, &bare_settings, &input, n as u64);
        eprintln!("round {}: bare consumer {:>9.0} msgs/s (wall incl. group join {:.1?})", run + 1, b.rate, b.wall);
        bare_rates.push(b.rate);
        bare_cpu.push(b.cpu);
        let copy = copier_run(broker, &bare_settings, &input, n as u64, opts.partitions);
        eprintln!("round {}: bare EOS copy {:>9.0} msgs/s", run + 1, copy.rate);
        copy_rates.push(copy.rate);
        copy_cpu.push(copy.cpu);
        // Every other round runs without the changelog first, so that what the order does
        // (the broker still busy with the copy, its JIT warming up) favours neither run.
        // So does the variant's.
        let off_first = (run % 2 == 1).then(|| rg_run(broker, dir, &input, opts, n as u64, run, false, NO_TRIP));
        let variant_run = |o: &Opts| rg_run(broker, dir, &input, o, n as u64, 200 + run, true, NO_TRIP);
        let variant_first = variant(opts).filter(|_| run % 2 == 1).map(|(_, o)| variant_run(&o));
        let perf = if run == 0 { perf_start(&perf_into(opts, ".generator")) } else { None };
        let r = rg_run(broker, dir, &input, opts, n as u64, run, true, NO_TRIP);
        perf_stop(perf);
        if let Some((k, o)) = variant(opts) {
            let m = variant_first.unwrap_or_else(|| variant_run(&o));
            eprintln!(
                "round {}: resetguard, {k} {:>9.0} events/s ({:.2}x the default)",
                run + 1,
                m.rate,
                m.rate / r.rate
            );
            eprintln!("          CPU µs per event, {k}: {}", m.cpu.per_event());
            variant_rates.push(m.rate);
        }
        let off = off_first.unwrap_or_else(|| {
            let perf = if run == 0 { perf_start(&perf_into(opts, ".generator.off")) } else { None };
            let off = rg_run(broker, dir, &input, opts, n as u64, run, false, NO_TRIP);
            perf_stop(perf);
            off
        });
        eprintln!("round {}: resetguard without the changelog {:>9.0} events/s", run + 1, off.rate);
        eprintln!("          CPU µs per event, changelog on:  {}", r.cpu.per_event());
        eprintln!("          CPU µs per event, changelog off: {}", off.cpu.per_event());
        off_rates.push(off.rate);
        cpu_on.push(r.cpu);
        cpu_off.push(off.cpu);
        let bytes = counter_sum(&r.stopped.registry, "resetguard_changelog_bytes_total", &[]);
        changelog_bytes.push(bytes as f64 / n as f64);
        let st = &r.stopped;
        let commit_h = histogram(&st.registry, "resetguard_transaction_commit_seconds");
        let (cc, cs) = commit_h.as_ref().map_or((0, 0.0), |h| (h.0, h.1));
        eprintln!(
            "round {}: resetguard    {:>9.0} events/s (steady {:.0}/s; wall incl. join {:.1?}; {} transactions, commit mean {:.1} ms, {:.1} s in commit)",
            run + 1,
            r.rate,
            r.steady,
            r.wall,
            st.commits,
            if cc > 0 { cs / cc as f64 * 1000.0 } else { f64::NAN },
            cs
        );
        eprintln!(
            "          outcomes: consumed {} = no_action {} + notices {} + held {} + dlq {}",
            st.consumed, st.no_action, st.notices, st.held, st.dlq
        );
        assert!(st.consumed >= n as u64, "resetguard consumed {} of {n}", st.consumed);
        rg_rates.push(r.rate);
        steady_rates.push(r.steady);
        last_rg = Some(r);
    }
    let (bm, rm, sm) = (median(&bare_rates), median(&rg_rates), median(&steady_rates));

    let mut report = String::new();
    let _ = writeln!(
        report,
        "\n== generator workload (N = {n}, {} round(s), {} partitions, commit_interval {})",
        opts.runs, opts.partitions, opts.commit_interval
    );
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    let _ = writeln!(report, "bare consumer:   median {bm:>9.0} msgs/s   (runs: {})", list(&bare_rates));
    let _ = writeln!(report, "resetguard EOS:  median {rm:>9.0} events/s (runs: {})", list(&rg_rates));
    let _ = writeln!(report, "  steady (first..last commit): median {sm:.0} events/s (runs: {})", list(&steady_rates));
    let om = median(&off_rates);
    // The two runs of a round share the machine's phase: their ratio is the paired figure; the
    // ratio of the medians can pair a calm run with a busy one.
    let paired: Vec<f64> = rg_rates.iter().zip(&off_rates).map(|(a, b)| a / b).collect();
    let _ = writeln!(
        report,
        "changelog cost: with / without {:.2} as the median of the rounds' ratios (per round: {}), {:.2} as the ratio of the medians (without: median {om:.0} events/s, runs: {}); changelog bytes per input event (key + value, before compression): {:.1}",
        median(&paired),
        paired.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", "),
        rm / om,
        list(&off_rates),
        median(&changelog_bytes)
    );
    report.push_str(&cpu_lines("changelog on", &cpu_on, bm, idle));
    report.push_str(&cpu_lines("changelog off", &cpu_off, bm, idle));
    let _ = writeln!(
        report,
        "ratio resetguard / bare: {:.2} (per round: {})",
        rm / bm,
        bare_rates.iter().zip(&rg_rates).map(|(b, r)| format!("{:.2}", r / b)).collect::<Vec<_>>().join(", ")
    );
    report.push_str(&copy_lines(&copy_rates, &rg_rates));
    report.push_str(&bare_cpu_lines(&bare_cpu, &copy_cpu));
    report.push_str(&variant_lines(variant(opts).map(|v| v.0).as_deref(), &rg_rates, &variant_rates));
    if let Some(r) = &last_rg {
        let st = &r.stopped;
        let _ = writeln!(
            report,
            "outcomes (last round): no_action {}, notices {}, held {}, dlq {}",
            st.no_action, st.notices, st.held, st.dlq
        );
    }
    report
}

/// The policy of the realistic workload. Rate caps no run reaches; only spikes trip. The spike
/// floor of a source cell is a quarter of the incident (10,000 decisions per minute at 1 M
/// events), so the incident's cell trips and holds the other three quarters, while the takeover
/// bursts and the organic decisions of the six ordinary sources stay under it. Decisions are
/// counted per minute of *wall* time (`TimeMode::Wall`): in a catch-up, an hour of decisions
/// arrives within seconds, so the default floors (30 and 120 per minute) would trip every cell at
/// once. `stale_after = 2h`: the consumer catching up an hour is not a replay (with the default
/// 15 minutes, more than 10 decisions on events older than that trip the global cell as
/// `replay_suspected`, and every later decision is held).
fn realistic_policy(spec: &common::RealSpec) -> String {
    format!(
        "[breaker]\nglobal_rate_per_minute = 1000000\nglobal_burst = 1000000\ncell_rate_per_minute = 1000000\ncell_burst = 1000000\nspike_floor = {}\nglobal_spike_floor = 10000000\nstale_after = \"2h\"\n",
        (spec.incident_accounts / 4).max(20)
    )
}

/// Pre-produces the realistic workload into `topic`.
fn preproduce_realistic(broker: &KafkaBroker, topic: &str, spec: &common::RealSpec) -> common::RealCounts {
    let p = bulk_producer(broker);
    let mut i = 0usize;
    let counts = common::realistic(spec, |k, v, _| {
        send(&p, topic, k, v);
        i += 1;
        if i % 1000 == 0 {
            p.poll(Duration::ZERO);
        }
    });
    p.flush(Duration::from_secs(300)).expect("flushing the pre-produced events");
    let failed = p.context().failed.load(Ordering::SeqCst);
    assert_eq!(failed, 0, "{failed} events not delivered");
    counts
}

/// Outcome counts of one resetguard round, from its status and metrics.
struct RealOutcomes {
    consumed: u64,
    no_action: u64,
    notices: u64,
    held: u64,
    dlq: u64,
    rejected: u64,
    duplicate: u64,
    late: u64,
    held_incident: u64,
    held_elsewhere: u64,
    decisions: Vec<(String, u64)>,
    held_by: Vec<(String, u64)>,
    rejected_by: Vec<(String, u64)>,
    no_action_by: Vec<(String, u64)>,
    trips: Vec<(String, u64)>,
}

impl RealOutcomes {
    fn of(st: &Stopped) -> RealOutcomes {
        let r = &st.registry;
        let held_incident = counter_sum(r, "resetguard_notices_held_total", &[("cell", common::INCIDENT_SOURCE)]);
        let held_all = counter_sum(r, "resetguard_notices_held_total", &[]);
        RealOutcomes {
            consumed: st.consumed,
            no_action: st.no_action,
            notices: st.notices,
            held: st.held,
            dlq: st.dlq,
            rejected: counter_sum(r, "resetguard_events_rejected_total", &[]),
            duplicate: counter_sum(r, "resetguard_events_duplicate_total", &[]),
            late: counter_sum(r, "resetguard_events_late_total", &[]),
            held_incident,
            held_elsewhere: held_all - held_incident,
            decisions: counter_series(r, "resetguard_decisions_total"),
            held_by: counter_series(r, "resetguard_notices_held_total"),
            rejected_by: counter_series(r, "resetguard_events_rejected_total"),
            no_action_by: counter_series(r, "resetguard_outcomes_total")
                .into_iter()
                .filter(|(l, _)| l.starts_with("no_action"))
                .collect(),
            trips: counter_series(r, "resetguard_breaker_trips_total"),
        }
    }

    /// Every input has exactly one outcome, and the outcomes match what was generated.
    fn check(&self, c: &common::RealCounts, spec: &common::RealSpec) {
        let n = c.events as u64;
        assert_eq!(self.consumed, n, "resetguard consumed {} of {n}", self.consumed);
        assert_eq!(
            self.consumed,
            self.no_action + self.notices + self.held + self.dlq,
            "consumed != no_action + notices + held + dlq"
        );
        assert_eq!(self.dlq, self.rejected + self.duplicate + self.late, "dlq != rejected + duplicate + late");
        assert_eq!(self.rejected, c.malformed as u64, "every malformed message, and only those, is rejected");
        assert_eq!(self.duplicate, c.duplicates as u64, "every re-sent message, and only those, is a duplicate");
        assert_eq!(self.late, 0, "the workload has no event behind the allowed lateness");
        // The incident trips its cell after a quarter of it (the spike floor); the cell stays
        // open (10 min) for the rest. Incident accounts already in cooldown are no decision.
        assert!(
            self.held_incident >= c.incident as u64 / 2,
            "the incident cell held only {} of {} incident decisions (workload or policy broken)",
            self.held_incident,
            c.incident
        );
        assert_eq!(self.held_elsewhere, 0, "only the incident cell may trip: {:?}", self.held_by);
        assert!(
            self.notices >= c.takeover_pairs as u64 / 2 + (spec.incident_accounts / 4) as u64 / 2,
            "too few notices ({}) for {} takeover pairs and the incident's first quarter",
            self.notices,
            c.takeover_pairs
        );
    }

    fn line(&self) -> String {
        let f = |v: &[(String, u64)]| v.iter().map(|(l, n)| format!("{l} {n}")).collect::<Vec<_>>().join(", ");
        format!(
            "consumed {} = no_action {} + notices {} + held {} + dlq {} (rejected {} + duplicate {} + late {})\n          no_action: {}\n          decisions by cell/kind: {}\n          held by cell/reason: {}\n          rejected by reason: {}\n          breaker trips (cause/cell): {}",
            self.consumed,
            self.no_action,
            self.notices,
            self.held,
            self.dlq,
            self.rejected,
            self.duplicate,
            self.late,
            f(&self.no_action_by),
            f(&self.decisions),
            f(&self.held_by),
            f(&self.rejected_by),
            f(&self.trips)
        )
    }
}

/// Production on a bad day (issue 10, `benches/common::realistic`): an hour of event time behind
/// the wall clock, malformed and duplicate inputs, takeover bursts and an incident that trips the
/// breaker. Bare, then resetguard (changelog on, the default), per round. Returns its report lines.
fn realistic_workload(broker: &KafkaBroker, dir: &Path, opts: &Opts, warmup: bool) -> String {
    let spec = common::RealSpec::new(opts.realistic_events, wall_ms());
    let n = spec.events;
    let input = unique_name("real-in");
    broker.create_topic(&input, opts.partitions);
    let t = Instant::now();
    let counts = preproduce_realistic(broker, &input, &spec);
    eprintln!(
        "realistic: produced {n} events ({:.0} bytes mean, {} accounts, {} plain ({} out of order), {} malformed, {} duplicates, {} takeover pairs in {} bursts, {} incident events over {} min) in {:.1?}",
        counts.bytes as f64 / n as f64,
        spec.accounts,
        counts.plain,
        counts.out_of_order,
        counts.malformed,
        counts.duplicates,
        counts.takeover_pairs,
        spec.bursts,
        counts.incident,
        spec.incident_minutes,
        t.elapsed()
    );
    let policy = realistic_policy(&spec);
    let probe_out = Outputs { notices: "-".into(), held: "-".into(), dlq: "-".into(), shadow: "-".into() };
    let bare_settings = settings(broker, dir, &input, &probe_out, "unused", opts, &policy);
    if warmup {
        let t = Instant::now();
        let _ = bare_run(broker, &bare_settings, &input, n as u64);
        let _ = rg_run(broker, dir, &input, opts, n as u64, usize::MAX, true, &policy);
        eprintln!("realistic: warm-up round (not counted) in {:.1?}", t.elapsed());
    }
    let (mut bare_rates, mut rg_rates, mut steady_rates) = (Vec::new(), Vec::new(), Vec::new());
    let (mut copy_rates, mut variant_rates) = (Vec::new(), Vec::new());
    let (mut bare_cpu, mut copy_cpu) = (Vec::new(), Vec::new());
    // What the broker spends doing nothing (per second, not per event).
    let idle = CpuUse::idle_cores(broker.pid(), Duration::from_secs(3));
    eprintln!("broker idle: {idle:.2} cores");
    let mut cpu = Vec::new();
    let mut last = None;
    for run in 0..opts.runs {
        let b = bare_run(broker, &bare_settings, &input, n as u64);
        eprintln!("realistic round {}: bare consumer {:>9.0} msgs/s", run + 1, b.rate);
        bare_rates.push(b.rate);
        bare_cpu.push(b.cpu);
        let copy = copier_run(broker, &bare_settings, &input, n as u64, opts.partitions);
        eprintln!("realistic round {}: bare EOS copy {:>9.0} msgs/s", run + 1, copy.rate);
        copy_rates.push(copy.rate);
        copy_cpu.push(copy.cpu);
        // The variant runs first in every other round, so that the order favours neither.
        let variant_run = |o: &Opts| rg_run(broker, dir, &input, o, n as u64, 300 + run, true, &policy);
        let variant_first = variant(opts).filter(|_| run % 2 == 1).map(|(_, o)| variant_run(&o));
        let perf = if run == 0 { perf_start(opts) } else { None };
        let r = rg_run(broker, dir, &input, opts, n as u64, 100 + run, true, &policy);
        perf_stop(perf);
        eprintln!("          CPU µs per event: {}", r.cpu.per_event());
        cpu.push(r.cpu);
        let o = RealOutcomes::of(&r.stopped);
        let commit_h = histogram(&r.stopped.registry, "resetguard_transaction_commit_seconds");
        let (cc, cs) = commit_h.as_ref().map_or((0, 0.0), |h| (h.0, h.1));
        eprintln!(
            "realistic round {}: resetguard {:>9.0} events/s (steady {:.0}/s; {} transactions, commit mean {:.1} ms), ratio {:.2}\n          {}",
            run + 1,
            r.rate,
            r.steady,
            r.stopped.commits,
            if cc > 0 { cs / cc as f64 * 1000.0 } else { f64::NAN },
            r.rate / b.rate,
            o.line()
        );
        o.check(&counts, &spec);
        if let Some((k, opts_k)) = variant(opts) {
            let m = variant_first.unwrap_or_else(|| variant_run(&opts_k));
            let om = RealOutcomes::of(&m.stopped);
            eprintln!(
                "realistic round {}: resetguard, {k} {:>9.0} events/s ({:.2}x the default)\n          CPU µs per event: {}\n          {}",
                run + 1,
                m.rate,
                m.rate / r.rate,
                m.cpu.per_event(),
                om.line()
            );
            om.check(&counts, &spec);
            variant_rates.push(m.rate);
        }
        rg_rates.push(r.rate);
        steady_rates.push(r.steady);
        last = Some(o);
    }
    let (bm, rm, sm) = (median(&bare_rates), median(&rg_rates), median(&steady_rates));
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    let mut report = String::new();
    let _ = writeln!(
        report,
        "\n== realistic workload (N = {n}, {} accounts, event time {} .. {} UTC, {} round(s), {} partitions, commit_interval {})",
        spec.accounts,
        format_rfc3339_ms(spec.start_ms()),
        format_rfc3339_ms(spec.end_ms),
        opts.runs,
        opts.partitions,
        opts.commit_interval
    );
    let _ = writeln!(
        report,
        "input: {:.0} bytes mean; {} malformed, {} duplicates, {} takeover pairs, {} incident events ({}), spike floor {}",
        counts.bytes as f64 / n as f64,
        counts.malformed,
        counts.duplicates,
        counts.takeover_pairs,
        counts.incident,
        common::INCIDENT_SOURCE,
        (spec.incident_accounts / 4).max(20)
    );
    let _ = writeln!(report, "bare consumer:   median {bm:>9.0} msgs/s   (runs: {})", list(&bare_rates));
    let _ = writeln!(report, "resetguard EOS:  median {rm:>9.0} events/s (runs: {})", list(&rg_rates));
    let _ = writeln!(report, "  steady (first..last commit): median {sm:.0} events/s (runs: {})", list(&steady_rates));
    let _ = writeln!(
        report,
        "ratio resetguard / bare: {:.2} (per round: {})",
        rm / bm,
        bare_rates.iter().zip(&rg_rates).map(|(b, r)| format!("{:.2}", r / b)).collect::<Vec<_>>().join(", ")
    );
    report.push_str(&copy_lines(&copy_rates, &rg_rates));
    report.push_str(&bare_cpu_lines(&bare_cpu, &copy_cpu));
    report.push_str(&cpu_lines("resetguard", &cpu, bm, idle));
    report.push_str(&variant_lines(variant(opts).map(|v| v.0).as_deref(), &rg_rates, &variant_rates));
    if let Some(o) = &last {
        let _ = writeln!(report, "outcomes (last round): {}", o.line());
    }
    report
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let smoke = !std::env::args().any(|a| a == "--bench");
    let opts = Opts::from_env(smoke);
    eprintln!(
        "pipeline bench{}: workloads {:?} (generator N = {}, realistic N = {}), {} round(s), {} partitions, commit_interval {}",
        if smoke { " (smoke run: not started with --bench)" } else { "" },
        opts.workloads,
        opts.events,
        opts.realistic_events,
        opts.runs,
        opts.partitions,
        opts.commit_interval
    );
    let broker = KafkaBroker::start_for_bench();
    let dir = tempfile::tempdir().unwrap();

    let mut report = String::new();
    if opts.workloads.contains(&Workload::Generator) {
        report.push_str(&generator_workload(&broker, dir.path(), &opts));
    }
    if opts.workloads.contains(&Workload::Realistic) {
        // The generator's warm-up round warmed the broker already.
        let warmup = opts.warmup && !opts.workloads.contains(&Workload::Generator);
        report.push_str(&realistic_workload(&broker, dir.path(), &opts, warmup));
    }

    let lat = latency_run(&broker, dir.path(), &opts);
    let s = &lat.samples;
    let _ = writeln!(
        report,
        "\n== latency event->notice visible (read_committed), {} ev/s with {} notices/s for {} s: n = {} of {} triggers, p50 {} ms, p90 {} ms, p99 {} ms, max {} ms ({} unmatched notices, {} transactions)",
        opts.latency_rate,
        opts.latency_rate / (opts.latency_rate / opts.notices_per_sec.max(1)).max(3),
        opts.latency_secs,
        s.len(),
        lat.triggers,
        pct(s, 0.5),
        pct(s, 0.9),
        pct(s, 0.99),
        s.last().copied().unwrap_or(-1),
        lat.unmatched_notices,
        lat.stopped_commits,
    );
    let _ = writeln!(
        report,
        "  of which occurred_at -> decided_at (input path: produce, fetch, decide): p50 {} ms, p99 {} ms",
        pct(&lat.to_decision, 0.5),
        pct(&lat.to_decision, 0.99)
    );
    let _ = writeln!(
        report,
        "  slowest (ms total/to decision @ s after start): {}",
        lat.slowest.iter().map(|(ms, d, at)| format!("{ms}/{d} @ {at:.1}")).collect::<Vec<_>>().join(", ")
    );
    for (name, h) in [
        ("resetguard_event_to_notice_seconds", &lat.histogram),
        ("resetguard_event_to_decision_seconds", &lat.decision_histogram),
        ("resetguard_transaction_commit_seconds", &lat.commit_histogram),
    ] {
        if let Some((count, sum, buckets)) = h {
            let _ = writeln!(
                report,
                "{name} (bucket-interpolated): n = {count}, mean {:.0} ms, p50 {:.0} ms, p99 {:.0} ms",
                sum / *count as f64 * 1000.0,
                bucket_quantile(0.5, *count, buckets) * 1000.0,
                bucket_quantile(0.99, *count, buckets) * 1000.0
            );
        }
    }
    eprint!("{report}");
    assert!(lat.samples.len() * 10 >= lat.triggers * 9, "only {} of {} notices seen", lat.samples.len(), lat.triggers);
}
