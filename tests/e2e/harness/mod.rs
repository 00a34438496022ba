//! Shared test machinery: a private Postgres, the real server, WebSocket clients, guests built from
//! source.

pub mod guests;
pub mod http;
pub mod pg;
pub mod server;

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

/// A real WebSocket client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str) -> anyhow::Result<Client> {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Client { ws })
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

    /// Asserts that no text frame arrives within `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) -> anyhow::Result<()> {
        match self.recv_text_within(quiet).await {
            Ok(text) => bail!("expected no frame, got {text}"),
            Err(_) => Ok(()),
        }
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
