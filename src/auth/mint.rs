//! Test tokens for a configured JWT provider (`gatehouse token`): signed with the provider's
//! own HMAC secret (or, for RSA/EC/EdDSA providers, a private key the operator supplies), with
//! `iss` and `aud` taken from its configuration, so that the gateway accepts the token as is.
//! A tool for trying routes and writing tests, not an identity provider.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

use crate::config::{JwtKeys, JwtSpec};

/// What to put in the token.
pub struct Request<'a> {
    /// `sub` (and whatever the provider's consumer claim is).
    pub subject: &'a str,
    /// Extra claims, `name=value`; a value that parses as JSON is taken as such (numbers,
    /// booleans, arrays), anything else as a string.
    pub claims: &'a [String],
    /// Lifetime from now (`exp`).
    pub ttl: Duration,
    /// A PEM private key, required for RSA, EC and EdDSA providers.
    pub private_key: Option<&'a [u8]>,
}

/// Signs a token that `spec` accepts.
pub fn mint(spec: &JwtSpec, req: &Request<'_>) -> Result<String, String> {
    let alg = *spec
        .algorithms
        .first()
        .ok_or_else(|| format!("provider {} lists no algorithm", spec.name))?;
    let key = match (&spec.keys, req.private_key) {
        (JwtKeys::Secret { secret, .. }, _) => EncodingKey::from_secret(secret.expose().as_bytes()),
        (_, Some(pem)) => match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => EncodingKey::from_rsa_pem(pem),
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            _ => return Err(format!("cannot sign {alg:?} with a private key")),
        }
        .map_err(|e| format!("the private key does not fit {alg:?}: {e}"))?,
        (_, None) => {
            return Err(format!(
                "provider {} verifies {alg:?} signatures with public keys: pass the matching private key with --key FILE",
                spec.name
            ))
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::from(req.subject));
    claims.insert(spec.consumer_claim.clone(), Value::from(req.subject));
    claims.insert("iat".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(now + req.ttl.as_secs().max(1)));
    if let Some(iss) = &spec.issuer {
        claims.insert("iss".into(), Value::from(iss.as_str()));
    }
    if let Some(aud) = spec.audiences.first() {
        claims.insert("aud".into(), Value::from(aud.as_str()));
    }
    for pair in req.claims {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("--claim {pair}: expected NAME=VALUE"))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::from(value));
        claims.insert(name.to_string(), value);
    }
    jsonwebtoken::encode(&Header::new(alg), &Value::Object(claims), &key)
        .map_err(|e| format!("cannot sign: {e}"))
}
