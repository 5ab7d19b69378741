//! The documentation cannot drift from the code: every public Lua function
//! in stdlib/ has a `---@meta` definition in lua/ and a section in
//! docs/reference/lua.md (and nothing is documented that does not exist);
//! every command and flag of the CLI appears in docs/reference/cli.md;
//! every event kind appears in docs/reference/events.md; the files and Rust
//! names the architecture and embedding docs mention exist.

use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

const MODULES: &[&str] = &["env", "trigger", "fs", "shell", "git"];

/// `module.function` for every `function M.name(` in the stdlib sources.
fn stdlib_functions() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for module in MODULES {
        for line in read(&format!("stdlib/piper/{module}.lua")).lines() {
            if let Some(rest) = line.strip_prefix("function M.") {
                names.insert(format!("{module}.{}", rest.split('(').next().unwrap()));
            }
        }
    }
    // The DSL core: `M.step = definer(...)`.
    for line in read("stdlib/piper/init.lua").lines() {
        if let Some(rest) = line.strip_prefix("M.") {
            names.insert(rest.split([' ', '=']).next().unwrap().to_string());
        }
    }
    names
}

fn meta_functions() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for module in MODULES {
        let prefix = format!("function {module}.");
        for line in read(&format!("lua/piper/{module}.lua")).lines() {
            if let Some(rest) = line.strip_prefix(&prefix) {
                names.insert(format!("{module}.{}", rest.split('(').next().unwrap()));
            }
        }
    }
    for line in read("lua/piper.lua").lines() {
        for global in ["step", "pipeline"] {
            if line.starts_with(&format!("function {global}(")) {
                names.insert(global.to_string());
            }
        }
    }
    names
}

fn documented_functions() -> BTreeSet<String> {
    read("docs/reference/lua.md")
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(|h| {
            h.trim_matches('`')
                .split('(')
                .next()
                .unwrap()
                .trim()
                .to_string()
        })
        .filter(|h| !h.starts_with("ctx."))
        .collect()
}

#[test]
fn lua_api_stdlib_meta_and_reference_agree() {
    let stdlib = stdlib_functions();
    assert!(stdlib.len() > 15, "{stdlib:?}");
    assert_eq!(stdlib, meta_functions(), "stdlib/ vs lua/ (---@meta)");
    assert_eq!(
        stdlib,
        documented_functions(),
        "stdlib/ vs docs/reference/lua.md"
    );
}

#[test]
fn ctx_functions_are_documented() {
    let doc = read("docs/reference/lua.md");
    let meta = read("lua/piper.lua");
    for f in ["sh", "exec", "print"] {
        assert!(
            doc.contains(&format!("### `ctx.{f}")),
            "ctx.{f} missing from docs/reference/lua.md"
        );
        assert!(
            meta.contains(&format!("function Ctx.{f}(")),
            "ctx.{f} missing from lua/piper.lua"
        );
    }
}

#[test]
fn every_step_field_is_documented() {
    let doc = read("docs/reference/lua.md");
    let meta = read("lua/piper.lua");
    for field in piper::internals::STEP_FIELDS {
        assert!(
            doc.contains(&format!("| `{field}` |")),
            "step field {field} missing from docs/reference/lua.md"
        );
        assert!(
            meta.contains(&format!("---@field {field}?")),
            "step field {field} missing from lua/piper.lua"
        );
    }
}

#[test]
fn every_cli_command_and_flag_is_documented() {
    use clap::CommandFactory;
    let doc = read("docs/reference/cli.md");
    let mut cli = piper::internals::Cli::command();
    // Subcommands' arguments are deferred until built (args.rs).
    cli.build();
    let mut checked = 0;
    for arg in cli.get_arguments() {
        if let Some(long) = arg.get_long() {
            assert!(
                doc.contains(&format!("--{long}")),
                "--{long} missing from docs/reference/cli.md"
            );
        }
    }
    // `help` is clap's own, added by the build.
    for sub in cli.get_subcommands().filter(|s| s.get_name() != "help") {
        assert!(
            doc.contains(&format!("## `piper {}", sub.get_name())),
            "piper {} missing",
            sub.get_name()
        );
        for arg in sub.get_arguments() {
            if let Some(long) = arg.get_long() {
                checked += 1;
                assert!(
                    doc.contains(&format!("--{long}")),
                    "piper {} --{long} missing",
                    sub.get_name()
                );
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} subcommand flags seen: is the tree built?"
    );
}

#[test]
fn every_event_kind_is_documented() {
    let doc = read("docs/reference/events.md");
    let source = read("src/event.rs");
    // Variants of `enum Event` are the lines `    Name {` inside it.
    let body = source
        .split("pub enum Event {")
        .nth(1)
        .unwrap()
        .split("\n}\n")
        .next()
        .unwrap();
    let kinds: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("    "))
        .filter(|l| l.starts_with(|c: char| c.is_ascii_uppercase()))
        .map(|l| {
            l.split(|c: char| !c.is_ascii_alphanumeric())
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(kinds.len(), 12, "{kinds:?}");
    for name in kinds {
        let mut snake = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                snake.push('_');
            }
            snake.push(c.to_ascii_lowercase());
        }
        assert!(
            doc.contains(&format!("`{snake}`")),
            "event {snake} missing from docs/reference/events.md"
        );
    }
}

/// lua/piper/*.lua are generated from the annotated stdlib (one source):
/// `piper meta lua` rewrites them; this fails when they were not.
#[test]
fn lua_definitions_are_generated_from_the_stdlib() {
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(crate::harness::PIPER)
        .args(["meta"])
        .arg(out.path())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    for module in MODULES
        .iter()
        .map(|m| format!("piper/{m}.lua"))
        .chain(["piper.lua".into()])
    {
        let generated = std::fs::read_to_string(out.path().join(&module)).unwrap();
        assert_eq!(
            read(&format!("lua/{module}")),
            generated,
            "lua/{module} is stale: run `cargo run -- meta lua`"
        );
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Issue 29: a name in the docs that the code no longer has is a bug. In
/// the docs about the code (architecture, embedding), every `code span`
/// that names a source file (`agent/daemon.rs`, `log/viewer.js`,
/// `tests/docs.rs`, a folder `executor/`) must be a file or folder of the
/// repository (under `src/` or from its root), and every Rust path or type
/// (`Engine::load`, `RunOptions`, `embedding::the_public_api_changes_only_on_purpose`)
/// must appear as a word in the sources or the tests.
#[test]
fn code_names_in_the_docs_exist() {
    let mut files = Vec::new();
    for dir in ["src", "tests", "stdlib", "migrations", "examples", "bench"] {
        files_under(&root().join(dir), &mut files);
    }
    let relative: Vec<String> = files
        .iter()
        .map(|p| {
            p.strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let text: String = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let words: BTreeSet<&str> = text
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    let span = regex::Regex::new(r"`([^`\n]+)`").unwrap();
    let file = regex::Regex::new(r"^[\w.-][\w./-]*\.(rs|js|css|sql)$|^[a-z_]+/$").unwrap();
    let rust_path =
        regex::Regex::new(r"^([A-Z][a-z]\w*|[a-z_]+::[A-Za-z_][\w:]*|[A-Z]\w*::\w[\w:]*)$")
            .unwrap();
    let mut missing = Vec::new();
    for doc in ["docs/architecture.md", "docs/embedding.md"] {
        for found in span.captures_iter(&read(doc)) {
            let name = &found[1];
            if file.is_match(name) {
                let dir = name.trim_end_matches('/');
                let exists = relative.iter().any(|f| {
                    let under_src = f.strip_prefix("src/").unwrap_or(f);
                    f == name
                        || under_src == name
                        || f.ends_with(&format!("/{name}"))
                        || f.starts_with(&format!("{dir}/"))
                        || under_src.starts_with(&format!("{dir}/"))
                        || f.contains(&format!("/{dir}/"))
                });
                if !exists {
                    missing.push(format!("{doc}: file `{name}`"));
                }
            } else if rust_path.is_match(name) {
                for segment in name.split("::").filter(|s| !s.is_empty()) {
                    if !words.contains(segment) {
                        missing.push(format!("{doc}: `{name}` ({segment})"));
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "names the code no longer has:\n{}",
        missing.join("\n")
    );
}
