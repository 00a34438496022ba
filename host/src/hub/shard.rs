//! One shard of the hub: a share of every tenant's subscribers, and the fan-out to them.
//!
//! Every subscriber lives in exactly one shard for its whole life, and a shard handles batches in
//! the order they were published, so each subscriber gets its tenant's messages in order while the
//! shards write to their sockets in parallel. Each tenant has its own lock, so fan-out to one
//! tenant never waits on another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::Bytes;
use serde_json::value::RawValue;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use socketioxide::{SendError, SocketError};

use super::{Audience, Delivery, Durable, Replay, ReplayEnd, SessionId, TopicFilter};
use crate::envelope::{JsonBody, TenantId};
use crate::frame::{self, FrameFormat};
use crate::metrics as m;
use crate::outbox::{Outbox, Sent};

pub(super) struct Session {
    pub id: SessionId,
    pub format: FrameFormat,
    pub filter: TopicFilter,
    pub durable: Durable,
    /// Messages replayed to it in the recovery under way.
    pub replayed: usize,
    pub outbox: Arc<Outbox>,
}

impl Session {
    /// A replayed message: by topic only (it is from before the session took durable messages).
    fn takes_replayed(&self, d: &Delivery) -> bool {
        d.audience == Audience::Sessions && self.filter.accepts(d.topic.as_ref())
    }

    fn takes(&self, d: &Delivery) -> bool {
        d.audience == Audience::Sessions
            && self.filter.accepts(d.topic.as_ref())
            && d.position.as_ref().is_none_or(|p| self.durable.accepts(p))
    }
}

fn encode(format: FrameFormat, d: &Delivery) -> Bytes {
    frame::encode(
        format,
        &d.channel,
        d.topic.as_ref(),
        d.seq,
        d.position.as_ref(),
        &d.id,
        &d.body,
    )
}

/// A socket.io socket subscribed to one channel.
pub(super) struct Socket {
    pub socket: SocketRef,
    /// While the socket waits for the answer to its own `test_pub` on this channel, its events here
    /// wait too, so the answer comes first (socketio_pg's order).
    pub holds: u32,
    pub held: Vec<Box<RawValue>>,
}

#[derive(Default)]
pub(super) struct Members {
    pub sessions: Vec<Session>,
    /// By channel.
    pub sockets: HashMap<Arc<str>, Vec<Socket>>,
}

impl Members {
    fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.sockets.is_empty()
    }

    pub fn socket_mut(&mut self, channel: &str, sid: Sid) -> Option<&mut Socket> {
        self.sockets
            .get_mut(channel)?
            .iter_mut()
            .find(|s| s.socket.id == sid)
    }

    pub fn subscribers(&self) -> usize {
        self.sessions.len() + self.sockets.values().map(Vec::len).sum::<usize>()
    }
}

type Tenant = Arc<Mutex<Members>>;

fn lock(tenant: &Tenant) -> MutexGuard<'_, Members> {
    tenant.lock().unwrap_or_else(|e| e.into_inner())
}

/// A share of the subscribers, by tenant.
#[derive(Default)]
pub(super) struct Shard {
    /// Written only when a tenant gets its first subscriber here or loses its last.
    tenants: RwLock<HashMap<TenantId, Tenant>>,
}

impl Shard {
    /// Changes `tenant`'s members, if it has any here.
    pub fn with<T>(&self, tenant: &TenantId, f: impl FnOnce(&mut Members) -> T) -> Option<T> {
        let t = self.read().get(tenant).cloned()?;
        let mut members = lock(&t);
        Some(f(&mut members))
    }

    /// Changes `tenant`'s members, creating its entry if needed.
    pub fn add(&self, tenant: &TenantId, change: impl FnOnce(&mut Members)) {
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
    pub fn remove(&self, tenant: &TenantId, change: impl FnOnce(&mut Members)) {
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

    /// Every tenant with subscribers here.
    fn tenants(&self) -> Vec<Tenant> {
        self.read().values().cloned().collect()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Fans `deliveries` out to this shard's subscribers, tenant by tenant, in order. Never waits
    /// on a client.
    pub fn publish(&self, deliveries: &[Delivery], queue_len: usize) {
        for run in deliveries.chunk_by(|a, b| a.tenant == b.tenant) {
            let tenant = self.read().get(&run[0].tenant).cloned();
            if let Some(tenant) = tenant {
                self.publish_tenant(&run[0].tenant, &tenant, run, queue_len);
            }
        }
    }

    fn publish_tenant(&self, name: &TenantId, tenant: &Tenant, run: &[Delivery], queue_len: usize) {
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
                        if session.takes(d) {
                            let slot = &mut slots[session.format as usize];
                            frames.push(
                                slot.get_or_insert_with(|| encode(session.format, d))
                                    .clone(),
                            );
                        }
                    }
                    if frames.is_empty() {
                        continue;
                    }
                    // All of this session's frames of the batch in one write.
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
                    let Some(data) = socketio_event(&d.channel, &d.body) else {
                        continue;
                    };
                    for s in sockets.iter_mut() {
                        if stalled.iter().any(|x| x.id == s.socket.id) {
                            continue;
                        }
                        if s.holds > 0 {
                            // As many events may wait for a hold as for a full socket.
                            if s.held.len() < queue_len {
                                s.held.push(data.clone());
                            } else {
                                stalled.push(s.socket.clone());
                            }
                            continue;
                        }
                        match emit(&s.socket, &data) {
                            Ok(()) => emitted += 1,
                            Err(e) if is_full(&e) => stalled.push(s.socket.clone()),
                            // Closed: on its way out, its disconnect handler takes it off.
                            Err(_) => {}
                        }
                    }
                }
            }
        }
        metrics::counter!(m::DELIVERIES).increment(delivered);
        metrics::counter!(m::SOCKETIO_EVENTS).increment(emitted);
        if !too_slow.is_empty() {
            self.remove(name, |members| {
                members.sessions.retain(|s| !too_slow.contains(&s.id));
            });
            tracing::warn!(
                tenant = %name,
                sessions = too_slow.len(),
                "closing sessions whose queue is full (client too slow)"
            );
        }
        if !stalled.is_empty() {
            self.drop_stalled(name, stalled);
        }
    }

    /// Writes a replay to its session; at its end, the report, and from then on the session takes
    /// durable messages after the replay's end. A session that left meanwhile is skipped; one that
    /// cannot take the replay is too slow.
    pub fn replay(&self, replay: Replay) {
        let Replay {
            tenant,
            session,
            deliveries,
            end,
        } = replay;
        let too_slow = self.with(&tenant, |members| {
            let s = members.sessions.iter_mut().find(|s| s.id == session.id)?;
            let mut frames: Vec<Bytes> = deliveries
                .iter()
                .filter(|d| s.takes_replayed(d))
                .map(|d| encode(s.format, d))
                .collect();
            s.replayed += frames.len();
            if let Some(ReplayEnd { report, until }) = end {
                frames.push(report(std::mem::take(&mut s.replayed)));
                s.durable = Durable::After(until);
            }
            if frames.is_empty() {
                return None;
            }
            (s.outbox.send_replay(&frames) == Sent::Overflow).then_some(s.id)
        });
        if let Some(Some(id)) = too_slow {
            self.remove(&tenant, |members| members.sessions.retain(|s| s.id != id));
            tracing::warn!(%tenant, "closing a session that could not take what it missed (client too slow)");
        }
    }

    /// Takes socket.io sockets that cannot take more off every channel of `tenant`, counts them and
    /// disconnects them. Called with no tenant locked (the disconnect runs socketioxide's handlers).
    pub fn drop_stalled(&self, tenant: &TenantId, stalled: Vec<SocketRef>) {
        self.remove(tenant, |members| {
            for sockets in members.sockets.values_mut() {
                sockets.retain(|s| !stalled.iter().any(|x| x.id == s.socket.id));
            }
            members.sockets.retain(|_, sockets| !sockets.is_empty());
        });
        metrics::counter!(m::SOCKETIO_TOO_SLOW).increment(stalled.len() as u64);
        tracing::warn!(
            %tenant,
            sockets = stalled.len(),
            "disconnecting socket.io clients whose send buffer is full (client too slow)"
        );
        for socket in stalled {
            // The buffer is full, so no disconnect packet fits: the (patched) socketioxide closes
            // the transport instead, and the disconnect handler releases the channels.
            let _ = socket.disconnect();
        }
    }

    /// Sends `notice` to the `pgws.v1` sessions of `tenant`, or of every tenant.
    pub fn tell_envelope_sessions(&self, tenant: Option<&TenantId>, notice: &Bytes) {
        let tenants = match tenant {
            Some(t) => self.read().get(t).cloned().into_iter().collect(),
            None => self.tenants(),
        };
        for t in tenants {
            let members = lock(&t);
            for s in members.sessions.iter() {
                if s.format == FrameFormat::Envelope {
                    s.outbox.send(std::slice::from_ref(notice));
                }
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

/// socketio_pg's `event {channel, payload}`: the payload as JSON (`None` only if the body were not
/// JSON, which `deliver` rules out).
fn socketio_event(channel: &str, body: &JsonBody) -> Option<Box<RawValue>> {
    // Built as text once per message: each socket's packet then copies it instead of walking a
    // JSON tree. The body is checked JSON, so the whole is too.
    let mut text = String::with_capacity(body.as_str().len() + channel.len() + 24);
    text.push_str(r#"{"channel":"#);
    crate::frame::push_json_string(&mut text, channel);
    text.push_str(r#","payload":"#);
    text.push_str(body.as_str());
    text.push('}');
    RawValue::from_string(text).ok()
}

pub(super) fn emit(socket: &SocketRef, data: &RawValue) -> Result<(), SendError> {
    socket.emit("event", data)
}

/// Whether a send failed because the socket's buffer is full (the client stopped reading).
pub(super) fn is_full(e: &SendError) -> bool {
    matches!(e, SendError::Socket(SocketError::InternalChannelFull))
}
