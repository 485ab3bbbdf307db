//! Restore time against input volume: how long a restarted instance takes to turn ready with the
//! state of N live accounts, when each account's state was built by E events, restoring from the
//! changelog (the default) and, in the same run, from the input topic (`pipeline.changelog =
//! false`, the way before the changelog), on Apache Kafka on loopback.
//!
//! For each volume (fresh topics): produce N × E events (E passes over the accounts, 100 s of
//! event time apart, the last ending 5 minutes before now, so every account stays live),
//! process them live once, wait for the log cleaner to compact the changelog, then restart
//! twice: changelog on, then changelog off. Prints time-to-ready (process start to every partition restored, group join
//! included) and the records each restore read.
//!
//! Then, per volume, a failover with a **warm standby**: instance W (`pipeline.standby = true`)
//! restores everything; instance V (no standby) joins the group and restores its share of the
//! partitions from the changelog, while W's standby follows those (the partitions W no longer
//! owns); V stops (without leaving the group: static membership), and after the session timeout
//! W takes those partitions back and restores them from its standby copy. Printed: the time
//! each of those two restores of the same partitions took (`resetguard_changelog_restore_seconds`)
//! and the records each read.
//!
//! `cargo bench --bench restore` (env `RESTORE_ACCOUNTS`, default 1,000,000; `RESTORE_EVENTS`,
//! events per account per volume, default `1,5`; `RESTORE_COMPACTION_WAIT_S`, default 60;
//! `RESTORE_BENCH_LOG`, a log filter such as `info`: the instances' logs on stderr).

#[path = "../tests/common/mod.rs"]
#[allow(dead_code, unused_imports)]
mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kafka::{unique_name, KafkaBroker};
use common::service::*;
use resetguard::config::ConfigFile;
use resetguard::kafka::Status;
use tokio_util::sync::CancellationToken;

/// Sum of the samples of `name` whose labels contain `label` ("" for all).
fn metric(registry: &prometheus::Registry, name: &str, label: &str) -> f64 {
    let Some(f) = registry.gather().into_iter().find(|f| f.name() == name) else { return 0.0 };
    f.get_metric()
        .iter()
        .filter(|m| {
            m.get_label().iter().any(|l| format!("{}=\"{}\"", l.name(), l.value()) == label) || label.is_empty()
        })
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

/// Sum and count of the histogram `name` over the samples whose labels contain `label`.
fn histogram(registry: &prometheus::Registry, name: &str, label: &str) -> (f64, u64) {
    let Some(f) = registry.gather().into_iter().find(|f| f.name() == name) else { return (0.0, 0) };
    f.get_metric()
        .iter()
        .filter(|m| m.get_label().iter().any(|l| format!("{}=\"{}\"", l.name(), l.value()) == label))
        .fold((0.0, 0), |(s, c), m| (s + m.get_histogram().get_sample_sum(), c + m.get_histogram().get_sample_count()))
}

struct Run {
    ready_s: f64,
    done_s: f64,
    tracked: f64,
    changelog_records: f64,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo test --all-targets` runs bench binaries without `--bench`: a small smoke run then.
    let full = std::env::args().any(|a| a == "--bench");
    let env = |k: &str| std::env::var(k).ok();
    if let Some(filter) = env("RESTORE_BENCH_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    let n: usize =
        env("RESTORE_ACCOUNTS").and_then(|v| v.parse().ok()).unwrap_or(if full { 1_000_000 } else { 20_000 });
    let volumes: Vec<usize> = env("RESTORE_EVENTS")
        .unwrap_or_else(|| if full { "1,5".into() } else { "1,3".into() })
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let compaction_wait =
        Duration::from_secs(env("RESTORE_COMPACTION_WAIT_S").and_then(|v| v.parse().ok()).unwrap_or(if full {
            60
        } else {
            5
        }));
    let broker = KafkaBroker::start_for_bench();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut table = Vec::new();
    let mut failovers = Vec::new();
    for &e in &volumes {
        let t = Topics::create(&broker, &format!("restore{e}"));
        let dir = tempfile::tempdir().unwrap();
        let cfg = t.write_config(&broker, dir.path(), &unique_name("restore-txn"), "");
        let events = n * e;
        // The last pass ends 5 minutes before now (never in the future, whatever E is).
        let t0 = now_ms() - e as i64 * 100_000 - 300_000;
        let began = Instant::now();
        // One pass over the accounts at a time (20 M inputs at once would not fit in memory).
        for pass in 0..e {
            let inputs: Vec<Input> = (pass * n..(pass + 1) * n)
                .map(|i| {
                    let a = format!("acct-{:08}", i % n);
                    let id = format!("9b1deb4d-3b7d-4bad-9bdd-{i:012}");
                    // Pass k over the accounts is k × 100 s later in event time: in order, never late.
                    let at = t0 + (i / n) as i64 * 100_000 + (i % n) as i64 / 20;
                    input(&a, ev(&id, &a, at, "auth-service", "new_device", 0.2), Expect::NoAction, Some(&id))
                })
                .collect();
            produce(&broker, &t.input, &inputs);
        }
        eprintln!("volume {e}: produced {events} events in {:.1} s", began.elapsed().as_secs_f64());
        let run = |label: &str, changelog: bool, wait_all: bool| -> Run {
            let text = std::fs::read_to_string(&cfg).unwrap();
            let mut settings = toml::from_str::<ConfigFile>(&text).unwrap().validate(dir.path()).unwrap();
            settings.changelog = changelog;
            let registry = prometheus::Registry::new();
            let status = Arc::new(Status::default());
            let token = CancellationToken::new();
            let started = Instant::now();
            let handle = rt.spawn(resetguard::app::run(settings, registry.clone(), status.clone(), token.clone()));
            while !status.ready.load(Ordering::SeqCst) {
                assert!(started.elapsed() < Duration::from_secs(1800), "{label}: never ready");
                std::thread::sleep(Duration::from_millis(20));
            }
            let ready_s = started.elapsed().as_secs_f64();
            if wait_all {
                wait_committed(&broker, &t, events as i64, Duration::from_secs(1800));
            }
            let done_s = started.elapsed().as_secs_f64();
            // Let the first commit after the restore (and the gauges) come round.
            std::thread::sleep(Duration::from_millis(500));
            let r = Run {
                ready_s,
                done_s,
                tracked: metric(&registry, "resetguard_tracked_accounts", ""),
                changelog_records: metric(&registry, "resetguard_restore_records_total", "source=\"changelog\""),
            };
            token.cancel();
            rt.block_on(handle).unwrap().unwrap();
            r
        };
        let live = run("live", true, true);
        eprintln!(
            "volume {e}: processed live in {:.1} s ({:.0} events/s); waiting {compaction_wait:?} for the log cleaner",
            live.done_s,
            events as f64 / live.done_s
        );
        std::thread::sleep(compaction_wait);
        let from_changelog = run("changelog restore", true, false);
        assert_eq!(from_changelog.tracked as usize, n, "every account's state is back from the changelog");
        let from_input = run("input restore", false, false);
        assert_eq!(from_input.tracked as usize, n, "every account's state is back from the input");
        eprintln!(
            "volume {e}: ready after {:.2} s from the changelog ({} records read), {:.2} s from the input ({} events re-read)",
            from_changelog.ready_s, from_changelog.changelog_records, from_input.ready_s, events
        );
        // A failover onto a warm standby.
        let start = |label: &str, standby: bool| {
            let text = std::fs::read_to_string(&cfg).unwrap();
            let mut settings = toml::from_str::<ConfigFile>(&text).unwrap().validate(dir.path()).unwrap();
            settings.standby = standby;
            settings.transactional_id = unique_name(label);
            let registry = prometheus::Registry::new();
            let status = Arc::new(Status::default());
            let token = CancellationToken::new();
            let handle = rt.spawn(resetguard::app::run(settings, registry.clone(), status.clone(), token.clone()));
            let started = Instant::now();
            while !status.ready.load(Ordering::SeqCst) {
                assert!(started.elapsed() < Duration::from_secs(1800), "{label}: never ready");
                std::thread::sleep(Duration::from_millis(20));
            }
            (registry, token, handle)
        };
        let (w, w_token, w_handle) = start("w", true);
        let (v, v_token, v_handle) = start("v", false);
        let moved = metric(&v, "resetguard_restore_records_total", "source=\"changelog\"");
        let (v_secs, _) = histogram(&v, "resetguard_changelog_restore_seconds", "source=\"changelog\"");
        // W's standby reads V's share again, from the beginning: wait until W holds every
        // account, live or followed (its gauges are published with its next commit).
        let (began, mut last) = (Instant::now(), -1.0);
        loop {
            let held = metric(&w, "resetguard_tracked_accounts", "") + metric(&w, "resetguard_standby_records", "");
            if held >= n as f64 && held == last {
                break;
            }
            assert!(began.elapsed() < Duration::from_secs(1800), "W's standby never followed V's share: {held}");
            last = held;
            std::thread::sleep(Duration::from_secs(1));
        }
        // W's own first restore may have taken over what its standby had followed by then:
        // only the restore after V stops counts.
        let standby_restores = || histogram(&w, "resetguard_changelog_restore_seconds", "source=\"standby\"");
        let standby_records = || metric(&w, "resetguard_restore_records_total", "source=\"standby\"");
        let ((secs_before, count_before), records_before) = (standby_restores(), standby_records());
        v_token.cancel();
        rt.block_on(v_handle).unwrap().unwrap();
        let began = Instant::now();
        while standby_restores().1 == count_before {
            assert!(began.elapsed() < Duration::from_secs(120), "W never took V's partitions back");
            std::thread::sleep(Duration::from_millis(50));
        }
        let w_secs = standby_restores().0 - secs_before;
        let from_copy = standby_records() - records_before;
        // The gauge is published with the next commit.
        let began = Instant::now();
        while metric(&w, "resetguard_tracked_accounts", "") as usize != n && began.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(metric(&w, "resetguard_tracked_accounts", "") as usize, n, "W holds every account again");
        w_token.cancel();
        rt.block_on(w_handle).unwrap().unwrap();
        eprintln!(
            "volume {e}: failover of V's partitions: V restored them from the changelog in {v_secs:.2} s ({moved} records); W from its standby in {w_secs:.2} s ({from_copy} accounts and cooldowns from memory)"
        );
        failovers.push((e, v_secs, moved, w_secs, from_copy));
        table.push((e, events, from_changelog, from_input));
    }
    println!("\n== restore bench (N = {n} live accounts)");
    println!("| events per account | input events | changelog: ready (s) | changelog records read | input re-read: ready (s) | ratio input / changelog |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for (e, events, c, i) in &table {
        println!(
            "| {e} | {events} | {:.2} | {:.0} | {:.2} | {:.1}× |",
            c.ready_s,
            c.changelog_records,
            i.ready_s,
            i.ready_s / c.ready_s
        );
    }
    println!("\n== failover onto a warm standby (the same partitions, restored twice)");
    println!("| events per account | from the changelog (s) | records read | from the standby (s) | accounts and cooldowns from memory | ratio |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for (e, v_secs, moved, w_secs, from_copy) in &failovers {
        println!("| {e} | {v_secs:.2} | {moved:.0} | {w_secs:.2} | {from_copy:.0} | {:.1}× |", v_secs / w_secs);
    }
}
