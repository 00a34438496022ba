//! The core pipeline: NOTIFY → tenant's clients, in order, nothing else affected by bad input.

use std::collections::HashMap;
use std::time::Duration;

use crate::harness::{notify, spawn_app, Client};

const DEV: &[&str] = &["--insecure-tenant-param"];

/// A NOTIFY reaches every client of its tenant in pgws's frame shape, and no client of another tenant.
#[tokio::test(flavor = "multi_thread")]
async fn notify_reaches_only_its_tenant() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(DEV).await?;
    let mut acme1 = Client::connect(&server.ws_url("?tenant=acme")).await?;
    let mut acme2 = Client::connect(&server.ws_url("?tenant=acme")).await?;
    let mut other = Client::connect(&server.ws_url("?tenant=other")).await?;

    sql.execute("select pg_notify('pgwebsocket', 'acme,{\"n\":1}')", &[])
        .await?;

    for client in [&mut acme1, &mut acme2] {
        let frame = client.recv_json().await?;
        assert_eq!(frame["payload"], serde_json::json!({"n": 1}));
        assert_eq!(frame["channel"], "pgwebsocket");
        assert_eq!(
            frame["id"].as_str().map(str::len),
            Some(36),
            "uuid id: {frame}"
        );
    }
    // `other`'s first frame is its own marker: acme's message never reached it.
    sql.execute(
        "select pg_notify('pgwebsocket', 'other,{\"marker\":1}')",
        &[],
    )
    .await?;
    assert_eq!(
        other.recv_json().await?["payload"],
        serde_json::json!({"marker": 1})
    );
    Ok(())
}

/// 1,000 messages across 5 tenants and 50 clients arrive complete, in order, with no cross-tenant leak.
#[tokio::test(flavor = "multi_thread")]
async fn thousand_messages_five_tenants_fifty_clients() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(&["--insecure-tenant-param", "--frame", "raw"]).await?;
    let tenants = ["t0", "t1", "t2", "t3", "t4"];
    let mut clients = Vec::new();
    for i in 0..50 {
        let tenant = tenants[i % tenants.len()];
        clients.push((
            tenant,
            Client::connect(&server.ws_url(&format!("?tenant={tenant}"))).await?,
        ));
    }
    // Several transactions of several NOTIFYs each, tenants interleaved.
    let mut expected: HashMap<&str, Vec<u64>> = HashMap::new();
    for batch in 0..20u64 {
        let mut statement = String::from("begin;");
        for k in 0..50u64 {
            let n = batch * 50 + k;
            let tenant = tenants[(n * 7 % 5) as usize];
            expected.entry(tenant).or_default().push(n);
            statement.push_str(&format!(
                "select pg_notify('pgwebsocket', '{tenant},{{\"tenant\":\"{tenant}\",\"n\":{n}}}');"
            ));
        }
        statement.push_str("commit;");
        sql.batch_execute(&statement).await?;
    }
    // One marker per tenant after everything: each client's frames before it are all it got.
    for tenant in tenants {
        sql.batch_execute(&format!(
            "select pg_notify('pgwebsocket', '{tenant},{{\"tenant\":\"{tenant}\",\"end\":true}}')"
        ))
        .await?;
    }
    let mut readers = Vec::new();
    for (tenant, mut client) in clients {
        let want = expected[tenant].clone();
        readers.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(want.len());
            while got.len() < want.len() {
                let frame = client.recv_json().await?;
                anyhow::ensure!(frame["tenant"] == tenant, "{tenant} client got {frame}");
                got.push(frame["n"].as_u64().unwrap_or(u64::MAX));
            }
            anyhow::ensure!(got == want, "{tenant}: out of order or incomplete");
            let end = client.recv_json().await?;
            anyhow::ensure!(end["end"] == true, "{tenant}: {end} after the last message");
            Ok::<_, anyhow::Error>(got.len())
        }));
    }
    let mut total = 0;
    for r in readers {
        total += r.await??;
    }
    assert_eq!(
        total,
        1000 * 10,
        "every message to each of its tenant's 10 clients"
    );
    Ok(())
}

/// A NOTIFY in a transaction that rolls back is never delivered; one that commits is.
#[tokio::test(flavor = "multi_thread")]
async fn rolled_back_notify_is_never_delivered() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(DEV).await?;
    let mut client = Client::connect(&server.ws_url("?tenant=acme")).await?;
    sql.batch_execute(
        "begin; select pg_notify('pgwebsocket', 'acme,{\"v\":\"rolled back\"}'); rollback;",
    )
    .await?;
    sql.batch_execute(
        "begin; select pg_notify('pgwebsocket', 'acme,{\"v\":\"committed\"}'); commit;",
    )
    .await?;
    // The first frame is the committed one: the rolled-back NOTIFY, sent earlier, never came.
    let frame = client.recv_json().await?;
    assert_eq!(frame["payload"]["v"], "committed");
    Ok(())
}

/// Malformed payloads are rejected with a counted reason, and the next good message still arrives.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_payloads_are_rejected_and_counted() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(&["--insecure-tenant-param", "--frame", "raw"]).await?;
    let mut client = Client::connect(&server.ws_url("?tenant=acme")).await?;

    let bad = [
        ("no comma", "acme {\"a\":1}", "missing_separator"),
        ("empty tenant", ",{\"a\":1}", "invalid_tenant"),
        ("bad tenant", "ac me,{\"a\":1}", "invalid_tenant"),
        ("non-ASCII tenant", "acmé,{\"a\":1}", "invalid_tenant"),
        ("bad topic", "acme/a//b,{\"a\":1}", "invalid_topic"),
        ("non-JSON body", "acme,hello", "invalid_json"),
        ("truncated JSON", "acme,{\"a\":", "invalid_json"),
    ];
    for (what, payload, _) in bad {
        notify(&sql, payload).await?;
        // A good message after each bad one must still arrive, and be the very next frame.
        let marker = format!("{{\"after\":\"{what}\"}}");
        notify(&sql, &format!("acme,{marker}")).await?;
        assert_eq!(client.recv_text().await?, marker, "after {what}");
    }
    for (_, _, reason) in bad {
        let counted = server
            .metric("pgws_notifications_rejected_total", &[("reason", reason)])
            .await?;
        assert!(counted >= 1.0, "{reason} counted");
    }
    server
        .wait_log(
            &["payload rejected", "missing_separator"],
            Duration::from_secs(2),
        )
        .await?;

    // Non-ASCII bodies are fine and pass byte for byte.
    let unicode =
        r#"{"text":"héllo wörld ✓ 日本","big":123456789012345678901234567890,"esc":"<&>"}"#;
    notify(&sql, &format!("acme,{unicode}")).await?;
    assert_eq!(client.recv_text().await?, unicode);

    // The largest payload Postgres accepts (7,999 bytes) passes intact.
    let filler = "x".repeat(7999 - "acme,{\"f\":\"\"}".len());
    let body = format!("{{\"f\":\"{filler}\"}}");
    let payload = format!("acme,{body}");
    assert_eq!(payload.len(), 7999);
    notify(&sql, &payload).await?;
    assert_eq!(client.recv_text().await?, body);

    // A 7,999-byte body makes the payload longer than Postgres allows: pg_notify itself refuses it,
    // the sender gets the error, and the server is unaffected.
    let too_long = format!("acme,{{\"f\":\"{}\"}}", "y".repeat(7999 - 8));
    let err = notify(&sql, &too_long)
        .await
        .expect_err("Postgres refuses payloads of 8000+ bytes");
    assert!(
        format!("{err:#}").contains("payload string too long"),
        "{err:#}"
    );
    notify(&sql, "acme,{\"still\":\"alive\"}").await?;
    assert_eq!(client.recv_text().await?, "{\"still\":\"alive\"}");
    Ok(())
}

/// A client with no tenant, or with the dev flag off, is refused before the upgrade.
#[tokio::test(flavor = "multi_thread")]
async fn upgrade_without_identity_is_refused() -> anyhow::Result<()> {
    let (server, _sql) = spawn_app(&[]).await?;
    let err = Client::connect(&server.ws_url("?tenant=acme"))
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("401"), "{err:#}");
    drop(server);

    let (server, _sql) = spawn_app(DEV).await?;
    let err = Client::connect(&server.ws_url(""))
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("401"), "{err:#}");
    let err = Client::connect(&server.ws_url("?tenant=bad%20name"))
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("400"), "{err:#}");
    Ok(())
}

/// Several channels, repeated `--channel`: each NOTIFY names its channel in the frame.
#[tokio::test(flavor = "multi_thread")]
async fn listens_on_every_configured_channel() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(&[
        "--insecure-tenant-param",
        "--channel",
        "alpha",
        "--channel",
        "beta",
    ])
    .await?;
    let mut client = Client::connect(&server.ws_url("?tenant=acme")).await?;
    crate::harness::notify_on(&sql, "alpha", "acme,1").await?;
    crate::harness::notify_on(&sql, "beta", "acme,2").await?;
    crate::harness::notify_on(&sql, "pgwebsocket", "acme,3").await?;
    crate::harness::notify_on(&sql, "alpha", "acme,4").await?;
    let a = client.recv_json().await?;
    let b = client.recv_json().await?;
    assert_eq!(
        (a["channel"].as_str(), a["payload"].as_i64()),
        (Some("alpha"), Some(1))
    );
    assert_eq!(
        (b["channel"].as_str(), b["payload"].as_i64()),
        (Some("beta"), Some(2))
    );
    // Not on a configured channel, so not delivered: the next frame is the one after it.
    let c = client.recv_json().await?;
    assert_eq!(
        (c["channel"].as_str(), c["payload"].as_i64()),
        (Some("alpha"), Some(4))
    );
    Ok(())
}

/// The pgws seed's browser snippet (`new WebSocket`, `JSON.parse(event.data)`) works unchanged but for
/// the URL, run by Node's WHATWG WebSocket, and sees pgws's frame shape.
#[tokio::test(flavor = "multi_thread")]
async fn pgws_browser_snippet_works() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(DEV).await?;
    let script = format!(
        r#"
        const socket = new WebSocket('{url}');
        socket.addEventListener('open', event => {{ console.log('OPEN'); }});
        socket.addEventListener('message', event => {{
            console.log('Received message:', JSON.stringify(JSON.parse(event.data)));
            socket.close();
        }});
        socket.addEventListener('close', event => {{ console.log('CLOSED'); process.exit(0); }});
        setTimeout(() => process.exit(3), 10000);
        "#,
        url = server.ws_url("?tenant=test-team")
    );
    let mut node = tokio::process::Command::new("node")
        .args(["--experimental-websocket", "--no-warnings", "-e", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = node.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    assert_eq!(lines.next_line().await?.as_deref(), Some("OPEN"));
    sql.batch_execute(
        "select pg_notify('pgwebsocket', 'test-team,{\"message\": \"test at ' || current_timestamp || '\"}')",
    )
    .await?;
    let received = lines.next_line().await?.unwrap_or_default();
    let json = received
        .strip_prefix("Received message: ")
        .expect(&received);
    let frame: serde_json::Value = serde_json::from_str(json)?;
    assert!(frame["payload"]["message"]
        .as_str()
        .unwrap_or("")
        .starts_with("test at "));
    assert_eq!(frame["channel"], "pgwebsocket");
    assert!(frame["id"].is_string());
    assert_eq!(lines.next_line().await?.as_deref(), Some("CLOSED"));
    assert!(node.wait().await?.success());
    Ok(())
}
