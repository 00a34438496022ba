//! Development tokens: `pgws token` signs the claims a client needs with the configured HS256
//! secret, under the same claim rules the server verifies (tenant claim name, `aud`, `iss`). It does
//! not verify tokens (`token`).

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};

use super::token::MIN_SECRET_LEN;
use crate::config::{TokenRequest, TokenSettings};
use crate::envelope::{TenantId, TopicPattern};

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error(
        "pgws token signs with --jwt-secret (HS256); with a public key or JWKS, tokens come from \
         the issuer that holds the private key"
    )]
    NoSecret,
    #[error("the JWT secret is {0} bytes; at least {MIN_SECRET_LEN} are required")]
    WeakSecret(usize),
    #[error("--tenant {0:?}: {1}")]
    Tenant(String, String),
    #[error("--topics {0:?}: {1}")]
    Topic(String, String),
    #[error("--channels {0:?}: {1}")]
    Channel(String, String),
    #[error("signing: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// A token for `request`, signed with the configured secret; every name is checked as the server
/// would check it, so a token that is printed is a token that is accepted.
pub fn mint(settings: &TokenSettings, request: &TokenRequest) -> Result<String, MintError> {
    let secret = settings.jwt_secret.as_deref().ok_or(MintError::NoSecret)?;
    if secret.len() < MIN_SECRET_LEN {
        return Err(MintError::WeakSecret(secret.len()));
    }
    TenantId::parse(&request.tenant)
        .map_err(|e| MintError::Tenant(request.tenant.clone(), e.to_string()))?;
    for topic in &request.topics {
        TopicPattern::parse(topic).map_err(|e| MintError::Topic(topic.clone(), e.to_string()))?;
    }
    for channel in &request.channels {
        crate::channels::ChannelPattern::parse(channel)
            .map_err(|e| MintError::Channel(channel.clone(), e.to_string()))?;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut claims = Map::new();
    claims.insert(settings.jwt_tenant_claim.clone(), json!(request.tenant));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + request.ttl.as_secs()));
    if !request.topics.is_empty() {
        claims.insert("topics".into(), json!(request.topics));
    }
    if !request.channels.is_empty() {
        claims.insert("channels".into(), json!(request.channels));
    }
    if request.mode == "rw" {
        claims.insert("mode".into(), json!("rw"));
    }
    if let Some(sub) = &request.sub {
        claims.insert("sub".into(), json!(sub));
    }
    if let Some(aud) = &settings.jwt_audience {
        claims.insert("aud".into(), json!(aud));
    }
    if let Some(iss) = &settings.jwt_issuer {
        claims.insert("iss".into(), json!(iss));
    }
    Ok(encode(
        &Header::new(Algorithm::HS256),
        &Value::Object(claims),
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Authenticator, TokenRules};
    use crate::config::{Command, Config};
    use clap::Parser;

    const SECRET: &str = "a-development-secret-of-32-bytes!!";

    fn request(args: &[&str]) -> (Config, TokenRequest) {
        let mut argv = vec![
            "pgws",
            "--jwt-secret",
            SECRET,
            "--jwt-issuer",
            "me",
            "token",
        ];
        argv.extend_from_slice(args);
        let config = Config::try_parse_from(argv).expect("parses");
        let Some(Command::Token(request)) = config.command.clone() else {
            panic!("a token request")
        };
        (config, request)
    }

    /// What `pgws token` prints, the server accepts, with exactly the grants asked for.
    #[test]
    fn minted_tokens_verify_with_their_grants() {
        let (config, req) = request(&[
            "--tenant",
            "acme",
            "--topics",
            "orders,eu/*",
            "--mode",
            "rw",
            "--ttl",
            "2h",
        ]);
        let token = mint(&config.tokens, &req).expect("minted");
        let auth = Authenticator::new(TokenRules::from(&config.tokens))
            .expect("keys")
            .expect("an authenticator");
        let identity = auth.verify(&token).expect("accepted");
        assert_eq!(identity.tenant.as_str(), "acme");
        assert!(identity.can_publish);
        assert_eq!(identity.topics.len(), 2);
        assert!(identity.channels.is_empty());
        let left = identity
            .expires_at
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .expect("expires");
        // Two hours, plus the verifier's 5 s of leeway.
        assert!((7190..=7205).contains(&left.as_secs()), "{left:?}");
    }

    #[test]
    fn bad_requests_are_refused_before_signing() {
        let (config, req) = request(&["--tenant", "bad tenant!"]);
        assert!(matches!(
            mint(&config.tokens, &req),
            Err(MintError::Tenant(..))
        ));
        let (config, req) = request(&["--tenant", "acme", "--topics", "bad topic"]);
        assert!(matches!(
            mint(&config.tokens, &req),
            Err(MintError::Topic(..))
        ));
        let (mut config, req) = request(&["--tenant", "acme"]);
        config.tokens.jwt_secret = None;
        assert!(matches!(
            mint(&config.tokens, &req),
            Err(MintError::NoSecret)
        ));
        assert!(Config::try_parse_from(["pgws", "token", "--tenant", "a", "--ttl", "1w"]).is_err());
        assert!(Config::try_parse_from(["pgws", "token", "--tenant", "a", "--mode", "x"]).is_err());
    }
}
