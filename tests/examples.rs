//! Every project in examples/ evaluates, and runs (for real where it is
//! quick and self-contained, as a dry run where it would build a Rust
//! project).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::PIPER;

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("piper.lua").exists())
        .collect();
    found.sort();
    found
}

/// Copies an example so runs do not write into the source tree.
fn copy(src: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-R")
        .arg(format!("{}/.", src.display()))
        .arg(tmp.path())
        .status()
        .unwrap();
    assert!(status.success());
    tmp
}

fn piper(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(PIPER)
        .args(args)
        .current_dir(dir)
        .env("GIT_CEILING_DIRECTORIES", dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn every_example_lists_and_dry_runs_every_pipeline() {
    let all = examples();
    assert!(
        all.len() >= 5,
        "expected at least 5 examples, found {all:?}"
    );
    for example in all {
        let tmp = copy(&example);
        let (code, stdout, stderr) = piper(tmp.path(), &["list", "--json"]);
        assert_eq!(code, 0, "{}: {stderr}", example.display());
        let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        for p in doc["pipelines"].as_array().unwrap() {
            let name = p["name"].as_str().unwrap();
            let (code, _, stderr) = piper(tmp.path(), &["exec", name, "--dry-run"]);
            assert_eq!(code, 0, "{} {name}: {stderr}", example.display());
        }
    }
}

fn run_example(name: &str, args: &[&str]) -> (tempfile::TempDir, String, String) {
    let tmp = copy(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name),
    );
    let (code, stdout, stderr) = piper(tmp.path(), args);
    assert_eq!(code, 0, "{name}: {stdout}{stderr}");
    (tmp, stdout, stderr)
}

#[test]
fn hello_runs() {
    let (_, stdout, _) = run_example("hello", &["exec", "hello"]);
    assert!(stdout.contains("greet  | hello from greet"), "{stdout}");
    assert!(
        stdout.contains("report | and a command from Lua"),
        "{stdout}"
    );
}

#[test]
fn c_project_compiles_each_file_and_links() {
    let (tmp, stdout, _) = run_example("c-project", &["exec", "ci"]);
    assert!(
        stdout.contains("check          | hello from C, built by piper"),
        "{stdout}"
    );
    assert!(tmp.path().join("build/src/main.o").exists());
    assert!(
        tmp.path().join("build/src/main.d").exists(),
        "the compiler wrote a depfile"
    );
}

#[test]
fn monorepo_builds_and_tests_every_package() {
    let (_, stdout, _) = run_example("monorepo", &["exec", "ci"]);
    for p in ["api", "cli", "web"] {
        assert!(stdout.contains(&format!("{p} ok")), "{stdout}");
    }
}

#[test]
fn chained_runs_deploy_then_cleanup() {
    let (_, stdout, _) = run_example("chained", &["exec", "ci"]);
    assert!(stdout.contains("deploying to staging"), "{stdout}");
    assert!(stdout.contains("cleaning up"), "{stdout}");
}
