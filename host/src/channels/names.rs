//! The channel name rule (1–63 bytes, quoted identifiers) and the glob patterns a token grants.
//! It does not count subscribers (`channels`).

use std::fmt;
use std::sync::Arc;

use crate::envelope::JsonBody;

/// Longest channel name Postgres keeps without truncating (NAMEDATALEN - 1).
pub const MAX_CHANNEL_LEN: usize = 63;

/// The socket.io NOTIFY payload as the JSON a guest sees: the text itself when it is JSON, otherwise
/// the text as a JSON string (socketio_pg delivered non-JSON payloads, including the empty one, as
/// plain strings).
pub fn payload_body(payload: &str) -> JsonBody {
    JsonBody::parse(payload).unwrap_or_else(|_| JsonBody::string(payload))
}

/// A channel name that passed the name rule.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    pub fn parse(s: &str) -> Result<ChannelName, ChannelError> {
        let first = s.chars().next().ok_or(ChannelError::Empty)?;
        if s.len() > MAX_CHANNEL_LEN {
            return Err(ChannelError::TooLong);
        }
        if !(first.is_ascii_alphanumeric() || first == '_') {
            return Err(ChannelError::BadStart(first));
        }
        if let Some(c) = s
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
        {
            return Err(ChannelError::BadChar(c));
        }
        Ok(ChannelName(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Why a channel name was refused; the message goes back to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    #[error("channel name must start with a letter, digit or `_`, not {0:?}")]
    BadStart(char),
    #[error("channel name may only hold letters, digits, `_`, `-`, `.` and `:`, not {0:?}")]
    BadChar(char),
}

/// A channel pattern a token grants: `*` matches any run of characters (also none), `?` exactly one;
/// everything else matches itself. `orders`, `orders_*`, `eu.*.prices`, `*`.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelPattern(Arc<str>);

impl ChannelPattern {
    pub fn parse(s: &str) -> Result<ChannelPattern, ChannelError> {
        if s.is_empty() {
            return Err(ChannelError::Empty);
        }
        if let Some(c) = s.chars().find(|&c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '*' | '?'))
        }) {
            return Err(ChannelError::BadChar(c));
        }
        Ok(ChannelPattern(Arc::from(s)))
    }

    /// The pattern that matches every channel.
    pub fn any() -> ChannelPattern {
        ChannelPattern(Arc::from("*"))
    }

    pub fn matches(&self, channel: &ChannelName) -> bool {
        glob(self.0.as_bytes(), channel.as_str().as_bytes())
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Iterative glob match with backtracking to the last `*`: linear in practice, never exponential.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ChannelName {
        ChannelName::parse(s).expect(s)
    }

    #[test]
    fn name_rule() {
        for ok in [
            "foo",
            "orders_eu",
            "a.b:c-d",
            "_x",
            "9lives",
            &"x".repeat(63),
        ] {
            assert!(ChannelName::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(ChannelName::parse(""), Err(ChannelError::Empty));
        assert_eq!(ChannelName::parse("!!!"), Err(ChannelError::BadStart('!')));
        assert_eq!(ChannelName::parse("a b"), Err(ChannelError::BadChar(' ')));
        assert_eq!(ChannelName::parse("a\"b"), Err(ChannelError::BadChar('"')));
        assert_eq!(ChannelName::parse("-x"), Err(ChannelError::BadStart('-')));
        assert_eq!(
            ChannelName::parse(&"x".repeat(64)),
            Err(ChannelError::TooLong)
        );
    }

    #[test]
    fn glob_patterns() {
        let p = |s: &str| ChannelPattern::parse(s).expect(s);
        assert!(p("*").matches(&name("anything")));
        assert!(p("orders").matches(&name("orders")));
        assert!(!p("orders").matches(&name("orders2")));
        assert!(p("orders_*").matches(&name("orders_eu")));
        assert!(p("orders_*").matches(&name("orders_")));
        assert!(!p("orders_*").matches(&name("order")));
        assert!(p("eu.*.prices").matches(&name("eu.fr.prices")));
        assert!(!p("eu.*.prices").matches(&name("eu.fr.volumes")));
        assert!(p("a?c").matches(&name("abc")));
        assert!(!p("a?c").matches(&name("ac")));
        assert!(p("*a*a*a*b").matches(&name("aaaaaaaaaaaaaaaaaaaab")));
        assert!(!p("*a*a*a*b").matches(&name("aaaaaaaaaaaaaaaaaaaaa")));
        assert!(ChannelPattern::parse("a b").is_err());
    }
}
