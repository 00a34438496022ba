//! Engine.IO sessions that have not authenticated yet. A socket.io 3+ or Python client sends its
//! token in the connect packet, after the Engine.IO session exists; until then the session costs
//! memory and proves nothing. A session whose handshake itself carries a valid bearer token
//! (`?token=`, `Authorization`) is authenticated already; every other one takes one of
//! `--socketio-max-pending` places until it connects or its connect timeout closes it, and past that
//! new handshakes get 503.
//!
//! It does not admit sockets to the namespace or count connections (`socketio`, `admission`).

use std::sync::Arc;
use std::time::Duration;

use crate::auth::{Credentials, IdentityRules};
use crate::metrics as m;

/// Engine.IO sessions opened without a token, still waiting for their connect packet (where a
/// socket.io 3+/python client sends its token). Each holds memory until it connects or its connect
/// timeout closes it, so at most `cap` may wait at once.
pub struct Handshakes {
    rules: IdentityRules,
    cap: usize,
    timeout: Duration,
    /// When each waiting session's connect timeout ends, oldest first.
    waiting: std::sync::Mutex<std::collections::VecDeque<std::time::Instant>>,
}

impl Handshakes {
    pub fn new(rules: IdentityRules, cap: usize, timeout: Duration) -> Self {
        Handshakes {
            rules,
            cap,
            timeout,
            waiting: std::sync::Mutex::default(),
        }
    }

    /// Whether the handshake itself carried a valid bearer token (header or `?token=`). Only a
    /// verified token counts: another `Authorization` scheme, a bad token or the anonymous tenant
    /// all wait in a place.
    pub fn verified(&self, credentials: &Credentials) -> bool {
        match (credentials.bearer(), &self.rules.auth) {
            (Some(token), Some(auth)) => auth.verify(token).is_ok(),
            _ => false,
        }
    }

    /// Takes a place for a session without a token, unless all are taken.
    fn wait(&self) -> bool {
        let now = std::time::Instant::now();
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        while waiting.front().is_some_and(|end| *end <= now) {
            waiting.pop_front();
        }
        if waiting.len() >= self.cap {
            return false;
        }
        waiting.push_back(now + self.timeout);
        true
    }

    /// A session that came without a token has connected: its place is free.
    pub fn connected(&self) {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
    }
}

/// Guards new Engine.IO sessions (requests to `/socket.io/` without a `sid`): one with a valid token
/// in the handshake itself goes straight through; the others are capped.
pub async fn guard(
    axum::extract::State(handshakes): axum::extract::State<Arc<Handshakes>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let query = request.uri().query();
    let new_session =
        request.uri().path().starts_with("/socket.io") && query_value(query, "sid").is_none();
    if !new_session {
        return next.run(request).await;
    }
    let credentials = Credentials {
        token: query_value(query, "token"),
        ..Credentials::from_headers(request.headers())
    };
    // A valid token at the handshake is the client authenticated already: no place needed. Any
    // other session waits for its connect packet in one of the capped places (a bad token too: it
    // is refused there, with a reason the client can show).
    if !handshakes.verified(&credentials) && !handshakes.wait() {
        metrics::counter!(m::SOCKETIO_HANDSHAKES_REFUSED, "reason" => "too_many_pending")
            .increment(1);
        tracing::warn!(
            cap = handshakes.cap,
            "socket.io handshake refused: too many sessions waiting to authenticate"
        );
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too many socket.io sessions waiting to authenticate; try again shortly\n",
        )
            .into_response();
    }
    next.run(request).await
}

/// A query-string parameter, percent-decoded.
pub fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
