//! Recovery: a session that reconnects with its last position gets the stored messages after it,
//! through the guest, queued on its tenant's lane at the point this host's reading has reached —
//! then live ones, with no gap and no duplicate — or a `recovered: false` report saying why not.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::read::{holes, last_offset, notify_of};
use super::{store, Cursor, Inner, READ_BATCH};
use crate::deliver::Notify;
use crate::envelope::{Position, TenantId};
use crate::hub::{ReplayEnd, SessionAddress};
use crate::metrics as m;

/// A client's request to recover from a position.
pub struct Recovery {
    pub tenant: TenantId,
    pub session: SessionAddress,
    pub since: Position,
    /// Echoed in the report.
    pub reference: Option<serde_json::Value>,
}

impl Inner {
    /// Replays what the session missed, then its report; the session takes live messages after.
    pub(super) async fn recover(self: &Arc<Self>, r: Recovery) {
        let f = self.followed(&r.tenant).await;
        let mut cursor = f.cursor.lock().await;
        // Up to date first: the client may come from a host that read further than this one.
        let outcome = match self.read_new(&f, &mut cursor).await {
            Ok(_) => self.replay(&r, &cursor).await,
            Err(e) => Err(format!("could not read the stream: {e}")),
        };
        let until = cursor.position();
        let reference = r.reference.clone();
        let (recovered, reason) = match &outcome {
            Ok(()) => (true, None),
            Err(reason) => (false, Some(reason.clone())),
        };
        metrics::counter!(m::STREAM_RECOVERIES, "outcome" => if recovered { "recovered" } else { "not_recovered" })
            .increment(1);
        let at = until.clone();
        let report = Box::new(move |replayed: usize| {
            let mut frame = serde_json::json!({
                "type": "recovered",
                "recovered": recovered,
                "replayed": replayed,
                "epoch": at.as_ref().map(|p| p.epoch.to_string()),
                "offset": at.as_ref().map_or(0, |p| p.offset),
            });
            if let Some(reason) = reason {
                frame["reason"] = reason.into();
            }
            if let Some(reference) = reference {
                frame["ref"] = reference;
            }
            crate::wire::text(&frame.to_string())
        }) as Box<dyn FnOnce(usize) -> Bytes + Send>;
        self.workers.replay(
            &r.tenant,
            Vec::new(),
            r.session,
            Some(ReplayEnd { report, until }),
        );
        drop(cursor);
    }

    /// Hands the messages after `r.since` up to the cursor to the lane, in chunks, or says why not.
    async fn replay(&self, r: &Recovery, cursor: &Cursor) -> Result<(), String> {
        let Some(epoch) = &cursor.epoch else {
            return Err("this tenant has no stored messages".into());
        };
        if *epoch != r.since.epoch {
            return Err("the stream was reset (another epoch); reload".into());
        }
        if r.since.offset > cursor.offset {
            return Err("the position is ahead of the stream; reload".into());
        }
        let missed = cursor.offset - r.since.offset;
        if missed > self.rules.recover_max {
            return Err(format!(
                "{missed} messages were missed, more than the {} a recovery replays; reload",
                self.rules.recover_max
            ));
        }
        let mut after = r.since.offset;
        let expired = || "some missed messages are no longer stored; reload".to_owned();
        while after < cursor.offset {
            let found = store::range(
                &self.pool,
                &r.tenant,
                store::Range {
                    epoch,
                    after,
                    until: Some(cursor.offset),
                    limit: READ_BATCH,
                    newer_than: Some(self.rules.recover_max_age),
                    max_body: self.rules.max_body,
                },
            )
            .await
            .map_err(|e| format!("could not read the stream: {e}"))?;
            // Every offset up to the cursor must be there: a hole, or an end short of the cursor
            // when the read was not cut short by its limits, is a pruned message.
            if found.is_empty()
                || holes(after, &found) > 0
                || (!found.more && last_offset(&found) != Some(cursor.offset))
            {
                return Err(expired());
            }
            let received = Instant::now();
            let last = last_offset(&found).unwrap_or(after);
            let notes: Vec<Notify> = found
                .stored
                .into_iter()
                .map(|row| notify_of(&r.tenant, row, received))
                .collect();
            self.workers.replay(&r.tenant, notes, r.session, None);
            after = last;
        }
        Ok(())
    }
}
