//! Incremental builds: steps with `inputs` are skipped when nothing they
//! depend on changed, rerun (with their dependents) when something did, and
//! say why in words. Counts are proven by files the steps append to.

use std::process::Command;
use std::time::Duration;

use crate::harness::{PIPER, Test};

/// gen (inputs src/*.txt) -> compile (inputs gen.out) -> package; lint has
/// its own input; each appends its name to runs.log when it runs.
const PROJECT: &str = r#"
    local gen = step "gen" {
      inputs = "src/*.txt",
      outputs = "gen.out",
      run = "cat src/*.txt > gen.out; echo gen >> runs.log",
    }
    local compile = step "compile" {
      inputs = { "gen.out" },
      outputs = { "app.bin" },
      deps = { gen },
      env = { MODE = os.getenv("MODE") or "debug" },
      run = "cp gen.out app.bin; echo compile >> runs.log",
    }
    local lint = step "lint" { inputs = "lint.cfg", run = "echo lint >> runs.log" }
    pipeline "all" { compile, lint }
"#;

fn project() -> Test {
    Test::new()
        .piper_lua(PROJECT)
        .file("src/a.txt", "a")
        .file("src/b.txt", "b")
        .file("lint.cfg", "strict")
}

fn exec(dir: &std::path::Path, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(PIPER)
        .args(["exec", "all", "-j1"])
        .args(extra)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn runs(dir: &std::path::Path) -> Vec<String> {
    let log = std::fs::read_to_string(dir.join("runs.log")).unwrap_or_default();
    std::fs::remove_file(dir.join("runs.log")).ok();
    log.lines().map(String::from).collect()
}

fn rewrite(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn nothing_changed_means_nothing_runs() {
    let ran = project()
        .args(["exec", "all", "-j1"])
        .stdout_any()
        .stderr_any()
        .run();
    let dir = ran.dir.path();
    assert_eq!(runs(dir), ["gen", "compile", "lint"]);
    let (code, _, stderr) = exec(dir, &[]);
    assert_eq!(code, 0);
    assert!(runs(dir).is_empty());
    assert_eq!(stderr.matches("up to date").count(), 3, "{stderr}");
}

#[test]
fn one_changed_input_reruns_that_step_and_its_dependents_only() {
    let ran = project()
        .args(["exec", "all", "-j1"])
        .stdout_any()
        .stderr_any()
        .run();
    let dir = ran.dir.path();
    runs(dir);
    rewrite(&dir.join("src/a.txt"), "A");
    let (_, stdout, _) = exec(dir, &["--explain"]);
    assert_eq!(runs(dir), ["gen", "compile"]);
    assert!(
        stdout.contains("gen     | runs because file modified: src/a.txt"),
        "{stdout}"
    );
    assert!(
        stdout
            .contains("compile | runs because file modified: gen.out; upstream step `gen` changed"),
        "{stdout}"
    );
    assert!(stdout.contains("lint    | up to date"), "{stdout}");

    rewrite(&dir.join("lint.cfg"), "lenient");
    exec(dir, &[]);
    assert_eq!(runs(dir), ["lint"]);
}

#[test]
fn same_content_rewritten_does_not_rerun() {
    let ran = project()
        .args(["exec", "all", "-j1"])
        .stdout_any()
        .stderr_any()
        .run();
    let dir = ran.dir.path();
    runs(dir);
    // The harness wrote "a\n": same content, new mtime.
    rewrite(&dir.join("src/a.txt"), "a\n");
    exec(dir, &[]);
    assert!(
        runs(dir).is_empty(),
        "mtime changed, content did not: nothing runs"
    );
}

#[test]
fn added_and_removed_files_env_and_command_changes_are_named() {
    let ran = project()
        .args(["exec", "all", "-j1"])
        .stdout_any()
        .stderr_any()
        .run();
    let dir = ran.dir.path();
    std::fs::write(dir.join("src/c.txt"), "c").unwrap();
    let (_, stdout, _) = exec(dir, &["--explain"]);
    assert!(stdout.contains("file added: src/c.txt"), "{stdout}");
    std::fs::remove_file(dir.join("src/b.txt")).unwrap();
    let (_, stdout, _) = exec(dir, &["--explain"]);
    assert!(stdout.contains("file removed: src/b.txt"), "{stdout}");

    let out = Command::new(PIPER)
        .args(["exec", "all", "-j1", "--json"])
        .env("MODE", "release")
        .current_dir(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(r#""reasons":["env var MODE changed"]"#),
        "{text}"
    );

    let config = std::fs::read_to_string(dir.join("piper.lua"))
        .unwrap()
        .replace("echo lint", "echo linting");
    std::fs::write(dir.join("piper.lua"), config).unwrap();
    let (_, stdout, _) = exec(dir, &["--explain"]);
    assert!(
        stdout.contains("lint    | runs because its command changed"),
        "{stdout}"
    );
}

#[test]
fn a_missing_output_reruns_the_step() {
    let ran = project()
        .args(["exec", "all", "-j1"])
        .stdout_any()
        .stderr_any()
        .run();
    let dir = ran.dir.path();
    runs(dir);
    std::fs::remove_file(dir.join("app.bin")).unwrap();
    let (_, stdout, _) = exec(dir, &["--explain"]);
    assert!(stdout.contains("output missing: app.bin"), "{stdout}");
    assert_eq!(runs(dir), ["compile"]);
}

#[test]
fn force_reruns_all_or_the_named_steps() {
    let ran = project()
        .args(["exec", "all", "-j1"])
        .stdout_any()
        .stderr_any()
        .run();
    let dir = ran.dir.path();
    runs(dir);
    exec(dir, &["--force=lint"]);
    assert_eq!(runs(dir), ["lint"]);
    exec(dir, &["--force"]);
    assert_eq!(runs(dir), ["gen", "compile", "lint"]);
    let (code, _, stderr) = exec(dir, &["--force=lnt"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("did you mean `lint`?"), "{stderr}");
}

#[test]
fn corrupt_or_foreign_state_is_reported_and_everything_rebuilds() {
    let ran = project()
        .args(["exec", "all", "-j1"])
        .stdout_any()
        .stderr_any()
        .run();
    let dir = ran.dir.path();
    runs(dir);
    let mut other_version = b"piper state\n".to_vec();
    other_version.extend(999u32.to_le_bytes());
    other_version.extend([0; 32]);
    for content in [b"{ not state".to_vec(), other_version] {
        std::fs::write(dir.join(".piper/state.bin"), content).unwrap();
        let (code, _, stderr) = exec(dir, &[]);
        assert_eq!(code, 0);
        assert!(
            stderr.contains("warning:") && stderr.contains("rebuilding every step"),
            "{stderr}"
        );
        assert_eq!(runs(dir), ["gen", "compile", "lint"]);
    }
}

#[test]
fn clean_forgets_state_and_outputs() {
    let ran = project()
        .args(["exec", "all", "-j1"])
        .stdout_any()
        .stderr_any()
        .run();
    let dir = ran.dir.path();
    runs(dir);
    let out = Command::new(PIPER)
        .args(["clean", "--outputs"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!dir.join("app.bin").exists() && !dir.join("gen.out").exists());
    assert!(!dir.join(".piper/state.bin").exists());
    exec(dir, &[]);
    assert_eq!(runs(dir), ["gen", "compile", "lint"]);
}

#[test]
fn a_malformed_input_glob_names_the_step_and_pattern() {
    Test::new()
        .piper_lua(r#"step "x" { inputs = { "src/[" }, run = "true" }"#)
        .args(["list"])
        .status(2)
        .stderr_contains("piper.lua:1: step `x`: `inputs` has an invalid glob `src/[`")
        .run();
}

#[test]
fn state_survives_sigkill_at_any_point() {
    // 30 steps with inputs; kill piper after a varying delay, many times;
    // then a full run must succeed, and a further run must find everything
    // up to date.
    let mut config = String::new();
    for i in 0..30 {
        config.push_str(&format!(
            "step \"s{i}\" {{ inputs = \"in/{i}.txt\", outputs = \"out/{i}\", run = \"mkdir -p out; cp in/{i}.txt out/{i}\" }}\n"
        ));
    }
    config.push_str("pipeline \"all\" { ");
    for i in 0..30 {
        config.push_str(&format!("\"s{i}\", "));
    }
    config.push_str("}\n");
    let test = Test::new().piper_lua(&config);
    for i in 0..30 {
        std::fs::create_dir_all(test.dir.path().join("in")).unwrap();
        std::fs::write(test.dir.path().join(format!("in/{i}.txt")), format!("{i}")).unwrap();
    }
    let dir = test.dir.path().to_path_buf();
    for round in 0..12u64 {
        let mut child = Command::new(PIPER)
            .args(["exec", "all", "-j2"])
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(3 * round));
        child.kill().unwrap();
        child.wait().unwrap();
        if round % 3 == 0 {
            // Change an input between kills too.
            std::fs::write(
                dir.join(format!("in/{round}.txt")),
                format!("changed {round}"),
            )
            .unwrap();
        }
    }
    let (code, _, stderr) = exec(&dir, &[]);
    assert_eq!(code, 0, "{stderr}");
    for i in 0..30 {
        let input = std::fs::read_to_string(dir.join(format!("in/{i}.txt"))).unwrap();
        let output = std::fs::read_to_string(dir.join(format!("out/{i}"))).unwrap();
        assert_eq!(input, output, "step s{i} is stale after the kills");
    }
    let (code, _, stderr) = exec(&dir, &[]);
    assert_eq!(code, 0);
    assert_eq!(stderr.matches("up to date").count(), 30, "{stderr}");
}

#[test]
fn a_header_change_through_a_depfile_reruns_only_the_objects_that_include_it() {
    let ran = Test::new()
        .piper_lua(
            r#"
            local fs = require "piper.fs"
            local objs = {}
            for _, src in ipairs(fs.glob "src/*.c") do
              local obj = src:gsub("^src/", "out/"):gsub("%.c$", ".o")
              objs[#objs + 1] = step("cc " .. src) {
                inputs = src, outputs = obj, depfile = obj:gsub("%.o$", ".d"),
                run = ("mkdir -p out && cc -Iinclude -MD -c %s -o %s && echo %s >> runs.log"):format(src, obj, src),
              }
            end
            pipeline "build" { table.unpack(objs) }
            "#,
        )
        .file("include/one.h", "#define ONE 1")
        .file("include/two.h", "#define TWO 2")
        .file("src/a.c", "#include \"one.h\"\nint a(void) { return ONE; }")
        .file("src/b.c", "#include \"two.h\"\nint b(void) { return TWO; }")
        .args(["exec", "build", "-j1"])
        .stdout_any().stderr_any().run();
    let dir = ran.dir.path();
    assert_eq!(runs(dir), ["src/a.c", "src/b.c"]);
    let exec_build = |args: &[&str]| {
        let args = [&["exec", "build", "-j1"], args].concat();
        crate::harness::piper_in(dir, &args, &[]).0
    };
    exec_build(&[]);
    assert!(runs(dir).is_empty());
    rewrite(&dir.join("include/two.h"), "#define TWO 22\n");
    let stdout = exec_build(&["--explain"]);
    assert_eq!(runs(dir), ["src/b.c"]);
    assert!(
        stdout.contains("cc src/b.c | runs because file modified: include/two.h"),
        "{stdout}"
    );
}

#[test]
fn a_depfile_missing_after_the_run_warns_and_reruns_next_time() {
    let ran = Test::new()
        .piper_lua(
            r#"step "gen" { inputs = "in.txt", depfile = "gen.d", run = "echo gen >> runs.log" }"#,
        )
        .file("in.txt", "x")
        .args(["exec", "gen"])
        .stdout_contains("piper: warning: depfile gen.d was not readable after the step ran")
        .stderr_any()
        .run();
    let dir = ran.dir.path();
    runs(dir);
    let out = Command::new(PIPER)
        .args(["exec", "gen", "--explain"])
        .current_dir(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("runs because its depfile was missing after its last run"),
        "{stdout}"
    );
    assert_eq!(runs(dir), ["gen"]);
}

#[test]
fn explain_says_what_would_run_and_why_without_running() {
    let ran = project()
        .args(["exec", "all", "-j1"])
        .stdout_any()
        .stderr_any()
        .run();
    let dir = ran.dir.path();
    runs(dir);
    rewrite(&dir.join("src/b.txt"), "B");
    let out = Command::new(PIPER)
        .args(["explain", "all"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "gen      will run: file modified: src/b.txt\n\
         compile  will run: upstream step `gen` will run\n\
         lint     up to date\n"
    );
    assert!(runs(dir).is_empty(), "explain ran something");
    let out = Command::new(PIPER)
        .args(["explain", "compile", "--json", "-e", "MODE=release"])
        .current_dir(dir)
        .output()
        .unwrap();
    let verdicts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdicts[1]["step"], "compile");
    assert_eq!(
        verdicts[1]["reasons"],
        serde_json::json!(["env var MODE changed", "upstream step `gen` will run"])
    );
}

/// Early cutoff (ninja's `restat`): a step that ran again but made
/// byte-identical outputs leaves its dependents up to date.
#[test]
fn a_rerun_that_makes_the_same_outputs_leaves_dependents_up_to_date() {
    let test = Test::new()
        .piper_lua(
            r#"
            local gen = step "gen" {
              inputs = "src/a.txt",
              outputs = "gen.out",
              run = "tr -d ' ' < src/a.txt > gen.out; echo gen >> runs.log",
            }
            -- No inputs: it always runs, and its output says whether that mattered.
            local stamp = step "stamp" {
              outputs = "stamp.out",
              run = "echo ${STAMP:-one} > stamp.out; echo stamp >> runs.log",
            }
            local compile = step "compile" {
              inputs = "gen.out",
              outputs = "app.bin",
              deps = { gen, stamp },
              run = "cat gen.out stamp.out > app.bin; echo compile >> runs.log",
            }
            pipeline "all" { compile }
            "#,
        )
        .file("src/a.txt", "a b");
    let dir = test.dir.path();
    assert_eq!(exec(dir, &[]).0, 0);
    assert_eq!(runs(dir), ["gen", "stamp", "compile"]);
    // Only spaces change: gen runs, makes the same gen.out; stamp runs and
    // makes the same stamp.out; compile is up to date.
    let before = std::fs::read_to_string(dir.join("src/a.txt")).unwrap();
    rewrite(&dir.join("src/a.txt"), &before.replace(' ', "  "));
    let (code, stdout, stderr) = exec(dir, &["--explain"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(runs(dir), ["gen", "stamp"], "{stdout}{stderr}");
    // `--explain` says why compile did not run.
    assert!(
        stdout.contains("gen     | outputs unchanged: its dependents stay up to date"),
        "{stdout}"
    );
    // A real change reaches compile.
    rewrite(&dir.join("src/a.txt"), "a c");
    assert_eq!(exec(dir, &[]).0, 0);
    assert_eq!(runs(dir), ["gen", "stamp", "compile"]);
    let out = Command::new(PIPER)
        .args(["exec", "all", "-j1"])
        .env("STAMP", "two")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(runs(dir), ["stamp", "compile"]);
}

/// Early cutoff with a real compiler: a comment-only edit of a C file
/// recompiles it, the object comes out byte-identical, and the link (whose
/// dependency and input is that object) stays up to date.
#[test]
fn a_comment_only_c_edit_recompiles_and_does_not_relink() {
    let test = Test::new()
        .piper_lua(
            r#"
            local cc = step "cc" {
              inputs = "main.c", outputs = "main.o",
              run = "cc -O1 -c main.c -o main.o && echo cc >> runs.log",
            }
            local link = step "link" {
              inputs = "main.o", outputs = "app", deps = { cc },
              run = "cc main.o -o app && echo link >> runs.log",
            }
            pipeline "all" { link }
            "#,
        )
        .file("main.c", "int main(void) { return 0; }\n");
    let dir = test.dir.path();
    assert_eq!(exec(dir, &[]).0, 0);
    assert_eq!(runs(dir), ["cc", "link"]);
    rewrite(
        &dir.join("main.c"),
        "int main(void) { return 0; } /* a comment */\n",
    );
    let (code, stdout, stderr) = exec(dir, &["--explain"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(runs(dir), ["cc"], "{stdout}{stderr}");
    rewrite(&dir.join("main.c"), "int main(void) { return 1; }\n");
    assert_eq!(exec(dir, &[]).0, 0);
    assert_eq!(runs(dir), ["cc", "link"]);
}
