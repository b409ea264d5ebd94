//! OAuth2 token introspection (RFC 7662): opaque bearer tokens checked with the issuer's
//! introspection endpoint, for identity providers that hand out tokens that are not JWTs
//! (Keycloak, Okta, Ory, Auth0 can).
//!
//! - The call: `POST url` with `token=…&token_type_hint=access_token`, the client
//!   authenticated by HTTP Basic (§2.1; id and secret form-urlencoded first, RFC 6749
//!   §2.3.1), within `timeout`.
//! - The answer: `active: false` → 401 `inactive_token`; an `exp` that has passed, an `nbf`
//!   in the future, a wrong `iss` or `aud` (when configured) → 401 with that reason; else
//!   the identity (consumer, tier and roles from the configured fields, scopes from `scope`).
//! - Answers are cached, bounded (`max_cached`, least recently used evicted), keyed by the
//!   SHA-256 of the token (the token itself is not kept): an active one for `cache_ttl` but
//!   never beyond its `exp`, an inactive one for `inactive_cache_ttl`.
//! - Concurrent requests with the same uncached token share one call (single flight).
//! - An endpoint that cannot be asked (connection refused, timeout, non-200, not RFC 7662
//!   JSON) → 503 with `Retry-After` (`on_error = "unavailable"`) or 401 `unverified`
//!   (`"deny"`); never cached, never a hang; counted in
//!   `gatehouse_introspection_requests_total{result="error"}` and logged once per incident.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use prometheus::IntCounter;
use serde_json::{Map, Value};
use sha2::Digest;
use tokio::sync::OnceCell;

use super::claims;
use super::identity::{Denial, Identity, Reason};
use super::MAX_CREDENTIAL_LEN;
use crate::bounded::{BoundedMap, Lru, PreHashed};
use crate::config::{IntrospectionSpec, OnIntrospectionError, ProviderId};

const SHARDS: usize = 16;
/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;

/// `gatehouse_introspection_requests_total{provider, result}` handles: calls to the endpoint by
/// what they said.
#[derive(Clone)]
pub struct IntrospectionCounters {
    /// `active: true`.
    pub active: IntCounter,
    /// `active: false`.
    pub inactive: IntCounter,
    /// No usable answer.
    pub error: IntCounter,
}

/// What the endpoint said about a token.
#[derive(Clone)]
enum Answer {
    /// Active: the identity, and the token's `exp` (Unix seconds) if it gave one.
    Active(Arc<Identity>, Option<u64>),
    /// Refused for this reason.
    Refused(Denial),
}

struct Cached {
    digest: [u8; 32],
    answer: Answer,
    until: Instant,
}

type Flight = Arc<OnceCell<Result<Answer, String>>>;

/// One introspection provider.
pub struct Introspector {
    id: ProviderId,
    label: String,
    spec: IntrospectionSpec,
    client: reqwest::Client,
    authorization: String,
    cache: BoundedMap<u64, Cached, Lru, PreHashed>,
    inflight: Vec<Mutex<HashMap<[u8; 32], Flight>>>,
    counters: IntrospectionCounters,
    failing: AtomicBool,
}

impl Introspector {
    /// The provider `id` for `spec`, counting calls in `counters`.
    pub fn new(id: ProviderId, spec: &IntrospectionSpec, counters: IntrospectionCounters) -> Self {
        let encode = |s: &str| form_urlencoded(s);
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            encode(&spec.client_id),
            encode(spec.client_secret.expose())
        ));
        Introspector {
            id,
            label: format!("introspection:{}", spec.name),
            spec: spec.clone(),
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(spec.timeout)
                .build()
                .unwrap_or_default(),
            authorization: format!("Basic {basic}"),
            cache: BoundedMap::with_hasher(spec.max_cached, SHARDS, Lru, PreHashed),
            inflight: (0..SHARDS).map(|_| Mutex::default()).collect(),
            counters,
            failing: AtomicBool::new(false),
        }
    }

    /// The settings it was built from (a reload keeps a provider whose settings are equal).
    pub fn spec(&self) -> &IntrospectionSpec {
        &self.spec
    }

    /// Verifies `token`: from the cache, or by one call shared with every concurrent request
    /// presenting the same token.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, Denial> {
        if token.is_empty() || token.len() > MAX_CREDENTIAL_LEN {
            return Err(Denial::new(
                Reason::Malformed,
                "credential empty or too large",
            ));
        }
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let key = u64::from_le_bytes(digest[..8].try_into().unwrap_or_default());
        let now = Instant::now();
        let cached = self
            .cache
            .get_mut(&key, |c| {
                (c.digest == digest && now < c.until).then(|| c.answer.clone())
            })
            .flatten();
        if let Some(answer) = cached {
            return self.conclude(answer);
        }
        let shard = &self.inflight[usize::from(digest[8]) % SHARDS];
        let flight: Flight = Arc::clone(
            shard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(digest)
                .or_default(),
        );
        let result = flight.get_or_init(|| self.call(token)).await.clone();
        {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(&digest).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                map.remove(&digest);
            }
        }
        match result {
            Ok(answer) => {
                let ttl = match &answer {
                    Answer::Active(_, exp) => {
                        let left = exp.map_or(self.spec.cache_ttl, |exp| {
                            Duration::from_secs(exp.saturating_sub(unix_now()))
                        });
                        self.spec.cache_ttl.min(left)
                    }
                    Answer::Refused(_) => self.spec.inactive_cache_ttl,
                };
                if !ttl.is_zero() {
                    self.cache.insert(
                        key,
                        Cached {
                            digest,
                            answer: answer.clone(),
                            until: now + ttl,
                        },
                    );
                }
                self.conclude(answer)
            }
            Err(description) => Err(Denial::new(
                match self.spec.on_error {
                    OnIntrospectionError::Unavailable => Reason::Unavailable,
                    OnIntrospectionError::Deny => Reason::Unverified,
                },
                description,
            )),
        }
    }

    /// An answer, checked against the clock again (a cached active token may have expired).
    fn conclude(&self, answer: Answer) -> Result<Arc<Identity>, Denial> {
        match answer {
            Answer::Active(_, Some(exp)) if exp + LEEWAY_SECS <= unix_now() => {
                Err(Denial::new(Reason::Expired, "token expired"))
            }
            Answer::Active(identity, _) => Ok(identity),
            Answer::Refused(d) => Err(d),
        }
    }

    /// Asks the endpoint about `token`.
    async fn call(&self, token: &str) -> Result<Answer, String> {
        let body = format!(
            "token={}&token_type_hint=access_token",
            form_urlencoded(token)
        );
        let outcome = async {
            let resp = self
                .client
                .post(&self.spec.url)
                .header(http::header::AUTHORIZATION, &self.authorization)
                .header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .header(http::header::ACCEPT, "application/json")
                .body(body)
                .send()
                .await
                .map_err(|e| {
                    if e.is_timeout() {
                        format!(
                            "introspection endpoint did not answer within {:?}",
                            self.spec.timeout
                        )
                    } else {
                        "introspection endpoint unreachable".to_string()
                    }
                })?;
            if resp.status() != http::StatusCode::OK {
                return Err(format!(
                    "introspection endpoint answered {}",
                    resp.status().as_u16()
                ));
            }
            let bytes = resp
                .bytes()
                .await
                .map_err(|_| "introspection answer cut short".to_string())?;
            let fields: Map<String, Value> = serde_json::from_slice(&bytes)
                .map_err(|_| "introspection answer is not a JSON object".to_string())?;
            self.answer(&fields)
        };
        let result = tokio::time::timeout(self.spec.timeout, outcome)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "introspection endpoint did not answer within {:?}",
                    self.spec.timeout
                ))
            });
        match &result {
            Ok(Answer::Active(..)) => self.counters.active.inc(),
            Ok(Answer::Refused(_)) => self.counters.inactive.inc(),
            Err(e) => {
                self.counters.error.inc();
                if !self.failing.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "{}: {e} ({}); until it answers, its tokens get {}",
                        self.label,
                        self.spec.url,
                        match self.spec.on_error {
                            OnIntrospectionError::Unavailable => "503",
                            OnIntrospectionError::Deny => "401",
                        }
                    );
                }
                return result;
            }
        }
        if self.failing.swap(false, Ordering::Relaxed) {
            log::info!("{}: the introspection endpoint answers again", self.label);
        }
        result
    }

    /// Reads an RFC 7662 answer.
    fn answer(&self, f: &Map<String, Value>) -> Result<Answer, String> {
        let refused = |reason, text: &str| Ok(Answer::Refused(Denial::new(reason, text)));
        match f.get("active") {
            Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => return refused(Reason::Inactive, "token is not active"),
            _ => return Err("introspection answer has no boolean \"active\"".to_string()),
        }
        let now = unix_now();
        let exp = f.get("exp").and_then(Value::as_u64);
        if exp.is_some_and(|exp| exp + LEEWAY_SECS <= now) {
            return refused(Reason::Expired, "token expired");
        }
        if f.get("nbf")
            .and_then(Value::as_u64)
            .is_some_and(|nbf| nbf > now + LEEWAY_SECS)
        {
            return refused(Reason::NotYetValid, "token not yet valid");
        }
        if let Some(issuer) = &self.spec.issuer {
            if f.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
                return refused(Reason::WrongIssuer, "token issued by another issuer");
            }
        }
        if !self.spec.audiences.is_empty() {
            let matches = |a: &str| self.spec.audiences.iter().any(|x| x == a);
            let ok = match f.get("aud") {
                Some(Value::String(a)) => matches(a),
                Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(matches),
                _ => false,
            };
            if !ok {
                return refused(Reason::WrongAudience, "token not meant for this audience");
            }
        }
        let Some(consumer) = f.get(&self.spec.consumer_claim).and_then(claims::text) else {
            return refused(
                Reason::Malformed,
                &format!(
                    "introspection answer has no \"{}\"",
                    self.spec.consumer_claim
                ),
            );
        };
        let tier = self
            .spec
            .tier_claim
            .as_ref()
            .and_then(|c| f.get(c))
            .and_then(claims::text);
        let roles = self
            .spec
            .roles_claim
            .as_ref()
            .and_then(|c| f.get(c))
            .map(claims::strings)
            .unwrap_or_default();
        let scopes = f.get("scope").map(claims::strings).unwrap_or_default();
        Ok(Answer::Active(
            Identity::build(
                consumer,
                tier,
                self.id,
                self.label.clone(),
                roles,
                scopes,
                None,
            ),
            exp,
        ))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_urlencoded(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, FORM).to_string()
}

const FORM: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_escapes_what_a_form_must() {
        assert_eq!(form_urlencoded("a b+c/d=e&f"), "a%20b%2Bc%2Fd%3De%26f");
        assert_eq!(form_urlencoded("abc-._*"), "abc-._*");
    }
}
