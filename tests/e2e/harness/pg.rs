//! A private PostgreSQL cluster for tests: initdb in a temp dir, a free port, torn down when dropped.
//!
//! As root (CI), the server runs as the unprivileged `postgres` user, since initdb refuses root. If
//! `DATABASE_URL` is set, that server is used instead and nothing is started. Each test gets its own
//! database, so NOTIFYs of concurrent tests never meet (channels are per database).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use anyhow::{bail, Context};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running cluster started by this process, or a server given by `DATABASE_URL`.
pub struct PgCluster {
    host: String,
    port: u16,
    user: String,
    /// `None` when the server is external.
    data_dir: Option<PathBuf>,
    run_as: Option<String>,
}

static SHARED: OnceLock<PgCluster> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

fn is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0\n"))
            .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl PgCluster {
    /// The cluster shared by every test in this process (or the `DATABASE_URL` server).
    pub fn shared() -> &'static PgCluster {
        SHARED.get_or_init(|| {
            super::prereqs::check();
            if let Ok(url) = std::env::var("DATABASE_URL") {
                return PgCluster::external(&url).expect("DATABASE_URL is usable");
            }
            let cluster = PgCluster::start().expect("start a private PostgreSQL");
            // Statics are never dropped: a watchdog stops this cluster when the test process ends,
            // however it ends.
            cluster.stop_when_process_exits();
            cluster
        })
    }

    fn external(url: &str) -> anyhow::Result<PgCluster> {
        let cfg: tokio_postgres::Config = url.parse()?;
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        Ok(PgCluster {
            host,
            port: cfg.get_ports().first().copied().unwrap_or(5432),
            user: cfg.get_user().unwrap_or("postgres").to_owned(),
            data_dir: None,
            run_as: None,
        })
    }

    /// Starts a new private cluster; it stops when the returned value is dropped.
    pub fn start() -> anyhow::Result<PgCluster> {
        if !Path::new(PG_BIN).join("initdb").exists() {
            bail!("PostgreSQL 15 server binaries not found in {PG_BIN}: apt-get install postgresql-15");
        }
        let dir = std::env::temp_dir().join(format!(
            "pgws-test-pg-{}-{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let run_as = is_root().then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            let status = Command::new("chown").arg(user).arg(&dir).status()?;
            if !status.success() {
                bail!("chown {} to {user} failed", dir.display());
            }
        }
        let cluster = PgCluster {
            host: "127.0.0.1".into(),
            port: free_port(),
            user: "postgres".into(),
            data_dir: Some(dir.clone()),
            run_as,
        };
        cluster.pg(
            "initdb",
            &[
                "-D",
                &dir.join("data").display().to_string(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )?;
        cluster.start_server()?;
        Ok(cluster)
    }

    fn data(&self) -> PathBuf {
        self.data_dir
            .as_ref()
            .expect("a private cluster")
            .join("data")
    }

    /// Runs one PostgreSQL program (as the unprivileged user when root).
    fn pg(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let path = Path::new(PG_BIN).join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(&path);
                c
            }
            None => Command::new(&path),
        };
        let out = cmd
            .args(args)
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts (or restarts after [`stop_server`]) the server on the same port and data.
    pub fn start_server(&self) -> anyhow::Result<()> {
        let dir = self.data_dir.as_ref().expect("a private cluster");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200",
            self.port,
            dir.display()
        );
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-l",
                &dir.join("log").display().to_string(),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        )
    }

    /// Stops the server at once (as a crash or an operator's fast restart would).
    pub fn stop_server(&self) -> anyhow::Result<()> {
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
    }

    fn stop_when_process_exits(&self) {
        let Some(dir) = &self.data_dir else { return };
        let stop = format!(
            "{}{PG_BIN}/pg_ctl -D {} -m immediate stop >/dev/null 2>&1; rm -rf {}",
            self.run_as
                .as_ref()
                .map(|u| format!("runuser -u {u} -- "))
                .unwrap_or_default(),
            self.data().display(),
            dir.display()
        );
        let script = format!(
            "while kill -0 {} 2>/dev/null; do sleep 0.5; done; {stop}",
            std::process::id()
        );
        let _ = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    /// Connection string of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "host={} port={} user={} dbname={db}",
            self.host, self.port, self.user
        )
    }

    /// Creates a fresh database for one test and returns its connection string.
    pub async fn fresh_database(&self) -> anyhow::Result<String> {
        let name = format!(
            "pgws_test_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let admin = connect(&self.url("postgres")).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating database {name}"))?;
        Ok(self.url(&name))
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(dir) = &self.data_dir {
            let _ = self.stop_server();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A client connection whose driver runs on its own task.
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}
