//! The socket.io endpoint at `/socket.io/`: socketio_pg's events, with auth, tenant isolation, guests
//! and commit order added.
//!
//! Owns the socketioxide layer, the credentials a socket.io client presents (token from the `auth`
//! payload, `?token=` or `Authorization: Bearer`, judged by the one identity rule of `auth`), and
//! each socket's subscriptions. Sessions that have not authenticated yet are capped by `handshakes`. A socket
//! holds a place among the server's connections (`admission`) like a `/ws` session. Events, as
//! socketio_pg named and shaped them:
//!
//! - server → `server_hello {client}` on connect;
//! - `subscribe {channel}` → `subscribed {channel}`; then `event {channel, payload}` per NOTIFY, the
//!   payload parsed as JSON when it parses and the plain string otherwise;
//! - `unsubscribe {channel}` → `unsubscribed {channel}`;
//! - `test_pub {channel, payload}` → the tenant guest's client-message hook → `NOTIFY` → `published
//!   {channel}` (only with an `rw` token or `--socketio-test-pub`);
//! - anything wrong → `error {message}`, and nothing else changes.
//!
//! Deliveries reach a socket because its subscriptions are subscribers of the `hub`, the same fan-out
//! `/ws` sessions use; a socket's `test_pub` holds its events on that channel until `published` is
//! sent, so the answer comes before the event it caused (socketio_pg's order). It does not LISTEN
//! itself (`channels` counts subscriptions, `listener` applies them) and does not run guests
//! (`workers`).

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use serde_json::Value;
use socketioxide::extract::{Event, SocketRef, TryData};
use socketioxide::handler::ConnectHandler as _;
use socketioxide::layer::SocketIoLayer;
use socketioxide::SocketIo;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::admission::{Admission, Ticket};
use crate::auth::{Credentials, Identity, IdentityRules};
use crate::channels::{ChannelName, Channels};
use crate::guest::Authorization;
use crate::handshakes::Handshakes;
use crate::hub::Hub;
use crate::metrics as m;
use crate::publisher::{Publisher, RateLimit};
use crate::workers::Workers;

mod head;
mod polling;
mod requests;

pub use head::own_head;
pub use polling::binary_polling;
use requests::{answer, emit, fail, message, release};

/// What the socket.io handlers need.
pub struct SocketIoContext {
    /// Who may connect: the same rule as `/ws`, plus the anonymous tenant (socketio_pg's behaviour).
    pub identity_rules: IdentityRules,
    pub admission: Arc<Admission>,
    /// `test_pub` for every client, not only `rw` tokens (development).
    pub test_pub: bool,
    /// Channels one socket may hold at once.
    pub max_channels: usize,
    pub channels: Arc<Channels>,
    pub hub: Arc<Hub>,
    pub workers: Workers,
    pub publisher: Arc<Publisher>,
    /// `test_pub`s per second one socket may sustain, and the burst it may spend at once.
    pub publish_rate: f64,
    pub publish_burst: f64,
    pub shutdown: CancellationToken,
    pub handshakes: Arc<Handshakes>,
    /// Sockets admitted in the last [`ADMISSION_GRACE`], oldest first, for the admissions sweep.
    pub(crate) admitted: std::sync::Mutex<VecDeque<(Instant, SocketRef, Arc<Member>)>>,
}

/// The socketioxide layer (mount it on the router) and the socket.io server. The namespace is
/// attached later with [`attach`], once the workers exist. `queue_len` packets may wait
/// for one socket (`--session-queue`); the WebSocket read buffer is small to keep idle sockets
/// cheap; an Engine.IO session has `--socketio-connect-timeout-secs` to connect to the namespace.
pub fn layer(
    settings: &crate::config::SocketIoSettings,
    queue_len: usize,
) -> (SocketIoLayer, SocketIo) {
    let (layer, io) = SocketIo::builder()
        .max_buffer_size(queue_len.max(16))
        .ws_read_buffer_size(settings.ws_read_buffer.max(256))
        .connect_timeout(settings.connect_timeout())
        .build_layer();
    (layer, io)
}

/// Serves the default namespace: authentication as a connect middleware, then the events.
pub fn attach(io: &SocketIo, ctx: Arc<SocketIoContext>) {
    let ctx_for_sweep = ctx.clone();
    // The event handlers are registered by the middleware, before socketioxide acknowledges the
    // connection: it handles the client's next packets on another task, and a client may send
    // `subscribe` the moment it sees the acknowledgement.
    let admit = move |s: SocketRef, auth: TryData<Value>| {
        let ctx = ctx.clone();
        async move {
            let (identity, ticket) = authenticate(&ctx, &s, auth.0.ok()).await?;
            serve(ctx, &s, identity, ticket);
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
        emit(&s, "server_hello", &serde_json::json!({ "client": client }));
        std::future::ready(())
    };
    io.ns("/", hello.with(admit));
    tokio::spawn(sweep_admissions(ctx_for_sweep));
}

/// Every second: releases sockets admitted over [`ADMISSION_GRACE`] ago that never got connected.
async fn sweep_admissions(ctx: Arc<SocketIoContext>) {
    loop {
        tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let due: Vec<(SocketRef, Arc<Member>)> = {
            let mut admitted = ctx.admitted.lock().unwrap_or_else(|e| e.into_inner());
            let mut due = Vec::new();
            while admitted
                .front()
                .is_some_and(|(at, _, _)| at.elapsed() >= ADMISSION_GRACE)
            {
                if let Some((_, s, member)) = admitted.pop_front() {
                    due.push((s, member));
                }
            }
            due
        };
        for (s, member) in due {
            if !s.connected() && !member.gone.is_cancelled() {
                tracing::debug!(tenant = %member.identity.tenant, "socket.io client left while being admitted");
                // Each on its own task: a release that waits (on a LISTEN under way) holds up no
                // other, nor the sweep.
                let ctx = ctx.clone();
                tokio::spawn(async move { leave(&ctx, &member, &s).await });
            }
        }
    }
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

/// A query parameter of the request that opened the socket, percent-decoded.
fn query_param(s: &SocketRef, name: &str) -> Option<String> {
    crate::handshakes::query_value(s.req_parts().uri.query(), name)
}

/// Identifies the client by the one identity rule, takes its place among connections, and asks the
/// tenant guest's authorize hook.
async fn authenticate(
    ctx: &SocketIoContext,
    s: &SocketRef,
    auth: Option<Value>,
) -> Result<(Identity, Ticket), Refused> {
    if ctx.shutdown.is_cancelled() {
        return Err(refuse("shutting_down", "server is shutting down".into()));
    }
    let from_auth = |key: &str| {
        auth.as_ref()
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let credentials = Credentials {
        token: from_auth("token").or_else(|| query_param(s, "token")),
        tenant: from_auth("tenant").or_else(|| query_param(s, "tenant")),
        ..Credentials::from_headers(&s.req_parts().headers)
    };
    // A session that sent a valid token with its handshake took no waiting place (see
    // `handshakes::guard`); any other frees its place now, whatever becomes of it.
    let at_handshake = Credentials {
        authorization: credentials.authorization.clone(),
        token: query_param(s, "token"),
        tenant: None,
    };
    if !ctx.handshakes.verified(&at_handshake) {
        ctx.handshakes.connected();
    }
    let identity = crate::auth::identify(&credentials, &ctx.identity_rules)
        .map_err(|r| refuse(r.reason, r.message))?;
    match ctx
        .workers
        .authorize(&identity, identity.channel_list())
        .await
    {
        Ok(Authorization::Allow) => {}
        Ok(Authorization::Deny(reason)) => {
            return Err(refuse("guest_denied", format!("denied: {reason}")))
        }
        Err(crate::workers::Busy(reason)) => return Err(refuse("guest_busy", reason)),
    }
    let ticket = ctx
        .admission
        .admit(&identity.tenant)
        .map_err(|e| refuse(e.reason(), e.to_string()))?;
    Ok((identity, ticket))
}

/// One connected socket's state.
pub(crate) struct Member {
    identity: Identity,
    /// Channels this socket subscribed to; only its request answering changes them while it lives.
    subscribed: Mutex<HashSet<ChannelName>>,
    /// Cancelled when the socket goes; ends the request answering and the expiry timer.
    gone: Gone,
    /// The `test_pub` rate limit.
    published: std::sync::Mutex<RateLimit>,
    /// The socket's place among connections, given back when it disconnects.
    ticket: std::sync::Mutex<Option<Ticket>>,
    /// Requests waiting for their answer, and whether a task is answering them.
    requests: std::sync::Mutex<Requests>,
}

/// A socket's request queue. A task answers it only while it is not empty, so an idle socket holds
/// neither a task nor a channel.
#[derive(Default)]
struct Requests {
    waiting: std::collections::VecDeque<Request>,
    answering: bool,
}

impl Member {
    fn requests(&self) -> std::sync::MutexGuard<'_, Requests> {
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A client request, queued in arrival order.
enum Request {
    Subscribe(Option<Value>),
    Unsubscribe(Option<Value>),
    TestPub(Option<Value>),
}

/// Requests one socket may have waiting; past this a request is refused with `error`. Requests are
/// answered one at a time, so a client that sends faster than it reads answers only grows this
/// queue; 64 covers a client that (re)subscribes to dozens of channels at connect.
const MAX_PENDING_REQUESTS: usize = 64;

/// Registers the event handlers of an admitted socket.
///
/// socketioxide runs each event handler as its own task, so two requests of one client could finish
/// in either order. Here the handlers only queue the request (synchronously, in arrival order) and
/// one task per socket at a time answers them one after another: `subscribe` then `test_pub` sent
/// without waiting still subscribe first.
fn serve(ctx: Arc<SocketIoContext>, s: &SocketRef, identity: Identity, ticket: Ticket) {
    metrics::counter!(m::SOCKETIO_CONNECTIONS).increment(1);
    tracing::debug!(tenant = %identity.tenant, protocol = ?s.protocol(), "socket.io client admitted");
    let member = Arc::new(Member {
        subscribed: Mutex::new(HashSet::new()),
        gone: Gone::default(),
        published: std::sync::Mutex::new(RateLimit::new(ctx.publish_rate, ctx.publish_burst)),
        ticket: std::sync::Mutex::new(Some(ticket)),
        requests: std::sync::Mutex::default(),
        identity,
    });
    if let Some(exp) = member.identity.expires_at {
        let (s, member) = (s.clone(), member.clone());
        tokio::spawn(async move {
            let left = exp
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            tokio::select! {
                _ = member.gone.cancelled() => {}
                _ = tokio::time::sleep(left) => {
                    emit(&s, "error", &message("token expired"));
                    if let Err(e) = s.disconnect() {
                        tracing::debug!(error = %e, "socket.io disconnect at token expiry");
                    }
                }
            }
        });
    }

    // One handler for every event, rather than one registered per event name: a socket then holds
    // no table of handlers (part of what an idle socket costs).
    {
        let (ctx, member) = (ctx.clone(), member.clone());
        s.on_fallback(
            move |s: SocketRef, Event(event): Event, TryData(data): TryData<Value>| {
                let make: fn(Option<Value>) -> Request = match &*event {
                    "subscribe" => Request::Subscribe,
                    "unsubscribe" => Request::Unsubscribe,
                    "test_pub" => Request::TestPub,
                    // socketio_pg's page sends `client_hello` on connect; it needs no answer.
                    "client_hello" => return std::future::ready(()),
                    _ => {
                        fail(
                            &s,
                            "unknown",
                            format!(
                                "unknown event {event:?}; this server answers subscribe, \
                                 unsubscribe and test_pub"
                            ),
                        );
                        return std::future::ready(());
                    }
                };
                let start = {
                    let mut requests = member.requests();
                    if requests.waiting.len() >= MAX_PENDING_REQUESTS {
                        drop(requests);
                        fail(
                            &s,
                            "overloaded",
                            format!(
                                "{event} refused: more than {MAX_PENDING_REQUESTS} requests waiting"
                            ),
                        );
                        return std::future::ready(());
                    }
                    requests.waiting.push_back(make(data.ok()));
                    !std::mem::replace(&mut requests.answering, true)
                };
                if start {
                    tokio::spawn(answer_all(ctx.clone(), member.clone(), s));
                }
                std::future::ready(())
            },
        );
    }
    // A connection lost while it was being admitted never reaches the disconnect handler
    // (socketioxide had not added the socket to the namespace yet): the admissions sweep releases
    // it. One sweep for all sockets rather than a timer task per socket: part of what an idle
    // socket costs.
    ctx.admitted
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push_back((Instant::now(), s.clone(), member.clone()));
    s.on_disconnect(move |s: SocketRef| {
        let (ctx, member) = (ctx.clone(), member.clone());
        async move {
            leave(&ctx, &member, &s).await;
            metrics::counter!(m::SOCKETIO_DISCONNECTIONS).increment(1);
        }
    });
}

/// Whether a socket went, and a wake-up for the one task that waits for it (its token's expiry):
/// part of the member, where a `CancellationToken` was one more allocation per socket.
#[derive(Default)]
struct Gone {
    flag: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

impl Gone {
    fn is_cancelled(&self) -> bool {
        self.flag.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn cancel(&self) {
        if !self.flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
            // Kept as a permit if the waiter is not waiting yet.
            self.wake.notify_one();
        }
    }

    async fn cancelled(&self) {
        if !self.is_cancelled() {
            self.wake.notified().await;
        }
    }
}

/// Answers a socket's waiting requests in order until none is left (or the socket is gone).
async fn answer_all(ctx: Arc<SocketIoContext>, member: Arc<Member>, s: SocketRef) {
    loop {
        let request = {
            let mut requests = member.requests();
            match requests.waiting.pop_front() {
                Some(r) if !member.gone.is_cancelled() => r,
                _ => {
                    requests.waiting.clear();
                    requests.answering = false;
                    return;
                }
            }
        };
        answer(&ctx, &member, &s, request).await;
    }
}

/// How long after admission a socket must be connected; socketioxide connects it right after the
/// connect middleware returns, so anything longer means the client left meanwhile.
const ADMISSION_GRACE: Duration = Duration::from_secs(5);

/// Ends a socket's membership: stops its tasks, gives its place among connections back and releases
/// its channels. Safe to call twice.
async fn leave(ctx: &SocketIoContext, member: &Member, s: &SocketRef) {
    member.gone.cancel();
    member
        .ticket
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let subscribed = std::mem::take(&mut *member.subscribed.lock().await);
    for channel in subscribed {
        release(ctx, &member.identity, s, &channel);
    }
}
