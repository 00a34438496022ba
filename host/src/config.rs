//! Every setting of the server, from flags, environment and an optional TOML file, in one typed
//! struct.
//!
//! Owns defaults, help texts, the one loader and validation of values. Precedence, highest first: a
//! flag, its environment variable, the `--config` file, the default. It does not open sockets; `server`
//! does that.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, Parser, ValueEnum};

/// pgws: PostgreSQL NOTIFY → WebSocket fan-out for many tenants, with per-tenant WebAssembly guests.
///
/// Send `select pg_notify('pgwebsocket', 'acme,{"hello":1}')` and every WebSocket client of tenant
/// `acme` connected to `/ws` receives it. Payloads are `<tenant>,<json>` or `<tenant>/<topic>,<json>`.
#[derive(Debug, Clone, Parser)]
#[command(name = "pgws", version, about, long_about)]
pub struct Config {
    /// TOML file of settings keyed by flag name, e.g. `listen = "0.0.0.0:8080"`,
    /// `channel = ["a", "b"]`, `guest-timeout-ms = 50`. Flags and environment variables win over it;
    /// an unknown key is an error.
    #[arg(long, env = "PGWS_CONFIG")]
    pub config: Option<PathBuf>,

    /// PostgreSQL connection string (URL or key=value form). Without one, pgws starts a private
    /// development PostgreSQL from the locally installed server binaries (data kept under
    /// ~/.local/share/pgws/postgres, or /var/lib/pgws/postgres as root; stopped when pgws exits) and
    /// prints how to reach it with psql.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Address to serve HTTP and WebSocket on. The port is shared with SO_REUSEPORT, so several pgws
    /// processes can serve one address.
    #[arg(long, env = "PGWS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Postgres channel to LISTEN on; repeat the flag (or comma-separate the variable) for several.
    #[arg(
        long = "channel",
        env = "PGWS_CHANNEL",
        value_delimiter = ',',
        default_value = "pgwebsocket"
    )]
    pub channels: Vec<String>,

    /// Shape of the frame sent to clients: `pgws` sends {"payload": <body>, "channel": "<channel>",
    /// "id": "<uuid>"} like pgws; `raw` sends the JSON body alone, like pgws's first release.
    #[arg(long, env = "PGWS_FRAME", value_enum, default_value_t = FrameFormat::Pgws)]
    pub frame: FrameFormat,

    /// DEVELOPMENT ONLY: let a client choose its tenant with `/ws?tenant=<name>`, with no proof.
    /// Anyone can then read any tenant's messages. Off by default; a warning is logged when on.
    #[arg(long, env = "PGWS_INSECURE_TENANT_PARAM")]
    pub insecure_tenant_param: bool,

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

    /// socket.io clients (at /socket.io/) that present no token connect as this tenant and may
    /// subscribe to any channel that is not reserved, as with socketio_pg. For moving socketio_pg
    /// users over unchanged; anyone who can reach the server can then read those channels.
    #[arg(long, env = "PGWS_SOCKETIO_ANONYMOUS_TENANT")]
    pub socketio_anonymous_tenant: Option<String>,

    /// DEVELOPMENT ONLY: let every socket.io client use `test_pub` (NOTIFY on a channel it may
    /// subscribe to), not only clients whose token has `"mode": "rw"`.
    #[arg(long, env = "PGWS_SOCKETIO_TEST_PUB")]
    pub socketio_test_pub: bool,

    /// Directory of guest components: `<tenant>.wasm` for one tenant, `_default.wasm` for every tenant
    /// without its own. No guest for a tenant and no default means messages are forwarded unchanged.
    #[arg(long, env = "PGWS_GUESTS")]
    pub guests: Option<PathBuf>,

    /// Token that guards the admin API (`/admin/guests`: list, upload, remove, roll back guests).
    /// Without it the admin API is off.
    #[arg(long, env = "PGWS_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Token that `/metrics` requires (`Authorization: Bearer <token>`). Metrics name every tenant;
    /// without this (or --admin-listen) anyone who reaches the server can read them.
    #[arg(long, env = "PGWS_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Serve `/metrics` and `/admin/*` on this address only (e.g. 127.0.0.1:9090, or an internal
    /// interface), not on --listen.
    #[arg(long, env = "PGWS_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

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

    /// Topics one connection may take (`?topics=` or pgws.v1 subscriptions).
    #[arg(long, env = "PGWS_MAX_TOPICS_PER_SESSION", default_value_t = 256)]
    pub max_topics_per_session: usize,

    /// Channels one socket.io socket may subscribe to.
    #[arg(long, env = "PGWS_MAX_CHANNELS_PER_SOCKET", default_value_t = 256)]
    pub max_channels_per_socket: usize,

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

    /// Engine.IO sessions that may wait at once for their socket.io connect packet (where a
    /// client sends its token). More are refused with 503; a token sent with the handshake itself
    /// (`?token=` or `Authorization`) is checked there and does not count.
    #[arg(long, env = "PGWS_SOCKETIO_MAX_PENDING", default_value_t = 1_000)]
    pub socketio_max_pending: usize,

    /// Seconds an Engine.IO session may wait for its socket.io connect packet before it is closed.
    #[arg(long, env = "PGWS_SOCKETIO_CONNECT_TIMEOUT_SECS", default_value_t = 5)]
    pub socketio_connect_timeout_secs: u64,

    /// Seconds a write to a client may wait for its socket; a client whose socket takes nothing for
    /// this long is closed, even if its queue never fills.
    #[arg(long, env = "PGWS_WRITE_TIMEOUT_SECS", default_value_t = 30)]
    pub write_timeout_secs: u64,

    /// Frames that may wait for a client's full socket before the client counts as too slow and is
    /// closed (code 1013; a socket.io client is disconnected).
    #[arg(long, env = "PGWS_SESSION_QUEUE", default_value_t = 1024)]
    pub session_queue: usize,

    /// WebSocket read buffer per socket.io connection, in bytes. Small keeps idle connections cheap
    /// (`/ws` connections hold no read buffer while idle).
    #[arg(long, env = "PGWS_WS_READ_BUFFER", default_value_t = 1024)]
    pub ws_read_buffer: usize,

    /// Seconds a client has to send its complete HTTP request (the WebSocket handshake) after
    /// connecting; slower connections are closed.
    #[arg(long, env = "PGWS_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10)]
    pub handshake_timeout_secs: u64,

    /// Largest message a client may send, in bytes; a bigger one closes the connection (1009).
    #[arg(long, env = "PGWS_MAX_CLIENT_MESSAGE", default_value_t = 64 * 1024)]
    pub max_client_message: usize,

    /// Seconds between keepalive pings to each client; a client that has not answered by the next
    /// ping is dropped.
    #[arg(long, env = "PGWS_PING_SECS", default_value_t = 30)]
    pub ping_secs: u64,

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

    /// Most seconds a shutdown waits for sessions to close before exiting anyway.
    #[arg(long, env = "PGWS_SHUTDOWN_SECS", default_value_t = 5)]
    pub shutdown_secs: u64,

    /// Log format.
    #[arg(long, env = "PGWS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FrameFormat {
    /// {"payload": <body>, "channel": "<channel>", "id": "<uuid>"}
    Pgws,
    /// The JSON body alone.
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailurePolicy {
    /// Drop the message.
    Closed,
    /// Forward the message unchanged.
    Open,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Bad flags, or `--help`/`--version`: let clap print it and exit.
    #[error(transparent)]
    Args(#[from] clap::Error),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {source}")]
    Toml {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{path}: {message}")]
    Setting { path: PathBuf, message: String },
}

impl Config {
    /// Parses flags and environment, then fills every setting neither of them gave from the
    /// `--config` file, if there is one.
    pub fn load_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut argv: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let command = Config::command();
        let matches = command.clone().try_get_matches_from(&argv)?;
        let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
            return Ok(Config::try_parse_from(argv)?);
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let table: toml::Table = text.parse().map_err(|source| ConfigError::Toml {
            path: path.clone(),
            source,
        })?;
        let setting = |message: String| ConfigError::Setting {
            path: path.clone(),
            message,
        };
        for (key, value) in table {
            let name = key.replace('_', "-");
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == Some(name.as_str()) && name != "config")
                .ok_or_else(|| setting(format!("unknown setting `{key}`")))?;
            let id = arg.get_id().as_str();
            if matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            ) {
                continue;
            }
            let flag = format!("--{name}");
            let takes_values = arg.get_action().takes_values();
            let scalar = |v: &toml::Value| match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                toml::Value::Boolean(b) => Ok(b.to_string()),
                other => Err(setting(format!("`{key}` cannot be {}", other.type_str()))),
            };
            match (&value, takes_values) {
                (toml::Value::Boolean(on), false) => {
                    if *on {
                        argv.push(flag.into());
                    }
                }
                (_, false) => return Err(setting(format!("`{key}` must be true or false"))),
                (toml::Value::Array(items), true) => {
                    for item in items {
                        argv.push(flag.clone().into());
                        argv.push(scalar(item)?.into());
                    }
                }
                (v, true) => {
                    argv.push(flag.into());
                    argv.push(scalar(v)?.into());
                }
            }
        }
        Ok(Config::try_parse_from(argv)?)
    }

    pub fn guest_timeout(&self) -> Duration {
        Duration::from_millis(self.guest_timeout_ms)
    }

    pub fn reconnect_backoff(&self) -> (Duration, Duration) {
        let min = Duration::from_millis(self.reconnect_min_ms.max(1));
        (min, Duration::from_millis(self.reconnect_max_ms).max(min))
    }

    /// The channel client publishes go to.
    pub fn inbound_channel(&self) -> &str {
        self.inbound_channel
            .as_deref()
            .or(self.channels.first().map(String::as_str))
            .unwrap_or("pgwebsocket")
    }

    pub fn guest_threads(&self) -> usize {
        self.guest_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()) / 2)
            .max(1)
    }

    /// Checks what clap cannot: values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.channels.iter().any(|c| c.is_empty() || c.len() > 63) {
            return Err("--channel names must be 1 to 63 bytes long".into());
        }
        if self.session_queue == 0 {
            return Err("--session-queue must be at least 1".into());
        }
        if !(self.publish_rate > 0.0 && self.publish_burst >= 1.0) {
            return Err("--publish-rate must be positive and --publish-burst at least 1".into());
        }
        if self.guest_timeout_ms == 0 {
            return Err("--guest-timeout-ms must be at least 1".into());
        }
        if self.jwt_leeway_secs > 86_400 {
            return Err("--jwt-leeway-secs must be at most 86400 (a day)".into());
        }
        if self.guest_queue == 0 {
            return Err("--guest-queue must be at least 1".into());
        }
        if self.guest_cpu_ms_per_sec == 0 {
            return Err("--guest-cpu-ms-per-sec must be at least 1".into());
        }
        if let Some(t) = &self.socketio_anonymous_tenant {
            crate::envelope::TenantId::parse(t)
                .map_err(|e| format!("--socketio-anonymous-tenant {t:?}: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_repeated_channels() {
        let c =
            Config::try_parse_from(["pgws", "--channel", "a", "--channel", "b"]).expect("parses");
        assert_eq!(c.channels, ["a", "b"]);
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.frame, FrameFormat::Pgws);
        assert!(!c.insecure_tenant_param);
        assert!(c.validate().is_ok());
    }

    /// Flags beat environment variables, which beat the file, which beats the defaults.
    #[test]
    fn precedence_flags_env_file_defaults() {
        let dir = std::env::temp_dir().join(format!("pgws-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("pgws.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nshutdown_secs = 9\nguest-timeout-ms = 7\nchannel = [\"a\", \"b\"]\ninsecure-tenant-param = true\n",
        )
        .expect("write");
        // Only this test sets PGWS_SHUTDOWN_SECS.
        std::env::set_var("PGWS_SHUTDOWN_SECS", "3");
        let c = Config::load_from([
            "pgws",
            "--config",
            file.to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:7000",
        ])
        .expect("loads");
        std::env::remove_var("PGWS_SHUTDOWN_SECS");
        assert_eq!(c.listen.to_string(), "127.0.0.1:7000", "flag beats file");
        assert_eq!(c.shutdown_secs, 3, "environment beats file");
        assert_eq!(c.guest_timeout_ms, 7, "file beats default");
        assert_eq!(c.channels, ["a", "b"]);
        assert!(c.insecure_tenant_param);
        assert_eq!(c.ping_secs, 30, "default");

        std::fs::write(&file, "no_such_setting = 1\n").expect("write");
        let err = Config::load_from(["pgws", "--config", file.to_str().expect("utf-8")])
            .expect_err("unknown key");
        assert!(
            err.to_string()
                .contains("unknown setting `no_such_setting`"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn verifies_clap_definition() {
        use clap::CommandFactory;
        Config::command().debug_assert();
    }
}
