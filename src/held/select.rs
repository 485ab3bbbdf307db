//! The pure part of working through held notices: which held records an action applies to
//! ([`Selector`]), reading a held record ([`parse_held`]) and turning it back into the notice the
//! pipeline would have sent ([`notice_json_from_held`]), the life of a held notice
//! (pending → released | discarded, first action wins: [`Ledger`]), and the control and audit
//! record formats. No IO, no clock.

use std::collections::HashMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::core::event::{format_rfc3339_ms, parse_rfc3339_ms};
use crate::core::outcome::{HELD_SCHEMA, NOTICE_SCHEMA};

/// Which held notices an action (or a listing) applies to. Every given criterion must match
/// (they are ANDed):
///
/// - `cell`: the breaker cell of the decision's source (`cell`) **or** the cell that held it
///   (`held.cell`, e.g. `global` for notices the global cell held);
/// - `source`: the trigger's source (`trigger.source`);
/// - `from_ms` (inclusive) and `to_ms` (exclusive): when the decision was held (`held.held_at`;
///   `decided_at` for a record without a readable `held_at`), milliseconds since the epoch.
///
/// `all` selects every held notice. Release and discard refuse a selector without any criterion
/// and without `all`, so everything is only ever released or discarded on purpose, and refuse
/// `all` together with a criterion (ambiguous). Listing accepts the empty selector (everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub cell: Option<String>,
    pub source: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub all: bool,
}

impl Selector {
    /// Selects everything (an explicit `all`).
    pub fn everything() -> Selector {
        Selector { all: true, ..Selector::default() }
    }

    /// Selects one cell.
    pub fn cell(cell: &str) -> Selector {
        Selector { cell: Some(cell.to_string()), ..Selector::default() }
    }

    fn has_criterion(&self) -> bool {
        self.cell.is_some() || self.source.is_some() || self.from_ms.is_some() || self.to_ms.is_some()
    }

    /// Checks the selector is well formed (non-empty names, `from` before `to`).
    pub fn check(&self) -> Result<(), String> {
        if self.cell.as_deref().is_some_and(str::is_empty) {
            return Err("cell must not be empty".into());
        }
        if self.source.as_deref().is_some_and(str::is_empty) {
            return Err("source must not be empty".into());
        }
        if let (Some(f), Some(t)) = (self.from_ms, self.to_ms) {
            if f >= t {
                return Err(format!("from ({}) must be before to ({})", format_rfc3339_ms(f), format_rfc3339_ms(t)));
            }
        }
        Ok(())
    }

    /// Checks the selector may drive a release or a discard: well formed, and either at least one
    /// criterion or `all`, not both.
    pub fn check_for_action(&self) -> Result<(), String> {
        self.check()?;
        match (self.all, self.has_criterion()) {
            (false, false) => Err(
                "select held notices by cell, source, from or to; acting on every held notice needs an explicit `all`"
                    .into(),
            ),
            (true, true) => Err("`all` cannot be combined with cell, source, from or to".into()),
            _ => Ok(()),
        }
    }

    /// Whether a held record is selected. The empty selector and `all` select everything.
    pub fn matches(&self, h: &HeldView) -> bool {
        if let Some(c) = &self.cell {
            if h.cell != *c && h.held_cell != *c {
                return false;
            }
        }
        if let Some(s) = &self.source {
            if h.source != *s {
                return false;
            }
        }
        if self.from_ms.is_some() || self.to_ms.is_some() {
            let Some(at) = h.held_at_ms.or(h.decided_at_ms) else { return false };
            if self.from_ms.is_some_and(|f| at < f) || self.to_ms.is_some_and(|t| at >= t) {
                return false;
            }
        }
        true
    }

    /// The selector as the `scope` of an audit record.
    pub fn scope(&self) -> Scope {
        Scope {
            cell: self.cell.clone(),
            source: self.source.clone(),
            from: self.from_ms.map(format_rfc3339_ms),
            to: self.to_ms.map(format_rfc3339_ms),
            all: self.all,
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.all {
            return f.write_str("all");
        }
        let mut parts = Vec::new();
        if let Some(c) = &self.cell {
            parts.push(format!("cell={c}"));
        }
        if let Some(s) = &self.source {
            parts.push(format!("source={s}"));
        }
        if let Some(t) = self.from_ms {
            parts.push(format!("from={}", format_rfc3339_ms(t)));
        }
        if let Some(t) = self.to_ms {
            parts.push(format!("to={}", format_rfc3339_ms(t)));
        }
        if parts.is_empty() {
            f.write_str("(nothing narrowed)")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

/// A selector as recorded in the audit topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub cell: Option<String>,
    pub source: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub all: bool,
}

/// The fields of a held record (`resetguard.held.v1`) that selection and release need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldView {
    pub notice_id: String,
    pub account_id: String,
    /// Breaker cell of the trigger's source.
    pub cell: String,
    /// The cell that held the decision (differs from `cell` e.g. for `global`).
    pub held_cell: String,
    pub held_reason: String,
    /// Trigger source.
    pub source: String,
    pub mode: String,
    pub policy_version: String,
    pub decided_at: String,
    pub held_at: String,
    pub decided_at_ms: Option<i64>,
    pub held_at_ms: Option<i64>,
}

#[derive(Deserialize)]
struct HeldWire {
    schema: String,
    notice_id: String,
    account_id: String,
    decided_at: String,
    mode: String,
    cell: String,
    trigger: TriggerWire,
    explanation: ExplanationWire,
    held: HeldInfoWire,
}

#[derive(Deserialize)]
struct TriggerWire {
    source: String,
}

#[derive(Deserialize)]
struct ExplanationWire {
    policy_version: String,
}

#[derive(Deserialize)]
struct HeldInfoWire {
    reason: String,
    cell: String,
    held_at: String,
}

/// Reads a held record. The error names what is wrong, never a value.
pub fn parse_held(bytes: &[u8]) -> Result<HeldView, String> {
    let w: HeldWire = serde_json::from_slice(bytes).map_err(|e| format!("not a held record: {}", category(&e)))?;
    if w.schema != HELD_SCHEMA {
        return Err(format!("schema is not {HELD_SCHEMA}"));
    }
    if w.notice_id.is_empty() || w.account_id.is_empty() {
        return Err("notice_id and account_id must not be empty".into());
    }
    Ok(HeldView {
        decided_at_ms: parse_rfc3339_ms(&w.decided_at),
        held_at_ms: parse_rfc3339_ms(&w.held.held_at),
        notice_id: w.notice_id,
        account_id: w.account_id,
        cell: w.cell,
        held_cell: w.held.cell,
        held_reason: w.held.reason,
        source: w.trigger.source,
        mode: w.mode,
        policy_version: w.explanation.policy_version,
        decided_at: w.decided_at,
        held_at: w.held.held_at,
    })
}

/// The error category only: serde_json's messages can quote input (an account id).
fn category(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "io",
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Data => "missing or mistyped member",
        serde_json::error::Category::Eof => "truncated JSON",
    }
}

/// The top-level members of a JSON object in document order, values kept as raw text.
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut v = Vec::new();
                while let Some((k, raw)) = map.next_entry::<String, Box<RawValue>>()? {
                    v.push((k, raw));
                }
                Ok(Members(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// The notice (`resetguard.notice.v1`) the pipeline would have sent for a held decision: the held
/// record with `schema` replaced and `held` dropped, every other member byte for byte and in
/// order, so it is identical to `Decision::notice_json` of the same decision.
pub fn notice_json_from_held(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let Members(members) = serde_json::from_slice(bytes).map_err(|e| format!("not a held record: {}", category(&e)))?;
    let mut saw_schema = false;
    let mut out = Vec::with_capacity(bytes.len());
    out.push(b'{');
    for (k, v) in &members {
        if k == "held" {
            continue;
        }
        if out.len() > 1 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, k).map_err(|e| e.to_string())?;
        out.push(b':');
        if k == "schema" {
            if serde_json::from_str::<&str>(v.get()).ok() != Some(HELD_SCHEMA) {
                return Err(format!("schema is not {HELD_SCHEMA}"));
            }
            saw_schema = true;
            serde_json::to_writer(&mut out, NOTICE_SCHEMA).map_err(|e| e.to_string())?;
        } else {
            out.extend_from_slice(v.get().as_bytes());
        }
    }
    out.push(b'}');
    if !saw_schema {
        return Err("schema member missing".into());
    }
    Ok(out)
}

/// The life of a held notice: `Pending` until the first action, which is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldState {
    Pending,
    Released,
    Discarded,
}

impl HeldState {
    pub fn as_str(self) -> &'static str {
        match self {
            HeldState::Pending => "pending",
            HeldState::Released => "released",
            HeldState::Discarded => "discarded",
        }
    }
}

/// What an operator does with a held notice; as written on the control topic (`action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldAction {
    Released,
    Discarded,
}

impl HeldAction {
    pub fn as_str(self) -> &'static str {
        match self {
            HeldAction::Released => "released",
            HeldAction::Discarded => "discarded",
        }
    }

    /// The state this action leads to.
    pub fn target(self) -> HeldState {
        match self {
            HeldAction::Released => HeldState::Released,
            HeldAction::Discarded => HeldState::Discarded,
        }
    }
}

/// The result of applying an action to a held notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Pending → the action's state.
    Done(HeldState),
    /// Already acted upon: nothing changes; says which state it stays in.
    NoOp { already: HeldState },
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Applied::Done(s) => write!(f, "now {}", s.as_str()),
            Applied::NoOp { already } => write!(f, "no change: already {}", already.as_str()),
        }
    }
}

/// The transition function: pending → released | discarded; anything else stays put.
pub fn transition(state: HeldState, action: HeldAction) -> Applied {
    match state {
        HeldState::Pending => Applied::Done(action.target()),
        done => Applied::NoOp { already: done },
    }
}

/// State of every held notice that was acted upon (absent: pending), built from the control
/// topic in offset order: the first action on a notice wins.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    states: HashMap<String, HeldState>,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    pub fn state(&self, notice_id: &str) -> HeldState {
        self.states.get(notice_id).copied().unwrap_or(HeldState::Pending)
    }

    /// Applies an action; a second action on the same notice is a no-op and says so.
    pub fn apply(&mut self, notice_id: &str, action: HeldAction) -> Applied {
        let applied = transition(self.state(notice_id), action);
        if let Applied::Done(s) = applied {
            self.states.insert(notice_id.to_string(), s);
        }
        applied
    }

    /// Notices acted upon, per state.
    pub fn count(&self, state: HeldState) -> usize {
        self.states.values().filter(|s| **s == state).count()
    }

    /// Number of notices acted upon.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
}

/// Key prefix of held-notice actions on the (compacted) control topic.
pub const CONTROL_PREFIX: &str = "held/";

/// Control topic key of a held notice: `held/<notice_id>`.
pub fn control_key(notice_id: &str) -> String {
    format!("{CONTROL_PREFIX}{notice_id}")
}

/// The notice id of a control key, if it is a held-notice key.
pub fn notice_id_of_control_key(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key).ok()?.strip_prefix(CONTROL_PREFIX).filter(|id| !id.is_empty())
}

/// Value of a control record `held/<notice_id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlValue {
    pub action: HeldAction,
    pub actor: String,
    pub reason: String,
    /// RFC 3339.
    pub at: String,
    /// Transactional id the action ran under (`<pipeline.group_id>-held-actions`).
    #[serde(default)]
    pub instance: String,
    /// Set on a release that found the notice already on the notices topic and only recorded it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub already_sent: bool,
}

/// An audit record (`topics.audit`): one per transaction of a release or a discard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at: String,
    pub actor: String,
    pub reason: String,
    /// `release` or `discard`.
    pub action: String,
    pub scope: Scope,
    /// Transactional id the action ran under (as in the pipeline's audit records).
    pub instance: String,
    /// Every notice acted upon in this transaction.
    pub notice_ids: Vec<String>,
    /// Of those, the ones a release found already sent (recorded as released, not sent again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub already_sent: Vec<String>,
}

/// Checks who acts and why: the shared rules of [`crate::core::rules`].
pub use crate::core::rules::check_actor_reason;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::{Engine, Outcome, Policy, TimeMode};

    /// Real held records from the engine: one source floods until its cell trips.
    fn held_outcomes() -> Vec<Outcome> {
        let policy = Arc::new(Policy::default_with_version("sel-1"));
        let mut e = Engine::new(policy, crate::core::hash::Keys::demo(), TimeMode::Wall);
        let t0 = 1_700_000_000_000_i64;
        let mut held = Vec::new();
        for i in 0..300 {
            let ev = format!(
                r#"{{"event_id":"e{i}","account_id":"acct-{i}","occurred_at":"{}","source":"buggy-model","signal":"breached_password","risk":1.0}}"#,
                format_rfc3339_ms(t0 + i)
            );
            let p = e.process(ev.as_bytes(), 0, t0 + i);
            if matches!(p.outcome, Outcome::Held(..)) {
                held.push(p.outcome);
            }
        }
        assert!(held.len() > 100, "the spike must be held");
        held
    }

    #[test]
    fn notice_rebuilt_from_a_held_record_is_byte_identical_to_the_pipelines_notice() {
        for o in held_outcomes() {
            let Outcome::Held(d, info) = &o else { unreachable!() };
            let held = d.held_json(info);
            assert_eq!(notice_json_from_held(&held).unwrap(), d.notice_json());
            let v = parse_held(&held).unwrap();
            assert_eq!(v.notice_id, d.notice_id);
            assert_eq!(v.cell, "buggy-model");
            assert_eq!(v.source, "buggy-model");
            assert_eq!(v.policy_version, "sel-1");
            assert_eq!(v.held_at_ms, parse_rfc3339_ms(&info.held_at));
        }
    }

    #[test]
    fn a_notice_or_garbage_is_not_a_held_record() {
        let o = &held_outcomes()[0];
        let Outcome::Held(d, _) = o else { unreachable!() };
        assert!(parse_held(&d.notice_json()).is_err());
        assert!(notice_json_from_held(&d.notice_json()).is_err());
        assert!(parse_held(b"{\"schema\":").is_err());
        assert!(notice_json_from_held(b"[1,2]").is_err());
        // The error never echoes values.
        let err = parse_held(br#"{"schema":"resetguard.held.v1","account_id":"secret-account"}"#).unwrap_err();
        assert!(!err.contains("secret-account"), "{err}");
    }

    fn view(
        cell: &str,
        held_cell: &str,
        source: &str,
        held_at_ms: Option<i64>,
        decided_at_ms: Option<i64>,
    ) -> HeldView {
        HeldView {
            notice_id: "rn_1".into(),
            account_id: "a".into(),
            cell: cell.into(),
            held_cell: held_cell.into(),
            held_reason: "spike".into(),
            source: source.into(),
            mode: "live".into(),
            policy_version: "v".into(),
            decided_at: String::new(),
            held_at: String::new(),
            decided_at_ms,
            held_at_ms,
        }
    }

    #[test]
    fn selector_criteria_are_anded_and_time_is_half_open() {
        let h = view("buggy", "buggy", "buggy", Some(1_000), Some(900));
        assert!(Selector::default().matches(&h));
        assert!(Selector::everything().matches(&h));
        assert!(Selector::cell("buggy").matches(&h));
        assert!(!Selector::cell("other").matches(&h));
        let g = view("auth", "global", "auth", Some(1_000), None);
        assert!(Selector::cell("global").matches(&g), "the cell that held it");
        assert!(Selector::cell("auth").matches(&g), "the source's cell");
        let s =
            Selector { source: Some("buggy".into()), from_ms: Some(1_000), to_ms: Some(2_000), ..Selector::default() };
        assert!(s.matches(&h));
        assert!(!Selector { from_ms: Some(1_001), ..s.clone() }.matches(&h));
        assert!(!Selector { to_ms: Some(1_000), from_ms: None, ..s.clone() }.matches(&h), "to is exclusive");
        assert!(!Selector { source: Some("x".into()), ..s.clone() }.matches(&h));
        // decided_at stands in for an unreadable held_at; no time at all never matches a range.
        let d = view("c", "c", "s", None, Some(1_500));
        assert!(s.clone().matches(&view("buggy", "buggy", "buggy", None, Some(1_500))));
        assert!(!Selector { to_ms: Some(1_400), ..Selector::default() }.matches(&d));
        assert!(!Selector { from_ms: Some(0), ..Selector::default() }.matches(&view("c", "c", "s", None, None)));
        assert!(Selector { cell: Some("c".into()), ..Selector::default() }.matches(&view("c", "c", "s", None, None)));
    }

    #[test]
    fn acting_on_everything_needs_an_explicit_all() {
        assert!(Selector::default().check_for_action().is_err());
        assert!(Selector::default().check().is_ok(), "listing everything is fine");
        assert!(Selector::everything().check_for_action().is_ok());
        assert!(Selector::cell("c").check_for_action().is_ok());
        assert!(Selector { from_ms: Some(5), ..Selector::default() }.check_for_action().is_ok());
        assert!(Selector { all: true, cell: Some("c".into()), ..Selector::default() }.check_for_action().is_err());
        assert!(Selector::cell("").check_for_action().is_err());
        assert!(Selector { from_ms: Some(5), to_ms: Some(5), ..Selector::default() }.check_for_action().is_err());
        let scope = Selector { cell: Some("c".into()), from_ms: Some(0), ..Selector::default() }.scope();
        assert_eq!(
            serde_json::to_string(&scope).unwrap(),
            r#"{"cell":"c","source":null,"from":"1970-01-01T00:00:00.000Z","to":null,"all":false}"#
        );
    }

    #[test]
    fn first_action_wins_and_later_ones_say_so() {
        let mut l = Ledger::new();
        assert_eq!(l.state("a"), HeldState::Pending);
        assert_eq!(l.apply("a", HeldAction::Released), Applied::Done(HeldState::Released));
        assert_eq!(l.apply("a", HeldAction::Discarded), Applied::NoOp { already: HeldState::Released });
        assert_eq!(l.apply("a", HeldAction::Released), Applied::NoOp { already: HeldState::Released });
        assert_eq!(l.apply("b", HeldAction::Discarded), Applied::Done(HeldState::Discarded));
        assert_eq!(l.apply("b", HeldAction::Released).to_string(), "no change: already discarded");
        assert_eq!((l.count(HeldState::Released), l.count(HeldState::Discarded), l.len()), (1, 1, 2));
        for s in [HeldState::Released, HeldState::Discarded] {
            for a in [HeldAction::Released, HeldAction::Discarded] {
                assert_eq!(transition(s, a), Applied::NoOp { already: s });
            }
        }
    }

    #[test]
    fn control_keys_and_values() {
        assert_eq!(control_key("rn_ab"), "held/rn_ab");
        assert_eq!(notice_id_of_control_key(b"held/rn_ab"), Some("rn_ab"));
        assert_eq!(notice_id_of_control_key(b"breaker/buggy"), None);
        assert_eq!(notice_id_of_control_key(b"held/"), None);
        let v = ControlValue {
            action: HeldAction::Released,
            actor: "ana".into(),
            reason: "INC-1".into(),
            at: "t".into(),
            instance: "rg-release".into(),
            already_sent: false,
        };
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"action":"released","actor":"ana","reason":"INC-1","at":"t","instance":"rg-release"}"#
        );
        let back: ControlValue =
            serde_json::from_str(r#"{"action":"discarded","actor":"a","reason":"r","at":"t"}"#).unwrap();
        assert_eq!(back.action, HeldAction::Discarded);
    }

    #[test]
    fn actor_and_reason_are_required() {
        assert!(check_actor_reason("ana", "INC-1").is_ok());
        assert!(check_actor_reason("", "INC-1").is_err());
        assert!(check_actor_reason("ana", "  ").is_err());
        assert!(check_actor_reason("ana\n", "INC-1").is_err());
    }
}
