//! Helpers of the fault-injection tests (`tests/faults.rs`, `tests/faults_kills.rs`): topics with
//! per-topic configs, resetguard as a child process with its HTTP address, a paced input stream
//! that keeps producing through broker outages, Prometheus scrapes and admin calls.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};

use super::kafka::{block_on, unique_name, KafkaBroker, Record};
use super::service::{header_str, json, Expect, Input, Topics, PARTITIONS};

pub const ADMIN_TOKEN: &str = "fault-tests-admin-token-0123456789";

/// Topic names as [`Topics::create`] makes them, without creating anything.
pub fn topic_names(tag: &str) -> Topics {
    Topics {
        input: unique_name(&format!("{tag}-in")),
        notices: unique_name(&format!("{tag}-notices")),
        held: unique_name(&format!("{tag}-held")),
        dlq: unique_name(&format!("{tag}-dlq")),
        shadow: unique_name(&format!("{tag}-shadow")),
        group: unique_name(&format!("{tag}-group")),
    }
}

/// Topic configs per role for [`create_topics`]; empty slices mean broker defaults.
#[derive(Default)]
pub struct TopicConfigs<'a> {
    pub input: &'a [(&'a str, &'a str)],
    pub dlq: &'a [(&'a str, &'a str)],
    /// The audit topic (`<shadow>-audit`), created here only when this is non-empty (otherwise
    /// resetguard creates it).
    pub audit: &'a [(&'a str, &'a str)],
}

/// Like [`Topics::create`] (input: [`PARTITIONS`] partitions, outputs: 2), with topic configs.
pub fn create_topics(broker: &KafkaBroker, tag: &str, cfg: &TopicConfigs<'_>) -> Topics {
    let t = topic_names(tag);
    broker.create_topic_with_config(&t.input, PARTITIONS, cfg.input);
    broker.create_topic_with_config(&t.dlq, 2, cfg.dlq);
    for out in [&t.notices, &t.held, &t.shadow] {
        broker.create_topic(out, 2);
    }
    if !cfg.audit.is_empty() {
        broker.create_topic_with_config(&audit_topic(&t), 2, cfg.audit);
    }
    t
}

pub fn audit_topic(t: &Topics) -> String {
    format!("{}-audit", t.shadow)
}

/// Writes `admin.token` (so the config gets an `[admin]` section), policy.toml and
/// resetguard.toml (listen `127.0.0.1:0`), adds `kafka_extra` properties to its `[kafka]` table
/// and sets `pipeline.max_batch` when given (`Topics::write_config` commits every 100 inputs when
/// the policy is not the default one). Returns the config path.
pub fn write_config(
    broker: &KafkaBroker,
    t: &Topics,
    dir: &Path,
    txn_id: &str,
    policy_extra: &str,
    kafka_extra: &[(&str, &str)],
    max_batch: Option<usize>,
) -> PathBuf {
    std::fs::write(dir.join("admin.token"), ADMIN_TOKEN).unwrap();
    let path = t.write_config(broker, dir, txn_id, policy_extra);
    if let Some(n) = max_batch {
        let text = std::fs::read_to_string(&path).unwrap();
        let (head, rest) = text.split_once("\nmax_batch = ").expect("max_batch in the config");
        let rest = rest.split_once('\n').map_or("", |(_, r)| r);
        std::fs::write(&path, format!("{head}\nmax_batch = {n}\n{rest}")).unwrap();
    }
    // RG_TEST_KAFKA="k=v;k=v" adds client properties to every fault test's service, e.g. to run
    // them with partition.assignment.strategy=cooperative-sticky.
    let from_env = std::env::var("RG_TEST_KAFKA").unwrap_or_default();
    let from_env: Vec<(&str, &str)> = from_env.split(';').filter_map(|kv| kv.split_once('=')).collect();
    let kafka_extra: Vec<(&str, &str)> = kafka_extra.iter().copied().chain(from_env).collect();
    if !kafka_extra.is_empty() {
        let text = std::fs::read_to_string(&path).unwrap();
        // A property given here replaces the one the config has.
        let text: String = text
            .lines()
            .filter(|l| !kafka_extra.iter().any(|(k, _)| l.starts_with(&format!("\"{k}\" = "))))
            .map(|l| format!("{l}\n"))
            .collect();
        let extra: String = kafka_extra.iter().map(|(k, v)| format!("\"{k}\" = \"{v}\"\n")).collect();
        assert!(text.contains("\n[kafka]\n"), "unexpected config layout:\n{text}");
        std::fs::write(&path, text.replacen("\n[kafka]\n", &format!("\n[kafka]\n{extra}"), 1)).unwrap();
    }
    path
}

pub fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// The distinct WARN/ERROR messages of a service log with their counts (timestamps and fields
/// after the message dropped), for the test output.
pub fn log_summary(log: &Path) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in strip_ansi(&log_text(log)).lines() {
        let Some(level) = [" WARN ", " ERROR "].into_iter().find(|l| line.contains(l)) else { continue };
        let level = &level[..level.len() - 1];
        let msg = line.split_once(level).map(|(_, m)| m).unwrap_or(line);
        // "target: Message. field=value ..." -> "target: Message."
        let msg = match msg.find(". ") {
            Some(i) => &msg[..=i],
            None => msg,
        };
        *counts.entry(format!("{}{}", level.trim_start(), msg.chars().take(160).collect::<String>())).or_default() += 1;
    }
    counts.iter().map(|(m, n)| format!("  {n:>5} x {m}")).collect::<Vec<_>>().join("\n")
}

/// Copies the service log into `$FAULT_TEST_LOG_DIR` (when set), for a look after the test.
pub fn keep_log(log: &Path) {
    if let Some(dir) = std::env::var_os("FAULT_TEST_LOG_DIR") {
        let name = format!("{}-{}.log", std::thread::current().name().unwrap_or("test"), std::process::id());
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::copy(log, Path::new(&dir).join(name.replace("::", "-")));
    }
}

/// Last `n` lines of a log file.
pub fn log_tail(log: &Path, n: usize) -> String {
    let text = log_text(log);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Strips ANSI escape sequences (tracing colours its output by default).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// `resetguard run` as a child process; the log is appended to by every incarnation.
pub struct Service {
    pub child: Child,
    pub log: PathBuf,
    /// Length of the log when this incarnation started (its lines come after).
    log_from: usize,
    base: Option<String>,
}

impl Service {
    pub fn spawn(config: &Path, log: &Path) -> Service {
        let log_from = std::fs::metadata(log).map(|m| m.len() as usize).unwrap_or(0);
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_resetguard"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", super::service::service_log_filter())
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("starting resetguard run");
        Service { child, log: log.to_path_buf(), log_from, base: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// This incarnation's part of the log.
    pub fn own_log(&self) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(&bytes[self.log_from.min(bytes.len())..]).into_owned()
    }

    /// Panics (with the log tail) if the process has exited.
    pub fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            keep_log(&self.log);
            panic!("resetguard exited ({status}) {what}; log tail:\n{}", log_tail(&self.log, 60));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// `http://<addr>` of this incarnation, from its log line "Serving /metrics ... addr=...";
    /// waits for it (and panics if the process exits first).
    pub fn base_url(&mut self, timeout: Duration) -> String {
        if let Some(b) = &self.base {
            return b.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let text = strip_ansi(&self.own_log());
            if let Some(addr) = text
                .lines()
                .filter(|l| l.contains("Serving /metrics"))
                .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")))
            {
                let base = format!("http://{}", addr.trim_matches('"'));
                self.base = Some(base.clone());
                return base;
            }
            self.assert_running("before serving HTTP");
            assert!(Instant::now() < deadline, "no \"Serving /metrics\" log line within {timeout:?}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// GET `path` on this incarnation; `None` when it does not answer.
    pub fn get(&mut self, path: &str) -> Option<(u16, String)> {
        let base = self.base_url(Duration::from_secs(60));
        let r = http().get(format!("{base}{path}")).send().ok()?;
        let code = r.status().as_u16();
        Some((code, r.text().unwrap_or_default()))
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if matches!(self.get("/readyz"), Some((200, _))) {
                return;
            }
            self.assert_running("before turning ready");
            assert!(Instant::now() < deadline, "/readyz not 200 within {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET, POST or DELETE an admin request with the bearer token; returns status and body.
    pub fn admin(&mut self, method: &str, path: &str, body: &serde_json::Value) -> (u16, String) {
        let base = self.base_url(Duration::from_secs(60));
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(90)).build().unwrap();
        let url = format!("{base}{path}");
        let req = match method {
            "GET" => {
                return match client.get(url).header("Authorization", format!("Bearer {ADMIN_TOKEN}")).send() {
                    Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default()),
                    Err(e) => (0, format!("request failed: {e}")),
                }
            }
            "POST" => client.post(url),
            "DELETE" => client.delete(url),
            other => panic!("method {other}"),
        };
        let r = req.header("Authorization", format!("Bearer {ADMIN_TOKEN}")).json(body).send();
        match r {
            Ok(r) => {
                let code = r.status().as_u16();
                (code, r.text().unwrap_or_default())
            }
            Err(e) => (0, format!("request failed: {e}")),
        }
    }

    /// Sum of every sample of the metric `name` on `/metrics` (`None`: no sample, no answer).
    pub fn metric(&mut self, name: &str) -> Option<f64> {
        let (code, text) = self.get("/metrics")?;
        if code != 200 {
            return None;
        }
        metric_sum(&text, name)
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit (panics after `timeout`).
    pub fn terminate(mut self, timeout: Duration) -> (ExitStatus, String) {
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill -TERM failed");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.own_log());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "resetguard did not exit within {timeout:?} after SIGTERM; log tail:\n{}",
                    log_tail(&self.log, 60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and assert exit code 0.
    pub fn terminate_ok(self) {
        let log = self.log.clone();
        let (status, _) = self.terminate(Duration::from_secs(40));
        eprintln!("service log, WARN/ERROR messages:\n{}", log_summary(&log));
        keep_log(&log);
        assert!(
            status.success(),
            "resetguard must exit 0 after SIGTERM, got {status}; log tail:\n{}",
            log_tail(&log, 60)
        );
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().unwrap()
}

/// Sum over the samples of `name` (any labels) in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Sum of the samples of metric `name` whose labels contain `label` (e.g. `source="input"`).
pub fn metric_with(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(name))
        .filter(|rest| rest.starts_with('{') && rest.split('}').next().is_some_and(|labels| labels.contains(label)))
        .filter_map(|rest| rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Sum of the committed offsets of the service's group on the input topic.
pub fn committed_sum(broker: &KafkaBroker, t: &Topics) -> i64 {
    broker.committed_offsets(&t.group, &t.input).iter().map(|(_, o)| o.unwrap_or(0)).sum()
}

/// Waits until the committed input offsets add up to `total` while `service` keeps running.
pub fn wait_committed_running(broker: &KafkaBroker, t: &Topics, service: &mut Service, total: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let done = committed_sum(broker, t);
        if done >= total {
            return;
        }
        service.assert_running(&format!("with {done} of {total} input offsets committed"));
        if Instant::now() >= deadline {
            keep_log(&service.log);
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {total} input offsets committed within {timeout:?}; log tail:\n{}",
            log_tail(&service.log, 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A producer thread sending `inputs` on a schedule (ms after the start, non-decreasing), with
/// keyed partitions as [`Input::partition`]. Deliveries are awaited only at the end, and the
/// producer's message and request timeouts are long, so the stream goes on through broker kills
/// and freezes (librdkafka buffers and retries; idempotence keeps order and avoids duplicates).
/// An input whose delivery still failed (librdkafka times out a request that a frozen broker held
/// too long, and cannot know whether it was written) is looked up in the topic at the end and
/// sent again only if it is not there, so every input is in the topic at least once; a batch
/// the producer wrote twice anyway is found at the end too ([`Stream::finish`]).
pub struct Stream {
    handle: Option<JoinHandle<(Vec<Input>, Vec<Result<(i32, i64), String>>)>>,
    /// Client config of the broker (for the lookup and the resend at the end).
    config: rdkafka::ClientConfig,
    topic: String,
    /// Inputs handed to the producer so far.
    pub sent: Arc<AtomicUsize>,
    pub total: usize,
    stop: Arc<AtomicBool>,
}

impl Stream {
    pub fn start(broker: &KafkaBroker, topic: &str, inputs: Vec<Input>, schedule_ms: Vec<u64>) -> Stream {
        assert_eq!(inputs.len(), schedule_ms.len());
        let producer: FutureProducer = broker
            .producer_config()
            .set("linger.ms", "5")
            .set("message.timeout.ms", "600000")
            .set("request.timeout.ms", "300000")
            .set("socket.timeout.ms", "300000")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            .create()
            .expect("creating the stream producer");
        super::kafka::warm_up(rdkafka::producer::Producer::client(&producer));
        let sent = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let total = inputs.len();
        let topic = topic.to_string();
        let topic2 = topic.clone();
        let (sent2, stop2) = (sent.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let mut pending = Vec::with_capacity(inputs.len());
            for (i, (inp, at)) in inputs.iter().zip(&schedule_ms).enumerate() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let due = start + Duration::from_millis(*at);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let mut rec: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&topic).key(inp.key.as_bytes()).payload(&inp.bytes[..]).partition(inp.partition);
                let fut = loop {
                    match producer.send_result(rec) {
                        Ok(f) => break f,
                        Err((e, r)) => {
                            // Local queue full (broker away for long): wait and retry.
                            assert!(
                                matches!(
                                    e,
                                    rdkafka::error::KafkaError::MessageProduction(
                                        rdkafka::types::RDKafkaErrorCode::QueueFull
                                    )
                                ),
                                "enqueueing input {i}: {e}"
                            );
                            rec = r;
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                };
                pending.push(fut);
                sent2.store(i + 1, Ordering::Relaxed);
            }
            let results = pending
                .into_iter()
                .enumerate()
                .map(|(i, f)| match block_on(f) {
                    Ok(Ok(d)) => Ok((d.partition, d.offset)),
                    Ok(Err((e, _))) => Err(format!("delivering input {i}: {e}")),
                    Err(_) => Err(format!("delivery report of input {i} dropped")),
                })
                .collect();
            (inputs, results)
        });
        Stream { handle: Some(handle), config: broker.base_config(), topic: topic2, sent, total, stop }
    }

    /// Coordinates of the inputs whose delivery failed: where they are in the topic, or where
    /// they land when sent again (then the broker is back).
    fn repair(&self, inputs: &[Input], results: Vec<Result<(i32, i64), String>>) -> Vec<(i32, i64)> {
        let failed: Vec<usize> = results.iter().enumerate().filter(|(_, r)| r.is_err()).map(|(i, _)| i).collect();
        if failed.is_empty() {
            return results.into_iter().flatten().collect();
        }
        eprintln!(
            "stream: {} deliveries failed ({}); looking them up in {}",
            failed.len(),
            results[failed[0]].as_ref().unwrap_err(),
            self.topic
        );
        let wanted: HashMap<&[u8], usize> = failed.iter().map(|&i| (&inputs[i].bytes[..], i)).collect();
        let mut found: HashMap<usize, (i32, i64)> = HashMap::new();
        self.read_back(|payload, at| {
            if let Some(&i) = wanted.get(payload) {
                found.insert(i, at);
            }
        });
        let producer: FutureProducer =
            self.config.clone().set("enable.idempotence", "true").set("message.timeout.ms", "300000").create().unwrap();
        let mut coords = Vec::with_capacity(results.len());
        for (i, r) in results.into_iter().enumerate() {
            coords.push(match r {
                Ok(c) => c,
                Err(_) if found.contains_key(&i) => found[&i],
                Err(e) => {
                    let inp = &inputs[i];
                    let rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic)
                        .key(inp.key.as_bytes())
                        .payload(&inp.bytes[..])
                        .partition(inp.partition);
                    match block_on(producer.send(rec, Duration::from_secs(60))) {
                        Ok(d) => (d.partition, d.offset),
                        Err((e2, _)) => panic!("{e}, and again: {e2}"),
                    }
                }
            });
        }
        coords
    }

    fn reader(&self) -> rdkafka::consumer::BaseConsumer {
        self.config
            .clone()
            .set("group.id", unique_name("stream-read-back"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap()
    }

    /// Each partition's (low, high) offsets now.
    fn ends(&self) -> HashMap<i32, (i64, i64)> {
        use rdkafka::consumer::Consumer;
        let consumer = self.reader();
        (0..PARTITIONS)
            .map(|p| (p, consumer.fetch_watermarks(&self.topic, p, Duration::from_secs(30)).unwrap()))
            .collect()
    }

    /// Reads every record now in the topic, handing its payload and (partition, offset) to `each`.
    fn read_back(&self, mut each: impl FnMut(&[u8], (i32, i64))) {
        use rdkafka::consumer::Consumer;
        use rdkafka::Message;
        let ends = self.ends();
        let consumer = self.reader();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (&p, &(low, _)) in &ends {
            tpl.add_partition_offset(&self.topic, p, rdkafka::Offset::Offset(low)).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut done: BTreeSet<i32> = ends.iter().filter(|(_, (low, high))| high == low).map(|(&p, _)| p).collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while done.len() < ends.len() {
            assert!(Instant::now() < deadline, "reading back {} timed out", self.topic);
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else { continue };
            each(m.payload().unwrap_or_default(), (m.partition(), m.offset()));
            if m.offset() + 1 >= ends[&m.partition()].1 {
                done.insert(m.partition());
            }
        }
    }

    /// Evenly paced: `inputs.len()` inputs over `duration`.
    pub fn paced(broker: &KafkaBroker, topic: &str, inputs: Vec<Input>, duration: Duration) -> Stream {
        let n = inputs.len().max(1) as u64;
        let ms = duration.as_millis() as u64;
        let schedule = (0..inputs.len() as u64).map(|i| i * ms / n).collect();
        Stream::start(broker, topic, inputs, schedule)
    }

    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits for every delivery; returns the inputs as the topic holds them and the (partition,
    /// offset) of each, in input order: the inputs given, then one more per copy the producer
    /// itself wrote (see [`Stream::producer_copies`]).
    pub fn finish(mut self) -> (Vec<Input>, Vec<(i32, i64)>) {
        let (mut inputs, results) = self.handle.take().unwrap().join().expect("the stream producer panicked");
        assert_eq!(results.len(), self.total, "stream stopped early");
        let mut coords = self.repair(&inputs, results);
        self.producer_copies(&mut inputs, &mut coords);
        (inputs, coords)
    }

    /// Reads the topic back: every input must be there, and any record beyond the inputs is a
    /// copy. A retry the broker could not recognise as one (an idempotent producer whose epoch
    /// was bumped while a batch's fate was unknown, around a broker kill) writes a batch twice.
    /// The service must treat the later copy as any re-sent event: the first copy in the log gets
    /// the input's outcome, the later one the duplicate's (or the same rejection, for an input
    /// that does not decode). Inputs with the same bytes (deliberate re-sends) take their copies
    /// in log order.
    fn producer_copies(&self, inputs: &mut Vec<Input>, coords: &mut Vec<(i32, i64)>) {
        let mut copies: HashMap<Vec<u8>, Vec<(i32, i64)>> = HashMap::new();
        self.read_back(|payload, at| copies.entry(payload.to_vec()).or_default().push(at));
        let mut same: HashMap<&[u8], Vec<usize>> = HashMap::new();
        for (i, inp) in inputs.iter().enumerate() {
            same.entry(&inp.bytes[..]).or_default().push(i);
        }
        let mut extra = Vec::new();
        for (bytes, ixs) in same {
            let mut at = copies.remove(bytes).unwrap_or_default();
            at.sort_unstable();
            assert!(
                at.len() >= ixs.len(),
                "an input is missing from {}: {}",
                self.topic,
                String::from_utf8_lossy(bytes)
            );
            for (&i, &c) in ixs.iter().zip(&at) {
                coords[i] = c;
            }
            let first = &inputs[ixs[0]];
            for &c in &at[ixs.len()..] {
                let mut copy = first.clone();
                // Dedupe comes right after decoding: a copy of an input that decodes is a
                // duplicate, whatever became of the first; one that does not fails alike.
                copy.expect = match first.expect {
                    Expect::Dlq(reason) if !matches!(reason, "event_id_seen" | "behind_watermark") => {
                        Expect::Dlq(reason)
                    }
                    _ => Expect::Dlq("event_id_seen"),
                };
                // Its rejection is the copy's outcome, not a second one of the event.
                copy.event_id = None;
                extra.push((copy, c));
            }
        }
        assert!(copies.is_empty(), "{} holds records that are no input: {}", self.topic, copies.len());
        if !extra.is_empty() {
            eprintln!("stream: the producer wrote {} inputs twice into {}", extra.len(), self.topic);
        }
        for (copy, c) in extra {
            inputs.push(copy);
            coords.push(c);
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A string of `n` pseudo-random alphanumerics (incompressible enough that lz4 does not shrink
/// it meaningfully).
pub fn random_text(rng: &mut super::events::Rng, n: usize) -> String {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..n).map(|_| ALNUM[rng.below(ALNUM.len() as u64) as usize] as char).collect()
}

/// What the output topics hold, read with read_committed after the service stopped.
pub struct Outputs {
    pub notices: Vec<Record>,
    pub held: Vec<Record>,
    pub dlq: Vec<Record>,
    /// Account of every notice.
    pub notice_accounts: BTreeSet<String>,
    pub held_accounts: BTreeSet<String>,
}

/// The same invariants as `service::check_outputs` (every event_id at most one outcome, no
/// duplicate notice_id, DLQ reasons and coordinates, the expected notice/held/DLQ sets), except
/// that a DLQ record with the header `truncated` = `true` carries a prefix of the original bytes
/// and `original_bytes` = the original length instead of the whole input.
pub fn check_outputs_allowing_truncation(
    broker: &KafkaBroker,
    t: &Topics,
    inputs: &[Input],
    coords: &[(i32, i64)],
) -> Outputs {
    let timeout = Duration::from_secs(90);
    let schemas = super::schemas::OutputSchemas::load();
    let notices = broker.read_all_committed(&t.notices, timeout);
    let held = broker.read_all_committed(&t.held, timeout);
    let dlq = broker.read_all_committed(&t.dlq, timeout);

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut notice_ids = BTreeSet::new();
    let mut notice_accounts = BTreeSet::new();
    for r in &notices {
        let v = json(r);
        let id = v["notice_id"].as_str().unwrap().to_string();
        let bad = super::schemas::errors(&schemas.notice, &v);
        assert!(bad.is_empty(), "notice {id} breaks schemas/reset-notice.v1.schema.json: {bad:?}");
        assert_eq!(header_str(r, "notice_id"), id);
        assert!(notice_ids.insert(id.clone()), "duplicate notice_id {id}");
        notice_accounts.insert(v["account_id"].as_str().unwrap().to_string());
        *seen.entry(v["trigger"]["event_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    let mut held_accounts = BTreeSet::new();
    let mut held_ids = BTreeSet::new();
    for r in &held {
        let v = json(r);
        let bad = super::schemas::errors(&schemas.held, &v);
        assert!(bad.is_empty(), "held record breaks schemas/held-record.v1.schema.json: {bad:?}");
        let id = v["notice_id"].as_str().unwrap().to_string();
        assert!(!notice_ids.contains(&id), "a decision is both sent and held: {id}");
        assert!(held_ids.insert(id.clone()), "decision {id} held twice");
        held_accounts.insert(v["account_id"].as_str().unwrap().to_string());
        *seen.entry(v["trigger"]["event_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    let by_coords: HashMap<(i32, i64), &Input> = coords.iter().copied().zip(inputs.iter()).collect();
    let mut dlq_coords = BTreeSet::new();
    let mut dlq_reasons: BTreeMap<String, usize> = BTreeMap::new();
    for r in &dlq {
        let headers: serde_json::Map<String, serde_json::Value> = r
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    serde_json::Value::String(String::from_utf8_lossy(v.as_deref().unwrap_or(&[])).into_owned()),
                )
            })
            .collect();
        let bad = super::schemas::errors(&schemas.dlq_headers, &serde_json::Value::Object(headers));
        assert!(bad.is_empty(), "DLQ headers break schemas/dlq-record.v1.schema.json: {bad:?}");
        assert_eq!(header_str(r, "source_topic"), t.input);
        let p: i32 = header_str(r, "source_partition").parse().unwrap();
        let o: i64 = header_str(r, "source_offset").parse().unwrap();
        assert!(dlq_coords.insert((p, o)), "two DLQ records for input {p}/{o}");
        let original = by_coords.get(&(p, o)).unwrap_or_else(|| panic!("DLQ record points at unknown input {p}/{o}"));
        let payload = r.payload.as_deref().unwrap_or(&[]);
        if r.header("truncated").flatten() == Some(&b"true"[..]) {
            assert_eq!(
                header_str(r, "original_bytes"),
                original.bytes.len().to_string(),
                "original_bytes of the truncated DLQ record of {p}/{o}"
            );
            assert!(payload.len() < original.bytes.len(), "a truncated DLQ payload is shorter than the input");
            assert!(original.bytes.starts_with(payload), "a truncated DLQ payload is a prefix of the input bytes");
        } else {
            assert_eq!(payload, &original.bytes[..], "DLQ payload of {p}/{o} must be the original bytes");
        }
        let reason = header_str(r, "reason").to_string();
        assert_eq!(Expect::Dlq(Box::leak(reason.clone().into_boxed_str())), original.expect, "reason of {p}/{o}");
        assert!(!header_str(r, "detail").is_empty());
        *dlq_reasons.entry(reason).or_default() += 1;
        if let Some(id) = &original.event_id {
            *seen.entry(id.clone()).or_default() += 1;
        }
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(20).collect();
    assert!(dups.is_empty(), "event_ids with more than one outcome: {dups:?}");

    let expected_dlq = inputs.iter().filter(|i| matches!(i.expect, Expect::Dlq(_))).count();
    let missing_dlq: Vec<_> = inputs
        .iter()
        .zip(coords)
        .filter(|(i, c)| matches!(i.expect, Expect::Dlq(_)) && !dlq_coords.contains(c))
        .map(|(_, c)| *c)
        .take(10)
        .collect();
    assert_eq!(dlq.len(), expected_dlq, "DLQ records {dlq_reasons:?}; first inputs without one: {missing_dlq:?}");
    let mut missing = Vec::new();
    for i in inputs {
        match i.expect {
            Expect::Notice if !notice_accounts.contains(&i.key) => missing.push(i.key.clone()),
            Expect::Decision if !(notice_accounts.contains(&i.key) ^ held_accounts.contains(&i.key)) => {
                missing.push(i.key.clone())
            }
            Expect::NoAction => {
                if let Some(id) = &i.event_id {
                    assert!(!seen.contains_key(id), "no-action event {id} has an output");
                }
            }
            _ => {}
        }
    }
    assert!(
        missing.is_empty(),
        "{} decided accounts without exactly one notice-or-held outcome (lost outcomes), first: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let decided = inputs.iter().filter(|i| matches!(i.expect, Expect::Notice | Expect::Decision)).count();
    assert_eq!(notices.len() + held.len(), decided, "one decision per decided account");
    Outputs { notices, held, dlq, notice_accounts, held_accounts }
}
