//! Differential tests of `core::event::decode`: its single-pass fast path against the serde_json
//! reference path (`decode_reference`), which decides every rejection.
//!
//! For every input, `decode` must give exactly what `decode_reference` gives: the same `Ok` event
//! (every field, `risk` bit for bit, and borrowed vs. owned strings) or the same `Err` (reason and
//! detail). Whenever the fast path alone (`decode_fast`) accepts an input, the reference must accept
//! it with the same event. Inputs: arbitrary bytes; generated valid events with field orders,
//! whitespace, unicode and escapes varied; every mutation of `tests/common/events.rs`; byte-level
//! edits of valid events; random strings, numbers and `attributes` values built from JSON tokens;
//! and a table of edge cases. Coverage checks make sure the fast path really takes the common
//! shapes (all of the benchmark's events among them) instead of falling back.
//!
//! `parse_rfc3339_ms` (a hand-written parser for the common shape, chrono for the rest) is checked
//! against chrono's `DateTime::parse_from_rfc3339` alone in the same way.

mod common;

#[path = "../benches/common/mod.rs"]
mod bench_events;

use std::borrow::Cow;

use common::events::*;
use proptest::prelude::*;
use proptest::test_runner::Config;
use resetguard::core::event::{
    decode, decode_fast, decode_reference, format_rfc3339_ms, parse_rfc3339_ms, Event, Rejection,
};
use resetguard::core::Policy;
use serde_json::Value;

/// Wall clock: a minute after `T0`, so generated events around `T0` are mostly valid, some future.
const NOW: i64 = T0 + 60_000;

fn policy() -> Policy {
    Policy::default_with_version("equivalence")
}

/// `n` cases, or `PROPTEST_CASES` when set (for longer runs).
fn cases(n: u32) -> Config {
    let n = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(n);
    Config { cases: n, max_shrink_iters: 4000, ..Config::default() }
}

#[allow(clippy::ptr_arg)] // the variant is the point
fn cow_kind(c: &Cow<'_, str>) -> &'static str {
    match c {
        Cow::Borrowed(_) => "borrowed",
        Cow::Owned(_) => "owned",
    }
}

/// Everything observable about a decode result.
fn describe(r: &Result<Event<'_>, Rejection>) -> String {
    match r {
        Ok(e) => format!(
            "Ok(event_id {:?} {}, account_id {:?} {}, occurred_at_ms {}, source {:?} {}, signal {}, risk {} bits {:#x})",
            e.event_id,
            cow_kind(&e.event_id),
            e.account_id,
            cow_kind(&e.account_id),
            e.occurred_at_ms,
            e.source,
            cow_kind(&e.source),
            e.signal,
            e.risk,
            e.risk.to_bits()
        ),
        Err(r) => format!("Err({:?}, {:?})", r.reason, r.detail),
    }
}

/// Asserts the equivalence properties for one input.
fn check(bytes: &[u8], policy: &Policy, now: i64) -> Result<(), TestCaseError> {
    let reference = describe(&decode_reference(bytes, policy, now));
    let got = describe(&decode(bytes, policy, now));
    prop_assert_eq!(&got, &reference, "decode vs decode_reference on {:?}", String::from_utf8_lossy(bytes));
    if let Some(fast) = decode_fast(bytes, policy, now) {
        let fast = describe(&Ok(fast));
        prop_assert_eq!(&fast, &reference, "decode_fast vs decode_reference on {:?}", String::from_utf8_lossy(bytes));
    }
    Ok(())
}

fn check_default(bytes: &[u8]) -> Result<(), TestCaseError> {
    check(bytes, &policy(), NOW)
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// Text for string fields: plain, unicode, control characters, quotes and backslashes.
fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9_./:@-]{1,40}",
        2 => "\\PC{0,24}",
        1 => any::<String>(),
        1 => "[\"\\\\/a\u{0}\u{1f}\u{7f}\u{e9}\u{2028}\u{1F600}]{0,12}",
        1 => prop::sample::select(SOURCES.to_vec()).prop_map(str::to_string),
    ]
}

/// How a string is written: 0 serde_json (escapes only what it must), 1 every UTF-16 unit as
/// `\uXXXX`, 2 a mix (every other character escaped, short escapes where they exist), 3 upper-case
/// hex `\u` escapes.
fn encode_str(s: &str, style: u8) -> String {
    match style % 4 {
        0 => Value::String(s.to_string()).to_string(),
        1 => escaped_string(s),
        2 => {
            let mut out = String::from("\"");
            for (i, c) in s.chars().enumerate() {
                let short = match c {
                    '"' => Some("\\\""),
                    '\\' => Some("\\\\"),
                    '/' => Some("\\/"),
                    '\u{8}' => Some("\\b"),
                    '\u{c}' => Some("\\f"),
                    '\n' => Some("\\n"),
                    '\r' => Some("\\r"),
                    '\t' => Some("\\t"),
                    _ => None,
                };
                match short {
                    Some(e) => out.push_str(e),
                    None if i % 2 == 1 || (c as u32) < 0x20 => {
                        let mut units = [0u16; 2];
                        for u in c.encode_utf16(&mut units) {
                            out.push_str(&format!("\\u{u:04x}"));
                        }
                    }
                    None => out.push(c),
                }
            }
            out.push('"');
            out
        }
        _ => {
            let mut out = String::from("\"");
            for u in s.encode_utf16() {
                out.push_str(&format!("\\u{u:04X}"));
            }
            out.push('"');
            out
        }
    }
}

fn arb_ws() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just(String::new()),
        1 => Just(" ".to_string()),
        1 => "[ \t\r\n]{1,4}",
    ]
}

/// A risk as written on the wire.
fn arb_risk_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0.0..=1.0f64).prop_map(|r| Value::from(r).to_string()),
        2 => (0u32..=10_000).prop_map(|n| Value::from(f64::from(n) / 10_000.0).to_string()),
        1 => prop::sample::select(vec!["0", "1", "0.0", "1.0", "1.00", "0.5", "-0", "-0.0", "0e0", "1E0", "5e-1", "0.1e1"])
            .prop_map(str::to_string),
        2 => "-?[0-9]{1,20}(\\.[0-9]{0,22})?([eE][+-]?[0-9]{1,3})?",
        1 => "0\\.[0-9]{15,19}",
        1 => "0\\.0{0,20}[1-9][0-9]{0,3}",
        1 => "1\\.0{14,17}[0-9]{1,3}|0\\.9{14,18}[0-9]{0,3}",
        1 => "[0-9]{0,3}\\.0{0,6}[0-9]{13,24}",
    ]
}

/// A timestamp around `T0` in one of the producer styles, or something odd.
fn arb_time() -> impl Strategy<Value = String> {
    (-3_600_000i64..=3_600_000, 0u8..8, -900i32..=900).prop_map(|(off, style, tz)| {
        let t = T0 + off;
        let ms = format_rfc3339_ms(t);
        match style {
            0..=2 => ms,
            3 => format!("{}Z", &ms[..19]),
            4 => rfc3339_with_offset(t, tz),
            5 => ms.replace('T', " "),
            6 => format!("{}.123456789Z", &ms[..19]),
            _ => ms.to_lowercase(),
        }
    })
}

/// A JSON-ish value built from tokens: sometimes valid JSON, often not.
fn arb_json_tokens() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"a\"",
        "\"b\\\"c\"",
        "\"\\u00e9\"",
        "\"\\ud83d\\ude00\"",
        "\"\\ud800\"",
        "\"\\x\"",
        "1",
        "-0.5e3",
        "0",
        "01",
        "1.",
        ".5",
        "-",
        "true",
        "false",
        "null",
        "nul",
        " ",
        "\n",
        "\"",
        "\\",
        "é",
    ]);
    prop::collection::vec(token, 0..24).prop_map(|t| t.concat())
}

/// A valid JSON value for `attributes` (an object, mostly), nested a few levels.
fn arb_attributes_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        arb_text().prop_map(Value::String),
    ];
    let value = leaf.prop_recursive(10, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z\u{e9}\"]{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![
        3 => prop::collection::btree_map("[a-z]{1,6}", value.clone(), 0..5).prop_map(|m| Value::Object(m.into_iter().collect()).to_string()),
        1 => value.prop_map(|v| v.to_string()),
        1 => "\\{ *\\}|\\[ *\\]|null|\\{\"a\" *: *\\[ *1 *, *\\{ *\\} *\\] *\\}".prop_map(|s| s),
    ]
}

/// One event as (key, raw JSON value) pairs, each string written in some style.
#[derive(Debug, Clone)]
struct Doc {
    fields: Vec<(String, String)>,
    /// Whitespace around tokens: before `{`, after `{`, around `:` and `,`, before `}`, after `}`.
    ws: Vec<String>,
    order: Vec<usize>,
    escaped_keys: bool,
}

impl Doc {
    fn text(&self) -> String {
        let w = |i: usize| self.ws.get(i % self.ws.len().max(1)).map_or("", String::as_str);
        let mut s = String::new();
        s.push_str(w(0));
        s.push('{');
        s.push_str(w(1));
        for (n, &i) in self.order.iter().enumerate() {
            let Some((k, v)) = self.fields.get(i) else { continue };
            if n > 0 {
                s.push_str(w(n + 2));
                s.push(',');
                s.push_str(w(n + 3));
            }
            if self.escaped_keys && n == 0 {
                s.push_str(&escaped_string(k));
            } else {
                s.push_str(&Value::String(k.clone()).to_string());
            }
            s.push_str(w(n + 4));
            s.push(':');
            s.push_str(w(n + 5));
            s.push_str(v);
        }
        s.push_str(w(2));
        s.push('}');
        s.push_str(w(3));
        s
    }
}

fn arb_doc() -> impl Strategy<Value = Doc> {
    let strings = (arb_text(), arb_text(), arb_text(), 0u8..16, 0u8..16);
    let signal =
        prop_oneof![5 => prop::sample::select(DEFAULT_SIGNALS.to_vec()).prop_map(str::to_string), 1 => arb_text()];
    let optionals = (
        prop::option::of(prop_oneof![Just("192.0.2.1".to_string()), Just("2001:db8::1".to_string()), arb_text()]),
        prop::option::of(prop_oneof![Just("PL".to_string()), arb_text()]),
        prop::option::of(arb_text()),
        prop::option::of(prop_oneof![Just("Mozilla/5.0 (X11; Linux x86_64)".to_string()), arb_text()]),
        prop::option::of(arb_attributes_value()),
        prop::option::of(prop_oneof![
            Just("1".to_string()),
            Just("null".to_string()),
            "[0-9]{1,11}",
            Just("1.0".to_string())
        ]),
        prop::bits::u8::ANY,
    );
    (
        strings,
        signal,
        arb_time(),
        arb_risk_text(),
        optionals,
        prop::collection::vec(arb_ws(), 1..8),
        any::<u64>(),
        prop::bool::weighted(0.05),
    )
        .prop_map(
            |((event_id, account_id, source, style_a, style_b), signal, time, risk, opt, ws, shuffle, escaped_keys)| {
                // Strings are written plainly most of the time (style 0 when the draw is ≥ 4).
                let style = |k: u8| if k >= 4 { 0 } else { k };
                let (ip, country, device_id, user_agent, attributes, schema_version, nulls) = opt;
                let mut fields = vec![
                    ("event_id".to_string(), encode_str(&event_id, style(style_a))),
                    ("account_id".to_string(), encode_str(&account_id, style(style_b))),
                    ("occurred_at".to_string(), encode_str(&time, style(style_a >> 1))),
                    ("source".to_string(), encode_str(&source, style(style_b >> 1))),
                    ("signal".to_string(), encode_str(&signal, style(style_a >> 2))),
                    ("risk".to_string(), risk),
                ];
                for (i, (key, v)) in
                    [("ip", ip), ("country", country), ("device_id", device_id), ("user_agent", user_agent)]
                        .into_iter()
                        .enumerate()
                {
                    match v {
                        Some(v) => fields.push((key.to_string(), encode_str(&v, style(style_b >> 2)))),
                        None if nulls & (1 << i) != 0 => fields.push((key.to_string(), "null".to_string())),
                        None => {}
                    }
                }
                match attributes {
                    Some(a) => fields.push(("attributes".to_string(), a)),
                    None if nulls & 0x10 != 0 => fields.push(("attributes".to_string(), "null".to_string())),
                    None => {}
                }
                if let Some(v) = schema_version {
                    fields.push(("schema_version".to_string(), v));
                }
                // A deterministic shuffle: mostly the usual order, sometimes permuted.
                let mut order: Vec<usize> = (0..fields.len()).collect();
                if shuffle % 3 == 0 {
                    let mut x = shuffle;
                    for i in (1..order.len()).rev() {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        order.swap(i, (x >> 33) as usize % (i + 1));
                    }
                }
                Doc { fields, ws, order, escaped_keys }
            },
        )
}

/// Nesting depth of JSON text (brackets outside strings).
fn depth(json: &str) -> usize {
    let v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    fn d(v: &Value) -> usize {
        match v {
            Value::Array(a) => 1 + a.iter().map(d).max().unwrap_or(0),
            Value::Object(o) => 1 + o.values().map(d).max().unwrap_or(0),
            _ => 0,
        }
    }
    d(&v)
}

/// A plain valid event: the shape the fast path is for.
fn arb_plain_event() -> impl Strategy<Value = Vec<u8>> {
    (
        "[a-zA-Z0-9-]{1,36}",
        prop_oneof!["acct-[0-9]{1,10}", "\\PC{1,20}".prop_map(|s| s.replace(['"', '\\'], "x"))],
        0usize..SOURCES.len(),
        0usize..DEFAULT_SIGNALS.len(),
        prop_oneof![0.0..=1.0f64, (0u32..=10_000).prop_map(|n| f64::from(n) / 10_000.0)],
        -3_600_000i64..=0,
        // Attributes that are an object within the limits (others are dropped: no filter, so that
        // long runs do not exhaust proptest's rejection budget).
        prop::option::of(arb_attributes_value())
            .prop_map(|a| a.filter(|a| a.starts_with('{') && a.len() < 2000 && depth(a) <= 8)),
    )
        .prop_map(|(id, acct, src, sig, risk, off, attrs)| {
            let mut ev = Ev::new(&id, &acct, T0 + off, SOURCES[src], DEFAULT_SIGNALS[sig], risk);
            if let Some(a) = attrs {
                ev = ev.with("attributes", serde_json::from_str(&a).unwrap_or(Value::Null));
            }
            ev.with("ip", Value::from("192.0.2.1")).bytes()
        })
}

/// A byte-level edit: insert, replace or delete at a position, with a JSON-significant byte.
#[derive(Debug, Clone)]
struct Edit {
    at: usize,
    op: u8,
    byte: u8,
}

fn arb_edits() -> impl Strategy<Value = Vec<Edit>> {
    let byte =
        prop::sample::select(b"{}[]\",:\\ .0123456789-+eEtrufalsnu\t\n\r/\x00\x0b\x0c\x1f\x7f\xc3\xa9\xff".to_vec());
    prop::collection::vec((any::<usize>(), 0u8..3, byte).prop_map(|(at, op, byte)| Edit { at, op, byte }), 1..4)
}

fn apply_edits(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let at = e.at % (b.len() + 1);
        match e.op {
            0 => b.insert(at, e.byte),
            1 if at < b.len() => b[at] = e.byte,
            _ if at < b.len() => {
                b.remove(at);
            }
            _ => b.push(e.byte),
        }
    }
    b
}

fn base_ev() -> impl Strategy<Value = Ev> {
    (0usize..40, 0usize..SOURCES.len(), 0usize..DEFAULT_SIGNALS.len(), 0.0..=1.0f64, -600_000i64..=0).prop_map(
        |(acct, src, sig, risk, off)| {
            Ev::new(&format!("e-{acct}-{off}"), &account_name(acct), T0 + off, SOURCES[src], DEFAULT_SIGNALS[sig], risk)
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(3000))]

    #[test]
    fn arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..400)) {
        check_default(&b)?;
    }

    #[test]
    fn generated_events_with_varied_layout_and_strings(doc in arb_doc()) {
        check_default(doc.text().as_bytes())?;
    }

    #[test]
    fn every_mutation(ev in base_ev(), m in arb_mutation()) {
        let mutated = m.apply(&ev, NOW);
        check_default(&mutated.bytes)?;
    }

    #[test]
    fn byte_edits_of_valid_events(doc in arb_doc(), edits in arb_edits()) {
        check_default(&apply_edits(doc.text().into_bytes(), &edits))?;
    }

    #[test]
    fn raw_values_in_each_field(ev in base_ev(), field in 0usize..12, raw in prop_oneof![
        arb_json_tokens(),
        arb_risk_text(),
        "\"[^\"\\\\]{0,8}(\\\\([\"\\\\/bfnrtx]|u[0-9a-fA-FxX]{0,4})){0,3}[^\"]{0,4}\"",
        "\"(\\\\u[dD][89abAB][0-9a-f]{2}|\\\\u[dD][c-fC-F][0-9a-f]{2}|\\\\u00[0-9a-f]{2}|x){0,4}\"",
    ]) {
        const KEYS: [&str; 12] = [
            "event_id", "account_id", "occurred_at", "source", "signal", "risk",
            "ip", "country", "device_id", "user_agent", "attributes", "schema_version",
        ];
        check_default(&replace_or_add(&ev, KEYS[field], &raw))?;
    }

    #[test]
    fn random_attributes(ev in base_ev(), raw in prop_oneof![arb_json_tokens(), arb_attributes_value()], depth in 0usize..12) {
        let raw = format!("{}{raw}{}", "[".repeat(depth), "]".repeat(depth));
        check_default(&replace_or_add(&ev, "attributes", &raw))?;
    }

    #[test]
    fn other_limits(doc in arb_doc(), max_msg in 1usize..600, max_attr in 0usize..200, max_depth in 0usize..10) {
        let mut p = policy();
        p.max_message_bytes = max_msg;
        p.max_attributes_bytes = max_attr;
        p.max_attributes_depth = max_depth;
        check(doc.text().as_bytes(), &p, NOW)?;
    }

    /// The fast path takes plain valid events itself (instead of falling back).
    #[test]
    fn plain_valid_events_take_the_fast_path(b in arb_plain_event()) {
        check_default(&b)?;
        prop_assert!(decode_fast(&b, &policy(), NOW).is_some(), "fell back on {}", String::from_utf8_lossy(&b));
    }
}

fn chrono_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis())
}

/// Timestamps: well-formed ones from all over the calendar (leap days, month ends, every offset
/// sign, 0 to 12 fraction digits), with fields out of range, and with single bytes changed.
fn arb_timestamp() -> impl Strategy<Value = String> {
    let parts = (
        prop_oneof![1800i64..=2100, 0i64..=9999],
        0i64..=13,
        0i64..=32,
        0i64..=25,
        0i64..=61,
        0i64..=61,
        prop_oneof![Just(String::new()), "\\.[0-9]{1,12}", Just(".".to_string())],
        prop_oneof![
            Just("Z".to_string()),
            Just("z".to_string()),
            (prop::sample::select(vec!["+", "-", "\u{2212}"]), 0i64..=25, 0i64..=61)
                .prop_map(|(s, h, m)| format!("{s}{h:02}:{m:02}")),
            Just("+0100".to_string()),
            Just(String::new()),
        ],
        prop::sample::select(vec!["T", "T", "T", "t", " "]),
    );
    let built = parts.prop_map(|(y, mo, d, h, mi, s, frac, tz, sep)| {
        format!("{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}{frac}{tz}")
    });
    prop_oneof![
        6 => built.clone(),
        2 => (built, any::<usize>(), prop::sample::select(b"0123456789-:.TZ+ x\xc3".to_vec())).prop_map(|(s, at, c)| {
            let mut b = s.into_bytes();
            let at = at % (b.len() + 1);
            if at < b.len() { b[at] = c } else { b.push(c) }
            String::from_utf8_lossy(&b).into_owned()
        }),
        1 => (-62_135_596_800_000i64..=253_402_300_799_999).prop_map(format_rfc3339_ms),
        1 => "[0-9T:.Z+-]{0,30}",
    ]
}

proptest! {
    #![proptest_config(cases(20_000))]

    #[test]
    fn rfc3339_parse_matches_chrono(s in arb_timestamp()) {
        prop_assert_eq!(parse_rfc3339_ms(&s), chrono_ms(&s), "{:?}", s);
    }
}

/// Inputs that probe the edges of the fast path's grammar one by one.
#[test]
fn edge_cases() {
    let base = Ev::new("e1", "acct-1", T0, "auth-service", "failed_login", 0.5);
    let text = String::from_utf8(base.bytes()).expect("utf8");
    let mut inputs: Vec<String> = vec![
        text.clone(),
        String::new(),
        " ".into(),
        "{}".into(),
        "{".into(),
        "[]".into(),
        "null".into(),
        format!("\u{feff}{text}"),
        format!("\u{a0}{text}"),
        format!("{text}\u{a0}"),
        format!("{text} "),
        format!("{text}x"),
        format!("{text}{{}}"),
        format!(" \t\r\n{text} \t\r\n"),
        format!("\u{c}{text}"),
        format!("{text}\u{c}"),
        text.replacen(':', ":\u{c}", 1),
        text.replacen(',', "\u{b},", 1),
        text.replacen('{', "{\"ip\":null,", 1),
        text.replacen('}', ",}", 1),
        text.replacen(',', ",,", 1),
        text.replacen(':', " : ", 1),
        text.replacen("\"event_id\"", "\"event\\u005fid\"", 1),
        text.replacen("\"event_id\"", "\"event_id \"", 1),
        text.replacen("\"e1\"", "\"e\\u0031\"", 1),
        text.replacen("\"e1\"", "\"\\ud83d\\ude00\"", 1),
        text.replacen("\"e1\"", "\"\\ud83d\"", 1),
        text.replacen("\"e1\"", "\"\\ude00\"", 1),
        text.replacen("\"e1\"", "\"\\ud83d\\u0041\"", 1),
        text.replacen("\"e1\"", "\"\\ud83dx\"", 1),
        text.replacen("\"e1\"", "\"\\u0000\"", 1),
        text.replacen("\"e1\"", "\"\\/\\b\\f\\n\\r\\t\\\"\\\\\"", 1),
        text.replacen("\"e1\"", "\"\\a\"", 1),
        text.replacen("\"e1\"", "\"\\u12\"", 1),
        text.replacen("\"e1\"", "\"\\u12G4\"", 1),
        text.replacen("\"e1\"", "\"e\u{1}1\"", 1),
        text.replacen("\"e1\"", "\"e\u{7f}1\"", 1),
        text.replacen("\"e1\"", "\"e1", 1),
        text.replacen("\"e1\"", "e1", 1),
        text.replacen("\"e1\"", "null", 1),
        text.replacen("\"e1\"", "1", 1),
    ];
    for risk in [
        "0",
        "1",
        "0.0",
        "1.0",
        "0.5",
        "0.50",
        "00.5",
        ".5",
        "5.",
        "0.",
        "-0",
        "-0.0",
        "-0.5",
        "1e0",
        "1E0",
        "0.5e0",
        "5e-1",
        "1e-400",
        "1e400",
        "0.1",
        "0.2",
        "0.3",
        "0.30000000000000004",
        "0.123456789012345678",
        "0.1234567890123456789",
        "0.999999999999999999",
        "0.9999999999999999999",
        // serde_json (without float_roundtrip) rounds these to 1.0000000000000002 (rejected);
        // correctly rounded (`str::parse`) they would be 1.0 (accepted).
        "1.00000000000000009",
        "1.000000000000000065",
        "0.36992193657909411",
        "1.000000000000000001",
        "0.000000000000000001",
        "9007199254740993",
        "0.9007199254740993",
        "0.9007199254740992",
        "123456789012345678",
        "1234567890123456789",
        "18446744073709551615",
        "18446744073709551616",
        "0.3333333333333333",
        "0.6666666666666666",
        "1.0000001",
        "01",
        "+1",
        "\"0.5\"",
        "null",
        "true",
        "[0.5]",
        "0.5 ",
        " 0.5",
        "0.5x",
        "NaN",
        "Infinity",
        "3.85e-06",
        "3.850253200584726e-6",
        "1E+0",
        "1e-0",
        "1e22",
        "1e23",
        "1e-22",
        "1e-23",
        "0.1e1",
        "10e-1",
        "1.5E-3",
        "0.5e",
        "0.5e+",
        "0.5e-",
        "5e-0001",
        "5e-001",
        "0e999",
        "0.0e-999",
        "1e+22",
        "123456789012345678e-18",
        "0.1e-21",
    ] {
        inputs.push(text.replacen("\"risk\":0.5", &format!("\"risk\":{risk}"), 1));
    }
    for sv in [
        "1",
        "0",
        "2",
        "01",
        "1.0",
        "1e0",
        "-1",
        "-0",
        "null",
        "4294967295",
        "4294967296",
        "99999999999",
        "\"1\"",
        "true",
    ] {
        inputs.push(text.replacen('}', &format!(",\"schema_version\":{sv}}}"), 1));
    }
    for attrs in [
        "{}",
        "{ }",
        "[]",
        "null",
        "nul",
        "1",
        "\"x\"",
        "true",
        "{\"a\":1}",
        "{\"a\":1,}",
        "{\"a\" 1}",
        "{\"a\":}",
        "{,}",
        "[1,]",
        "[,1]",
        "[1 2]",
        "{\"a\":[1,{\"b\":2}]}",
        "{\"a\":\"\\ud800\"}",
        "{\"a\":\"\\x\"}",
        "{\"a\":\"\u{1}\"}",
        "{\"a\":01}",
        "{\"a\":-}",
        "{\"a\":1.}",
        "{\"a\":1e}",
        "{\"a\":-0.5E+3}",
        "{1:2}",
        "{\"a\":[[[[[[[[1]]]]]]]]}",
        "{\"a\":[[[[[[[1]]]]]]]}",
        "{\"a\":{\"b\":{\"c\":{}}}}",
        "{\"a\":tru}",
        "{\"a\":\"é\"}",
        "{\"a\":[}",
        "{\"a\":]",
        "{\"a\":1]",
        "[1}",
        "{\"a\":[1}]",
        "[{\"a\":1]}",
        "[[]}",
        "{\"a\":{}]",
        "{\"a\"\u{c}:1}",
        "[1,\u{b}2]",
    ] {
        inputs.push(text.replacen('}', &format!(",\"attributes\":{attrs}}}"), 1));
    }
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(70), "]".repeat(70));
    inputs.push(text.replacen('}', &format!(",\"attributes\":{deep}}}"), 1));
    let very_deep = format!("{}{}", "[".repeat(7000), "]".repeat(7000));
    inputs.push(text.replacen('}', &format!(",\"attributes\":{very_deep}}}"), 1));
    inputs.push(format!("{}{}", "[".repeat(7000), "]".repeat(7000)));
    inputs.push(text.replacen("\"ip\"", "\"ipv9\"", 1));
    inputs.push(text.replacen('}', ",\"ip\":\"192.0.2.1\",\"ip\":null}", 1));
    inputs.push(text.replacen('}', ",\"risk\":0.5}", 1));
    inputs.push(text.replacen(",\"risk\":0.5", "", 1));

    let mut policies = vec![policy()];
    let mut p = policy();
    p.max_attributes_depth = 100;
    p.max_attributes_bytes = 100_000;
    p.max_message_bytes = 100_000;
    policies.push(p);
    let mut failures = Vec::new();
    for p in &policies {
        for input in &inputs {
            if let Err(e) = check(input.as_bytes(), p, NOW) {
                failures.push(e.to_string());
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));

    // The plain event and simple escapes take the fast path.
    for s in [&text, &text.replacen("\"e1\"", "\"e\\u0031\"", 1), &text.replacen("\"risk\":0.5", "\"risk\":1", 1)] {
        assert!(decode_fast(s.as_bytes(), &policy(), NOW).is_some(), "{s}");
    }
}

#[test]
fn rfc3339_edge_cases() {
    for s in [
        "1970-01-01T00:00:00Z",
        "1969-12-31T23:59:59.999Z",
        "1970-01-01T00:30:00+01:00",
        "1900-01-01T00:00:00Z",
        "1899-12-31T23:59:59Z",
        "2000-02-29T12:00:00Z",
        "1900-02-29T12:00:00Z",
        "2100-02-29T00:00:00Z",
        "2024-02-29T00:00:00Z",
        "2023-02-29T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "2026-12-31T23:59:59.999999999Z",
        "2026-12-31T23:59:59.9999999999Z",
        "2026-05-28T20:26:60Z",
        "2026-05-28T20:26:60.5Z",
        "2026-05-28T24:00:00Z",
        "2026-05-28T20:60:00Z",
        "2026-05-28T20:26:40+23:59",
        "2026-05-28T20:26:40-23:59",
        "2026-05-28T20:26:40+24:00",
        "2026-05-28T20:26:40-00:00",
        "2026-05-28T20:26:40+01:60",
        "2026-05-28T20:26:40.Z",
        "2026-05-28T20:26:40.1Z",
        "2026-05-28T20:26:40.12Z",
        "2026-05-28T20:26:40.1234+02:00",
        "2026-05-28T20:26:40Z ",
        " 2026-05-28T20:26:40Z",
        "2026-05-28T20:26:40",
        "2026-05-28T20:26:40+0200",
        "2026-05-28T20:26:40+02",
        "2026-5-28T20:26:40Z",
        "9999-12-31T23:59:59.999Z",
        "0000-01-01T00:00:00Z",
        "2026-00-10T00:00:00Z",
        "2026-13-10T00:00:00Z",
        "2026-01-00T00:00:00Z",
        "2026-05-28T20:26:40\u{2212}02:00",
        "2026-05-28T20:26:40.123456789+14:00",
        "",
    ] {
        assert_eq!(parse_rfc3339_ms(s), chrono_ms(s), "{s:?}");
    }
}

/// The benchmark's events (the production shape) all take the fast path, with the same result.
#[test]
fn benchmark_events_take_the_fast_path() {
    let policy = policy();
    let events = bench_events::stream(5_000, 5_000, bench_events::T0_MS, 100, 1);
    let now = bench_events::T0_MS + 3_600_000;
    let mut fell_back = 0;
    for e in &events {
        assert_eq!(describe(&decode(e, &policy, now)), describe(&decode_reference(e, &policy, now)));
        match decode_fast(e, &policy, now) {
            Some(fast) => assert_eq!(describe(&Ok(fast)), describe(&decode_reference(e, &policy, now))),
            None => fell_back += 1,
        }
    }
    assert_eq!(fell_back, 0, "of {} benchmark events, {fell_back} fell back to serde_json", events.len());
}
