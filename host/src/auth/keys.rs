//! Verification keys from files: a PEM public key (RSA, EC P-256 or Ed25519) and a JWKS file whose
//! keys tokens pick by `kid`. It does not verify tokens (`token`) or watch the files for changes.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::token::{KeyError, MIN_SECRET_LEN};

/// One verification key.
pub(super) struct Key {
    pub(super) kid: Option<String>,
    pub(super) algorithm: Algorithm,
    pub(super) decoding: DecodingKey,
}

pub(super) fn pem_key(path: &Path) -> Result<Key, KeyError> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| KeyError::Read {
        path: shown.clone(),
        source,
    })?;
    let (algorithm, decoding) = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
        (Algorithm::RS256, k)
    } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
        (Algorithm::ES256, k)
    } else if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
        (Algorithm::EdDSA, k)
    } else {
        return Err(KeyError::NotAKey(shown));
    };
    Ok(Key {
        kid: None,
        algorithm,
        decoding,
    })
}

/// The keys of a JWKS file. Each key needs a `kid` (that is how tokens pick it) and an algorithm
/// this server accepts; symmetric (`oct`) keys must be at least [`MIN_SECRET_LEN`] bytes.
pub(super) fn read_jwks(path: &Path) -> Result<Vec<Key>, KeyError> {
    let shown = path.display().to_string();
    let bad = |message: String| KeyError::Jwks {
        path: shown.clone(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: shown.clone(),
        source,
    })?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut keys = Vec::with_capacity(set.keys.len());
    let mut kids = HashMap::new();
    for jwk in &set.keys {
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| bad("a key has no `kid`".into()))?;
        if kids.insert(kid.clone(), ()).is_some() {
            return Err(bad(format!("kid {kid:?} appears twice")));
        }
        let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                if ec.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            (AlgorithmParameters::OctetKeyPair(_), None | Some(KeyAlgorithm::EdDSA)) => {
                Algorithm::EdDSA
            }
            (AlgorithmParameters::OctetKey(oct), None | Some(KeyAlgorithm::HS256)) => {
                let len = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(oct.value.trim_end_matches('='))
                    .map_err(|e| bad(format!("kid {kid:?}: {e}")))?
                    .len();
                if len < MIN_SECRET_LEN {
                    return Err(bad(format!(
                        "kid {kid:?}: secret of {len} bytes; at least {MIN_SECRET_LEN} are required"
                    )));
                }
                Algorithm::HS256
            }
            _ => {
                return Err(bad(format!(
                    "kid {kid:?}: key type or algorithm not accepted"
                )))
            }
        };
        let decoding = DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("kid {kid:?}: {e}")))?;
        keys.push(Key {
            kid: Some(kid),
            algorithm,
            decoding,
        });
    }
    Ok(keys)
}
