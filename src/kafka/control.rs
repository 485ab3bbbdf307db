//! The control plane shared by the fleet: breaker overrides and allow-list changes are written
//! to the compacted control topic (and each manual action to the audit topic) in the same
//! transaction as the outputs, and every instance applies the control records of the others.
//! Record formats here; the pipeline does the IO.

use serde::{Deserialize, Serialize};

/// Value of `override/<cell>` in the control topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverrideRecord {
    pub cell: String,
    /// true: forced open; false: forced closed.
    pub open: bool,
    /// Until when; an override with `until_ms <= at_ms` is a clear.
    pub until_ms: i64,
    pub at_ms: i64,
    pub actor: String,
    pub reason: String,
    /// Transactional id of the instance that took the action.
    pub instance: String,
}

/// Value of `allow/<account id>` in the control topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllowRecord {
    pub account_id: String,
    /// `None`: removed from the allow-list.
    pub expires_ms: Option<i64>,
    pub at_ms: i64,
    pub actor: String,
    pub reason: String,
    pub instance: String,
}

/// One record of the audit topic: who did what, why, when, to what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at: String,
    pub actor: String,
    pub reason: String,
    pub action: String,
    pub scope: serde_json::Value,
    pub instance: String,
}

/// Value of `policy/version`: the policy version the fleet last ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyVersionRecord {
    pub version: String,
    pub at_ms: i64,
    pub instance: String,
}

pub const POLICY_VERSION_KEY: &str = "policy/version";

/// Value of `trip/<cell>`: a cell this instance's breaker tripped on its own (spike, replay
/// suspected). Every other instance opens the same cell with cause `fleet_trip`, its open
/// duration counted from `at_ms`, so a fleet trips like one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TripRecord {
    pub cell: String,
    pub at_ms: i64,
    /// The trip's cause on the instance that tripped (`spike`, `spike_while_probing`, ...).
    pub cause: String,
    /// Decisions in the cell's minute and the threshold they crossed, on that instance.
    pub decisions_this_minute: u32,
    pub threshold: f64,
    pub instance: String,
}

pub fn trip_key(cell: &str) -> String {
    format!("trip/{cell}")
}

/// A control record, parsed from its key and value.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    Override(OverrideRecord),
    Allow(AllowRecord),
    PolicyVersion(PolicyVersionRecord),
    Trip(TripRecord),
    /// Other keys (e.g. `held/<notice_id>`, written by `resetguard held`) are not the pipeline's.
    Other,
}

pub fn override_key(cell: &str) -> String {
    format!("override/{cell}")
}

pub fn allow_key(account_id: &str) -> String {
    format!("allow/{account_id}")
}

/// Parses a control record; malformed ones are `None` (logged by the caller, never fatal).
pub fn parse(key: &[u8], value: Option<&[u8]>) -> Option<Control> {
    let key = std::str::from_utf8(key).ok()?;
    let value = value?;
    if key.starts_with("override/") {
        serde_json::from_slice(value).ok().map(Control::Override)
    } else if key == POLICY_VERSION_KEY {
        serde_json::from_slice(value).ok().map(Control::PolicyVersion)
    } else if key.starts_with("allow/") {
        serde_json::from_slice(value).ok().map(Control::Allow)
    } else if key.starts_with("trip/") {
        serde_json::from_slice(value).ok().map(Control::Trip)
    } else {
        Some(Control::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_records_round_trip_through_key_and_value() {
        let o = OverrideRecord {
            cell: "risk-model-v7".into(),
            open: true,
            until_ms: 2,
            at_ms: 1,
            actor: "sre".into(),
            reason: "incident 42".into(),
            instance: "rg-0".into(),
        };
        let v = serde_json::to_vec(&o).unwrap();
        assert_eq!(parse(override_key("risk-model-v7").as_bytes(), Some(&v)), Some(Control::Override(o)));
        assert_eq!(parse(b"held/rn_x", Some(b"{}")), Some(Control::Other));
        let t = TripRecord {
            cell: "buggy-model".into(),
            at_ms: 5,
            cause: "spike".into(),
            decisions_this_minute: 31,
            threshold: 30.0,
            instance: "rg-1".into(),
        };
        let v = serde_json::to_vec(&t).unwrap();
        assert_eq!(parse(trip_key("buggy-model").as_bytes(), Some(&v)), Some(Control::Trip(t)));
        assert_eq!(parse(b"trip/x", Some(b"{}")), None);
        assert_eq!(parse(b"override/x", Some(b"not json")), None);
        assert_eq!(parse(b"override/x", None), None);
    }
}
