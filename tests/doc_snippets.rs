//! Every ```lua snippet in README.md and docs/ runs: it is evaluated as a
//! piper.lua (`piper list`) in a small project, so an API rename or a typo
//! in the docs fails here. A snippet under `<!-- doctest: exec TARGET -->`
//! is also built for real (`piper exec TARGET`) in that project.
//!
//! Snippets are written as parts of a config: they use `lint`, `test`,
//! `build`, the `piper.*` modules and `message` without defining them, and
//! `...` for "your code here". The prelude below defines what they take as
//! given (and the pipelines `deploy`, `notify`, `cleanup` they chain to);
//! `then ... end` and `do ... end` are read as empty blocks.

use std::path::Path;

use crate::harness::Test;

/// The project snippets run in: a C program across a subdirectory (the
/// guide's loop compiles `src/**/*.c` and links the objects), and the files
/// the reference's examples read.
fn project() -> Test {
    Test::new()
        .file(
            "src/main.c",
            "int greet(void);\nint main(void) { return greet(); }\n",
        )
        .file("src/util/greet.c", "int greet(void) { return 0; }\n")
        .file("VERSION", "1.2.3\n")
        .file("Cargo.toml", "[package]\nname = \"x\"\n")
        .file("config/app.toml", "")
}

fn prelude(snippet: &str) -> String {
    let mut text = String::from(
        "local env = require \"piper.env\"\n\
         local fs = require \"piper.fs\"\n\
         local git = require \"piper.git\"\n\
         local shell = require \"piper.shell\"\n\
         local trigger = require \"piper.trigger\"\n\
         local message = \"hello\"\n",
    );
    for name in ["lint", "test", "build", "deploy"] {
        if !snippet.contains(&format!("step \"{name}\"")) {
            text.push_str(&format!(
                "local {name} = step \"{name}\" {{ run = \"true\" }}\n"
            ));
        }
    }
    text
}

/// Snippets about `ctx` are lines of a Lua step's function.
fn as_config(snippet: &str) -> String {
    let body = snippet
        .replace("then ... end", "then end")
        .replace("do ... end", "do end");
    let body = if body.trim_start().starts_with("ctx.") {
        format!("step \"snippet\" {{ run = function(ctx)\n{body}\nend }}\n")
    } else {
        body
    };
    let mut config = format!("{}{body}", prelude(snippet));
    // Pipelines that snippets chain to, when they do not define them.
    for name in ["deploy", "notify", "cleanup"] {
        let defines = format!("pipeline \"{name}\"");
        if !snippet
            .lines()
            .any(|l| l.trim_start().starts_with(&defines))
        {
            config.push_str(&format!(
                "pipeline \"{name}\" {{ step \"{name} (doc)\" {{ run = \"true\" }} }}\n"
            ));
        }
    }
    config
}

/// (file, line, exec target, code) of every ```lua block.
fn snippets(root: &Path) -> Vec<(String, usize, Option<String>, String)> {
    let mut files = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            if lines[i].trim() == "```lua" {
                let start = i;
                let exec = start
                    .checked_sub(1)
                    .and_then(|p| lines[p].strip_prefix("<!-- doctest: exec "))
                    .and_then(|rest| rest.strip_suffix(" -->"))
                    .map(String::from);
                i += 1;
                let mut code = String::new();
                while i < lines.len() && lines[i].trim() != "```" {
                    code.push_str(lines[i]);
                    code.push('\n');
                    i += 1;
                }
                let rel = file.strip_prefix(root).unwrap().display().to_string();
                found.push((rel, start + 1, exec, code));
            }
            i += 1;
        }
    }
    found
}

#[test]
fn every_lua_snippet_in_the_docs_evaluates_and_marked_ones_build() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let all = snippets(root);
    assert!(all.len() > 30, "only {} snippets found", all.len());
    let mut failures = Vec::new();
    for (file, line, exec, code) in &all {
        let config = as_config(code);
        let out = project()
            .piper_lua(&config)
            .command()
            .arg("list")
            .output()
            .unwrap();
        if !out.status.success() {
            failures.push(format!(
                "{file}:{line}: piper list failed:\n{}\n--- as evaluated ---\n{config}",
                String::from_utf8_lossy(&out.stderr)
            ));
            continue;
        }
        if let Some(target) = exec {
            let test = project().piper_lua(&config);
            let out = test.command().args(["exec", target]).output().unwrap();
            if !out.status.success() {
                failures.push(format!(
                    "{file}:{line}: piper exec {target} failed:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
