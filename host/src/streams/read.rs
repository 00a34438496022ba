//! Reading a followed tenant's new stored messages into its lane: on a doorbell (one read task per
//! tenant at a time, coalescing rings), on the safety poll of every followed tenant's head, and
//! again shortly after a read that found messages when producers quiet the doorbell. It does not
//! answer recoveries (`recover`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{
    lock, schema, store, Cursor, Followed, Inner, DOORBELL_CHANNEL, FORGET_AFTER, READ_BATCH,
};
use crate::deliver::{Batch, Notify};
use crate::envelope::TenantId;
use crate::hub::Audience;
use crate::metrics as m;

impl Inner {
    /// Hands every message after the cursor to the tenant's lane, in order, as fast as the lane
    /// takes them.
    pub(super) async fn read_new(
        &self,
        f: &Followed,
        cursor: &mut Cursor,
    ) -> Result<bool, store::StoreError> {
        let tenant = &f.tenant;
        let started_at = cursor.offset;
        if !cursor.known {
            cursor.start_at(store::head(&self.pool, tenant).await?);
            self.hub.tenant_gap(
                tenant,
                "messages stored while this server could not reach Postgres are not delivered live; recover them with since",
            );
        }
        let mut batch = Batch::default();
        loop {
            let Some(epoch) = cursor.epoch.clone() else {
                // No head when the tenant was followed: its stream's first epoch, from the start.
                match store::head(&self.pool, tenant).await? {
                    Some(head) => cursor.epoch = Some(head.epoch.into()),
                    None => return Ok(false),
                }
                continue;
            };
            // The lane drops no stored message, so it is not handed more than it queues: the rest
            // waits in the database (a slow guest holds back only its own tenant).
            loop {
                let (queued, bound) = self.workers.backlog(tenant);
                if queued + READ_BATCH <= bound.max(READ_BATCH) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let found = store::range(
                &self.pool,
                tenant,
                store::Range {
                    epoch: &epoch,
                    after: cursor.offset,
                    until: None,
                    limit: READ_BATCH,
                    newer_than: None,
                    max_body: self.rules.max_body,
                },
            )
            .await?;
            if found.is_empty() {
                // Nothing new in this epoch: was the stream reset?
                match store::head(&self.pool, tenant).await? {
                    Some(head) if *head.epoch != *epoch => {
                        self.hub.tenant_gap(
                            tenant,
                            "the tenant's stream was reset; earlier positions cannot be recovered",
                        );
                        tracing::warn!(%tenant, epoch = %head.epoch, "stream reset: a new epoch begins");
                        cursor.epoch = Some(head.epoch.into());
                        cursor.offset = 0;
                        continue;
                    }
                    _ => break,
                }
            }
            let missing = holes(cursor.offset, &found);
            if missing > 0 {
                metrics::counter!(m::STREAM_EXPIRED, "tenant" => tenant.to_string())
                    .increment(missing);
                self.hub.tenant_gap(
                    tenant,
                    "stored messages expired before this server could deliver them",
                );
            }
            let mut last = cursor.offset;
            for u in &found.unusable {
                last = last.max(u.offset);
                metrics::counter!(m::NOTIFICATIONS_REJECTED, "reason" => u.reason).increment(1);
                tracing::warn!(%tenant, offset = u.offset, reason = u.reason, "stored message skipped");
            }
            let received = Instant::now();
            let more = found.more;
            for row in found.stored {
                last = last.max(row.position.offset);
                self.workers
                    .dispatch(notify_of(tenant, row, received), &mut batch);
            }
            self.workers.publish(&mut batch);
            cursor.offset = last;
            if !more {
                break;
            }
        }
        *lock(&f.seen) = cursor.clone();
        Ok(cursor.offset != started_at)
    }
}

/// A stored message on its way to its tenant's lane, as a NOTIFY would be (on the doorbell's
/// channel), with its position.
pub(super) fn notify_of(tenant: &TenantId, row: store::Stored, received: Instant) -> Notify {
    Notify {
        tenant: tenant.clone(),
        topic: row.topic,
        body: row.body,
        channel: Arc::from(DOORBELL_CHANNEL),
        received,
        audience: Audience::Sessions,
        position: Some(row.position),
    }
}

/// Offsets missing between `after` and the last offset `found`.
pub(super) fn holes(after: u64, found: &store::Found) -> u64 {
    let mut offsets = offsets(found);
    offsets.sort_unstable();
    let mut expected = after + 1;
    let mut missing = 0;
    for o in offsets {
        missing += o.saturating_sub(expected);
        expected = o + 1;
    }
    missing
}

pub(super) fn last_offset(found: &store::Found) -> Option<u64> {
    offsets(found).into_iter().max()
}

fn offsets(found: &store::Found) -> Vec<u64> {
    found
        .stored
        .iter()
        .map(|r| r.position.offset)
        .chain(found.unusable.iter().map(|u| u.offset))
        .collect()
}

/// Reads `f`'s new messages until no read is wanted, then ends (the next doorbell starts another).
pub(super) async fn read_task(inner: Arc<Inner>, f: Arc<Followed>) {
    loop {
        f.wanted.store(false, Ordering::SeqCst);
        let found = {
            let mut cursor = f.cursor.lock().await;
            match inner.read_new(&f, &mut cursor).await {
                Ok(found) => found,
                Err(e) => {
                    metrics::counter!(m::STREAM_READ_ERRORS).increment(1);
                    tracing::warn!(tenant = %f.tenant, error = %e, "reading the tenant's stream failed; the safety poll retries");
                    false
                }
            }
        };
        // With a quieted doorbell, messages may have committed since without ringing: look again
        // shortly, for as long as reads keep finding some.
        if let (true, Some(after)) = (found, inner.rules.trailing_read) {
            tokio::time::sleep(after).await;
            f.wanted.store(true, Ordering::SeqCst);
        }
        f.running.store(false, Ordering::SeqCst);
        // A poke that came after the read began reads again, unless another task took over.
        if !f.wanted.load(Ordering::SeqCst) || f.running.swap(true, Ordering::SeqCst) {
            return;
        }
    }
}

/// The safety poll: every `poll`, or at once after doorbells were lost, compares each followed
/// tenant's head with its cursor and reads those that moved; forgets tenants left alone.
pub(super) async fn poll_loop(inner: Arc<Inner>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(inner.rules.poll) => {}
            () = inner.poll_now.notified() => {}
        }
        if !inner.schema_ok.load(Ordering::Relaxed) {
            // Postgres was down at start: say it once if the schema turns out to be missing.
            match inner.check_schema().await {
                Ok(version) => tracing::info!(version, "durable-streams schema found"),
                Err(e @ schema::SchemaError::Unreachable(_)) => {
                    tracing::debug!(error = %e, "durable-streams schema not checked yet");
                }
                Err(e) => {
                    tracing::error!(error = %e, "durable streams cannot be read");
                    inner.schema_ok.store(true, Ordering::Relaxed);
                }
            }
        }
        let followed: Vec<Arc<Followed>> = {
            let mut map = lock(&inner.followed);
            map.retain(|tenant, f| {
                let here = inner.hub.subscribers(tenant) > 0;
                let mut alone = lock(&f.alone_since);
                match (here, *alone) {
                    (true, _) => *alone = None,
                    (false, None) => *alone = Some(Instant::now()),
                    (false, Some(since)) => return since.elapsed() < FORGET_AFTER,
                }
                true
            });
            map.values().cloned().collect()
        };
        if followed.is_empty() {
            continue;
        }
        let names: Vec<String> = followed.iter().map(|f| f.tenant.to_string()).collect();
        let heads = match store::heads(&inner.pool, &names).await {
            Ok(heads) => heads.into_iter().collect::<HashMap<_, _>>(),
            Err(e) => {
                metrics::counter!(m::STREAM_READ_ERRORS).increment(1);
                tracing::warn!(error = %e, "stream safety poll failed");
                continue;
            }
        };
        for f in &followed {
            let Some(head) = heads.get(f.tenant.as_str()) else {
                continue;
            };
            let seen = lock(&f.seen).clone();
            if seen.epoch.as_deref() != Some(head.epoch.as_str()) || seen.offset < head.top {
                inner.poke(f);
            }
        }
    }
}
