//! The decision policy: TOML schema, defaults, and validation into a `Policy` that cannot hold an
//! invalid value. Pure (parses a string; reading the file is the caller's job).
//!
//! Every field carries a doc comment: that text is the analyst's manual (`docs/policy.md` mirrors it).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// Most signal kinds a policy may define: signal kinds are stored as a bit in a `u32` mask.
pub const MAX_SIGNALS: usize = 32;
/// Most breaker cells (sources) tracked individually; one cell index is a `u8`.
pub const MAX_CELLS_LIMIT: usize = 250;

/// One thing wrong with a policy file: the dotted field path and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// A policy that failed to parse or validate, with every problem found.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid policy: {}", .errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct PolicyError {
    pub errors: Vec<FieldError>,
}

impl PolicyError {
    fn one(path: &str, reason: impl Into<String>) -> Self {
        PolicyError { errors: vec![FieldError { path: path.into(), reason: reason.into() }] }
    }
}

// ---------------------------------------------------------------------------------------------
// File format (what analysts write)
// ---------------------------------------------------------------------------------------------

/// The policy file as written. See `Policy` for the validated form.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Version label of this policy (1–64 chars). Part of every `notice_id` and explanation, so a
    /// policy change starts new incidents. Required.
    pub version: String,
    /// `live` sends notices; `shadow` computes everything and marks would-be notices, sending none.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Short sliding window in event time.
    #[serde(default)]
    pub window: WindowFile,
    /// Long window for slow-burn attacks (approximated sliding window, see docs).
    #[serde(default)]
    pub slow_window: SlowWindowFile,
    /// When a score becomes a decision, and how long an incident lasts.
    #[serde(default)]
    pub decision: DecisionFile,
    /// Signal kinds known to the policy, by name. Events with other signals are rejected.
    #[serde(default = "default_signals")]
    pub signals: BTreeMap<String, SignalFile>,
    /// Size limits on input events.
    #[serde(default)]
    pub limits: LimitsFile,
    /// The mass-reset circuit breaker.
    #[serde(default)]
    pub breaker: BreakerFile,
    /// Accounts exempt from notices until an expiry.
    #[serde(default)]
    pub allow_list: Vec<AllowEntryFile>,
}

fn default_mode() -> String {
    // Live is what a deployed policy is for; analysts opt into shadow explicitly.
    "live".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowFile {
    /// Length of the short sliding window. Default `15m`.
    #[serde(default = "default_window_length")]
    pub length: String,
    /// How far behind the newest event time of a partition an event may arrive and still count.
    /// Older events are `late`. Default `2m`.
    #[serde(default = "default_allowed_lateness")]
    pub allowed_lateness: String,
    /// Most events kept per account in the short window; the oldest goes first. Default 16
    /// (per-signal caps make more events per window pointless, and memory stays bounded).
    #[serde(default = "default_max_events")]
    pub max_events_per_account: u32,
    /// Account state untouched for this long in processing time is freed even if the watermark
    /// stalls (a quiet stream). Default `25h` (longer than the slow window).
    #[serde(default = "default_idle_ttl")]
    pub idle_ttl: String,
}

fn default_window_length() -> String {
    "15m".into()
}
fn default_allowed_lateness() -> String {
    "2m".into()
}
fn default_max_events() -> u32 {
    16
}
fn default_idle_ttl() -> String {
    "25h".into()
}

impl Default for WindowFile {
    fn default() -> Self {
        WindowFile {
            length: default_window_length(),
            allowed_lateness: default_allowed_lateness(),
            max_events_per_account: default_max_events(),
            idle_ttl: default_idle_ttl(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowWindowFile {
    /// Whether the slow-burn window can trigger decisions. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Length of the slow window. Default `24h`.
    #[serde(default = "default_slow_length")]
    pub length: String,
    /// Score at which the slow window decides. Default 3.0 (three short-window thresholds spread
    /// over a day).
    #[serde(default = "default_slow_threshold")]
    pub threshold: f64,
    /// Distinct signal kinds required in the slow window, so one chatty signal cannot decide over
    /// a day. Default 2.
    #[serde(default = "default_slow_min_kinds")]
    pub min_signal_kinds: u32,
}

fn default_true() -> bool {
    true
}
fn default_slow_length() -> String {
    "24h".into()
}
fn default_slow_threshold() -> f64 {
    3.0
}
fn default_slow_min_kinds() -> u32 {
    2
}

impl Default for SlowWindowFile {
    fn default() -> Self {
        SlowWindowFile {
            enabled: true,
            length: default_slow_length(),
            threshold: default_slow_threshold(),
            min_signal_kinds: default_slow_min_kinds(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionFile {
    /// Short-window score at which an account must reset its password. Default 1.0.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// One notice per account per incident: after a decision, the account is in cooldown this
    /// long (event time). Default `24h`.
    #[serde(default = "default_cooldown")]
    pub cooldown: String,
    /// An `event_id` seen again within this horizon is a `duplicate`. Default `1h`.
    #[serde(default = "default_dedupe_horizon")]
    pub dedupe_horizon: String,
    /// Most event ids remembered for dedupe; past it the horizon shortens (and a metric says so).
    /// Default 10,000,000 (about 200 MB).
    #[serde(default = "default_dedupe_max")]
    pub dedupe_max_entries: u64,
    /// Events stamped further than this into the future (against the wall clock) are rejected.
    /// Default `5m`.
    #[serde(default = "default_future_skew")]
    pub max_future_skew: String,
}

fn default_threshold() -> f64 {
    1.0
}
fn default_cooldown() -> String {
    "24h".into()
}
fn default_dedupe_horizon() -> String {
    "1h".into()
}
fn default_dedupe_max() -> u64 {
    10_000_000
}
fn default_future_skew() -> String {
    "5m".into()
}

impl Default for DecisionFile {
    fn default() -> Self {
        DecisionFile {
            threshold: default_threshold(),
            cooldown: default_cooldown(),
            dedupe_horizon: default_dedupe_horizon(),
            dedupe_max_entries: default_dedupe_max(),
            max_future_skew: default_future_skew(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalFile {
    /// Score per unit of risk: an event adds `weight × risk`.
    pub weight: f64,
    /// Most this signal kind adds to a window score. A cap below the threshold means this signal
    /// alone can never decide; set it at or above the threshold to let it. Default: 0.6 × weight
    /// sum cap of... see `default_cap`: 0.8.
    #[serde(default = "default_cap")]
    pub cap: f64,
}

fn default_cap() -> f64 {
    // Below the default threshold of 1.0: one signal kind alone cannot decide unless the policy says so.
    0.8
}

fn default_signals() -> BTreeMap<String, SignalFile> {
    let mut m = BTreeMap::new();
    let mut add = |name: &str, weight: f64, cap: f64| {
        m.insert(name.to_string(), SignalFile { weight, cap });
    };
    add("failed_login", 0.1, 0.5);
    add("credential_stuffing", 0.6, 0.9);
    add("impossible_travel", 0.7, 0.9);
    add("breached_password", 1.0, 1.0);
    add("mfa_failure", 0.3, 0.6);
    add("new_device", 0.2, 0.4);
    add("unusual_time", 0.1, 0.3);
    m
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Largest accepted message in bytes; bigger ones are rejected before parsing. Default 16384.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// Largest `attributes` object in bytes (as serialized). Default 4096.
    #[serde(default = "default_max_attr_bytes")]
    pub max_attributes_bytes: usize,
    /// Deepest nesting inside `attributes`. Default 8.
    #[serde(default = "default_max_attr_depth")]
    pub max_attributes_depth: usize,
}

fn default_max_message() -> usize {
    16 * 1024
}
fn default_max_attr_bytes() -> usize {
    4096
}
fn default_max_attr_depth() -> usize {
    8
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            max_message_bytes: default_max_message(),
            max_attributes_bytes: default_max_attr_bytes(),
            max_attributes_depth: default_max_attr_depth(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerFile {
    /// Global cap on notices per minute (GCRA replenish rate). Default 600.
    #[serde(default = "default_global_rate")]
    pub global_rate_per_minute: u32,
    /// Notices the global cap lets through at once. Default 100.
    #[serde(default = "default_global_burst")]
    pub global_burst: u32,
    /// Cap on notices per minute per source cell. Default 300.
    #[serde(default = "default_cell_rate")]
    pub cell_rate_per_minute: u32,
    /// Notices one source cell lets through at once. Default 50.
    #[serde(default = "default_cell_burst")]
    pub cell_burst: u32,
    /// A cell trips when its decisions in the current minute exceed `spike_factor × baseline`.
    /// Default 4.0.
    #[serde(default = "default_spike_factor")]
    pub spike_factor: f64,
    /// A source cell never trips on a spike below this many decisions per minute. Default 30.
    #[serde(default = "default_spike_floor")]
    pub spike_floor: u32,
    /// The global cell never trips on a spike below this many decisions per minute. Default 120.
    #[serde(default = "default_global_spike_floor")]
    pub global_spike_floor: u32,
    /// Weight of the newest minute in the EWMA baseline. Default 0.1 (about a 10-minute memory).
    #[serde(default = "default_ewma_alpha")]
    pub ewma_alpha: f64,
    /// Minutes a cell learns before its baseline is used; until then only the floor applies.
    /// Default 10.
    #[serde(default = "default_warmup_minutes")]
    pub warmup_minutes: u32,
    /// How long a tripped cell stays open before probing (half-open). Default `10m`.
    #[serde(default = "default_open_duration")]
    pub open_duration: String,
    /// Notices a half-open cell may send while probing. Default 5.
    #[serde(default = "default_probe_budget")]
    pub probe_budget: u32,
    /// How long a half-open cell must stay calm before it closes. Default `2m`.
    #[serde(default = "default_half_open_duration")]
    pub half_open_duration: String,
    /// Most source cells tracked individually; further sources share the cell `_other`. Default 32.
    #[serde(default = "default_max_cells")]
    pub max_cells: u32,
    /// A decision whose event is older than this (against the breaker's clock) is stale: a flood
    /// of them means input offsets were rewound or a topic replayed. Default `15m`.
    #[serde(default = "default_stale_after")]
    pub stale_after: String,
    /// Stale decisions per minute past which the global cell trips (cause `replay_suspected`).
    /// Default 10.
    #[serde(default = "default_stale_floor")]
    pub stale_floor: u32,
    /// After a policy version change the caps ramp from 10% to 100% over this time. Default `30m`.
    #[serde(default = "default_ramp")]
    pub policy_change_ramp: String,
}

fn default_stale_after() -> String {
    "15m".into()
}
fn default_stale_floor() -> u32 {
    10
}
fn default_ramp() -> String {
    "30m".into()
}

fn default_global_rate() -> u32 {
    600
}
fn default_global_burst() -> u32 {
    100
}
fn default_cell_rate() -> u32 {
    300
}
fn default_cell_burst() -> u32 {
    50
}
fn default_spike_factor() -> f64 {
    4.0
}
fn default_spike_floor() -> u32 {
    30
}
fn default_global_spike_floor() -> u32 {
    120
}
fn default_ewma_alpha() -> f64 {
    0.1
}
fn default_warmup_minutes() -> u32 {
    10
}
fn default_open_duration() -> String {
    "10m".into()
}
fn default_probe_budget() -> u32 {
    5
}
fn default_half_open_duration() -> String {
    "2m".into()
}
fn default_max_cells() -> u32 {
    32
}

impl Default for BreakerFile {
    fn default() -> Self {
        BreakerFile {
            global_rate_per_minute: default_global_rate(),
            global_burst: default_global_burst(),
            cell_rate_per_minute: default_cell_rate(),
            cell_burst: default_cell_burst(),
            spike_factor: default_spike_factor(),
            spike_floor: default_spike_floor(),
            global_spike_floor: default_global_spike_floor(),
            ewma_alpha: default_ewma_alpha(),
            warmup_minutes: default_warmup_minutes(),
            open_duration: default_open_duration(),
            probe_budget: default_probe_budget(),
            half_open_duration: default_half_open_duration(),
            max_cells: default_max_cells(),
            stale_after: default_stale_after(),
            stale_floor: default_stale_floor(),
            policy_change_ramp: default_ramp(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntryFile {
    /// The exempt account.
    pub account_id: String,
    /// RFC 3339 time after which the exemption no longer applies.
    pub expires_at: String,
    /// Why (for the audit trail).
    #[serde(default)]
    pub reason: String,
}

// ---------------------------------------------------------------------------------------------
// Validated form (what the core uses)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Live,
    Shadow,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Live => "live",
            Mode::Shadow => "shadow",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Signal {
    pub name: String,
    pub weight: f32,
    pub cap: f32,
}

#[derive(Debug, Clone)]
pub struct SlowWindow {
    pub enabled: bool,
    pub length: Duration,
    pub threshold: f32,
    pub min_signal_kinds: u32,
}

#[derive(Debug, Clone)]
pub struct BreakerPolicy {
    pub global_rate_per_minute: u32,
    pub global_burst: u32,
    pub cell_rate_per_minute: u32,
    pub cell_burst: u32,
    pub spike_factor: f64,
    pub spike_floor: u32,
    pub global_spike_floor: u32,
    pub ewma_alpha: f64,
    pub warmup_minutes: u32,
    pub open_duration: Duration,
    pub probe_budget: u32,
    pub half_open_duration: Duration,
    pub max_cells: usize,
    pub stale_after: Duration,
    pub stale_floor: u32,
    pub policy_change_ramp: Duration,
}

#[derive(Debug, Clone)]
pub struct AllowEntry {
    pub account_id: String,
    pub expires_at_ms: i64,
    pub reason: String,
}

/// A validated policy. Construct with [`Policy::from_toml`].
#[derive(Debug, Clone)]
pub struct Policy {
    pub version: String,
    pub mode: Mode,
    pub window: Duration,
    pub allowed_lateness: Duration,
    pub max_events_per_account: usize,
    pub idle_ttl: Duration,
    pub slow: SlowWindow,
    pub threshold: f32,
    pub cooldown: Duration,
    pub dedupe_horizon: Duration,
    pub dedupe_max_entries: usize,
    pub max_future_skew: Duration,
    /// Signal kinds, index = signal id used in state. Sorted by name.
    pub signals: Vec<Signal>,
    pub max_message_bytes: usize,
    pub max_attributes_bytes: usize,
    pub max_attributes_depth: usize,
    pub breaker: BreakerPolicy,
    pub allow_list: Vec<AllowEntry>,
}

impl Policy {
    /// Parses and validates a policy. Every problem is reported with its field path.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| {
            let path = e.span().map(|s| format!("(bytes {}..{})", s.start, s.end)).unwrap_or_default();
            PolicyError::one(if path.is_empty() { "policy" } else { &path }, e.message().to_string())
        })?;
        file.validate()
    }

    /// The built-in policy (every default), used by the demo and as the base of examples.
    pub fn default_with_version(version: &str) -> Policy {
        let text = format!("version = \"{version}\"\n");
        // The defaults are valid by construction; a test keeps it that way.
        match Policy::from_toml(&text) {
            Ok(p) => p,
            Err(e) => unreachable!("built-in defaults are invalid: {e}"),
        }
    }

    pub fn signal_index(&self, name: &str) -> Option<u8> {
        self.signals.binary_search_by(|s| s.name.as_str().cmp(name)).ok().map(|i| i as u8)
    }
}

struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn err(&mut self, path: &str, reason: impl Into<String>) {
        self.errors.push(FieldError { path: path.into(), reason: reason.into() });
    }

    fn duration(&mut self, path: &str, text: &str, min: Duration, max: Duration) -> Duration {
        match humantime::parse_duration(text) {
            Ok(d) if d < min => {
                self.err(path, format!("must be at least {}", humantime::format_duration(min)));
                min
            }
            Ok(d) if d > max => {
                self.err(path, format!("must be at most {}", humantime::format_duration(max)));
                max
            }
            Ok(d) => d,
            Err(e) => {
                self.err(path, format!("is not a duration like \"15m\" or \"24h\" ({e})"));
                min
            }
        }
    }

    fn positive(&mut self, path: &str, v: f64) -> f32 {
        if !(v.is_finite() && v > 0.0) {
            self.err(path, "must be a finite number greater than 0");
        }
        v as f32
    }

    fn range_u32(&mut self, path: &str, v: u32, min: u32, max: u32) -> u32 {
        if v < min || v > max {
            self.err(path, format!("must be between {min} and {max}"));
        }
        v
    }
}

impl PolicyFile {
    pub fn validate(self) -> Result<Policy, PolicyError> {
        let mut c = Checker { errors: Vec::new() };
        let day = Duration::from_secs(86_400);
        if self.version.is_empty() || self.version.len() > 64 {
            c.err("version", "must be 1 to 64 characters");
        }
        if self.version.chars().any(|ch| ch.is_control()) {
            c.err("version", "must not contain control characters");
        }
        let mode = match self.mode.as_str() {
            "live" => Mode::Live,
            "shadow" => Mode::Shadow,
            _ => {
                c.err("mode", "must be \"live\" or \"shadow\"");
                Mode::Shadow
            }
        };
        let window = c.duration("window.length", &self.window.length, Duration::from_secs(1), day);
        let allowed_lateness =
            c.duration("window.allowed_lateness", &self.window.allowed_lateness, Duration::ZERO, day);
        let max_events = c.range_u32("window.max_events_per_account", self.window.max_events_per_account, 1, 255);
        let idle_ttl = c.duration("window.idle_ttl", &self.window.idle_ttl, Duration::from_secs(1), 30 * day);
        let slow_len = c.duration("slow_window.length", &self.slow_window.length, Duration::from_secs(60), 30 * day);
        let slow_threshold = c.positive("slow_window.threshold", self.slow_window.threshold);
        let min_kinds =
            c.range_u32("slow_window.min_signal_kinds", self.slow_window.min_signal_kinds, 1, MAX_SIGNALS as u32);
        if self.slow_window.enabled && slow_len <= window {
            c.err("slow_window.length", "must be longer than window.length");
        }
        let threshold = c.positive("decision.threshold", self.decision.threshold);
        let cooldown = c.duration("decision.cooldown", &self.decision.cooldown, Duration::from_secs(1), 365 * day);
        let dedupe_horizon =
            c.duration("decision.dedupe_horizon", &self.decision.dedupe_horizon, Duration::from_secs(1), 30 * day);
        if self.decision.dedupe_max_entries < 1000 {
            c.err("decision.dedupe_max_entries", "must be at least 1000");
        }
        let max_future_skew =
            c.duration("decision.max_future_skew", &self.decision.max_future_skew, Duration::ZERO, day);
        if idle_ttl < window + allowed_lateness {
            c.err("window.idle_ttl", "must be at least window.length + window.allowed_lateness");
        }

        if self.signals.is_empty() {
            c.err("signals", "must define at least one signal kind");
        }
        if self.signals.len() > MAX_SIGNALS {
            c.err("signals", format!("at most {MAX_SIGNALS} signal kinds"));
        }
        let mut signals = Vec::with_capacity(self.signals.len());
        for (name, s) in &self.signals {
            let path = format!("signals.{name}");
            if name.is_empty()
                || name.len() > 64
                || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                c.err(&path, "signal names are 1 to 64 characters of a-z, 0-9 and _");
            }
            let weight = c.positive(&format!("{path}.weight"), s.weight);
            let cap = c.positive(&format!("{path}.cap"), s.cap);
            signals.push(Signal { name: name.clone(), weight, cap });
        }

        let b = &self.breaker;
        let breaker = BreakerPolicy {
            global_rate_per_minute: c.range_u32(
                "breaker.global_rate_per_minute",
                b.global_rate_per_minute,
                1,
                1_000_000,
            ),
            global_burst: c.range_u32("breaker.global_burst", b.global_burst, 1, 1_000_000),
            cell_rate_per_minute: c.range_u32("breaker.cell_rate_per_minute", b.cell_rate_per_minute, 1, 1_000_000),
            cell_burst: c.range_u32("breaker.cell_burst", b.cell_burst, 1, 1_000_000),
            spike_factor: {
                if !(b.spike_factor.is_finite() && b.spike_factor >= 1.0) {
                    c.err("breaker.spike_factor", "must be a finite number of at least 1.0");
                }
                b.spike_factor
            },
            spike_floor: c.range_u32("breaker.spike_floor", b.spike_floor, 1, 10_000_000),
            global_spike_floor: c.range_u32("breaker.global_spike_floor", b.global_spike_floor, 1, 10_000_000),
            ewma_alpha: {
                if !(b.ewma_alpha > 0.0 && b.ewma_alpha <= 1.0) {
                    c.err("breaker.ewma_alpha", "must be in (0, 1]");
                }
                b.ewma_alpha
            },
            warmup_minutes: c.range_u32("breaker.warmup_minutes", b.warmup_minutes, 0, 10_080),
            open_duration: c.duration("breaker.open_duration", &b.open_duration, Duration::from_secs(1), 7 * day),
            probe_budget: c.range_u32("breaker.probe_budget", b.probe_budget, 0, 10_000),
            half_open_duration: c.duration(
                "breaker.half_open_duration",
                &b.half_open_duration,
                Duration::from_secs(1),
                day,
            ),
            max_cells: c.range_u32("breaker.max_cells", b.max_cells, 1, MAX_CELLS_LIMIT as u32) as usize,
            stale_after: c.duration("breaker.stale_after", &b.stale_after, Duration::from_secs(60), 30 * day),
            stale_floor: c.range_u32("breaker.stale_floor", b.stale_floor, 1, 10_000_000),
            policy_change_ramp: c.duration(
                "breaker.policy_change_ramp",
                &b.policy_change_ramp,
                Duration::ZERO,
                7 * day,
            ),
        };
        if b.cell_burst > b.global_burst {
            c.err("breaker.cell_burst", "must not exceed breaker.global_burst");
        }
        if b.cell_rate_per_minute > b.global_rate_per_minute {
            c.err("breaker.cell_rate_per_minute", "must not exceed breaker.global_rate_per_minute");
        }

        let mut allow_list = Vec::new();
        for (i, a) in self.allow_list.iter().enumerate() {
            let path = format!("allow_list[{i}]");
            if a.account_id.is_empty() || a.account_id.len() > 256 {
                c.err(&format!("{path}.account_id"), "must be 1 to 256 characters");
            }
            match chrono::DateTime::parse_from_rfc3339(&a.expires_at) {
                Ok(t) => allow_list.push(AllowEntry {
                    account_id: a.account_id.clone(),
                    expires_at_ms: t.timestamp_millis(),
                    reason: a.reason.clone(),
                }),
                Err(_) => c.err(&format!("{path}.expires_at"), "must be an RFC 3339 timestamp"),
            }
        }

        if !c.errors.is_empty() {
            return Err(PolicyError { errors: c.errors });
        }
        Ok(Policy {
            version: self.version,
            mode,
            window,
            allowed_lateness,
            max_events_per_account: max_events as usize,
            idle_ttl,
            slow: SlowWindow {
                enabled: self.slow_window.enabled,
                length: slow_len,
                threshold: slow_threshold,
                min_signal_kinds: min_kinds,
            },
            threshold,
            cooldown,
            dedupe_horizon,
            dedupe_max_entries: self.decision.dedupe_max_entries as usize,
            max_future_skew,
            signals,
            max_message_bytes: self.limits.max_message_bytes,
            max_attributes_bytes: self.limits.max_attributes_bytes,
            max_attributes_depth: self.limits.max_attributes_depth,
            breaker,
            allow_list,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_single_signals_cannot_decide_alone_except_breached_password() {
        let p = Policy::default_with_version("t1");
        assert_eq!(p.window, Duration::from_secs(900));
        assert_eq!(p.allowed_lateness, Duration::from_secs(120));
        assert_eq!(p.cooldown, Duration::from_secs(86_400));
        let alone: Vec<_> = p.signals.iter().filter(|s| s.cap >= p.threshold).map(|s| s.name.as_str()).collect();
        assert_eq!(alone, vec!["breached_password"]);
    }

    #[test]
    fn invalid_fields_are_reported_with_their_paths() {
        let text = r#"
            version = ""
            mode = "loud"
            [window]
            length = "fifteen"
            [decision]
            threshold = -1.0
            [breaker]
            ewma_alpha = 2.0
            cell_burst = 500
            [signals.failed_login]
            weight = 0.0
        "#;
        let err = Policy::from_toml(text).unwrap_err();
        let paths: Vec<_> = err.errors.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "version",
            "mode",
            "window.length",
            "decision.threshold",
            "breaker.ewma_alpha",
            "breaker.cell_burst",
            "signals.failed_login.weight",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = Policy::from_toml("version = \"a\"\n[window]\nlenght = \"5m\"\n").unwrap_err();
        assert!(err.to_string().contains("lenght"), "{err}");
    }
}
