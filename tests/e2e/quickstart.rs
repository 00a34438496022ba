//! Day one: with no database URL, pgws starts a private PostgreSQL, says how to reach it, serves, and
//! stops it on exit; the next start reuses the data.

use std::time::Duration;

use crate::harness::{connect, notify, Client, Server};

/// No `--database-url`: an embedded PostgreSQL comes up, is reachable at the printed URL, the demo
/// page is served, messages flow end to end, the data survives a restart, and the database stops
/// when pgws exits.
#[tokio::test(flavor = "multi_thread")]
async fn starts_a_private_postgres_without_database_url() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("pgws-test-embedded-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port()
        .to_string();
    let dir_s = dir.display().to_string();
    let env = [
        ("PGWS_EMBEDDED_DIR", dir_s.as_str()),
        ("PGWS_EMBEDDED_PORT", port.as_str()),
    ];
    let url = format!(
        "host={}/socket port={port} user=postgres dbname=postgres",
        dir.display()
    );

    let mut server =
        Server::launch(&url, &["--insecure-tenant-param", "--frame", "raw"], &env).await?;
    server
        .wait_log(
            &["private development PostgreSQL", &url],
            Duration::from_secs(1),
        )
        .await?;
    server
        .wait_log(
            &["creating the embedded PostgreSQL data directory"],
            Duration::from_secs(1),
        )
        .await?;
    let (status, page) = server.get("/").await?;
    assert_eq!(status, 200);
    assert!(page.contains("pgws demo"), "the demo page is served");
    let (status, module) = server.get("/client/pgws-client.js").await?;
    assert_eq!(status, 200);
    assert!(module.contains("export class PgwsClient"));
    // Only the private socket serves: no TCP port, and a directory no other user may enter.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>()?)).is_err(),
        "the embedded PostgreSQL listens on no TCP port"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("socket"))?.permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "socket directory mode {mode:o}");
    }
    let sql = connect(&url).await?;
    sql.batch_execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42);")
        .await?;
    let mut c = Client::connect(&server.ws_url("?tenant=acme")).await?;
    notify(&sql, r#"acme,{"hello":"quick start"}"#).await?;
    assert_eq!(c.recv_text().await?, r#"{"hello":"quick start"}"#);
    drop(sql);
    server.terminate()?;
    assert_eq!(server.wait_exit(Duration::from_secs(15)).await?, Some(0));
    assert!(
        connect(&url).await.is_err(),
        "the embedded PostgreSQL stopped with pgws"
    );

    // A second start reuses the data directory.
    let mut server = Server::launch(&url, &["--insecure-tenant-param"], &env).await?;
    server
        .wait_log(
            &["reusing the embedded PostgreSQL data directory"],
            Duration::from_secs(1),
        )
        .await?;
    let sql = connect(&url).await?;
    let kept: i32 = sql.query_one("SELECT v FROM kept", &[]).await?.get(0);
    assert_eq!(kept, 42);
    drop(sql);
    // A second signal exits without waiting, and still stops PostgreSQL. A connected client that
    // never answers the close keeps the graceful shutdown waiting (up to a second), so the second
    // signal, sent once the first is logged, lands while the first is still being served. (Sent
    // back to back, the kernel may merge the two into one.)
    let _lingering = Client::connect(&server.ws_url("?tenant=acme")).await?;
    server.terminate()?;
    server
        .wait_log(&["shutdown requested"], Duration::from_secs(5))
        .await?;
    server.terminate()?;
    assert_eq!(server.wait_exit(Duration::from_secs(15)).await?, Some(130));
    server
        .wait_log(&["second signal: exiting now"], Duration::from_secs(1))
        .await?;
    assert!(
        connect(&url).await.is_err(),
        "the embedded PostgreSQL stopped on the second signal too"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
