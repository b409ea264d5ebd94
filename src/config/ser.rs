//! Serialisers for the configuration's typed values that have no `Serialize` of their own (or
//! must not use it): durations in humantime form, HTTP names and values, regexes, and URLs
//! whose password is redacted. Used by `#[serde(serialize_with)]` for `GET /admin/config`.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use regex::Regex;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::Serializer;

/// A duration as humantime text (`"30s"`, `"1m 30s"`).
pub fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// An optional duration as humantime text or `null`.
pub fn opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => duration(d, s),
        None => s.serialize_none(),
    }
}

/// A header name.
pub fn header_name<S: Serializer>(h: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(h.as_str())
}

/// Header names, as a list of their lowercase texts.
pub fn header_names<S: Serializer>(h: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(h.iter().map(HeaderName::as_str))
}

/// Header name/value pairs as a JSON object.
pub fn headers<S: Serializer>(h: &[(HeaderName, HeaderValue)], s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(h.len()))?;
    for (k, v) in h {
        map.serialize_entry(k.as_str(), v.to_str().unwrap_or(""))?;
    }
    map.end()
}

/// A list of methods.
pub fn methods<S: Serializer>(m: &[Method], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(m.len()))?;
    for method in m {
        seq.serialize_element(method.as_str())?;
    }
    seq.end()
}

/// An optional list of methods (`null`: every method).
pub fn opt_methods<S: Serializer>(m: &Option<Vec<Method>>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => methods(m, s),
        None => s.serialize_none(),
    }
}

/// A regex as its pattern.
pub fn regex<S: Serializer>(re: &Regex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(re.as_str())
}

/// The number of items instead of the items (API key records: hashes are not shown).
pub fn count<T, S: Serializer>(items: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(items.len() as u64)
}

/// A URL with any password replaced by `<redacted>` (Redis URLs may carry one).
pub fn redacted_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        Ok(_) => url.to_string(),
        Err(_) => "<unparsable>".to_string(),
    }
}

/// A URL, password redacted.
pub fn url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redacted_url(url))
}

/// An optional URL, password redacted.
pub fn opt_url<S: Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => s.serialize_some(&redacted_url(u)),
        None => s.serialize_none(),
    }
}

/// URLs, passwords redacted.
pub fn urls<S: Serializer>(urls: &[String], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(urls.len()))?;
    for u in urls {
        seq.serialize_element(&redacted_url(u))?;
    }
    seq.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redacted_url("redis://:s3cret@127.0.0.1:6379/0"),
            "redis://:redacted@127.0.0.1:6379/0"
        );
        assert_eq!(
            redacted_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
