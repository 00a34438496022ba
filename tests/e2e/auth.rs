//! Who is who and talking back: tokens, topics, the pgws.v1 protocol, publishing into Postgres.

use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::harness::guests::{guest_dir, rust_guest};
use crate::harness::{listen, notify, spawn_app, Client, PATIENCE};

const SECRET: &str = "test-secret-of-some-length-0123456789";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn token(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

fn auth_args() -> Vec<&'static str> {
    vec!["--jwt-secret", SECRET, "--frame", "raw"]
}

/// A valid token gets its tenant's messages, from a header, a query parameter or a subprotocol; a
/// token for tenant A never sees tenant B, even when the URL asks for B.
#[tokio::test(flavor = "multi_thread")]
async fn valid_tokens_get_their_tenant_only() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(&auth_args()).await?;
    let a = token(json!({"tenant": "a", "exp": now() + 600}));
    let bearer = format!("Bearer {a}");
    let via_header = Client::connect_with(
        &server.ws_url("?tenant=b"),
        &[],
        &[("authorization", &bearer)],
    )
    .await?;
    let via_query = Client::connect(&server.ws_url(&format!("?token={a}&tenant=b"))).await?;
    let protocol = format!("bearer.{a}");
    let via_protocol = Client::connect_with(&server.ws_url(""), &[&protocol], &[]).await?;
    notify(&sql, r#"b,{"for":"b"}"#).await?;
    notify(&sql, r#"a,{"for":"a"}"#).await?;
    notify(&sql, r#"b,{"for":"b","n":2}"#).await?;
    notify(&sql, r#"a,{"marker":true}"#).await?;
    // In order, so what came before the marker is all of it: none of b's.
    for mut c in [via_header, via_query, via_protocol] {
        assert_eq!(c.recv_json().await?, json!({"for": "a"}));
        assert_eq!(c.recv_json().await?, json!({"marker": true}));
    }
    Ok(())
}

/// Expired, wrong-signature, `alg: none`, missing-tenant, missing-exp and malformed tokens are each
/// refused with 401 before the upgrade, with the reason in the log and the metrics.
#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_are_refused_with_reasons() -> anyhow::Result<()> {
    let (server, _sql) = spawn_app(&auth_args()).await?;
    let wrong_key = encode(
        &Header::new(Algorithm::HS256),
        &json!({"tenant": "a", "exp": now() + 600}),
        &EncodingKey::from_secret(b"another secret"),
    )?;
    let cases = [
        (token(json!({"tenant": "a", "exp": now() - 5})), "expired"),
        (wrong_key, "bad_signature"),
        (
            // {"alg":"none","typ":"JWT"}.{"tenant":"a","exp":9999999999}.
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJ0ZW5hbnQiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ."
                .into(),
            "alg_none",
        ),
        (token(json!({"exp": now() + 600})), "missing_tenant"),
        (token(json!({"tenant": "a"})), "missing_exp"),
        ("this-is-not-a-jwt".into(), "malformed_token"),
    ];
    for (bad, reason) in &cases {
        let err = Client::connect(&server.ws_url(&format!("?token={bad}")))
            .await
            .err()
            .expect(reason);
        assert!(err.to_string().contains("HTTP 401"), "{reason}: {err}");
        server
            .wait_log(
                &["WebSocket upgrade refused", &format!("reason=\"{reason}\"")],
                Duration::from_secs(2),
            )
            .await?;
        let counted = server
            .metric("pgws_connections_refused_total", &[("reason", reason)])
            .await?;
        assert_eq!(counted, 1.0, "{reason}");
    }
    let err = Client::connect(&server.ws_url(""))
        .await
        .err()
        .expect("no token");
    assert!(err.to_string().contains("HTTP 401"));
    assert_eq!(server.get("/healthz").await?.0, 200);
    Ok(())
}

/// pgws.v1: subscribe and unsubscribe change what the session receives; a topic outside the token's
/// grant is refused with a structured error; tenant-wide messages always arrive.
#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_follow_the_token() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(&auth_args()).await?;
    let t = token(json!({"tenant": "a", "exp": now() + 600, "topics": ["orders", "eu/*"]}));
    let protocol = format!("bearer.{t}");
    let mut c = Client::connect_with(&server.ws_url(""), &["pgws.v1", &protocol], &[]).await?;
    let welcome = c.recv_json().await?;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["tenant"], "a");

    let ok = c
        .request(json!({"type": "subscribe", "topics": ["orders", "eu/fr"], "ref": 1}))
        .await?;
    assert_eq!(
        ok,
        json!({"type": "subscribed", "topics": ["orders", "eu/fr"], "ref": 1})
    );
    let refused = c
        .request(json!({"type": "subscribe", "topics": ["billing"], "ref": 2}))
        .await?;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "forbidden_topic");
    assert_eq!(refused["ref"], 2);

    notify(&sql, r#"a/billing,{"n":1}"#).await?;
    notify(&sql, r#"a/orders,{"n":2}"#).await?;
    notify(&sql, r#"a/eu/fr,{"n":3}"#).await?;
    notify(&sql, r#"a,{"n":4}"#).await?;
    notify(&sql, r#"b/orders,{"n":5}"#).await?;
    let got: Vec<Value> = vec![
        c.recv_json().await?,
        c.recv_json().await?,
        c.recv_json().await?,
    ];
    assert_eq!(got[0]["topic"], "orders");
    assert_eq!(got[0]["data"], json!({"n": 2}));
    assert_eq!(got[1]["topic"], "eu/fr");
    assert_eq!(got[2]["topic"], Value::Null);
    assert_eq!(got[2]["data"], json!({"n": 4}));
    assert!(
        got[1]["seq"].as_u64() > got[0]["seq"].as_u64(),
        "seq grows: {got:?}"
    );

    let ok = c
        .request(json!({"type": "unsubscribe", "topics": ["orders"]}))
        .await?;
    assert_eq!(ok["type"], "unsubscribed");
    notify(&sql, r#"a/orders,{"n":6}"#).await?;
    notify(&sql, r#"a/eu/fr,{"n":7}"#).await?;
    assert_eq!(c.recv_json().await?["data"], json!({"n": 7}));

    // Garbage frames get structured errors and the session lives on.
    let bad = c.request(json!({"type": "dance"})).await?;
    assert_eq!(bad["code"], "bad_frame");
    c.send_text("not json at all").await?;
    assert_eq!(c.recv_json().await?["code"], "bad_frame");
    notify(&sql, r#"a,{"n":8}"#).await?;
    assert_eq!(c.recv_json().await?["data"], json!({"n": 8}));
    Ok(())
}

/// A browser-style client (token in the subprotocol list) publishes; a psql-style LISTEN sees it with
/// the tenant the server forced, another client of the tenant receives it, and a forged tenant or a
/// guest rejection comes back as a structured error.
#[tokio::test(flavor = "multi_thread")]
async fn clients_publish_into_postgres_as_their_tenant() -> anyhow::Result<()> {
    let dir = guest_dir(&[("a", &rust_guest("moderator"))]);
    let mut args = auth_args();
    let dir_s = dir.display().to_string();
    args.extend(["--guests", &dir_s]);
    let (server, sql) = spawn_app(&args).await?;
    let (_listener, mut seen) = listen(&server_url(&server), "pgwebsocket").await?;

    let writer = token(
        json!({"tenant": "a", "exp": now() + 600, "mode": "rw", "sub": "ann", "topics": ["chat"]}),
    );
    let reader = token(json!({"tenant": "a", "exp": now() + 600, "topics": ["chat"]}));
    let proto_w = format!("bearer.{writer}");
    let proto_r = format!("bearer.{reader}");
    let mut w = Client::connect_with(&server.ws_url(""), &["pgws.v1", &proto_w], &[]).await?;
    let mut r = Client::connect_with(&server.ws_url(""), &["pgws.v1", &proto_r], &[]).await?;
    w.recv_json().await?;
    r.recv_json().await?;
    r.request(json!({"type": "subscribe", "topics": ["chat"]}))
        .await?;

    let ok = w
        .request(json!({"type": "publish", "topic": "chat", "data": {"text": "hi"}, "ref": "p1"}))
        .await?;
    assert_eq!(ok, json!({"type": "published", "ref": "p1"}));
    let (channel, payload) = tokio::time::timeout(PATIENCE, seen.recv())
        .await?
        .expect("notification");
    assert_eq!(channel, "pgwebsocket");
    assert_eq!(payload, r#"a/chat,{"text":"hi","moderated":true}"#);
    let delivered = r.recv_json().await?;
    assert_eq!(delivered["topic"], "chat");
    assert_eq!(delivered["data"], json!({"text": "hi", "moderated": true}));

    // The guest's rejection goes back to the sender; nothing reaches Postgres.
    let no = w
        .request(
            json!({"type": "publish", "topic": "chat", "data": {"text": "buy SPAM now"}, "ref": 2}),
        )
        .await?;
    assert_eq!(no["type"], "error");
    assert_eq!(no["code"], "rejected");
    assert_eq!(no["message"], "spam is not welcome here");
    // A forged tenant field is not part of the protocol: refused, nothing sent.
    let forged = w
        .request(json!({"type": "publish", "tenant": "b", "data": {"x": 1}}))
        .await?;
    assert_eq!(forged["code"], "bad_frame");
    // A read-only token cannot publish.
    let ro = r
        .request(json!({"type": "publish", "data": {"x": 1}}))
        .await?;
    assert_eq!(ro["code"], "read_only");
    // None of the refused publishes reached Postgres: the next thing it saw is this marker.
    notify(&sql, r#"a,{"marker":true}"#).await?;
    let (_, next) = tokio::time::timeout(PATIENCE, seen.recv())
        .await?
        .expect("notification");
    assert_eq!(next, r#"a,{"marker":true}"#);

    // The guest's authorize hook turns away a banned user with 403.
    let banned = token(json!({"tenant": "a", "exp": now() + 600, "banned": true, "sub": "eve"}));
    let err = Client::connect(&server.ws_url(&format!("?token={banned}")))
        .await
        .err()
        .expect("denied");
    assert!(err.to_string().contains("HTTP 403"), "{err}");
    server
        .wait_log(&["guest_denied", "eve is banned"], Duration::from_secs(2))
        .await?;
    Ok(())
}

fn server_url(server: &crate::harness::Server) -> String {
    server.database_url().to_owned()
}

/// Flooding publishes hits the rate limit with a clear error: exactly the burst is published, the
/// rest is refused and counted, nothing refused reaches Postgres, and the session stays usable.
#[tokio::test(flavor = "multi_thread")]
async fn publish_flood_is_rate_limited() -> anyhow::Result<()> {
    let mut args = auth_args();
    // A burst of 10 and a rate so low that no token comes back while the test runs (one per 100 s),
    // so the count is exact however slow the machine.
    args.extend(["--publish-rate", "0.01", "--publish-burst", "10"]);
    let (server, sql) = spawn_app(&args).await?;
    let (_listener, mut seen) = listen(server.database_url(), "pgwebsocket").await?;
    let t = token(json!({"tenant": "a", "exp": now() + 600, "mode": "rw"}));
    let proto = format!("bearer.{t}");
    let mut c2 = Client::connect_with(&server.ws_url(""), &["pgws.v1", &proto], &[]).await?;
    c2.recv_json().await?;
    let mut outcomes = Vec::new();
    for i in 0..50 {
        let reply = c2
            .request(json!({"type": "publish", "data": {"i": i}, "ref": i}))
            .await?;
        match reply["type"].as_str() {
            Some("published") => outcomes.push("published"),
            Some("error") => {
                assert_eq!(
                    reply,
                    json!({"type": "error", "code": "rate_limited", "ref": i,
                           "message": "at most 0.01 publishes per second"})
                );
                outcomes.push("limited");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut want = vec!["published"; 10];
    want.extend(vec!["limited"; 40]);
    assert_eq!(outcomes, want);
    for (outcome, count) in [("rate_limited", 40.0), ("published", 10.0)] {
        assert_eq!(
            server
                .metric("pgws_client_publishes_total", &[("outcome", outcome)])
                .await?,
            count,
            "{outcome}"
        );
    }
    // Postgres saw the ten published, then the marker: none of the refused ones.
    notify(&sql, r#"a,{"marker":true}"#).await?;
    for i in 0..10 {
        let (_, payload) = tokio::time::timeout(PATIENCE, seen.recv())
            .await?
            .expect("notification");
        assert_eq!(payload, format!(r#"a,{{"i":{i}}}"#));
    }
    let (_, payload) = tokio::time::timeout(PATIENCE, seen.recv())
        .await?
        .expect("notification");
    assert_eq!(payload, r#"a,{"marker":true}"#);
    // The limited session still subscribes and receives; the limit is its own, not the tenant's.
    let ok = c2
        .request(json!({"type": "subscribe", "topics": [], "ref": "s"}))
        .await?;
    assert_eq!(ok, json!({"type": "subscribed", "topics": [], "ref": "s"}));
    let mut other = Client::connect_with(&server.ws_url(""), &["pgws.v1", &proto], &[]).await?;
    other.recv_json().await?;
    let reply = other
        .request(json!({"type": "publish", "data": {"from": "another session"}}))
        .await?;
    assert_eq!(reply["type"], "published");
    Ok(())
}

/// A session whose token expires is closed with 4001 (the leeway is 0 here, and `exp` may be
/// fractional, so it expires two seconds after it was signed).
#[tokio::test(flavor = "multi_thread")]
async fn session_closes_when_its_token_expires() -> anyhow::Result<()> {
    let mut args = auth_args();
    args.extend(["--jwt-leeway-secs", "0"]);
    let (server, sql) = spawn_app(&args).await?;
    let signed_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let t = token(json!({"tenant": "a", "exp": signed_at.as_secs_f64() + 2.0}));
    let mut c = Client::connect(&server.ws_url(&format!("?token={t}"))).await?;
    // Served while the token is valid…
    notify(&sql, r#"a,{"before":"expiry"}"#).await?;
    assert_eq!(c.recv_json().await?, json!({"before": "expiry"}));
    // …and closed when it expires.
    assert_eq!(c.recv_close().await?, Some(4001));
    assert_eq!(
        server
            .metric("pgws_sessions_closed_total", &[("reason", "token_expired")])
            .await?,
        1.0
    );
    Ok(())
}

/// RS256 and ES256 tokens verified with a public key file (`--jwt-public-key`); an HS256 token is
/// then refused, even one "signed" with the public key's text.
#[tokio::test(flavor = "multi_thread")]
async fn public_key_tokens() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("pgws-test-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let status = std::process::Command::new("openssl").args(args).status()?;
        anyhow::ensure!(status.success(), "openssl {args:?} failed");
        Ok(())
    };
    let kinds: [(&str, Algorithm, &[&str]); 2] = [
        (
            "es256",
            Algorithm::ES256,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
        (
            "rs256",
            Algorithm::RS256,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
    ];
    for (name, algorithm, keygen) in kinds {
        let private = dir.join(format!("{name}.pem")).display().to_string();
        let public = dir.join(format!("{name}.pub.pem")).display().to_string();
        let mut genpkey = vec!["genpkey"];
        genpkey.extend_from_slice(keygen);
        genpkey.extend(["-out", &private]);
        run(&genpkey)?;
        run(&["pkey", "-in", &private, "-pubout", "-out", &public])?;

        let (server, sql) = spawn_app(&["--jwt-public-key", &public, "--frame", "raw"]).await?;
        let pem = std::fs::read(&private)?;
        let key = match algorithm {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem)?,
            _ => EncodingKey::from_rsa_pem(&pem)?,
        };
        let signed = encode(
            &Header::new(algorithm),
            &json!({"tenant": "a", "exp": now() + 600}),
            &key,
        )?;
        let mut c = Client::connect(&server.ws_url(&format!("?token={signed}"))).await?;
        notify(&sql, &format!(r#"a,{{"signed":"{name}"}}"#)).await?;
        assert_eq!(c.recv_json().await?, json!({ "signed": name }));
        let hs = encode(
            &Header::new(Algorithm::HS256),
            &json!({"tenant": "a", "exp": now() + 600}),
            &EncodingKey::from_secret(&std::fs::read(&public)?),
        )?;
        let err = Client::connect(&server.ws_url(&format!("?token={hs}")))
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("HTTP 401"), "{name}: {err}");
        server
            .wait_log(&["bad_algorithm"], Duration::from_secs(2))
            .await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
