//! Running resetguard against the test broker: topics and config per test, known input mixes
//! with the outcome each message must get, and the output checks shared by the pipeline tests.
#![allow(dead_code)]
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::kafka::{block_on, unique_name, KafkaBroker, Record};
use rdkafka::producer::{FutureProducer, FutureRecord};
use resetguard::core::event::format_rfc3339_ms;

pub const PARTITIONS: i32 = 3;

/// The deployment secret of the test services (keys notice_id and the id hashes); every config
/// written here reads it from the file `deployment.secret` beside it.
pub const TEST_SECRET: &str = "e2e-test-deployment-secret-7f3a9c2b41d8e6f0";

/// Writes the test secret beside a config and returns its `[secret]` section.
pub fn secret_section(dir: &Path) -> &'static str {
    std::fs::write(dir.join("deployment.secret"), TEST_SECRET).unwrap();
    "[secret]\nfile = \"deployment.secret\"\n"
}

pub struct Topics {
    pub input: String,
    pub notices: String,
    pub held: String,
    pub dlq: String,
    pub shadow: String,
    pub group: String,
}

impl Topics {
    pub fn create(broker: &KafkaBroker, tag: &str) -> Topics {
        let t = Topics {
            input: unique_name(&format!("{tag}-in")),
            notices: unique_name(&format!("{tag}-notices")),
            held: unique_name(&format!("{tag}-held")),
            dlq: unique_name(&format!("{tag}-dlq")),
            shadow: unique_name(&format!("{tag}-shadow")),
            group: unique_name(&format!("{tag}-group")),
        };
        broker.create_topic(&t.input, PARTITIONS);
        for out in [&t.notices, &t.held, &t.dlq, &t.shadow] {
            broker.create_topic(out, 2);
        }
        t
    }

    /// Writes policy.toml and resetguard.toml into `dir`; returns the config path.
    pub fn write_config(&self, broker: &KafkaBroker, dir: &Path, txn_id: &str, policy_extra: &str) -> PathBuf {
        self.write_instance_config(broker, dir, "resetguard.toml", txn_id, policy_extra, "127.0.0.1:0")
    }

    /// A config for one instance of a fleet: its own file name, transactional id and HTTP address;
    /// the admin token is read from the file `admin.token` in `dir` when it exists.
    pub fn write_instance_config(
        &self,
        broker: &KafkaBroker,
        dir: &Path,
        file: &str,
        txn_id: &str,
        policy_extra: &str,
        listen: &str,
    ) -> PathBuf {
        std::fs::write(dir.join("policy.toml"), format!("version = \"e2e-1\"\n{policy_extra}")).unwrap();
        let admin = if dir.join("admin.token").exists() { "[admin]\ntoken_file = \"admin.token\"\n" } else { "" };
        let secret = secret_section(dir);
        let cfg = format!(
            r#"
policy = "policy.toml"
[kafka]
"bootstrap.servers" = "{bootstrap}"
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
"transaction.timeout.ms" = "10000"
"message.timeout.ms" = "9000"
[topics]
input = ["{input}"]
notices = "{notices}"
held = "{held}"
dlq = "{dlq}"
shadow = "{shadow}"
control = "{shadow}-control"
audit = "{shadow}-audit"
changelog = "{shadow}-changelog"
create = true
[pipeline]
group_id = "{group}"
transactional_id = "{txn_id}"
commit_interval = "100ms"
drain_timeout = "20s"
max_batch = {max_batch}
[http]
listen = "{listen}"
{admin}{secret}"#,
            bootstrap = broker.bootstrap,
            input = self.input,
            notices = self.notices,
            held = self.held,
            dlq = self.dlq,
            shadow = self.shadow,
            group = self.group,
            max_batch = if policy_extra.is_empty() { 50_000 } else { 100 },
        );
        let path = dir.join(file);
        std::fs::write(&path, cfg).unwrap();
        path
    }
}

/// Adds `line` (a `key = value` setting) to the `[pipeline]` table of the config at `path`.
pub fn set_pipeline(path: &Path, line: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let (head, rest) = text.split_once("\n[pipeline]\n").expect("a [pipeline] table");
    std::fs::write(path, format!("{head}\n[pipeline]\n{line}\n{rest}")).unwrap();
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn ev(id: &str, account: &str, t_ms: i64, source: &str, signal: &str, risk: f64) -> Vec<u8> {
    format!(
        r#"{{"event_id":"{id}","account_id":"{account}","occurred_at":"{}","source":"{source}","signal":"{signal}","risk":{risk}}}"#,
        format_rfc3339_ms(t_ms)
    )
    .into_bytes()
}

/// One input message, its partition (by account, so an account's events stay in order) and what
/// must become of it.
#[derive(Clone)]
pub struct Input {
    pub key: String,
    pub bytes: Vec<u8>,
    pub partition: i32,
    pub expect: Expect,
    pub event_id: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
pub enum Expect {
    NoAction,
    Notice,
    /// Notice or held: decided, and the breaker may refuse.
    Decision,
    Dlq(&'static str),
}

pub fn partition_of(account: &str) -> i32 {
    (account.bytes().map(u32::from).sum::<u32>() % PARTITIONS as u32) as i32
}

pub fn input(account: &str, bytes: Vec<u8>, expect: Expect, event_id: Option<&str>) -> Input {
    Input {
        key: account.to_string(),
        bytes,
        partition: partition_of(account),
        expect,
        event_id: event_id.map(str::to_string),
    }
}

pub fn produce(broker: &KafkaBroker, topic: &str, inputs: &[Input]) -> Vec<(i32, i64)> {
    let producer: FutureProducer = broker.producer_config().set("linger.ms", "5").create().unwrap();
    let mut out = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(5000) {
        let pending: Vec<_> = chunk
            .iter()
            .map(|i| {
                let rec: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(topic).key(i.key.as_bytes()).payload(&i.bytes[..]).partition(i.partition);
                let fut = producer.send_result(rec).map_err(|(e, _)| e).unwrap();
                async move {
                    match fut.await {
                        Ok(Ok(d)) => (d.partition, d.offset),
                        other => panic!("delivery failed: {:?}", other.err()),
                    }
                }
            })
            .collect();
        for p in pending {
            out.push(block_on(p));
        }
    }
    out
}

/// A known mix: ordinary events, takeovers, invalid, duplicate and late events, and a spike.
pub fn mixed_inputs(spike: usize) -> Vec<Input> {
    let t = now_ms() - 60_000;
    let mut v = Vec::new();
    for i in 0..300 {
        let (a, id) = (format!("ord-{i}"), format!("ord-e{i}"));
        v.push(input(&a, ev(&id, &a, t + i, "auth-service", "new_device", 0.3), Expect::NoAction, Some(&id)));
    }
    for k in 0..10 {
        let a = format!("ato-{k}");
        let (id1, id2) = (format!("ato-e{k}a"), format!("ato-e{k}b"));
        v.push(input(
            &a,
            ev(&id1, &a, t + 1000 + k, "auth-service", "credential_stuffing", 0.95),
            Expect::NoAction,
            Some(&id1),
        ));
        v.push(input(
            &a,
            ev(&id2, &a, t + 1500 + k, "device-intel", "impossible_travel", 0.9),
            Expect::Notice,
            Some(&id2),
        ));
    }
    let bad: [(&str, Vec<u8>); 5] = [
        ("malformed_json", b"{\"event_id\":".to_vec()),
        ("risk_out_of_range", ev("bad-risk", "bad-1", t, "auth-service", "new_device", 1.5)),
        ("unknown_signal", ev("bad-signal", "bad-2", t, "auth-service", "telepathy", 0.5)),
        (
            "missing_field",
            br#"{"event_id":"bad-missing","account_id":"bad-3","source":"s","signal":"new_device","risk":0.1}"#
                .to_vec(),
        ),
        ("not_utf8", vec![0xff, 0xfe, 0x00]),
    ];
    for (i, (reason, bytes)) in bad.into_iter().enumerate() {
        v.push(input(&format!("bad-{i}"), bytes, Expect::Dlq(reason), None));
    }
    for i in 0..spike {
        let (a, id) = (format!("spike-{i}"), format!("spike-e{i}"));
        v.push(input(
            &a,
            ev(&id, &a, t + 2000 + i as i64, "buggy-model", "breached_password", 1.0),
            Expect::Decision,
            Some(&id),
        ));
    }
    v
}

/// Re-sends of earlier events (duplicates) and events far behind the watermark (late); sent after
/// the first batch is consumed-ordered behind it within each partition.
pub fn followups(first: &[Input]) -> Vec<Input> {
    let mut v = Vec::new();
    for i in first.iter().filter(|i| i.expect == Expect::NoAction).take(5) {
        let mut d = i.clone();
        d.expect = Expect::Dlq("event_id_seen");
        d.event_id = None; // its event_id already has an outcome; this message's outcome is the DLQ record
        v.push(d);
    }
    let old = now_ms() - 30 * 60_000;
    for k in 0..3 {
        // Same accounts as ordinary events, so same partitions, 30 min behind: late.
        let a = format!("ord-{k}");
        let id = format!("late-e{k}");
        v.push(input(
            &a,
            ev(&id, &a, old, "auth-service", "new_device", 0.2),
            Expect::Dlq("behind_watermark"),
            Some(&id),
        ));
    }
    v
}

pub fn header_str<'a>(r: &'a Record, name: &str) -> &'a str {
    r.header(name).flatten().map(|b| std::str::from_utf8(b).unwrap()).unwrap_or_else(|| panic!("header {name} missing"))
}

pub fn json(r: &Record) -> serde_json::Value {
    serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap()
}

/// Reads all outputs and checks the tally. Returns (notice accounts, held accounts).
pub fn check_outputs(
    broker: &KafkaBroker,
    t: &Topics,
    inputs: &[Input],
    coords: &[(i32, i64)],
) -> (BTreeSet<String>, BTreeSet<String>) {
    let timeout = Duration::from_secs(60);
    let schemas = super::schemas::OutputSchemas::load();
    let notices = broker.read_all_committed(&t.notices, timeout);
    let held = broker.read_all_committed(&t.held, timeout);
    let dlq = broker.read_all_committed(&t.dlq, timeout);

    // Every event_id at most once across notice/held triggers and DLQ records.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut notice_ids = BTreeSet::new();
    let mut notice_accounts = BTreeSet::new();
    for r in &notices {
        let v = json(r);
        let id = v["notice_id"].as_str().unwrap().to_string();
        let bad = super::schemas::errors(&schemas.notice, &v);
        assert!(bad.is_empty(), "notice {id} breaks schemas/reset-notice.v1.schema.json: {bad:?}");
        assert_eq!(header_str(r, "notice_id"), id);
        if !notice_ids.insert(id.clone()) {
            let copies: Vec<String> = notices
                .iter()
                .filter(|x| json(x)["notice_id"] == v["notice_id"])
                .map(|x| {
                    format!("partition {} offset {} trigger {}", x.partition, x.offset, json(x)["trigger"]["event_id"])
                })
                .collect();
            let trigger = v["trigger"]["event_id"].as_str().unwrap_or_default();
            let input = inputs.iter().position(|i| i.event_id.as_deref() == Some(trigger));
            let at = input.and_then(|i| coords.get(i));
            eprintln!("the duplicated notice's trigger is input {input:?} at (partition, offset) {at:?}");
            // A second opinion from Kafka's own (Java) read_committed consumer.
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            let out = std::process::Command::new("java")
                .arg("-cp")
                .arg(root.join(".cache/kafka/libs/*"))
                .arg(root.join("tests/java/ReadCommitted.java"))
                .args([&broker.bootstrap, &t.notices])
                .output();
            if let Ok(o) = out {
                let text = String::from_utf8_lossy(&o.stdout);
                let hits: Vec<&str> =
                    text.lines().filter(|l| l.contains(id.as_str())).map(|l| &l[..l.len().min(60)]).collect();
                eprintln!("Java read_committed consumer: {} records, lines with {id}: {hits:?}", text.lines().count());
            }
            panic!("duplicate notice_id {id}: {copies:?} ({} notices in all)", notices.len());
        }
        assert_eq!(r.key_str().unwrap(), v["account_id"].as_str().unwrap());
        notice_accounts.insert(v["account_id"].as_str().unwrap().to_string());
        *seen.entry(v["trigger"]["event_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    let mut held_accounts = BTreeSet::new();
    for r in &held {
        let v = json(r);
        let bad = super::schemas::errors(&schemas.held, &v);
        assert!(bad.is_empty(), "held record breaks schemas/held-record.v1.schema.json: {bad:?}");
        assert!(!notice_ids.contains(v["notice_id"].as_str().unwrap()), "a decision is both sent and held");
        held_accounts.insert(v["account_id"].as_str().unwrap().to_string());
        assert!(!header_str(r, "held_reason").is_empty());
        *seen.entry(v["trigger"]["event_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    // DLQ: original bytes untouched, reason and coordinates in headers.
    let by_coords: HashMap<(i32, i64), &Input> = coords.iter().copied().zip(inputs.iter()).collect();
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
        let original = by_coords.get(&(p, o)).unwrap_or_else(|| panic!("DLQ record points at unknown input {p}/{o}"));
        assert_eq!(r.payload.as_deref().unwrap(), &original.bytes[..], "DLQ payload must be the original bytes");
        let reason = header_str(r, "reason").to_string();
        assert_eq!(Expect::Dlq(Box::leak(reason.clone().into_boxed_str())), original.expect, "reason of {p}/{o}");
        assert!(!header_str(r, "detail").is_empty());
        *dlq_reasons.entry(reason).or_default() += 1;
        if let Some(id) = &original.event_id {
            *seen.entry(id.clone()).or_default() += 1;
        }
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "event_ids with more than one outcome: {dups:?}");

    // Expected sets.
    let expected_dlq = inputs.iter().filter(|i| matches!(i.expect, Expect::Dlq(_))).count();
    assert_eq!(dlq.len(), expected_dlq, "DLQ records: {dlq_reasons:?}");
    for i in inputs {
        match i.expect {
            Expect::Notice => assert!(
                notice_accounts.contains(&i.key),
                "missing notice for {} (held: {}; {} notices, {} held, first notices {:?})",
                i.key,
                held_accounts.contains(&i.key),
                notice_accounts.len(),
                held_accounts.len(),
                notice_accounts.iter().take(5).collect::<Vec<_>>()
            ),
            Expect::Decision => {
                assert!(
                    notice_accounts.contains(&i.key) ^ held_accounts.contains(&i.key),
                    "{} must be sent xor held",
                    i.key
                )
            }
            Expect::NoAction => {
                if let Some(id) = &i.event_id {
                    assert!(!seen.contains_key(id), "no-action event {id} has an output");
                }
            }
            Expect::Dlq(_) => {}
        }
    }
    let decided = inputs.iter().filter(|i| matches!(i.expect, Expect::Notice | Expect::Decision)).count();
    assert_eq!(notices.len() + held.len(), decided, "one decision per decided account");
    (notice_accounts, held_accounts)
}

pub fn wait_committed(broker: &KafkaBroker, t: &Topics, total: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let done: i64 = broker.committed_offsets(&t.group, &t.input).iter().map(|(_, o)| o.unwrap_or(0)).sum();
        if done >= total {
            return;
        }
        assert!(Instant::now() < deadline, "only {done} of {total} input offsets committed in time");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The crash tests check that state survives restarts: the breaker (held in memory until the
/// durable-state issue) must not trip on their 500 takeovers in a few seconds. They also commit
/// every 100 messages, so a run spans hundreds of transactions and kills land mid-stream.
pub const NO_TRIP: &str = "[breaker]\nglobal_rate_per_minute = 1000000\nglobal_burst = 100000\ncell_rate_per_minute = 1000000\ncell_burst = 100000\nspike_floor = 1000000\nglobal_spike_floor = 1000000\n";

/// The log filter of a spawned `resetguard run`: `info,rdkafka=warn`, or `RG_SERVICE_LOG` (a
/// RUST_LOG filter) for diagnosis, e.g. "info,librdkafka=debug" with RG_TEST_KAFKA="debug=cgrp,eos"
/// to see librdkafka's group and transaction steps.
pub fn service_log_filter() -> String {
    std::env::var("RG_SERVICE_LOG").unwrap_or_else(|_| "info,rdkafka=warn".into())
}

pub fn spawn_service(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_resetguard"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", service_log_filter())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting resetguard run")
}

pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} failed");
}

/// Ordinary traffic with takeovers whose two events straddle the crash points, and duplicates.
pub fn crash_inputs(n: usize) -> Vec<Input> {
    let t = now_ms() - 120_000;
    let mut v = Vec::with_capacity(n);
    let mut i = 0usize;
    while v.len() < n {
        let a = format!("acct-{}", i % 20_000);
        if i % 100 == 7 {
            // A takeover: two strong signals, far apart in the stream (different commits).
            let a = format!("ato-{i}");
            let (id1, id2) = (format!("c-{i}a"), format!("c-{i}b"));
            v.push(input(
                &a,
                ev(&id1, &a, t + i as i64, "auth-service", "credential_stuffing", 0.95),
                Expect::NoAction,
                Some(&id1),
            ));
            v.push(input(
                &a,
                ev(&id2, &a, t + i as i64 + 5, "device-intel", "impossible_travel", 0.9),
                Expect::Notice,
                Some(&id2),
            ));
        } else if i % 250 == 3 && v.len() > 10 {
            let mut d = v[v.len() - 10].clone();
            if d.expect == Expect::NoAction && d.event_id.is_some() {
                d.expect = Expect::Dlq("event_id_seen");
                d.event_id = None;
                v.push(d);
            }
        } else {
            let id = format!("c-{i}");
            v.push(input(
                &a,
                ev(&id, &a, t + i as i64, "auth-service", "failed_login", 0.2),
                Expect::NoAction,
                Some(&id),
            ));
        }
        i += 1;
    }
    // Keep takeover pairs apart: move every second event of a takeover 2,000 places later.
    let mut out: Vec<Input> = Vec::with_capacity(v.len());
    let mut delayed: Vec<(usize, Input)> = Vec::new();
    for (idx, x) in v.into_iter().enumerate() {
        if x.expect == Expect::Notice {
            delayed.push((idx + 2000, x));
        } else {
            out.push(x);
        }
        while delayed.first().is_some_and(|(at, _)| *at <= idx) {
            out.push(delayed.remove(0).1);
        }
    }
    out.extend(delayed.into_iter().map(|(_, x)| x));
    out
}
