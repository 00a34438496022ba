//! Who a client is: JSON Web Tokens verified by the host, turned into an [`Identity`].
//!
//! Owns the accepted algorithms and keys, the claim rules and where a token may come from. HS256 with a
//! shared secret, RS256 or ES256 with a public key (PEM); `alg: none` and any algorithm without a
//! configured key are refused. Claims:
//! - tenant (claim name configurable, default `tenant`): required, a valid tenant name;
//! - `topics`: optional list of topic patterns the client may receive (`orders`, `eu/*`, `*`);
//!   absent means every topic of the tenant;
//! - `channels`: optional list of Postgres channel patterns a socket.io client may subscribe to
//!   (`orders`, `orders_*`, `*`; see `channels`); absent means none;
//! - `mode`: `r` (default, receive only) or `rw` (may also publish);
//! - `exp`: required; an expired token is refused, and a session is closed when its token expires.
//!
//! It does not decide what a session receives (`hub`) or speak HTTP (`server`).

use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::channels::{ChannelName, ChannelPattern};
use crate::envelope::{NameError, TenantId, Topic, TopicPattern};

/// Subprotocol prefix that carries a token, for browsers that cannot set headers:
/// `new WebSocket(url, ["pgws.v1", "bearer." + token])`.
pub const TOKEN_PROTOCOL_PREFIX: &str = "bearer.";

/// A verified client.
#[derive(Debug, Clone)]
pub struct Identity {
    pub tenant: TenantId,
    /// `None`: every topic of the tenant.
    pub topics: Option<Arc<[TopicPattern]>>,
    /// Postgres channels a socket.io client may subscribe to by name.
    pub channels: Arc<[ChannelPattern]>,
    pub can_publish: bool,
    /// Unix time (seconds) when the token expires; `None` for development identities.
    pub expires_at: Option<u64>,
    /// The token's claims as JSON, for the guest's authorize hook.
    pub claims: String,
}

impl Identity {
    /// A development identity from `?tenant=` (only with `--insecure-tenant-param`): every topic and
    /// channel, may publish, never expires.
    pub fn insecure(tenant: TenantId) -> Identity {
        Identity {
            claims: serde_json::json!({ "tenant": tenant.as_str(), "insecure": true }).to_string(),
            tenant,
            topics: None,
            channels: Arc::from([ChannelPattern::any()]),
            can_publish: true,
            expires_at: None,
        }
    }

    /// Whether the token lets this client receive and publish on `topic`.
    pub fn allows(&self, topic: &Topic) -> bool {
        self.topics
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| p.matches(topic)))
    }

    /// Whether the token lets this socket.io client subscribe to `channel`.
    pub fn allows_channel(&self, channel: &ChannelName) -> bool {
        self.channels.iter().any(|p| p.matches(channel))
    }

    /// The channel patterns as strings.
    pub fn channel_list(&self) -> Vec<String> {
        self.channels.iter().map(ToString::to_string).collect()
    }

    /// The patterns as strings, `*` when everything is allowed.
    pub fn topic_list(&self) -> Vec<String> {
        match &self.topics {
            None => vec!["*".into()],
            Some(p) => p.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Why a token was refused. The reason label goes to metrics and logs; the message to the client.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send `Authorization: Bearer <token>`, `?token=<token>`, or a `bearer.<token>` subprotocol")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("tokens signed with `alg: none` are never accepted")]
    AlgNone,
    #[error("algorithm {0} is not accepted by this server")]
    Algorithm(String),
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token has no `exp` claim")]
    MissingExp,
    #[error("token has no `{0}` claim")]
    MissingTenant(String),
    #[error("invalid tenant in token: {0}")]
    InvalidTenant(NameError),
    #[error("invalid `topics` claim: {0}")]
    InvalidTopics(String),
    #[error("invalid `channels` claim: {0}")]
    InvalidChannels(String),
    #[error("invalid `mode` claim: {0:?} (expected \"r\" or \"rw\")")]
    InvalidMode(String),
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Malformed(_) => "malformed_token",
            AuthError::AlgNone => "alg_none",
            AuthError::Algorithm(_) => "bad_algorithm",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::MissingExp => "missing_exp",
            AuthError::MissingTenant(_) => "missing_tenant",
            AuthError::InvalidTenant(_) => "invalid_tenant",
            AuthError::InvalidTopics(_) => "invalid_topics",
            AuthError::InvalidChannels(_) => "invalid_channels",
            AuthError::InvalidMode(_) => "invalid_mode",
        }
    }
}

/// Why the verifier could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} holds neither an RSA nor an EC public key in PEM form")]
    NotAKey(String),
    #[error("the JWT secret is empty")]
    EmptySecret,
}

struct Key {
    algorithm: Algorithm,
    decoding: DecodingKey,
}

/// Verifies tokens against the configured keys.
pub struct Authenticator {
    keys: Vec<Key>,
    tenant_claim: String,
}

impl Authenticator {
    /// Builds a verifier from an HS256 secret and/or a PEM public key file. `None` if neither is set
    /// (tokens are then not accepted at all).
    pub fn new(
        secret: Option<&str>,
        public_key: Option<&std::path::Path>,
        tenant_claim: &str,
    ) -> Result<Option<Authenticator>, KeyError> {
        let mut keys = Vec::new();
        if let Some(secret) = secret {
            if secret.is_empty() {
                return Err(KeyError::EmptySecret);
            }
            keys.push(Key {
                algorithm: Algorithm::HS256,
                decoding: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        if let Some(path) = public_key {
            let shown = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| KeyError::Read {
                path: shown.clone(),
                source,
            })?;
            if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                keys.push(Key {
                    algorithm: Algorithm::RS256,
                    decoding: k,
                });
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                keys.push(Key {
                    algorithm: Algorithm::ES256,
                    decoding: k,
                });
            } else {
                return Err(KeyError::NotAKey(shown));
            }
        }
        Ok((!keys.is_empty()).then(|| Authenticator {
            keys,
            tenant_claim: tenant_claim.to_owned(),
        }))
    }

    /// Verifies signature, algorithm and expiry, then reads the claims.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            if header_alg(token)
                .as_deref()
                .is_some_and(|a| a.eq_ignore_ascii_case("none"))
            {
                AuthError::AlgNone
            } else {
                AuthError::Malformed(e.to_string())
            }
        })?;
        let key = self
            .keys
            .iter()
            .find(|k| k.algorithm == header.alg)
            .ok_or_else(|| AuthError::Algorithm(format!("{:?}", header.alg)))?;
        let mut validation = Validation::new(key.algorithm);
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = 0;
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key.decoding,
            &validation,
        )
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => AuthError::BadSignature,
                K::ExpiredSignature => AuthError::Expired,
                K::MissingRequiredClaim(c) if c == "exp" => AuthError::MissingExp,
                K::InvalidAlgorithm => AuthError::Algorithm(format!("{:?}", header.alg)),
                _ => AuthError::Malformed(e.to_string()),
            }
        })?;
        self.identity(data.claims)
    }

    fn identity(
        &self,
        claims: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Identity, AuthError> {
        let tenant = claims
            .get(&self.tenant_claim)
            .and_then(|v| v.as_str())
            .ok_or_else(|| AuthError::MissingTenant(self.tenant_claim.clone()))?;
        let tenant = TenantId::parse(tenant).map_err(AuthError::InvalidTenant)?;
        let topics = match claims.get("topics") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Array(items)) => {
                let patterns = items
                    .iter()
                    .map(|v| {
                        let s = v.as_str().ok_or("topics must be strings")?;
                        TopicPattern::parse(s).map_err(|_| "invalid topic pattern")
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| AuthError::InvalidTopics(e.into()))?;
                Some(Arc::from(patterns))
            }
            Some(_) => return Err(AuthError::InvalidTopics("must be a list".into())),
        };
        let channels = match claims.get("channels") {
            None | Some(serde_json::Value::Null) => Arc::from([]),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| {
                    let s = v.as_str().ok_or("channels must be strings".to_owned())?;
                    ChannelPattern::parse(s).map_err(|e| format!("{s:?}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(AuthError::InvalidChannels)?
                .into(),
            Some(_) => return Err(AuthError::InvalidChannels("must be a list".into())),
        };
        let can_publish = match claims.get("mode").and_then(|m| m.as_str()) {
            None | Some("r") => false,
            Some("rw") => true,
            Some(other) => return Err(AuthError::InvalidMode(other.into())),
        };
        let expires_at = claims.get("exp").and_then(|e| e.as_u64());
        Ok(Identity {
            tenant,
            topics,
            channels,
            can_publish,
            expires_at,
            claims: serde_json::Value::Object(claims).to_string(),
        })
    }
}

/// The `alg` of a token's header, read without trusting anything else in it.
fn header_alg(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("alg")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn hs(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    fn auth() -> Authenticator {
        Authenticator::new(Some("s3cret"), None, "tenant")
            .expect("keys")
            .expect("configured")
    }

    #[test]
    fn accepts_a_valid_token() {
        let t = hs(
            serde_json::json!({"tenant":"acme","exp":now()+60,"topics":["eu/*"],"mode":"rw"}),
            "s3cret",
        );
        let id = auth().verify(&t).expect("valid");
        assert_eq!(id.tenant.as_str(), "acme");
        assert!(id.can_publish);
        assert_eq!(id.topic_list(), ["eu/*"]);
        assert!(
            id.channel_list().is_empty(),
            "no channels claim, no channels"
        );
    }

    #[test]
    fn channels_claim_grants_globs() {
        let t = hs(
            serde_json::json!({"tenant":"acme","exp":now()+60,"channels":["orders_*","news"]}),
            "s3cret",
        );
        let id = auth().verify(&t).expect("valid");
        let ch = |s: &str| ChannelName::parse(s).expect(s);
        assert!(id.allows_channel(&ch("orders_eu")));
        assert!(id.allows_channel(&ch("news")));
        assert!(!id.allows_channel(&ch("newsroom")));
        let bad = hs(
            serde_json::json!({"tenant":"acme","exp":now()+60,"channels":["a b"]}),
            "s3cret",
        );
        assert_eq!(
            auth().verify(&bad).expect_err("bad").reason(),
            "invalid_channels"
        );
    }

    #[test]
    fn refuses_bad_tokens_with_reasons() {
        let a = auth();
        let cases = [
            (hs(serde_json::json!({"tenant":"acme","exp":now()-10}), "s3cret"), "expired"),
            (hs(serde_json::json!({"tenant":"acme","exp":now()+60}), "wrong"), "bad_signature"),
            (hs(serde_json::json!({"exp":now()+60}), "s3cret"), "missing_tenant"),
            (hs(serde_json::json!({"tenant":"acme"}), "s3cret"), "missing_exp"),
            (hs(serde_json::json!({"tenant":"a b","exp":now()+60}), "s3cret"), "invalid_tenant"),
            (hs(serde_json::json!({"tenant":"acme","exp":now()+60,"mode":"x"}), "s3cret"), "invalid_mode"),
            ("not.a.token".to_owned(), "malformed_token"),
            ("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJ0ZW5hbnQiOiJhY21lIiwiZXhwIjo5OTk5OTk5OTk5fQ.".to_owned(), "alg_none"),
        ];
        for (token, reason) in cases {
            let err = a.verify(&token).expect_err(reason);
            assert_eq!(err.reason(), reason, "{err}");
        }
    }
}
