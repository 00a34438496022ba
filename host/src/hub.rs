//! Fan-out: from a batch of deliveries to every subscriber of their tenants that wants them.
//!
//! Owns the tenant → subscribers map, split into shards that fan out in parallel. There are two
//! kinds of subscriber: a `/ws` session (its [`Outbox`], frame format and topic filter) and a
//! socket.io socket (by channel). Each message is encoded once per frame format and shard; each
//! `/ws` subscriber gets all of its frames of a batch in one vectored write straight into its
//! socket, with no task woken unless its socket is full. Each shard has a thread of its own, fed
//! batches and gap notices in publishing order. A session that stays
//! too slow is ended (1013), a socket.io socket that stops reading is disconnected; both are
//! counted. It does not own sockets' reading side (`session`, `socketio`) or decide routing (the
//! guest, via `workers` and `deliver`).

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;

use crate::admission::Ticket;
use crate::envelope::{JsonBody, Position, TenantId, Topic, TopicPattern};
use crate::frame::FrameFormat;
use crate::metrics as m;
use crate::outbox::Outbox;

mod replay;
mod shard;

pub use replay::{Durable, Replay, ReplayEnd, SessionAddress};

use shard::{Shard, Socket};

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
    /// A durable message's place in its tenant's stored stream (`streams`), the same on every host.
    pub position: Option<Position>,
    /// The message's id in pgws frames: one per message, the same for every recipient.
    pub id: uuid::Uuid,
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
    shard: usize,
    hub: Arc<Hub>,
    /// The session's place among the server's connections, held until the session ends.
    ticket: Option<Ticket>,
}

impl Registration {
    pub fn address(&self) -> SessionAddress {
        SessionAddress {
            id: self.id,
            shard: self.shard,
        }
    }

    /// Marks the session's recovery as under way, if it has neither recovered nor taken durable
    /// messages yet; false otherwise (a second `since` would replay what may already be coming).
    pub fn begin_recovery(&self) -> bool {
        self.hub.shards[self.shard]
            .with(&self.tenant, |members| {
                let s = members.sessions.iter_mut().find(|s| s.id == self.id)?;
                (s.durable == Durable::Held).then(|| s.durable = Durable::Recovering)
            })
            .flatten()
            .is_some()
    }

    /// Starts taking every durable message from now on, unless the session already takes them or
    /// is recovering (its replay decides where live messages start).
    pub fn take_durable(&self) {
        self.hub.shards[self.shard].with(&self.tenant, |members| {
            if let Some(s) = members.sessions.iter_mut().find(|s| s.id == self.id) {
                if s.durable == Durable::Held {
                    s.durable = Durable::After(None);
                }
            }
        });
    }

    /// Changes which topics this session takes.
    pub fn set_filter(&self, filter: TopicFilter) {
        self.hub.shards[self.shard].with(&self.tenant, |members| {
            if let Some(s) = members.sessions.iter_mut().find(|s| s.id == self.id) {
                s.filter = filter;
            }
        });
    }

    /// Leaves the hub and gives the place among connections back (the session is over, though
    /// its close frame may still be on its way).
    pub fn leave(&mut self) {
        self.hub.shards[self.shard].remove(&self.tenant, |members| {
            members.sessions.retain(|s| s.id != self.id);
        });
        self.ticket = None;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.leave();
    }
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

/// What a shard's thread is asked to do, in order.
enum Feed {
    Batch(Arc<[Delivery]>),
    /// A `gap` notice for the `pgws.v1` sessions of one tenant, or of every tenant.
    Gap(Option<TenantId>, Bytes),
    Replay(Replay),
}

/// Work waiting for one shard's thread. Bounded: a shard this far behind (the machine is out of
/// CPU) drops batches for its subscribers, counted, and tells its `pgws.v1` sessions of the gap.
const SHARD_QUEUE: usize = 4096;

/// A shard's thread: its queue, and whether batches were dropped since it last took one.
struct Feeder {
    queue: std::sync::mpsc::SyncSender<Feed>,
    lagging: AtomicBool,
}

impl Feeder {
    fn send(&self, feed: Feed) {
        // After a drop, a gap notice goes in first, exactly where the dropped batches were.
        if self.lagging.load(Ordering::Relaxed) {
            let notice = crate::wire::text(
                r#"{"type":"gap","reason":"the server fell behind; messages were dropped"}"#,
            );
            if self.queue.try_send(Feed::Gap(None, notice)).is_ok() {
                self.lagging.store(false, Ordering::Relaxed);
            }
        }
        if let Err(std::sync::mpsc::TrySendError::Full(dropped)) = self.queue.try_send(feed) {
            // A dropped gap notice is covered by the one that follows the drop. (Replays are
            // never dropped: see `Hub::replay`.)
            if let Feed::Batch(batch) = dropped {
                metrics::counter!(m::FANOUT_DROPPED).increment(batch.len() as u64);
            }
            if !self.lagging.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    "a fan-out shard is {SHARD_QUEUE} batches behind (out of CPU); its subscribers \
                     miss messages until it catches up"
                );
            }
        }
    }
}

/// Most deliveries one pass of a shard takes from its queue.
const MAX_PASS: usize = 4096;

/// A shard's thread, until the hub (every sender) is dropped. Each pass takes everything already
/// queued (up to [`MAX_PASS`] deliveries, up to the next gap notice) and fans it out at once, so a
/// shard that fell behind catches up with one write per subscriber for many messages rather than
/// one each: the busier it is, the bigger its writes.
fn feed_shard(shard: &Shard, feed: &std::sync::mpsc::Receiver<Feed>, queue_len: usize) {
    let mut pass: Vec<Delivery> = Vec::new();
    let mut next = feed.recv().ok();
    while let Some(item) = next.take() {
        match item {
            Feed::Gap(tenant, notice) => {
                shard.tell_envelope_sessions(tenant.as_ref(), &notice);
                next = feed.recv().ok();
            }
            Feed::Replay(replay) => {
                shard.replay(replay);
                next = feed.recv().ok();
            }
            Feed::Batch(batch) => {
                pass.extend(batch.iter().cloned());
                while pass.len() < MAX_PASS {
                    match feed.try_recv() {
                        Ok(Feed::Batch(more)) => pass.extend(more.iter().cloned()),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                // Each tenant's messages together, in their order (the sort is stable).
                pass.sort_by(|a, b| a.tenant.cmp(&b.tenant));
                shard.publish(&pass, queue_len);
                pass.clear();
                if next.is_none() {
                    next = feed.recv().ok();
                }
            }
        }
    }
}

/// The live subscribers, by shard and tenant.
pub struct Hub {
    shards: Box<[Arc<Shard>]>,
    /// One thread per shard; none when the publishing thread fans out itself (one shard).
    feeders: Box<[Feeder]>,
    next_id: AtomicU64,
    /// Round robin over the shards for new sessions.
    next_shard: AtomicUsize,
    /// Frames one session may have waiting for its socket.
    queue_len: usize,
}

impl Hub {
    /// A hub with one shard, fanned out by whoever publishes (tests, benchmarks).
    pub fn new(queue_len: usize) -> Self {
        Hub {
            shards: Box::new([Arc::default()]),
            feeders: Box::new([]),
            next_id: AtomicU64::new(1),
            next_shard: AtomicUsize::new(0),
            queue_len: queue_len.max(1),
        }
    }

    /// A hub with `shards` shards, each fanned out by a thread of its own (in the current tokio
    /// runtime's context, which socket.io's disconnect handlers need). Writes are non-blocking but
    /// many: on threads of their own they never hold up the runtime's tasks (reads, pings).
    pub fn start(queue_len: usize, shards: usize) -> std::io::Result<Self> {
        let mut hub = Hub::new(queue_len);
        let runtime = tokio::runtime::Handle::current();
        let shards: Vec<Arc<Shard>> = (0..shards.max(1)).map(|_| Arc::default()).collect();
        let mut feeders = Vec::with_capacity(shards.len());
        for (i, shard) in shards.iter().enumerate() {
            let (queue, feed) = std::sync::mpsc::sync_channel::<Feed>(SHARD_QUEUE);
            let (shard, runtime, queue_len) = (shard.clone(), runtime.clone(), hub.queue_len);
            std::thread::Builder::new()
                .name(format!("pgws-fanout-{i}"))
                .spawn(move || {
                    let _context = runtime.enter();
                    feed_shard(&shard, &feed, queue_len);
                })?;
            feeders.push(Feeder {
                queue,
                lagging: AtomicBool::new(false),
            });
        }
        hub.shards = shards.into();
        hub.feeders = feeders.into();
        Ok(hub)
    }

    /// Registers a `/ws` session that holds a place among the server's connections. Its outbox
    /// queues frames until the upgrade attaches the socket, `first` (a greeting) ahead of all.
    pub fn register(
        self: &Arc<Self>,
        ticket: Ticket,
        tenant: &TenantId,
        format: FrameFormat,
        filter: TopicFilter,
        durable: Durable,
        first: Option<Bytes>,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shard = self.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        let outbox = Arc::new(Outbox::new(self.queue_len, first));
        let session = shard::Session {
            id,
            format,
            filter,
            durable,
            replayed: 0,
            outbox: outbox.clone(),
        };
        self.shards[shard].add(tenant, |members| members.sessions.push(session));
        Registration {
            id,
            tenant: tenant.clone(),
            outbox,
            shard,
            hub: self.clone(),
            ticket: Some(ticket),
        }
    }

    /// The shard a socket.io socket lives in.
    fn socket_shard(&self, sid: Sid) -> &Shard {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        sid.hash(&mut h);
        &self.shards[h.finish() as usize % self.shards.len()]
    }

    /// Adds a socket.io socket to `channel`'s subscribers of `tenant`.
    pub fn join(&self, tenant: &TenantId, channel: &str, socket: &SocketRef) {
        self.socket_shard(socket.id).add(tenant, |members| {
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
        self.socket_shard(sid).remove(tenant, |members| {
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
        self.socket_shard(sid).with(tenant, |members| {
            if let Some(s) = members.socket_mut(channel, sid) {
                s.holds += 1;
            }
        });
        Hold {
            hub: self.clone(),
            tenant: tenant.clone(),
            channel: channel.to_owned(),
            sid,
        }
    }

    /// Ends a hold; the events that waited go out now, in order, before any later one (the tenant
    /// stays locked meanwhile; emitting only queues). A socket that cannot take them is too slow.
    fn release(&self, tenant: &TenantId, channel: &str, sid: Sid) {
        let shard = self.socket_shard(sid);
        let stalled = shard.with(tenant, |members| {
            let s = members.socket_mut(channel, sid)?;
            s.holds = s.holds.saturating_sub(1);
            if s.holds > 0 {
                return None;
            }
            for data in std::mem::take(&mut s.held) {
                if let Err(e) = shard::emit(&s.socket, &data) {
                    return shard::is_full(&e).then(|| s.socket.clone());
                }
            }
            None
        });
        if let Some(socket) = stalled.flatten() {
            shard.drop_stalled(tenant, vec![socket]);
        }
    }

    /// Number of subscribers `tenant` has (sessions and socket.io subscriptions).
    pub fn subscribers(&self, tenant: &TenantId) -> usize {
        self.shards
            .iter()
            .filter_map(|s| s.with(tenant, |members| members.subscribers()))
            .sum()
    }

    /// Fans `deliveries` out, tenant by tenant, in order: each shard's thread gets the batch (or,
    /// with one shard and no threads, this thread does it). Never waits on a client.
    pub fn publish(&self, deliveries: &[Delivery]) {
        if self.feeders.is_empty() {
            self.shards[0].publish(deliveries, self.queue_len);
            return;
        }
        let batch: Arc<[Delivery]> = deliveries.into();
        for feeder in self.feeders.iter() {
            feeder.send(Feed::Batch(batch.clone()));
        }
    }

    /// Sends `replay` to its session, behind everything published before (see [`Replay`]).
    pub fn replay(&self, replay: Replay) {
        if self.feeders.is_empty() {
            self.shards[0].replay(replay);
            return;
        }
        let shard = replay.session.shard;
        // Waits for room rather than dropping it: a lost replay would leave its session waiting
        // for its report for ever. Replays are rare, and a full shard queue means the shard is
        // out of CPU, when waiting is what it needs.
        let _ = self.feeders[shard].queue.send(Feed::Replay(replay));
    }

    /// Tells `tenant`'s (or every tenant's) `pgws.v1` sessions, behind what was published before.
    fn gap_notice(&self, tenant: Option<&TenantId>, notice: Bytes) {
        if self.feeders.is_empty() {
            self.shards[0].tell_envelope_sessions(tenant, &notice);
            return;
        }
        for feeder in self.feeders.iter() {
            feeder.send(Feed::Gap(tenant.cloned(), notice.clone()));
        }
    }

    /// The listener lost and regained Postgres: NOTIFYs in between are gone. `pgws.v1` sessions get
    /// a `gap` notice; the pgws and raw formats have no way to say it, so it is logged for operators.
    pub fn gap(&self) {
        self.gap_notice(
            None,
            crate::wire::text(
                r#"{"type":"gap","reason":"the server lost its Postgres connection; notifications sent meanwhile were not received"}"#,
            ),
        );
        tracing::warn!("notifications sent while the listener was reconnecting were lost");
    }

    /// Some of `tenant`'s messages were dropped before reaching the hub; its `pgws.v1` sessions get
    /// a `gap` notice saying why.
    pub fn tenant_gap(&self, tenant: &TenantId, reason: &str) {
        let notice =
            crate::wire::text(&serde_json::json!({ "type": "gap", "reason": reason }).to_string());
        self.gap_notice(Some(tenant), notice);
    }
}

#[cfg(test)]
mod tests;
