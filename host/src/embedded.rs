//! A private PostgreSQL for development, started when no database URL is given.
//!
//! Owns finding the locally installed server binaries, the data directory (created once with initdb,
//! reused on later runs), starting the server and stopping it when pgws exits. The server listens on
//! no TCP port at all, only on a Unix socket in a directory only its owner may enter (mode 0700): no
//! other local user can connect, though authentication inside is `trust` for the owner's ease. As root it
//! runs the server as the `postgres` user, since PostgreSQL refuses to run as root. It is for the quick
//! start only: production passes `--database-url` / `DATABASE_URL` and never reaches this module.
//!
//! Data directory: `$PGWS_EMBEDDED_DIR`, else `$XDG_DATA_HOME/pgws/postgres`, else
//! `~/.local/share/pgws/postgres` — except as root, where it is `/var/lib/pgws/postgres`, because the
//! `postgres` user cannot enter root's home. Socket: `<that directory>/socket/.s.PGSQL.<port>`, port
//! `$PGWS_EMBEDDED_PORT`, else 54329.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

const DEFAULT_PORT: u16 = 54329;

/// A running development server; stopped on [`EmbeddedPostgres::stop`] or drop.
pub struct EmbeddedPostgres {
    bin: PathBuf,
    data: PathBuf,
    /// The private directory holding the server's Unix socket.
    socket_dir: PathBuf,
    run_as: Option<String>,
    port: u16,
    stopped: bool,
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb`, or `initdb` on the PATH.
fn find_binaries() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
    })
}

fn data_dir(root: bool) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PGWS_EMBEDDED_DIR") {
        return Some(PathBuf::from(dir));
    }
    if root {
        return Some(PathBuf::from("/var/lib/pgws/postgres"));
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(base.join("pgws/postgres"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

impl EmbeddedPostgres {
    /// Starts (creating on first use) the development server and returns it.
    pub fn start() -> anyhow::Result<EmbeddedPostgres> {
        let bin = find_binaries().context(
            "no DATABASE_URL given and no PostgreSQL server binaries found to start a private one: \
             install them (Debian/Ubuntu: `apt install postgresql`) or pass --database-url",
        )?;
        let as_root = is_root();
        let root = data_dir(as_root)
            .context("cannot tell where to keep the data: set PGWS_EMBEDDED_DIR")?;
        let port = match std::env::var("PGWS_EMBEDDED_PORT") {
            Ok(p) => p
                .parse()
                .context("PGWS_EMBEDDED_PORT must be a port number")?,
            Err(_) => DEFAULT_PORT,
        };
        let run_as = as_root.then(|| "postgres".to_owned());
        let socket_dir = root.join("socket");
        std::fs::create_dir_all(&socket_dir)
            .with_context(|| format!("creating {}", socket_dir.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            // Only the owner (and root) may enter: the socket inside is the only way in.
            for dir in [&root, &socket_dir] {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .with_context(|| format!("restricting {}", dir.display()))?;
            }
        }
        if let Some(user) = &run_as {
            let ok = Command::new("chown")
                .arg("-R")
                .arg(user)
                .arg(&root)
                .status()?
                .success();
            if !ok {
                bail!("running as root, the data directory must belong to the `{user}` user, and chown failed");
            }
        }
        // Nothing to stop until the server is up.
        let mut pg = EmbeddedPostgres {
            bin,
            data: root.join("data"),
            socket_dir: socket_dir.clone(),
            run_as,
            port,
            stopped: true,
        };
        if pg.data.join("PG_VERSION").exists() {
            tracing::info!(dir = %pg.data.display(), "reusing the embedded PostgreSQL data directory");
        } else {
            tracing::info!(dir = %pg.data.display(), "creating the embedded PostgreSQL data directory");
            pg.run(
                "initdb",
                &[
                    "-D",
                    &pg.data.display().to_string(),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
            )?;
        }
        let options = format!(
            "-p {port} -k {} -c listen_addresses=''",
            socket_dir.display()
        );
        let log = root.join("postgres.log").display().to_string();
        if pg
            .run("pg_ctl", &["-D", &pg.data.display().to_string(), "status"])
            .is_err()
        {
            pg.run(
                "pg_ctl",
                &[
                    "-D",
                    &pg.data.display().to_string(),
                    "-l",
                    &log,
                    "-o",
                    &options,
                    "-w",
                    "start",
                ],
            )
            .with_context(|| format!("starting the embedded PostgreSQL (its log: {log})"))?;
        }
        pg.stopped = false;
        Ok(pg)
    }

    /// Connection string for the `postgres` database, through the private socket (libpq's
    /// key=value form, which `psql` and every driver take).
    pub fn url(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.socket_dir.display(),
            self.port
        )
    }

    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let path = self.bin.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        let out = cmd
            .args(args)
            .current_dir(Path::new("/"))
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", path.display()))?;
        if !out.status.success() {
            bail!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Stops the server (fast shutdown: open sessions are disconnected).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        match self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        ) {
            Ok(()) => tracing::info!("embedded PostgreSQL stopped"),
            Err(e) => tracing::warn!(error = %e, "could not stop the embedded PostgreSQL"),
        }
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
