//! The zero-setup demo and the traffic generator. The demo starts librdkafka's in-process mock
//! Kafka cluster, runs the real service against it, drives simulated traffic (ordinary logins,
//! genuine takeovers, then a buggy model flagging thousands of accounts), shows live progress and
//! ends with a report read back from the notice topic. Does IO.

pub mod traffic;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigFile, Settings};
use crate::kafka::Status;
use traffic::{Traffic, BUGGY_SOURCE};

const INPUT: &str = "login-risk-events";

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn send_all(producer: &FutureProducer, topic: &str, batch: Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
    let futures: Vec<_> = batch
        .iter()
        .map(|(k, v)| producer.send_result(FutureRecord::to(topic).key(k).payload(v)))
        .collect::<Result<_, _>>()
        .map_err(|(e, _)| anyhow::anyhow!("queueing an event failed: {e}"))?;
    for f in futures {
        f.await.context("delivery cancelled")?.map_err(|(e, _)| anyhow::anyhow!("delivery failed: {e}"))?;
    }
    Ok(())
}

fn demo_settings(bootstrap: &str, listen: SocketAddr, dir: &std::path::Path) -> anyhow::Result<Settings> {
    // The built-in policy, with every default: the demo shows what a fresh install does.
    std::fs::write(dir.join("policy.toml"), "version = \"demo-1\"\n")?;
    // A fresh random deployment secret per demo run: nothing to set up, nothing reused.
    let secret: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    std::fs::write(dir.join("secret"), secret)?;
    let cfg: ConfigFile = toml::from_str(&format!(
        r#"
policy = "policy.toml"
[kafka]
"bootstrap.servers" = "{bootstrap}"
[topics]
create = false
[pipeline]
transactional_id = "resetguard-demo"
commit_interval = "100ms"
[http]
listen = "{listen}"
[secret]
file = "secret"
"#
    ))?;
    cfg.validate(dir).map_err(|e| anyhow::anyhow!("demo config invalid: {e:?}"))
}

/// Runs the demo; `flood` is how many accounts the buggy model flags.
pub async fn run(flood: usize, listen: SocketAddr) -> anyhow::Result<()> {
    let cluster = MockCluster::new(1).context("starting the embedded Kafka (librdkafka mock cluster)")?;
    let bootstrap = cluster.bootstrap_servers();
    for (topic, partitions) in [
        (INPUT, 6),
        ("password-reset-notices", 3),
        ("password-reset-held", 3),
        ("resetguard-dlq", 3),
        ("password-reset-notices-shadow", 3),
        ("resetguard-control", 1),
        ("resetguard-audit", 1),
        ("resetguard-changelog", 6),
    ] {
        cluster.create_topic(topic, partitions, 1).with_context(|| format!("creating {topic}"))?;
    }
    println!("embedded Kafka at {bootstrap}; metrics on http://{listen}/metrics");
    let dir = tempfile_dir()?;
    let settings = demo_settings(&bootstrap, listen, &dir)?;
    let burst = settings.policy.breaker.cell_burst;
    let status = Arc::new(Status::default());
    let token = CancellationToken::new();
    let service = tokio::spawn(crate::app::run(settings, prometheus::Registry::new(), status.clone(), token.clone()));

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "5")
        .create()
        .context("creating the traffic producer")?;
    let mut traffic = Traffic::new(42, "demo");
    let mut genuine: Vec<String> = Vec::new();
    let mut sent = 0u64;
    let mut flood_sent = 0u64;
    let started = Instant::now();
    let mut last_print = Instant::now();

    // Wait for the service to join the group before traffic starts, so the timeline is readable.
    let ready_by = Instant::now() + Duration::from_secs(30);
    while status.assigned_partitions.load(Ordering::SeqCst) == 0 && Instant::now() < ready_by {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 30 ticks of 250 ms: ordinary traffic throughout, takeovers now and then, the flood in ticks 10-17.
    for tick in 0..30u64 {
        let t = now_ms();
        let mut batch: Vec<(String, Vec<u8>)> = (0..150).map(|_| traffic.ordinary(200_000, t)).collect();
        if tick % 3 == 1 {
            let account = format!("takeover-{tick:03}");
            batch.extend(traffic.takeover(&account, t));
            genuine.push(account);
        }
        if (10..18).contains(&tick) {
            let per_tick = (flood as u64).div_ceil(8);
            for _ in 0..per_tick {
                if flood_sent < flood as u64 {
                    batch.push(traffic.flood(flood_sent, t));
                    flood_sent += 1;
                }
            }
        }
        sent += batch.len() as u64;
        send_all(&producer, INPUT, batch).await?;
        if last_print.elapsed() >= Duration::from_secs(1) {
            print_progress(&status, sent, started);
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    producer.flush(Duration::from_secs(10)).context("flushing traffic")?;

    // Let the service catch up and commit.
    let catch_up_by = Instant::now() + Duration::from_secs(60);
    while status.consumed.load(Ordering::SeqCst) < sent && Instant::now() < catch_up_by {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if last_print.elapsed() >= Duration::from_secs(1) {
            print_progress(&status, sent, started);
            last_print = Instant::now();
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    print_progress(&status, sent, started);
    token.cancel();
    service.await.context("service task")?.map_err(|e| anyhow::anyhow!("{e}"))?;

    let notices = read_topic(&bootstrap, "password-reset-notices")?;
    let held = read_topic(&bootstrap, "password-reset-held")?;
    let mut notices_by_cell: BTreeMap<String, u64> = BTreeMap::new();
    let mut notified: HashSet<String> = HashSet::new();
    for v in &notices {
        *notices_by_cell.entry(v["cell"].as_str().unwrap_or("?").to_string()).or_default() += 1;
        notified.insert(v["account_id"].as_str().unwrap_or("").to_string());
    }
    let flood_notices =
        notices.iter().filter(|v| v["account_id"].as_str().is_some_and(|a| a.starts_with("victim-"))).count();
    let flood_held = held.iter().filter(|v| v["account_id"].as_str().is_some_and(|a| a.starts_with("victim-"))).count();
    let genuine_ok = genuine.iter().filter(|a| notified.contains(*a)).count();
    println!();
    println!("=== resetguard demo report ===");
    println!("events published            {sent}");
    println!("events decided              {}", status.consumed.load(Ordering::SeqCst));
    println!("notices sent                {} (by cell: {:?})", notices.len(), notices_by_cell);
    println!("held by the breaker         {}", held.len());
    println!(
        "buggy model {BUGGY_SOURCE}: flagged {flood_sent} accounts -> {flood_notices} notices escaped (cell burst {burst}), {flood_held} held"
    );
    println!("genuine takeovers notified  {genuine_ok} of {}", genuine.len());
    let verdict = flood_notices as u64 <= u64::from(burst)
        && genuine_ok == genuine.len()
        && flood_notices + flood_held == flood_sent as usize;
    println!(
        "{}",
        if verdict {
            "OK: the brake held the mass reset, nothing was lost, and genuine takeovers still got their notice."
        } else {
            "NOT OK: see the counts above."
        }
    );
    let _ = std::fs::remove_dir_all(&dir);
    drop(producer);
    drop(cluster);
    if verdict {
        Ok(())
    } else {
        anyhow::bail!("demo expectations not met")
    }
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("resetguard-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn print_progress(status: &Status, sent: u64, started: Instant) {
    let cells: Vec<String> = status
        .breaker
        .lock()
        .map(|b| b.iter().map(|c| format!("{}={}", c.cell, c.state.as_str())).collect())
        .unwrap_or_default();
    println!(
        "[{:>5.1}s] published {:>6}  decided {:>6}  notices {:>4}  held {:>6}  dlq {:>3}  breaker: {}",
        started.elapsed().as_secs_f64(),
        sent,
        status.consumed.load(Ordering::Relaxed),
        status.notices.load(Ordering::Relaxed),
        status.held.load(Ordering::Relaxed),
        status.dlq.load(Ordering::Relaxed),
        cells.join(" ")
    );
}

/// Reads a whole topic (read_committed) into JSON values.
fn read_topic(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("demo-reader-{topic}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut remaining = 0i64;
    for t in metadata.topics() {
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(5))?;
            tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Offset(low))?;
            remaining += high - low;
        }
    }
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while remaining > 0 && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            remaining -= 1;
            if let Some(v) = m.payload().and_then(|p| serde_json::from_slice(p).ok()) {
                out.push(v);
            }
        }
    }
    Ok(out)
}

/// Publishes simulated traffic to a real Kafka topic at `rate` events/s (0: unthrottled).
pub async fn generate(bootstrap: &str, topic: &str, rate: u64, count: u64) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .context("creating the producer")?;
    let mut traffic = Traffic::new(now_ms() as u64, &format!("gen{}", std::process::id()));
    let mut sent = 0u64;
    let per_tick = if rate == 0 { 5_000 } else { (rate / 10).max(1) };
    let mut tick = 0u64;
    loop {
        let t = now_ms();
        let mut batch: Vec<(String, Vec<u8>)> = (0..per_tick).map(|_| traffic.ordinary(1_000_000, t)).collect();
        if tick % 50 == 0 {
            batch.extend(traffic.takeover(&format!("takeover-{}-{tick}", std::process::id()), t));
        }
        if count > 0 {
            batch.truncate((count - sent) as usize);
        }
        sent += batch.len() as u64;
        send_all(&producer, topic, batch).await?;
        tick += 1;
        if count > 0 && sent >= count {
            break;
        }
        if rate > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!("published {sent} events to {topic}");
    Ok(())
}
