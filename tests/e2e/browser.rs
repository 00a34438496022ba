//! The demo pages in real headless Chromium (Debian's `chromium`, driven by playwright-core): `/`
//! connects, shows a NOTIFY sent from SQL, publishes a message back, and shows a guest's rejection;
//! `/socket-test` does socketio_pg's round with the bundled socket.io 2.x client.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::harness::guests::{guest_dir, repo, rust_guest};
use crate::harness::{listen, notify, spawn_with_guests, PATIENCE};

/// The next step the browser script reports.
async fn step(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> anyhow::Result<String> {
    let line = tokio::time::timeout(PATIENCE, lines.next_line())
        .await??
        .unwrap_or_default();
    anyhow::ensure!(!line.starts_with("FAILED"), "browser: {line}");
    Ok(line)
}

/// The browser tests' node_modules.
fn browser_tools() -> std::path::PathBuf {
    crate::harness::node_modules("browser", "playwright-core")
}

/// A page script of tests/browser started in Node: its stdin (to let it go on) and its step lines.
struct PageScript {
    node: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl PageScript {
    async fn start(script: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<PageScript> {
        let tools = tokio::task::spawn_blocking(browser_tools).await?;
        let mut node = tokio::process::Command::new("node")
            .arg(tools.join(script))
            .args(args)
            .current_dir(&tools)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = node.stdin.take().expect("stdin");
        let lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
        Ok(PageScript { node, stdin, lines })
    }

    async fn step(&mut self) -> anyhow::Result<String> {
        step(&mut self.lines).await
    }

    async fn go_on(&mut self) -> anyhow::Result<()> {
        Ok(self.stdin.write_all(b"go\n").await?)
    }
}

/// Page connects, shows a NOTIFY from SQL, publishes back (Postgres sees it with the tenant set by the
/// server), shows the guest's rejection; a screenshot is kept as a test artifact.
#[tokio::test(flavor = "multi_thread")]
async fn demo_page_in_headless_chromium() -> anyhow::Result<()> {
    let dir = guest_dir(&[("demo", &rust_guest("moderator"))]);
    let (server, sql) = spawn_with_guests(&dir, &[]).await?;
    let (_listener, mut seen) = listen(server.database_url(), "pgwebsocket").await?;
    let shot = artifacts().join("demo-page.png");
    let _ = std::fs::remove_file(&shot);
    let url = format!("http://{}/", server.addr);
    let mut page = PageScript::start("demo.mjs", &[url.as_ref(), shot.as_ref()]).await?;

    assert_eq!(page.step().await?, "CONNECTED");
    notify(&sql, r#"demo,{"text":"from-sql"}"#).await?;
    page.go_on().await?;
    assert_eq!(page.step().await?, "SAW_NOTIFY");
    // Our own NOTIFY, then the page's publish, with the tenant set by the server and the guest's stamp.
    let (_, first) = tokio::time::timeout(PATIENCE, seen.recv())
        .await?
        .expect("notification");
    assert_eq!(first, r#"demo,{"text":"from-sql"}"#);
    assert_eq!(page.step().await?, "PUBLISHED");
    let (_, published) = tokio::time::timeout(PATIENCE, seen.recv())
        .await?
        .expect("notification");
    assert_eq!(
        published,
        r#"demo/chat,{"text":"from-browser","moderated":true}"#
    );
    assert_eq!(page.step().await?, "REJECTED");
    assert_eq!(page.step().await?, "SCREENSHOT");
    assert!(page.node.wait().await?.success());
    assert!(
        std::fs::metadata(&shot)?.len() > 1000,
        "screenshot saved at {}",
        shot.display()
    );
    eprintln!("demo page screenshot: {}", shot.display());
    // The rejected message never reached Postgres: the next thing it saw is this marker.
    notify(&sql, r#"demo,{"marker":1}"#).await?;
    let (_, next) = tokio::time::timeout(PATIENCE, seen.recv())
        .await?
        .expect("notification");
    assert_eq!(next, r#"demo,{"marker":1}"#);
    Ok(())
}

/// `/socket-test`, socketio_pg's page, in Chromium with the socket.io 2.x client pgws serves: it
/// connects with a token, subscribes, shows a NOTIFY from SQL, publishes with `test_pub` (Postgres sees
/// it on the channel) and shows the refusal of a channel the token does not grant.
#[tokio::test(flavor = "multi_thread")]
async fn socket_test_page_in_headless_chromium() -> anyhow::Result<()> {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let (server, sql) =
        crate::harness::spawn_app(&["--jwt-secret", "page-secret-page-secret-page-secret-0"])
            .await?;
    let token = encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({
            "tenant": "web", "channels": ["foo"], "mode": "rw",
            "exp": jsonwebtoken::get_current_timestamp() + 600,
        }),
        &EncodingKey::from_secret(b"page-secret-page-secret-page-secret-0"),
    )?;
    let (_listener, mut seen) = listen(server.database_url(), "foo").await?;
    let shot = artifacts().join("socket-test-page.png");
    let _ = std::fs::remove_file(&shot);
    let url = format!("http://{}/socket-test", server.addr);
    let args: [&std::ffi::OsStr; 3] = [url.as_ref(), token.as_ref(), shot.as_ref()];
    let mut page = PageScript::start("socket-test.mjs", &args).await?;

    assert_eq!(page.step().await?, "SUBSCRIBED");
    crate::harness::notify_on(&sql, "foo", r#"{"text":"from-sql"}"#).await?;
    page.go_on().await?;
    assert_eq!(page.step().await?, "SAW_NOTIFY");
    assert_eq!(page.step().await?, "PUBLISHED");
    crate::harness::notify_on(&sql, "foo", r#"{"marker":1}"#).await?;
    let mut payloads = Vec::new();
    for _ in 0..3 {
        let (_, p) = tokio::time::timeout(PATIENCE, seen.recv())
            .await?
            .expect("notification");
        payloads.push(p);
    }
    // In order, before the marker: ours and the page's, nothing else.
    assert_eq!(
        payloads,
        [
            r#"{"text":"from-sql"}"#,
            r#"{"text":"from-browser"}"#,
            r#"{"marker":1}"#
        ]
    );
    assert_eq!(page.step().await?, "REFUSED");
    assert_eq!(page.step().await?, "SCREENSHOT");
    assert!(page.node.wait().await?.success());
    eprintln!("socket-test page screenshot: {}", shot.display());
    Ok(())
}

/// Where screenshots are kept: `$CARGO_TARGET_DIR/test-artifacts`.
fn artifacts() -> std::path::PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    let dir = base.join("test-artifacts");
    let _ = std::fs::create_dir_all(&dir);
    dir
}
