//! Who the client is and what the upstream is told about it (domain layer): trusted-proxy handling, client IP
//! resolution and the `X-Forwarded-*` headers. Forwarding headers from an untrusted peer are
//! never believed.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora::http::RequestHeader;

/// The set of peers whose `X-Forwarded-*` headers are believed. Empty by default.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// A set of the given networks.
    pub fn new(nets: &[IpNet]) -> Self {
        TrustedProxies(nets.to_vec())
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's IP: the socket peer, unless the peer is trusted, in which case the
    /// right-most address of `X-Forwarded-For` that is not itself trusted. Rotating or
    /// forging left-hand entries therefore changes nothing.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let mut candidate = peer;
        for value in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(text) = value.to_str() else {
                return candidate;
            };
            for entry in text.rsplit(',') {
                let Ok(ip) = entry.trim().parse::<IpAddr>() else {
                    return candidate;
                };
                candidate = canonical(ip);
                if !self.contains(candidate) {
                    return candidate;
                }
            }
        }
        candidate
    }
}

/// The `X-Forwarded-For` value for a peer that sent none: the address alone. A keep-alive
/// connection's requests all come from one peer, so each worker thread keeps the last value
/// built (its bytes shared, so a copy costs a reference count rather than an allocation).
fn peer_value(peer: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((ip, value)) if *ip == peer => value.clone(),
        _ => {
            let mut text = IpText::default();
            text.write(peer);
            let value = shared_value(text);
            *last = Some((peer, value.clone()));
            value
        }
    })
}

/// A header value owning `text` with reference-counted bytes from the start: its clones
/// allocate nothing (a value built from a `Vec` allocates again on its first clone).
pub fn shared_value<T: AsRef<[u8]> + Send + 'static>(text: T) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
        .unwrap_or(HeaderValue::from_static("-"))
}

/// Sets `X-Forwarded-For`, `-Proto` and `-Host` on the upstream request. From a trusted proxy
/// the peer is appended to the existing chain and the proxy's `-Proto`/`-Host` are kept; from
/// anyone else all three are replaced. `host` is the request's `Host` (or authority) value.
///
/// On the request path: values are built without `format!` (the peer address is written into a
/// stack buffer), `X-Forwarded-Host` shares the `Host` value's bytes, and `-Proto` is static.
pub fn set_upstream_headers(
    req: &mut RequestHeader,
    peer: Option<IpAddr>,
    peer_trusted: bool,
    host: Option<HeaderValue>,
    tls: bool,
) -> pingora::Result<()> {
    let Some(peer) = peer.map(canonical) else {
        // Not an IP peer (e.g. a Unix socket): pass nothing on the client's word.
        req.remove_header(&XFF);
        return Ok(());
    };
    let xff = if peer_trusted && req.headers.contains_key(&XFF) {
        let mut chain = Vec::with_capacity(64);
        for v in req.headers.get_all(&XFF) {
            if !chain.is_empty() {
                chain.extend_from_slice(b", ");
            }
            chain.extend_from_slice(v.as_bytes());
        }
        chain.extend_from_slice(b", ");
        chain.extend_from_slice(IpText::default().write(peer));
        HeaderValue::from_bytes(&chain)
    } else {
        Ok(peer_value(peer))
    };
    if let Ok(v) = xff {
        req.insert_header_static(&XFF, XFF_STR, v);
    }
    if !(peer_trusted && req.headers.contains_key(&XFP)) {
        let proto = if tls { HTTPS } else { HTTP };
        req.insert_header_static(&XFP, XFP_STR, proto);
    }
    if !(peer_trusted && req.headers.contains_key(&XFH)) {
        match host {
            Some(h) => {
                req.insert_header_static(&XFH, XFH_STR, h);
            }
            None => {
                req.remove_header(&XFH);
            }
        }
    }
    Ok(())
}

const XFF_STR: &str = "x-forwarded-for";
const XFP_STR: &str = "x-forwarded-proto";
const XFH_STR: &str = "x-forwarded-host";
const XFF: HeaderName = HeaderName::from_static(XFF_STR);
const XFP: HeaderName = HeaderName::from_static(XFP_STR);
const XFH: HeaderName = HeaderName::from_static(XFH_STR);
const HTTP: HeaderValue = HeaderValue::from_static("http");
const HTTPS: HeaderValue = HeaderValue::from_static("https");

/// An IP address as text, in a stack buffer (an IPv6 address is at most 45 bytes).
#[derive(Clone, Copy)]
pub struct IpText([u8; 48], usize);

impl AsRef<[u8]> for IpText {
    fn as_ref(&self) -> &[u8] {
        &self.0[..self.1]
    }
}

impl Default for IpText {
    fn default() -> Self {
        IpText([0; 48], 0)
    }
}

impl IpText {
    /// Writes `ip` (IPv4 without the formatting machinery) and returns the text.
    pub fn write(&mut self, ip: IpAddr) -> &[u8] {
        use std::io::Write;
        if let IpAddr::V4(v4) = ip {
            // The common case, without the formatting machinery.
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    self.0[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    self.0[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    self.0[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                self.0[n] = b'0' + octet % 10;
                n += 1;
            }
            self.1 = n;
            return &self.0[..n];
        }
        let mut cursor = std::io::Cursor::new(&mut self.0[..]);
        // 48 bytes always hold an address.
        let _ = write!(cursor, "{ip}");
        self.1 = cursor.position() as usize;
        &self.0[..self.1]
    }
}

/// IPv4-mapped IPv6 addresses are treated as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The value of cookie `name` in `req`'s `Cookie` headers, if present and not empty.
pub fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a [u8]> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name && !v.is_empty()).then_some(v.as_bytes())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_peer_value_follows_the_peer() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::7".parse().unwrap();
        for (ip, text) in [
            (a, "192.0.2.1"),
            (a, "192.0.2.1"),
            (b, "2001:db8::7"),
            (a, "192.0.2.1"),
        ] {
            assert_eq!(peer_value(ip).as_bytes(), text.as_bytes());
        }
    }

    #[test]
    fn shared_values_keep_their_text() {
        let long = "x".repeat(100);
        assert_eq!(shared_value(long.clone()).as_bytes(), long.as_bytes());
        assert_eq!(shared_value(b"abc").as_bytes(), b"abc");
        let v = shared_value("id-1");
        assert_eq!(v.clone(), v);
    }

    #[test]
    fn addresses_are_written_as_text() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "1.2.3.4",
            "::1",
            "2001:db8::7",
        ] {
            let mut t = IpText::default();
            assert_eq!(t.write(ip.parse().unwrap()), ip.as_bytes());
        }
    }

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let t = TrustedProxies::new(&[]);
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(t.client_ip(peer, &headers("203.0.113.9")), peer);
    }

    #[test]
    fn trusted_chain_yields_the_rightmost_untrusted_address() {
        let t = TrustedProxies::new(&["10.0.0.0/8".parse().unwrap()]);
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let h = headers("1.1.1.1, 198.51.100.7, 10.0.0.5");
        assert_eq!(
            t.client_ip(peer, &h),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
    }
}
