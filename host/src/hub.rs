//! Fan-out: from a batch of deliveries to every subscriber of their tenants that wants them.
//!
//! Owns the tenant → subscribers map. There are two kinds of subscriber: a `/ws` session (its
//! [`Outbox`], frame format and topic filter) and a socket.io socket (by channel). Each message is
//! encoded once per frame format; each `/ws` subscriber gets all of its frames of a batch in one
//! vectored write straight into its socket, with no task woken unless its socket is full. A session
//! that stays too slow is ended (1013), a socket.io socket that stops reading is disconnected; both
//! are counted. Tenants are locked one at a time and never while another tenant's sockets are
//! written. It does not own sockets' reading side (`session`, `socketio`) or decide routing (the
//! guest, via `workers` and `deliver`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::Bytes;
use serde_json::Value;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use socketioxide::{SendError, SocketError};

use crate::admission::Ticket;
use crate::envelope::{JsonBody, TenantId, Topic, TopicPattern};
use crate::frame::{self, FrameFormat};
use crate::metrics as m;
use crate::outbox::{Outbox, Sent};

/// Who a delivery is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// `/ws` sessions of the tenant, by topic.
    Sessions,
    /// socket.io sockets of the tenant subscribed to the delivery's channel.
    SocketIo,
}

/// One message after its guest, ready to fan out. The hub's input is an ordered stream of these.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub tenant: TenantId,
    pub audience: Audience,
    /// `None` reaches every session of the tenant; a topic reaches the sessions that take it.
    pub topic: Option<Topic>,
    /// Position in the tenant's stream, counted from 1 since this process started.
    pub seq: u64,
    /// The NOTIFY channel (for socket.io, the channel subscribers chose, or a route's topic).
    pub channel: Arc<str>,
    pub body: JsonBody,
}

/// Which topical messages a session takes. Messages with no topic reach every session of the tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicFilter {
    All,
    /// Exactly these topics (a subscription list).
    Only(Arc<HashSet<Topic>>),
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
    /// The session's socket and send queue, shared with the hub.
    pub outbox: Arc<Outbox>,
    hub: Arc<Hub>,
    /// The session's place among the server's connections, held until the session ends.
    _ticket: Ticket,
}

impl Registration {
    /// Changes which topics this session takes.
    pub fn set_filter(&self, filter: TopicFilter) {
        let Some(tenant) = self.hub.tenant(&self.tenant) else {
            return;
        };
        let mut members = lock(&tenant);
        if let Some(s) = members.sessions.iter_mut().find(|s| s.id == self.id) {
            s.filter = filter;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.remove(&self.tenant, |members| {
            members.sessions.retain(|s| s.id != self.id);
        });
    }
}

struct Session {
    id: SessionId,
    format: FrameFormat,
    filter: TopicFilter,
    outbox: Arc<Outbox>,
}

/// Holds a socket.io socket's events on one channel while it lives (see [`Hub::hold`]).
pub struct Hold {
    hub: Arc<Hub>,
    tenant: TenantId,
    channel: String,
    sid: Sid,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.hub.release(&self.tenant, &self.channel, self.sid);
    }
}

/// A socket.io socket subscribed to one channel.
struct Socket {
    socket: SocketRef,
    /// While the socket waits for the answer to its own `test_pub` on this channel, its events here
    /// wait too, so the answer comes first (socketio_pg's order).
    holds: u32,
    held: Vec<Value>,
}

#[derive(Default)]
struct Members {
    sessions: Vec<Session>,
    /// By channel.
    sockets: HashMap<Arc<str>, Vec<Socket>>,
}

impl Members {
    fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.sockets.is_empty()
    }
}

type Tenant = Arc<Mutex<Members>>;

fn lock(tenant: &Tenant) -> MutexGuard<'_, Members> {
    tenant.lock().unwrap_or_else(|e| e.into_inner())
}

/// The live subscribers, by tenant.
pub struct Hub {
    /// Written only when a tenant gets its first subscriber or loses its last; each tenant's
    /// members have their own lock, so fan-out to one tenant never waits on another.
    tenants: RwLock<HashMap<TenantId, Tenant>>,
    next_id: AtomicU64,
    /// Frames one session may have waiting for its socket.
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

    /// Registers a `/ws` session that holds a place among the server's connections. Its outbox
    /// queues frames until the upgrade attaches the socket.
    pub fn register(
        self: &Arc<Self>,
        ticket: Ticket,
        tenant: &TenantId,
        format: FrameFormat,
        filter: TopicFilter,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::new(self.queue_len));
        let session = Session {
            id,
            format,
            filter,
            outbox: outbox.clone(),
        };
        self.add(tenant, |members| members.sessions.push(session));
        Registration {
            id,
            tenant: tenant.clone(),
            outbox,
            hub: self.clone(),
            _ticket: ticket,
        }
    }

    /// Adds a socket.io socket to `channel`'s subscribers of `tenant`.
    pub fn join(&self, tenant: &TenantId, channel: &str, socket: &SocketRef) {
        self.add(tenant, |members| {
            let sockets = members.sockets.entry(Arc::from(channel)).or_default();
            if !sockets.iter().any(|s| s.socket.id == socket.id) {
                sockets.push(Socket {
                    socket: socket.clone(),
                    holds: 0,
                    held: Vec::new(),
                });
            }
        });
    }

    /// Takes a socket.io socket off `channel`'s subscribers of `tenant`.
    pub fn leave(&self, tenant: &TenantId, channel: &str, sid: Sid) {
        self.remove(tenant, |members| {
            if let Some(sockets) = members.sockets.get_mut(channel) {
                sockets.retain(|s| s.socket.id != sid);
                if sockets.is_empty() {
                    members.sockets.remove(channel);
                }
            }
        });
    }

    /// Holds the socket's events on `channel` until the returned [`Hold`] is dropped: the answer to
    /// its request goes first.
    pub fn hold(self: &Arc<Self>, tenant: &TenantId, channel: &str, sid: Sid) -> Hold {
        if let Some(t) = self.tenant(tenant) {
            if let Some(s) = socket_mut(&mut lock(&t), channel, sid) {
                s.holds += 1;
            }
        }
        Hold {
            hub: self.clone(),
            tenant: tenant.clone(),
            channel: channel.to_owned(),
            sid,
        }
    }

    /// Ends a hold; the events that waited go out now, in order, before any later one (the tenant
    /// stays locked meanwhile; emitting only queues).
    fn release(&self, tenant: &TenantId, channel: &str, sid: Sid) {
        let Some(t) = self.tenant(tenant) else { return };
        let mut members = lock(&t);
        let Some(s) = socket_mut(&mut members, channel, sid) else {
            return;
        };
        s.holds = s.holds.saturating_sub(1);
        if s.holds == 0 {
            for data in std::mem::take(&mut s.held) {
                if emit(&s.socket, &data).is_err() {
                    break;
                }
            }
        }
    }

    /// Number of subscribers `tenant` has (sessions and socket.io subscriptions).
    pub fn subscribers(&self, tenant: &TenantId) -> usize {
        self.tenant(tenant).map_or(0, |t| {
            let members = lock(&t);
            members.sessions.len() + members.sockets.values().map(Vec::len).sum::<usize>()
        })
    }

    /// Fans `deliveries` out, tenant by tenant, in order. Never waits on a client.
    pub fn publish(&self, deliveries: &[Delivery]) {
        for run in deliveries.chunk_by(|a, b| a.tenant == b.tenant) {
            if let Some(tenant) = self.tenant(&run[0].tenant) {
                self.publish_tenant(&run[0].tenant, &tenant, run);
            }
        }
    }

    fn publish_tenant(&self, name: &TenantId, tenant: &Tenant, run: &[Delivery]) {
        let mut too_slow: Vec<SessionId> = Vec::new();
        let mut stalled: Vec<SocketRef> = Vec::new();
        let mut delivered = 0u64;
        let mut emitted = 0u64;
        {
            let mut members = lock(tenant);
            if !members.sessions.is_empty() {
                // Encoded once per message and format, on first need.
                let mut encoded: Vec<[Option<Bytes>; 3]> = vec![Default::default(); run.len()];
                let mut frames: Vec<Bytes> = Vec::with_capacity(run.len());
                for session in &members.sessions {
                    frames.clear();
                    for (d, slots) in run.iter().zip(encoded.iter_mut()) {
                        if d.audience == Audience::Sessions
                            && session.filter.accepts(d.topic.as_ref())
                        {
                            let slot = &mut slots[session.format as usize];
                            frames.push(
                                slot.get_or_insert_with(|| {
                                    frame::encode(
                                        session.format,
                                        &d.channel,
                                        d.topic.as_ref(),
                                        d.seq,
                                        &d.body,
                                    )
                                })
                                .clone(),
                            );
                        }
                    }
                    if frames.is_empty() {
                        continue;
                    }
                    match session.outbox.send(&frames) {
                        Sent::Written | Sent::Queued => delivered += frames.len() as u64,
                        Sent::Overflow => too_slow.push(session.id),
                        Sent::Closed => {}
                    }
                }
            }
            if !members.sockets.is_empty() {
                for d in run.iter().filter(|d| d.audience == Audience::SocketIo) {
                    let Some(sockets) = members.sockets.get_mut(&*d.channel) else {
                        continue;
                    };
                    let data = socketio_event(&d.channel, &d.body);
                    for s in sockets.iter_mut() {
                        if stalled.iter().any(|x| x.id == s.socket.id) {
                            continue;
                        }
                        if s.holds > 0 {
                            if s.held.len() < self.queue_len {
                                s.held.push(data.clone());
                            }
                            continue;
                        }
                        match emit(&s.socket, &data) {
                            Ok(()) => emitted += 1,
                            Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                                stalled.push(s.socket.clone())
                            }
                            // Closed: on its way out, its disconnect handler takes it off.
                            Err(_) => {}
                        }
                    }
                }
            }
            if !stalled.is_empty() {
                for sockets in members.sockets.values_mut() {
                    sockets.retain(|s| !stalled.iter().any(|x| x.id == s.socket.id));
                }
                members.sockets.retain(|_, sockets| !sockets.is_empty());
            }
        }
        metrics::counter!(m::DELIVERIES).increment(delivered);
        metrics::counter!(m::SOCKETIO_EVENTS).increment(emitted);
        if !too_slow.is_empty() {
            self.remove(name, |members| {
                members.sessions.retain(|s| !too_slow.contains(&s.id));
            });
            metrics::counter!(m::QUEUE_OVERFLOWS).increment(too_slow.len() as u64);
            tracing::warn!(
                tenant = %name,
                sessions = too_slow.len(),
                "closing sessions whose queue is full (client too slow)"
            );
        }
        if !stalled.is_empty() {
            metrics::counter!(m::SOCKETIO_TOO_SLOW).increment(stalled.len() as u64);
            tracing::warn!(
                tenant = %name,
                sockets = stalled.len(),
                "disconnecting socket.io clients whose send buffer is full (client too slow)"
            );
            for socket in stalled {
                // The buffer is full, so no disconnect packet fits: the (patched) socketioxide
                // closes the transport instead, and the disconnect handler releases the channels.
                let _ = socket.disconnect();
            }
        }
    }

    /// The listener lost and regained Postgres: NOTIFYs in between are gone. `pgws.v1` sessions get
    /// a `gap` notice; the pgws and raw formats have no way to say it, so it is logged for operators.
    pub fn gap(&self) {
        let notice = crate::wire::text(
            r#"{"type":"gap","reason":"the server lost its Postgres connection; notifications sent meanwhile were not received"}"#,
        );
        let tenants: Vec<Tenant> = self.read().values().cloned().collect();
        let (mut sessions, mut told) = (0, 0);
        for tenant in tenants {
            let members = lock(&tenant);
            sessions += members.sessions.len();
            told += tell_envelope_sessions(&members, &notice);
        }
        tracing::warn!(
            sessions,
            told,
            "notifications sent while the listener was reconnecting were lost"
        );
    }

    /// Some of `tenant`'s messages were dropped before reaching the hub; its `pgws.v1` sessions get
    /// a `gap` notice saying why.
    pub fn tenant_gap(&self, tenant: &TenantId, reason: &str) {
        let notice =
            crate::wire::text(&serde_json::json!({ "type": "gap", "reason": reason }).to_string());
        if let Some(t) = self.tenant(tenant) {
            tell_envelope_sessions(&lock(&t), &notice);
        }
    }

    fn tenant(&self, tenant: &TenantId) -> Option<Tenant> {
        self.read().get(tenant).cloned()
    }

    /// Changes `tenant`'s members, creating its entry if needed.
    fn add(&self, tenant: &TenantId, change: impl FnOnce(&mut Members)) {
        // Changed under the map's read lock, so `remove` (which needs the write lock to drop an
        // empty tenant) cannot drop the entry between the lookup and the change.
        {
            let tenants = self.read();
            if let Some(t) = tenants.get(tenant) {
                change(&mut lock(t));
                return;
            }
        }
        let mut tenants = self.write();
        let t = tenants.entry(tenant.clone()).or_default();
        change(&mut lock(t));
    }

    /// Changes `tenant`'s members and drops the tenant's entry once it has none.
    fn remove(&self, tenant: &TenantId, change: impl FnOnce(&mut Members)) {
        let empty = {
            let tenants = self.read();
            let Some(t) = tenants.get(tenant) else { return };
            let mut members = lock(t);
            change(&mut members);
            members.is_empty()
        };
        if empty {
            let mut tenants = self.write();
            if tenants.get(tenant).is_some_and(|t| lock(t).is_empty()) {
                tenants.remove(tenant);
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<TenantId, Tenant>> {
        self.tenants.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<TenantId, Tenant>> {
        self.tenants.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn socket_mut<'a>(members: &'a mut Members, channel: &str, sid: Sid) -> Option<&'a mut Socket> {
    members
        .sockets
        .get_mut(channel)?
        .iter_mut()
        .find(|s| s.socket.id == sid)
}

fn tell_envelope_sessions(members: &Members, notice: &Bytes) -> usize {
    members
        .sessions
        .iter()
        .filter(|s| s.format == FrameFormat::Envelope)
        .filter(|s| s.outbox.send(std::slice::from_ref(notice)) != Sent::Closed)
        .count()
}

/// socketio_pg's `event {channel, payload}`: the payload as JSON.
fn socketio_event(channel: &str, body: &JsonBody) -> Value {
    let payload = serde_json::from_str::<Value>(body.as_str()).unwrap_or(Value::Null);
    serde_json::json!({ "channel": channel, "payload": payload })
}

fn emit(socket: &SocketRef, data: &Value) -> Result<(), SendError> {
    socket.emit("event", data)
}

#[cfg(test)]
mod tests;
