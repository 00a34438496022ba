//! Real socket.io clients — Node's socket.io-client 4.x and 2.x, python-socketio 5 — driven over
//! stdio by the scripts in `tests/socketio/`.

use std::collections::VecDeque;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::PATIENCE;

/// Which client library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// socket.io-client 4.x (protocol v5, Engine.IO 4).
    Node4,
    /// socket.io-client 2.x (protocol v4, Engine.IO 3), what socketio_pg bundled.
    Node2,
    /// python-socketio 5 (its asyncio client, which keeps message order).
    Python,
}

pub const KINDS: [Kind; 3] = [Kind::Node4, Kind::Node2, Kind::Python];

/// The Node clients' node_modules.
pub fn node_tools() -> std::path::PathBuf {
    super::node_modules("socketio", "socket.io-client-v2")
}

pub struct SioClient {
    pub kind: Kind,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Events read while looking for another one.
    held: VecDeque<(String, Value)>,
}

impl SioClient {
    /// Starts a client of `kind` against `base` (`http://host:port`); `auth` is the socket.io auth
    /// payload (4.x, Python) or the query string (2.x, which has no auth payload).
    pub async fn start(kind: Kind, base: &str, auth: Option<Value>) -> anyhow::Result<SioClient> {
        Self::start_with(kind, base, auth, None).await
    }

    /// As [`start`](Self::start), pinned to one transport (`websocket` or `polling`).
    pub async fn start_with(
        kind: Kind,
        base: &str,
        auth: Option<Value>,
        transport: Option<&str>,
    ) -> anyhow::Result<SioClient> {
        let dir = tokio::task::spawn_blocking(node_tools).await?;
        let auth = auth.map_or_else(|| "-".to_owned(), |a| a.to_string());
        let mut command = match kind {
            Kind::Node4 | Kind::Node2 => {
                let mut c = tokio::process::Command::new("node");
                c.arg(dir.join("client.mjs"))
                    .arg(if kind == Kind::Node2 { "v2" } else { "v4" })
                    .arg(base)
                    .arg(&auth);
                c
            }
            Kind::Python => {
                let mut c = tokio::process::Command::new("python3");
                c.arg("-u").arg(dir.join("client.py")).arg(base).arg(&auth);
                c
            }
        };
        if let Some(t) = transport {
            command.arg(t);
        }
        let mut child = command
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the {kind:?} socket.io client"))?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        Ok(SioClient {
            kind,
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            held: VecDeque::new(),
        })
    }

    /// Starts a client and waits for `connect` and `server_hello`; returns the hello's data.
    pub async fn connected(
        kind: Kind,
        base: &str,
        auth: Option<Value>,
    ) -> anyhow::Result<(SioClient, Value)> {
        let mut c = Self::start(kind, base, auth).await?;
        c.expect("connect").await?;
        let hello = c.expect("server_hello").await?;
        Ok((c, hello))
    }

    async fn read(&mut self, within: Duration) -> anyhow::Result<(String, Value)> {
        if let Some(e) = self.held.pop_front() {
            return Ok(e);
        }
        let line = tokio::time::timeout(within, self.lines.next_line())
            .await
            .with_context(|| format!("{:?}: nothing within {within:?}", self.kind))??
            .with_context(|| format!("{:?} client exited", self.kind))?;
        let v: Value = serde_json::from_str(&line).with_context(|| format!("bad line {line}"))?;
        let name = v["event"].as_str().unwrap_or_default().to_owned();
        Ok((name, v["data"].clone()))
    }

    /// The next event, whatever it is.
    pub async fn next(&mut self) -> anyhow::Result<(String, Value)> {
        self.read(PATIENCE).await
    }

    /// The next event, which must be `name`.
    pub async fn expect(&mut self, name: &str) -> anyhow::Result<Value> {
        let (got, data) = self.next().await?;
        if got != name {
            bail!("{:?}: expected `{name}`, got `{got}` {data}", self.kind);
        }
        Ok(data)
    }

    pub async fn emit(&mut self, event: &str, data: Option<Value>) -> anyhow::Result<()> {
        let cmd = match data {
            Some(d) => json!({ "emit": event, "data": d }),
            None => json!({ "emit": event }),
        };
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .context("client stdin")?;
        Ok(())
    }

    /// `subscribe {channel}` and its `subscribed` answer.
    pub async fn subscribe(&mut self, channel: &str) -> anyhow::Result<()> {
        self.emit("subscribe", Some(json!({ "channel": channel })))
            .await?;
        let data = self.expect("subscribed").await?;
        anyhow::ensure!(data == json!({ "channel": channel }), "subscribed {data}");
        Ok(())
    }

    pub async fn close(mut self) -> anyhow::Result<()> {
        let _ = self.stdin.write_all(b"{\"close\":true}\n").await;
        let _ = tokio::time::timeout(PATIENCE, self.child.wait()).await;
        Ok(())
    }
}
