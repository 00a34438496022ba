//! What an outside review got through, each closed: tokens that expire in any number form, `nbf`,
//! `aud`/`iss`, short secrets, least-privilege grants on both endpoints, caps on every endpoint,
//! private metrics, 1009 for an oversized message, and key rotation without a restart.

use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::harness::http::{get, request};
use crate::harness::socketio::{Kind, SioClient};
use crate::harness::{notify, spawn_app, Client, PATIENCE};

const SECRET: &str = "hardening-test-secret-0123456789abcdef";

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

fn token(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

fn base(server: &crate::harness::Server) -> String {
    format!("http://{}", server.addr)
}

/// The status a refused upgrade answered, from the client's error.
async fn refused_status(url: &str, protocols: &[&str]) -> String {
    match Client::connect_with(url, protocols, &[]).await {
        Ok(_) => "connected".into(),
        Err(e) => e.to_string(),
    }
}

/// A token whose `exp` is not an integer (`now + 2.5`) is closed at expiry on `/ws` (4001) and on
/// socket.io (`error` then disconnect); past `exp`s in float or exponent form are refused.
#[tokio::test(flavor = "multi_thread")]
async fn fractional_exp_expires_on_both_endpoints() -> anyhow::Result<()> {
    let (server, _sql) = spawn_app(&["--jwt-secret", SECRET, "--jwt-leeway-secs", "0"]).await?;
    let t = token(json!({"tenant": "a", "exp": now() + 2.5, "channels": ["c"]}));
    let mut ws = Client::connect(&server.ws_url(&format!("?token={t}"))).await?;
    let mut sio = SioClient::start(Kind::Node4, &base(&server), Some(json!({"token": t}))).await?;
    sio.expect("connect").await?;
    sio.expect("server_hello").await?;
    assert_eq!(ws.recv_close().await?, Some(4001));
    let error = sio.expect("error").await?;
    assert_eq!(error["message"], "token expired");
    sio.expect("disconnect").await?;
    for exp in [json!(now() - 1.5), json!(1.5e9), json!(1_500_000_000.0)] {
        let t = token(json!({"tenant": "a", "exp": exp}));
        let err = refused_status(&server.ws_url(&format!("?token={t}")), &[]).await;
        assert!(err.contains("HTTP 401"), "{exp}: {err}");
    }
    assert!(
        server
            .metric("pgws_connections_refused_total", &[("reason", "expired")])
            .await?
            >= 3.0
    );
    Ok(())
}

/// `nbf` in the future is refused; with `--jwt-audience`/`--jwt-issuer` a token must name both.
#[tokio::test(flavor = "multi_thread")]
async fn nbf_audience_and_issuer_are_enforced() -> anyhow::Result<()> {
    let (server, _sql) = spawn_app(&[
        "--jwt-secret",
        SECRET,
        "--jwt-audience",
        "pgws",
        "--jwt-issuer",
        "https://id.example",
    ])
    .await?;
    let good =
        json!({"tenant": "a", "exp": now() + 600.0, "aud": "pgws", "iss": "https://id.example"});
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        token(c)
    };
    let url = |t: &str| server.ws_url(&format!("?token={t}"));
    assert_eq!(
        refused_status(&url(&token(good.clone())), &[]).await,
        "connected"
    );
    for (t, reason) in [
        (with("nbf", json!(now() + 300.0)), "not_yet_valid"),
        (with("aud", json!("someone-else")), "bad_audience"),
        (with("iss", json!("https://evil.example")), "bad_issuer"),
    ] {
        let err = refused_status(&url(&t), &[]).await;
        assert!(err.contains("HTTP 401"), "{reason}: {err}");
        assert_eq!(
            server
                .metric("pgws_connections_refused_total", &[("reason", reason)])
                .await?,
            1.0
        );
    }
    Ok(())
}

/// An HS256 secret shorter than 32 bytes stops the server at start, saying why.
#[tokio::test(flavor = "multi_thread")]
async fn short_secrets_are_refused_at_start() -> anyhow::Result<()> {
    let out = tokio::process::Command::from(crate::harness::server::pgws_command())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "postgresql://nobody@127.0.0.1:1/none",
            "--jwt-secret",
            "a",
        ])
        .env_remove("DATABASE_URL")
        .output()
        .await?;
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("at least 32"), "{text}");
    Ok(())
}

/// A topic-limited token publishes only to its topics: not tenant-wide (which would reach a session
/// that took only `billing`), not to a topic it lacks.
#[tokio::test(flavor = "multi_thread")]
async fn topic_limited_tokens_publish_only_to_their_topics() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(&["--jwt-secret", SECRET]).await?;
    let chat =
        token(json!({"tenant": "a", "exp": now() + 600.0, "topics": ["chat"], "mode": "rw"}));
    let billing = token(json!({"tenant": "a", "exp": now() + 600.0, "topics": ["billing"]}));
    let p = format!("bearer.{chat}");
    let mut w = Client::connect_with(&server.ws_url(""), &["pgws.v1", &p], &[]).await?;
    w.recv_json().await?;
    let p = format!("bearer.{billing}");
    let mut b = Client::connect_with(&server.ws_url(""), &["pgws.v1", &p], &[]).await?;
    b.recv_json().await?;
    b.request(json!({"type": "subscribe", "topics": ["billing"]}))
        .await?;
    let untopical = w
        .request(json!({"type": "publish", "data": {"x": 1}}))
        .await?;
    assert_eq!(untopical["code"], "forbidden_topic", "{untopical}");
    let other = w
        .request(json!({"type": "publish", "topic": "billing", "data": {"x": 2}}))
        .await?;
    assert_eq!(other["code"], "forbidden_topic", "{other}");
    // The billing session's next message is the one meant for it: nothing came before.
    notify(&sql, r#"a/billing,{"invoice":7}"#).await?;
    let got = b.recv_json().await?;
    assert_eq!(got["data"], json!({"invoice": 7}), "{got}");
    Ok(())
}

/// A socket.io token (`channels`, no `topics`) on `/ws` reads no topic and publishes to none: an
/// absent claim grants nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_socketio_token_on_ws_gets_no_topics() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(&["--jwt-secret", SECRET, "--frame", "raw"]).await?;
    let t = token(json!({"tenant": "a", "exp": now() + 600.0, "channels": ["*"], "mode": "rw"}));
    let mut legacy = Client::connect(&server.ws_url(&format!("?token={t}"))).await?;
    notify(&sql, r#"a/secret,{"topical":true}"#).await?;
    notify(&sql, r#"a,{"broadcast":true}"#).await?;
    assert_eq!(legacy.recv_json().await?, json!({"broadcast": true}));
    let p = format!("bearer.{t}");
    let mut v1 = Client::connect_with(&server.ws_url(""), &["pgws.v1", &p], &[]).await?;
    let welcome = v1.recv_json().await?;
    assert_eq!(welcome["topics"], json!([]), "{welcome}");
    let sub = v1
        .request(json!({"type": "subscribe", "topics": ["secret"]}))
        .await?;
    assert_eq!(sub["code"], "forbidden_topic");
    let publish = v1
        .request(json!({"type": "publish", "topic": "secret", "data": {}}))
        .await?;
    assert_eq!(publish["code"], "forbidden_topic");
    let err = refused_status(&server.ws_url(&format!("?token={t}&topics=secret")), &[]).await;
    assert!(err.contains("HTTP 403"), "{err}");
    Ok(())
}

/// `--socketio-anonymous-tenant` clients read but cannot `test_pub` unless `--socketio-test-pub`.
#[tokio::test(flavor = "multi_thread")]
async fn anonymous_socketio_clients_are_read_only() -> anyhow::Result<()> {
    let (server, _sql) = spawn_app(&["--socketio-anonymous-tenant", "public"]).await?;
    let (mut c, _) = SioClient::connected(Kind::Node4, &base(&server), None).await?;
    c.emit(
        "test_pub",
        Some(json!({"channel": "app_jobs", "payload": {"cmd": "drop all"}})),
    )
    .await?;
    let error = c.expect("error").await?;
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("test_pub needs"),
        "{error}"
    );
    Ok(())
}

/// socket.io sockets count toward `--max-connections-per-tenant` and `--max-connections` like `/ws`
/// sessions, and a freed place can be taken again.
#[tokio::test(flavor = "multi_thread")]
async fn socketio_counts_toward_connection_caps() -> anyhow::Result<()> {
    let (server, _sql) = spawn_app(&[
        "--insecure-tenant-param",
        "--max-connections-per-tenant",
        "2",
        "--max-connections",
        "3",
    ])
    .await?;
    let auth = |t: &str| Some(json!({"tenant": t}));
    let (s1, _) = SioClient::connected(Kind::Node4, &base(&server), auth("a")).await?;
    let (_s2, _) = SioClient::connected(Kind::Python, &base(&server), auth("a")).await?;
    let mut s3 = SioClient::start(Kind::Node4, &base(&server), auth("a")).await?;
    let refused = s3.expect("connect_error").await?;
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or_default()
            .contains("limit of 2"),
        "{refused}"
    );
    let err = refused_status(&server.ws_url("?tenant=a"), &[]).await;
    assert!(err.contains("HTTP 503"), "{err}");
    let _b = Client::connect(&server.ws_url("?tenant=b")).await?;
    let err = refused_status(&server.ws_url("?tenant=c"), &[]).await;
    assert!(err.contains("HTTP 503"), "server full: {err}");
    s1.close().await?;
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if Client::connect(&server.ws_url("?tenant=a")).await.is_ok() {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the place was not freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        server
            .metric(
                "pgws_connections_refused_total",
                &[("reason", "tenant_full")]
            )
            .await?
            >= 2.0
    );
    Ok(())
}

/// Engine.IO sessions opened without a valid token are capped (a session with one sent in the
/// handshake itself is authenticated already and needs no place).
#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_engineio_sessions_are_capped() -> anyhow::Result<()> {
    let (server, _sql) =
        spawn_app(&["--jwt-secret", SECRET, "--socketio-max-pending", "3"]).await?;
    let handshake = "/socket.io/?EIO=4&transport=polling";
    for _ in 0..3 {
        assert_eq!(get(server.addr, handshake, &[]).await?.0, 200);
    }
    let (status, body) = get(server.addr, handshake, &[]).await?;
    assert_eq!(status, 503, "{body}");
    let (status, _) = get(server.addr, &format!("{handshake}&token=forged"), &[]).await?;
    assert_eq!(status, 503, "a bad token waits like no token");
    let good = token(json!({"tenant": "a", "exp": now() + 600.0}));
    let (status, _) = get(server.addr, &format!("{handshake}&token={good}"), &[]).await?;
    assert_eq!(
        status, 200,
        "a token at the handshake does not wait for a place"
    );
    assert_eq!(
        server
            .metric(
                "pgws_socketio_handshakes_refused_total",
                &[("reason", "too_many_pending")]
            )
            .await?,
        2.0
    );
    Ok(())
}

/// Topics per session (`?topics=` and pgws.v1 subscriptions) and channels LISTENed per tenant are
/// capped with clear errors.
#[tokio::test(flavor = "multi_thread")]
async fn topics_and_listen_channels_are_capped() -> anyhow::Result<()> {
    let (server, _sql) = spawn_app(&[
        "--insecure-tenant-param",
        "--max-topics-per-session",
        "3",
        "--max-listen-channels-per-tenant",
        "2",
    ])
    .await?;
    let err = refused_status(&server.ws_url("?tenant=a&topics=t1,t2,t3,t4"), &[]).await;
    assert!(err.contains("HTTP 400"), "{err}");
    let mut v1 = Client::connect_with(&server.ws_url("?tenant=a"), &["pgws.v1"], &[]).await?;
    v1.recv_json().await?;
    let ok = v1
        .request(json!({"type": "subscribe", "topics": ["t1", "t2", "t3"]}))
        .await?;
    assert_eq!(ok["type"], "subscribed");
    let over = v1
        .request(json!({"type": "subscribe", "topics": ["t4"]}))
        .await?;
    assert_eq!(over["code"], "too_many_topics", "{over}");

    let (mut s, _) =
        SioClient::connected(Kind::Node4, &base(&server), Some(json!({"tenant": "a"}))).await?;
    s.subscribe("c1").await?;
    s.subscribe("c2").await?;
    s.emit("subscribe", Some(json!({"channel": "c3"}))).await?;
    let error = s.expect("error").await?;
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("limit of 2 channels"),
        "{error}"
    );
    for limit in ["topics_per_session", "listen_channels_per_tenant"] {
        assert_eq!(
            server
                .metric("pgws_limit_refusals_total", &[("limit", limit)])
                .await?,
            1.0,
            "{limit}"
        );
    }
    Ok(())
}

/// `/metrics` names tenants: behind `--metrics-token` it needs the token; with `--admin-listen` it
/// (and `/admin`) is served only on that address.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_can_be_private() -> anyhow::Result<()> {
    let (server, _sql) =
        spawn_app(&["--insecure-tenant-param", "--metrics-token", "m-secret"]).await?;
    let _c = Client::connect(&server.ws_url("?tenant=secret-customer-bank")).await?;
    let (status, _) = get(server.addr, "/metrics", &[]).await?;
    assert_eq!(status, 401);
    let (status, _) = get(
        server.addr,
        "/metrics",
        &[("authorization", "Bearer wrong")],
    )
    .await?;
    assert_eq!(status, 401);
    let (status, text) = get(
        server.addr,
        "/metrics",
        &[("authorization", "Bearer m-secret")],
    )
    .await?;
    assert_eq!(status, 200);
    assert!(text.contains("secret-customer-bank"));

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let admin_addr = format!("127.0.0.1:{port}");
    let (server, _sql) = spawn_app(&[
        "--insecure-tenant-param",
        "--admin-listen",
        &admin_addr,
        "--admin-token",
        "an-admin-secret-for-tests",
    ])
    .await?;
    assert_eq!(server.get("/metrics").await?.0, 404);
    let (status, _) = request(
        server.addr,
        "GET",
        "/admin/guests",
        &[("authorization", "Bearer an-admin-secret-for-tests")],
        b"",
    )
    .await?;
    assert_eq!(status, 404);
    let admin: std::net::SocketAddr = admin_addr.parse()?;
    assert_eq!(get(admin, "/metrics", &[]).await?.0, 200);
    assert_eq!(
        get(
            admin,
            "/admin/guests",
            &[("authorization", "Bearer an-admin-secret-for-tests")]
        )
        .await?
        .0,
        200
    );
    Ok(())
}

/// A client message over `--max-client-message` closes the session with 1009, as PROTOCOL.md says.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_messages_close_with_1009() -> anyhow::Result<()> {
    let (server, _sql) =
        spawn_app(&["--insecure-tenant-param", "--max-client-message", "1024"]).await?;
    let mut c = Client::connect_with(&server.ws_url("?tenant=a"), &["pgws.v1"], &[]).await?;
    c.recv_json().await?;
    c.send_text(&"x".repeat(4096)).await?;
    assert_eq!(c.recv_close().await?, Some(1009));
    Ok(())
}

/// Keys rotate without a restart: the JWKS file gains a new key and drops the old one while a
/// client stays connected; new connections with the old `kid` are refused, the new one admitted.
#[tokio::test(flavor = "multi_thread")]
async fn jwks_keys_rotate_without_a_restart() -> anyhow::Result<()> {
    use base64::Engine as _;
    let dir = std::env::temp_dir().join(format!("pgws-test-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("keys.json");
    let key = |kid: &str, secret: &str| {
        json!({"kty": "oct", "kid": kid, "alg": "HS256",
               "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)})
    };
    let (old, new) = (
        "old-key-old-key-old-key-old-key-1",
        "new-key-new-key-new-key-new-key-22",
    );
    std::fs::write(&path, json!({"keys": [key("k1", old)]}).to_string())?;
    let signed = |kid: &str, secret: &str| {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.into());
        encode(
            &h,
            &json!({"tenant": "a", "exp": now() + 600.0}),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    };
    let path_s = path.display().to_string();
    let (server, sql) = spawn_app(&["--jwt-jwks", &path_s, "--frame", "raw"]).await?;
    let url = |t: &str| server.ws_url(&format!("?token={t}"));
    let mut kept = Client::connect(&url(&signed("k1", old))).await?;
    assert!(refused_status(&url(&signed("k2", new)), &[])
        .await
        .contains("HTTP 401"));

    std::fs::write(
        &path,
        json!({"keys": [key("k2", new)], "rotated": true}).to_string(),
    )?;
    server.wait_log(&["JWKS reloaded"], PATIENCE).await?;
    let err = refused_status(&url(&signed("k1", old)), &[]).await;
    assert!(err.contains("HTTP 401"), "{err}");
    let mut fresh = Client::connect(&url(&signed("k2", new))).await?;
    notify(&sql, r#"a,{"after":"rotation"}"#).await?;
    assert_eq!(kept.recv_json().await?, json!({"after": "rotation"}));
    assert_eq!(fresh.recv_json().await?, json!({"after": "rotation"}));
    assert_eq!(
        server
            .metric(
                "pgws_connections_refused_total",
                &[("reason", "unknown_kid")]
            )
            .await?,
        2.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A client that stops reading is dropped once its socket has taken nothing for
/// `--write-timeout-secs`, even though its queue (made huge here) never fills.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(&[
        "--insecure-tenant-param",
        "--frame",
        "raw",
        "--write-timeout-secs",
        "1",
        "--session-queue",
        "1000000",
    ])
    .await?;
    let _stalled = Client::connect(&server.ws_url("?tenant=a")).await?;
    // About 24 MB: more than the loopback socket buffers on both sides hold.
    sql.batch_execute(
        "SELECT pg_notify('pgwebsocket', 'a,{\"n\":' || i || ',\"pad\":\"' || repeat('x', 7800) || '\"}') \
         FROM generate_series(1, 3000) i",
    )
    .await?;
    server
        .wait_metric(
            "pgws_sessions_closed_total",
            &[("reason", "write_timeout")],
            1.0,
            PATIENCE * 2,
        )
        .await?;
    Ok(())
}

/// A socket.io socket subscribes to at most `--max-channels-per-socket` channels.
#[tokio::test(flavor = "multi_thread")]
async fn channels_per_socket_are_capped() -> anyhow::Result<()> {
    let (server, _sql) =
        spawn_app(&["--insecure-tenant-param", "--max-channels-per-socket", "2"]).await?;
    let (mut s, _) =
        SioClient::connected(Kind::Python, &base(&server), Some(json!({"tenant": "a"}))).await?;
    s.subscribe("one").await?;
    s.subscribe("two").await?;
    s.emit("subscribe", Some(json!({"channel": "three"})))
        .await?;
    let error = s.expect("error").await?;
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("at most 2 channels per connection"),
        "{error}"
    );
    assert_eq!(
        server
            .metric(
                "pgws_limit_refusals_total",
                &[("limit", "channels_per_socket")]
            )
            .await?,
        1.0
    );
    Ok(())
}
