//! Restore from the changelog, pure (no Kafka): an engine that tracks its changes writes them as
//! changelog records at every "commit"; a second engine built only from those records (log
//! order, tombstones included) must hold the same state (equal canonical dumps) and, from then
//! on, decide exactly like the uninterrupted one.
//!
//! - `a_restore_from_the_changelog_holds_the_same_state_and_decides_alike` (proptest): random
//!   streams over three partitions with re-sends, late events, clock jumps, sweeps, a crash at
//!   every commit point; the log read whole, compacted, or through warm standbys whose
//!   decoded state the restore takes over.
//! - `expired_accounts_are_written_as_gone`: accounts and cooldowns that expire are written as
//!   gone, so a restore holds only live accounts.
//! - `the_batched_log_stays_within_twice_the_live_state`: compaction of batch records.
//! - `every_record_format_restores_the_same_state`: what a rolling upgrade writes.
//! - `per_account_records_move_into_batches`: the upgrade from one record per account.
//! - `a_restored_breaker_has_spent_the_budget_its_decisions_spent` (from the log and from standbys)

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use common::events::*;
use proptest::prelude::*;
use proptest::test_runner::Config;
use resetguard::core::breaker::HeldReason;
use resetguard::core::changelog::{parse_key, read_batch, BatchEntry, Key};
use resetguard::core::outcome::{Outcome, OutcomeKind};
use resetguard::core::{Engine, Policy, TimeMode};

fn engine(policy: &Policy) -> Engine {
    let mut e = Engine::new(Arc::new(policy.clone()), resetguard::core::hash::Keys::demo(), TimeMode::Wall);
    e.track_changes();
    e
}

/// A compacted topic's view of a log: the last record per (partition, key), tombstones dropped.
fn compacted(log: &[(u32, Vec<u8>, Option<Vec<u8>>)]) -> BTreeMap<(u32, Vec<u8>), Vec<u8>> {
    let mut m = BTreeMap::new();
    for (p, k, v) in log {
        match v {
            Some(v) => m.insert((*p, k.clone()), v.clone()),
            None => m.remove(&(*p, k.clone())),
        };
    }
    m
}

/// How a restore reads the log.
#[derive(Debug, Clone, Copy)]
enum Read {
    /// Every record, in log order.
    Whole,
    /// Only what compaction keeps.
    Compacted,
    /// A warm standby per partition loads its records in log order; the restore takes over
    /// its state ([`Engine::adopt_partition`]).
    Standby,
}

/// A fresh engine restored from `log`.
fn restore(policy: &Policy, log: &[(u32, Vec<u8>, Option<Vec<u8>>)], read: Read) -> Engine {
    let mut e = engine(policy);
    match read {
        Read::Whole => {
            for (p, k, v) in log {
                e.load_state(*p, k, v.as_deref()).unwrap();
            }
        }
        Read::Compacted => {
            for ((p, k), v) in compacted(log) {
                e.load_state(p, &k, Some(&v)).unwrap();
            }
        }
        Read::Standby => {
            for partition in 0..3 {
                let mut standby = Engine::standby(policy, resetguard::core::hash::Keys::demo());
                for (_, k, v) in log.iter().filter(|r| r.0 == partition) {
                    standby.load_state(partition, k, v.as_deref()).unwrap();
                }
                e.adopt_partition(standby, partition);
            }
        }
    }
    e.after_load(&[0, 1, 2]);
    e
}

fn drain(e: &mut Engine, log: &mut Vec<(u32, Vec<u8>, Option<Vec<u8>>)>) {
    e.drain_changes(|p, k, v| log.push((p, k.to_vec(), v.map(<[u8]>::to_vec))));
}

#[derive(Debug, Clone)]
enum Step {
    Valid {
        acct: usize,
        src: usize,
        sig: usize,
        risk: f64,
        offset_ms: i64,
    },
    /// Re-sends an earlier event (index modulo the events so far).
    Resend(usize),
    Advance(i64),
    Tick,
    Commit,
}

fn arb_step() -> impl Strategy<Value = Step> {
    let risk = prop_oneof![2 => 0.0..=1.0f64, 1 => Just(1.0), 1 => 0.9..=1.0f64];
    prop_oneof![
        10 => (0usize..30, 0usize..4, 0usize..7, risk, -20 * MINUTE..=MINUTE)
            .prop_map(|(acct, src, sig, risk, offset_ms)| Step::Valid { acct, src, sig, risk, offset_ms }),
        2 => any::<usize>().prop_map(Step::Resend),
        2 => (0i64..120_000).prop_map(Step::Advance),
        1 => Just(Step::Tick),
        2 => Just(Step::Commit),
    ]
}

#[derive(Debug, Clone)]
enum Call {
    Process { bytes: Vec<u8>, partition: u32, wall: i64, resend: bool },
    Tick(i64),
    Commit,
}

fn materialize(steps: &[Step]) -> Vec<Call> {
    let mut clock = T0;
    let mut sent: Vec<(Vec<u8>, u32)> = Vec::new();
    let mut calls = Vec::new();
    for (n, s) in steps.iter().enumerate() {
        let wall = clock + 2_000;
        match s {
            Step::Valid { acct, src, sig, risk, offset_ms } => {
                let ev = Ev::new(
                    &format!("e{n}"),
                    &account_name(*acct),
                    clock + offset_ms,
                    SOURCES[*src],
                    DEFAULT_SIGNALS[*sig],
                    *risk,
                );
                // Inputs are keyed by account: an account stays on its partition.
                let partition = (*acct % 3) as u32;
                sent.push((ev.bytes(), partition));
                calls.push(Call::Process { bytes: ev.bytes(), partition, wall, resend: false });
            }
            Step::Resend(i) if !sent.is_empty() => {
                let (bytes, partition) = sent[i % sent.len()].clone();
                calls.push(Call::Process { bytes, partition, wall, resend: true });
            }
            Step::Resend(_) => {}
            Step::Advance(ms) => clock += ms,
            Step::Tick => calls.push(Call::Tick(wall)),
            Step::Commit => calls.push(Call::Commit),
        }
    }
    calls.push(Call::Commit);
    calls
}

fn short(o: &Outcome) -> String {
    match o {
        Outcome::Notice(d) => format!("notice {}", d.notice_id),
        Outcome::Held(d, h) => format!("held {} {}", d.notice_id, h.reason.as_str()),
        o => format!("{:?}", o.kind()),
    }
}

proptest! {
    #![proptest_config(Config {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        max_shrink_iters: 500,
        ..Config::default()
    })]

    #[test]
    fn a_restore_from_the_changelog_holds_the_same_state_and_decides_alike(
        steps in prop::collection::vec(arb_step(), 1..160),
        read in prop_oneof![Just(Read::Whole), Just(Read::Compacted), Just(Read::Standby)],
    ) {
        let policy = Policy::default_with_version("changelog-v1");
        let calls = materialize(&steps);
        let mut live = engine(&policy);
        let mut log = Vec::new();
        // Per commit point: the log so far, the live state then, and where the calls resume.
        let mut points = Vec::new();
        let mut outcomes = Vec::new();
        for (i, c) in calls.iter().enumerate() {
            match c {
                Call::Process { bytes, partition, wall, .. } => {
                    outcomes.push(Some(short(&live.process(bytes, *partition, *wall).outcome)));
                }
                Call::Tick(w) => {
                    live.tick(*w);
                    outcomes.push(None);
                }
                Call::Commit => {
                    drain(&mut live, &mut log);
                    points.push((log.len(), live.state_dump(), i + 1));
                    outcomes.push(None);
                }
            }
        }
        for (len, dump, resume) in points {
            let mut restored = restore(&policy, &log[..len], read);
            prop_assert_eq!(restored.state_dump(), dump, "state after restoring {} records", len);
            for (i, c) in calls.iter().enumerate().skip(resume) {
                match c {
                    Call::Process { bytes, partition, wall, resend } => {
                        let got = short(&restored.process(bytes, *partition, *wall).outcome);
                        let want = outcomes[i].clone().unwrap_or_default();
                        // A re-sent event whose first copy is no longer among its account's
                        // newest evidence may be judged late instead of duplicate: neither decides.
                        let same_class = *resend
                            && !got.starts_with("notice") && !got.starts_with("held")
                            && !want.starts_with("notice") && !want.starts_with("held");
                        prop_assert!(got == want || same_class, "call {}: restored {} vs live {}", i, got, want);
                    }
                    Call::Tick(w) => {
                        restored.tick(*w);
                    }
                    Call::Commit => {}
                }
            }
        }
    }
}

/// Account entries of a log as a compacted topic keeps it: per-account records (formats 1 and
/// 2) and the entries of the batch records left, as (puts, gone).
fn entries(log: &[(u32, Vec<u8>, Option<Vec<u8>>)]) -> (usize, usize) {
    let (mut puts, mut gone) = (0, 0);
    for ((_, k), v) in compacted(log) {
        match parse_key(&k) {
            Key::Account(_) => puts += 1,
            Key::Batch(_) => {
                for e in read_batch(&v).entries() {
                    match e.unwrap() {
                        BatchEntry::Put(..) => puts += 1,
                        BatchEntry::Gone(_) => gone += 1,
                    }
                }
            }
            _ => {}
        }
    }
    (puts, gone)
}

/// 50 hours on (past the idle expiry, and past the cooldowns by one more cooldown, see
/// `Engine::tick`), one more event (account `acct-new`) moves the watermark of partition 0;
/// ticks sweep every account and, at a whole minute, prune the cooldowns.
fn expire_all_but_a_new_one(e: &mut Engine) {
    let later = T0_MINUTE + 50 * 60 * MINUTE;
    e.process(&event("late-one", "acct-new", later, "s", "new_device", 0.1), 0, later + 1_000);
    for k in 0..10 {
        e.tick(later + 60_000 * (k + 1));
    }
}

/// Expired accounts and pruned cooldowns are written as gone: after a day, a restore holds only
/// the accounts still live (here: none but the day's last).
#[test]
fn expired_accounts_are_written_as_gone() {
    let policy = Policy::default_with_version("changelog-v1");
    let mut e = engine(&policy);
    let mut log = Vec::new();
    for i in 0..3000 {
        let signal = if i % 2 == 0 { "breached_password" } else { "new_device" };
        e.process(&event(&format!("x{i}"), &format!("acct-{i}"), T0 + i, "s", signal, 1.0), 0, T0 + 5_000);
    }
    drain(&mut e, &mut log);
    assert_eq!(entries(&log), (3000, 0));
    expire_all_but_a_new_one(&mut e);
    drain(&mut e, &mut log);
    assert_eq!(e.tracked_accounts(), 1);
    assert_eq!(entries(&log), (3001, 3000), "every expired account is written as gone");
    let restored = restore(&policy, &log, Read::Compacted);
    assert_eq!(restored.tracked_accounts(), 1);
    assert_eq!(restored.state_dump(), e.state_dump());
    let book = e.changelog_book(0).unwrap();
    assert_eq!((book.entries, book.live_accounts, book.batches), (6001, 1, 2));
}

/// A changelog that keeps being written stays within about twice the live state: cold accounts
/// are copied forward by the compaction and their old batches get tombstones, hot accounts'
/// old copies go the same way, and a restore from what Kafka keeps equals the live state.
#[test]
fn the_batched_log_stays_within_twice_the_live_state() {
    let policy = Policy::default_with_version("changelog-v1");
    let mut e = engine(&policy);
    let mut log = Vec::new();
    let wall = T0 + 5_000;
    // 5,000 cold accounts, written once.
    for i in 0..5_000 {
        e.process(&event(&format!("c{i}"), &format!("cold-{i}"), T0 + i, "s", "new_device", 0.1), 0, wall);
    }
    drain(&mut e, &mut log);
    // 1,000 hot accounts, each changed in each of 120 transactions.
    let mut most = 0;
    for round in 0..120 {
        for i in 0..1_000 {
            let ev = event(&format!("h{round}-{i}"), &format!("hot-{i}"), T0 + round, "s", "new_device", 0.01);
            e.process(&ev, 0, wall);
        }
        drain(&mut e, &mut log);
        let (puts, gone) = entries(&log);
        most = most.max(puts + gone);
        // What Kafka keeps restores the live state at every point of the compactions.
        assert_eq!(restore(&policy, &log, Read::Compacted).state_dump(), e.state_dump(), "after round {round}");
    }
    let live = e.tracked_accounts();
    assert_eq!(live, 6_000);
    let written: usize = 5_000 + 120 * 1_000;
    // At most twice the live state plus the slack before a compaction starts, plus what is
    // written while it runs (six transactions of 1,000 and its steps of 1,024).
    assert!(most <= 2 * live + 16_384 + 6 * 2_024, "the log held up to {most} entries of {written} written");
    let tombstones = log.iter().filter(|(_, k, v)| v.is_none() && matches!(parse_key(k), Key::Batch(_))).count();
    assert!(tombstones > 100, "old batches got tombstones: {tombstones}");
    let book = e.changelog_book(0).unwrap();
    assert_eq!(book.live_accounts, 6_000);
    assert_eq!(book.entries as usize, entries(&log).0 + entries(&log).1);
    for read in [Read::Compacted, Read::Whole, Read::Standby] {
        let r = restore(&policy, &log, read);
        assert_eq!(r.state_dump(), e.state_dump(), "{read:?}");
        assert_eq!(r.changelog_book(0), Some(book), "{read:?}: the restored book");
    }
}

/// A rolling upgrade writes an older record format (`pipeline.changelog_record_version` 1 or 2:
/// one record per account, 3: batches without name tables): all formats restore the same
/// state, version 1's evidence ids are text, and format 4 writes each name once per batch.
#[test]
fn every_record_format_restores_the_same_state() {
    let policy = Policy::default_with_version("changelog-v1");
    let (mut v1, mut v2, mut v3, mut v4) = (engine(&policy), engine(&policy), engine(&policy), engine(&policy));
    v1.track_changes_as(1);
    v2.track_changes_as(2);
    v3.track_changes_as(3);
    let (mut log1, mut log2, mut log3, mut log4) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..500 {
        // UUID-shaped ids (packed in version 2) and others, three events on some accounts.
        let id = if i % 2 == 0 { format!("{:08x}-0000-4000-8000-{:012x}", i, i * 7) } else { format!("ev-{i}") };
        let signal = ["credential_stuffing", "new_device", "failed_login"][i % 3];
        let ev = event(&id, &format!("acct-{}", i % 200), T0 + i as i64, "s", signal, 0.9);
        let p = (i % 3) as u32;
        let o = v1.process(&ev, p, T0 + 5_000).outcome;
        assert_eq!(o, v2.process(&ev, p, T0 + 5_000).outcome);
        assert_eq!(o, v3.process(&ev, p, T0 + 5_000).outcome);
        assert_eq!(o, v4.process(&ev, p, T0 + 5_000).outcome);
    }
    drain(&mut v1, &mut log1);
    drain(&mut v2, &mut log2);
    drain(&mut v3, &mut log3);
    drain(&mut v4, &mut log4);
    let version = |log: &[(u32, Vec<u8>, Option<Vec<u8>>)]| {
        log.iter()
            .filter(|(_, k, _)| matches!(parse_key(k), Key::Account(_)))
            .filter_map(|(_, _, v)| v.as_ref()?.first().copied())
            .collect::<HashSet<u8>>()
    };
    assert_eq!(version(&log1), HashSet::from([1]));
    assert_eq!(version(&log2), HashSet::from([2]));
    assert_eq!(version(&log3), HashSet::new());
    let batch_version = |log: &[(u32, Vec<u8>, Option<Vec<u8>>)]| {
        log.iter()
            .filter(|(_, k, _)| matches!(parse_key(k), Key::Batch(_)))
            .filter_map(|(_, _, v)| v.as_ref()?.first().copied())
            .collect::<HashSet<u8>>()
    };
    assert_eq!((batch_version(&log3), batch_version(&log4)), (HashSet::from([1]), HashSet::from([2])));
    let bytes = |log: &[(u32, Vec<u8>, Option<Vec<u8>>)]| {
        log.iter().map(|(_, _, v)| v.as_ref().map_or(0, Vec::len)).sum::<usize>()
    };
    assert!(bytes(&log2) < bytes(&log1), "packed ids are smaller: {} vs {}", bytes(&log2), bytes(&log1));
    // Each record of format 3 names its signal and source (~20 bytes of its ~90); format 4 once
    // per batch.
    assert!(
        bytes(&log4) * 5 < bytes(&log3) * 4,
        "names once per batch are smaller: {} vs {}",
        bytes(&log4),
        bytes(&log3)
    );
    // 200 accounts and 3 watermarks: 200 records of their own, or one batch per partition.
    assert_eq!((log2.len(), log3.len(), log4.len()), (203, 6, 6));
    for log in [&log1, &log2, &log3, &log4] {
        assert_eq!(restore(&policy, log, Read::Compacted).state_dump(), v2.state_dump());
    }
}

/// Going back to one record per account (format 2) over a log written in batches: an account
/// that goes gets a "gone" entry in a batch as well as its tombstone, so once Kafka drops the
/// tombstone (`delete.retention.ms`) the batch's older copy does not come back.
#[test]
fn an_account_gone_under_format_2_does_not_come_back_from_a_batch() {
    let policy = Policy::default_with_version("changelog-v1");
    let mut e = engine(&policy);
    let mut log = Vec::new();
    for i in 0..50 {
        e.process(&event(&format!("b{i}"), &format!("acct-{i}"), T0 + i, "s", "new_device", 0.2), 0, T0 + 5_000);
    }
    drain(&mut e, &mut log);
    let mut back = restore(&policy, &log, Read::Whole);
    back.track_changes_as(2);
    expire_all_but_a_new_one(&mut back);
    drain(&mut back, &mut log);
    assert_eq!(back.tracked_accounts(), 1);
    // What compaction keeps once the tombstones are gone too.
    let kept: Vec<_> = compacted(&log).into_iter().map(|((p, k), v)| (p, k, Some(v))).collect();
    assert_eq!(entries(&kept), (51, 50), "50 accounts and the new one, 50 gone");
    let restored = restore(&policy, &kept, Read::Whole);
    assert_eq!(restored.state_dump(), back.state_dump());
}

/// Every read of `log` (compacted, whole, warm standbys) restores `live`'s state.
fn assert_every_read_restores(policy: &Policy, log: &[(u32, Vec<u8>, Option<Vec<u8>>)], live: &Engine, when: &str) {
    for read in [Read::Compacted, Read::Whole, Read::Standby] {
        assert_eq!(restore(policy, log, read).state_dump(), live.state_dump(), "{read:?}, {when}");
    }
}

/// An upgrade in place: 300 accounts written in record format `old` (two partitions, three
/// signals), restored by the new version (format 4), which goes on with 100 of them. Returns the
/// new version's engine and the log.
fn upgrade_from(policy: &Policy, old: u8) -> (Engine, Vec<(u32, Vec<u8>, Option<Vec<u8>>)>) {
    let mut before = engine(policy);
    before.track_changes_as(old);
    let mut log = Vec::new();
    let wall = T0 + 5_000;
    for i in 0..300 {
        let signal = ["credential_stuffing", "new_device", "failed_login"][i % 3];
        let ev = event(&format!("o{i}"), &format!("acct-{i}"), T0 + i as i64, "s", signal, 0.6);
        before.process(&ev, (i % 2) as u32, wall);
    }
    drain(&mut before, &mut log);
    let mut new = restore(policy, &log, Read::Whole);
    new.track_changes();
    for i in 0..100 {
        let ev = event(&format!("n{i}"), &format!("acct-{i}"), T0 + 400 + i as i64, "t", "new_device", 0.2);
        new.process(&ev, (i % 2) as u32, wall);
    }
    drain(&mut new, &mut log);
    (new, log)
}

/// An upgrade from one record per account: each account's record gets a tombstone just before
/// its first batch entry (or its "gone"), so what compaction keeps never brings back an older
/// state, and the log ends up with no per-account record of a live account.
#[test]
fn per_account_records_move_into_batches() {
    let policy = Policy::default_with_version("changelog-v1");
    let (mut new, mut log) = upgrade_from(&policy, 2);
    let own = |log: &[(u32, Vec<u8>, Option<Vec<u8>>)]| {
        compacted(log).keys().filter(|(_, k)| matches!(parse_key(k), Key::Account(_))).count()
    };
    assert_eq!(own(&log), 200, "the changed accounts' own records have tombstones");
    assert_every_read_restores(&policy, &log, &new, "after the upgrade");
    // Everything expires: the other 200 go too, and nothing comes back.
    expire_all_but_a_new_one(&mut new);
    drain(&mut new, &mut log);
    assert_eq!(new.tracked_accounts(), 1);
    assert_eq!(own(&log), 0);
    assert_every_read_restores(&policy, &log, &new, "after every account but one expired");
}

/// An upgrade from batches without name tables (format 3) to format 4: both batch versions in
/// one log restore the same state, before and after every account but one expired.
#[test]
fn batches_of_both_versions_in_one_log_restore_the_same_state() {
    let policy = Policy::default_with_version("changelog-v1");
    let (mut new, mut log) = upgrade_from(&policy, 3);
    let versions: Vec<u8> = log
        .iter()
        .filter(|(_, k, _)| matches!(parse_key(k), Key::Batch(_)))
        .filter_map(|(_, _, v)| v.as_ref()?.first().copied())
        .collect();
    assert_eq!(versions, [1, 1, 2, 2]);
    assert_every_read_restores(&policy, &log, &new, "after the upgrade");
    expire_all_but_a_new_one(&mut new);
    drain(&mut new, &mut log);
    assert_eq!(new.tracked_accounts(), 1);
    assert_every_read_restores(&policy, &log, &new, "after every account but one expired");
}

/// The breaker's history comes back from the cooldowns in the changelog: a restored instance
/// whose last minute already spent the source's burst holds the next decision instead of
/// sending a fresh burst.
#[test]
fn a_restored_breaker_has_spent_the_budget_its_decisions_spent() {
    let mut policy = Policy::default_with_version("changelog-v1");
    policy.breaker.cell_burst = 5;
    policy.breaker.spike_floor = 1_000;
    let mut e = engine(&policy);
    let mut log = Vec::new();
    let wall = T0 + 1_000;
    let mut notices = 0;
    for i in 0..20 {
        let o =
            e.process(&event(&format!("b{i}"), &format!("acct-{i}"), T0, "src-a", "breached_password", 1.0), 0, wall);
        notices += usize::from(o.outcome.kind() == OutcomeKind::Notice);
    }
    assert_eq!(notices, 5, "the cell's burst");
    drain(&mut e, &mut log);
    for read in [Read::Compacted, Read::Standby] {
        let mut restored = restore(&policy, &log, read);
        let o = restored
            .process(&event("b-next", "acct-next", T0, "src-a", "breached_password", 1.0), 0, wall + 10)
            .outcome;
        let Outcome::Held(_, h) = &o else { panic!("{read:?}: expected held, got {}", short(&o)) };
        assert_eq!(h.reason, HeldReason::CellRateLimited, "{read:?}");
        let ids: HashSet<String> = restored.state_dump().iter().map(|(_, k, _)| format!("{k:?}")).collect();
        assert_eq!(ids.len(), 22, "{read:?}: 21 accounts and the watermark");
    }
}
