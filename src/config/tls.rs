//! The `[server.tls]` section: TLS listeners, protocol versions, ALPN, certificates (served by
//! SNI), client authentication and the HTTP-to-HTTPS redirect. Certificates and keys are read
//! and checked here, when the file is loaded: the chain parses, the key matches the leaf, the
//! leaf has not expired (an error) and does not expire within 14 days (a warning).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;

use super::reader::{Node, Reader};

/// A certificate chain and its key, as read from the files (the key never printed).
pub struct KeyPair {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KeyPair({} certificates, <key redacted>)",
            self.chain.len()
        )
    }
}

impl PartialEq for KeyPair {
    fn eq(&self, other: &Self) -> bool {
        self.chain == other.chain && self.key.secret_der() == other.key.secret_der()
    }
}

/// A validated certificate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CertificateSpec {
    /// The chain file.
    pub cert: PathBuf,
    /// The key file.
    pub key: PathBuf,
    /// The DNS names of the leaf (SANs; the subject CN when it has none), lower-case;
    /// `*.example.com` for wildcards.
    pub names: Vec<String>,
    /// When the leaf expires (Unix seconds).
    pub not_after: i64,
    /// The parsed chain and key.
    #[serde(skip)]
    pub pair: Arc<KeyPair>,
}

/// TLS protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    V1_3,
}

/// Client certificate authentication (mTLS).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientAuth {
    /// The CA file client certificates must chain to.
    pub ca: PathBuf,
    /// The CA certificates.
    #[serde(skip)]
    pub roots: Vec<CertificateDer<'static>>,
    /// Whether a client without a certificate fails the handshake (`false`: it may connect
    /// without one).
    pub required: bool,
}

/// Validated TLS settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TlsSettings {
    /// TLS listeners.
    pub listen: Vec<SocketAddr>,
    /// The lowest protocol version accepted.
    pub min_version: TlsVersion,
    /// ALPN protocols offered, in preference order (`h2`, `http/1.1`).
    pub alpn: Vec<String>,
    /// Certificates; the first is also served to clients that send no (or an unknown) SNI
    /// name, unless `strict_sni`.
    pub certificates: Vec<CertificateSpec>,
    /// Unknown SNI names fail the handshake, and a request whose `Host` is not the SNI name
    /// gets 421.
    pub strict_sni: bool,
    /// Plain listeners answer 308 to the same URL on https.
    pub redirect_http: bool,
    /// Client certificate authentication, if configured.
    pub client_auth: Option<ClientAuth>,
    /// Bytes of read buffer under TLS on each connection (Pingora's L4 read buffer); 0 lets
    /// the TLS layer read records straight from the socket.
    pub read_buffer: usize,
}

/// Warn when a certificate expires within this many seconds.
const EXPIRY_WARNING: i64 = 14 * 86_400;

fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut text.as_slice()).collect();
    match certs {
        Ok(c) if c.is_empty() => Err(format!("{}: no PEM certificate in it", path.display())),
        Ok(c) => Ok(c),
        Err(e) => Err(format!(
            "{}: not a PEM certificate file: {e}",
            path.display()
        )),
    }
}

/// The DNS names and expiry of a leaf certificate.
fn leaf_facts(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("the leaf certificate does not parse: {e}"))?;
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        Some(d.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

fn read_pair(r: &mut Reader<'_>, node: &Node<'_, '_>, now: i64) -> Option<CertificateSpec> {
    let t = r.table(node)?;
    let cert_node = t.require(r, "cert");
    let key_node = t.require(r, "key");
    let cert_path = cert_node
        .as_ref()
        .and_then(|n| r.string(n).map(|s| r.resolve(s)));
    let key_path = key_node
        .as_ref()
        .and_then(|n| r.string(n).map(|s| r.resolve(s)));
    let (cert_path, key_path, cert_node, key_node) = (cert_path?, key_path?, cert_node?, key_node?);
    let chain = match read_certs(&cert_path) {
        Ok(c) => c,
        Err(e) => {
            r.error(&cert_node, e);
            return None;
        }
    };
    let key = std::fs::read(&key_path)
        .map_err(|e| format!("cannot read {}: {e}", key_path.display()))
        .and_then(|bytes| {
            rustls_pemfile::private_key(&mut bytes.as_slice())
                .map_err(|e| format!("{}: not a PEM key file: {e}", key_path.display()))?
                .ok_or_else(|| format!("{}: no PEM private key in it", key_path.display()))
        });
    let key = match key {
        Ok(k) => k,
        Err(e) => {
            r.error(&key_node, e);
            return None;
        }
    };
    let provider = rustls::crypto::ring::default_provider();
    if let Err(e) = rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)
    {
        r.error(
            &key_node,
            format!(
                "{} does not fit {}: {e}",
                key_path.display(),
                cert_path.display()
            ),
        );
        return None;
    }
    let (names, not_after) = match leaf_facts(&chain[0]) {
        Ok(f) => f,
        Err(e) => {
            r.error(&cert_node, format!("{}: {e}", cert_path.display()));
            return None;
        }
    };
    if not_after <= now {
        r.error(
            &cert_node,
            format!(
                "{} expired at {}",
                cert_path.display(),
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(not_after.max(0) as u64)
                )
            ),
        );
        return None;
    }
    if not_after - now < EXPIRY_WARNING {
        r.warn(
            &cert_node,
            format!(
                "{} expires in {} days",
                cert_path.display(),
                (not_after - now) / 86_400
            ),
        );
    }
    Some(CertificateSpec {
        cert: cert_path,
        key: key_path,
        names,
        not_after,
        pair: Arc::new(KeyPair { chain, key }),
    })
}

/// Reads `[server.tls]`.
pub fn read(r: &mut Reader<'_>, node: &Node<'_, '_>) -> Option<TlsSettings> {
    let t = r.table(node)?;
    let before = r.error_count();
    let now = crate::clock::unix_secs() as i64;
    let mut listen = Vec::new();
    if let Some(n) = t.require(r, "listen") {
        if let Some(items) = r.strings(&n) {
            if items.is_empty() {
                r.error(&n, "at least one TLS listen address is required");
            }
            for (text, span, path) in items {
                match text.parse::<SocketAddr>() {
                    Ok(a) => listen.push(a),
                    Err(_) => r.error_at(
                        span,
                        &path,
                        format!("invalid listen address \"{text}\" (expected IP:PORT)"),
                    ),
                }
            }
        }
    }
    let min_version = match t.get("min_version") {
        None => TlsVersion::V1_2,
        Some(n) => match r.string(&n) {
            Some("1.2") => TlsVersion::V1_2,
            Some("1.3") => TlsVersion::V1_3,
            Some(other) => {
                r.error(
                    &n,
                    format!("unknown TLS version \"{other}\" (expected \"1.2\" or \"1.3\")"),
                );
                TlsVersion::V1_2
            }
            None => TlsVersion::V1_2,
        },
    };
    let alpn = match t.get("alpn") {
        None => vec!["h2".to_string(), "http/1.1".to_string()],
        Some(n) => {
            let mut out = Vec::new();
            if let Some(items) = r.strings(&n) {
                if items.is_empty() {
                    r.error(&n, "list at least one protocol");
                }
                for (text, span, path) in items {
                    match text {
                        "h2" | "http/1.1" => out.push(text.to_string()),
                        _ => r.error_at(
                            span,
                            &path,
                            format!("unknown ALPN protocol \"{text}\" (expected h2 or http/1.1)"),
                        ),
                    }
                }
            }
            out
        }
    };
    let mut certificates = Vec::new();
    if let Some(n) = t.require(r, "certificates") {
        if let Some(items) = r.array(&n) {
            if items.is_empty() {
                r.error(&n, "at least one certificate is required");
            }
            for item in &items {
                certificates.extend(read_pair(r, item, now));
            }
        }
    }
    let flag = |r: &mut Reader<'_>, key: &'static str| {
        t.get(key).and_then(|n| r.boolean(&n)).unwrap_or(false)
    };
    let strict_sni = flag(r, "strict_sni");
    let redirect_http = flag(r, "redirect_http");
    let client_auth = t.get("client_auth").and_then(|n| {
        let c = r.table(&n)?;
        let required = c
            .get("required")
            .and_then(|n| r.boolean(&n))
            .unwrap_or(true);
        let ca_node = c.require(r, "ca")?;
        let ca = r.string(&ca_node).map(|s| r.resolve(s))?;
        match read_certs(&ca) {
            Ok(roots) => Some(ClientAuth {
                ca,
                roots,
                required,
            }),
            Err(e) => {
                r.error(&ca_node, e);
                None
            }
        }
    });
    let read_buffer = t
        .get("read_buffer")
        .and_then(|n| r.size(&n, super::server::MAX_READ_BUFFER))
        .map_or(0, |v| v as usize);
    if r.error_count() > before {
        return None;
    }
    Some(TlsSettings {
        read_buffer,
        listen,
        min_version,
        alpn,
        certificates,
        strict_sni,
        redirect_http,
        client_auth,
    })
}
