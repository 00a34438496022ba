//! The HTTP face of pgws and the wiring of the whole service.
//!
//! Owns the routes (`/ws`, `/healthz`, `/readyz`, `/metrics`), who a connecting client is, the
//! listening socket, and the order of start-up and shutdown: guests load before the listener starts (so
//! no message skips its guest), and on shutdown the server stops accepting, closes every session with
//! 1001, waits for them within a bound, then stops the listener and the pipeline.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{AuthError, Authenticator, Identity, TOKEN_PROTOCOL_PREFIX};
use crate::config::Config;
use crate::envelope::{TenantId, Topic};
use crate::frame::FrameFormat;
use crate::guest::{Authorization, GuestLimits, GuestRegistry, GuestRuntime};
use crate::hub::{Hub, LimitReached, SessionLimits, TopicFilter};
use crate::listener::{self, ListenerConfig, Readiness};
use crate::metrics as m;
use crate::pipeline::{self, FailureRules, Workers};
use crate::protocol;
use crate::publisher::Publisher;
use crate::session::{Protocol, Session, SessionContext};

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
    auth: Option<Arc<Authenticator>>,
    ctx: Arc<SessionContext>,
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
    let database_url = config
        .database_url
        .clone()
        .context("no database URL: pass --database-url or set DATABASE_URL")?;
    if config.insecure_tenant_param {
        tracing::warn!(
            "--insecure-tenant-param is on: any client can read any tenant's messages with \
             /ws?tenant=<name>. Never use this in production."
        );
    }

    let auth = Authenticator::new(
        config.jwt_secret.as_deref(),
        config.jwt_public_key.as_deref(),
        &config.jwt_tenant_claim,
    )
    .context("loading the JWT key")?
    .map(Arc::new);
    if auth.is_none() && !config.insecure_tenant_param {
        tracing::warn!(
            "no --jwt-secret or --jwt-public-key: every WebSocket client will be refused (401)"
        );
    }
    let publisher = Arc::new(
        Publisher::new(&database_url, config.inbound_channel(), 4)
            .context("setting up the publish connection pool")?,
    );

    let registry = load_guests(&config).await?;
    if let Some(dir) = &config.guests {
        crate::guest::watch_dir(registry.clone(), dir.clone(), shutdown.clone())
            .with_context(|| format!("watching guest directory {}", dir.display()))?;
    }

    let hub = Arc::new(Hub::new(config.session_queue).with_limits(SessionLimits {
        total: config.max_connections,
        per_tenant: config.max_connections_per_tenant,
    }));
    let readiness = Readiness::default();
    let (events_tx, events_rx) = mpsc::channel(LISTENER_QUEUE);
    let (backoff_min, backoff_max) = config.reconnect_backoff();
    let listener_task = tokio::spawn(listener::run(
        ListenerConfig {
            database_url,
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
        registry.clone(),
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
        auth,
        ctx: Arc::new(SessionContext {
            workers,
            publisher: Some(publisher),
            ping_interval: Duration::from_secs(config.ping_secs.max(1)),
            publish_rate: config.publish_rate,
            publish_burst: config.publish_burst,
        }),
        ws_read_buffer: config.ws_read_buffer.max(256),
        max_client_message: config.max_client_message,
        shutdown: shutdown.clone(),
        sessions: sessions.clone(),
    };
    let admin = match &config.admin_token {
        Some(token) => crate::admin::routes(registry.clone(), token),
        None => Router::new(),
    };
    let app = Router::new()
        .route("/ws", get(ws_handler))
        .route("/", get(demo_page))
        .route("/client/pgws-client.js", get(client_module))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(state)
        .merge(admin);

    let addr = tcp.local_addr()?;
    tracing::info!(%addr, channels = ?config.channels, "pgws serving");
    serve_http(
        tcp,
        app,
        Duration::from_secs(config.handshake_timeout_secs.max(1)),
        shutdown.clone(),
    )
    .await;

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

/// Accepts connections until `shutdown`, serving each with HTTP/1.1 and upgrades. A client must send
/// its whole request within `handshake_timeout`, or its connection is closed.
async fn serve_http(
    tcp: TcpListener,
    app: Router,
    handshake_timeout: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = tcp.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(handshake_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            let result = tokio::select! {
                r = connection.as_mut() => r,
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

/// Starts the WebAssembly runtime and loads the guest directory, if any, before anything listens.
async fn load_guests(config: &Config) -> anyhow::Result<Arc<GuestRegistry>> {
    let limits = GuestLimits {
        timeout: config.guest_timeout(),
        memory_bytes: (config.guest_memory_mb as usize).saturating_mul(1 << 20),
        max_output: config.guest_max_output,
        max_routes: config.guest_max_routes,
    };
    let cache = config.guest_cache.clone().or_else(default_cache_dir);
    let dir = config.guests.clone();
    tokio::task::spawn_blocking(move || {
        let runtime =
            GuestRuntime::new(limits, cache).context("starting the WebAssembly runtime")?;
        let registry = GuestRegistry::new(runtime);
        if let Some(dir) = dir {
            let loaded = registry
                .load_dir(&dir)
                .with_context(|| format!("reading guest directory {}", dir.display()))?;
            tracing::info!(dir = %dir.display(), loaded, "guests ready");
        }
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

/// The demo page: pick a tenant (or paste a token), watch messages arrive, publish one back.
async fn demo_page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("../static/index.html"))
}

/// The browser client module the demo page (and any page) can import.
async fn client_module() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../client/pgws-client.js"),
    )
        .into_response()
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

/// An upgrade refused before it happens: a status, a reason label for logs and metrics, and a
/// message for the client. Logged and counted when turned into the response.
struct Refusal {
    status: StatusCode,
    reason: &'static str,
    detail: String,
}

fn refuse(status: StatusCode, reason: &'static str, detail: String) -> Refusal {
    Refusal {
        status,
        reason,
        detail,
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => self.reason).increment(1);
        tracing::info!(reason = self.reason, detail = %self.detail, "WebSocket upgrade refused");
        (self.status, format!("{}\n", self.detail)).into_response()
    }
}

/// The subprotocols a client offered, in its order.
fn offered_protocols(upgrade: &WebSocketUpgrade) -> Vec<String> {
    upgrade
        .requested_protocols()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The token from `Authorization: Bearer`, `?token=`, or a `bearer.<token>` subprotocol, in that order.
fn find_token<'a>(
    headers: &'a HeaderMap,
    params: &'a HashMap<String, String>,
    offered: &'a [String],
) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .or_else(|| params.get("token").map(String::as_str))
        .or_else(|| {
            offered
                .iter()
                .find_map(|p| p.strip_prefix(TOKEN_PROTOCOL_PREFIX))
        })
}

/// Who is connecting, or the refusal to send.
fn identify(
    app: &AppState,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    offered: &[String],
) -> Result<Identity, Refusal> {
    match (find_token(headers, params, offered), &app.auth) {
        (Some(token), Some(auth)) => auth.verify(token).map_err(|e| {
            refuse(StatusCode::UNAUTHORIZED, e.reason(), e.to_string())
        }),
        (Some(_), None) if !app.insecure_tenant_param => Err(refuse(
            StatusCode::UNAUTHORIZED,
            "tokens_disabled",
            "this server accepts no tokens (no --jwt-secret or --jwt-public-key)".into(),
        )),
        (_, _) if app.insecure_tenant_param => match params.get("tenant") {
            Some(name) => TenantId::parse(name).map(Identity::insecure).map_err(|e| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_tenant",
                    format!("invalid tenant name: {e}"),
                )
            }),
            None => Err(refuse(
                StatusCode::UNAUTHORIZED,
                "missing_tenant",
                "no tenant: connect with /ws?tenant=<name> or a token".into(),
            )),
        },
        (None, Some(_)) => Err(refuse(
            StatusCode::UNAUTHORIZED,
            AuthError::Missing.reason(),
            AuthError::Missing.to_string(),
        )),
        (_, None) => Err(refuse(
            StatusCode::UNAUTHORIZED,
            "no_auth",
            "no way to authenticate: the server accepts no tokens and --insecure-tenant-param is off"
                .into(),
        )),
    }
}

/// `?topics=a,b`: the topics a legacy session takes (messages with no topic always reach it).
fn parse_topics(list: &str) -> Result<HashSet<Topic>, crate::envelope::NameError> {
    list.split(',')
        .filter(|t| !t.is_empty())
        .map(Topic::parse)
        .collect()
}

async fn ws_handler(
    State(app): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, Refusal> {
    if app.shutdown.is_cancelled() {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "server is shutting down".into(),
        ));
    }
    let offered = offered_protocols(&upgrade);
    let identity = identify(&app, &headers, &params, &offered)?;
    let verdict = app
        .ctx
        .workers
        .authorize(
            &identity.tenant,
            identity.topic_list(),
            identity.can_publish,
            identity.claims.clone(),
        )
        .await;
    if let Authorization::Deny(reason) = verdict {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "guest_denied",
            format!("denied: {reason}"),
        ));
    }

    let allowed = |t: &Topic| {
        identity
            .topics
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| p.matches(t)))
    };
    let v1 = offered.iter().any(|p| p == protocol::SUBPROTOCOL);
    let (protocol, format, filter) = if v1 {
        // v1 sessions start with no topic and subscribe explicitly.
        (
            Protocol::V1,
            FrameFormat::Envelope,
            TopicFilter::Only(HashSet::new()),
        )
    } else {
        let filter = match (params.get("topics"), &identity.topics) {
            (Some(list), _) => match parse_topics(list) {
                Ok(topics) => {
                    if let Some(t) = topics.iter().find(|t| !allowed(t)) {
                        return Err(refuse(
                            StatusCode::FORBIDDEN,
                            "forbidden_topic",
                            format!("topic {t} is not allowed by your token"),
                        ));
                    }
                    TopicFilter::Only(topics)
                }
                Err(e) => {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "invalid_topic",
                        format!("invalid topic name: {e}"),
                    ))
                }
            },
            (None, None) => TopicFilter::All,
            (None, Some(patterns)) => TopicFilter::Matching(patterns.clone()),
        };
        (Protocol::Legacy, app.frame, filter)
    };
    // A browser fails the connection unless the server picks one of the offered subprotocols.
    let selected = if v1 {
        Some(protocol::SUBPROTOCOL.to_owned())
    } else {
        offered
            .iter()
            .find(|p| p.starts_with(TOKEN_PROTOCOL_PREFIX))
            .cloned()
    };

    // Registered before the 101 goes out, so a message published right after the client sees the
    // upgrade already has somewhere to go.
    let registration = app
        .hub
        .register(&identity.tenant, format, filter)
        .map_err(|e| {
            let reason = match e {
                LimitReached::Total(_) => "server_full",
                LimitReached::Tenant(_) => "tenant_full",
            };
            refuse(StatusCode::SERVICE_UNAVAILABLE, reason, e.to_string())
        })?;
    let session = Session {
        registration,
        identity,
        protocol,
    };
    let ctx = app.ctx.clone();
    let shutdown = app.shutdown.clone();
    let sessions = app.sessions.clone();
    Ok(upgrade
        .protocols(selected)
        .read_buffer_size(app.ws_read_buffer)
        .max_message_size(app.max_client_message)
        .max_frame_size(app.max_client_message)
        .on_upgrade(move |socket| sessions.track_future(session.run(socket, ctx, shutdown))))
}
