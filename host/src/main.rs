//! The `pgws` binary: parse the configuration, set up logs and metrics, serve until a signal.

mod commands;

use std::sync::{Arc, Mutex};

use anyhow::Context;
use pgws::config::{Config, ConfigError, LogFormat};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = match Config::load_from(std::env::args_os()) {
        Ok(config) => config,
        Err(ConfigError::Args(e)) => e.exit(),
        Err(e) => return Err(e.into()),
    };
    if let Some(command) = &config.command {
        return commands::run(&config, command).await;
    }
    init_logs(config.log_format);
    config.validate().map_err(anyhow::Error::msg)?;

    // No database given: a private development PostgreSQL, stopped when pgws returns (or on a
    // second signal, which does not wait for anything else).
    let embedded: Embedded = Arc::default();
    if config.database_url.is_none() {
        let pg = tokio::task::spawn_blocking(pgws::embedded::EmbeddedPostgres::start).await??;
        tracing::warn!(
            url = %pg.url(),
            "no DATABASE_URL: started a private development PostgreSQL; connect with: psql '{}'",
            pg.url()
        );
        config.database_url = Some(pg.url());
        *lock(&embedded) = Some(pg);
    }

    let recorded = pgws::metrics::install().context("installing the metrics recorder")?;
    let tcp =
        pgws::server::bind(config.listen).with_context(|| format!("binding {}", config.listen))?;

    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone(), embedded.clone()));
    let served = pgws::server::run(config, tcp, Some(recorded), shutdown).await;
    tokio::task::spawn_blocking(move || stop_embedded(&embedded)).await?;
    served
}

/// The embedded PostgreSQL, if one was started; shared with the signal watcher.
type Embedded = Arc<Mutex<Option<pgws::embedded::EmbeddedPostgres>>>;

fn lock(
    embedded: &Embedded,
) -> std::sync::MutexGuard<'_, Option<pgws::embedded::EmbeddedPostgres>> {
    embedded
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn stop_embedded(embedded: &Embedded) {
    if let Some(mut pg) = lock(embedded).take() {
        pg.stop();
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGWS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// First SIGTERM or SIGINT: graceful shutdown. A second one: stop the embedded PostgreSQL, if any,
/// and exit at once.
async fn watch_signals(shutdown: CancellationToken, embedded: Embedded) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop pgws with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutdown requested; closing sessions (signal again to exit at once)");
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: exiting now");
    let _ = tokio::task::spawn_blocking(move || stop_embedded(&embedded)).await;
    std::process::exit(130);
}
