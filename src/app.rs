//! Wiring of `resetguard run`: topics, HTTP server, and the pipeline thread, stopped by a
//! cancellation token (signals in `main`, a token in tests).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use prometheus::Registry;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Settings;
use crate::kafka::pipeline::AdminCommand;
use crate::kafka::{self, PipelineError, Status};
use crate::telemetry::Metrics;

/// Runs the service until `shutdown` is cancelled or the pipeline fails.
pub async fn run(
    settings: Settings,
    registry: Registry,
    status: Arc<Status>,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let (commands, commands_rx) = std::sync::mpsc::channel();
    run_with_admin(settings, registry, status, shutdown, commands, commands_rx).await
}

/// Like [`run`], with the admin command channel supplied by the caller (tests drive it directly).
pub async fn run_with_admin(
    settings: Settings,
    registry: Registry,
    status: Arc<Status>,
    shutdown: CancellationToken,
    commands: std::sync::mpsc::Sender<AdminCommand>,
    commands_rx: std::sync::mpsc::Receiver<AdminCommand>,
) -> Result<(), PipelineError> {
    let settings = Arc::new(settings);
    let metrics = Metrics::register(&registry).map_err(|e| PipelineError::Startup(format!("metrics: {e}")))?;
    let created = kafka::topics::ensure_topics(&settings).await?;
    if !created.is_empty() {
        info!(topics = ?created, "Created topics.");
    }
    let dlq_record_limit = kafka::topics::record_limit(&settings, &settings.topics.dlq).await;
    let http_stop = CancellationToken::new();
    let stop_flag = Arc::new(AtomicBool::new(false));
    let admin = crate::http::admin::AdminState::new(
        settings.admin_token.as_ref(),
        commands,
        status.clone(),
        Some(settings.clone()),
    )
    .with_stop(stop_flag.clone())
    .with_metrics(metrics.clone());
    let startup = |what: &str, addr: std::net::SocketAddr, e: std::io::Error| {
        PipelineError::Startup(format!("cannot listen on {addr} ({what}): {e}"))
    };
    // The console's per-minute history, sampled once a second from the pipeline's status.
    tokio::spawn(crate::http::console::sample_until(status.clone(), admin.timeline(), http_stop.clone()));
    let (http, admin_http) = match settings.admin_listen {
        None => {
            let app = crate::http::router(registry, status.clone(), admin);
            let (addr, http) = crate::http::serve_router(settings.http_listen, app, None, http_stop.clone())
                .await
                .map_err(|e| startup("http.listen", settings.http_listen, e))?;
            info!(%addr, "Serving /metrics, /healthz, /readyz, the admin API and /console.");
            (http, None)
        }
        Some(admin_addr) => {
            let app = crate::http::public_router(registry, status.clone());
            let (addr, http) = crate::http::serve_router(settings.http_listen, app, None, http_stop.clone())
                .await
                .map_err(|e| startup("http.listen", settings.http_listen, e))?;
            info!(%addr, "Serving /metrics, /healthz and /readyz.");
            let tls = settings.admin_tls.clone();
            let https = tls.is_some();
            let (addr, admin_http) =
                crate::http::serve_router(admin_addr, crate::http::admin_router(admin), tls, http_stop.clone())
                    .await
                    .map_err(|e| startup("admin.listen", admin_addr, e))?;
            info!(%addr, tls = https, "Serving the admin API and /console.");
            (http, Some(admin_http))
        }
    };

    tokio::spawn(refresh_held_pending(settings.clone(), metrics.clone(), http_stop.clone()));

    let flag = stop_flag.clone();
    let s2 = settings.clone();
    let st = status.clone();
    let pipeline = std::thread::Builder::new()
        .name("pipeline".into())
        .spawn(move || kafka::run_pipeline(s2, metrics, st, flag, commands_rx, dlq_record_limit))
        .map_err(|e| PipelineError::Startup(format!("cannot start the pipeline thread: {e}")))?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let r = pipeline.join().unwrap_or_else(|_| Err(PipelineError::Fatal("the pipeline thread panicked".into())));
        let _ = done_tx.send(r);
    });
    let drain_timeout = settings.drain_timeout;
    tokio::pin!(done_rx);
    let result = tokio::select! {
        r = &mut done_rx => r.unwrap_or_else(|_| Err(PipelineError::Fatal("pipeline ended without a result".into()))),
        _ = shutdown.cancelled() => {
            info!("Shutting down: finishing the open transaction.");
            stop_flag.store(true, std::sync::atomic::Ordering::SeqCst);
            match tokio::time::timeout(drain_timeout, &mut done_rx).await {
                Ok(r) => r.unwrap_or_else(|_| Err(PipelineError::Fatal("pipeline ended without a result".into()))),
                Err(_) => Err(PipelineError::Fatal(format!("drain did not finish within {drain_timeout:?}"))),
            }
        }
    };
    // A release started over HTTP commits what it has and stops.
    stop_flag.store(true, std::sync::atomic::Ordering::SeqCst);
    http_stop.cancel();
    let _ = http.await;
    if let Some(h) = admin_http {
        let _ = h.await;
    }
    result
}

/// Sets `resetguard_held_pending{cell}` from the held and control topics every
/// `admin.held_pending_refresh` until `stop`; a failed read keeps the last figures (and says so
/// once per failure streak).
async fn refresh_held_pending(settings: Arc<Settings>, metrics: Metrics, stop: CancellationToken) {
    let mut shown: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut failing = false;
    loop {
        let s = settings.clone();
        match tokio::task::spawn_blocking(move || crate::held::pending_by_cell(&s)).await {
            Ok(Ok(by_cell)) => {
                for cell in &shown {
                    if !by_cell.contains_key(cell) {
                        metrics.held_pending.with_label_values(&[cell]).set(0);
                    }
                }
                // Cell names come from the held records: bounded by breaker.max_cells when only
                // resetguard writes the topic; anything beyond 64 names is summed as `_other`.
                let mut other = 0;
                for (cell, n) in by_cell {
                    if shown.len() >= 64 && !shown.contains(&cell) {
                        other += n;
                        continue;
                    }
                    metrics.held_pending.with_label_values(&[&cell]).set(n as i64);
                    shown.insert(cell);
                }
                if other > 0 {
                    metrics.held_pending.with_label_values(&["_other"]).set(other as i64);
                }
                failing = false;
            }
            Ok(Err(e)) if !failing => {
                tracing::warn!(error = %e, "Cannot count the pending held notices; keeping the last figures.");
                failing = true;
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(settings.held_pending_refresh) => {}
            _ = stop.cancelled() => return,
        }
    }
}
