//! A fleet of resetguard instances in one consumer group on Apache Kafka: manual overrides reach
//! every instance through the control topic and are audited; the global cap holds for the fleet,
//! not per instance; and stopping, killing and adding instances during a run loses and
//! duplicates nothing.

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kafka::KafkaBroker;
use common::service::*;
use resetguard::config::ConfigFile;
use resetguard::kafka::Status;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "fleet-test-admin-token-0123456789";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Instance {
    status: Arc<Status>,
    token: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), resetguard::kafka::PipelineError>>,
    base: String,
    /// Why the instance stopped, if it did on its own.
    stopped: Arc<std::sync::Mutex<Option<String>>>,
}

fn start_instance(
    rt: &tokio::runtime::Runtime,
    broker: &KafkaBroker,
    t: &Topics,
    dir: &Path,
    name: &str,
    policy: &str,
) -> Instance {
    common::trace();
    let port = free_port();
    let path = t.write_instance_config(
        broker,
        dir,
        &format!("{name}.toml"),
        &format!("{}-{name}", t.group),
        policy,
        &format!("127.0.0.1:{port}"),
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let settings = toml::from_str::<ConfigFile>(&text).unwrap().validate(dir).unwrap();
    let status = Arc::new(Status::default());
    let token = CancellationToken::new();
    let stopped = Arc::new(std::sync::Mutex::new(None));
    let run = resetguard::app::run(settings, prometheus::Registry::new(), status.clone(), token.clone());
    let why = stopped.clone();
    let handle = rt.spawn(async move {
        let result = run.await;
        *why.lock().unwrap() = Some(match &result {
            Ok(()) => "stopped without an error".to_string(),
            Err(e) => e.to_string(),
        });
        result
    });
    Instance { status, token, handle, base: format!("http://127.0.0.1:{port}"), stopped }
}

/// Waits until the instances together own all input partitions, each at least one.
fn wait_assigned(instances: &[&Instance], total: usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let counts: Vec<usize> =
            instances.iter().map(|i| i.status.assigned_partitions.load(Ordering::SeqCst)).collect();
        if counts.iter().sum::<usize>() == total
            && counts.iter().all(|&c| c > 0)
            && instances.iter().all(|i| i.status.ready.load(Ordering::SeqCst))
        {
            return;
        }
        for (n, i) in instances.iter().enumerate() {
            if let Some(why) = i.stopped.lock().unwrap().as_ref() {
                panic!("instance {n} stopped before the fleet was assigned: {why}");
            }
        }
        assert!(Instant::now() < deadline, "partitions not spread over the fleet: {counts:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(rt: &tokio::runtime::Runtime, i: Instance) {
    i.token.cancel();
    rt.block_on(i.handle).unwrap().unwrap();
}

fn decisions(from: usize, n: usize, source: &str) -> Vec<Input> {
    let t0 = now_ms();
    (from..from + n)
        .map(|i| {
            let (a, id) = (format!("{source}-acct-{i}"), format!("{source}-e{i}"));
            input(&a, ev(&id, &a, t0 + i as i64, source, "breached_password", 1.0), Expect::Decision, Some(&id))
        })
        .collect()
}

#[test]
fn a_manual_override_reaches_every_instance_and_is_audited() {
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "override");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let a = start_instance(&rt, broker, &t, dir.path(), "a", "");
    let b = start_instance(&rt, broker, &t, dir.path(), "b", "");
    wait_assigned(&[&a, &b], PARTITIONS as usize);

    let client = reqwest::blocking::Client::new();
    let resp = client
        .post(format!("{}/admin/breaker/model-x/open", a.base))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .json(&serde_json::json!({"ttl": "30m", "actor": "alice-sre", "reason": "incident 42: model-x misfires"}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{}", resp.text().unwrap_or_default());
    // The other instance learns it through the control topic.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let cells: serde_json::Value = client
            .get(format!("{}/admin/breaker", b.base))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let state = cells.as_array().unwrap().iter().find(|c| c["cell"] == "model-x").map(|c| c["state"].clone());
        if state == Some(serde_json::json!("forced_open")) {
            break;
        }
        assert!(Instant::now() < deadline, "instance b never saw the override: {cells}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let inputs = decisions(0, 60, "model-x");
    let coords = produce(broker, &t.input, &inputs);
    wait_committed(broker, &t, inputs.len() as i64, Duration::from_secs(60));
    stop(&rt, a);
    stop(&rt, b);
    let (notices, held) = check_outputs(broker, &t, &inputs, &coords);
    assert!(notices.is_empty(), "a forced-open cell sends nothing, on every instance: {notices:?}");
    assert_eq!(held.len(), 60);
    let held_records = broker.read_all_committed(&t.held, Duration::from_secs(30));
    assert!(held_records.iter().all(|r| r.header("held_reason").flatten() == Some(&b"forced_open"[..])));

    let audit = broker.read_all_committed(&format!("{}-audit", t.shadow), Duration::from_secs(30));
    assert_eq!(audit.len(), 1, "one manual action, one audit record");
    let rec: serde_json::Value = serde_json::from_slice(audit[0].payload.as_deref().unwrap()).unwrap();
    assert_eq!(rec["actor"], "alice-sre");
    assert_eq!(rec["action"], "breaker_open");
    assert_eq!(rec["scope"]["cell"], "model-x");
    assert!(rec["reason"].as_str().unwrap().contains("incident 42"));
    let control = broker.read_all_committed(&format!("{}-control", t.shadow), Duration::from_secs(30));
    assert_eq!(control.iter().filter(|r| r.key_str() == Some("override/model-x")).count(), 1);
}

#[test]
fn the_global_cap_holds_for_the_fleet_not_per_instance() {
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "fleetcap");
    let dir = tempfile::tempdir().unwrap();
    // A burst of 30 fleet-wide, refilling at 1 per minute; no spike trips, so only the cap binds.
    let policy = "[breaker]\nglobal_rate_per_minute = 1\nglobal_burst = 30\ncell_rate_per_minute = 1\ncell_burst = 30\nspike_floor = 1000000\nglobal_spike_floor = 1000000\n";
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let started = Instant::now();
    let fleet: Vec<Instance> =
        ["a", "b", "c"].iter().map(|n| start_instance(&rt, broker, &t, dir.path(), n, policy)).collect();
    wait_assigned(&fleet.iter().collect::<Vec<_>>(), PARTITIONS as usize);
    let mut inputs = decisions(0, 100, "src-1");
    inputs.extend(decisions(100, 100, "src-2"));
    inputs.extend(decisions(200, 100, "src-3"));
    let coords = produce(broker, &t.input, &inputs);
    wait_committed(broker, &t, inputs.len() as i64, Duration::from_secs(60));
    for i in &fleet {
        i.token.cancel();
    }
    for i in fleet {
        stop(&rt, i);
    }
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let (notices, held) = check_outputs(broker, &t, &inputs, &coords);
    let budget = 30.0 + minutes.ceil() * 1.0;
    assert!(
        (notices.len() as f64) <= budget,
        "{} notices from the fleet; the fleet-wide budget is {budget} (per-instance caps would allow 3 × 30)",
        notices.len()
    );
    assert_eq!(notices.len() + held.len(), 300);
}

#[test]
fn stopping_killing_and_adding_instances_loses_and_duplicates_nothing() {
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "churn");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("fleet.log");
    let inputs = crash_inputs(100_000);
    let coords = produce(broker, &t.input, &inputs);
    let total = inputs.len() as i64;
    // Every new instance here has a new name, so static membership would only make each stopped
    // or killed instance hold its partitions until its session times out while the next churn
    // action comes 1.5 s later (tests/faults_kills.rs covers static membership).
    let config = |name: &str| {
        let path = t.write_instance_config(
            broker,
            dir.path(),
            &format!("{name}.toml"),
            &format!("{}-{name}", t.group),
            NO_TRIP,
            "127.0.0.1:0",
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\n[pipeline]\n"), "unexpected config layout:\n{text}");
        std::fs::write(&path, text.replacen("\n[pipeline]\n", "\n[pipeline]\nstatic_membership = false\n", 1)).unwrap();
        path
    };
    let mut running: Vec<(String, std::process::Child)> =
        ["a", "b", "c"].iter().map(|n| (n.to_string(), spawn_service(&config(n), &log))).collect();
    let mut next = 0usize;
    let mut actions = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done: i64 = broker.committed_offsets(&t.group, &t.input).iter().map(|(_, o)| o.unwrap_or(0)).sum();
        if done >= total {
            break;
        }
        assert!(Instant::now() < deadline, "fleet stalled at {done} of {total}; actions {actions:?}");
        std::thread::sleep(Duration::from_millis(1500));
        // Round-robin churn: stop one, kill one, add one.
        match next % 3 {
            0 if running.len() > 1 => {
                let (n, c) = running.remove(0);
                signal(&c, "-TERM");
                let mut c = c;
                let _ = c.wait();
                actions.push(format!("stop {n} at {done}"));
            }
            1 if running.len() > 1 => {
                let (n, c) = running.remove(0);
                signal(&c, "-KILL");
                let mut c = c;
                let _ = c.wait();
                actions.push(format!("kill {n} at {done}"));
            }
            _ => {
                let n = format!("n{next}");
                running.push((n.clone(), spawn_service(&config(&n), &log)));
                actions.push(format!("add {n} at {done}"));
            }
        }
        next += 1;
        if running.is_empty() {
            let n = format!("n{next}");
            running.push((n.clone(), spawn_service(&config(&n), &log)));
        }
    }
    for (_, c) in running.iter_mut() {
        signal(c, "-TERM");
    }
    for (_, mut c) in running {
        let _ = c.wait();
    }
    eprintln!("churn: {actions:?}");
    assert!(actions.len() >= 3, "the run must see churn: {actions:?}");
    let (notices, _) = check_outputs(broker, &t, &inputs, &coords);
    let expected: BTreeSet<String> =
        inputs.iter().filter(|i| i.expect == Expect::Notice).map(|i| i.key.clone()).collect();
    assert_eq!(notices, expected, "the same notices as a single uninterrupted run");
}

#[test]
fn after_an_incident_held_notices_are_listed_and_released_once_through_the_admin_api_and_cli() {
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "release");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let a = start_instance(&rt, broker, &t, dir.path(), "a", "");
    wait_assigned(&[&a], PARTITIONS as usize);
    let inputs = decisions(0, 100, "spike-src");
    let coords = produce(broker, &t.input, &inputs);
    wait_committed(broker, &t, inputs.len() as i64, Duration::from_secs(60));
    let (notices, held) = check_outputs(broker, &t, &inputs, &coords);
    assert_eq!(notices.len() + held.len(), 100);
    assert!(!held.is_empty());

    // The CLI sees the same queue (and prints no account ids).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_resetguard"))
        .args(["held", "list", "--cell", "spike-src", "--config"])
        .arg(dir.path().join("a.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listing["pending"].as_u64().unwrap() as usize, held.len());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("spike-src-acct-"), "no account ids in the listing");

    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
    let auth = format!("Bearer {TOKEN}");
    let listed: serde_json::Value = client
        .get(format!("{}/admin/held?cell=spike-src", a.base))
        .header("Authorization", &auth)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(listed["pending"].as_u64().unwrap() as usize, held.len());
    let release = |who: &str| -> serde_json::Value {
        client
            .post(format!("{}/admin/held/release", a.base))
            .header("Authorization", &auth)
            .json(&serde_json::json!({"cell": "spike-src", "actor": who, "reason": "model fixed, victims verified", "rate_per_minute": 600000}))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    let first = release("bob-secops");
    assert_eq!(first["sent"].as_u64().unwrap() as usize, held.len(), "{first}");
    let second = release("bob-secops");
    assert_eq!(second["sent"], 0, "a repeated release is harmless: {second}");
    a.token.cancel();
    rt.block_on(a.handle).unwrap().unwrap();

    let all_notices = broker.read_all_committed(&t.notices, Duration::from_secs(30));
    let ids: BTreeSet<String> = all_notices
        .iter()
        .map(|r| String::from_utf8(r.header("notice_id").flatten().unwrap().to_vec()).unwrap())
        .collect();
    assert_eq!(all_notices.len(), 100, "every decision ends as exactly one notice");
    assert_eq!(ids.len(), 100, "0 duplicate notice ids");
    let audit = broker.read_all_committed(&format!("{}-audit", t.shadow), Duration::from_secs(30));
    assert!(audit.iter().any(|r| String::from_utf8_lossy(r.payload.as_deref().unwrap()).contains("bob-secops")));
}

/// Cells on `instance` from the admin API: name -> (state, cause).
fn cells(client: &reqwest::blocking::Client, instance: &Instance) -> Vec<(String, String, String)> {
    let cells: serde_json::Value = client
        .get(format!("{}/admin/breaker", instance.base))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    cells
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
            (s("cell"), s("state"), s("cause"))
        })
        .collect()
}

#[test]
fn a_fleet_trips_like_one_instance() {
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "fleettrip");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let policy = "[breaker]\nspike_floor = 30\ncell_burst = 50\nopen_duration = \"30m\"\n";
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let fleet: Vec<Instance> =
        ["a", "b", "c"].iter().map(|n| start_instance(&rt, broker, &t, dir.path(), n, policy)).collect();
    wait_assigned(&fleet.iter().collect::<Vec<_>>(), PARTITIONS as usize);

    // Wave 1: a buggy source flags 200 accounts that all live on partition 0, so one instance
    // sees the spike and trips.
    let on = |p: bool, n: usize, from: usize| -> Vec<Input> {
        decisions(from, n * 4, "buggy").into_iter().filter(|i| (partition_of(&i.key) == 0) == p).take(n).collect()
    };
    let wave1 = on(true, 200, 0);
    assert_eq!(wave1.len(), 200);
    let mut coords = produce(broker, &t.input, &wave1);
    wait_committed(broker, &t, wave1.len() as i64, Duration::from_secs(60));
    // The other two learn it through the control topic.
    let client = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let states = loop {
        let states: Vec<(String, String)> = fleet
            .iter()
            .filter_map(|i| cells(&client, i).into_iter().find(|c| c.0 == "buggy").map(|c| (c.1, c.2)))
            .collect();
        if states.len() == 3 && states.iter().all(|(s, _)| s == "open") {
            break states;
        }
        assert!(Instant::now() < deadline, "the trip did not reach every instance: {states:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let causes: Vec<&str> = states.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(causes.iter().filter(|c| **c == "spike").count(), 1, "one instance tripped: {causes:?}");
    assert_eq!(causes.iter().filter(|c| **c == "fleet_trip").count(), 2, "two followed: {causes:?}");

    // Wave 2: the same source on the other partitions, owned by the instances that did not trip.
    let wave2 = on(false, 300, 10_000);
    assert_eq!(wave2.len(), 300);
    coords.extend(produce(broker, &t.input, &wave2));
    let inputs: Vec<Input> = wave1.iter().chain(&wave2).cloned().collect();
    wait_committed(broker, &t, inputs.len() as i64, Duration::from_secs(60));
    for i in fleet {
        stop(&rt, i);
    }
    let (notices, held) = check_outputs(broker, &t, &inputs, &coords);
    let wave2_accounts: BTreeSet<String> = wave2.iter().map(|i| i.key.clone()).collect();
    assert_eq!(notices.len() + held.len(), 500);
    assert!(notices.is_disjoint(&wave2_accounts), "after the trip no instance sends for the source");
    // One instance alone would let the floor (30) through; the fleet's share of it is 10.
    assert!(notices.len() <= 10, "{} notices escaped the fleet (a single instance: at most 30)", notices.len());
    let control = broker.read_all_committed(&format!("{}-control", t.shadow), Duration::from_secs(30));
    assert_eq!(control.iter().filter(|r| r.key_str() == Some("trip/buggy")).count(), 1, "one trip record");
}
