//! The bytes a client receives, encoded once per message and shared by every recipient.
//!
//! Owns the outgoing frame formats. The JSON body is spliced in verbatim, never decoded and
//! re-encoded, so key order, escapes and big integers arrive exactly as sent. It does not decide who
//! receives a frame (`hub`).

use axum::extract::ws::Utf8Bytes;

use crate::envelope::{JsonBody, Topic};

/// How a session wants its messages framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameFormat {
    /// `{"payload":<body>,"channel":"<channel>","id":"<uuid>"}`, the frame pgws sends.
    Pgws,
    /// The JSON body alone.
    Raw,
    /// The `pgws.v1` envelope: `{"topic":<topic or null>,"seq":<n>,"data":<body>}`.
    Envelope,
}

impl From<crate::config::FrameFormat> for FrameFormat {
    fn from(f: crate::config::FrameFormat) -> Self {
        match f {
            crate::config::FrameFormat::Pgws => FrameFormat::Pgws,
            crate::config::FrameFormat::Raw => FrameFormat::Raw,
        }
    }
}

/// Encodes a message for `format`. Done once per message and format, whatever the number of
/// recipients.
pub fn encode(
    format: FrameFormat,
    channel: &str,
    topic: Option<&Topic>,
    seq: u64,
    body: &JsonBody,
) -> Utf8Bytes {
    match format {
        FrameFormat::Envelope => {
            let body = body.as_str();
            let mut out = String::with_capacity(body.len() + 64);
            out.push_str(r#"{"topic":"#);
            match topic {
                // Topic names are plain ASCII without quotes or backslashes: no escaping needed.
                Some(t) => {
                    out.push('"');
                    out.push_str(t.as_str());
                    out.push('"');
                }
                None => out.push_str("null"),
            }
            out.push_str(r#","seq":"#);
            out.push_str(&seq.to_string());
            out.push_str(r#","data":"#);
            out.push_str(body);
            out.push('}');
            Utf8Bytes::from(out)
        }
        FrameFormat::Raw => Utf8Bytes::from(body.as_str()),
        FrameFormat::Pgws => {
            let body = body.as_str();
            let mut out = String::with_capacity(body.len() + channel.len() + 72);
            out.push_str(r#"{"payload":"#);
            out.push_str(body);
            out.push_str(r#","channel":"#);
            push_json_string(&mut out, channel);
            out.push_str(r#","id":""#);
            out.push_str(
                uuid::Uuid::new_v4()
                    .hyphenated()
                    .encode_lower(&mut uuid::Uuid::encode_buffer()),
            );
            out.push_str("\"}");
            Utf8Bytes::from(out)
        }
    }
}

/// Appends `s` as a JSON string literal.
pub fn push_json_string(out: &mut String, s: &str) {
    // serde_json's escaping of a &str into a Vec cannot fail.
    let quoted = serde_json::to_string(s).unwrap_or_default();
    out.push_str(&quoted);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgws_frame_splices_body_verbatim() {
        let body = JsonBody::parse(r#"{"z":1,"a":12345678901234567890,"h":"<&>"}"#).expect("json");
        let frame = encode(FrameFormat::Pgws, "pg\"ws", None, 1, &body);
        let text = frame.as_str();
        assert!(text.starts_with(
            r#"{"payload":{"z":1,"a":12345678901234567890,"h":"<&>"},"channel":"pg\"ws","id":""#
        ));
        let v: serde_json::Value = serde_json::from_str(text).expect("frame is JSON");
        assert_eq!(v["id"].as_str().map(str::len), Some(36));
    }

    #[test]
    fn envelope_frame_carries_topic_and_seq() {
        let body = JsonBody::parse(r#"{"a":1}"#).expect("json");
        let topic = Topic::parse("eu/orders").expect("topic");
        let frame = encode(FrameFormat::Envelope, "c", Some(&topic), 7, &body);
        assert_eq!(
            frame.as_str(),
            r#"{"topic":"eu/orders","seq":7,"data":{"a":1}}"#
        );
        let frame = encode(FrameFormat::Envelope, "c", None, 8, &body);
        assert_eq!(frame.as_str(), r#"{"topic":null,"seq":8,"data":{"a":1}}"#);
    }

    #[test]
    fn raw_frame_is_the_body() {
        let body = JsonBody::parse("[1, 2]").expect("json");
        assert_eq!(
            encode(FrameFormat::Raw, "c", None, 1, &body).as_str(),
            "[1, 2]"
        );
    }
}
