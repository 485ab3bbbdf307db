//! The engine: one call per input event (`process`), one per timer tick (`tick`); composes decoding,
//! dedupe, watermarks, account windows, the cooldown ledger, the allow-list and the breaker into
//! exactly one [`Outcome`] per event. Pure: the caller passes the time in.

use std::sync::Arc;

use hashbrown::HashMap;

use super::accounts::{quantise_risk, AccountStore, Entry, WindowView, NO_COPY, NO_SLOT};
use super::breaker::{Breaker, Transition, Verdict};
use super::dedupe::Dedupe;
use super::event::{decode, format_rfc3339_ms, Event, Rejection};
use super::hash::{id_hash, IdentityBuild, Keys};
use super::outcome::{
    Decision, Explanation, HeldInfo, NoActionReason, Outcome, SignalContribution, Trigger, WindowInfo, WindowKind,
};
use super::policy::Policy;

/// Which clock drives windows, dedupe horizons, idle expiry and the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeMode {
    /// Live service: the wall clock passed to each call.
    Wall,
    /// Replay: the largest event time seen so far (the wall clock only bounds future timestamps).
    EventTime,
}

/// The outcome of one event, plus the breaker cell of its source when it decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Processed {
    pub outcome: Outcome,
    pub cell: Option<u8>,
    pub event_ms: Option<i64>,
}

mod logbook;
mod persist;
pub use persist::{BookSummary, Drained, StateRecord, StateSummary};

/// An account's cooldown: no new decision before `until_s` (event time, seconds). The decision
/// that started it (when, which cell) is kept for the changelog, from which a restore replays
/// the breaker's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cooldown {
    until_s: u32,
    partition: u16,
    cell: u8,
    at_ms: i64,
    /// Where the changelog's newest copy of the account is (as [`AccountStore::copy_of`]).
    copy: u32,
}

/// Salt separating account-id hashes from event-id hashes under the same seed.
const ACCOUNT_SALT: u64 = 0x6163_636f_756e_7421;
/// Slots the sweep examines per tick: bounded work per tick, a full pass over 1 M accounts in
/// about 25 s at the default 100 ms tick.
pub const SWEEP_BUDGET: usize = 4096;
/// Accounts of a taken-over store moved into the shard's own per tick (and 4 times as many
/// dedupe ids): a 333 k-account partition is folded in within about 8 s at the default tick.
pub const MERGE_BUDGET: usize = 4096;

/// What a shard concluded about an admitted event: an outcome already, or a decision (built,
/// unless restoring) for the breaker to judge.
enum Judged {
    Done(Outcome),
    Decided(Option<Box<Decision>>),
}

/// An event past dedupe and the watermark (see [`Engine::admit`]): the engine's clock for it,
/// its breaker cell and its partition.
#[derive(Clone, Copy)]
struct Admitted {
    now: i64,
    cell: u8,
    partition: u16,
}

/// The per-account state of the input partitions `p` with `p % shards == index`: windows,
/// cooldowns and what changed for the changelog. An account lives in the shard of the
/// partition its events come from (inputs are keyed by account), so shards never share one and
/// can judge events side by side ([`Engine::process_batch`]).
struct Shard {
    accounts: AccountStore,
    /// Cooldowns per account: until when (event time), and the decision that started it.
    ledger: HashMap<u64, Cooldown, IdentityBuild>,
    /// Accounts changed since the last drain (kept only while changes are tracked).
    changed: HashMap<u64, Changed, IdentityBuild>,
}

/// An account changed since the last drain.
#[derive(Debug, Clone, Copy)]
struct Changed {
    /// The partition its record goes to (of its last change).
    partition: u16,
    /// Where the changelog's copy of the account was before the first change.
    before: u32,
    /// Its slot in the shard's store at its last change ([`NO_SLOT`]: it has none), so that
    /// the drain reads its state without a lookup while the slot still holds it.
    slot: u32,
}

/// What a shard reads of the engine while it judges: fixed for the length of a batch.
struct View<'e> {
    policy: &'e Policy,
    seed: u64,
    keys: &'e Keys,
    allow: &'e HashMap<u64, i64, IdentityBuild>,
    breaker: &'e Breaker,
    /// Changes are tracked for the changelog ([`Engine::track_changes`]).
    track: bool,
}

pub struct Engine {
    policy: Arc<Policy>,
    seed: u64,
    keys: Keys,
    mode: TimeMode,
    shards: Vec<Shard>,
    /// Judges the shards side by side (`None`: one shard, or judged in turn).
    pool: Option<Arc<rayon::ThreadPool>>,
    dedupe: Dedupe,
    /// Highest event time seen per input partition (`i64::MIN`: none yet).
    max_event_ms: Vec<i64>,
    allow: HashMap<u64, i64, IdentityBuild>,
    /// Partitions whose watermark moved since the last [`Engine::drain_changes`], and its
    /// buffers (`None`: not tracked).
    changes: Option<persist::Changes>,
    /// Per partition (global number), what its changelog holds in batches (record format 3).
    books: HashMap<u32, logbook::LogBook>,
    breaker: Breaker,
    event_clock_ms: i64,
    /// Whether `process` was called: from then on `restore` no longer replays into the breaker.
    live_started: bool,
}

impl Shard {
    fn new(policy: &Policy) -> Self {
        Shard {
            accounts: AccountStore::new(policy),
            ledger: HashMap::with_hasher(IdentityBuild::default()),
            changed: HashMap::with_hasher(IdentityBuild::default()),
        }
    }

    fn reset(&mut self, policy: &Policy) {
        self.accounts = AccountStore::new(policy);
        self.ledger.clear();
        self.changed.clear();
    }

    /// Notes that `key` changed (its state or that it is gone).
    fn mark_changed(&mut self, key: u64, partition: u16, before: u32, slot: u32) {
        self.changed
            .entry(key)
            .and_modify(|c| {
                c.partition = partition;
                c.slot = slot;
            })
            .or_insert(Changed { partition, before, slot });
    }

    /// Everything after dedupe and the watermark: windows, allow-list and cooldown (the ledger
    /// records a decision here), and the decision record unless restoring. Reads nothing
    /// another shard writes, so its result does not depend on how shards interleave.
    fn judge(&mut self, v: &View<'_>, ev: &Event<'_>, a: Admitted, restoring: bool) -> Judged {
        let Admitted { now, cell, partition } = a;
        let key = id_hash(v.seed ^ ACCOUNT_SALT, &ev.account_id);
        let t_s = ev.occurred_at_ms.div_euclid(1000).clamp(0, i64::from(u32::MAX)) as u32;
        let entry = Entry { t: t_s, risk_q: quantise_risk(ev.risk), signal: ev.signal, cell };
        let now_s = now.div_euclid(1000).clamp(0, i64::from(u32::MAX)) as u32;
        let scores = self.accounts.add(key, entry, &ev.event_id, now_s, partition);
        if v.track {
            let copy = match scores.copy {
                NO_COPY => self.ledger.get(&key).map_or(NO_COPY, |c| c.copy),
                copy => copy,
            };
            self.mark_changed(key, partition, copy, scores.slot);
        }

        let p = v.policy;
        let short_hit = scores.short >= p.threshold;
        let slow_hit =
            p.slow.enabled && scores.slow >= p.slow.threshold && scores.slow_kinds >= p.slow.min_signal_kinds;
        if !short_hit && !slow_hit {
            return Judged::Done(Outcome::NoAction(NoActionReason::BelowThreshold));
        }
        if v.allow.get(&key).is_some_and(|&until| ev.occurred_at_ms < until) {
            return Judged::Done(Outcome::NoAction(NoActionReason::AllowListed));
        }
        if self.ledger.get(&key).is_some_and(|c| t_s < c.until_s) {
            return Judged::Done(Outcome::NoAction(NoActionReason::Cooldown));
        }
        let until_s = t_s.saturating_add(p.cooldown.as_secs() as u32);
        let copy = self.ledger.get(&key).map_or(scores.copy, |c| c.copy);
        self.ledger.insert(key, Cooldown { until_s, partition, cell, at_ms: now, copy });
        if restoring {
            return Judged::Decided(None);
        }
        let (kind, score, threshold) = if short_hit {
            (WindowKind::Short, scores.short, p.threshold)
        } else {
            (WindowKind::Slow, scores.slow, p.slow.threshold)
        };
        let view = self.accounts.view(key).unwrap_or(WindowView {
            start_s: t_s,
            end_s: t_s,
            contributions: Vec::new(),
            evidence: Vec::new(),
        });
        Judged::Decided(Some(Box::new(build_decision(v, ev, cell, now, kind, score, threshold, view))))
    }
}

impl Engine {
    /// `keys` (from the deployment secret) key the id hashes and `notice_id`.
    pub fn new(policy: Arc<Policy>, keys: Keys, mode: TimeMode) -> Self {
        let seed = keys.id_seed();
        let mut allow = HashMap::with_hasher(IdentityBuild::default());
        for a in &policy.allow_list {
            allow.insert(id_hash(seed ^ ACCOUNT_SALT, &a.account_id), a.expires_at_ms);
        }
        Engine {
            shards: vec![Shard::new(&policy)],
            pool: None,
            dedupe: Dedupe::new(policy.dedupe_horizon.as_millis() as i64, policy.dedupe_max_entries),
            breaker: Breaker::new(policy.breaker.clone()),
            max_event_ms: Vec::new(),
            allow,
            changes: None,
            books: HashMap::new(),
            event_clock_ms: i64::MIN,
            live_started: false,
            policy,
            seed,
            keys,
            mode,
        }
    }

    /// Splits account state into `shards` (at least 1), judged side by side on as many threads
    /// by [`Engine::process_batch`]. Outcomes, state and changelog records are the same as with
    /// one shard for the same input, as long as an account's events come from one partition.
    /// Call before the first event: any state is dropped.
    pub fn with_shards(mut self, shards: usize) -> Result<Self, String> {
        let n = shards.max(1);
        self.shards = (0..n).map(|_| Shard::new(&self.policy)).collect();
        self.pool = if n > 1 {
            // The calling thread judges one shard itself (see `process_batch`).
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n - 1)
                .thread_name(|i| format!("rg-shard-{i}"))
                .build()
                .map_err(|e| format!("cannot start {n} shard threads: {e}"))?;
            Some(Arc::new(pool))
        } else {
            None
        };
        Ok(self)
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    pub fn breaker_mut(&mut self) -> &mut Breaker {
        &mut self.breaker
    }

    pub fn tracked_accounts(&self) -> usize {
        self.shards.iter().map(|s| s.accounts.len()).sum()
    }

    /// Estimated bytes of state (accounts, dedupe, ledger). Walks the store: not per event.
    pub fn state_bytes(&self) -> usize {
        let shards: usize = self.shards.iter().map(|s| s.accounts.heap_bytes() + s.ledger.capacity() * 25).sum();
        shards + self.dedupe.heap_bytes()
    }

    fn shard_index(&self, partition: u32) -> usize {
        partition as usize % self.shards.len()
    }

    /// The clock the engine runs on, given the wall clock.
    pub fn now(&self, wall_ms: i64) -> i64 {
        match self.mode {
            TimeMode::Wall => wall_ms,
            TimeMode::EventTime => self.event_clock_ms,
        }
    }

    /// Watermark of a partition: its newest event time minus the allowed lateness.
    pub fn watermark(&self, partition: u32) -> Option<i64> {
        let m = *self.max_event_ms.get(partition as usize)?;
        (m != i64::MIN).then(|| m - self.policy.allowed_lateness.as_millis() as i64)
    }

    /// Lowest watermark over partitions that have seen events.
    pub fn min_watermark(&self) -> Option<i64> {
        let lateness = self.policy.allowed_lateness.as_millis() as i64;
        self.max_event_ms.iter().filter(|m| **m != i64::MIN).min().map(|m| m - lateness)
    }

    /// Forgets the watermark of a partition this instance no longer owns.
    pub fn forget_partition(&mut self, partition: u32) {
        if let Some(m) = self.max_event_ms.get_mut(partition as usize) {
            *m = i64::MIN;
        }
    }

    /// Decides the outcome of one input message from `partition`.
    pub fn process(&mut self, bytes: &[u8], partition: u32, wall_ms: i64) -> Processed {
        self.live_started = true;
        let decoded = decode(bytes, &self.policy, wall_ms);
        self.process_decoded(decoded, partition, wall_ms)
    }

    fn process_decoded(&mut self, decoded: Result<Event<'_>, Rejection>, partition: u32, wall_ms: i64) -> Processed {
        let ev = match decoded {
            Ok(ev) => ev,
            Err(r) => return Processed { outcome: Outcome::Rejected(r), cell: None, event_ms: None },
        };
        let event_ms = Some(ev.occurred_at_ms);
        let a = match self.admit(&ev, partition, wall_ms, false) {
            Ok(a) => a,
            Err((outcome, cell)) => return Processed { outcome, cell: Some(cell), event_ms },
        };
        let judged = self.judge_in_shard(&ev, a, partition, false);
        let outcome = self.verdict(judged, a, ev.occurred_at_ms);
        Processed { outcome, cell: Some(a.cell), event_ms }
    }

    /// [`Engine::process`] for a batch of messages (payload, partition), in order, appending one
    /// [`Processed`] per message to `out`. With several shards, decoding and the per-account
    /// work run side by side on the shard threads; the steps that see every partition (dedupe,
    /// watermarks, breaker cells, and the breaker's verdicts) run in input order on the calling
    /// thread. The outcomes are exactly those of calling `process` for each message in turn.
    pub fn process_batch(&mut self, batch: &[(&[u8], u32)], wall_ms: i64, out: &mut Vec<Processed>) {
        self.live_started = true;
        let Some(pool) = self.pool.clone() else {
            let decoded: Vec<_> = batch.iter().map(|&(bytes, _)| decode(bytes, &self.policy, wall_ms)).collect();
            // Each event's dedupe entry and account state, read ahead in one short loop: their
            // cache misses overlap here instead of stalling the in-order work one by one.
            for (d, &(_, partition)) in decoded.iter().zip(batch) {
                if let Ok(ev) = d {
                    self.dedupe.touch(id_hash(self.seed, &ev.event_id));
                    let shard = &self.shards[self.shard_index(partition)];
                    shard.accounts.touch(id_hash(self.seed ^ ACCOUNT_SALT, &ev.account_id));
                }
            }
            for (d, &(_, partition)) in decoded.into_iter().zip(batch) {
                let p = self.process_decoded(d, partition, wall_ms);
                out.push(p);
            }
            return;
        };
        let policy = self.policy.clone();
        let policy = &*policy;
        let n = self.shards.len();
        // 1. Decode, side by side: one slice of the batch per thread, the calling thread taking
        // the first (the pool has `n - 1` threads, so `n` threads work and none waits idle).
        let slice = batch.len().div_ceil(n).max(1);
        let mut parts: Vec<Vec<Result<Event<'_>, Rejection>>> = (0..n).map(|_| Vec::new()).collect();
        pool.in_place_scope(|scope| {
            let mut slices = batch.chunks(slice).zip(parts.iter_mut());
            let own = slices.next();
            for (chunk, part) in slices {
                scope.spawn(move |_| *part = chunk.iter().map(|&(bytes, _)| decode(bytes, policy, wall_ms)).collect());
            }
            if let Some((chunk, part)) = own {
                *part = chunk.iter().map(|&(bytes, _)| decode(bytes, policy, wall_ms)).collect();
            }
        });
        let decoded: Vec<Result<Event<'_>, Rejection>> = parts.into_iter().flatten().collect();
        // 2. Dedupe, watermarks and cells, in input order.
        let mut admitted: Vec<Option<Admitted>> = Vec::with_capacity(batch.len());
        let mut per_shard: Vec<Vec<usize>> = vec![Vec::new(); n];
        let first = out.len();
        for (i, (d, &(_, partition))) in decoded.iter().zip(batch).enumerate() {
            match d {
                Err(r) => {
                    out.push(Processed { outcome: Outcome::Rejected(r.clone()), cell: None, event_ms: None });
                    admitted.push(None);
                }
                Ok(ev) => {
                    let event_ms = Some(ev.occurred_at_ms);
                    match self.admit(ev, partition, wall_ms, false) {
                        Ok(a) => {
                            // A placeholder the verdict replaces below.
                            out.push(Processed { outcome: Outcome::Duplicate, cell: Some(a.cell), event_ms });
                            per_shard[partition as usize % n].push(i);
                            admitted.push(Some(a));
                        }
                        Err((outcome, cell)) => {
                            out.push(Processed { outcome, cell: Some(cell), event_ms });
                            admitted.push(None);
                        }
                    }
                }
            }
        }
        // 3. Per-account work, each shard on its own thread, each in input order.
        let v = View {
            policy,
            seed: self.seed,
            keys: &self.keys,
            allow: &self.allow,
            breaker: &self.breaker,
            track: self.changes.is_some(),
        };
        let (decoded, admitted, v) = (&decoded, &admitted, &v);
        let judge_all = |shard: &mut Shard, idx: &[usize]| -> Vec<Judged> {
            idx.iter()
                .map(|&i| {
                    let (Ok(ev), Some(a)) = (&decoded[i], admitted[i]) else { unreachable!("only admitted events") };
                    shard.judge(v, ev, a, false)
                })
                .collect()
        };
        let mut judged: Vec<Vec<Judged>> = (0..n).map(|_| Vec::new()).collect();
        pool.in_place_scope(|scope| {
            let mut work = self.shards.iter_mut().zip(&per_shard).zip(judged.iter_mut());
            let own = work.next();
            for ((shard, idx), out) in work {
                scope.spawn(move |_| *out = judge_all(shard, idx));
            }
            if let Some(((shard, idx), out)) = own {
                *out = judge_all(shard, idx);
            }
        });
        // 4. The breaker's verdicts, in input order.
        let mut results: Vec<std::vec::IntoIter<Judged>> = judged.into_iter().map(Vec::into_iter).collect();
        for (i, a) in admitted.iter().enumerate() {
            let Some(a) = *a else { continue };
            let partition = batch[i].1;
            let judged = results[partition as usize % n].next().expect("one result per admitted event");
            let Ok(ev) = &decoded[i] else { continue };
            out[first + i].outcome = self.verdict(judged, a, ev.occurred_at_ms);
        }
    }

    /// Rebuilds state from an input that was already decided and committed (restore after a
    /// restart, a rebalance or an aborted transaction): windows, dedupe, watermark and cooldown
    /// are updated exactly as `process` would, and no outcome is returned, because the outcome
    /// was recorded when the input was first processed. `at_ms` is when it was first processed
    /// (the Kafka record timestamp). Until the first live event, decisions are also replayed into
    /// the breaker at `at_ms`, so a restarted instance comes back with the cells open that were
    /// open, the budget that was spent and the baselines it had learned; afterwards (a rebalance
    /// in a running instance) the breaker already holds that history and is not charged again.
    pub fn restore(&mut self, bytes: &[u8], partition: u32, wall_ms: i64, at_ms: i64) {
        if let Ok(ev) = decode(bytes, &self.policy, wall_ms) {
            let at = if self.mode == TimeMode::EventTime { wall_ms } else { at_ms };
            let replay = !self.live_started;
            if let Ok(a) = self.admit(&ev, partition, at, true) {
                if matches!(self.judge_in_shard(&ev, a, partition, true), Judged::Decided(_)) && replay {
                    let _ = self.breaker.check(a.cell, at);
                }
            }
            if replay {
                // Transitions re-lived during restore were reported by the previous incarnation.
                self.breaker.drain_transitions();
            }
        }
    }

    /// Starts a restore: drops all state (kept: the allow-list and the breaker's configuration,
    /// cells and manual overrides, see [`Breaker::without_history`]) so that `restore` can
    /// rebuild it, breaker history included, from the committed inputs. `share` is this
    /// instance's share of the fleet's caps. Call [`Engine::finish_restore`] before the first
    /// live `process`.
    pub fn begin_restore(&mut self, share: f64) {
        self.reset_state();
        self.breaker = self.breaker.without_history(share);
        self.live_started = false;
    }

    /// Ends a restore: manual overrides apply again; transitions re-lived during the replay
    /// were reported by whoever first lived them.
    pub fn finish_restore(&mut self, wall_ms: i64) {
        self.breaker.drain_transitions();
        self.breaker.reapply_overrides(self.now(wall_ms));
        self.breaker.drain_transitions();
    }

    /// Drops all per-account state, dedupe memory, cooldowns and watermarks (kept: the breaker,
    /// the allow-list).
    pub fn reset_state(&mut self) {
        let policy = self.policy.clone();
        self.shards.iter_mut().for_each(|s| s.reset(&policy));
        self.dedupe = Dedupe::new(self.policy.dedupe_horizon.as_millis() as i64, self.policy.dedupe_max_entries);
        self.max_event_ms.clear();
        self.books.clear();
        if let Some(c) = &mut self.changes {
            c.clear();
        }
    }

    /// The steps of judging an event that see every partition, in input order: the event clock,
    /// dedupe, the watermark (late events) and the source's breaker cell. `Err`: the event's
    /// outcome already (with its cell).
    fn admit(
        &mut self,
        ev: &Event<'_>,
        partition: u32,
        wall_ms: i64,
        restoring: bool,
    ) -> Result<Admitted, (Outcome, u8)> {
        let cell = self.breaker.cell_for(&ev.source);
        if self.mode == TimeMode::EventTime {
            self.event_clock_ms = self.event_clock_ms.max(ev.occurred_at_ms);
        }
        let now = self.now(wall_ms);
        if self.dedupe.seen_or_insert(id_hash(self.seed, &ev.event_id), now) {
            return Err((Outcome::Duplicate, cell));
        }
        let p = (partition as usize).min(u16::MAX as usize);
        if p >= self.max_event_ms.len() {
            self.max_event_ms.resize(p + 1, i64::MIN);
        }
        let lateness = self.policy.allowed_lateness.as_millis() as i64;
        let newest = self.max_event_ms[p];
        // A partition without a watermark yet (new, or just assigned) may start far behind the
        // others (a backlog), so it is judged against the lowest watermark of the others minus
        // one cooldown: cooldowns are pruned only that far behind (see `tick`), so no event can
        // slip past a pruned cooldown. Not while restoring, where partitions are re-read side by
        // side from far back.
        let cooldown_ms = self.policy.cooldown.as_millis() as i64;
        let watermark = if newest != i64::MIN {
            Some(newest - lateness)
        } else if restoring {
            None
        } else {
            self.min_watermark().map(|w| w - cooldown_ms)
        };
        if let Some(wm) = watermark {
            if ev.occurred_at_ms < wm {
                return Err((Outcome::Late { event_ms: ev.occurred_at_ms, watermark_ms: wm }, cell));
            }
        }
        self.max_event_ms[p] = newest.max(ev.occurred_at_ms);
        let partition = p as u16;
        if let Some(c) = &mut self.changes {
            c.touch_partition(partition);
        }
        Ok(Admitted { now, cell, partition })
    }

    /// [`Shard::judge`] of one admitted event, on the calling thread.
    fn judge_in_shard(&mut self, ev: &Event<'_>, a: Admitted, partition: u32, restoring: bool) -> Judged {
        let i = self.shard_index(partition);
        let v = View {
            policy: &self.policy,
            seed: self.seed,
            keys: &self.keys,
            allow: &self.allow,
            breaker: &self.breaker,
            track: self.changes.is_some(),
        };
        self.shards[i].judge(&v, ev, a, restoring)
    }

    /// The breaker's verdict on a shard's decision, and its record (notice or held).
    fn verdict(&mut self, judged: Judged, a: Admitted, event_ms: i64) -> Outcome {
        let decision = match judged {
            Judged::Done(outcome) => return outcome,
            Judged::Decided(Some(d)) => d,
            Judged::Decided(None) => unreachable!("live decisions are built"),
        };
        let now = a.now;
        self.breaker.note_event_lag(now - event_ms, now);
        match self.breaker.check(a.cell, now) {
            Verdict::Send => Outcome::Notice(decision),
            Verdict::Hold { reason, cell } => Outcome::Held(
                decision,
                HeldInfo { reason, cell: self.breaker.cell_name(cell).to_string(), held_at: format_rfc3339_ms(now) },
            ),
        }
    }

    /// Timer work: breaker timers, and a bounded sweep of expired accounts and cooldowns.
    /// Returns the number of accounts freed.
    pub fn tick(&mut self, wall_ms: i64) -> usize {
        let now = self.now(wall_ms);
        if now == i64::MIN {
            return 0;
        }
        self.breaker.advance(now);
        // What a warm standby handed over joins the engine's own stores, a bounded step at a time.
        for shard in &mut self.shards {
            shard.accounts.merge_step(MERGE_BUDGET);
        }
        self.dedupe.merge_step(4 * MERGE_BUDGET);
        let Some(wm) = self.min_watermark() else { return 0 };
        let wm_s = wm.div_euclid(1000).clamp(0, i64::from(u32::MAX)) as u32;
        let now_s = now.div_euclid(1000).clamp(0, i64::from(u32::MAX)) as u32;
        let keep_after = wm_s.saturating_sub(self.policy.cooldown.as_secs() as u32);
        let mut freed_total = 0;
        let mut freed_keys = self.changes.as_mut().map(|c| std::mem::take(&mut c.freed));
        for shard in &mut self.shards {
            freed_total += shard.accounts.sweep(wm_s, now_s, SWEEP_BUDGET, freed_keys.as_mut());
            if shard.ledger.len() > 1024 && now_s % 60 == 0 {
                // Keep cooldowns one extra cooldown past the watermark: fresh partitions are
                // judged late only that far behind (see `admit`).
                shard.ledger.retain(|&key, c| {
                    let keep = c.until_s > keep_after;
                    if let (false, Some(out)) = (keep, freed_keys.as_mut()) {
                        out.push((key, c.partition, c.copy));
                    }
                    keep
                });
            }
            if let (Some(c), Some(keys)) = (&mut self.changes, freed_keys.as_mut()) {
                for &(key, partition, copy) in keys.iter() {
                    shard.mark_changed(key, partition, copy, NO_SLOT);
                    c.touch_partition(partition);
                }
                keys.clear();
            }
        }
        if let (Some(c), Some(keys)) = (&mut self.changes, freed_keys) {
            c.freed = keys;
        }
        freed_total
    }

    pub fn drain_transitions(&mut self) -> Vec<Transition> {
        self.breaker.drain_transitions()
    }

    /// Exempts an account until `expires_ms` (event time).
    pub fn allow_account(&mut self, account_id: &str, expires_ms: i64) {
        self.allow.insert(id_hash(self.seed ^ ACCOUNT_SALT, account_id), expires_ms);
    }

    pub fn disallow_account(&mut self, account_id: &str) -> bool {
        self.allow.remove(&id_hash(self.seed ^ ACCOUNT_SALT, account_id)).is_some()
    }
}

/// The notice (or held record) a decision sends: the account, the event that decided, and the
/// window's evidence.
#[allow(clippy::too_many_arguments)]
fn build_decision(
    v: &View<'_>,
    ev: &Event<'_>,
    cell: u8,
    now: i64,
    kind: WindowKind,
    score: f32,
    threshold: f32,
    view: WindowView,
) -> Decision {
    let p = v.policy;
    let length = match kind {
        WindowKind::Short => p.window.as_secs(),
        WindowKind::Slow => p.slow.length.as_secs(),
    };
    let contributions = view
        .contributions
        .iter()
        .map(|c| SignalContribution {
            signal: p.signals.get(c.signal as usize).map_or_else(String::new, |s| s.name.clone()),
            count: c.count,
            sum: c.sum,
            counted: c.counted,
            sources: c.cells.iter().map(|&i| v.breaker.cell_name(i).to_string()).collect(),
        })
        .collect();
    Decision {
        notice_id: v.keys.notice_id(&ev.account_id, view.start_s, &p.version),
        account_id: ev.account_id.to_string(),
        decided_at: format_rfc3339_ms(now),
        mode: p.mode.as_str(),
        cell: v.breaker.cell_name(cell).to_string(),
        trigger: Trigger {
            event_id: ev.event_id.to_string(),
            source: ev.source.to_string(),
            occurred_at: format_rfc3339_ms(ev.occurred_at_ms),
        },
        explanation: Explanation {
            score,
            threshold,
            window: WindowInfo {
                kind,
                length_seconds: length,
                start: format_rfc3339_ms(i64::from(view.start_s) * 1000),
                end: format_rfc3339_ms(i64::from(view.end_s) * 1000),
            },
            contributions,
            evidence: view.evidence,
            policy_version: p.version.clone(),
        },
        event_ms: ev.occurred_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::breaker::HeldReason;
    use crate::core::outcome::OutcomeKind;
    use std::time::Duration;

    const T0: i64 = 1_780_000_000_000;

    fn ev(id: &str, acct: &str, t_ms: i64, source: &str, signal: &str, risk: f64) -> Vec<u8> {
        format!(
            r#"{{"event_id":"{id}","account_id":"{acct}","occurred_at":"{}","source":"{source}","signal":"{signal}","risk":{risk}}}"#,
            format_rfc3339_ms(t_ms)
        )
        .into_bytes()
    }

    fn engine() -> Engine {
        Engine::new(Arc::new(Policy::default_with_version("v1")), Keys::demo(), TimeMode::EventTime)
    }

    fn run(e: &mut Engine, b: &[u8], p: u32) -> Outcome {
        e.process(b, p, T0 + 400 * 86_400_000).outcome
    }

    #[test]
    fn two_signals_decide_and_the_notice_explains_itself() {
        let mut e = engine();
        assert_eq!(
            run(&mut e, &ev("a", "acct", T0, "auth", "credential_stuffing", 1.0), 0),
            Outcome::NoAction(NoActionReason::BelowThreshold)
        );
        let o = run(&mut e, &ev("b", "acct", T0 + 1000, "model", "impossible_travel", 0.8), 0);
        let Outcome::Notice(d) = o else { panic!("expected notice, got {o:?}") };
        assert_eq!(d.account_id, "acct");
        assert_eq!(d.trigger.event_id, "b");
        assert_eq!(d.explanation.evidence, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(d.explanation.contributions.len(), 2);
        assert!((d.explanation.score - (0.6 + 0.56)).abs() < 1e-3, "{}", d.explanation.score);
        assert_eq!(d.explanation.policy_version, "v1");
        assert_eq!(d.mode, "live");
        let json: serde_json::Value = serde_json::from_slice(&d.notice_json()).unwrap();
        assert_eq!(json["schema"], "resetguard.notice.v1");
        assert_eq!(json["notice_id"], d.notice_id.as_str());
    }

    #[test]
    fn cooldown_allows_one_notice_per_incident_and_ids_are_stable_across_replays() {
        let inputs: Vec<Vec<u8>> =
            (0..6).map(|i| ev(&format!("e{i}"), "acct", T0 + i * 1000, "s", "breached_password", 1.0)).collect();
        let mut ids = Vec::new();
        for _ in 0..2 {
            let mut e = engine();
            let kinds: Vec<_> = inputs.iter().map(|b| run(&mut e, b, 0)).collect();
            assert_eq!(kinds.iter().filter(|o| o.kind() == OutcomeKind::Notice).count(), 1);
            assert_eq!(kinds.iter().filter(|o| **o == Outcome::NoAction(NoActionReason::Cooldown)).count(), 5);
            ids.push(kinds[0].decision().unwrap().notice_id.clone());
        }
        assert_eq!(ids[0], ids[1]);
        // After the cooldown, a new incident gets a new id.
        let mut e = engine();
        let first = run(&mut e, &inputs[0], 0);
        let later = run(&mut e, &ev("x", "acct", T0 + 25 * 3_600_000, "s", "breached_password", 1.0), 0);
        assert_eq!(later.kind(), OutcomeKind::Notice);
        assert_ne!(first.decision().unwrap().notice_id, later.decision().unwrap().notice_id);
    }

    #[test]
    fn duplicates_and_late_events_per_partition() {
        let mut e = engine();
        assert_eq!(run(&mut e, &ev("a", "x", T0, "s", "new_device", 0.1), 0).kind(), OutcomeKind::NoAction);
        assert_eq!(run(&mut e, &ev("a", "x", T0, "s", "new_device", 0.1), 0), Outcome::Duplicate);
        assert_eq!(run(&mut e, &ev("b", "x", T0 + 600_000, "s", "new_device", 0.1), 0).kind(), OutcomeKind::NoAction);
        // 2 min lateness: T0 + 479 s is behind partition 0's watermark (T0 + 480 s) ...
        assert_eq!(run(&mut e, &ev("c", "x", T0 + 479_000, "s", "new_device", 0.1), 0).kind(), OutcomeKind::Late);
        assert_eq!(run(&mut e, &ev("d", "x", T0 + 480_000, "s", "new_device", 0.1), 0).kind(), OutcomeKind::NoAction);
        // A fresh partition may lag the others (a backlog) by up to a cooldown, then has its own.
        assert_eq!(run(&mut e, &ev("f", "y", T0, "s", "new_device", 0.1), 1).kind(), OutcomeKind::NoAction);
        assert_eq!(run(&mut e, &ev("g", "y", T0 - 119_000, "s", "new_device", 0.1), 1).kind(), OutcomeKind::NoAction);
        assert_eq!(run(&mut e, &ev("h", "y", T0 - 121_000, "s", "new_device", 0.1), 1).kind(), OutcomeKind::Late);
        // Lowest watermark now T0 - 2 min; a fresh partition may lag it by one cooldown (24 h).
        let day = 86_400_000;
        assert_eq!(
            run(&mut e, &ev("j", "w", T0 - 120_000 - day - 1, "s", "new_device", 0.1), 3).kind(),
            OutcomeKind::Late
        );
        assert_eq!(run(&mut e, &ev("i", "z", T0 - day, "s", "new_device", 0.1), 2).kind(), OutcomeKind::NoAction);
    }

    #[test]
    fn allow_listed_accounts_get_no_notice_until_expiry() {
        let mut e = engine();
        e.allow_account("vip", T0 + 60_000);
        let o = run(&mut e, &ev("a", "vip", T0, "s", "breached_password", 1.0), 0);
        assert_eq!(o, Outcome::NoAction(NoActionReason::AllowListed));
        let o = run(&mut e, &ev("b", "vip", T0 + 61_000, "s", "breached_password", 1.0), 0);
        assert_eq!(o.kind(), OutcomeKind::Notice);
    }

    #[test]
    fn slow_burn_decides_over_hours_with_two_signal_kinds() {
        let mut e = engine();
        let mut last = None;
        // One signal every 2 h from two kinds: never 1.0 within 15 min, but 3.0 within 24 h.
        for i in 0..10 {
            let signal = if i % 2 == 0 { "impossible_travel" } else { "credential_stuffing" };
            let risk = 1.0;
            last = Some(run(&mut e, &ev(&format!("s{i}"), "slow", T0 + i * 2 * 3_600_000, "s", signal, risk), 0));
            if last.as_ref().unwrap().kind() == OutcomeKind::Notice {
                break;
            }
        }
        let d = last.unwrap();
        assert_eq!(d.kind(), OutcomeKind::Notice, "{d:?}");
        assert_eq!(d.decision().unwrap().explanation.window.kind, WindowKind::Slow);
    }

    #[test]
    fn shadow_mode_marks_would_be_notices() {
        let text = "version = \"v1\"\nmode = \"shadow\"\n";
        let mut e = Engine::new(Arc::new(Policy::from_toml(text).unwrap()), Keys::demo(), TimeMode::EventTime);
        let o = run(&mut e, &ev("a", "acct", T0, "s", "breached_password", 1.0), 0);
        assert_eq!(o.decision().unwrap().mode, "shadow");
    }

    #[test]
    fn breaker_holds_a_spike_and_the_held_record_says_why() {
        let mut e = engine();
        let mut held = 0;
        let mut notices = 0;
        for i in 0..200 {
            let o = run(
                &mut e,
                &ev(&format!("e{i}"), &format!("acct{i}"), T0 + i * 100, "buggy", "breached_password", 1.0),
                0,
            );
            match o {
                Outcome::Notice(_) => notices += 1,
                Outcome::Held(d, h) => {
                    held += 1;
                    assert_eq!(h.cell, "buggy", "the source's own cell holds, not the global one");
                    assert!(matches!(h.reason, HeldReason::Spike | HeldReason::BreakerOpen));
                    let json: serde_json::Value = serde_json::from_slice(&d.held_json(&h)).unwrap();
                    assert_eq!(json["held"]["cell"], "buggy");
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(notices, 30, "default spike floor");
        assert_eq!(held, 170);
    }

    #[test]
    fn shards_judge_a_batch_like_one_engine_judges_each_event() {
        // 200 decisive events over 6 partitions from two sources, with duplicates and a late
        // event: the "buggy" source trips its cell, so the batch holds some and sends some.
        let mut inputs: Vec<(Vec<u8>, u32)> = Vec::new();
        for i in 0..200i64 {
            let source = if i % 4 == 0 { "auth-service" } else { "buggy" };
            let acct = format!("acct{}", i % 150);
            let part = (i % 150 % 6) as u32;
            inputs.push((ev(&format!("e{i}"), &acct, T0 + i * 100, source, "breached_password", 1.0), part));
            if i % 37 == 0 {
                inputs.push((ev(&format!("e{i}"), &acct, T0 + i * 100, source, "breached_password", 1.0), part));
            }
        }
        inputs.push((ev("late", "acct1", T0 - 3_600_000, "buggy", "breached_password", 1.0), 1));
        inputs.push((b"not json".to_vec(), 2));
        let wall = T0 + 60_000;
        let mut one = engine();
        let expected: Vec<Processed> = inputs.iter().map(|(b, p)| one.process(b, *p, wall)).collect();
        let mut three = engine().with_shards(3).unwrap();
        let mut got = Vec::new();
        for chunk in inputs.chunks(64) {
            let batch: Vec<(&[u8], u32)> = chunk.iter().map(|(b, p)| (&b[..], *p)).collect();
            three.process_batch(&batch, wall, &mut got);
        }
        assert_eq!(got, expected);
        let count = |k: OutcomeKind| got.iter().filter(|p| p.outcome.kind() == k).count();
        assert_eq!(count(OutcomeKind::Notice) + count(OutcomeKind::Held), 150, "one decision per account");
        assert!(count(OutcomeKind::Held) > 0 && count(OutcomeKind::Notice) > 0);
        assert_eq!(count(OutcomeKind::Duplicate), 6);
        assert_eq!(count(OutcomeKind::Late), 1);
        assert_eq!(count(OutcomeKind::Rejected), 1);
        assert_eq!(three.state_dump(), one.state_dump());
        assert_eq!(three.tracked_accounts(), 150);
    }

    #[test]
    fn decisions_redone_after_an_abort_are_charged_to_the_breaker_once() {
        // Regression (fault-path issue, defect 5): after an aborted transaction the breaker kept
        // the charges of the aborted decisions and the redone ones were charged again, so a
        // batch under the spike floor was held after an abort.
        let inputs: Vec<Vec<u8>> = (0..30)
            .map(|i| ev(&format!("e{i}"), &format!("acct{i}"), T0 + i * 100, "model", "breached_password", 1.0))
            .collect();
        let mut reference = engine();
        let expected: Vec<_> = inputs.iter().map(|b| run(&mut reference, b, 0).kind()).collect();
        assert!(expected.iter().all(|k| *k == OutcomeKind::Notice), "30 decisions stay under the spike floor");

        let mut e = engine();
        for b in &inputs[..15] {
            run(&mut e, b, 0);
        }
        // The next 15 are decided, then their transaction aborts: rewind and restore.
        for b in &inputs[15..] {
            run(&mut e, b, 0);
        }
        e.begin_restore(1.0);
        for (i, b) in inputs[..15].iter().enumerate() {
            e.restore(b, 0, T0 + i as i64 * 100, T0 + i as i64 * 100);
        }
        e.finish_restore(T0 + 1_500);
        let redone: Vec<_> = inputs[15..].iter().map(|b| run(&mut e, b, 0).kind()).collect();
        assert_eq!(redone, expected[15..].to_vec());
    }

    #[test]
    fn a_manual_override_survives_a_restore() {
        let mut e = engine();
        run(&mut e, &ev("a", "acct", T0, "model", "failed_login", 0.1), 0);
        e.breaker_mut().force("model", true, Duration::from_secs(3_600), "sre", "incident", T0).unwrap();
        e.drain_transitions();
        e.begin_restore(1.0);
        e.restore(&ev("a", "acct", T0, "model", "failed_login", 0.1), 0, T0, T0);
        e.finish_restore(T0 + 1_000);
        assert_eq!(e.breaker().state_of("model"), Some(crate::core::breaker::CellState::ForcedOpen));
        assert!(e.drain_transitions().is_empty(), "the override was reported when it was made");
        let o = run(&mut e, &ev("b", "acct2", T0 + 2_000, "model", "breached_password", 1.0), 0);
        assert!(matches!(o, Outcome::Held(_, ref h) if h.reason == HeldReason::ForcedOpen), "{o:?}");
    }

    #[test]
    fn restore_rebuilds_cooldowns_and_breaker_before_the_first_live_event() {
        let inputs: Vec<Vec<u8>> = (0..100)
            .map(|i| ev(&format!("e{i}"), &format!("acct{i}"), T0 + i * 100, "buggy", "breached_password", 1.0))
            .collect();
        let mut first = engine();
        let outcomes: Vec<_> = inputs.iter().map(|b| run(&mut first, b, 0)).collect();
        assert_eq!(outcomes.iter().filter(|o| o.kind() == OutcomeKind::Notice).count(), 30);
        assert_eq!(first.breaker().state_of("buggy"), Some(crate::core::breaker::CellState::Open));

        // A restarted instance restores the same inputs, then sees the spike go on.
        let mut second = engine();
        for (i, b) in inputs.iter().enumerate() {
            second.restore(b, 0, T0 + 400 * 86_400_000, T0 + i as i64 * 100);
        }
        assert_eq!(second.breaker().state_of("buggy"), Some(crate::core::breaker::CellState::Open));
        assert!(second.drain_transitions().is_empty(), "restored transitions are not reported again");
        let again = run(&mut second, &inputs[0], 0);
        assert_eq!(again, Outcome::Duplicate);
        let more = run(&mut second, &ev("x", "acct-new", T0 + 10_100, "buggy", "breached_password", 1.0), 0);
        assert!(matches!(more, Outcome::Held(..)), "{more:?}");
        let repeat = run(&mut second, &ev("y", "acct5", T0 + 10_200, "buggy", "breached_password", 1.0), 0);
        assert_eq!(repeat, Outcome::NoAction(NoActionReason::Cooldown));
    }

    #[test]
    fn tick_frees_state_behind_the_watermark() {
        let mut e = engine();
        for i in 0..100 {
            run(&mut e, &ev(&format!("e{i}"), &format!("a{i}"), T0, "s", "new_device", 0.1), 0);
        }
        assert_eq!(e.tracked_accounts(), 100);
        run(&mut e, &ev("late-stream", "z", T0 + 3 * 86_400_000, "s", "new_device", 0.1), 0);
        e.tick(T0);
        assert_eq!(e.tracked_accounts(), 1);
    }
}
