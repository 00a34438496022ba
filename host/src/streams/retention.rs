//! Retention: stored messages older than `--stream-retention-secs`, or beyond a tenant's newest
//! `--stream-retention-count`, are deleted in the background in small batches, so pruning never
//! holds long locks or makes one huge transaction. With several hosts, each prunes; a batch that
//! finds nothing left to delete costs one index probe.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use super::store;

/// Rows deleted per statement.
const BATCH: i64 = 2000;

/// What to keep.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub max_count: u64,
    /// Pause between rounds.
    pub every: Duration,
}

/// Prunes until `shutdown`.
pub async fn run(pool: Pool, retention: Retention, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(retention.every) => {}
        }
        match prune(&pool, retention, &shutdown).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "stream retention pruned old messages"),
            Err(e) => tracing::warn!(error = %e, "stream retention failed; trying again later"),
        }
    }
}

/// One round: batches until nothing is left to delete; returns the rows deleted.
pub async fn prune(
    pool: &Pool,
    retention: Retention,
    shutdown: &CancellationToken,
) -> Result<u64, store::StoreError> {
    let mut total = 0;
    loop {
        let by_age = store::delete_older(pool, retention.max_age, BATCH).await?;
        let keep = retention.max_count.min(i64::MAX as u64) as i64;
        let by_count = store::delete_beyond(pool, keep, BATCH).await?;
        total += by_age + by_count;
        metrics::counter!(crate::metrics::STREAM_PRUNED).increment(by_age + by_count);
        if (by_age as i64) < BATCH && (by_count as i64) < BATCH || shutdown.is_cancelled() {
            return Ok(total);
        }
        // Other work goes first between batches.
        tokio::task::yield_now().await;
    }
}
