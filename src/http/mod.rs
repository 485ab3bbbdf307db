//! HTTP surface: `/metrics` (Prometheus text), `/healthz` (alive), `/readyz` (partitions
//! assigned and state restored), the token-protected admin API (`admin`) with the incident
//! console page that uses it (`console`), on one listener or the admin API and console on their
//! own (optionally TLS, `tls`). Does IO; reads shared status and forwards admin commands, decides
//! nothing.

pub mod admin;
pub mod console;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;

use crate::kafka::Status;

#[derive(Clone)]
struct AppState {
    registry: Registry,
    status: Arc<Status>,
}

/// `/healthz` is alive while the pipeline loop comes round at least every `stall_timeout`
/// (`Status::heartbeat_ms`, set by the loop); before the loop starts it is alive.
async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let beat = s.status.heartbeat_ms.load(Ordering::Relaxed);
    let limit = s.status.stall_timeout_ms.load(Ordering::Relaxed);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    if beat > 0 && limit > 0 && now - beat > limit {
        let msg = format!("stalled: the pipeline loop has not come round for {} s\n", (now - beat) / 1000);
        return (StatusCode::SERVICE_UNAVAILABLE, msg);
    }
    (StatusCode::OK, "ok\n".to_string())
}

/// Everything on one listener: metrics, health, the admin API and the console.
pub fn router(registry: Registry, status: Arc<Status>, admin: admin::AdminState) -> Router {
    public_router(registry, status).merge(admin_router(admin))
}

/// The admin API and the incident console (which calls it), behind the admin token.
pub fn admin_router(admin: admin::AdminState) -> Router {
    console::router().merge(admin::router(admin))
}

/// Metrics and health only (the admin API is served on its own listener).
pub fn public_router(registry: Registry, status: Arc<Status>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, status })
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&s.registry.gather(), &mut buf) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], buf).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.status.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: waiting for partitions or restoring state\n")
    }
}

/// Serves metrics, health and the admin API on `addr` until `shutdown` is cancelled. Returns the
/// bound address.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    status: Arc<Status>,
    admin: admin::AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_router(addr, router(registry, status, admin), None, shutdown).await
}

/// Serves `app` on `addr` (HTTPS when `tls` is given) until `shutdown` is cancelled. Returns the
/// bound address.
pub async fn serve_router(
    addr: SocketAddr,
    app: Router,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let handle = match tls {
        None => tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        }),
        Some(config) => tokio::spawn(async move {
            let listener = tls::TlsListener::new(listener, config);
            let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        }),
    };
    Ok((local, handle))
}
