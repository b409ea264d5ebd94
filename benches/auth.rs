//! Authentication micro-benchmarks with prebuilt keys: JWT verification per algorithm family
//! and API key lookup. Goals (README): HS256 well under 5 µs, API key lookup under 1 µs.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gatehouse::auth::api_key::ApiKeyStore;
use gatehouse::auth::jwt::JwtVerifier;
use gatehouse::config::ProviderId;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const SECRET: &str = "benchmark-hmac-secret-of-32-bytes-or-more";

fn key(name: &str) -> String {
    format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn claims() -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    serde_json::json!({
        "sub": "consumer-42", "iss": "https://idp.test/", "aud": "api.test",
        "exp": now + 3600, "iat": now, "tier": "pro", "roles": ["reader"], "scope": "orders:read",
    })
}

fn jwt(c: &mut Criterion) {
    std::env::set_var("GATEHOUSE_BENCH_HMAC", SECRET);
    let provider = |name: &str, alg: &str, source: String| {
        format!(
            "[auth.jwt.{name}]\nalgorithms = [\"{alg}\"]\n{source}\nissuer = \"https://idp.test/\"\naudiences = [\"api.test\"]\ntier_claim = \"tier\"\nroles_claim = \"roles\"\n"
        )
    };
    let config = [
        provider(
            "hs",
            "HS256",
            "secret_env = \"GATEHOUSE_BENCH_HMAC\"".into(),
        ),
        provider(
            "rs",
            "RS256",
            format!("public_key_file = \"{}\"", key("rsa1.pub")),
        ),
        provider(
            "es",
            "ES256",
            format!("public_key_file = \"{}\"", key("ec1.pub")),
        ),
        provider(
            "ed",
            "EdDSA",
            format!("public_key_file = \"{}\"", key("ed1.pub")),
        ),
    ]
    .concat();
    let cfg = gatehouse::config::parse(Path::new("bench.toml"), &config).expect("valid");
    let sign = |alg: Algorithm, enc: EncodingKey| {
        jsonwebtoken::encode(&Header::new(alg), &claims(), &enc).unwrap()
    };
    let pem = |n: &str| std::fs::read(key(n)).unwrap();
    let tokens = [
        sign(
            Algorithm::HS256,
            EncodingKey::from_secret(SECRET.as_bytes()),
        ),
        sign(
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&pem("rsa1.key")).unwrap(),
        ),
        sign(
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&pem("ec1.key")).unwrap(),
        ),
        sign(
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&pem("ed1.key")).unwrap(),
        ),
    ];
    let mut g = c.benchmark_group("jwt_verify");
    for (((id, spec), token), name) in cfg
        .auth
        .jwt()
        .enumerate()
        .zip(&tokens)
        .zip(["HS256", "RS256", "ES256", "EdDSA"])
    {
        let verifier = JwtVerifier::new(ProviderId::new(id), spec, None);
        assert!(
            verifier.verify_known(token).is_ok(),
            "{name} token verifies"
        );
        g.bench_function(name, |b| b.iter(|| verifier.verify_known(black_box(token))));
    }
    g.finish();
}

fn api_keys(c: &mut Criterion) {
    use gatehouse::config::keys_file::generate;
    let keys: Vec<_> = (0..10_000)
        .map(|i| {
            generate(
                &format!("consumer-{i}"),
                Some("pro"),
                &["orders:read".to_string()],
                None,
            )
            .unwrap()
        })
        .collect();
    let spec = gatehouse::config::ApiKeySpec {
        name: "partners".into(),
        keys_file: "keys.toml".into(),
        header: http::HeaderName::from_static("x-api-key"),
        keys: keys.iter().map(|k| k.record.clone()).collect(),
    };
    let store = ApiKeyStore::new(ProviderId::new(0), &spec);
    let presented = keys[5_000].plain.clone();
    let now = SystemTime::now();
    assert!(store.verify(presented.as_bytes(), now).is_ok());
    c.bench_function("api_key_lookup_10k_keys", |b| {
        b.iter(|| store.verify(black_box(presented.as_bytes()), now))
    });
}

criterion_group!(benches, jwt, api_keys);
criterion_main!(benches);
