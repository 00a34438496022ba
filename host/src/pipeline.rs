//! From listener events to hub deliveries: parse, run the tenant's guest, publish.
//!
//! Owns the guest worker threads. Each tenant is pinned to one worker (by hash), so its messages are
//! handled one at a time in the order Postgres delivered them, and each worker owns its tenants' warm
//! instances without locks. A guest runs once per message per tenant, never per client. This module
//! applies the failure policy (fail closed by default, isolate a guest that keeps failing); it does not
//! know about sockets or subscribers beyond [`Hub::publish`].

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::FailurePolicy;
use crate::envelope::{Envelope, JsonBody, TenantId, Topic};
use crate::guest::{
    CallFailure, GuestInstance, GuestModule, GuestRegistry, NotificationRef, Verdict,
};
use crate::hub::{Delivery, Hub};
use crate::listener::ListenerEvent;
use crate::metrics as m;

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

struct Job {
    envelope: Envelope,
    channel: Arc<str>,
    received: Instant,
}

/// Starts the workers and the dispatcher; returns when `events` closes and every worker has finished.
pub async fn run(
    mut events: mpsc::Receiver<ListenerEvent>,
    registry: Option<Arc<GuestRegistry>>,
    hub: Arc<Hub>,
    rules: FailureRules,
    threads: usize,
) {
    let mut shards = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for i in 0..threads.max(1) {
        let (tx, rx) = mpsc::channel::<Job>(WORKER_QUEUE);
        let worker = Worker {
            jobs: rx,
            registry: registry.clone(),
            hub: hub.clone(),
            rules: rules.clone(),
            tenants: HashMap::new(),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("pgws-guest-{i}"))
            .spawn(move || worker.run());
        match spawned {
            Ok(handle) => {
                shards.push(tx);
                handles.push(handle);
            }
            Err(e) => tracing::error!(error = %e, "could not start a guest worker thread"),
        }
    }
    if shards.is_empty() {
        tracing::error!("no guest worker could start; no message will be delivered");
        return;
    }

    while let Some(event) = events.recv().await {
        match event {
            ListenerEvent::Notification { channel, payload } => {
                let received = Instant::now();
                match Envelope::parse(&payload) {
                    Ok(envelope) => {
                        let shard = &shards[shard_of(&envelope.tenant, shards.len())];
                        let job = Job {
                            envelope,
                            channel,
                            received,
                        };
                        if shard.send(job).await.is_err() {
                            tracing::error!("a guest worker stopped; shutting the pipeline down");
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
    drop(shards);
    for handle in handles {
        let _ = tokio::task::spawn_blocking(move || handle.join()).await;
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
struct TenantSlot {
    /// Next sequence number for this tenant's deliveries.
    seq: u64,
    guest: Option<GuestSlot>,
}

struct GuestSlot {
    module: Arc<GuestModule>,
    /// `None` after a failure that leaves the instance unusable; rebuilt on the next call.
    instance: Option<GuestInstance>,
    failures: u32,
    isolated_until: Option<Instant>,
}

struct Worker {
    jobs: mpsc::Receiver<Job>,
    registry: Option<Arc<GuestRegistry>>,
    hub: Arc<Hub>,
    rules: FailureRules,
    tenants: HashMap<TenantId, TenantSlot>,
}

/// What the guest step produced.
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
        let tenant = job.envelope.tenant.clone();
        let module = self.registry.as_ref().and_then(|r| r.lookup(&tenant));
        let slot = match self.tenants.entry(tenant.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(TenantSlot {
                seq: 0,
                guest: None,
            }),
        };
        let outcome = match module {
            None => {
                slot.guest = None;
                Outcome::Deliver(vec![(
                    job.envelope.topic.clone(),
                    job.envelope.body.clone(),
                )])
            }
            Some(module) => {
                let registry = self.registry.as_deref();
                run_guest(slot, module, registry, &self.rules, &job)
            }
        };
        match outcome {
            Outcome::Deliver(messages) => {
                for (topic, body) in messages {
                    slot.seq += 1;
                    let delivery = Delivery {
                        tenant: tenant.clone(),
                        topic,
                        seq: slot.seq,
                        channel: job.channel.clone(),
                        body,
                    };
                    self.hub.publish(&delivery);
                }
                metrics::counter!(m::MESSAGES_PUBLISHED).increment(1);
                metrics::histogram!(m::LISTENER_LAG).record(job.received.elapsed().as_secs_f64());
            }
            Outcome::Dropped => {
                metrics::counter!(m::MESSAGES_DROPPED, "tenant" => tenant.to_string()).increment(1);
            }
            Outcome::Rejected(reason, detail) => {
                metrics::counter!(m::NOTIFICATIONS_REJECTED, "reason" => reason).increment(1);
                tracing::warn!(%tenant, reason, detail = %detail, "message rejected");
            }
        }
    }
}

fn run_guest(
    slot: &mut TenantSlot,
    module: Arc<GuestModule>,
    registry: Option<&GuestRegistry>,
    rules: &FailureRules,
    job: &Job,
) -> Outcome {
    let Some(registry) = registry else {
        return Outcome::Rejected("guest_missing", "no guest registry".into());
    };
    let tenant = &job.envelope.tenant;
    let guest = match &mut slot.guest {
        Some(g) if Arc::ptr_eq(&g.module, &module) => g,
        other => other.insert(GuestSlot {
            module,
            instance: None,
            failures: 0,
            isolated_until: None,
        }),
    };
    if let Some(until) = guest.isolated_until {
        if Instant::now() < until {
            return fail(
                rules,
                job,
                "guest_isolated",
                "guest is isolated after repeated failures".into(),
            );
        }
        guest.isolated_until = None;
        guest.failures = 0;
        tracing::info!(%tenant, "isolation over; trying the guest again");
    }
    let runtime = registry.runtime();
    let started = Instant::now();
    let result = match &mut guest.instance {
        Some(instance) => call(instance, runtime, job),
        None => match GuestInstance::new(runtime, &guest.module, tenant.as_str()) {
            Ok(instance) => call(guest.instance.insert(instance), runtime, job),
            Err(e) => Err(CallFailure::Instantiate(format!("{e:#}"))),
        },
    };
    metrics::histogram!(m::GUEST_CALL_SECONDS).record(started.elapsed().as_secs_f64());
    let verdict = match result {
        Ok(v) => {
            guest.failures = 0;
            v
        }
        Err(failure) => {
            if failure.poisons_instance() {
                guest.instance = None;
            }
            guest.failures += 1;
            metrics::counter!(m::GUEST_FAILURES, "tenant" => tenant.to_string(), "kind" => failure.kind())
                .increment(1);
            tracing::error!(
                %tenant,
                version = %guest.module.version,
                kind = failure.kind(),
                error = %failure,
                "guest call failed"
            );
            if guest.failures >= rules.max_failures {
                guest.isolated_until = Some(Instant::now() + rules.isolation);
                tracing::error!(
                    %tenant,
                    failures = guest.failures,
                    isolation = ?rules.isolation,
                    "guest isolated after repeated failures"
                );
            }
            return fail(rules, job, failure.kind(), failure.to_string());
        }
    };
    let outcome = apply(verdict, job);
    let label = match &outcome {
        Outcome::Deliver(_) => "delivered",
        Outcome::Dropped => "dropped",
        Outcome::Rejected(..) => "rejected",
    };
    metrics::counter!(m::GUEST_CALLS, "tenant" => tenant.to_string(), "outcome" => label)
        .increment(1);
    outcome
}

fn call(
    instance: &mut GuestInstance,
    runtime: &crate::guest::GuestRuntime,
    job: &Job,
) -> Result<Verdict, CallFailure> {
    let e = &job.envelope;
    let n = NotificationRef {
        tenant: e.tenant.as_str(),
        topic: e.topic.as_ref().map(Topic::as_str),
        channel: &job.channel,
        body: e.body.as_str(),
    };
    instance.on_notify(runtime, &n)
}

/// What a failed call means for its message, per the failure policy.
fn fail(rules: &FailureRules, job: &Job, reason: &'static str, detail: String) -> Outcome {
    match rules.policy {
        FailurePolicy::Closed => Outcome::Rejected(reason, detail),
        FailurePolicy::Open => Outcome::Deliver(vec![(
            job.envelope.topic.clone(),
            job.envelope.body.clone(),
        )]),
    }
}

/// Turns a verdict into deliveries, checking every topic name and body the guest produced.
fn apply(verdict: Verdict, job: &Job) -> Outcome {
    let original = || (job.envelope.topic.clone(), job.envelope.body.clone());
    match verdict {
        Verdict::Forward => Outcome::Deliver(vec![original()]),
        Verdict::Drop => Outcome::Dropped,
        Verdict::Reject(reason) => Outcome::Rejected("guest_rejected", reason),
        Verdict::Replace(body) => match JsonBody::from_string(body) {
            Ok(body) => Outcome::Deliver(vec![(job.envelope.topic.clone(), body)]),
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
                    None => job.envelope.body.clone(),
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
