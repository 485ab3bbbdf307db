//! Releasing and discarding held notices (`resetguard::held`) on a real Apache Kafka broker: 10,000
//! real held records (the engine holding a spike from two sources), listed, one cell discarded,
//! the rest released exactly once, also when the release is interrupted by its shutdown flag or
//! SIGKILLed (the test binary re-executes itself as the releasing child) and run again.
//!
//! Checked at the end of each run: every held notice is released or discarded, the notices topic
//! has exactly one notice per released notice id (byte-identical to the notice the pipeline would
//! have sent, with `released_by`), none for discarded ones, the control topic one `held/<id>` per
//! notice acted upon, and the audit topic names every released and discarded id exactly once.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kafka::{block_on, unique_name, KafkaBroker, Record};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use resetguard::config::{ConfigFile, Settings, TopicsFile};
use resetguard::core::event::format_rfc3339_ms;
use resetguard::core::policy::Mode;
use resetguard::core::{Engine, Outcome, Policy, TimeMode};
use resetguard::held::{self, HeldError, Selector};
use resetguard::kafka::records::{record_for, Origin};

const HELD: usize = 10_000;
const POLICY_VERSION: &str = "held-e2e-1";
const ACTOR: &str = "ana@sec";
const REASON: &str = "INC-4711: buggy-model spike confirmed real by security on-call";
/// Env var that turns this test binary into the releasing child: the config path.
const CHILD_ENV: &str = "RESETGUARD_HELD_RELEASE_CHILD";
const TIMEOUT: Duration = Duration::from_secs(60);

/// A record to produce: key, payload, headers.
type Raw = (Vec<u8>, Vec<u8>, Vec<(String, Vec<u8>)>);

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// One held decision as the pipeline wrote it, and the notice it would have sent.
struct Held {
    notice_id: String,
    account: String,
    cell: String,
    held_cell: String,
    held_at_ms: i64,
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    notice_json: Vec<u8>,
}

/// Real held records: the engine, fed a spike from two sources (7:3), holds all but the first few
/// decisions of each; stops at exactly `n` held.
fn generate(n: usize, topics: &TopicsFile) -> Vec<Held> {
    let policy = Arc::new(Policy::default_with_version(POLICY_VERSION));
    let mut engine = Engine::new(policy, resetguard::core::hash::Keys::demo(), TimeMode::Wall);
    let t0 = now_ms() - 10 * 60_000;
    let mut out = Vec::with_capacity(n);
    let mut i = 0usize;
    while out.len() < n {
        let source = if i % 10 < 3 { "replayed-feed" } else { "buggy-model" };
        let account = format!("victim-{i:06}");
        let at = t0 + 5 * i as i64;
        let ev = format!(
            r#"{{"event_id":"ev-{i}","account_id":"{account}","occurred_at":"{}","source":"{source}","signal":"breached_password","risk":1.0}}"#,
            format_rfc3339_ms(at)
        );
        let processed = engine.process(ev.as_bytes(), 0, at);
        if let Outcome::Held(d, info) = &processed.outcome {
            let origin = Origin { topic: "in", partition: 0, offset: i as i64, key: None, payload: ev.as_bytes() };
            let rec = record_for(&processed.outcome, &origin, topics, Mode::Live, usize::MAX)
                .expect("a held outcome has a record");
            assert_eq!(rec.topic, topics.held);
            out.push(Held {
                notice_id: d.notice_id.clone(),
                account: d.account_id.clone(),
                cell: d.cell.clone(),
                held_cell: info.cell.clone(),
                held_at_ms: at,
                key: rec.key.clone(),
                payload: rec.payload.to_vec(),
                headers: rec
                    .headers
                    .iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect(),
                notice_json: d.notice_json(),
            });
        }
        i += 1;
    }
    out
}

struct Fixture {
    _dir: tempfile::TempDir,
    config: PathBuf,
    settings: Settings,
    held: Vec<Held>,
}

impl Fixture {
    /// Topics on the shared broker, a config file pointing at them, and `HELD` held records on
    /// the held topic (plus `garbage` unreadable records).
    fn new(broker: &KafkaBroker, tag: &str, garbage: usize) -> Fixture {
        let name = |what: &str| unique_name(&format!("{tag}-{what}"));
        let (held_t, notices, shadow, control, audit) =
            (name("held"), name("notices"), name("shadow"), name("control"), name("audit"));
        broker.create_topic(&held_t, 3);
        broker.create_topic(&notices, 3);
        broker.create_topic(&shadow, 1);
        broker.create_topic_with_config(&control, 1, &[("cleanup.policy", "compact")]);
        broker.create_topic(&audit, 2);
        let changelog = name("changelog");
        broker.create_topic_with_config(&changelog, 6, &[("cleanup.policy", "compact")]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.toml"), format!("version = \"{POLICY_VERSION}\"\n")).unwrap();
        std::fs::write(dir.path().join("deployment.secret"), "held-release-test-secret-5d1c8e7a90b3f246").unwrap();
        let cfg = format!(
            r#"
policy = "policy.toml"
[kafka]
"bootstrap.servers" = "{bootstrap}"
"broker.address.family" = "v4"
"transaction.timeout.ms" = "10000"
"message.timeout.ms" = "9000"
[topics]
input = ["{input}"]
notices = "{notices}"
held = "{held_t}"
dlq = "{dlq}"
shadow = "{shadow}"
control = "{control}"
audit = "{audit}"
changelog = "{changelog}"
[pipeline]
group_id = "{group}"
transactional_id = "{txn}"
[secret]
file = "deployment.secret"
"#,
            bootstrap = broker.bootstrap,
            input = name("in"),
            dlq = name("dlq"),
            group = name("group"),
            txn = name("txn"),
        );
        let config = dir.path().join("resetguard.toml");
        std::fs::write(&config, cfg).unwrap();
        let settings = load(&config);
        let held = generate(HELD, &settings.topics);
        let mut records: Vec<Raw> =
            held.iter().map(|h| (h.key.clone(), h.payload.clone(), h.headers.clone())).collect();
        for g in 0..garbage {
            records.push((
                format!("garbage-{g}").into_bytes(),
                b"{\"schema\":\"resetguard.held.v1\",\"oops\"".to_vec(),
                Vec::new(),
            ));
        }
        produce(broker, &settings.topics.held, &records);
        Fixture { _dir: dir, config, settings, held }
    }

    fn ids_where(&self, f: impl Fn(&Held) -> bool) -> BTreeSet<String> {
        self.held.iter().filter(|h| f(h)).map(|h| h.notice_id.clone()).collect()
    }

    /// Held ids a `cell` selector picks: the source's cell or the cell that held it.
    fn in_cell(&self, cell: &str) -> BTreeSet<String> {
        self.ids_where(|h| h.cell == cell || h.held_cell == cell)
    }

    /// Puts notices for these held ids on the notices topic, as the pipeline would have sent them
    /// (e.g. sent before an earlier release was recorded).
    fn seed_notices(&self, broker: &KafkaBroker, ids: &BTreeSet<String>) {
        let records: Vec<_> = self
            .held
            .iter()
            .filter(|h| ids.contains(&h.notice_id))
            .map(|h| {
                let headers = vec![
                    ("notice_id".to_string(), h.notice_id.clone().into_bytes()),
                    ("schema".to_string(), b"resetguard.notice.v1".to_vec()),
                    ("policy_version".to_string(), POLICY_VERSION.as_bytes().to_vec()),
                    ("mode".to_string(), b"live".to_vec()),
                ];
                (h.key.clone(), h.notice_json.clone(), headers)
            })
            .collect();
        assert_eq!(records.len(), ids.len());
        produce(broker, &self.settings.topics.notices, &records);
    }
}

fn load(config: &Path) -> Settings {
    let text = std::fs::read_to_string(config).unwrap();
    let dir = config.parent().unwrap();
    toml::from_str::<ConfigFile>(&text).unwrap().validate(dir).unwrap()
}

fn produce(broker: &KafkaBroker, topic: &str, records: &[Raw]) {
    let producer: FutureProducer = broker.producer_config().set("linger.ms", "5").create().unwrap();
    for chunk in records.chunks(5000) {
        let pending: Vec<_> = chunk
            .iter()
            .map(|(k, v, hs)| {
                let mut headers = OwnedHeaders::new();
                for (hk, hv) in hs {
                    headers = headers.insert(Header { key: hk, value: Some(&hv[..]) });
                }
                let rec: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(topic).key(&k[..]).payload(&v[..]).headers(headers);
                let fut = producer.send_result(rec).map_err(|(e, _)| e).unwrap();
                async move {
                    match fut.await {
                        Ok(Ok(_)) => {}
                        other => panic!("delivery failed: {:?}", other.err()),
                    }
                }
            })
            .collect();
        for p in pending {
            block_on(p);
        }
    }
}

fn header<'a>(r: &'a Record, name: &str) -> Option<&'a str> {
    r.header(name).flatten().map(|b| std::str::from_utf8(b).unwrap())
}

fn json(r: &Record) -> serde_json::Value {
    serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap()
}

/// Progress of a release, from the watermarks of the notices topic: the high watermark (records
/// in the log, committed or not, and transaction markers) and the last stable offset.
struct Progress {
    uncommitted: BaseConsumer,
    committed: BaseConsumer,
    topic: String,
    partitions: i32,
}

impl Progress {
    fn new(broker: &KafkaBroker, topic: &str) -> Progress {
        let make = |isolation: &str| -> BaseConsumer {
            broker.base_config().set("isolation.level", isolation).create().unwrap()
        };
        Progress {
            uncommitted: make("read_uncommitted"),
            committed: make("read_committed"),
            topic: topic.to_string(),
            partitions: broker.partition_count(topic),
        }
    }

    fn sum(&self, c: &BaseConsumer) -> i64 {
        (0..self.partitions).map(|p| c.fetch_watermarks(&self.topic, p, Duration::from_secs(10)).unwrap().1).sum()
    }

    /// (high watermark, last stable offset), summed over partitions.
    fn now(&self) -> (i64, i64) {
        (self.sum(&self.uncommitted), self.sum(&self.committed))
    }

    /// Waits until the log holds `at_least` records and, with `open_txn`, a transaction is open
    /// with at least 10 records in it.
    fn wait_for(&self, at_least: i64, open_txn: bool, mut child: Option<&mut std::process::Child>, log: &Path) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let (hwm, lso) = self.now();
            if hwm >= at_least && (!open_txn || hwm - lso >= 10) {
                return;
            }
            if let Some(c) = child.as_deref_mut() {
                assert!(
                    c.try_wait().unwrap().is_none(),
                    "the releasing child exited early; log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "the release made no progress to {at_least} (at {hwm}, stable {lso})");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The end state after every held notice was released or discarded.
fn check_final(broker: &KafkaBroker, fx: &Fixture, discarded: &BTreeSet<String>, seeded: &BTreeSet<String>) {
    let all: BTreeSet<String> = fx.held.iter().map(|h| h.notice_id.clone()).collect();
    assert_eq!(all.len(), HELD, "notice ids are distinct");
    let released: BTreeSet<String> = all.difference(discarded).cloned().collect();

    let listing = held::list(&fx.settings, &Selector::everything()).unwrap();
    assert_eq!(listing.pending, 0, "nothing left pending");
    assert_eq!(listing.released + listing.discarded, HELD, "released + discarded == held");
    assert_eq!((listing.released, listing.discarded), (released.len(), discarded.len()));

    // Notices: exactly one per released id, none for discarded ones; the pipeline's bytes.
    let by_id: HashMap<&str, &Held> = fx.held.iter().map(|h| (h.notice_id.as_str(), h)).collect();
    let notices = broker.read_all_committed(&fx.settings.topics.notices, TIMEOUT);
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for r in &notices {
        let id = header(r, "notice_id").expect("notice_id header").to_string();
        let h = by_id.get(id.as_str()).unwrap_or_else(|| panic!("notice for unknown id {id}"));
        assert_eq!(
            r.payload.as_deref().unwrap(),
            &h.notice_json[..],
            "a released notice is the pipeline's notice, byte for byte"
        );
        assert_eq!(r.key.as_deref().unwrap(), h.account.as_bytes());
        assert_eq!(header(r, "schema"), Some("resetguard.notice.v1"));
        assert_eq!(header(r, "policy_version"), Some(POLICY_VERSION));
        assert_eq!(header(r, "mode"), Some("live"));
        if !seeded.contains(&id) {
            assert_eq!(header(r, "released_by"), Some(ACTOR));
        }
        *count.entry(id).or_default() += 1;
    }
    let dups: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "{} notice ids sent more than once, e.g. {:?}",
        dups.len(),
        dups.iter().take(3).collect::<Vec<_>>()
    );
    let sent: BTreeSet<String> = count.keys().cloned().collect();
    assert_eq!(sent.len(), released.len(), "one notice per released id");
    assert!(sent == released, "the notices are exactly the released ids");
    assert_eq!(notices.len(), released.len(), "0 duplicate notice ids");

    // Control: one held/<id> per id acted upon, with the right action.
    let control = broker.read_all_committed(&fx.settings.topics.control, TIMEOUT);
    let mut actions: BTreeMap<String, String> = BTreeMap::new();
    for r in &control {
        let id = r.key_str().unwrap().strip_prefix("held/").expect("held/ key").to_string();
        let v = json(r);
        assert_eq!(v["actor"], ACTOR);
        assert!(!v["reason"].as_str().unwrap().is_empty());
        assert!(v["at"].as_str().unwrap().ends_with('Z'));
        assert!(v["instance"].as_str().unwrap().ends_with("-held-actions"));
        assert!(
            actions.insert(id.clone(), v["action"].as_str().unwrap().to_string()).is_none(),
            "two control records for {id}"
        );
    }
    assert_eq!(actions.len(), HELD, "one control record per held notice");
    for (id, a) in &actions {
        let want = if discarded.contains(id) { "discarded" } else { "released" };
        assert_eq!(a, want, "action of {id}");
    }

    // Audit: every release and discard recorded exactly once, with actor, reason and scope.
    let audit = broker.read_all_committed(&fx.settings.topics.audit, TIMEOUT);
    let mut audited: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in &audit {
        let v = json(r);
        assert_eq!(v["actor"], ACTOR);
        assert!(v["scope"].is_object());
        assert!(v["instance"].as_str().unwrap().ends_with("-held-actions"));
        // The same shape as the pipeline's audit records (admin actions).
        serde_json::from_slice::<resetguard::kafka::control::AuditRecord>(r.payload.as_deref().unwrap())
            .expect("an audit record");
        let action = v["action"].as_str().unwrap().to_string();
        assert!(action == "release" || action == "discard");
        for id in v["notice_ids"].as_array().unwrap() {
            *audited.entry((action.clone(), id.as_str().unwrap().to_string())).or_default() += 1;
        }
        if action == "release" {
            for id in v["already_sent"].as_array().map(Vec::as_slice).unwrap_or_default() {
                assert!(seeded.contains(id.as_str().unwrap()), "only seeded notices were already on the topic");
            }
        }
    }
    assert!(audited.values().all(|n| *n == 1), "an id audited twice");
    let audited_release: BTreeSet<String> =
        audited.keys().filter(|(a, _)| a == "release").map(|(_, id)| id.clone()).collect();
    let audited_discard: BTreeSet<String> =
        audited.keys().filter(|(a, _)| a == "discard").map(|(_, id)| id.clone()).collect();
    assert!(audited_release == released, "every release is in the audit topic");
    assert!(&audited_discard == discarded, "every discard is in the audit topic");
}

#[test]
fn list_then_discard_one_cell_records_each_action_once() {
    let broker = KafkaBroker::shared();
    let fx = Fixture::new(broker, "held-list", 3);
    let s = &fx.settings;

    let all = held::list(s, &Selector::default()).unwrap();
    assert_eq!((all.pending, all.released, all.discarded, all.matched), (HELD, 0, 0, HELD));
    assert_eq!(all.items.len(), HELD);
    assert_eq!(all.unreadable, 3, "unreadable records are counted, not listed");
    assert!(all.items.windows(2).all(|w| w[0].held_at <= w[1].held_at), "oldest first");
    assert_eq!(held::list(s, &Selector::everything()).unwrap().pending, HELD);

    let replayed = fx.in_cell("replayed-feed");
    let buggy = fx.in_cell("buggy-model");
    assert!(replayed.len() > 1_000 && buggy.len() > 5_000, "both cells hold: {} / {}", replayed.len(), buggy.len());
    let listed: BTreeSet<String> =
        held::list(s, &Selector::cell("replayed-feed")).unwrap().items.into_iter().map(|i| i.notice_id).collect();
    assert!(listed == replayed, "a cell selector lists exactly that cell");
    // A time range: held_at in [from, to).
    let mid = fx.held[HELD / 2].held_at_ms;
    let range = Selector { from_ms: Some(mid), to_ms: Some(mid + 10_000), ..Selector::default() };
    let expected = fx.held.iter().filter(|h| h.held_at_ms >= mid && h.held_at_ms < mid + 10_000).count();
    assert_eq!(held::list(s, &range).unwrap().pending, expected);
    assert!(expected > 0);

    // Refused: no selection, no actor, no reason. Nothing is written.
    for (sel, actor, reason) in [
        (Selector::default(), ACTOR, REASON),
        (Selector::cell("replayed-feed"), "", REASON),
        (Selector::cell("replayed-feed"), ACTOR, " "),
    ] {
        match held::discard(s, &sel, actor, reason) {
            Err(HeldError::Invalid(_)) => {}
            other => panic!("must be refused: {other:?}"),
        }
    }
    let never = AtomicBool::new(false);
    assert!(matches!(held::release(s, &Selector::default(), ACTOR, REASON, 60, &never), Err(HeldError::Invalid(_))));
    assert!(broker.read_all_committed(&s.topics.control, TIMEOUT).is_empty());

    let report = held::discard(s, &Selector::cell("replayed-feed"), ACTOR, "INC-4711: replayed feed, bogus").unwrap();
    assert_eq!(report.discarded, replayed.len());
    assert_eq!(report.matched, replayed.len());
    assert_eq!(report.unreadable, 3);
    // Again: a no-op that says so.
    let again = held::discard(s, &Selector::cell("replayed-feed"), ACTOR, "again").unwrap();
    assert_eq!((again.discarded, again.already_discarded, again.transactions), (0, replayed.len(), 0));

    let after = held::list(s, &Selector::default()).unwrap();
    assert_eq!((after.pending, after.discarded, after.released), (HELD - replayed.len(), replayed.len(), 0));
    let control = broker.read_all_committed(&s.topics.control, TIMEOUT);
    assert_eq!(control.len(), replayed.len(), "one control record per discarded notice");
    let keys: BTreeSet<String> = control.iter().map(|r| r.key_str().unwrap().to_string()).collect();
    assert_eq!(keys, replayed.iter().map(|id| format!("held/{id}")).collect());
    assert!(control.iter().all(|r| json(r)["action"] == "discarded"));
    let audit = broker.read_all_committed(&s.topics.audit, TIMEOUT);
    assert_eq!(audit.len(), 1, "one audit record for a discard of a few thousand");
    let a = json(&audit[0]);
    assert_eq!((a["action"].as_str(), a["actor"].as_str()), (Some("discard"), Some(ACTOR)));
    assert_eq!(a["scope"]["cell"], "replayed-feed");
    assert_eq!(a["notice_ids"].as_array().unwrap().len(), replayed.len());
    assert!(broker.read_all_committed(&s.topics.notices, TIMEOUT).is_empty(), "a discard sends nothing");
}

#[test]
fn release_stopped_by_its_flag_then_run_again_sends_each_notice_once() {
    let broker = KafkaBroker::shared();
    let fx = Fixture::new(broker, "held-flag", 0);
    let s = fx.settings.clone();
    let discarded = fx.in_cell("replayed-feed");
    assert_eq!(held::discard(&s, &Selector::cell("replayed-feed"), ACTOR, REASON).unwrap().discarded, discarded.len());
    // A few notices already went out (e.g. sent by hand): they must not be sent again.
    let seeded: BTreeSet<String> =
        fx.ids_where(|h| !discarded.contains(&h.notice_id)).into_iter().step_by(997).collect();
    fx.seed_notices(broker, &seeded);
    let to_release = HELD - discarded.len();

    let progress = Progress::new(broker, &s.topics.notices);
    let shutdown = Arc::new(AtomicBool::new(false));
    let release = {
        let (s, shutdown) = (s.clone(), shutdown.clone());
        std::thread::spawn(move || held::release(&s, &Selector::everything(), ACTOR, REASON, 300_000, &shutdown))
    };
    progress.wait_for((to_release / 2) as i64, false, None, Path::new("/dev/null"));
    shutdown.store(true, Ordering::SeqCst);
    let first = release.join().unwrap().unwrap();
    eprintln!("first release (stopped halfway): {first:?}");
    assert!(first.interrupted);
    assert!(first.sent > 0 && first.released() < to_release, "stopped part-way: {first:?}");
    assert_eq!(first.already_discarded, discarded.len());
    assert_eq!(first.released() + first.remaining, to_release);
    let mid = held::list(&s, &Selector::everything()).unwrap();
    assert_eq!(mid.pending, first.remaining, "what was committed is released, the rest pending");

    let never = AtomicBool::new(false);
    let second = held::release(&s, &Selector::everything(), ACTOR, REASON, 600_000, &never).unwrap();
    eprintln!("second release: {second:?}");
    assert!(!second.interrupted);
    assert_eq!(second.remaining, 0);
    assert_eq!(second.already_released, first.released());
    assert_eq!(first.sent + second.sent + first.already_sent + second.already_sent, to_release);
    assert_eq!(first.already_sent + second.already_sent, seeded.len(), "seeded notices are recorded, not resent");

    // A third run has nothing to do and says so.
    let third = held::release(&s, &Selector::everything(), ACTOR, REASON, 600_000, &never).unwrap();
    assert_eq!((third.sent, third.already_sent, third.already_released, third.transactions), (0, 0, to_release, 0));
    check_final(broker, &fx, &discarded, &seeded);
}

/// Not a test on its own: the releasing child of `release_sigkilled_twice_then_run_again_...`
/// (this binary re-executed with the config path in `CHILD_ENV`). Without it, it does nothing.
#[test]
fn child_release_until_killed() {
    let Ok(config) = std::env::var(CHILD_ENV) else { return };
    let settings = load(Path::new(&config));
    let never = AtomicBool::new(false);
    let report = held::release(&settings, &Selector::everything(), ACTOR, REASON, 60_000, &never).unwrap();
    eprintln!("child release finished without being killed: {report:?}");
}

fn spawn_child(config: &Path, log: &Path) -> std::process::Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_release_until_killed", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, config)
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("re-executing the test binary")
}

#[test]
fn release_sigkilled_twice_then_run_again_sends_each_notice_once() {
    let broker = KafkaBroker::shared();
    let fx = Fixture::new(broker, "held-kill", 0);
    let s = fx.settings.clone();
    let discarded = fx.in_cell("replayed-feed");
    held::discard(&s, &Selector::cell("replayed-feed"), ACTOR, REASON).unwrap();
    let seeded: BTreeSet<String> =
        fx.ids_where(|h| !discarded.contains(&h.notice_id)).into_iter().skip(3).step_by(1201).collect();
    fx.seed_notices(broker, &seeded);
    let to_release = (HELD - discarded.len()) as i64;
    let log = fx._dir.path().join("child.log");
    let progress = Progress::new(broker, &s.topics.notices);

    // Two children, each SIGKILLed part-way while a transaction with notices in it is open.
    for fraction in [25, 55] {
        let mut child = spawn_child(&fx.config, &log);
        progress.wait_for(to_release * fraction / 100, true, Some(&mut child), &log);
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(!status.success(), "the child was killed, not finished");
        let mid = held::list(&s, &Selector::everything()).unwrap();
        eprintln!("SIGKILLed at ~{fraction}%: {} released, {} pending", mid.released, mid.pending);
        assert!(mid.pending > 0, "killed before the end");
    }
    let uncommitted = broker.read_to_end(&s.topics.notices, common::kafka::Isolation::ReadUncommitted, TIMEOUT).len();
    let committed = broker.read_all_committed(&s.topics.notices, TIMEOUT).len();
    eprintln!(
        "notices in the log: {uncommitted}, committed: {committed} (the rest were in transactions cut off by SIGKILL)"
    );
    assert!(uncommitted > committed, "a SIGKILL cut off an open transaction with notices in it");

    let never = AtomicBool::new(false);
    let last = held::release(&s, &Selector::everything(), ACTOR, REASON, 600_000, &never).unwrap();
    eprintln!("final release: {last:?}");
    assert!(!last.interrupted);
    assert!(last.already_released > 0, "the children's committed releases count");
    check_final(broker, &fx, &discarded, &seeded);
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!log_text.contains("panicked"), "child log:\n{log_text}");
}

#[test]
fn a_second_release_fences_the_first_and_each_notice_still_goes_once() {
    let broker = KafkaBroker::shared();
    let fx = Fixture::new(broker, "held-fence", 0);
    let s = fx.settings.clone();
    let discarded = fx.in_cell("replayed-feed");
    held::discard(&s, &Selector::cell("replayed-feed"), ACTOR, REASON).unwrap();
    let to_release = (HELD - discarded.len()) as i64;
    let progress = Progress::new(broker, &s.topics.notices);

    // A slow release (100/s) that an operator starts again at full speed, e.g. from another shell.
    let slow = {
        let s = s.clone();
        std::thread::spawn(move || {
            held::release(&s, &Selector::everything(), ACTOR, REASON, 6_000, &AtomicBool::new(false))
        })
    };
    progress.wait_for(to_release / 10, true, None, Path::new("/dev/null"));
    let fast = held::release(&s, &Selector::everything(), ACTOR, REASON, 600_000, &AtomicBool::new(false)).unwrap();
    eprintln!("second release: {fast:?}");
    assert_eq!(fast.remaining, 0);
    match slow.join().unwrap() {
        Err(HeldError::Fenced(id)) => assert!(id.ends_with("-held-actions"), "{id}"),
        other => panic!("the first release must stop, fenced: {other:?}"),
    }
    check_final(broker, &fx, &discarded, &BTreeSet::new());
}
