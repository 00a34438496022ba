//! Pools of Postgres connections for the parts that query: the publisher (client messages into
//! `pg_notify`) and the durable-stream reader. Every wait — for a free connection, a new one, a
//! recycled one — is bounded, so a Postgres that stops answering costs a bounded wait, never a hang.
//! The `LISTEN` connection is not pooled (`listener` owns it).

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

/// A pool of at most `size` connections to `database_url`; each wait bounded by `patience`.
/// `statement_timeout` bounds each statement on the server as well.
pub fn pool(
    database_url: &str,
    size: usize,
    patience: Duration,
    statement_timeout: Option<Duration>,
) -> anyhow::Result<Pool> {
    let mut pg: tokio_postgres::Config = database_url.parse()?;
    pg.connect_timeout(patience);
    if let Some(limit) = statement_timeout {
        pg.options(format!("-c statement_timeout={}", limit.as_millis()));
    }
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(patience))
        .create_timeout(Some(patience))
        .recycle_timeout(Some(patience))
        .build()?)
}
