//! The `pgws.v1` envelope protocol: client frames parsed at the edge, server control frames encoded.
//!
//! Client → server (text frames, JSON):
//! - `{"type":"subscribe","topics":["orders"],"ref":1}` → `{"type":"subscribed","topics":[…],"ref":1}`;
//!   with `"since":{"epoch":…,"offset":…}` (first subscribe, `--streams`) the stored messages missed
//!   and a `{"type":"recovered",…}` report follow
//! - `{"type":"unsubscribe","topics":["orders"],"ref":2}` → `{"type":"unsubscribed",…}`
//! - `{"type":"publish","topic":"orders","data":{…},"ref":3}` → `{"type":"published","ref":3}`
//!
//! Server → client: messages `{"topic":"orders","seq":12,"data":{…}}` (`topic` is null for
//! tenant-wide messages; stored ones have `"offset":…,"epoch":…` in place of `seq`), `{"type":"welcome",…}` first, `{"type":"gap",…}` after the server lost
//! Postgres for a while, and `{"type":"error","code":…,"message":…,"ref":…}` for any refused frame.
//! `ref` is optional and echoed as given. This module does not act on frames (`session` does).

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::envelope::{JsonBody, NameError, Position, Topic};

/// The subprotocol name that selects this protocol.
pub const SUBPROTOCOL: &str = "pgws.v1";

/// A parsed client frame.
#[derive(Debug)]
pub enum ClientFrame {
    Subscribe {
        topics: Vec<Topic>,
        /// Recover durable messages missed since this position first (the session's first
        /// subscribe only).
        since: Option<Position>,
        r#ref: Option<Value>,
    },
    Unsubscribe {
        topics: Vec<Topic>,
        r#ref: Option<Value>,
    },
    Publish {
        topic: Option<Topic>,
        data: JsonBody,
        r#ref: Option<Value>,
    },
}

/// Why a client frame was refused; `code` is stable and goes to the client.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame is not a JSON object with a known `type`: {0}")]
    BadFrame(String),
    #[error("invalid topic name {name:?}: {error}")]
    InvalidTopic { name: String, error: NameError },
}

impl FrameError {
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::BadFrame(_) => "bad_frame",
            FrameError::InvalidTopic { .. } => "invalid_topic",
        }
    }
}

/// The `type` of a frame, read first: serde's tagged enums buffer their content, which loses the
/// raw bytes of `data` that a publish must pass on verbatim.
#[derive(Deserialize)]
struct Tag<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsWire {
    #[serde(rename = "type")]
    _kind: serde::de::IgnoredAny,
    topics: Vec<String>,
    #[serde(default)]
    since: Option<SinceWire>,
    #[serde(default)]
    r#ref: Option<Value>,
}

/// A durable-stream position as a client sends it back: `{"epoch": "…", "offset": 17}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SinceWire {
    epoch: String,
    offset: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishWire<'a> {
    #[serde(rename = "type")]
    _kind: serde::de::IgnoredAny,
    #[serde(default)]
    topic: Option<String>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    r#ref: Option<Value>,
}

/// The `ref` of a frame, if it has one, so even a refused frame's error can name it.
pub fn peek_ref(text: &str) -> Option<Value> {
    serde_json::from_str::<Value>(text)
        .ok()?
        .get("ref")
        .cloned()
}

fn topics(names: Vec<String>) -> Result<Vec<Topic>, FrameError> {
    names
        .into_iter()
        .map(|name| Topic::parse(&name).map_err(|error| FrameError::InvalidTopic { name, error }))
        .collect()
}

impl ClientFrame {
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        let bad = |e: serde_json::Error| FrameError::BadFrame(e.to_string());
        let tag: Tag<'_> = serde_json::from_str(text).map_err(bad)?;
        Ok(match &*tag.kind {
            "subscribe" | "unsubscribe" => {
                let wire: TopicsWire = serde_json::from_str(text).map_err(bad)?;
                let topics = topics(wire.topics)?;
                if tag.kind == "subscribe" {
                    let since = wire.since.map(|s| {
                        let valid = !s.epoch.is_empty()
                            && s.epoch.len() <= 64
                            && s.epoch.bytes().all(|b| b.is_ascii_alphanumeric());
                        if valid {
                            Ok(Position {
                                epoch: s.epoch.into(),
                                offset: s.offset,
                            })
                        } else {
                            Err(FrameError::BadFrame(format!(
                                "`since.epoch` {:?} is not an epoch pgws gave out",
                                s.epoch
                            )))
                        }
                    });
                    ClientFrame::Subscribe {
                        topics,
                        since: since.transpose()?,
                        r#ref: wire.r#ref,
                    }
                } else if wire.since.is_some() {
                    return Err(FrameError::BadFrame(
                        "`since` belongs to subscribe, not unsubscribe".into(),
                    ));
                } else {
                    ClientFrame::Unsubscribe {
                        topics,
                        r#ref: wire.r#ref,
                    }
                }
            }
            "publish" => {
                let wire: PublishWire<'_> = serde_json::from_str(text).map_err(bad)?;
                let topic = match wire.topic {
                    Some(name) => Some(
                        Topic::parse(&name)
                            .map_err(|error| FrameError::InvalidTopic { name, error })?,
                    ),
                    None => None,
                };
                ClientFrame::Publish {
                    topic,
                    // `data` parsed as part of the frame, so it is JSON: a frame with broken
                    // `data` is a broken frame.
                    data: JsonBody::parse(wire.data.get())
                        .map_err(|e| FrameError::BadFrame(e.to_string()))?,
                    r#ref: wire.r#ref,
                }
            }
            other => {
                return Err(FrameError::BadFrame(format!(
                    "unknown type {other:?} (expected subscribe, unsubscribe or publish)"
                )))
            }
        })
    }
}

fn with_ref(mut v: Value, r#ref: Option<&Value>) -> String {
    if let (Some(r), Some(obj)) = (r#ref, v.as_object_mut()) {
        obj.insert("ref".into(), r.clone());
    }
    v.to_string()
}

pub fn welcome(tenant: &str, topics: &[String], can_publish: bool) -> String {
    json!({"type": "welcome", "tenant": tenant, "topics": topics, "mode": if can_publish { "rw" } else { "r" }})
        .to_string()
}

pub fn subscribed(topics: &[Topic], r#ref: Option<&Value>) -> String {
    topics_answer("subscribed", topics, r#ref)
}

/// The end of a recovery that could not be made (see `streams` for the one that could).
pub fn not_recovered(reason: &str, r#ref: Option<&Value>) -> String {
    with_ref(
        json!({"type": "recovered", "recovered": false, "replayed": 0, "epoch": null, "offset": 0, "reason": reason}),
        r#ref,
    )
}

pub fn unsubscribed(topics: &[Topic], r#ref: Option<&Value>) -> String {
    topics_answer("unsubscribed", topics, r#ref)
}

fn topics_answer(kind: &str, topics: &[Topic], r#ref: Option<&Value>) -> String {
    let names: Vec<&str> = topics.iter().map(Topic::as_str).collect();
    with_ref(json!({"type": kind, "topics": names}), r#ref)
}

pub fn published(r#ref: Option<&Value>) -> String {
    with_ref(json!({"type": "published"}), r#ref)
}

pub fn error(code: &str, message: &str, r#ref: Option<&Value>) -> String {
    with_ref(
        json!({"type": "error", "code": code, "message": message}),
        r#ref,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_client_frame() {
        match ClientFrame::parse(r#"{"type":"subscribe","topics":["a","b/c"],"ref":1}"#) {
            Ok(ClientFrame::Subscribe { topics, r#ref, .. }) => {
                assert_eq!(topics.len(), 2);
                assert_eq!(r#ref, Some(json!(1)));
            }
            other => panic!("{other:?}"),
        }
        match ClientFrame::parse(r#"{"type":"publish","data":{"z":1, "a":[1,2]}}"#) {
            Ok(ClientFrame::Publish { topic, data, .. }) => {
                assert!(topic.is_none());
                assert_eq!(data.as_str(), r#"{"z":1, "a":[1,2]}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    proptest::proptest! {
        /// Any client frame at all: parsing answers, never panics.
        #[test]
        fn parse_never_panics(text in ".{0,200}") {
            let _ = ClientFrame::parse(&text);
        }

        /// Arbitrary JSON-ish frames with the right type never panic either.
        #[test]
        fn typed_garbage_never_panics(kind in "subscribe|unsubscribe|publish|x", rest in ".{0,80}") {
            let _ = ClientFrame::parse(&format!(r#"{{"type":"{kind}",{rest}"#));
        }
    }

    #[test]
    fn refuses_bad_frames_with_codes() {
        let cases = [
            ("not json", "bad_frame"),
            (r#"{"type":"dance"}"#, "bad_frame"),
            (r#"{"type":"subscribe"}"#, "bad_frame"),
            (r#"{"type":"subscribe","topics":["a b"]}"#, "invalid_topic"),
            (r#"{"type":"publish","topic":"","data":1}"#, "invalid_topic"),
            (
                r#"{"type":"publish","data":1,"tenant":"other"}"#,
                "bad_frame",
            ),
        ];
        for (text, code) in cases {
            let err = ClientFrame::parse(text).expect_err(text);
            assert_eq!(err.code(), code, "{text}: {err}");
        }
    }
}
