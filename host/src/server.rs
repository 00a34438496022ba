//! The HTTP face of pgws and the wiring of the whole service.
//!
//! Owns the listening socket and accept loop, the plain routes (`/`, `/client/pgws-client.js`,
//! `/socket-test`, `/healthz`, `/readyz`, `/metrics`; `/ws` is `upgrade`'s, `/socket.io/` is
//! `socketio`'s, `/admin` is `admin`'s), and the order of
//! start-up and shutdown: guests load before the listener starts (so no message skips its guest), and
//! on shutdown the server stops accepting, closes every session with 1001, waits for them within a
//! bound, then stops the listener and the dispatcher.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Admission, ConnectionLimits};
use crate::auth::{Authenticator, IdentityRules, TokenRules};
use crate::channels::{Channels, ListenLimits};
use crate::config::{Config, GuestSettings};
use crate::deliver::Deliverer;
use crate::dispatch;
use crate::envelope::TenantId;
use crate::guest::{GuestLimits, GuestRegistry, GuestRuntime};
use crate::handshakes::{self, Handshakes};
use crate::hub::Hub;
use crate::listener::{self, ListenerConfig, Readiness};
use crate::publisher::Publisher;
use crate::session::SessionContext;
use crate::socketio::{self, SocketIoContext};
use crate::streams::{StreamRules, Streams};
use crate::upgrade::Upgrades;
use crate::workers::Workers;

/// Event batches buffered between the LISTEN connection and the dispatcher (at most
/// `listener::MAX_EVENT_BATCH` events each, so at most 65,536 events).
const LISTENER_QUEUE: usize = 256;
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

/// What the health and metrics routes read.
#[derive(Clone)]
struct AppState {
    readiness: Readiness,
    metrics: Option<PrometheusHandle>,
    /// `--metrics-token`, required by `/metrics` when set.
    metrics_token: Option<Arc<str>>,
}

/// Runs the service on `tcp` until `shutdown` is cancelled, then shuts down in order.
pub async fn run(
    config: Config,
    tcp: TcpListener,
    metrics: Option<crate::metrics::Recorded>,
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

    let auth = Authenticator::new(TokenRules::from(&config.tokens))
        .context("loading the JWT keys")?
        .map(Arc::new);
    match &auth {
        Some(auth) => crate::auth::watch_jwks(auth.clone(), shutdown.clone()),
        None if !config.insecure_tenant_param => tracing::warn!(
            "no --jwt-secret, --jwt-public-key or --jwt-jwks: every client with a token will be refused"
        ),
        None => {}
    }
    if config.metrics_token.is_none() && config.admin_listen.is_none() {
        tracing::warn!(
            "/metrics is open to anyone who reaches --listen and names every tenant; set \
             --metrics-token or --admin-listen to keep it private"
        );
    }
    let publisher = Arc::new(
        Publisher::new(&database_url, config.inbound_channel(), 4)
            .context("setting up the publish connection pool")?,
    );

    let registry = load_guests(&config.guest).await?;
    if let Some(dir) = &config.guest.guests {
        crate::guest::watch_dir(registry.clone(), dir.clone(), shutdown.clone())
            .with_context(|| format!("watching guest directory {}", dir.display()))?;
    }

    // A fan-out shard, and thread, per CPU.
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let hub = Arc::new(
        Hub::start(config.sessions.session_queue, cpus).context("starting the fan-out threads")?,
    );
    let admission = Arc::new(Admission::new(ConnectionLimits::from(&config.limits)));
    let readiness = Readiness::default();
    let (mut channels, listen_commands) = Channels::new(
        &config.listener.channels,
        config.inbound_channel(),
        ListenLimits::from(&config.limits),
    );
    let mut listener_config = ListenerConfig::new(database_url.clone(), &config.listener);
    if config.streams.streams {
        // The doorbell is LISTENed with the envelope channels, and nobody may subscribe to it.
        listener_config
            .channels
            .push(crate::streams::DOORBELL_CHANNEL.to_owned());
        channels.reserve(crate::streams::DOORBELL_CHANNEL);
    }
    let channels = Arc::new(channels);
    let (events_tx, events_rx) = mpsc::channel(LISTENER_QUEUE);
    let listener_task = tokio::spawn(listener::run(
        listener_config,
        events_tx,
        readiness.clone(),
        channels.clone(),
        listen_commands,
        shutdown.clone(),
    ));
    let (socketio_layer, io) = socketio::layer(&config.socketio, config.sessions.session_queue);
    let workers = Workers::start(
        registry.clone(),
        Deliverer { hub: hub.clone() },
        &config.workers,
    )
    .context("starting guest threads")?;
    let streams = if config.streams.streams {
        let streams = Streams::start(
            &database_url,
            workers.clone(),
            hub.clone(),
            StreamRules::from(&config.streams),
            shutdown.clone(),
        )
        .context("starting the durable-stream reader")?;
        match streams.check_schema().await {
            Ok(version) => tracing::info!(version, "durable streams on"),
            // Postgres is not up yet: the reader checks again once it is, as the listener waits.
            Err(e)
                if matches!(
                    e.downcast_ref::<crate::streams::schema::SchemaError>(),
                    Some(crate::streams::schema::SchemaError::Unreachable(_))
                ) =>
            {
                tracing::warn!(error = %e, "could not check the durable-streams schema yet")
            }
            Err(e) => return Err(e.context("--streams")),
        }
        Some(streams)
    } else {
        None
    };
    let dispatch_task = tokio::spawn(dispatch::run(
        events_rx,
        workers.clone(),
        hub.clone(),
        channels.clone(),
        streams.clone(),
    ));

    let anonymous_tenant = config
        .socketio
        .socketio_anonymous_tenant
        .as_deref()
        .map(TenantId::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--socketio-anonymous-tenant: {e}"))?;
    if let Some(t) = &anonymous_tenant {
        tracing::warn!(
            tenant = %t,
            "--socketio-anonymous-tenant is on: socket.io clients without a token read any \
             unreserved channel as this tenant"
        );
    }
    let identity_rules = IdentityRules {
        auth,
        insecure_tenant_param: config.insecure_tenant_param,
        anonymous_tenant: None,
        anonymous_can_publish: false,
    };
    let socketio_rules = IdentityRules {
        anonymous_tenant,
        anonymous_can_publish: config.socketio.socketio_test_pub,
        ..identity_rules.clone()
    };
    let handshakes = Arc::new(Handshakes::new(
        socketio_rules.clone(),
        config.socketio.socketio_max_pending,
        config.socketio.connect_timeout(),
    ));
    socketio::attach(
        &io,
        Arc::new(SocketIoContext {
            identity_rules: socketio_rules,
            admission: admission.clone(),
            test_pub: config.socketio.socketio_test_pub,
            max_channels: config.socketio.max_channels_per_socket,
            channels: channels.clone(),
            hub: hub.clone(),
            workers: workers.clone(),
            publisher: publisher.clone(),
            publish_rate: config.publish.publish_rate,
            publish_burst: config.publish.publish_burst,
            shutdown: shutdown.clone(),
            handshakes: handshakes.clone(),
            admitted: Default::default(),
        }),
    );

    let sessions = TaskTracker::new();
    let upgrades = Upgrades {
        hub,
        admission,
        frame: config.sessions.frame,
        identity_rules,
        max_topics: config.sessions.max_topics_per_session,
        ctx: Arc::new(
            SessionContext::new(workers, publisher, &config.sessions, &config.publish)
                .with_streams(streams),
        ),
        shutdown: shutdown.clone(),
        sessions: sessions.clone(),
    };
    let state = AppState {
        readiness,
        metrics: metrics.as_ref().map(|m| m.prometheus.clone()),
        metrics_token: config.metrics_token.as_deref().map(Arc::from),
    };
    // `/metrics` and `/admin/*`: on the main address, or only on their own.
    let operator = {
        let admin = match &config.admin_token {
            Some(token) => crate::admin::routes(crate::admin::Admin {
                registry: registry.clone(),
                channels: channels.clone(),
                token: Arc::from(token.as_str()),
                figures: metrics
                    .as_ref()
                    .map(|m| m.figures.clone())
                    .unwrap_or_default(),
                isolation: Duration::from_secs(config.workers.guest_isolation_secs),
            }),
            None => Router::new(),
        };
        Router::new()
            .route("/metrics", get(metrics_handler))
            .with_state(state.clone())
            .merge(admin)
    };
    let mut app = Router::new()
        .route("/", get(demo_page))
        .route("/client/pgws-client.js", get(client_module))
        .route("/socket-test", get(socket_test_page))
        // Where socketio_pg served its test page.
        .route("/static/test.html", get(socket_test_page))
        .route("/static/socket.io.js", get(socketio_client))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state.clone())
        .merge(crate::upgrade::routes(upgrades));
    let handshake_timeout = config.sessions.handshake_timeout();
    let operator_task = match config.admin_listen {
        None => {
            app = app.merge(operator);
            None
        }
        Some(addr) => {
            let tcp = bind(addr).with_context(|| format!("binding --admin-listen {addr}"))?;
            tracing::info!(%addr, "metrics and admin API serving");
            let operator = Router::new()
                .route("/healthz", get(|| async { "ok\n" }))
                .route("/readyz", get(readyz))
                .with_state(state)
                .merge(operator);
            Some(tokio::spawn(serve_http(
                tcp,
                operator,
                handshake_timeout,
                shutdown.clone(),
            )))
        }
    };
    let app = app
        .layer(socketio_layer)
        .layer(axum::middleware::from_fn(socketio::binary_polling))
        .layer(axum::middleware::from_fn(socketio::own_head))
        .layer(axum::middleware::from_fn_with_state(
            handshakes,
            handshakes::guard,
        ));

    let addr = tcp.local_addr()?;
    tracing::info!(%addr, channels = ?config.listener.channels, "pgws serving");
    serve_http(tcp, app, handshake_timeout, shutdown.clone()).await;
    if let Some(task) = operator_task {
        let _ = task.await;
    }

    // Sessions saw the same cancellation and are sending 1001; give them a bounded time to finish.
    // socket.io clients get a disconnect packet (and release their channels) the same way.
    sessions.close();
    let bound = Duration::from_secs(config.shutdown_secs);
    if tokio::time::timeout(bound, io.close()).await.is_err() {
        tracing::warn!("socket.io clients still open after {bound:?}");
    }
    if tokio::time::timeout(bound, sessions.wait()).await.is_err() {
        tracing::warn!(
            remaining = sessions.len(),
            "sessions still open after {bound:?}; exiting anyway"
        );
    }
    let _ = listener_task.await;
    let _ = dispatch_task.await;
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
        // The peer address rides along as a request extension (socket.io's `server_hello` names it).
        let app = app.clone();
        let service = hyper::service::service_fn(
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                tower::ServiceExt::oneshot(app.clone(), request)
            },
        );
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
async fn load_guests(settings: &GuestSettings) -> anyhow::Result<Arc<GuestRegistry>> {
    let limits = GuestLimits::from(settings);
    let cache = settings.guest_cache.clone().or_else(default_cache_dir);
    let dir = settings.guests.clone();
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

/// socketio_pg's test page: connect, subscribe to a channel, watch events arrive.
async fn socket_test_page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("../static/socket-test.html"))
}

/// The socket.io JavaScript client 2.x that socketio_pg bundled (it speaks to `/socket.io/` with the
/// older protocol, which this server also speaks).
async fn socketio_client() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/socket.io-2.5.0.min.js"),
    )
        .into_response()
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

async fn metrics_handler(State(app): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(token) = &app.metrics_token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::auth::bearer_token);
        if !presented.is_some_and(|t| crate::admin::same(t.as_bytes(), token.as_bytes())) {
            metrics::counter!(crate::metrics::METRICS_REFUSED).increment(1);
            return (
                StatusCode::UNAUTHORIZED,
                "metrics need Authorization: Bearer <--metrics-token>\n",
            )
                .into_response();
        }
    }
    match &app.metrics {
        Some(handle) => handle.render().into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response(),
    }
}
