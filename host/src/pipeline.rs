//! From listener events to deliveries: parse, run the tenant's guest, publish to the hub (WebSocket
//! sessions) or to socket.io rooms.
//!
//! A NOTIFY on an envelope channel names its tenant in the payload. A NOTIFY on a channel socket.io
//! clients subscribed to by name goes to every tenant with a subscriber there, through each tenant's
//! own guest, once per tenant.
//!
//! Owns the guest worker threads. Each tenant is pinned to one worker (by hash), so its messages are
//! handled one at a time in the order Postgres delivered them, and each worker owns its tenants' warm
//! instances without locks. A guest runs once per message per tenant, never per client. Sessions reach
//! the same workers (through [`Workers`]) for the guest's client-message and authorize hooks, so every
//! call into a tenant's guest happens on one thread. This module applies the failure policy (fail
//! closed by default, isolate a guest that keeps failing); it does not know about sockets or
//! subscribers beyond [`Hub::publish`] and [`Rooms::deliver`].

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::auth::Identity;
use crate::channels::Channels;
use crate::config::FailurePolicy;
use crate::envelope::{Envelope, JsonBody, TenantId, Topic};
use crate::guest::{
    Authorization, CallFailure, ClientMessageRef, ClientVerdict, ConnectionRef, GuestInstance,
    GuestModule, GuestRegistry, GuestRuntime, NotificationRef, Verdict,
};
use crate::hub::{Delivery, Hub};
use crate::listener::ListenerEvent;
use crate::metrics as m;
use crate::socketio::{self, Rooms};

/// Messages waiting for one worker. Bounded so a stalled guest pushes back on the listener (and from
/// there on Postgres' own queue) instead of growing memory.
const WORKER_QUEUE: usize = 8192;

/// How guest failures are handled.
#[derive(Debug, Clone)]
pub struct FailureRules {
    pub policy: FailurePolicy,
    /// Failures in a row after which a guest is isolated.
    pub max_failures: u32,
    /// How long an isolated guest is left alone.
    pub isolation: Duration,
}

/// Where a notification's deliveries go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// WebSocket sessions of the tenant, by topic (envelope channels).
    Hub,
    /// socket.io sockets of the tenant subscribed to the channel.
    Rooms,
}

/// A notification on its way through a worker.
struct Notify {
    tenant: TenantId,
    topic: Option<Topic>,
    body: JsonBody,
    channel: Arc<str>,
    received: Instant,
    target: Target,
}

/// Work for a guest worker. Every variant concerns one tenant, which picks the worker.
enum Job {
    Notify(Notify),
    ClientMessage {
        tenant: TenantId,
        topic: Option<Topic>,
        body: JsonBody,
        reply: oneshot::Sender<ClientOutcome>,
    },
    Authorize {
        tenant: TenantId,
        topics: Vec<String>,
        can_publish: bool,
        claims: String,
        reply: oneshot::Sender<Authorization>,
    },
}

impl Job {
    fn tenant(&self) -> &TenantId {
        match self {
            Job::Notify(n) => &n.tenant,
            Job::ClientMessage { tenant, .. } | Job::Authorize { tenant, .. } => tenant,
        }
    }
}

/// What becomes of a message a client published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutcome {
    /// Send this body to Postgres (the original, or the guest's replacement).
    Accept(JsonBody),
    /// Refused, with a reason for the client.
    Reject(String),
}

/// Handle on the guest workers, for the dispatcher and for sessions.
#[derive(Clone)]
pub struct Workers {
    shards: Arc<[mpsc::Sender<Job>]>,
}

impl Workers {
    /// Starts `threads` workers. They stop when the last handle is dropped.
    pub fn start(
        registry: Arc<GuestRegistry>,
        hub: Arc<Hub>,
        rooms: Rooms,
        rules: FailureRules,
        threads: usize,
    ) -> std::io::Result<Workers> {
        let mut shards = Vec::with_capacity(threads.max(1));
        for i in 0..threads.max(1) {
            let (tx, rx) = mpsc::channel::<Job>(WORKER_QUEUE);
            let worker = Worker {
                jobs: rx,
                registry: registry.clone(),
                hub: hub.clone(),
                rooms: rooms.clone(),
                rules: rules.clone(),
                tenants: HashMap::new(),
            };
            std::thread::Builder::new()
                .name(format!("pgws-guest-{i}"))
                .spawn(move || worker.run())?;
            shards.push(tx);
        }
        Ok(Workers {
            shards: shards.into(),
        })
    }

    async fn send(&self, job: Job) -> bool {
        let shard = &self.shards[shard_of(job.tenant(), self.shards.len())];
        shard.send(job).await.is_ok()
    }

    /// Sends a job that answers on a oneshot, and waits for the answer; `gone` if the workers stop.
    async fn ask<R>(&self, job: impl FnOnce(oneshot::Sender<R>) -> Job, gone: impl Fn() -> R) -> R {
        let (reply, answer) = oneshot::channel();
        if !self.send(job(reply)).await {
            return gone();
        }
        answer.await.unwrap_or_else(|_| gone())
    }

    /// Runs a client's message through its tenant's guest (if it has a client-message hook).
    pub async fn client_message(
        &self,
        tenant: &TenantId,
        topic: Option<Topic>,
        body: JsonBody,
    ) -> ClientOutcome {
        let job = |reply| Job::ClientMessage {
            tenant: tenant.clone(),
            topic,
            body,
            reply,
        };
        self.ask(job, || {
            ClientOutcome::Reject("server is shutting down".into())
        })
        .await
    }

    /// Asks the tenant's guest (if it has an authorize hook) whether a connection may proceed.
    /// `grants` are what the connection may read: topic patterns on `/ws`, channel patterns on
    /// socket.io.
    pub async fn authorize(&self, identity: &Identity, grants: Vec<String>) -> Authorization {
        let job = |reply| Job::Authorize {
            tenant: identity.tenant.clone(),
            topics: grants,
            can_publish: identity.can_publish,
            claims: identity.claims.clone(),
            reply,
        };
        self.ask(job, || {
            Authorization::Deny("server is shutting down".into())
        })
        .await
    }
}

/// Feeds listener events to the workers until `events` closes.
pub async fn run(
    mut events: mpsc::Receiver<ListenerEvent>,
    workers: Workers,
    hub: Arc<Hub>,
    channels: Arc<Channels>,
) {
    while let Some(event) = events.recv().await {
        match event {
            ListenerEvent::Notification { channel, payload } if !channels.is_envelope(&channel) => {
                let received = Instant::now();
                let tenants = channels.tenants(&channel);
                if tenants.is_empty() {
                    // An UNLISTEN was on its way when this arrived.
                    continue;
                }
                let body = socketio::payload_body(&payload);
                for tenant in tenants {
                    let job = Job::Notify(Notify {
                        tenant,
                        topic: None,
                        body: body.clone(),
                        channel: channel.clone(),
                        received,
                        target: Target::Rooms,
                    });
                    if !workers.send(job).await {
                        tracing::error!("guest workers stopped; shutting the pipeline down");
                        return;
                    }
                }
            }
            ListenerEvent::Notification { channel, payload } => {
                let received = Instant::now();
                match Envelope::parse(&payload) {
                    Ok(Envelope {
                        tenant,
                        topic,
                        body,
                    }) => {
                        let job = Job::Notify(Notify {
                            tenant,
                            topic,
                            body,
                            channel,
                            received,
                            target: Target::Hub,
                        });
                        if !workers.send(job).await {
                            tracing::error!("guest workers stopped; shutting the pipeline down");
                            break;
                        }
                    }
                    Err(e) => {
                        metrics::counter!(m::NOTIFICATIONS_REJECTED, "reason" => e.reason())
                            .increment(1);
                        tracing::warn!(
                            %channel,
                            reason = e.reason(),
                            error = %e,
                            payload = %preview(&payload),
                            "payload rejected"
                        );
                    }
                }
            }
            ListenerEvent::Gap => hub.gap(),
        }
    }
}

fn shard_of(tenant: &TenantId, shards: usize) -> usize {
    let mut h = DefaultHasher::new();
    tenant.hash(&mut h);
    (h.finish() % shards as u64) as usize
}

/// The first bytes of a bad payload, for the log.
fn preview(payload: &str) -> &str {
    let mut end = payload.len().min(120);
    while !payload.is_char_boundary(end) {
        end -= 1;
    }
    &payload[..end]
}

/// A guest worker's memory of one tenant.
#[derive(Default)]
struct TenantSlot {
    /// Last sequence number given to this tenant's deliveries.
    seq: u64,
    guest: Option<GuestSlot>,
}

/// One tenant's guest as seen by its worker: the module, a warm instance, and its failure record.
struct GuestSlot {
    module: Arc<GuestModule>,
    /// `pgws_guest_calls_total{tenant, outcome}` for delivered, dropped, rejected: looked up once
    /// rather than with a new label string per message.
    outcomes: [metrics::Counter; 3],
    /// `None` after a failure that leaves the instance unusable; rebuilt on the next call.
    instance: Option<GuestInstance>,
    failures: u32,
    isolated_until: Option<Instant>,
}

/// A guest call that produced nothing usable; its message follows the failure policy.
struct Failed {
    kind: &'static str,
    detail: String,
}

impl GuestSlot {
    fn new(module: Arc<GuestModule>, tenant: &TenantId) -> Self {
        let outcome = |label: &'static str| metrics::counter!(m::GUEST_CALLS, "tenant" => tenant.to_string(), "outcome" => label);
        GuestSlot {
            outcomes: [
                outcome("delivered"),
                outcome("dropped"),
                outcome("rejected"),
            ],
            module,
            instance: None,
            failures: 0,
            isolated_until: None,
        }
    }

    /// Runs `call` on a warm instance, with the isolation rule, failure accounting and logging that
    /// every hook shares.
    fn call<R>(
        &mut self,
        runtime: &GuestRuntime,
        rules: &FailureRules,
        tenant: &TenantId,
        call: impl FnOnce(&mut GuestInstance, &GuestRuntime) -> Result<R, CallFailure>,
    ) -> Result<R, Failed> {
        if let Some(until) = self.isolated_until {
            if Instant::now() < until {
                return Err(Failed {
                    kind: "guest_isolated",
                    detail: "guest is isolated after repeated failures".into(),
                });
            }
            self.isolated_until = None;
            self.failures = 0;
            tracing::info!(%tenant, "isolation over; trying the guest again");
        }
        let started = Instant::now();
        let result = match &mut self.instance {
            Some(instance) => call(instance, runtime),
            None => match GuestInstance::new(runtime, &self.module, tenant.as_str()) {
                Ok(instance) => call(self.instance.insert(instance), runtime),
                Err(e) => Err(CallFailure::Instantiate(format!("{e:#}"))),
            },
        };
        metrics::histogram!(m::GUEST_CALL_SECONDS).record(started.elapsed().as_secs_f64());
        let failure = match result {
            Ok(r) => {
                self.failures = 0;
                return Ok(r);
            }
            Err(failure) => failure,
        };
        if failure.poisons_instance() {
            self.instance = None;
        }
        crate::guest::count_failure(&self.module);
        self.failures += 1;
        metrics::counter!(m::GUEST_FAILURES, "tenant" => tenant.to_string(), "kind" => failure.kind())
            .increment(1);
        tracing::error!(
            %tenant,
            version = %self.module.version,
            kind = failure.kind(),
            error = %failure,
            "guest call failed"
        );
        if self.failures >= rules.max_failures {
            self.isolated_until = Some(Instant::now() + rules.isolation);
            tracing::error!(
                %tenant,
                failures = self.failures,
                isolation = ?rules.isolation,
                "guest isolated after repeated failures"
            );
        }
        Err(Failed {
            kind: failure.kind(),
            detail: failure.to_string(),
        })
    }
}

struct Worker {
    jobs: mpsc::Receiver<Job>,
    registry: Arc<GuestRegistry>,
    hub: Arc<Hub>,
    rooms: Rooms,
    rules: FailureRules,
    tenants: HashMap<TenantId, TenantSlot>,
}

/// What the notify step produced.
enum Outcome {
    Deliver(Vec<(Option<Topic>, JsonBody)>),
    Dropped,
    Rejected(&'static str, String),
}

impl Worker {
    fn run(mut self) {
        while let Some(job) = self.jobs.blocking_recv() {
            self.handle(job);
        }
    }

    fn handle(&mut self, job: Job) {
        let tenant = job.tenant().clone();
        let module = self.registry.lookup(&tenant);
        let slot = self.tenants.entry(tenant.clone()).or_default();
        // The registry is the truth: a slot whose module was replaced or removed starts afresh, so
        // the next message after a swap runs on the new module.
        let guest = match (module, &mut slot.guest) {
            (None, g) => {
                *g = None;
                None
            }
            (Some(module), Some(g)) if Arc::ptr_eq(&g.module, &module) => Some(g),
            (Some(module), g) => Some(g.insert(GuestSlot::new(module, &tenant))),
        };
        let runtime = self.registry.runtime();
        let guest = guest.map(|g| (g, runtime));
        let rules = &self.rules;
        match job {
            Job::Notify(n) => {
                let outcome = match guest {
                    None => Outcome::Deliver(vec![original(&n)]),
                    Some((g, runtime)) => {
                        let call = g.call(runtime, rules, &tenant, |i, r| {
                            i.on_notify(r, &notification(&n))
                        });
                        match call {
                            Ok(verdict) => {
                                let outcome = apply(verdict, &n);
                                let index = match &outcome {
                                    Outcome::Deliver(_) => 0,
                                    Outcome::Dropped => 1,
                                    Outcome::Rejected(..) => 2,
                                };
                                g.outcomes[index].increment(1);
                                outcome
                            }
                            Err(f) => match rules.policy {
                                FailurePolicy::Closed => Outcome::Rejected(f.kind, f.detail),
                                FailurePolicy::Open => Outcome::Deliver(vec![original(&n)]),
                            },
                        }
                    }
                };
                match n.target {
                    Target::Hub => finish(&self.hub, &mut slot.seq, &tenant, &n, outcome),
                    Target::Rooms => finish_rooms(&self.rooms, &tenant, &n, outcome),
                }
            }
            Job::ClientMessage {
                topic, body, reply, ..
            } => {
                let outcome = match guest {
                    Some((g, runtime)) if g.module.has_client_handler() => {
                        let message = ClientMessageRef {
                            tenant: tenant.as_str(),
                            topic: topic.as_ref().map(Topic::as_str),
                            body: body.as_str(),
                        };
                        match g.call(runtime, rules, &tenant, |i, r| {
                            i.on_client_message(r, &message)
                        }) {
                            Ok(ClientVerdict::Accept) => ClientOutcome::Accept(body),
                            Ok(ClientVerdict::Replace(b)) => match JsonBody::from_string(b) {
                                Ok(b) => ClientOutcome::Accept(b),
                                Err(e) => ClientOutcome::Reject(format!(
                                    "guest produced invalid JSON: {e}"
                                )),
                            },
                            Ok(ClientVerdict::Reject(reason)) => ClientOutcome::Reject(reason),
                            // Client messages always fail closed: nothing unchecked reaches Postgres.
                            Err(f) => ClientOutcome::Reject(format!("guest failed ({})", f.kind)),
                        }
                    }
                    _ => ClientOutcome::Accept(body),
                };
                let _ = reply.send(outcome);
            }
            Job::Authorize {
                topics,
                can_publish,
                claims,
                reply,
                ..
            } => {
                let answer = match guest {
                    Some((g, runtime)) if g.module.has_authorizer() => {
                        let connection = ConnectionRef {
                            tenant: tenant.as_str(),
                            topics,
                            can_publish,
                            claims: &claims,
                        };
                        g.call(runtime, rules, &tenant, |i, r| i.authorize(r, &connection))
                            .unwrap_or_else(|f| {
                                Authorization::Deny(format!("guest failed ({})", f.kind))
                            })
                    }
                    _ => Authorization::Allow,
                };
                let _ = reply.send(answer);
            }
        }
    }
}

/// Publishes or counts the outcome of one notification.
fn finish(hub: &Hub, seq: &mut u64, tenant: &TenantId, n: &Notify, outcome: Outcome) {
    match outcome {
        Outcome::Deliver(messages) => {
            for (topic, body) in messages {
                *seq += 1;
                let delivery = Delivery {
                    tenant: tenant.clone(),
                    topic,
                    seq: *seq,
                    channel: n.channel.clone(),
                    body,
                };
                hub.publish(&delivery);
            }
            metrics::counter!(m::MESSAGES_PUBLISHED).increment(1);
            metrics::histogram!(m::LISTENER_LAG).record(n.received.elapsed().as_secs_f64());
        }
        other => count_undelivered(tenant, other),
    }
}

/// Emits the outcome of one notification to socket.io rooms. The event goes out on the channel it
/// arrived on; a guest's `route` verdict sends each body on the route's topic taken as a channel name.
fn finish_rooms(rooms: &Rooms, tenant: &TenantId, n: &Notify, outcome: Outcome) {
    match outcome {
        Outcome::Deliver(messages) => {
            for (topic, body) in messages {
                let channel = topic.as_ref().map_or(&*n.channel, Topic::as_str);
                rooms.deliver(tenant, channel, &body);
            }
            metrics::counter!(m::MESSAGES_PUBLISHED).increment(1);
            metrics::histogram!(m::LISTENER_LAG).record(n.received.elapsed().as_secs_f64());
        }
        other => count_undelivered(tenant, other),
    }
}

/// Counts a notification that produced no delivery.
fn count_undelivered(tenant: &TenantId, outcome: Outcome) {
    match outcome {
        Outcome::Deliver(_) => {}
        Outcome::Dropped => {
            metrics::counter!(m::MESSAGES_DROPPED, "tenant" => tenant.to_string()).increment(1);
        }
        Outcome::Rejected(reason, detail) => {
            metrics::counter!(m::NOTIFICATIONS_REJECTED, "reason" => reason).increment(1);
            tracing::warn!(%tenant, reason, detail = %detail, "message rejected");
        }
    }
}

fn original(n: &Notify) -> (Option<Topic>, JsonBody) {
    (n.topic.clone(), n.body.clone())
}

fn notification(n: &Notify) -> NotificationRef<'_> {
    NotificationRef {
        tenant: n.tenant.as_str(),
        topic: n.topic.as_ref().map(Topic::as_str),
        channel: &n.channel,
        body: n.body.as_str(),
    }
}

/// Turns a verdict into deliveries, checking every topic name and body the guest produced.
fn apply(verdict: Verdict, n: &Notify) -> Outcome {
    match verdict {
        Verdict::Forward => Outcome::Deliver(vec![original(n)]),
        Verdict::Drop => Outcome::Dropped,
        Verdict::Reject(reason) => Outcome::Rejected("guest_rejected", reason),
        Verdict::Replace(body) => match JsonBody::from_string(body) {
            Ok(body) => Outcome::Deliver(vec![(n.topic.clone(), body)]),
            Err(e) => Outcome::Rejected("guest_invalid_output", e.to_string()),
        },
        Verdict::Route(routes) => {
            let mut out = Vec::with_capacity(routes.len());
            for (topic, body) in routes {
                let topic = match Topic::parse(&topic) {
                    Ok(t) => t,
                    Err(e) => {
                        return Outcome::Rejected(
                            "guest_invalid_output",
                            format!("route topic {topic:?}: {e}"),
                        )
                    }
                };
                let body = match body {
                    None => n.body.clone(),
                    Some(b) => match JsonBody::from_string(b) {
                        Ok(b) => b,
                        Err(e) => return Outcome::Rejected("guest_invalid_output", e.to_string()),
                    },
                };
                out.push((Some(topic), body));
            }
            Outcome::Deliver(out)
        }
    }
}
