//! `client/pgws-client.js` under Node (`tests/browser/client-driver.mjs`): what the client reports,
//! a JSON line at a time, and a way to tell it what to do.

use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::PATIENCE;

/// A running client driver.
pub struct Driver {
    node: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Driver {
    /// Starts the client on `ws_url` with `options` (the `PgwsClient` options, as JSON).
    pub async fn start(ws_url: &str, options: &Value) -> anyhow::Result<Driver> {
        let options = options.to_string();
        let (node, stdin, lines) = super::node_script(
            &["--experimental-websocket", "--no-warnings"],
            "client-driver.mjs",
            &[ws_url.as_ref(), options.as_ref()],
        )
        .await?;
        Ok(Driver { node, stdin, lines })
    }

    /// The next thing the client reported.
    pub async fn line(&mut self) -> anyhow::Result<Value> {
        let line = tokio::time::timeout(PATIENCE, self.lines.next_line())
            .await??
            .ok_or_else(|| anyhow::anyhow!("the client driver exited"))?;
        Ok(serde_json::from_str(&line)?)
    }

    /// Sends the driver a command (`{"drop": true}`, `{"oversize": n}`, `{"close": true}`).
    pub async fn send(&mut self, command: &Value) -> anyhow::Result<()> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        Ok(())
    }

    /// Closes the client and waits for the driver to exit.
    pub async fn close(mut self) -> anyhow::Result<()> {
        self.send(&serde_json::json!({"close": true})).await?;
        let status = tokio::time::timeout(PATIENCE, self.node.wait()).await??;
        anyhow::ensure!(status.success(), "the client driver failed: {status}");
        Ok(())
    }
}
