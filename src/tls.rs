//! TLS termination's state (domain layer): the certificates of a snapshot, chosen by SNI name
//! ([`CertStore`]), and what each TLS connection's handshake learnt that requests need later
//! (the SNI name, the client certificate's subject) in [`Connections`], keyed by the client's
//! socket address (Pingora's HTTP/2 sessions do not expose their stream).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::sign::CertifiedKey;

use crate::bounded::{BoundedMap, Lru};
use crate::config::tls::TlsSettings;

/// Why handshakes failed, as `gatehouse_tls_handshake_failures_total{reason}`.
pub const FAILURE_REASONS: [&str; 5] = [
    "timeout",
    "unknown_sni",
    "client_certificate",
    "protocol",
    "connection",
];

/// The certificates of a snapshot.
#[derive(Debug)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `.example.com` → certificate for `*.example.com` (one label, RFC 6125).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    strict: bool,
    /// (name, expiry in Unix seconds) of each certificate, for the expiry gauge.
    expiry: Vec<(String, i64)>,
}

impl CertStore {
    /// Builds the store; certificates were checked when the configuration was loaded.
    pub fn new(settings: &TlsSettings) -> Result<Self, rustls::Error> {
        let provider = rustls::crypto::ring::default_provider();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        let mut expiry = Vec::new();
        for spec in &settings.certificates {
            let key = Arc::new(CertifiedKey::from_der(
                spec.pair.chain.clone(),
                spec.pair.key.clone_key(),
                &provider,
            )?);
            default.get_or_insert_with(|| Arc::clone(&key));
            for name in &spec.names {
                // The first certificate naming a host wins.
                match name.strip_prefix('*') {
                    Some(suffix) => wildcard.entry(suffix.to_string()),
                    None => exact.entry(name.clone()),
                }
                .or_insert_with(|| Arc::clone(&key));
            }
            let label = spec
                .names
                .first()
                .cloned()
                .unwrap_or_else(|| spec.cert.display().to_string());
            expiry.push((label, spec.not_after));
        }
        let default = default.ok_or(rustls::Error::General("no certificate".into()))?;
        Ok(CertStore {
            exact,
            wildcard,
            default,
            strict: settings.strict_sni,
            expiry,
        })
    }

    /// The certificate for SNI name `sni`: an exact name, else a wildcard one label up, else
    /// the default one (none with `strict_sni`, failing the handshake). Clients that send no
    /// name get the default.
    pub fn resolve(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = sni else {
            return Some(Arc::clone(&self.default));
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(Arc::clone(k));
        }
        if let Some(k) = name.find('.').and_then(|i| self.wildcard.get(&name[i..])) {
            return Some(Arc::clone(k));
        }
        (!self.strict).then(|| Arc::clone(&self.default))
    }

    /// Each certificate's first name and expiry (Unix seconds).
    pub fn expiry(&self) -> &[(String, i64)] {
        &self.expiry
    }
}

/// What a TLS connection's handshake established.
#[derive(Debug, Default)]
pub struct ConnInfo {
    /// The SNI name the client asked for.
    pub sni: Option<String>,
    /// The subject of the client's certificate (mTLS), RFC 4514 style.
    pub client_subject: Option<String>,
}

/// The live TLS connections' [`ConnInfo`], by client socket address.
pub struct Connections {
    map: BoundedMap<SocketAddr, Arc<ConnInfo>, Lru>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            map: BoundedMap::new(1 << 20, 64, Lru),
        }
    }
}

impl Connections {
    /// Remembers the connection from `peer` (replacing a closed one's entry).
    pub fn insert(&self, peer: SocketAddr, info: Arc<ConnInfo>) {
        self.map.insert(peer, info);
    }

    /// The connection from `peer`, if it is a TLS connection.
    pub fn get(&self, peer: &SocketAddr) -> Option<Arc<ConnInfo>> {
        self.map.get_mut(peer, |i| Arc::clone(i))
    }

    /// Forgets the connection from `peer` (it closed).
    pub fn remove(&self, peer: &SocketAddr) {
        self.map.remove(peer);
    }
}
