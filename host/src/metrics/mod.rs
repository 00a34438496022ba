//! Metric names, their descriptions, and the recorders that keep them: the Prometheus exporter and
//! the console's live figures (`figures`).
//!
//! Owns the vocabulary of `/metrics`: every other module records through the `metrics` macros with a
//! name from here, so the set of series is visible in one place. It does not serve HTTP (`server` and
//! `admin` do).

mod figures;

use std::sync::Arc;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::layers::FanoutBuilder;
use metrics_util::MetricKindMask;

pub use figures::{Figures, Snapshot, TenantSnapshot, CALL_TIME_BOUNDS_US};

pub const NOTIFICATIONS_RECEIVED: &str = "pgws_notifications_received_total";
pub const NOTIFICATIONS_REJECTED: &str = "pgws_notifications_rejected_total";
pub const MESSAGES_DROPPED: &str = "pgws_messages_dropped_total";
pub const TENANT_NOTIFICATIONS: &str = "pgws_tenant_notifications_total";
pub const MESSAGES_PUBLISHED: &str = "pgws_messages_published_total";
pub const DELIVERIES: &str = "pgws_deliveries_total";
pub const CONNECTIONS: &str = "pgws_connections";
pub const CONNECTIONS_OPENED: &str = "pgws_connections_opened_total";
pub const CONNECTIONS_REFUSED: &str = "pgws_connections_refused_total";
pub const SESSIONS_CLOSED: &str = "pgws_sessions_closed_total";
pub const QUEUE_OVERFLOWS: &str = "pgws_queue_overflows_total";
pub const LISTENER_CONNECTED: &str = "pgws_listener_connected";
pub const LISTENER_RECONNECTS: &str = "pgws_listener_reconnects_total";
pub const LISTENER_LAG: &str = "pgws_listener_lag_seconds";
pub const GUEST_CALLS: &str = "pgws_guest_calls_total";
pub const GUEST_FAILURES: &str = "pgws_guest_failures_total";
pub const GUEST_CALL_SECONDS: &str = "pgws_guest_call_seconds";
pub const GUEST_LOADS: &str = "pgws_guest_loads_total";
pub const GUEST_ISOLATIONS: &str = "pgws_guest_isolations_total";
pub const GUEST_ISOLATIONS_ENDED: &str = "pgws_guest_isolations_ended_total";
pub const GUEST_THROTTLED: &str = "pgws_guest_throttled_total";
pub const GUESTS_NOT_LOADED: &str = "pgws_guests_not_loaded";
pub const TENANT_QUEUE_DROPS: &str = "pgws_tenant_queue_dropped_total";
pub const CLIENT_PUBLISHES: &str = "pgws_client_publishes_total";
pub const SOCKETIO_CONNECTIONS: &str = "pgws_socketio_connections_total";
pub const SOCKETIO_DISCONNECTIONS: &str = "pgws_socketio_disconnections_total";
pub const SOCKETIO_EVENTS: &str = "pgws_socketio_events_total";
pub const SOCKETIO_SEND_FAILURES: &str = "pgws_socketio_send_failures_total";
pub const SOCKETIO_TOO_SLOW: &str = "pgws_socketio_too_slow_total";
pub const FANOUT_DROPPED: &str = "pgws_fanout_dropped_total";
pub const SOCKETIO_ERRORS: &str = "pgws_socketio_errors_total";
pub const LIMIT_REFUSALS: &str = "pgws_limit_refusals_total";
pub const SOCKETIO_HANDSHAKES_REFUSED: &str = "pgws_socketio_handshakes_refused_total";
pub const METRICS_REFUSED: &str = "pgws_metrics_refused_total";
pub const STREAM_RECOVERIES: &str = "pgws_stream_recoveries_total";
pub const STREAM_READ_ERRORS: &str = "pgws_stream_read_errors_total";
pub const STREAM_EXPIRED: &str = "pgws_stream_expired_total";
pub const STREAM_PRUNED: &str = "pgws_stream_pruned_total";

/// Where recorded series can be read: the Prometheus exposition and the console's figures.
#[derive(Clone)]
pub struct Recorded {
    pub prometheus: PrometheusHandle,
    pub figures: Arc<Figures>,
}

/// Installs the global recorder and describes every series. Call once, from the binary.
pub fn install() -> anyhow::Result<Recorded> {
    let prometheus = PrometheusBuilder::new()
        // Per-tenant counters and histograms of tenants that went quiet are dropped after an hour
        // (a scrape sees a counter reset if the tenant comes back): tenant names come from NOTIFY
        // payloads, so their series must not accumulate for ever. Gauges (connections) stay: a gauge
        // of a tenant still connected must not vanish, and their tenants come from verified tokens.
        .idle_timeout(
            MetricKindMask::COUNTER | MetricKindMask::HISTOGRAM,
            Some(std::time::Duration::from_secs(3600)),
        )
        .set_buckets_for_metric(
            Matcher::Full(GUEST_CALL_SECONDS.into()),
            &[
                1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1, 1.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full(LISTENER_LAG.into()),
            &[1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0],
        )?
        .build_recorder();
    let figures = Arc::new(Figures::default());
    let recorded = Recorded {
        prometheus: prometheus.handle(),
        figures: figures.clone(),
    };
    let both = FanoutBuilder::default()
        .add_recorder(prometheus)
        .add_recorder(figures::FiguresRecorder(figures))
        .build();
    metrics::set_global_recorder(both)
        .map_err(|_| anyhow::anyhow!("a metrics recorder is already installed"))?;
    describe();
    Ok(recorded)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        NOTIFICATIONS_RECEIVED,
        "NOTIFYs received on the LISTEN connection"
    );
    describe_counter!(
        NOTIFICATIONS_REJECTED,
        "NOTIFYs or guest outputs refused, by reason"
    );
    describe_counter!(
        MESSAGES_DROPPED,
        "Messages a guest chose to drop, by tenant"
    );
    describe_counter!(
        TENANT_NOTIFICATIONS,
        "Notifications that reached their tenant (before its guest; including those its full queue dropped), by tenant"
    );
    describe_counter!(
        MESSAGES_PUBLISHED,
        "Notifications delivered after the guest (to /ws sessions or socket.io sockets), by tenant"
    );
    describe_counter!(DELIVERIES, "Frames written or queued to /ws sessions");
    describe_gauge!(CONNECTIONS, "Open WebSocket sessions, by tenant");
    describe_counter!(CONNECTIONS_OPENED, "WebSocket sessions opened");
    describe_counter!(CONNECTIONS_REFUSED, "WebSocket upgrades refused, by reason");
    describe_counter!(SESSIONS_CLOSED, "WebSocket sessions closed, by reason");
    describe_counter!(
        QUEUE_OVERFLOWS,
        "Sessions closed because their queue was full"
    );
    describe_gauge!(
        LISTENER_CONNECTED,
        "1 while the LISTEN connection is up and listening"
    );
    describe_counter!(LISTENER_RECONNECTS, "Times the LISTEN connection was lost");
    describe_histogram!(
        LISTENER_LAG,
        Unit::Seconds,
        "Time from receiving a NOTIFY to handing it to the hub"
    );
    describe_counter!(GUEST_CALLS, "Guest calls, by tenant and outcome");
    describe_counter!(
        GUEST_FAILURES,
        "Guest calls that failed, by tenant and kind (not_loaded: the guest meant to serve was refused)"
    );
    describe_histogram!(
        GUEST_CALL_SECONDS,
        Unit::Seconds,
        "Guest running time per call (time waiting for a thread excluded), by tenant"
    );
    describe_counter!(
        GUEST_ISOLATIONS,
        "Times a tenant's guest was isolated after repeated failures (for --guest-isolation-secs), by tenant"
    );
    describe_counter!(
        GUEST_ISOLATIONS_ENDED,
        "Isolations that ended (ran out, or the guest was replaced), by tenant: a tenant is isolated while its isolations outnumber these"
    );
    describe_counter!(
        GUEST_THROTTLED,
        "Times a tenant's guest used its --guest-cpu-ms-per-sec budget and waited for the next second, by tenant"
    );
    describe_gauge!(
        GUESTS_NOT_LOADED,
        "Guests whose file was refused while no version serves (their tenants fail closed)"
    );
    describe_counter!(
        TENANT_QUEUE_DROPS,
        "Jobs dropped because the tenant's guest queue (--guest-queue) was full, by tenant"
    );
    describe_counter!(GUEST_LOADS, "Guest components loaded, by outcome");
    describe_counter!(CLIENT_PUBLISHES, "Client publish frames, by outcome");
    describe_counter!(SOCKETIO_CONNECTIONS, "socket.io clients connected");
    describe_counter!(SOCKETIO_DISCONNECTIONS, "socket.io clients disconnected");
    describe_counter!(
        SOCKETIO_EVENTS,
        "socket.io `event`s sent, one per message per subscribed socket"
    );
    describe_counter!(
        SOCKETIO_SEND_FAILURES,
        "socket.io answers (subscribed, published, error, ...) a socket could not take, by event"
    );
    describe_counter!(
        FANOUT_DROPPED,
        "Messages a fan-out shard dropped because it was too far behind (the server is out of CPU)"
    );
    describe_counter!(
        SOCKETIO_TOO_SLOW,
        "socket.io clients disconnected because their send buffer stayed full (client too slow)"
    );
    describe_counter!(
        LIMIT_REFUSALS,
        "Requests refused by a cap, by limit (topics_per_session, channels_per_socket, listen_channels_per_tenant, listen_channels)"
    );
    describe_counter!(
        SOCKETIO_HANDSHAKES_REFUSED,
        "Engine.IO handshakes refused, by reason (too_many_pending: too many sessions waiting to authenticate)"
    );
    describe_counter!(
        METRICS_REFUSED,
        "/metrics requests refused for a missing or wrong --metrics-token"
    );
    describe_counter!(
        STREAM_RECOVERIES,
        "Durable-stream recoveries asked for by reconnecting clients, by outcome (recovered, not_recovered)"
    );
    describe_counter!(
        STREAM_READ_ERRORS,
        "Failed reads of durable streams (retried by the safety poll)"
    );
    describe_counter!(
        STREAM_EXPIRED,
        "Durable messages pruned by retention before this server delivered them, by tenant"
    );
    describe_counter!(
        STREAM_PRUNED,
        "Durable messages deleted by retention (age or count)"
    );
    describe_counter!(
        SOCKETIO_ERRORS,
        "socket.io requests answered with `error`, by event"
    );
}
