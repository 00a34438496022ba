//! Token verification against every claim rule and key source.

use super::*;
use crate::channels::ChannelName;
use crate::envelope::Topic;
use jsonwebtoken::{encode, EncodingKey, Header};

pub(in crate::auth) const SECRET: &str = "0123456789abcdef0123456789abcdef";

pub(in crate::auth) fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

pub(in crate::auth) fn hs(claims: Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

fn rules() -> TokenRules {
    TokenRules {
        secret: Some(SECRET.into()),
        tenant_claim: "tenant".into(),
        ..TokenRules::default()
    }
}

fn auth_with(rules: TokenRules) -> Authenticator {
    Authenticator::new(rules)
        .expect("keys")
        .expect("configured")
}

pub(in crate::auth) fn auth() -> Authenticator {
    auth_with(rules())
}

#[test]
fn accepts_a_valid_token() {
    let t = hs(
        serde_json::json!({"tenant":"acme","exp":now()+60.0,"topics":["eu/*"],"mode":"rw"}),
        SECRET,
    );
    let id = auth().verify(&t).expect("valid");
    assert_eq!(id.tenant.as_str(), "acme");
    assert!(id.can_publish && !id.tenant_wide);
    assert_eq!(id.topic_list(), ["eu/*"]);
    assert!(
        id.channel_list().is_empty(),
        "no channels claim, no channels"
    );
}

#[test]
fn absent_claims_grant_least_privilege() {
    let t = hs(
        serde_json::json!({"tenant":"acme","exp":now()+60.0}),
        SECRET,
    );
    let id = auth().verify(&t).expect("valid");
    let topic = Topic::parse("orders").expect("topic");
    assert!(!id.allows(&topic), "no topics claim reads no topic");
    assert!(!id.can_publish, "no mode claim is read only");
    assert!(id.channel_list().is_empty());
    let t = hs(
        serde_json::json!({"tenant":"acme","exp":now()+60.0,"mode":"rw","topics":["chat"]}),
        SECRET,
    );
    let id = auth().verify(&t).expect("valid");
    assert!(id.may_publish_to(Some(&Topic::parse("chat").expect("t"))));
    assert!(!id.may_publish_to(Some(&topic)));
    assert!(
        !id.may_publish_to(None),
        "topic-limited: no tenant-wide publish"
    );
}

#[test]
fn time_claims_in_any_number_form() {
    let a = auth();
    let ok = |exp: Value| hs(serde_json::json!({"tenant":"a","exp":exp}), SECRET);
    let later = now() + 3.5;
    let id = a
        .verify(&ok(serde_json::json!(later)))
        .expect("fractional exp");
    let left = id
        .expires_at
        .expect("expires")
        .duration_since(SystemTime::now())
        .expect("future");
    assert!(left <= Duration::from_secs_f64(3.5), "{left:?}");
    for past in [
        serde_json::json!(now() - 1.5),
        serde_json::json!(1.5e9),
        serde_json::json!(1_500_000_000.0),
    ] {
        assert_eq!(a.verify(&ok(past)).expect_err("past").reason(), "expired");
    }
    for bad in [
        serde_json::json!("soon"),
        serde_json::json!(-1),
        serde_json::json!(1e300),
    ] {
        assert_eq!(
            a.verify(&ok(bad)).expect_err("bad").reason(),
            "bad_time_claim"
        );
    }
    let nbf = hs(
        serde_json::json!({"tenant":"a","exp":now()+600.0,"nbf":now()+300.0}),
        SECRET,
    );
    assert_eq!(a.verify(&nbf).expect_err("nbf").reason(), "not_yet_valid");
    let mut lenient = rules();
    lenient.leeway = Duration::from_secs(10);
    let skewed = hs(serde_json::json!({"tenant":"a","exp":now()-5.0}), SECRET);
    assert!(auth_with(lenient).verify(&skewed).is_ok(), "within leeway");
}

#[test]
fn audience_and_issuer_are_required_when_configured() {
    let mut r = rules();
    r.audience = Some("pgws".into());
    r.issuer = Some("https://id.example".into());
    let a = auth_with(r);
    let claims = |extra: Value| {
        let mut c = serde_json::json!({"tenant":"a","exp":now()+60.0});
        c.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        hs(c, SECRET)
    };
    let good = claims(serde_json::json!({"aud":["x","pgws"],"iss":"https://id.example"}));
    assert!(a.verify(&good).is_ok());
    let cases = [
        (
            serde_json::json!({"iss":"https://id.example"}),
            "bad_audience",
        ),
        (
            serde_json::json!({"aud":"other","iss":"https://id.example"}),
            "bad_audience",
        ),
        (serde_json::json!({"aud":"pgws"}), "bad_issuer"),
        (
            serde_json::json!({"aud":"pgws","iss":"https://evil.example"}),
            "bad_issuer",
        ),
    ];
    for (extra, reason) in cases {
        assert_eq!(a.verify(&claims(extra)).expect_err(reason).reason(), reason);
    }
}

#[test]
fn short_secrets_are_refused_at_start() {
    let mut r = rules();
    r.secret = Some("a".into());
    assert!(matches!(
        Authenticator::new(r),
        Err(KeyError::WeakSecret(1))
    ));
}

#[test]
fn channels_claim_grants_globs() {
    let t = hs(
        serde_json::json!({"tenant":"acme","exp":now()+60.0,"channels":["orders_*","news"]}),
        SECRET,
    );
    let id = auth().verify(&t).expect("valid");
    let ch = |s: &str| ChannelName::parse(s).expect(s);
    assert!(id.allows_channel(&ch("orders_eu")));
    assert!(id.allows_channel(&ch("news")));
    assert!(!id.allows_channel(&ch("newsroom")));
    let bad = hs(
        serde_json::json!({"tenant":"acme","exp":now()+60.0,"channels":["a b"]}),
        SECRET,
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
        (
            hs(
                serde_json::json!({"tenant":"acme","exp":now()-10.0}),
                SECRET,
            ),
            "expired",
        ),
        (
            hs(
                serde_json::json!({"tenant":"acme","exp":now()+60.0}),
                "wrong-secret-wrong-secret-wrong!!",
            ),
            "bad_signature",
        ),
        (
            hs(serde_json::json!({"exp":now()+60.0}), SECRET),
            "missing_tenant",
        ),
        (
            hs(serde_json::json!({"tenant":"acme"}), SECRET),
            "missing_exp",
        ),
        (
            hs(serde_json::json!({"tenant":"a b","exp":now()+60.0}), SECRET),
            "invalid_tenant",
        ),
        (
            hs(
                serde_json::json!({"tenant":"acme","exp":now()+60.0,"mode":"x"}),
                SECRET,
            ),
            "invalid_mode",
        ),
        ("not.a.token".to_owned(), "malformed_token"),
        (
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJ0ZW5hbnQiOiJhY21lIiwiZXhwIjo5OTk5OTk5OTk5fQ."
                .to_owned(),
            "alg_none",
        ),
    ];
    for (token, reason) in cases {
        let err = a.verify(&token).expect_err(reason);
        assert_eq!(err.reason(), reason, "{err}");
    }
}

/// Every combination of credentials and server settings, through the one rule both endpoints
/// use.
#[test]
fn jwks_keys_are_chosen_by_kid() {
    let dir = std::env::temp_dir().join(format!("pgws-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("keys.json");
    let oct = |kid: &str, secret: &str| {
        serde_json::json!({"kty":"oct","kid":kid,"alg":"HS256",
            "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)})
    };
    let old = "old-secret-old-secret-old-secret-1";
    let new = "new-secret-new-secret-new-secret-2";
    std::fs::write(
        &path,
        serde_json::json!({"keys":[oct("k1", old)]}).to_string(),
    )
    .expect("write");
    let a = auth_with(TokenRules {
        jwks: Some(path.clone()),
        tenant_claim: "tenant".into(),
        ..TokenRules::default()
    });
    let signed = |kid: &str, secret: &str| {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.into());
        encode(
            &h,
            &serde_json::json!({"tenant":"a","exp":now()+60.0}),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    };
    assert!(a.verify(&signed("k1", old)).is_ok());
    assert_eq!(
        a.verify(&signed("k2", new)).expect_err("unknown").reason(),
        "unknown_kid"
    );
    assert_eq!(
        a.verify(&signed("k1", new)).expect_err("wrong").reason(),
        "bad_signature"
    );
    // Rotation: a new file (different size) replaces the keys.
    std::fs::write(
        &path,
        serde_json::json!({"keys":[oct("k2", new)], "note": "rotated"}).to_string(),
    )
    .expect("write");
    assert!(a.reload_jwks());
    assert!(a.verify(&signed("k2", new)).is_ok());
    assert_eq!(
        a.verify(&signed("k1", old)).expect_err("gone").reason(),
        "unknown_kid"
    );
    // A broken file keeps the keys that work.
    std::fs::write(&path, "{not json").expect("write");
    assert!(!a.reload_jwks());
    assert!(a.verify(&signed("k2", new)).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}
