//! What the incident console shows of the held queue and the topics around it: pending held
//! notices grouped by cell, source, reason and minute; the audit trail; the last notices sent.
//! Reading does IO (Kafka, read_committed, through this module's reader; nothing is written);
//! the shaping ([`group`], [`audit_entry`], [`notice_entry`]) is pure.
//!
//! Account ids are left out unless asked for (`with_accounts`): the console shows counts and
//! notice ids by default.

use std::collections::BTreeMap;

use rdkafka::message::{Headers, Message};
use serde::Serialize;

use crate::config::Settings;
use crate::core::event::{format_rfc3339_ms, parse_rfc3339_ms};

use super::{listing, tail, HeldError, HeldItem, Selector};

/// Pending held notices that share cell, holding cell, source, reason and minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldGroup {
    /// Breaker cell of the decision's source.
    pub cell: String,
    /// The cell that held it (`global` when the global cell did).
    pub held_cell: String,
    pub source: String,
    pub reason: String,
    /// Start of the minute the notices were held in (RFC 3339, UTC).
    pub minute: String,
    pub count: usize,
}

/// The held queue as the console shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeldGroups {
    pub pending: usize,
    pub released: usize,
    pub discarded: usize,
    pub unreadable: usize,
    /// Newest minute first; within a minute by count, largest first.
    pub groups: Vec<HeldGroup>,
}

/// Groups pending held notices by (cell, holding cell, source, reason, minute held). Pure.
pub fn group(items: &[HeldItem]) -> Vec<HeldGroup> {
    let mut counts: BTreeMap<(i64, &str, &str, &str, &str), usize> = BTreeMap::new();
    for i in items {
        let at = parse_rfc3339_ms(&i.held_at).or_else(|| parse_rfc3339_ms(&i.decided_at)).unwrap_or(0);
        let minute = at.div_euclid(60_000) * 60_000;
        *counts.entry((minute, &i.cell, &i.held_cell, &i.source, &i.held_reason)).or_default() += 1;
    }
    let mut groups: Vec<(i64, HeldGroup)> = counts
        .into_iter()
        .map(|((minute, cell, held_cell, source, reason), count)| {
            let g = HeldGroup {
                cell: cell.to_string(),
                held_cell: held_cell.to_string(),
                source: source.to_string(),
                reason: reason.to_string(),
                minute: format_rfc3339_ms(minute),
                count,
            };
            (minute, g)
        })
        .collect();
    groups.sort_by(|(ma, a), (mb, b)| mb.cmp(ma).then(b.count.cmp(&a.count)).then(a.cell.cmp(&b.cell)));
    groups.into_iter().map(|(_, g)| g).collect()
}

/// Reads the held topic and the control topic to their end and groups the pending notices.
pub fn held_groups(settings: &Settings) -> Result<HeldGroups, HeldError> {
    let l = listing(settings, &Selector::default())?;
    Ok(HeldGroups {
        pending: l.pending,
        released: l.released,
        discarded: l.discarded,
        unreadable: l.unreadable,
        groups: group(&l.items),
    })
}

/// One record of the audit topic: a breaker override, an allow-list change, a release or a
/// discard of held notices.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub at: String,
    pub actor: String,
    pub reason: String,
    pub action: String,
    /// What the action applied to; an allow-list change's `account_id` is hidden unless asked for.
    pub scope: serde_json::Value,
    /// Notices a release or discard acted upon in this record's transaction.
    pub notices: usize,
    pub instance: String,
}

/// Reads an audit record (either shape: `kafka::control::AuditRecord` or
/// `held::AuditRecord`). `None` for a record that is not an audit record. Pure.
pub fn audit_entry(payload: &[u8], with_accounts: bool) -> Option<AuditEntry> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let text = |k: &str| v.get(k).and_then(serde_json::Value::as_str).map(str::to_string);
    let mut scope = v.get("scope").cloned().unwrap_or(serde_json::Value::Null);
    if !with_accounts {
        if let Some(obj) = scope.as_object_mut() {
            if let Some(a) = obj.get_mut("account_id") {
                *a = serde_json::Value::String("(hidden)".into());
            }
        }
    }
    Some(AuditEntry {
        at: text("at")?,
        actor: text("actor")?,
        reason: text("reason").unwrap_or_default(),
        action: text("action")?,
        scope,
        notices: v.get("notice_ids").and_then(serde_json::Value::as_array).map_or(0, Vec::len),
        instance: text("instance").unwrap_or_default(),
    })
}

/// The newest `limit` audit records (newest first), from the last `limit` of each partition.
pub fn audit_trail(settings: &Settings, limit: usize, with_accounts: bool) -> Result<Vec<AuditEntry>, HeldError> {
    let mut out = Vec::new();
    tail(settings, &settings.topics.audit, limit as i64, |m| {
        if let Some(e) = m.payload().and_then(|p| audit_entry(p, with_accounts)) {
            out.push(e);
        }
    })?;
    // RFC 3339 in UTC with milliseconds (as written): the text sorts by time.
    out.sort_by(|a, b| b.at.cmp(&a.at));
    out.truncate(limit);
    Ok(out)
}

/// One notice on the notices topic, without the account id unless asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NoticeEntry {
    pub notice_id: String,
    pub decided_at: String,
    pub cell: String,
    pub source: String,
    /// Who released it from the held queue (`None`: sent by the pipeline).
    pub released_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// When it was written (record timestamp, RFC 3339).
    pub written_at: String,
}

/// Reads a notice record. `None` for a record that is not a notice. Pure.
pub fn notice_entry(
    payload: &[u8],
    released_by: Option<&str>,
    written_ms: i64,
    with_accounts: bool,
) -> Option<NoticeEntry> {
    #[derive(serde::Deserialize)]
    struct Trigger {
        source: String,
    }
    #[derive(serde::Deserialize)]
    struct Wire {
        notice_id: String,
        account_id: String,
        decided_at: String,
        cell: String,
        trigger: Trigger,
    }
    let w: Wire = serde_json::from_slice(payload).ok()?;
    Some(NoticeEntry {
        notice_id: w.notice_id,
        decided_at: w.decided_at,
        cell: w.cell,
        source: w.trigger.source,
        released_by: released_by.map(str::to_string),
        account_id: with_accounts.then_some(w.account_id),
        written_at: format_rfc3339_ms(written_ms),
    })
}

/// The last notices sent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecentNotices {
    /// Newest first, at most the limit asked for.
    pub notices: Vec<NoticeEntry>,
    /// Of those, how many were released from the held queue.
    pub released: usize,
}

/// The newest `limit` notices on `topics.notices` (newest first).
pub fn recent_notices(settings: &Settings, limit: usize, with_accounts: bool) -> Result<RecentNotices, HeldError> {
    let mut found: Vec<(i64, i32, i64, NoticeEntry)> = Vec::new();
    tail(settings, &settings.topics.notices, limit as i64, |m| {
        let released_by = m.headers().and_then(|hs| {
            hs.iter().find(|h| h.key == "released_by").and_then(|h| h.value).and_then(|v| std::str::from_utf8(v).ok())
        });
        let written = m.timestamp().to_millis().unwrap_or(0);
        if let Some(e) = m.payload().and_then(|p| notice_entry(p, released_by, written, with_accounts)) {
            found.push((written, m.partition(), m.offset(), e));
        }
    })?;
    found.sort_by_key(|x| std::cmp::Reverse((x.0, x.1, x.2)));
    found.truncate(limit);
    let notices: Vec<NoticeEntry> = found.into_iter().map(|(_, _, _, e)| e).collect();
    Ok(RecentNotices { released: notices.iter().filter(|n| n.released_by.is_some()).count(), notices })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test fails loudly
mod tests {
    use super::*;

    fn item(id: &str, cell: &str, source: &str, reason: &str, held_at: &str) -> HeldItem {
        HeldItem {
            notice_id: id.into(),
            cell: cell.into(),
            held_cell: cell.into(),
            held_reason: reason.into(),
            source: source.into(),
            mode: "live".into(),
            policy_version: "v".into(),
            decided_at: held_at.into(),
            held_at: held_at.into(),
            partition: 0,
            offset: 0,
        }
    }

    #[test]
    fn held_notices_are_grouped_by_cell_source_reason_and_minute_newest_first() {
        let items = vec![
            item("a", "m7", "m7", "spike", "2026-11-26T10:00:01.000Z"),
            item("b", "m7", "m7", "breaker_open", "2026-11-26T10:00:02.000Z"),
            item("c", "m7", "m7", "breaker_open", "2026-11-26T10:00:59.999Z"),
            item("d", "m7", "m7", "breaker_open", "2026-11-26T10:01:00.000Z"),
            item("e", "feed", "feed", "breaker_open", "2026-11-26T10:00:30.000Z"),
        ];
        let g = group(&items);
        let rows: Vec<(&str, &str, &str, usize)> =
            g.iter().map(|g| (g.minute.as_str(), g.cell.as_str(), g.reason.as_str(), g.count)).collect();
        assert_eq!(
            rows,
            vec![
                ("2026-11-26T10:01:00.000Z", "m7", "breaker_open", 1),
                ("2026-11-26T10:00:00.000Z", "m7", "breaker_open", 2),
                ("2026-11-26T10:00:00.000Z", "feed", "breaker_open", 1),
                ("2026-11-26T10:00:00.000Z", "m7", "spike", 1),
            ]
        );
        assert_eq!(g.iter().map(|g| g.count).sum::<usize>(), items.len());
    }

    #[test]
    fn audit_entries_hide_account_ids_unless_asked_and_count_notice_ids() {
        let allow = br#"{"at":"2026-11-26T10:00:00.000Z","actor":"ana","reason":"vip","action":"allow_list_add","scope":{"account_id":"acct-42","expires_ms":1},"instance":"rg-1"}"#;
        let e = audit_entry(allow, false).unwrap();
        assert_eq!(e.scope["account_id"], "(hidden)");
        assert!(!serde_json::to_string(&e).unwrap().contains("acct-42"));
        assert_eq!(audit_entry(allow, true).unwrap().scope["account_id"], "acct-42");
        let release = br#"{"at":"2026-11-26T10:05:00.000Z","actor":"ana","reason":"fixed","action":"release","scope":{"cell":"m7","source":null,"from":null,"to":null,"all":false},"instance":"g-held-actions","notice_ids":["rn_1","rn_2","rn_3"]}"#;
        let r = audit_entry(release, false).unwrap();
        assert_eq!((r.action.as_str(), r.notices, r.scope["cell"].as_str()), ("release", 3, Some("m7")));
        assert_eq!(audit_entry(b"{\"oops\":1}", false), None);
        assert_eq!(audit_entry(b"not json", false), None);
    }

    #[test]
    fn notice_entries_carry_no_account_id_by_default() {
        let n = br#"{"schema":"resetguard.notice.v1","notice_id":"rn_00","account_id":"acct-7","decided_at":"2026-11-26T10:00:00.000Z","mode":"live","cell":"m7","trigger":{"source":"m7","event_id":"e"},"explanation":{}}"#;
        let e = notice_entry(n, Some("ana"), 0, false).unwrap();
        assert_eq!((e.notice_id.as_str(), e.source.as_str(), e.released_by.as_deref()), ("rn_00", "m7", Some("ana")));
        assert_eq!(e.account_id, None);
        assert!(!serde_json::to_string(&e).unwrap().contains("acct-7"));
        assert_eq!(notice_entry(n, None, 0, true).unwrap().account_id.as_deref(), Some("acct-7"));
    }
}
