//! The durable streams' SQL: heads, ranges of messages, and retention deletes. Every read is one
//! query per tenant and batch, on the primary (a replica may lag behind the doorbell).

use std::time::Duration;

use deadpool_postgres::Pool;

use crate::envelope::{JsonBody, Position, TenantId, Topic};

/// About how many stored bytes one read takes (Postgres' own, compressed, sizes).
const READ_BYTES: i64 = 8 << 20;

/// A stream's head: its epoch and last offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub epoch: String,
    pub top: u64,
}

/// One stored message, checked.
#[derive(Debug)]
pub struct Stored {
    pub position: Position,
    pub topic: Option<Topic>,
    pub body: JsonBody,
}

/// A stored row pgws cannot deliver (counted and skipped; the publish function prevents them).
#[derive(Debug)]
pub struct Unusable {
    pub offset: u64,
    pub reason: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no connection to Postgres: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
}

/// Every followed tenant's head, for tenants in `tenants`.
pub async fn heads(pool: &Pool, tenants: &[String]) -> Result<Vec<(String, Head)>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT tenant, epoch, top_offset FROM pgws_stream WHERE tenant = ANY($1)",
            &[&tenants],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let top: i64 = r.get(2);
            (
                r.get(0),
                Head {
                    epoch: r.get(1),
                    top: top.max(0) as u64,
                },
            )
        })
        .collect())
}

/// One tenant's head; `None` while it has never published.
pub async fn head(pool: &Pool, tenant: &TenantId) -> Result<Option<Head>, StoreError> {
    let mut heads = heads(pool, &[tenant.to_string()]).await?;
    Ok(heads.pop().map(|(_, h)| h))
}

/// Which stored messages of a tenant to read.
pub struct Range<'a> {
    pub epoch: &'a str,
    /// After this offset...
    pub after: u64,
    /// ...up to this one (inclusive), or to the end.
    pub until: Option<u64>,
    /// At most this many, oldest first.
    pub limit: usize,
    /// Only those stored within this age.
    pub newer_than: Option<Duration>,
    /// Bodies over this many bytes come back as unusable rather than being read.
    pub max_body: usize,
}

/// What one read of a range found, in offset order.
pub struct Found {
    pub stored: Vec<Stored>,
    pub unusable: Vec<Unusable>,
    /// The range may hold more: the read stopped at its row or byte limit.
    pub more: bool,
}

impl Found {
    pub fn is_empty(&self) -> bool {
        self.stored.is_empty() && self.unusable.is_empty()
    }
}

/// The messages of `tenant` in `range`.
pub async fn range(pool: &Pool, tenant: &TenantId, range: Range<'_>) -> Result<Found, StoreError> {
    let Range {
        epoch,
        after,
        until,
        limit,
        newer_than,
        max_body,
    } = range;
    let client = pool.get().await?;
    // At most `limit` rows and about READ_BYTES of them (always at least one): a batch of big
    // bodies is read a few at a time. The limit applies before the running sum, so a read costs
    // what it returns, not the whole rest of the stream.
    let rows = client
        .query(
            "SELECT \"offset\", topic, \
                    CASE WHEN octet_length(body::text) > $6 THEN NULL ELSE body::text END, \
                    within \
             FROM ( \
                 SELECT \"offset\", topic, body, \
                        sum(pg_column_size(body)) OVER (ORDER BY \"offset\") AS running, \
                        row_number() OVER (ORDER BY \"offset\") AS n, \
                        count(*) OVER () AS within \
                 FROM ( \
                     SELECT \"offset\", topic, body FROM pgws_message \
                     WHERE tenant = $1 AND epoch = $2 AND \"offset\" > $3 AND \"offset\" <= $4 \
                       AND ($7::float8 IS NULL \
                            OR created_at > now() - make_interval(secs => $7)) \
                     ORDER BY \"offset\" LIMIT $5) l) m \
             WHERE n = 1 OR running <= $8 \
             ORDER BY \"offset\"",
            &[
                &tenant.as_str(),
                &epoch,
                &(after.min(i64::MAX as u64) as i64),
                &(until.map_or(i64::MAX, |u| u.min(i64::MAX as u64) as i64)),
                &(limit.min(i64::MAX as usize) as i64),
                &(max_body.min(i32::MAX as usize) as i32),
                &newer_than.map(|d| d.as_secs_f64()),
                &READ_BYTES,
            ],
        )
        .await?;
    // Rows the limited set held before the byte limit took its share.
    let within = rows
        .first()
        .map_or(0, |r| r.get::<_, i64>(3).max(0) as usize);
    let more = within >= limit || rows.len() < within;
    let epoch: std::sync::Arc<str> = epoch.into();
    let mut stored = Vec::with_capacity(rows.len());
    let mut unusable = Vec::new();
    for row in rows {
        let offset: i64 = row.get(0);
        let offset = offset.max(0) as u64;
        let topic = match row.get::<_, Option<String>>(1) {
            None => None,
            Some(t) => match Topic::parse(&t) {
                Ok(t) => Some(t),
                Err(_) => {
                    unusable.push(Unusable {
                        offset,
                        reason: "invalid_topic",
                    });
                    continue;
                }
            },
        };
        let Some(text) = row.get::<_, Option<String>>(2) else {
            unusable.push(Unusable {
                offset,
                reason: "too_large",
            });
            continue;
        };
        let Ok(body) = JsonBody::from_string(text) else {
            unusable.push(Unusable {
                offset,
                reason: "invalid_json",
            });
            continue;
        };
        stored.push(Stored {
            position: Position {
                epoch: epoch.clone(),
                offset,
            },
            topic,
            body,
        });
    }
    Ok(Found {
        stored,
        unusable,
        more,
    })
}

/// Deletes up to `batch` messages older than `age`; returns how many went.
pub async fn delete_older(pool: &Pool, age: Duration, batch: i64) -> Result<u64, StoreError> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "DELETE FROM pgws_message WHERE ctid = ANY(ARRAY( \
                 SELECT ctid FROM pgws_message \
                 WHERE created_at < now() - make_interval(secs => $1) LIMIT $2))",
            &[&age.as_secs_f64(), &batch],
        )
        .await?)
}

/// Deletes up to `batch` messages of tenants beyond their newest `keep`; returns how many went.
pub async fn delete_beyond(pool: &Pool, keep: i64, batch: i64) -> Result<u64, StoreError> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "DELETE FROM pgws_message WHERE ctid = ANY(ARRAY( \
                 SELECT m.ctid FROM pgws_stream s \
                 JOIN LATERAL ( \
                     SELECT ctid FROM pgws_message \
                     WHERE tenant = s.tenant AND epoch = s.epoch \
                       AND \"offset\" <= s.top_offset - $1 \
                     ORDER BY \"offset\" LIMIT $2) m ON true \
                 WHERE s.top_offset > $1 LIMIT $2))",
            &[&keep, &batch],
        )
        .await?)
}
