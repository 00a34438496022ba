//! The NOTIFY payload format, parsed once at the edge into proven types.
//!
//! Owns the wire rule `<tenant>[/<topic>],<json>` and the name rules for tenants and topics. Everything
//! downstream (guests, hub, sessions) receives a [`TenantId`], an optional [`Topic`] and a body already
//! known to be JSON, and never re-validates. It does not decide where a message goes; that is the
//! guest's and the hub's business.
//!
//! Name rules:
//! - tenant: 1–64 ASCII characters from `A-Z a-z 0-9 _ - .`, starting with a letter or digit;
//! - topic: 1–128 ASCII characters from `A-Z a-z 0-9 _ - . : /`, with no empty `/` segment
//!   (so no leading, trailing or doubled `/`).
//!
//! The body is everything after the first comma and must be one JSON value (surrounding whitespace
//! allowed). It is passed on byte for byte: never decoded into a map and re-encoded.

use std::fmt;
use std::sync::Arc;

/// Longest tenant name accepted.
pub const MAX_TENANT_LEN: usize = 64;
/// Longest topic name accepted.
pub const MAX_TOPIC_LEN: usize = 128;

/// Why a payload was refused. The variant name is the metric label, the message is logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("no comma separating `<tenant>` from the JSON body")]
    MissingSeparator,
    #[error("invalid tenant name: {0}")]
    InvalidTenant(NameError),
    #[error("invalid topic name: {0}")]
    InvalidTopic(NameError),
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
}

impl EnvelopeError {
    /// A short, stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            EnvelopeError::MissingSeparator => "missing_separator",
            EnvelopeError::InvalidTenant(_) => "invalid_tenant",
            EnvelopeError::InvalidTopic(_) => "invalid_topic",
            EnvelopeError::InvalidJson(_) => "invalid_json",
        }
    }
}

/// Why a tenant or topic name breaks its rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty")]
    Empty,
    #[error("longer than {max} bytes")]
    TooLong { max: usize },
    #[error("character {0:?} is not allowed")]
    BadChar(char),
    #[error("must start with a letter or digit")]
    BadStart,
    #[error("empty `/` segment")]
    EmptySegment,
}

/// A validated tenant name. Cheap to clone; hashed and compared by its text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        check_name(s, MAX_TENANT_LEN, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
        })?;
        if !s.as_bytes()[0].is_ascii_alphanumeric() {
            return Err(NameError::BadStart);
        }
        Ok(TenantId(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated topic name inside a tenant.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        check_name(s, MAX_TOPIC_LEN, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/')
        })?;
        if s.split('/').any(str::is_empty) {
            return Err(NameError::EmptySegment);
        }
        Ok(Topic(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_name(s: &str, max: usize, allowed: impl Fn(char) -> bool) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > max {
        return Err(NameError::TooLong { max });
    }
    match s.chars().find(|&c| !allowed(c)) {
        Some(c) => Err(NameError::BadChar(c)),
        None => Ok(()),
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
    )*};
}
display_as_str!(TenantId, Topic);

/// A pattern over topic names, as granted by a token: `orders` (exactly that topic), `eu/*` (every
/// topic starting with `eu/`), `*` (every topic). A `*` may only come last.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TopicPattern {
    prefix: Arc<str>,
    wildcard: bool,
}

impl TopicPattern {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        match s.strip_suffix('*') {
            Some(prefix) => {
                if let Some(c) = prefix.chars().find(|&c| {
                    !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/'))
                }) {
                    return Err(NameError::BadChar(c));
                }
                if prefix.len() > MAX_TOPIC_LEN {
                    return Err(NameError::TooLong { max: MAX_TOPIC_LEN });
                }
                Ok(TopicPattern {
                    prefix: Arc::from(prefix),
                    wildcard: true,
                })
            }
            None => Ok(TopicPattern {
                prefix: Topic::parse(s)?.0,
                wildcard: false,
            }),
        }
    }

    /// The pattern that matches every topic (`*`).
    pub fn any() -> Self {
        TopicPattern {
            prefix: Arc::from(""),
            wildcard: true,
        }
    }

    pub fn matches(&self, topic: &Topic) -> bool {
        if self.wildcard {
            topic.as_str().starts_with(&*self.prefix)
        } else {
            *self.prefix == *topic.0
        }
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.prefix)?;
        if self.wildcard {
            f.write_str("*")?;
        }
        Ok(())
    }
}

impl fmt::Debug for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

/// A JSON body known to be one valid JSON value, kept as the exact text that arrived.
#[derive(Clone, PartialEq, Eq)]
pub struct JsonBody(Arc<str>);

impl JsonBody {
    pub fn parse(s: &str) -> Result<Self, EnvelopeError> {
        check_json(s)?;
        Ok(JsonBody(Arc::from(s)))
    }

    /// Wraps a `String` after checking it, without copying it.
    pub fn from_string(s: String) -> Result<Self, EnvelopeError> {
        check_json(&s)?;
        Ok(JsonBody(Arc::from(s)))
    }

    /// `text` as a JSON string literal. Serialising a string always yields valid JSON, so it is not
    /// checked again.
    pub fn string(text: &str) -> Self {
        JsonBody(Arc::from(
            serde_json::Value::String(text.to_owned()).to_string(),
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for JsonBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

fn check_json(s: &str) -> Result<(), EnvelopeError> {
    serde_json::from_str::<serde::de::IgnoredAny>(s)
        .map(drop)
        .map_err(|e| EnvelopeError::InvalidJson(e.to_string()))
}

/// Where a durable message sits in its tenant's stream (`streams`): an offset, dense and in commit
/// order, within an epoch (a stream that was reset starts a new epoch and counts from 1 again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: Arc<str>,
    pub offset: u64,
}

impl Position {
    /// Whether `self` comes after `other` in the same stream; a position of another epoch is not
    /// comparable and counts as after.
    pub fn is_after(&self, other: &Position) -> bool {
        self.epoch != other.epoch || self.offset > other.offset
    }
}

/// One parsed NOTIFY payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub tenant: TenantId,
    pub topic: Option<Topic>,
    pub body: JsonBody,
}

impl Envelope {
    /// Parses `<tenant>,<json>` or `<tenant>/<topic>,<json>`.
    ///
    /// The first comma ends the address; tenant and topic names cannot contain a comma, so the body
    /// may contain any number of them.
    pub fn parse(payload: &str) -> Result<Envelope, EnvelopeError> {
        let (address, body) = payload
            .split_once(',')
            .ok_or(EnvelopeError::MissingSeparator)?;
        let (tenant, topic) = match address.split_once('/') {
            Some((tenant, topic)) => (tenant, Some(topic)),
            None => (address, None),
        };
        let tenant = TenantId::parse(tenant).map_err(EnvelopeError::InvalidTenant)?;
        let topic = topic
            .map(Topic::parse)
            .transpose()
            .map_err(EnvelopeError::InvalidTopic)?;
        let body = JsonBody::parse(body)?;
        Ok(Envelope {
            tenant,
            topic,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &str) -> Envelope {
        Envelope::parse(p).expect("valid payload")
    }

    #[test]
    fn parses_tenant_and_body_verbatim() {
        let e = ok(r#"acme,{"b":1, "a":"x,y"}"#);
        assert_eq!(e.tenant.as_str(), "acme");
        assert_eq!(e.topic, None);
        assert_eq!(e.body.as_str(), r#"{"b":1, "a":"x,y"}"#);
    }

    #[test]
    fn parses_topic() {
        let e = ok(r#"acme/orders/eu,[1,2]"#);
        assert_eq!(e.tenant.as_str(), "acme");
        assert_eq!(e.topic.as_ref().map(Topic::as_str), Some("orders/eu"));
    }

    #[test]
    fn keeps_big_integers_and_unicode_untouched() {
        let body = r#"{"n":123456789012345678901234567890,"s":"héllo <&> ✓"}"#;
        assert_eq!(ok(&format!("t,{body}")).body.as_str(), body);
    }

    #[test]
    fn refuses_bad_payloads_with_reasons() {
        let cases = [
            ("acme {\"a\":1}", "missing_separator"),
            (",{}", "invalid_tenant"),
            ("ac me,{}", "invalid_tenant"),
            ("-acme,{}", "invalid_tenant"),
            ("acmé,{}", "invalid_tenant"),
            ("acme/,{}", "invalid_topic"),
            ("acme/a//b,{}", "invalid_topic"),
            ("acme/a b,{}", "invalid_topic"),
            ("acme,", "invalid_json"),
            ("acme,{\"a\":", "invalid_json"),
            ("acme,{} {}", "invalid_json"),
            ("acme,not json", "invalid_json"),
        ];
        for (payload, reason) in cases {
            let err = Envelope::parse(payload).expect_err(payload);
            assert_eq!(err.reason(), reason, "{payload}: {err}");
        }
    }

    #[test]
    fn topic_patterns() {
        let t = |s: &str| Topic::parse(s).expect("topic");
        let p = |s: &str| TopicPattern::parse(s).expect("pattern");
        assert!(p("*").matches(&t("anything/at/all")));
        assert!(p("eu/*").matches(&t("eu/orders")));
        assert!(!p("eu/*").matches(&t("us/orders")));
        assert!(p("orders").matches(&t("orders")));
        assert!(!p("orders").matches(&t("orders2")));
        assert!(TopicPattern::parse("a*b").is_err());
        assert!(TopicPattern::parse("a b*").is_err());
    }

    proptest::proptest! {
        /// Any payload at all: parsing returns a value or a reason, never panics.
        #[test]
        fn parse_never_panics(payload in ".{0,200}") {
            let _ = Envelope::parse(&payload);
        }

        /// A payload built from valid parts parses back to exactly those parts.
        #[test]
        fn valid_payloads_round_trip(
            tenant in "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}",
            topic in proptest::option::of("[a-z0-9]{1,10}(/[a-z0-9:_]{1,10}){0,3}"),
            n in proptest::num::i64::ANY,
            s in "[a-zA-Z0-9 ,.:/{}é✓日-]{0,40}",
        ) {
            let body = format!(r#"{{"n":{n},"s":"{s}","k":[1,2]}}"#);
            let address = match &topic { Some(t) => format!("{tenant}/{t}"), None => tenant.clone() };
            let e = Envelope::parse(&format!("{address},{body}")).expect("valid parts parse");
            proptest::prop_assert_eq!(e.tenant.as_str(), tenant.as_str());
            proptest::prop_assert_eq!(e.topic.as_ref().map(Topic::as_str), topic.as_deref());
            proptest::prop_assert_eq!(e.body.as_str(), body.as_str());
        }
    }

    #[test]
    fn name_length_limits() {
        assert!(TenantId::parse(&"a".repeat(MAX_TENANT_LEN)).is_ok());
        assert_eq!(
            TenantId::parse(&"a".repeat(MAX_TENANT_LEN + 1)),
            Err(NameError::TooLong {
                max: MAX_TENANT_LEN
            })
        );
        assert!(Topic::parse(&"t".repeat(MAX_TOPIC_LEN)).is_ok());
        assert!(Topic::parse(&"t".repeat(MAX_TOPIC_LEN + 1)).is_err());
    }
}
