//! The demo pages in real headless Chromium (Debian's `chromium`, driven by playwright-core): `/`
//! connects, shows a NOTIFY sent from SQL, publishes a message back, and shows a guest's rejection;
//! `/socket-test` does socketio_pg's round with the bundled socket.io 2.x client; `/admin/`, the
//! operator's console, signs in, charts a tenant, swaps and rolls back a guest.

use serde_json::json;
use tokio::io::{AsyncWriteExt, BufReader};

use crate::harness::guests::{guest_dir, repo, rust_guest};
use crate::harness::{listen, notify, spawn_app, spawn_with_guests, Client, PATIENCE};

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

/// A page script of tests/browser started in Node: its stdin (to let it go on) and its step lines.
struct PageScript {
    node: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl PageScript {
    async fn start(script: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<PageScript> {
        let (node, stdin, lines) = crate::harness::node_script(&[], script, args).await?;
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

/// The admin API's guest list.
async fn guests(server: &crate::harness::Server, token: &str) -> anyhow::Result<serde_json::Value> {
    let (_, body) = server.admin(token, "GET", "/admin/guests", b"").await?;
    Ok(body["guests"].clone())
}

/// The first message whose `marker` is `marker`, skipping the steady flow around it.
async fn marked(client: &mut Client, marker: u64) -> anyhow::Result<serde_json::Value> {
    loop {
        let message = client.recv_json().await?;
        if message["marker"] == marker {
            return Ok(message);
        }
    }
}

/// The operator's console in Chromium: a wrong token is refused and the right one kept out of the
/// URL; a tenant's rate moves while messages flow; the upload button swaps guests (the next message
/// shows which one serves), the rollback button goes back, remove removes; screenshot kept.
#[tokio::test(flavor = "multi_thread")]
async fn console_in_headless_chromium() -> anyhow::Result<()> {
    const ADMIN: &str = "console-admin-token";
    let (server, sql) = spawn_app(&[
        "--admin-token",
        ADMIN,
        "--insecure-tenant-param",
        "--frame",
        "raw",
    ])
    .await?;
    // Built before the client connects (see `a_live_default_guest_is_hot_swapped`).
    let (v1, v2) = (rust_guest("passthrough"), rust_guest("reshaper"));
    let mut client = Client::connect(&server.ws_url("?tenant=acme")).await?;
    let shot = artifacts().join("console.png");
    let _ = std::fs::remove_file(&shot);
    let url = format!("http://{}/admin/", server.addr);
    let args: [&std::ffi::OsStr; 5] = [
        url.as_ref(),
        ADMIN.as_ref(),
        v1.as_ref(),
        v2.as_ref(),
        shot.as_ref(),
    ];
    let mut page = PageScript::start("console.mjs", &args).await?;
    assert_eq!(page.step().await?, "SIGNED_IN");

    // A steady flow for acme while the page watches.
    let flowing = tokio::spawn(async move {
        for n in 0u64.. {
            notify(&sql, &format!(r#"acme,{{"flow":{n}}}"#)).await?;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok::<_, anyhow::Error>(sql)
    });
    let marker = |n: u64| format!(r#"acme,{{"marker":{n},"usr":"ann"}}"#);
    page.go_on().await?;
    let rate = page.step().await?;
    let value: f64 = rate.strip_prefix("RATE ").expect("RATE").parse()?;
    assert!(value > 0.0, "{rate}");

    let first = page.step().await?;
    let v1_version = first
        .strip_prefix("UPLOADED ")
        .expect("UPLOADED")
        .to_owned();
    assert_eq!(
        guests(&server, ADMIN).await?[0]["version"],
        v1_version.as_str()
    );
    let sql = crate::harness::connect(server.database_url()).await?;
    notify(&sql, &marker(1)).await?;
    assert_eq!(
        marked(&mut client, 1).await?,
        json!({"marker": 1, "usr": "ann"})
    );
    page.go_on().await?;

    let second = page.step().await?;
    let v2_version = second.strip_prefix("UPLOADED ").expect("UPLOADED");
    assert_ne!(v2_version, v1_version);
    notify(&sql, &marker(2)).await?;
    assert_eq!(
        marked(&mut client, 2).await?,
        json!({"marker": 2, "user": "ann", "tenant": "acme"}),
        "the reshaper serves"
    );
    page.go_on().await?;

    assert_eq!(page.step().await?, format!("ROLLED_BACK {v1_version}"));
    notify(&sql, &marker(3)).await?;
    assert_eq!(
        marked(&mut client, 3).await?,
        json!({"marker": 3, "usr": "ann"})
    );
    page.go_on().await?;

    assert_eq!(page.step().await?, "SCREENSHOT");
    assert_eq!(page.step().await?, "REMOVED");
    assert!(page.node.wait().await?.success());
    assert_eq!(guests(&server, ADMIN).await?, json!([]));
    assert!(std::fs::metadata(&shot)?.len() > 1000);
    eprintln!("console screenshot: {}", shot.display());
    flowing.abort();
    Ok(())
}
