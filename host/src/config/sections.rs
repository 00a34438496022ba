//! The settings, one section per part of the server that reads them. Each section is that part's
//! own settings: `server` hands it over whole, and the part derives what it needs from it.
//!
//! Flags stay flat on the command line and in the `--config` file (`guest-timeout-ms = 50`); the
//! sections only group them (and their `--help` headings).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::FailurePolicy;
use crate::frame::FrameFormat;

/// How client tokens are verified (`auth`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Client tokens (JWT)")]
pub struct TokenSettings {
    /// HS256 secret that client tokens (JWT) are signed with; at least 32 bytes
    /// (e.g. `openssl rand -base64 48`).
    #[arg(long, env = "PGWS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM file with the RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA) public key that client
    /// tokens are signed with.
    #[arg(long, env = "PGWS_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// JWKS file (`{"keys": [...]}`) of verification keys, each with a `kid`; a token's `kid` picks
    /// its key. The file is re-read when it changes, so keys rotate without a restart.
    #[arg(long, env = "PGWS_JWT_JWKS")]
    pub jwt_jwks: Option<PathBuf>,

    /// Required `aud` of every token (its `aud`, a string or a list, must hold this value).
    #[arg(long, env = "PGWS_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` of every token.
    #[arg(long, env = "PGWS_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Clock skew allowed on a token's `exp` and `nbf`, in seconds. A session is closed when its
    /// token's `exp` plus this has passed.
    #[arg(long, env = "PGWS_JWT_LEEWAY_SECS", default_value_t = 5)]
    pub jwt_leeway_secs: u64,

    /// Token claim that names the client's tenant.
    #[arg(long, env = "PGWS_JWT_TENANT_CLAIM", default_value = "tenant")]
    pub jwt_tenant_claim: String,
}

impl TokenSettings {
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.jwt_leeway_secs)
    }
}

/// What the LISTEN connection listens to and how it comes back (`listener`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "PostgreSQL")]
pub struct ListenerSettings {
    /// Postgres channel to LISTEN on; repeat the flag (or comma-separate the variable) for several.
    #[arg(
        long = "channel",
        env = "PGWS_CHANNEL",
        value_delimiter = ',',
        default_value = "pgwebsocket"
    )]
    pub channels: Vec<String>,

    /// First wait before reconnecting to Postgres, in milliseconds; doubles up to --reconnect-max-ms.
    #[arg(long, env = "PGWS_RECONNECT_MIN_MS", default_value_t = 100)]
    pub reconnect_min_ms: u64,

    /// Longest wait between reconnect attempts, in milliseconds: after an outage of any length,
    /// messages flow again within about this long of Postgres' return.
    #[arg(long, env = "PGWS_RECONNECT_MAX_MS", default_value_t = 500)]
    pub reconnect_max_ms: u64,

    /// Seconds between liveness checks of the LISTEN connection; a check that gets no answer
    /// within the same time counts the connection as dead and reconnects.
    #[arg(long, env = "PGWS_HEALTH_CHECK_SECS", default_value_t = 5)]
    pub health_check_secs: u64,
}

impl ListenerSettings {
    /// The first and the longest wait between reconnect attempts.
    pub fn backoff(&self) -> (Duration, Duration) {
        let min = Duration::from_millis(self.reconnect_min_ms.max(1));
        (min, Duration::from_millis(self.reconnect_max_ms).max(min))
    }

    pub fn health_check(&self) -> Duration {
        Duration::from_secs(self.health_check_secs.max(1))
    }
}

/// Where guests come from and the sandbox each call runs in (`guest`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Guests")]
pub struct GuestSettings {
    /// Directory of guest components: `<tenant>.wasm` for one tenant, `_default.wasm` for every tenant
    /// without its own. No guest for a tenant and no default means messages are forwarded unchanged.
    #[arg(long, env = "PGWS_GUESTS")]
    pub guests: Option<PathBuf>,

    /// Where compiled guests are cached so a restart does not recompile them.
    /// Default: `$XDG_CACHE_HOME/pgws` or `~/.cache/pgws`.
    #[arg(long, env = "PGWS_GUEST_CACHE")]
    pub guest_cache: Option<PathBuf>,

    /// Longest a guest may run for one call, in milliseconds; past it the call is interrupted.
    #[arg(long, env = "PGWS_GUEST_TIMEOUT_MS", default_value_t = 100)]
    pub guest_timeout_ms: u64,

    /// Most linear memory one guest instance may grow to, in MiB.
    #[arg(long, env = "PGWS_GUEST_MEMORY_MB", default_value_t = 64)]
    pub guest_memory_mb: u64,

    /// Most bytes of bodies one guest call may return (all routes together).
    #[arg(long, env = "PGWS_GUEST_MAX_OUTPUT", default_value_t = 256 * 1024)]
    pub guest_max_output: usize,

    /// Most topics one guest call may route a message to.
    #[arg(long, env = "PGWS_GUEST_MAX_ROUTES", default_value_t = 32)]
    pub guest_max_routes: usize,
}

impl GuestSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.guest_timeout_ms)
    }

    pub fn memory_bytes(&self) -> usize {
        (self.guest_memory_mb as usize).saturating_mul(1 << 20)
    }
}

/// How guest calls are scheduled and what their failures do (`workers`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Guest scheduling")]
pub struct WorkerSettings {
    /// What happens to a message whose guest fails (trap, timeout, cap): `closed` drops it (the
    /// default: a broken filter must not leak what it was meant to filter); `open` forwards it unchanged.
    #[arg(long, env = "PGWS_GUEST_FAILURE", value_enum, default_value_t = FailurePolicy::Closed)]
    pub guest_failure: FailurePolicy,

    /// After this many failures in a row a tenant's guest is isolated: it is not called, and its
    /// messages follow --guest-failure, until --guest-isolation-secs have passed.
    #[arg(long, env = "PGWS_GUEST_MAX_FAILURES", default_value_t = 5)]
    pub guest_max_failures: u32,

    /// How long an isolated guest rests before it is tried again, in seconds.
    #[arg(long, env = "PGWS_GUEST_ISOLATION_SECS", default_value_t = 30)]
    pub guest_isolation_secs: u64,

    /// Threads that run slow guests (a tenant whose last call ran over 2 ms), at a lower OS priority
    /// than deliveries; quick guests run on one more thread at normal priority. Any thread runs any
    /// tenant, one call of a tenant at a time (so its messages stay in order); a slow guest gives
    /// its thread up every millisecond. Default: half the CPUs (at least one).
    #[arg(long, env = "PGWS_GUEST_THREADS")]
    pub guest_threads: Option<usize>,

    /// Warm guest instances kept ready, all tenants together. Each holds its guest's memory (up to
    /// --guest-memory-mb); past this many, tenants beyond the ones already warm get a fresh instance
    /// for each run of messages, and instances of tenants quiet for a minute are dropped.
    #[arg(long, env = "PGWS_GUEST_MAX_WARM", default_value_t = 1_000)]
    pub guest_max_warm: usize,

    /// Messages (and client requests) one tenant may have waiting for its guest. Past it that
    /// tenant's new messages are dropped, counted and announced to its pgws.v1 clients as a gap;
    /// other tenants are not affected.
    #[arg(long, env = "PGWS_GUEST_QUEUE", default_value_t = 4096)]
    pub guest_queue: usize,

    /// Guest running time one tenant may use per second, in milliseconds. A tenant over it waits for
    /// the next second (throttled, counted in pgws_guest_throttled_total); others are not slowed.
    #[arg(long, env = "PGWS_GUEST_CPU_MS_PER_SEC", default_value_t = 250)]
    pub guest_cpu_ms_per_sec: u64,
}

impl WorkerSettings {
    pub fn threads(&self) -> usize {
        self.guest_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()) / 2)
            .max(1)
    }
}

/// What every client connection is held to (`session`, `outbox`, `upgrade`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "WebSocket clients")]
pub struct SessionSettings {
    /// Shape of the frame sent to clients: `pgws` sends {"payload": <body>, "channel": "<channel>",
    /// "id": "<uuid>"} like pgws; `raw` sends the JSON body alone, like pgws's first release.
    #[arg(long, env = "PGWS_FRAME", value_enum, default_value_t = FrameFormat::Pgws)]
    pub frame: FrameFormat,

    /// Frames that may wait for a client's full socket before the client counts as too slow and is
    /// closed (code 1013; a socket.io client is disconnected).
    #[arg(long, env = "PGWS_SESSION_QUEUE", default_value_t = 1024)]
    pub session_queue: usize,

    /// Seconds a write to a client may wait for its socket; a client whose socket takes nothing for
    /// this long is closed, even if its queue never fills.
    #[arg(long, env = "PGWS_WRITE_TIMEOUT_SECS", default_value_t = 30)]
    pub write_timeout_secs: u64,

    /// Largest message a client may send, in bytes; a bigger one closes the connection (1009).
    #[arg(long, env = "PGWS_MAX_CLIENT_MESSAGE", default_value_t = 64 * 1024)]
    pub max_client_message: usize,

    /// Seconds between keepalive pings to each client; a client that has not answered by the next
    /// ping is dropped.
    #[arg(long, env = "PGWS_PING_SECS", default_value_t = 30)]
    pub ping_secs: u64,

    /// Topics one connection may take (`?topics=` or pgws.v1 subscriptions).
    #[arg(long, env = "PGWS_MAX_TOPICS_PER_SESSION", default_value_t = 256)]
    pub max_topics_per_session: usize,

    /// Seconds a client has to send its complete HTTP request (the WebSocket handshake) after
    /// connecting; slower connections are closed.
    #[arg(long, env = "PGWS_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10)]
    pub handshake_timeout_secs: u64,
}

impl SessionSettings {
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_secs.max(1))
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs.max(1))
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs.max(1))
    }
}

/// Where client messages go and how fast (`publisher`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Client publishes")]
pub struct PublishSettings {
    /// Postgres channel that messages published by clients are NOTIFYed on, as
    /// `<tenant>[/<topic>],<json>` with the tenant taken from the client's token.
    /// Default: the first --channel, so other clients of the tenant receive them too.
    #[arg(long, env = "PGWS_INBOUND_CHANNEL")]
    pub inbound_channel: Option<String>,

    /// Publishes per second one client may sustain.
    #[arg(long, env = "PGWS_PUBLISH_RATE", default_value_t = 10.0)]
    pub publish_rate: f64,

    /// Publishes one client may send in a burst above the sustained rate.
    #[arg(long, env = "PGWS_PUBLISH_BURST", default_value_t = 20.0)]
    pub publish_burst: f64,
}

/// socket.io clients (`socketio`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "socket.io")]
pub struct SocketIoSettings {
    /// socket.io clients (at /socket.io/) that present no token connect as this tenant and may
    /// subscribe to any channel that is not reserved, as with socketio_pg. For moving socketio_pg
    /// users over unchanged; anyone who can reach the server can then read those channels.
    #[arg(long, env = "PGWS_SOCKETIO_ANONYMOUS_TENANT")]
    pub socketio_anonymous_tenant: Option<String>,

    /// DEVELOPMENT ONLY: let every socket.io client use `test_pub` (NOTIFY on a channel it may
    /// subscribe to), not only clients whose token has `"mode": "rw"`.
    #[arg(long, env = "PGWS_SOCKETIO_TEST_PUB")]
    pub socketio_test_pub: bool,

    /// Channels one socket.io socket may subscribe to.
    #[arg(long, env = "PGWS_MAX_CHANNELS_PER_SOCKET", default_value_t = 256)]
    pub max_channels_per_socket: usize,

    /// Engine.IO sessions that may wait at once for their socket.io connect packet (where a
    /// client sends its token). More are refused with 503; a token sent with the handshake itself
    /// (`?token=` or `Authorization`) is checked there and does not count.
    #[arg(long, env = "PGWS_SOCKETIO_MAX_PENDING", default_value_t = 1_000)]
    pub socketio_max_pending: usize,

    /// Seconds an Engine.IO session may wait for its socket.io connect packet before it is closed.
    #[arg(long, env = "PGWS_SOCKETIO_CONNECT_TIMEOUT_SECS", default_value_t = 5)]
    pub socketio_connect_timeout_secs: u64,

    /// WebSocket read buffer per socket.io connection, in bytes. Small keeps idle connections cheap
    /// (`/ws` connections hold no read buffer while idle).
    #[arg(long, env = "PGWS_WS_READ_BUFFER", default_value_t = 1024)]
    pub ws_read_buffer: usize,
}

impl SocketIoSettings {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.socketio_connect_timeout_secs.max(1))
    }
}

/// How much the process takes on at once (`admission`, `channels`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitSettings {
    /// Most clients this process serves, /ws sessions and socket.io sockets together; more are
    /// refused (503 on /ws, connect_error on socket.io).
    #[arg(long, env = "PGWS_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Most clients one tenant may hold in this process, both endpoints together; more are refused.
    #[arg(
        long,
        env = "PGWS_MAX_CONNECTIONS_PER_TENANT",
        default_value_t = 100_000
    )]
    pub max_connections_per_tenant: usize,

    /// Channels the listener may LISTEN on for socket.io clients, all tenants together.
    #[arg(long, env = "PGWS_MAX_LISTEN_CHANNELS", default_value_t = 10_000)]
    pub max_listen_channels: usize,

    /// Channels one tenant's socket.io clients may make the listener LISTEN on.
    #[arg(
        long,
        env = "PGWS_MAX_LISTEN_CHANNELS_PER_TENANT",
        default_value_t = 1_000
    )]
    pub max_listen_channels_per_tenant: usize,
}

/// Durable streams: messages stored with `pgws_publish` and read back by position (`streams`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Durable streams")]
pub struct StreamSettings {
    /// Deliver durable messages: those stored with the SQL function `pgws_publish(tenant, topic,
    /// body)` (install it with `pgws schema install`), each with its position, so a `pgws.v1`
    /// client that reconnects recovers what it missed. Plain NOTIFY keeps working beside it.
    #[arg(long, env = "PGWS_STREAMS")]
    pub streams: bool,

    /// Safety poll, in milliseconds: how often the streams of served tenants are checked without a
    /// doorbell, so a lost doorbell costs at most this much latency, never a message.
    #[arg(long, env = "PGWS_STREAM_POLL_MS", default_value_t = 1000)]
    pub stream_poll_ms: u64,

    /// When producers quiet the doorbell (`SET pgws.doorbell_ms = N`: a stream rings at most once
    /// per N ms, for high rates of small transactions), set this to the same N: a stream whose
    /// read found messages is read again N ms later, for those whose doorbell stayed silent.
    /// 0 (the default): every publishing transaction rings.
    #[arg(long, env = "PGWS_STREAM_DOORBELL_MS", default_value_t = 0)]
    pub stream_doorbell_ms: u64,

    /// Most messages one recovery replays; a client that missed more gets `recovered: false`.
    #[arg(long, env = "PGWS_STREAM_RECOVER_MAX", default_value_t = 10_000)]
    pub stream_recover_max: u64,

    /// Oldest message a recovery replays, in seconds; a client that missed older ones gets
    /// `recovered: false`.
    #[arg(long, env = "PGWS_STREAM_RECOVER_MAX_AGE_SECS", default_value_t = 3600)]
    pub stream_recover_max_age_secs: u64,

    /// Stored messages are deleted after this many seconds.
    #[arg(long, env = "PGWS_STREAM_RETENTION_SECS", default_value_t = 86_400)]
    pub stream_retention_secs: u64,

    /// Stored messages are deleted beyond each tenant's newest this many.
    #[arg(long, env = "PGWS_STREAM_RETENTION_COUNT", default_value_t = 100_000)]
    pub stream_retention_count: u64,

    /// Largest durable message body delivered, in bytes (bigger stored ones are skipped and
    /// counted). `pgws_publish` refuses bodies over the `pgws.max_body` setting (1 MiB unless set).
    #[arg(long, env = "PGWS_STREAM_MAX_BODY", default_value_t = 1 << 20)]
    pub stream_max_body: usize,
}
