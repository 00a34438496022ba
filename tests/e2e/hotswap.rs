//! Hot swap: replacing a tenant's guest while messages flow, through the admin API and the guest
//! directory, losing nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::guests::{guest_dir, rust_guest};
use crate::harness::http::request;
use crate::harness::{connect, notify, spawn_app, spawn_with_guests, Client, PATIENCE};

const ADMIN: &str = "admin-token-for-tests";
/// A development server with the admin API on.
const ADMIN_ARGS: &[&str] = &[
    "--insecure-tenant-param",
    "--frame",
    "raw",
    "--admin-token",
    ADMIN,
];

/// Reshaper output carries `"tenant"`; passthrough output does not. Tells which version handled a
/// message.
fn reshaped(frame: &Value) -> bool {
    frame.get("tenant").is_some()
}

/// Under a steady stream of NOTIFYs for several tenants, a tenant's guest is swapped back and forth 20
/// times through the admin API, each swap seen serving before the next: nothing is lost, no
/// connection closes, every message was handled by exactly one version (all clients agree), the
/// version changes exactly once per swap, and every message sent after a swap completed shows that
/// swap's version or a later one.
#[tokio::test(flavor = "multi_thread")]
async fn swapping_under_load_loses_nothing() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(ADMIN_ARGS).await?;
    let passthrough = std::fs::read(rust_guest("passthrough"))?;
    let reshaper = std::fs::read(rust_guest("reshaper"))?;
    assert_eq!(
        server
            .admin(ADMIN, "PUT", "/admin/guests/hot", &passthrough)
            .await?
            .0,
        200
    );

    // Each hot client's frames as (n, handled by the reshaper), read as they come, until `end`.
    let mut hot = Vec::new();
    for _ in 0..3 {
        let mut client = Client::connect(&server.ws_url("?tenant=hot")).await?;
        let seen = Arc::new(Mutex::new(Vec::<(u64, bool)>::new()));
        let sink = seen.clone();
        let reader = tokio::spawn(async move {
            loop {
                let frame = client.recv_json().await?;
                if frame.get("end").is_some() {
                    // Still connected: handed back, so the connection count below sees it.
                    return anyhow::Ok(client);
                }
                let n = frame["n"].as_u64().unwrap_or(0);
                sink.lock().expect("seen").push((n, reshaped(&frame)));
            }
        });
        hot.push((seen, reader));
    }
    let mut others = Vec::new();
    for t in ["cold1", "cold2"] {
        others.push((
            t,
            Client::connect(&server.ws_url(&format!("?tenant={t}"))).await?,
        ));
    }

    // Sender: hot,{"n":n} interleaved with the other tenants, one NOTIFY per transaction.
    let started = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let url = server.database_url().to_owned();
        let (started, stop) = (started.clone(), stop.clone());
        tokio::spawn(async move {
            let sql = connect(&url).await?;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                started.store(n, Ordering::SeqCst);
                notify(&sql, &format!(r#"hot,{{"n":{n}}}"#)).await?;
                notify(&sql, &format!(r#"cold{},{{"n":{n}}}"#, n % 2 + 1)).await?;
            }
            Ok::<_, anyhow::Error>(n)
        })
    };

    // The stream is flowing, on the first version, before the first swap.
    let deadline = Instant::now() + PATIENCE;
    while hot[0].0.lock().expect("seen").is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no message before the first swap"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // 20 swaps. After each, the last NOTIFY started before it completed; the next swap waits until a
    // later message is seen, so every swap serves for a while.
    let mut swaps: Vec<(u64, bool)> = Vec::new();
    let mut latencies = Vec::new();
    for i in 0..20 {
        let to_reshaper = i % 2 == 0;
        let bytes = if to_reshaper { &reshaper } else { &passthrough };
        let t = Instant::now();
        let (status, body) = server
            .admin(ADMIN, "PUT", "/admin/guests/hot", bytes)
            .await?;
        latencies.push(t.elapsed());
        assert_eq!(status, 200, "{body}");
        let after = started.load(Ordering::SeqCst);
        swaps.push((after, to_reshaper));
        let deadline = Instant::now() + PATIENCE;
        while hot[0].0.lock().expect("seen").last().map_or(0, |l| l.0) <= after {
            anyhow::ensure!(Instant::now() < deadline, "no message after swap {i}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let total = sender.await??;
    // End markers: in order, so what a client got before its marker is everything it got.
    for tenant in ["hot", "cold1", "cold2"] {
        notify(&sql, &format!(r#"{tenant},{{"end":true}}"#)).await?;
    }

    let mut sequences = Vec::new();
    let mut still_open = Vec::new();
    for (seen, reader) in hot {
        still_open.push(reader.await??);
        let seen = seen.lock().expect("seen").clone();
        let numbers: Vec<u64> = seen.iter().map(|s| s.0).collect();
        assert_eq!(
            numbers,
            (1..=total).collect::<Vec<_>>(),
            "hot messages complete, in order, no duplicates"
        );
        sequences.push(seen.into_iter().map(|s| s.1).collect::<Vec<_>>());
    }
    // The guest ran once per message, not once per client: every client saw the same versions.
    assert!(
        sequences.windows(2).all(|w| w[0] == w[1]),
        "clients disagree on versions"
    );
    let versions = &sequences[0];
    // Each swap was seen serving before the next began, and versions change only at swaps: one
    // change per swap.
    let changes = versions.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!(
        changes,
        swaps.len(),
        "version changes for {} swaps",
        swaps.len()
    );
    assert!(!versions[0], "the stream began on the passthrough");
    // Every message sent after the last swap completed ran on the last version.
    let (after_last, last_is_reshaper) = swaps[swaps.len() - 1];
    assert!(after_last < total, "messages were sent after the last swap");
    for n in (after_last + 1)..=total {
        assert_eq!(
            versions[n as usize - 1],
            last_is_reshaper,
            "message {n} after the last swap"
        );
    }
    // The other tenants, with no guest, got every one of their messages, untouched.
    for (t, c) in others.iter_mut() {
        let parity = if *t == "cold1" { 0 } else { 1 };
        let mut got = Vec::new();
        loop {
            let frame = c.recv_json().await?;
            if frame.get("end").is_some() {
                break;
            }
            assert!(!reshaped(&frame), "{t} has no guest");
            got.push(frame["n"].as_u64().unwrap_or(0));
        }
        let want: Vec<u64> = (1..=total).filter(|n| n % 2 == parity).collect();
        assert_eq!(got, want, "{t}");
    }
    assert_eq!(
        server
            .metric("pgws_connections", &[("tenant", "hot")])
            .await?,
        3.0
    );
    assert_eq!(
        server
            .metric_or_zero("pgws_sessions_closed_total", &[])
            .await?,
        0.0
    );
    latencies.sort();
    eprintln!(
        "admin swap latency (PUT → new version serving), 20 swaps: median {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    Ok(())
}

/// Sends probes until one comes back handled by the reshaper (or not, per `want_reshaped`); returns
/// the elapsed time.
async fn until_version(
    sql: &tokio_postgres::Client,
    client: &mut Client,
    want_reshaped: bool,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    loop {
        anyhow::ensure!(t.elapsed() < PATIENCE, "the new version never served");
        notify(sql, r#"hot,{"probe":1}"#).await?;
        let frame = client.recv_json().await?;
        if reshaped(&frame) == want_reshaped {
            // Every probe was answered before the next was sent: nothing is in flight. (The
            // version serves from here on; a probe's answer always comes before the next probe.)
            return Ok(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The guest directory is watched: a file renamed into place serves within moments; corrupt,
/// truncated and wrong-world files are refused while the running guest keeps serving; a file copied
/// in several steps loads once complete; a removed file unloads its guest.
#[tokio::test(flavor = "multi_thread")]
async fn directory_changes_swap_guests() -> anyhow::Result<()> {
    let dir = guest_dir(&[("hot", &rust_guest("passthrough"))]);
    let (server, sql) = spawn_with_guests(&dir, &[]).await?;
    let mut c = Client::connect(&server.ws_url("?tenant=hot")).await?;
    until_version(&sql, &mut c, false).await?;

    // Replace by rename: the deployment pattern.
    let reshaper = std::fs::read(rust_guest("reshaper"))?;
    std::fs::write(dir.join("hot.wasm.tmp"), &reshaper)?;
    let t = Instant::now();
    std::fs::rename(dir.join("hot.wasm.tmp"), dir.join("hot.wasm"))?;
    until_version(&sql, &mut c, true).await?;
    eprintln!(
        "swap latency (file renamed into place → new version serving): {:?}",
        t.elapsed()
    );

    // Bad files are refused; the reshaper keeps serving.
    let passthrough = std::fs::read(rust_guest("passthrough"))?;
    let bad: [(&str, Vec<u8>); 3] = [
        ("corrupt", b"\0asm this is not really wasm".to_vec()),
        ("truncated", passthrough[..passthrough.len() / 2].to_vec()),
        ("wrong world", std::fs::read(rust_guest("wrongworld"))?),
    ];
    for (i, (what, bytes)) in bad.iter().enumerate() {
        std::fs::write(dir.join("hot.wasm"), bytes)?;
        let deadline = Instant::now() + PATIENCE;
        while server.log_text().matches("guest refused").count() < i + 1 {
            anyhow::ensure!(Instant::now() < deadline, "{what} file was not refused");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        notify(&sql, r#"hot,{"after":"bad file"}"#).await?;
        assert!(
            reshaped(&c.recv_json().await?),
            "reshaper still serving after the {what} file"
        );
    }
    server
        .wait_log(
            &["guest refused", "does not fit the pgws:guest/filter world"],
            Duration::from_secs(1),
        )
        .await?;

    // `cp`-style, written in two steps with a pause longer than the watcher's quiet period (100 ms):
    // the half-written file is read, refused, and the reshaper keeps serving; the complete file
    // then loads.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(dir.join("hot.wasm"))?;
        f.write_all(&passthrough[..passthrough.len() / 3])?;
        f.flush()?;
        let deadline = Instant::now() + PATIENCE;
        while server.log_text().matches("guest refused").count() < bad.len() + 1 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the half-written file was not refused"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        notify(&sql, r#"hot,{"after":"half a file"}"#).await?;
        assert!(
            reshaped(&c.recv_json().await?),
            "reshaper still serving after the half-written file"
        );
        f.write_all(&passthrough[passthrough.len() / 3..])?;
    }
    until_version(&sql, &mut c, false).await?;

    // Removal unloads: back to forwarding unchanged (there is no default guest).
    std::fs::write(dir.join("hot.wasm"), &reshaper)?;
    until_version(&sql, &mut c, true).await?;
    std::fs::remove_file(dir.join("hot.wasm"))?;
    until_version(&sql, &mut c, false).await?;
    server
        .wait_log(&["guest file removed"], Duration::from_secs(1))
        .await?;
    Ok(())
}

/// The admin API refuses requests without the right token, is off without `--admin-token`, refuses a
/// bad upload with a clear error, lists guests, and rolls back to the previous version.
#[tokio::test(flavor = "multi_thread")]
async fn admin_api_is_guarded_and_rolls_back() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(ADMIN_ARGS).await?;
    for (method, path) in [
        ("GET", "/admin/guests"),
        ("PUT", "/admin/guests/acme"),
        ("DELETE", "/admin/guests/acme"),
        ("POST", "/admin/guests/acme/rollback"),
    ] {
        let (status, _) = request(server.addr, method, path, &[], b"x").await?;
        assert_eq!(status, 401, "{method} {path} without a token");
        let (status, _) = request(
            server.addr,
            method,
            path,
            &[("authorization", "Bearer wrong")],
            b"x",
        )
        .await?;
        assert_eq!(status, 401, "{method} {path} with a wrong token");
    }

    let passthrough = std::fs::read(rust_guest("passthrough"))?;
    let reshaper = std::fs::read(rust_guest("reshaper"))?;
    let (status, body) = server
        .admin(ADMIN, "PUT", "/admin/guests/acme", b"garbage")
        .await?;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("not a WebAssembly component"),
        "{body}"
    );
    let (status, first) = server
        .admin(ADMIN, "PUT", "/admin/guests/acme", &reshaper)
        .await?;
    assert_eq!(status, 200, "{first}");
    let (status, second) = server
        .admin(ADMIN, "PUT", "/admin/guests/acme", &passthrough)
        .await?;
    assert_eq!(status, 200, "{second}");
    let (_, list) = server.admin(ADMIN, "GET", "/admin/guests", b"").await?;
    assert_eq!(list["guests"][0]["guest"], "acme");
    assert_eq!(list["guests"][0]["version"], second["version"]);
    assert_eq!(list["guests"][0]["previous_version"], first["version"]);

    let mut c = Client::connect(&server.ws_url("?tenant=acme")).await?;
    notify(&sql, r#"acme,{"a":1}"#).await?;
    assert!(!reshaped(&c.recv_json().await?));
    let (status, back) = server
        .admin(ADMIN, "POST", "/admin/guests/acme/rollback", b"")
        .await?;
    assert_eq!(status, 200);
    assert_eq!(back["version"], first["version"]);
    notify(&sql, r#"acme,{"a":2}"#).await?;
    assert!(
        reshaped(&c.recv_json().await?),
        "rolled back to the reshaper"
    );

    let (status, _) = server
        .admin(ADMIN, "DELETE", "/admin/guests/acme", b"")
        .await?;
    assert_eq!(status, 200);
    let (status, _) = server
        .admin(ADMIN, "DELETE", "/admin/guests/acme", b"")
        .await?;
    assert_eq!(status, 404);
    let (status, _) = server
        .admin(ADMIN, "POST", "/admin/guests/nobody/rollback", b"")
        .await?;
    assert_eq!(status, 409);
    drop(server);

    let (server, _sql) = spawn_app(&["--insecure-tenant-param"]).await?;
    let bearer = format!("Bearer {ADMIN}");
    let (status, _) = request(
        server.addr,
        "GET",
        "/admin/guests",
        &[("authorization", &bearer)],
        b"",
    )
    .await?;
    assert_eq!(status, 404, "no --admin-token: no admin API");
    Ok(())
}
