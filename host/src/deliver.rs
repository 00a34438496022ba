//! From a guest's verdict to deliveries: check what the guest produced, number the tenant's
//! deliveries, and hand them to the hub (`/ws` sessions) or to socket.io rooms.
//!
//! Owns [`Notify`] (a notification on its way), [`Outcome`] (what became of it), the one function
//! that turns a [`Verdict`] into an outcome, and the counting of messages that were not delivered.
//! It does not run guests (`workers`) or know sockets (`hub`, `rooms`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::envelope::{JsonBody, TenantId, Topic};
use crate::guest::{NotificationRef, Verdict};
use crate::hub::{Delivery, Hub};
use crate::metrics as m;
use crate::rooms::Rooms;

/// Where a notification's deliveries go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// WebSocket sessions of the tenant, by topic (envelope channels).
    Hub,
    /// socket.io sockets of the tenant subscribed to the channel.
    Rooms,
}

/// A notification on its way to one tenant's subscribers.
pub struct Notify {
    pub tenant: TenantId,
    pub topic: Option<Topic>,
    pub body: JsonBody,
    pub channel: Arc<str>,
    pub received: Instant,
    pub target: Target,
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

/// Where deliveries end up: the hub for `/ws` sessions, rooms for socket.io.
#[derive(Clone)]
pub struct Deliverer {
    pub hub: Arc<Hub>,
    pub rooms: Rooms,
}

impl Deliverer {
    /// Delivers or counts the outcome of one notification. The caller guarantees one delivering
    /// thread per tenant stream at a time, so sequence numbers follow delivery order.
    pub fn finish(&self, stream: &TenantStream, n: &Notify, outcome: Outcome) {
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
            match n.target {
                Target::Hub => {
                    let delivery = Delivery {
                        tenant: n.tenant.clone(),
                        topic,
                        seq: stream.seq.fetch_add(1, Ordering::Relaxed) + 1,
                        channel: n.channel.clone(),
                        body,
                    };
                    self.hub.publish(&delivery);
                }
                // A guest's `route` verdict sends each body on the route's topic taken as a
                // channel name.
                Target::Rooms => {
                    let channel = topic.as_ref().map_or(&*n.channel, Topic::as_str);
                    self.rooms.deliver(&n.tenant, channel, &body);
                }
            }
        }
        stream.published.increment(1);
        metrics::histogram!(m::LISTENER_LAG).record(n.received.elapsed().as_secs_f64());
    }
}
