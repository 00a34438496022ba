//! Durable streams: a table as the log, `NOTIFY` as the doorbell. Messages published with the SQL
//! function `pgws_publish` (in the application's own transaction) are stored at dense, commit-ordered
//! offsets per tenant (`sql/pgws_streams.sql`); this module reads them — on a doorbell, after the
//! listener reconnects, and on a periodic safety poll, so a lost doorbell costs latency, never data —
//! and hands each to its tenant's lane exactly as a `NOTIFY` message, with its position. A client
//! that reconnects with its last position gets what it missed, through the guest, then live
//! messages, with no gap and no duplicate (or `recovered: false` when that cannot be done).
//!
//! Owns, per tenant this host serves, the cursor (the last offset handed to the lane) and at most
//! one read in flight. Order: a tenant's reads and recoveries take its cursor lock, and everything
//! they hand over goes through the tenant's lane, which runs jobs in order; the hub then keeps that
//! order per session. It does not run guests (`workers`), write to clients (`hub`), or LISTEN
//! (`listener` routes the doorbell channel here).

mod retention;
pub mod schema;
mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::Notify as Wake;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use crate::deliver::{Batch, Notify};
use crate::envelope::{Position, TenantId};
use crate::hub::{Audience, Hub, ReplayEnd, SessionAddress};
use crate::metrics as m;
use crate::workers::Workers;
pub use retention::Retention;

/// The channel `pgws_publish` rings (payload: the tenant's name).
pub const DOORBELL_CHANNEL: &str = "pgws_stream";

/// Messages read per query.
const READ_BATCH: usize = 500;

/// A tenant nobody on this host has subscribed to for this long is no longer followed.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// How streams are read, recovered and pruned.
#[derive(Debug, Clone)]
pub struct StreamRules {
    /// Safety poll: how often the heads of followed tenants are checked without a doorbell.
    pub poll: Duration,
    /// With a quieted doorbell: how soon a stream whose read found messages is read again.
    pub trailing_read: Option<Duration>,
    /// Most messages one recovery replays; a client further behind gets `recovered: false`.
    pub recover_max: u64,
    /// Oldest message a recovery replays.
    pub recover_max_age: Duration,
    /// Largest body delivered (bigger stored bodies are counted and skipped).
    pub max_body: usize,
    pub retention: Retention,
}

impl From<&crate::config::StreamSettings> for StreamRules {
    fn from(s: &crate::config::StreamSettings) -> Self {
        StreamRules {
            poll: Duration::from_millis(s.stream_poll_ms.max(10)),
            trailing_read: (s.stream_doorbell_ms > 0)
                .then(|| Duration::from_millis(s.stream_doorbell_ms)),
            recover_max: s.stream_recover_max,
            recover_max_age: Duration::from_secs(s.stream_recover_max_age_secs),
            max_body: s.stream_max_body,
            retention: Retention {
                max_age: Duration::from_secs(s.stream_retention_secs),
                max_count: s.stream_retention_count,
                // Often enough that nothing outlives its age by much more than a quarter of it.
                every: Duration::from_secs(s.stream_retention_secs)
                    .div_f64(4.0)
                    .clamp(Duration::from_millis(250), Duration::from_secs(10)),
            },
        }
    }
}

/// Handle on the stream reader, shared by the dispatcher (doorbells) and sessions (recovery).
#[derive(Clone)]
pub struct Streams {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    workers: Workers,
    hub: Arc<Hub>,
    rules: StreamRules,
    followed: Mutex<HashMap<TenantId, Arc<Followed>>>,
    /// Wakes the poller at once (after the listener lost doorbells).
    poll_now: Wake,
    /// The schema was found in place (checked at start, or by the poller once Postgres answers).
    schema_ok: AtomicBool,
}

/// One tenant this host serves.
struct Followed {
    tenant: TenantId,
    cursor: tokio::sync::Mutex<Cursor>,
    /// A read was asked for since the last one started.
    wanted: AtomicBool,
    /// A read task is running (at most one per tenant).
    running: AtomicBool,
    /// A copy of the cursor for the poller, which must not wait for a read.
    seen: Mutex<Cursor>,
    /// Since when no session of the tenant is here (`None` while there is one).
    alone_since: Mutex<Option<Instant>>,
}

/// The last position handed to the tenant's lane. `epoch` is `None` until the stream has a head:
/// the first epoch seen is then read from its start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Cursor {
    epoch: Option<Arc<str>>,
    offset: u64,
    /// Whether the head was ever read. Until it is (Postgres was down when the tenant's first
    /// session came), the cursor is not a place to read from: the first read starts at the head.
    known: bool,
}

impl Cursor {
    /// Stands at `head`: what is stored so far is history.
    fn start_at(&mut self, head: Option<store::Head>) {
        if let Some(head) = head {
            self.epoch = Some(head.epoch.into());
            self.offset = head.top;
        }
        self.known = true;
    }

    fn position(&self) -> Option<Position> {
        self.epoch.as_ref().map(|epoch| Position {
            epoch: epoch.clone(),
            offset: self.offset,
        })
    }
}

/// A client's request to recover from a position.
pub struct Recovery {
    pub tenant: TenantId,
    pub session: SessionAddress,
    pub since: Position,
    /// Echoed in the report.
    pub reference: Option<serde_json::Value>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Streams {
    /// Connects the reader's pool and starts the safety poll and retention.
    pub fn start(
        database_url: &str,
        workers: Workers,
        hub: Arc<Hub>,
        rules: StreamRules,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Streams> {
        let mut pg: tokio_postgres::Config = database_url.parse()?;
        pg.connect_timeout(Duration::from_secs(5));
        // A read that hangs must not hold one of the few connections every tenant's reads share.
        pg.options("-c statement_timeout=10000");
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(8)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()?;
        let inner = Arc::new(Inner {
            pool: pool.clone(),
            workers,
            hub,
            rules: rules.clone(),
            followed: Mutex::default(),
            poll_now: Wake::new(),
            schema_ok: AtomicBool::new(false),
        });
        tokio::spawn(poll_loop(inner.clone(), shutdown.clone()));
        tokio::spawn(retention::run(pool, rules.retention, shutdown));
        Ok(Streams { inner })
    }

    /// Checks that the schema this binary reads is installed.
    pub async fn check_schema(&self) -> anyhow::Result<i32> {
        Ok(self.inner.check_schema().await?)
    }

    /// A doorbell rang for the tenant named in `payload`: read its new messages, if it is followed.
    pub fn doorbell(&self, payload: &str) {
        let Ok(tenant) = TenantId::parse(payload) else {
            return;
        };
        let followed = lock(&self.inner.followed).get(&tenant).cloned();
        if let Some(f) = followed {
            self.inner.poke(&f);
        }
    }

    /// Doorbells may have been lost (the listener reconnected): check every head now.
    pub fn doorbells_lost(&self) {
        self.inner.poll_now.notify_one();
    }

    /// Starts following `tenant` (a session of it is here): its messages stored from now on are
    /// delivered. Waits for the stream's head the first time.
    pub async fn follow(&self, tenant: &TenantId) {
        self.inner.followed(tenant).await;
    }

    /// Replays what the session missed since `since`, then lets it take live messages; the session
    /// gets a `recovered` report either way.
    pub fn recover(&self, recovery: Recovery) {
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.recover(recovery).await });
    }
}

impl Inner {
    async fn check_schema(&self) -> Result<i32, schema::SchemaError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| schema::SchemaError::Unreachable(e.to_string()))?;
        let version = schema::check(&client).await?;
        self.schema_ok.store(true, Ordering::Relaxed);
        Ok(version)
    }

    /// The tenant's entry, made (and its cursor set to the stream's head) if it had none.
    async fn followed(self: &Arc<Self>, tenant: &TenantId) -> Arc<Followed> {
        let (f, new) = {
            let mut followed = lock(&self.followed);
            match followed.get(tenant) {
                Some(f) => (f.clone(), false),
                None => {
                    let f = Arc::new(Followed {
                        tenant: tenant.clone(),
                        cursor: tokio::sync::Mutex::default(),
                        wanted: AtomicBool::new(false),
                        running: AtomicBool::new(false),
                        seen: Mutex::default(),
                        alone_since: Mutex::new(None),
                    });
                    followed.insert(tenant.clone(), f.clone());
                    (f, true)
                }
            }
        };
        *lock(&f.alone_since) = None;
        if new {
            let mut cursor = f.cursor.lock().await;
            match store::head(&self.pool, tenant).await {
                Ok(head) => cursor.start_at(head),
                Err(e) => {
                    // The first read starts at the head once Postgres answers; the poll retries.
                    tracing::warn!(%tenant, error = %e, "could not read the tenant's stream head");
                }
            }
            *lock(&f.seen) = cursor.clone();
        }
        f
    }

    /// Asks for a read of `f`'s new messages; starts one unless one is running (which reads again).
    fn poke(self: &Arc<Self>, f: &Arc<Followed>) {
        f.wanted.store(true, Ordering::SeqCst);
        if !f.running.swap(true, Ordering::SeqCst) {
            tokio::spawn(read_task(self.clone(), f.clone()));
        }
    }

    /// Hands every message after the cursor to the tenant's lane, in order, as fast as the lane
    /// takes them.
    async fn read_new(&self, f: &Followed, cursor: &mut Cursor) -> Result<bool, store::StoreError> {
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
            let (rows, unusable) = store::range(
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
            if rows.is_empty() && unusable.is_empty() {
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
            let read = rows.len() + unusable.len();
            let missing = holes(cursor.offset, &rows, &unusable);
            if missing > 0 {
                metrics::counter!(m::STREAM_EXPIRED, "tenant" => tenant.to_string())
                    .increment(missing);
                self.hub.tenant_gap(
                    tenant,
                    "stored messages expired before this server could deliver them",
                );
            }
            let mut last = cursor.offset;
            for u in &unusable {
                last = last.max(u.offset);
                metrics::counter!(m::NOTIFICATIONS_REJECTED, "reason" => u.reason).increment(1);
                tracing::warn!(%tenant, offset = u.offset, reason = u.reason, "stored message skipped");
            }
            let received = Instant::now();
            for row in rows {
                last = last.max(row.position.offset);
                let n = Notify {
                    tenant: tenant.clone(),
                    topic: row.topic,
                    body: row.body,
                    channel: Arc::from(DOORBELL_CHANNEL),
                    received,
                    audience: Audience::Sessions,
                    position: Some(row.position),
                };
                self.workers.dispatch(n, &mut batch);
            }
            self.workers.publish(&mut batch);
            cursor.offset = last;
            if read < READ_BATCH {
                break;
            }
        }
        *lock(&f.seen) = cursor.clone();
        Ok(cursor.offset != started_at)
    }

    async fn recover(self: &Arc<Self>, r: Recovery) {
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
            let (rows, unusable) = store::range(
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
            if rows.is_empty() && unusable.is_empty()
                || holes(after, &rows, &unusable) > 0
                || (rows.len() + unusable.len() < READ_BATCH
                    && last_offset(&rows, &unusable) != Some(cursor.offset))
            {
                return Err(expired());
            }
            let received = Instant::now();
            let mut last = after;
            let notes: Vec<Notify> = rows
                .into_iter()
                .map(|row| {
                    last = last.max(row.position.offset);
                    Notify {
                        tenant: r.tenant.clone(),
                        topic: row.topic,
                        body: row.body,
                        channel: Arc::from(DOORBELL_CHANNEL),
                        received,
                        audience: Audience::Sessions,
                        position: Some(row.position),
                    }
                })
                .collect();
            last = unusable.iter().map(|u| u.offset).fold(last, u64::max);
            self.workers.replay(&r.tenant, notes, r.session, None);
            after = last;
        }
        Ok(())
    }
}

/// Offsets missing between `after` and the last of `rows` and `unusable` (both in offset order).
fn holes(after: u64, rows: &[store::Stored], unusable: &[store::Unusable]) -> u64 {
    let mut offsets: Vec<u64> = rows
        .iter()
        .map(|r| r.position.offset)
        .chain(unusable.iter().map(|u| u.offset))
        .collect();
    offsets.sort_unstable();
    let mut expected = after + 1;
    let mut missing = 0;
    for o in offsets {
        missing += o.saturating_sub(expected);
        expected = o + 1;
    }
    missing
}

fn last_offset(rows: &[store::Stored], unusable: &[store::Unusable]) -> Option<u64> {
    rows.iter()
        .map(|r| r.position.offset)
        .chain(unusable.iter().map(|u| u.offset))
        .max()
}

/// Reads `f`'s new messages until no read is wanted, then ends (the next doorbell starts another).
async fn read_task(inner: Arc<Inner>, f: Arc<Followed>) {
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
async fn poll_loop(inner: Arc<Inner>, shutdown: CancellationToken) {
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
