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
//!
//! - `read`: new messages into the lane, on doorbells and the safety poll;
//! - `recover`: a reconnecting session's missed messages;
//! - `store`: the SQL; `retention`: pruning; `schema`: `pgws schema install`.

mod read;
mod recover;
mod retention;
pub mod schema;
mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::Notify as Wake;
use tokio_util::sync::CancellationToken;

use crate::envelope::{Position, TenantId};
use crate::hub::Hub;
use crate::workers::Workers;
use read::{poll_loop, read_task};
pub use recover::Recovery;
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
        // A read that hangs must not hold one of the few connections every tenant's reads share.
        let pool = crate::database::pool(
            database_url,
            8,
            Duration::from_secs(5),
            Some(Duration::from_secs(10)),
        )?;
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
}
