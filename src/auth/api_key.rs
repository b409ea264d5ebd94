//! API key verification: the presented key is hashed (SHA-256) and looked up; only hashes are
//! ever held. Built once per snapshot from the keys file read at load.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderName;

use super::identity::{Denial, Identity, Reason};
use super::MAX_CREDENTIAL_LEN;
use crate::config::keys_file::hash_key;
use crate::config::{ApiKeyRecord, ApiKeySpec, ProviderId};

/// One API key provider's keys, indexed by hash.
pub struct ApiKeyStore {
    header: HeaderName,
    by_hash: HashMap<[u8; 32], (ApiKeyRecord, Arc<Identity>)>,
}

impl ApiKeyStore {
    /// Indexes the records of provider `id`.
    pub fn new(id: ProviderId, spec: &ApiKeySpec) -> Self {
        let label = format!("api_key:{}", spec.name);
        let by_hash = spec
            .keys
            .iter()
            .map(|k| {
                let identity = Identity::build(
                    k.consumer.clone(),
                    k.tier.clone(),
                    id,
                    label.clone(),
                    Vec::new(),
                    k.scopes.clone(),
                    Some(k.id.clone()),
                );
                (k.hash, (k.clone(), identity))
            })
            .collect();
        ApiKeyStore {
            header: spec.header.clone(),
            by_hash,
        }
    }

    /// The header that carries the key.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// Verifies a presented key at time `now`.
    pub fn verify(&self, presented: &[u8], now: SystemTime) -> Result<Arc<Identity>, Denial> {
        if presented.len() > MAX_CREDENTIAL_LEN {
            return Err(Denial::new(Reason::Malformed, "credential too large"));
        }
        let Some((rec, identity)) = self.by_hash.get(&hash_key(presented)) else {
            return Err(Denial::new(Reason::UnknownKey, "unknown API key"));
        };
        if rec.disabled {
            return Err(Denial::new(Reason::RevokedKey, "API key revoked"));
        }
        if rec.expires_at.is_some_and(|t| now >= t) {
            return Err(Denial::new(Reason::ExpiredKey, "API key expired"));
        }
        Ok(Arc::clone(identity))
    }
}
