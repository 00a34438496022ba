//! socket.io rooms as a delivery target: one room per (tenant, channel), so a message runs through a
//! tenant's guest once and is encoded once for all of that tenant's sockets on the channel.
//!
//! Owns the room naming rule and the emit of `event {channel, payload}`. It does not admit sockets or
//! answer their requests (`socketio`), nor decide what is delivered (`deliver`).

use futures_util::FutureExt as _;
use serde_json::Value;
use socketioxide::SocketIo;

use crate::envelope::{JsonBody, TenantId};
use crate::metrics as m;

/// The socket.io server's rooms, as the delivery step sees them.
#[derive(Clone)]
pub struct Rooms {
    io: SocketIo,
}

impl Rooms {
    pub fn new(io: SocketIo) -> Self {
        Rooms { io }
    }

    /// The socket.io server itself, for the endpoint that serves it.
    pub(crate) fn io(&self) -> &SocketIo {
        &self.io
    }

    /// Emits `event {channel, payload}` to `tenant`'s sockets subscribed to `channel`.
    pub fn deliver(&self, tenant: &TenantId, channel: &str, body: &JsonBody) {
        let Ok(payload) = serde_json::from_str::<Value>(body.as_str()) else {
            return;
        };
        let data = serde_json::json!({ "channel": channel, "payload": payload });
        // socketioxide's in-process adapter completes a broadcast before returning (its future is
        // `ready`), so polling it once on the delivering thread is the whole send, in order.
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
pub fn room(tenant: &TenantId, channel: &str) -> String {
    format!("{tenant}:{channel}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_are_per_tenant() {
        let a = TenantId::parse("a").expect("a");
        assert_eq!(room(&a, "x:y"), "a:x:y");
    }
}
