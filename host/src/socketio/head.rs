//! socket.io requests with a request head of their own.
//!
//! hyper parses a request's header values and path as slices of the connection's read buffer
//! (8 KiB) instead of copying them, and the router keeps a copy of the path (`OriginalUri`).
//! socketioxide keeps every socket's request head for the socket's life (`req_parts`), and with
//! it that whole buffer: the largest part of an idle socket.io connection's memory. This middleware
//! gives `/socket.io/` requests copies that own their bytes, so the buffer goes when the handshake
//! is done. It changes nothing else.

use axum::extract::{OriginalUri, Request};
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::Response;

pub async fn own_head(mut request: Request, next: Next) -> Response {
    if request.uri().path().starts_with("/socket.io") {
        let headers: HeaderMap = request
            .headers()
            .iter()
            .filter_map(|(name, value)| {
                // Copies that own their bytes; a value that cannot be copied is not kept either.
                HeaderValue::from_bytes(value.as_bytes())
                    .ok()
                    .map(|v| (name.clone(), v))
            })
            .collect();
        *request.headers_mut() = headers;
        if let Ok(uri) = request.uri().to_string().parse::<Uri>() {
            *request.uri_mut() = uri.clone();
            if request.extensions().get::<OriginalUri>().is_some() {
                request.extensions_mut().insert(OriginalUri(uri));
            }
        }
    }
    next.run(request).await
}
