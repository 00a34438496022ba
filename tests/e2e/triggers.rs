//! Row-change triggers (`sql/pgws_triggers.sql`): inserts, updates and deletes reach the right
//! tenant's clients as row JSON; oversized rows arrive as a truncation notice.

use serde_json::json;

use crate::harness::guests::repo;
use crate::harness::{spawn_app, Client};

/// Insert, update and delete rows of two tenants: each tenant's clients get exactly their rows, in
/// order; a row too big for NOTIFY arrives as `truncated` with its key.
#[tokio::test(flavor = "multi_thread")]
async fn row_changes_reach_the_right_tenant() -> anyhow::Result<()> {
    let (server, sql) = spawn_app(&["--insecure-tenant-param", "--frame", "raw"]).await?;
    sql.batch_execute(&std::fs::read_to_string(
        repo().join("sql/pgws_triggers.sql"),
    )?)
    .await?;
    sql.batch_execute(
        "CREATE TABLE orders (id serial PRIMARY KEY, tenant_id text, item text, note text);
         CREATE TRIGGER orders_pgws AFTER INSERT OR UPDATE OR DELETE ON orders
           FOR EACH ROW EXECUTE FUNCTION pgws_notify_row('tenant_id');",
    )
    .await?;
    let mut acme = Client::connect(&server.ws_url("?tenant=acme")).await?;
    let mut beta = Client::connect(&server.ws_url("?tenant=beta")).await?;

    sql.batch_execute(
        "INSERT INTO orders (tenant_id, item) VALUES ('acme', 'anvil'), ('beta', 'bolt');
         UPDATE orders SET item = 'rocket' WHERE tenant_id = 'acme';
         DELETE FROM orders WHERE tenant_id = 'acme';
         INSERT INTO orders (tenant_id, item) VALUES (NULL, 'nobody');",
    )
    .await?;
    let row = |id: i64, tenant: &str, item: &str| json!({"id": id, "tenant_id": tenant, "item": item, "note": null});
    assert_eq!(
        acme.recv_json().await?,
        json!({"table": "orders", "op": "INSERT", "row": row(1, "acme", "anvil")})
    );
    assert_eq!(
        acme.recv_json().await?,
        json!({"table": "orders", "op": "UPDATE", "row": row(1, "acme", "rocket")})
    );
    assert_eq!(
        acme.recv_json().await?,
        json!({"table": "orders", "op": "DELETE", "row": row(1, "acme", "rocket")})
    );
    assert_eq!(
        beta.recv_json().await?,
        json!({"table": "orders", "op": "INSERT", "row": row(2, "beta", "bolt")})
    );

    // Too big for a NOTIFY: announced by key, and the INSERT itself succeeds.
    sql.execute(
        "INSERT INTO orders (tenant_id, item, note) VALUES ('acme', 'big', repeat('x', 9000))",
        &[],
    )
    .await?;
    assert_eq!(
        acme.recv_json().await?,
        json!({"table": "orders", "op": "INSERT", "truncated": true, "key": 4})
    );
    // Markers: what each client got before its own is everything it got (the NULL-tenant row was
    // announced to no one).
    sql.batch_execute(
        "INSERT INTO orders (tenant_id, item) VALUES ('acme', 'marker'), ('beta', 'marker');",
    )
    .await?;
    assert_eq!(
        acme.recv_json().await?,
        json!({"table": "orders", "op": "INSERT", "row": row(5, "acme", "marker")})
    );
    assert_eq!(
        beta.recv_json().await?,
        json!({"table": "orders", "op": "INSERT", "row": row(6, "beta", "marker")})
    );
    Ok(())
}
