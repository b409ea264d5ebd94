//! JWT verification with jsonwebtoken. Keys and `Validation`s are built once per snapshot;
//! a token's `alg` must be in the provider's allow-list and fit the key; `jku`, `x5u` and
//! embedded `jwk` headers are never used to find a key (only `kid`, against our own keys).
//! jsonwebtoken accepts tokens *missing* `iss`/`aud` unless they are required, never checks
//! `iat`, and leaves `nbf` off by default: all three are handled here.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::identity::{Denial, Identity, Reason};
use super::jwks::{key_map, JwkKey, JwksSet, KeyMap};
use super::MAX_CREDENTIAL_LEN;
use crate::config::auth::decoding_key_from_pem;
use crate::config::{JwtKeys, JwtSpec, ProviderId};

/// Claims that jsonwebtoken can require itself.
const SPEC_CLAIMS: &[&str] = &["exp", "nbf", "sub", "iss", "aud"];

enum Keys {
    /// One key for every token (PEM public key or HMAC secret); `kid` is ignored.
    Single(Arc<JwkKey>),
    /// Keys by `kid`, fixed at load.
    Fixed(KeyMap),
    /// Keys by `kid`, fetched.
    Jwks(Arc<JwksSet>),
}

/// One JWT provider, ready to verify.
pub struct JwtVerifier {
    cache: super::token_cache::TokenCache,
    id: ProviderId,
    label: String,
    validations: Vec<(Algorithm, Validation)>,
    keys: Keys,
    leeway: u64,
    custom_required: Vec<String>,
    consumer_claim: String,
    tier_claim: Option<String>,
    roles_claim: Option<String>,
}

impl JwtVerifier {
    /// Builds the verifier of provider `id`; `jwks` supplies the shared key set for `jwks_url`
    /// providers.
    pub fn new(id: ProviderId, spec: &JwtSpec, jwks: Option<Arc<JwksSet>>) -> Self {
        let leeway = spec.leeway.as_secs();
        let mut required: HashSet<String> = spec
            .required_claims
            .iter()
            .filter(|c| SPEC_CLAIMS.contains(&c.as_str()))
            .cloned()
            .collect();
        required.insert("exp".to_string());
        if spec.issuer.is_some() {
            required.insert("iss".to_string());
        }
        if !spec.audiences.is_empty() {
            required.insert("aud".to_string());
        }
        let validations = spec
            .algorithms
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.leeway = leeway;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.required_spec_claims = required.clone();
                if let Some(iss) = &spec.issuer {
                    v.set_issuer(&[iss]);
                }
                if spec.audiences.is_empty() {
                    v.validate_aud = false;
                } else {
                    v.set_audience(&spec.audiences);
                }
                (*alg, v)
            })
            .collect();
        let keys = match (&spec.keys, jwks) {
            (JwtKeys::Secret { secret, .. }, _) => Keys::Single(Arc::new(JwkKey {
                key: DecodingKey::from_secret(secret.expose().as_bytes()),
                alg: None,
            })),
            (JwtKeys::PublicKey { pem, .. }, _) => {
                let alg = spec.algorithms.first().copied().unwrap_or(Algorithm::RS256);
                // Validated at load; an empty map refuses every token should it fail now.
                match decoding_key_from_pem(alg, pem.as_bytes()) {
                    Ok(key) => Keys::Single(Arc::new(JwkKey { key, alg: None })),
                    Err(_) => Keys::Fixed(KeyMap::new()),
                }
            }
            (JwtKeys::JwksFile { set, .. }, _) => Keys::Fixed(key_map(set)),
            (JwtKeys::JwksUrl { .. }, Some(set)) => Keys::Jwks(set),
            (JwtKeys::JwksUrl { .. }, None) => Keys::Fixed(KeyMap::new()),
        };
        JwtVerifier {
            cache: Default::default(),
            id,
            label: format!("jwt:{}", spec.name),
            validations,
            keys,
            leeway,
            custom_required: spec
                .required_claims
                .iter()
                .filter(|c| !SPEC_CLAIMS.contains(&c.as_str()))
                .cloned()
                .collect(),
            consumer_claim: spec.consumer_claim.clone(),
            tier_claim: spec.tier_claim.clone(),
            roles_claim: spec.roles_claim.clone(),
        }
    }

    /// `jwt:NAME`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Verifies `token` and extracts the identity. A `kid` unknown to a JWKS provider triggers
    /// one refetch (see [`JwksSet::get_or_refetch`]) before the token is refused.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, Denial> {
        match self.verify_known(token) {
            Err(d) if d.reason == Reason::UnknownKey => {
                let Keys::Jwks(set) = &self.keys else {
                    return Err(d);
                };
                let kid = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid);
                match kid {
                    Some(kid) if set.get_or_refetch(&kid).await.is_some() => {
                        self.verify_known(token)
                    }
                    _ => Err(d),
                }
            }
            other => other,
        }
    }

    fn keys_generation(&self) -> u64 {
        match &self.keys {
            Keys::Jwks(set) => set.generation(),
            _ => 0,
        }
    }

    /// Verifies `token` with the keys already held (no network), using the cache of tokens
    /// verified before.
    pub fn verify_known(&self, token: &str) -> Result<Arc<Identity>, Denial> {
        if token.len() > MAX_CREDENTIAL_LEN {
            return Err(Denial::new(Reason::Malformed, "credential too large"));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let generation = self.keys_generation();
        if let Some(identity) = self.cache.get(token, now, generation) {
            return Ok(identity);
        }
        let (identity, exp) = self.verify_uncached(token)?;
        self.cache
            .put(token, &identity, now, exp + self.leeway, generation);
        Ok(identity)
    }

    /// Verifies `token` without the cache; returns the identity and the token's `exp`.
    pub fn verify_uncached(&self, token: &str) -> Result<(Arc<Identity>, u64), Denial> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| header_failure(token))?;
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Err(Denial::new(
                Reason::AlgorithmNotAllowed,
                format!("algorithm {:?} is not allowed", header.alg),
            ));
        };
        let key = self.known_key(header.kid.as_deref())?;
        if key.alg.is_some_and(|a| a != header.alg) {
            return Err(Denial::new(
                Reason::AlgorithmNotAllowed,
                "algorithm does not match the key",
            ));
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation)
            .map_err(map_error)?;
        // exp is required and validated, so it is a number here.
        let exp = data.claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        Ok((self.identity(data.claims)?, exp))
    }

    fn known_key(&self, kid: Option<&str>) -> Result<Arc<JwkKey>, Denial> {
        let unknown = || Denial::new(Reason::UnknownKey, "no key for this token's kid");
        let by_kid = |map: &KeyMap| match kid {
            Some(kid) => map.get(kid).cloned().ok_or_else(unknown),
            None if map.len() == 1 => map.values().next().cloned().ok_or_else(unknown),
            None => Err(Denial::new(Reason::UnknownKey, "token has no kid")),
        };
        match &self.keys {
            Keys::Single(k) => Ok(Arc::clone(k)),
            Keys::Fixed(map) => by_kid(map),
            Keys::Jwks(set) => match kid {
                Some(kid) => set.get(kid).ok_or_else(unknown),
                None => Err(Denial::new(Reason::UnknownKey, "token has no kid")),
            },
        }
    }

    fn identity(&self, claims: Map<String, Value>) -> Result<Arc<Identity>, Denial> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Some(iat) = claims.get("iat") {
            match iat.as_u64() {
                Some(iat) if iat > now + self.leeway => {
                    return Err(Denial::new(
                        Reason::NotYetValid,
                        "token issued in the future (iat)",
                    ))
                }
                Some(_) => {}
                None => return Err(Denial::new(Reason::Malformed, "iat is not a number")),
            }
        }
        if let Some(missing) = self
            .custom_required
            .iter()
            .find(|c| !claims.contains_key(*c))
        {
            return Err(Denial::new(
                Reason::Malformed,
                format!("missing required claim {missing}"),
            ));
        }
        let Some(consumer) = claims
            .get(&self.consumer_claim)
            .and_then(super::claims::text)
        else {
            return Err(Denial::new(
                Reason::Malformed,
                format!("missing or invalid consumer claim {}", self.consumer_claim),
            ));
        };
        let tier = self
            .tier_claim
            .as_ref()
            .and_then(|c| claims.get(c))
            .and_then(Value::as_str)
            .filter(|t| super::claims::header_safe(t))
            .map(str::to_string);
        let roles = self
            .roles_claim
            .as_ref()
            .and_then(|c| claims.get(c))
            .map(super::claims::strings)
            .unwrap_or_default();
        let scopes = claims
            .get("scope")
            .map(super::claims::strings)
            .unwrap_or_default();
        Ok(Identity::build(
            consumer,
            tier,
            self.id,
            self.label.clone(),
            roles,
            scopes,
            None,
        ))
    }
}

/// Why a header did not parse: an `alg` jsonwebtoken does not know (such as `none`) is an
/// algorithm refusal, anything else a malformed token.
fn header_failure(token: &str) -> Denial {
    let alg = token
        .split('.')
        .next()
        .and_then(|h| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h.trim_end_matches('='))
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|v| v.get("alg").and_then(Value::as_str).map(str::to_string));
    match alg {
        Some(a) => Denial::new(
            Reason::AlgorithmNotAllowed,
            format!("algorithm {a:?} is not allowed"),
        ),
        None => Denial::new(Reason::Malformed, "token is not a well-formed JWT"),
    }
}

fn map_error(e: jsonwebtoken::errors::Error) -> Denial {
    let (reason, description) = match e.kind() {
        ErrorKind::InvalidSignature => (
            Reason::BadSignature,
            "signature does not verify".to_string(),
        ),
        ErrorKind::ExpiredSignature => (Reason::Expired, "token expired".to_string()),
        ErrorKind::ImmatureSignature => {
            (Reason::NotYetValid, "token not valid yet (nbf)".to_string())
        }
        ErrorKind::InvalidIssuer => (Reason::WrongIssuer, "wrong issuer".to_string()),
        ErrorKind::InvalidAudience => (Reason::WrongAudience, "wrong audience".to_string()),
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => {
            (Reason::WrongIssuer, "missing issuer".to_string())
        }
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => {
            (Reason::WrongAudience, "missing audience".to_string())
        }
        ErrorKind::MissingRequiredClaim(c) => {
            (Reason::Malformed, format!("missing required claim {c}"))
        }
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName => (
            Reason::AlgorithmNotAllowed,
            "algorithm does not fit the key".to_string(),
        ),
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => (
            Reason::BadSignature,
            "signature does not verify with the key".to_string(),
        ),
        _ => (
            Reason::Malformed,
            "token is not a well-formed JWT".to_string(),
        ),
    };
    Denial::new(reason, description)
}
