//! From a guest's verdict to deliveries: check what the guest produced, number the tenant's
//! deliveries, and gather them into batches the hub fans out together (`/ws` sessions and socket.io
//! sockets alike).
//!
//! Owns [`Notify`] (a notification on its way), [`Outcome`] (what became of it), the one function
//! that turns a [`Verdict`] into an outcome, and the counting of messages that were not delivered.
//! It does not run guests (`workers`) or know sockets (`hub`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::envelope::{JsonBody, TenantId, Topic};
use crate::guest::{NotificationRef, Verdict};
use crate::hub::{Audience, Delivery, Hub};
use crate::metrics as m;

/// A notification on its way to one tenant's subscribers.
pub struct Notify {
    pub tenant: TenantId,
    pub topic: Option<Topic>,
    pub body: JsonBody,
    pub channel: Arc<str>,
    pub received: Instant,
    pub audience: Audience,
}

impl Notify {
    /// The notification unchanged, as one delivery.
    pub fn original(&self) -> (Option<Topic>, JsonBody) {
        (self.topic.clone(), self.body.clone())
    }

    /// How the guest sees it.
    pub fn as_guest_input(&self) -> NotificationRef<'_> {
        NotificationRef {
            tenant: self.tenant.as_str(),
            topic: self.topic.as_ref().map(Topic::as_str),
            channel: &self.channel,
            body: self.body.as_str(),
        }
    }
}

/// What became of one notification.
#[derive(Debug)]
pub enum Outcome {
    Deliver(Vec<(Option<Topic>, JsonBody)>),
    Dropped,
    /// Not delivered: a reason label (metrics) and a detail (log).
    Rejected(&'static str, String),
}

impl Outcome {
    /// The `outcome` label of `pgws_guest_calls_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Deliver(_) => "delivered",
            Outcome::Dropped => "dropped",
            Outcome::Rejected(..) => "rejected",
        }
    }
}

/// Turns a verdict into deliveries, checking every topic name and body the guest produced.
pub fn apply(verdict: Verdict, n: &Notify) -> Outcome {
    match verdict {
        Verdict::Forward => Outcome::Deliver(vec![n.original()]),
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

/// One tenant's delivery stream: its sequence numbers and its per-tenant counters, looked up once
/// rather than with a new label string per message.
pub struct TenantStream {
    /// Last sequence number given to this tenant's deliveries.
    seq: AtomicU64,
    published: metrics::Counter,
    dropped: metrics::Counter,
}

impl TenantStream {
    pub fn new(tenant: &TenantId) -> Self {
        TenantStream {
            seq: AtomicU64::new(0),
            published: metrics::counter!(m::MESSAGES_PUBLISHED, "tenant" => tenant.to_string()),
            dropped: metrics::counter!(m::MESSAGES_DROPPED, "tenant" => tenant.to_string()),
        }
    }
}

/// Most deliveries gathered before they are fanned out: bounds how long the first waits.
const MAX_BATCH: usize = 256;

/// Deliveries gathered from notifications that arrived together, fanned out in one pass so each
/// subscriber gets them in one write.
#[derive(Default)]
pub struct Batch {
    deliveries: Vec<Delivery>,
}

impl Batch {
    pub fn is_full(&self) -> bool {
        self.deliveries.len() >= MAX_BATCH
    }
}

/// Where deliveries end up: the hub.
#[derive(Clone)]
pub struct Deliverer {
    pub hub: Arc<Hub>,
}

impl Deliverer {
    /// Adds the deliveries of one notification's outcome to `batch`, or counts why there are none.
    /// The caller guarantees one delivering thread per tenant stream at a time, so sequence numbers
    /// follow delivery order.
    pub fn finish(&self, stream: &TenantStream, n: &Notify, outcome: Outcome, batch: &mut Batch) {
        let messages = match outcome {
            Outcome::Deliver(messages) => messages,
            Outcome::Dropped => {
                stream.dropped.increment(1);
                return;
            }
            Outcome::Rejected(reason, detail) => {
                metrics::counter!(m::NOTIFICATIONS_REJECTED, "reason" => reason).increment(1);
                tracing::warn!(tenant = %n.tenant, reason, detail = %detail, "message rejected");
                return;
            }
        };
        for (topic, body) in messages {
            let delivery = match n.audience {
                Audience::Sessions => Delivery {
                    tenant: n.tenant.clone(),
                    audience: Audience::Sessions,
                    topic,
                    seq: stream.seq.fetch_add(1, Ordering::Relaxed) + 1,
                    id: uuid::Uuid::new_v4(),
                    channel: n.channel.clone(),
                    body,
                },
                // A guest's `route` verdict sends each body on the route's topic taken as a
                // channel name.
                Audience::SocketIo => Delivery {
                    tenant: n.tenant.clone(),
                    audience: Audience::SocketIo,
                    channel: topic
                        .as_ref()
                        .map_or_else(|| n.channel.clone(), |t| Arc::from(t.as_str())),
                    topic,
                    seq: 0,
                    id: uuid::Uuid::nil(),
                    body,
                },
            };
            batch.deliveries.push(delivery);
        }
        stream.published.increment(1);
        metrics::histogram!(m::LISTENER_LAG).record(n.received.elapsed().as_secs_f64());
    }

    /// Fans out everything in `batch` and empties it.
    pub fn publish(&self, batch: &mut Batch) {
        if !batch.deliveries.is_empty() {
            self.hub.publish(&batch.deliveries);
            batch.deliveries.clear();
        }
    }
}
