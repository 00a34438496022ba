//! Every setting of the server, from flags, environment and an optional TOML file, in one typed
//! struct.
//!
//! Owns defaults, help texts, the one loader and validation of values. Precedence, highest first: a
//! flag, its environment variable, the `--config` file, the default. It does not open sockets; `server`
//! does that.

mod load;
mod sections;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

pub use sections::{
    GuestSettings, LimitSettings, ListenerSettings, PublishSettings, SessionSettings,
    SocketIoSettings, StreamSettings, TokenSettings, WorkerSettings,
};

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
    /// processes can serve one address. Without it, a `PORT` variable (as Heroku and its successors
    /// set) means `0.0.0.0:$PORT`.
    #[arg(long, env = "PGWS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// DEVELOPMENT ONLY: let a client choose its tenant with `/ws?tenant=<name>`, with no proof.
    /// Anyone can then read any tenant's messages. Off by default; a warning is logged when on.
    #[arg(long, env = "PGWS_INSECURE_TENANT_PARAM")]
    pub insecure_tenant_param: bool,

    /// Token that guards the admin API (`/admin/guests`: list, upload, remove, roll back guests)
    /// and the console at `/admin/`; at least 16 bytes. Without it both are off.
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

    /// Most seconds a shutdown waits for sessions to close before exiting anyway.
    #[arg(long, env = "PGWS_SHUTDOWN_SECS", default_value_t = 5)]
    pub shutdown_secs: u64,

    /// Log format.
    #[arg(long, env = "PGWS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub tokens: TokenSettings,

    #[command(flatten)]
    pub listener: ListenerSettings,

    #[command(flatten)]
    pub guest: GuestSettings,

    #[command(flatten)]
    pub workers: WorkerSettings,

    #[command(flatten)]
    pub sessions: SessionSettings,

    #[command(flatten)]
    pub publish: PublishSettings,

    #[command(flatten)]
    pub socketio: SocketIoSettings,

    #[command(flatten)]
    pub limits: LimitSettings,

    #[command(flatten)]
    pub streams: StreamSettings,
}

/// What to do instead of serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Print a client token signed with --jwt-secret, for development and tests, e.g.
    /// `pgws --jwt-secret "$SECRET" token --tenant acme --topics orders --mode rw --ttl 1h`.
    Token(TokenRequest),
    /// Check the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Tools for guest authors.
    #[command(subcommand)]
    Guest(GuestCommand),
    /// The durable-streams schema.
    #[command(subcommand)]
    Schema(SchemaCommand),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum SchemaCommand {
    /// Install (or bring up to date) the durable-streams schema in --database-url: the
    /// `pgws_stream` and `pgws_message` tables and the `pgws_publish` function. Idempotent.
    Install,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum GuestCommand {
    /// Make a guest project: the WIT, a guest that forwards every message, `build.sh` (one
    /// command builds `<name>.wasm`) and a `cases.json` for `pgws guest test`.
    New {
        /// The project's name (a-z 0-9 _ -): its directory, package and `.wasm` file.
        name: String,
        /// The language: rust, js (QuickJS via componentize-qjs), python (componentize-py) or c
        /// (clang + wasi-libc).
        #[arg(long, value_enum)]
        lang: crate::guest::template::Language,
        /// Where to make it (default: ./<name>). Must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Whether the server would load a component (under the configured --guest-* limits): its
    /// world, the hooks it exports, what it imports, its size and compile time. Exits 0 only if
    /// it would load. With --guest-cache, compiled code is kept there as the server keeps it.
    Check {
        /// The component, e.g. target/wasm32-wasip2/release/my_guest.wasm.
        file: PathBuf,
    },
    /// Run a component on notifications, with no server or database: in the server's sandbox and
    /// limits, each case's verdict and time, and pass/fail against what the case expects (the
    /// format of guest/conformance.json; cases naming another guest are skipped). Exits non-zero
    /// if a case fails. Or one notification: --body '{"id": 1}' [--tenant t] [--topic x].
    /// With --guest-cache, compiled code is kept there as the server keeps it.
    Test {
        file: PathBuf,
        /// The cases file.
        cases: Option<PathBuf>,
        /// One notification's JSON body, instead of a cases file.
        #[arg(long, conflicts_with = "cases")]
        body: Option<String>,
        #[arg(long, default_value = "acme")]
        tenant: String,
        #[arg(long)]
        topic: Option<String>,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ConfigCommand {
    /// Validate flags, environment and the --config file; print the effective configuration
    /// (secrets masked) with where each value came from. Exits non-zero on any error.
    Check,
}

/// The claims of a token `pgws token` signs.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenRequest {
    /// The tenant the token speaks for.
    #[arg(long)]
    pub tenant: String,
    /// Topic patterns it may read (and publish to with --mode rw), comma-separated: `orders,eu/*`.
    /// Without it: only messages without a topic.
    #[arg(long, value_delimiter = ',')]
    pub topics: Vec<String>,
    /// socket.io channel patterns it may subscribe to, comma-separated. Without it: none.
    #[arg(long, value_delimiter = ',')]
    pub channels: Vec<String>,
    /// `r` to receive only, `rw` to publish too.
    #[arg(long, default_value = "r", value_parser = ["r", "rw"])]
    pub mode: String,
    /// How long it is valid: seconds, or a number with s, m, h or d (`90s`, `30m`, `1h`, `7d`).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: std::time::Duration,
    /// The `sub` claim (who the client is, for guests and logs).
    #[arg(long)]
    pub sub: Option<String>,
}

fn parse_ttl(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 30m, 1h or 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    Ok(std::time::Duration::from_secs(secs))
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
    #[error("PORT={0:?} is not a port number")]
    Port(String),
}

impl Config {
    /// The channel client publishes go to: `--inbound-channel`, else the first `--channel`.
    pub fn inbound_channel(&self) -> &str {
        self.publish
            .inbound_channel
            .as_deref()
            .or(self.listener.channels.first().map(String::as_str))
            .unwrap_or("pgwebsocket")
    }

    /// Checks what clap cannot: values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        if self
            .listener
            .channels
            .iter()
            .any(|c| c.is_empty() || c.len() > 63)
        {
            return Err("--channel names must be 1 to 63 bytes long".into());
        }
        // The admin token guards guest uploads and a login form that anyone who reaches the
        // console can try: a short one would be guessed.
        if self.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(
                "--admin-token must be at least 16 bytes (e.g. `openssl rand -hex 24`)".into(),
            );
        }
        if self.sessions.session_queue == 0 {
            return Err("--session-queue must be at least 1".into());
        }
        if !(self.publish.publish_rate > 0.0 && self.publish.publish_burst >= 1.0) {
            return Err("--publish-rate must be positive and --publish-burst at least 1".into());
        }
        if self.guest.guest_timeout_ms == 0 {
            return Err("--guest-timeout-ms must be at least 1".into());
        }
        if self.tokens.jwt_leeway_secs > 86_400 {
            return Err("--jwt-leeway-secs must be at most 86400 (a day)".into());
        }
        if self.streams.stream_recover_max == 0 || self.streams.stream_max_body == 0 {
            return Err("--stream-recover-max and --stream-max-body must be at least 1".into());
        }
        if self.streams.stream_retention_count < self.streams.stream_recover_max {
            return Err(
                "--stream-retention-count must be at least --stream-recover-max (a recovery needs the messages it replays)"
                    .into(),
            );
        }
        if self.workers.guest_queue == 0 {
            return Err("--guest-queue must be at least 1".into());
        }
        if self.workers.guest_cpu_ms_per_sec == 0 {
            return Err("--guest-cpu-ms-per-sec must be at least 1".into());
        }
        if let Some(t) = &self.socketio.socketio_anonymous_tenant {
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
        assert_eq!(c.listener.channels, ["a", "b"]);
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.sessions.frame, crate::frame::FrameFormat::Pgws);
        assert!(!c.insecure_tenant_param);
        assert!(c.validate().is_ok());
    }

    /// Flags beat environment variables, which beat the file, which beats the defaults. The
    /// environment variable is given to a child process running [`precedence_in_child`]: setting
    /// it here would race every other test that reads the environment (clap reads all of them).
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
        let mut command = std::process::Command::new(std::env::current_exe().expect("test binary"));
        // Only the variable under test: none of the developer's PGWS_* settings.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PGWS_") || key == "PORT" {
                command.env_remove(key);
            }
        }
        let child = command
            .args([
                "--exact",
                "config::tests::precedence_in_child",
                "--ignored",
                "--nocapture",
            ])
            .env("PGWS_SHUTDOWN_SECS", "3")
            .env("PGWS_TEST_CONFIG_FILE", &file)
            .output()
            .expect("runs the child");
        let out = String::from_utf8_lossy(&child.stdout);
        assert!(
            child.status.success() && out.contains("1 passed"),
            "{out}{}",
            String::from_utf8_lossy(&child.stderr)
        );

        std::fs::write(&file, "no_such_setting = 1\n").expect("write");
        let err = Config::load_from(["pgws", "--config", file.to_str().expect("utf-8")])
            .expect_err("unknown key");
        assert!(
            err.to_string()
                .contains("unknown setting `no_such_setting`"),
            "{err}"
        );
        std::fs::write(&file, "guest-timeout-ms = \"soon\"\n").expect("write");
        let err = Config::load_from(["pgws", "--config", file.to_str().expect("utf-8")])
            .expect_err("bad value");
        assert!(err.to_string().contains("--guest-timeout-ms"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    #[ignore = "run by precedence_flags_env_file_defaults, with PGWS_SHUTDOWN_SECS=3 set"]
    fn precedence_in_child() {
        let file = std::env::var("PGWS_TEST_CONFIG_FILE").expect("the parent names the file");
        let c = Config::load_from(["pgws", "--config", &file, "--listen", "127.0.0.1:7000"])
            .expect("loads");
        assert_eq!(c.listen.to_string(), "127.0.0.1:7000", "flag beats file");
        assert_eq!(c.shutdown_secs, 3, "environment beats file");
        assert_eq!(c.guest.guest_timeout_ms, 7, "file beats default");
        assert_eq!(c.listener.channels, ["a", "b"]);
        assert!(c.insecure_tenant_param);
        assert_eq!(c.sessions.ping_secs, 30, "default");
    }

    #[test]
    fn verifies_clap_definition() {
        use clap::CommandFactory;
        Config::command().debug_assert();
    }
}
