//! Event builders and generators for black-box tests of the decision core (`resetguard::core`).
//!
//! ```ignore
//! mod common;
//! use common::events::{Ev, T0};
//!
//! let bytes = Ev::new("e1", "acct-1", T0, "auth-service", "failed_login", 0.3).bytes();
//! ```
//!
//! * [`Ev`]: one login-risk event (schema v1) with optional fields, serialized field by field so a
//!   test can also write duplicate keys, escapes or odd layouts.
//! * [`Mutation`]: ways to damage (or harmlessly re-encode) a valid event, each with the outcome the
//!   contract promises ([`Expect`]); [`arb_mutation`] generates them for proptest.
//! * [`Rng`]: a tiny deterministic PRNG (SplitMix64) for scenario generators.
//! * [`Tally`]: outcomes counted by kind.
//!
//! Mutations assume the default limits of `Policy` (`max_message_bytes` 16384,
//! `max_attributes_bytes` 4096, `max_attributes_depth` 8, `max_future_skew` 5m) and the default
//! signal names.
#![allow(dead_code)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use resetguard::core::event::{format_rfc3339_ms, RejectReason};
use resetguard::core::outcome::{Outcome, OutcomeKind};
use serde_json::{json, Value};

/// 2026-05-28T20:26:40Z.
pub const T0: i64 = 1_780_000_000_000;
/// The minute boundary at or before [`T0`] (2026-05-28T20:26:00Z).
pub const T0_MINUTE: i64 = T0 - T0.rem_euclid(60_000);

pub const MINUTE: i64 = 60_000;
pub const SECOND: i64 = 1_000;

/// Signal kinds of the default policy.
pub const DEFAULT_SIGNALS: [&str; 7] = [
    "breached_password",
    "credential_stuffing",
    "failed_login",
    "impossible_travel",
    "mfa_failure",
    "new_device",
    "unusual_time",
];

/// Sources used by the scenarios (plus a few odd ones: names the breaker reserves, non-ASCII).
pub const SOURCES: [&str; 8] =
    ["auth-service", "device-intel", "breached-pw-check", "risk-model-v7", "global", "_other", "détecteur-ß", "s"];

/// The first non-negative millisecond of the minute containing `ms`.
pub fn minute_floor(ms: i64) -> i64 {
    ms - ms.rem_euclid(60_000)
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// One login-risk event. Fields are written in `fields()` order; `extra` fields follow.
#[derive(Debug, Clone, PartialEq)]
pub struct Ev {
    pub event_id: String,
    pub account_id: String,
    pub t_ms: i64,
    pub source: String,
    pub signal: String,
    pub risk: f64,
    /// Optional fields of the contract (`ip`, `country`, `device_id`, `user_agent`, `attributes`,
    /// `schema_version`) or anything else, written after the required ones.
    pub extra: Vec<(String, Value)>,
}

impl Ev {
    pub fn new(event_id: &str, account_id: &str, t_ms: i64, source: &str, signal: &str, risk: f64) -> Ev {
        Ev {
            event_id: event_id.to_string(),
            account_id: account_id.to_string(),
            t_ms,
            source: source.to_string(),
            signal: signal.to_string(),
            risk,
            extra: Vec::new(),
        }
    }

    /// Adds (or replaces) an optional field.
    pub fn with(mut self, key: &str, value: Value) -> Ev {
        self.extra.retain(|(k, _)| k != key);
        self.extra.push((key.to_string(), value));
        self
    }

    pub fn occurred_at(&self) -> String {
        format_rfc3339_ms(self.t_ms)
    }

    /// The fields as (key, value) pairs in wire order.
    pub fn fields(&self) -> Vec<(String, Value)> {
        let mut f = vec![
            ("event_id".to_string(), json!(self.event_id)),
            ("account_id".to_string(), json!(self.account_id)),
            ("occurred_at".to_string(), json!(self.occurred_at())),
            ("source".to_string(), json!(self.source)),
            ("signal".to_string(), json!(self.signal)),
            ("risk".to_string(), json!(self.risk)),
        ];
        f.extend(self.extra.iter().cloned());
        f
    }

    /// The event as compact JSON bytes.
    pub fn bytes(&self) -> Vec<u8> {
        write_object(&self.fields()).into_bytes()
    }
}

/// Shorthand for `Ev::new(..).bytes()`.
pub fn event(event_id: &str, account_id: &str, t_ms: i64, source: &str, signal: &str, risk: f64) -> Vec<u8> {
    Ev::new(event_id, account_id, t_ms, source, signal, risk).bytes()
}

/// Writes pairs as a JSON object, keeping order and duplicates.
pub fn write_object(fields: &[(String, Value)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&Value::String(k.clone()).to_string());
        s.push(':');
        s.push_str(&v.to_string());
    }
    s.push('}');
    s
}

/// A JSON string literal with every character written as a `\uXXXX` escape (same decoded value).
pub fn escaped_string(s: &str) -> String {
    let mut out = String::from("\"");
    for unit in s.encode_utf16() {
        out.push_str(&format!("\\u{unit:04x}"));
    }
    out.push('"');
    out
}

/// RFC 3339 with a `+hh:mm` offset for the same instant.
pub fn rfc3339_with_offset(t_ms: i64, offset_minutes: i32) -> String {
    let off = chrono::FixedOffset::east_opt(offset_minutes * 60).expect("offset in range");
    let t = chrono::DateTime::from_timestamp_millis(t_ms).expect("timestamp in range").with_timezone(&off);
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

/// `attributes` nested `depth` levels deep (the object itself is level 1).
pub fn nested_attributes(depth: usize) -> String {
    let depth = depth.max(1);
    format!("{{\"a\":{}1{}}}", "[".repeat(depth - 1), "]".repeat(depth - 1))
}

// ---------------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------------

/// What the contract promises for an input.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// A valid event: decoded, never rejected.
    Valid,
    /// Rejected with one of these reasons (empty: any reason).
    Rejected(Vec<RejectReason>),
}

impl Expect {
    fn one(r: RejectReason) -> Expect {
        Expect::Rejected(vec![r])
    }

    /// Whether `outcome` keeps this promise (for `Valid`: anything but `Rejected`).
    pub fn admits(&self, outcome: &Outcome) -> bool {
        match (self, outcome) {
            (Expect::Valid, Outcome::Rejected(_)) => false,
            (Expect::Valid, _) => true,
            (Expect::Rejected(rs), Outcome::Rejected(r)) => rs.is_empty() || rs.contains(&r.reason),
            (Expect::Rejected(_), _) => false,
        }
    }
}

pub const REQUIRED: [&str; 6] = ["event_id", "account_id", "occurred_at", "source", "signal", "risk"];
/// Required string fields with their (min, max) length in characters.
pub const STRING_FIELDS: [(&str, usize); 5] =
    [("event_id", 128), ("account_id", 256), ("occurred_at", 64), ("source", 64), ("signal", 64)];
/// Optional string fields with their max length in characters.
pub const OPTIONAL_STRINGS: [(&str, usize); 4] = [("ip", 64), ("country", 8), ("device_id", 256), ("user_agent", 1024)];

/// Timestamps that are not RFC 3339.
pub const BAD_TIMESTAMPS: [&str; 9] = [
    "yesterday",
    "2026-13-01T00:00:00Z",
    "2026-05-28T20:26:40",
    "2026-05-28",
    "20:26:40Z",
    "2026-02-30T00:00:00Z",
    "1780000000",
    "2026-05-28T25:00:00Z",
    "2026-05-28T20:26:40.123+0200",
];

/// Timestamps that are valid RFC 3339 but far in the past (the Go zero time among them).
pub const ANCIENT_TIMESTAMPS: [&str; 5] = [
    "0001-01-01T00:00:00Z",
    "1400-01-01T00:00:00Z",
    "1900-01-01T00:00:00Z",
    "1969-12-31T23:59:59.999Z",
    "1970-01-01T00:00:00Z",
];

/// A way to damage, or harmlessly re-encode, a valid event.
#[derive(Debug, Clone)]
pub enum Mutation {
    // --- harmless ---
    /// Strings written with `\u` escapes.
    Escaped,
    /// Fields in reverse order with whitespace around tokens.
    Reordered,
    /// Optional fields present as `null`.
    NullOptionals,
    /// Optional fields present with valid values (attributes nested `depth` ≤ 8).
    Optionals {
        depth: usize,
    },
    /// `occurred_at` with a `+hh:mm` offset (same instant).
    OffsetTimestamp(i32),
    /// `risk` written as the integer 0 or 1.
    IntegerRisk(bool),
    /// Explicit `"schema_version": 1`.
    SchemaVersion1,
    /// A valid RFC 3339 time long ago (index into [`ANCIENT_TIMESTAMPS`]).
    Ancient(usize),
    /// Longest allowed non-ASCII account id (256 characters, 512 bytes).
    LongUnicodeAccount,
    // --- invalid ---
    RemoveField(usize),
    WrongType {
        field: usize,
        value: usize,
    },
    RiskOutOfRange(f64),
    RiskOverflow,
    BadTimestamp(usize),
    /// `occurred_at` this many ms beyond the wall clock plus the allowed skew (≥ 1).
    Future(i64),
    UnknownSignal(usize),
    UnknownField,
    DuplicateField(usize),
    ControlChars {
        field: usize,
        ch: char,
    },
    TooLong {
        field: usize,
        unicode: bool,
    },
    OptionalTooLong(usize),
    Empty(usize),
    SchemaVersion(u32),
    Oversize(usize),
    AttributesTooLarge,
    DeepAttributes(usize),
    AttributesNotObject(usize),
    DeepMessage(usize),
    NonUtf8 {
        at: usize,
        byte: u8,
    },
    Truncate(usize),
    NotAnObject(usize),
    /// The required fields as a JSON array in field order (the contract asks for an object).
    ArrayInFieldOrder,
}

/// The input a mutation produces: bytes, the promise, and the event id and time it carries if it
/// decodes (so a test can model dedupe and watermarks).
#[derive(Debug, Clone)]
pub struct Mutated {
    pub bytes: Vec<u8>,
    pub expect: Expect,
    pub event_id: String,
    pub t_ms: Option<i64>,
}

const WRONG_VALUES: [&str; 5] = ["123", "null", "true", "[\"x\"]", "{\"a\":1}"];

impl Mutation {
    /// Applies the mutation to `ev`. `wall_ms` is the wall clock the input will be processed at.
    pub fn apply(&self, ev: &Ev, wall_ms: i64) -> Mutated {
        use RejectReason as R;
        let valid = |bytes: Vec<u8>, t_ms: i64| Mutated {
            bytes,
            expect: Expect::Valid,
            event_id: ev.event_id.clone(),
            t_ms: Some(t_ms),
        };
        let bad = |bytes: Vec<u8>, expect: Expect| Mutated { bytes, expect, event_id: ev.event_id.clone(), t_ms: None };
        let replace = |key: &str, raw: &str| -> Vec<u8> {
            let mut s = String::from("{");
            for (i, (k, v)) in ev.fields().iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&Value::String(k.clone()).to_string());
                s.push(':');
                if k == key {
                    s.push_str(raw);
                } else {
                    s.push_str(&v.to_string());
                }
            }
            s.push('}');
            s.into_bytes()
        };
        let set = |key: &str, v: Value| -> Vec<u8> {
            let mut f = ev.fields();
            match f.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = v,
                None => f.push((key.to_string(), v)),
            }
            write_object(&f).into_bytes()
        };
        match *self {
            Mutation::Escaped => {
                let mut s = String::from("{");
                for (i, (k, v)) in ev.fields().iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    s.push_str(&escaped_string(k));
                    s.push(':');
                    match v {
                        Value::String(x) => s.push_str(&escaped_string(x)),
                        other => s.push_str(&other.to_string()),
                    }
                }
                s.push('}');
                valid(s.into_bytes(), ev.t_ms)
            }
            Mutation::Reordered => {
                let mut f = ev.fields();
                f.reverse();
                let body: Vec<String> =
                    f.iter().map(|(k, v)| format!("\n\t{} :  {}", Value::String(k.clone()), v)).collect();
                valid(format!("  {{{}\r\n}}\n", body.join(" ,")).into_bytes(), ev.t_ms)
            }
            Mutation::NullOptionals => {
                let mut e = ev.clone();
                for k in ["ip", "country", "device_id", "user_agent", "attributes", "schema_version"] {
                    e = e.with(k, Value::Null);
                }
                valid(e.bytes(), ev.t_ms)
            }
            Mutation::Optionals { depth } => {
                let attrs: Value = serde_json::from_str(&nested_attributes(depth.clamp(1, 8))).expect("valid json");
                let e = ev
                    .clone()
                    .with("ip", json!("2001:db8::1"))
                    .with("country", json!("PL"))
                    .with("device_id", json!("dev-ä-1"))
                    .with("user_agent", json!("Mozilla/5.0 (X11; Linux x86_64)"))
                    .with("attributes", attrs);
                valid(e.bytes(), ev.t_ms)
            }
            Mutation::OffsetTimestamp(min) => {
                valid(replace("occurred_at", &json!(rfc3339_with_offset(ev.t_ms, min)).to_string()), ev.t_ms)
            }
            Mutation::IntegerRisk(one) => {
                let mut e = ev.clone();
                e.risk = if one { 1.0 } else { 0.0 };
                let raw = if one { "1" } else { "0" };
                Mutated {
                    bytes: replace_or_add(&e, "risk", raw),
                    expect: Expect::Valid,
                    event_id: e.event_id,
                    t_ms: Some(e.t_ms),
                }
            }
            Mutation::SchemaVersion1 => valid(set("schema_version", json!(1)), ev.t_ms),
            Mutation::Ancient(i) => {
                let ts = ANCIENT_TIMESTAMPS[i % ANCIENT_TIMESTAMPS.len()];
                let t = chrono::DateTime::parse_from_rfc3339(ts).expect("valid").timestamp_millis();
                if t < 0 {
                    // The contract rejects event times before 1970 (unset clocks, Go's zero time).
                    bad(set("occurred_at", json!(ts)), Expect::Rejected(vec![RejectReason::InvalidTimestamp]))
                } else {
                    valid(set("occurred_at", json!(ts)), t)
                }
            }
            Mutation::LongUnicodeAccount => {
                let mut e = ev.clone();
                e.account_id = "é".repeat(256);
                Mutated { bytes: e.bytes(), expect: Expect::Valid, event_id: e.event_id, t_ms: Some(e.t_ms) }
            }
            Mutation::RemoveField(i) => {
                let key = REQUIRED[i % REQUIRED.len()];
                let f: Vec<_> = ev.fields().into_iter().filter(|(k, _)| k != key).collect();
                bad(write_object(&f).into_bytes(), Expect::one(R::MissingField))
            }
            Mutation::WrongType { field, value } => {
                // Fields whose type is fixed: a string field, the risk, or an optional field.
                let fields =
                    ["event_id", "account_id", "occurred_at", "source", "signal", "risk", "ip", "schema_version"];
                let key = fields[field % fields.len()];
                let mut raw = WRONG_VALUES[value % WRONG_VALUES.len()];
                // `null` is a valid value of an optional field; `123` is a valid risk-like number
                // for `schema_version` (then: unsupported) and out of range for `risk`.
                if matches!(key, "ip" | "schema_version") && raw == "null" {
                    raw = "true";
                }
                if matches!(key, "risk" | "schema_version") && raw == "123" {
                    raw = "\"0.5\"";
                }
                bad(replace_or_add(ev, key, raw), Expect::one(R::InvalidType))
            }
            Mutation::RiskOutOfRange(r) => bad(replace("risk", &json!(r).to_string()), Expect::one(R::RiskOutOfRange)),
            Mutation::RiskOverflow => bad(replace("risk", "1e400"), Expect::Rejected(vec![])),
            Mutation::BadTimestamp(i) => {
                let ts = BAD_TIMESTAMPS[i % BAD_TIMESTAMPS.len()];
                bad(set("occurred_at", json!(ts)), Expect::one(R::InvalidTimestamp))
            }
            Mutation::Future(beyond) => {
                let t = wall_ms + 5 * MINUTE + beyond.max(1);
                bad(set("occurred_at", json!(format_rfc3339_ms(t))), Expect::one(R::FutureTimestamp))
            }
            Mutation::UnknownSignal(i) => {
                let s = ["telepathy", "Failed_Login", "failed_login ", "breached-password"][i % 4];
                bad(set("signal", json!(s)), Expect::one(R::UnknownSignal))
            }
            Mutation::UnknownField => bad(set("ipv9", json!("192.0.2.1")), Expect::one(R::UnknownField)),
            Mutation::DuplicateField(i) => {
                let key = REQUIRED[i % REQUIRED.len()];
                let mut f = ev.fields();
                let v = f.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap_or(Value::Null);
                f.push((key.to_string(), v));
                bad(write_object(&f).into_bytes(), Expect::one(R::DuplicateField))
            }
            Mutation::ControlChars { field, ch } => {
                let (key, _) = STRING_FIELDS[field % STRING_FIELDS.len()];
                let cur =
                    ev.fields().into_iter().find(|(k, _)| k == key).and_then(|(_, v)| v.as_str().map(str::to_string));
                let cur = cur.unwrap_or_default();
                let mid = cur.char_indices().nth(cur.chars().count() / 2).map_or(cur.len(), |(i, _)| i);
                let v = format!("{}{}{}", &cur[..mid], ch, &cur[mid..]);
                bad(set(key, json!(v)), Expect::one(R::ControlCharacters))
            }
            Mutation::TooLong { field, unicode } => {
                let (key, max) = STRING_FIELDS[field % STRING_FIELDS.len()];
                let v = if unicode { "ż".repeat(max + 1) } else { "x".repeat(max + 1) };
                bad(set(key, json!(v)), Expect::one(R::FieldLength))
            }
            Mutation::OptionalTooLong(i) => {
                let (key, max) = OPTIONAL_STRINGS[i % OPTIONAL_STRINGS.len()];
                bad(set(key, json!("y".repeat(max + 1))), Expect::one(R::FieldLength))
            }
            Mutation::Empty(i) => {
                let (key, _) = STRING_FIELDS[i % STRING_FIELDS.len()];
                bad(set(key, json!("")), Expect::one(R::FieldLength))
            }
            Mutation::SchemaVersion(v) => {
                let v = if v == 1 { 2 } else { v };
                bad(set("schema_version", json!(v)), Expect::one(R::UnsupportedSchemaVersion))
            }
            Mutation::Oversize(extra) => {
                let pad = "p".repeat(16 * 1024 + extra);
                bad(set("user_agent", json!(pad)), Expect::one(R::Oversize))
            }
            Mutation::AttributesTooLarge => {
                bad(set("attributes", json!({ "blob": "b".repeat(5000) })), Expect::one(R::AttributesTooLarge))
            }
            Mutation::DeepAttributes(depth) => {
                let depth = depth.max(9);
                let expect = if nested_attributes(depth).len() > 4096 {
                    Expect::Rejected(vec![R::AttributesTooLarge, R::TooDeep, R::AttributesTooDeep])
                } else {
                    Expect::Rejected(vec![R::TooDeep, R::AttributesTooDeep])
                };
                bad(replace_or_add(ev, "attributes", &nested_attributes(depth)), expect)
            }
            Mutation::AttributesNotObject(i) => {
                let raw = ["[1]", "\"x\"", "5", "true"][i % 4];
                bad(replace_or_add(ev, "attributes", raw), Expect::one(R::InvalidType))
            }
            Mutation::DeepMessage(depth) => {
                let depth = depth.max(1);
                bad(format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes(), Expect::Rejected(vec![]))
            }
            Mutation::NonUtf8 { at, byte } => {
                let mut b = ev.bytes();
                let byte = [0xff, 0xfe, 0xc0, 0xc1, 0xf5][usize::from(byte) % 5];
                let at = at % (b.len() + 1);
                b.insert(at, byte);
                let expect = if b.len() > 16 * 1024 { vec![R::Oversize, R::NotUtf8] } else { vec![R::NotUtf8] };
                bad(b, Expect::Rejected(expect))
            }
            Mutation::Truncate(at) => {
                let mut b = ev.bytes();
                let at = 1 + at % (b.len() - 1);
                b.truncate(at);
                bad(b, Expect::Rejected(vec![]))
            }
            Mutation::NotAnObject(i) => {
                let raw = ["\"event\"", "42", "null", "true", "[1,2]", "[]"][i % 6];
                bad(raw.as_bytes().to_vec(), Expect::one(R::NotAnObject))
            }
            Mutation::ArrayInFieldOrder => {
                let arr = json!([ev.event_id, ev.account_id, ev.occurred_at(), ev.source, ev.signal, ev.risk]);
                bad(arr.to_string().into_bytes(), Expect::one(R::NotAnObject))
            }
        }
    }
}

/// The event with field `key` written as the raw JSON text `raw` (added at the end if absent).
pub fn replace_or_add(ev: &Ev, key: &str, raw: &str) -> Vec<u8> {
    let mut parts: Vec<String> = Vec::new();
    let mut found = false;
    for (k, v) in ev.fields() {
        let val = if k == key {
            found = true;
            raw.to_string()
        } else {
            v.to_string()
        };
        parts.push(format!("{}:{}", Value::String(k), val));
    }
    if !found {
        parts.push(format!("{}:{}", Value::String(key.to_string()), raw));
    }
    format!("{{{}}}", parts.join(",")).into_bytes()
}

/// Any mutation, harmless or not.
pub fn arb_mutation() -> impl Strategy<Value = Mutation> {
    let harmless = prop_oneof![
        Just(Mutation::Escaped),
        Just(Mutation::Reordered),
        Just(Mutation::NullOptionals),
        (1usize..=8).prop_map(|depth| Mutation::Optionals { depth }),
        (-14 * 60..=14 * 60i32).prop_map(Mutation::OffsetTimestamp),
        any::<bool>().prop_map(Mutation::IntegerRisk),
        Just(Mutation::SchemaVersion1),
        (0..ANCIENT_TIMESTAMPS.len()).prop_map(Mutation::Ancient),
        Just(Mutation::LongUnicodeAccount),
    ];
    let invalid_fields = prop_oneof![
        (0..REQUIRED.len()).prop_map(Mutation::RemoveField),
        (0usize..8, 0..WRONG_VALUES.len()).prop_map(|(field, value)| Mutation::WrongType { field, value }),
        prop_oneof![-1e12..-1e-9f64, 1.000_000_1..1e300f64, Just(-0.001), Just(1.0001), Just(2.0)]
            .prop_map(Mutation::RiskOutOfRange),
        Just(Mutation::RiskOverflow),
        (0..BAD_TIMESTAMPS.len()).prop_map(Mutation::BadTimestamp),
        (1i64..=86_400_000 * 365).prop_map(Mutation::Future),
        (0usize..4).prop_map(Mutation::UnknownSignal),
        Just(Mutation::UnknownField),
        (0..REQUIRED.len()).prop_map(Mutation::DuplicateField),
        (0..STRING_FIELDS.len(), prop::sample::select(vec!['\u{1}', '\n', '\t', '\u{7f}', '\u{0}']))
            .prop_map(|(field, ch)| Mutation::ControlChars { field, ch }),
        (0..STRING_FIELDS.len(), any::<bool>()).prop_map(|(field, unicode)| Mutation::TooLong { field, unicode }),
        (0..OPTIONAL_STRINGS.len()).prop_map(Mutation::OptionalTooLong),
        (0..STRING_FIELDS.len()).prop_map(Mutation::Empty),
        prop_oneof![Just(0u32), 2u32..1000, Just(u32::MAX)].prop_map(Mutation::SchemaVersion),
    ];
    let invalid_shape = prop_oneof![
        (0usize..40_000).prop_map(Mutation::Oversize),
        Just(Mutation::AttributesTooLarge),
        prop_oneof![9usize..40, 100usize..200, 1000usize..3000].prop_map(Mutation::DeepAttributes),
        (0usize..4).prop_map(Mutation::AttributesNotObject),
        prop_oneof![1usize..10, 120usize..140, 5000usize..9000].prop_map(Mutation::DeepMessage),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::NonUtf8 { at, byte }),
        any::<usize>().prop_map(Mutation::Truncate),
        (0usize..6).prop_map(Mutation::NotAnObject),
        Just(Mutation::ArrayInFieldOrder),
    ];
    prop_oneof![3 => harmless, 4 => invalid_fields, 3 => invalid_shape]
}

/// Account ids: a small pool so windows fill up, with non-ASCII ones.
pub fn account_name(i: usize) -> String {
    match i % 5 {
        0 => format!("acct-{i}"),
        1 => format!("user{i}@example.com"),
        2 => format!("użytkownik-{i}"),
        3 => format!("账户-{i}"),
        _ => format!("{i}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic randomness for scenarios
// ---------------------------------------------------------------------------------------------

/// SplitMix64: tiny, deterministic, good enough for traffic generators.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..hi` (i64).
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo).max(1) as u64) as i64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------------------------
// Counting outcomes
// ---------------------------------------------------------------------------------------------

/// Outcomes counted by kind (count the inputs separately and compare with [`Tally::total`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub by_kind: BTreeMap<OutcomeKind, u64>,
}

impl Tally {
    pub fn add(&mut self, o: &Outcome) {
        *self.by_kind.entry(o.kind()).or_default() += 1;
    }

    pub fn get(&self, k: OutcomeKind) -> u64 {
        self.by_kind.get(&k).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }

    pub fn summary(&self) -> String {
        self.by_kind.iter().map(|(k, v)| format!("{}={v}", k.as_str())).collect::<Vec<_>>().join(" ")
    }
}
