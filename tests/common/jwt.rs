//! Real JWTs for tests: signed with the test-only keys in tests/fixtures/keys, and a JWKS
//! server whose document a test can rotate or take down.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// Path of a fixture key file.
pub fn key_path(name: &str) -> String {
    format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(key_path(name)).expect("fixture key")
}

/// The signing key for a fixture (`rsa1`, `rsa2`, `ec1`, `ed1`) and algorithm.
pub fn encoding_key(name: &str, alg: Algorithm) -> EncodingKey {
    let bytes = pem(&format!("{name}.key"));
    match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&bytes),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&bytes),
        _ => EncodingKey::from_rsa_pem(&bytes),
    }
    .expect("valid fixture key")
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Standard claims for the test issuer and audience, valid for an hour.
pub fn claims(sub: &str) -> Value {
    json!({
        "sub": sub,
        "iss": "https://idp.test/",
        "aud": "api.test",
        "exp": now() + 3600,
        "iat": now(),
        "tier": "pro",
        "roles": ["reader"],
        "scope": "orders:read profile",
    })
}

/// Signs `claims` with fixture key `key` using `alg`, with optional `kid`.
pub fn sign(key: &str, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &encoding_key(key, alg)).expect("sign")
}

/// Signs with an HMAC secret.
pub fn sign_hmac(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

/// A token with `alg: none` and no signature.
pub fn unsigned(claims: &Value) -> String {
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(claims)
    )
}

/// The public JWK of fixture `key` for `alg`, with `kid`.
pub fn jwk(key: &str, alg: Algorithm, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(&encoding_key(key, alg), alg).expect("jwk");
    jwk.common.key_id = Some(kid.to_string());
    jwk
}

struct JwksState {
    doc: Mutex<String>,
    up: AtomicBool,
    fetches: AtomicUsize,
}

/// A JWKS endpoint on loopback.
#[derive(Clone)]
pub struct JwksServer {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<JwksState>,
}

impl JwksServer {
    /// Serves `keys` at `/jwks.json`.
    pub fn start(keys: Vec<Jwk>) -> Self {
        let state = Arc::new(JwksState {
            doc: Mutex::new(serde_json::to_string(&JwkSet { keys }).unwrap()),
            up: AtomicBool::new(true),
            fetches: AtomicUsize::new(0),
        });
        let serve = Arc::clone(&state);
        let addr = super::serve::serve(move |req| handle(Arc::clone(&serve), req));
        JwksServer { addr, state }
    }

    /// `http://ADDR/jwks.json`.
    pub fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    /// Replaces the served keys (a rotation).
    pub fn set_keys(&self, keys: Vec<Jwk>) {
        *self.state.doc.lock().unwrap() = serde_json::to_string(&JwkSet { keys }).unwrap();
    }

    /// Makes the endpoint answer 503 (false) or serve again (true).
    pub fn set_up(&self, up: bool) {
        self.state.up.store(up, Ordering::SeqCst);
    }

    /// Requests received.
    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }
}

async fn handle(
    state: Arc<JwksState>,
    _req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    if !state.up.load(Ordering::SeqCst) {
        return Ok(Response::builder()
            .status(503)
            .body(Full::new(Bytes::new()))
            .unwrap());
    }
    let doc = state.doc.lock().unwrap().clone();
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(doc)))
        .unwrap())
}
