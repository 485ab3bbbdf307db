//! End-to-end tests of `resetguard run` on a real Apache Kafka broker (started by the test on
//! loopback): every input event gets exactly one outcome across the output topics, notices are
//! exactly the expected set with no duplicate `notice_id`, DLQ records keep the original bytes and
//! say why and where from; SIGKILL crashes and SIGTERM shutdowns lose and duplicate nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kafka::{block_on, produce_one_async, unique_name, KafkaBroker, Record};
use rdkafka::producer::{FutureProducer, FutureRecord};
use resetguard::config::ConfigFile;
use resetguard::core::event::format_rfc3339_ms;
use resetguard::kafka::Status;
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 3;

struct Topics {
    input: String,
    notices: String,
    held: String,
    dlq: String,
    shadow: String,
    group: String,
}

impl Topics {
    fn create(broker: &KafkaBroker, tag: &str) -> Topics {
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
    fn write_config(&self, broker: &KafkaBroker, dir: &Path, txn_id: &str, policy_extra: &str) -> PathBuf {
        std::fs::write(dir.join("policy.toml"), format!("version = \"e2e-1\"\n{policy_extra}")).unwrap();
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
create = true
[pipeline]
group_id = "{group}"
transactional_id = "{txn_id}"
commit_interval = "100ms"
drain_timeout = "20s"
max_batch = {max_batch}
[http]
listen = "127.0.0.1:0"
"#,
            bootstrap = broker.bootstrap,
            input = self.input,
            notices = self.notices,
            held = self.held,
            dlq = self.dlq,
            shadow = self.shadow,
            group = self.group,
            max_batch = if policy_extra.is_empty() { 50_000 } else { 100 },
        );
        let path = dir.join("resetguard.toml");
        std::fs::write(&path, cfg).unwrap();
        path
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn ev(id: &str, account: &str, t_ms: i64, source: &str, signal: &str, risk: f64) -> Vec<u8> {
    format!(
        r#"{{"event_id":"{id}","account_id":"{account}","occurred_at":"{}","source":"{source}","signal":"{signal}","risk":{risk}}}"#,
        format_rfc3339_ms(t_ms)
    )
    .into_bytes()
}

/// One input message, its partition (by account, so an account's events stay in order) and what
/// must become of it.
#[derive(Clone)]
struct Input {
    key: String,
    bytes: Vec<u8>,
    partition: i32,
    expect: Expect,
    event_id: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
enum Expect {
    NoAction,
    Notice,
    /// Notice or held: decided, and the breaker may refuse.
    Decision,
    Dlq(&'static str),
}

fn partition_of(account: &str) -> i32 {
    (account.bytes().map(u32::from).sum::<u32>() % PARTITIONS as u32) as i32
}

fn input(account: &str, bytes: Vec<u8>, expect: Expect, event_id: Option<&str>) -> Input {
    Input { key: account.to_string(), bytes, partition: partition_of(account), expect, event_id: event_id.map(str::to_string) }
}

fn produce(broker: &KafkaBroker, topic: &str, inputs: &[Input]) -> Vec<(i32, i64)> {
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
    let _ = produce_one_async; // the harness helper is used by other tests
    out
}

/// A known mix: ordinary events, takeovers, invalid, duplicate and late events, and a spike.
fn mixed_inputs(spike: usize) -> Vec<Input> {
    let t = now_ms() - 60_000;
    let mut v = Vec::new();
    for i in 0..300 {
        let (a, id) = (format!("ord-{i}"), format!("ord-e{i}"));
        v.push(input(&a, ev(&id, &a, t + i, "auth-service", "new_device", 0.3), Expect::NoAction, Some(&id)));
    }
    for k in 0..10 {
        let a = format!("ato-{k}");
        let (id1, id2) = (format!("ato-e{k}a"), format!("ato-e{k}b"));
        v.push(input(&a, ev(&id1, &a, t + 1000 + k, "auth-service", "credential_stuffing", 0.95), Expect::NoAction, Some(&id1)));
        v.push(input(&a, ev(&id2, &a, t + 1500 + k, "device-intel", "impossible_travel", 0.9), Expect::Notice, Some(&id2)));
    }
    let bad: [(&str, Vec<u8>); 5] = [
        ("malformed_json", b"{\"event_id\":".to_vec()),
        ("risk_out_of_range", ev("bad-risk", "bad-1", t, "auth-service", "new_device", 1.5)),
        ("unknown_signal", ev("bad-signal", "bad-2", t, "auth-service", "telepathy", 0.5)),
        ("missing_field", br#"{"event_id":"bad-missing","account_id":"bad-3","source":"s","signal":"new_device","risk":0.1}"#.to_vec()),
        ("not_utf8", vec![0xff, 0xfe, 0x00]),
    ];
    for (i, (reason, bytes)) in bad.into_iter().enumerate() {
        v.push(input(&format!("bad-{i}"), bytes, Expect::Dlq(reason), None));
    }
    for i in 0..spike {
        let (a, id) = (format!("spike-{i}"), format!("spike-e{i}"));
        v.push(input(&a, ev(&id, &a, t + 2000 + i as i64, "buggy-model", "breached_password", 1.0), Expect::Decision, Some(&id)));
    }
    v
}

/// Re-sends of earlier events (duplicates) and events far behind the watermark (late); sent after
/// the first batch is consumed-ordered behind it within each partition.
fn followups(first: &[Input]) -> Vec<Input> {
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
        v.push(input(&a, ev(&id, &a, old, "auth-service", "new_device", 0.2), Expect::Dlq("behind_watermark"), Some(&id)));
    }
    v
}

fn header_str<'a>(r: &'a Record, name: &str) -> &'a str {
    r.header(name).flatten().map(|b| std::str::from_utf8(b).unwrap()).unwrap_or_else(|| panic!("header {name} missing"))
}

fn json(r: &Record) -> serde_json::Value {
    serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap()
}

/// Reads all outputs and checks the tally. Returns (notice accounts, held accounts).
fn check_outputs(broker: &KafkaBroker, t: &Topics, inputs: &[Input], coords: &[(i32, i64)]) -> (BTreeSet<String>, BTreeSet<String>) {
    let timeout = Duration::from_secs(60);
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
        assert_eq!(header_str(r, "notice_id"), id);
        assert!(notice_ids.insert(id.clone()), "duplicate notice_id {id}");
        assert_eq!(r.key_str().unwrap(), v["account_id"].as_str().unwrap());
        notice_accounts.insert(v["account_id"].as_str().unwrap().to_string());
        *seen.entry(v["trigger"]["event_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    let mut held_accounts = BTreeSet::new();
    for r in &held {
        let v = json(r);
        assert!(!notice_ids.contains(v["notice_id"].as_str().unwrap()), "a decision is both sent and held");
        held_accounts.insert(v["account_id"].as_str().unwrap().to_string());
        assert!(!header_str(r, "held_reason").is_empty());
        *seen.entry(v["trigger"]["event_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    // DLQ: original bytes untouched, reason and coordinates in headers.
    let by_coords: HashMap<(i32, i64), &Input> = coords.iter().copied().zip(inputs.iter()).collect();
    let mut dlq_reasons: BTreeMap<String, usize> = BTreeMap::new();
    for r in &dlq {
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
                assert!(notice_accounts.contains(&i.key) ^ held_accounts.contains(&i.key), "{} must be sent xor held", i.key)
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

fn wait_committed(broker: &KafkaBroker, t: &Topics, total: i64, timeout: Duration) {
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

#[test]
fn every_event_gets_exactly_one_outcome_and_the_spike_is_held() {
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "e2e");
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = t.write_config(broker, dir.path(), &unique_name("e2e-txn"), "");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    let settings = toml::from_str::<ConfigFile>(&text).unwrap().validate(dir.path()).unwrap();
    let burst = settings.policy.breaker.cell_burst as usize;
    let floor = settings.policy.breaker.spike_floor as usize;

    let first = mixed_inputs(200);
    let mut coords = produce(broker, &t.input, &first);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let status = Arc::new(Status::default());
    let token = CancellationToken::new();
    let service = rt.spawn(resetguard::app::run(settings, prometheus::Registry::new(), status.clone(), token.clone()));
    // Follow-ups only after the first batch is committed, so duplicates and late events come after
    // what they duplicate or lag behind.
    wait_committed(broker, &t, first.len() as i64, Duration::from_secs(90));
    let second = followups(&first);
    coords.extend(produce(broker, &t.input, &second));
    let all: Vec<Input> = first.iter().chain(second.iter()).cloned().collect();
    wait_committed(broker, &t, all.len() as i64, Duration::from_secs(60));
    token.cancel();
    rt.block_on(service).unwrap().unwrap();

    let (notices, held) = check_outputs(broker, &t, &all, &coords);
    let spike_notices = notices.iter().filter(|a| a.starts_with("spike-")).count();
    assert_eq!(spike_notices, floor.min(burst), "notices escaping from the spiking source");
    assert_eq!(held.len(), 200 - spike_notices);
    assert_eq!(notices.iter().filter(|a| a.starts_with("ato-")).count(), 10);
    // The in-process status counted the no-action outcomes: all outcomes add up to the inputs.
    let s = &status;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(load(&s.consumed) as usize, all.len());
    assert_eq!((load(&s.notices) + load(&s.held) + load(&s.dlq) + load(&s.no_action)) as usize, all.len());
    assert_eq!(load(&s.no_action) as usize, all.iter().filter(|i| i.expect == Expect::NoAction).count());
}

/// The crash tests check that state survives restarts: the breaker (held in memory until the
/// durable-state issue) must not trip on their 500 takeovers in a few seconds. They also commit
/// every 100 messages, so a run spans hundreds of transactions and kills land mid-stream.
const NO_TRIP: &str = "[breaker]\nglobal_rate_per_minute = 1000000\nglobal_burst = 100000\ncell_rate_per_minute = 1000000\ncell_burst = 100000\nspike_floor = 1000000\nglobal_spike_floor = 1000000\n";

fn spawn_service(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_resetguard"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info,rdkafka=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting resetguard run")
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} failed");
}

/// Ordinary traffic with takeovers whose two events straddle the crash points, and duplicates.
fn crash_inputs(n: usize) -> Vec<Input> {
    let t = now_ms() - 120_000;
    let mut v = Vec::with_capacity(n);
    let mut i = 0usize;
    while v.len() < n {
        let a = format!("acct-{}", i % 20_000);
        if i % 100 == 7 {
            // A takeover: two strong signals, far apart in the stream (different commits).
            let a = format!("ato-{i}");
            let (id1, id2) = (format!("c-{i}a"), format!("c-{i}b"));
            v.push(input(&a, ev(&id1, &a, t + i as i64, "auth-service", "credential_stuffing", 0.95), Expect::NoAction, Some(&id1)));
            v.push(input(&a, ev(&id2, &a, t + i as i64 + 5, "device-intel", "impossible_travel", 0.9), Expect::Notice, Some(&id2)));
        } else if i % 250 == 3 && v.len() > 10 {
            let mut d = v[v.len() - 10].clone();
            if d.expect == Expect::NoAction && d.event_id.is_some() {
                d.expect = Expect::Dlq("event_id_seen");
                d.event_id = None;
                v.push(d);
            }
        } else {
            let id = format!("c-{i}");
            v.push(input(&a, ev(&id, &a, t + i as i64, "auth-service", "failed_login", 0.2), Expect::NoAction, Some(&id)));
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

#[test]
fn sigkill_three_times_loses_and_duplicates_nothing() {
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "crash");
    let dir = tempfile::tempdir().unwrap();
    let cfg = t.write_config(broker, dir.path(), &unique_name("crash-txn"), NO_TRIP);
    let log = dir.path().join("service.log");
    let inputs = crash_inputs(50_000);
    let coords = produce(broker, &t.input, &inputs);
    let total = inputs.len() as i64;
    let mut rng = common::events::Rng::new(now_ms() as u64);
    let mut kill_points = Vec::new();
    for round in 0..3 {
        let mut child = spawn_service(&cfg, &log);
        // Kill at a random point after at least some progress in this round.
        let target = total * (20 + 25 * round + rng.below(15) as i64) / 100;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let done: i64 = broker.committed_offsets(&t.group, &t.input).iter().map(|(_, o)| o.unwrap_or(0)).sum();
            if done >= target {
                break;
            }
            assert!(child.try_wait().unwrap().is_none(), "service exited early; log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            assert!(Instant::now() < deadline, "no progress to {target} (at {done})");
            std::thread::sleep(Duration::from_millis(20 + rng.below(50)));
        }
        signal(&child, "-KILL");
        let _ = child.wait();
        let at: i64 = broker.committed_offsets(&t.group, &t.input).iter().map(|(_, o)| o.unwrap_or(0)).sum();
        kill_points.push(at);
    }
    eprintln!("SIGKILLed at committed offsets {kill_points:?} of {total}");
    assert!(kill_points.iter().all(|&k| k < total), "every kill must land before the end of the input: {kill_points:?}");
    let mut child = spawn_service(&cfg, &log);
    wait_committed(broker, &t, total, Duration::from_secs(180));
    signal(&child, "-TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "exit after SIGTERM: {status}");
    let (notices, _) = check_outputs(broker, &t, &inputs, &coords);
    let expected: BTreeSet<String> = inputs.iter().filter(|i| i.expect == Expect::Notice).map(|i| i.key.clone()).collect();
    assert_eq!(notices, expected, "the notice set equals the expected set");
}

#[test]
fn sigterm_drains_then_restart_resumes_without_reprocessing() {
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "term");
    let dir = tempfile::tempdir().unwrap();
    let cfg = t.write_config(broker, dir.path(), &unique_name("term-txn"), NO_TRIP);
    let log = dir.path().join("service.log");
    let inputs = crash_inputs(20_000);
    let coords = produce(broker, &t.input, &inputs);
    let total = inputs.len() as i64;

    let mut child = spawn_service(&cfg, &log);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done: i64 = broker.committed_offsets(&t.group, &t.input).iter().map(|(_, o)| o.unwrap_or(0)).sum();
        if done >= total / 3 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(&child, "-TERM");
    let exit_deadline = Instant::now() + Duration::from_secs(25); // drain_timeout 20 s + process exit
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < exit_deadline, "did not exit within the drain timeout");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "SIGTERM must exit 0, got {status}; log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    // No open transaction left: the output topics are stable (LSO == HWM) right away.
    let before = broker.read_all_committed(&t.notices, Duration::from_secs(10)).len()
        + broker.read_all_committed(&t.held, Duration::from_secs(10)).len()
        + broker.read_all_committed(&t.dlq, Duration::from_secs(10)).len();
    let committed: i64 = broker.committed_offsets(&t.group, &t.input).iter().map(|(_, o)| o.unwrap_or(0)).sum();
    assert!(committed >= total / 3 && committed <= total);

    let mut child = spawn_service(&cfg, &log);
    wait_committed(broker, &t, total, Duration::from_secs(120));
    signal(&child, "-TERM");
    assert!(child.wait().unwrap().success());
    // check_outputs asserts no event_id has two outcomes: nothing committed was reprocessed.
    let (notices, _) = check_outputs(broker, &t, &inputs, &coords);
    let expected: BTreeSet<String> = inputs.iter().filter(|i| i.expect == Expect::Notice).map(|i| i.key.clone()).collect();
    assert_eq!(notices, expected);
    assert!(before > 0, "the first run produced outputs before SIGTERM");
}

/// The brake must not forget it was pulled: a crash loop during an incident must not let the
/// mass reset through one burst at a time.
#[test]
fn breaker_stays_open_through_five_sigkill_restarts_while_the_spike_goes_on() {
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "loop");
    let dir = tempfile::tempdir().unwrap();
    let cfg = t.write_config(broker, dir.path(), &unique_name("loop-txn"), "");
    let log = dir.path().join("service.log");
    let spike = |from: usize, n: usize| -> Vec<Input> {
        let t0 = now_ms();
        (from..from + n)
            .map(|i| {
                let (a, id) = (format!("victim-{i}"), format!("v-{i}"));
                input(&a, ev(&id, &a, t0 + i as i64, "buggy-model", "breached_password", 1.0), Expect::Decision, Some(&id))
            })
            .collect()
    };
    let mut all = spike(0, 200);
    let mut coords = produce(broker, &t.input, &all);
    for round in 0..6 {
        let mut child = spawn_service(&cfg, &log);
        wait_committed(broker, &t, all.len() as i64, Duration::from_secs(120));
        // The spike goes on while this incarnation runs.
        let more = spike(all.len(), 100);
        coords.extend(produce(broker, &t.input, &more));
        all.extend(more);
        wait_committed(broker, &t, all.len() as i64, Duration::from_secs(120));
        if round < 5 {
            signal(&child, "-KILL");
            let _ = child.wait();
        } else {
            signal(&child, "-TERM");
            assert!(child.wait().unwrap().success());
        }
    }
    let (notices, held) = check_outputs(broker, &t, &all, &coords);
    let policy = resetguard::core::Policy::default_with_version("x");
    let escaped = u64::from(policy.breaker.spike_floor.min(policy.breaker.cell_burst));
    assert_eq!(all.len(), 200 + 6 * 100);
    assert_eq!(notices.len() as u64, escaped, "only the notices before the first trip escape; none after any restart");
    assert_eq!(held.len(), all.len() - notices.len(), "every other decision of the spiking source is held");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!log_text.contains("panicked"), "service log:\n{log_text}");
}
