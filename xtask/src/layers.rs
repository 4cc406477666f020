//! `cargo xtask layers`: checks the house rules of `sg-user/src` that the
//! compiler does not — imports go one way between the layers (README
//! "Layout"), no import cycle between modules, no function longer than
//! [`MAX_FN_LINES`] without a `// long:` comment saying why.
//!
//! Plain text over rustfmt-formatted sources: a module is a file (`mod.rs`
//! is its folder), an import is any `crate::a::b` path outside comments,
//! resolved to the longest module it names.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};

/// Longest function body (lines, signature to closing brace) without a
/// `// long:` reason on the line above it.
const MAX_FN_LINES: usize = 120;

/// Which top-level modules each one may import (besides itself).
const ALLOWED: &[(&str, &[&str])] = &[
    ("sys", &[]),
    ("model", &[]),
    ("compile", &["model"]),
    ("kernel", &["sys", "compile", "model"]),
    ("agent", &["sys", "kernel", "compile", "model"]),
    ("lab", &["sys", "kernel", "agent", "compile", "model"]),
    ("harness", &["sys", "kernel", "agent", "compile", "model"]),
];

/// Module path (`agent::apply`) → file, for every module of `src`
/// (binaries under `bin/` are the top layer and import anything).
fn modules(src: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "bin") {
                    dirs.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src)?.with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            out.insert(parts.join("::"), path);
        }
    }
    Ok(out)
}

/// The code of a line without its `//` comment (doc links are not imports).
fn code(line: &str) -> &str {
    line.split("//").next().unwrap_or("")
}

/// The modules `text` names through `crate::` paths, including the grouped
/// form `use crate::{a::b, c::{d, e}}` (joined over lines first).
fn imports(text: &str, modules: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let joined: String = text.lines().map(code).collect::<Vec<_>>().join(" ");
    let mut out = BTreeSet::new();
    let mut resolve = |path: &[&str]| {
        for k in (1..=path.len()).rev() {
            let candidate = path[..k].join("::");
            if modules.contains_key(&candidate) {
                out.insert(candidate);
                return;
            }
        }
    };
    for (start, _) in joined.match_indices("crate::") {
        let rest = &joined[start + "crate::".len()..];
        let mut paths = Vec::new();
        use_tree(&mut rest.chars().peekable(), &mut Vec::new(), &mut paths);
        for path in paths {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            resolve(&path);
        }
    }
    out
}

/// Reads one use tree (`a::b`, `a::{b, c::{d}}`, `self`) after `crate::`,
/// pushing every full path it names.
fn use_tree(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    prefix: &mut Vec<String>,
    out: &mut Vec<Vec<String>>,
) {
    let depth = prefix.len();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() == Some(&'{') {
            chars.next();
            loop {
                use_tree(chars, prefix, out);
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                match chars.next() {
                    Some(',') => continue,
                    _ => break, // `}` or the end
                }
            }
            break;
        }
        let segment: String =
            std::iter::from_fn(|| chars.next_if(|c| c.is_alphanumeric() || *c == '_')).collect();
        if segment.is_empty() {
            break;
        }
        if segment != "self" {
            prefix.push(segment);
        }
        if chars.peek() == Some(&':') {
            chars.next();
            chars.next_if_eq(&':');
            continue;
        }
        break;
    }
    out.push(prefix.clone());
    prefix.truncate(depth);
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            for w in self.edges.get(v).into_iter().flatten() {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    let lw = self.low[w.as_str()];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.stack.contains(&w.as_str()) {
                    let iw = self.index[w.as_str()];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.out.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.out
}

/// Functions longer than [`MAX_FN_LINES`] without a `// long:` reason:
/// (first line, name, lines). rustfmt puts the closing brace of a function
/// at the indentation of its `fn`.
fn long_functions(text: &str) -> Vec<(usize, String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let Some(after) = [
            "pub fn ",
            "fn ",
            "pub(crate) fn ",
            "async fn ",
            "pub async fn ",
        ]
        .iter()
        .find_map(|p| trimmed.strip_prefix(p)) else {
            continue;
        };
        if trimmed.ends_with(';') {
            continue;
        }
        let closing = format!("{indent}}}");
        let Some(end) = lines[i + 1..].iter().position(|l| *l == closing) else {
            continue;
        };
        let length = end + 2;
        let explained = i > 0 && lines[i - 1].trim_start().starts_with("// long:");
        if length > MAX_FN_LINES && !explained {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push((i + 1, name, length));
        }
    }
    out
}

/// Runs every check on `<workspace>/sg-user/src`; fails listing what is wrong.
pub fn check(workspace: &Path) -> Result<()> {
    let src = workspace.join("sg-user/src");
    let modules = modules(&src)?;
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (module, path) in &modules {
        let text = std::fs::read_to_string(path)?;
        let top = module.split("::").next().unwrap_or("");
        for import in imports(&text, &modules) {
            let to = import.split("::").next().unwrap_or("");
            if to != top
                && !module.is_empty()
                && allowed.get(top).is_some_and(|ok| !ok.contains(&to))
            {
                problems.push(format!(
                    "{}: {module} imports {import}; the {top} layer may import only {:?}",
                    path.display(),
                    allowed[top]
                ));
            }
            if import != *module && !module.is_empty() {
                edges.entry(module.clone()).or_default().insert(import);
            }
        }
        for (line, name, length) in long_functions(&text) {
            problems.push(format!(
                "{}:{line}: fn {name} is {length} lines (limit {MAX_FN_LINES}): split it, or say why on a `// long:` line above it",
                path.display()
            ));
        }
    }
    for top in modules.keys().map(|m| m.split("::").next().unwrap_or("")) {
        if !top.is_empty() && !allowed.contains_key(top) {
            problems.push(format!(
                "sg-user/src/{top}: a layer xtask/src/layers.rs does not know; add it to ALLOWED"
            ));
        }
    }
    for cycle in cycles(&edges) {
        problems.push(format!("import cycle: {}", cycle.join(" ↔ ")));
    }
    problems.dedup();
    if !problems.is_empty() {
        bail!(
            "layers: {} problem(s)\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    let edge_count: usize = edges.values().map(BTreeSet::len).sum();
    println!(
        "layers: {} modules, {edge_count} imports between them, one way, no cycle, no function over {MAX_FN_LINES} lines",
        modules.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mods(names: &[&str]) -> BTreeMap<String, PathBuf> {
        names
            .iter()
            .map(|n| (n.to_string(), PathBuf::new()))
            .collect()
    }

    #[test]
    fn grouped_and_plain_imports_resolve_to_modules() {
        let m = mods(&["agent", "agent::lock", "kernel", "kernel::pins", "sys"]);
        let text = "use crate::{\n    agent::lock::{self, Wait},\n    kernel::pins::IfaceId,\n};\n\
                    // crate::sys is only mentioned here\nfn f() { crate::kernel::pins::ROOT; }";
        let found: Vec<String> = imports(text, &m).into_iter().collect();
        assert_eq!(found, ["agent::lock", "kernel::pins"]);
    }

    #[test]
    fn a_two_module_cycle_is_found_and_a_chain_is_not() {
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        edges.entry("a".into()).or_default().insert("b".into());
        edges.entry("b".into()).or_default().insert("c".into());
        assert!(cycles(&edges).is_empty());
        edges.entry("c".into()).or_default().insert("b".into());
        assert_eq!(cycles(&edges), [vec!["b".to_string(), "c".to_string()]]);
    }

    #[test]
    fn long_functions_need_a_reason() {
        let body = "    x();\n".repeat(MAX_FN_LINES);
        let text =
            format!("fn long() {{\n{body}}}\n\n// long: one table\nfn table() {{\n{body}}}\n");
        let found = long_functions(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].1, "long");
    }
}
