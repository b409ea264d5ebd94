//! TLS termination on the traffic listeners. Pingora 0.9's `TlsSettings` fixes the protocol
//! versions and only logs failed handshakes, so TLS listeners are plain TCP listeners whose
//! [`EdgeApp`](super::listener::EdgeApp) runs the handshake itself with our own rustls
//! `ServerConfig`: the minimum version and ALPN from the configuration, client certificate
//! verification when configured, and a certificate resolver that reads the current snapshot at
//! each handshake, so a reload swaps certificates without touching open connections (and,
//! since the `ServerConfig` itself stays, session resumption keeps working across it).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use prometheus::IntCounter;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::tls::{TlsSettings, TlsVersion};
use crate::snapshot::SnapshotStore;
use crate::tls::{ConnInfo, Connections, FAILURE_REASONS};

/// Picks the certificate by SNI from the current snapshot at each handshake.
#[derive(Debug)]
struct SniResolver {
    store: SnapshotStore,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store.load().certs()?.resolve(hello.server_name())
    }
}

/// The TLS side of a listener: the acceptor and what it counts.
pub struct TlsEntry {
    acceptor: tokio_rustls::TlsAcceptor,
    conns: Arc<Connections>,
    failures: [IntCounter; FAILURE_REASONS.len()],
}

/// Builds the listeners' rustls configuration for `settings`.
pub fn server_config(
    settings: &TlsSettings,
    store: SnapshotStore,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)?;
    let builder = match &settings.client_auth {
        Some(auth) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in &auth.roots {
                roots.add(ca.clone())?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let verifier = if auth.required {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|e| rustls::Error::General(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver { store }));
    config.alpn_protocols = settings
        .alpn
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}

impl TlsEntry {
    /// An acceptor for `config`; connection facts go to `conns`, failures to `failures`.
    pub fn new(
        config: Arc<ServerConfig>,
        conns: Arc<Connections>,
        failures: [IntCounter; FAILURE_REASONS.len()],
    ) -> Self {
        TlsEntry {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            conns,
            failures,
        }
    }

    fn failed(&self, reason: &str) {
        if let Some(i) = FAILURE_REASONS.iter().position(|r| *r == reason) {
            self.failures[i].inc();
        }
    }

    /// Runs the handshake on `stream` within `budget`; `None` (counted) when it fails.
    pub async fn accept(&self, stream: Stream, budget: Duration) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned())
            .and_then(|a| a.as_inet().copied());
        let tls = match tokio::time::timeout(budget, self.acceptor.accept(stream)).await {
            Err(_) => {
                self.failed("timeout");
                return None;
            }
            Ok(Err(e)) => {
                self.failed(failure_reason(&e));
                log::debug!("TLS handshake failed: {e}");
                return None;
            }
            Ok(Ok(tls)) => tls,
        };
        let conn = tls.get_ref().1;
        let alpn = conn.alpn_protocol().and_then(|p| match p {
            b"h2" => Some(ALPN::H2),
            b"http/1.1" => Some(ALPN::H1),
            _ => None,
        });
        let client = conn
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|leaf| {
                let subject = x509_parser::parse_x509_certificate(leaf.as_ref())
                    .ok()
                    .map(|(_, c)| c.subject().to_string());
                (Sha256::digest(leaf.as_ref()).to_vec(), subject)
            });
        let digest = SslDigest::new(
            conn.negotiated_cipher_suite()
                .map_or("unknown", |s| s.suite().as_str().unwrap_or("unknown")),
            conn.protocol_version()
                .map_or("unknown", |v| v.as_str().unwrap_or("unknown")),
            None,
            None,
            client.as_ref().map(|(d, _)| d.clone()).unwrap_or_default(),
        );
        let info = Arc::new(ConnInfo {
            sni: conn.server_name().map(str::to_string),
            client_subject: client.and_then(|(_, s)| s),
        });
        if let Some(peer) = peer {
            self.conns.insert(peer, info);
        }
        Some(Box::new(TlsConn {
            inner: tls,
            digest: Arc::new(digest),
            alpn,
            peer,
            conns: Arc::clone(&self.conns),
        }))
    }
}

fn failure_reason(e: &std::io::Error) -> &'static str {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return "connection";
    };
    match tls {
        rustls::Error::General(m) if m.contains("resolve") || m.contains("certificate") => {
            "unknown_sni"
        }
        rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_) => {
            "client_certificate"
        }
        _ => "protocol",
    }
}

/// A TLS connection as Pingora's HTTP layers see it.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<Stream>,
    digest: Arc<SslDigest>,
    alpn: Option<ALPN>,
    peer: Option<std::net::SocketAddr>,
    conns: Arc<Connections>,
}

impl Drop for TlsConn {
    fn drop(&mut self) {
        if let Some(peer) = &self.peer {
            self.conns.remove(peer);
        }
    }
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("inner", self.inner.get_ref().0)
            .field("alpn", &self.alpn)
            .finish()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for TlsConn {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.inner).await;
    }
}

impl UniqueID for TlsConn {
    fn id(&self) -> UniqueIDType {
        self.inner.get_ref().0.id()
    }
}

impl Ssl for TlsConn {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        Some(Arc::clone(&self.digest))
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.alpn.clone()
    }
}

impl GetTimingDigest for TlsConn {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_ref().0.get_timing_digest()
    }
}

impl GetProxyDigest for TlsConn {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_ref().0.get_proxy_digest()
    }
}

impl GetSocketDigest for TlsConn {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_ref().0.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.get_mut().0.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for TlsConn {}
