//! Restore time: how long a restarted instance takes to rebuild the state of N tracked accounts
//! (default 1,000,000, one event each) from the input topic before it turns ready, next to how
//! long processing the same input took live, on Apache Kafka on loopback.
//!
//! `cargo bench --bench restore` (env `RESTORE_ACCOUNTS` to change N).

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

fn gauge(registry: &prometheus::Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .find(|f| f.name() == name)
        .and_then(|f| f.get_metric().first().map(|m| m.get_gauge().get_value()))
        .unwrap_or(f64::NAN)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo test --all-targets` runs bench binaries without `--bench`: a small smoke run then.
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("RESTORE_ACCOUNTS").ok().and_then(|v| v.parse().ok()).unwrap_or(if full {
        1_000_000
    } else {
        20_000
    });
    let broker = KafkaBroker::start();
    let t = Topics::create(&broker, "restore");
    let dir = tempfile::tempdir().unwrap();
    let cfg = t.write_config(&broker, dir.path(), &unique_name("restore-txn"), "");
    let t0 = now_ms() - 60_000;
    let inputs: Vec<Input> = (0..n)
        .map(|i| {
            let (a, id) = (format!("acct-{i:08}"), format!("9b1deb4d-3b7d-4bad-9bdd-{i:012}"));
            input(
                &a,
                ev(&id, &a, t0 + (i % 50_000) as i64, "auth-service", "new_device", 0.2),
                Expect::NoAction,
                Some(&id),
            )
        })
        .collect();
    let began = Instant::now();
    produce(&broker, &t.input, &inputs);
    eprintln!("produced {n} events in {:.1} s", began.elapsed().as_secs_f64());

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let run = |label: &str| -> (f64, f64, f64) {
        let text = std::fs::read_to_string(&cfg).unwrap();
        let settings = toml::from_str::<ConfigFile>(&text).unwrap().validate(dir.path()).unwrap();
        let registry = prometheus::Registry::new();
        let status = Arc::new(Status::default());
        let token = CancellationToken::new();
        let started = Instant::now();
        let handle = rt.spawn(resetguard::app::run(settings, registry.clone(), status.clone(), token.clone()));
        // Ready = partitions assigned and restore finished.
        while !status.ready.load(Ordering::SeqCst) {
            assert!(started.elapsed() < Duration::from_secs(900), "{label}: never ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        let ready = started.elapsed().as_secs_f64();
        wait_committed(&broker, &t, n as i64, Duration::from_secs(900));
        let done = started.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(300));
        let tracked = gauge(&registry, "resetguard_tracked_accounts");
        token.cancel();
        rt.block_on(handle).unwrap().unwrap();
        (ready, done, tracked)
    };
    let (ready1, done1, tracked1) = run("first run");
    println!("first run: ready after {ready1:.2} s (nothing to restore), all {n} events processed live after {done1:.2} s, tracked accounts {tracked1}");
    let (ready2, _, tracked2) = run("restart");
    assert_eq!(tracked2 as usize, n, "every account's state is back after the restart");
    println!(
        "restart: state of {tracked2} accounts restored from the input topic and ready after {ready2:.2} s ({:.0} events/s restore incl. group join)",
        n as f64 / ready2
    );
}
