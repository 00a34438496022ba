//! Fan-out: from one message to every session of its tenant that wants it.
//!
//! Owns the tenant → sessions map and each session's sending half. A message is encoded once per frame
//! format and the same bytes are queued to every recipient with `try_send`: the hub never waits on a
//! client. A session whose bounded queue is full is unregistered and told to close (it is too slow).
//! It does not own sockets (`session`) or decide routing (the guest, via `workers` and `deliver`).

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::admission::Ticket;
use crate::envelope::{JsonBody, TenantId, Topic, TopicPattern};
use crate::frame::{self, FrameFormat};
use crate::metrics as m;

/// One message after its guest, ready to fan out. The hub's input is a plain ordered stream of these.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub tenant: TenantId,
    /// `None` reaches every session of the tenant; a topic reaches the sessions that take it.
    pub topic: Option<Topic>,
    /// Position in the tenant's stream, counted from 1 since this process started.
    pub seq: u64,
    pub channel: Arc<str>,
    pub body: JsonBody,
}

/// Which topical messages a session takes. Messages with no topic reach every session of the tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicFilter {
    All,
    /// Exactly these topics (a subscription list).
    Only(HashSet<Topic>),
    /// Topics matching any of these patterns (a token's grant).
    Matching(Arc<[TopicPattern]>),
}

impl TopicFilter {
    fn accepts(&self, topic: Option<&Topic>) -> bool {
        match (self, topic) {
            (_, None) | (TopicFilter::All, _) => true,
            (TopicFilter::Only(set), Some(t)) => set.contains(t),
            (TopicFilter::Matching(patterns), Some(t)) => patterns.iter().any(|p| p.matches(t)),
        }
    }
}

/// Identifies one registered session.
pub type SessionId = u64;

/// What a session gets from [`Hub::register`]. Dropping it unregisters the session, so a session
/// cannot leak from the hub whichever way it ends (even if the upgrade never completes).
pub struct Registration {
    pub id: SessionId,
    pub tenant: TenantId,
    pub frames: mpsc::Receiver<Utf8Bytes>,
    /// Cancelled when the hub gives up on the session because its queue overflowed.
    pub overflowed: CancellationToken,
    hub: Arc<Hub>,
    /// The session's place among the server's connections, held until the session ends.
    _ticket: Ticket,
}

impl Registration {
    /// Changes which topics this session takes.
    pub fn set_filter(&self, filter: TopicFilter) {
        self.hub.set_filter(&self.tenant, self.id, filter);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(&self.tenant, self.id);
    }
}

struct Subscriber {
    id: SessionId,
    format: FrameFormat,
    filter: TopicFilter,
    /// Bounded: a client that cannot keep up costs at most this many frames of memory.
    frames: mpsc::Sender<Utf8Bytes>,
    overflowed: CancellationToken,
}

/// The live set of sessions, by tenant.
pub struct Hub {
    /// Read on every message, written on connect, disconnect and overflow.
    tenants: RwLock<HashMap<TenantId, Vec<Subscriber>>>,
    next_id: AtomicU64,
    queue_len: usize,
}

impl Hub {
    pub fn new(queue_len: usize) -> Self {
        Hub {
            tenants: RwLock::default(),
            next_id: AtomicU64::new(1),
            queue_len: queue_len.max(1),
        }
    }

    /// Registers a session that holds a place among the server's connections.
    pub fn register(
        self: &Arc<Self>,
        ticket: Ticket,
        tenant: &TenantId,
        format: FrameFormat,
        filter: TopicFilter,
    ) -> Registration {
        let mut tenants = self.write();
        let subs = tenants.entry(tenant.clone()).or_default();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.queue_len);
        let overflowed = CancellationToken::new();
        let sub = Subscriber {
            id,
            format,
            filter,
            frames: tx,
            overflowed: overflowed.clone(),
        };
        subs.push(sub);
        drop(tenants);
        Registration {
            id,
            tenant: tenant.clone(),
            frames: rx,
            overflowed,
            hub: self.clone(),
            _ticket: ticket,
        }
    }

    /// Removes a session; a no-op if the hub already dropped it.
    fn unregister(&self, tenant: &TenantId, id: SessionId) {
        self.remove(tenant, &[id]);
    }

    fn set_filter(&self, tenant: &TenantId, id: SessionId, filter: TopicFilter) {
        if let Some(sub) = self
            .write()
            .get_mut(tenant)
            .and_then(|subs| subs.iter_mut().find(|s| s.id == id))
        {
            sub.filter = filter;
        }
    }

    /// Number of sessions registered for `tenant`.
    pub fn sessions(&self, tenant: &TenantId) -> usize {
        self.read().get(tenant).map_or(0, Vec::len)
    }

    /// Queues `delivery` to every matching session of its tenant. Never blocks on a session.
    pub fn publish(&self, delivery: &Delivery) {
        let mut encoded: [Option<Utf8Bytes>; 3] = [None, None, None];
        let mut overflowed = Vec::new();
        let mut delivered = 0u64;
        {
            let tenants = self.read();
            let Some(subs) = tenants.get(&delivery.tenant) else {
                return;
            };
            for sub in subs {
                if !sub.filter.accepts(delivery.topic.as_ref()) {
                    continue;
                }
                let slot = &mut encoded[sub.format as usize];
                let bytes = slot
                    .get_or_insert_with(|| {
                        frame::encode(
                            sub.format,
                            &delivery.channel,
                            delivery.topic.as_ref(),
                            delivery.seq,
                            &delivery.body,
                        )
                    })
                    .clone();
                match sub.frames.try_send(bytes) {
                    Ok(()) => delivered += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        sub.overflowed.cancel();
                        overflowed.push(sub.id);
                    }
                    // The session is on its way out and will unregister itself.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
        metrics::counter!(m::DELIVERIES).increment(delivered);
        if !overflowed.is_empty() {
            let removed = self.remove(&delivery.tenant, &overflowed);
            metrics::counter!(m::QUEUE_OVERFLOWS).increment(removed as u64);
            tracing::warn!(
                tenant = %delivery.tenant,
                sessions = removed,
                "closing sessions whose queue is full (client too slow)"
            );
        }
    }

    /// The listener lost and regained Postgres: NOTIFYs in between are gone. `pgws.v1` sessions get
    /// a `gap` notice; the pgws and raw formats have no way to say it, so it is logged for operators.
    pub fn gap(&self) {
        let notice = Utf8Bytes::from(
            r#"{"type":"gap","reason":"the server lost its Postgres connection; notifications sent meanwhile were not received"}"#,
        );
        let mut told = 0;
        let tenants = self.read();
        for sub in tenants.values().flatten() {
            if sub.format == FrameFormat::Envelope && sub.frames.try_send(notice.clone()).is_ok() {
                told += 1;
            }
        }
        tracing::warn!(
            sessions = tenants.values().map(Vec::len).sum::<usize>(),
            told,
            "notifications sent while the listener was reconnecting were lost"
        );
    }

    /// Some of `tenant`'s messages were dropped before reaching the hub; its `pgws.v1` sessions get
    /// a `gap` notice saying why.
    pub fn tenant_gap(&self, tenant: &TenantId, reason: &str) {
        let notice =
            Utf8Bytes::from(serde_json::json!({ "type": "gap", "reason": reason }).to_string());
        let tenants = self.read();
        for sub in tenants.get(tenant).into_iter().flatten() {
            if sub.format == FrameFormat::Envelope {
                let _ = sub.frames.try_send(notice.clone());
            }
        }
    }

    fn remove(&self, tenant: &TenantId, ids: &[SessionId]) -> usize {
        let mut tenants = self.write();
        let Some(subs) = tenants.get_mut(tenant) else {
            return 0;
        };
        let before = subs.len();
        subs.retain(|s| !ids.contains(&s.id));
        let removed = before - subs.len();
        if subs.is_empty() {
            tenants.remove(tenant);
        }
        removed
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<TenantId, Vec<Subscriber>>> {
        self.tenants.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<TenantId, Vec<Subscriber>>> {
        self.tenants.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Admission;

    /// Registers a session with a fresh place among connections.
    fn register(hub: &Arc<Hub>, tenant: &TenantId, filter: TopicFilter) -> Registration {
        let ticket = Arc::new(Admission::default()).admit(tenant).expect("place");
        hub.register(ticket, tenant, FrameFormat::Raw, filter)
    }

    fn delivery(tenant: &str, topic: Option<&str>, body: &str) -> Delivery {
        Delivery {
            tenant: TenantId::parse(tenant).expect("tenant"),
            topic: topic.map(|t| Topic::parse(t).expect("topic")),
            seq: 1,
            channel: Arc::from("pgwebsocket"),
            body: JsonBody::parse(body).expect("json"),
        }
    }

    #[test]
    fn delivers_only_to_the_tenant_and_shares_bytes() {
        let hub = Arc::new(Hub::new(8));
        let acme = TenantId::parse("acme").expect("tenant");
        let other = TenantId::parse("other").expect("tenant");
        let mut a1 = register(&hub, &acme, TopicFilter::All);
        let mut a2 = register(&hub, &acme, TopicFilter::All);
        let mut o = register(&hub, &other, TopicFilter::All);
        hub.publish(&delivery("acme", None, r#"{"n":1}"#));
        let f1 = a1.frames.try_recv().expect("a1 frame");
        let f2 = a2.frames.try_recv().expect("a2 frame");
        assert_eq!(f1.as_str(), r#"{"n":1}"#);
        assert_eq!(
            f1.as_str().as_ptr(),
            f2.as_str().as_ptr(),
            "one encoding, shared"
        );
        assert!(o.frames.try_recv().is_err());
    }

    #[test]
    fn topic_filters_select_topical_messages() {
        let hub = Arc::new(Hub::new(8));
        let acme = TenantId::parse("acme").expect("tenant");
        let only = TopicFilter::Only([Topic::parse("orders").expect("topic")].into());
        let mut s = register(&hub, &acme, only);
        hub.publish(&delivery("acme", Some("billing"), "1"));
        hub.publish(&delivery("acme", Some("orders"), "2"));
        hub.publish(&delivery("acme", None, "3"));
        assert_eq!(s.frames.try_recv().expect("orders").as_str(), "2");
        assert_eq!(s.frames.try_recv().expect("broadcast").as_str(), "3");
        assert!(s.frames.try_recv().is_err());
    }

    proptest::proptest! {
        /// Over any interleaving of connects, disconnects and messages across tenants, every session
        /// receives exactly its tenant's messages published while it was connected, in order.
        #[test]
        fn sessions_receive_exactly_their_tenants_messages(
            ops in proptest::collection::vec((0u8..3, 0usize..4, 0usize..6), 1..200)
        ) {
            let tenants: Vec<TenantId> = ["t0", "t1", "t2", "t3"]
                .iter()
                .map(|t| TenantId::parse(t).expect("tenant"))
                .collect();
            let hub = Arc::new(Hub::new(1024));
            // (tenant index, registration, messages expected)
            let mut sessions: Vec<(usize, Registration, Vec<u64>)> = Vec::new();
            let mut next = 0u64;
            for (op, tenant, which) in ops {
                match op {
                    0 => {
                        let reg = register(&hub, &tenants[tenant], TopicFilter::All);
                        sessions.push((tenant, reg, Vec::new()));
                    }
                    1 if !sessions.is_empty() => {
                        let (_, mut reg, want) = sessions.remove(which % sessions.len());
                        let got: Vec<u64> = std::iter::from_fn(|| reg.frames.try_recv().ok())
                            .map(|f| f.as_str().parse().expect("number"))
                            .collect();
                        proptest::prop_assert_eq!(got, want);
                    }
                    _ => {
                        next += 1;
                        let mut d = delivery(tenants[tenant].as_str(), None, "0");
                        d.body = JsonBody::parse(&next.to_string()).expect("json");
                        hub.publish(&d);
                        for (t, _, want) in sessions.iter_mut() {
                            if *t == tenant {
                                want.push(next);
                            }
                        }
                    }
                }
            }
            for (_, mut reg, want) in sessions {
                let got: Vec<u64> = std::iter::from_fn(|| reg.frames.try_recv().ok())
                    .map(|f| f.as_str().parse().expect("number"))
                    .collect();
                proptest::prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn full_queue_unregisters_and_signals_the_session() {
        let hub = Arc::new(Hub::new(2));
        let acme = TenantId::parse("acme").expect("tenant");
        let slow = register(&hub, &acme, TopicFilter::All);
        let mut fast = register(&hub, &acme, TopicFilter::All);
        for _ in 0..3 {
            hub.publish(&delivery("acme", None, "1"));
            let _ = fast.frames.try_recv();
        }
        assert!(slow.overflowed.is_cancelled());
        assert!(!fast.overflowed.is_cancelled());
        assert_eq!(hub.sessions(&acme), 1);
    }
}
