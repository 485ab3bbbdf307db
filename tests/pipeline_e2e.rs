//! End-to-end tests of `resetguard run` on a real Apache Kafka broker (started by the test on
//! loopback): every input event gets exactly one outcome across the output topics, notices are
//! exactly the expected set with no duplicate `notice_id`, DLQ records keep the original bytes and
//! say why and where from; SIGKILL crashes and SIGTERM shutdowns lose and duplicate nothing. The
//! first two run with `pipeline.shards = 2` (the parallel path), the others with one shard.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kafka::{unique_name, KafkaBroker};
use common::service::*;
use resetguard::config::ConfigFile;
use resetguard::kafka::Status;
use tokio_util::sync::CancellationToken;

#[test]
fn every_event_gets_exactly_one_outcome_and_the_spike_is_held() {
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "e2e");
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = t.write_config(broker, dir.path(), &unique_name("e2e-txn"), "");
    // Two shards judge side by side; the breaker still sees decisions in poll order, so exactly
    // the spike floor escapes (docs/design.md, "Shards").
    set_pipeline(&cfg_path, "shards = 2");
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

#[test]
fn sigkill_three_times_loses_and_duplicates_nothing() {
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "crash");
    let dir = tempfile::tempdir().unwrap();
    let cfg = t.write_config(broker, dir.path(), &unique_name("crash-txn"), NO_TRIP);
    // The parallel path (two shards) under SIGKILL: the same notice set, nothing twice.
    set_pipeline(&cfg, "shards = 2");
    let log = dir.path().join("service.log");
    let inputs = crash_inputs(50_000);
    let total = inputs.len() as i64;
    // The input arrives in four parts, one before each round: however fast the service is, each
    // kill lands before the end of the input, most often inside the part just produced.
    let parts: Vec<&[Input]> = inputs.chunks(inputs.len().div_ceil(4)).collect();
    let mut coords = Vec::with_capacity(inputs.len());
    let mut rng = common::events::Rng::new(now_ms() as u64);
    let mut kill_points = Vec::new();
    for (round, part) in parts.iter().take(3).enumerate() {
        let before = coords.len() as i64;
        coords.extend(produce(broker, &t.input, part));
        let mut child = spawn_service(&cfg, &log);
        // Kill at a random point of this round's part.
        let target = before + part.len() as i64 * (20 + rng.below(60) as i64) / 100;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let done: i64 = broker.committed_offsets(&t.group, &t.input).iter().map(|(_, o)| o.unwrap_or(0)).sum();
            if done >= target {
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "service exited early; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            assert!(Instant::now() < deadline, "no progress to {target} (at {done}, round {round})");
            std::thread::sleep(Duration::from_millis(2 + rng.below(20)));
        }
        signal(&child, "-KILL");
        let _ = child.wait();
        let at: i64 = broker.committed_offsets(&t.group, &t.input).iter().map(|(_, o)| o.unwrap_or(0)).sum();
        kill_points.push(at);
    }
    eprintln!("SIGKILLed at committed offsets {kill_points:?} of {total}");
    coords.extend(produce(broker, &t.input, parts[3]));
    let mut child = spawn_service(&cfg, &log);
    wait_committed(broker, &t, total, Duration::from_secs(180));
    signal(&child, "-TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "exit after SIGTERM: {status}");
    let (notices, _) = check_outputs(broker, &t, &inputs, &coords);
    let expected: BTreeSet<String> =
        inputs.iter().filter(|i| i.expect == Expect::Notice).map(|i| i.key.clone()).collect();
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
    assert!(
        status.success(),
        "SIGTERM must exit 0, got {status}; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
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
    let expected: BTreeSet<String> =
        inputs.iter().filter(|i| i.expect == Expect::Notice).map(|i| i.key.clone()).collect();
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
                input(
                    &a,
                    ev(&id, &a, t0 + i as i64, "buggy-model", "breached_password", 1.0),
                    Expect::Decision,
                    Some(&id),
                )
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
