//! Contract tests without a broker: the JSON Schemas in `schemas/` against what the code really
//! reads and writes.
//!
//! * Output records (notice, held, DLQ) are produced by the library itself (`core::Engine` then
//!   `kafka::records::record_for`), and every payload / header set is validated against its schema.
//! * The input schema and the decoder (`core::event::decode`) are run over one table of cases and
//!   must agree on each: schema-valid ⇔ decoded. Disagreements that cannot be removed on the
//!   schema side (policy-defined rules, parser leniency) are pinned in a separate table, so that a
//!   change on either side shows up here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rdkafka::message::{Headers, OwnedHeaders};
use resetguard::config::TopicsFile;
use resetguard::core::breaker::HeldReason;
use resetguard::core::event::{decode, format_rfc3339_ms, RejectReason};
use resetguard::core::outcome::{Decision, HeldInfo, Outcome, OutcomeKind};
use resetguard::core::policy::Mode;
use resetguard::core::{Engine, Policy, TimeMode};
use resetguard::kafka::records::{record_for, Origin, OutRecord};
use serde_json::{json, Map, Value};

mod common;
use common::events::{DEFAULT_SIGNALS, REQUIRED};
use common::schemas::{errors, load_schema, validator};

/// 2026-05-28T20:26:40Z.
const T0: i64 = 1_780_000_000_000;
/// Wall clock handed to the decoder and the engine: far enough ahead that no test event is "in the future".
const WALL: i64 = T0 + 400 * 86_400_000;
const INPUT_TOPIC: &str = "login-risk-events";

// ------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------

fn event_bytes(id: &str, account: &str, t_ms: i64, source: &str, signal: &str, risk: f64) -> Vec<u8> {
    json!({
        "event_id": id,
        "account_id": account,
        "occurred_at": format_rfc3339_ms(t_ms),
        "source": source,
        "signal": signal,
        "risk": risk,
    })
    .to_string()
    .into_bytes()
}

/// Record headers as a JSON object; every header must be UTF-8, non-null and present once.
fn headers_object(headers: &OwnedHeaders) -> Value {
    let mut out = Map::new();
    for h in headers.iter() {
        let value = h.value.map(|v| std::str::from_utf8(v).unwrap_or_else(|_| panic!("header {} is not UTF-8", h.key)));
        let value = value.map_or(Value::Null, |s| Value::String(s.to_string()));
        assert!(out.insert(h.key.to_string(), value).is_none(), "header {} written twice", h.key);
    }
    Value::Object(out)
}

fn header<'a>(obj: &'a Value, name: &str) -> &'a str {
    obj[name].as_str().unwrap_or_else(|| panic!("no header {name} in {obj}"))
}

fn payload_json(rec: &OutRecord<'_>) -> Value {
    serde_json::from_slice(&rec.payload).unwrap_or_else(|e| panic!("payload on {} is not JSON: {e}", rec.topic))
}

/// Every held reason; the match makes this fail to compile when a variant is added.
fn all_held_reasons() -> Vec<HeldReason> {
    let all = vec![
        HeldReason::Spike,
        HeldReason::BreakerOpen,
        HeldReason::ForcedOpen,
        HeldReason::ProbeBudgetSpent,
        HeldReason::CellRateLimited,
        HeldReason::GlobalRateLimited,
    ];
    for r in &all {
        match r {
            HeldReason::Spike
            | HeldReason::BreakerOpen
            | HeldReason::ForcedOpen
            | HeldReason::ProbeBudgetSpent
            | HeldReason::CellRateLimited
            | HeldReason::GlobalRateLimited => {}
        }
    }
    all
}

/// Records produced by a scenario, validated as they come.
#[derive(Default)]
struct Checked {
    notices: Vec<Value>,
    shadow: Vec<Value>,
    held: Vec<Value>,
    held_reasons: BTreeMap<String, usize>,
    window_kinds: BTreeSet<String>,
    decisions: Vec<(Decision, Option<HeldInfo>)>,
}

struct OutputSchemas {
    notice: jsonschema::Validator,
    held: jsonschema::Validator,
}

impl OutputSchemas {
    fn load() -> Self {
        OutputSchemas {
            notice: validator("reset-notice.v1.schema.json"),
            held: validator("held-record.v1.schema.json"),
        }
    }
}

impl Checked {
    /// Turns one outcome into its record, checks topic, key, headers and payload, and keeps it.
    fn take(
        &mut self,
        s: &OutputSchemas,
        outcome: &Outcome,
        input: &[u8],
        offset: i64,
        topics: &TopicsFile,
        mode: Mode,
    ) {
        let origin = Origin { topic: INPUT_TOPIC, partition: 0, offset, key: None, payload: input };
        let rec = record_for(outcome, &origin, topics, mode, usize::MAX);
        match outcome {
            Outcome::Notice(d) => {
                let rec = rec.expect("a notice produces a record");
                let expected_topic = if mode == Mode::Shadow { &topics.shadow } else { &topics.notices };
                assert_eq!(rec.topic, expected_topic.as_str());
                assert_eq!(rec.key, d.account_id.as_bytes(), "notices are keyed by account id");
                let payload = payload_json(&rec);
                let errs = errors(&s.notice, &payload);
                assert!(errs.is_empty(), "notice does not match its schema: {errs:#?}\n{payload:#}");
                let hs = headers_object(&rec.headers);
                assert_eq!(hs.as_object().map(|o| o.len()), Some(4), "notice headers: {hs}");
                assert_eq!(header(&hs, "notice_id"), payload["notice_id"]);
                assert_eq!(header(&hs, "schema"), payload["schema"]);
                assert_eq!(header(&hs, "policy_version"), payload["explanation"]["policy_version"]);
                assert_eq!(header(&hs, "mode"), payload["mode"]);
                assert_eq!(payload["mode"], mode.as_str());
                self.window_kinds.insert(payload["explanation"]["window"]["kind"].as_str().unwrap_or("").to_string());
                self.decisions.push(((**d).clone(), None));
                if mode == Mode::Shadow {
                    self.shadow.push(payload);
                } else {
                    self.notices.push(payload);
                }
            }
            Outcome::Held(d, info) => {
                let rec = rec.expect("a held decision produces a record");
                assert_eq!(rec.topic, topics.held.as_str());
                assert_eq!(rec.key, d.account_id.as_bytes(), "held records are keyed by account id");
                let payload = payload_json(&rec);
                let errs = errors(&s.held, &payload);
                assert!(errs.is_empty(), "held record does not match its schema: {errs:#?}\n{payload:#}");
                let hs = headers_object(&rec.headers);
                assert_eq!(hs.as_object().map(|o| o.len()), Some(4), "held headers: {hs}");
                assert_eq!(header(&hs, "notice_id"), payload["notice_id"]);
                assert_eq!(header(&hs, "schema"), payload["schema"]);
                assert_eq!(header(&hs, "held_reason"), payload["held"]["reason"]);
                assert_eq!(header(&hs, "cell"), payload["held"]["cell"]);
                *self.held_reasons.entry(info.reason.as_str().to_string()).or_default() += 1;
                self.decisions.push(((**d).clone(), Some(info.clone())));
                self.held.push(payload);
            }
            Outcome::NoAction(_) => assert!(rec.is_none(), "no-action outcomes produce no record"),
            other => panic!("scenario produced an unexpected outcome {other:?}"),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Output records
// ------------------------------------------------------------------------------------------------

#[test]
fn notices_and_held_records_produced_by_the_library_match_their_schemas() {
    let schemas = OutputSchemas::load();
    let topics = TopicsFile::default();
    let mut seen = Checked::default();
    let mut offset = 0;

    // 1. Two signal kinds from two sources decide in the short window.
    let mut e = Engine::new(
        Arc::new(Policy::default_with_version("v1")),
        resetguard::core::hash::Keys::demo(),
        TimeMode::EventTime,
    );
    for (id, src, sig, risk, dt) in
        [("a1", "auth-service", "credential_stuffing", 1.0, 0), ("a2", "fraud-model", "impossible_travel", 0.8, 1_000)]
    {
        let input = event_bytes(id, "acct-two-kinds", T0 + dt, src, sig, risk);
        let outcome = e.process(&input, 0, WALL).outcome;
        seen.take(&schemas, &outcome, &input, offset, &topics, Mode::Live);
        offset += 1;
    }
    assert_eq!(seen.notices.len(), 1, "two kinds decide once");
    let n = &seen.notices[0];
    assert_eq!(n["explanation"]["contributions"].as_array().map(Vec::len), Some(2));
    assert_eq!(n["explanation"]["evidence"], json!(["a1", "a2"]));

    // 2. Slow burn: one event every 2 h, alternating two kinds, decides in the slow window.
    let mut e = Engine::new(
        Arc::new(Policy::default_with_version("v1")),
        resetguard::core::hash::Keys::demo(),
        TimeMode::EventTime,
    );
    let before = seen.notices.len();
    for i in 0..10 {
        let sig = if i % 2 == 0 { "impossible_travel" } else { "credential_stuffing" };
        let input = event_bytes(&format!("s{i}"), "acct-slow", T0 + i * 7_200_000, "batch-scorer", sig, 1.0);
        let outcome = e.process(&input, 0, WALL).outcome;
        let done = outcome.kind() == OutcomeKind::Notice;
        seen.take(&schemas, &outcome, &input, offset, &topics, Mode::Live);
        offset += 1;
        if done {
            break;
        }
    }
    assert_eq!(seen.notices.len(), before + 1, "the slow window decides once");
    assert!(seen.window_kinds.contains("slow") && seen.window_kinds.contains("short"), "{:?}", seen.window_kinds);

    // 3. Spike: 200 breached_password decisions from one source within 20 s on distinct
    //    accounts. The default spike floor lets 30 through, the rest is held.
    let mut e = Engine::new(
        Arc::new(Policy::default_with_version("v1")),
        resetguard::core::hash::Keys::demo(),
        TimeMode::EventTime,
    );
    let (notices_before, held_before) = (seen.notices.len(), seen.held.len());
    for i in 0..200 {
        let input = event_bytes(
            &format!("b{i}"),
            &format!("acct-{i:03}"),
            T0 + i * 100,
            "buggy-detector",
            "breached_password",
            1.0,
        );
        let outcome = e.process(&input, 0, WALL).outcome;
        seen.take(&schemas, &outcome, &input, offset, &topics, Mode::Live);
        offset += 1;
    }
    assert_eq!(seen.notices.len() - notices_before, 30, "notices before the breaker trips");
    assert_eq!(seen.held.len() - held_before, 170, "held once the breaker trips");
    assert_eq!(seen.held_reasons.get("spike"), Some(&1), "{:?}", seen.held_reasons);
    assert_eq!(seen.held_reasons.get("breaker_open"), Some(&169), "{:?}", seen.held_reasons);
    assert!(seen.held.iter().all(|h| h["held"]["cell"] == "buggy-detector" && h["cell"] == "buggy-detector"));

    // 4. Shadow mode: would-be notices go to the shadow topic with mode "shadow", same schema.
    let shadow = Policy::from_toml("version = \"v1\"\nmode = \"shadow\"\n").expect("shadow policy");
    let mut e = Engine::new(Arc::new(shadow), resetguard::core::hash::Keys::demo(), TimeMode::EventTime);
    let input = event_bytes("sh1", "acct-shadow", T0, "auth-service", "breached_password", 1.0);
    let outcome = e.process(&input, 0, WALL).outcome;
    seen.take(&schemas, &outcome, &input, offset, &topics, Mode::Shadow);
    assert_eq!(seen.shadow.len(), 1);
    assert_eq!(seen.shadow[0]["mode"], "shadow");

    // 5. Every held reason serializes to a value of the held schema's enum.
    let (d, info) = seen.decisions.iter().find(|(_, h)| h.is_some()).cloned().expect("a held decision");
    let info = info.expect("held info");
    let mut reasons_ok = 0;
    for reason in all_held_reasons() {
        let payload: Value = serde_json::from_slice(&d.held_json(&HeldInfo { reason, ..info.clone() })).expect("json");
        assert_eq!(payload["held"]["reason"], reason.as_str());
        let errs = errors(&schemas.held, &payload);
        assert!(errs.is_empty(), "held reason {reason:?}: {errs:?}");
        reasons_ok += 1;
    }
    assert_eq!(reasons_ok, 6);

    // Totals: 1 + 1 + 30 live notices, 170 held, 1 shadow; all schema-valid (checked in `take`).
    assert_eq!(seen.notices.len(), 32);
    assert_eq!(seen.held.len(), 170);
    assert_eq!(seen.shadow.len(), 1);
    assert_eq!(seen.decisions.len(), 32 + 170 + 1);
    let ids: BTreeSet<&str> = seen.notices.iter().chain(&seen.held).filter_map(|v| v["notice_id"].as_str()).collect();
    assert_eq!(ids.len(), 202, "distinct accounts and incidents have distinct notice ids");
}

#[test]
fn output_schemas_reject_broken_records() {
    let schemas = OutputSchemas::load();
    let mut e = Engine::new(
        Arc::new(Policy::default_with_version("v1")),
        resetguard::core::hash::Keys::demo(),
        TimeMode::EventTime,
    );
    let mut notice = None;
    let mut held = None;
    for i in 0..40 {
        let input =
            event_bytes(&format!("b{i}"), &format!("acct-{i}"), T0 + i * 100, "buggy", "breached_password", 1.0);
        match e.process(&input, 0, WALL).outcome {
            Outcome::Notice(d) => notice = Some(serde_json::from_slice::<Value>(&d.notice_json()).expect("json")),
            Outcome::Held(d, h) => held = Some(serde_json::from_slice::<Value>(&d.held_json(&h)).expect("json")),
            other => panic!("{other:?}"),
        }
    }
    let (notice, held) = (notice.expect("a notice"), held.expect("a held record"));
    assert!(schemas.notice.is_valid(&notice) && schemas.held.is_valid(&held));

    type Breakage = (&'static str, fn(&mut Value));
    let breakages: [Breakage; 14] = [
        ("unknown top-level member", |v| v["extra"] = json!(1)),
        ("notice_id in upper case", |v| v["notice_id"] = json!("rn_ABCDEF0123456789ABCDEF0123456789")),
        ("notice_id too short", |v| v["notice_id"] = json!("rn_0123")),
        ("mode outside the enum", |v| v["mode"] = json!("dry_run")),
        ("window kind outside the enum", |v| v["explanation"]["window"]["kind"] = json!("medium")),
        ("decided_at not UTC millis", |v| v["decided_at"] = json!("2026-05-28T20:26:40+02:00")),
        ("decided_at not a date", |v| v["decided_at"] = json!("2026-13-28T20:26:40.000Z")),
        ("score as a string", |v| v["explanation"]["score"] = json!("1.0")),
        ("length_seconds fractional", |v| v["explanation"]["window"]["length_seconds"] = json!(900.5)),
        ("evidence over 10 ids", |v| {
            v["explanation"]["evidence"] = json!(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"])
        }),
        ("contribution without sources", |v| v["explanation"]["contributions"][0]["sources"] = json!([])),
        ("missing trigger", |v| {
            v.as_object_mut().map(|o| o.remove("trigger"));
        }),
        ("null account_id", |v| v["account_id"] = Value::Null),
        ("unknown member in explanation", |v| v["explanation"]["weights"] = json!({})),
    ];
    let mut rejected = 0;
    for (what, breakage) in breakages {
        for (name, schema, record) in [("notice", &schemas.notice, &notice), ("held", &schemas.held, &held)] {
            let mut broken = record.clone();
            breakage(&mut broken);
            assert!(!schema.is_valid(&broken), "{name} schema accepts a record with {what}");
            rejected += 1;
        }
    }
    // Held-only breakages, and records on the wrong topic's schema.
    let mut h = held.clone();
    h["held"]["reason"] = json!("maintenance");
    assert!(!schemas.held.is_valid(&h), "unknown held reason");
    let mut h = held.clone();
    h.as_object_mut().map(|o| o.remove("held"));
    assert!(!schemas.held.is_valid(&h), "held record without held");
    assert!(!schemas.notice.is_valid(&held), "a held record is not a notice");
    assert!(!schemas.held.is_valid(&notice), "a notice is not a held record");
    rejected += 4;
    assert_eq!(rejected, 14 * 2 + 4);
}

// ------------------------------------------------------------------------------------------------
// DLQ records
// ------------------------------------------------------------------------------------------------

#[test]
fn an_oversize_dlq_record_carries_the_first_bytes_and_says_it_was_truncated() {
    let dlq = validator("dlq-record.v1.schema.json");
    let topics = TopicsFile::default();
    let mut e = Engine::new(
        Arc::new(Policy::default_with_version("v1")),
        resetguard::core::hash::Keys::demo(),
        TimeMode::EventTime,
    );
    let payload = vec![b'{'; 10_000];
    let outcome = e.process(&payload, 1, WALL).outcome;
    let origin = Origin { topic: INPUT_TOPIC, partition: 1, offset: 77, key: Some(b"k"), payload: &payload };
    let rec = record_for(&outcome, &origin, &topics, Mode::Live, 1_000).expect("a rejected input has a DLQ record");
    assert_eq!(&rec.payload[..], &payload[..1_000], "the first bytes, as many as fit");
    let hs = headers_object(&rec.headers);
    let errs = errors(&dlq, &hs);
    assert!(errs.is_empty(), "truncated DLQ headers break the schema: {errs:?}\n{hs:#}");
    assert_eq!(header(&hs, "truncated"), "true");
    assert_eq!(header(&hs, "original_bytes"), "10000");
    assert_eq!(header(&hs, "source_offset"), "77");
    // A record that fits is untouched and says nothing about truncation.
    let whole = record_for(&outcome, &origin, &topics, Mode::Live, 10_000).expect("record");
    assert_eq!(whole.payload.len(), 10_000);
    assert!(headers_object(&whole.headers).get("truncated").is_none());
    // The schema wants both truncation headers or neither.
    let mut half = hs.clone();
    half.as_object_mut().expect("object").remove("original_bytes");
    assert!(!dlq.is_valid(&half), "truncated without original_bytes must be refused");
}

#[test]
fn dlq_records_carry_the_original_bytes_and_schema_valid_headers() {
    let dlq = validator("dlq-record.v1.schema.json");
    let topics = TopicsFile::default();
    let mut e = Engine::new(
        Arc::new(Policy::default_with_version("v1")),
        resetguard::core::hash::Keys::demo(),
        TimeMode::EventTime,
    );

    let ok_event = event_bytes("d1", "acct-d", T0 + 600_000, "auth", "failed_login", 0.2);
    let ok = String::from_utf8(ok_event.clone()).expect("utf8");
    let edit = |f: &dyn Fn(&mut Map<String, Value>)| {
        let mut m: Map<String, Value> = serde_json::from_slice(&ok_event).expect("object");
        f(&mut m);
        Value::Object(m).to_string().into_bytes()
    };
    // (message, its Kafka key, the DLQ reason expected or "accepted")
    let inputs: Vec<(Vec<u8>, Option<&str>, &str)> = vec![
        (ok_event.clone(), Some("acct-d"), "accepted"),
        (ok_event.clone(), Some("acct-d"), "event_id_seen"),
        (event_bytes("d2", "acct-d", T0, "auth", "failed_login", 0.2), Some("acct-d"), "behind_watermark"),
        (b"{".to_vec(), Some("k"), "malformed_json"),
        (vec![0xff, 0xfe, 0x00], None, "not_utf8"),
        (b"[1,2]".to_vec(), Some(""), "not_an_object"),
        (edit(&|m| drop(m.insert("risk".into(), json!(7)))), Some("acct-d"), "risk_out_of_range"),
        (edit(&|m| drop(m.insert("signal".into(), json!("telepathy")))), Some("acct-d"), "unknown_signal"),
        (edit(&|m| drop(m.insert("event_id".into(), json!("a\u{0}b")))), Some("acct-d"), "control_characters"),
        (edit(&|m| drop(m.insert("occurred_at".into(), json!("2999-01-01T00:00:00Z")))), None, "future_timestamp"),
        (format!("{}{}", ok, " ".repeat(17_000)).into_bytes(), Some("acct-d"), "oversize"),
        (edit(&|m| drop(m.remove("source"))), None, "missing_field"),
        (edit(&|m| drop(m.insert("ipv6".into(), Value::Null))), None, "unknown_field"),
    ];

    let mut checked = BTreeMap::<String, usize>::new();
    for (offset, (payload, key, expect)) in inputs.iter().enumerate() {
        let outcome = e.process(payload, 2, WALL).outcome;
        let key = key.map(str::as_bytes);
        let origin = Origin { topic: INPUT_TOPIC, partition: 2, offset: 1000 + offset as i64, key, payload };
        let rec = record_for(&outcome, &origin, &topics, Mode::Live, usize::MAX);
        if *expect == "accepted" {
            assert_eq!(outcome.kind(), OutcomeKind::NoAction, "{outcome:?}");
            assert!(rec.is_none());
            continue;
        }
        let rec = rec.unwrap_or_else(|| panic!("{expect}: no record for {outcome:?}"));
        assert_eq!(rec.topic, "resetguard-dlq");
        assert_eq!(&rec.payload[..], &payload[..], "{expect}: the DLQ carries the original bytes untouched");
        assert_eq!(rec.key, key.unwrap_or_default(), "{expect}: the DLQ keeps the original key (empty when none)");
        let hs = headers_object(&rec.headers);
        let errs = errors(&dlq, &hs);
        assert!(errs.is_empty(), "{expect}: DLQ headers do not match the schema: {errs:?}\n{hs:#}");
        assert_eq!(header(&hs, "reason"), *expect, "{hs}");
        assert_eq!(header(&hs, "outcome"), outcome.kind().as_str());
        assert_eq!(header(&hs, "source_topic"), INPUT_TOPIC);
        assert_eq!(header(&hs, "source_partition"), "2");
        assert_eq!(header(&hs, "source_offset"), (1000 + offset).to_string());
        *checked.entry(header(&hs, "outcome").to_string()).or_default() += 1;
    }
    assert_eq!(checked.get("duplicate"), Some(&1), "{checked:?}");
    assert_eq!(checked.get("late"), Some(&1), "{checked:?}");
    assert_eq!(checked.get("rejected"), Some(&10), "{checked:?}");

    // Every reject reason of the decoder is a reason the schema allows for outcome=rejected...
    let base = json!({
        "outcome": "rejected", "reason": "", "detail": "d", "source_topic": INPUT_TOPIC,
        "source_partition": "0", "source_offset": "0"
    });
    for r in RejectReason::ALL {
        let mut h = base.clone();
        h["reason"] = json!(r.as_str());
        assert!(dlq.is_valid(&h), "reject reason {r} is missing from the DLQ schema");
    }
    // ... and the schema refuses what resetguard never writes.
    let refused: [(&str, Value); 9] = [
        ("late with a reject reason", json!({"outcome": "late", "reason": "oversize"})),
        ("rejected with a late reason", json!({"outcome": "rejected", "reason": "behind_watermark"})),
        ("duplicate with a late reason", json!({"outcome": "duplicate", "reason": "behind_watermark"})),
        ("unknown outcome", json!({"outcome": "notice", "reason": "event_id_seen"})),
        ("unknown reason", json!({"reason": "cosmic_rays"})),
        ("partition not decimal", json!({"source_partition": "0x2"})),
        ("negative offset", json!({"source_offset": "-1"})),
        ("null header", json!({"detail": null})),
        ("extra header", json!({"traceparent": "00-abc"})),
    ];
    for (what, patch) in &refused {
        let mut h = base.clone();
        h["reason"] = json!("oversize");
        for (k, v) in patch.as_object().expect("object") {
            h[k] = v.clone();
        }
        assert!(!dlq.is_valid(&h), "the DLQ schema accepts headers with {what}: {h}");
    }
    let mut missing = base.clone();
    missing["reason"] = json!("oversize");
    missing.as_object_mut().map(|o| o.remove("source_offset"));
    assert!(!dlq.is_valid(&missing), "a missing header");
    assert_eq!(RejectReason::ALL.len(), 18);
}

// ------------------------------------------------------------------------------------------------
// Input contract: schema ⇔ decoder
// ------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Accept,
    Reject(RejectReason),
}

struct Case {
    name: String,
    text: String,
    expect: Expect,
}

fn base_event() -> Map<String, Value> {
    let v = json!({
        "event_id": "evt-0001",
        "account_id": "acct-1",
        "occurred_at": "2026-05-28T20:26:40Z",
        "source": "auth-service",
        "signal": "failed_login",
        "risk": 0.5
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

struct Table(Vec<Case>);

impl Table {
    fn raw(&mut self, name: impl Into<String>, text: impl Into<String>, expect: Expect) {
        self.0.push(Case { name: name.into(), text: text.into(), expect });
    }
    /// The base event with `field` set to `value`.
    fn set(&mut self, name: impl Into<String>, field: &str, value: Value, expect: Expect) {
        let mut m = base_event();
        m.insert(field.to_string(), value);
        self.raw(name, Value::Object(m).to_string(), expect);
    }
    fn without(&mut self, field: &str, expect: Expect) {
        let mut m = base_event();
        assert!(m.remove(field).is_some());
        self.raw(format!("missing {field}"), Value::Object(m).to_string(), expect);
    }
}

fn agreement_cases() -> Vec<Case> {
    use Expect::{Accept, Reject};
    use RejectReason as R;
    let mut t = Table(Vec::new());

    // Valid events.
    t.raw("base event", Value::Object(base_event()).to_string(), Accept);
    let mut full = base_event();
    for (k, v) in [
        ("ip", json!("2001:db8::1")),
        ("country", json!("FR")),
        ("device_id", json!("dev-42")),
        ("user_agent", json!("Mozilla/5.0")),
        ("attributes", json!({"a": [1, {"b": 2}], "c": "d"})),
        ("schema_version", json!(1)),
    ] {
        full.insert(k.into(), v);
    }
    t.raw("every optional field", Value::Object(full.clone()).to_string(), Accept);
    let mut nulls = base_event();
    for k in ["ip", "country", "device_id", "user_agent", "attributes", "schema_version"] {
        nulls.insert(k.into(), Value::Null);
        t.set(format!("{k} null"), k, Value::Null, Accept);
    }
    t.raw("every optional field null", Value::Object(nulls).to_string(), Accept);
    for s in DEFAULT_SIGNALS {
        t.set(format!("signal {s}"), "signal", json!(s), Accept);
    }
    t.set("risk integer 0", "risk", json!(0), Accept);
    t.set("risk integer 1", "risk", json!(1), Accept);
    t.set("risk 1.0", "risk", json!(1.0), Accept);
    t.set("risk tiny", "risk", json!(1e-300), Accept);
    t.set("event_id at 128", "event_id", json!("e".repeat(128)), Accept);
    t.set("event_id 128 two-byte chars", "event_id", json!("é".repeat(128)), Accept);
    t.set("account_id at 256", "account_id", json!("a".repeat(256)), Accept);
    t.set("source 64 astral chars", "source", json!("😀".repeat(64)), Accept);
    t.set("event_id of a single char", "event_id", json!("x"), Accept);
    t.set("ip at 64", "ip", json!("1".repeat(64)), Accept);
    t.set("country at 8", "country", json!("c".repeat(8)), Accept);
    t.set("device_id at 256", "device_id", json!("d".repeat(256)), Accept);
    t.set("user_agent at 1024", "user_agent", json!("u".repeat(1024)), Accept);
    t.set("empty optional string", "ip", json!(""), Accept);
    t.set("control char in an optional field", "user_agent", json!("a\tb\u{0}"), Accept);
    t.set("C1 control (U+0085) in event_id", "event_id", json!("a\u{85}b"), Accept);
    t.set("DEL-free printable punctuation", "event_id", json!("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"), Accept);
    t.set("occurred_at with offset and fraction", "occurred_at", json!("2026-05-28T22:26:40.123456+02:00"), Accept);
    t.set("occurred_at lower-case t and z", "occurred_at", json!("2026-05-28t20:26:40z"), Accept);
    t.set("occurred_at leap second at 23:59:60Z", "occurred_at", json!("2016-12-31T23:59:60Z"), Accept);
    t.set("occurred_at 29 February of a leap year", "occurred_at", json!("2024-02-29T00:00:00Z"), Accept);
    t.set("attributes empty object", "attributes", json!({}), Accept);
    t.raw("escaped strings", r#"{"event_id":"e\u002d1","account_id":"acct\/1","occurred_at":"2026-05-28T20:26:40Z","source":"auth","signal":"failed_\u006cogin","risk":0.5}"#, Accept);

    // Missing required fields.
    for f in REQUIRED {
        t.without(f, Reject(R::MissingField));
    }
    t.raw("empty object", "{}", Reject(R::MissingField));

    // Wrong types.
    t.set("event_id number", "event_id", json!(17), Reject(R::InvalidType));
    t.set("event_id null", "event_id", Value::Null, Reject(R::InvalidType));
    t.set("account_id object", "account_id", json!({"id": 1}), Reject(R::InvalidType));
    t.set("occurred_at epoch millis", "occurred_at", json!(T0), Reject(R::InvalidType));
    t.set("source bool", "source", json!(true), Reject(R::InvalidType));
    t.set("signal array", "signal", json!(["failed_login"]), Reject(R::InvalidType));
    t.set("risk string", "risk", json!("0.5"), Reject(R::InvalidType));
    t.set("risk null", "risk", Value::Null, Reject(R::InvalidType));
    t.set("risk bool", "risk", json!(true), Reject(R::InvalidType));
    t.set("ip number", "ip", json!(192), Reject(R::InvalidType));
    t.set("country array", "country", json!(["FR"]), Reject(R::InvalidType));
    t.set("device_id number", "device_id", json!(1), Reject(R::InvalidType));
    t.set("user_agent object", "user_agent", json!({}), Reject(R::InvalidType));
    t.set("attributes array", "attributes", json!([1]), Reject(R::InvalidType));
    t.set("attributes string", "attributes", json!("k=v"), Reject(R::InvalidType));
    t.set("attributes number", "attributes", json!(3), Reject(R::InvalidType));
    t.set("schema_version string", "schema_version", json!("1"), Reject(R::InvalidType));
    t.set("schema_version negative", "schema_version", json!(-1), Reject(R::InvalidType));
    t.set("schema_version beyond u32", "schema_version", json!(4_294_967_297u64), Reject(R::InvalidType));
    t.set("schema_version fractional", "schema_version", json!(1.5), Reject(R::InvalidType));
    t.raw("top-level array", "[1,2]", Reject(R::NotAnObject));
    t.raw("top-level string", "\"event\"", Reject(R::NotAnObject));
    t.raw("top-level null", "null", Reject(R::NotAnObject));

    // Risk out of range.
    t.set("risk above 1", "risk", json!(1.5), Reject(R::RiskOutOfRange));
    t.set("risk just above 1", "risk", json!(1.000_001), Reject(R::RiskOutOfRange));
    t.set("risk negative", "risk", json!(-0.1), Reject(R::RiskOutOfRange));
    t.set("risk huge integer", "risk", json!(u64::MAX), Reject(R::RiskOutOfRange));

    // Lengths.
    t.set("event_id empty", "event_id", json!(""), Reject(R::FieldLength));
    t.set("event_id at 129", "event_id", json!("e".repeat(129)), Reject(R::FieldLength));
    t.set("event_id 129 two-byte chars", "event_id", json!("é".repeat(129)), Reject(R::FieldLength));
    t.set("account_id empty", "account_id", json!(""), Reject(R::FieldLength));
    t.set("account_id at 257", "account_id", json!("a".repeat(257)), Reject(R::FieldLength));
    t.set("occurred_at empty", "occurred_at", json!(""), Reject(R::FieldLength));
    t.set(
        "occurred_at at 65",
        "occurred_at",
        json!(format!("2026-05-28T20:26:40.{}Z", "1".repeat(45))),
        Reject(R::FieldLength),
    );
    t.set("source empty", "source", json!(""), Reject(R::FieldLength));
    t.set("source 65 astral chars", "source", json!("😀".repeat(65)), Reject(R::FieldLength));
    t.set("signal empty", "signal", json!(""), Reject(R::FieldLength));
    t.set("signal at 65", "signal", json!("s".repeat(65)), Reject(R::FieldLength));
    t.set("ip at 65", "ip", json!("1".repeat(65)), Reject(R::FieldLength));
    t.set("country at 9", "country", json!("c".repeat(9)), Reject(R::FieldLength));
    t.set("device_id at 257", "device_id", json!("d".repeat(257)), Reject(R::FieldLength));
    t.set("user_agent at 1025", "user_agent", json!("u".repeat(1025)), Reject(R::FieldLength));

    // Unknown fields.
    t.set("unknown field", "ipv9", json!("x"), Reject(R::UnknownField));
    t.set("unknown field null", "extra", Value::Null, Reject(R::UnknownField));
    t.set("field name in another case", "Event_ID", json!("evt"), Reject(R::UnknownField));

    // Schema versions.
    t.set("schema_version 2", "schema_version", json!(2), Reject(R::UnsupportedSchemaVersion));
    t.set("schema_version 0", "schema_version", json!(0), Reject(R::UnsupportedSchemaVersion));

    // Control characters in the required strings.
    t.set("newline in event_id", "event_id", json!("e\n1"), Reject(R::ControlCharacters));
    t.set("NUL in event_id", "event_id", json!("e\u{0}1"), Reject(R::ControlCharacters));
    t.set("DEL in event_id", "event_id", json!("e\u{7f}1"), Reject(R::ControlCharacters));
    t.set("unit separator in event_id", "event_id", json!("e\u{1f}"), Reject(R::ControlCharacters));
    t.set("tab in account_id", "account_id", json!("a\tb"), Reject(R::ControlCharacters));
    t.set("CR in source", "source", json!("s\r"), Reject(R::ControlCharacters));
    t.set("escape in signal", "signal", json!("\u{1b}failed_login"), Reject(R::ControlCharacters));
    t.set("newline in occurred_at", "occurred_at", json!("2026-05-28T20:26:40Z\n"), Reject(R::ControlCharacters));

    // Timestamps (format: date-time, asserted).
    for (what, ts) in [
        ("words", "yesterday"),
        ("no offset", "2026-05-28T20:26:40"),
        ("date only", "2026-05-28"),
        ("30 February", "2026-02-30T00:00:00Z"),
        ("hour 24", "2026-05-28T24:00:00Z"),
        ("empty fraction", "2026-05-28T20:26:40.Z"),
        ("short offset", "2026-05-28T20:26:40+02"),
        ("two-digit year", "26-05-28T20:26:40Z"),
        ("trailing text", "2026-05-28T20:26:40Z later"),
    ] {
        t.set(format!("occurred_at {what}"), "occurred_at", json!(ts), Reject(R::InvalidTimestamp));
    }
    t.0
}

#[test]
fn input_schema_and_decoder_agree_on_every_case() {
    let schema = validator("login-risk-event.v1.schema.json");
    let policy = Policy::default_with_version("v1");
    let cases = agreement_cases();

    let mut disagreements = Vec::new();
    let mut wrong_reason = Vec::new();
    let (mut accepted, mut rejected) = (0, 0);
    let mut reasons = BTreeMap::<RejectReason, usize>::new();
    for c in &cases {
        let instance: Value =
            serde_json::from_str(&c.text).unwrap_or_else(|e| panic!("{}: case is not JSON: {e}", c.name));
        let schema_ok = schema.is_valid(&instance);
        let decoded = decode(c.text.as_bytes(), &policy, WALL);
        let got = match &decoded {
            Ok(_) => Expect::Accept,
            Err(r) => Expect::Reject(r.reason),
        };
        if got != c.expect {
            wrong_reason.push(format!("{}: decoder gave {got:?}, the case expects {:?}", c.name, c.expect));
        }
        if schema_ok != decoded.is_ok() {
            disagreements.push(format!(
                "{}: schema {} but decoder {:?}; schema errors: {:?}",
                c.name,
                if schema_ok { "accepts" } else { "rejects" },
                got,
                errors(&schema, &instance)
            ));
        }
        match got {
            Expect::Accept => accepted += 1,
            Expect::Reject(r) => {
                rejected += 1;
                *reasons.entry(r).or_default() += 1;
            }
        }
    }
    assert!(wrong_reason.is_empty(), "the table is out of date with the decoder:\n{}", wrong_reason.join("\n"));
    assert!(disagreements.is_empty(), "schema and decoder disagree:\n{}", disagreements.join("\n"));

    // Counts, so a table that silently shrinks fails.
    assert_eq!(cases.len(), 110, "cases");
    assert_eq!(accepted, 39, "cases both accept");
    assert_eq!(rejected, 71, "cases both reject");
    let expected: BTreeMap<RejectReason, usize> = [
        (RejectReason::MissingField, 7),
        (RejectReason::InvalidType, 20),
        (RejectReason::NotAnObject, 3),
        (RejectReason::RiskOutOfRange, 4),
        (RejectReason::FieldLength, 15),
        (RejectReason::UnknownField, 3),
        (RejectReason::UnsupportedSchemaVersion, 2),
        (RejectReason::ControlCharacters, 8),
        (RejectReason::InvalidTimestamp, 9),
    ]
    .into_iter()
    .collect();
    assert_eq!(reasons, expected, "rejections per reason");
}

/// Known disagreements between the input schema and the decoder. Each is pinned as it is today so
/// that a change on either side is noticed (and this table, the schema description or the decoder
/// is updated on purpose).
#[test]
fn known_divergences_between_schema_and_decoder_are_pinned() {
    use RejectReason as R;
    let schema = validator("login-risk-event.v1.schema.json");
    let policy = Policy::default_with_version("v1");
    let base = Value::Object(base_event()).to_string();
    let with = |field: &str, v: Value| {
        let mut m = base_event();
        m.insert(field.to_string(), v);
        Value::Object(m).to_string()
    };

    // (name, message, schema accepts?, decoder result)
    let cases: Vec<(&str, String, bool, Expect)> = vec![
        // Schema-valid messages the decoder rejects: a producer that validates against the schema
        // can still land in the DLQ.
        (
            "duplicate member (JSON Schema sees the last one)",
            base.replacen("\"risk\":0.5", "\"risk\":0.5,\"event_id\":\"other\"", 1),
            true,
            Expect::Reject(R::DuplicateField),
        ),
        (
            "signal not in the policy (policy-defined)",
            with("signal", json!("telepathy")),
            true,
            Expect::Reject(R::UnknownSignal),
        ),
        (
            "attributes over 4096 bytes (policy-defined)",
            with("attributes", json!({"blob": "x".repeat(5000)})),
            true,
            Expect::Reject(R::AttributesTooLarge),
        ),
        (
            "attributes nested 9 deep (policy-defined)",
            with("attributes", json!({"a":[[[[[[[[1]]]]]]]]})),
            true,
            Expect::Reject(R::AttributesTooDeep),
        ),
        (
            "message over 16384 bytes (policy-defined)",
            with("attributes", json!({})).replacen('{', &format!("{{{}", " ".repeat(17_000)), 1),
            true,
            Expect::Reject(R::Oversize),
        ),
        (
            "occurred_at after now + 5m (runtime)",
            with("occurred_at", json!("2999-01-01T00:00:00Z")),
            true,
            Expect::Reject(R::FutureTimestamp),
        ),
        // Messages the decoder (chrono's RFC 3339 parser) accepts but format date-time refuses: safe
        // for producers that follow the schema.
        (
            "occurred_at with a space instead of T",
            with("occurred_at", json!("2026-05-28 20:26:40Z")),
            false,
            Expect::Accept,
        ),
        (
            "occurred_at leap second outside 23:59 UTC",
            with("occurred_at", json!("2026-05-28T20:26:60Z")),
            false,
            Expect::Accept,
        ),
        (
            "occurred_at offset with U+2212 minus sign",
            with("occurred_at", json!("2026-05-28T20:26:40\u{2212}02:00")),
            false,
            Expect::Accept,
        ),
    ];
    let mut pinned = 0;
    let mut changed = Vec::new();
    for (name, text, schema_expect, decoder_expect) in &cases {
        let instance: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let schema_ok = schema.is_valid(&instance);
        let got = match decode(text.as_bytes(), &policy, WALL) {
            Ok(_) => Expect::Accept,
            Err(r) => Expect::Reject(r.reason),
        };
        if schema_ok != *schema_expect || got != *decoder_expect {
            changed.push(format!("{name}: schema accepts = {schema_ok} (pinned {schema_expect}), decoder {got:?} (pinned {decoder_expect:?})"));
        }
        assert_ne!(
            schema_ok,
            got == Expect::Accept,
            "{name} is no longer a divergence: move it to the agreement table"
        );
        pinned += 1;
    }
    assert!(changed.is_empty(), "a pinned divergence changed:\n{}", changed.join("\n"));
    assert_eq!(pinned, 9);

    // schema_version 1.0: serde refuses it for a u32 (invalid_type). In draft 2020-12 1.0 is an
    // integer equal to 1, so a conforming validator accepts it; jsonschema 0.30 happens to refuse
    // it because its multi-type check (`"type": ["integer", "null"]`) only counts numbers written
    // without a fraction as integers. Pin both readings: the schema as written (agrees with the
    // decoder under this crate), and the same rule with a single type, which this crate evaluates
    // per the spec (disagrees): a latent divergence for producers using other validators.
    let text = with("schema_version", json!(1.0));
    assert!(text.contains("\"schema_version\":1.0"), "{text}");
    let instance: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(decode(text.as_bytes(), &policy, WALL).map(|_| ()).map_err(|r| r.reason), Err(R::InvalidType));
    assert!(!schema.is_valid(&instance), "jsonschema 0.30 refuses 1.0 for [integer, null]");
    let mut spec_reading = load_schema("login-risk-event.v1.schema.json");
    spec_reading["properties"]["schema_version"] =
        json!({"anyOf": [{"type": "integer", "const": 1}, {"type": "null"}]});
    let spec_reading = jsonschema::validator_for(&spec_reading).expect("compiles");
    assert!(spec_reading.is_valid(&instance), "with a single type, 1.0 is an integer equal to 1");
}

// ------------------------------------------------------------------------------------------------
// AsyncAPI document
// ------------------------------------------------------------------------------------------------

#[test]
fn asyncapi_names_the_default_topics_and_existing_schemas() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let doc = std::fs::read_to_string(format!("{dir}/schemas/asyncapi.yaml")).expect("schemas/asyncapi.yaml");
    assert!(doc.starts_with("asyncapi: 3.0.0") || doc.contains("\nasyncapi: 3.0.0"), "AsyncAPI 3.0 document");
    let t = TopicsFile::default();
    let mut topics = 0;
    for topic in t.input.iter().chain([&t.notices, &t.shadow, &t.held, &t.dlq]) {
        assert!(doc.contains(&format!("address: {topic}\n")), "no channel with address {topic}");
        topics += 1;
    }
    assert_eq!(topics, 5);
    let mut refs = 0;
    for line in doc.lines() {
        if let Some(rest) = line.trim().strip_prefix("$ref: ") {
            let target = rest.trim().trim_matches(|c| c == '\'' || c == '"');
            if let Some(file) = target.split('#').next().filter(|f| !f.is_empty()) {
                let path = format!("{dir}/schemas/{}", file.trim_start_matches("./"));
                assert!(std::path::Path::new(&path).exists(), "asyncapi.yaml refers to a missing file {file}");
                refs += 1;
            }
        }
    }
    for file in [
        "login-risk-event.v1.schema.json",
        "reset-notice.v1.schema.json",
        "held-record.v1.schema.json",
        "dlq-record.v1.schema.json",
    ] {
        assert!(doc.contains(&format!("./{file}")), "asyncapi.yaml does not use {file}");
    }
    assert_eq!(refs, 4, "file references");
}
