//! The write path and the wire: frames written straight into sockets by the fan-out shards, the
//! WebSocket close handshake, and the protocol rules the server's own frame reader enforces.

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{notify, spawn_app, Client, PATIENCE};

const DEV: &[&str] = &["--insecure-tenant-param"];

/// A pgws frame's `id` names the message: every client of the tenant sees the same id for the same
/// NOTIFY (sessions are spread over the fan-out shards, each encoding for its own).
#[tokio::test(flavor = "multi_thread")]
async fn every_client_sees_the_same_id_for_a_message() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(DEV).await?;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Client::connect(&server.ws_url("?tenant=acme")).await?);
    }
    for n in 0..3 {
        notify(&sql, &format!(r#"acme,{{"n":{n}}}"#)).await?;
        let mut ids = Vec::new();
        for c in clients.iter_mut() {
            let frame: Value = serde_json::from_str(&c.recv_text().await?)?;
            assert_eq!(frame["payload"]["n"], n);
            ids.push(frame["id"].as_str().unwrap_or_default().to_owned());
        }
        assert_eq!(ids[0].len(), 36, "a UUID");
        assert!(
            ids.iter().all(|id| *id == ids[0]),
            "one id per message: {ids:?}"
        );
    }
    Ok(())
}

/// `welcome` is a pgws.v1 session's first frame, even when messages for its tenant flow while it
/// connects (and topic-less messages reach every session).
#[tokio::test(flavor = "multi_thread")]
async fn welcome_comes_first_while_messages_flow() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(DEV).await?;
    let flowing = tokio::spawn(async move {
        for n in 0..400 {
            notify(&sql, &format!(r#"acme,{{"n":{n}}}"#)).await?;
        }
        anyhow::Ok(())
    });
    for _ in 0..20 {
        let mut c = Client::connect_with(&server.ws_url("?tenant=acme"), &["pgws.v1"], &[]).await?;
        let first = c.recv_json().await?;
        assert_eq!(first["type"], "welcome", "{first}");
    }
    flowing.await??;
    Ok(())
}

/// The client closes: its close code is echoed and the connection ends cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_close_is_echoed() -> anyhow::Result<()> {
    let (server, _sql) = spawn_app(DEV).await?;
    let mut c = Client::connect(&server.ws_url("?tenant=acme")).await?;
    c.inner()
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "bye".into(),
        })))
        .await?;
    assert_eq!(c.recv_close().await?, Some(1001));
    server
        .wait_metric(
            "pgws_sessions_closed_total",
            &[("reason", "client_closed")],
            1.0,
            PATIENCE,
        )
        .await?;
    Ok(())
}

/// Frames that break RFC 6455 end the session with 1002 (and a text message that is not UTF-8 with
/// 1007), each counted; the server stays healthy.
#[tokio::test(flavor = "multi_thread")]
async fn protocol_violations_close_with_1002_or_1007() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(DEV).await?;
    let masked = |first: u8, payload: &[u8]| {
        let mut f = vec![first, 0x80 | payload.len() as u8, 1, 2, 3, 4];
        f.extend(
            payload
                .iter()
                .zip([1u8, 2, 3, 4].iter().cycle())
                .map(|(b, m)| b ^ m),
        );
        f
    };
    let cases: [(&str, Vec<u8>, u16); 5] = [
        ("unmasked", vec![0x81, 0x01, b'x'], 1002),
        ("reserved bits", masked(0xC1, b"x"), 1002),
        (
            "close code 1005",
            masked(0x88, &1005u16.to_be_bytes()),
            1002,
        ),
        ("stray continuation", masked(0x80, b"x"), 1002),
        ("not UTF-8", masked(0x81, &[0xFF, 0xFE]), 1007),
    ];
    for (what, bytes, want) in cases {
        let mut c = Client::connect(&server.ws_url("?tenant=acme")).await?;
        c.inner().get_mut().write_all(&bytes).await?;
        assert_eq!(c.recv_close().await?, Some(want), "{what}");
    }
    server
        .wait_metric(
            "pgws_sessions_closed_total",
            &[("reason", "protocol_error")],
            5.0,
            PATIENCE,
        )
        .await?;
    // Still serving.
    let mut c = Client::connect(&server.ws_url("?tenant=acme")).await?;
    notify(&sql, r#"acme,{"still":"here"}"#).await?;
    let frame: Value = serde_json::from_str(&c.recv_text().await?)?;
    assert_eq!(frame["payload"]["still"], "here");
    Ok(())
}

/// A ping is answered with a pong carrying the same bytes.
#[tokio::test(flavor = "multi_thread")]
async fn pings_are_answered() -> anyhow::Result<()> {
    let (server, _sql) = spawn_app(DEV).await?;
    let mut c = Client::connect(&server.ws_url("?tenant=acme")).await?;
    c.inner()
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await?;
    let pong = tokio::time::timeout(PATIENCE, async {
        loop {
            match c.inner().next().await {
                Some(Ok(Message::Pong(p))) => return Some(p.to_vec()),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await?;
    assert_eq!(pong.as_deref(), Some(&b"are you there"[..]));
    Ok(())
}
