//! Reading identity fields out of JSON claims (a JWT's payload, an introspection answer): the
//! consumer, the tier, roles and scopes, keeping only values that are safe to send upstream as
//! header values.

use serde_json::Value;

/// A consumer or tier: a header-safe string, or a number written as text.
pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if header_safe(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Strings of a claim: an array of strings, or one space-separated string. Values unsafe in a
/// header (or holding the list separator `,`) are dropped.
pub fn strings(v: &Value) -> Vec<String> {
    let items: Vec<String> = match v {
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    items
        .into_iter()
        .filter(|s| header_safe(s) && !s.contains(','))
        .collect()
}

/// Printable ASCII, 1 to 256 bytes.
pub fn header_safe(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| (0x20..0x7f).contains(&b))
}
