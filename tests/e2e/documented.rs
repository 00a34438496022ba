//! Behaviour the README and PROTOCOL.md promise that no other test covers: one test per promise,
//! each asserting exactly what a client or an operator would see.

use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::harness::driver::Driver;
use crate::harness::guests::{guest_dir, rust_guest};
use crate::harness::socketio::{Kind, SioClient};
use crate::harness::{
    connect, listen, notify, notify_on, spawn_app, spawn_with_guests, Client, PgCluster, Server,
    PATIENCE,
};

const SECRET: &str = "documented-behaviour-secret-0123456789";

fn token(claims: Value) -> String {
    let mut claims = claims;
    if claims.get("exp").is_none() {
        claims["exp"] = json!(jsonwebtoken::get_current_timestamp() + 600);
    }
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// A pgws.v1 client with `token`, past its welcome.
async fn v1_client(server: &Server, token: &str) -> anyhow::Result<Client> {
    let bearer = format!("bearer.{token}");
    let mut c = Client::connect_with(&server.ws_url(""), &["pgws.v1", &bearer], &[]).await?;
    assert_eq!(c.recv_json().await?["type"], "welcome");
    Ok(c)
}

/// The next notification a `listen` connection received.
async fn heard(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) -> anyhow::Result<(String, String)> {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the LISTEN connection ended"))
}

fn base(server: &Server) -> String {
    format!("http://{}", server.addr)
}

// ---- /ws: tokens, topics, keepalive ------------------------------------------------------------

/// A token with `topics` on plain `/ws` (no `?topics=`): the connection takes every topic the token
/// grants and messages without a topic, and nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn token_topics_narrow_a_plain_ws_connection() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(&["--jwt-secret", SECRET, "--frame", "raw"]).await?;
    let t = token(json!({"tenant": "a", "topics": ["orders", "eu/*"]}));
    let mut c = Client::connect(&server.ws_url(&format!("?token={t}"))).await?;
    for payload in [
        r#"a/billing,{"n":1}"#,
        r#"a/orders,{"n":2}"#,
        r#"a/eu/fr,{"n":3}"#,
        r#"a/eu,{"n":4}"#,
        r#"a/orders/x,{"n":5}"#,
        r#"b/orders,{"n":6}"#,
        r#"a,{"n":7}"#,
    ] {
        notify(&sql, payload).await?;
    }
    // Messages arrive in order: what came before the tenant-wide one is all that passed the grant.
    for n in [2, 3, 7] {
        assert_eq!(c.recv_json().await?, json!({ "n": n }));
    }
    Ok(())
}

/// `?topics=` naming an invalid topic is refused before the upgrade with 400 and the reason, logged
/// and counted as `invalid_topic`.
#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_topics_parameter_is_refused_with_400() -> anyhow::Result<()> {
    let (server, _sql) = spawn_app(&["--insecure-tenant-param"]).await?;
    let upgrade = [
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];
    let (status, body) =
        crate::harness::http::get(server.addr, "/ws?tenant=acme&topics=orders,a//b", &upgrade)
            .await?;
    assert_eq!(status, 400);
    assert!(body.starts_with("invalid topic name: "), "{body}");
    server
        .wait_log(
            &["WebSocket upgrade refused", "reason=\"invalid_topic\""],
            PATIENCE,
        )
        .await?;
    assert_eq!(
        server
            .metric(
                "pgws_connections_refused_total",
                &[("reason", "invalid_topic")]
            )
            .await?,
        1.0
    );
    // The same request with valid topics is upgraded.
    Client::connect(&server.ws_url("?tenant=acme&topics=orders,eu/fr")).await?;
    Ok(())
}

/// Reads one server frame (server frames are not masked): opcode and payload.
async fn read_frame(stream: &mut tokio::net::TcpStream) -> anyhow::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    let len = match head[1] & 0x7f {
        126 => {
            let mut n = [0u8; 2];
            stream.read_exact(&mut n).await?;
            u16::from_be_bytes(n) as usize
        }
        127 => {
            let mut n = [0u8; 8];
            stream.read_exact(&mut n).await?;
            u64::from_be_bytes(n) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    Ok((head[0] & 0x0f, payload))
}

/// A client that never answers the server's keepalive pings is closed with 1008 at the next ping;
/// a client that answers stays connected and keeps receiving.
#[tokio::test(flavor = "multi_thread")]
async fn unanswered_pings_close_with_1008() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(&[
        "--insecure-tenant-param",
        "--frame",
        "raw",
        "--ping-secs",
        "1",
    ])
    .await?;
    // tungstenite answers pings itself whenever it reads, so this one keeps reading.
    let mut answering = Client::connect(&server.ws_url("?tenant=acme")).await?;
    let answering = tokio::spawn(async move { answering.recv_text().await });

    // The silent client speaks WebSocket by hand and never sends a frame.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await?;
    silent
        .write_all(
            b"GET /ws?tenant=acme HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\r\n",
        )
        .await?;
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        response.push(silent.read_u8().await?);
    }
    assert!(
        response.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    let mut opcodes = Vec::new();
    let close = loop {
        let (opcode, payload) = tokio::time::timeout(PATIENCE, read_frame(&mut silent)).await??;
        opcodes.push(opcode);
        if opcode == 0x8 {
            break payload;
        }
    };
    // One ping (0x9), unanswered; at the next tick, the close (0x8).
    assert_eq!(opcodes, [0x9, 0x8]);
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1008);
    assert_eq!(
        String::from_utf8_lossy(&close[2..]),
        "no pong within the keepalive interval"
    );
    assert_eq!(
        server
            .metric("pgws_sessions_closed_total", &[("reason", "ping_timeout")])
            .await?,
        1.0
    );
    // Two ping intervals have passed: the answering client is still there.
    notify(&sql, r#"acme,{"still":"connected"}"#).await?;
    assert_eq!(answering.await??, r#"{"still":"connected"}"#);
    Ok(())
}

/// `--jwt-tenant-claim org`: the tenant comes from the `org` claim; a token with only `tenant` has no
/// tenant and is refused.
#[tokio::test(flavor = "multi_thread")]
async fn the_tenant_claim_is_configurable() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(&[
        "--jwt-secret",
        SECRET,
        "--frame",
        "raw",
        "--jwt-tenant-claim",
        "org",
    ])
    .await?;
    let org = token(json!({"org": "acme", "tenant": "other"}));
    let mut c = Client::connect(&server.ws_url(&format!("?token={org}"))).await?;
    let only_tenant = token(json!({"tenant": "acme"}));
    let err = Client::connect(&server.ws_url(&format!("?token={only_tenant}")))
        .await
        .err()
        .expect("no org claim");
    assert!(err.to_string().contains("HTTP 401"), "{err}");
    server
        .wait_log(
            &["WebSocket upgrade refused", "reason=\"missing_tenant\""],
            PATIENCE,
        )
        .await?;
    notify(&sql, r#"other,{"for":"other"}"#).await?;
    notify(&sql, r#"acme,{"for":"acme"}"#).await?;
    assert_eq!(c.recv_json().await?, json!({"for": "acme"}));
    Ok(())
}

// ---- pgws.v1 errors ----------------------------------------------------------------------------

/// `too_large`: a publish whose `<tenant>/<topic>,<data>` would be 8,000 bytes or more is refused
/// before Postgres sees it; 7,999 bytes is published.
#[tokio::test(flavor = "multi_thread")]
async fn a_publish_too_large_for_postgres_is_refused() -> anyhow::Result<()> {
    let (server, _sql) = spawn_app(&["--jwt-secret", SECRET]).await?;
    let (_l, mut seen) = listen(server.database_url(), "pgwebsocket").await?;
    let mut w = v1_client(&server, &token(json!({"tenant": "a", "mode": "rw"}))).await?;
    // "a," + a JSON string of n characters plus its quotes.
    let fits = "f".repeat(7999 - 2 - 2);
    let over = "o".repeat(8000 - 2 - 2);
    let refused = w
        .request(json!({"type": "publish", "data": over, "ref": 1}))
        .await?;
    assert_eq!(
        refused,
        json!({"type": "error", "code": "too_large", "ref": 1,
               "message": "message is 8000 bytes with its address; Postgres accepts at most 7999"})
    );
    let ok = w
        .request(json!({"type": "publish", "data": fits, "ref": 2}))
        .await?;
    assert_eq!(ok, json!({"type": "published", "ref": 2}));
    // The refused one never reached Postgres: the first thing it saw is the one that fits.
    let (_, payload) = heard(&mut seen).await?;
    assert_eq!(payload, format!("a,\"{fits}\""));
    assert_eq!(payload.len(), 7999);
    Ok(())
}

/// `publish_failed`: while Postgres refuses the server's connections, a publish is answered with
/// `publish_failed` (the session stays); once Postgres accepts them again, publishing works.
#[tokio::test(flavor = "multi_thread")]
async fn a_publish_postgres_cannot_take_is_publish_failed() -> anyhow::Result<()> {
    let url = PgCluster::shared().fresh_database().await?;
    let db = url.rsplit("dbname=").next().unwrap_or_default().to_owned();
    let server = Server::start(&url, &["--jwt-secret", SECRET]).await?;
    let mut w = v1_client(&server, &token(json!({"tenant": "a", "mode": "rw"}))).await?;
    // The LISTEN connection is already open; the publisher connects on its first publish, which
    // Postgres now refuses.
    let admin = connect(&PgCluster::shared().url("postgres")).await?;
    admin
        .batch_execute(&format!("ALTER DATABASE {db} WITH ALLOW_CONNECTIONS false"))
        .await?;
    let failed = w
        .request(json!({"type": "publish", "data": {"n": 1}, "ref": 1}))
        .await?;
    assert_eq!(failed["type"], "error", "{failed}");
    assert_eq!(failed["code"], "publish_failed", "{failed}");
    assert_eq!(failed["ref"], 1);
    assert!(
        failed["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("database unavailable: "),
        "{failed}"
    );
    assert_eq!(
        server
            .metric(
                "pgws_client_publishes_total",
                &[("outcome", "publish_failed")]
            )
            .await?,
        1.0
    );
    admin
        .batch_execute(&format!("ALTER DATABASE {db} WITH ALLOW_CONNECTIONS true"))
        .await?;
    let (_l, mut seen) = listen(&url, "pgwebsocket").await?;
    let ok = w
        .request(json!({"type": "publish", "data": {"n": 2}, "ref": 2}))
        .await?;
    assert_eq!(ok, json!({"type": "published", "ref": 2}));
    assert_eq!(heard(&mut seen).await?.1, r#"a,{"n":2}"#);
    Ok(())
}

/// A publish whose `data` is not JSON is not a JSON frame: `bad_frame` (PROTOCOL.md), with nothing
/// sent, and the session carries on.
#[tokio::test(flavor = "multi_thread")]
async fn a_publish_with_invalid_data_is_a_bad_frame() -> anyhow::Result<()> {
    let (server, _sql) = spawn_app(&["--jwt-secret", SECRET]).await?;
    let mut w = v1_client(&server, &token(json!({"tenant": "a", "mode": "rw"}))).await?;
    w.send_text(r#"{"type": "publish", "data": {"a": }, "ref": 1}"#)
        .await?;
    let reply = w.recv_json().await?;
    assert_eq!(reply["code"], "bad_frame", "{reply}");
    let ok = w
        .request(json!({"type": "publish", "data": {"a": 1}, "ref": 2}))
        .await?;
    assert_eq!(ok, json!({"type": "published", "ref": 2}));
    Ok(())
}

// ---- socket.io ---------------------------------------------------------------------------------

/// socket.io `test_pub` is held to the publish rate: past the burst, `error` with the reason and
/// nothing reaches Postgres; the socket keeps working.
#[tokio::test(flavor = "multi_thread")]
async fn socketio_test_pub_is_rate_limited() -> anyhow::Result<()> {
    // A burst of 2 and a rate so low that no token comes back during the test.
    let (server, sql) = spawn_app(&[
        "--jwt-secret",
        SECRET,
        "--publish-rate",
        "0.01",
        "--publish-burst",
        "2",
    ])
    .await?;
    let (_l, mut seen) = listen(server.database_url(), "talk").await?;
    let t = token(json!({"tenant": "a", "channels": ["talk"], "mode": "rw"}));
    let (mut c, _) =
        SioClient::connected(Kind::Node4, &base(&server), Some(json!({ "token": t }))).await?;
    c.subscribe("talk").await?;
    for i in 0..3 {
        c.emit(
            "test_pub",
            Some(json!({"channel": "talk", "payload": {"i": i}})),
        )
        .await?;
    }
    // Requests are answered in order; the events they cause come in their own order, each after its
    // `published`, but not necessarily before the next answer.
    let (mut answers, mut events) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let (name, data) = c.next().await?;
        if name == "event" {
            events.push(data);
        } else {
            answers.push((name, data));
        }
    }
    let want: Vec<(String, Value)> = vec![
        ("published".into(), json!({"channel": "talk"})),
        ("published".into(), json!({"channel": "talk"})),
        (
            "error".into(),
            json!({"message": "test_pub rate limit exceeded; slow down"}),
        ),
    ];
    assert_eq!(answers, want);
    assert_eq!(
        events,
        [
            json!({"channel": "talk", "payload": {"i": 0}}),
            json!({"channel": "talk", "payload": {"i": 1}})
        ]
    );
    notify_on(&sql, "talk", r#"{"marker":1}"#).await?;
    assert_eq!(c.expect("event").await?["payload"], json!({"marker": 1}));
    let mut payloads = Vec::new();
    for _ in 0..3 {
        payloads.push(heard(&mut seen).await?.1);
    }
    assert_eq!(payloads, [r#"{"i":0}"#, r#"{"i":1}"#, r#"{"marker":1}"#]);
    assert_eq!(
        server
            .metric(
                "pgws_client_publishes_total",
                &[("outcome", "rate_limited")]
            )
            .await?,
        1.0
    );
    Ok(())
}

/// socket.io with the token in an `Authorization: Bearer` header (no auth payload): connected as
/// the token's tenant with its channels.
#[tokio::test(flavor = "multi_thread")]
async fn socketio_token_in_the_authorization_header() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(&["--jwt-secret", SECRET]).await?;
    let t = token(json!({"tenant": "a", "channels": ["news"]}));
    let headers = json!({"extraHeaders": {"Authorization": format!("Bearer {t}")}});
    let (mut c, hello) = SioClient::connected(Kind::Node4, &base(&server), Some(headers)).await?;
    assert_eq!(hello, json!({"client": "127.0.0.1"}));
    c.emit("subscribe", Some(json!({"channel": "other"})))
        .await?;
    assert_eq!(
        c.expect("error").await?,
        json!({"message": "channel \"other\" is not allowed by your token"})
    );
    c.subscribe("news").await?;
    notify_on(&sql, "news", r#"{"n":1}"#).await?;
    assert_eq!(
        c.expect("event").await?,
        json!({"channel": "news", "payload": {"n": 1}})
    );
    // A wrong key in the header is refused with the reason.
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"tenant": "a", "exp": jsonwebtoken::get_current_timestamp() + 60}),
        &EncodingKey::from_secret(b"not the secret at all, not at all"),
    )?;
    let headers = json!({"extraHeaders": {"Authorization": format!("Bearer {forged}")}});
    let mut refused = SioClient::start(Kind::Node4, &base(&server), Some(headers)).await?;
    let (event, data) = refused.next().await?;
    assert_eq!(event, "connect_error");
    assert!(data.to_string().contains("bad signature"), "{data}");
    Ok(())
}

/// A tenant guest's `authorize` hook refuses a socket.io connection: `connect_error` with
/// `denied: <the guest's reason>`; the same guest admits other tokens.
#[tokio::test(flavor = "multi_thread")]
async fn socketio_guest_authorize_refusal() -> anyhow::Result<()> {
    let dir = guest_dir(&[("a", &rust_guest("moderator"))]);
    let dir = dir.display().to_string();
    let (server, _sql) = spawn_app(&["--jwt-secret", SECRET, "--guests", &dir]).await?;
    let banned = token(json!({"tenant": "a", "channels": ["x"], "banned": true, "sub": "eve"}));
    for kind in [Kind::Node4, Kind::Python] {
        let mut c =
            SioClient::start(kind, &base(&server), Some(json!({ "token": banned }))).await?;
        let (event, data) = c.next().await?;
        assert_eq!(event, "connect_error", "{kind:?}");
        assert_eq!(data["message"], "denied: eve is banned", "{kind:?}");
    }
    let fine = token(json!({"tenant": "a", "channels": ["x"], "sub": "ann"}));
    SioClient::connected(Kind::Node4, &base(&server), Some(json!({ "token": fine }))).await?;
    Ok(())
}

/// A guest's `route` verdict on socket.io: each route's body goes out on the route's topic taken as
/// a channel name, to the tenant's sockets subscribed there; the original channel gets nothing.
#[tokio::test(flavor = "multi_thread")]
async fn socketio_guest_routes_to_channels() -> anyhow::Result<()> {
    let dir = guest_dir(&[("a", &rust_guest("router"))]);
    let dir = dir.display().to_string();
    let (server, sql) = spawn_app(&["--jwt-secret", SECRET, "--guests", &dir]).await?;
    let t = token(json!({"tenant": "a", "channels": ["*"]}));
    let (mut c, _) =
        SioClient::connected(Kind::Python, &base(&server), Some(json!({ "token": t }))).await?;
    for channel in ["incoming", "orders", "alerts"] {
        c.subscribe(channel).await?;
    }
    notify_on(&sql, "incoming", r#"{"kind":"orders","id":1}"#).await?;
    notify_on(
        &sql,
        "incoming",
        r#"{"kind":"orders","id":2,"priority":"high"}"#,
    )
    .await?;
    notify_on(&sql, "incoming", r#"{"id":3}"#).await?;
    notify_on(&sql, "orders", r#"{"kind":"orders","id":4}"#).await?;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(c.expect("event").await?);
    }
    assert_eq!(
        got,
        [
            json!({"channel": "orders", "payload": {"kind": "orders", "id": 1}}),
            json!({"channel": "orders", "payload": {"kind": "orders", "id": 2, "priority": "high"}}),
            json!({"channel": "alerts", "payload": {"alert": "orders", "id": 2}}),
            // `id: 3` had no kind: dropped. This one is the marker that all before it arrived.
            json!({"channel": "orders", "payload": {"kind": "orders", "id": 4}}),
        ]
    );
    Ok(())
}

// ---- guests ------------------------------------------------------------------------------------

/// A route verdict over `--guest-max-routes` fails the call (`too_many_routes`), and one that names
/// an invalid topic is rejected as `guest_invalid_output`; only those messages are lost.
#[tokio::test(flavor = "multi_thread")]
async fn route_verdicts_are_held_to_the_cap_and_the_naming_rule() -> anyhow::Result<()> {
    let dir = guest_dir(&[("route", &rust_guest("router"))]);
    let (server, sql) = spawn_with_guests(&dir, &["--guest-max-routes", "1"]).await?;
    let mut c = Client::connect(&server.ws_url("?tenant=route")).await?;
    notify(&sql, r#"route,{"kind":"orders","id":1}"#).await?;
    // Two routes (orders and alerts) against a cap of one.
    notify(&sql, r#"route,{"kind":"orders","id":2,"priority":"high"}"#).await?;
    // A topic name with a space.
    notify(&sql, r#"route,{"kind":"bad topic","id":3}"#).await?;
    notify(&sql, r#"route,{"kind":"orders","id":4}"#).await?;
    assert_eq!(c.recv_json().await?, json!({"kind": "orders", "id": 1}));
    assert_eq!(c.recv_json().await?, json!({"kind": "orders", "id": 4}));
    assert_eq!(
        server
            .metric(
                "pgws_guest_failures_total",
                &[("tenant", "route"), ("kind", "too_many_routes")]
            )
            .await?,
        1.0
    );
    server
        .wait_log(
            &["guest call failed", "tenant=route", "over the cap of 1"],
            PATIENCE,
        )
        .await?;
    assert_eq!(
        server
            .metric(
                "pgws_notifications_rejected_total",
                &[("reason", "guest_invalid_output")]
            )
            .await?,
        1.0
    );
    server
        .wait_log(
            &[
                "message rejected",
                "guest_invalid_output",
                "route topic \"bad topic\"",
            ],
            PATIENCE,
        )
        .await?;
    Ok(())
}

/// Files under `dir` (recursively) with their modification times.
fn files_with_mtimes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if let Ok(m) = entry.metadata().and_then(|m| m.modified()) {
                out.push((path, m));
            }
        }
    }
    out.sort();
    out
}

/// `--guest-cache`: the first start compiles the guest and stores the code there; a restart finds
/// it and loads it from there (its log says so), writing nothing new.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_loads_guests_from_the_cache() -> anyhow::Result<()> {
    let dir = guest_dir(&[("c", &rust_guest("reshaper"))]);
    let cache = std::env::temp_dir().join(format!(
        "pgws-test-cache-{}-{}",
        std::process::id(),
        dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_dir_all(&cache);
    let cache_arg = cache.display().to_string();
    let url = PgCluster::shared().fresh_database().await?;
    let dir_arg = dir.display().to_string();
    let args = [
        "--insecure-tenant-param",
        "--frame",
        "raw",
        "--guests",
        &dir_arg,
        "--guest-cache",
        &cache_arg,
    ];
    let compiled = |entries: &[(std::path::PathBuf, std::time::SystemTime)]| {
        entries
            .iter()
            .filter(|(p, _)| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                !name.ends_with(".stats") && !name.starts_with(".")
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    let sql = connect(&url).await?;
    let mut stored = Vec::new();
    for start in 0..2 {
        let server = Server::start(&url, &args).await?;
        let from_cache = if start == 0 {
            "from_cache=false"
        } else {
            "from_cache=true"
        };
        server
            .wait_log(&["guest loaded", "guest=c", from_cache], PATIENCE)
            .await?;
        let mut client = Client::connect(&server.ws_url("?tenant=c")).await?;
        notify(&sql, &format!(r#"c,{{"start":{start},"password":"p"}}"#)).await?;
        assert_eq!(
            client.recv_json().await?,
            json!({"start": start, "tenant": "c"})
        );
        drop(server);
        let now = compiled(&files_with_mtimes(&cache));
        if start == 0 {
            assert!(!now.is_empty(), "the first start stored compiled code");
            stored = now;
        } else {
            assert_eq!(
                now, stored,
                "the restart wrote no compiled code: it read it"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&cache);
    Ok(())
}

/// `_default.wasm` replaced while a tenant without its own guest is connected through it: the next
/// message runs on the new default, on the same connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_live_default_guest_is_hot_swapped() -> anyhow::Result<()> {
    // Built before the client connects: a client that reads nothing while another test's guests
    // build (minutes on a fresh machine) would miss the server's pings.
    let reshaper = rust_guest("reshaper");
    let dir = guest_dir(&[("_default", &rust_guest("passthrough"))]);
    let (server, sql) = spawn_with_guests(&dir, &[]).await?;
    let mut c = Client::connect(&server.ws_url("?tenant=x")).await?;
    notify(&sql, r#"x,{"usr":"ann","n":1}"#).await?;
    assert_eq!(c.recv_text().await?, r#"{"usr":"ann","n":1}"#);
    std::fs::copy(&reshaper, dir.join(".default.tmp"))?;
    std::fs::rename(dir.join(".default.tmp"), dir.join("_default.wasm"))?;
    let deadline = std::time::Instant::now() + PATIENCE;
    while server
        .log_text()
        .matches("guest loaded guest=_default")
        .count()
        < 2
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the new default never loaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    notify(&sql, r#"x,{"usr":"ann","n":2}"#).await?;
    assert_eq!(
        c.recv_json().await?,
        json!({"user": "ann", "n": 2, "tenant": "x"})
    );
    assert_eq!(
        server
            .metric_or_zero("pgws_sessions_closed_total", &[])
            .await?,
        0.0
    );
    Ok(())
}

// ---- operations --------------------------------------------------------------------------------

/// `--inbound-channel`: client publishes are NOTIFYed there, not on the envelope channel, so the
/// tenant's `/ws` clients (served from `--channel`) do not receive them.
#[tokio::test(flavor = "multi_thread")]
async fn client_publishes_go_to_the_inbound_channel() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(&["--jwt-secret", SECRET, "--inbound-channel", "inbox"]).await?;
    let (_li, mut inbox) = listen(server.database_url(), "inbox").await?;
    let (_le, mut envelope) = listen(server.database_url(), "pgwebsocket").await?;
    let mut w = v1_client(
        &server,
        &token(json!({"tenant": "a", "mode": "rw", "topics": ["chat"]})),
    )
    .await?;
    let mut r = v1_client(&server, &token(json!({"tenant": "a", "topics": ["chat"]}))).await?;
    r.request(json!({"type": "subscribe", "topics": ["chat"]}))
        .await?;
    let ok = w
        .request(json!({"type": "publish", "topic": "chat", "data": {"text": "hi"}, "ref": 1}))
        .await?;
    assert_eq!(ok, json!({"type": "published", "ref": 1}));
    assert_eq!(
        heard(&mut inbox).await?,
        ("inbox".to_owned(), r#"a/chat,{"text":"hi"}"#.to_owned())
    );
    notify(&sql, r#"a/chat,{"marker":1}"#).await?;
    assert_eq!(heard(&mut envelope).await?.1, r#"a/chat,{"marker":1}"#);
    let first = r.recv_json().await?;
    assert_eq!(first["data"], json!({"marker": 1}), "{first}");
    Ok(())
}

/// `--log-format json`: every log line is one JSON object, and the lines an operator looks for
/// carry their fields.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line() -> anyhow::Result<()> {
    let url = PgCluster::shared().fresh_database().await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen_on = format!("127.0.0.1:{port}");
    let mut child = tokio::process::Command::from(crate::harness::server::pgws_command())
        .args(["--database-url", &url, "--listen", &listen_on])
        .args(["--insecure-tenant-param", "--log-format", "json"])
        .env("PGWS_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut next = async || -> anyhow::Result<Value> {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await??
            .ok_or_else(|| anyhow::anyhow!("pgws exited"))?;
        serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("not JSON: {line}: {e}"))
    };
    let serving = loop {
        let line = next().await?;
        if line["fields"]["message"] == "pgws serving" {
            break line;
        }
    };
    assert_eq!(serving["level"], "INFO");
    assert_eq!(serving["fields"]["addr"], listen_on);
    // A refused upgrade is logged with its reason as a field.
    let addr: std::net::SocketAddr = listen_on.parse()?;
    crate::harness::http::get(addr, "/ws", &[("upgrade", "websocket")]).await?;
    let refused = loop {
        let line = next().await?;
        if line["fields"]["message"] == "WebSocket upgrade refused" {
            break line;
        }
    };
    assert_eq!(refused["fields"]["reason"], "not_websocket", "{refused}");
    assert_eq!(
        refused["fields"]["detail"],
        "this is a WebSocket endpoint: send a WebSocket handshake"
    );
    child.kill().await?;
    Ok(())
}

/// `pgws_notify_row(tenant column, channel, topic, key column)`: the row goes out on that channel,
/// under that topic, and an oversized row is announced with the key column's value.
#[tokio::test(flavor = "multi_thread")]
async fn trigger_channel_topic_and_key_arguments() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(&["--insecure-tenant-param", "--channel", "rows"]).await?;
    sql.batch_execute(&std::fs::read_to_string(
        crate::harness::guests::repo().join("sql/pgws_triggers.sql"),
    )?)
    .await?;
    sql.batch_execute(
        "CREATE TABLE items (code text PRIMARY KEY, org text, body text);
         CREATE TRIGGER items_pgws AFTER INSERT OR UPDATE OR DELETE ON items
           FOR EACH ROW EXECUTE FUNCTION pgws_notify_row('org', 'rows', 'items', 'code');",
    )
    .await?;
    let mut items = Client::connect(&server.ws_url("?tenant=acme&topics=items")).await?;
    let mut other = Client::connect(&server.ws_url("?tenant=acme&topics=other")).await?;
    sql.batch_execute(
        "INSERT INTO items VALUES ('k1', 'acme', 'small');
         INSERT INTO items VALUES ('big', 'acme', repeat('x', 9000));",
    )
    .await?;
    notify_on(&sql, "rows", r#"acme,{"marker":1}"#).await?;
    let frame = items.recv_json().await?;
    assert_eq!(frame["channel"], "rows");
    assert_eq!(
        frame["payload"],
        json!({"table": "items", "op": "INSERT", "row": {"code": "k1", "org": "acme", "body": "small"}})
    );
    assert_eq!(
        items.recv_json().await?["payload"],
        json!({"table": "items", "op": "INSERT", "truncated": true, "key": "big"})
    );
    assert_eq!(items.recv_json().await?["payload"], json!({"marker": 1}));
    // The topic kept the rows from a connection that takes another topic.
    assert_eq!(other.recv_json().await?["payload"], json!({"marker": 1}));
    Ok(())
}

// ---- client/pgws-client.js ---------------------------------------------------------------------

/// `client/pgws-client.js` under Node: refused connections are retried with doubling delays up to
/// the maximum; once connected the delay starts again at the minimum; every reconnect subscribes
/// its topics again; a gap notice reaches `onGap`.
#[tokio::test(flavor = "multi_thread")]
async fn the_browser_client_reconnects_with_back_off_and_reports_gaps() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(&[
        "--insecure-tenant-param",
        "--max-connections-per-tenant",
        "1",
        "--max-client-message",
        "1024",
        "--reconnect-min-ms",
        "50",
    ])
    .await?;
    // The tenant's one place is taken: the client is refused until it is free.
    let holder = Client::connect(&server.ws_url("?tenant=acme")).await?;
    let options =
        json!({"tenant": "acme", "topics": ["orders"], "minBackoffMs": 40, "maxBackoffMs": 160});
    let mut driver = Driver::start(&server.ws_url(""), &options).await?;

    // Refusals: connecting, closed, a delay; five rounds, then the place is freed.
    let mut delays = Vec::new();
    let mut holder = Some(holder);
    loop {
        let line = driver.line().await?;
        if let Some(ms) = line["retry_ms"].as_u64() {
            delays.push(ms);
            if delays.len() == 5 {
                holder = None;
            }
        } else if line["status"] == "open" {
            break;
        } else {
            assert!(
                line["status"] == "connecting" || line["status"] == "closed",
                "{line}"
            );
        }
    }
    assert!(holder.is_none());
    // 40, 80, 160, then held at the maximum (an attempt under way as the place was freed may still
    // have been refused).
    assert!(delays.len() >= 5, "{delays:?}");
    for (i, ms) in delays.iter().enumerate() {
        assert_eq!(*ms, (40u64 << i.min(2)), "delay {i} of {delays:?}");
    }
    assert_eq!(driver.line().await?, json!({"ready": true}));
    // The topic given in the options was subscribed on connect.
    notify(&sql, r#"acme/other,{"n":1}"#).await?;
    notify(&sql, r#"acme/orders,{"n":2}"#).await?;
    let m = driver.line().await?;
    assert_eq!(m["message"]["topic"], "orders", "{m}");
    assert_eq!(m["message"]["data"], json!({"n": 2}));

    // A gap: the server lost its LISTEN connection.
    crate::harness::kill_listener_backend(&sql).await?;
    let gap = driver.line().await?;
    assert!(
        gap["gap"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("lost its Postgres connection"),
        "{gap}"
    );

    // The server closes the connection (a message over --max-client-message: 1009); the client comes
    // back after the minimum delay, since its last connection succeeded, and subscribes again.
    driver.send(&json!({"oversize": 2000})).await?;
    assert_eq!(
        driver.line().await?,
        json!({"status": "closed", "code": 1009})
    );
    assert_eq!(driver.line().await?, json!({"retry_ms": 40}));
    assert_eq!(driver.line().await?, json!({"status": "connecting"}));
    assert_eq!(driver.line().await?, json!({"status": "open"}));
    assert_eq!(driver.line().await?, json!({"ready": true}));
    // (The gap notice came once the listener was back.)
    notify(&sql, r#"acme/other,{"n":3}"#).await?;
    notify(&sql, r#"acme/orders,{"n":4}"#).await?;
    let m = driver.line().await?;
    assert_eq!(m["message"]["topic"], "orders", "{m}");
    assert_eq!(m["message"]["data"], json!({"n": 4}));
    driver.close().await?;
    Ok(())
}
