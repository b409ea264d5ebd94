//! The module layers stay one-directional: every `crate::…` reference in `src/` (in `use`
//! lines and inline paths alike, comments excluded) must point to a top-level module of the
//! same or a lower layer, and the references between modules of one layer must form no cycle.
//! Every top-level module must be placed in a layer here, so a new module is placed on purpose.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first (README "Architecture").
const LAYERS: &[(&str, &[&str])] = &[
    ("process primitives", &["clock", "signals"]),
    ("configuration", &["config"]),
    (
        "domain",
        &[
            "bounded",
            "routing",
            "forwarding",
            "grpc",
            "hygiene",
            "request_id",
            "tls",
            "trace",
            "auth",
            "ratelimit",
            "upstream",
            "refusal",
            "policy",
            "cache",
            "access_log",
        ],
    ),
    ("metrics registry", &["metrics"]),
    ("snapshot", &["snapshot"]),
    ("background services", &["services"]),
    ("serving", &["proxy", "admin"]),
    ("process", &["server", "cli", "explain"]),
];

/// One reference from a module to another: where it is written.
#[derive(Debug, Clone)]
struct Edge {
    to: String,
    at: String,
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

/// The top-level module a source file belongs to (`src/auth/jwt.rs` → `auth`).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a line of code refers to through `crate::`, grouped imports
/// (`use crate::{a::X, b::Y}`) included.
fn referenced(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
        rest = after;
    }
    out
}

/// Every module's references to other top-level modules.
fn graph(src: &Path) -> BTreeMap<String, Vec<Edge>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut g: BTreeMap<String, Vec<Edge>> = BTreeMap::new();
    for file in files {
        let Some(from) = top_module(src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read source");
        let edges = g.entry(from.clone()).or_default();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for to in referenced(code) {
                if to != from {
                    edges.push(Edge {
                        to,
                        at: format!("{}:{}", file.display(), n + 1),
                    });
                }
            }
        }
    }
    g
}

/// Every violation of the layering in `g`.
fn violations(g: &BTreeMap<String, Vec<Edge>>) -> Vec<String> {
    let mut problems = Vec::new();
    for module in g.keys() {
        if layer_of(module).is_none() {
            problems.push(format!(
                "top-level module `{module}` is in no layer (add it to LAYERS)"
            ));
        }
    }
    for (from, edges) in g {
        let Some(lf) = layer_of(from) else { continue };
        for e in edges {
            match layer_of(&e.to) {
                Some(lt) if lt > lf => problems.push(format!(
                    "{}: `{from}` ({}) uses `{}` ({}), a layer above it",
                    e.at, LAYERS[lf].0, e.to, LAYERS[lt].0
                )),
                _ => {}
            }
        }
    }
    // Cycles among modules of one layer.
    let same_layer: BTreeMap<&str, BTreeSet<&str>> = g
        .iter()
        .map(|(from, edges)| {
            let targets = edges
                .iter()
                .filter(|e| layer_of(&e.to).is_some() && layer_of(&e.to) == layer_of(from))
                .map(|e| e.to.as_str())
                .collect();
            (from.as_str(), targets)
        })
        .collect();
    if let Some(cycle) = find_cycle(&same_layer) {
        problems.push(format!(
            "dependency cycle between modules: {}",
            cycle.join(" -> ")
        ));
    }
    problems
}

fn find_cycle<'a>(g: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Option<Vec<&'a str>> {
    fn visit<'a>(
        n: &'a str,
        g: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(i) = path.iter().position(|p| *p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n);
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n);
        for next in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n);
        None
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        if let Some(c) = visit(n, g, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn modules_only_use_their_own_layer_or_lower_ones_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    assert!(g.contains_key("proxy") && g.contains_key("config"), "{g:?}");
    let problems = violations(&g);
    assert!(
        problems.is_empty(),
        "layering broken:\n{}",
        problems.join("\n")
    );
    for (_, mods) in LAYERS {
        for m in *mods {
            assert!(
                g.contains_key(*m),
                "LAYERS names `{m}`, which does not exist"
            );
        }
    }
}

#[test]
fn the_check_catches_an_upward_use_and_a_cycle() {
    let edge = |to: &str| Edge {
        to: to.to_string(),
        at: "x.rs:1".to_string(),
    };
    let mut g = BTreeMap::new();
    g.insert(
        "auth".to_string(),
        vec![edge("snapshot"), edge("ratelimit")],
    );
    g.insert("ratelimit".to_string(), vec![edge("auth")]);
    g.insert("snapshot".to_string(), vec![]);
    g.insert("newcomer".to_string(), vec![]);
    let problems = violations(&g);
    assert!(
        problems.iter().any(|p| p.contains("uses `snapshot`")),
        "{problems:?}"
    );
    assert!(problems.iter().any(|p| p.contains("cycle")), "{problems:?}");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("`newcomer` is in no layer")),
        "{problems:?}"
    );
    assert_eq!(
        referenced("use crate::{auth::Identity, config::X}; let y = crate::clock::now_ms();"),
        vec!["auth", "config", "clock"]
    );
}
