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

use crate::envelope::{JsonBody, Position, TenantId, Topic};
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
    /// A durable message's place in its tenant's stream; `None` for a NOTIFY.
    pub position: Option<Position>,
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
    /// Notifications that reached the tenant (counted by the workers as they take them).
    pub received: metrics::Counter,
    published: metrics::Counter,
    dropped: metrics::Counter,
}

impl TenantStream {
    pub fn new(tenant: &TenantId) -> Self {
        TenantStream {
            seq: AtomicU64::new(0),
            received: metrics::counter!(m::TENANT_NOTIFICATIONS, "tenant" => tenant.to_string()),
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
            let seq = match n.audience {
                Audience::Sessions => stream.seq.fetch_add(1, Ordering::Relaxed) + 1,
                Audience::SocketIo => 0,
            };
            batch.deliveries.push(delivery(n, topic, body, seq));
        }
        stream.published.increment(1);
        metrics::histogram!(m::LISTENER_LAG).record(n.received.elapsed().as_secs_f64());
    }

    /// What a replayed message becomes for the session that missed it: its deliveries, unnumbered
    /// and uncounted (they were counted when they first went out).
    pub fn replayed(&self, n: &Notify, outcome: Outcome) -> Vec<Delivery> {
        match outcome {
            Outcome::Deliver(messages) => messages
                .into_iter()
                .map(|(topic, body)| delivery(n, topic, body, 0))
                .collect(),
            Outcome::Dropped | Outcome::Rejected(..) => Vec::new(),
        }
    }

    /// Fans out everything in `batch` and empties it.
    pub fn publish(&self, batch: &mut Batch) {
        if !batch.deliveries.is_empty() {
            self.hub.publish(&batch.deliveries);
            batch.deliveries.clear();
        }
    }
}

/// One delivery of `n`: `body` for `topic`.
fn delivery(n: &Notify, topic: Option<Topic>, body: JsonBody, seq: u64) -> Delivery {
    match n.audience {
        Audience::Sessions => Delivery {
            tenant: n.tenant.clone(),
            audience: Audience::Sessions,
            topic,
            seq,
            position: n.position.clone(),
            id: uuid::Uuid::new_v4(),
            channel: n.channel.clone(),
            body,
        },
        // A guest's `route` verdict sends each body on the route's topic taken as a channel name.
        Audience::SocketIo => Delivery {
            tenant: n.tenant.clone(),
            audience: Audience::SocketIo,
            channel: topic
                .as_ref()
                .map_or_else(|| n.channel.clone(), |t| Arc::from(t.as_str())),
            topic,
            seq: 0,
            position: None,
            id: uuid::Uuid::nil(),
            body,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notify(topic: Option<&str>, body: &str, audience: Audience) -> Notify {
        Notify {
            tenant: TenantId::parse("acme").expect("tenant"),
            topic: topic.map(|t| Topic::parse(t).expect("topic")),
            body: JsonBody::parse(body).expect("json"),
            channel: Arc::from("pgwebsocket"),
            received: Instant::now(),
            audience,
            position: None,
        }
    }

    /// (topic, body) as text.
    type Shown = Vec<(Option<String>, String)>;

    /// What an outcome delivers, as text; or its label and reason.
    fn shown(outcome: Outcome) -> Result<Shown, (&'static str, String)> {
        match outcome {
            Outcome::Deliver(messages) => Ok(messages
                .into_iter()
                .map(|(t, b)| (t.map(|t| t.as_str().to_owned()), b.as_str().to_owned()))
                .collect()),
            Outcome::Dropped => Err(("dropped", String::new())),
            Outcome::Rejected(reason, detail) => Err((reason, detail)),
        }
    }

    #[test]
    fn verdicts_become_checked_deliveries() {
        let n = notify(Some("orders"), r#"{"a":1}"#, Audience::Sessions);
        let orders = Some("orders".to_owned());
        assert_eq!(
            shown(apply(Verdict::Forward, &n)),
            Ok(vec![(orders.clone(), r#"{"a":1}"#.to_owned())])
        );
        assert_eq!(
            shown(apply(Verdict::Drop, &n)),
            Err(("dropped", String::new()))
        );
        assert_eq!(
            shown(apply(Verdict::Reject("no".into()), &n)),
            Err(("guest_rejected", "no".into()))
        );
        assert_eq!(
            shown(apply(Verdict::Replace(r#"{"b":2}"#.into()), &n)),
            Ok(vec![(orders, r#"{"b":2}"#.to_owned())]),
            "a replacement keeps the topic"
        );
        assert!(matches!(
            shown(apply(Verdict::Replace("{oops".into()), &n)),
            Err(("guest_invalid_output", _))
        ));
        assert_eq!(
            shown(apply(
                Verdict::Route(vec![("eu".into(), None), ("us".into(), Some("[1]".into()))]),
                &n
            )),
            Ok(vec![
                (Some("eu".into()), r#"{"a":1}"#.into()),
                (Some("us".into()), "[1]".into())
            ]),
            "a route without a body carries the original"
        );
        assert!(matches!(
            shown(apply(Verdict::Route(vec![("bad topic!".into(), None)]), &n)),
            Err(("guest_invalid_output", detail)) if detail.contains("bad topic!")
        ));
        assert!(matches!(
            shown(apply(
                Verdict::Route(vec![("eu".into(), Some("{".into()))]),
                &n
            )),
            Err(("guest_invalid_output", _))
        ));
    }

    #[test]
    fn sessions_get_consecutive_numbers_and_routes_to_sockets_name_channels() {
        let hub = Arc::new(Hub::new(8));
        let deliverer = Deliverer { hub };
        let stream = TenantStream::new(&TenantId::parse("acme").expect("tenant"));
        let mut batch = Batch::default();
        let n = notify(None, "1", Audience::Sessions);
        deliverer.finish(
            &stream,
            &n,
            Outcome::Deliver(vec![n.original()]),
            &mut batch,
        );
        deliverer.finish(&stream, &n, Outcome::Dropped, &mut batch);
        deliverer.finish(&stream, &n, Outcome::Rejected("x", "y".into()), &mut batch);
        deliverer.finish(
            &stream,
            &n,
            Outcome::Deliver(vec![n.original()]),
            &mut batch,
        );
        let seqs: Vec<u64> = batch.deliveries.iter().map(|d| d.seq).collect();
        assert_eq!(seqs, [1, 2], "only deliveries take numbers");

        let socket = notify(None, "2", Audience::SocketIo);
        let routed = apply(Verdict::Route(vec![("alerts".into(), None)]), &socket);
        deliverer.finish(&stream, &socket, routed, &mut batch);
        let last = batch.deliveries.last().expect("delivery");
        assert_eq!(
            &*last.channel, "alerts",
            "a route's topic is the socket.io channel"
        );
        assert_eq!(last.seq, 0, "socket.io events are not numbered");
        deliverer.publish(&mut batch);
        assert!(batch.deliveries.is_empty(), "published batches are emptied");
    }
}
