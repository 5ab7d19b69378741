//! The crate's modules import one way (docs/architecture.md, "Modules"):
//! read from the `crate::` and `super::` paths in `src/`, no file reaches
//! itself again through the others (no import cycle, in the engine or in
//! a host), and no file of the engine reaches up into a host (`cli/`,
//! `agent/`). A text
//! reading, as `../shared/tools/module-cycles` does it: macros and
//! re-exports are not followed; test modules do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;

type Module = Vec<String>;

/// Every library source file by its module path (`lua/mod.rs` is `lua`).
fn files(src: &Path) -> BTreeMap<Module, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(src, &mut paths);
    let mut files = BTreeMap::new();
    for path in paths {
        let rel = path.strip_prefix(src).unwrap().with_extension("");
        let mut module: Module = rel
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
            module.pop();
        }
        // The binaries are crates of their own.
        if module.first().is_some_and(|m| m == "bin" || m == "main") {
            continue;
        }
        files.insert(module, path);
    }
    files
}

/// The files each file imports.
fn edges(files: &BTreeMap<Module, PathBuf>) -> BTreeMap<Module, BTreeSet<Module>> {
    let path = Regex::new(r"\b(crate|super(?:::super)*)((?:::\w+)+)").unwrap();
    let group = Regex::new(r"\b(crate|super(?:::super)*)((?:::\w+)*)::\{([^{}]*)\}").unwrap();
    let submodule = Regex::new(r"(?m)^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;").unwrap();
    let comment = Regex::new(r"//[^\n]*").unwrap();
    let resolve = |path: Module| -> Option<Module> {
        (1..=path.len())
            .rev()
            .map(|k| path[..k].to_vec())
            .find(|p| files.contains_key(p))
    };
    let mut edges = BTreeMap::new();
    for (module, file) in files {
        let text = std::fs::read_to_string(file).unwrap();
        let text = comment.replace_all(&text, "");
        let text = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap()
            .to_string();
        let mut paths: Vec<(String, String)> = Vec::new();
        for m in path.captures_iter(&text) {
            paths.push((m[1].to_string(), m[2].to_string()));
        }
        for m in group.captures_iter(&text) {
            for part in m[3].split(',') {
                let part = part.split(" as ").next().unwrap().trim();
                if !part.is_empty() && part != "self" {
                    paths.push((m[1].to_string(), format!("{}::{part}", &m[2])));
                }
            }
        }
        let mut out = BTreeSet::new();
        for m in submodule.captures_iter(&text) {
            let mut child = module.clone();
            child.push(m[1].to_string());
            if files.contains_key(&child) {
                out.insert(child);
            }
        }
        for (head, tail) in paths {
            let parts: Vec<String> = tail
                .trim_matches(':')
                .split("::")
                .map(String::from)
                .collect();
            let mut base = if head == "crate" {
                Vec::new()
            } else {
                module[..module.len().saturating_sub(head.matches("super").count())].to_vec()
            };
            base.extend(parts);
            if let Some(target) = resolve(base)
                && &target != module
                && !target.is_empty()
            {
                out.insert(target);
            }
        }
        edges.insert(module.clone(), out);
    }
    edges
}

fn is_host(module: &Module) -> bool {
    matches!(module.first().map(String::as_str), Some("cli" | "agent"))
}

/// The files that reach `from` again through the others.
fn cycle_through(edges: &BTreeMap<Module, BTreeSet<Module>>, from: &Module) -> Option<Vec<Module>> {
    // Depth-first from `from`'s imports, remembering the way back.
    let mut came_from: BTreeMap<Module, Module> = BTreeMap::new();
    let mut stack: Vec<Module> = vec![from.clone()];
    while let Some(at) = stack.pop() {
        for next in edges.get(&at).into_iter().flatten() {
            if next == from {
                let mut way = vec![at.clone()];
                while let Some(back) = came_from.get(way.last().unwrap()) {
                    way.push(back.clone());
                }
                way.reverse();
                return Some(way);
            }
            if !came_from.contains_key(next) {
                came_from.insert(next.clone(), at.clone());
                stack.push(next.clone());
            }
        }
    }
    None
}

#[test]
fn modules_import_one_way_and_the_engine_never_up_into_a_host() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = files(&src);
    let edges = edges(&files);
    let name = |m: &Module| files[m].strip_prefix(&src).unwrap().display().to_string();
    let mut problems = Vec::new();
    for (module, imports) in &edges {
        // The crate root declares every module, the hosts too.
        if module.is_empty() {
            continue;
        }
        for up in imports.iter().filter(|m| is_host(m) && !is_host(module)) {
            problems.push(format!(
                "{} imports the host module {}",
                name(module),
                name(up)
            ));
        }
        if let Some(way) = cycle_through(&edges, module) {
            let way: Vec<String> = way.iter().map(name).collect();
            problems.push(format!(
                "an import cycle: {} -> {}",
                way.join(" -> "),
                name(module)
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
