//! API keys files: TOML, one `[[keys]]` table per key, holding only the SHA-256 of each key.
//! Read at every load (so new, revoked and expired keys take effect on reload) and edited by
//! `gatehouse keys new|revoke`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use toml::de::DeTable;

use super::error::ConfigError;
use super::reader::{Node, Reader};

/// One API key, as stored: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Public identifier, safe to log.
    pub id: String,
    /// SHA-256 of the key.
    pub hash: [u8; 32],
    /// The consumer the key belongs to.
    pub consumer: String,
    /// Rate-limit tier, if any.
    pub tier: Option<String>,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// When the key stops working.
    pub expires_at: Option<SystemTime>,
    /// A disabled (revoked) key is refused.
    pub disabled: bool,
}

/// Why a keys file could not be loaded or changed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file is invalid; every problem, with its position.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigError>),
}

/// Why `gatehouse keys new|revoke` could not change a keys file.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file is invalid as it is; nothing was changed.
    #[error("{0}")]
    Invalid(LoadError),
    /// No record has this id.
    #[error("no key with id {0}")]
    NoSuchKey(String),
    /// The file is not TOML that can be edited.
    #[error("{0}")]
    Syntax(#[from] toml_edit::TomlError),
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EditError {
    let path = path.to_path_buf();
    move |source| EditError::Io {
        action,
        path,
        source,
    }
}

/// SHA-256 of a presented key.
pub fn hash_key(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// Reads and validates a keys file.
pub fn load(path: &Path) -> Result<Vec<ApiKeyRecord>, LoadError> {
    let src = std::fs::read_to_string(path)?;
    parse(path, &src).map_err(LoadError::Invalid)
}

/// Validates keys file text as if read from `path`.
pub fn parse(path: &Path, src: &str) -> Result<Vec<ApiKeyRecord>, Vec<ConfigError>> {
    let mut r = Reader::new(path, src);
    let (doc, syntax) = DeTable::parse_recoverable(src);
    if !syntax.is_empty() {
        for e in syntax {
            r.error_at(
                e.span().unwrap_or(0..0),
                "",
                format!("TOML syntax error: {}", e.message().trim()),
            );
        }
        return Err(r.into_errors());
    }
    let root_value = toml::Spanned::new(0..src.len(), toml::de::DeValue::Table(doc.into_inner()));
    let root = Node::root(&root_value);
    let mut out: Vec<ApiKeyRecord> = Vec::new();
    if let Some(top) = r.table(&root) {
        if let Some(items) = top.get("keys").and_then(|n| r.array(&n)) {
            for item in &items {
                if let Some(rec) = read_record(&mut r, item) {
                    if out.iter().any(|k| k.id == rec.id) {
                        r.error(item, format!("duplicate key id \"{}\"", rec.id));
                    } else if out.iter().any(|k| k.hash == rec.hash) {
                        r.error(
                            item,
                            format!("key {} has the same hash as another key", rec.id),
                        );
                    } else {
                        out.push(rec);
                    }
                }
            }
        }
    }
    let errors = r.into_errors();
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn read_record(r: &mut Reader<'_>, n: &Node<'_, '_>) -> Option<ApiKeyRecord> {
    let t = r.table(n)?;
    let before = r.error_count();
    let id = t
        .require(r, "id")
        .and_then(|n| r.string(&n).map(str::to_string));
    let hash = t.require(r, "hash").and_then(|n| {
        let text = r.string(&n)?;
        let hex_text = text.strip_prefix("sha256:").unwrap_or(text);
        let mut out = [0u8; 32];
        match hex::decode_to_slice(hex_text, &mut out) {
            Ok(()) => Some(out),
            Err(_) => {
                r.error(&n, "hash must be \"sha256:\" followed by 64 hex digits");
                None
            }
        }
    });
    let consumer = t
        .require(r, "consumer")
        .and_then(|n| r.string(&n).map(str::to_string));
    let tier = t.get("tier").and_then(|n| r.string(&n).map(str::to_string));
    let scopes = t
        .get("scopes")
        .and_then(|n| r.strings(&n))
        .map(|v| v.into_iter().map(|(s, _, _)| s.to_string()).collect())
        .unwrap_or_default();
    let expires_at = t.get("expires_at").and_then(|n| timestamp(r, &n));
    let disabled = t
        .get("disabled")
        .and_then(|n| r.boolean(&n))
        .unwrap_or(false);
    for key in ["revoked_at", "created_at"] {
        if let Some(n) = t.get(key) {
            timestamp(r, &n);
        }
    }
    if r.error_count() > before {
        return None;
    }
    Some(ApiKeyRecord {
        id: id?,
        hash: hash?,
        consumer: consumer?,
        tier,
        scopes,
        expires_at,
        disabled,
    })
}

/// An RFC 3339 timestamp, as a TOML string or a TOML offset date-time.
fn timestamp(r: &mut Reader<'_>, n: &Node<'_, '_>) -> Option<SystemTime> {
    let text = match n.value() {
        toml::de::DeValue::Datetime(d) => d.to_string(),
        toml::de::DeValue::String(s) => s.to_string(),
        _ => {
            r.type_error(n, "an RFC 3339 date-time");
            return None;
        }
    };
    match humantime::parse_rfc3339_weak(text.trim_end_matches('Z'))
        .ok()
        .filter(|_| text.ends_with('Z'))
    {
        Some(t) => Some(t),
        None => {
            r.error(
                n,
                format!(
                    "invalid timestamp \"{text}\" (RFC 3339 in UTC, e.g. 2027-01-31T00:00:00Z)"
                ),
            );
            None
        }
    }
}

/// A freshly generated key: the plain key (shown once) and the record to store.
pub struct NewKey {
    /// The key to hand to the consumer.
    pub plain: String,
    /// What goes into the keys file.
    pub record: ApiKeyRecord,
}

/// Prefix of every generated key, so that leaked keys are recognisable by scanners.
pub const KEY_PREFIX: &str = "ghk_";

/// Generates a key from the OS CSPRNG: 32 random bytes, base64url, with [`KEY_PREFIX`].
pub fn generate(
    consumer: &str,
    tier: Option<&str>,
    scopes: &[String],
    ttl: Option<Duration>,
) -> std::io::Result<NewKey> {
    use base64::Engine;
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(std::io::Error::other)?;
    let mut id_bytes = [0u8; 8];
    getrandom::fill(&mut id_bytes).map_err(std::io::Error::other)?;
    let plain = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    Ok(NewKey {
        record: ApiKeyRecord {
            id: format!("key_{}", hex::encode(id_bytes)),
            hash: hash_key(plain.as_bytes()),
            consumer: consumer.to_string(),
            tier: tier.map(str::to_string),
            scopes: scopes.to_vec(),
            expires_at: ttl.map(|d| SystemTime::now() + d),
            disabled: false,
        },
        plain,
    })
}

/// The TOML text of one record, as appended to a keys file.
pub fn record_toml(rec: &ApiKeyRecord) -> String {
    let mut t = toml_edit::Table::new();
    t.insert("id", toml_edit::value(rec.id.as_str()));
    t.insert(
        "hash",
        toml_edit::value(format!("sha256:{}", hex::encode(rec.hash))),
    );
    t.insert("consumer", toml_edit::value(rec.consumer.as_str()));
    if let Some(tier) = &rec.tier {
        t.insert("tier", toml_edit::value(tier.as_str()));
    }
    let scopes: toml_edit::Array = rec.scopes.iter().map(String::as_str).collect();
    t.insert("scopes", toml_edit::value(scopes));
    t.insert(
        "created_at",
        toml_edit::value(humantime::format_rfc3339_seconds(SystemTime::now()).to_string()),
    );
    if let Some(exp) = rec.expires_at {
        t.insert(
            "expires_at",
            toml_edit::value(humantime::format_rfc3339_seconds(exp).to_string()),
        );
    }
    t.insert("disabled", toml_edit::value(rec.disabled));
    let mut doc = toml_edit::DocumentMut::new();
    let mut array = toml_edit::ArrayOfTables::new();
    array.push(t);
    doc.insert("keys", toml_edit::Item::ArrayOfTables(array));
    doc.to_string()
}

/// Appends a record to the keys file (created if missing), after checking the file is valid.
pub fn append(path: &Path, rec: &ApiKeyRecord) -> Result<(), EditError> {
    let existing = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_error("read", path)(e)),
    };
    parse(path, &existing).map_err(|errs| EditError::Invalid(LoadError::Invalid(errs)))?;
    let mut text = existing;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    if !text.is_empty() {
        text.push('\n');
    }
    text.push_str(&record_toml(rec));
    write_atomically(path, &text)
}

/// Disables the key `id` in place, keeping the rest of the file as it was.
pub fn revoke(path: &Path, id: &str) -> Result<(), EditError> {
    let text = std::fs::read_to_string(path).map_err(io_error("read", path))?;
    parse(path, &text).map_err(|errs| EditError::Invalid(LoadError::Invalid(errs)))?;
    let mut doc: toml_edit::DocumentMut = text.parse()?;
    let no_such_key = || EditError::NoSuchKey(id.to_string());
    let keys = doc
        .get_mut("keys")
        .and_then(|k| k.as_array_of_tables_mut())
        .ok_or_else(no_such_key)?;
    let record = keys
        .iter_mut()
        .find(|t| t.get("id").and_then(|v| v.as_str()) == Some(id))
        .ok_or_else(no_such_key)?;
    record.insert("disabled", toml_edit::value(true));
    record.insert(
        "revoked_at",
        toml_edit::value(humantime::format_rfc3339_seconds(SystemTime::now()).to_string()),
    );
    write_atomically(path, &doc.to_string())
}

fn write_atomically(path: &Path, text: &str) -> Result<(), EditError> {
    let tmp: PathBuf = path.with_extension("tmp-gatehouse");
    std::fs::write(&tmp, text)
        .and_then(|_| {
            if let Ok(meta) = std::fs::metadata(path) {
                std::fs::set_permissions(&tmp, meta.permissions())?;
            }
            std::fs::rename(&tmp, path)
        })
        .map_err(io_error("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_record_round_trips_and_verifies() {
        let k = generate(
            "acme",
            Some("pro"),
            &["orders:read".into()],
            Some(Duration::from_secs(3600)),
        )
        .unwrap();
        assert!(k.plain.starts_with(KEY_PREFIX));
        assert!(k.plain.len() >= KEY_PREFIX.len() + 43);
        let parsed = parse(Path::new("k.toml"), &record_toml(&k.record)).unwrap();
        assert_eq!(parsed[0].hash, hash_key(k.plain.as_bytes()));
        assert_eq!(parsed[0].consumer, "acme");
        assert_eq!(parsed[0].scopes, vec!["orders:read".to_string()]);
        assert!(parsed[0].expires_at.is_some());
    }

    #[test]
    fn empty_file_is_an_empty_set_and_errors_have_positions() {
        assert_eq!(parse(Path::new("k.toml"), "").unwrap(), vec![]);
        let errs = parse(
            Path::new("k.toml"),
            "[[keys]]\nid = \"a\"\nhash = \"nope\"\n",
        )
        .unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!((errs[0].line, errs[0].path.as_str()), (1, "keys[0]"));
        assert_eq!((errs[1].line, errs[1].path.as_str()), (3, "keys[0].hash"));
    }
}
