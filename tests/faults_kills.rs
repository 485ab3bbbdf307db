//! Ten SIGKILLs of `resetguard run` at the worst moments (mid-stream, during the restore right
//! after a restart, and just after the first notices of a spiking source were committed) while
//! 500,000 events flow and the breaker is on. The outputs, read with a read_committed reader, are
//! compared with what each generated input must become (its `Expect`).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::events::Rng;
use common::faults::*;
use common::kafka::{unique_name, KafkaBroker};
use common::service::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

/// Events in the run (including the spike).
const EVENTS: usize = 500_000;
/// Stream pace: 500 k events in 100 s.
const PER_SECOND: usize = 5_000;
/// Accounts the buggy source flags at once, produced in one burst at [`SPIKE_AT`].
const SPIKE: usize = 5_000;
/// Position of the spike in the stream (40 s in).
const SPIKE_AT: usize = 200_000;
const SPIKE_SOURCE: &str = "buggy-model";

/// The breaker is on. The caps do not bind on ordinary takeovers: there are ~200 of them
/// (device-intel decisions) in the whole run, far below the cell burst and the spike floor even if
/// a restore counted every one of them in a single minute. The spike (5,000 decisions of one
/// source within a second) is far above the floor. The global cell is out of the way (its floor
/// and caps are huge), so the per-source cell is what trips. open_duration (default 10 min)
/// outlasts the run, so a tripped cell stays open.
const CELL_BURST: u32 = 1_000;
const SPIKE_FLOOR: u32 = 1_000;

fn policy() -> String {
    format!(
        "[breaker]\nglobal_rate_per_minute = 1000000\nglobal_burst = 100000\nglobal_spike_floor = 1000000\n\
         cell_rate_per_minute = 60000\ncell_burst = {CELL_BURST}\nspike_floor = {SPIKE_FLOOR}\n"
    )
}

/// The inputs and when each is sent (ms after the stream starts). Event times follow the send
/// schedule (a few seconds in the past), so nothing is in the future, late or stale.
fn inputs() -> (Vec<Input>, Vec<u64>) {
    let t0 = now_ms() - 5_000;
    let at = |i: usize| (i as u64 * 1000) / PER_SECOND as u64;
    let mut v: Vec<(Input, u64)> = Vec::with_capacity(EVENTS);
    let mut i = 0usize;
    while v.len() < EVENTS - SPIKE {
        let ms = at(v.len() + if v.len() >= SPIKE_AT { SPIKE } else { 0 });
        let t = t0 + ms as i64;
        if i % 2500 == 7 {
            // A takeover: a strong signal now (no action: one kind is capped below the threshold),
            // the second kind from another source 2,000 inputs later decides.
            let a = format!("ato-{i}");
            let (id1, id2) = (format!("k-{i}a"), format!("k-{i}b"));
            v.push((
                input(&a, ev(&id1, &a, t, "auth-service", "credential_stuffing", 0.95), Expect::NoAction, Some(&id1)),
                ms,
            ));
            v.push((
                input(&a, ev(&id2, &a, t + 5, "device-intel", "impossible_travel", 0.9), Expect::Notice, Some(&id2)),
                u64::MAX, // placed below
            ));
        } else if i % 1000 == 3 && v.len() > 10 {
            let mut d = v[v.len() - 10].0.clone();
            if d.expect == Expect::NoAction && d.event_id.is_some() {
                d.expect = Expect::Dlq("event_id_seen");
                d.event_id = None;
                v.push((d, ms));
            }
        } else if i % 1009 == 5 {
            let (a, id) = (format!("bad-{i}"), format!("k-{i}"));
            v.push((
                input(&a, ev(&id, &a, t, "auth-service", "telepathy", 0.5), Expect::Dlq("unknown_signal"), Some(&id)),
                ms,
            ));
        } else {
            let a = format!("acct-{}", i % 50_000);
            let id = format!("k-{i}");
            v.push((input(&a, ev(&id, &a, t, "auth-service", "failed_login", 0.2), Expect::NoAction, Some(&id)), ms));
        }
        i += 1;
    }
    // Move the deciding half of each takeover 2,000 places later (other transactions).
    let mut ordered: Vec<(Input, u64)> = Vec::with_capacity(v.len());
    let mut delayed: Vec<(usize, Input)> = Vec::new();
    for (idx, (x, ms)) in v.into_iter().enumerate() {
        if ms == u64::MAX {
            delayed.push((idx + 2000, x));
        } else {
            ordered.push((x, ms));
        }
        while delayed.first().is_some_and(|(due, _)| *due <= idx) {
            let x = delayed.remove(0).1;
            let ms = ordered.last().map_or(0, |(_, m)| *m);
            ordered.push((x, ms));
        }
    }
    for (_, x) in delayed {
        let ms = ordered.last().map_or(0, |(_, m)| *m);
        ordered.push((x, ms));
    }
    // The spike: one burst, all at the same send time.
    let spike_ms = at(SPIKE_AT);
    let t = t0 + spike_ms as i64;
    let pos = ordered.iter().position(|(_, ms)| *ms >= spike_ms).unwrap_or(ordered.len());
    let spike: Vec<(Input, u64)> = (0..SPIKE)
        .map(|k| {
            let (a, id) = (format!("spike-{k}"), format!("spike-e{k}"));
            (
                input(
                    &a,
                    ev(&id, &a, t + (k / 100) as i64, SPIKE_SOURCE, "breached_password", 1.0),
                    Expect::Decision,
                    Some(&id),
                ),
                spike_ms,
            )
        })
        .collect();
    ordered.splice(pos..pos, spike);
    // Keep the schedule non-decreasing (delayed takeover halves took the time of their place).
    let mut last = 0;
    for (_, ms) in ordered.iter_mut() {
        last = last.max(*ms);
        *ms = last;
    }
    ordered.into_iter().unzip()
}

/// Where a kill lands.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// Processing live, at least this many seconds into the stream.
    MidStream(u64),
    /// Right after the restart, a few ms after the partitions were assigned: while the restore
    /// re-reads the committed input (the readyz answer at the kill tells whether it was done).
    DuringRestore,
    /// As soon as a notice of the spiking source is visible to a read_committed reader: the
    /// first spike notices are committed, the trip may not be yet.
    FirstSpikeNoticeCommitted,
}

/// A read_committed reader of the notices topic that tells when a spike notice shows up.
fn spike_notice_watcher(broker: &KafkaBroker, topic: &str) -> BaseConsumer {
    let c: BaseConsumer = broker
        .base_config()
        .set("group.id", unique_name("spike-watch"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..broker.partition_count(topic) {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    c
}

#[test]
fn ten_kills_at_the_worst_moments_with_the_breaker_enabled() {
    let began = Instant::now();
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "kills");
    let dir = tempfile::tempdir().unwrap();
    // One transaction per commit interval (100 ms, ~500 inputs at the stream's pace), so the
    // service keeps up with the stream and every kill lands in an open transaction.
    let cfg = write_config(broker, &t, dir.path(), &unique_name("kills-txn"), &policy(), &[], Some(50_000));
    let log = dir.path().join("service.log");
    let (inputs, schedule) = inputs();
    assert_eq!(inputs.len(), EVENTS);
    let spike_index = inputs.iter().position(|i| i.key.starts_with("spike-")).unwrap();
    eprintln!("generated {} inputs in {:.1?}", inputs.len(), began.elapsed());

    let plan = [
        Moment::MidStream(8),
        Moment::DuringRestore,
        Moment::MidStream(22),
        Moment::DuringRestore,
        Moment::FirstSpikeNoticeCommitted,
        Moment::DuringRestore,
        Moment::MidStream(60),
        Moment::DuringRestore,
        Moment::MidStream(80),
        Moment::MidStream(92),
    ];
    let mut rng = Rng::new(now_ms() as u64);
    let mut svc = Service::spawn(&cfg, &log);
    svc.wait_ready(Duration::from_secs(60));
    // The spike is sent at least 5 s away from a wall-clock minute boundary, so the incarnation
    // that meets it live counts all of its decisions in one breaker minute (see the bound below).
    let spike_ms = schedule[spike_index] as i64;
    let in_minute = (now_ms() + spike_ms).rem_euclid(60_000);
    if !(5_000..=55_000).contains(&in_minute) {
        let wait = (70_000 - in_minute).rem_euclid(60_000);
        eprintln!("delaying the stream {wait} ms to keep the spike away from a minute boundary");
        std::thread::sleep(Duration::from_millis(wait as u64));
    }
    let stream = Stream::start(broker, &t.input, inputs.clone(), schedule);
    let start = Instant::now();
    let mut landed = Vec::new();
    for (k, moment) in plan.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(120);
        let what = match *moment {
            Moment::MidStream(sec) => {
                // Live: ready, scheduled time reached, and progress since the restart.
                svc.wait_ready(Duration::from_secs(120));
                let from = committed_sum(broker, &t);
                while start.elapsed() < Duration::from_secs(sec) || committed_sum(broker, &t) < from + 2_000 {
                    svc.assert_running("before a planned kill");
                    assert!(
                        Instant::now() < deadline,
                        "kill {k}: no progress (committed {})",
                        committed_sum(broker, &t)
                    );
                    std::thread::sleep(Duration::from_millis(20 + rng.below(80)));
                }
                format!("mid-stream at {:.1?}, committed {}", start.elapsed(), committed_sum(broker, &t))
            }
            Moment::DuringRestore => {
                // The restore starts when the partitions are assigned (after the group noticed
                // that the killed member is gone) and re-reads everything committed so far.
                svc.base_url(Duration::from_secs(60));
                let mut assigned = false;
                while !assigned && Instant::now() < deadline {
                    assigned = svc.own_log().contains("Partitions assigned");
                    if !assigned && matches!(svc.get("/readyz"), Some((200, _))) {
                        break; // no such log line (any more): kill as soon as possible anyway
                    }
                    svc.assert_running("before the restore kill");
                    std::thread::sleep(Duration::from_millis(5));
                }
                let delay = if assigned { rng.below(150) } else { 0 };
                std::thread::sleep(Duration::from_millis(delay));
                let ready = matches!(svc.get("/readyz"), Some((200, _)));
                let state = if ready { "200 (restore already done)" } else { "503 (restoring)" };
                let line = if assigned { "the assignment log line" } else { "readyz turned 200" };
                format!("right after a restart: {delay} ms after {line}, readyz {state}")
            }
            Moment::FirstSpikeNoticeCommitted => {
                let watcher = spike_notice_watcher(broker, &t.notices);
                let mut seen = false;
                while !seen {
                    svc.assert_running("before the spike kill");
                    if Instant::now() >= deadline {
                        break;
                    }
                    if let Some(Ok(m)) = watcher.poll(Duration::from_millis(5)) {
                        seen = m.key().is_some_and(|k| k.starts_with(b"spike-"));
                    }
                }
                assert!(stream.sent() > spike_index, "the spike kill must come after the spike was sent");
                format!(
                    "first committed spike notice {} at {:.1?}",
                    if seen { "seen" } else { "NOT seen" },
                    start.elapsed()
                )
            }
        };
        svc.assert_running("at a planned kill");
        svc.kill();
        eprintln!("kill {}: {what}", k + 1);
        landed.push(what);
        svc = Service::spawn(&cfg, &log);
    }
    let (inputs, coords) = stream.finish();
    let total = inputs.len() as i64;
    wait_committed_running(broker, &t, &mut svc, total, Duration::from_secs(180));
    svc.assert_running("at the end");
    svc.terminate_ok();
    eprintln!("all {total} inputs committed after {:.1?} (10 kills: {landed:#?})", start.elapsed());

    let out = check_outputs_allowing_truncation(broker, &t, &inputs, &coords);
    let spike_notices = out.notice_accounts.iter().filter(|a| a.starts_with("spike-")).count();
    let spike_held = out.held_accounts.iter().filter(|a| a.starts_with("spike-")).count();
    let others: BTreeSet<String> = out.notice_accounts.iter().filter(|a| !a.starts_with("spike-")).cloned().collect();
    let expected: BTreeSet<String> =
        inputs.iter().filter(|i| i.expect == Expect::Notice).map(|i| i.key.clone()).collect();
    assert_eq!(others, expected, "the notices of the ordinary sources are exactly the expected set");
    assert_eq!(spike_notices + spike_held, SPIKE, "every spike decision is sent or held, once");
    assert!(
        out.held_accounts.iter().all(|a| a.starts_with("spike-")),
        "only the spiking source is held (the caps must not bind on ordinary takeovers)"
    );
    // Bound on what escapes: the breaker counts a cell's decisions per minute of its clock (wall
    // time when live, the input record's timestamp when a restore replays committed decisions).
    // The incarnation that meets the spike live lets at most min(cell_burst, spike_floor)
    // notices of it through before the cell trips: the spike is sent well inside one minute, so
    // its count does not restart midway. A kill after some of those notices were committed but
    // before the trip was (kill 5 aims at that window) leaves a restarted incarnation that
    // replays the committed ones into the spike's minute; if it goes live in a later minute, its
    // count starts again from zero and the limiter has refilled, so at most min(cell_burst,
    // spike_floor) more get through before it trips. Once a trip is committed, every restore
    // re-trips the cell from the replayed decisions, and it stays open for open_duration (10 min,
    // longer than the run). Kills are seconds apart, so no second incarnation goes live before
    // that trip is committed. Hence: cell_burst + spike_floor (2 x 1000 here).
    let bound = (CELL_BURST + SPIKE_FLOOR) as usize;
    eprintln!(
        "spike: {spike_notices} notices escaped, {spike_held} held (bound {bound}); wall time {:.1?}",
        began.elapsed()
    );
    assert!(spike_notices <= bound, "{spike_notices} notices of the spiking source escaped; at most {bound} may");
}

// ---------------------------------------------------------------------------------------------
// Static membership: a restart of the same instance is not a rebalance for the others
// ---------------------------------------------------------------------------------------------

/// Input partitions an instance owns, from the series of its consumer-lag gauge (one per owned
/// partition; revoked partitions' series are removed). `None`: no answer or no series yet.
fn owned_partitions(svc: &mut Service) -> Option<BTreeSet<String>> {
    let (code, text) = svc.get("/metrics")?;
    let owned: BTreeSet<String> = text
        .lines()
        .filter(|l| l.starts_with("resetguard_consumer_lag_messages{"))
        .filter_map(|l| l.split("partition=\"").nth(1)?.split('"').next().map(str::to_string))
        .collect();
    (code == 200 && !owned.is_empty()).then_some(owned)
}

/// Waits until `a` and `b` together own every input partition, each some.
fn wait_split(a: &mut Service, b: &mut Service) -> (BTreeSet<String>, BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let (Some(pa), Some(pb)) = (owned_partitions(a), owned_partitions(b)) {
            if pa.is_disjoint(&pb) && pa.len() + pb.len() == PARTITIONS as usize {
                return (pa, pb);
            }
        }
        a.assert_running("while the group formed");
        b.assert_running("while the group formed");
        assert!(Instant::now() < deadline, "the two instances never split the partitions");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_instance_restarted_at_once_gets_its_partitions_back_without_a_rebalance_of_the_others() {
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "static");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg_a = write_config(broker, &t, dir_a.path(), &unique_name("static-a"), NO_TRIP, &[], None);
    let cfg_b = write_config(broker, &t, dir_b.path(), &unique_name("static-b"), NO_TRIP, &[], None);
    // A restart must come back within the session timeout; 30 s leaves room for a slow machine
    // (the other tests use 6 s).
    for cfg in [&cfg_a, &cfg_b] {
        let text = std::fs::read_to_string(cfg).unwrap();
        assert!(text.contains("\"session.timeout.ms\" = \"6000\""), "unexpected config layout:\n{text}");
        std::fs::write(cfg, text.replace("\"session.timeout.ms\" = \"6000\"", "\"session.timeout.ms\" = \"30000\""))
            .unwrap();
    }
    let (log_a, log_b) = (dir_a.path().join("a.log"), dir_b.path().join("b.log"));
    let inputs = crash_inputs(40_000);
    let (first, second) = inputs.split_at(20_000);
    let mut coords = produce(broker, &t.input, first);

    let mut a = Service::spawn(&cfg_a, &log_a);
    let mut b = Service::spawn(&cfg_b, &log_b);
    a.wait_ready(Duration::from_secs(90));
    b.wait_ready(Duration::from_secs(90));
    let (owned_a, _) = wait_split(&mut a, &mut b);
    wait_committed_running(broker, &t, &mut b, first.len() as i64, Duration::from_secs(120));
    let rebalances_b = b.metric("resetguard_rebalances_total").expect("rebalance counter of b");
    let restores_b = b.metric("resetguard_restores_total").expect("restore counter of b");

    // SIGKILL a and start it again at once: same config, so the same instance name.
    a.kill();
    let mut a = Service::spawn(&cfg_a, &log_a);
    a.wait_ready(Duration::from_secs(90));
    coords.extend(produce(broker, &t.input, second));
    wait_committed_running(broker, &t, &mut b, inputs.len() as i64, Duration::from_secs(120));
    let (owned_a2, _) = wait_split(&mut a, &mut b);

    assert_eq!(owned_a2, owned_a, "the restarted instance owns what it owned before");
    assert_eq!(
        b.metric("resetguard_rebalances_total"),
        Some(rebalances_b),
        "the other instance saw no rebalance; its log:\n{}",
        log_summary(&log_b)
    );
    assert_eq!(b.metric("resetguard_restores_total"), Some(restores_b), "the other instance restored nothing");
    a.terminate_ok();
    b.terminate_ok();
    let (notices, _) = check_outputs(broker, &t, &inputs, &coords);
    let expected: BTreeSet<String> =
        inputs.iter().filter(|i| i.expect == Expect::Notice).map(|i| i.key.clone()).collect();
    assert_eq!(notices, expected, "the same notices as one uninterrupted instance");
}
