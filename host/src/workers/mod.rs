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

mod runner;
mod threads;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::auth::Identity;
use crate::config::FailurePolicy;
use crate::deliver::{self, Batch, Deliverer, Notify, Outcome, TenantStream};
use crate::envelope::{JsonBody, TenantId, Topic};
use crate::guest::{
    Authorization, ClientMessageRef, ClientVerdict, ConnectionRef, GuestRegistry, Lookup,
};
use crate::metrics as m;
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
}

/// How long a lane keeps its warm instance after its last job. Instances cost memory (a guest's
/// linear memory, up to `--guest-memory-mb`); a tenant that went quiet gets a fresh one next time.
const WARM_FOR: Duration = Duration::from_secs(60);

/// How long a quiet lane is kept at all. Tenants are named by NOTIFY payloads, which any database
/// role may send, so lanes of tenants that went quiet are dropped (their sequence numbers restart,
/// which only matters to sessions of the tenant, and a lane with sessions is kept).
const FORGET_AFTER: Duration = Duration::from_secs(600);

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
}

/// Work for a tenant's guest.
enum Job {
    Notify(Notify),
    ClientMessage {
        topic: Option<Topic>,
        body: JsonBody,
        reply: oneshot::Sender<ClientOutcome>,
    },
    Authorize {
        topics: Vec<String>,
        can_publish: bool,
        claims: String,
        reply: oneshot::Sender<Authorization>,
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
    /// Every tenant seen, by name. Locked only to find or add a lane, never across a guest call.
    lanes: Mutex<HashMap<TenantId, Arc<Lane>>>,
    threads: GuestThreads,
}

/// One tenant's place in the scheduler.
struct Lane {
    tenant: TenantId,
    stream: TenantStream,
    state: Mutex<LaneState>,
}

struct LaneState {
    jobs: VecDeque<Job>,
    /// Whether a task is draining `jobs`. At most one per lane.
    running: bool,
    /// The guest side of the lane; taken by the draining task while it runs.
    runner: Option<Runner>,
    /// Whether messages are being dropped because the queue is full (logged once per episode).
    overflowing: bool,
    /// Whether the lane's last guest call was slow: its task runs on the slow threads.
    slow: bool,
    idle_since: Instant,
    /// Removed from the lanes map (see [`FORGET_AFTER`]); a job that finds this takes a new lane.
    forgotten: bool,
}

impl LaneState {
    /// Whether the lane can be dropped: nothing queued or running, quiet for [`FORGET_AFTER`].
    /// (The caller also checks that no session of the tenant would see its numbering restart.)
    fn forgettable(&self, now: Instant) -> bool {
        !self.running && self.jobs.is_empty() && now.duration_since(self.idle_since) >= FORGET_AFTER
    }
}

impl Lane {
    fn lock(&self) -> MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Workers {
    /// Starts the guest threads. They stop when the last handle is dropped.
    pub fn start(
        registry: Arc<GuestRegistry>,
        deliverer: Deliverer,
        rules: FailureRules,
        scheduling: Scheduling,
    ) -> std::io::Result<Workers> {
        let threads = GuestThreads::start(scheduling.threads)?;
        let inner = Arc::new(Inner {
            registry,
            deliverer,
            rules,
            scheduling,
            lanes: Mutex::default(),
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
                let lane = self.inner.lane(&n.tenant);
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
            _ => ClientOutcome::Reject("the tenant's guest is busy; try again".into()),
        }
    }

    /// Asks the tenant's guest (if it has an authorize hook) whether a connection may proceed.
    /// `grants` are what the connection may read: topic patterns on `/ws`, channel patterns on
    /// socket.io.
    pub async fn authorize(&self, identity: &Identity, grants: Vec<String>) -> Authorization {
        match self.inner.registry.lookup(&identity.tenant) {
            Lookup::None => return Authorization::Allow,
            Lookup::NotLoaded => return self.inner.not_loaded_authorization(),
            Lookup::Guest(m) if !m.has_authorizer() => return Authorization::Allow,
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
            _ => Authorization::Deny("the tenant's guest is busy; try again".into()),
        }
    }
}

const NOT_LOADED: &str = "the tenant's guest is not loaded (its file was refused)";

impl Inner {
    fn lane(&self, tenant: &TenantId) -> Arc<Lane> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lane) = lanes.get(tenant) {
            return lane.clone();
        }
        let lane = Arc::new(Lane {
            tenant: tenant.clone(),
            stream: TenantStream::new(tenant),
            state: Mutex::new(LaneState {
                jobs: VecDeque::new(),
                running: false,
                runner: Some(Runner::new(self.scheduling.budget_per_sec)),
                overflowing: false,
                slow: false,
                idle_since: Instant::now(),
                forgotten: false,
            }),
        });
        lanes.insert(tenant.clone(), lane.clone());
        lane
    }

    fn not_loaded_authorization(&self) -> Authorization {
        match self.rules.policy {
            FailurePolicy::Closed => Authorization::Deny(NOT_LOADED.into()),
            FailurePolicy::Open => Authorization::Allow,
        }
    }

    /// Queues `job` on its tenant's lane (see [`submit`](Self::submit)).
    fn enqueue(self: &Arc<Self>, tenant: &TenantId, job: Job) {
        let mut job = job;
        // A lane forgotten between the lookup and the lock is replaced by a fresh one.
        while let Err(back) = self.submit(&self.lane(tenant), job) {
            job = back;
        }
    }

    /// Queues `job` on `lane` and makes sure a task drains it; drops it if the lane is full. Gives
    /// the job back if the lane was forgotten meanwhile.
    fn submit(self: &Arc<Self>, lane: &Arc<Lane>, job: Job) -> Result<(), Job> {
        let mut state = lane.lock();
        if state.forgotten {
            return Err(job);
        }
        if state.jobs.len() >= self.scheduling.queue_per_tenant {
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
                let _ = reply.send(ClientOutcome::Reject(
                    "server busy: the tenant's guest queue is full".into(),
                ));
            }
            Job::Authorize { reply, .. } => {
                let _ = reply.send(Authorization::Deny(
                    "server busy: the tenant's guest queue is full".into(),
                ));
            }
        }
    }

    /// Runs one job of `lane`'s tenant.
    async fn run(&self, lane: &Lane, runner: &mut Runner, job: Job, batch: &mut Batch) {
        let tenant = &lane.tenant;
        let lookup = self.registry.lookup(tenant);
        match job {
            Job::Notify(n) => {
                let outcome = match lookup {
                    Lookup::None => Outcome::Deliver(vec![n.original()]),
                    Lookup::NotLoaded => {
                        metrics::counter!(m::GUEST_FAILURES, "tenant" => tenant.to_string(), "kind" => "not_loaded")
                            .increment(1);
                        self.on_failure(&n, "not_loaded", NOT_LOADED.into())
                    }
                    Lookup::Guest(module) => match runner
                        .on_notify(self.registry.runtime(), &self.rules, module, &n)
                        .await
                    {
                        Ok(verdict) => {
                            let outcome = deliver::apply(verdict, &n);
                            runner.count(&outcome);
                            outcome
                        }
                        Err(f) => self.on_failure(&n, f.kind, f.detail),
                    },
                };
                self.deliverer.finish(&lane.stream, &n, outcome, batch);
            }
            Job::ClientMessage { topic, body, reply } => {
                let outcome = match lookup {
                    Lookup::Guest(module) if module.has_client_handler() => {
                        let message = ClientMessageRef {
                            tenant: tenant.as_str(),
                            topic: topic.as_ref().map(Topic::as_str),
                            body: body.as_str(),
                        };
                        match runner
                            .on_client_message(
                                self.registry.runtime(),
                                &self.rules,
                                tenant,
                                module,
                                &message,
                            )
                            .await
                        {
                            Ok(ClientVerdict::Accept) => ClientOutcome::Accept(body),
                            Ok(ClientVerdict::Replace(b)) => match JsonBody::from_string(b) {
                                Ok(b) => ClientOutcome::Accept(b),
                                Err(e) => ClientOutcome::Reject(format!(
                                    "guest produced invalid JSON: {e}"
                                )),
                            },
                            Ok(ClientVerdict::Reject(reason)) => ClientOutcome::Reject(reason),
                            Err(f) => ClientOutcome::Reject(format!("guest failed ({})", f.kind)),
                        }
                    }
                    Lookup::NotLoaded => ClientOutcome::Reject(NOT_LOADED.into()),
                    _ => ClientOutcome::Accept(body),
                };
                let _ = reply.send(outcome);
            }
            Job::Authorize {
                topics,
                can_publish,
                claims,
                reply,
            } => {
                let answer = match lookup {
                    Lookup::Guest(module) if module.has_authorizer() => {
                        let connection = ConnectionRef {
                            tenant: tenant.as_str(),
                            topics,
                            can_publish,
                            claims: &claims,
                        };
                        runner
                            .authorize(
                                self.registry.runtime(),
                                &self.rules,
                                tenant,
                                module,
                                &connection,
                            )
                            .await
                            .unwrap_or_else(|f| {
                                Authorization::Deny(format!("guest failed ({})", f.kind))
                            })
                    }
                    Lookup::NotLoaded => self.not_loaded_authorization(),
                    _ => Authorization::Allow,
                };
                let _ = reply.send(answer);
            }
        }
    }

    /// What a notification whose guest produced nothing usable becomes.
    fn on_failure(&self, n: &Notify, kind: &'static str, detail: String) -> Outcome {
        match self.rules.policy {
            FailurePolicy::Closed => Outcome::Rejected(kind, detail),
            FailurePolicy::Open => Outcome::Deliver(vec![n.original()]),
        }
    }
}

/// Drains one lane: its jobs one after another, until none is left or the lane changed class (quick
/// or slow) and must move to the other threads. Exactly one per lane runs.
async fn drain(inner: Arc<Inner>, lane: Arc<Lane>, on_slow: bool) {
    let runner = lane.lock().runner.take();
    let mut draining = Draining {
        runner,
        inner,
        lane,
        batch: Batch::default(),
    };
    loop {
        let job = draining.lane.lock().jobs.pop_front();
        let Some(job) = job else { break };
        let runner = draining
            .runner
            .get_or_insert_with(|| Runner::new(draining.inner.scheduling.budget_per_sec));
        if let Some(until) = runner.throttled_until(&draining.lane.tenant) {
            // What is gathered must not wait out the pause.
            draining.inner.deliverer.publish(&mut draining.batch);
            tokio::time::sleep_until(until.into()).await;
        }
        draining
            .inner
            .run(&draining.lane, runner, job, &mut draining.batch)
            .await;
        let slow = runner.slow;
        let more = {
            let mut state = draining.lane.lock();
            state.slow = slow;
            !state.jobs.is_empty()
        };
        // Messages that arrived together leave together, one write per subscriber.
        if !more || draining.batch.is_full() {
            draining.inner.deliverer.publish(&mut draining.batch);
        }
        if slow != on_slow {
            // `Draining` hands the rest of the queue to a task on the right threads.
            break;
        }
    }
}

/// Gives the lane back when its task ends — normally, or by panic or runtime shutdown — and starts
/// another task if jobs arrived after the last look.
struct Draining {
    inner: Arc<Inner>,
    lane: Arc<Lane>,
    runner: Option<Runner>,
    /// Deliveries not yet fanned out; they leave before the lane is given back.
    batch: Batch,
}

impl Drop for Draining {
    fn drop(&mut self) {
        self.inner.deliverer.publish(&mut self.batch);
        let mut state = self.lane.lock();
        state.runner = self.runner.take();
        state.idle_since = Instant::now();
        if state.jobs.is_empty() {
            state.running = false;
            state.overflowing = false;
        } else {
            let slow = state.slow;
            drop(state);
            // Not during shutdown: the runtimes are going, and the jobs with them.
            if tokio::runtime::Handle::try_current().is_ok() {
                self.inner.threads.handle(slow).spawn(drain(
                    self.inner.clone(),
                    self.lane.clone(),
                    slow,
                ));
            }
        }
    }
}

/// Drops the warm instances of tenants that have been quiet for [`WARM_FOR`], and forgets the lanes
/// of tenants quiet for [`FORGET_AFTER`] with no session.
async fn cool_down(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(WARM_FOR / 2);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        // Looked at without the map's lock, so dispatching never waits on this sweep.
        let lanes: Vec<Arc<Lane>> = inner
            .lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let now = Instant::now();
        let mut quiet = Vec::new();
        for lane in lanes {
            let mut state = lane.lock();
            if !state.running && now.duration_since(state.idle_since) >= WARM_FOR {
                if let Some(runner) = state.runner.as_mut() {
                    runner.cool();
                }
            }
            if state.forgettable(now) {
                quiet.push(lane.clone());
            }
        }
        quiet.retain(|lane| inner.deliverer.hub.subscribers(&lane.tenant) == 0);
        if quiet.is_empty() {
            continue;
        }
        let mut lanes = inner.lanes.lock().unwrap_or_else(|e| e.into_inner());
        for lane in quiet {
            let mut state = lane.lock();
            // Checked again under the lock: a job may have come since.
            if state.forgettable(now) {
                state.forgotten = true;
                lanes.remove(&lane.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(running: bool, jobs: usize, quiet_for: Duration) -> (LaneState, Instant) {
        let idle_since = Instant::now();
        let mut state = LaneState {
            jobs: VecDeque::new(),
            running,
            runner: None,
            overflowing: false,
            slow: false,
            idle_since,
            forgotten: false,
        };
        for _ in 0..jobs {
            let (reply, _) = oneshot::channel();
            state.jobs.push_back(Job::Authorize {
                topics: Vec::new(),
                can_publish: false,
                claims: String::new(),
                reply,
            });
        }
        (state, idle_since + quiet_for)
    }

    #[test]
    fn only_quiet_idle_lanes_are_forgotten() {
        let (s, now) = state(false, 0, FORGET_AFTER);
        assert!(s.forgettable(now));
        let (s, now) = state(false, 0, FORGET_AFTER / 2);
        assert!(!s.forgettable(now), "not quiet long enough");
        let (s, now) = state(true, 0, FORGET_AFTER);
        assert!(!s.forgettable(now), "a task is running");
        let (s, now) = state(false, 1, FORGET_AFTER);
        assert!(!s.forgettable(now), "a job waits");
    }
}
