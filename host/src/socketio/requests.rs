//! The answers to a socket's requests: `subscribe`, `unsubscribe` and `test_pub`, each checked
//! against the channel name rule, the reserved channels and the token, and answered with its
//! acknowledgement or `error`. The socket's connection, admission and request queue are `socketio`'s.

use serde_json::Value;
use socketioxide::extract::SocketRef;

use super::{Member, Request, SocketIoContext};
use crate::auth::Identity;
use crate::channels::{ChannelName, SubscribeError};
use crate::envelope::{JsonBody, Topic};
use crate::hub::Hold;
use crate::metrics as m;
use crate::publisher::MAX_PAYLOAD;
use crate::workers::ClientOutcome;

/// Answers one request: the acknowledgement event, or `error`.
pub(super) async fn answer(
    ctx: &SocketIoContext,
    member: &Member,
    s: &SocketRef,
    request: Request,
) {
    // A `test_pub`'s hold on the socket's events ends after `published` is queued, so the event it
    // caused follows the answer.
    let mut hold: Option<Hold> = None;
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
        Request::TestPub(data) => {
            let result = test_pub(ctx, member, s, data).await.map(|(channel, held)| {
                hold = Some(held);
                channel
            });
            ("test_pub", result, "published")
        }
    };
    match result {
        Ok(channel) => emit(s, ack, &serde_json::json!({ "channel": channel })),
        Err(e) => fail(s, event, e),
    }
    drop(hold);
}

pub(super) fn message(text: &str) -> Value {
    serde_json::json!({ "message": text })
}

/// Sends one event to the socket; a send that fails is logged and counted, never lost silently.
pub(super) fn emit(s: &SocketRef, event: &str, data: &Value) {
    if let Err(e) = s.emit(event, data) {
        metrics::counter!(m::SOCKETIO_SEND_FAILURES, "event" => event.to_owned()).increment(1);
        tracing::debug!(event, error = %e, "socket.io event could not be sent");
    }
}

pub(super) fn fail(s: &SocketRef, event: &'static str, error: String) {
    metrics::counter!(m::SOCKETIO_ERRORS, "event" => event).increment(1);
    tracing::debug!(event, error = %error, "socket.io request refused");
    emit(s, "error", &message(&error));
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
    if subscribed.len() >= ctx.max_channels {
        metrics::counter!(m::LIMIT_REFUSALS, "limit" => "channels_per_socket").increment(1);
        return Err(format!(
            "too many subscriptions: at most {} channels per connection",
            ctx.max_channels
        ));
    }
    // A subscriber before the LISTEN is confirmed, so the first NOTIFY after `subscribed` finds it.
    ctx.hub.join(&identity.tenant, channel.as_str(), s);
    subscribed.insert(channel.clone());
    match ctx.channels.subscribe(&identity.tenant, &channel).await {
        Ok(()) => Ok(channel.to_string()),
        // Counted before the LISTEN was queued, so released with the rest on disconnect.
        Err(e @ SubscribeError::ListenerGone) => Err(e.to_string()),
        // Refused before anything was counted: undo the subscription and the list.
        Err(e) => {
            ctx.hub.leave(&identity.tenant, channel.as_str(), s.id);
            subscribed.remove(&channel);
            let limit = match e {
                SubscribeError::Tenant(_) => "listen_channels_per_tenant",
                _ => "listen_channels",
            };
            metrics::counter!(m::LIMIT_REFUSALS, "limit" => limit).increment(1);
            Err(format!("subscribe {:?} refused: {e}", channel.as_str()))
        }
    }
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

/// Takes the socket off the channel's subscribers and gives back its count on the channel.
pub(super) fn release(
    ctx: &SocketIoContext,
    identity: &Identity,
    s: &SocketRef,
    channel: &ChannelName,
) {
    ctx.hub.leave(&identity.tenant, channel.as_str(), s.id);
    ctx.channels.unsubscribe(&identity.tenant, channel);
}

/// Publishes a client's message; on success, the channel and the hold on the socket's events
/// there, to be dropped once `published` is sent.
async fn test_pub(
    ctx: &SocketIoContext,
    member: &Member,
    s: &SocketRef,
    data: Option<Value>,
) -> Result<(String, Hold), String> {
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
        ClientOutcome::Busy(reason) => {
            metrics::counter!(m::CLIENT_PUBLISHES, "outcome" => "busy").increment(1);
            return Err(format!("test_pub failed: {reason}"));
        }
    };
    let hold = ctx.hub.hold(&identity.tenant, channel.as_str(), s.id);
    ctx.publisher
        .notify(channel.as_str(), &body)
        .await
        .map_err(|e| format!("test_pub failed: {e}"))?;
    metrics::counter!(m::CLIENT_PUBLISHES, "outcome" => "published").increment(1);
    Ok((channel.to_string(), hold))
}
