//! The `[auth.jwt.NAME]`, `[auth.api_keys.NAME]` and `[auth.introspection.NAME]` sections: who
//! may call protected routes.
//! Key material is checked here, at load, so that a bad key or secret is a configuration error
//! with a position, never a request-time surprise.

use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Serialize;

use super::ids::ProviderId;
use super::keys_file::{self, ApiKeyRecord};
use super::reader::{Node, Reader};
use super::secret::Secret;
use super::ser;

/// Smallest accepted HMAC secret, in bytes.
pub const MIN_HMAC_SECRET: usize = 32;

/// Validated authentication providers.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct AuthSettings {
    /// Every valid provider: JWT providers in file order, then API key providers, then
    /// introspection providers. [`ProviderId`] indexes this list.
    pub providers: Vec<ProviderSpec>,
}

impl AuthSettings {
    /// The provider `id`.
    pub fn provider(&self, id: ProviderId) -> &ProviderSpec {
        &self.providers[id.index()]
    }

    /// The JWT providers.
    pub fn jwt(&self) -> impl Iterator<Item = &JwtSpec> {
        self.providers.iter().filter_map(|p| match &p.kind {
            ProviderKind::Jwt(j) => Some(j),
            _ => None,
        })
    }
}

/// One authentication provider.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderSpec {
    /// How routes name it: `jwt:NAME` or `api_key:NAME` (also its metric label).
    pub label: String,
    /// What it verifies.
    #[serde(flatten)]
    pub kind: ProviderKind,
}

/// The kinds of provider.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProviderKind {
    /// Bearer JWTs.
    Jwt(JwtSpec),
    /// API keys in a header.
    ApiKey(ApiKeySpec),
    /// Opaque bearer tokens checked with the issuer's introspection endpoint (RFC 7662).
    Introspection(IntrospectionSpec),
}

/// What to answer when the introspection endpoint cannot be asked (down, slow, refusing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnIntrospectionError {
    /// 503 with `Retry-After` (the default): the caller may well be entitled.
    Unavailable,
    /// 401 `invalid_token`.
    Deny,
}

/// A validated token introspection provider (RFC 7662).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntrospectionSpec {
    /// Name used by routes as `introspection:NAME`.
    pub name: String,
    /// The introspection endpoint.
    pub url: String,
    /// HTTP Basic user (RFC 7662 §2.1 client authentication).
    pub client_id: String,
    /// The variable holding the client secret.
    pub client_secret_env: String,
    /// The client secret.
    pub client_secret: Secret,
    /// Budget of one introspection call.
    #[serde(serialize_with = "ser::duration")]
    pub timeout: Duration,
    /// How long an active token's answer is reused (never beyond its `exp`).
    #[serde(serialize_with = "ser::duration")]
    pub cache_ttl: Duration,
    /// How long an inactive token's answer is reused.
    #[serde(serialize_with = "ser::duration")]
    pub inactive_cache_ttl: Duration,
    /// Answers held at most (least recently used evicted first).
    pub max_cached: usize,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Accepted `aud` values; an answer must carry one of them when set.
    pub audiences: Vec<String>,
    /// Field naming the consumer.
    pub consumer_claim: String,
    /// Field naming the tier, if any.
    pub tier_claim: Option<String>,
    /// Field holding an array (or space-separated list) of roles, if any.
    pub roles_claim: Option<String>,
    /// The answer when the endpoint cannot be asked.
    pub on_error: OnIntrospectionError,
}

/// Where a JWT provider's verification keys come from. Rendered without key material.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JwtKeys {
    /// A JWKS document fetched over HTTP(S), refreshed in the background.
    JwksUrl {
        /// The document's URL.
        url: String,
        /// Time between background refreshes.
        #[serde(serialize_with = "ser::duration")]
        refresh: Duration,
        /// Minimum time between fetches triggered by unknown `kid`s.
        #[serde(serialize_with = "ser::duration")]
        min_refetch_interval: Duration,
    },
    /// A JWKS document read from a file at load.
    JwksFile {
        /// The file.
        path: PathBuf,
        /// Its keys.
        #[serde(skip)]
        set: JwkSet,
    },
    /// One PEM public key.
    PublicKey {
        /// The file.
        path: PathBuf,
        /// Its PEM text.
        #[serde(skip)]
        pem: String,
    },
    /// An HMAC secret from the environment.
    Secret {
        /// The variable it came from.
        env: String,
        /// The secret.
        secret: Secret,
    },
}

/// A validated JWT provider.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JwtSpec {
    /// Name used by routes as `jwt:NAME`.
    pub name: String,
    /// Accepted algorithms (never HMAC and public-key mixed).
    pub algorithms: Vec<Algorithm>,
    /// Verification keys.
    pub keys: JwtKeys,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Accepted `aud` values; a token must carry one of them when set.
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(serialize_with = "ser::duration")]
    pub leeway: Duration,
    /// Claims every token must carry (`exp` always included).
    pub required_claims: Vec<String>,
    /// Claim naming the consumer.
    pub consumer_claim: String,
    /// Claim naming the tier, if any.
    pub tier_claim: Option<String>,
    /// Claim holding an array of roles, if any.
    pub roles_claim: Option<String>,
}

/// A validated API key provider.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiKeySpec {
    /// Name used by routes as `api_key:NAME`.
    pub name: String,
    /// The keys file.
    pub keys_file: PathBuf,
    /// Header carrying the key.
    #[serde(serialize_with = "ser::header_name")]
    pub header: HeaderName,
    /// The records read from the file (rendered as their number).
    #[serde(serialize_with = "ser::count")]
    pub keys: Vec<ApiKeyRecord>,
}

/// Reads `[auth]`. Also returns every declared provider as `jwt:NAME` / `api_key:NAME` with
/// its id when valid, so that routes naming an invalid provider are not reported twice.
pub fn read(
    r: &mut Reader<'_>,
    node: Option<&Node<'_, '_>>,
) -> (AuthSettings, Vec<(String, Option<ProviderId>)>) {
    let mut out = AuthSettings::default();
    let mut declared = Vec::new();
    let Some(node) = node else {
        return (out, declared);
    };
    let Some(t) = r.table(node) else {
        return (out, declared);
    };
    let mut add = |out: &mut AuthSettings, label: String, kind: Option<ProviderKind>| {
        let id = kind.map(|kind| {
            out.providers.push(ProviderSpec {
                label: label.clone(),
                kind,
            });
            ProviderId::new(out.providers.len() - 1)
        });
        declared.push((label, id));
    };
    if let Some(n) = t.get("jwt") {
        for (name, value) in r.named(&n, "provider") {
            let spec = read_jwt(r, name, &value).map(ProviderKind::Jwt);
            add(&mut out, format!("jwt:{name}"), spec);
        }
    }
    if let Some(n) = t.get("api_keys") {
        for (name, value) in r.named(&n, "provider") {
            let spec = read_api_keys(r, name, &value).map(ProviderKind::ApiKey);
            add(&mut out, format!("api_key:{name}"), spec);
        }
    }
    if let Some(n) = t.get("introspection") {
        for (name, value) in r.named(&n, "provider") {
            let spec = read_introspection(r, name, &value).map(ProviderKind::Introspection);
            add(&mut out, format!("introspection:{name}"), spec);
        }
    }
    (out, declared)
}

fn read_introspection(
    r: &mut Reader<'_>,
    name: &str,
    node: &Node<'_, '_>,
) -> Option<IntrospectionSpec> {
    let t = r.table(node)?;
    let before = r.error_count();
    let url = t.require(r, "url").and_then(|n| {
        let text = r.string(&n)?;
        let ok = (text.starts_with("https://") || text.starts_with("http://"))
            && reqwest::Url::parse(text).is_ok_and(|u| u.host().is_some());
        if !ok {
            r.error(&n, format!("invalid URL \"{text}\" (http:// or https://)"));
            return None;
        }
        Some(text.to_string())
    });
    let client_id = t.require(r, "client_id").and_then(|n| {
        let v = r.string(&n)?;
        if v.is_empty() || v.contains(':') {
            r.error(
                &n,
                "client_id must be non-empty and hold no ':' (HTTP Basic)",
            );
            return None;
        }
        Some(v.to_string())
    });
    let secret = t.require(r, "client_secret_env").and_then(|n| {
        let env = r.string(&n)?.to_string();
        match std::env::var(&env) {
            Ok(v) if !v.is_empty() => Some((env, Secret::new(v))),
            _ => {
                r.error(
                    &n,
                    format!("${env} must hold the client secret (it is unset or empty)"),
                );
                None
            }
        }
    });
    let duration = |r: &mut Reader<'_>, key: &'static str, default: Duration| match t.get(key) {
        None => Some(default),
        Some(n) => r.duration(&n).and_then(|d| {
            if d.is_zero() {
                r.error(&n, format!("{key} must be more than 0"));
                None
            } else {
                Some(d)
            }
        }),
    };
    let timeout = duration(r, "timeout", Duration::from_millis(500));
    let cache_ttl = duration(r, "cache_ttl", Duration::from_secs(60));
    let inactive_cache_ttl = duration(r, "inactive_cache_ttl", Duration::from_secs(5));
    let max_cached = match t.get("max_cached") {
        None => Some(100_000),
        Some(n) => r.integer(&n, 1, 10_000_000).map(|v| v as usize),
    };
    let issuer = t
        .get("issuer")
        .and_then(|n| r.string(&n).map(str::to_string));
    let audiences = match t.get("audiences") {
        None => Vec::new(),
        Some(n) => r
            .strings(&n)
            .map(|v| v.into_iter().map(|(s, _, _)| s.to_string()).collect())
            .unwrap_or_default(),
    };
    let claim = |r: &mut Reader<'_>, key: &'static str| {
        t.get(key).and_then(|n| match r.string(&n) {
            Some("") => {
                r.error(&n, format!("{key} must not be empty"));
                None
            }
            other => other.map(str::to_string),
        })
    };
    let consumer_claim = claim(r, "consumer_claim").unwrap_or_else(|| "sub".to_string());
    let tier_claim = claim(r, "tier_claim");
    let roles_claim = claim(r, "roles_claim");
    let on_error = match t.get("on_error") {
        None => Some(OnIntrospectionError::Unavailable),
        Some(n) => {
            match r.string(&n) {
                Some("unavailable") => Some(OnIntrospectionError::Unavailable),
                Some("deny") => Some(OnIntrospectionError::Deny),
                Some(other) => {
                    r.error(&n, format!("on_error must be \"unavailable\" (503) or \"deny\" (401), not \"{other}\""));
                    None
                }
                None => None,
            }
        }
    };
    if r.error_count() > before {
        return None;
    }
    let (client_secret_env, client_secret) = secret?;
    Some(IntrospectionSpec {
        name: name.to_string(),
        url: url?,
        client_id: client_id?,
        client_secret_env,
        client_secret,
        timeout: timeout?,
        cache_ttl: cache_ttl?,
        inactive_cache_ttl: inactive_cache_ttl?,
        max_cached: max_cached?,
        issuer,
        audiences,
        consumer_claim,
        tier_claim,
        roles_claim,
        on_error: on_error?,
    })
}

fn read_jwt(r: &mut Reader<'_>, name: &str, node: &Node<'_, '_>) -> Option<JwtSpec> {
    let t = r.table(node)?;
    let before = r.error_count();

    let algorithms: Vec<Algorithm> = t
        .require(r, "algorithms")
        .and_then(|n| {
            let items = r.strings(&n)?;
            if items.is_empty() {
                r.error(&n, "list at least one algorithm");
                return None;
            }
            let mut algs = Vec::new();
            for (text, span, path) in items {
                match text.parse::<Algorithm>() {
                    Ok(a) => algs.push(a),
                    Err(_) => r.error_at(
                        span,
                        &path,
                        format!("unknown algorithm \"{text}\" (HS256 HS384 HS512 RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA)"),
                    ),
                }
            }
            let hmac = algs.iter().filter(|a| is_hmac(**a)).count();
            if hmac > 0 && hmac < algs.len() {
                r.error(&n, "HMAC and public-key algorithms cannot be mixed in one provider");
                return None;
            }
            Some(algs)
        })
        .unwrap_or_default();

    let sources: Vec<(&str, Node<'_, '_>)> =
        ["jwks_url", "jwks_file", "public_key_file", "secret_env"]
            .into_iter()
            .filter_map(|k| t.get(k).map(|n| (k, n)))
            .collect();
    let mut timing = |key: &'static str, default: Duration| match t.get(key) {
        None => Some(default),
        Some(n) if t.get("jwks_url").is_none() => {
            r.error(&n, format!("{key} applies only with jwks_url"));
            None
        }
        Some(n) => r.duration(&n),
    };
    let timing = (
        timing("jwks_refresh", Duration::from_secs(600)),
        timing("min_refetch_interval", Duration::from_secs(30)),
    );
    let keys = match sources.as_slice() {
        [] => {
            r.error_at(
                t.span(),
                t.path(),
                "set one key source: jwks_url, jwks_file, public_key_file or secret_env",
            );
            None
        }
        [(kind, n)] => read_key_source(r, kind, n, &algorithms, timing),
        [_, (_, second), ..] => {
            r.error(
                second,
                "set only one of jwks_url, jwks_file, public_key_file, secret_env",
            );
            None
        }
    };

    let opt_string = |r: &mut Reader<'_>, key: &'static str| {
        t.get(key).and_then(|n| r.string(&n).map(str::to_string))
    };
    let issuer = opt_string(r, "issuer");
    let audiences = t
        .get("audiences")
        .and_then(|n| r.strings(&n))
        .map(|v| v.into_iter().map(|(s, _, _)| s.to_string()).collect())
        .unwrap_or_default();
    let leeway = match t.get("leeway") {
        None => Duration::from_secs(30),
        Some(n) => match r.string(&n) {
            Some("0s") | Some("0") => Duration::ZERO,
            _ => r.duration(&n).unwrap_or_default(),
        },
    };
    let mut required_claims: Vec<String> = t
        .get("required_claims")
        .and_then(|n| r.strings(&n))
        .map(|v| v.into_iter().map(|(s, _, _)| s.to_string()).collect())
        .unwrap_or_default();
    if !required_claims.iter().any(|c| c == "exp") {
        required_claims.insert(0, "exp".to_string());
    }
    let consumer_claim = opt_string(r, "consumer_claim").unwrap_or_else(|| "sub".to_string());
    let tier_claim = opt_string(r, "tier_claim");
    let roles_claim = opt_string(r, "roles_claim");

    if r.error_count() > before {
        return None;
    }
    Some(JwtSpec {
        name: name.to_string(),
        algorithms,
        keys: keys?,
        issuer,
        audiences,
        leeway,
        required_claims,
        consumer_claim,
        tier_claim,
        roles_claim,
    })
}

fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Reads the key source `kind` at `n`; `timing` is `(jwks_refresh, min_refetch_interval)`.
fn read_key_source(
    r: &mut Reader<'_>,
    kind: &str,
    n: &Node<'_, '_>,
    algorithms: &[Algorithm],
    timing: (Option<Duration>, Option<Duration>),
) -> Option<JwtKeys> {
    let hmac = algorithms.first().is_some_and(|a| is_hmac(*a));
    let text = r.string(n)?.to_string();
    if kind == "secret_env" {
        if !algorithms.is_empty() && !hmac {
            r.error(n, "secret_env needs HMAC algorithms (HS256, HS384, HS512)");
            return None;
        }
        let secret = std::env::var(&text).unwrap_or_default();
        if secret.len() < MIN_HMAC_SECRET {
            r.error(
                n,
                format!("${text} must hold an HMAC secret of at least {MIN_HMAC_SECRET} bytes (it is unset or shorter)"),
            );
            return None;
        }
        return Some(JwtKeys::Secret {
            env: text,
            secret: Secret::new(secret),
        });
    }
    if hmac {
        r.error(n, "HMAC algorithms take their key from secret_env");
        return None;
    }
    match kind {
        "jwks_url" => {
            let url_ok = (text.starts_with("https://") || text.starts_with("http://"))
                && reqwest::Url::parse(&text).is_ok();
            if !url_ok {
                r.error(n, format!("invalid URL \"{text}\" (http:// or https://)"));
                return None;
            }
            Some(JwtKeys::JwksUrl {
                url: text,
                refresh: timing.0?,
                min_refetch_interval: timing.1?,
            })
        }
        "jwks_file" => {
            let path = r.resolve(&text);
            let set = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|s| serde_json::from_str::<JwkSet>(&s).map_err(|e| e.to_string()));
            match set {
                Ok(set) => {
                    for jwk in &set.keys {
                        if let Err(e) = DecodingKey::from_jwk(jwk) {
                            r.error(
                                n,
                                format!("{text}: unusable key {:?}: {e}", jwk.common.key_id),
                            );
                            return None;
                        }
                    }
                    Some(JwtKeys::JwksFile { path, set })
                }
                Err(e) => {
                    r.error(n, format!("cannot read JWKS file {text}: {e}"));
                    None
                }
            }
        }
        _ => {
            let path = r.resolve(&text);
            let pem = match std::fs::read_to_string(&path) {
                Ok(p) => p,
                Err(e) => {
                    r.error(n, format!("cannot read public key file {text}: {e}"));
                    return None;
                }
            };
            let families: Vec<_> = algorithms.iter().map(|a| a.family()).collect();
            if families.windows(2).any(|w| w[0] != w[1]) {
                r.error(
                    n,
                    "one public key serves one key family: list algorithms of a single family",
                );
                return None;
            }
            if let Some(a) = algorithms.first() {
                if let Err(e) = decoding_key_from_pem(*a, pem.as_bytes()) {
                    r.error(
                        n,
                        format!("{text} is not a valid {:?} public key: {e}", a.family()),
                    );
                    return None;
                }
            }
            Some(JwtKeys::PublicKey { path, pem })
        }
    }
}

/// Builds a decoding key from a PEM public key for `alg`'s family.
pub fn decoding_key_from_pem(
    alg: Algorithm,
    pem: &[u8],
) -> jsonwebtoken::errors::Result<DecodingKey> {
    use jsonwebtoken::AlgorithmFamily::*;
    match alg.family() {
        Rsa => DecodingKey::from_rsa_pem(pem),
        Ec => DecodingKey::from_ec_pem(pem),
        Ed => DecodingKey::from_ed_pem(pem),
        Hmac => Ok(DecodingKey::from_secret(pem)),
    }
}

fn read_api_keys(r: &mut Reader<'_>, name: &str, node: &Node<'_, '_>) -> Option<ApiKeySpec> {
    let t = r.table(node)?;
    let before = r.error_count();
    let header = match t.get("header") {
        None => Some(HeaderName::from_static("x-api-key")),
        Some(n) => r.string(&n).and_then(|h| {
            let parsed = HeaderName::from_bytes(h.as_bytes()).ok();
            if parsed.is_none() {
                r.error(&n, format!("invalid header name \"{h}\""));
            }
            parsed
        }),
    };
    let file = t.require(r, "keys_file").and_then(|n| {
        let text = r.string(&n)?;
        let path = r.resolve(text);
        match keys_file::load(&path) {
            Ok(keys) => Some((path, keys)),
            Err(keys_file::LoadError::Io(e)) => {
                r.error(&n, format!("cannot read keys file {}: {e}", path.display()));
                None
            }
            Err(keys_file::LoadError::Invalid(errors)) => {
                r.absorb(errors);
                None
            }
        }
    });
    if r.error_count() > before {
        return None;
    }
    let (keys_file, keys) = file?;
    Some(ApiKeySpec {
        name: name.to_string(),
        keys_file,
        header: header?,
        keys,
    })
}
