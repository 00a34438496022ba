//! The bytes a client receives, encoded once per message and shared by every recipient.
//!
//! Owns the outgoing frame formats. The JSON body is spliced in verbatim, never decoded and
//! re-encoded, so key order, escapes and big integers arrive exactly as sent. It does not decide who
//! receives a frame (`hub`).

use bytes::Bytes;

use crate::envelope::{JsonBody, Position, Topic};
use crate::wire;

/// How a session wants its messages framed. `--frame` picks `pgws` or `raw` for clients of pgws's
/// protocol; a `pgws.v1` client always gets envelopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum FrameFormat {
    /// {"payload": <body>, "channel": "<channel>", "id": "<uuid>"}: the frame pgws sends (one id
    /// per message, the same for every recipient).
    Pgws,
    /// The JSON body alone.
    Raw,
    /// The `pgws.v1` envelope: `{"topic":<topic or null>,"seq":<n>,"data":<body>}`, or for a durable
    /// message `{"topic":…,"offset":<n>,"epoch":"<e>","data":…}`.
    #[value(skip)]
    Envelope,
}

/// Encodes a message for `format` as a whole WebSocket text frame. Done once per message and
/// format, whatever the number of recipients.
pub fn encode(
    format: FrameFormat,
    channel: &str,
    topic: Option<&Topic>,
    seq: u64,
    position: Option<&Position>,
    id: &uuid::Uuid,
    body: &JsonBody,
) -> Bytes {
    let body = body.as_str();
    // Room for the frame header in front, filled in once the payload's length is known.
    let mut out = Vec::with_capacity(wire::MAX_HEADER + body.len() + channel.len() + 72);
    out.resize(wire::MAX_HEADER, 0);
    match format {
        FrameFormat::Envelope => {
            out.extend_from_slice(br#"{"topic":"#);
            match topic {
                // Topic names are plain ASCII without quotes or backslashes: no escaping needed.
                Some(t) => {
                    out.push(b'"');
                    out.extend_from_slice(t.as_str().as_bytes());
                    out.push(b'"');
                }
                None => out.extend_from_slice(b"null"),
            }
            match position {
                Some(p) => {
                    out.extend_from_slice(br#","offset":"#);
                    out.extend_from_slice(p.offset.to_string().as_bytes());
                    out.extend_from_slice(br#","epoch":"#);
                    let mut quoted = String::new();
                    push_json_string(&mut quoted, &p.epoch);
                    out.extend_from_slice(quoted.as_bytes());
                }
                None => {
                    out.extend_from_slice(br#","seq":"#);
                    out.extend_from_slice(seq.to_string().as_bytes());
                }
            }
            out.extend_from_slice(br#","data":"#);
            out.extend_from_slice(body.as_bytes());
            out.push(b'}');
        }
        FrameFormat::Raw => out.extend_from_slice(body.as_bytes()),
        FrameFormat::Pgws => {
            out.extend_from_slice(br#"{"payload":"#);
            out.extend_from_slice(body.as_bytes());
            out.extend_from_slice(br#","channel":"#);
            let mut quoted = String::new();
            push_json_string(&mut quoted, channel);
            out.extend_from_slice(quoted.as_bytes());
            out.extend_from_slice(br#","id":""#);
            out.extend_from_slice(
                id.hyphenated()
                    .encode_lower(&mut uuid::Uuid::encode_buffer())
                    .as_bytes(),
            );
            out.extend_from_slice(b"\"}");
        }
    }
    wire::text_in_place(out)
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

    /// The text of a frame of under 126 bytes.
    fn payload(frame: &Bytes) -> &str {
        assert_eq!(frame[0], 0x81, "final text frame");
        assert_eq!(usize::from(frame[1]), frame.len() - 2);
        std::str::from_utf8(&frame[2..]).expect("utf-8")
    }

    #[test]
    fn pgws_frame_splices_body_verbatim() {
        let body = JsonBody::parse(r#"{"z":1,"a":12345678901234567890,"h":"<&>"}"#).expect("json");
        let id = uuid::Uuid::new_v4();
        let frame = encode(FrameFormat::Pgws, "pg\"ws", None, 1, None, &id, &body);
        let text = payload(&frame);
        assert!(text.starts_with(
            r#"{"payload":{"z":1,"a":12345678901234567890,"h":"<&>"},"channel":"pg\"ws","id":""#
        ));
        let v: serde_json::Value = serde_json::from_str(text).expect("frame is JSON");
        assert_eq!(v["id"].as_str(), Some(id.to_string().as_str()));
    }

    #[test]
    fn envelope_frame_carries_topic_and_seq() {
        let body = JsonBody::parse(r#"{"a":1}"#).expect("json");
        let topic = Topic::parse("eu/orders").expect("topic");
        let frame = encode(
            FrameFormat::Envelope,
            "c",
            Some(&topic),
            7,
            None,
            &uuid::Uuid::nil(),
            &body,
        );
        assert_eq!(
            payload(&frame),
            r#"{"topic":"eu/orders","seq":7,"data":{"a":1}}"#
        );
        let frame = encode(
            FrameFormat::Envelope,
            "c",
            None,
            8,
            None,
            &uuid::Uuid::nil(),
            &body,
        );
        assert_eq!(payload(&frame), r#"{"topic":null,"seq":8,"data":{"a":1}}"#);
        let position = Position {
            epoch: "3fa9c2".into(),
            offset: 41,
        };
        let frame = encode(
            FrameFormat::Envelope,
            "c",
            Some(&topic),
            9,
            Some(&position),
            &uuid::Uuid::nil(),
            &body,
        );
        assert_eq!(
            payload(&frame),
            r#"{"topic":"eu/orders","offset":41,"epoch":"3fa9c2","data":{"a":1}}"#,
            "a durable message carries its position in place of seq"
        );
    }

    #[test]
    fn raw_frame_is_the_body() {
        let body = JsonBody::parse("[1, 2]").expect("json");
        assert_eq!(
            payload(&encode(
                FrameFormat::Raw,
                "c",
                None,
                1,
                None,
                &uuid::Uuid::nil(),
                &body
            )),
            "[1, 2]"
        );
    }
}
