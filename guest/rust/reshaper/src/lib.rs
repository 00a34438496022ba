//! Reshapes each body before clients see it: strips secrets, renames a field, stamps the tenant.
//!
//! - removes `password`, `secret`, `token` and every key starting with `_`, at any depth;
//! - renames the top-level `usr` to `user`;
//! - adds `"tenant": "<tenant>"` as the last top-level member (replacing one the body had).
//! Key order is kept. Non-object bodies pass through unchanged.
//!
//! It works in one pass over the text and copies what it keeps, instead of building a tree and
//! printing it again: the work is a scan and a copy, a few times faster than a `serde_json::Value`
//! round trip.

wit_bindgen::generate!({ path: "../../../wit", world: "pgws:guest/filter" });

use exports::pgws::guest::handler::Guest;
use pgws::guest::types::{Notification, Verdict};

struct Reshaper;

fn is_secret(key: &str) -> bool {
    matches!(key, "password" | "secret" | "token") || key.starts_with('_')
}

/// A cursor over JSON text the host already checked; it still refuses anything malformed rather
/// than trusting that.
struct Scan<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.ws();
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// A string literal, quotes included.
    fn string(&mut self) -> Option<&'a str> {
        self.ws();
        let start = self.at;
        if self.peek()? != b'"' {
            return None;
        }
        let bytes = self.text.as_bytes();
        let mut i = start + 1;
        loop {
            match *bytes.get(i)? {
                b'"' => break,
                b'\\' => i += 2,
                _ => i += 1,
            }
        }
        self.at = i + 1;
        Some(&self.text[start..self.at])
    }

    /// A number, `true`, `false` or `null`.
    fn scalar(&mut self) -> Option<&'a str> {
        let start = self.at;
        while let Some(b) = self.peek() {
            if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.at += 1;
        }
        (self.at > start).then(|| &self.text[start..self.at])
    }

    /// Skips one value.
    fn skip(&mut self) -> Option<()> {
        self.copy(&mut Sink::Discard, 1)
    }

    /// Copies one value to `out`, leaving out secret members of every object in it. `depth` 0 is the
    /// body itself.
    fn copy(&mut self, out: &mut Sink, depth: u32) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'{' => {
                self.at += 1;
                out.push("{");
                self.members(out, depth, |_, _| Some(()))?;
                out.push("}");
            }
            b'[' => {
                self.at += 1;
                out.push("[");
                self.ws();
                if self.peek()? == b']' {
                    self.at += 1;
                } else {
                    loop {
                        self.copy(out, depth + 1)?;
                        self.ws();
                        match self.peek()? {
                            b',' => {
                                self.at += 1;
                                out.push(",");
                            }
                            b']' => {
                                self.at += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
                out.push("]");
            }
            b'"' => out.push(self.string()?),
            _ => out.push(self.scalar()?),
        }
        Some(())
    }

    /// The members of an object whose `{` was consumed, through its `}`; `last` may append members
    /// before the `}` is written (it gets whether a member was written already).
    fn members(
        &mut self,
        out: &mut Sink,
        depth: u32,
        last: impl FnOnce(&mut Sink, bool) -> Option<()>,
    ) -> Option<()> {
        let mut wrote = false;
        self.ws();
        if self.peek()? == b'}' {
            self.at += 1;
            return last(out, wrote);
        }
        loop {
            let raw = self.string()?;
            let key = unquote(raw)?;
            self.eat(b':')?;
            let dropped = is_secret(&key) || (depth == 0 && key == "tenant");
            if dropped {
                self.skip()?;
            } else {
                if wrote {
                    out.push(",");
                }
                wrote = true;
                out.push(if depth == 0 && key == "usr" {
                    "\"user\""
                } else {
                    raw
                });
                out.push(":");
                self.copy(out, depth + 1)?;
            }
            self.ws();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return last(out, wrote);
                }
                _ => return None,
            }
        }
    }
}

/// A key's text: the literal without quotes, decoded only when it holds an escape.
fn unquote(raw: &str) -> Option<std::borrow::Cow<'_, str>> {
    let inner = &raw[1..raw.len() - 1];
    if inner.contains('\\') {
        serde_json::from_str::<String>(raw).ok().map(Into::into)
    } else {
        Some(inner.into())
    }
}

/// Where copied text goes.
enum Sink {
    Keep(String),
    Discard,
}

impl Sink {
    fn push(&mut self, s: &str) {
        if let Sink::Keep(out) = self {
            out.push_str(s);
        }
    }
}

impl Guest for Reshaper {
    fn on_notify(n: Notification) -> Verdict {
        let mut scan = Scan {
            text: &n.body,
            at: 0,
        };
        if scan.eat(b'{').is_none() {
            return Verdict::Forward;
        }
        let mut out = Sink::Keep(String::with_capacity(n.body.len() + n.tenant.len() + 16));
        out.push("{");
        let tenant = &n.tenant;
        let done = scan.members(&mut out, 0, |out, wrote| {
            if wrote {
                out.push(",");
            }
            // Tenant names are plain ASCII without quotes or backslashes: no escaping needed.
            out.push("\"tenant\":\"");
            out.push(tenant);
            out.push("\"}");
            Some(())
        });
        scan.ws();
        match (done, out) {
            (Some(()), Sink::Keep(body)) if scan.at == n.body.len() => Verdict::Replace(body),
            _ => Verdict::Reject("body is not JSON".into()),
        }
    }
}

export!(Reshaper);
