//! One tenant never hurts another: a slow or looping guest shares the guest threads, a tenant's full
//! queue drops only its own messages, hot swaps from the directory and the admin API compose (the
//! last change wins), a refused guest fails closed, and a guest's own panic message reaches the log.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::guests::{guest_dir, rust_guest};
use crate::harness::{notify, spawn_with_guests, Client, PATIENCE};

const ADMIN: &str = "admin-token-for-isolation-tests";

/// One guest thread, and a tenant whose guest loops for a whole second on every message: a tenant
/// with a fast guest and a tenant with none still get every message, in order, while the looping
/// tenant's backlog stays its own — its queue overflows (counted, a gap notice to its pgws.v1
/// client) and it is throttled by its time budget. With tenants pinned to a thread (the old
/// scheduler) the fast tenant waited behind minutes of loops.
#[tokio::test(flavor = "multi_thread")]
async fn a_looping_guest_does_not_hold_up_other_tenants() -> anyhow::Result<()> {
    let dir = guest_dir(&[
        ("slow", &rust_guest("misbehave")),
        ("fast", &rust_guest("passthrough")),
    ]);
    let (server, sql) = spawn_with_guests(
        &dir,
        &[
            "--guest-threads",
            "1",
            "--guest-timeout-ms",
            "1000",
            "--guest-max-failures",
            "1000",
            "--guest-queue",
            "64",
            "--guest-cpu-ms-per-sec",
            "300",
        ],
    )
    .await?;
    let mut slow_v1 =
        Client::connect_with(&server.ws_url("?tenant=slow"), &["pgws.v1"], &[]).await?;
    assert_eq!(slow_v1.recv_json().await?["type"], "welcome");
    let mut fast = Client::connect(&server.ws_url("?tenant=fast")).await?;
    let mut bare = Client::connect(&server.ws_url("?tenant=bare")).await?;

    // More loops than the slow tenant's queue holds, in one transaction.
    // (Distinct payloads: Postgres folds identical NOTIFYs of one transaction into one.)
    sql.batch_execute(
        "SELECT pg_notify('pgwebsocket', 'slow,{\"do\":\"loop\",\"n\":' || i || '}') \
         FROM generate_series(1, 80) AS i",
    )
    .await?;
    for n in 0..30 {
        notify(&sql, &format!(r#"fast,{{"n":{n}}}"#)).await?;
        notify(&sql, &format!(r#"bare,{{"n":{n}}}"#)).await?;
    }
    // Eighty loops of a second each are queued ahead; the other tenants are served meanwhile.
    for n in 0..30 {
        assert_eq!(fast.recv_json().await?, json!({ "n": n }));
        assert_eq!(bare.recv_json().await?, json!({ "n": n }));
    }
    let gap = slow_v1.recv_json().await?;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert!(gap["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("fell behind"));
    assert!(
        server
            .metric("pgws_tenant_queue_dropped_total", &[("tenant", "slow")])
            .await?
            >= 1.0
    );
    server
        .wait_log(&["guest call failed", "tenant=slow", "timeout"], PATIENCE)
        .await?;
    // The second loop starts only after the tenant's budget second is over.
    server
        .wait_metric(
            "pgws_guest_throttled_total",
            &[("tenant", "slow")],
            1.0,
            PATIENCE,
        )
        .await?;
    Ok(())
}

/// A guest that waits instead of running (a WASI sleep uses no epoch ticks) is still cut off, by
/// the call's wall-clock bound, and the tenant's next message is served.
#[tokio::test(flavor = "multi_thread")]
async fn a_sleeping_guest_is_cut_off() -> anyhow::Result<()> {
    let dir = guest_dir(&[("nap", &rust_guest("misbehave"))]);
    let (server, sql) = spawn_with_guests(&dir, &["--guest-timeout-ms", "100"]).await?;
    let mut c = Client::connect(&server.ws_url("?tenant=nap")).await?;
    notify(&sql, r#"nap,{"do":"sleep","ms":600000}"#).await?;
    notify(&sql, r#"nap,{"n":1}"#).await?;
    assert_eq!(c.recv_json().await?, json!({"n": 1}));
    server
        .wait_log(&["guest call failed", "tenant=nap", "timeout"], PATIENCE)
        .await?;
    Ok(())
}

/// A Rust guest that panics: the failure's log line carries the guest's own panic message.
#[tokio::test(flavor = "multi_thread")]
async fn a_guest_panic_message_reaches_the_log() -> anyhow::Result<()> {
    let dir = guest_dir(&[("p", &rust_guest("misbehave"))]);
    let (server, sql) = spawn_with_guests(&dir, &[]).await?;
    notify(&sql, r#"p,{"do":"trap"}"#).await?;
    let line = server
        .wait_log(&["guest call failed", "tenant=p"], PATIENCE)
        .await?;
    assert!(line.contains("trap"), "{line}");
    assert!(
        line.contains("asked to trap"),
        "the guest's panic message: {line}"
    );
    Ok(())
}

/// A guest file that is refused at start-up, with no earlier version and no default: the tenant
/// gets nothing (the policy it asked for is not running) — its connections are refused and its
/// messages dropped — the state shows in `/admin/guests` and `/metrics`, and other tenants are
/// served as usual. A tenant whose own file is refused later, while its clients are connected
/// through `_default`, stops receiving too.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_guest_fails_closed() -> anyhow::Result<()> {
    let dir = guest_dir(&[]);
    std::fs::write(dir.join("locked.wasm"), b"\0asm not really")?;
    let (server, sql) = spawn_with_guests(&dir, &["--admin-token", ADMIN]).await?;
    let refused = Client::connect(&server.ws_url("?tenant=locked")).await;
    let err = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("HTTP 403"), "{err}");
    let mut open = Client::connect(&server.ws_url("?tenant=open")).await?;
    notify(&sql, r#"locked,{"password":"hunter2"}"#).await?;
    notify(&sql, r#"open,{"n":1}"#).await?;
    assert_eq!(open.recv_json().await?, json!({"n": 1}));
    server
        .wait_log(
            &["message rejected", "tenant=locked", "not_loaded"],
            PATIENCE,
        )
        .await?;
    assert_eq!(
        server
            .metric(
                "pgws_guest_failures_total",
                &[("tenant", "locked"), ("kind", "not_loaded")]
            )
            .await?,
        1.0
    );
    assert_eq!(server.metric("pgws_guests_not_loaded", &[]).await?, 1.0);
    let (status, list) = server.admin(ADMIN, "GET", "/admin/guests", b"").await?;
    assert_eq!(status, 200);
    let row = &list["guests"][0];
    assert_eq!(row["guest"], "locked");
    assert_eq!(row["state"], "not_loaded");
    assert!(
        row["refused"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not a WebAssembly component"),
        "{row}"
    );

    // Later: `open` is served by `_default`, then its own file arrives and is refused.
    std::fs::copy(rust_guest("passthrough"), dir.join("_default.wasm"))?;
    server
        .wait_log(&["guest loaded", "guest=_default"], PATIENCE)
        .await?;
    notify(&sql, r#"open,{"n":2}"#).await?;
    assert_eq!(open.recv_json().await?, json!({"n": 2}));
    std::fs::write(dir.join(".open.tmp"), b"\0asm broken too")?;
    std::fs::rename(dir.join(".open.tmp"), dir.join("open.wasm"))?;
    server
        .wait_log(&["guest refused", "guest=open"], PATIENCE)
        .await?;
    notify(&sql, r#"open,{"password":"hunter2"}"#).await?;
    let mut other = Client::connect(&server.ws_url("?tenant=other")).await?;
    notify(&sql, r#"other,{"n":3}"#).await?;
    assert_eq!(other.recv_json().await?, json!({"n": 3}));
    // A good upload ends the state; the next message is the first `open` sees since the refusal.
    let good = std::fs::read(rust_guest("passthrough"))?;
    assert_eq!(
        server
            .admin(ADMIN, "PUT", "/admin/guests/open", &good)
            .await?
            .0,
        200
    );
    notify(&sql, r#"open,{"n":4}"#).await?;
    assert_eq!(open.recv_json().await?, json!({"n": 4}));
    assert_eq!(
        server.metric("pgws_guests_not_loaded", &[]).await?,
        1.0,
        "locked still"
    );
    Ok(())
}

/// The directory and the admin API compose: the last change wins, whichever source made it. A file
/// renamed into place serves; a later admin upload, rollback or delete stays (reading the file does
/// not reload it); a bad file renamed in is refused once and costs nothing afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn directory_and_admin_api_compose() -> anyhow::Result<()> {
    let dir = guest_dir(&[]);
    let (server, sql) = spawn_with_guests(&dir, &["--admin-token", ADMIN]).await?;
    let mut c = Client::connect(&server.ws_url("?tenant=acme")).await?;
    let v1 = std::fs::read(rust_guest("passthrough"))?;
    let v2 = std::fs::read(rust_guest("reshaper"))?;

    // v2 renamed into place.
    std::fs::write(dir.join(".acme.tmp"), &v2)?;
    std::fs::rename(dir.join(".acme.tmp"), dir.join("acme.wasm"))?;
    server
        .wait_log(&["guest loaded", "guest=acme"], PATIENCE)
        .await?;
    assert_eq!(probe(&mut c, &sql).await?, "v2");

    // PUT v1: it serves, and stays.
    assert_eq!(
        server
            .admin(ADMIN, "PUT", "/admin/guests/acme", &v1)
            .await?
            .0,
        200
    );
    assert_eq!(probe(&mut c, &sql).await?, "v1");
    let _ = std::fs::read(dir.join("acme.wasm"))?; // opening the file is no change
    watcher_caught_up(&server, &dir, 1).await?;
    assert_eq!(probe(&mut c, &sql).await?, "v1", "the admin upload stayed");
    // Rollback puts v2 back, and it stays.
    assert_eq!(
        server
            .admin(ADMIN, "POST", "/admin/guests/acme/rollback", b"")
            .await?
            .0,
        200
    );
    assert_eq!(probe(&mut c, &sql).await?, "v2");
    // DELETE: no guest, and it stays so.
    assert_eq!(
        server
            .admin(ADMIN, "DELETE", "/admin/guests/acme", b"")
            .await?
            .0,
        200
    );
    watcher_caught_up(&server, &dir, 2).await?;
    assert_eq!(
        probe(&mut c, &sql).await?,
        "v1",
        "no guest: forwarded as sent"
    );
    assert_eq!(
        server.log_text().matches("guest loaded guest=acme").count(),
        1,
        "the file was loaded once"
    );
    // A file change after the admin calls wins in turn.
    std::fs::write(dir.join(".acme.tmp"), &v1)?;
    std::fs::rename(dir.join(".acme.tmp"), dir.join("acme.wasm"))?;
    let deadline = std::time::Instant::now() + PATIENCE;
    while server.log_text().matches("guest loaded guest=acme").count() < 2 {
        anyhow::ensure!(std::time::Instant::now() < deadline, "v1 file not loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(probe(&mut c, &sql).await?, "v1");

    // A bad file renamed in: refused once, the working version keeps serving, and no more work.
    std::fs::write(dir.join(".bad.tmp"), vec![7u8; 4096])?;
    std::fs::rename(dir.join(".bad.tmp"), dir.join("acme.wasm"))?;
    server
        .wait_log(&["guest refused", "guest=acme"], PATIENCE)
        .await?;
    let _ = std::fs::read(dir.join("acme.wasm"))?;
    watcher_caught_up(&server, &dir, 3).await?;
    assert_eq!(
        server.log_text().matches("guest refused").count(),
        1,
        "refused once:\n{}",
        server.log_text()
    );
    assert_eq!(
        server
            .metric("pgws_guest_loads_total", &[("outcome", "refused")])
            .await?,
        1.0
    );
    Ok(())
}

/// Waits until the directory watcher has handled every event before this call: it handles events in
/// order, so once a guest file renamed in now (`zmark<n>.wasm`, a tenant of its own) is loaded, any
/// earlier event on another file was handled too.
async fn watcher_caught_up(
    server: &crate::harness::Server,
    dir: &std::path::Path,
    n: u32,
) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".zmark{n}.tmp"));
    std::fs::copy(rust_guest("passthrough"), &tmp)?;
    std::fs::rename(&tmp, dir.join(format!("zmark{n}.wasm")))?;
    server
        .wait_log(&["guest loaded", &format!("guest=zmark{n} ")], PATIENCE)
        .await?;
    Ok(())
}

/// Which version handled a fresh message: the reshaper (v2) adds `"tenant"`, the passthrough (v1) and
/// no guest at all forward it as sent.
async fn probe(c: &mut Client, sql: &tokio_postgres::Client) -> anyhow::Result<&'static str> {
    notify(sql, r#"acme,{"probe":true}"#).await?;
    let v: Value = c.recv_json().await?;
    Ok(if v.get("tenant").is_some() {
        "v2"
    } else {
        "v1"
    })
}
