//! Transformation settings of a route: `[routes.request_headers]` / `[routes.response_headers]`
//! (`set`, `add`, `remove`), `rewrite = { regex, to }`, and `[routes.request_body]` /
//! `[routes.response_body]` (JSON Pointer `set`, `remove`, `rename`, `max_size`). Templates
//! (`"${consumer}"`) are parsed here, once; an unknown variable is a configuration error.

use regex::Regex;
use serde::{Serialize, Serializer};

use super::reader::{Node, Reader};
use super::ser;
use http::HeaderName;

/// A value a template can insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    /// `${request_id}`
    RequestId,
    /// `${client_ip}` (after trusted-proxy resolution)
    ClientIp,
    /// `${route}`
    Route,
    /// `${upstream}`
    Upstream,
    /// `${consumer}` (empty when unauthenticated)
    Consumer,
    /// `${tier}`: the rate-limit tier applied, else the identity's tier
    Tier,
    /// `${auth_method}`: `jwt:NAME` or `api_key:NAME`
    AuthMethod,
    /// `${header.NAME}`: the client's header, raw
    Header(HeaderName),
    /// `${query.NAME}`: the first query parameter NAME, raw (not percent-decoded)
    Query(String),
    /// `${path}`: the normalised path, without the query, before any rewrite
    Path,
}

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Bytes copied as they are.
    Literal(String),
    /// A variable.
    Var(Var),
}

/// A parsed template (rendered as its source text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The pieces, in order.
    pub pieces: Vec<Piece>,
    source: String,
}

impl Serialize for Template {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// The names `${...}` may use.
pub const VARIABLES: &str =
    "request_id, client_ip, route, upstream, consumer, tier, auth_method, path, header.NAME, query.NAME";

fn var(name: &str) -> Option<Var> {
    Some(match name {
        "request_id" => Var::RequestId,
        "client_ip" => Var::ClientIp,
        "route" => Var::Route,
        "upstream" => Var::Upstream,
        "consumer" => Var::Consumer,
        "tier" => Var::Tier,
        "auth_method" => Var::AuthMethod,
        "path" => Var::Path,
        _ => {
            if let Some(h) = name.strip_prefix("header.") {
                return HeaderName::from_bytes(h.as_bytes()).ok().map(Var::Header);
            }
            let q = name.strip_prefix("query.")?;
            return (!q.is_empty()).then(|| Var::Query(q.to_string()));
        }
    })
}

/// Parses `text` into a template; the error names what is wrong.
pub fn template(text: &str) -> Result<Template, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            pieces.push(Piece::Literal(rest[..start].to_string()));
        }
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed ${{ in \"{text}\""))?;
        let name = &after[..end];
        let v = var(name)
            .ok_or_else(|| format!("unknown variable ${{{name}}} (known: {VARIABLES})"))?;
        pieces.push(Piece::Var(v));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Literal(rest.to_string()));
    }
    Ok(Template {
        pieces,
        source: text.to_string(),
    })
}

/// Header changes for requests or responses.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct HeaderTransform {
    /// Replaced (or added when absent).
    #[serde(serialize_with = "named")]
    pub set: Vec<(HeaderName, Template)>,
    /// Appended, keeping existing values.
    #[serde(serialize_with = "named")]
    pub add: Vec<(HeaderName, Template)>,
    /// Removed.
    #[serde(serialize_with = "names")]
    pub remove: Vec<HeaderName>,
}

fn named<S: Serializer>(items: &[(HeaderName, Template)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(items.iter().map(|(k, v)| (k.as_str(), v)))
}

fn names<S: Serializer>(items: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(items.iter().map(HeaderName::as_str))
}

/// Headers no transform may touch: framing and connection management (the gateway owns them)
/// and the identity headers (set by authentication only).
const UNTOUCHABLE: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "x-consumer-id",
    "x-consumer-tier",
    "x-auth-method",
    "x-auth-roles",
    "x-auth-scopes",
    "x-client-cert-subject",
];

/// Reads `[routes.request_headers]` or `[routes.response_headers]`.
pub fn read_headers(r: &mut Reader<'_>, node: &Node<'_, '_>) -> Option<HeaderTransform> {
    let t = r.table(node)?;
    let before = r.error_count();
    let mut out = HeaderTransform::default();
    for (key, list) in [("set", &mut out.set), ("add", &mut out.add)] {
        let Some(n) = t.get(key) else { continue };
        let Some(map) = r.map(&n) else { continue };
        for (name, span, value) in map.entries() {
            let Some(header) = header_name(r, name, span, value.path()) else {
                continue;
            };
            let Some(text) = r.string(&value) else {
                continue;
            };
            match template(text) {
                Ok(tpl) => {
                    // Variables render valid header bytes; the literal parts must be too.
                    let literal_ok = tpl.pieces.iter().all(|p| match p {
                        Piece::Literal(l) => http::HeaderValue::from_str(l).is_ok(),
                        Piece::Var(_) => true,
                    });
                    if literal_ok {
                        list.push((header, tpl));
                    } else {
                        r.error(&value, "invalid header value");
                    }
                }
                Err(e) => r.error(&value, e),
            }
        }
    }
    if let Some(n) = t.get("remove") {
        if let Some(items) = r.strings(&n) {
            for (name, span, path) in items {
                if let Some(h) = header_name(r, name, span, &path) {
                    out.remove.push(h);
                }
            }
        }
    }
    (r.error_count() == before).then_some(out)
}

fn header_name(
    r: &mut Reader<'_>,
    name: &str,
    span: std::ops::Range<usize>,
    path: &str,
) -> Option<HeaderName> {
    let Ok(h) = HeaderName::from_bytes(name.as_bytes()) else {
        r.error_at(span, path, format!("invalid header name \"{name}\""));
        return None;
    };
    if UNTOUCHABLE.contains(&h.as_str()) {
        r.error_at(
            span,
            path,
            format!("{name} is managed by the gateway and cannot be transformed"),
        );
        return None;
    }
    Some(h)
}

/// A path rewrite: the regex runs on the normalised path; `to` refers to its groups.
#[derive(Debug, Clone, Serialize)]
pub struct Rewrite {
    /// The pattern.
    #[serde(serialize_with = "ser::regex")]
    pub regex: Regex,
    /// The replacement, with `${name}` or `${1}` for groups.
    pub to: String,
}

impl PartialEq for Rewrite {
    fn eq(&self, other: &Self) -> bool {
        self.regex.as_str() == other.regex.as_str() && self.to == other.to
    }
}

/// Reads `rewrite = { regex, to }`.
pub fn read_rewrite(r: &mut Reader<'_>, node: &Node<'_, '_>) -> Option<Rewrite> {
    let t = r.table(node)?;
    let regex_node = t.require(r, "regex");
    let to_node = t.require(r, "to");
    let regex = regex_node.as_ref().and_then(|n| r.regex(n));
    let to = to_node
        .as_ref()
        .and_then(|n| r.string(n).map(|s| (s.to_string(), n.clone())));
    let (regex, (to, to_node)) = (regex?, to?);
    if !to.starts_with('/') {
        r.error(&to_node, "the rewritten path must start with /");
        return None;
    }
    // Every ${group} must exist in the regex.
    let mut rest = to.as_str();
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            r.error(&to_node, "unclosed ${ in to");
            return None;
        };
        let group = &after[..end];
        let known = match group.parse::<usize>() {
            Ok(i) => i < regex.captures_len(),
            Err(_) => regex.capture_names().flatten().any(|n| n == group),
        };
        if !known {
            r.error(
                &to_node,
                format!("${{{group}}} is not a group of the regex"),
            );
            return None;
        }
        rest = &after[end + 1..];
    }
    Some(Rewrite { regex, to })
}

/// A JSON Pointer (RFC 6901), as reference tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    /// The unescaped tokens.
    pub tokens: Vec<String>,
    source: String,
}

impl Serialize for Pointer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// Parses a JSON Pointer; the whole document (`""`) is not a valid target here.
pub fn pointer(text: &str) -> Option<Pointer> {
    let rest = text.strip_prefix('/')?;
    let mut tokens = Vec::new();
    for raw in rest.split('/') {
        // ~ must be followed by 0 or 1.
        let mut token = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '~' {
                match chars.next() {
                    Some('0') => token.push('~'),
                    Some('1') => token.push('/'),
                    _ => return None,
                }
            } else {
                token.push(c);
            }
        }
        tokens.push(token);
    }
    Some(Pointer {
        tokens,
        source: text.to_string(),
    })
}

/// A value `set` writes into a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyValue {
    /// A string, from a template.
    Text(Template),
    /// A number, boolean or other JSON literal written as TOML.
    Json(serde_json::Value),
}

impl Serialize for BodyValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            BodyValue::Text(t) => t.serialize(s),
            BodyValue::Json(v) => v.serialize(s),
        }
    }
}

/// Changes to a JSON body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BodyTransform {
    /// Values written (intermediate objects are created).
    pub set: Vec<(Pointer, BodyValue)>,
    /// Members removed.
    pub remove: Vec<Pointer>,
    /// Members moved: (from, to).
    pub rename: Vec<(Pointer, Pointer)>,
    /// Largest body transformed, in bytes (requests above it get 413; responses pass through).
    pub max_size: u64,
}

/// Largest `max_size`.
pub const MAX_BODY_TRANSFORM: u64 = 64 * 1024 * 1024;

/// Reads `[routes.request_body]` or `[routes.response_body]`.
pub fn read_body(r: &mut Reader<'_>, node: &Node<'_, '_>) -> Option<BodyTransform> {
    let t = r.table(node)?;
    let before = r.error_count();
    let mut out = BodyTransform {
        set: Vec::new(),
        remove: Vec::new(),
        rename: Vec::new(),
        max_size: 1024 * 1024,
    };
    let ptr = |r: &mut Reader<'_>, text: &str, span: std::ops::Range<usize>, path: &str| {
        let p = pointer(text);
        if p.is_none() {
            r.error_at(
                span,
                path,
                format!("invalid JSON Pointer \"{text}\" (RFC 6901, e.g. \"/meta/source\")"),
            );
        }
        p
    };
    if let Some(n) = t.get("set") {
        if let Some(map) = r.map(&n) {
            for (key, span, value) in map.entries() {
                let Some(p) = ptr(r, key, span, value.path()) else {
                    continue;
                };
                use toml::de::DeValue;
                let v = match value.value() {
                    DeValue::String(s) => match template(s) {
                        Ok(tpl) => Some(BodyValue::Text(tpl)),
                        Err(e) => {
                            r.error(&value, e);
                            None
                        }
                    },
                    DeValue::Boolean(b) => Some(BodyValue::Json((*b).into())),
                    DeValue::Integer(_) => r
                        .integer(&value, i64::MIN, i64::MAX)
                        .map(|i| BodyValue::Json(i.into())),
                    DeValue::Float(f) => f
                        .as_str()
                        .replace('_', "")
                        .parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                        .map(|n| BodyValue::Json(n.into())),
                    _ => {
                        r.type_error(&value, "a string, number or boolean");
                        None
                    }
                };
                if let Some(v) = v {
                    out.set.push((p, v));
                }
            }
        }
    }
    if let Some(n) = t.get("remove") {
        if let Some(items) = r.strings(&n) {
            for (text, span, path) in items {
                if let Some(p) = ptr(r, text, span, &path) {
                    out.remove.push(p);
                }
            }
        }
    }
    if let Some(n) = t.get("rename") {
        if let Some(map) = r.map(&n) {
            for (key, span, value) in map.entries() {
                let from = ptr(r, key, span, value.path());
                let to = r
                    .string(&value)
                    .and_then(|text| ptr(r, text, value.span(), value.path()));
                if let (Some(from), Some(to)) = (from, to) {
                    out.rename.push((from, to));
                }
            }
        }
    }
    if let Some(n) = t.get("max_size") {
        match r.size(&n, MAX_BODY_TRANSFORM) {
            Some(v) if v > 0 => out.max_size = v,
            Some(_) => r.error(&n, "max_size must be greater than zero"),
            None => {}
        }
    }
    (r.error_count() == before).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_and_unknown_variables_are_refused() {
        let t = template("user ${consumer} via ${header.x-client}!").unwrap();
        assert_eq!(t.pieces.len(), 5);
        assert!(matches!(t.pieces[1], Piece::Var(Var::Consumer)));
        assert!(template("${nope}")
            .unwrap_err()
            .contains("unknown variable ${nope}"));
        assert!(template("${consumer").is_err());
    }

    #[test]
    fn pointers_unescape() {
        assert_eq!(pointer("/a~1b/c~0d").unwrap().tokens, vec!["a/b", "c~d"]);
        assert!(pointer("a").is_none());
        assert!(pointer("/a~2").is_none());
    }
}
