//! A position-keeping reader over a parsed TOML document. `serde` stops at the first error; an
//! operator wants every problem at once, so the schema modules walk the spanned tree through
//! this reader, which records each problem with its key path and line:column and carries on.
//!
//! The accepted keys of a table are exactly the keys the schema asks for: [`Table::get`]
//! records every name it is asked, and when reading ends every key of the file that no schema
//! code asked for is reported as unknown (listing the ones that were asked). So a key can never
//! be accepted and silently ignored. Schema code therefore asks for every key of a table it
//! knows, also when another key of the table is invalid.

use std::cell::RefCell;
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::ConfigError;

/// A value in the document together with its key path.
#[derive(Clone)]
pub struct Node<'a, 'i> {
    value: &'a Spanned<DeValue<'i>>,
    path: String,
}

/// Collects problems while the schema modules read the document.
pub struct Reader<'s> {
    file: &'s Path,
    line_starts: Vec<usize>,
    src: &'s str,
    errors: Vec<(usize, ConfigError)>,
    /// Problems found in other files this one refers to (e.g. a keys file).
    foreign: Vec<ConfigError>,
    /// Schema tables read so far, checked for keys nobody asked for at the end.
    tracked: Vec<Tracked>,
    /// Problems that do not make the file invalid.
    warnings: Vec<ConfigError>,
}

/// The keys of one schema table and the names the schema asked it for.
struct Tracked {
    present: Vec<(String, Range<usize>, String)>,
    asked: Rc<RefCell<Vec<&'static str>>>,
}

/// A table read by a schema; fields are fetched by name, and every name fetched becomes an
/// accepted key of the table.
pub struct Table<'a, 'i> {
    map: &'a DeTable<'i>,
    span: Range<usize>,
    path: String,
    asked: Option<Rc<RefCell<Vec<&'static str>>>>,
}

impl<'a, 'i> Node<'a, 'i> {
    /// Wraps the document root.
    pub fn root(value: &'a Spanned<DeValue<'i>>) -> Self {
        Node {
            value,
            path: String::new(),
        }
    }
    /// The key path of this value.
    pub fn path(&self) -> &str {
        &self.path
    }
    /// The byte range of this value in the source.
    pub fn span(&self) -> Range<usize> {
        self.value.span()
    }
    /// The raw TOML value.
    pub fn value(&self) -> &'a DeValue<'i> {
        self.value.get_ref()
    }
}

impl<'s> Reader<'s> {
    /// A reader for `src`, read from `file`.
    pub fn new(file: &'s Path, src: &'s str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        Reader {
            file,
            line_starts,
            src,
            errors: Vec::new(),
            foreign: Vec::new(),
            tracked: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Resolves a path written in this file: relative paths are relative to the file's
    /// directory, so the meaning does not depend on the process's working directory.
    pub fn resolve(&self, text: &str) -> std::path::PathBuf {
        let p = Path::new(text);
        match self.file.parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }

    /// Takes over problems found in a file this one refers to; they are reported after this
    /// file's own.
    pub fn absorb(&mut self, errors: Vec<ConfigError>) {
        self.foreign.extend(errors);
    }

    /// A problem at `span`, with its position.
    fn located(&self, span: Range<usize>, path: &str, message: String) -> (usize, ConfigError) {
        let offset = span.start.min(self.src.len());
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let line_start = self.line_starts[line - 1];
        let column = self.src[line_start..offset].chars().count() + 1;
        (
            offset,
            ConfigError {
                file: self.file.to_path_buf(),
                line,
                column,
                path: path.to_string(),
                message,
            },
        )
    }

    /// Records a problem at `span`.
    pub fn error_at(&mut self, span: Range<usize>, path: &str, message: impl Into<String>) {
        let e = self.located(span, path, message.into());
        self.errors.push(e);
    }

    /// Records a warning about `node`: reported, but the file stays valid.
    pub fn warn(&mut self, node: &Node<'_, '_>, message: impl Into<String>) {
        let (_, w) = self.located(node.span(), &node.path, message.into());
        self.warnings.push(w);
    }

    /// Takes the warnings recorded so far.
    pub fn take_warnings(&mut self) -> Vec<ConfigError> {
        std::mem::take(&mut self.warnings)
    }

    /// Records a problem with `node`.
    pub fn error(&mut self, node: &Node<'_, '_>, message: impl Into<String>) {
        self.error_at(node.span(), &node.path, message);
    }

    /// How many problems have been recorded so far.
    pub fn error_count(&self) -> usize {
        self.errors.len() + self.foreign.len()
    }

    /// The problems found, in file order, unknown keys included.
    pub fn into_errors(mut self) -> Vec<ConfigError> {
        for t in std::mem::take(&mut self.tracked) {
            let asked = t.asked.borrow();
            for (key, span, path) in &t.present {
                if asked.iter().any(|a| a == key) {
                    continue;
                }
                let hint = if asked.is_empty() {
                    String::new()
                } else {
                    format!(" (expected one of: {})", asked.join(", "))
                };
                self.error_at(span.clone(), path, format!("unknown key \"{key}\"{hint}"));
            }
        }
        self.errors.sort_by_key(|(offset, _)| *offset);
        let mut out: Vec<ConfigError> = self.errors.into_iter().map(|(_, e)| e).collect();
        out.extend(self.foreign);
        out
    }

    /// Reads `node` as a schema table: its accepted keys are the ones the schema asks for
    /// (see the module documentation); any other key is reported when reading ends.
    pub fn table<'a, 'i>(&mut self, node: &Node<'a, 'i>) -> Option<Table<'a, 'i>> {
        let DeValue::Table(map) = node.value() else {
            self.type_error(node, "a table");
            return None;
        };
        let asked = Rc::new(RefCell::new(Vec::new()));
        self.tracked.push(Tracked {
            present: map
                .keys()
                .map(|k| {
                    let key: &str = k.get_ref();
                    (key.to_string(), k.span(), join(&node.path, key))
                })
                .collect(),
            asked: Rc::clone(&asked),
        });
        Some(Table {
            map,
            span: node.span(),
            path: node.path.clone(),
            asked: Some(asked),
        })
    }

    /// Reads `node` as a table whose keys are user-chosen names (no schema check).
    pub fn map<'a, 'i>(&mut self, node: &Node<'a, 'i>) -> Option<Table<'a, 'i>> {
        let DeValue::Table(map) = node.value() else {
            self.type_error(node, "a table");
            return None;
        };
        Some(Table {
            map,
            span: node.span(),
            path: node.path.clone(),
            asked: None,
        })
    }

    /// The entries of a table keyed by user-chosen names (upstreams, providers, tiers). Names
    /// that are not valid identifiers (see [`valid_name`]) are reported as `what` and skipped.
    pub fn named<'a, 'i>(
        &mut self,
        node: &Node<'a, 'i>,
        what: &str,
    ) -> Vec<(&'a str, Node<'a, 'i>)> {
        let Some(t) = self.map(node) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, span, value) in t.entries() {
            if valid_name(name) {
                out.push((name, value));
            } else {
                self.error_at(
                    span,
                    value.path(),
                    format!("{what} name must be 1-64 characters of A-Z a-z 0-9 _ - ."),
                );
            }
        }
        out
    }

    /// Reports that `node` has the wrong type.
    pub fn type_error(&mut self, node: &Node<'_, '_>, expected: &str) {
        let found = node.value().type_str();
        self.error(node, format!("expected {expected}, found {found}"));
    }

    /// Reads a string.
    pub fn string<'a>(&mut self, node: &Node<'a, '_>) -> Option<&'a str> {
        match node.value() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => {
                self.type_error(node, "a string");
                None
            }
        }
    }

    /// Reads a boolean.
    pub fn boolean(&mut self, node: &Node<'_, '_>) -> Option<bool> {
        match node.value() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.type_error(node, "a boolean");
                None
            }
        }
    }

    /// Reads an integer within `min..=max`.
    pub fn integer(&mut self, node: &Node<'_, '_>, min: i64, max: i64) -> Option<i64> {
        let DeValue::Integer(i) = node.value() else {
            self.type_error(node, "an integer");
            return None;
        };
        let digits = i.as_str().replace('_', "");
        let (negative, digits) = match digits.strip_prefix('-') {
            Some(rest) => (true, rest.to_string()),
            None => (false, digits.trim_start_matches('+').to_string()),
        };
        let parsed =
            i64::from_str_radix(&digits, i.radix())
                .ok()
                .map(|v| if negative { -v } else { v });
        match parsed {
            Some(v) if (min..=max).contains(&v) => Some(v),
            _ => {
                self.error(node, format!("must be an integer from {min} to {max}"));
                None
            }
        }
    }

    /// Reads a humantime duration such as `"250ms"` or `"30s"`; zero is refused.
    pub fn duration(&mut self, node: &Node<'_, '_>) -> Option<Duration> {
        let text = self.string(node)?;
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.error(node, "duration must be greater than zero");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    node,
                    format!(
                        "invalid duration \"{text}\": {e} (examples: \"500ms\", \"30s\", \"2m\")"
                    ),
                );
                None
            }
        }
    }

    /// Reads a size: an integer number of bytes, or a string such as `"8KiB"`, `"10MiB"`,
    /// `"512B"` (units B, KiB, MiB, GiB; KB, MB, GB are powers of 1000); at most `max` bytes.
    pub fn size(&mut self, node: &Node<'_, '_>, max: u64) -> Option<u64> {
        let parsed = match node.value() {
            DeValue::Integer(_) => {
                return self
                    .integer(node, 0, max.min(i64::MAX as u64) as i64)
                    .map(|v| v as u64)
            }
            DeValue::String(s) => parse_size(s),
            _ => {
                self.type_error(node, "a size (bytes, or a string like \"8KiB\")");
                return None;
            }
        };
        match parsed {
            Some(v) if v <= max => Some(v),
            Some(_) => {
                self.error(node, format!("must be at most {max} bytes"));
                None
            }
            None => {
                let text = node.value().as_str().unwrap_or_default();
                self.error(
                    node,
                    format!("invalid size \"{text}\" (examples: \"512B\", \"8KiB\", \"10MiB\")"),
                );
                None
            }
        }
    }

    /// Reads a regex and compiles it (once, at load).
    pub fn regex(&mut self, node: &Node<'_, '_>) -> Option<regex::Regex> {
        let text = self.string(node)?;
        match regex::Regex::new(text) {
            Ok(re) => Some(re),
            Err(e) => {
                let detail = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                self.error(node, format!("invalid regex \"{text}\": {detail}"));
                None
            }
        }
    }

    /// Reads an array; each element comes with its indexed path.
    pub fn array<'a, 'i>(&mut self, node: &Node<'a, 'i>) -> Option<Vec<Node<'a, 'i>>> {
        let DeValue::Array(items) = node.value() else {
            self.type_error(node, "an array");
            return None;
        };
        Some(
            items
                .iter()
                .enumerate()
                .map(|(i, value)| Node {
                    value,
                    path: format!("{}[{i}]", node.path),
                })
                .collect(),
        )
    }

    /// Reads an array of strings, reporting each non-string element.
    pub fn strings<'a>(
        &mut self,
        node: &Node<'a, '_>,
    ) -> Option<Vec<(&'a str, Range<usize>, String)>> {
        let DeValue::Array(items) = node.value() else {
            self.type_error(node, "an array of strings");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", node.path);
            match item.get_ref() {
                DeValue::String(s) => out.push((s.as_ref(), item.span(), path)),
                other => {
                    ok = false;
                    self.error_at(
                        item.span(),
                        &path,
                        format!("expected a string, found {}", other.type_str()),
                    );
                }
            }
        }
        ok.then_some(out)
    }
}

impl<'a, 'i> Table<'a, 'i> {
    /// The field `key`, if present. Asking makes `key` an accepted key of this table.
    pub fn get(&self, key: &'static str) -> Option<Node<'a, 'i>> {
        if let Some(asked) = &self.asked {
            let mut asked = asked.borrow_mut();
            if !asked.contains(&key) {
                asked.push(key);
            }
        }
        let (_, value) = self.map.iter().find(|(k, _)| k.get_ref().as_ref() == key)?;
        Some(Node {
            value,
            path: join(&self.path, key),
        })
    }

    /// The field `key`; reports it missing when absent.
    pub fn require(&self, r: &mut Reader<'_>, key: &'static str) -> Option<Node<'a, 'i>> {
        let found = self.get(key);
        if found.is_none() {
            r.error_at(
                self.span.clone(),
                &self.path,
                format!("missing required key \"{key}\""),
            );
        }
        found
    }

    /// The entries in file order, as (key, key position, value node), for tables keyed by
    /// user-chosen names.
    pub fn entries(&self) -> Vec<(&'a str, Range<usize>, Node<'a, 'i>)> {
        self.map
            .iter()
            .map(|(k, v)| {
                let node = Node {
                    value: v,
                    path: join(&self.path, k.get_ref()),
                };
                (k.get_ref().as_ref(), k.span(), node)
            })
            .collect()
    }

    /// This table's key path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// This table's position.
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }
}

/// Parses `"8KiB"`-style sizes into bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.replace('_', "").parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// Whether `name` is usable as an upstream, route, provider or tier name (names become metric
/// labels and log fields).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn join(base: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (base.is_empty(), plain) {
        (true, true) => key.to_string(),
        (true, false) => format!("\"{key}\""),
        (false, true) => format!("{base}.{key}"),
        (false, false) => format!("{base}.\"{key}\""),
    }
}
