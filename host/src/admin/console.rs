//! The operator's console at `/admin/`: one page of plain HTML and JavaScript with the vendored uPlot
//! chart library (no build step), and `/admin/stats`, the live figures it polls every second.
//!
//! The page holds no data and no secret: it asks for the admin token, keeps it in the page's memory
//! (never the URL or storage) and sends it as `Authorization: Bearer` with every request, to this
//! endpoint and to the admin API whose buttons it shows. Rates and percentiles are computed by the
//! page from consecutive totals. What the figures are is `metrics::figures`' business.

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::Admin;

/// The console's page and scripts; reachable without the token (they hold nothing).
pub fn page() -> Router {
    Router::new()
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route("/admin/", get(index))
        .route("/admin/console.js", get(script))
        .route("/admin/uPlot.iife.min.js", get(chart_library))
        .route("/admin/uPlot.min.css", get(chart_style))
}

/// The page, which may load only its own scripts and may not be framed (its buttons change what
/// serves).
async fn index() -> Response {
    (
        [
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                 frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(include_str!("../../static/admin/index.html")),
    )
        .into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../static/admin/console.js"),
    )
}

/// uPlot 1.6.32 (MIT, `static/admin/uPlot.LICENSE`), as published on npm.
async fn chart_library() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../static/admin/uPlot.iife.min.js"),
    )
}

async fn chart_style() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../../static/admin/uPlot.min.css"),
    )
}

/// Most tenants in one answer: the busiest ones.
const DEFAULT_LIMIT: usize = 100;

#[derive(serde::Deserialize)]
pub struct StatsQuery {
    limit: Option<usize>,
}

/// The busiest tenants' totals (`?limit=`, 100 unless given) and the listener's state now (see
/// [`crate::metrics::Snapshot`]).
pub async fn stats(
    State(admin): State<Admin>,
    Query(query): Query<StatsQuery>,
) -> Json<crate::metrics::Snapshot> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, 10_000);
    Json(admin.figures.snapshot(admin.isolation, limit))
}
