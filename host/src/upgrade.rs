//! Who a connecting client is, decided before the WebSocket upgrade.
//!
//! Owns the `/ws` route: finds the token (header, query or subprotocol), verifies it (`auth`) or
//! applies the development `?tenant=` rule, asks the tenant guest's authorize hook, picks the protocol
//! (pgws.v1 or pgws's), checks topics and session limits, registers the session with the hub before the
//! 101 goes out, and hands the socket to `session`. Every refusal is an HTTP status with a reason,
//! logged and counted, never a panic.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{AuthError, Authenticator, Identity, TOKEN_PROTOCOL_PREFIX};
use crate::envelope::{TenantId, Topic};
use crate::frame::FrameFormat;
use crate::guest::Authorization;
use crate::hub::{Hub, LimitReached, TopicFilter};
use crate::metrics as m;
use crate::protocol;
use crate::session::{Protocol, Session, SessionContext};

/// What the upgrade route needs.
#[derive(Clone)]
pub struct Upgrades {
    pub hub: Arc<Hub>,
    /// Frame shape for sessions that do not choose pgws.v1.
    pub frame: FrameFormat,
    pub insecure_tenant_param: bool,
    pub auth: Option<Arc<Authenticator>>,
    pub ctx: Arc<SessionContext>,
    pub ws_read_buffer: usize,
    pub max_client_message: usize,
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
fn offered_protocols(upgrade: &WebSocketUpgrade) -> Vec<String> {
    upgrade
        .requested_protocols()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The token from `Authorization: Bearer`, `?token=`, or a `bearer.<token>` subprotocol, in that order.
fn find_token<'a>(
    headers: &'a HeaderMap,
    params: &'a HashMap<String, String>,
    offered: &'a [String],
) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .or_else(|| params.get("token").map(String::as_str))
        .or_else(|| {
            offered
                .iter()
                .find_map(|p| p.strip_prefix(TOKEN_PROTOCOL_PREFIX))
        })
}

/// Who is connecting, or the refusal to send.
fn identify(
    app: &Upgrades,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    offered: &[String],
) -> Result<Identity, Refusal> {
    match (find_token(headers, params, offered), &app.auth) {
        (Some(token), Some(auth)) => auth.verify(token).map_err(|e| {
            refuse(StatusCode::UNAUTHORIZED, e.reason(), e.to_string())
        }),
        (Some(_), None) if !app.insecure_tenant_param => Err(refuse(
            StatusCode::UNAUTHORIZED,
            "tokens_disabled",
            "this server accepts no tokens (no --jwt-secret or --jwt-public-key)".into(),
        )),
        (_, _) if app.insecure_tenant_param => match params.get("tenant") {
            Some(name) => TenantId::parse(name).map(Identity::insecure).map_err(|e| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_tenant",
                    format!("invalid tenant name: {e}"),
                )
            }),
            None => Err(refuse(
                StatusCode::UNAUTHORIZED,
                "missing_tenant",
                "no tenant: connect with /ws?tenant=<name> or a token".into(),
            )),
        },
        (None, Some(_)) => Err(refuse(
            StatusCode::UNAUTHORIZED,
            AuthError::Missing.reason(),
            AuthError::Missing.to_string(),
        )),
        (_, None) => Err(refuse(
            StatusCode::UNAUTHORIZED,
            "no_auth",
            "no way to authenticate: the server accepts no tokens and --insecure-tenant-param is off"
                .into(),
        )),
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
    upgrade: WebSocketUpgrade,
) -> Result<Response, Refusal> {
    if app.shutdown.is_cancelled() {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "server is shutting down".into(),
        ));
    }
    let offered = offered_protocols(&upgrade);
    let identity = identify(&app, &headers, &params, &offered)?;
    let verdict = app
        .ctx
        .workers
        .authorize(&identity, identity.topic_list())
        .await;
    if let Authorization::Deny(reason) = verdict {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "guest_denied",
            format!("denied: {reason}"),
        ));
    }

    let v1 = offered.iter().any(|p| p == protocol::SUBPROTOCOL);
    let (protocol, format, filter) = if v1 {
        // v1 sessions start with no topic and subscribe explicitly.
        (
            Protocol::V1,
            FrameFormat::Envelope,
            TopicFilter::Only(HashSet::new()),
        )
    } else {
        let filter = match (params.get("topics"), &identity.topics) {
            (Some(list), _) => match parse_topics(list) {
                Ok(topics) => {
                    if let Some(t) = topics.iter().find(|t| !identity.allows(t)) {
                        return Err(refuse(
                            StatusCode::FORBIDDEN,
                            "forbidden_topic",
                            format!("topic {t} is not allowed by your token"),
                        ));
                    }
                    TopicFilter::Only(topics)
                }
                Err(e) => {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "invalid_topic",
                        format!("invalid topic name: {e}"),
                    ))
                }
            },
            (None, None) => TopicFilter::All,
            (None, Some(patterns)) => TopicFilter::Matching(patterns.clone()),
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
    let registration = app
        .hub
        .register(&identity.tenant, format, filter)
        .map_err(|e| {
            let reason = match e {
                LimitReached::Total(_) => "server_full",
                LimitReached::Tenant(_) => "tenant_full",
            };
            refuse(StatusCode::SERVICE_UNAVAILABLE, reason, e.to_string())
        })?;
    let session = Session {
        registration,
        identity,
        protocol,
    };
    let ctx = app.ctx.clone();
    let shutdown = app.shutdown.clone();
    let sessions = app.sessions.clone();
    Ok(upgrade
        .protocols(selected)
        .read_buffer_size(app.ws_read_buffer)
        .max_message_size(app.max_client_message)
        .max_frame_size(app.max_client_message)
        .on_upgrade(move |socket| sessions.track_future(session.run(socket, ctx, shutdown))))
}
