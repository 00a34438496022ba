//! One WebSocket client, from upgrade to close.
//!
//! Owns the client's reading side (frames parsed by `wire`, with no buffer held while idle), its
//! timers, flushing whatever its outbox could not write at once, and — for `pgws.v1` clients — the
//! subscription list, the publish rate limit and the answers to client frames. It answers pings,
//! sends keepalive pings, and closes with a code that says why: 1000 when the client leaves, 1001 on
//! server shutdown, 1002 or 1007 on a broken frame, 1008 when pings go unanswered, 1009 when the
//! client sends a message over `--max-client-message`, 1013 when it was too slow to keep its queue
//! from filling, 4001 when its token expires; a client whose socket takes nothing for
//! `--write-timeout-secs` is dropped without one (none could reach it). It does not decide who the
//! client is (`upgrade`, `auth`) or what it is sent (`hub` writes deliveries into the outbox).

mod v1;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::hub::Registration;
use crate::metrics as m;
use crate::outbox::{Ended, Flush, Outbox};
use crate::publisher::Publisher;
use crate::wire::{self, Incoming, ReadError};
use crate::workers::Workers;
use v1::{Answer, V1State};

/// How long a close frame (and what is queued before it) may take to leave before the socket is
/// simply dropped.
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
    /// Longest the socket may take nothing while frames wait for it before the session is closed.
    pub write_timeout: Duration,
    /// Largest message a client may send.
    pub max_client_message: usize,
    /// The durable-stream reader, with `--streams`.
    pub streams: Option<crate::streams::Streams>,
}

impl SessionContext {
    pub fn new(
        workers: Workers,
        publisher: Arc<Publisher>,
        sessions: &crate::config::SessionSettings,
        publish: &crate::config::PublishSettings,
    ) -> Self {
        SessionContext {
            workers,
            publisher,
            ping_interval: sessions.ping_interval(),
            publish_rate: publish.publish_rate,
            publish_burst: publish.publish_burst,
            max_topics: sessions.max_topics_per_session,
            write_timeout: sessions.write_timeout(),
            max_client_message: sessions.max_client_message,
            streams: None,
        }
    }

    /// With `--streams`: sessions follow their tenant's stream and may recover from a position.
    pub fn with_streams(mut self, streams: Option<crate::streams::Streams>) -> Self {
        self.streams = streams;
        self
    }
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
    ProtocolError,
    Shutdown,
    TooSlow,
    PingTimeout,
    TokenExpired,
    TooBig,
    WriteTimeout,
}

impl Ending {
    /// Whether a close frame was queued to tell the client why (and is worth a moment to leave).
    fn says_why(self) -> bool {
        !matches!(self, Ending::ClientError | Ending::WriteTimeout)
    }

    fn label(self) -> &'static str {
        match self {
            Ending::ClientClosed => "client_closed",
            Ending::ClientError => "client_error",
            Ending::ProtocolError => "protocol_error",
            Ending::Shutdown => "shutdown",
            Ending::TooSlow => "too_slow",
            Ending::PingTimeout => "ping_timeout",
            Ending::TokenExpired => "token_expired",
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
    /// Waits for the upgrade, hands the connection to the registration's outbox, and serves it
    /// until it ends. Dropping the registration unregisters it.
    pub async fn run(
        mut self,
        upgrade: hyper::upgrade::OnUpgrade,
        ctx: Arc<SessionContext>,
        shutdown: CancellationToken,
    ) {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade did not complete");
                return;
            }
        };
        // The server serves every connection as `TokioIo<TcpStream>`, so this always holds.
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
            tracing::error!("upgraded connection is not a TCP stream; closing it");
            return;
        };
        let outbox = self.registration.outbox.clone();
        outbox.attach(parts.io.into_inner());
        metrics::counter!(m::CONNECTIONS_OPENED).increment(1);
        let mut client = Client {
            outbox: &outbox,
            reader: wire::Reader::new(ctx.max_client_message),
            answered: true,
            v1: (self.protocol == Protocol::V1).then(|| Box::new(V1State::new(&ctx))),
            pending: None,
        };
        // What the client sent right behind its handshake. The buffer may be the handshake's
        // whole read buffer: none of it is kept.
        client.reader.extend(&parts.read_buf);
        drop(parts.read_buf);
        let identity = &self.identity;
        let ending = client
            .serve(&self.registration, identity, &ctx, &shutdown)
            .await;
        count(identity, ending);
        // A publish still in progress when the session ends is abandoned unanswered: the close
        // frame says why, and the NOTIFY may or may not have been sent.
        if client.pending.take().is_some() {
            metrics::counter!(m::CLIENT_PUBLISHES, "outcome" => "abandoned").increment(1);
        }
        // Over for the hub and the connection count before the close frame has to leave: behind
        // a full socket that may take its whole timeout.
        self.registration.leave();
        if ending.says_why() {
            // Boxed: only a closing session needs its state.
            let outbox = client.outbox;
            drop(client);
            Box::pin(Client::finish(outbox)).await;
        }
    }
}

fn count(identity: &Identity, ending: Ending) {
    metrics::counter!(m::SESSIONS_CLOSED, "reason" => ending.label()).increment(1);
    tracing::debug!(tenant = %identity.tenant, reason = ending.label(), "session closed");
}

/// A session's state while it runs.
struct Client<'a> {
    outbox: &'a Outbox,
    reader: wire::Reader,
    /// Whether the client showed life since the last ping.
    answered: bool,
    /// A `pgws.v1` session's state (boxed: most sessions are idle, many are not v1).
    v1: Option<Box<V1State>>,
    /// The answer of a publish in progress. While there is one, the client's later frames wait
    /// unread (answers keep the order of requests, and reading stops rather than buffering without
    /// bound); pings, flushing, expiry and shutdown go on.
    pending: Option<Pin<Box<dyn Future<Output = String> + Send>>>,
}

impl Client<'_> {
    async fn serve(
        &mut self,
        registration: &Registration,
        identity: &Identity,
        ctx: &Arc<SessionContext>,
        shutdown: &CancellationToken,
    ) -> Ending {
        let outbox = self.outbox;
        let Some(socket) = outbox.socket() else {
            return Ending::ClientError;
        };
        let mut ping =
            tokio::time::interval_at(Instant::now() + ctx.ping_interval, ctx.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Timers on the heap and only while needed, so an idle session stays small.
        let mut expiry = identity
            .expires_at
            .map(|at| Box::pin(tokio::time::sleep(until(at))));
        // While frames wait for the socket: the time by which it must take some.
        let mut stall: Option<Pin<Box<Sleep>>> = None;
        // Bytes the client sent with its handshake may already hold whole messages.
        if let Some(ending) = self.handle_messages(registration, identity, ctx) {
            return ending;
        }
        let ending = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    outbox.close(wire::close(wire::CLOSE_GOING_AWAY, "server shutting down"));
                    break Ending::Shutdown;
                }
                _ = outbox.woken() => match outbox.ended() {
                    Some(Ended::TooSlow) => break Ending::TooSlow,
                    Some(Ended::Broken) => return Ending::ClientError,
                    None if stall.is_none() && outbox.has_pending() => {
                        stall = Some(Box::pin(tokio::time::sleep(ctx.write_timeout)));
                    }
                    None => {}
                },
                ready = socket.writable(), if stall.is_some() => {
                    if ready.is_err() {
                        return Ending::ClientError;
                    }
                    match outbox.flush() {
                        Ok(Flush::Empty) => stall = None,
                        Ok(Flush::Progress) => {
                            if let Some(s) = stall.as_mut() {
                                s.as_mut().reset(Instant::now() + ctx.write_timeout);
                            }
                        }
                        Ok(Flush::Blocked) => {}
                        Err(_) => return Ending::ClientError,
                    }
                }
                _ = elapsed(&mut stall) => return Ending::WriteTimeout,
                _ = elapsed(&mut expiry) => {
                    outbox.close(wire::close(wire::CLOSE_TOKEN_EXPIRED, "token expired"));
                    break Ending::TokenExpired;
                }
                answer = answered(&mut self.pending) => {
                    self.pending = None;
                    outbox.send(&[wire::text(&answer)]);
                    if let Some(ending) = self.handle_messages(registration, identity, ctx) {
                        break ending;
                    }
                }
                ready = socket.readable(), if self.pending.is_none() => {
                    if ready.is_err() {
                        return Ending::ClientError;
                    }
                    match socket.try_read_buf(self.reader.buffer()) {
                        Ok(0) => return Ending::ClientClosed,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return Ending::ClientError,
                    }
                    if let Some(ending) = self.handle_messages(registration, identity, ctx) {
                        break ending;
                    }
                }
                _ = ping.tick() => {
                    // A client whose frames wait behind a publish cannot be heard answering.
                    if !self.answered && self.pending.is_none() {
                        outbox.close(wire::close(wire::CLOSE_PING_TIMEOUT, "no pong within the keepalive interval"));
                        break Ending::PingTimeout;
                    }
                    self.answered = false;
                    outbox.send(&[Bytes::from_static(&[0x80 | wire::OP_PING, 0])]);
                }
            }
        };
        ending
    }

    /// Lets what is queued (the close frame last) leave, then ends the close handshake: the write
    /// side is shut and the client's remaining bytes are read and dropped until it closes too, all
    /// within [`CLOSE_TIMEOUT`]. Closing with unread bytes would reset the connection, and the
    /// client would see no close frame at all.
    async fn finish(outbox: &Outbox) {
        let Some(socket) = outbox.socket() else {
            return;
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            loop {
                match outbox.flush() {
                    Ok(Flush::Empty) => break,
                    Err(_) => return,
                    Ok(_) => {
                        if socket.writable().await.is_err() {
                            return;
                        }
                    }
                }
            }
            if rustix::net::shutdown(socket, rustix::net::Shutdown::Write).is_err() {
                return;
            }
            let mut discard = [0u8; 1024];
            loop {
                if socket.readable().await.is_err() {
                    return;
                }
                match socket.try_read(&mut discard) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        })
        .await;
    }

    /// Acts on every whole message read so far, up to a publish that has to wait for its answer;
    /// the ending, if one of them ends the session.
    fn handle_messages(
        &mut self,
        registration: &Registration,
        identity: &Identity,
        ctx: &Arc<SessionContext>,
    ) -> Option<Ending> {
        let ending = loop {
            if self.pending.is_some() {
                break None;
            }
            let message = match self.reader.message() {
                Ok(Some(message)) => message,
                Ok(None) => break None,
                Err(e) => {
                    self.outbox.close(wire::close(e.code(), &e.to_string()));
                    break Some(match e {
                        ReadError::TooBig(_) => Ending::TooBig,
                        _ => Ending::ProtocolError,
                    });
                }
            };
            self.answered = true;
            match message {
                Incoming::Text(text) if self.v1.is_some() => {
                    let Some(v1) = self.v1.as_mut() else { continue };
                    match v1.handle(&text, identity, registration, ctx) {
                        Answer::Now(reply) => {
                            self.outbox.send(&[wire::text(&reply)]);
                        }
                        Answer::NowThen(reply, then) => {
                            self.outbox.send(&[wire::text(&reply)]);
                            then();
                        }
                        Answer::Frames(replies) => {
                            let frames: Vec<_> = replies.iter().map(|r| wire::text(r)).collect();
                            self.outbox.send(&frames);
                        }
                        Answer::Later(answer) => self.pending = Some(answer),
                    }
                }
                Incoming::Ping(payload) => {
                    self.outbox.send(&[wire::frame(wire::OP_PONG, &payload)]);
                }
                Incoming::Close(code) => {
                    // Echo the client's code, as the protocol asks.
                    let reply = match code {
                        Some(code) => wire::close(code, ""),
                        None => wire::frame(wire::OP_CLOSE, &[]),
                    };
                    self.outbox.close(reply);
                    break Some(Ending::ClientClosed);
                }
                // In pgws's protocol the client's own messages carry nothing and are ignored, as
                // pgws does.
                Incoming::Text(_) | Incoming::Binary(_) | Incoming::Pong => {}
            }
        };
        self.reader.compact();
        ending
    }
}

/// Time left until `at`.
fn until(at: std::time::SystemTime) -> Duration {
    at.duration_since(std::time::SystemTime::now())
        .unwrap_or_default()
}

/// The answer of the publish in progress, when it is ready; never without one.
async fn answered(pending: &mut Option<Pin<Box<dyn Future<Output = String> + Send>>>) -> String {
    match pending {
        Some(answer) => answer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the timer, if there is one, goes off; never without one.
async fn elapsed(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}
