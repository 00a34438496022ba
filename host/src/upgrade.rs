//! Who a connecting client is, decided before the WebSocket upgrade.
//!
//! Owns the `/ws` route: gathers the client's credentials (header, query or subprotocol) for the one
//! identity rule (`auth::identify`), asks the tenant guest's authorize hook, picks the protocol
//! (pgws.v1 or pgws's), checks topics and connection limits, registers the session with the hub
//! before the 101 goes out, answers the WebSocket handshake, and hands the bare TCP socket to the
//! session's outbox (the hub writes frames into it directly) and to `session`. Every refusal is an
//! HTTP status with a reason, logged and counted, never a panic.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::auth::{Credentials, IdentityRules, TOKEN_PROTOCOL_PREFIX};
use crate::envelope::Topic;
use crate::frame::FrameFormat;
use crate::guest::Authorization;
use crate::hub::{Durable, Hub, TopicFilter};
use crate::metrics as m;
use crate::protocol;
use crate::session::{Protocol, Session, SessionContext};
use crate::workers::Busy;

/// What the upgrade route needs.
#[derive(Clone)]
pub struct Upgrades {
    pub hub: Arc<Hub>,
    pub admission: Arc<Admission>,
    /// Frame shape for sessions that do not choose pgws.v1.
    pub frame: FrameFormat,
    pub identity_rules: IdentityRules,
    /// Most topics one session may take (`?topics=` or pgws.v1 subscriptions).
    pub max_topics: usize,
    pub ctx: Arc<SessionContext>,
    pub shutdown: CancellationToken,
    /// Every session task, so shutdown can wait for them.
    pub sessions: TaskTracker,
}

/// The `/ws` route.
pub fn routes(upgrades: Upgrades) -> Router {
    Router::new()
        .route("/ws", get(ws_handler))
        .with_state(upgrades)
}

/// An upgrade refused before it happens: a status, a reason label for logs and metrics, and a
/// message for the client. Logged and counted when turned into the response.
struct Refusal {
    status: StatusCode,
    reason: &'static str,
    detail: String,
}

fn refuse(status: StatusCode, reason: &'static str, detail: String) -> Refusal {
    Refusal {
        status,
        reason,
        detail,
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => self.reason).increment(1);
        tracing::info!(reason = self.reason, detail = %self.detail, "WebSocket upgrade refused");
        (self.status, format!("{}\n", self.detail)).into_response()
    }
}

/// The subprotocols a client offered, in its order.
fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Whether a comma-separated header holds `token` (any case).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Checks that the request is a WebSocket handshake this server speaks (RFC 6455, version 13) and
/// returns its `Sec-WebSocket-Accept`.
fn handshake(headers: &HeaderMap) -> Result<String, Refusal> {
    if !has_token(headers, header::UPGRADE, "websocket")
        || !has_token(headers, header::CONNECTION, "upgrade")
    {
        return Err(refuse(
            StatusCode::UPGRADE_REQUIRED,
            "not_websocket",
            "this is a WebSocket endpoint: send a WebSocket handshake".into(),
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(refuse(
            StatusCode::UPGRADE_REQUIRED,
            "websocket_version",
            "unsupported WebSocket version: this server speaks version 13".into(),
        ));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                "websocket_key",
                "missing Sec-WebSocket-Key".into(),
            )
        })?;
    Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// What the client presented: the `Authorization` header, `?token=` or a `bearer.<token>`
/// subprotocol, and `?tenant=`.
fn credentials(
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    offered: &[String],
) -> Credentials {
    Credentials {
        token: params.get("token").cloned().or_else(|| {
            offered
                .iter()
                .find_map(|p| p.strip_prefix(TOKEN_PROTOCOL_PREFIX))
                .map(str::to_owned)
        }),
        tenant: params.get("tenant").cloned(),
        ..Credentials::from_headers(headers)
    }
}

/// `?topics=a,b`: the topics a legacy session takes (messages with no topic always reach it).
fn parse_topics(list: &str) -> Result<HashSet<Topic>, crate::envelope::NameError> {
    list.split(',')
        .filter(|t| !t.is_empty())
        .map(Topic::parse)
        .collect()
}

async fn ws_handler(
    State(app): State<Upgrades>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    mut request: Request,
) -> Result<Response, Refusal> {
    if app.shutdown.is_cancelled() {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "server is shutting down".into(),
        ));
    }
    let accept = handshake(&headers)?;
    let offered = offered_protocols(&headers);
    let identity = crate::auth::identify(
        &credentials(&headers, &params, &offered),
        &app.identity_rules,
    )
    .map_err(|r| {
        let status = if r.bad_request {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNAUTHORIZED
        };
        refuse(status, r.reason, r.message)
    })?;
    match app
        .ctx
        .workers
        .authorize(&identity, identity.topic_list())
        .await
    {
        Ok(Authorization::Allow) => {}
        Ok(Authorization::Deny(reason)) => {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "guest_denied",
                format!("denied: {reason}"),
            ))
        }
        Err(Busy(reason)) => {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "guest_busy",
                reason,
            ))
        }
    }

    let v1 = offered.iter().any(|p| p == protocol::SUBPROTOCOL);
    let (protocol, format, filter) = if v1 {
        // v1 sessions start with no topic and subscribe explicitly.
        (
            Protocol::V1,
            FrameFormat::Envelope,
            TopicFilter::Only(Arc::default()),
        )
    } else {
        let filter = match params.get("topics") {
            Some(list) => match parse_topics(list) {
                Ok(topics) if topics.len() > app.max_topics => {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "too_many_topics",
                        format!("at most {} topics per connection", app.max_topics),
                    ))
                }
                Ok(topics) => {
                    if let Some(t) = topics.iter().find(|t| !identity.allows(t)) {
                        return Err(refuse(
                            StatusCode::FORBIDDEN,
                            "forbidden_topic",
                            format!("topic {t} is not allowed by your token"),
                        ));
                    }
                    TopicFilter::Only(Arc::new(topics))
                }
                Err(e) => {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "invalid_topic",
                        format!("invalid topic name: {e}"),
                    ))
                }
            },
            None => TopicFilter::Matching(identity.topics.clone()),
        };
        (Protocol::Legacy, app.frame, filter)
    };
    // A browser fails the connection unless the server picks one of the offered subprotocols.
    let selected = if v1 {
        Some(protocol::SUBPROTOCOL.to_owned())
    } else {
        offered
            .iter()
            .find(|p| p.starts_with(TOKEN_PROTOCOL_PREFIX))
            .cloned()
    };

    // Registered before the 101 goes out, so a message published right after the client sees the
    // upgrade already has somewhere to go.
    let ticket = app
        .admission
        .admit(&identity.tenant)
        .map_err(|e| refuse(StatusCode::SERVICE_UNAVAILABLE, e.reason(), e.to_string()))?;
    // pgws.v1's welcome is the session's first frame, ahead of anything the hub sends.
    let welcome = (protocol == Protocol::V1).then(|| {
        crate::wire::text(&protocol::welcome(
            identity.tenant.as_str(),
            &identity.topic_list(),
            identity.can_publish,
        ))
    });
    // A pgws.v1 session takes durable messages from its first subscribe, which may first recover
    // what it missed; the other framings take them from the start.
    let durable = match protocol {
        Protocol::V1 => Durable::Held,
        _ => Durable::After(None),
    };
    let registration = app
        .hub
        .register(ticket, &identity.tenant, format, filter, durable, welcome);
    // The tenant's stored messages from here on reach the session (the first session of a tenant
    // on this host waits for the stream's head once).
    if let Some(streams) = &app.ctx.streams {
        streams.follow(&identity.tenant).await;
    }
    let session = Session {
        registration,
        identity,
        protocol,
    };
    let upgrade = hyper::upgrade::on(&mut request);
    app.sessions
        .spawn(session.run(upgrade, app.ctx.clone(), app.shutdown.clone()));
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).map_err(|_| {
            refuse(
                StatusCode::BAD_REQUEST,
                "websocket_key",
                "bad Sec-WebSocket-Key".into(),
            )
        })?,
    );
    if let Some(p) = selected.and_then(|p| HeaderValue::from_str(&p).ok()) {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, v.parse().expect("header value"));
        }
        map
    }

    const GOOD: &[(&str, &str)] = &[
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn handshakes_are_checked_and_answered_as_rfc_6455_says() {
        // The example of RFC 6455 §1.3.
        assert_eq!(
            handshake(&headers(GOOD)).map_err(|r| r.reason).as_deref(),
            Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        let without = |name: &str| {
            let pairs: Vec<_> = GOOD.iter().copied().filter(|(k, _)| *k != name).collect();
            handshake(&headers(&pairs)).map_err(|r| (r.status, r.reason))
        };
        assert_eq!(
            without("upgrade"),
            Err((StatusCode::UPGRADE_REQUIRED, "not_websocket"))
        );
        assert_eq!(
            without("sec-websocket-version"),
            Err((StatusCode::UPGRADE_REQUIRED, "websocket_version"))
        );
        assert_eq!(
            without("sec-websocket-key"),
            Err((StatusCode::BAD_REQUEST, "websocket_key"))
        );
        let mut old = GOOD.to_vec();
        old[2] = ("sec-websocket-version", "8");
        assert!(handshake(&headers(&old)).is_err(), "only version 13");
    }

    #[test]
    fn credentials_come_from_query_subprotocol_or_header() {
        let offered = offered_protocols(&headers(&[(
            "sec-websocket-protocol",
            "pgws.v1, bearer.from-protocol",
        )]));
        assert_eq!(offered, ["pgws.v1", "bearer.from-protocol"]);
        let none = HashMap::new();
        let query: HashMap<String, String> = [("token".to_owned(), "from-query".to_owned())].into();
        let c = credentials(&HeaderMap::new(), &query, &offered);
        assert_eq!(c.token.as_deref(), Some("from-query"), "the query wins");
        let c = credentials(&HeaderMap::new(), &none, &offered);
        assert_eq!(c.token.as_deref(), Some("from-protocol"));
        let c = credentials(
            &headers(&[("authorization", "bearer from-header")]),
            &none,
            &[],
        );
        assert_eq!(c.bearer(), Some("from-header"));
    }

    #[test]
    fn topic_lists_are_checked_names() {
        let topics = parse_topics("orders,eu/fr,,orders").expect("valid");
        assert_eq!(topics.len(), 2);
        assert!(parse_topics("orders,bad topic").is_err());
    }
}
