//! Engine.IO 3 long-polling in the framing its clients can read.
//!
//! An Engine.IO 3 client that does not ask for base64 (`b64=1`) gets its polling payloads in binary
//! framing from the reference servers (python-engineio, which socketio_pg ran on): each packet as
//! `0x00`, its byte length as one byte per decimal digit, `0xFF`, then the packet. socketioxide
//! answers such clients in text framing (`<length>:<packet>`), which some of them cannot read
//! (`socketIO-client` 0.7.2 fails on its first handshake). This middleware re-frames those
//! responses; everything else passes through untouched. It does not speak Engine.IO otherwise
//! (socketioxide does).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;

use crate::handshakes::query_value;

/// Largest polling payload re-framed; socketioxide's own cap (`max_payload`) is far below it.
const MAX_PAYLOAD: usize = 16 << 20;

/// Re-frames Engine.IO 3 polling responses for clients that did not ask for base64.
pub async fn binary_polling(request: Request, next: Next) -> Response {
    let query = request.uri().query();
    let wants_binary = request.method() == Method::GET
        && request.uri().path().starts_with("/socket.io")
        && query_value(query, "EIO").as_deref() == Some("3")
        && query_value(query, "transport").as_deref() == Some("polling")
        && query_value(query, "b64").is_none_or(|b| b == "0" || b == "false");
    let response = next.run(request).await;
    if !wants_binary || !is_text(&response) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(text) = axum::body::to_bytes(body, MAX_PAYLOAD).await else {
        tracing::debug!("Engine.IO 3 polling payload too large to re-frame");
        return Response::from_parts(parts, Body::empty());
    };
    let Some(framed) = std::str::from_utf8(&text).ok().and_then(binary_framing) else {
        // Not a text-framed payload (an error page, say): as it was.
        return Response::from_parts(parts, Body::from(text));
    };
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(framed.len()));
    Response::from_parts(parts, Body::from(framed))
}

fn is_text(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"))
}

/// `<chars>:<packet>…` (the length in characters) to binary framing (the length in bytes). `None`
/// if the text is not such a payload.
fn binary_framing(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() + 8);
    let mut rest = text;
    while !rest.is_empty() {
        let (len, after) = rest.split_once(':')?;
        let chars: usize = len.parse().ok()?;
        let end = after
            .char_indices()
            .nth(chars)
            .map_or(after.len(), |(i, _)| i);
        if after[..end].chars().count() != chars {
            return None;
        }
        let packet = &after[..end];
        out.push(0x00);
        out.extend(packet.len().to_string().bytes().map(|d| d - b'0'));
        out.push(0xFF);
        out.extend_from_slice(packet.as_bytes());
        rest = &after[end..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_frames_become_binary_frames_with_byte_lengths() {
        let framed = binary_framing(r#"1:211:42["a","é"]"#).expect("payload");
        // 11 characters, 12 bytes.
        let mut want = vec![0x00, 1, 0xFF, b'2', 0x00, 1, 2, 0xFF];
        want.extend_from_slice(r#"42["a","é"]"#.as_bytes());
        assert_eq!(framed, want);
    }

    #[test]
    fn anything_else_is_left_alone() {
        assert_eq!(binary_framing("not a payload"), None);
        assert_eq!(binary_framing("9:short"), None);
        assert_eq!(binary_framing(""), Some(Vec::new()));
    }
}
