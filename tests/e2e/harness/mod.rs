//! Shared test machinery: a private Postgres, the real server, WebSocket clients, guests built from
//! source.

pub mod driver;
pub mod guests;
pub mod http;
pub mod languages;
pub mod pg;
pub mod prereqs;
pub mod server;
pub mod socketio;

use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use pg::{connect, PgCluster};
pub use server::Server;

/// How long a test waits for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A fresh database on the shared cluster, and a server on it started with `args`.
pub async fn spawn_app(args: &[&str]) -> anyhow::Result<(Server, tokio_postgres::Client)> {
    let url = PgCluster::shared().fresh_database().await?;
    let server = Server::start(&url, args).await?;
    let sql = connect(&url).await?;
    Ok((server, sql))
}

/// [`spawn_app`] in development mode (`?tenant=`), raw frames, serving the guests in `dir`, plus
/// `extra` flags.
pub async fn spawn_with_guests(
    dir: &std::path::Path,
    extra: &[&str],
) -> anyhow::Result<(Server, tokio_postgres::Client)> {
    let dir = dir.display().to_string();
    let mut args = vec![
        "--insecure-tenant-param",
        "--frame",
        "raw",
        "--guests",
        &dir,
    ];
    args.extend_from_slice(extra);
    spawn_app(&args).await
}

/// `tests/<folder>` with its node_modules installed from its lock file (once; `marker` is a package
/// whose presence means installed). One install at a time: two `npm ci` in one folder break each
/// other.
pub fn node_modules(folder: &str, marker: &str) -> std::path::PathBuf {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = languages::repo().join("tests").join(folder);
    if !dir.join("node_modules").join(marker).exists() {
        let status = std::process::Command::new("npm")
            .args(["ci", "--silent", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm runs");
        assert!(status.success(), "npm ci in tests/{folder} failed");
    }
    dir
}

/// A script of `tests/browser` running in Node (`node <node_args> <script> <args>`) with its stdin
/// and the lines of its stdout: how the browser and client-driver tests talk to their scripts.
pub async fn node_script(
    node_args: &[&str],
    script: &str,
    args: &[&std::ffi::OsStr],
) -> anyhow::Result<(
    tokio::process::Child,
    tokio::process::ChildStdin,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
)> {
    use tokio::io::AsyncBufReadExt;
    let tools = tokio::task::spawn_blocking(|| node_modules("browser", "playwright-core")).await?;
    let mut node = tokio::process::Command::new("node")
        .args(node_args)
        .arg(tools.join(script))
        .args(args)
        .current_dir(&tools)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdin = node.stdin.take().context("node stdin")?;
    let lines = tokio::io::BufReader::new(node.stdout.take().context("node stdout")?).lines();
    Ok((node, stdin, lines))
}

/// A real WebSocket client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str) -> anyhow::Result<Client> {
        Self::connect_with(url, &[], &[]).await
    }

    /// Connects offering `protocols` (as a browser would with `new WebSocket(url, protocols)`) and
    /// sending extra `headers`. A refused upgrade's error names the HTTP status.
    pub async fn connect_with(
        url: &str,
        protocols: &[&str],
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Client> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request()?;
        if !protocols.is_empty() {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", protocols.join(", ").parse()?);
        }
        for (k, v) in headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())?,
                v.parse()?,
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(r) => {
                    anyhow::anyhow!("upgrade refused: HTTP {}", r.status().as_u16())
                }
                e => anyhow::anyhow!("connecting to {url}: {e}"),
            })?;
        Ok(Client { ws })
    }

    /// Sends a JSON frame and returns the next JSON frame that is not a message (has a `type`).
    pub async fn request(&mut self, frame: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        self.send_text(&frame.to_string()).await?;
        loop {
            let reply = self.recv_json().await?;
            if reply.get("type").is_some() {
                return Ok(reply);
            }
        }
    }

    /// Next text frame, skipping pings; fails on close or after `PATIENCE`.
    pub async fn recv_text(&mut self) -> anyhow::Result<String> {
        self.recv_text_within(PATIENCE).await
    }

    pub async fn recv_text_within(&mut self, within: Duration) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .context("timed out waiting for a frame")?;
            match next {
                Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
                Some(Ok(Message::Close(frame))) => bail!("closed by server: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("socket error: {e}"),
                None => bail!("socket ended"),
            }
        }
    }

    pub async fn recv_json(&mut self) -> anyhow::Result<serde_json::Value> {
        let text = self.recv_text().await?;
        serde_json::from_str(&text).with_context(|| format!("frame is not JSON: {text}"))
    }

    /// Waits for the server's close frame and returns its code.
    pub async fn recv_close(&mut self) -> anyhow::Result<Option<u16>> {
        loop {
            let next = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .context("timed out waiting for close")?;
            match next {
                Some(Ok(Message::Close(frame))) => return Ok(frame.map(|f| f.code.into())),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ok(None),
            }
        }
    }

    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws.send(Message::Text(text.into())).await?;
        Ok(())
    }

    pub fn inner(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.ws
    }
}

/// A `LISTEN` on `channel`, as psql would do; notifications arrive as `(channel, payload)`.
pub async fn listen(
    url: &str,
    channel: &str,
) -> anyhow::Result<(
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
)> {
    let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .await?;
    Ok((client, rx))
}

/// `pg_terminate_backend` on the server's LISTEN connection in this database; returns how many
/// backends were terminated (one, unless the listener is down).
pub async fn kill_listener_backend(sql: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(sql
        .query_one(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity \
             where application_name = 'pgws-listener' and datname = current_database()",
            &[],
        )
        .await?
        .get(0))
}

/// `select pg_notify('pgwebsocket', <payload>)` in its own transaction.
pub async fn notify(sql: &tokio_postgres::Client, payload: &str) -> anyhow::Result<()> {
    notify_on(sql, "pgwebsocket", payload).await
}

pub async fn notify_on(
    sql: &tokio_postgres::Client,
    channel: &str,
    payload: &str,
) -> anyhow::Result<()> {
    sql.execute("select pg_notify($1, $2)", &[&channel, &payload])
        .await
        .with_context(|| format!("pg_notify {payload:.80}"))?;
    Ok(())
}
