//! The real `pgws` binary, started on a free port against a test database, killed when dropped.
//!
//! Its log (stderr) is captured so tests can assert what an operator would read.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub struct Server {
    pub addr: SocketAddr,
    database_url: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

/// Every metric name pgws declares, to tell a series not recorded yet from a misspelt one.
const DECLARED_METRICS: &str = include_str!("../../../host/src/metrics/mod.rs");

impl Server {
    /// Starts `pgws --database-url <url> --listen 127.0.0.1:0 <args>` and waits until it is ready.
    pub async fn start(database_url: &str, args: &[&str]) -> anyhow::Result<Server> {
        let mut with_url = vec!["--database-url", database_url];
        with_url.extend_from_slice(args);
        Self::launch(database_url, &with_url, &[]).await
    }

    /// Starts `pgws --listen 127.0.0.1:0 <args>` with extra environment variables; `database_url` is
    /// what the test itself will use to reach the database.
    pub async fn launch(
        database_url: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Server> {
        let mut command = pgws_command();
        // Unless the test names one, the suite's own guest cache (see `run_cache`).
        let names_cache = args
            .iter()
            .any(|a| *a == "--guest-cache" || a.starts_with("--guest-cache="))
            || env.iter().any(|(k, _)| *k == "PGWS_GUEST_CACHE");
        if !names_cache {
            command.arg("--guest-cache").arg(run_cache());
        }
        let mut child = command
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .env("PGWS_LOG", "info,pgws=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning pgws")?;
        let stderr = child.stderr.take().context("pgws stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("PGWS_TEST_LOG").is_some() {
                    eprintln!("[pgws] {line}");
                }
                if line.contains("pgws serving") {
                    if let Some(addr) = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("addr="))
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                    {
                        let _ = addr_tx.send(addr);
                    }
                }
                sink.lock().expect("log lock").push(line);
            }
        });
        let addr = match tokio::task::spawn_blocking(move || {
            addr_rx.recv_timeout(Duration::from_secs(60))
        })
        .await?
        {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                bail!(
                    "pgws did not start:\n{}",
                    log.lock().expect("log lock").join("\n")
                );
            }
        };
        let server = Server {
            addr,
            database_url: database_url.to_owned(),
            child,
            log,
        };
        server.wait_ready(Duration::from_secs(30)).await?;
        Ok(server)
    }

    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok((200, _)) = self.get("/readyz").await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("pgws not ready within {within:?}:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws{query}", self.addr)
    }

    /// A plain HTTP GET; returns status and body.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        super::http::get(self.addr, path, &[]).await
    }

    /// The value of a Prometheus series (the sum over series whose labels contain every `labels`
    /// pair). Fails when there is no such series: a renamed metric or label must not read as 0.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        match self.series(name, labels).await? {
            Some(value) => Ok(value),
            None => bail!("no series {name}{labels:?} in /metrics"),
        }
    }

    /// Like [`metric`](Self::metric), but 0 for a series pgws has not recorded yet (a counter
    /// appears on its first increment). Fails for a name pgws does not declare.
    pub async fn metric_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        let family = ["_count", "_sum", "_bucket"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        anyhow::ensure!(
            DECLARED_METRICS.contains(&format!("\"{name}\""))
                || DECLARED_METRICS.contains(&format!("\"{family}\"")),
            "pgws declares no metric {name} (host/src/metrics.rs)"
        );
        Ok(self.series(name, labels).await?.unwrap_or(0.0))
    }

    async fn series(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<Option<f64>> {
        let (_, text) = self.get("/metrics").await?;
        let values: Vec<f64> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .collect();
        Ok((!values.is_empty()).then(|| values.iter().sum()))
    }

    /// Waits until the series `name` (summed as [`metric`](Self::metric) does) reaches `at_least`.
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        at_least: f64,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let value = self.metric_or_zero(name, labels).await?;
            if value >= at_least {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{name}{labels:?} is {value}, not {at_least}, after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An admin API request with `Authorization: Bearer <token>`; returns the status and the JSON
    /// body (`null` when there is none).
    pub async fn admin(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let bearer = format!("Bearer {token}");
        let (status, text) =
            super::http::request(self.addr, method, path, &[("authorization", &bearer)], body)
                .await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        ))
    }

    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Waits until a log line contains every one of `parts`.
    pub async fn wait_log(&self, parts: &[&str], within: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self
                .log
                .lock()
                .expect("log lock")
                .iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return Ok(line.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "no log line with {parts:?} within {within:?}:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        Ok(())
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<Option<i32>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                bail!("pgws still running after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// The `pgws` binary with nothing from the developer's shell that would configure it (`PGWS_*`,
/// `DATABASE_URL`, `PORT`): only what the test gives it.
pub fn pgws_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgws"));
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("PGWS_") || name == "DATABASE_URL" || name == "PORT" {
            command.env_remove(&key);
        }
    }
    command
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test suite's own guest cache, in the build directory: never the developer's
/// `~/.cache/pgws`, and kept between runs, so the big JavaScript and Python guests are compiled once
/// rather than on every run. Entries are keyed by the component's bytes and the engine's settings
/// and written atomically, so servers running at once can share it; the tests about caching give
/// their server a fresh one.
pub fn run_cache() -> &'static PathBuf {
    static CACHE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| super::languages::build_dir().join("test-guest-cache"))
}
