//! Tenant guests: their effect on delivered messages, and containment of their failures.

use std::time::Duration;

use serde_json::json;

use crate::harness::guests::{guest_dir, rust_guest};
use crate::harness::{notify, spawn_with_guests, Client};

/// Four tenants with four different guests at once (and a default): each guest's effect shows in what
/// its tenant's clients receive, and only there.
#[tokio::test(flavor = "multi_thread")]
async fn each_example_guest_shapes_its_tenant() -> anyhow::Result<()> {
    let dir = guest_dir(&[
        ("val", &rust_guest("validator")),
        ("shape", &rust_guest("reshaper")),
        ("route", &rust_guest("router")),
        ("_default", &rust_guest("passthrough")),
    ]);
    let (server, sql) = spawn_with_guests(&dir, &[]).await?;
    let mut val = Client::connect(&server.ws_url("?tenant=val")).await?;
    let mut shape = Client::connect(&server.ws_url("?tenant=shape")).await?;
    let mut orders = Client::connect(&server.ws_url("?tenant=route&topics=orders")).await?;
    let mut alerts = Client::connect(&server.ws_url("?tenant=route&topics=alerts")).await?;
    let mut plain = Client::connect(&server.ws_url("?tenant=plain")).await?;

    // Validator: good shape passes untouched; each wrong shape is rejected with a logged reason.
    notify(&sql, r#"val,{"id":"x","kind":"a"}"#).await?;
    notify(&sql, r#"val,{"kind":"a"}"#).await?;
    notify(&sql, r#"val,[1,2]"#).await?;
    notify(&sql, r#"val,{"id":7,"kind":"a","data":{"k":1}}"#).await?;
    notify(&sql, r#"val,{"id":8,"kind":"marker"}"#).await?;
    // In order: what came before the marker is everything that passed.
    assert_eq!(
        val.recv_text().await?,
        r#"{"id":7,"kind":"a","data":{"k":1}}"#
    );
    assert_eq!(val.recv_text().await?, r#"{"id":8,"kind":"marker"}"#);
    server
        .wait_log(
            &["message rejected", "val", "missing required field `id`"],
            Duration::from_secs(2),
        )
        .await?;
    let rejected = server
        .metric(
            "pgws_notifications_rejected_total",
            &[("reason", "guest_rejected")],
        )
        .await?;
    assert_eq!(rejected, 3.0);

    // Reshaper: secrets stripped at any depth, `usr` renamed, tenant stamped, order kept.
    notify(&sql, r#"shape,{"usr":"ann","password":"p","profile":{"_internal":1,"city":"Oslo","token":"t"},"n":1}"#).await?;
    assert_eq!(
        shape.recv_json().await?,
        json!({"user":"ann","profile":{"city":"Oslo"},"n":1,"tenant":"shape"})
    );

    // Router: each message reaches the topic named by `kind`; high priority also reaches `alerts`
    // with a summary body; a message without `kind` is dropped.
    notify(&sql, r#"route,{"kind":"orders","id":1}"#).await?;
    notify(&sql, r#"route,{"kind":"billing","id":2}"#).await?;
    notify(&sql, r#"route,{"kind":"orders","id":3,"priority":"high"}"#).await?;
    notify(&sql, r#"route,{"id":4}"#).await?;
    // Markers, one per topic: each client's frames before its marker are all it got.
    notify(&sql, r#"route,{"kind":"orders","id":5}"#).await?;
    notify(&sql, r#"route,{"kind":"alerts","id":6}"#).await?;
    assert_eq!(orders.recv_json().await?["id"], 1);
    assert_eq!(orders.recv_json().await?["id"], 3);
    assert_eq!(orders.recv_json().await?["id"], 5);
    assert_eq!(alerts.recv_json().await?, json!({"alert":"orders","id":3}));
    assert_eq!(alerts.recv_json().await?, json!({"kind":"alerts","id":6}));

    // Default guest (passthrough) serves every other tenant, byte for byte.
    notify(&sql, r#"plain,{"b":2,"a":1}"#).await?;
    assert_eq!(plain.recv_text().await?, r#"{"b":2,"a":1}"#);

    // Nobody saw anybody else's messages: each client's next frame is its own tenant's marker.
    notify(&sql, r#"val,{"id":9,"kind":"end"}"#).await?;
    notify(&sql, r#"shape,{"end":true}"#).await?;
    notify(&sql, r#"plain,{"end":true}"#).await?;
    assert_eq!(val.recv_text().await?, r#"{"id":9,"kind":"end"}"#);
    assert_eq!(
        shape.recv_json().await?,
        json!({"end": true, "tenant": "shape"})
    );
    assert_eq!(plain.recv_text().await?, r#"{"end":true}"#);
    Ok(())
}

/// A trap, an endless loop, a memory bomb and oversized output each cost only that one message: the
/// other tenant keeps receiving, the server stays up, the failure is logged and counted, and the guest's
/// next message is served by a fresh instance.
#[tokio::test(flavor = "multi_thread")]
async fn guest_failures_are_contained() -> anyhow::Result<()> {
    let dir = guest_dir(&[
        ("bad", &rust_guest("misbehave")),
        ("good", &rust_guest("passthrough")),
    ]);
    let limits = [
        "--guest-timeout-ms",
        "50",
        "--guest-memory-mb",
        "32",
        "--guest-max-failures",
        "100",
    ];
    let (mut server, sql) = spawn_with_guests(&dir, &limits).await?;
    let mut bad = Client::connect(&server.ws_url("?tenant=bad")).await?;
    let mut good = Client::connect(&server.ws_url("?tenant=good")).await?;

    for (what, kind) in [
        ("trap", "trap"),
        ("loop", "timeout"),
        ("bomb", "memory"),
        ("huge", "output_too_large"),
    ] {
        notify(&sql, &format!(r#"bad,{{"do":"{what}"}}"#)).await?;
        notify(&sql, &format!(r#"good,{{"after":"{what}"}}"#)).await?;
        notify(&sql, &format!(r#"bad,{{"ok":"{what}"}}"#)).await?;
        assert_eq!(good.recv_json().await?, json!({"after": what}));
        // The failed message is gone; the next one, on a fresh instance, arrives.
        assert_eq!(bad.recv_json().await?, json!({"ok": what}), "after {what}");
        let kind_field = format!("kind=\"{kind}\"");
        server
            .wait_log(
                &["guest call failed", "tenant=bad", &kind_field],
                Duration::from_secs(2),
            )
            .await?;
        let failures = server
            .metric(
                "pgws_guest_failures_total",
                &[("tenant", "bad"), ("kind", kind)],
            )
            .await?;
        assert_eq!(failures, 1.0, "{kind} counted once");
    }
    assert!(server.is_running());
    assert_eq!(server.get("/healthz").await?.0, 200);
    // `good` got exactly its four messages: its next frame is this marker.
    notify(&sql, r#"good,{"end":true}"#).await?;
    assert_eq!(good.recv_json().await?, json!({"end": true}));
    Ok(())
}

/// A guest that keeps failing is isolated: fail closed by default (its messages are dropped, the
/// guest is not called) until `--guest-isolation-secs` have passed, when it is called again; with
/// `--guest-failure open` its messages pass unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn failing_guest_is_isolated_per_policy() -> anyhow::Result<()> {
    let dir = guest_dir(&[("bad", &rust_guest("misbehave"))]);
    let closed = ["--guest-max-failures", "2", "--guest-isolation-secs", "1"];
    let (server, sql) = spawn_with_guests(&dir, &closed).await?;
    let mut bad = Client::connect(&server.ws_url("?tenant=bad")).await?;
    // Distinct payloads: Postgres folds identical NOTIFYs of one transaction into one.
    notify(&sql, r#"bad,{"do":"trap","n":1}"#).await?;
    notify(&sql, r#"bad,{"do":"trap","n":2}"#).await?;
    server
        .wait_log(
            &["guest isolated after repeated failures", "tenant=bad"],
            Duration::from_secs(5),
        )
        .await?;
    notify(&sql, r#"bad,{"ok":1}"#).await?;
    server
        .wait_metric(
            "pgws_notifications_rejected_total",
            &[("reason", "guest_isolated")],
            1.0,
            Duration::from_secs(5),
        )
        .await?;
    // The isolation began before it was logged: a full rest after the log line, it is over, and the
    // guest handles the next message. It is the first frame the client sees: nothing leaked before.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    notify(&sql, r#"bad,{"ok":2}"#).await?;
    assert_eq!(bad.recv_json().await?, json!({"ok": 2}));
    assert_eq!(
        server
            .metric(
                "pgws_notifications_rejected_total",
                &[("reason", "guest_isolated")],
            )
            .await?,
        1.0
    );
    assert_eq!(
        server
            .metric(
                "pgws_guest_calls_total",
                &[("tenant", "bad"), ("outcome", "delivered")]
            )
            .await?,
        1.0,
        "the guest itself handled the message after its rest"
    );
    drop(server);

    let open = ["--guest-max-failures", "2", "--guest-failure", "open"];
    let (server, sql) = spawn_with_guests(&dir, &open).await?;
    let mut bad = Client::connect(&server.ws_url("?tenant=bad")).await?;
    notify(&sql, r#"bad,{"do":"trap"}"#).await?;
    assert_eq!(
        bad.recv_json().await?,
        json!({"do": "trap"}),
        "fail open forwards unchanged"
    );
    Ok(())
}

/// The sandbox grants nothing: a guest that tries to read a file, list a directory, read the
/// environment or open a socket gets errors, not data.
#[tokio::test(flavor = "multi_thread")]
async fn guest_has_no_files_env_or_network() -> anyhow::Result<()> {
    let dir = guest_dir(&[("bad", &rust_guest("misbehave"))]);
    let (server, sql) = spawn_with_guests(&dir, &[]).await?;
    let mut bad = Client::connect(&server.ws_url("?tenant=bad")).await?;
    notify(&sql, r#"bad,{"do":"escape"}"#).await?;
    let report = bad.recv_json().await?;
    for key in ["file", "dir", "env", "net"] {
        let outcome = report[key].as_str().unwrap_or_default();
        assert!(
            outcome.starts_with("error:"),
            "{key} must fail, got {outcome:?}"
        );
    }
    assert_eq!(report["env_count"], 0);
    assert_eq!(report["args_count"], 0);
    Ok(())
}

/// Files that are not valid guests are refused with a logged reason; the valid ones still load.
#[tokio::test(flavor = "multi_thread")]
async fn bad_guest_files_are_refused_at_startup() -> anyhow::Result<()> {
    let dir = guest_dir(&[("good", &rust_guest("reshaper"))]);
    std::fs::write(dir.join("junk.wasm"), b"not wasm at all")?;
    let passthrough = std::fs::read(rust_guest("passthrough"))?;
    std::fs::write(dir.join("cut.wasm"), &passthrough[..passthrough.len() / 2])?;
    let (server, sql) = spawn_with_guests(&dir, &[]).await?;
    server
        .wait_log(&["guest refused", "junk.wasm"], Duration::from_secs(2))
        .await?;
    server
        .wait_log(&["guest refused", "cut.wasm"], Duration::from_secs(2))
        .await?;
    let mut good = Client::connect(&server.ws_url("?tenant=good")).await?;
    notify(&sql, r#"good,{"secret":1,"a":2}"#).await?;
    assert_eq!(good.recv_json().await?, json!({"a":2,"tenant":"good"}));
    Ok(())
}
