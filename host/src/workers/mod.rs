//! Guest scheduling: every call into a tenant's guest, with the tenant isolated from every other.
//!
//! Owns one *lane* per tenant — a bounded queue of that tenant's jobs, its warm guest instance, its
//! failure record, its guest-time budget and its delivery stream — and the guest threads that run
//! lanes. A lane with work has exactly one task, so a tenant's jobs run one at a time in the order
//! they came (its messages stay in order), while any guest thread may run any tenant. Guest calls are
//! async and yield their thread every epoch tick, so a slow guest shares the threads instead of
//! holding one; a lane whose last call was slow runs on threads of lower OS priority, so slow guests
//! never take the CPU from deliveries or quick guests; a tenant that uses more than its guest-time
//! budget in a second waits out the rest of the second (throttled, counted); a tenant whose queue is full loses only its own messages
//! (counted, logged once per episode, and its `pgws.v1` clients get a gap notice). Nothing here ever
//! waits on another tenant: the dispatcher only pushes onto a lane, and a tenant without a guest is
//! delivered at once, without a lane task.
//!
//! This module applies the failure policy (fail closed by default, isolate a guest that keeps
//! failing, fail closed for a guest that was meant to serve but never loaded). It does not parse
//! payloads (`dispatch`) or turn verdicts into deliveries (`deliver`).

mod jobs;
mod lanes;
mod runner;
mod threads;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::auth::Identity;
use crate::config::FailurePolicy;
use crate::deliver::{Batch, Deliverer, Notify, Outcome};
use crate::envelope::{JsonBody, TenantId, Topic};
use crate::guest::{Authorization, GuestRegistry, Lookup};
use crate::hub::{ReplayEnd, SessionAddress};
use crate::metrics as m;
use lanes::{cool_down, drain, Lane};
use runner::Runner;
use threads::GuestThreads;

/// How guest failures are handled.
#[derive(Debug, Clone)]
pub struct FailureRules {
    pub policy: FailurePolicy,
    /// Failures in a row after which a guest is isolated.
    pub max_failures: u32,
    /// How long an isolated guest is left alone.
    pub isolation: Duration,
}

/// How the guest threads share out their time.
#[derive(Debug, Clone)]
pub struct Scheduling {
    /// Threads that run guests.
    pub threads: usize,
    /// Jobs one tenant may have waiting; past this its new messages are dropped.
    pub queue_per_tenant: usize,
    /// Guest time one tenant may use per second before it is throttled.
    pub budget_per_sec: Duration,
    /// Warm instances kept between calls, all tenants together: past it, running lanes give
    /// theirs up after each call and the sweep cools the longest-idle ones.
    pub max_warm: usize,
}

impl From<&crate::config::WorkerSettings> for FailureRules {
    fn from(s: &crate::config::WorkerSettings) -> Self {
        FailureRules {
            policy: s.guest_failure,
            max_failures: s.guest_max_failures.max(1),
            isolation: Duration::from_secs(s.guest_isolation_secs),
        }
    }
}

impl From<&crate::config::WorkerSettings> for Scheduling {
    fn from(s: &crate::config::WorkerSettings) -> Self {
        Scheduling {
            threads: s.threads(),
            queue_per_tenant: s.guest_queue,
            budget_per_sec: Duration::from_millis(s.guest_cpu_ms_per_sec),
            max_warm: s.guest_max_warm,
        }
    }
}

/// How long a lane keeps its warm instance after its last job. Instances cost memory (a guest's
/// linear memory, up to `--guest-memory-mb`); a tenant that went quiet gets a fresh one next time.
const WARM_FOR: Duration = Duration::from_secs(60);

/// How long a quiet lane is kept at all. Tenants are named by NOTIFY payloads, which any database
/// role may send, so lanes of tenants that went quiet are dropped (their sequence numbers restart,
/// which only matters to sessions of the tenant, and a lane with sessions is kept).
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// Most lanes of tenants nobody is connected for. A lane is small (a few hundred bytes and its
/// bounded queue), but tenants are named by NOTIFY payloads: this caps what a flood of made-up names
/// can hold for the [`FORGET_AFTER`] it takes to forget them. Past it, a notification of a tenant
/// with no lane and no subscriber is dropped (it would reach no one) — a tenant with a connection,
/// and a connection's own requests, always get their lane (connections are capped themselves).
const MAX_LANES: usize = 100_000;

/// Longest a session waits for its tenant's guest to answer a publish or a connect (its request may
/// queue behind the tenant's own messages); then it is refused rather than left hanging.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// What becomes of a message a client published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutcome {
    /// Send this body to Postgres (the original, or the guest's replacement).
    Accept(JsonBody),
    /// Refused, with a reason for the client.
    Reject(String),
    /// Not looked at: the tenant's guest queue is full or its guest did not answer in time.
    Busy(String),
}

/// The tenant's guest could not take the request now (queue full, no answer in time): not a
/// refusal, the client may try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy(pub String);

/// Work for a tenant's guest.
enum Job {
    Notify(Notify),
    /// Stored messages a session missed, run through the guest and sent to that session alone.
    Replay {
        notes: Vec<Notify>,
        session: SessionAddress,
        end: Option<ReplayEnd>,
    },
    ClientMessage {
        topic: Option<Topic>,
        body: JsonBody,
        reply: oneshot::Sender<ClientOutcome>,
    },
    Authorize {
        topics: Vec<String>,
        can_publish: bool,
        claims: String,
        reply: oneshot::Sender<Result<Authorization, Busy>>,
    },
}

/// Handle on the guest threads, for the dispatcher and for sessions.
#[derive(Clone)]
pub struct Workers {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<GuestRegistry>,
    deliverer: Deliverer,
    rules: FailureRules,
    scheduling: Scheduling,
    /// Every tenant seen, by name (at most [`MAX_LANES`]). Locked only to find or add a lane,
    /// never across a guest call.
    lanes: Mutex<HashMap<TenantId, Arc<Lane>>>,
    /// Whether [`MAX_LANES`] was reached (logged once until the sweep finds room again).
    lanes_full: AtomicBool,
    /// Warm instances alive, all lanes together.
    warm: Arc<AtomicUsize>,
    threads: GuestThreads,
}

impl Workers {
    /// Starts the guest threads. They stop when the last handle is dropped.
    pub fn start(
        registry: Arc<GuestRegistry>,
        deliverer: Deliverer,
        settings: &crate::config::WorkerSettings,
    ) -> std::io::Result<Workers> {
        let rules = FailureRules::from(settings);
        let scheduling = Scheduling::from(settings);
        let threads = GuestThreads::start(scheduling.threads)?;
        let inner = Arc::new(Inner {
            registry,
            deliverer,
            rules,
            scheduling,
            lanes: Mutex::default(),
            lanes_full: AtomicBool::new(false),
            warm: Arc::default(),
            threads,
        });
        inner
            .threads
            .handle(false)
            .spawn(cool_down(Arc::downgrade(&inner)));
        Ok(Workers { inner })
    }

    /// Hands one notification to its tenant. Never waits: a tenant without a guest (and with nothing
    /// queued) is delivered here and now, into `batch` (the caller fans it out with
    /// [`Workers::publish`]); otherwise the job joins the tenant's lane, or is dropped if that lane
    /// is full.
    pub fn dispatch(&self, n: Notify, batch: &mut Batch) {
        if matches!(self.inner.registry.lookup(&n.tenant), Lookup::None) {
            loop {
                let Some(lane) = self.inner.lane(&n.tenant, true) else {
                    self.inner.no_lane(Job::Notify(n));
                    return;
                };
                {
                    let mut state = lane.lock();
                    if state.forgotten {
                        continue;
                    }
                    if state.running || !state.jobs.is_empty() {
                        break;
                    }
                    // A lane delivering inline is not quiet (see `FORGET_AFTER`).
                    state.idle_since = Instant::now();
                }
                lane.stream.received.increment(1);
                let outcome = Outcome::Deliver(vec![n.original()]);
                self.inner
                    .deliverer
                    .finish(&lane.stream, &n, outcome, batch);
                return;
            }
        }
        // This tenant's earlier messages may wait in `batch`: they go out before its lane can
        // deliver this one.
        self.publish(batch);
        self.inner.enqueue(&n.tenant.clone(), Job::Notify(n));
    }

    /// Queues a replay for one session on `tenant`'s lane, behind the tenant's messages handed over
    /// before it and ahead of those after (see `streams`). Never dropped for a full queue: a
    /// recovery is bounded by `--stream-recover-max`.
    pub fn replay(
        &self,
        tenant: &TenantId,
        notes: Vec<Notify>,
        session: SessionAddress,
        end: Option<ReplayEnd>,
    ) {
        self.inner.enqueue(
            tenant,
            Job::Replay {
                notes,
                session,
                end,
            },
        );
    }

    /// Jobs waiting in `tenant`'s lane, and how many it takes before it drops messages: the
    /// stream reader hands over stored messages only while there is room.
    pub fn backlog(&self, tenant: &TenantId) -> (usize, usize) {
        let queued = self
            .inner
            .lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .cloned()
            .map_or(0, |lane| lane.lock().jobs.len());
        (queued, self.inner.scheduling.queue_per_tenant)
    }

    /// Fans out what [`Workers::dispatch`] delivered inline.
    pub fn publish(&self, batch: &mut Batch) {
        self.inner.deliverer.publish(batch);
    }

    /// Runs a client's message through its tenant's guest (if it has a client-message hook).
    pub async fn client_message(
        &self,
        tenant: &TenantId,
        topic: Option<Topic>,
        body: JsonBody,
    ) -> ClientOutcome {
        match self.inner.registry.lookup(tenant) {
            Lookup::None => return ClientOutcome::Accept(body),
            // Client messages always fail closed: nothing unchecked reaches Postgres.
            Lookup::NotLoaded => return ClientOutcome::Reject(NOT_LOADED.into()),
            Lookup::Guest(m) if !m.has_client_handler() => return ClientOutcome::Accept(body),
            Lookup::Guest(_) => {}
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .enqueue(tenant, Job::ClientMessage { topic, body, reply });
        match tokio::time::timeout(ANSWER_WITHIN, answer).await {
            Ok(Ok(outcome)) => outcome,
            _ => ClientOutcome::Busy(GUEST_BUSY.into()),
        }
    }

    /// Asks the tenant's guest (if it has an authorize hook) whether a connection may proceed.
    /// `grants` are what the connection may read: topic patterns on `/ws`, channel patterns on
    /// socket.io.
    pub async fn authorize(
        &self,
        identity: &Identity,
        grants: Vec<String>,
    ) -> Result<Authorization, Busy> {
        match self.inner.registry.lookup(&identity.tenant) {
            Lookup::None => return Ok(Authorization::Allow),
            Lookup::NotLoaded => return Ok(self.inner.not_loaded_authorization()),
            Lookup::Guest(m) if !m.has_authorizer() => return Ok(Authorization::Allow),
            Lookup::Guest(_) => {}
        }
        let (reply, answer) = oneshot::channel();
        self.inner.enqueue(
            &identity.tenant,
            Job::Authorize {
                topics: grants,
                can_publish: identity.can_publish,
                claims: identity.claims.clone(),
                reply,
            },
        );
        match tokio::time::timeout(ANSWER_WITHIN, answer).await {
            Ok(Ok(answer)) => answer,
            _ => Err(Busy(GUEST_BUSY.into())),
        }
    }
}

const NOT_LOADED: &str = "the tenant's guest is not loaded (its file was refused)";
const GUEST_BUSY: &str = "the tenant's guest did not answer in time; try again";
const QUEUE_FULL: &str = "server busy: the tenant's guest queue is full; try again";

impl Inner {
    /// The tenant's lane, made if it has none; `None` for a notification (`for_notify`) of a
    /// tenant without subscribers when [`MAX_LANES`] tenants have one.
    fn lane(&self, tenant: &TenantId, for_notify: bool) -> Option<Arc<Lane>> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lane) = lanes.get(tenant) {
            return Some(lane.clone());
        }
        if for_notify && lanes.len() >= MAX_LANES && self.deliverer.hub.subscribers(tenant) == 0 {
            if !self.lanes_full.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    lanes = MAX_LANES,
                    "too many tenants at once; notifications of tenants nobody is connected for \
                     are dropped until quiet tenants are forgotten"
                );
            }
            return None;
        }
        let lane = Arc::new(Lane::new(tenant, self.runner()));
        lanes.insert(tenant.clone(), lane.clone());
        Some(lane)
    }

    fn runner(&self) -> Runner {
        Runner::new(self.scheduling.budget_per_sec, self.warm.clone())
    }

    /// Queues `job` on its tenant's lane (see [`submit`](Self::submit)).
    fn enqueue(self: &Arc<Self>, tenant: &TenantId, job: Job) {
        let mut job = job;
        // A lane forgotten between the lookup and the lock is replaced by a fresh one.
        let for_notify = matches!(job, Job::Notify(_));
        loop {
            let Some(lane) = self.lane(tenant, for_notify) else {
                return self.no_lane(job);
            };
            match self.submit(&lane, job) {
                Ok(()) => return,
                Err(back) => job = back,
            }
        }
    }

    /// A notification of a tenant with no subscriber and no lane past [`MAX_LANES`]: counted.
    fn no_lane(&self, job: Job) {
        if let Job::Notify(_) = job {
            metrics::counter!(m::NOTIFICATIONS_REJECTED, "reason" => "too_many_tenants")
                .increment(1);
        }
    }

    /// Queues `job` on `lane` and makes sure a task drains it; drops it if the lane is full. Gives
    /// the job back if the lane was forgotten meanwhile.
    fn submit(self: &Arc<Self>, lane: &Arc<Lane>, job: Job) -> Result<(), Job> {
        let mut state = lane.lock();
        if state.forgotten {
            return Err(job);
        }
        if matches!(job, Job::Notify(_)) {
            lane.stream.received.increment(1);
        }
        // Stored messages and replays are never dropped for a full queue: the stream reader waits
        // for room instead (see `Workers::backlog`), and they stay in the database meanwhile.
        let keep = match &job {
            Job::Replay { .. } => true,
            Job::Notify(n) => n.position.is_some(),
            _ => false,
        };
        if state.jobs.len() >= self.scheduling.queue_per_tenant && !keep {
            // Only a dropped message opens an episode: that is what its log line and the
            // clients' gap notice are about.
            let first = matches!(job, Job::Notify(_)) && !state.overflowing;
            if matches!(job, Job::Notify(_)) {
                state.overflowing = true;
            }
            drop(state);
            self.overflow(lane, job, first);
            return Ok(());
        }
        state.jobs.push_back(job);
        // Drained to half: a later overflow is a new episode, logged and announced again (not
        // every message of a queue that stays at the brim).
        if state.jobs.len() <= self.scheduling.queue_per_tenant / 2 {
            state.overflowing = false;
        }
        if !state.running {
            state.running = true;
            let slow = state.slow;
            drop(state);
            self.threads
                .handle(slow)
                .spawn(drain(self.clone(), lane.clone(), slow));
        }
        Ok(())
    }

    /// A job that found its tenant's queue full: counted, answered, and for messages a gap notice.
    fn overflow(&self, lane: &Lane, job: Job, first: bool) {
        metrics::counter!(m::TENANT_QUEUE_DROPS, "tenant" => lane.tenant.to_string()).increment(1);
        match job {
            Job::Notify(_) => {
                if first {
                    tracing::warn!(
                        tenant = %lane.tenant,
                        queue = self.scheduling.queue_per_tenant,
                        "tenant's guest queue is full; dropping its messages until it catches up"
                    );
                    self.deliverer.hub.tenant_gap(
                        &lane.tenant,
                        "the tenant's guest fell behind; messages were dropped",
                    );
                }
            }
            Job::ClientMessage { reply, .. } => {
                let _ = reply.send(ClientOutcome::Busy(QUEUE_FULL.into()));
            }
            Job::Authorize { reply, .. } => {
                let _ = reply.send(Err(Busy(QUEUE_FULL.into())));
            }
            // Never refused for a full queue (see `submit`).
            Job::Replay { .. } => {}
        }
    }
}
