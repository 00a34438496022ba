//! Reliability: Postgres going away, slow clients, hostile sockets, shutdown.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::harness::{connect, notify, Client, PgCluster, Server, PATIENCE};

const DEV: &[&str] = &["--insecure-tenant-param", "--frame", "raw"];

/// Sends numbered NOTIFYs until one reaches `client`; returns how long that took.
async fn until_flowing(url: &str, client: &mut Client, tag: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let deadline = started + PATIENCE;
    let mut n = 0;
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "messages did not flow again ({tag})"
        );
        n += 1;
        let body = format!("{{\"probe\":\"{tag}\",\"n\":{n}}}");
        if let Ok(sql) = connect(url).await {
            let _ = notify(&sql, &format!("acme,{body}")).await;
        }
        if let Ok(text) = client.recv_text_within(Duration::from_millis(100)).await {
            let frame: serde_json::Value = serde_json::from_str(&text)?;
            if frame["probe"] == tag {
                // Drain any further probes of this round.
                while client
                    .recv_text_within(Duration::from_millis(150))
                    .await
                    .is_ok()
                {}
                return Ok(started.elapsed());
            }
        }
    }
}

/// Postgres stopped and restarted 5 times, quickly and after a pause: the server never exits,
/// `/readyz` follows the outage, clients stay connected, and messages flow again soon after.
#[tokio::test(flavor = "multi_thread")]
async fn survives_postgres_restarts() -> anyhow::Result<()> {
    let pg = PgCluster::start()?;
    let url = pg.url("postgres");
    let mut args = DEV.to_vec();
    args.extend([
        "--reconnect-min-ms",
        "50",
        "--reconnect-max-ms",
        "500",
        "--health-check-secs",
        "1",
    ]);
    let mut server = Server::start(&url, &args).await?;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(Client::connect(&server.ws_url("?tenant=acme")).await?);
    }
    // A pgws.v1 client, which is told about each gap.
    let mut v1 = Client::connect_with(&server.ws_url("?tenant=acme"), &["pgws.v1"], &[]).await?;
    assert_eq!(v1.recv_json().await?["type"], "welcome");
    until_flowing(&url, &mut clients[0], "start").await?;

    for round in 0..5 {
        pg.stop_server()?;
        let deadline = Instant::now() + PATIENCE;
        while server.get("/readyz").await?.0 == 200 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "/readyz stayed 200 while Postgres was down"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if round % 2 == 1 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        pg.start_server()?;
        let back = Instant::now();
        server.wait_ready(PATIENCE).await?;
        let tag = format!("round{round}");
        until_flowing(&url, &mut clients[0], &tag).await?;
        let flowing_after = back.elapsed();
        assert!(server.is_running());
        eprintln!("round {round}: messages flowing {flowing_after:?} after Postgres came back");
        // Every client, not just the probe's, is still connected and receiving.
        let sql = connect(&url).await?;
        notify(&sql, &format!("acme,{{\"all\":{round}}}")).await?;
        for c in clients.iter_mut() {
            // Skip the probes this client also received.
            let frame = loop {
                let frame: serde_json::Value = serde_json::from_str(&c.recv_text().await?)?;
                if frame.get("probe").is_none() {
                    break frame;
                }
            };
            assert_eq!(frame, serde_json::json!({ "all": round }));
        }
        let gap = loop {
            let frame = v1.recv_json().await?;
            if frame.get("type").is_some() {
                break frame;
            }
        };
        assert_eq!(gap["type"], "gap", "round {round}: {gap}");
        // Drain this round's messages from the v1 client.
        while v1
            .recv_text_within(Duration::from_millis(100))
            .await
            .is_ok()
        {}
    }
    let reconnects = server.metric("pgws_listener_reconnects_total", &[]).await?;
    assert!(reconnects >= 5.0, "reconnects counted: {reconnects}");
    Ok(())
}

/// `pg_terminate_backend` on the listener's connection: the listener reconnects, clients stay.
#[tokio::test(flavor = "multi_thread")]
async fn survives_terminated_listener_backend() -> anyhow::Result<()> {
    let url = PgCluster::shared().fresh_database().await?;
    let mut args = DEV.to_vec();
    args.extend(["--reconnect-min-ms", "50", "--reconnect-max-ms", "500"]);
    let mut server = Server::start(&url, &args).await?;
    let mut client = Client::connect(&server.ws_url("?tenant=acme")).await?;
    let sql = connect(&url).await?;
    for round in 0..3 {
        let killed = crate::harness::kill_listener_backend(&sql).await?;
        assert_eq!(killed, 1, "exactly one listener connection");
        until_flowing(&url, &mut client, &format!("kill{round}")).await?;
    }
    assert!(server.is_running());
    server
        .wait_log(&["lost the LISTEN connection"], Duration::from_secs(1))
        .await?;
    Ok(())
}

/// A client that never reads is closed once its queue is full, while 100 others get every message.
#[tokio::test(flavor = "multi_thread")]
async fn slow_client_is_closed_others_unaffected() -> anyhow::Result<()> {
    const READERS: usize = 100;
    const MESSAGES: usize = 1500;
    const BATCH: usize = 50;
    let url = PgCluster::shared().fresh_database().await?;
    let mut args = DEV.to_vec();
    args.extend(["--session-queue", "256"]);
    let server = Server::start(&url, &args).await?;

    // The slow client: a tiny receive buffer, and it never reads. Its socket fills, then its queue.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let stream = socket.connect(server.addr).await?;
    let (mut slow, _) =
        tokio_tungstenite::client_async(server.ws_url("?tenant=acme"), stream).await?;
    // It starts reading once the server has given up on it: the server waits up to a second for a
    // closed client to take its close frame, so reading then, it gets everything queued before the
    // overflow and then the close frame with 1013.
    let slow_end = {
        let addr = server.addr;
        tokio::spawn(async move {
            let deadline = Instant::now() + PATIENCE * 6;
            loop {
                let (_, metrics) = crate::harness::http::get(addr, "/metrics", &[]).await?;
                if metrics
                    .lines()
                    .any(|l| l.starts_with("pgws_queue_overflows_total ") && !l.ends_with(" 0"))
                {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the slow client was never cut off"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            while let Some(msg) = slow.next().await {
                match msg? {
                    tokio_tungstenite::tungstenite::Message::Close(frame) => {
                        return Ok(frame.map(|f| u16::from(f.code)));
                    }
                    _ => continue,
                }
            }
            Ok(None)
        })
    };

    // The others read everything and report progress, so the producer never runs a whole queue ahead
    // of them: this test is about one slow client, not about how fast 100 readers are on 2 cores.
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let mut c = Client::connect(&server.ws_url("?tenant=acme")).await?;
        let progress = progress.clone();
        readers.push(tokio::spawn(async move {
            for i in 0..MESSAGES {
                let text = c.recv_text().await?;
                anyhow::ensure!(
                    text.starts_with(&format!("{{\"i\":{i},")),
                    "expected {i}, got {text:.40}"
                );
                progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(c)
        }));
    }
    let sql = connect(&url).await?;
    let pad = "z".repeat(6000);
    for chunk in 0..(MESSAGES / BATCH) {
        let mut batch = String::new();
        for k in 0..BATCH {
            let i = chunk * BATCH + k;
            batch.push_str(&format!(
                "select pg_notify('pgwebsocket', 'acme,{{\"i\":{i},\"pad\":\"{pad}\"}}');"
            ));
        }
        sql.batch_execute(&batch).await?;
        let want = (chunk + 1) * BATCH * READERS;
        let deadline = Instant::now() + PATIENCE;
        while progress.load(std::sync::atomic::Ordering::Relaxed) < want {
            anyhow::ensure!(Instant::now() < deadline, "readers stalled");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let mut still_open = Vec::new();
    for r in readers {
        still_open.push(r.await??);
    }
    assert_eq!(
        server.metric("pgws_queue_overflows_total", &[]).await?,
        1.0,
        "only the slow client"
    );
    assert_eq!(
        server
            .metric("pgws_sessions_closed_total", &[("reason", "too_slow")])
            .await?,
        1.0
    );
    assert_eq!(slow_end.await??, Some(1013));
    assert_eq!(
        server
            .metric("pgws_connections", &[("tenant", "acme")])
            .await?,
        READERS as f64
    );
    Ok(())
}

/// Garbage bytes, oversized frames, a handshake that never completes and 1,000 connects that drop at
/// once leave the server healthy with no leaked sessions.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_sockets_leave_no_trace() -> anyhow::Result<()> {
    let url = PgCluster::shared().fresh_database().await?;
    let mut args = DEV.to_vec();
    args.extend([
        "--max-client-message",
        "1024",
        "--handshake-timeout-secs",
        "1",
    ]);
    let server = Server::start(&url, &args).await?;

    // Garbage instead of HTTP.
    let mut raw = tokio::net::TcpStream::connect(server.addr).await?;
    raw.write_all(b"\x00\xff\x16\x03garbage\r\n\r\n").await?;
    // A handshake that never completes.
    let mut stalled = tokio::net::TcpStream::connect(server.addr).await?;
    stalled
        .write_all(b"GET /ws?tenant=acme HTTP/1.1\r\nHost: x\r\n")
        .await?;
    // A connected client that sends an oversized message and garbage frames.
    let mut big = Client::connect(&server.ws_url("?tenant=acme")).await?;
    big.send_text(&"x".repeat(4096)).await?;
    // The close frame arrives even though the oversized payload was never read (no reset).
    assert_eq!(big.recv_close().await?, Some(1009));
    let mut garbage = Client::connect(&server.ws_url("?tenant=acme")).await?;
    garbage
        .inner()
        .get_mut()
        .write_all(b"\x8f\xff\xff\xff\xff\xff\xff\xff\xff\xff")
        .await
        .ok();
    // 1,000 connects that drop instantly, half after a completed upgrade.
    for i in 0..1000 {
        if i % 2 == 0 {
            drop(tokio::net::TcpStream::connect(server.addr).await?);
        } else {
            drop(Client::connect(&server.ws_url("?tenant=acme")).await?);
        }
    }
    drop(garbage);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let open = server
            .metric("pgws_connections", &[("tenant", "acme")])
            .await?;
        if open == 0.0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{open} sessions leaked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still healthy and delivering.
    assert_eq!(server.get("/healthz").await?.0, 200);
    let mut fresh = Client::connect(&server.ws_url("?tenant=acme")).await?;
    let sql = connect(&url).await?;
    notify(&sql, "acme,{\"ok\":true}").await?;
    assert_eq!(fresh.recv_text().await?, "{\"ok\":true}");
    // The stalled handshake was cut off by the handshake timeout.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        PATIENCE,
        tokio::io::AsyncReadExt::read_to_end(&mut stalled, &mut rest),
    )
    .await;
    assert!(
        read.is_ok(),
        "a handshake that never completes is closed by the server"
    );
    Ok(())
}

/// SIGTERM with 500 open sessions: every client gets 1001, every session finishes within the
/// shutdown bound (none is cut off by it), and the process exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_sessions_with_1001() -> anyhow::Result<()> {
    let url = PgCluster::shared().fresh_database().await?;
    let mut server = Server::start(&url, DEV).await?;
    let mut clients = Vec::new();
    for _ in 0..500 {
        clients.push(Client::connect(&server.ws_url("?tenant=acme")).await?);
    }
    server.terminate()?;
    let waits: Vec<_> = clients
        .into_iter()
        .map(|mut c| tokio::spawn(async move { c.recv_close().await }))
        .collect();
    for w in waits {
        assert_eq!(w.await??, Some(1001));
    }
    assert_eq!(server.wait_exit(PATIENCE).await?, Some(0));
    let log = server.log_text();
    assert!(log.contains("pgws stopped"), "{log}");
    assert!(
        !log.contains("still open after"),
        "every session closed before the shutdown bound: {log}"
    );
    Ok(())
}

/// Connection limits: past the per-tenant and the total cap, upgrades are refused with 503 and
/// counted; other tenants still connect, and a freed place can be taken again.
#[tokio::test(flavor = "multi_thread")]
async fn connection_limits_are_enforced() -> anyhow::Result<()> {
    let url = PgCluster::shared().fresh_database().await?;
    let mut args = DEV.to_vec();
    args.extend([
        "--max-connections",
        "5",
        "--max-connections-per-tenant",
        "3",
    ]);
    let server = Server::start(&url, &args).await?;
    let mut a = Vec::new();
    for _ in 0..3 {
        a.push(Client::connect(&server.ws_url("?tenant=a")).await?);
    }
    let err = Client::connect(&server.ws_url("?tenant=a"))
        .await
        .err()
        .expect("tenant full");
    assert!(err.to_string().contains("HTTP 503"), "{err}");
    let b1 = Client::connect(&server.ws_url("?tenant=b")).await?;
    let _b2 = Client::connect(&server.ws_url("?tenant=b")).await?;
    let err = Client::connect(&server.ws_url("?tenant=c"))
        .await
        .err()
        .expect("server full");
    assert!(err.to_string().contains("HTTP 503"), "{err}");
    assert_eq!(
        server
            .metric(
                "pgws_connections_refused_total",
                &[("reason", "tenant_full")]
            )
            .await?,
        1.0
    );
    assert_eq!(
        server
            .metric(
                "pgws_connections_refused_total",
                &[("reason", "server_full")]
            )
            .await?,
        1.0
    );
    drop(b1);
    let deadline = Instant::now() + PATIENCE;
    loop {
        match Client::connect(&server.ws_url("?tenant=c")).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// After Postgres was down for 5 s, with the default back-off: once `/readyz` says the listener is
/// LISTENing again, a single NOTIFY is delivered, whatever the outage's length.
#[tokio::test(flavor = "multi_thread")]
async fn back_within_a_second_after_a_long_outage() -> anyhow::Result<()> {
    let pg = PgCluster::start()?;
    let url = pg.url("postgres");
    let server = Server::start(&url, DEV).await?;
    let mut client = Client::connect(&server.ws_url("?tenant=acme")).await?;
    until_flowing(&url, &mut client, "before").await?;

    pg.stop_server()?;
    let deadline = Instant::now() + PATIENCE;
    while server.get("/readyz").await?.0 == 200 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "/readyz stayed 200 while Postgres was down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    pg.start_server()?;
    server.wait_ready(PATIENCE).await?;
    let sql = connect(&url).await?;
    notify(&sql, r#"acme,{"after":"outage"}"#).await?;
    let frame: serde_json::Value = serde_json::from_str(&client.recv_text().await?)?;
    assert_eq!(frame, serde_json::json!({ "after": "outage" }));
    Ok(())
}
