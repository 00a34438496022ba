//! One WebSocket client, from upgrade to close.
//!
//! Owns the socket, the receiving half of the session's bounded queue, and — for `pgws.v1` clients —
//! the subscription list, the publish rate limit and the answers to client frames. It writes queued
//! frames in batches (one flush, so one socket write, for everything already waiting), answers pings,
//! sends keepalive pings, and closes with a code that says why: 1000 when the client leaves, 1001 on
//! server shutdown, 1008 when pings go unanswered, 1013 when the client was too slow to keep its queue
//! from filling, 1009 when it sends a message over `--max-client-message`, 4001 when its token
//! expires; a client whose socket takes nothing for `--write-timeout-secs` is dropped without one
//! (none could reach it). It does not decide who the
//! client is (`upgrade`, `auth`) or what reaches its queue (`hub`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::envelope::Topic;
use crate::hub::{Registration, TopicFilter};
use crate::metrics as m;
use crate::protocol::{self, ClientFrame};
use crate::publisher::{PublishError, Publisher, RateLimit};
use crate::workers::{ClientOutcome, Workers};

/// Close code for a client whose queue overflowed ("try again later").
pub const CLOSE_TOO_SLOW: u16 = 1013;
/// Close code sent when the server shuts down ("going away").
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a client that stopped answering pings (policy violation is the closest fit).
pub const CLOSE_PING_TIMEOUT: u16 = 1008;
/// Close code for a session whose token expired.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// Close code for a client message over the size cap ("message too big").
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Most frames written per flush; bounds the time one session holds its worker.
const MAX_BATCH: usize = 256;
/// How long a close frame may take to leave before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What every session shares.
pub struct SessionContext {
    pub workers: Workers,
    pub publisher: Arc<Publisher>,
    pub ping_interval: Duration,
    /// Publishes per second a session may sustain, and the burst it may spend at once.
    pub publish_rate: f64,
    pub publish_burst: f64,
    /// Most topics one pgws.v1 session may subscribe to.
    pub max_topics: usize,
    /// Longest a write to the client may wait for its socket before the session is closed.
    pub write_timeout: Duration,
}

/// Which protocol the client chose at the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// pgws's: messages only, client frames ignored.
    Legacy,
    /// `pgws.v1`: envelopes, control frames, subscribe/unsubscribe/publish.
    V1,
}

/// Why a session ended; the label of `pgws_sessions_closed_total`.
#[derive(Debug, Clone, Copy)]
enum Ending {
    ClientClosed,
    ClientError,
    Shutdown,
    TooSlow,
    PingTimeout,
    TokenExpired,
    HubDropped,
    TooBig,
    WriteTimeout,
}

impl Ending {
    fn label(self) -> &'static str {
        match self {
            Ending::ClientClosed => "client_closed",
            Ending::ClientError => "client_error",
            Ending::Shutdown => "shutdown",
            Ending::TooSlow => "too_slow",
            Ending::PingTimeout => "ping_timeout",
            Ending::TokenExpired => "token_expired",
            Ending::HubDropped => "hub_dropped",
            Ending::TooBig => "message_too_big",
            Ending::WriteTimeout => "write_timeout",
        }
    }
}

/// One connected client.
pub struct Session {
    pub registration: Registration,
    pub identity: Identity,
    pub protocol: Protocol,
}

impl Session {
    /// Serves the upgraded connection until it ends; dropping the registration unregisters it.
    pub async fn run(
        self,
        mut ws: WebSocket,
        ctx: Arc<SessionContext>,
        shutdown: CancellationToken,
    ) {
        metrics::counter!(m::CONNECTIONS_OPENED).increment(1);
        let Session {
            mut registration,
            identity,
            protocol,
        } = self;
        let mut ping = tokio::time::interval(ctx.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut answered = true;
        let expiry = tokio::time::sleep(until(identity.expires_at));
        tokio::pin!(expiry);
        let mut state = V1State {
            subscriptions: HashSet::new(),
            limit: RateLimit::new(ctx.publish_rate, ctx.publish_burst),
        };
        if protocol == Protocol::V1 {
            let hello = protocol::welcome(
                identity.tenant.as_str(),
                &identity.topic_list(),
                identity.can_publish,
            );
            let _ = within(ctx.write_timeout, ws.send(Message::Text(hello.into()))).await;
        }

        let ending = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    close(&mut ws, CLOSE_GOING_AWAY, "server shutting down").await;
                    break Ending::Shutdown;
                }
                _ = registration.overflowed.cancelled() => {
                    close(&mut ws, CLOSE_TOO_SLOW, "client too slow: message queue full").await;
                    break Ending::TooSlow;
                }
                _ = &mut expiry, if identity.expires_at.is_some() => {
                    close(&mut ws, CLOSE_TOKEN_EXPIRED, "token expired").await;
                    break Ending::TokenExpired;
                }
                frame = registration.frames.recv() => {
                    let Some(frame) = frame else { break Ending::HubDropped };
                    let write = write_batch(&mut ws, frame, &mut registration.frames);
                    // A client that stops reading leaves this write pending; the hub then overflows
                    // its queue and cancels `overflowed`, which must end the session even mid-write.
                    // A socket that takes nothing for the write timeout ends the session even when
                    // its queue never fills (a trickle of messages to a client that stopped reading).
                    let written = tokio::select! {
                        r = within(ctx.write_timeout, write) => r,
                        _ = registration.overflowed.cancelled() => Err(Ending::TooSlow),
                        _ = shutdown.cancelled() => Err(Ending::Shutdown),
                    };
                    if let Err(ending) = written {
                        break ending;
                    }
                }
                incoming = ws.recv() => match incoming {
                    None => break Ending::ClientClosed,
                    Some(Err(e)) if is_too_big(&e) => {
                        close(&mut ws, CLOSE_TOO_BIG, "message too big").await;
                        break Ending::TooBig;
                    }
                    Some(Err(_)) => break Ending::ClientError,
                    Some(Ok(Message::Close(_))) => {
                        // tungstenite queued the closing reply; flushing sends it.
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
                        break Ending::ClientClosed;
                    }
                    Some(Ok(Message::Pong(_))) => answered = true,
                    Some(Ok(Message::Text(text))) if protocol == Protocol::V1 => {
                        answered = true;
                        // Boxed: the publish path (guest call, database round trip) is a large
                        // future, and inlined it would make every idle session's task that large.
                        let reply =
                            Box::pin(state.handle(&text, &identity, &registration, &ctx)).await;
                        if let Err(ending) = within(ctx.write_timeout, ws.send(Message::Text(reply.into()))).await {
                            break ending;
                        }
                    }
                    // Pings are answered by tungstenite on the next write; in pgws's protocol the
                    // client's own messages carry nothing and are ignored, as pgws does.
                    Some(Ok(_)) => {
                        answered = true;
                        if let Err(ending) = within(ctx.write_timeout, ws.flush()).await {
                            break ending;
                        }
                    }
                },
                _ = ping.tick() => {
                    if !answered {
                        close(&mut ws, CLOSE_PING_TIMEOUT, "no pong within the keepalive interval").await;
                        break Ending::PingTimeout;
                    }
                    answered = false;
                    if let Err(ending) = within(ctx.write_timeout, ws.send(Message::Ping(Default::default()))).await {
                        break ending;
                    }
                }
            }
        };
        metrics::counter!(m::SESSIONS_CLOSED, "reason" => ending.label()).increment(1);
        tracing::debug!(tenant = %identity.tenant, reason = ending.label(), "session closed");
    }
}

/// Runs one write to the client, bounded by the write timeout; the ending it causes, if any.
async fn within(
    limit: Duration,
    write: impl std::future::Future<Output = Result<(), axum::Error>>,
) -> Result<(), Ending> {
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Ending::ClientError),
        Err(_) => Err(Ending::WriteTimeout),
    }
}

/// Time left until `at` (or a very long time when there is none).
fn until(at: Option<std::time::SystemTime>) -> Duration {
    match at {
        Some(at) => at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
        None => Duration::from_secs(u32::MAX.into()),
    }
}

/// Whether a read failed because the client's message was over the size cap.
fn is_too_big(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(tungstenite::Error::Capacity(_)) = e.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// What a `pgws.v1` session keeps between client frames.
struct V1State {
    subscriptions: HashSet<Topic>,
    limit: RateLimit,
}

impl V1State {
    /// Acts on one client frame and returns the answer to send back.
    async fn handle(
        &mut self,
        text: &str,
        identity: &Identity,
        registration: &Registration,
        ctx: &SessionContext,
    ) -> String {
        let frame = match ClientFrame::parse(text) {
            Ok(f) => f,
            Err(e) => {
                let r = protocol::peek_ref(text);
                return protocol::error(e.code(), &e.to_string(), r.as_ref());
            }
        };
        match frame {
            ClientFrame::Subscribe { topics, r#ref } => {
                let refused: Vec<&str> = topics
                    .iter()
                    .filter(|t| !identity.allows(t))
                    .map(Topic::as_str)
                    .collect();
                if !refused.is_empty() {
                    let msg = format!("not allowed by your token: {}", refused.join(", "));
                    return protocol::error("forbidden_topic", &msg, r#ref.as_ref());
                }
                let new = topics
                    .iter()
                    .filter(|t| !self.subscriptions.contains(*t))
                    .count();
                if self.subscriptions.len() + new > ctx.max_topics {
                    metrics::counter!(m::LIMIT_REFUSALS, "limit" => "topics_per_session")
                        .increment(1);
                    let msg = format!("at most {} topics per connection", ctx.max_topics);
                    return protocol::error("too_many_topics", &msg, r#ref.as_ref());
                }
                self.subscriptions.extend(topics.iter().cloned());
                registration.set_filter(TopicFilter::Only(self.subscriptions.clone()));
                protocol::subscribed("subscribed", &topics, r#ref.as_ref())
            }
            ClientFrame::Unsubscribe { topics, r#ref } => {
                for t in &topics {
                    self.subscriptions.remove(t);
                }
                registration.set_filter(TopicFilter::Only(self.subscriptions.clone()));
                protocol::subscribed("unsubscribed", &topics, r#ref.as_ref())
            }
            ClientFrame::Publish { topic, data, r#ref } => {
                let r = r#ref.as_ref();
                let outcome = self.publish(topic, data, identity, ctx).await;
                let label: &'static str = match &outcome {
                    Ok(()) => "published",
                    Err((code, _)) => code,
                };
                metrics::counter!(m::CLIENT_PUBLISHES, "outcome" => label).increment(1);
                match outcome {
                    Ok(()) => protocol::published(r),
                    Err((code, message)) => protocol::error(code, &message, r),
                }
            }
        }
    }

    async fn publish(
        &mut self,
        topic: Option<Topic>,
        data: crate::envelope::JsonBody,
        identity: &Identity,
        ctx: &SessionContext,
    ) -> Result<(), (&'static str, String)> {
        if !identity.can_publish {
            return Err((
                "read_only",
                "your token does not allow publishing (mode \"r\")".into(),
            ));
        }
        if !identity.may_publish_to(topic.as_ref()) {
            return Err(match &topic {
                Some(t) => ("forbidden_topic", format!("not allowed by your token: {t}")),
                None => (
                    "forbidden_topic",
                    "your token is limited to topics: publish to one of them".into(),
                ),
            });
        }
        if !self.limit.take() {
            return Err((
                "rate_limited",
                format!("at most {} publishes per second", ctx.publish_rate),
            ));
        }
        let body = match ctx
            .workers
            .client_message(&identity.tenant, topic.clone(), data)
            .await
        {
            ClientOutcome::Accept(body) => body,
            ClientOutcome::Reject(reason) => return Err(("rejected", reason)),
        };
        ctx.publisher
            .publish(&identity.tenant, topic.as_ref(), &body)
            .await
            .map_err(|e| match e {
                PublishError::TooLarge(_) => ("too_large", e.to_string()),
                PublishError::Unavailable(_) => ("publish_failed", e.to_string()),
            })
    }
}

/// Writes `first` and whatever else is already queued (up to [`MAX_BATCH`]) with one flush, so a
/// backlog leaves in one socket write instead of one per frame.
async fn write_batch(
    ws: &mut WebSocket,
    first: Utf8Bytes,
    queue: &mut mpsc::Receiver<Utf8Bytes>,
) -> Result<(), axum::Error> {
    ws.feed(Message::Text(first)).await?;
    for _ in 1..MAX_BATCH {
        match queue.try_recv() {
            Ok(frame) => ws.feed(Message::Text(frame)).await?,
            Err(_) => break,
        }
    }
    ws.flush().await
}

async fn close(ws: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.send(Message::Close(Some(frame)))).await;
}
