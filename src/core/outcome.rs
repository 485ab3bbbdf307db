//! Outcomes of the core: exactly one per input event, and the decision records (notice / held)
//! with their explanation and deterministic `notice_id`. Pure data plus serialization.

use serde::Serialize;

use super::breaker::HeldReason;
use super::event::{RejectReason, Rejection};

/// Why an event led to no action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoActionReason {
    BelowThreshold,
    Cooldown,
    AllowListed,
}

impl NoActionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            NoActionReason::BelowThreshold => "below_threshold",
            NoActionReason::Cooldown => "cooldown",
            NoActionReason::AllowListed => "allow_listed",
        }
    }
}

/// The one recorded outcome of an input event.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Rejected(Rejection),
    Duplicate,
    Late { event_ms: i64, watermark_ms: i64 },
    NoAction(NoActionReason),
    Notice(Box<Decision>),
    Held(Box<Decision>, HeldInfo),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    Rejected,
    Duplicate,
    Late,
    NoAction,
    Notice,
    Held,
}

impl OutcomeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Rejected => "rejected",
            OutcomeKind::Duplicate => "duplicate",
            OutcomeKind::Late => "late",
            OutcomeKind::NoAction => "no_action",
            OutcomeKind::Notice => "notice",
            OutcomeKind::Held => "held",
        }
    }
}

impl Outcome {
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Rejected(_) => OutcomeKind::Rejected,
            Outcome::Duplicate => OutcomeKind::Duplicate,
            Outcome::Late { .. } => OutcomeKind::Late,
            Outcome::NoAction(_) => OutcomeKind::NoAction,
            Outcome::Notice(_) => OutcomeKind::Notice,
            Outcome::Held(..) => OutcomeKind::Held,
        }
    }

    /// The reason label of this outcome (`""` for duplicate, late and notice).
    pub fn reason(&self) -> &'static str {
        match self {
            Outcome::Rejected(r) => r.reason.as_str(),
            Outcome::NoAction(w) => w.as_str(),
            Outcome::Held(_, h) => h.reason.as_str(),
            _ => "",
        }
    }

    pub fn reject_reason(&self) -> Option<RejectReason> {
        match self {
            Outcome::Rejected(r) => Some(r.reason),
            _ => None,
        }
    }

    pub fn decision(&self) -> Option<&Decision> {
        match self {
            Outcome::Notice(d) | Outcome::Held(d, _) => Some(d),
            _ => None,
        }
    }
}

/// Why and where a decision was held.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeldInfo {
    pub reason: HeldReason,
    pub cell: String,
    pub held_at: String,
}

/// Which window decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    Short,
    Slow,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowInfo {
    pub kind: WindowKind,
    pub length_seconds: u64,
    pub start: String,
    pub end: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignalContribution {
    pub signal: String,
    pub count: u32,
    /// Sum of weight × risk before the per-signal cap.
    pub sum: f32,
    /// What counted toward the score, after the cap.
    pub counted: f32,
    pub sources: Vec<String>,
}

/// Why the account must reset its password.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub score: f32,
    pub threshold: f32,
    pub window: WindowInfo,
    pub contributions: Vec<SignalContribution>,
    /// Up to 10 `event_id`s of the window, oldest first.
    pub evidence: Vec<String>,
    pub policy_version: String,
}

/// The event that pushed the score over the threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trigger {
    pub event_id: String,
    pub source: String,
    pub occurred_at: String,
}

/// A decision that an account must reset its password: the payload of a notice or held record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub notice_id: String,
    pub account_id: String,
    pub decided_at: String,
    /// `live` or `shadow` (a would-be notice).
    pub mode: &'static str,
    /// Breaker cell of the trigger's source.
    pub cell: String,
    pub trigger: Trigger,
    pub explanation: Explanation,
    #[serde(skip)]
    pub event_ms: i64,
}

/// The notice record for the mailer (`password-reset-notices`), schema `resetguard.notice.v1`.
#[derive(Debug, Serialize)]
pub struct NoticeRecord<'a> {
    pub schema: &'static str,
    #[serde(flatten)]
    pub decision: &'a Decision,
}

/// The held record (`password-reset-held`), schema `resetguard.held.v1`.
#[derive(Debug, Serialize)]
pub struct HeldRecord<'a> {
    pub schema: &'static str,
    #[serde(flatten)]
    pub decision: &'a Decision,
    pub held: &'a HeldInfo,
}

pub const NOTICE_SCHEMA: &str = "resetguard.notice.v1";
pub const HELD_SCHEMA: &str = "resetguard.held.v1";

impl Decision {
    pub fn notice_json(&self) -> Vec<u8> {
        serde_json::to_vec(&NoticeRecord { schema: NOTICE_SCHEMA, decision: self }).unwrap_or_default()
    }

    pub fn held_json(&self, held: &HeldInfo) -> Vec<u8> {
        serde_json::to_vec(&HeldRecord { schema: HELD_SCHEMA, decision: self, held }).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::breaker::HeldReason;

    fn decision() -> Decision {
        Decision {
            notice_id: "n-1".into(),
            account_id: "acct \"1\"".into(),
            decided_at: "2026-11-26T10:00:00.000Z".into(),
            mode: "live",
            cell: "device-intel".into(),
            trigger: Trigger {
                event_id: "e-2".into(),
                source: "device-intel".into(),
                occurred_at: "2026-11-26T09:59:59.000Z".into(),
            },
            explanation: Explanation {
                score: 1.5,
                threshold: 1.0,
                window: WindowInfo { kind: WindowKind::Short, length_seconds: 900, start: "s".into(), end: "e".into() },
                contributions: vec![SignalContribution {
                    signal: "impossible_travel".into(),
                    count: 1,
                    sum: 0.9,
                    counted: 0.9,
                    sources: vec!["device-intel".into()],
                }],
                evidence: vec!["e-1".into(), "e-2".into()],
                policy_version: "v1".into(),
            },
            event_ms: 42,
        }
    }

    #[test]
    fn records_carry_the_decision_members_inline_in_order() {
        let d = decision();
        let alone = serde_json::to_string(&d).unwrap();
        assert!(!alone.contains("event_ms"), "{alone}");
        let inner = &alone[1..alone.len() - 1];
        let notice = String::from_utf8(d.notice_json()).unwrap();
        assert_eq!(notice, format!("{{\"schema\":\"{NOTICE_SCHEMA}\",{inner}}}"));
        let info = HeldInfo { reason: HeldReason::Spike, cell: "device-intel".into(), held_at: "h".into() };
        let held = String::from_utf8(d.held_json(&info)).unwrap();
        let info_json = serde_json::to_string(&info).unwrap();
        assert_eq!(held, format!("{{\"schema\":\"{HELD_SCHEMA}\",{inner},\"held\":{info_json}}}"));
        let v: serde_json::Value = serde_json::from_str(&notice).unwrap();
        assert_eq!(v["account_id"], "acct \"1\"");
        assert_eq!(v["explanation"]["contributions"][0]["sources"][0], "device-intel");
    }
}
