//! A JSON document that is parsed only where it is changed: the top level is split into
//! members whose values stay raw text (validated, not built into trees), and only the members a
//! JSON Pointer walks through are split further. Untouched values are copied back as they were
//! (member order and formatting kept), so a transformation costs little more than one scan of
//! the body.

use std::fmt;

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::config::transform::Pointer;

/// A part of the document.
#[derive(Debug)]
pub enum Node {
    /// Unparsed JSON text (valid).
    Raw(Box<RawValue>),
    /// An object split into members, in document order.
    Object(Vec<(String, Node)>),
    /// An array split into elements.
    Array(Vec<Node>),
    /// A value written by a transformation.
    Value(Value),
}

struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

struct Elements(Vec<Box<RawValue>>);

impl<'de> Deserialize<'de> for Elements {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Elements;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Elements, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(8));
                while let Some(v) = seq.next_element::<Box<RawValue>>()? {
                    out.push(v);
                }
                Ok(Elements(out))
            }
        }
        d.deserialize_seq(V)
    }
}

/// Splits a raw value one level, when it is an object or an array.
fn split(raw: &RawValue) -> Option<Node> {
    let text = raw.get().trim_start();
    if text.starts_with('{') {
        let Members(m) = serde_json::from_str(raw.get()).ok()?;
        Some(Node::Object(
            m.into_iter().map(|(k, v)| (k, Node::Raw(v))).collect(),
        ))
    } else if text.starts_with('[') {
        let Elements(e) = serde_json::from_str(raw.get()).ok()?;
        Some(Node::Array(e.into_iter().map(Node::Raw).collect()))
    } else {
        None
    }
}

impl Node {
    /// Parses a document (any JSON value); `None` when it is not valid JSON.
    pub fn parse(bytes: &[u8]) -> Option<Node> {
        let raw: Box<RawValue> = serde_json::from_slice(bytes).ok()?;
        Some(split(&raw).unwrap_or(Node::Raw(raw)))
    }

    /// Makes sure a raw object or array is split one level.
    fn open(&mut self) {
        if let Node::Raw(raw) = self {
            if let Some(node) = split(raw) {
                *self = node;
            }
        }
    }

    /// The child at `token`, opened.
    fn child(&mut self, token: &str, create: bool) -> Option<&mut Node> {
        self.open();
        match self {
            Node::Object(members) => {
                let i = match members.iter().position(|(k, _)| k == token) {
                    Some(i) => i,
                    None if create => {
                        members.push((token.to_string(), Node::Object(Vec::new())));
                        members.len() - 1
                    }
                    None => return None,
                };
                let child = &mut members[i].1;
                child.open();
                Some(child)
            }
            Node::Array(items) => {
                let child = items.get_mut(token.parse::<usize>().ok()?)?;
                child.open();
                Some(child)
            }
            Node::Value(Value::Object(_)) | Node::Value(Value::Array(_)) => None,
            _ => None,
        }
    }

    /// The parent container of `p`'s target (creating objects on the way when `create`).
    fn parent(&mut self, p: &Pointer, create: bool) -> Option<&mut Node> {
        let (_, parents) = p.tokens.split_last()?;
        let mut cur = self;
        cur.open();
        for t in parents {
            cur = cur.child(t, create)?;
        }
        Some(cur)
    }

    /// Removes and returns the value at `p`.
    pub fn take(&mut self, p: &Pointer) -> Option<Node> {
        let last = p.tokens.last()?;
        match self.parent(p, false)? {
            Node::Object(members) => {
                let i = members.iter().position(|(k, _)| k == last)?;
                Some(members.remove(i).1)
            }
            Node::Array(items) => {
                let i = last.parse::<usize>().ok()?;
                (i < items.len()).then(|| items.remove(i))
            }
            _ => None,
        }
    }

    /// Writes `v` at `p`, creating intermediate objects; nothing happens where a value that
    /// is not a container is in the way.
    pub fn put(&mut self, p: &Pointer, v: Node) {
        let Some(last) = p.tokens.last() else { return };
        match self.parent(p, true) {
            Some(Node::Object(members)) => match members.iter_mut().find(|(k, _)| k == last) {
                Some((_, slot)) => *slot = v,
                None => members.push((last.clone(), v)),
            },
            Some(Node::Array(items)) => {
                if last == "-" {
                    items.push(v);
                } else if let Some(slot) = last.parse::<usize>().ok().and_then(|i| items.get_mut(i))
                {
                    *slot = v;
                }
            }
            _ => {}
        }
    }

    /// Writes the document out as JSON.
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            Node::Raw(raw) => out.extend_from_slice(raw.get().as_bytes()),
            Node::Value(v) => {
                let _ = serde_json::to_writer(&mut *out, v);
            }
            Node::Object(members) => {
                out.push(b'{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    let _ = serde_json::to_writer(&mut *out, k);
                    out.push(b':');
                    v.write(out);
                }
                out.push(b'}');
            }
            Node::Array(items) => {
                out.push(b'[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    v.write(out);
                }
                out.push(b']');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::transform::pointer;

    fn run(doc: &str, f: impl FnOnce(&mut Node)) -> String {
        let mut n = Node::parse(doc.as_bytes()).unwrap();
        f(&mut n);
        let mut out = Vec::new();
        n.write(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn untouched_parts_are_copied_as_they_were() {
        let doc = r#"{"b": [1, 2 ,3], "a": {"x": "y"}, "c": null}"#;
        assert_eq!(
            run(doc, |n| n
                .put(&pointer("/a/z").unwrap(), Node::Value(1.into()))),
            r#"{"b":[1, 2 ,3],"a":{"x":"y","z":1},"c":null}"#
        );
    }

    #[test]
    fn take_put_and_array_elements() {
        let doc = r#"{"list":[{"id":1},{"id":2}],"old":true}"#;
        let out = run(doc, |n| {
            let v = n.take(&pointer("/old").unwrap()).unwrap();
            n.put(&pointer("/new").unwrap(), v);
            n.take(&pointer("/list/0").unwrap());
            n.put(&pointer("/list/0/tag").unwrap(), Node::Value("t".into()));
            n.put(&pointer("/list/-").unwrap(), Node::Value(3.into()));
            assert!(n.take(&pointer("/missing/x").unwrap()).is_none());
        });
        assert_eq!(out, r#"{"list":[{"id":2,"tag":"t"},3],"new":true}"#);
    }

    #[test]
    fn invalid_json_is_refused_anywhere_in_the_document() {
        assert!(Node::parse(br#"{"a": {"b": tru}}"#).is_none());
        assert!(Node::parse(b"{\"a\": 1").is_none());
        assert!(Node::parse(b"[1, 2]").is_some());
    }
}
