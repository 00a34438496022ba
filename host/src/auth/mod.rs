//! Who a client is: one rule for every endpoint, from the credentials it presented to an
//! [`Identity`] with least-privilege grants.
//!
//! Owns [`identify`], which `/ws` and socket.io both call: which credentials count and in what
//! order. `token` verifies tokens (keys, JWKS rotation, `exp`/`nbf`/`aud`/`iss`); `identity` holds
//! what a verified client may do. Grants:
//!
//! | claim | absent means |
//! | --- | --- |
//! | tenant (name configurable) | refused |
//! | `topics` | no topic: only the tenant's messages without a topic, read and (`rw`) publish |
//! | `channels` | no socket.io channel |
//! | `mode` | `r`: read only |
//! | `exp` | refused |
//!
//! A token that lists `topics` is topic-limited: it reads messages without a topic plus the topics it
//! lists, and publishes only to topics it lists (never tenant-wide). It does not decide what a
//! session receives (`hub`) or speak HTTP (`upgrade`, `socketio`).

mod identity;
mod keys;
mod mint;
mod token;

use std::sync::Arc;

pub use identity::Identity;
pub use mint::{mint, MintError};
pub use token::{watch_jwks, AuthError, Authenticator, KeyError, TokenRules, MIN_SECRET_LEN};

use crate::envelope::TenantId;

/// Subprotocol prefix that carries a token, for browsers that cannot set headers:
/// `new WebSocket(url, ["pgws.v1", "bearer." + token])`.
pub const TOKEN_PROTOCOL_PREFIX: &str = "bearer.";

/// What a client presented, wherever it came from.
#[derive(Debug, Default, Clone)]
pub struct Credentials {
    /// The `Authorization` header's value, as sent.
    pub authorization: Option<String>,
    /// A token from the query string, the socket.io `auth` payload or a subprotocol.
    pub token: Option<String>,
    /// `?tenant=` (or socket.io `auth.tenant`), for development mode.
    pub tenant: Option<String>,
}

impl Credentials {
    /// The bearer token, from the header (scheme matched case-insensitively, as RFC 7235 says) or
    /// else from anywhere else it was sent.
    pub fn bearer(&self) -> Option<&str> {
        self.authorization
            .as_deref()
            .and_then(bearer_token)
            .or(self.token.as_deref())
            .filter(|t| !t.is_empty())
    }

    /// Credentials holding the request's `Authorization` header and nothing else yet.
    pub fn from_headers(headers: &axum::http::HeaderMap) -> Credentials {
        Credentials {
            authorization: headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            ..Credentials::default()
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is matched
/// case-insensitively, as RFC 7235 says.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(char::is_whitespace)?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// How clients may prove who they are on this server.
#[derive(Clone, Default)]
pub struct IdentityRules {
    pub auth: Option<Arc<Authenticator>>,
    /// `--insecure-tenant-param`.
    pub insecure_tenant_param: bool,
    /// `--socketio-anonymous-tenant`; only socket.io passes it.
    pub anonymous_tenant: Option<TenantId>,
    /// `--socketio-test-pub`: the anonymous identity may publish.
    pub anonymous_can_publish: bool,
}

/// Why a client was not identified: a reason label for logs and metrics, a message for the client,
/// and whether the request itself was malformed (400) rather than unauthenticated (401).
#[derive(Debug)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
    pub bad_request: bool,
}

fn refusal(reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        message: message.into(),
        bad_request: false,
    }
}

/// The one identity rule of every endpoint:
/// 1. a token, when sent, decides — verified, or refused (also when the server has no key: a token
///    is never silently ignored);
/// 2. without a token, development mode (`--insecure-tenant-param`) takes a tenant name;
/// 3. then socket.io's anonymous tenant, if configured;
/// 4. otherwise the client is refused.
pub fn identify(credentials: &Credentials, rules: &IdentityRules) -> Result<Identity, Refusal> {
    if let Some(token) = credentials.bearer() {
        return match &rules.auth {
            Some(auth) => auth
                .verify(token)
                .map_err(|e| refusal(e.reason(), e.to_string())),
            None => Err(refusal(
                "tokens_disabled",
                "this server accepts no tokens (no --jwt-secret, --jwt-public-key or --jwt-jwks)",
            )),
        };
    }
    if rules.insecure_tenant_param {
        if let Some(name) = &credentials.tenant {
            return TenantId::parse(name)
                .map(Identity::insecure)
                .map_err(|e| Refusal {
                    reason: "invalid_tenant",
                    message: format!("invalid tenant name: {e}"),
                    bad_request: true,
                });
        }
    }
    if let Some(tenant) = &rules.anonymous_tenant {
        return Ok(Identity::anonymous(
            tenant.clone(),
            rules.anonymous_can_publish,
        ));
    }
    match (&rules.auth, rules.insecure_tenant_param) {
        (_, true) => Err(refusal(
            "missing_tenant",
            "no token and no tenant: send a token, or name a tenant with ?tenant=<name>",
        )),
        (Some(_), false) => Err(refusal(
            AuthError::Missing.reason(),
            AuthError::Missing.to_string(),
        )),
        (None, false) => Err(refusal(
            "no_auth",
            "no way to authenticate: the server accepts no tokens and --insecure-tenant-param is off",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use token::tests::{auth, now, SECRET};

    fn hs(claims: serde_json::Value) -> String {
        token::tests::hs(claims, SECRET)
    }

    #[test]
    fn identity_table() {
        let key = Some(Arc::new(auth()));
        let good = hs(serde_json::json!({"tenant":"acme","exp":now()+60.0}));
        let anon = TenantId::parse("public").ok();
        struct Case {
            header: Option<String>,
            token: Option<String>,
            tenant: Option<&'static str>,
            key: bool,
            dev: bool,
            anonymous: bool,
            expect: Result<&'static str, &'static str>,
        }
        let case = |header: Option<String>,
                    token: Option<String>,
                    tenant: Option<&'static str>,
                    key: bool,
                    dev: bool,
                    anonymous: bool,
                    expect| Case {
            header,
            token,
            tenant,
            key,
            dev,
            anonymous,
            expect,
        };
        let bearer = |scheme: &str| Some(format!("{scheme} {good}"));
        let cases = [
            // Header spellings: the scheme is case-insensitive.
            case(bearer("Bearer"), None, None, true, false, false, Ok("acme")),
            case(bearer("bearer"), None, None, true, false, false, Ok("acme")),
            case(bearer("BEARER"), None, None, true, false, false, Ok("acme")),
            case(
                Some(format!("Basic {good}")),
                None,
                None,
                true,
                false,
                false,
                Err("missing_token"),
            ),
            case(
                None,
                Some(good.clone()),
                None,
                true,
                false,
                false,
                Ok("acme"),
            ),
            case(
                None,
                Some("junk".into()),
                None,
                true,
                false,
                false,
                Err("malformed_token"),
            ),
            // A token is never ignored: no key refuses it, development mode or not.
            case(
                None,
                Some(good.clone()),
                Some("dev"),
                false,
                true,
                false,
                Err("tokens_disabled"),
            ),
            case(
                None,
                Some(good.clone()),
                None,
                false,
                false,
                false,
                Err("tokens_disabled"),
            ),
            // A token beats ?tenant= when both come.
            case(
                None,
                Some(good.clone()),
                Some("dev"),
                true,
                true,
                false,
                Ok("acme"),
            ),
            case(None, None, Some("dev"), true, true, false, Ok("dev")),
            case(None, None, Some("dev"), false, true, false, Ok("dev")),
            case(
                None,
                None,
                Some("bad name"),
                false,
                true,
                false,
                Err("invalid_tenant"),
            ),
            // ?tenant= outside development mode is no identity.
            case(
                None,
                None,
                Some("dev"),
                true,
                false,
                false,
                Err("missing_token"),
            ),
            case(None, None, None, false, true, false, Err("missing_tenant")),
            case(None, None, None, false, false, false, Err("no_auth")),
            // The anonymous tenant (socket.io) takes clients with no token at all.
            case(None, None, None, true, false, true, Ok("public")),
            case(
                None,
                Some("junk".into()),
                None,
                true,
                false,
                true,
                Err("malformed_token"),
            ),
            case(None, None, Some("dev"), false, true, true, Ok("dev")),
        ];
        for (i, c) in cases.into_iter().enumerate() {
            let credentials = Credentials {
                authorization: c.header,
                token: c.token,
                tenant: c.tenant.map(str::to_owned),
            };
            let rules = IdentityRules {
                auth: if c.key { key.clone() } else { None },
                insecure_tenant_param: c.dev,
                anonymous_tenant: if c.anonymous { anon.clone() } else { None },
                anonymous_can_publish: false,
            };
            let got = identify(&credentials, &rules)
                .map(|id| id.tenant.to_string())
                .map_err(|r| r.reason);
            assert_eq!(
                got.as_ref().map(String::as_str).map_err(|e| *e),
                c.expect,
                "case {i}"
            );
        }
    }

    #[test]
    fn anonymous_identity_is_read_only_unless_test_pub() {
        let t = TenantId::parse("public").expect("tenant");
        assert!(!Identity::anonymous(t.clone(), false).can_publish);
        assert!(Identity::anonymous(t, true).can_publish);
    }
}
