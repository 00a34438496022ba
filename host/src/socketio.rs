//! The socket.io endpoint at `/socket.io/`: socketio_pg's events, with auth, tenant isolation, guests
//! and commit order added.
//!
//! Owns the socketioxide layer, who a socket.io client is (the same JWT rules as `/ws`, token from the
//! `auth` payload, `?token=` or `Authorization: Bearer`), each socket's subscriptions, and the rooms
//! events are emitted to: one room per (tenant, channel), so a message runs through a tenant's guest
//! once and is encoded once for all of that tenant's sockets on the channel. Events, as socketio_pg
//! named and shaped them:
//!
//! - server → `server_hello {client}` on connect;
//! - `subscribe {channel}` → `subscribed {channel}`; then `event {channel, payload}` per NOTIFY, the
//!   payload parsed as JSON when it parses and the plain string otherwise;
//! - `unsubscribe {channel}` → `unsubscribed {channel}`;
//! - `test_pub {channel, payload}` → the tenant guest's client-message hook → `NOTIFY` → `published
//!   {channel}` (only with an `rw` token or `--socketio-test-pub`);
//! - anything wrong → `error {message}`, and nothing else changes.
//!
//! It does not LISTEN itself (`channels` counts subscriptions, `listener` applies them) and does not run
//! guests (`pipeline`); it is where both end up for socket.io clients.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use futures_util::FutureExt as _;
use serde_json::Value;
use socketioxide::extract::{Event, SocketRef, TryData};
use socketioxide::handler::ConnectHandler as _;
use socketioxide::layer::SocketIoLayer;
use socketioxide::SocketIo;
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, Authenticator, Identity};
use crate::channels::{ChannelName, Channels};
use crate::envelope::{JsonBody, TenantId, Topic};
use crate::guest::Authorization;
use crate::metrics as m;
use crate::pipeline::{ClientOutcome, Workers};
use crate::publisher::{Publisher, RateLimit, MAX_PAYLOAD};

/// Channels one socket may hold at once.
const MAX_SUBSCRIPTIONS: usize = 256;

/// The socket.io NOTIFY payload as the JSON a guest sees: the text itself when it is JSON, otherwise
/// the text as a JSON string (socketio_pg delivered non-JSON payloads, including the empty one, as
/// plain strings).
pub fn payload_body(payload: &str) -> JsonBody {
    JsonBody::parse(payload).unwrap_or_else(|_| JsonBody::string(payload))
}

/// Handle the pipeline's workers emit through.
#[derive(Clone)]
pub struct Rooms {
    io: SocketIo,
}

impl Rooms {
    /// Emits `event {channel, payload}` to `tenant`'s sockets subscribed to `channel`.
    pub fn deliver(&self, tenant: &TenantId, channel: &str, body: &JsonBody) {
        let Ok(payload) = serde_json::from_str::<Value>(body.as_str()) else {
            return;
        };
        let data = serde_json::json!({ "channel": channel, "payload": payload });
        // socketioxide's in-process adapter completes a broadcast before returning (its future is
        // `ready`), so polling it once on this worker thread is the whole send, in order.
        let sent = self
            .io
            .to(room(tenant, channel))
            .emit("event", &data)
            .now_or_never();
        match sent {
            Some(Ok(())) => metrics::counter!(m::SOCKETIO_EVENTS).increment(1),
            Some(Err(e)) => {
                metrics::counter!(m::SOCKETIO_SEND_FAILURES).increment(1);
                tracing::debug!(%tenant, channel, error = %e, "socket.io emit reached not every socket");
            }
            None => {
                tracing::error!(%tenant, channel, "socket.io broadcast did not complete at once")
            }
        }
    }

    /// Disconnects every socket.io client (server shutdown); their disconnect handlers release their
    /// channels.
    pub async fn close(&self) {
        self.io.close().await;
    }
}

/// The room of one tenant's subscribers to one channel. Tenant names cannot contain `:`, so the
/// first `:` ends the tenant.
fn room(tenant: &TenantId, channel: &str) -> String {
    format!("{tenant}:{channel}")
}

/// What the socket.io handlers need.
pub struct SocketIoContext {
    pub auth: Option<Arc<Authenticator>>,
    pub insecure_tenant_param: bool,
    /// Clients without a token connect as this tenant, with every channel (socketio_pg's behaviour).
    pub anonymous_tenant: Option<TenantId>,
    /// `test_pub` for every client, not only `rw` tokens (development).
    pub test_pub: bool,
    pub channels: Arc<Channels>,
    pub workers: Workers,
    pub publisher: Arc<Publisher>,
    /// `test_pub`s per second one socket may sustain, and the burst it may spend at once.
    pub publish_rate: f64,
    pub publish_burst: f64,
    pub shutdown: CancellationToken,
}

/// The socketioxide layer (mount it on the router) and the [`Rooms`] handle for the workers. The
/// namespace is attached later with [`attach`], once the workers exist. `queue_len` packets may wait
/// for one socket; `read_buffer` is its WebSocket read buffer (small keeps idle sockets cheap).
pub fn layer(queue_len: usize, read_buffer: usize) -> (SocketIoLayer, Rooms) {
    let (layer, io) = SocketIo::builder()
        .max_buffer_size(queue_len.max(16))
        .ws_read_buffer_size(read_buffer.max(256))
        .build_layer();
    (layer, Rooms { io })
}

/// Serves the default namespace: authentication as a connect middleware, then the events.
pub fn attach(rooms: &Rooms, ctx: Arc<SocketIoContext>) {
    // The event handlers are registered by the middleware, before socketioxide acknowledges the
    // connection: it handles the client's next packets on another task, and a client may send
    // `subscribe` the moment it sees the acknowledgement.
    let admit = move |s: SocketRef, auth: TryData<Value>| {
        let ctx = ctx.clone();
        async move {
            let identity = authenticate(&ctx, &s, auth.0.ok()).await?;
            serve(ctx, &s, identity);
            Ok::<(), Refused>(())
        }
    };
    // Called once the acknowledgement is queued, so the hello follows it and precedes any answer.
    let hello = |s: SocketRef| {
        let client = s
            .req_parts()
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_default();
        let _ = s.emit("server_hello", &serde_json::json!({ "client": client }));
        std::future::ready(())
    };
    rooms.io.ns("/", hello.with(admit));
}

/// A connection refused: the reason goes to logs and metrics, the message to the client's
/// `connect_error`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct Refused {
    message: String,
}

fn refuse(reason: &'static str, message: String) -> Refused {
    metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => reason).increment(1);
    tracing::info!(reason, detail = %message, "socket.io connection refused");
    Refused { message }
}

fn query_param<'a>(s: &'a SocketRef, name: &str) -> Option<&'a str> {
    s.req_parts().uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then_some(v)
    })
}

/// Finds and verifies the client's token (or applies the development rules) and asks the tenant
/// guest's authorize hook.
async fn authenticate(
    ctx: &SocketIoContext,
    s: &SocketRef,
    auth: Option<Value>,
) -> Result<Identity, Refused> {
    if ctx.shutdown.is_cancelled() {
        return Err(refuse("shutting_down", "server is shutting down".into()));
    }
    let from_auth = |key: &str| {
        auth.as_ref()
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let header = s
        .req_parts()
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let token = from_auth("token")
        .or(header)
        .or_else(|| query_param(s, "token").map(str::to_owned));
    let tenant_param = from_auth("tenant").or_else(|| query_param(s, "tenant").map(str::to_owned));

    let identity = match (token, &ctx.auth) {
        (Some(token), Some(auth)) => auth
            .verify(&token)
            .map_err(|e| refuse(e.reason(), e.to_string()))?,
        (Some(_), None) => {
            return Err(refuse(
                "tokens_disabled",
                "this server accepts no tokens (no --jwt-secret or --jwt-public-key)".into(),
            ))
        }
        (None, _) if ctx.insecure_tenant_param && tenant_param.is_some() => {
            let name = tenant_param.unwrap_or_default();
            let tenant = TenantId::parse(&name)
                .map_err(|e| refuse("invalid_tenant", format!("invalid tenant name: {e}")))?;
            Identity::insecure(tenant)
        }
        (None, _) => match &ctx.anonymous_tenant {
            Some(tenant) => Identity::insecure(tenant.clone()),
            None if ctx.insecure_tenant_param => {
                return Err(refuse(
                    "missing_tenant",
                    "no token and no tenant: connect with auth {token}, auth {tenant} or ?tenant=<name>"
                        .into(),
                ))
            }
            None => {
                return Err(refuse(
                    AuthError::Missing.reason(),
                    "no token: connect with auth {token} or ?token=<token>".into(),
                ))
            }
        },
    };
    let verdict = ctx
        .workers
        .authorize(&identity, identity.channel_list())
        .await;
    if let Authorization::Deny(reason) = verdict {
        return Err(refuse("guest_denied", format!("denied: {reason}")));
    }
    Ok(identity)
}

/// One connected socket's state.
struct Member {
    identity: Identity,
    /// Channels this socket subscribed to; only its request task changes them while it lives.
    subscribed: Mutex<HashSet<ChannelName>>,
    /// Cancelled when the socket goes; ends the request task and the expiry timer.
    gone: CancellationToken,
    /// The `test_pub` rate limit.
    published: std::sync::Mutex<RateLimit>,
}

/// A client request, queued in arrival order.
enum Request {
    Subscribe(Option<Value>),
    Unsubscribe(Option<Value>),
    TestPub(Option<Value>),
}

/// Requests one socket may have waiting; past this a request is refused with `error`.
const MAX_PENDING_REQUESTS: usize = 64;

/// Registers the event handlers of an admitted socket and starts its request task.
///
/// socketioxide runs each event handler as its own task, so two requests of one client could finish
/// in either order. Here the handlers only queue the request (synchronously, in arrival order) and
/// one task per socket answers them one after another: `subscribe` then `test_pub` sent without
/// waiting still subscribe first.
fn serve(ctx: Arc<SocketIoContext>, s: &SocketRef, identity: Identity) {
    metrics::counter!(m::SOCKETIO_CONNECTIONS).increment(1);
    tracing::debug!(tenant = %identity.tenant, protocol = ?s.protocol(), "socket.io client admitted");
    let member = Arc::new(Member {
        subscribed: Mutex::new(HashSet::new()),
        gone: CancellationToken::new(),
        published: std::sync::Mutex::new(RateLimit::new(ctx.publish_rate, ctx.publish_burst)),
        identity,
    });
    if let Some(exp) = member.identity.expires_at {
        let (s, gone) = (s.clone(), member.gone.clone());
        tokio::spawn(async move {
            let left = exp.saturating_sub(jsonwebtoken::get_current_timestamp());
            tokio::select! {
                _ = gone.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(left)) => {
                    let _ = s.emit("error", &message("token expired"));
                    let _ = s.disconnect();
                }
            }
        });
    }

    let (queue, mut requests) = mpsc::channel::<Request>(MAX_PENDING_REQUESTS);
    let (c, m, socket) = (ctx.clone(), member.clone(), s.clone());
    tokio::spawn(async move {
        loop {
            let request = tokio::select! {
                biased;
                _ = m.gone.cancelled() => break,
                r = requests.recv() => match r {
                    Some(r) => r,
                    None => break,
                },
            };
            answer(&c, &m, &socket, request).await;
        }
    });
    for (event, make) in [
        (
            "subscribe",
            Request::Subscribe as fn(Option<Value>) -> Request,
        ),
        ("unsubscribe", Request::Unsubscribe),
        ("test_pub", Request::TestPub),
    ] {
        let queue = queue.clone();
        s.on(event, move |s: SocketRef, TryData(data): TryData<Value>| {
            if queue.try_send(make(data.ok())).is_err() {
                fail(
                    &s,
                    "overloaded",
                    format!("{event} refused: more than {MAX_PENDING_REQUESTS} requests waiting"),
                );
            }
            std::future::ready(())
        });
    }
    // socketio_pg's page sends `client_hello` on connect; it needs no answer.
    s.on("client_hello", async || {});
    s.on_fallback(async |s: SocketRef, Event(event): Event| {
        fail(
            &s,
            "unknown",
            format!(
                "unknown event {event:?}; this server answers subscribe, unsubscribe and test_pub"
            ),
        );
    });
    s.on_disconnect(move |s: SocketRef| {
        let (ctx, member) = (ctx.clone(), member.clone());
        async move {
            member.gone.cancel();
            let subscribed = std::mem::take(&mut *member.subscribed.lock().await);
            for channel in subscribed {
                release(&ctx, &member.identity, &s, &channel);
            }
            metrics::counter!(m::SOCKETIO_DISCONNECTIONS).increment(1);
        }
    });
}

/// Answers one request: the acknowledgement event, or `error`.
async fn answer(ctx: &SocketIoContext, member: &Member, s: &SocketRef, request: Request) {
    let (event, result, ack) = match request {
        Request::Subscribe(data) => (
            "subscribe",
            subscribe(ctx, member, s, data).await,
            "subscribed",
        ),
        Request::Unsubscribe(data) => (
            "unsubscribe",
            unsubscribe(ctx, member, s, data).await,
            "unsubscribed",
        ),
        Request::TestPub(data) => ("test_pub", test_pub(ctx, member, data).await, "published"),
    };
    match result {
        Ok(channel) => emit(s, ack, &serde_json::json!({ "channel": channel })),
        Err(e) => fail(s, event, e),
    }
}

fn message(text: &str) -> Value {
    serde_json::json!({ "message": text })
}

fn emit(s: &SocketRef, event: &str, data: &Value) {
    let _ = s.emit(event, data);
}

fn fail(s: &SocketRef, event: &'static str, error: String) {
    metrics::counter!(m::SOCKETIO_ERRORS, "event" => event).increment(1);
    tracing::debug!(event, error = %error, "socket.io request refused");
    let _ = s.emit("error", &message(&error));
}

/// The `channel` of a request, checked against the name rule, the reserved channels and the token.
fn requested_channel(
    ctx: &SocketIoContext,
    identity: &Identity,
    event: &str,
    data: Option<&Value>,
) -> Result<ChannelName, String> {
    let name = match data.and_then(|d| d.get("channel")) {
        Some(Value::String(name)) => name,
        Some(other) => {
            return Err(format!(
                "{event}: \"channel\" must be a string, not {other}"
            ))
        }
        None => return Err(format!("{event} needs {{\"channel\": \"<name>\"}}")),
    };
    let channel = ChannelName::parse(name).map_err(|e| format!("invalid channel {name:?}: {e}"))?;
    if ctx.channels.is_reserved(&channel) {
        return Err(format!(
            "channel {name:?} is reserved: it carries every tenant's messages"
        ));
    }
    if !identity.allows_channel(&channel) {
        return Err(format!("channel {name:?} is not allowed by your token"));
    }
    Ok(channel)
}

async fn subscribe(
    ctx: &SocketIoContext,
    member: &Member,
    s: &SocketRef,
    data: Option<Value>,
) -> Result<String, String> {
    let identity = &member.identity;
    let channel = requested_channel(ctx, identity, "subscribe", data.as_ref())?;
    let mut subscribed = member.subscribed.lock().await;
    // The disconnect handler cancels `gone` before it takes this lock to release every channel; a
    // subscribe that gets the lock after it must not count a channel no one will release.
    if member.gone.is_cancelled() {
        return Err("disconnected".into());
    }
    if subscribed.contains(&channel) {
        return Ok(channel.to_string());
    }
    if subscribed.len() >= MAX_SUBSCRIPTIONS {
        return Err(format!(
            "too many subscriptions: at most {MAX_SUBSCRIPTIONS} channels per connection"
        ));
    }
    // In the room before the LISTEN is confirmed, so the first NOTIFY after `subscribed` finds it.
    s.join(room(&identity.tenant, channel.as_str()));
    subscribed.insert(channel.clone());
    if ctx
        .channels
        .subscribe(&identity.tenant, &channel)
        .await
        .is_err()
    {
        return Err("server is shutting down".into());
    }
    Ok(channel.to_string())
}

async fn unsubscribe(
    ctx: &SocketIoContext,
    member: &Member,
    s: &SocketRef,
    data: Option<Value>,
) -> Result<String, String> {
    let identity = &member.identity;
    let channel = requested_channel(ctx, identity, "unsubscribe", data.as_ref())?;
    let mut subscribed = member.subscribed.lock().await;
    if subscribed.remove(&channel) {
        release(ctx, identity, s, &channel);
    }
    Ok(channel.to_string())
}

/// Takes the socket out of the channel's room and gives back its count on the channel.
fn release(ctx: &SocketIoContext, identity: &Identity, s: &SocketRef, channel: &ChannelName) {
    s.leave(room(&identity.tenant, channel.as_str()));
    ctx.channels.unsubscribe(&identity.tenant, channel);
}

async fn test_pub(
    ctx: &SocketIoContext,
    member: &Member,
    data: Option<Value>,
) -> Result<String, String> {
    let identity = &member.identity;
    if !(identity.can_publish || ctx.test_pub) {
        return Err(
            "test_pub needs a token with \"mode\": \"rw\" (or a server started with --socketio-test-pub)"
                .into(),
        );
    }
    let channel = requested_channel(ctx, identity, "test_pub", data.as_ref())?;
    let limited = !member
        .published
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if limited {
        metrics::counter!(m::CLIENT_PUBLISHES, "outcome" => "rate_limited").increment(1);
        return Err("test_pub rate limit exceeded; slow down".into());
    }
    // socketio_pg sent `{}` when no payload was given.
    let payload = data
        .as_ref()
        .and_then(|d| d.get("payload"))
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    let body = JsonBody::from_string(payload.to_string())
        .map_err(|e| format!("test_pub: payload is not JSON: {e}"))?;
    if body.as_str().len() >= MAX_PAYLOAD {
        return Err(format!(
            "test_pub: payload is {} bytes; Postgres accepts at most {}",
            body.as_str().len(),
            MAX_PAYLOAD - 1
        ));
    }
    // The guest sees the channel as the message's topic; channel names are valid topic names.
    let topic = Topic::parse(channel.as_str()).ok();
    let body = match ctx
        .workers
        .client_message(&identity.tenant, topic, body)
        .await
    {
        ClientOutcome::Accept(body) => body,
        ClientOutcome::Reject(reason) => {
            metrics::counter!(m::CLIENT_PUBLISHES, "outcome" => "guest_rejected").increment(1);
            return Err(format!("test_pub rejected: {reason}"));
        }
    };
    ctx.publisher
        .notify(channel.as_str(), &body)
        .await
        .map_err(|e| format!("test_pub failed: {e}"))?;
    metrics::counter!(m::CLIENT_PUBLISHES, "outcome" => "published").increment(1);
    Ok(channel.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_become_json_like_socketio_pg() {
        assert_eq!(payload_body(r#"{"a":1}"#).as_str(), r#"{"a":1}"#);
        assert_eq!(payload_body("42").as_str(), "42");
        assert_eq!(payload_body("[1,2]").as_str(), "[1,2]");
        assert_eq!(payload_body("hello").as_str(), r#""hello""#);
        assert_eq!(payload_body("").as_str(), r#""""#);
        assert_eq!(payload_body("say \"hi\"").as_str(), r#""say \"hi\"""#);
    }

    #[test]
    fn rooms_are_per_tenant() {
        let a = TenantId::parse("a").expect("a");
        assert_eq!(room(&a, "x:y"), "a:x:y");
    }
}
