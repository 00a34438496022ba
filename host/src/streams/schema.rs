//! `pgws schema install`: the durable-streams schema (`sql/pgws_streams.sql`, compiled into the
//! binary), installed idempotently in one transaction, and the check the server makes that it is
//! in place before it reads streams.

use tokio_postgres::Client;

/// The schema version this binary installs and reads.
pub const VERSION: i32 = 1;

const SQL: &str = include_str!("../../../sql/pgws_streams.sql");

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("installing the streams schema: {0}")]
    Install(#[source] tokio_postgres::Error),
    #[error(
        "the durable-streams schema is not installed in this database (run `pgws schema install`)"
    )]
    Missing,
    #[error("the database has streams schema version {found}; this pgws reads version {VERSION} (run `pgws schema install` with the newer binary)")]
    Version { found: i32 },
    #[error("checking the streams schema: {0}")]
    Check(#[source] tokio_postgres::Error),
    #[error("no connection to Postgres: {0}")]
    Unreachable(String),
    #[error("the database has streams schema version {found}, newer than this pgws's {VERSION}: not downgrading it")]
    Newer { found: i32 },
}

/// Installs (or brings up to date) the schema; returns the version now in place. Safe to run
/// again and from several hosts at once (an advisory lock orders them).
pub async fn install(client: &mut Client) -> Result<i32, SchemaError> {
    let tx = client.transaction().await.map_err(SchemaError::Install)?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('pgws_schema'))", &[])
        .await
        .map_err(SchemaError::Install)?;
    let installed: Option<i32> = if tx
        .query_one("SELECT to_regclass('pgws_schema') IS NOT NULL", &[])
        .await
        .map_err(SchemaError::Install)?
        .get(0)
    {
        tx.query_one("SELECT max(version) FROM pgws_schema", &[])
            .await
            .map_err(SchemaError::Install)?
            .get(0)
    } else {
        None
    };
    if let Some(found) = installed.filter(|v| *v > VERSION) {
        return Err(SchemaError::Newer { found });
    }
    tx.batch_execute(SQL).await.map_err(SchemaError::Install)?;
    tx.commit().await.map_err(SchemaError::Install)?;
    check(client).await
}

/// The installed version, if it is the one this binary reads.
pub async fn check(client: &Client) -> Result<i32, SchemaError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('pgws_schema') IS NOT NULL", &[])
        .await
        .map_err(SchemaError::Check)?
        .get(0);
    if !exists {
        return Err(SchemaError::Missing);
    }
    let found: Option<i32> = client
        .query_opt("SELECT max(version) FROM pgws_schema", &[])
        .await
        .map_err(SchemaError::Check)?
        .and_then(|row| row.get(0));
    match found {
        None => Err(SchemaError::Missing),
        Some(v) if v == VERSION => Ok(v),
        Some(found) => Err(SchemaError::Version { found }),
    }
}
