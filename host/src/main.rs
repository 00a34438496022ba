//! The `pgws` binary: parse the configuration, set up logs and metrics, serve until a signal.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use pgws::config::{Command, Config, ConfigCommand, ConfigError, GuestCommand, LogFormat};
use pgws::guest::cases;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = match Config::load_from(std::env::args_os()) {
        Ok(config) => config,
        Err(ConfigError::Args(e)) => e.exit(),
        Err(e) => return Err(e.into()),
    };
    match &config.command {
        None => {}
        Some(Command::Token(request)) => {
            config.validate().map_err(anyhow::Error::msg)?;
            println!("{}", pgws::auth::mint(&config.tokens, request)?);
            return Ok(());
        }
        Some(Command::Guest(GuestCommand::Check { file })) => {
            return check_guest(&config, file);
        }
        Some(Command::Guest(GuestCommand::Test {
            file,
            cases,
            body,
            tenant,
            topic,
        })) => {
            let cases = match (cases, body) {
                (Some(path), _) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let guest = file
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .unwrap_or_default();
                    cases::parse_cases(&text, guest)
                        .with_context(|| format!("{}", path.display()))?
                }
                (None, Some(body)) => vec![cases::Case {
                    tenant: tenant.clone(),
                    topic: topic.clone(),
                    channel: "pgwebsocket".into(),
                    body: pgws::envelope::JsonBody::parse(body)
                        .context("--body is not JSON")?
                        .as_str()
                        .to_owned(),
                    expect: None,
                }],
                (None, None) => anyhow::bail!("give a cases file or --body '<json>'"),
            };
            return test_guest(&config, file, &cases).await;
        }
        Some(Command::Config(ConfigCommand::Check)) => {
            config.validate().map_err(anyhow::Error::msg)?;
            print!("{}", Config::effective(std::env::args_os())?);
            eprintln!("configuration is valid");
            return Ok(());
        }
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

    let metrics = pgws::metrics::install().context("installing the metrics recorder")?;
    let tcp =
        pgws::server::bind(config.listen).with_context(|| format!("binding {}", config.listen))?;

    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone(), embedded.clone()));
    let served = pgws::server::run(config, tcp, Some(metrics), shutdown).await;
    tokio::task::spawn_blocking(move || stop_embedded(&embedded)).await?;
    served
}

/// `pgws guest check <file>`: the report, and an error (non-zero exit) when the server would refuse it.
fn check_guest(config: &Config, file: &std::path::Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let runtime = pgws::guest::GuestRuntime::new((&config.guest).into(), None)
        .context("starting the WebAssembly runtime")?;
    let report = pgws::guest::inspect(&runtime, &bytes)
        .with_context(|| format!("{} would not load", file.display()))?;
    println!("file:          {}", file.display());
    println!("world:         pgws:guest/{}@0.1.0", report.world);
    println!("hooks:         {}", report.hooks.join(", "));
    println!("imports:       {}", report.imports.join(", "));
    println!("size:          {} bytes", report.size);
    println!("version:       {}", report.version);
    println!(
        "compile time:  {:.1} ms",
        report.compile_time.as_secs_f64() * 1e3
    );
    println!("ok: pgws would load it");
    Ok(())
}

/// `pgws guest test`: each case's verdict, time and pass/fail; an error if any case failed.
async fn test_guest(
    config: &Config,
    file: &std::path::Path,
    cases: &[cases::Case],
) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let runtime = pgws::guest::GuestRuntime::new((&config.guest).into(), None)
        .context("starting the WebAssembly runtime")?;
    let module = runtime
        .compile(&bytes)
        .with_context(|| format!("{} would not load", file.display()))?;
    let mut instance = pgws::guest::GuestInstance::new(&runtime, &module, "acme")
        .await
        .map_err(|e| anyhow::anyhow!("{} failed to start: {e:#}", file.display()))?;
    let mut failed = 0;
    for case in cases {
        let outcome = cases::run_case(&runtime, &mut instance, case).await;
        let verdict = match outcome.passed {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "ran ",
        };
        let topic = case
            .topic
            .as_deref()
            .map(|t| format!("/{t}"))
            .unwrap_or_default();
        println!(
            "{verdict} {:>9.1} µs  {}{topic},{}  →  {}",
            outcome.time.as_secs_f64() * 1e6,
            case.tenant,
            case.body,
            outcome.got
        );
        if outcome.passed == Some(false) {
            failed += 1;
            if let Some(expect) = &case.expect {
                println!("     expected {expect}");
            }
        }
        if outcome.got.get("failed").is_some() {
            // A failed call leaves the instance unusable, as in the server: start a fresh one.
            instance = pgws::guest::GuestInstance::new(&runtime, &module, "acme")
                .await
                .map_err(|e| anyhow::anyhow!("{} failed to start: {e:#}", file.display()))?;
        }
    }
    println!("{} cases, {failed} failed", cases.len());
    anyhow::ensure!(failed == 0, "{failed} of {} cases failed", cases.len());
    Ok(())
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
