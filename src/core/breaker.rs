//! The mass-reset circuit breaker: a global GCRA cap (governor), per-source cells with their own
//! cap and spike detection against a learned EWMA baseline, closed → open → half-open → closed
//! states, and manual overrides with a TTL. Pure: time comes in as milliseconds and drives a
//! governor `FakeRelativeClock`; checks never wait.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde::Serialize;

use super::policy::BreakerPolicy;

type Limiter = RateLimiter<NotKeyed, InMemoryState, FakeRelativeClock, StateInformationMiddleware>;

/// Index of the `global` cell; source cells follow.
pub const GLOBAL: u8 = 0;
/// Name of the cell that collects sources beyond `max_cells`.
pub const OVERFLOW_CELL: &str = "_other";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CellState {
    Closed,
    Open,
    HalfOpen,
    ForcedOpen,
    ForcedClosed,
}

impl CellState {
    pub const ALL: [CellState; 5] =
        [CellState::Closed, CellState::Open, CellState::HalfOpen, CellState::ForcedOpen, CellState::ForcedClosed];
    pub fn as_str(self) -> &'static str {
        match self {
            CellState::Closed => "closed",
            CellState::Open => "open",
            CellState::HalfOpen => "half_open",
            CellState::ForcedOpen => "forced_open",
            CellState::ForcedClosed => "forced_closed",
        }
    }
}

/// Why the breaker refused a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldReason {
    /// The cell tripped on this very decision.
    Spike,
    /// The cell was already open.
    BreakerOpen,
    /// An operator forced the cell open.
    ForcedOpen,
    /// Half-open and the probe budget is spent.
    ProbeBudgetSpent,
    /// The cell's own rate cap refused.
    CellRateLimited,
    /// The global rate cap refused.
    GlobalRateLimited,
}

impl HeldReason {
    pub fn as_str(self) -> &'static str {
        match self {
            HeldReason::Spike => "spike",
            HeldReason::BreakerOpen => "breaker_open",
            HeldReason::ForcedOpen => "forced_open",
            HeldReason::ProbeBudgetSpent => "probe_budget_spent",
            HeldReason::CellRateLimited => "cell_rate_limited",
            HeldReason::GlobalRateLimited => "global_rate_limited",
        }
    }
}

/// Why a cell changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    Spike,
    SpikeWhileProbing,
    OpenDurationElapsed,
    CalmWhileProbing,
    ManualOpen,
    ManualClose,
    ManualClear,
    OverrideExpired,
    /// A flood of decisions on old events: offsets rewound or a topic replayed.
    ReplaySuspected,
    /// Another instance of the fleet tripped this cell (its control record).
    FleetTrip,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Spike => "spike",
            Cause::SpikeWhileProbing => "spike_while_probing",
            Cause::OpenDurationElapsed => "open_duration_elapsed",
            Cause::CalmWhileProbing => "calm_while_probing",
            Cause::ManualOpen => "manual_open",
            Cause::ManualClose => "manual_close",
            Cause::ManualClear => "manual_clear",
            Cause::OverrideExpired => "override_expired",
            Cause::ReplaySuspected => "replay_suspected",
            Cause::FleetTrip => "fleet_trip",
        }
    }
}

/// A state change, for logs, reports, metrics and the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    pub at_ms: i64,
    pub cell: String,
    pub from: CellState,
    pub to: CellState,
    pub cause: Cause,
    /// Decisions in the cell's current minute and the spike threshold, when the cause is a spike.
    pub decisions_this_minute: u32,
    pub threshold: f64,
    /// For manual changes: who and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The verdict on one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    Hold { reason: HeldReason, cell: u8 },
}

#[derive(Debug, Clone)]
struct Override {
    until_ms: i64,
}

struct Cell {
    name: String,
    state: CellState,
    since_ms: i64,
    probes_left: u32,
    forced: Option<Override>,
    minute: i64,
    count: u32,
    /// Whether the cell was open at any time during `minute` (such minutes teach no baseline).
    disturbed: bool,
    baseline: f64,
    minutes_learned: u32,
    limiter: Limiter,
    /// This instance's share of the cap is zero: refuse everything (fleet budget, see `set_share`).
    no_budget: bool,
    floor: u32,
    /// Why the cell is in its state (`None`: closed since it was created).
    cause: Option<Cause>,
}

/// Read-only view of one cell, for metrics, the admin API and the incident console.
#[derive(Debug, Clone, Serialize)]
pub struct CellSnapshot {
    pub cell: String,
    pub state: CellState,
    pub since_ms: i64,
    /// Why the cell entered its state (`None`: closed since it was created).
    pub cause: Option<Cause>,
    pub decisions_this_minute: u32,
    pub baseline_per_minute: f64,
    pub spike_threshold: f64,
    pub warming_up: bool,
    pub forced_until_ms: Option<i64>,
    /// The cell's rate cap in force on this instance (notices per minute): the policy's rate
    /// scaled by this instance's share of the fleet and the policy-change ramp.
    pub cap_per_minute: f64,
    /// The burst in force, scaled the same way (rounded down).
    pub cap_burst: u32,
}

pub struct Breaker {
    policy: BreakerPolicy,
    clock: FakeRelativeClock,
    clock_ms: Option<i64>,
    cells: Vec<Cell>,
    names: hashbrown::HashMap<String, u8>,
    transitions: Vec<Transition>,
    global_remaining: u32,
    /// Longest clock step the rate limiters can tell apart: after it every limiter is full again.
    max_step_ms: i64,
    /// This instance's share of the fleet's caps (its share of the input partitions), 0..=1.
    share: f64,
    /// Whether `set_share` ran before (later changes carry the limiters' budget, see there).
    share_set: bool,
    /// Stale decisions (old events) in the current minute, and that minute.
    stale_minute: i64,
    stale_count: u32,
    /// After a policy change: the caps ramp up between these times (ms), in tenths.
    ramp: Option<(i64, i64)>,
    ramp_tenths: u32,
    /// Manual overrides carried over by [`Breaker::without_history`], applied again by
    /// [`Breaker::reapply_overrides`] once the history has been replayed: (cell, open, until).
    carried_overrides: Vec<(String, bool, i64)>,
    /// Trips of other instances of the fleet (cell, when), kept so a restore can apply them again.
    fleet_trips: Vec<(String, i64)>,
}

/// The budget a re-scaled limiter starts with.
#[derive(Clone, Copy, Debug)]
enum Refill {
    /// A full (scaled) burst.
    Full,
    /// Nothing: the budget refills at the new rate.
    Empty,
    /// What the old limiter had left times this factor (≤ 1), at most the new burst.
    Carry(f64),
}

fn nz(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v.max(1)).unwrap_or(NonZeroU32::MIN)
}

/// Time for an empty GCRA limiter to refill its whole burst, in ms.
fn full_refill_ms(rate_per_minute: u32, burst: u32) -> i64 {
    (u64::from(burst.max(1)) * 60_000).div_ceil(u64::from(rate_per_minute.max(1))) as i64
}

fn quota(rate_per_minute: u32, burst: u32) -> Quota {
    let period = Duration::from_nanos(60_000_000_000 / u64::from(rate_per_minute.max(1)));
    Quota::with_period(period).unwrap_or_else(|| Quota::per_minute(nz(rate_per_minute))).allow_burst(nz(burst))
}

impl Breaker {
    pub fn new(policy: BreakerPolicy) -> Self {
        let mut b = Breaker {
            clock: FakeRelativeClock::default(),
            clock_ms: None,
            cells: Vec::new(),
            names: hashbrown::HashMap::new(),
            transitions: Vec::new(),
            global_remaining: policy.global_burst,
            max_step_ms: full_refill_ms(policy.global_rate_per_minute, policy.global_burst)
                .max(full_refill_ms(policy.cell_rate_per_minute, policy.cell_burst))
                .saturating_add(60_000),
            share: 1.0,
            share_set: false,
            stale_minute: i64::MIN,
            stale_count: 0,
            ramp: None,
            ramp_tenths: 10,
            carried_overrides: Vec::new(),
            fleet_trips: Vec::new(),
            policy,
        };
        let (rate, burst, floor) =
            (b.policy.global_rate_per_minute, b.policy.global_burst, b.policy.global_spike_floor);
        b.add_cell("global", rate, burst, floor);
        b
    }

    fn add_cell(&mut self, name: &str, rate: u32, burst: u32, floor: u32) -> u8 {
        let idx = self.cells.len() as u8;
        self.cells.push(Cell {
            name: name.to_string(),
            state: CellState::Closed,
            since_ms: self.clock_ms.unwrap_or(0),
            probes_left: 0,
            forced: None,
            minute: i64::MIN,
            count: 0,
            disturbed: false,
            baseline: 0.0,
            minutes_learned: 0,
            limiter: RateLimiter::direct_with_clock(quota(rate, burst), self.clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
            no_budget: false,
            floor,
            cause: None,
        });
        let i = self.cells.len() - 1;
        if self.share < 1.0 {
            self.rescale(i, Refill::Full);
        }
        self.names.insert(name.to_string(), idx);
        idx
    }

    /// The cell for a source, created on first sight (up to `max_cells`, then the shared `_other`).
    pub fn cell_for(&mut self, source: &str) -> u8 {
        // The names `global` and `_other` belong to the breaker; such a source gets its own cell name.
        let source = match source {
            "global" => "global-source",
            OVERFLOW_CELL => "_other-source",
            s => s,
        };
        if let Some(&i) = self.names.get(source) {
            return i;
        }
        let (rate, burst, floor) = (self.policy.cell_rate_per_minute, self.policy.cell_burst, self.policy.spike_floor);
        if self.cells.len() > self.policy.max_cells {
            return match self.names.get(OVERFLOW_CELL) {
                Some(&i) => i,
                None => self.add_cell(OVERFLOW_CELL, rate, burst, floor),
            };
        }
        self.add_cell(source, rate, burst, floor)
    }

    /// Sets this instance's share of the fleet-wide caps (assigned / total input partitions), so
    /// the caps hold for the fleet: rates and bursts are scaled down (bursts rounded down, so the
    /// shares of all instances never add up to more than the whole). Only an instance that owns
    /// every partition at its first assignment starts with a full burst; one that joins a fleet
    /// starts empty. A later change carries the budget left: scaled down with a smaller share,
    /// kept (not scaled up) with a larger one. So a rebalance neither mints budget (the fleet's
    /// instances together never hold more than before) nor throws the saved budget away.
    pub fn set_share(&mut self, share: f64) {
        let share = if share.is_finite() { share.clamp(0.0, 1.0) } else { 1.0 };
        let refill = if self.share_set {
            Refill::Carry((share / self.share.max(f64::MIN_POSITIVE)).min(1.0))
        } else if share < 1.0 {
            Refill::Empty
        } else {
            Refill::Full
        };
        self.share = share;
        self.share_set = true;
        for i in 0..self.cells.len() {
            self.rescale(i, refill);
        }
    }

    pub fn share(&self) -> f64 {
        self.share
    }

    /// A breaker with this one's configuration and none of its history, for a restore that
    /// replays the committed decisions into it: the same cells in the same order (cell indices
    /// stay valid), this instance's `share` of the caps with full (scaled) bursts, the policy
    /// ramp, and the manual overrides (kept aside until [`Breaker::reapply_overrides`], so
    /// replayed history cannot end them). Counts, baselines, spent budget and automatic states
    /// start over: what the committed history charges, the replay charges again, once.
    ///
    /// Because every restore starts from here, decisions of an aborted transaction are never
    /// charged twice, and a fleet's instances together never hold more budget than one
    /// instance replaying all partitions would.
    pub fn without_history(&self, share: f64) -> Breaker {
        let mut b = Breaker::new(self.policy.clone());
        let (rate, burst, floor) = (self.policy.cell_rate_per_minute, self.policy.cell_burst, self.policy.spike_floor);
        for c in self.cells.iter().skip(1) {
            b.add_cell(&c.name, rate, burst, floor);
        }
        b.share = if share.is_finite() { share.clamp(0.0, 1.0) } else { 1.0 };
        b.share_set = true;
        b.ramp = self.ramp;
        b.ramp_tenths = self.ramp_tenths;
        for i in 0..b.cells.len() {
            b.rescale(i, Refill::Full);
        }
        b.carried_overrides = self
            .cells
            .iter()
            .filter_map(|c| c.forced.as_ref().map(|o| (c.name.clone(), c.state == CellState::ForcedOpen, o.until_ms)))
            .collect();
        b.carried_overrides.extend(self.carried_overrides.iter().cloned());
        b.fleet_trips = self.fleet_trips.clone();
        b
    }

    /// Applies the overrides carried over by [`Breaker::without_history`] that are still in
    /// force at `now_ms`. They were reported when made, so no transition is recorded.
    pub fn reapply_overrides(&mut self, now_ms: i64) {
        self.advance(now_ms);
        let now = self.now();
        for (name, open, until) in std::mem::take(&mut self.carried_overrides) {
            let Some(&i) = self.names.get(&name) else { continue };
            if until <= now {
                continue;
            }
            let c = &mut self.cells[i as usize];
            c.forced = Some(Override { until_ms: until });
            c.state = if open { CellState::ForcedOpen } else { CellState::ForcedClosed };
            c.since_ms = now;
            c.cause = Some(if open { Cause::ManualOpen } else { Cause::ManualClose });
            if open {
                c.disturbed = true;
            }
        }
        // Fleet trips still in force: reported when they arrived.
        for (name, at) in self.fleet_trips.clone() {
            if let Some(&i) = self.names.get(&name) {
                self.open_for_fleet(i as usize, at, now, false);
            }
        }
    }

    /// A cell another instance of the fleet tripped at `at_ms` (its control record): opened here
    /// too, with the open duration counted from `at_ms`, so the fleet trips, half-opens and
    /// probes like one instance instead of each instance letting its own floor's worth through.
    /// A manual override wins, a cell already open stays as it is, and a trip whose open
    /// duration is over is ignored. Returns whether the cell opened.
    pub fn fleet_trip(&mut self, cell: &str, at_ms: i64, now_ms: i64) -> bool {
        self.advance(now_ms);
        let now = self.now();
        let open_ms = self.policy.open_duration.as_millis() as i64;
        self.fleet_trips.retain(|(_, at)| at.saturating_add(open_ms) > now);
        if at_ms.saturating_add(open_ms) <= now {
            return false;
        }
        let i = match self.names.get(cell) {
            Some(&i) => i,
            None => self.cell_for(cell),
        };
        let opened = self.open_for_fleet(i as usize, at_ms, now, true);
        if opened {
            self.fleet_trips.retain(|(c, _)| c != cell);
            self.fleet_trips.push((cell.to_string(), at_ms));
        }
        opened
    }

    fn open_for_fleet(&mut self, i: usize, at_ms: i64, now: i64, report: bool) -> bool {
        let open_ms = self.policy.open_duration.as_millis() as i64;
        let c = &self.cells[i];
        if c.forced.is_some()
            || !matches!(c.state, CellState::Closed | CellState::HalfOpen)
            || at_ms.saturating_add(open_ms) <= now
        {
            return false;
        }
        if report {
            self.set_state(i, CellState::Open, Cause::FleetTrip, now, None, None);
        }
        let c = &mut self.cells[i];
        c.state = CellState::Open;
        c.cause = Some(Cause::FleetTrip);
        c.since_ms = at_ms.min(now);
        c.disturbed = true;
        true
    }

    /// Sets cell `i`'s limiter to the caps in force now (policy × share × ramp); `refill` says
    /// what budget the new limiter starts with.
    fn rescale(&mut self, i: usize, refill: Refill) {
        let (rate, burst) = if i == GLOBAL as usize {
            (self.policy.global_rate_per_minute, self.policy.global_burst)
        } else {
            (self.policy.cell_rate_per_minute, self.policy.cell_burst)
        };
        let factor = self.share * f64::from(self.ramp_tenths) / 10.0;
        let scaled_rate = f64::from(rate) * factor;
        let scaled_burst = (f64::from(burst) * factor).floor() as u32;
        // Spike floors follow the share like the caps: the instances of a fleet together let no
        // more through before they trip than one instance owning every partition would.
        let floor = if i == GLOBAL as usize { self.policy.global_spike_floor } else { self.policy.spike_floor };
        let share = self.share;
        let c = &mut self.cells[i];
        c.floor = ((f64::from(floor) * share).floor() as u32).max(1);
        // What is left in the old limiter, probed by taking one (the old limiter is dropped).
        let left = match c.limiter.check() {
            Ok(state) if !c.no_budget => state.remaining_burst_capacity() + 1,
            _ => 0,
        };
        c.no_budget = scaled_rate <= 0.0 || scaled_burst == 0;
        let period = Duration::from_secs_f64(60.0 / scaled_rate.max(1e-6)).min(Duration::from_secs(365 * 86_400));
        let q = Quota::with_period(period).unwrap_or_else(|| quota(rate, burst)).allow_burst(nz(scaled_burst));
        c.limiter =
            RateLimiter::direct_with_clock(q, self.clock.clone()).with_middleware::<StateInformationMiddleware>();
        let keep = match refill {
            Refill::Full => scaled_burst,
            Refill::Empty => 0,
            Refill::Carry(ratio) => ((f64::from(left) * ratio).floor() as u32).min(scaled_burst),
        };
        for _ in keep..scaled_burst {
            if c.limiter.check().is_err() {
                break;
            }
        }
    }

    pub fn cell_name(&self, idx: u8) -> &str {
        self.cells.get(idx as usize).map_or(OVERFLOW_CELL, |c| c.name.as_str())
    }

    pub fn cell_index(&self, name: &str) -> Option<u8> {
        self.names.get(name).copied()
    }

    pub fn cell_count(&self) -> usize {
        self.cells.len()
    }

    /// Moves the breaker's clock forward (never backward) and applies time-driven transitions.
    pub fn advance(&mut self, now_ms: i64) {
        match self.clock_ms {
            None => self.clock_ms = Some(now_ms),
            Some(last) if now_ms > last => {
                // The limiters' clock counts u64 nanoseconds (about 584 years) and panics on a longer
                // step, and event time can jump by centuries (a detector's zero time,
                // 0001-01-01T00:00:00Z, then a current event). A step longer than the slowest refill
                // changes nothing (every limiter is full after it), so it is capped there.
                let step = now_ms.saturating_sub(last).min(self.max_step_ms);
                self.clock.advance(Duration::from_millis(step as u64));
                self.clock_ms = Some(now_ms);
            }
            Some(_) => {}
        }
        let now = self.now();
        for i in 0..self.cells.len() {
            self.roll_minute(i, now);
            self.apply_timers(i, now);
        }
        if let Some((start, end)) = self.ramp {
            let tenths =
                if now >= end { 10 } else { (1 + ((now - start).max(0) * 9 / (end - start).max(1)) as u32).min(10) };
            if tenths != self.ramp_tenths {
                self.ramp_tenths = tenths;
                // Each step keeps what was left of the last one's budget: a ramp never mints a
                // burst, and a step up does not throw away what the last step had saved.
                for i in 0..self.cells.len() {
                    self.rescale(i, Refill::Carry(1.0));
                }
            }
            if tenths == 10 {
                self.ramp = None;
            }
        }
    }

    /// The policy version changed since the last run: the caps start at a tenth and ramp up to
    /// full over `policy_change_ramp`, in steps of a tenth.
    pub fn start_policy_ramp(&mut self, now_ms: i64) {
        let len = self.policy.policy_change_ramp.as_millis() as i64;
        if len == 0 {
            return;
        }
        self.advance(now_ms);
        let now = self.now();
        self.ramp = Some((now, now + len));
        self.ramp_tenths = 1;
        for i in 0..self.cells.len() {
            self.rescale(i, Refill::Empty);
        }
    }

    /// Fraction of the caps in force because of a policy-change ramp (1.0 when none).
    pub fn ramp_factor(&self) -> f64 {
        f64::from(self.ramp_tenths) / 10.0
    }

    /// Counts a decision on an event `lag_ms` behind the breaker's clock; a flood of stale
    /// decisions trips the global cell: the spike is likely resetguard's own (a rewind or replay).
    pub fn note_event_lag(&mut self, lag_ms: i64, now_ms: i64) {
        if lag_ms < self.policy.stale_after.as_millis() as i64 {
            return;
        }
        self.advance(now_ms);
        let now = self.now();
        let minute = now.div_euclid(60_000);
        if minute != self.stale_minute {
            self.stale_minute = minute;
            self.stale_count = 0;
        }
        self.stale_count += 1;
        let g = GLOBAL as usize;
        if self.stale_count > self.policy.stale_floor
            && matches!(self.cells[g].state, CellState::Closed | CellState::HalfOpen)
        {
            self.set_state(g, CellState::Open, Cause::ReplaySuspected, now, None, None);
        }
    }

    fn now(&self) -> i64 {
        self.clock_ms.unwrap_or(0)
    }

    fn threshold(&self, c: &Cell) -> f64 {
        let floor = f64::from(c.floor);
        if c.minutes_learned < self.policy.warmup_minutes {
            floor
        } else {
            floor.max(self.policy.spike_factor * c.baseline)
        }
    }

    fn roll_minute(&mut self, i: usize, now: i64) {
        let minute = now.div_euclid(60_000);
        let alpha = self.policy.ewma_alpha;
        let c = &mut self.cells[i];
        if c.minute == i64::MIN {
            c.minute = minute;
            return;
        }
        if minute <= c.minute {
            return;
        }
        // Completed minute: learn from it unless the cell was open (spikes must not teach).
        let open_now = matches!(c.state, CellState::Open | CellState::ForcedOpen | CellState::HalfOpen);
        if !c.disturbed && !open_now {
            c.baseline = alpha * f64::from(c.count) + (1.0 - alpha) * c.baseline;
            c.minutes_learned = c.minutes_learned.saturating_add(1);
        }
        // Empty minutes in between (a quiet stream) decay the baseline.
        let gap = (minute - c.minute - 1).clamp(0, 10_000) as i32;
        if gap > 0 && !open_now {
            c.baseline *= (1.0 - alpha).powi(gap);
            c.minutes_learned = c.minutes_learned.saturating_add(gap as u32);
        }
        c.minute = minute;
        c.count = 0;
        c.disturbed = open_now;
    }

    fn apply_timers(&mut self, i: usize, now: i64) {
        let (open_ms, half_ms, probes) = (
            self.policy.open_duration.as_millis() as i64,
            self.policy.half_open_duration.as_millis() as i64,
            self.policy.probe_budget,
        );
        let c = &self.cells[i];
        if let Some(o) = &c.forced {
            if now >= o.until_ms {
                let from = c.state;
                let to = if from == CellState::ForcedOpen { CellState::HalfOpen } else { CellState::Closed };
                self.set_state(i, to, Cause::OverrideExpired, now, None, None);
                self.cells[i].forced = None;
                if to == CellState::HalfOpen {
                    self.cells[i].probes_left = probes;
                }
            }
            return;
        }
        match c.state {
            CellState::Open if now - c.since_ms >= open_ms => {
                self.set_state(i, CellState::HalfOpen, Cause::OpenDurationElapsed, now, None, None);
                self.cells[i].probes_left = probes;
            }
            CellState::HalfOpen if now - c.since_ms >= half_ms => {
                self.set_state(i, CellState::Closed, Cause::CalmWhileProbing, now, None, None);
            }
            _ => {}
        }
    }

    fn set_state(
        &mut self,
        i: usize,
        to: CellState,
        cause: Cause,
        now: i64,
        actor: Option<String>,
        reason: Option<String>,
    ) {
        let thr = self.threshold(&self.cells[i]);
        let c = &mut self.cells[i];
        let from = c.state;
        c.state = to;
        c.since_ms = now;
        c.cause = Some(cause);
        if matches!(to, CellState::Open | CellState::ForcedOpen | CellState::HalfOpen) {
            c.disturbed = true;
        }
        self.transitions.push(Transition {
            at_ms: now,
            cell: c.name.clone(),
            from,
            to,
            cause,
            decisions_this_minute: c.count,
            threshold: thr,
            actor,
            reason,
        });
    }

    /// Counts one decision from `cell` and says whether its notice may be sent. Never waits.
    pub fn check(&mut self, cell: u8, now_ms: i64) -> Verdict {
        self.advance(now_ms);
        let now = self.now();
        let ci = if self.cells.len() > 1 { (cell as usize).clamp(1, self.cells.len() - 1) } else { GLOBAL as usize };
        // The source cell first: a source whose cell holds its decisions does not count against
        // the global cell, so one buggy source cannot trip the breaker for everybody.
        if ci != GLOBAL as usize {
            if let Some(reason) = self.count_and_judge(ci, now) {
                return Verdict::Hold { reason, cell: ci as u8 };
            }
        }
        if let Some(reason) = self.count_and_judge(GLOBAL as usize, now) {
            return Verdict::Hold { reason, cell: GLOBAL };
        }
        // Rate caps: the cell's, then the global one. A forced-closed cell still obeys the global cap.
        if ci != GLOBAL as usize && (self.cells[ci].no_budget || self.cells[ci].limiter.check().is_err()) {
            return Verdict::Hold { reason: HeldReason::CellRateLimited, cell: ci as u8 };
        }
        if self.cells[GLOBAL as usize].no_budget {
            self.global_remaining = 0;
            return Verdict::Hold { reason: HeldReason::GlobalRateLimited, cell: GLOBAL };
        }
        match self.cells[GLOBAL as usize].limiter.check() {
            Ok(snap) => self.global_remaining = snap.remaining_burst_capacity(),
            Err(_) => {
                self.global_remaining = 0;
                return Verdict::Hold { reason: HeldReason::GlobalRateLimited, cell: GLOBAL };
            }
        }
        let probed: &[usize] = if ci == GLOBAL as usize { &[0] } else { &[0, ci] };
        for &i in probed {
            if self.cells[i].state == CellState::HalfOpen {
                self.cells[i].probes_left = self.cells[i].probes_left.saturating_sub(1);
            }
        }
        Verdict::Send
    }

    /// Counts a decision in cell `i`, trips it on a spike, and says whether the cell holds it.
    fn count_and_judge(&mut self, i: usize, now: i64) -> Option<HeldReason> {
        self.cells[i].count = self.cells[i].count.saturating_add(1);
        let c = &self.cells[i];
        let over = f64::from(c.count) > self.threshold(c);
        match c.state {
            CellState::Closed if over => {
                self.set_state(i, CellState::Open, Cause::Spike, now, None, None);
                Some(HeldReason::Spike)
            }
            CellState::HalfOpen if over => {
                self.set_state(i, CellState::Open, Cause::SpikeWhileProbing, now, None, None);
                Some(HeldReason::Spike)
            }
            CellState::ForcedOpen => Some(HeldReason::ForcedOpen),
            CellState::Open => Some(HeldReason::BreakerOpen),
            CellState::HalfOpen if c.probes_left == 0 => Some(HeldReason::ProbeBudgetSpent),
            _ => None,
        }
    }

    /// Forces a cell open or closed until `now + ttl`, on behalf of `actor`.
    pub fn force(
        &mut self,
        cell: &str,
        open: bool,
        ttl: Duration,
        actor: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Transition, String> {
        self.advance(now_ms);
        let now = self.now();
        let i = self.cell_by_name(cell)?;
        let to = if open { CellState::ForcedOpen } else { CellState::ForcedClosed };
        let cause = if open { Cause::ManualOpen } else { Cause::ManualClose };
        self.cells[i].forced = Some(Override { until_ms: now.saturating_add(ttl.as_millis() as i64) });
        self.set_state(i, to, cause, now, Some(actor.to_string()), Some(reason.to_string()));
        Ok(self.transitions.last().cloned().unwrap_or_else(|| unreachable!()))
    }

    /// Whether `force` (or, with `clear`, `clear_override`) on this cell name would be accepted,
    /// without changing anything: callers record an action durably before applying it.
    pub fn check_cell_name(&self, cell: &str, clear: bool) -> Result<(), String> {
        if self.names.contains_key(cell) {
            return Ok(());
        }
        if clear {
            return Err(format!("no breaker cell named {cell:?}"));
        }
        if cell.is_empty() || cell.len() > 64 || cell.chars().any(char::is_control) {
            return Err("a cell name is a source name of 1 to 64 characters".into());
        }
        if self.cells.len() > self.policy.max_cells || matches!(cell, OVERFLOW_CELL | "global") {
            return Err(format!("no room for a new cell {cell:?} (breaker.max_cells reached)"));
        }
        Ok(())
    }

    /// The cell with exactly this name, created if it is a source not seen yet (an operator may
    /// hold a source before it misbehaves here).
    fn cell_by_name(&mut self, cell: &str) -> Result<usize, String> {
        if let Some(&i) = self.names.get(cell) {
            return Ok(i as usize);
        }
        if cell.is_empty() || cell.len() > 64 || cell.chars().any(char::is_control) {
            return Err("a cell name is a source name of 1 to 64 characters".into());
        }
        let i = self.cell_for(cell) as usize;
        if self.cells[i].name != cell {
            return Err(format!("no room for a new cell {cell:?} (breaker.max_cells reached)"));
        }
        Ok(i)
    }

    /// Ends a manual override now: a forced-open cell goes half-open, a forced-closed one closed.
    pub fn clear_override(
        &mut self,
        cell: &str,
        actor: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Option<Transition>, String> {
        self.advance(now_ms);
        let now = self.now();
        let i = self.names.get(cell).copied().ok_or_else(|| format!("no breaker cell named {cell:?}"))? as usize;
        if self.cells[i].forced.is_none() {
            return Ok(None);
        }
        let probes = self.policy.probe_budget;
        let to = if self.cells[i].state == CellState::ForcedOpen { CellState::HalfOpen } else { CellState::Closed };
        self.cells[i].forced = None;
        self.set_state(i, to, Cause::ManualClear, now, Some(actor.to_string()), Some(reason.to_string()));
        if to == CellState::HalfOpen {
            self.cells[i].probes_left = probes;
        }
        Ok(self.transitions.last().cloned())
    }

    /// Applies an override recorded by another instance (or an earlier incarnation) until `until_ms`.
    pub fn apply_override(
        &mut self,
        cell: &str,
        open: bool,
        until_ms: i64,
        actor: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), String> {
        self.advance(now_ms);
        let now = self.now();
        if until_ms <= now {
            return Ok(());
        }
        let ttl = Duration::from_millis((until_ms - now) as u64);
        self.force(cell, open, ttl, actor, reason, now).map(|_| ())
    }

    /// Takes the transitions recorded since the last call.
    pub fn drain_transitions(&mut self) -> Vec<Transition> {
        std::mem::take(&mut self.transitions)
    }

    /// Global notices that could be sent right now without waiting (as of the last check).
    pub fn global_remaining(&self) -> u32 {
        self.global_remaining
    }

    pub fn snapshot(&self) -> Vec<CellSnapshot> {
        let factor = self.share * self.ramp_factor();
        self.cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (rate, burst) = if i == GLOBAL as usize {
                    (self.policy.global_rate_per_minute, self.policy.global_burst)
                } else {
                    (self.policy.cell_rate_per_minute, self.policy.cell_burst)
                };
                CellSnapshot {
                    cell: c.name.clone(),
                    state: c.state,
                    since_ms: c.since_ms,
                    cause: c.cause,
                    decisions_this_minute: c.count,
                    baseline_per_minute: c.baseline,
                    spike_threshold: self.threshold(c),
                    warming_up: c.minutes_learned < self.policy.warmup_minutes,
                    forced_until_ms: c.forced.as_ref().map(|o| o.until_ms),
                    cap_per_minute: if c.no_budget { 0.0 } else { f64::from(rate) * factor },
                    cap_burst: if c.no_budget { 0 } else { (f64::from(burst) * factor).floor() as u32 },
                }
            })
            .collect()
    }

    pub fn state_of(&self, cell: &str) -> Option<CellState> {
        self.names.get(cell).map(|&i| self.cells[i as usize].state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::policy::Policy;

    fn policy() -> BreakerPolicy {
        let mut p = Policy::default_with_version("t").breaker;
        p.spike_floor = 10;
        p.global_spike_floor = 1000;
        p.cell_burst = 50;
        p.global_burst = 100;
        p.warmup_minutes = 2;
        p
    }

    const T0: i64 = 1_780_000_000_000;

    #[test]
    fn a_spiking_cell_trips_and_holds_while_other_cells_flow() {
        let mut b = Breaker::new(policy());
        let bad = b.cell_for("buggy-model");
        let good = b.cell_for("auth-service");
        let mut sent = 0;
        let mut held = Vec::new();
        for i in 0..500 {
            match b.check(bad, T0 + i) {
                Verdict::Send => sent += 1,
                Verdict::Hold { reason, cell } => {
                    assert_eq!(cell, bad);
                    held.push(reason)
                }
            }
        }
        assert_eq!(sent, 10, "the floor lets 10 through, then the cell trips");
        assert_eq!(held[0], HeldReason::Spike);
        assert!(held[1..].iter().all(|r| *r == HeldReason::BreakerOpen));
        assert_eq!(b.check(good, T0 + 600), Verdict::Send, "another source still gets its notice");
        assert_eq!(b.state_of("buggy-model"), Some(CellState::Open));
        let t = b.drain_transitions();
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].from, t[0].to, t[0].cause), (CellState::Closed, CellState::Open, Cause::Spike));
    }

    /// Sends until the cell holds; returns how many were sent.
    fn sent_before_hold(b: &mut Breaker, cell: u8, at: i64) -> u32 {
        let mut sent = 0;
        for i in 0..1000 {
            match b.check(cell, at + i) {
                Verdict::Send => sent += 1,
                Verdict::Hold { .. } => break,
            }
        }
        sent
    }

    #[test]
    fn three_instances_together_let_through_what_one_would_before_the_spike_trips() {
        let mut p = policy();
        p.spike_floor = 30;
        p.cell_burst = 1000;
        p.cell_rate_per_minute = 100_000;
        let mut one = Breaker::new(p.clone());
        let c = one.cell_for("buggy-model");
        let alone = sent_before_hold(&mut one, c, T0);
        let fleet: u32 = (0..3)
            .map(|_| {
                // As a restore leaves it: this instance's share, full (scaled) bursts.
                let mut b = Breaker::new(p.clone()).without_history(1.0 / 3.0);
                let c = b.cell_for("buggy-model");
                sent_before_hold(&mut b, c, T0)
            })
            .sum();
        assert_eq!(alone, 30, "one instance: the floor");
        assert_eq!(fleet, 30, "three instances with a third of the partitions each: the same floor in all");
        // The floor comes back with the share after a restore.
        let mut b = Breaker::new(p.clone()).without_history(0.5);
        let c = b.cell_for("buggy-model");
        assert_eq!(sent_before_hold(&mut b, c, T0), 15);
    }

    #[test]
    fn a_trip_elsewhere_in_the_fleet_opens_the_cell_here_until_the_same_half_open() {
        let p = policy();
        let open_ms = p.open_duration.as_millis() as i64;
        let mut b = Breaker::new(p.clone());
        let c = b.cell_for("buggy-model");
        assert!(b.fleet_trip("buggy-model", T0 - 1_000, T0), "a closed cell opens");
        assert_eq!(b.check(c, T0 + 1), Verdict::Hold { reason: HeldReason::BreakerOpen, cell: c });
        let t = b.drain_transitions();
        assert_eq!((t.len(), t[0].to, t[0].cause), (1, CellState::Open, Cause::FleetTrip));
        assert!(!b.fleet_trip("buggy-model", T0, T0 + 2), "already open: nothing to do");
        // A cell this instance has not seen yet is created open.
        assert!(b.fleet_trip("new-source", T0, T0 + 3));
        assert_eq!(b.state_of("new-source"), Some(CellState::Open));
        // A restore keeps it open (the replayed history alone would not).
        let mut r = b.without_history(1.0);
        r.reapply_overrides(T0 + 10);
        assert_eq!(r.state_of("buggy-model"), Some(CellState::Open));
        assert!(r.drain_transitions().is_empty(), "reported when it arrived, not again");
        // The open duration counts from the trip on the other instance.
        r.advance(T0 - 1_000 + open_ms);
        assert_eq!(r.state_of("buggy-model"), Some(CellState::HalfOpen));
        // Expired trips (e.g. read back from the compacted control topic at startup) are ignored,
        // and a manual override wins.
        let mut e = Breaker::new(p.clone());
        assert!(!e.fleet_trip("buggy-model", T0 - open_ms - 1, T0));
        assert_eq!(e.state_of("buggy-model"), None);
        e.cell_for("buggy-model");
        e.force("buggy-model", false, Duration::from_secs(600), "sre", "known good", T0).unwrap();
        assert!(!e.fleet_trip("buggy-model", T0, T0 + 1));
        assert_eq!(e.state_of("buggy-model"), Some(CellState::ForcedClosed));
    }

    #[test]
    fn snapshots_carry_the_cause_of_each_state_and_the_cap_in_force() {
        let p = policy();
        let mut b = Breaker::new(p.clone());
        let c = b.cell_for("m7");
        b.cell_for("calm");
        for i in 0..20 {
            b.check(c, T0 + i);
        }
        let snap = b.snapshot();
        let get = |name: &str| snap.iter().find(|s| s.cell == name).cloned().unwrap_or_else(|| panic!("{name}"));
        assert_eq!((get("m7").state, get("m7").cause), (CellState::Open, Some(Cause::Spike)));
        assert_eq!((get("calm").state, get("calm").cause), (CellState::Closed, None));
        assert_eq!((get("m7").cap_per_minute, get("m7").cap_burst), (f64::from(p.cell_rate_per_minute), p.cell_burst));
        assert_eq!(get("global").cap_burst, p.global_burst);
        b.set_share(0.5);
        let half = b.snapshot();
        assert_eq!(half[0].cap_per_minute, f64::from(p.global_rate_per_minute) * 0.5, "the instance's share");
        assert_eq!(half[0].cap_burst, p.global_burst / 2);
        assert!(b.force("m7", true, Duration::from_secs(60), "ana", "INC-1", T0 + 100).is_ok());
        assert_eq!(b.snapshot().iter().find(|s| s.cell == "m7").and_then(|s| s.cause), Some(Cause::ManualOpen));
    }

    #[test]
    fn open_goes_half_open_then_closed_when_calm_or_back_to_open_on_a_new_spike() {
        let p = policy();
        let (open_ms, half_ms) = (p.open_duration.as_millis() as i64, p.half_open_duration.as_millis() as i64);
        let mut b = Breaker::new(p.clone());
        let c = b.cell_for("m");
        for i in 0..20 {
            b.check(c, T0 + i);
        }
        assert_eq!(b.state_of("m"), Some(CellState::Open));
        let t1 = T0 + open_ms + 100;
        b.advance(t1);
        assert_eq!(b.state_of("m"), Some(CellState::HalfOpen));
        // Probe budget: exactly `probe_budget` notices, then held.
        let mut sent = 0;
        for i in 0..(p.probe_budget as i64 + 3) {
            if b.check(c, t1 + i) == Verdict::Send {
                sent += 1;
            }
        }
        assert_eq!(sent, p.probe_budget);
        b.advance(t1 + half_ms + 1);
        assert_eq!(b.state_of("m"), Some(CellState::Closed));
        // A new spike after closing trips again.
        let t2 = t1 + half_ms + 60_000;
        for i in 0..20 {
            b.check(c, t2 + i);
        }
        assert_eq!(b.state_of("m"), Some(CellState::Open));
        let causes: Vec<_> = b.drain_transitions().iter().map(|t| t.cause).collect();
        assert_eq!(causes, vec![Cause::Spike, Cause::OpenDurationElapsed, Cause::CalmWhileProbing, Cause::Spike]);
    }

    #[test]
    fn half_open_spike_reopens() {
        let p = policy();
        let mut b = Breaker::new(p.clone());
        let c = b.cell_for("m");
        for i in 0..20 {
            b.check(c, T0 + i);
        }
        let t1 = T0 + p.open_duration.as_millis() as i64 + 60_000;
        for i in 0..20 {
            b.check(c, t1 + i);
        }
        assert_eq!(b.state_of("m"), Some(CellState::Open));
        let last = b.drain_transitions().pop().unwrap();
        assert_eq!(last.cause, Cause::SpikeWhileProbing);
    }

    #[test]
    fn baseline_is_learned_and_raises_the_threshold_above_the_floor() {
        let mut p = policy();
        p.ewma_alpha = 0.5;
        let mut b = Breaker::new(p);
        let c = b.cell_for("steady");
        // 5 minutes of 8 decisions per minute: below the floor of 10, learned as baseline.
        for m in 0..5i64 {
            for i in 0..8 {
                assert_eq!(b.check(c, T0 + m * 60_000 + i * 1000), Verdict::Send);
            }
        }
        b.advance(T0 + 5 * 60_000);
        let snap = b.snapshot().into_iter().find(|s| s.cell == "steady").unwrap();
        assert!(snap.baseline_per_minute > 7.0, "{snap:?}");
        assert!(!snap.warming_up);
        assert!((snap.spike_threshold - 4.0 * snap.baseline_per_minute).abs() < 1e-9);
    }

    #[test]
    fn global_rate_cap_holds_without_tripping_and_refills_with_time() {
        let mut p = policy();
        p.global_burst = 5;
        p.cell_burst = 5;
        p.global_rate_per_minute = 60;
        p.spike_floor = 1000;
        let mut b = Breaker::new(p);
        let cells: Vec<u8> = (0..5).map(|i| b.cell_for(&format!("s{i}"))).collect();
        let mut verdicts = Vec::new();
        for (i, c) in cells.iter().cycle().take(8).enumerate() {
            verdicts.push(b.check(*c, T0 + i as i64));
        }
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Send).count(), 5);
        assert!(matches!(verdicts[5], Verdict::Hold { reason: HeldReason::GlobalRateLimited, cell: GLOBAL }));
        assert_eq!(b.check(cells[0], T0 + 1_100), Verdict::Send, "one more after a second at 60/min");
        assert_eq!(b.state_of("global"), Some(CellState::Closed));
    }

    #[test]
    fn forced_open_holds_until_ttl_then_probes() {
        let mut b = Breaker::new(policy());
        let c = b.cell_for("m");
        let t = b.force("m", true, Duration::from_secs(60), "alice-sre", "investigating", T0).unwrap();
        assert_eq!(t.actor.as_deref(), Some("alice-sre"));
        assert_eq!(b.check(c, T0 + 10), Verdict::Hold { reason: HeldReason::ForcedOpen, cell: c });
        b.advance(T0 + 60_001);
        assert_eq!(b.state_of("m"), Some(CellState::HalfOpen));
        assert!(b.force("", true, Duration::from_secs(1), "a", "b", T0).is_err(), "an empty cell name is refused");
    }

    #[test]
    fn forced_closed_ignores_spikes_but_not_the_global_cap() {
        let mut p = policy();
        p.global_burst = 20;
        p.cell_burst = 20;
        let mut b = Breaker::new(p);
        let c = b.cell_for("m");
        b.force("m", false, Duration::from_secs(600), "bob", "known batch", T0).unwrap();
        let sent = (0..100).filter(|i| b.check(c, T0 + i) == Verdict::Send).count();
        assert_eq!(sent, 20, "forced closed: no trip, but the caps still hold");
        assert_eq!(b.state_of("m"), Some(CellState::ForcedClosed));
    }

    /// Global and cell caps of `burst` at `rate_per_minute`, spike floors out of reach: only
    /// the rate limiters act.
    fn caps_only(burst: u32, rate_per_minute: u32) -> BreakerPolicy {
        let mut p = policy();
        p.global_burst = burst;
        p.cell_burst = burst;
        p.global_rate_per_minute = rate_per_minute;
        p.cell_rate_per_minute = rate_per_minute;
        p.spike_floor = 1_000_000;
        p.global_spike_floor = 1_000_000;
        p
    }

    #[test]
    fn a_third_of_the_partitions_gets_a_third_of_the_caps_and_rebalances_mint_no_bursts() {
        let mut b = Breaker::new(caps_only(90, 60));
        let c = b.cell_for("s");
        b.set_share(1.0);
        let sent = (0..200).filter(|i| b.check(c, T0 + i) == Verdict::Send).count();
        assert_eq!(sent, 90, "alone: the whole burst");
        // Joining a fleet: a third of the caps, starting empty, refilling at a third of the rate.
        b.set_share(1.0 / 3.0);
        let sent = (0..200).filter(|i| b.check(c, T0 + 100 + i) == Verdict::Send).count();
        assert_eq!(sent, 0, "no fresh burst when joining");
        let sent = (0..200).filter(|i| b.check(c, T0 + 20 * 60_000 + i) == Verdict::Send).count();
        assert_eq!(sent, 30, "after a long quiet time: a third of the burst");
        // A rebalance changes the share: the budget left (none) is carried, no fresh burst.
        b.set_share(2.0 / 3.0);
        let sent = (0..200).filter(|i| b.check(c, T0 + 300 + i) == Verdict::Send).count();
        assert_eq!(sent, 0, "no fresh burst after a rebalance");
        b.set_share(0.0);
        assert!(matches!(b.check(c, T0 + 120_000), Verdict::Hold { .. }), "no partitions, no budget");
    }

    #[test]
    fn a_share_change_carries_the_budget_left_scaled_down_never_up() {
        let p = caps_only(100, 1);
        let sends = |b: &mut Breaker, c: u8, at: i64| (0..300).filter(|i| b.check(c, at + i) == Verdict::Send).count();
        let mut b = Breaker::new(p);
        let c = b.cell_for("s");
        b.set_share(1.0);
        assert_eq!((0..40).filter(|i| b.check(c, T0 + i) == Verdict::Send).count(), 40);
        // 60 left; half the partitions go elsewhere: half of what is left stays here (30).
        b.set_share(0.5);
        // Growing back keeps what is left, it does not refill to the larger burst.
        assert_eq!((0..10).filter(|i| b.check(c, T0 + 100 + i) == Verdict::Send).count(), 10);
        b.set_share(1.0);
        assert_eq!(sends(&mut b, c, T0 + 200), 20, "30 − 10 carried over, no fresh burst");
    }

    #[test]
    fn manual_override_by_name_creates_the_cell_and_clear_ends_it() {
        let mut b = Breaker::new(policy());
        b.force("not-seen-yet", true, Duration::from_secs(600), "sre", "pre-emptive", T0).unwrap();
        let c = b.cell_for("not-seen-yet");
        assert_eq!(b.check(c, T0 + 1), Verdict::Hold { reason: HeldReason::ForcedOpen, cell: c });
        let t = b.clear_override("not-seen-yet", "sre", "done", T0 + 2).unwrap().unwrap();
        assert_eq!((t.from, t.to, t.cause), (CellState::ForcedOpen, CellState::HalfOpen, Cause::ManualClear));
        assert_eq!(b.check(c, T0 + 3), Verdict::Send, "half-open probe");
    }

    #[test]
    fn a_flood_of_decisions_on_old_events_trips_the_global_cell() {
        let mut p = policy();
        p.spike_floor = 1000;
        let mut b = Breaker::new(p);
        let c = b.cell_for("s");
        let stale = 20 * 60_000;
        for i in 0..10 {
            b.note_event_lag(stale, T0 + i);
            assert_eq!(b.check(c, T0 + i), Verdict::Send);
        }
        b.note_event_lag(60_000, T0 + 20); // fresh events do not count
        b.note_event_lag(stale, T0 + 21);
        assert_eq!(b.state_of("global"), Some(CellState::Open));
        assert_eq!(b.check(c, T0 + 22), Verdict::Hold { reason: HeldReason::BreakerOpen, cell: GLOBAL });
        assert_eq!(b.drain_transitions().pop().unwrap().cause, Cause::ReplaySuspected);
    }

    #[test]
    fn every_source_spiking_at_once_trips_the_global_cell() {
        let mut p = policy();
        p.spike_floor = 30;
        p.global_spike_floor = 100;
        p.global_burst = 1000;
        p.cell_burst = 1000;
        let mut b = Breaker::new(p);
        let cells: Vec<u8> = (0..5).map(|i| b.cell_for(&format!("s{i}"))).collect();
        let mut held_global = 0;
        // 25 decisions per source: no source crosses its floor of 30, together they cross 100.
        for round in 0..25 {
            for c in &cells {
                if let Verdict::Hold { cell: GLOBAL, .. } = b.check(*c, T0 + round * 10) {
                    held_global += 1;
                }
            }
        }
        assert!(cells.iter().all(|c| b.state_of(b.cell_name(*c)) == Some(CellState::Closed)));
        assert_eq!(b.state_of("global"), Some(CellState::Open));
        assert_eq!(held_global, 125 - 100);
    }

    #[test]
    fn after_a_policy_change_the_caps_ramp_up_in_tenths() {
        let mut p = caps_only(100, 100);
        p.policy_change_ramp = Duration::from_secs(1800);
        let mut b = Breaker::new(p);
        let c = b.cell_for("s");
        b.start_policy_ramp(T0);
        assert!((b.ramp_factor() - 0.1).abs() < 1e-9);
        // Starting empty at a tenth: 10 per minute refill.
        let sent = (0..1000).filter(|i| b.check(c, T0 + 60_000 + i) == Verdict::Send).count();
        assert!(sent <= 10, "{sent}");
        b.advance(T0 + 1_800_001);
        assert!((b.ramp_factor() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn sources_beyond_max_cells_share_the_overflow_cell() {
        let mut p = policy();
        p.max_cells = 2;
        let mut b = Breaker::new(p);
        let a = b.cell_for("a");
        let c2 = b.cell_for("b");
        let c3 = b.cell_for("c");
        let c4 = b.cell_for("d");
        assert_ne!(a, c2);
        assert_eq!(c3, c4);
        assert_eq!(b.cell_name(c3), OVERFLOW_CELL);
    }
}
