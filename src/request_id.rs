//! Request ids (domain layer): a well-formed `X-Request-Id` from the client is kept, anything else is replaced
//! by 32 random hex digits. Stored inline so the request path allocates nothing for it.

/// Longest client-supplied id that is kept.
pub const MAX_LEN: usize = 128;

/// A request id, stored inline.
#[derive(Clone, Copy)]
pub struct RequestId {
    buf: [u8; MAX_LEN],
    len: u8,
}

impl AsRef<[u8]> for RequestId {
    fn as_ref(&self) -> &[u8] {
        self.as_str().as_bytes()
    }
}

impl RequestId {
    /// Keeps `client` if it is well formed (1 to 128 characters of `A-Z a-z 0-9 . _ : + / = -`),
    /// otherwise generates a fresh id.
    pub fn from_client_or_new(client: Option<&[u8]>) -> Self {
        match client {
            Some(v) if is_well_formed(v) => {
                let mut buf = [0u8; MAX_LEN];
                buf[..v.len()].copy_from_slice(v);
                RequestId {
                    buf,
                    len: v.len() as u8,
                }
            }
            _ => Self::generate(),
        }
    }

    /// A fresh random id of 32 lowercase hex digits.
    pub fn generate() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut n: u128 = rand::random();
        let mut buf = [0u8; MAX_LEN];
        for slot in buf[..32].iter_mut() {
            *slot = HEX[(n & 0xf) as usize];
            n >>= 4;
        }
        RequestId { buf, len: 32 }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId {
            buf: [0; MAX_LEN],
            len: 0,
        }
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_well_formed(v: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._:+/=-".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_well_formed_and_replaces_the_rest() {
        assert_eq!(
            RequestId::from_client_or_new(Some(b"abc-123")).as_str(),
            "abc-123"
        );
        let long = [b'a'; 129];
        assert_eq!(
            RequestId::from_client_or_new(Some(&long)).as_str().len(),
            32
        );
        assert_ne!(
            RequestId::from_client_or_new(Some(b"bad id\"")).as_str(),
            "bad id\""
        );
        assert_ne!(
            RequestId::generate().as_str(),
            RequestId::generate().as_str()
        );
    }
}
