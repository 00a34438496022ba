//! Durable streams (`--streams`): messages stored with `pgws_publish` in the producer's own
//! transaction, delivered with their position, recovered after a reconnect, and the same on every
//! host — against a real Postgres, the real binary and real WebSocket clients.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::driver::Driver;
use crate::harness::guests::{guest_dir, rust_guest};
use crate::harness::server::pgws_command;
use crate::harness::{connect, Client, PgCluster, Server, PATIENCE};

const DEV: &[&str] = &[
    "--insecure-tenant-param",
    "--streams",
    "--stream-poll-ms",
    "200",
];

/// `pgws schema install` on `url`, as an operator runs it (twice: it is idempotent).
fn install_schema(url: &str) {
    for _ in 0..2 {
        let out = pgws_command()
            .args(["--database-url", url, "schema", "install"])
            .output()
            .expect("pgws runs");
        assert!(
            out.status.success(),
            "schema install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A fresh database with the schema, and a server on it with `extra` flags.
async fn durable_app(extra: &[&str]) -> anyhow::Result<(Server, String)> {
    let url = PgCluster::shared().fresh_database().await?;
    install_schema(&url);
    let mut args = DEV.to_vec();
    args.extend_from_slice(extra);
    Ok((Server::start(&url, &args).await?, url))
}

/// A `pgws.v1` client of `tenant`, past its welcome.
async fn v1(server: &Server, tenant: &str) -> anyhow::Result<Client> {
    let mut c = Client::connect_with(
        &server.ws_url(&format!("?tenant={tenant}")),
        &["pgws.v1"],
        &[],
    )
    .await?;
    assert_eq!(c.recv_json().await?["type"], "welcome");
    Ok(c)
}

/// Subscribes to every topic (`*` is not a topic: the tests publish tenant-wide or to `t`), from
/// `since` when given; returns the answer.
async fn subscribe(client: &mut Client, since: Option<Value>) -> anyhow::Result<Value> {
    let mut frame = json!({"type": "subscribe", "topics": ["t"]});
    if let Some(since) = since {
        frame["since"] = since;
    }
    let answer = client.request(frame).await?;
    assert_eq!(answer["type"], "subscribed", "{answer}");
    Ok(answer)
}

/// Stores one message in its own transaction; returns its offset.
async fn publish(
    sql: &tokio_postgres::Client,
    tenant: &str,
    topic: Option<&str>,
    body: &str,
) -> anyhow::Result<i64> {
    Ok(sql
        .query_one(
            "SELECT pgws_publish($1::text, $2::text, $3::text::jsonb)",
            &[&tenant, &topic, &body],
        )
        .await?
        .get(0))
}

/// The next frame that is a message, past `gap` notices (which speak of plain NOTIFYs: a
/// restart test gets one).
async fn message(client: &mut Client) -> anyhow::Result<Value> {
    loop {
        let frame = client.recv_json().await?;
        match frame.get("type").and_then(Value::as_str) {
            None => return Ok(frame),
            Some("gap") => continue,
            Some(other) => anyhow::bail!("unexpected {other}: {frame}"),
        }
    }
}

/// Messages until `count` arrived; fails on a control frame other than `recovered`.
async fn messages(client: &mut Client, count: usize) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        out.push(message(client).await?);
    }
    Ok(out)
}

fn offsets(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["offset"].as_u64().expect("an offset"))
        .collect()
}

/// Must show 1: a publish in a transaction that rolls back is never delivered; one that commits is.
#[tokio::test(flavor = "multi_thread")]
async fn only_committed_messages_are_delivered() -> anyhow::Result<()> {
    let (server, url) = durable_app(&[]).await?;
    let mut sql = connect(&url).await?;
    let mut client = v1(&server, "acme").await?;
    subscribe(&mut client, None).await?;

    let tx = sql.transaction().await?;
    tx.query_one(
        "SELECT pgws_publish('acme', NULL, '{\"n\": \"rolled back\"}')",
        &[],
    )
    .await?;
    tx.rollback().await?;
    let tx = sql.transaction().await?;
    tx.query_one("SELECT pgws_publish('acme', 't', '{\"n\": 2}')", &[])
        .await?;
    tx.commit().await?;

    let m = message(&mut client).await?;
    assert_eq!(m["data"], json!({"n": 2}));
    assert_eq!(m["topic"], "t");
    assert_eq!(m["offset"], 1, "the rolled-back publish took no offset");
    assert!(m["epoch"].as_str().is_some_and(|e| !e.is_empty()), "{m}");
    assert!(m.get("seq").is_none(), "a position instead of seq: {m}");

    // Bad input is refused in the producer's transaction, with the reason.
    let err = publish(&sql, "bad tenant", None, "{}")
        .await
        .expect_err("refused");
    assert!(
        format!("{err:#}").contains("invalid tenant name"),
        "{err:#}"
    );
    Ok(())
}

/// Must show 2: eight producers mixing long and short transactions on one tenant; every client gets
/// every committed message exactly once, in one order, at consecutive positions.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_producers_give_one_gap_free_order() -> anyhow::Result<()> {
    const PRODUCERS: usize = 8;
    const EACH: usize = 20;
    let (server, url) = durable_app(&[]).await?;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = v1(&server, "acme").await?;
        subscribe(&mut c, None).await?;
        clients.push(c);
    }
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let url = url.clone();
        producers.push(tokio::spawn(async move {
            let mut sql = connect(&url).await?;
            for k in 0..EACH {
                let tx = sql.transaction().await?;
                tx.query_one(
                    "SELECT pgws_publish('acme', NULL, $1::text::jsonb)",
                    &[&json!({"p": p, "k": k}).to_string()],
                )
                .await?;
                // Every third transaction stays open after publishing: later publishes of the
                // tenant wait for it, and must not be delivered before it.
                if (p + k) % 3 == 0 {
                    tx.execute("SELECT pg_sleep(0.03)", &[]).await?;
                }
                tx.commit().await?;
            }
            anyhow::Ok(())
        }));
    }
    for p in producers {
        p.await??;
    }
    let total = PRODUCERS * EACH;
    let mut orders = Vec::new();
    for c in clients.iter_mut() {
        let got = messages(c, total).await?;
        assert_eq!(
            offsets(&got),
            (1..=total as u64).collect::<Vec<_>>(),
            "consecutive positions, no gap, no duplicate"
        );
        let order: Vec<Value> = got.iter().map(|m| m["data"].clone()).collect();
        let distinct: HashSet<String> = order.iter().map(Value::to_string).collect();
        assert_eq!(distinct.len(), total, "each message exactly once");
        orders.push(order);
    }
    assert!(orders.windows(2).all(|w| w[0] == w[1]), "one order for all");
    Ok(())
}

/// Must show 3: a client away for 10 s while 1,000 messages are stored reconnects with its position
/// and gets all of them, then live ones, while a producer keeps publishing through its return.
#[tokio::test(flavor = "multi_thread")]
async fn a_reconnecting_client_recovers_what_it_missed() -> anyhow::Result<()> {
    let (server, url) = durable_app(&[]).await?;
    let sql = connect(&url).await?;
    let mut first = v1(&server, "acme").await?;
    subscribe(&mut first, None).await?;
    for n in 0..5 {
        publish(&sql, "acme", Some("t"), &json!({ "n": n }).to_string()).await?;
    }
    let seen = messages(&mut first, 5).await?;
    let last = seen.last().expect("five");
    let since = json!({"epoch": last["epoch"], "offset": last["offset"]});
    drop(first);

    // 1,000 messages over 10 s in transactions of 10, and on for a while after the client is back.
    let producer = {
        let url = url.clone();
        tokio::spawn(async move {
            let mut sql = connect(&url).await?;
            for batch in 0..110u64 {
                let tx = sql.transaction().await?;
                for i in 0..10 {
                    tx.query_one(
                        "SELECT pgws_publish('acme', 't', $1::text::jsonb)",
                        &[&json!({ "n": 5 + batch * 10 + i }).to_string()],
                    )
                    .await?;
                }
                tx.commit().await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(())
        })
    };
    // Away for 10 s, and until 1,000 messages were stored meanwhile.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let deadline = Instant::now() + PATIENCE;
    while sql
        .query_one(
            "SELECT top_offset FROM pgws_stream WHERE tenant = 'acme'",
            &[],
        )
        .await?
        .get::<_, i64>(0)
        < 1005
    {
        anyhow::ensure!(Instant::now() < deadline, "the producer is too slow");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut back = v1(&server, "acme").await?;
    subscribe(&mut back, Some(since)).await?;
    let mut got = Vec::new();
    let report = loop {
        let frame = back.recv_json().await?;
        match frame.get("type").and_then(Value::as_str) {
            None => got.push(frame),
            Some("recovered") => break frame,
            Some(other) => anyhow::bail!("unexpected {other}: {frame}"),
        }
    };
    assert_eq!(report["recovered"], true, "{report}");
    assert_eq!(report["replayed"].as_u64(), Some(got.len() as u64));
    assert!(got.len() >= 1000, "missed {} messages", got.len());
    assert_eq!(report["offset"].as_u64(), Some(5 + got.len() as u64));
    producer.await??;
    // Live ones follow the replay with no gap and no duplicate, up to the last stored.
    let total = 5 + 1100;
    got.extend(messages(&mut back, total - 5 - got.len()).await?);
    assert_eq!(
        offsets(&got),
        (6..=total as u64).collect::<Vec<_>>(),
        "replayed then live, consecutive"
    );
    let bodies: Vec<u64> = got
        .iter()
        .map(|m| m["data"]["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(bodies, (5..total as u64).collect::<Vec<_>>());
    let recovered = server
        .metric("pgws_stream_recoveries_total", &[("outcome", "recovered")])
        .await?;
    assert_eq!(recovered, 1.0);
    Ok(())
}

/// Must show 3, second half: a position older than what retention keeps gets `recovered: false`,
/// and the client goes on with live messages.
#[tokio::test(flavor = "multi_thread")]
async fn a_position_past_retention_is_not_recovered() -> anyhow::Result<()> {
    let (server, url) = durable_app(&["--stream-retention-secs", "1"]).await?;
    let sql = connect(&url).await?;
    let mut first = v1(&server, "acme").await?;
    subscribe(&mut first, None).await?;
    for n in 0..5 {
        publish(&sql, "acme", None, &json!({ "n": n }).to_string()).await?;
    }
    let seen = messages(&mut first, 2).await?;
    let since = json!({"epoch": seen[1]["epoch"], "offset": 2});
    drop(first);
    // Retention (1 s) prunes them.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left: i64 = sql
            .query_one("SELECT count(*) FROM pgws_message", &[])
            .await?
            .get(0);
        if left == 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "retention never pruned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    publish(&sql, "acme", None, r#"{"n": "after"}"#).await?;
    let mut back = v1(&server, "acme").await?;
    subscribe(&mut back, Some(since)).await?;
    let report = back.recv_json().await?;
    assert_eq!(report["type"], "recovered");
    assert_eq!(report["recovered"], false, "{report}");
    assert!(
        report["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no longer stored")),
        "{report}"
    );
    publish(&sql, "acme", None, r#"{"n": "live"}"#).await?;
    let live = message(&mut back).await?;
    assert_eq!(live["data"], json!({"n": "live"}));
    assert_eq!(live["offset"], 7);
    assert!(server.metric("pgws_stream_pruned_total", &[]).await? >= 5.0);
    Ok(())
}

/// Must show 4: a 200 KB message, far past NOTIFY's 8,000 bytes, arrives whole through a guest.
#[tokio::test(flavor = "multi_thread")]
async fn a_big_message_goes_through_the_guest() -> anyhow::Result<()> {
    let dir = guest_dir(&[("acme", &rust_guest("reshaper"))]);
    let dir = dir.display().to_string();
    let (server, url) = durable_app(&["--guests", &dir]).await?;
    let sql = connect(&url).await?;
    let mut client = v1(&server, "acme").await?;
    subscribe(&mut client, None).await?;
    let blob: String = (0..200_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    publish(
        &sql,
        "acme",
        None,
        &json!({"usr": "ann", "blob": blob, "_internal": 1}).to_string(),
    )
    .await?;
    let m = message(&mut client).await?;
    assert_eq!(
        m["data"],
        json!({"user": "ann", "blob": blob, "tenant": "acme"}),
        "reshaped by the guest, blob intact"
    );
    Ok(())
}

/// Must show 5: Postgres restarted during a steady flow; once it is back, the client has every
/// committed message, in order.
#[tokio::test(flavor = "multi_thread")]
async fn every_committed_message_survives_a_postgres_restart() -> anyhow::Result<()> {
    let pg = PgCluster::start()?;
    let url = pg.url("postgres");
    install_schema(&url);
    let mut args = DEV.to_vec();
    args.extend(["--reconnect-min-ms", "50", "--reconnect-max-ms", "500"]);
    let server = Server::start(&url, &args).await?;
    let mut client = v1(&server, "acme").await?;
    subscribe(&mut client, None).await?;

    // Publishes every 20 ms, reconnecting through the outage; failed publishes are just retried.
    let stop = tokio_util::sync::CancellationToken::new();
    let producer = {
        let (url, stop) = (url.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                if let Ok(sql) = connect(&url).await {
                    while !stop.is_cancelled() {
                        let body = json!({ "n": n }).to_string();
                        if publish(&sql, "acme", None, &body).await.is_err() {
                            break;
                        }
                        n += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.stop_server()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.start_server()?;
    server.wait_ready(PATIENCE).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    producer.await?;

    let sql = connect(&url).await?;
    let stored: i64 = sql
        .query_one(
            "SELECT count(*) FROM pgws_message WHERE tenant = 'acme'",
            &[],
        )
        .await?
        .get(0);
    assert!(stored > 20, "the flow ran: {stored}");
    let got = messages(&mut client, stored as usize).await?;
    assert_eq!(
        offsets(&got),
        (1..=stored as u64).collect::<Vec<_>>(),
        "every committed message, in order, once"
    );
    Ok(())
}

/// Must show 6: two hosts on one Postgres, clients split between them: each client gets each of
/// its tenant's messages exactly once, at the same positions on both hosts.
#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_deliver_the_same_stream() -> anyhow::Result<()> {
    let (a, url) = durable_app(&[]).await?;
    let b = Server::start(&url, DEV).await?;
    let mut clients = Vec::new();
    for server in [&a, &b, &a, &b] {
        let mut c = v1(server, "acme").await?;
        subscribe(&mut c, None).await?;
        clients.push(c);
    }
    let mut other = v1(&b, "other").await?;
    subscribe(&mut other, None).await?;
    let sql = connect(&url).await?;
    for n in 0..100 {
        publish(&sql, "acme", None, &json!({ "n": n }).to_string()).await?;
    }
    publish(&sql, "other", None, r#"{"other": true}"#).await?;
    let mut seen = Vec::new();
    for c in clients.iter_mut() {
        let got = messages(c, 100).await?;
        assert_eq!(offsets(&got), (1..=100).collect::<Vec<_>>());
        seen.push(got);
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "same messages, same positions"
    );
    // Tenants stay apart: `other` gets its one message and nothing of acme's.
    let m = message(&mut other).await?;
    assert_eq!(m["data"], json!({"other": true}));
    assert_eq!(m["offset"], 1);
    Ok(())
}

/// The JavaScript client (`client/pgws-client.js`, under Node) keeps the last position and, when its
/// connection drops, subscribes from it on reconnect: the messages stored meanwhile arrive, then the
/// `recovered` report with their number, then live ones.
#[tokio::test(flavor = "multi_thread")]
async fn the_javascript_client_recovers_by_itself() -> anyhow::Result<()> {
    let (server, url) = durable_app(&[]).await?;
    let sql = connect(&url).await?;
    // A long first back-off: the messages below are stored while the client is away.
    let options =
        json!({"tenant": "acme", "topics": ["t"], "minBackoffMs": 1500, "maxBackoffMs": 1500});
    let mut driver = Driver::start(&server.ws_url(""), &options).await?;
    // Up to its first message; then away while 50 more are stored.
    while driver.line().await? != json!({"ready": true}) {}
    publish(&sql, "acme", Some("t"), r#"{"n": 0}"#).await?;
    let first = driver.line().await?;
    assert_eq!(first["message"]["offset"], 1, "{first}");
    driver.send(&json!({"drop": true})).await?;
    loop {
        let line = driver.line().await?;
        if line.get("retry_ms").is_some() {
            break;
        }
    }
    for n in 1..=50 {
        publish(&sql, "acme", Some("t"), &json!({ "n": n }).to_string()).await?;
    }
    let mut replayed = Vec::new();
    let report = loop {
        let line = driver.line().await?;
        if let Some(m) = line.get("message") {
            replayed.push(m["offset"].as_u64().expect("offset"));
        } else if let Some(r) = line.get("recovered") {
            break r.clone();
        }
    };
    assert_eq!(replayed, (2..=51).collect::<Vec<_>>());
    assert_eq!(report["recovered"], true, "{report}");
    assert_eq!(report["replayed"], 50);
    publish(&sql, "acme", Some("t"), r#"{"n": "live"}"#).await?;
    let live = loop {
        let line = driver.line().await?;
        if let Some(m) = line.get("message") {
            break m.clone();
        }
    };
    assert_eq!(live["offset"], 52);
    assert_eq!(live["data"], json!({"n": "live"}));
    driver.close().await?;
    Ok(())
}

/// A guest slower than the stream: its tenant's queue (`--guest-queue 4`) fills, yet no stored
/// message is dropped — the reader waits for room and the rest waits in the database. A second
/// `since` on one session is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_guest_loses_no_stored_message() -> anyhow::Result<()> {
    let dir = guest_dir(&[("acme", &rust_guest("misbehave"))]);
    let dir = dir.display().to_string();
    let (server, url) = durable_app(&["--guests", &dir, "--guest-queue", "4"]).await?;
    let mut sql = connect(&url).await?;
    let mut client = v1(&server, "acme").await?;
    subscribe(&mut client, None).await?;
    let tx = sql.transaction().await?;
    tx.execute(
        "SELECT pgws_publish('acme', NULL, json_build_object('do', 'spin', 'ms', 2, 'n', g)::jsonb) \
         FROM generate_series(1, 300) g",
        &[],
    )
    .await?;
    tx.commit().await?;
    let got = match messages(&mut client, 300).await {
        Ok(got) => got,
        Err(e) => panic!("{e:#}\n{}", server.log_text()),
    };
    assert_eq!(offsets(&got), (1..=300).collect::<Vec<_>>());
    assert_eq!(
        server
            .metric_or_zero("pgws_tenant_queue_dropped_total", &[("tenant", "acme")])
            .await?,
        0.0
    );

    let mut twice = v1(&server, "acme").await?;
    let since = json!({"epoch": got[0]["epoch"], "offset": 300});
    subscribe(&mut twice, Some(since.clone())).await?;
    let again = twice
        .request(json!({"type": "subscribe", "topics": ["t"], "since": since}))
        .await?;
    assert_eq!(again["type"], "error", "{again}");
    assert_eq!(again["code"], "bad_frame");
    Ok(())
}

/// `--streams` on a database without the schema refuses to start, saying what to run.
#[tokio::test(flavor = "multi_thread")]
async fn streams_without_the_schema_refuse_to_start() -> anyhow::Result<()> {
    let url = PgCluster::shared().fresh_database().await?;
    let mut command = tokio::process::Command::from(pgws_command());
    let out = tokio::time::timeout(
        PATIENCE,
        command
            .args([
                "--database-url",
                &url,
                "--streams",
                "--listen",
                "127.0.0.1:0",
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pgws schema install"), "{stderr}");
    Ok(())
}

/// A quieted doorbell (`SET pgws.doorbell_ms`): 40 single-message commits ring it a few times, not
/// 40, and the host (`--stream-doorbell-ms`) still delivers every message without waiting for its
/// safety poll (set to a minute here).
#[tokio::test(flavor = "multi_thread")]
async fn a_quieted_doorbell_rings_less_and_loses_nothing() -> anyhow::Result<()> {
    let url = PgCluster::shared().fresh_database().await?;
    install_schema(&url);
    let server = Server::start(
        &url,
        &[
            "--insecure-tenant-param",
            "--streams",
            "--stream-doorbell-ms",
            "20",
            "--stream-poll-ms",
            "60000",
        ],
    )
    .await?;
    let (_listening, mut rings) = crate::harness::listen(&url, "pgws_stream").await?;
    let sql = connect(&url).await?;
    sql.batch_execute("SET pgws.doorbell_ms = 200").await?;
    let mut client = v1(&server, "acme").await?;
    subscribe(&mut client, None).await?;
    let started = Instant::now();
    for n in 0..40 {
        publish(&sql, "acme", None, &json!({ "n": n }).to_string()).await?;
    }
    let publishing = started.elapsed();
    // Each within PATIENCE (10 s) of the one before: the trailing reads, not the minute-long poll.
    let got = messages(&mut client, 40).await?;
    assert_eq!(offsets(&got), (1..=40).collect::<Vec<_>>());
    // The first ring surely came (it may reach this listener after the messages reached the
    // client); later ones that are still on their way only make the count lower.
    tokio::time::timeout(PATIENCE, rings.recv())
        .await?
        .expect("a doorbell");
    let mut rung = 1;
    while rings.try_recv().is_ok() {
        rung += 1;
    }
    let most = publishing.as_millis() / 200 + 1;
    assert!(
        rung <= most,
        "{rung} doorbells for 40 commits in {publishing:?}"
    );
    Ok(())
}

/// A recovery bigger than one read (~8 MiB): a hundred 190 KB messages that do not compress come
/// back in several reads, all of them, and the recovery is reported whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_recovery_larger_than_one_read() -> anyhow::Result<()> {
    let (server, url) = durable_app(&[]).await?;
    let sql = connect(&url).await?;
    let mut first = v1(&server, "acme").await?;
    subscribe(&mut first, None).await?;
    publish(&sql, "acme", None, r#"{"n": 0}"#).await?;
    let seen = message(&mut first).await?;
    let since = json!({"epoch": seen["epoch"], "offset": 1});
    drop(first);
    sql.execute(
        "SELECT pgws_publish('acme', NULL, json_build_object('n', g, 'noise', \
             (SELECT string_agg(md5(random()::text || g || i), '') FROM generate_series(1, 6000) i) \
         )::jsonb) FROM generate_series(1, 100) g",
        &[],
    )
    .await?;
    let big: i64 = sql
        .query_one("SELECT sum(pg_column_size(body)) FROM pgws_message", &[])
        .await?
        .get(0);
    assert!(big > 8 << 20, "stored {big} bytes: more than one read");
    let mut back = v1(&server, "acme").await?;
    subscribe(&mut back, Some(since)).await?;
    let got = messages(&mut back, 100).await?;
    assert_eq!(offsets(&got), (2..=101).collect::<Vec<_>>());
    let report = back.recv_json().await?;
    assert_eq!(report["recovered"], true, "{report}");
    assert_eq!(report["replayed"], 100);
    Ok(())
}
