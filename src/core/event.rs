//! The input contract (login-risk event, schema v1): decoding and validation of one message into a
//! borrowed [`Event`], or a machine-readable [`Rejection`]. Pure.
//!
//! The JSON Schema of the contract is `schemas/login-risk-event.v1.schema.json`; the rules here and
//! there must agree (a test validates both against the same cases).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::policy::Policy;

/// Why an input event was rejected. Closed set: used as a metric label and a DLQ header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    NotUtf8,
    Oversize,
    MalformedJson,
    NotAnObject,
    MissingField,
    UnknownField,
    DuplicateField,
    InvalidType,
    TooDeep,
    FieldLength,
    ControlCharacters,
    RiskOutOfRange,
    InvalidTimestamp,
    FutureTimestamp,
    UnknownSignal,
    UnsupportedSchemaVersion,
    AttributesTooLarge,
    AttributesTooDeep,
}

impl RejectReason {
    pub const ALL: [RejectReason; 18] = [
        RejectReason::NotUtf8,
        RejectReason::Oversize,
        RejectReason::MalformedJson,
        RejectReason::NotAnObject,
        RejectReason::MissingField,
        RejectReason::UnknownField,
        RejectReason::DuplicateField,
        RejectReason::InvalidType,
        RejectReason::TooDeep,
        RejectReason::FieldLength,
        RejectReason::ControlCharacters,
        RejectReason::RiskOutOfRange,
        RejectReason::InvalidTimestamp,
        RejectReason::FutureTimestamp,
        RejectReason::UnknownSignal,
        RejectReason::UnsupportedSchemaVersion,
        RejectReason::AttributesTooLarge,
        RejectReason::AttributesTooDeep,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::NotUtf8 => "not_utf8",
            RejectReason::Oversize => "oversize",
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::MissingField => "missing_field",
            RejectReason::UnknownField => "unknown_field",
            RejectReason::DuplicateField => "duplicate_field",
            RejectReason::InvalidType => "invalid_type",
            RejectReason::TooDeep => "too_deep",
            RejectReason::FieldLength => "field_length",
            RejectReason::ControlCharacters => "control_characters",
            RejectReason::RiskOutOfRange => "risk_out_of_range",
            RejectReason::InvalidTimestamp => "invalid_timestamp",
            RejectReason::FutureTimestamp => "future_timestamp",
            RejectReason::UnknownSignal => "unknown_signal",
            RejectReason::UnsupportedSchemaVersion => "unsupported_schema_version",
            RejectReason::AttributesTooLarge => "attributes_too_large",
            RejectReason::AttributesTooDeep => "attributes_too_deep",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected input: the reason code and a short detail naming the field or position. The detail
/// never echoes input values (they may be personal data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection { reason, detail: detail.into() }
    }
}

/// Field length bounds of schema v1 (characters are counted as Unicode scalar values).
pub mod bounds {
    pub const EVENT_ID: (usize, usize) = (1, 128);
    pub const ACCOUNT_ID: (usize, usize) = (1, 256);
    pub const SOURCE: (usize, usize) = (1, 64);
    pub const SIGNAL: (usize, usize) = (1, 64);
    pub const OCCURRED_AT: (usize, usize) = (1, 64);
    pub const IP: usize = 64;
    pub const COUNTRY: usize = 8;
    pub const DEVICE_ID: usize = 256;
    pub const USER_AGENT: usize = 1024;
}

/// Schema v1 as it appears on the wire. Strings borrow from the message unless they hold escapes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    account_id: Cow<'a, str>,
    #[serde(borrow)]
    occurred_at: Cow<'a, str>,
    #[serde(borrow)]
    source: Cow<'a, str>,
    #[serde(borrow)]
    signal: Cow<'a, str>,
    risk: f64,
    #[serde(borrow, default)]
    ip: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    country: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    device_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user_agent: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    attributes: Option<&'a RawValue>,
    #[serde(default)]
    schema_version: Option<u32>,
}

/// The fields of one message after JSON parsing, before validation: what both parsers produce.
struct Fields<'a> {
    event_id: Cow<'a, str>,
    account_id: Cow<'a, str>,
    occurred_at: Cow<'a, str>,
    source: Cow<'a, str>,
    signal: Cow<'a, str>,
    risk: f64,
    ip: Option<Cow<'a, str>>,
    country: Option<Cow<'a, str>>,
    device_id: Option<Cow<'a, str>>,
    user_agent: Option<Cow<'a, str>>,
    /// The raw JSON text of the value (no surrounding whitespace); `None` when absent or `null`.
    attributes: Option<&'a str>,
    schema_version: Option<u32>,
}

impl<'a> From<Wire<'a>> for Fields<'a> {
    fn from(w: Wire<'a>) -> Self {
        Fields {
            event_id: w.event_id,
            account_id: w.account_id,
            occurred_at: w.occurred_at,
            source: w.source,
            signal: w.signal,
            risk: w.risk,
            ip: w.ip,
            country: w.country,
            device_id: w.device_id,
            user_agent: w.user_agent,
            attributes: w.attributes.map(RawValue::get),
            schema_version: w.schema_version,
        }
    }
}

/// A valid login-risk event, borrowing from the message bytes.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub event_id: Cow<'a, str>,
    pub account_id: Cow<'a, str>,
    pub occurred_at_ms: i64,
    pub source: Cow<'a, str>,
    pub signal: u8,
    pub risk: f32,
}

/// Decodes and validates one message. `now_ms` is the wall clock used for the future-timestamp check.
///
/// Valid messages of the common shape take a single-pass scanner (`fast::parse`); everything else
/// (escapes it does not handle, unknown or duplicate fields, wrong types, malformed JSON, and every
/// message that fails validation) goes through [`decode_reference`], the serde_json path, which
/// alone decides rejections and their details. The result is the same either way: the scanner only
/// accepts inputs that serde_json accepts, producing the same fields (`tests/decode_equivalence.rs`).
pub fn decode<'a>(bytes: &'a [u8], policy: &Policy, now_ms: i64) -> Result<Event<'a>, Rejection> {
    match decode_fast(bytes, policy, now_ms) {
        Some(event) => Ok(event),
        None => decode_reference(bytes, policy, now_ms),
    }
}

/// The fast path of [`decode`] alone: `Some` only for a valid event that the single-pass scanner
/// handled completely, `None` when [`decode`] falls back to [`decode_reference`]. Exposed for the
/// differential tests.
#[doc(hidden)]
pub fn decode_fast<'a>(bytes: &'a [u8], policy: &Policy, now_ms: i64) -> Option<Event<'a>> {
    if bytes.len() > policy.max_message_bytes {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?;
    validate(&mut fast::parse(text)?, policy, now_ms).ok()
}

/// The reference decoder: serde_json into `Wire`, then validation. [`decode`] gives the same
/// result for every input (its fast path is checked against this one by the differential tests)
/// and uses it for everything but the common valid shape. Exposed for those tests.
#[doc(hidden)]
pub fn decode_reference<'a>(bytes: &'a [u8], policy: &Policy, now_ms: i64) -> Result<Event<'a>, Rejection> {
    if bytes.len() > policy.max_message_bytes {
        return Err(Rejection::new(
            RejectReason::Oversize,
            format!("message is {} bytes, limit {}", bytes.len(), policy.max_message_bytes),
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| Rejection::new(RejectReason::NotUtf8, format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
    // serde would fill the struct from an array in field order; the contract is an object.
    if text.trim_start().as_bytes().first() != Some(&b'{') {
        let reason = if text.trim().is_empty() { RejectReason::MalformedJson } else { RejectReason::NotAnObject };
        return Err(Rejection::new(reason, "the message must be a JSON object"));
    }
    let wire: Wire<'a> = serde_json::from_str(text).map_err(|e| classify_json_error(&e, text))?;
    validate(&mut Fields::from(wire), policy, now_ms)
}

/// The contract's rules beyond JSON types: lengths, control characters, ranges, time, signal. On
/// success the event takes its strings out of `wire` (by reference: `Fields` is ~250 bytes, and
/// moving it in by value cost a copy per event).
fn validate<'a>(wire: &mut Fields<'a>, policy: &Policy, now_ms: i64) -> Result<Event<'a>, Rejection> {
    check_str("event_id", &wire.event_id, bounds::EVENT_ID)?;
    check_str("account_id", &wire.account_id, bounds::ACCOUNT_ID)?;
    check_str("source", &wire.source, bounds::SOURCE)?;
    check_str("signal", &wire.signal, bounds::SIGNAL)?;
    check_str("occurred_at", &wire.occurred_at, bounds::OCCURRED_AT)?;
    check_opt("ip", wire.ip.as_deref(), bounds::IP)?;
    check_opt("country", wire.country.as_deref(), bounds::COUNTRY)?;
    check_opt("device_id", wire.device_id.as_deref(), bounds::DEVICE_ID)?;
    check_opt("user_agent", wire.user_agent.as_deref(), bounds::USER_AGENT)?;

    match wire.schema_version {
        None | Some(1) => {}
        Some(v) => {
            return Err(Rejection::new(
                RejectReason::UnsupportedSchemaVersion,
                format!("schema_version {v} is not supported (supported: 1)"),
            ))
        }
    }
    if !(wire.risk.is_finite() && (0.0..=1.0).contains(&wire.risk)) {
        return Err(Rejection::new(RejectReason::RiskOutOfRange, "risk must be between 0.0 and 1.0"));
    }
    if let Some(attrs) = wire.attributes {
        check_attributes(attrs, policy)?;
    }
    let occurred_at_ms = parse_rfc3339_ms(&wire.occurred_at)
        .ok_or_else(|| Rejection::new(RejectReason::InvalidTimestamp, "occurred_at must be an RFC 3339 timestamp"))?;
    if occurred_at_ms < 0 {
        return Err(Rejection::new(RejectReason::InvalidTimestamp, "occurred_at must not be before 1970"));
    }
    let skew = policy.max_future_skew.as_millis() as i64;
    if occurred_at_ms > now_ms.saturating_add(skew) {
        return Err(Rejection::new(
            RejectReason::FutureTimestamp,
            format!("occurred_at is more than {} s in the future", skew / 1000),
        ));
    }
    let signal = signal_index(policy, &wire.signal)
        .ok_or_else(|| Rejection::new(RejectReason::UnknownSignal, "signal is not defined in the policy"))?;

    Ok(Event {
        event_id: std::mem::take(&mut wire.event_id),
        account_id: std::mem::take(&mut wire.account_id),
        occurred_at_ms,
        source: std::mem::take(&mut wire.source),
        signal,
        risk: wire.risk as f32,
    })
}

/// [`Policy::signal_index`] by a linear scan that compares lengths before bytes: the same index for
/// a policy built by `Policy::from_toml` (names sorted and unique), without the three or so
/// `memcmp` calls of the binary search (which were ~13% of the fast decode path).
fn signal_index(policy: &Policy, name: &str) -> Option<u8> {
    let i = policy.signals.iter().position(|s| s.name.len() == name.len() && s.name.as_bytes() == name.as_bytes())?;
    u8::try_from(i).ok()
}

/// Parses an RFC 3339 timestamp into milliseconds since the Unix epoch.
///
/// chrono's `DateTime::parse_from_rfc3339` defines the result; the common shape
/// (`YYYY-MM-DDTHH:MM:SS[.f]Z` or `±HH:MM`, year from 1900, 1 to 9 fraction digits, no leap second)
/// is parsed by hand first, with the same result (`tests/decode_equivalence.rs` checks both
/// against each other).
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    rfc3339_common_ms(s.as_bytes())
        .or_else(|| chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis()))
}

/// The common shape of RFC 3339 timestamps; `None` for anything else (valid or not), left to chrono.
fn rfc3339_common_ms(b: &[u8]) -> Option<i64> {
    // `YYYY-MM-DDTHH:MM:SS`: fixed positions, checked as one array (no bounds checks).
    let head: &[u8; 19] = b.get(..19)?.try_into().ok()?;
    let mut digits_ok = true;
    for (i, &c) in head.iter().enumerate() {
        digits_ok &= match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            _ => c.is_ascii_digit(),
        };
    }
    if !digits_ok {
        return None;
    }
    let n2 = |i: usize| i64::from(head[i].wrapping_sub(b'0')) * 10 + i64::from(head[i + 1].wrapping_sub(b'0'));
    let year = n2(0) * 100 + n2(2);
    let (month, day) = (n2(5), n2(8));
    let (hour, minute, second) = (n2(11), n2(14), n2(17));
    let d = |i: usize| -> Option<i64> {
        match b.get(i) {
            Some(c @ b'0'..=b'9') => Some(i64::from(c - b'0')),
            _ => None,
        }
    };
    let two = |i: usize| Some(d(i)? * 10 + d(i + 1)?);
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if year < 1900 || day < 1 || day > month_days || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Fraction: 1 to 9 digits; the first three are the milliseconds.
    let mut i = 19;
    let mut millis = 0;
    if at(i, b'.') {
        i += 1;
        let start = i;
        while let Some(v) = d(i) {
            if i - start < 3 {
                millis = millis * 10 + v;
            }
            i += 1;
        }
        let n = i - start;
        if !(1..=9).contains(&n) {
            return None;
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_s = match b.get(i)? {
        b'Z' => {
            i += 1;
            0
        }
        sign @ (b'+' | b'-') => {
            let (oh, om) = (two(i + 1)?, two(i + 4)?);
            if !at(i + 3, b':') || oh > 23 || om > 59 {
                return None;
            }
            i += 6;
            let off = oh * 3600 + om * 60;
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    if i != b.len() {
        return None;
    }
    // Days since 1970-01-01 of the civil date (H. Hinnant's `days_from_civil`; year ≥ 1900 here,
    // so every quantity below stays non-negative).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Some(secs * 1000 + millis)
}

/// Formats milliseconds since the epoch as RFC 3339 UTC with millisecond precision.
pub fn format_rfc3339_ms(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => String::from("invalid"),
    }
}

fn check_str(field: &'static str, v: &str, (min, max): (usize, usize)) -> Result<(), Rejection> {
    // A char is 1 to 4 bytes, so `len / 4 <= chars <= len`: when those bounds already satisfy
    // `min..=max` (the common case) the chars need not be counted.
    let in_bounds = if v.len() <= max && v.len().div_ceil(4) >= min {
        true
    } else {
        let n = v.chars().count();
        n >= min && n <= max
    };
    if !in_bounds {
        return Err(Rejection::new(RejectReason::FieldLength, format!("{field} must be {min} to {max} characters")));
    }
    if has_control(v.as_bytes()) {
        return Err(Rejection::new(RejectReason::ControlCharacters, format!("{field} contains control characters")));
    }
    Ok(())
}

/// Whether `v` holds a byte below 0x20 or DEL (0x7f): eight bytes at a time, without early exit
/// (the strings are short; this check was ~5% of `Engine::process` on cache-resident state as a
/// byte-wise `any`, and ~10% of the fast decode path as a vectorized fold with a scalar tail).
/// Strings shorter than a word go byte by byte.
///
/// Per 8-byte word, `(w - 0x20…) & !w & 0x80…` flags a byte below 0x20 and `(x - 0x01…) & !x &
/// 0x80…` with `x = w ^ 0x7f…` flags a DEL. A borrow can flag a byte that is neither, but only
/// above a byte that truly is one, so "any flag" is exact.
fn has_control(v: &[u8]) -> bool {
    const ONES: u64 = u64::MAX / 255;
    let flags = |w: u64| {
        let low = w.wrapping_sub(ONES * 0x20) & !w;
        let x = w ^ (ONES * 0x7f);
        let del = x.wrapping_sub(ONES) & !x;
        (low | del) & (ONES << 7)
    };
    let Some(last) = v.len().checked_sub(8) else {
        return v.iter().fold(false, |bad, &b| bad | (b < 0x20) | (b == 0x7f));
    };
    let word = |i: usize| {
        let mut w = [0u8; 8];
        if let Some(c) = v.get(i..i + 8) {
            w.copy_from_slice(c);
        }
        u64::from_le_bytes(w)
    };
    let mut hits = 0;
    let mut i = 0;
    while i < last {
        hits |= flags(word(i));
        i += 8;
    }
    // The last eight bytes (overlapping the previous word): no partial word to assemble.
    hits |= flags(word(last));
    hits != 0
}

fn check_opt(field: &'static str, v: Option<&str>, max: usize) -> Result<(), Rejection> {
    match v {
        // Byte length bounds the char count from above: count only strings that might be too long.
        Some(v) if v.len() > max && v.chars().count() > max => {
            Err(Rejection::new(RejectReason::FieldLength, format!("{field} must be at most {max} characters")))
        }
        _ => Ok(()),
    }
}

/// `attributes` must be an object within the size and nesting limits of the policy.
fn check_attributes(raw: &str, policy: &Policy) -> Result<(), Rejection> {
    if raw.len() > policy.max_attributes_bytes {
        return Err(Rejection::new(
            RejectReason::AttributesTooLarge,
            format!("attributes is {} bytes, limit {}", raw.len(), policy.max_attributes_bytes),
        ));
    }
    if raw == "null" {
        return Ok(());
    }
    if !raw.starts_with('{') {
        return Err(Rejection::new(RejectReason::InvalidType, "attributes must be an object"));
    }
    // The raw text is already valid JSON; count nesting outside strings.
    let (mut depth, mut max_depth, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for b in raw.bytes() {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                max_depth = max_depth.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if max_depth > policy.max_attributes_depth {
        return Err(Rejection::new(
            RejectReason::AttributesTooDeep,
            format!("attributes nests {} levels, limit {}", max_depth, policy.max_attributes_depth),
        ));
    }
    Ok(())
}

/// Maps a serde_json error to a reason, keeping field names but never input values.
fn classify_json_error(e: &serde_json::Error, text: &str) -> Rejection {
    use serde_json::error::Category;
    let at = format!("line {} column {}", e.line(), e.column());
    match e.classify() {
        Category::Io | Category::Eof => {
            Rejection::new(RejectReason::MalformedJson, format!("unexpected end of input at {at}"))
        }
        Category::Syntax => {
            let msg = e.to_string();
            if msg.starts_with("recursion limit exceeded") {
                Rejection::new(RejectReason::TooDeep, format!("nesting too deep at {at}"))
            } else {
                Rejection::new(RejectReason::MalformedJson, format!("invalid JSON at {at}"))
            }
        }
        Category::Data => {
            let msg = e.to_string();
            if msg.starts_with("missing field") {
                Rejection::new(
                    RejectReason::MissingField,
                    quoted_field(&msg).map_or(msg.clone(), |f| format!("missing field {f}")),
                )
            } else if msg.starts_with("unknown field") {
                Rejection::new(RejectReason::UnknownField, format!("unknown field at {at}"))
            } else if msg.starts_with("duplicate field") {
                Rejection::new(
                    RejectReason::DuplicateField,
                    quoted_field(&msg).map_or(at.clone(), |f| format!("duplicate field {f}")),
                )
            } else if msg.starts_with("invalid type") && text.trim_start().as_bytes().first() != Some(&b'{') {
                Rejection::new(RejectReason::NotAnObject, "the message must be a JSON object")
            } else {
                // "invalid type: string \"...\", expected f64": the message quotes the input, and
                // the input may itself contain ", expected ": name only an expectation from the
                // closed set of the contract's types.
                Rejection::new(
                    RejectReason::InvalidType,
                    format!("wrong type at {at}, expected {}", expected_type(&msg)),
                )
            }
        }
    }
}

/// What a serde_json type error expected, from the closed set of types the contract's fields have
/// (`another type` for anything else): the message also quotes the offending input, which must
/// never reach a DLQ header or a log.
fn expected_type(msg: &str) -> &'static str {
    const KNOWN: [&str; 6] = ["a string", "a borrowed string", "f64", "u32", "a map", "any valid JSON value"];
    let tail = msg.rsplit(", expected ").next().unwrap_or("");
    let tail = tail.split(" at line ").next().unwrap_or("");
    KNOWN.iter().copied().find(|k| *k == tail).unwrap_or("another type")
}

fn quoted_field(msg: &str) -> Option<String> {
    let start = msg.find('`')?;
    let end = msg[start + 1..].find('`')?;
    Some(msg[start + 1..start + 1 + end].to_string())
}

/// The single-pass scanner behind [`decode`]'s fast path.
///
/// It accepts a subset of what `serde_json::from_str::<Wire>` accepts and, on that subset, produces
/// the same [`Fields`]; on anything else it returns `None` and [`decode`] falls back to serde_json.
/// The subset: one JSON object (JSON whitespace around tokens) whose keys are the contract's field
/// names written without escapes, each at most once, with the required ones present; string values
/// with any valid escapes (`\u` surrogates only as a well-formed pair); `risk` a non-negative number
/// whose digits fit a u64, with a decimal exponent within ±22; `schema_version` an
/// integer within `u32` or `null`; optional strings may be `null`; `attributes` any JSON value
/// nested at most 64 deep. Strings without escapes borrow from the input, as with serde.
///
/// No recursion (nesting is a 64-bit stack) and no panics: every access is bounds-checked.
mod fast {
    use std::borrow::Cow;

    use super::Fields;

    /// `10^i`, exact in f64 up to 10^22, as in serde_json's table (which goes on to 10^308).
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19,
        1e20, 1e21, 1e22,
    ];
    /// Deepest nesting the `attributes` skipper tracks (the policy's limit is far below).
    const MAX_DEPTH: u32 = 64;

    // Field bits, in `seen`.
    const EVENT_ID: u16 = 1 << 0;
    const ACCOUNT_ID: u16 = 1 << 1;
    const OCCURRED_AT: u16 = 1 << 2;
    const SOURCE: u16 = 1 << 3;
    const SIGNAL: u16 = 1 << 4;
    const RISK: u16 = 1 << 5;
    const IP: u16 = 1 << 6;
    const COUNTRY: u16 = 1 << 7;
    const DEVICE_ID: u16 = 1 << 8;
    const USER_AGENT: u16 = 1 << 9;
    const ATTRIBUTES: u16 = 1 << 10;
    const SCHEMA_VERSION: u16 = 1 << 11;

    pub(super) fn parse(text: &str) -> Option<Fields<'_>> {
        let mut p = Scanner { s: text, b: text.as_bytes(), i: 0 };
        let (mut event_id, mut account_id, mut occurred_at, mut source, mut signal) = (None, None, None, None, None);
        let mut risk = None;
        let (mut ip, mut country, mut device_id, mut user_agent) = (None, None, None, None);
        let (mut attributes, mut schema_version) = (None, None);
        let mut seen = 0u16;

        p.ws();
        p.eat(b'{')?;
        p.ws();
        loop {
            p.eat(b'"')?;
            // The key, told by its first bytes and then compared whole with its closing quote (a
            // constant-size compare): no scan for the end of the key, no lookup.
            match p.peek()? {
                b'e' => {
                    p.key(b"event_id\"", EVENT_ID, &mut seen)?;
                    event_id = Some(p.string()?);
                }
                b'a' if p.b.get(p.i + 1) == Some(&b'c') => {
                    p.key(b"account_id\"", ACCOUNT_ID, &mut seen)?;
                    account_id = Some(p.string()?);
                }
                b'o' => {
                    p.key(b"occurred_at\"", OCCURRED_AT, &mut seen)?;
                    occurred_at = Some(p.string()?);
                }
                b's' => match p.b.get(p.i + 1)? {
                    b'o' => {
                        p.key(b"source\"", SOURCE, &mut seen)?;
                        source = Some(p.string()?);
                    }
                    b'i' => {
                        p.key(b"signal\"", SIGNAL, &mut seen)?;
                        signal = Some(p.string()?);
                    }
                    _ => {
                        p.key(b"schema_version\"", SCHEMA_VERSION, &mut seen)?;
                        if !p.null() {
                            schema_version = Some(p.u32()?);
                        }
                    }
                },
                b'r' => {
                    p.key(b"risk\"", RISK, &mut seen)?;
                    risk = Some(p.risk()?);
                }
                b'i' => {
                    p.key(b"ip\"", IP, &mut seen)?;
                    ip = p.opt_string()?;
                }
                b'c' => {
                    p.key(b"country\"", COUNTRY, &mut seen)?;
                    country = p.opt_string()?;
                }
                b'd' => {
                    p.key(b"device_id\"", DEVICE_ID, &mut seen)?;
                    device_id = p.opt_string()?;
                }
                b'u' => {
                    p.key(b"user_agent\"", USER_AGENT, &mut seen)?;
                    user_agent = p.opt_string()?;
                }
                _ => {
                    p.key(b"attributes\"", ATTRIBUTES, &mut seen)?;
                    if !p.null() {
                        let start = p.i;
                        p.skip_value()?;
                        attributes = Some(p.s.get(start..p.i)?);
                    }
                }
            }
            p.ws();
            match p.next()? {
                b',' => p.ws(),
                b'}' => break,
                _ => return None,
            }
        }
        p.ws();
        if p.i != p.b.len() {
            return None;
        }
        Some(Fields {
            event_id: event_id?,
            account_id: account_id?,
            occurred_at: occurred_at?,
            source: source?,
            signal: signal?,
            risk: risk?,
            ip,
            country,
            device_id,
            user_agent,
            attributes,
            schema_version,
        })
    }

    /// `risk` parsed alone (the whole of `text`), for the unit tests.
    #[cfg(test)]
    pub(super) fn risk_alone(text: &str) -> Option<f64> {
        let mut p = Scanner { s: text, b: text.as_bytes(), i: 0 };
        let r = p.risk()?;
        (p.i == text.len()).then_some(r)
    }

    struct Scanner<'a> {
        s: &'a str,
        b: &'a [u8],
        i: usize,
    }

    impl<'a> Scanner<'a> {
        fn peek(&self) -> Option<u8> {
            self.b.get(self.i).copied()
        }

        fn next(&mut self) -> Option<u8> {
            let c = self.peek()?;
            self.i += 1;
            Some(c)
        }

        fn eat(&mut self, c: u8) -> Option<()> {
            (self.next()? == c).then_some(())
        }

        fn ws(&mut self) {
            while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
                self.i += 1;
            }
        }

        /// Consumes `null` if it is next; `false` (nothing consumed) when the next byte is not `n`.
        /// Any other word starting with `n` is left for the caller's parser, which rejects it.
        fn null(&mut self) -> bool {
            if self.b.get(self.i..self.i + 4) == Some(b"null") {
                self.i += 4;
                true
            } else {
                false
            }
        }

        fn literal(&mut self, word: &[u8]) -> Option<()> {
            (self.b.get(self.i..self.i + word.len())? == word).then(|| self.i += word.len())
        }

        /// The index of the first `"`, `\` or control character at or after `i` (or the end).
        /// Eight bytes at a time (the test for a zero byte, as serde_json does); the lowest flagged
        /// byte is always a true match (false positives only occur above a true one).
        fn scan(&self, mut i: usize) -> usize {
            const ONES: u64 = u64::MAX / 255;
            while let Some(chunk) = self.b.get(i..i + 8) {
                let Ok(bytes) = <[u8; 8]>::try_from(chunk) else { break };
                let w = u64::from_le_bytes(bytes);
                let ctrl = w.wrapping_sub(ONES * 0x20) & !w;
                let q = w ^ (ONES * u64::from(b'"'));
                let quote = q.wrapping_sub(ONES) & !q;
                let bs = w ^ (ONES * u64::from(b'\\'));
                let backslash = bs.wrapping_sub(ONES) & !bs;
                let hits = (ctrl | quote | backslash) & (ONES << 7);
                if hits != 0 {
                    return i + (hits.trailing_zeros() / 8) as usize;
                }
                i += 8;
            }
            while let Some(&c) = self.b.get(i) {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                i += 1;
            }
            i
        }

        /// The key `name` (with its closing quote) if it is next, seen for the first time; then
        /// the `:` and whitespace around it.
        #[inline(always)]
        fn key<const N: usize>(&mut self, name: &[u8; N], field: u16, seen: &mut u16) -> Option<()> {
            if self.b.get(self.i..self.i + N)? != name || *seen & field != 0 {
                return None;
            }
            *seen |= field;
            self.i += N;
            self.ws();
            self.eat(b':')?;
            self.ws();
            Some(())
        }

        /// A string value (the opening quote next): borrowed when it has no escapes, like serde's.
        fn string(&mut self) -> Option<Cow<'a, str>> {
            self.eat(b'"')?;
            let start = self.i;
            let end = self.scan(start);
            match self.b.get(end)? {
                b'"' => {
                    self.i = end + 1;
                    self.s.get(start..end).map(Cow::Borrowed)
                }
                b'\\' => {
                    let mut out = String::with_capacity(end - start + 16);
                    out.push_str(self.s.get(start..end)?);
                    self.i = end;
                    self.unescape(out).map(Cow::Owned)
                }
                _ => None,
            }
        }

        /// The rest of a string with escapes, `self.i` at a backslash; appends to `out`.
        fn unescape(&mut self, mut out: String) -> Option<String> {
            loop {
                self.eat(b'\\')?;
                match self.next()? {
                    b'"' => out.push('"'),
                    b'\\' => out.push('\\'),
                    b'/' => out.push('/'),
                    b'b' => out.push('\u{8}'),
                    b'f' => out.push('\u{c}'),
                    b'n' => out.push('\n'),
                    b'r' => out.push('\r'),
                    b't' => out.push('\t'),
                    b'u' => {
                        let n = u32::from(self.hex4()?);
                        let c = match n {
                            0xD800..=0xDBFF => {
                                self.literal(b"\\u")?;
                                let low = u32::from(self.hex4()?);
                                if !(0xDC00..=0xDFFF).contains(&low) {
                                    return None;
                                }
                                0x1_0000 + ((n - 0xD800) << 10) + (low - 0xDC00)
                            }
                            0xDC00..=0xDFFF => return None,
                            _ => n,
                        };
                        out.push(char::from_u32(c)?);
                    }
                    _ => return None,
                }
                let start = self.i;
                let end = self.scan(start);
                out.push_str(self.s.get(start..end)?);
                self.i = end;
                match self.peek()? {
                    b'"' => {
                        self.i += 1;
                        return Some(out);
                    }
                    b'\\' => {}
                    _ => return None,
                }
            }
        }

        fn hex4(&mut self) -> Option<u16> {
            let h = self.b.get(self.i..self.i + 4)?;
            let mut n = 0u16;
            for &c in h {
                n = n << 4 | char::from(c).to_digit(16)? as u16;
            }
            self.i += 4;
            Some(n)
        }

        /// `null` or a string.
        fn opt_string(&mut self) -> Option<Option<Cow<'a, str>>> {
            if self.null() {
                Some(None)
            } else {
                self.string().map(Some)
            }
        }

        /// `risk`: a non-negative JSON number whose digits, read as one integer `m`, fit a u64 (past
        /// that serde_json switches algorithms), and whose decimal exponent `e` (the exponent part,
        /// at most three digits, minus the number of fraction digits) lies within ±22. The value
        /// is what serde_json 1.x (without its `float_roundtrip` feature) computes, with the same
        /// IEEE operations: `m as f64` for an integer (`visit_u64`), otherwise `(m as f64) * 10^e`
        /// or `(m as f64) / 10^-e` (`f64_from_parts`). For `m < 2^53` that is the correctly rounded
        /// value, as `str::parse::<f64>` gives; above, it can be 1 ulp off (e.g.
        /// `1.00000000000000009` gives 1.0000000000000002, out of range, where `str::parse` gives
        /// 1.0), and matching serde_json is what counts.
        fn risk(&mut self) -> Option<f64> {
            let mut m = 0u64;
            match self.peek()? {
                b'0' => self.i += 1,
                b'1'..=b'9' => {
                    self.significand(&mut m)?;
                }
                _ => return None,
            }
            let mut e: i32 = 0;
            let mut float = false;
            if self.peek() == Some(b'.') {
                self.i += 1;
                let frac = self.significand(&mut m)?;
                if frac == 0 {
                    return None;
                }
                e = -i32::try_from(frac).ok()?;
                float = true;
            }
            if let Some(b'e' | b'E') = self.peek() {
                self.i += 1;
                let negative = match self.peek() {
                    Some(b'-') => {
                        self.i += 1;
                        true
                    }
                    Some(b'+') => {
                        self.i += 1;
                        false
                    }
                    _ => false,
                };
                let start = self.i;
                let mut x: i32 = 0;
                while let Some(c @ b'0'..=b'9') = self.peek() {
                    if self.i - start == 3 {
                        return None;
                    }
                    x = x * 10 + i32::from(c - b'0');
                    self.i += 1;
                }
                if self.i == start {
                    return None;
                }
                e += if negative { -x } else { x };
                float = true;
            }
            if matches!(self.peek(), Some(b'0'..=b'9' | b'.' | b'e' | b'E')) {
                return None;
            }
            let f = m as f64;
            if !float {
                return Some(f);
            }
            let pow = *POW10.get(e.unsigned_abs() as usize)?;
            Some(if e >= 0 { f * pow } else { f / pow })
        }

        /// Appends a run of digits to the significand `m` and returns how many there were; `None`
        /// when `m` would overflow a u64.
        fn significand(&mut self, m: &mut u64) -> Option<usize> {
            let start = self.i;
            while let Some(c @ b'0'..=b'9') = self.peek() {
                *m = m.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
                self.i += 1;
            }
            Some(self.i - start)
        }

        /// A non-negative integer within u32, no fraction or exponent.
        fn u32(&mut self) -> Option<u32> {
            let mut n = 0u64;
            match self.next()? {
                b'0' => {}
                c @ b'1'..=b'9' => {
                    n = u64::from(c - b'0');
                    while let Some(c @ b'0'..=b'9') = self.peek() {
                        n = n * 10 + u64::from(c - b'0');
                        if n > u64::from(u32::MAX) {
                            return None;
                        }
                        self.i += 1;
                    }
                }
                _ => return None,
            }
            if matches!(self.peek(), Some(b'0'..=b'9' | b'.' | b'e' | b'E')) {
                return None;
            }
            u32::try_from(n).ok()
        }

        /// Skips a JSON number (RFC 8259 grammar).
        fn skip_number(&mut self) -> Option<()> {
            if self.peek() == Some(b'-') {
                self.i += 1;
            }
            match self.next()? {
                b'0' => {}
                b'1'..=b'9' => self.skip_digits(),
                _ => return None,
            }
            if self.peek() == Some(b'.') {
                self.i += 1;
                self.digits1()?;
            }
            if let Some(b'e' | b'E') = self.peek() {
                self.i += 1;
                if let Some(b'+' | b'-') = self.peek() {
                    self.i += 1;
                }
                self.digits1()?;
            }
            Some(())
        }

        fn skip_digits(&mut self) {
            while let Some(b'0'..=b'9') = self.peek() {
                self.i += 1;
            }
        }

        /// One or more digits.
        fn digits1(&mut self) -> Option<()> {
            let start = self.i;
            self.skip_digits();
            (self.i > start).then_some(())
        }

        /// Skips a string after its opening quote (escapes checked, not decoded; `\u` surrogates
        /// are not checked, as serde_json does not check them in a skipped value).
        fn skip_str(&mut self) -> Option<()> {
            loop {
                let end = self.scan(self.i);
                self.i = end + 1;
                match self.b.get(end)? {
                    b'"' => return Some(()),
                    b'\\' => match self.next()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            self.hex4()?;
                        }
                        _ => return None,
                    },
                    _ => return None,
                }
            }
        }

        /// `"key"` `:` in an object being skipped (whitespace before the key already skipped).
        fn member_key(&mut self) -> Option<()> {
            self.eat(b'"')?;
            self.skip_str()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            Some(())
        }

        /// Skips one JSON value (the next byte starts it), validating its grammar. Iterative: the
        /// enclosing containers are bits of `stack` (1 = object), innermost lowest.
        fn skip_value(&mut self) -> Option<()> {
            let mut stack = 0u64;
            let mut depth = 0u32;
            loop {
                // A value is next.
                match self.next()? {
                    open @ (b'{' | b'[') => {
                        if depth == MAX_DEPTH {
                            return None;
                        }
                        let object = open == b'{';
                        stack = stack << 1 | u64::from(object);
                        depth += 1;
                        self.ws();
                        let close = if object { b'}' } else { b']' };
                        if self.peek() == Some(close) {
                            self.i += 1;
                            stack >>= 1;
                            depth -= 1;
                        } else {
                            if object {
                                self.member_key()?;
                            }
                            continue;
                        }
                    }
                    b'"' => self.skip_str()?,
                    b't' => self.literal(b"rue")?,
                    b'f' => self.literal(b"alse")?,
                    b'n' => self.literal(b"ull")?,
                    b'-' | b'0'..=b'9' => {
                        self.i -= 1;
                        self.skip_number()?;
                    }
                    _ => return None,
                }
                // After a value: close containers until one has a next element.
                loop {
                    if depth == 0 {
                        return Some(());
                    }
                    self.ws();
                    let object = stack & 1 == 1;
                    match self.next()? {
                        b',' => {
                            self.ws();
                            if object {
                                self.member_key()?;
                            }
                            break;
                        }
                        b'}' if object => {}
                        b']' if !object => {}
                        _ => return None,
                    }
                    stack >>= 1;
                    depth -= 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::default_with_version("t")
    }
    const NOW: i64 = 1_780_000_000_000;

    fn ok_event() -> String {
        r#"{"event_id":"e1","account_id":"acct-1","occurred_at":"2026-05-28T20:26:40Z","source":"auth-service","signal":"failed_login","risk":0.5,"ip":"192.0.2.1","attributes":{"a":[1,{"b":2}]}}"#.to_string()
    }

    fn reason(s: &str) -> RejectReason {
        decode(s.as_bytes(), &policy(), NOW).unwrap_err().reason
    }

    #[test]
    fn decodes_a_valid_event() {
        let s = ok_event();
        let e = decode(s.as_bytes(), &policy(), NOW).unwrap();
        assert_eq!(e.event_id, "e1");
        assert_eq!(e.account_id, "acct-1");
        assert_eq!(e.source, "auth-service");
        assert_eq!(e.occurred_at_ms, 1_780_000_000_000);
        assert_eq!(policy().signals[e.signal as usize].name, "failed_login");
        assert!((e.risk - 0.5).abs() < 1e-6);
    }

    #[test]
    fn escaped_strings_are_accepted() {
        let s = ok_event().replace("\"acct-1\"", "\"acct\\u002d1\"");
        assert_eq!(decode(s.as_bytes(), &policy(), NOW).unwrap().account_id, "acct-1");
    }

    /// Regression: serde_json's type errors quote the input ("invalid type: string \"…\", expected
    /// f64"); a value that itself contains `", expected "` used to reach the DLQ `detail` header.
    #[test]
    fn a_type_error_detail_never_quotes_the_input() {
        let base = ok_event();
        let cases = [
            ("\"risk\":0.5", "\"risk\":\"SECRET-1, expected SECRET-2\"", "expected f64"),
            ("\"risk\":0.5", "\"risk\":{\"x, expected SECRET-3\":1}", "expected f64"),
            ("\"acct-1\"", "[\"SECRET-4, expected SECRET-5\"]", "expected a"),
            ("\"acct-1\"", "12345678901", "expected a"),
        ];
        for (from, to, expect) in cases {
            let bad = base.replace(from, to);
            let r = decode(bad.as_bytes(), &policy(), NOW).unwrap_err();
            assert_eq!(r.reason, RejectReason::InvalidType, "{bad}");
            assert!(!r.detail.contains("SECRET") && !r.detail.contains("12345678901"), "{}", r.detail);
            assert!(r.detail.contains(expect), "{}", r.detail);
        }
    }

    #[test]
    fn each_defect_has_its_reason() {
        let base = ok_event();
        assert_eq!(reason("{"), RejectReason::MalformedJson);
        assert_eq!(reason("[1,2]"), RejectReason::NotAnObject);
        assert_eq!(reason(&base.replace("\"risk\":0.5", "\"risk\":1.5")), RejectReason::RiskOutOfRange);
        assert_eq!(reason(&base.replace("\"risk\":0.5", "\"risk\":\"high\"")), RejectReason::InvalidType);
        assert_eq!(reason(&base.replace(",\"risk\":0.5", "")), RejectReason::MissingField);
        assert_eq!(reason(&base.replace("\"ip\"", "\"ipv9\"")), RejectReason::UnknownField);
        assert_eq!(reason(&base.replace("failed_login", "telepathy")), RejectReason::UnknownSignal);
        assert_eq!(reason(&base.replace("2026-05-28T20:26:40Z", "yesterday")), RejectReason::InvalidTimestamp);
        assert_eq!(
            reason(&base.replace("2026-05-28T20:26:40Z", "2099-01-01T00:00:00Z")),
            RejectReason::FutureTimestamp
        );
        assert_eq!(reason(&base.replace("\"e1\"", "\"\"")), RejectReason::FieldLength);
        assert_eq!(reason(&base.replace("\"e1\"", "\"e\\n1\"")), RejectReason::ControlCharacters);
        assert_eq!(
            reason(&base.replace("\"ip\":", "\"schema_version\":2,\"ip\":")),
            RejectReason::UnsupportedSchemaVersion
        );
        let deep = format!("{}{}{}", "[".repeat(10), "1", "]".repeat(10));
        assert_eq!(reason(&base.replace("[1,{\"b\":2}]", &deep)), RejectReason::AttributesTooDeep);
        // Nesting as deep as the size limit allows is rejected without exhausting the stack.
        let very_deep = format!("{}{}", "[".repeat(7000), "]".repeat(7000));
        let mut p = policy();
        p.max_attributes_bytes = 20_000;
        let s = base.replace("[1,{\"b\":2}]", &very_deep);
        let r = decode(s.as_bytes(), &p, NOW).unwrap_err().reason;
        assert!(matches!(r, RejectReason::TooDeep | RejectReason::AttributesTooDeep), "{r:?}");
        assert_eq!(reason(&base.replace("{\"a\":[1,{\"b\":2}]}", "[1]")), RejectReason::InvalidType);
        let big = format!("\"{}\"", "x".repeat(5000));
        assert_eq!(reason(&base.replace("[1,{\"b\":2}]", &big)), RejectReason::AttributesTooLarge);
        assert_eq!(reason(&" ".repeat(20_000)), RejectReason::Oversize);
        assert_eq!(decode(&[0xff, 0xfe], &policy(), NOW).unwrap_err().reason, RejectReason::NotUtf8);
        assert_eq!(reason(&base.replace("\"ip\":", "\"event_id\":\"x\",\"ip\":")), RejectReason::DuplicateField);
    }

    #[test]
    fn has_control_finds_exactly_the_control_bytes() {
        let naive = |v: &[u8]| v.iter().any(|&b| b < 0x20 || b == 0x7f);
        // Every byte value at every position of strings of length 0 to 20, among harmless
        // neighbours and next to bytes that provoke borrows (0x20, 0x21, 0x80, 0xff).
        for len in 0..=20usize {
            for fill in [b'a', 0x20, 0x21, 0x80, 0xff, 0x7e] {
                for pos in 0..len {
                    for b in 0..=255u8 {
                        let mut v = vec![fill; len];
                        v[pos] = b;
                        assert_eq!(has_control(&v), naive(&v), "{v:?}");
                    }
                }
            }
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            let v: Vec<u8> = (0..len).map(|i| (x.rotate_left(i as u32 * 7) as u8).wrapping_add(0x1e)).collect();
            assert_eq!(has_control(&v), naive(&v), "{v:?}");
        }
    }

    /// The fast path's `risk` is serde_json's f64 bit for bit (not only after the cast to f32 that
    /// `Event` shows), on numbers of every shape it accepts.
    #[test]
    fn risk_parses_bit_for_bit_as_serde_json() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let (mut accepted, mut total) = (0, 0);
        for _ in 0..300_000 {
            let mut s = String::new();
            let int_digits = [1, 1, 1, 2, 5, 17, 19, 20][next(8) as usize];
            for i in 0..int_digits {
                let d = if i == 0 && int_digits > 1 { 1 + next(9) } else { next(10) };
                s.push(char::from(b'0' + d as u8));
            }
            if next(4) > 0 {
                s.push('.');
                for _ in 0..[1, 2, 4, 15, 16, 17, 18, 19, 20, 23][next(10) as usize] {
                    s.push(char::from(b'0' + next(10) as u8));
                }
            }
            if next(3) == 0 {
                s.push(['e', 'E'][next(2) as usize]);
                s.push_str(["", "+", "-"][next(3) as usize]);
                s.push_str(&next(30).to_string());
            }
            total += 1;
            if let Some(v) = fast::risk_alone(&s) {
                accepted += 1;
                let reference: f64 = serde_json::from_str(&s).unwrap_or(f64::NAN);
                assert_eq!(v.to_bits(), reference.to_bits(), "{s}: fast {v:e}, serde_json {reference:e}");
            }
        }
        assert!(accepted > total / 3, "{accepted} of {total}");
        for s in ["1.00000000000000009", "1.000000000000000065", "0.36992193657909411", "3.85e-06", "1e-22", "1e22"] {
            let reference: f64 = serde_json::from_str(s).unwrap_or(f64::NAN);
            assert_eq!(fast::risk_alone(s).map(f64::to_bits), Some(reference.to_bits()), "{s}");
        }
        assert_eq!(fast::risk_alone("1.00000000000000009"), Some(1.000_000_000_000_000_2));
    }

    #[test]
    fn signal_lookup_matches_the_policy() {
        let custom = Policy::from_toml(
            "version = \"t\"\n[signals.a]\nweight = 1.0\n[signals.ab]\nweight = 1.0\n[signals.b]\nweight = 1.0\n\
             [signals.ba]\nweight = 1.0\n[signals.zz_last]\nweight = 1.0\n",
        )
        .expect("policy");
        for p in [policy(), custom] {
            let mut names: Vec<String> = p.signals.iter().map(|s| s.name.clone()).collect();
            names.extend(
                ["", "a ", "A", "failed_login ", "failed_logi", "zz", "zz_lasu", "\u{e9}\u{e9}"].map(String::from),
            );
            for n in &names {
                assert_eq!(signal_index(&p, n), p.signal_index(n), "{n:?}");
            }
        }
    }

    #[test]
    fn details_never_echo_values() {
        let s = ok_event().replace("\"risk\":0.5", "\"risk\":\"alice@example.com\"");
        let r = decode(s.as_bytes(), &policy(), NOW).unwrap_err();
        assert!(!r.detail.contains("alice"), "{}", r.detail);
    }
}
