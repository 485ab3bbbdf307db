//! The admin API under `/admin/`: breaker overrides and allow-list changes (applied by the
//! pipeline thread, recorded in the control and audit topics). Every request needs the bearer
//! token: compared in constant time, anything else gets a bare 401, bodies are capped at 16 KiB,
//! and the token is never logged. Does IO (HTTP); decides nothing itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Secret, Settings};
use crate::held::{self, HeldError, Selector};
use crate::http::console::Timeline;
use crate::kafka::pipeline::{AdminCommand, BreakerAction};
use crate::kafka::Status;

/// Largest admin request body.
pub const MAX_BODY: usize = 16 * 1024;

#[derive(Clone)]
pub struct AdminState {
    /// SHA-256 of the token: comparing digests keeps the comparison constant-time whatever the
    /// length of what was sent.
    token_digest: Option<[u8; 32]>,
    commands: Sender<AdminCommand>,
    status: Arc<Status>,
    /// Settings for the held-notice actions (`None`: those endpoints answer 503).
    settings: Option<Arc<Settings>>,
    /// Set when the service shuts down: a running release commits what it has and stops.
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Where released and discarded held notices are counted (`None`: not counted).
    metrics: Option<crate::telemetry::Metrics>,
    /// Per-minute history for the incident console (fed by `console::sample_until`).
    timeline: Arc<Mutex<Timeline>>,
    /// Releases started over HTTP on this instance and still running, by id.
    releases: Arc<Mutex<BTreeMap<u64, RunningRelease>>>,
    next_release: Arc<AtomicU64>,
}

/// A release started over HTTP, until it ends: what the console lists and can stop.
#[derive(Debug, Clone, Serialize)]
pub struct RunningRelease {
    pub id: u64,
    pub started_at: String,
    pub actor: String,
    pub selector: String,
    pub rate_per_minute: u32,
    /// Set by `POST /admin/held/stop` (and at shutdown): commits what it has and stops.
    #[serde(skip)]
    stop: Arc<AtomicBool>,
    pub stopping: bool,
}

impl AdminState {
    pub fn new(
        token: Option<&Secret>,
        commands: Sender<AdminCommand>,
        status: Arc<Status>,
        settings: Option<Arc<Settings>>,
    ) -> Self {
        AdminState {
            token_digest: token.map(|t| Sha256::digest(t.expose().as_bytes()).into()),
            commands,
            status,
            settings,
            stop: Arc::default(),
            metrics: None,
            timeline: Arc::default(),
            releases: Arc::default(),
            next_release: Arc::new(AtomicU64::new(1)),
        }
    }

    /// The console's per-minute history (the HTTP server samples into it).
    pub fn timeline(&self) -> Arc<Mutex<Timeline>> {
        self.timeline.clone()
    }

    /// Held notices released or discarded over HTTP are counted in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::telemetry::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Releases started over HTTP stop (after committing what they have) when `stop` is set.
    pub fn with_stop(mut self, stop: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.stop = stop;
        self
    }
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/admin/breaker", get(breaker_state))
        .route("/admin/breaker/{cell}/{action}", post(breaker_action))
        .route("/admin/allow-list", post(allow_add).delete(allow_remove))
        .route("/admin/held", get(held_list))
        .route("/admin/held/groups", get(held_groups))
        .route("/admin/held/releases", get(held_releases))
        .route("/admin/held/stop", post(held_stop))
        .route("/admin/held/{action}", post(held_action))
        .route("/admin/audit", get(audit_trail))
        .route("/admin/notices/recent", get(recent_notices))
        .route("/admin/timeline", get(timeline))
        .route("/admin/state", get(state_summary))
        // Unknown admin paths get the same 401 as everything else without the token.
        .route("/admin/{*rest}", axum::routing::any(|| async { StatusCode::NOT_FOUND }))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")]).into_response()
}

async fn require_token(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let Some(expected) = s.token_digest else { return unauthorized() };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Sha256::digest(t.as_bytes()));
    match presented {
        Some(d) if bool::from(d.as_slice().ct_eq(&expected)) => next.run(req).await,
        _ => unauthorized(),
    }
}

async fn breaker_state(State(s): State<AdminState>) -> Response {
    let snap = s.status.breaker.lock().map(|b| b.clone()).unwrap_or_default();
    Json(snap).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerBody {
    /// How long the override lasts (`"30m"`); required for open and close.
    #[serde(default)]
    ttl: Option<String>,
    actor: String,
    reason: String,
}

fn bad_request(msg: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

fn check_who(actor: &str, reason: &str) -> Result<(), Response> {
    crate::core::rules::check_actor_reason(actor, reason).map_err(bad_request)
}

/// An account id as the input contract allows it: 1 to 256 characters, no control characters.
fn check_account(account_id: &str) -> Result<(), Response> {
    if account_id.is_empty() || account_id.chars().count() > 256 || account_id.chars().any(char::is_control) {
        return Err(bad_request("account_id must be 1 to 256 characters without control characters"));
    }
    Ok(())
}

async fn send(s: &AdminState, make: impl FnOnce(crate::kafka::pipeline::Reply) -> AdminCommand) -> Response {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if s.commands.send(make(tx)).is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "error": "the pipeline is not running" })))
            .into_response();
    }
    match tokio::time::timeout(Duration::from_secs(30), rx).await {
        Ok(Ok(Ok(v))) => Json(v).into_response(),
        Ok(Ok(Err(e))) => bad_request(e),
        _ => (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "error": "no answer from the pipeline" })))
            .into_response(),
    }
}

/// Counts and a digest of this instance's state as of its last commit: equal digests before a
/// crash and after the restore mean the state came back whole.
async fn state_summary(State(s): State<AdminState>) -> Response {
    send(&s, |reply| AdminCommand::State { reply }).await
}

async fn breaker_action(
    State(s): State<AdminState>,
    Path((cell, action)): Path<(String, String)>,
    Json(body): Json<BreakerBody>,
) -> Response {
    if let Err(r) = check_who(&body.actor, &body.reason) {
        return r;
    }
    let ttl = || -> Result<Duration, Response> {
        let text = body.ttl.as_deref().ok_or_else(|| bad_request("ttl is required, e.g. \"30m\""))?;
        crate::core::rules::parse_ttl(text).map_err(bad_request)
    };
    let action = match action.as_str() {
        "open" => match ttl() {
            Ok(ttl) => BreakerAction::Open { ttl },
            Err(r) => return r,
        },
        "close" => match ttl() {
            Ok(ttl) => BreakerAction::Close { ttl },
            Err(r) => return r,
        },
        "clear" => BreakerAction::Clear,
        _ => return (StatusCode::NOT_FOUND, "").into_response(),
    };
    let (actor, reason) = (body.actor.clone(), body.reason.clone());
    send(&s, |reply| AdminCommand::Breaker { cell, action, actor, reason, reply }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowBody {
    account_id: String,
    /// RFC 3339; required to add.
    #[serde(default)]
    expires_at: Option<String>,
    actor: String,
    reason: String,
}

async fn allow_add(State(s): State<AdminState>, Json(body): Json<AllowBody>) -> Response {
    if let Err(r) = check_who(&body.actor, &body.reason) {
        return r;
    }
    if let Err(r) = check_account(&body.account_id) {
        return r;
    }
    let Some(expires_ms) = body.expires_at.as_deref().and_then(crate::core::event::parse_rfc3339_ms) else {
        return bad_request("expires_at must be an RFC 3339 timestamp");
    };
    send(&s, |reply| AdminCommand::Allow {
        account_id: body.account_id,
        expires_ms: Some(expires_ms),
        actor: body.actor,
        reason: body.reason,
        reply,
    })
    .await
}

async fn allow_remove(State(s): State<AdminState>, Json(body): Json<AllowBody>) -> Response {
    if let Err(r) = check_who(&body.actor, &body.reason) {
        return r;
    }
    if let Err(r) = check_account(&body.account_id) {
        return r;
    }
    send(&s, |reply| AdminCommand::Allow {
        account_id: body.account_id,
        expires_ms: None,
        actor: body.actor,
        reason: body.reason,
        reply,
    })
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HeldQuery {
    #[serde(default)]
    cell: Option<String>,
    #[serde(default)]
    source: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    from: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    all: bool,
}

impl HeldQuery {
    fn selector(&self) -> Result<Selector, Response> {
        let time = |v: &Option<String>| -> Result<Option<i64>, Response> {
            v.as_deref()
                .map(|t| {
                    crate::core::event::parse_rfc3339_ms(t)
                        .ok_or_else(|| bad_request("from/to must be RFC 3339 timestamps"))
                })
                .transpose()
        };
        Ok(Selector {
            cell: self.cell.clone(),
            source: self.source.clone(),
            from_ms: time(&self.from)?,
            to_ms: time(&self.to)?,
            all: self.all,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeldBody {
    #[serde(default)]
    cell: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    all: bool,
    actor: String,
    reason: String,
    /// Notices per minute for a release (default: admin.release_rate_per_minute).
    #[serde(default)]
    rate_per_minute: Option<u32>,
}

fn held_error(e: HeldError) -> Response {
    match e {
        HeldError::Invalid(m) => bad_request(m),
        other => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "error": other.to_string() }))).into_response()
        }
    }
}

async fn held_list(State(s): State<AdminState>, axum::extract::Query(q): axum::extract::Query<HeldQuery>) -> Response {
    let Some(settings) = s.settings.clone() else { return (StatusCode::SERVICE_UNAVAILABLE, "").into_response() };
    let sel = match q.selector() {
        Ok(sel) => sel,
        Err(r) => return r,
    };
    match tokio::task::spawn_blocking(move || held::list(&settings, &sel)).await {
        Ok(Ok(l)) => Json(l).into_response(),
        Ok(Err(e)) => held_error(e),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "").into_response(),
    }
}

/// `release` runs to completion (paced) or until the service shuts down; a client that gives up
/// does not stop it, and running it again is harmless: each notice is released exactly once.
async fn held_action(State(s): State<AdminState>, Path(action): Path<String>, Json(body): Json<HeldBody>) -> Response {
    let Some(settings) = s.settings.clone() else { return (StatusCode::SERVICE_UNAVAILABLE, "").into_response() };
    if let Err(r) = check_who(&body.actor, &body.reason) {
        return r;
    }
    let query = HeldQuery { cell: body.cell, source: body.source, from: body.from, to: body.to, all: body.all };
    let sel = match query.selector() {
        Ok(sel) => sel,
        Err(r) => return r,
    };
    let (actor, reason) = (body.actor, body.reason);
    let rate = match crate::core::rules::check_release_rate(
        body.rate_per_minute.unwrap_or(settings.release_rate_per_minute),
    ) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let job = match action.as_str() {
        "release" => {
            // Its own stop flag (POST /admin/held/stop), also set when the service shuts down.
            let id = s.next_release.fetch_add(1, Ordering::Relaxed);
            let stop = Arc::new(AtomicBool::new(false));
            let running = RunningRelease {
                id,
                started_at: crate::core::event::format_rfc3339_ms(chrono::Utc::now().timestamp_millis()),
                actor: actor.clone(),
                selector: sel.to_string(),
                rate_per_minute: rate,
                stop: stop.clone(),
                stopping: false,
            };
            lock(&s.releases).insert(id, running);
            let done = Arc::new(AtomicBool::new(false));
            let (shutdown, own, finished) = (s.stop.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                while !finished.load(Ordering::SeqCst) {
                    if shutdown.load(Ordering::SeqCst) {
                        own.store(true, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            let s2 = s.clone();
            tokio::task::spawn_blocking(move || {
                let r = held::release(&settings, &sel, &actor, &reason, rate, &stop);
                done.store(true, Ordering::SeqCst);
                lock(&s2.releases).remove(&id);
                let r = r?;
                if let Some(m) = &s2.metrics {
                    m.held_released.inc_by(r.released() as u64);
                }
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["release_id"] = id.into();
                Ok(v)
            })
        }
        "discard" => tokio::task::spawn_blocking(move || {
            let r = held::discard(&settings, &sel, &actor, &reason)?;
            if let Some(m) = &s.metrics {
                m.held_discarded.inc_by(r.discarded as u64);
            }
            Ok(serde_json::to_value(r).unwrap_or_default())
        }),
        _ => return (StatusCode::NOT_FOUND, "").into_response(),
    };
    match job.await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => held_error(e),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "").into_response(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs a blocking read of Kafka for a console view.
async fn view<T: Serialize + Send + 'static>(
    s: &AdminState,
    read: impl FnOnce(&crate::config::Settings) -> Result<T, HeldError> + Send + 'static,
) -> Response {
    let Some(settings) = s.settings.clone() else { return (StatusCode::SERVICE_UNAVAILABLE, "").into_response() };
    match tokio::task::spawn_blocking(move || read(&settings)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => held_error(e),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "").into_response(),
    }
}

/// Pending held notices grouped by cell, source, reason and minute (the console's held queue).
async fn held_groups(State(s): State<AdminState>) -> Response {
    view(&s, held::views::held_groups).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TrailQuery {
    /// Most records to return (default 50, at most 500).
    #[serde(default)]
    limit: Option<usize>,
    /// Show account ids (hidden by default).
    #[serde(default)]
    accounts: bool,
}

impl TrailQuery {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(50).clamp(1, 500)
    }
}

/// The newest audit records, newest first.
async fn audit_trail(
    State(s): State<AdminState>,
    axum::extract::Query(q): axum::extract::Query<TrailQuery>,
) -> Response {
    let (limit, accounts) = (q.limit(), q.accounts);
    view(&s, move |settings| held::views::audit_trail(settings, limit, accounts)).await
}

/// The newest notices on the notices topic, newest first; account ids only with `accounts=true`.
async fn recent_notices(
    State(s): State<AdminState>,
    axum::extract::Query(q): axum::extract::Query<TrailQuery>,
) -> Response {
    let (limit, accounts) = (q.limit(), q.accounts);
    view(&s, move |settings| held::views::recent_notices(settings, limit, accounts)).await
}

/// The per-minute history of this instance: notices, held, breaker states.
async fn timeline(State(s): State<AdminState>) -> Response {
    let minutes = lock(&s.timeline).minutes();
    let now_ms = chrono::Utc::now().timestamp_millis();
    Json(serde_json::json!({ "now_ms": now_ms, "minutes": minutes })).into_response()
}

/// Releases started over HTTP on this instance that are still running.
async fn held_releases(State(s): State<AdminState>) -> Response {
    let running: Vec<RunningRelease> = lock(&s.releases).values().cloned().collect();
    Json(running).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopBody {
    /// The release to stop (`GET /admin/held/releases`); every running one when absent.
    #[serde(default)]
    id: Option<u64>,
    actor: String,
    reason: String,
}

/// Stops running releases: each commits what it has sent and ends (its answer says
/// `interrupted`); running the release again continues where it stopped, each notice once.
async fn held_stop(State(s): State<AdminState>, Json(body): Json<StopBody>) -> Response {
    if let Err(r) = check_who(&body.actor, &body.reason) {
        return r;
    }
    let mut stopped = Vec::new();
    for r in lock(&s.releases).values_mut() {
        if body.id.is_none_or(|id| id == r.id) {
            r.stop.store(true, Ordering::SeqCst);
            r.stopping = true;
            stopped.push(r.id);
        }
    }
    tracing::info!(releases = ?stopped, "Held-notice release stop requested over HTTP.");
    Json(serde_json::json!({ "stopped": stopped })).into_response()
}
