//! Test harness: starts the real `gatehouse` binary from a config string on a free loopback
//! port, and real HTTP backends whose behaviour each test controls.

#![allow(dead_code, unused_imports)]

pub mod backend;
pub mod gateway;
pub mod jwt;
pub mod redis;

pub use backend::TestBackend;
pub use gateway::{check_config, free_port, Gatehouse, ADMIN_TOKEN};

/// An HTTP client that never uses a proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .expect("client")
}

/// The parsed JSON body of a response.
pub async fn json(resp: reqwest::Response) -> serde_json::Value {
    let text = resp.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}
