//! The subcommands: what `pgws` does instead of serving — `token`, `config check`, `guest new`,
//! `guest check`, `guest test` and `schema install`. Each prints its result and returns an error (a non-zero exit) when it failed.

use anyhow::Context;
use pgws::config::{Command, Config, ConfigCommand, GuestCommand, SchemaCommand};
use pgws::guest::cases;

pub async fn run(config: &Config, command: &Command) -> anyhow::Result<()> {
    match command {
        Command::Token(request) => {
            config.validate().map_err(anyhow::Error::msg)?;
            println!("{}", pgws::auth::mint(&config.tokens, request)?);
            Ok(())
        }
        Command::Guest(GuestCommand::New { name, lang, dir }) => {
            let dir = dir.clone().unwrap_or_else(|| name.into());
            let files = pgws::guest::template::render(name, *lang)?;
            pgws::guest::template::write(&dir, &files)?;
            for file in &files {
                println!("created {}", dir.join(file.path).display());
            }
            println!(
                "next: cd {} && ./build.sh && pgws guest test {name}.wasm cases.json",
                dir.display()
            );
            Ok(())
        }
        Command::Guest(GuestCommand::Check { file }) => check_guest(config, file),
        Command::Guest(GuestCommand::Test {
            file,
            cases,
            body,
            tenant,
            topic,
        }) => {
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
            test_guest(config, file, &cases).await
        }
        Command::Schema(SchemaCommand::Install) => {
            let url = config
                .database_url
                .as_deref()
                .context("no database: pass --database-url or set DATABASE_URL")?;
            let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .context("connecting to PostgreSQL")?;
            let connection = tokio::spawn(connection);
            let version = pgws::streams::schema::install(&mut client).await?;
            drop(client);
            let _ = connection.await;
            println!("durable-streams schema version {version} is installed (pgws_stream, pgws_message, pgws_publish)");
            Ok(())
        }
        Command::Config(ConfigCommand::Check) => {
            config.validate().map_err(anyhow::Error::msg)?;
            print!("{}", Config::effective(std::env::args_os())?);
            eprintln!("configuration is valid");
            Ok(())
        }
    }
}

/// `pgws guest check <file>`: the report, and an error (non-zero exit) when the server would refuse it.
fn check_guest(config: &Config, file: &std::path::Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let runtime =
        pgws::guest::GuestRuntime::new((&config.guest).into(), config.guest.guest_cache.clone())
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
    let runtime =
        pgws::guest::GuestRuntime::new((&config.guest).into(), config.guest.guest_cache.clone())
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
