//! The admin API: list, upload, remove and roll back tenant guests while the server runs, and show
//! which Postgres channels socket.io clients hold; and the operator's console that uses it
//! (`console`).
//!
//! Owns the `/admin/guests` routes and their bearer-token guard. Uploads are compiled off the async
//! runtime and installed only if valid; a refused module leaves the running one serving and the reason
//! goes back in the response. Uploaded guests live in memory (a file in the guest directory with the
//! same name replaces them when it changes). It does not compile or swap guests itself (`guest`).
//!
//! ```text
//! GET    /admin/guests                   list loaded guests: version, size, load time, failures
//! PUT    /admin/guests/<tenant>          body: component bytes → 200 {version…} | 400 {error} |
//!                                        409 when a later change to the guest came first
//! DELETE /admin/guests/<tenant>          → 200 | 404
//! POST   /admin/guests/<tenant>/rollback → 200 {version…} | 409 when there is no previous version
//! GET    /admin/channels                 channels subscribed by name: {subscribed: {channel:
//!                                        {tenant: sockets}}, listening: pg_listening_channels()}
//! GET    /admin/stats                    the console's live figures: per-tenant totals, listener
//! GET    /admin/                         the console page (no data of its own: it asks for the token)
//! ```
//! `<tenant>` may be `_default`. Every request but the console's page and scripts needs
//! `Authorization: Bearer <--admin-token>`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;

use crate::channels::Channels;
use crate::guest::{GuestModule, GuestRegistry, GuestTarget, LoadError};
use crate::metrics::Figures;

mod console;

/// Largest component the API accepts (Python and JavaScript components run to tens of MB).
const MAX_UPLOAD: usize = 128 << 20;

/// What the admin routes work on.
#[derive(Clone)]
pub struct Admin {
    pub registry: Arc<GuestRegistry>,
    pub channels: Arc<Channels>,
    /// `--admin-token`.
    pub token: Arc<str>,
    pub figures: Arc<Figures>,
    /// `--guest-isolation-secs`, to tell how long an isolation has left.
    pub isolation: std::time::Duration,
}

/// The admin routes, guarded by the admin token, and the console's page.
pub fn routes(admin: Admin) -> Router {
    Router::new()
        .route("/admin/guests", get(list))
        .route("/admin/stats", get(console::stats))
        .route("/admin/channels", get(channels_report))
        .route(
            "/admin/guests/{name}",
            put(upload)
                .delete(remove)
                .layer(DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route("/admin/guests/{name}/rollback", post(rollback))
        .layer(middleware::from_fn_with_state(admin.clone(), guard))
        .with_state(admin)
        .merge(console::page())
}

/// Compares in constant time, so response timing does not reveal how much of a guess was right.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn guard(State(admin): State<Admin>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::bearer_token);
    match presented {
        Some(t) if same(t.as_bytes(), admin.token.as_bytes()) => next.run(request).await,
        _ => {
            tracing::warn!(path = %request.uri().path(), "admin request refused: missing or wrong token");
            ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or wrong admin token".into(),
            )
            .into_response()
        }
    }
}

/// A refused admin request: a status and a message, sent as `{"error": …}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type Reply = Result<Json<serde_json::Value>, ApiError>;

fn target(name: &str) -> Result<GuestTarget, ApiError> {
    GuestTarget::parse(name).ok_or_else(|| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{name:?} is neither a valid tenant name nor _default"),
        )
    })
}

fn describe(target: &GuestTarget, m: &GuestModule) -> Json<serde_json::Value> {
    Json(json!({
        "guest": target.to_string(),
        "version": m.version,
        "bytes": m.size,
        "compile_ms": m.compile_time.as_millis() as u64,
        "from_cache": m.from_cache,
    }))
}

async fn list(State(admin): State<Admin>) -> Json<serde_json::Value> {
    Json(json!({ "guests": admin.registry.list() }))
}

async fn upload(State(admin): State<Admin>, Path(name): Path<String>, body: Bytes) -> Reply {
    let target = target(&name)?;
    let registry = admin.registry.clone();
    let for_load = target.clone();
    let loaded = tokio::task::spawn_blocking(move || registry.load(for_load, &body))
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("compiling failed: {e}"),
            )
        })?;
    match loaded {
        Ok(module) => {
            tracing::info!(guest = %target, version = %module.version, "guest uploaded and serving");
            Ok(describe(&target, &module))
        }
        Err(e @ LoadError::Superseded) => {
            tracing::info!(guest = %target, "uploaded guest dropped: a later change came first");
            Err(ApiError(StatusCode::CONFLICT, e.to_string()))
        }
        Err(e) => {
            tracing::error!(guest = %target, error = %e, "uploaded guest refused; the previous version keeps serving");
            Err(ApiError(StatusCode::BAD_REQUEST, e.to_string()))
        }
    }
}

async fn remove(State(admin): State<Admin>, Path(name): Path<String>) -> Reply {
    let t = target(&name)?;
    if !admin.registry.remove(&t) {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no guest loaded for {t}"),
        ));
    }
    tracing::info!(guest = %t, "guest removed through the admin API");
    Ok(Json(json!({ "removed": t.to_string() })))
}

async fn rollback(State(admin): State<Admin>, Path(name): Path<String>) -> Reply {
    let t = target(&name)?;
    let m = admin.registry.rollback(&t).ok_or_else(|| {
        ApiError(
            StatusCode::CONFLICT,
            format!("no previous version of {t} to roll back to"),
        )
    })?;
    tracing::info!(guest = %t, version = %m.version, "guest rolled back");
    Ok(describe(&t, &m))
}

/// Subscription counts and what the listener connection itself reports as LISTENed.
async fn channels_report(State(admin): State<Admin>) -> Response {
    let subscribed: serde_json::Map<String, serde_json::Value> = admin
        .channels
        .counts()
        .into_iter()
        .map(|(channel, tenants)| {
            let tenants: serde_json::Map<String, serde_json::Value> =
                tenants.into_iter().map(|(t, n)| (t, json!(n))).collect();
            (channel, serde_json::Value::Object(tenants))
        })
        .collect();
    match admin.channels.listening().await {
        Ok(listening) => {
            Json(json!({ "subscribed": subscribed, "listening": listening })).into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "subscribed": subscribed, "error": e })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::{GuestLimits, GuestRuntime};
    use axum::body::Body;
    use std::time::Duration;
    use tower::ServiceExt;

    fn api() -> Router {
        let limits = GuestLimits {
            timeout: Duration::from_millis(100),
            memory_bytes: 16 << 20,
            max_output: 1 << 16,
            max_routes: 8,
        };
        let registry = Arc::new(GuestRegistry::new(
            GuestRuntime::new(limits, None).expect("runtime"),
        ));
        let (channels, _commands) =
            Channels::new(&["pgwebsocket".into()], "pgwebsocket", Default::default());
        routes(Admin {
            registry,
            channels: Arc::new(channels),
            token: Arc::from("admin-secret"),
            figures: Arc::default(),
            isolation: Duration::from_secs(30),
        })
    }

    async fn call(
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: &'static [u8],
    ) -> (StatusCode, serde_json::Value) {
        let mut request = axum::http::Request::builder().method(method).uri(path);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let response = api()
            .oneshot(request.body(Body::from(body)).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"admin-secret", b"admin-secret"));
        assert!(!same(b"admin-secret", b"admin-secreT"));
        assert!(!same(b"admin-secret", b"admin-secret2"));
        assert!(!same(b"", b"x"));
    }

    /// The same `Authorization` rule as every other endpoint: the scheme in any case.
    #[tokio::test]
    async fn the_token_is_required_in_any_bearer_spelling() {
        for (header, status) in [
            (None, StatusCode::UNAUTHORIZED),
            (Some("Bearer wrong"), StatusCode::UNAUTHORIZED),
            (Some("admin-secret"), StatusCode::UNAUTHORIZED),
            (Some("Basic admin-secret"), StatusCode::UNAUTHORIZED),
            (Some("Bearer admin-secret"), StatusCode::OK),
            (Some("bearer admin-secret"), StatusCode::OK),
            (Some("BEARER  admin-secret "), StatusCode::OK),
        ] {
            let (got, _) = call("GET", "/admin/guests", header, b"").await;
            assert_eq!(got, status, "{header:?}");
        }
    }

    /// The page is open (it holds nothing, may not be framed); its figures need the token.
    #[tokio::test]
    async fn the_console_page_is_open_and_its_figures_are_not() {
        let (status, _) = call("GET", "/admin/stats", None, b"").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, body) = call("GET", "/admin/stats", Some("Bearer admin-secret"), b"").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["tenants"], json!([]), "{body}");
        assert_eq!(
            body["call_time_bounds_us"].as_array().map(Vec::len),
            Some(29)
        );
        let (status, _) = call("GET", "/admin/channels", Some("Bearer wrong"), b"").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        let response = api()
            .oneshot(
                axum::http::Request::get("/admin/")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let csp = response
            .headers()
            .get(header::CONTENT_SECURITY_POLICY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert_eq!(
            response
                .headers()
                .get(header::X_FRAME_OPTIONS)
                .map(|v| v.as_bytes()),
            Some(&b"DENY"[..])
        );
    }

    #[tokio::test]
    async fn bad_names_and_bad_modules_get_clear_errors() {
        let auth = Some("Bearer admin-secret");
        let (status, body) = call("PUT", "/admin/guests/bad%20name", auth, b"\0asm").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("neither a valid tenant name")),
            "{body}"
        );
        let (status, body) = call("PUT", "/admin/guests/acme", auth, b"not wasm").await;
        assert!(status.is_client_error(), "{status}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
        let (status, body) = call("GET", "/admin/guests", auth, b"").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            !body.to_string().contains("acme"),
            "a refused upload serves nothing: {body}"
        );
        let (status, _) = call("POST", "/admin/guests/acme/rollback", auth, b"").await;
        assert!(
            status.is_client_error(),
            "nothing to roll back to: {status}"
        );
    }
}
