//! Token verification: the keys (an HS256 secret of at least 32 bytes, an RS256/ES256/EdDSA public
//! key, a JWKS file of keys chosen by `kid` and reloaded when it changes), the algorithm rule
//! (`alg: none` and any algorithm without a key are refused), and the claim rules (`exp` and `nbf` as
//! any JSON number with a small leeway, `aud`/`iss` when configured) that turn a token into an
//! [`Identity`].
//!
//! It does not decide which credentials win when a client sends several (`auth::identify`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::identity::Identity;
use super::keys::{pem_key, read_jwks, Key};
use crate::channels::ChannelPattern;
use crate::envelope::{NameError, TenantId, TopicPattern};

/// Shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key at least as long as the hash.
pub const MIN_SECRET_LEN: usize = 32;

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
    #[error("no key with kid {0:?}")]
    UnknownKey(String),
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    #[error("token has no `exp` claim")]
    MissingExp,
    #[error("`{0}` must be a number (seconds since 1970)")]
    BadTime(&'static str),
    #[error("token is not meant for this server (aud)")]
    Audience,
    #[error("token is not from the expected issuer (iss)")]
    Issuer,
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
            AuthError::UnknownKey(_) => "unknown_kid",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::MissingExp => "missing_exp",
            AuthError::BadTime(_) => "bad_time_claim",
            AuthError::Audience => "bad_audience",
            AuthError::Issuer => "bad_issuer",
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
    #[error("{0} holds no RSA, EC (P-256) or Ed25519 public key in PEM form")]
    NotAKey(String),
    #[error("the JWT secret is {0} bytes; at least {MIN_SECRET_LEN} are required (e.g. `openssl rand -base64 48`)")]
    WeakSecret(usize),
    #[error("{path} is not a usable JWKS: {message}")]
    Jwks { path: String, message: String },
}

/// Where keys come from and what claims must say.
#[derive(Debug, Clone, Default)]
pub struct TokenRules {
    /// HS256 shared secret.
    pub secret: Option<String>,
    /// PEM public key file (RS256, ES256 or EdDSA).
    pub public_key: Option<PathBuf>,
    /// JWKS file: keys chosen by the token's `kid`, reloaded when the file changes.
    pub jwks: Option<PathBuf>,
    /// Claim that names the tenant.
    pub tenant_claim: String,
    /// Required `aud` (the token's `aud`, a string or a list, must hold it).
    pub audience: Option<String>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

impl From<&crate::config::TokenSettings> for TokenRules {
    fn from(s: &crate::config::TokenSettings) -> Self {
        TokenRules {
            secret: s.jwt_secret.clone(),
            public_key: s.jwt_public_key.clone(),
            jwks: s.jwt_jwks.clone(),
            tenant_claim: s.jwt_tenant_claim.clone(),
            audience: s.jwt_audience.clone(),
            issuer: s.jwt_issuer.clone(),
            leeway: s.leeway(),
        }
    }
}

/// Verifies tokens against the configured keys.
pub struct Authenticator {
    rules: TokenRules,
    /// Keys from the secret and the public key file, fixed for the process.
    fixed: Vec<Key>,
    /// Keys from the JWKS file; swapped whole when the file changes.
    jwks: RwLock<Arc<Vec<Key>>>,
    /// Size and modification time of the JWKS file when last read.
    jwks_stamp: std::sync::Mutex<Option<(u64, SystemTime)>>,
}

impl Authenticator {
    /// Builds a verifier. `None` if no key is configured (tokens are then not accepted at all).
    pub fn new(rules: TokenRules) -> Result<Option<Authenticator>, KeyError> {
        let mut fixed = Vec::new();
        if let Some(secret) = &rules.secret {
            if secret.len() < MIN_SECRET_LEN {
                return Err(KeyError::WeakSecret(secret.len()));
            }
            fixed.push(Key {
                kid: None,
                algorithm: Algorithm::HS256,
                decoding: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        if let Some(path) = &rules.public_key {
            fixed.push(pem_key(path)?);
        }
        let jwks = match &rules.jwks {
            Some(path) => read_jwks(path)?,
            None => Vec::new(),
        };
        if fixed.is_empty() && rules.jwks.is_none() {
            return Ok(None);
        }
        let stamp = rules.jwks.as_deref().and_then(stamp);
        Ok(Some(Authenticator {
            rules,
            fixed,
            jwks: RwLock::new(Arc::new(jwks)),
            jwks_stamp: std::sync::Mutex::new(stamp),
        }))
    }

    /// Rereads the JWKS file if it changed since the last read. A file that no longer parses is
    /// logged and the keys read before stay. Returns whether the keys changed.
    pub fn reload_jwks(&self) -> bool {
        let Some(path) = &self.rules.jwks else {
            return false;
        };
        let now = stamp(path);
        let mut last = self.jwks_stamp.lock().unwrap_or_else(|e| e.into_inner());
        if now == *last {
            return false;
        }
        *last = now;
        match read_jwks(path) {
            Ok(keys) => {
                let kids: Vec<String> = keys.iter().filter_map(|k| k.kid.clone()).collect();
                *self.jwks.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
                tracing::info!(path = %path.display(), ?kids, "JWKS reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "JWKS not reloaded; the keys read before stay in use");
                false
            }
        }
    }

    /// Whether a JWKS file is configured (and should be watched).
    pub fn has_jwks(&self) -> bool {
        self.rules.jwks.is_some()
    }

    /// Verifies signature, algorithm and the time, audience and issuer claims, then reads the
    /// grants.
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
        let jwks = self.jwks.read().unwrap_or_else(|e| e.into_inner()).clone();
        let key = match &header.kid {
            // A token naming a key is checked against the JWKS key of that name; issuers that put
            // a `kid` in every token also work with a fixed secret or public key of its `alg`.
            Some(kid) => jwks
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid.as_str()))
                .or_else(|| self.fixed.iter().find(|k| k.algorithm == header.alg))
                .ok_or_else(|| AuthError::UnknownKey(kid.clone()))?,
            None => self
                .fixed
                .iter()
                .chain(jwks.iter().filter(|k| k.kid.is_none()))
                .find(|k| k.algorithm == header.alg)
                .ok_or_else(|| AuthError::Algorithm(format!("{:?}", header.alg)))?,
        };
        if key.algorithm != header.alg {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        }
        // The library checks the signature and algorithm; the time, audience and issuer claims
        // are checked below, where any JSON number form of `exp`/`nbf` is understood.
        let mut validation = Validation::new(key.algorithm);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(
            token,
            &key.decoding,
            &validation,
        )
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => AuthError::BadSignature,
                K::InvalidAlgorithm => AuthError::Algorithm(format!("{:?}", header.alg)),
                _ => AuthError::Malformed(e.to_string()),
            }
        })?;
        let claims = data.claims;
        let expires_at = self.check_claims(&claims, SystemTime::now())?;
        self.identity(claims, expires_at)
    }

    /// `exp`, `nbf`, `aud` and `iss`; returns when the token expires.
    fn check_claims(
        &self,
        claims: &serde_json::Map<String, Value>,
        now: SystemTime,
    ) -> Result<SystemTime, AuthError> {
        let exp = time_claim(claims, "exp")?.ok_or(AuthError::MissingExp)?;
        let leeway = self.rules.leeway;
        // Leeway is bounded by the configuration (a day), and times by `time_claim`, so these
        // sums cannot overflow; `checked_add` keeps that true whatever changes.
        let expires = exp.checked_add(leeway).ok_or(AuthError::BadTime("exp"))?;
        if now > expires {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = time_claim(claims, "nbf")? {
            if now.checked_add(leeway).is_some_and(|n| n < nbf) {
                return Err(AuthError::NotYetValid);
            }
        }
        if let Some(audience) = &self.rules.audience {
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => a == audience,
                Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
                _ => false,
            };
            if !ok {
                return Err(AuthError::Audience);
            }
        }
        if let Some(issuer) = &self.rules.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
                return Err(AuthError::Issuer);
            }
        }
        Ok(expires)
    }

    fn identity(
        &self,
        claims: serde_json::Map<String, Value>,
        expires_at: SystemTime,
    ) -> Result<Identity, AuthError> {
        let claim = &self.rules.tenant_claim;
        let tenant = claims
            .get(claim)
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::MissingTenant(claim.clone()))?;
        let tenant = TenantId::parse(tenant).map_err(AuthError::InvalidTenant)?;
        let (topics, tenant_wide) = match claims.get("topics") {
            None | Some(Value::Null) => (Arc::from([]), true),
            Some(Value::Array(items)) => {
                let patterns = items
                    .iter()
                    .map(|v| {
                        let s = v.as_str().ok_or("topics must be strings")?;
                        TopicPattern::parse(s).map_err(|_| "invalid topic pattern")
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| AuthError::InvalidTopics(e.into()))?;
                (Arc::from(patterns), false)
            }
            Some(_) => return Err(AuthError::InvalidTopics("must be a list".into())),
        };
        let channels = match claims.get("channels") {
            None | Some(Value::Null) => Arc::from([]),
            Some(Value::Array(items)) => items
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
        let can_publish = match claims.get("mode") {
            None | Some(Value::Null) => false,
            Some(Value::String(m)) if m == "r" => false,
            Some(Value::String(m)) if m == "rw" => true,
            Some(other) => return Err(AuthError::InvalidMode(other.to_string())),
        };
        Ok(Identity {
            tenant,
            topics,
            tenant_wide,
            channels,
            can_publish,
            expires_at: Some(expires_at),
            claims: Value::Object(claims).to_string(),
        })
    }
}

/// Keeps the JWKS file's keys current: checks it every second until `shutdown`.
pub fn watch_jwks(auth: Arc<Authenticator>, shutdown: tokio_util::sync::CancellationToken) {
    if !auth.has_jwks() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let auth = auth.clone();
            let _ = tokio::task::spawn_blocking(move || auth.reload_jwks()).await;
        }
    });
}

/// A time claim as seconds since 1970, in any JSON number form (`1796003132`, `1796003132.0`,
/// `1.796e9`); `None` when absent.
fn time_claim(
    claims: &serde_json::Map<String, Value>,
    name: &'static str,
) -> Result<Option<SystemTime>, AuthError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let seconds = value
        .as_f64()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e11)
        .ok_or(AuthError::BadTime(name))?;
    Ok(Some(UNIX_EPOCH + Duration::from_secs_f64(seconds)))
}

fn stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// The `alg` of a token's header, read without trusting anything else in it.
fn header_alg(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("alg")?.as_str().map(str::to_owned)
}

#[cfg(test)]
#[path = "token_tests.rs"]
pub(super) mod tests;
