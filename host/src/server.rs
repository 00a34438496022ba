//! The HTTP face of pgws and the wiring of the whole service.
//!
//! Owns the routes (`/ws`, `/healthz`, `/readyz`, `/metrics`), who a connecting client is, the
//! listening socket, and the order of start-up and shutdown: guests load before the listener starts (so
//! no message skips its guest), and on shutdown the server stops accepting, closes every session with
//! 1001, waits for them within a bound, then stops the listener and the pipeline.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::envelope::{TenantId, Topic};
use crate::frame::FrameFormat;
use crate::guest::{GuestLimits, GuestRegistry, GuestRuntime};
use crate::hub::{Hub, TopicFilter};
use crate::listener::{self, ListenerConfig, Readiness};
use crate::metrics as m;
use crate::pipeline::{self, FailureRules, Workers};
use crate::session::{self, SessionConfig};

/// Events buffered between the LISTEN connection and the pipeline.
const LISTENER_QUEUE: usize = 65_536;
/// Pending connections the kernel may hold; tokio's default of 1024 drops SYNs in connect bursts.
const ACCEPT_BACKLOG: u32 = 8192;

/// Binds `addr` with SO_REUSEPORT (several pgws processes may share one port) and a deep backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

#[derive(Clone)]
struct AppState {
    hub: Arc<Hub>,
    readiness: Readiness,
    metrics: Option<PrometheusHandle>,
    frame: FrameFormat,
    insecure_tenant_param: bool,
    session: SessionConfig,
    ws_read_buffer: usize,
    max_client_message: usize,
    shutdown: CancellationToken,
    sessions: TaskTracker,
}

/// Runs the service on `tcp` until `shutdown` is cancelled, then shuts down in order.
pub async fn run(
    config: Config,
    tcp: TcpListener,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    if config.insecure_tenant_param {
        tracing::warn!(
            "--insecure-tenant-param is on: any client can read any tenant's messages with \
             /ws?tenant=<name>. Never use this in production."
        );
    }

    let registry = match &config.guests {
        Some(dir) => Some(load_guests(&config, dir.clone()).await?),
        None => None,
    };

    let hub = Arc::new(Hub::new(config.session_queue));
    let readiness = Readiness::default();
    let (events_tx, events_rx) = mpsc::channel(LISTENER_QUEUE);
    let (backoff_min, backoff_max) = config.reconnect_backoff();
    let listener_task = tokio::spawn(listener::run(
        ListenerConfig {
            database_url: config.database_url.clone(),
            channels: config.channels.clone(),
            backoff_min,
            backoff_max,
            health_check: Duration::from_secs(config.health_check_secs.max(1)),
        },
        events_tx,
        readiness.clone(),
        shutdown.clone(),
    ));
    let workers = Workers::start(
        registry,
        hub.clone(),
        FailureRules {
            policy: config.guest_failure,
            max_failures: config.guest_max_failures.max(1),
            isolation: Duration::from_secs(config.guest_isolation_secs),
        },
        config.guest_threads(),
    )
    .context("starting guest worker threads")?;
    let pipeline_task = tokio::spawn(pipeline::run(events_rx, workers.clone(), hub.clone()));

    let sessions = TaskTracker::new();
    let state = AppState {
        hub,
        readiness,
        metrics,
        frame: config.frame.into(),
        insecure_tenant_param: config.insecure_tenant_param,
        session: SessionConfig {
            ping_interval: Duration::from_secs(config.ping_secs.max(1)),
        },
        ws_read_buffer: config.ws_read_buffer.max(256),
        max_client_message: config.max_client_message,
        shutdown: shutdown.clone(),
        sessions: sessions.clone(),
    };
    let app = Router::new()
        .route("/ws", get(ws_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(state);

    let addr = tcp.local_addr()?;
    tracing::info!(%addr, channels = ?config.channels, "pgws serving");
    axum::serve(tcp, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await
        .context("HTTP server failed")?;

    // Sessions saw the same cancellation and are sending 1001; give them a bounded time to finish.
    sessions.close();
    let bound = Duration::from_secs(config.shutdown_secs);
    if tokio::time::timeout(bound, sessions.wait()).await.is_err() {
        tracing::warn!(
            remaining = sessions.len(),
            "sessions still open after {bound:?}; exiting anyway"
        );
    }
    let _ = listener_task.await;
    let _ = pipeline_task.await;
    tracing::info!("pgws stopped");
    Ok(())
}

async fn load_guests(
    config: &Config,
    dir: std::path::PathBuf,
) -> anyhow::Result<Arc<GuestRegistry>> {
    let limits = GuestLimits {
        timeout: config.guest_timeout(),
        memory_bytes: (config.guest_memory_mb as usize).saturating_mul(1 << 20),
        max_output: config.guest_max_output,
        max_routes: config.guest_max_routes,
    };
    let cache = config.guest_cache.clone().or_else(default_cache_dir);
    tokio::task::spawn_blocking(move || {
        let runtime =
            GuestRuntime::new(limits, cache).context("starting the WebAssembly runtime")?;
        let registry = GuestRegistry::new(runtime);
        let loaded = registry
            .load_dir(&dir)
            .with_context(|| format!("reading guest directory {}", dir.display()))?;
        tracing::info!(dir = %dir.display(), loaded, "guests ready");
        Ok(Arc::new(registry))
    })
    .await
    .context("guest loading panicked")?
}

fn default_cache_dir() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))?;
    Some(base.join("pgws"))
}

async fn readyz(State(app): State<AppState>) -> Response {
    if app.readiness.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not listening on Postgres\n",
        )
            .into_response()
    }
}

async fn metrics_handler(State(app): State<AppState>) -> Response {
    match &app.metrics {
        Some(handle) => handle.render().into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response(),
    }
}

/// Refuses an upgrade before it happens, with a status and a reason for the log and the client.
fn refuse(status: StatusCode, reason: &'static str, detail: String) -> Response {
    metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => reason).increment(1);
    tracing::info!(reason, %detail, "WebSocket upgrade refused");
    (status, format!("{detail}\n")).into_response()
}

/// `?topics=a,b`: the topics a session takes (messages with no topic always reach it).
fn parse_topics(
    list: &str,
) -> Result<std::collections::HashSet<Topic>, crate::envelope::NameError> {
    list.split(',')
        .filter(|t| !t.is_empty())
        .map(Topic::parse)
        .collect()
}

async fn ws_handler(
    State(app): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let tenant = match (app.insecure_tenant_param, params.get("tenant")) {
        (true, Some(name)) => match TenantId::parse(name) {
            Ok(t) => t,
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_tenant",
                    format!("invalid tenant name: {e}"),
                )
            }
        },
        (true, None) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "missing_tenant",
                "no tenant: connect with /ws?tenant=<name>".into(),
            )
        }
        (false, _) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "no_auth",
                "no way to authenticate: the server accepts no tokens and --insecure-tenant-param is off"
                    .into(),
            )
        }
    };
    if app.shutdown.is_cancelled() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "server is shutting down".into(),
        );
    }

    let filter = match params.get("topics").map(|t| parse_topics(t)) {
        None => TopicFilter::All,
        Some(Ok(topics)) => TopicFilter::Only(topics),
        Some(Err(e)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_topic",
                format!("invalid topic name: {e}"),
            )
        }
    };

    // Registered before the 101 goes out, so a message published right after the client sees the
    // upgrade already has somewhere to go.
    let registration = app.hub.register(&tenant, app.frame, filter);
    let AppState {
        session,
        shutdown,
        sessions,
        ..
    } = app.clone();
    upgrade
        .read_buffer_size(app.ws_read_buffer)
        .max_message_size(app.max_client_message)
        .max_frame_size(app.max_client_message)
        .on_upgrade(move |socket| {
            sessions.track_future(session::run(socket, registration, session, shutdown))
        })
}
