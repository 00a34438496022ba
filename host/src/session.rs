//! One WebSocket client, from upgrade to close.
//!
//! Owns the socket and the receiving half of the session's bounded queue. It writes queued frames in
//! batches (one flush, so one socket write, for everything already waiting), answers pings, sends its
//! own keepalive pings, and closes with a code that says why: 1000 when the client leaves, 1001 on
//! server shutdown, 1013 when the client was too slow to keep its queue from filling. It does not
//! decide what the client receives (`hub`) or who the client is (`server`).

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use tokio_util::sync::CancellationToken;

use crate::hub::Registration;
use crate::metrics as m;

/// Close code for a client whose queue overflowed ("try again later").
pub const CLOSE_TOO_SLOW: u16 = 1013;
/// Close code sent when the server shuts down ("going away").
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a client that stopped answering pings (policy violation is the closest fit).
pub const CLOSE_PING_TIMEOUT: u16 = 1008;

/// Most frames written per flush; bounds the time one session holds its worker.
const MAX_BATCH: usize = 256;
/// How long a close frame may take to leave before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Session settings that come from the configuration.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub ping_interval: Duration,
}

/// Why a session ended; the label of `pgws_sessions_closed_total`.
#[derive(Debug, Clone, Copy)]
enum Ending {
    ClientClosed,
    ClientError,
    Shutdown,
    TooSlow,
    PingTimeout,
    HubDropped,
}

impl Ending {
    fn label(self) -> &'static str {
        match self {
            Ending::ClientClosed => "client_closed",
            Ending::ClientError => "client_error",
            Ending::Shutdown => "shutdown",
            Ending::TooSlow => "too_slow",
            Ending::PingTimeout => "ping_timeout",
            Ending::HubDropped => "hub_dropped",
        }
    }
}

/// Serves one upgraded connection until it ends, then unregisters it.
pub async fn run(
    mut ws: WebSocket,
    mut reg: Registration,
    config: SessionConfig,
    shutdown: CancellationToken,
) {
    metrics::counter!(m::CONNECTIONS_OPENED).increment(1);
    let mut ping = tokio::time::interval(config.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut answered = true;

    let ending = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                close(&mut ws, CLOSE_GOING_AWAY, "server shutting down").await;
                break Ending::Shutdown;
            }
            _ = reg.overflowed.cancelled() => {
                close(&mut ws, CLOSE_TOO_SLOW, "client too slow: message queue full").await;
                break Ending::TooSlow;
            }
            frame = reg.frames.recv() => {
                let Some(frame) = frame else { break Ending::HubDropped };
                let write = write_batch(&mut ws, frame, &mut reg.frames);
                // A client that stops reading leaves this write pending; the hub then overflows its
                // queue and cancels `overflowed`, which must end the session even mid-write.
                let written = tokio::select! {
                    r = write => r.map_err(|_| Ending::ClientError),
                    _ = reg.overflowed.cancelled() => Err(Ending::TooSlow),
                    _ = shutdown.cancelled() => Err(Ending::Shutdown),
                };
                if let Err(ending) = written {
                    break ending;
                }
            }
            incoming = ws.recv() => match incoming {
                None => break Ending::ClientClosed,
                Some(Err(_)) => break Ending::ClientError,
                Some(Ok(Message::Close(_))) => {
                    // tungstenite queued the closing reply; flushing sends it.
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
                    break Ending::ClientClosed;
                }
                Some(Ok(Message::Pong(_))) => answered = true,
                // Pings are answered by tungstenite on the next write; clients' own messages carry
                // nothing in the pgws protocol and are ignored, as pgws does.
                Some(Ok(_)) => {
                    answered = true;
                    let _ = ws.flush().await;
                }
            },
            _ = ping.tick() => {
                if !answered {
                    close(&mut ws, CLOSE_PING_TIMEOUT, "no pong within the keepalive interval").await;
                    break Ending::PingTimeout;
                }
                answered = false;
                if ws.send(Message::Ping(Default::default())).await.is_err() {
                    break Ending::ClientError;
                }
            }
        }
    };
    metrics::counter!(m::SESSIONS_CLOSED, "reason" => ending.label()).increment(1);
    tracing::debug!(tenant = %reg.tenant, reason = ending.label(), "session closed");
}

/// Writes `first` and whatever else is already queued (up to [`MAX_BATCH`]) with one flush, so a
/// backlog leaves in one socket write instead of one per frame.
async fn write_batch(
    ws: &mut WebSocket,
    first: axum::extract::ws::Utf8Bytes,
    queue: &mut tokio::sync::mpsc::Receiver<axum::extract::ws::Utf8Bytes>,
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
