//! The benchmark generator (bench/gen.py) must give every tool the same
//! work: the piper.lua (read back through `piper graph`), the Makefile, the
//! build.ninja and the justfile have the same steps and the same edges.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::harness::PIPER;

type Edges = BTreeSet<(String, String)>;

fn edges_from_rules(
    text: &str,
    rule: impl Fn(&str) -> Option<(String, Vec<String>)>,
) -> (BTreeSet<String>, Edges) {
    let mut steps = BTreeSet::new();
    let mut edges = Edges::new();
    for line in text.lines() {
        if let Some((name, deps)) = rule(line) {
            for d in deps {
                edges.insert((d, name.clone()));
            }
            steps.insert(name);
        }
    }
    (steps, edges)
}

fn make_rule(line: &str) -> Option<(String, Vec<String>)> {
    if line.starts_with(['\t', ' ', '.', '#']) || !line.contains(':') {
        return None;
    }
    let (name, deps) = line.split_once(':').unwrap();
    Some((
        name.trim().to_string(),
        deps.split_whitespace().map(String::from).collect(),
    ))
}

fn ninja_rule(line: &str) -> Option<(String, Vec<String>)> {
    let rest = line.strip_prefix("build ")?;
    let (name, rhs) = rest.split_once(':')?;
    let deps = match rhs.split_once('|') {
        Some((_, d)) => d.split_whitespace().map(String::from).collect(),
        None => rhs.split_whitespace().skip(1).map(String::from).collect(), // `phony a b c`
    };
    Some((name.trim().to_string(), deps))
}

#[test]
fn generated_workloads_are_equivalent_for_every_tool() {
    let out = tempfile::tempdir().unwrap();
    let generator = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/gen.py");
    let status = Command::new("python3")
        .arg(&generator)
        .args(["--out"])
        .arg(out.path())
        .args(["--sizes", "100", "--output-mb", "1"])
        .status()
        .expect("python3 is needed to run bench/gen.py");
    assert!(status.success());
    let dir = out.path().join("dag-100");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();

    let model: serde_json::Value = serde_json::from_str(&read("model.json")).unwrap();
    let mut want_steps = BTreeSet::new();
    let mut want_edges = Edges::new();
    for s in model["steps"].as_array().unwrap() {
        let name = s[0].as_str().unwrap().to_string();
        for d in s[1].as_array().unwrap() {
            want_edges.insert((d.as_str().unwrap().to_string(), name.clone()));
        }
        want_steps.insert(name);
    }
    assert_eq!(want_steps.len(), 101, "100 steps and `all`");

    for (file, rule) in [
        ("Makefile", make_rule as fn(&str) -> _),
        ("justfile", make_rule),
        ("build.ninja", ninja_rule),
    ] {
        let (steps, edges) = edges_from_rules(&read(file), rule);
        assert_eq!(steps, want_steps, "{file}: steps");
        assert_eq!(edges, want_edges, "{file}: edges");
    }

    // piper: the graph as piper itself validated it; `all` is the pipeline.
    let graph = Command::new(PIPER)
        .args(["graph", "all", "--format", "json"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        graph.status.success(),
        "{}",
        String::from_utf8_lossy(&graph.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&graph.stdout).unwrap();
    let mut steps = BTreeSet::from(["all".to_string()]);
    let mut edges = Edges::new();
    for s in doc["steps"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap().to_string();
        for d in s["deps"].as_array().unwrap() {
            edges.insert((d.as_str().unwrap().to_string(), name.clone()));
        }
        steps.insert(name);
    }
    for last in doc["pipeline"]["steps"].as_array().unwrap() {
        edges.insert((last.as_str().unwrap().to_string(), "all".to_string()));
    }
    assert_eq!(steps, want_steps, "piper.lua: steps");
    assert_eq!(edges, want_edges, "piper.lua: edges");
}
