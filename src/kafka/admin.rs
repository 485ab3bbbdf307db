//! Manual actions from the admin API (breaker overrides, allow-list changes), applied by the
//! pipeline thread: each is first made durable, its control record (applied fleet-wide) and its
//! audit record in a transaction of its own, and only then applied to this instance's engine and
//! answered. Does IO through the transactional writer.
//!
//! The pipeline commits its open transaction before an action, so an action that cannot be
//! recorded is aborted alone: it holds no input offsets and no outputs, and nothing needs to be
//! rewound. The caller is told it failed, and nothing was applied.

use std::time::Duration;

use rdkafka::producer::BaseRecord;
use tracing::{info, warn};

use crate::config::Settings;
use crate::core::Engine;

use super::control::{allow_key, override_key, AllowRecord, AuditRecord, OverrideRecord};
use super::txn::{TxnError, TxnWriter, NO_TAG};

/// A manual action from the admin API, with the channel its answer goes back on.
pub enum AdminCommand {
    Breaker {
        cell: String,
        action: BreakerAction,
        actor: String,
        reason: String,
        reply: Reply,
    },
    Allow {
        account_id: String,
        expires_ms: Option<i64>,
        actor: String,
        reason: String,
        reply: Reply,
    },
    /// A summary of this instance's state as of its last commit (read-only, nothing recorded).
    State {
        reply: Reply,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerAction {
    Open { ttl: Duration },
    Close { ttl: Duration },
    Clear,
}

pub type Reply = tokio::sync::oneshot::Sender<Result<serde_json::Value, String>>;

impl AdminCommand {
    /// The caller stopped waiting (its request timed out): the action must not be applied late.
    pub fn abandoned(&self) -> bool {
        match self {
            AdminCommand::Breaker { reply, .. } | AdminCommand::Allow { reply, .. } | AdminCommand::State { reply } => {
                reply.is_closed()
            }
        }
    }
}

/// Records `cmd` durably, then applies it to `engine` and answers. Only a fatal producer error
/// is returned; every other failure is the caller's answer.
pub fn execute(
    cmd: AdminCommand,
    writer: &mut TxnWriter,
    engine: &mut Engine,
    settings: &Settings,
    now: i64,
) -> Result<(), TxnError> {
    if cmd.abandoned() {
        warn!("An admin request was given up by its caller before it could run; not applied.");
        return Ok(());
    }
    let instance = settings.transactional_id.clone();
    let (control, audit, apply, reply) = match cmd {
        AdminCommand::State { reply } => {
            let _ = reply.send(Ok(serde_json::to_value(engine.state_summary()).unwrap_or_default()));
            return Ok(());
        }
        AdminCommand::Breaker { cell, action, actor, reason, reply } => {
            if let Err(e) = engine.breaker().check_cell_name(&cell, action == BreakerAction::Clear) {
                let _ = reply.send(Err(e));
                return Ok(());
            }
            let (open, until, verb) = match action {
                BreakerAction::Open { ttl } => (true, now + ttl.as_millis() as i64, "open"),
                BreakerAction::Close { ttl } => (false, now + ttl.as_millis() as i64, "close"),
                BreakerAction::Clear => (false, now, "clear"),
            };
            let rec = OverrideRecord {
                cell: cell.clone(),
                open,
                until_ms: until,
                at_ms: now,
                actor: actor.clone(),
                reason: reason.clone(),
                instance: instance.clone(),
            };
            let audit = AuditRecord {
                at: crate::core::event::format_rfc3339_ms(now),
                actor,
                reason,
                action: format!("breaker_{verb}"),
                scope: serde_json::json!({ "cell": cell, "until_ms": until }),
                instance,
            };
            let control = (override_key(&cell), serde_json::to_vec(&rec).unwrap_or_default());
            let apply = Apply::Breaker { cell, action };
            (control, audit, apply, reply)
        }
        AdminCommand::Allow { account_id, expires_ms, actor, reason, reply } => {
            let rec = AllowRecord {
                account_id: account_id.clone(),
                expires_ms,
                at_ms: now,
                actor: actor.clone(),
                reason: reason.clone(),
                instance: instance.clone(),
            };
            let audit = AuditRecord {
                at: crate::core::event::format_rfc3339_ms(now),
                actor,
                reason,
                action: if expires_ms.is_some() { "allow_list_add" } else { "allow_list_remove" }.to_string(),
                scope: serde_json::json!({ "account_id": account_id, "expires_ms": expires_ms }),
                instance,
            };
            let control = (allow_key(&account_id), serde_json::to_vec(&rec).unwrap_or_default());
            (control, audit, Apply::Allow { account_id, expires_ms }, reply)
        }
    };
    let audit_bytes = serde_json::to_vec(&audit).unwrap_or_default();
    let written = writer
        .send(
            BaseRecord::with_opaque_to(&settings.topics.control, NO_TAG)
                .key(control.0.as_bytes())
                .payload(&control.1[..]),
        )
        .and_then(|()| {
            writer.send(
                BaseRecord::with_opaque_to(&settings.topics.audit, NO_TAG)
                    .key(audit.actor.as_bytes())
                    .payload(&audit_bytes[..]),
            )
        })
        .and_then(|()| writer.commit(None));
    match written {
        Ok(()) => {
            let result = apply.run(engine, &audit, now);
            info!(action = %audit.action, "Manual action recorded and applied.");
            let _ = reply.send(result);
            Ok(())
        }
        Err(TxnError::Fatal { what, source }) => {
            let _ = reply.send(Err(format!("could not record the action: {what}: {source}")));
            Err(TxnError::Fatal { what, source })
        }
        Err(e) => {
            warn!(error = %e, "Recording a manual action failed; it was not applied.");
            let _ = reply.send(Err(format!("could not record the action, nothing was applied: {e}")));
            writer.abort(&mut || {})
        }
    }
}

/// What an action does to this instance's engine once it is recorded.
enum Apply {
    Breaker { cell: String, action: BreakerAction },
    Allow { account_id: String, expires_ms: Option<i64> },
}

impl Apply {
    fn run(self, engine: &mut Engine, audit: &AuditRecord, now: i64) -> Result<serde_json::Value, String> {
        match self {
            Apply::Breaker { cell, action } => {
                let b = engine.breaker_mut();
                let t = match action {
                    BreakerAction::Open { ttl } => {
                        b.force(&cell, true, ttl, &audit.actor, &audit.reason, now).map(Some)
                    }
                    BreakerAction::Close { ttl } => {
                        b.force(&cell, false, ttl, &audit.actor, &audit.reason, now).map(Some)
                    }
                    BreakerAction::Clear => b.clear_override(&cell, &audit.actor, &audit.reason, now),
                };
                t.map(|t| serde_json::to_value(t).unwrap_or_default())
            }
            Apply::Allow { account_id, expires_ms } => {
                match expires_ms {
                    Some(until) => engine.allow_account(&account_id, until),
                    None => {
                        engine.disallow_account(&account_id);
                    }
                }
                Ok(serde_json::json!({ "applied": true }))
            }
        }
    }
}
