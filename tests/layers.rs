//! The layers of docs/ARCHITECTURE.md, checked on the source: each module
//! imports only from its own layer's children or from layers below it, the
//! sans-IO core names no async crate and reads no clock, and the built-in
//! protocols and handlers use the public API only.
//!
//! ```text
//! binary      src/main.rs, src/cli*
//! protocols   src/protocols*, src/handlers.rs, src/signals.rs, src/loader.rs, src/cluster*
//! context     src/context*
//! runtime     src/runtime*
//! config      src/config*
//! proto       src/proto*        (with src/common.rs and src/error.rs beside it)
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The layer of each top-level module (higher may import lower).
const LAYERS: &[(&str, u8)] = &[
    ("common", 0),
    ("error", 0),
    ("proto", 0),
    ("config", 1),
    ("runtime", 2),
    ("context", 3),
    ("protocols", 4),
    ("handlers", 4),
    ("signals", 4),
    ("loader", 4),
    ("cluster", 4),
    ("fuzz", 4),
    ("cli", 5),
];

/// The crate root's public names, by the layer that defines them: what
/// `crate::Name` means to the layer check.
const ROOT: &[(&str, u8)] = &[
    ("Message", 0),
    ("CloseCode", 0),
    ("CloseReason", 0),
    ("ClosedBy", 0),
    ("Reject", 0),
    ("Request", 0),
    ("Response", 0),
    ("Error", 0),
    ("ConfigError", 0),
    ("SendError", 0),
    ("extension", 0),
    ("Config", 1),
    ("ConfigBuilder", 1),
    ("VhostConfig", 1),
    ("VhostBuilder", 1),
    ("Limits", 1),
    ("Mount", 1),
    ("MountTarget", 1),
    ("HttpTarget", 1),
    ("Options", 1),
    ("OverflowPolicy", 1),
    ("run", 2),
    ("transport", 2),
    ("Context", 3),
    ("ContextHandle", 3),
    ("Protocol", 3),
    ("HttpHandler", 3),
    ("SessionHandle", 3),
    ("SessionId", 3),
    ("Vhost", 3),
    ("Wake", 3),
    ("Drain", 3),
    ("DrainReport", 3),
    ("Executors", 3),
    ("LocalLoop", 3),
    ("LoopKind", 3),
    ("SharedLoop", 3),
    ("Reconfigured", 3),
    ("metrics", 4),
    ("pubsub", 3),
    ("http", 4),
    ("ProtocolRegistry", 4),
    ("load_toml", 4),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/context/vhost.rs` →
/// `context`), or `None` for the crate root and the binary.
fn top_module(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).expect("under src");
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.trim_end_matches(".rs").to_owned();
    (name != "lib" && name != "main").then_some(name)
}

/// The code of a file without comments and string literals' contents (so
/// that docs mentioning `crate::` paths do not count), and without its unit
/// tests (`#[cfg(test)] mod tests`, last in a file by convention), which may
/// use any layer to build their fixtures.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut in_str = false;
        let mut prev = ' ';
        for c in line.chars() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
                out.push('"');
            } else if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// The first path segment after every `crate::` (also inside `crate::{..}`).
fn crate_imports(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // Top-level items of the group.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push(first_ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            found.push(first_ident(&item));
        } else {
            found.push(first_ident(after));
        }
        rest = &rest[i + 1..];
    }
    found.retain(|s| !s.is_empty());
    found
}

fn first_ident(s: &str) -> String {
    s.trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

fn layer_of_module(name: &str) -> Option<u8> {
    LAYERS.iter().find(|(n, _)| *n == name).map(|(_, l)| *l)
}

/// The layer a `crate::NAME` path points into.
fn layer_of_import(name: &str) -> Option<u8> {
    layer_of_module(name).or_else(|| ROOT.iter().find(|(n, _)| *n == name).map(|(_, l)| *l))
}

#[test]
fn every_module_imports_only_downward() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut violations = Vec::new();
    let mut unknown = Vec::new();
    for path in &files {
        let Some(top) = top_module(path) else {
            continue;
        };
        let Some(mine) = layer_of_module(&top) else {
            unknown.push(format!("{} (module {top} has no layer)", path.display()));
            continue;
        };
        let text = fs::read_to_string(path).expect("read");
        for import in crate_imports(&code(&text)) {
            if import == top || import == "testing" {
                continue;
            }
            match layer_of_import(&import) {
                Some(theirs) if theirs <= mine => {}
                Some(theirs) => violations.push(format!(
                    "{}: {top} (layer {mine}) imports crate::{import} (layer {theirs})",
                    path.strip_prefix(src()).unwrap().display()
                )),
                None => unknown.push(format!(
                    "{}: crate::{import} is in no layer",
                    path.strip_prefix(src()).unwrap().display()
                )),
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "unknown layers:\n{}",
        unknown.join("\n")
    );
    assert!(
        violations.is_empty(),
        "imports that go up a layer:\n{}",
        violations.join("\n")
    );
}

#[test]
fn modules_of_one_layer_do_not_import_each_other_in_a_cycle() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut edges: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for path in &files {
        let Some(top) = top_module(path) else {
            continue;
        };
        let text = fs::read_to_string(path).expect("read");
        for import in crate_imports(&code(&text)) {
            if import != top && layer_of_module(&import).is_some() {
                edges.entry(top.clone()).or_default().push(import);
            }
        }
    }
    for (a, targets) in &edges {
        for b in targets {
            let back = edges.get(b).is_some_and(|t| t.contains(a));
            assert!(!back, "{a} and {b} import each other");
        }
    }
}

#[test]
fn the_sans_io_core_names_no_async_crate_and_reads_no_clock() {
    let mut files = Vec::new();
    rust_files(&src().join("proto"), &mut files);
    files.push(src().join("proto.rs"));
    for path in files {
        let text = fs::read_to_string(&path).expect("read");
        for banned in [
            "async_io",
            "async_executor",
            "async_tungstenite",
            "futures_lite",
            "futures_util",
            "Instant::now(",
            "SystemTime::now(",
            "std::net::TcpStream",
            "std::thread",
        ] {
            assert!(
                !text.contains(banned),
                "{} mentions {banned}",
                path.display()
            );
        }
    }
}

#[test]
fn built_in_protocols_and_handlers_use_the_public_api_only() {
    let mut files = vec![src().join("protocols.rs"), src().join("handlers.rs")];
    rust_files(&src().join("protocols"), &mut files);
    for path in files {
        let text = code(&fs::read_to_string(&path).expect("read"));
        for import in crate_imports(&text) {
            let public = ROOT.iter().any(|(n, _)| *n == import)
                || ["common", "protocols", "handlers", "config"].contains(&import.as_str());
            assert!(
                public,
                "{} reaches into crate::{import}",
                path.strip_prefix(src()).unwrap().display()
            );
        }
    }
}
