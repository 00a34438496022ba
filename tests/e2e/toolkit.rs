//! The binary's helpers for developers and operators: `pgws token`, `pgws config check`, `PORT`, and
//! socketio_pg's test page URL.

use std::process::Output;
use std::time::Duration;

use serde_json::json;

use crate::harness::server::pgws_command;
use crate::harness::{notify, spawn_app, Client, PgCluster, PATIENCE};

const SECRET: &str = "toolkit-secret-of-at-least-32-bytes";

/// `pgws <args>` with nothing from the developer's environment.
fn pgws(args: &[&str], env: &[(&str, &str)]) -> Output {
    pgws_command()
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("pgws runs")
}

fn token(secret: &str, args: &[&str]) -> String {
    let mut argv = vec!["--jwt-secret", secret, "token"];
    argv.extend_from_slice(args);
    let out = pgws(&argv, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// A token from `pgws token` connects with exactly the grants asked for; one signed with another
/// key is refused.
#[tokio::test(flavor = "multi_thread")]
async fn pgws_token_makes_tokens_the_server_accepts() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(&["--jwt-secret", SECRET]).await?;
    let good = token(
        SECRET,
        &["--tenant", "acme", "--topics", "orders", "--mode", "rw"],
    );
    let proto = format!("bearer.{good}");
    let mut client = Client::connect_with(&server.ws_url(""), &["pgws.v1", &proto], &[]).await?;
    let welcome = client.recv_json().await?;
    assert_eq!(
        welcome,
        json!({"type": "welcome", "tenant": "acme", "topics": ["orders"], "mode": "rw"})
    );
    client
        .request(json!({"type": "subscribe", "topics": ["orders"]}))
        .await?;
    notify(&sql, r#"acme/orders,{"n":1}"#).await?;
    let message = client.recv_json().await?;
    assert_eq!(message["data"], json!({"n": 1}));

    let forged = token(
        "another-secret-that-is-long-enough-too",
        &["--tenant", "acme"],
    );
    let refused = Client::connect(&server.ws_url(&format!("?token={forged}")))
        .await
        .err()
        .expect("refused");
    assert!(refused.to_string().contains("HTTP 401"), "{refused}");

    let out = pgws(&["token", "--tenant", "acme"], &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--jwt-secret"),
        "says what it needs"
    );
    Ok(())
}

/// `pgws config check` prints the effective settings with their sources and secrets masked, and
/// exits non-zero naming the key of an unknown setting or a bad value.
#[test]
fn config_check_names_what_is_wrong() {
    let dir = std::env::temp_dir().join(format!("pgws-config-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("pgws.toml");
    let path = file.to_str().expect("utf-8");

    std::fs::write(
        &file,
        "guest-timeout-ms = 50\nadmin-token = \"hunter2-hunter2-hunter2\"\nchannel = [\"a\", \"b\"]\n",
    )
    .expect("write");
    let out = pgws(
        &["--config", path, "--ping-secs", "7", "config", "check"],
        &[("PGWS_SESSION_QUEUE", "99")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "guest-timeout-ms = 50  # file",
        "admin-token = \"********\"  # file",
        "channel = [\"a\", \"b\"]  # file",
        "ping-secs = 7  # flag",
        "session-queue = 99  # environment",
        "guest-memory-mb = 64  # default",
        "# metrics-token: not set",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no {line:?} in:\n{stdout}"
        );
    }
    assert!(!stdout.contains("hunter2"), "secrets stay masked");

    for (text, named) in [
        ("no_such_setting = 1\n", "unknown setting `no_such_setting`"),
        ("guest-timeout-ms = \"soon\"\n", "--guest-timeout-ms"),
        (
            "insecure-tenant-param = 3\n",
            "`insecure-tenant-param` must be true or false",
        ),
    ] {
        std::fs::write(&file, text).expect("write");
        let out = pgws(&["--config", path, "config", "check"], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}: {stderr}");
        assert!(stderr.contains(named), "{text}: {stderr}");
    }
    let out = pgws(&["config", "check"], &[("PORT", "9999")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l == "listen = \"0.0.0.0:9999\"  # PORT"),
        "{stdout}"
    );
    let out = pgws(
        &["--listen", "127.0.0.1:1", "config", "check"],
        &[("PORT", "9999")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l == "listen = \"127.0.0.1:1\"  # flag"),
        "a listen address beats PORT: {stdout}"
    );
    let out = pgws(&["config", "check"], &[("PORT", "eighty")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PORT=\"eighty\" is not a port number"));
    let out = pgws(&["--session-queue", "0", "config", "check"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--session-queue"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Where socketio_pg was deployed: `PORT` without a listen address serves on 0.0.0.0:$PORT, and
/// its test page is at /static/test.html.
#[tokio::test(flavor = "multi_thread")]
async fn port_variable_and_the_socketio_pg_test_page() -> anyhow::Result<()> {
    let url = PgCluster::shared().fresh_database().await?;
    let port = std::net::TcpListener::bind("0.0.0.0:0")?
        .local_addr()?
        .port();
    let port_text = port.to_string();
    let mut child = pgws_command()
        .args(["--database-url", &url])
        .env("PORT", &port_text)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = std::time::Instant::now() + PATIENCE;
    let served = loop {
        match crate::harness::http::get(addr, "/static/test.html", &[]).await {
            Ok(reply) => break reply,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => {
                let _ = child.kill();
                return Err(e);
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(served.0, 200);
    assert!(served.1.contains("socket.io"), "{}", served.1);
    Ok(())
}

/// `pgws guest check` says what a component is and exits 0 only for one the server would load.
#[test]
fn guest_check_reports_what_the_server_would_load() {
    let moderator = crate::harness::guests::rust_guest("moderator");
    let out = pgws(&["guest", "check", moderator.to_str().expect("utf-8")], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "world:         pgws:guest/gatekeeper@0.1.0",
        "hooks:         on-notify, on-client-message, authorize",
        "ok: pgws would load it",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no {line:?} in:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("pgws:guest/types@0.1.0"),
        "imports listed: {stdout}"
    );

    let c = crate::harness::guests::built("c").join("passthrough.wasm");
    let out = pgws(&["guest", "check", c.to_str().expect("utf-8")], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("world:         pgws:guest/filter@0.1.0"),
        "{stdout}"
    );

    let wrong = crate::harness::guests::rust_guest("wrongworld");
    let out = pgws(&["guest", "check", wrong.to_str().expect("utf-8")], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not fit the pgws:guest/filter world"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pgws(&["guest", "check", env!("CARGO_MANIFEST_DIR")], &[]);
    assert_eq!(out.status.code(), Some(1), "a directory is no component");
}

/// `pgws guest test` runs a guest offline on the conformance table's cases for it, and a case whose
/// expectation is not met fails the run, showing expected and actual.
#[test]
fn guest_test_runs_cases_and_fails_on_a_miss() {
    let validator = crate::harness::guests::rust_guest("validator");
    let validator = validator.to_str().expect("utf-8");
    let table = crate::harness::guests::repo().join("guest/conformance.json");
    let out = pgws(
        &["guest", "test", validator, table.to_str().expect("utf-8")],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.lines().any(|l| l == "9 cases, 0 failed"), "{stdout}");

    let dir = std::env::temp_dir().join(format!("pgws-guest-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cases = dir.join("cases.json");
    std::fs::write(
        &cases,
        r#"[{"body": {"id": 7, "kind": "order"}, "expect": "forward"},
            {"body": {"id": 7}, "expect": "forward"}]"#,
    )
    .expect("write");
    let out = pgws(
        &["guest", "test", validator, cases.to_str().expect("utf-8")],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL"), "{stdout}");
    assert!(
        stdout.contains(r#"→  {"reject":"missing required field `kind`"}"#),
        "{stdout}"
    );
    assert!(stdout.contains("expected \"forward\""), "{stdout}");
    assert!(stdout.lines().any(|l| l == "2 cases, 1 failed"), "{stdout}");

    let reshaper = crate::harness::guests::rust_guest("reshaper");
    let out = pgws(
        &[
            "guest",
            "test",
            reshaper.to_str().expect("utf-8"),
            "--body",
            r#"{"usr": "ann", "password": "x"}"#,
            "--tenant",
            "t9",
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(r#"→  {"replace":{"tenant":"t9","user":"ann"}}"#),
        "{stdout}"
    );
}
