//! Regression tests for defects found using Piper as a new user would
//! (issue 8), each named after the bug it pins. Real processes and files.

use std::time::SystemTime;

use crate::harness::{Test, unique};

/// 8.2: a glob output was resolved against the project root while literal
/// outputs were resolved against the step's `dir`: the glob never counted
/// as present (the step always reran) and `clean --outputs` deleted
/// another directory's files.
#[test]
fn glob_outputs_resolve_against_the_steps_dir() {
    let ran = Test::new()
        .piper_lua(
            r#"step "a" { dir = "sub", inputs = "sub/in.txt", outputs = "*.o", run = "touch x.o; echo a >> ../runs.log" }"#,
        )
        .file("sub/in.txt", "1")
        .file("keep.o", "not step a's")
        .args(["exec", "a"])
        .stdout_any()
        .stderr_any()
        .run();
    let ran = ran
        .again()
        .args(["exec", "a"])
        .stderr_contains("up to date")
        .run();
    assert_eq!(ran.read("runs.log"), "a\n");
    let ran = ran
        .again()
        .args(["clean", "--outputs"])
        .stderr_contains("sub/x.o")
        .run();
    assert!(!ran.path("sub/x.o").exists());
    assert_eq!(ran.read("keep.o"), "not step a's\n");
}

#[test]
fn outputs_outside_the_project_are_refused() {
    Test::new()
        .piper_lua("-- outputs\nstep \"a\" { outputs = \"../../etc\", run = \"true\" }")
        .args(["list"])
        .status(2)
        .stderr_contains("piper.lua:2")
        .stderr_contains("`../../etc` is outside the project")
        .run();
}

/// 8.3: `require ".tmp.x"` turned into `/tmp/x.lua` and loaded it.
#[test]
fn require_cannot_leave_the_project_root() {
    let name = format!("piper_escape_{}", unique());
    let outside = std::path::PathBuf::from(format!("/tmp/{name}.lua"));
    std::fs::write(&outside, "error('loaded from outside the project')").unwrap();
    let ran = Test::new()
        .piper_lua(&format!("-- escape\nrequire \".tmp.{name}\""))
        .args(["list"])
        .status(2)
        .stderr_contains(&format!(
            "module name \".tmp.{name}\" is not inside the project"
        ))
        .stderr_contains("piper.lua:2")
        .run();
    std::fs::remove_file(&outside).unwrap();
    assert!(!ran.stderr.contains("loaded from outside"));
}

/// 8.4: an edit that keeps the size and lands in the same mtime tick was
/// missed (the hash was reused on size + mtime alone). Forcing the old
/// mtime back makes the tick collision certain.
#[test]
fn a_same_size_edit_with_the_same_mtime_is_seen() {
    let ran = Test::new()
        .piper_lua(r#"step "a" { inputs = "in.txt", run = "cp in.txt out.txt" }"#)
        .file("in.txt", "aaaa")
        .args(["exec", "a"])
        .stdout_any()
        .stderr_any()
        .run();
    let input = ran.path("in.txt");
    let mtime = std::fs::metadata(&input).unwrap().modified().unwrap();
    std::fs::write(&input, "bbbb\n").unwrap();
    let file = std::fs::File::options().write(true).open(&input).unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);
    assert!(mtime <= SystemTime::now());
    let ran = ran
        .again()
        .args(["exec", "a"])
        .stdout_contains("runs because file modified: in.txt")
        .stderr_any()
        .args(["--explain"])
        .run();
    assert_eq!(ran.read("out.txt"), "bbbb\n");
}

/// 8.6: `timeout = math.huge` panicked in `Duration::from_secs_f64`.
#[test]
fn huge_timeouts_are_config_errors_not_panics() {
    for value in ["math.huge", "1e20", "\"1e20s\"", "-math.huge", "0/0"] {
        Test::new()
            .piper_lua(&format!(
                "-- timeout\nstep \"a\" {{ run = \"true\", timeout = {value} }}"
            ))
            .args(["list"])
            .status(2)
            .stderr_contains("piper.lua:2")
            .stderr_contains("timeout")
            .run();
    }
    Test::new()
        .piper_lua(r#"step "a" { run = "true" }"#)
        .args(["exec", "a"])
        .env("PIPER_KILL_GRACE", "18446744073709551615")
        .status(2)
        .stderr_contains("longer than a year")
        .run();
}

/// 8.7: a failing `ctx.sh` showed `__mlua_async_poll:29: in field 'sh'`,
/// an error in `piper.fs` showed `stdlib/piper/fs.lua:52`, and a canceled
/// Lua step printed a traceback.
#[test]
fn lua_errors_show_the_users_frames_only() {
    let ran = Test::new()
        .piper_lua(
            r#"
            local fs = require "piper.fs"
            local function helper(ctx) ctx.sh "exit 3" end
            step "a" { run = function(ctx) helper(ctx) end }
            step "b" { run = function(ctx) fs.read("nope") end }
            step "c" { run = function(ctx) ctx.sh "touch started; sleep 100" end, timeout = "300ms" }
            "#,
        )
        .args(["exec", "a", "b", "c", "--keep-going", "-j1"])
        .status(3)
        .stdout_contains("a | piper.lua:2: `exit 3` exited with code 3")
        .stdout_contains("a | \tpiper.lua:2: in upvalue 'helper'")
        .stdout_contains("a | \tpiper.lua:3: in function <piper.lua:3>")
        .stdout_contains("b | piper.lua:4: fs.read: cannot read nope")
        .stdout_contains("c | ✗ timed out after 300ms")
        .stderr_any()
        .run();
    for internal in ["__mlua", "stdlib/", "[C]:", "canceled"] {
        assert!(!ran.stdout.contains(internal), "{internal}\n{}", ran.stdout);
    }
    // b's error names its line, so no one-frame traceback repeats it.
    assert!(
        !ran.stdout.contains("b | stack traceback"),
        "{}",
        ran.stdout
    );
}

/// 8.8: `run = { "cc", "-c", "x.c" }` ran `cc`, then `-c`, then `x.c`.
#[test]
fn a_run_list_of_arguments_suggests_argv() {
    Test::new()
        .piper_lua("-- c\nstep \"cc\" { run = { \"cc\", \"-c\", \"x.c\" } }")
        .args(["list"])
        .status(2)
        .stderr(
            "error: piper.lua:2: step `cc`: `run` item 2 (\"-c\") looks like an argument, but each item of a `run` list is a command of its own; did you mean `argv = { \"cc\", \"-c\", \"x.c\" }`?\n",
        )
        .run();
}

/// 8.8: tables given as `deps` (and pipeline members) were read at the end
/// of evaluation, so appending to the list afterwards changed the step:
/// "dependency cycle: link -> link".
#[test]
fn deps_are_read_when_the_step_is_defined() {
    Test::new()
        .piper_lua(
            r#"
            local steps = { step "a" { run = "echo a" }, step "b" { run = "echo b" } }
            local link = step "link" { deps = steps, run = "echo link" }
            steps[#steps + 1] = link
            pipeline "all" (steps)
            "#,
        )
        .args(["exec", "all", "-j1"])
        .stdout_contains("link | link")
        .stderr_contains("all succeeded")
        .run();
}

/// 8.10: a declared output the step did not create was only noticed on the
/// next run (as "output missing").
#[test]
fn a_declared_output_that_was_not_created_is_a_warning_at_the_end() {
    Test::new()
        .piper_lua(r#"step "a" { outputs = "never.txt", run = "true" }"#)
        .args(["exec", "a"])
        .stdout("a | $ true\na | warning: declared output never.txt was not created; the step will run again next time\n")
        .stderr_contains("warning: a: declared output never.txt was not created")
        .run();
}

/// 8.10: `piper explain --check` answers "is anything out of date?" with
/// its exit status, as `make -q` does.
#[test]
fn explain_check_exits_1_when_something_would_run() {
    let ran = Test::new()
        .piper_lua(r#"step "a" { inputs = "in.txt", run = "true" }"#)
        .file("in.txt", "1")
        .args(["explain", "a", "--check"])
        .status(1)
        .stdout("a  will run: it never ran successfully before\n")
        .run();
    let ran = ran
        .again()
        .args(["exec", "a"])
        .stdout_any()
        .stderr_any()
        .run();
    ran.again()
        .args(["explain", "a", "--check"])
        .stdout("a  up to date\n")
        .run();
}

/// 8.14: a bare `piper exec` was a clap error; it lists the pipelines, as
/// `just` does.
#[test]
fn exec_without_a_target_lists_the_pipelines() {
    Test::new()
        .piper_lua(
            r#"
            local t = step "t" { run = "true" }
            pipeline "ci" { t, desc = "Test everything" }
            pipeline "release" { t }
            "#,
        )
        .args(["exec"])
        .status(2)
        .stderr(
            "
            piper exec: name a pipeline or step to run, e.g. `piper exec <PIPELINE>` (or mark one pipeline `default = true`)
            Pipelines:
                ci       Test everything [t]
                release  [t]
            (`piper list` shows the steps too)
            ",
        )
        .run();
}

/// 8.12: widths were counted in chars, so a step named in CJK (two
/// columns a character) pushed its prefix and summary columns out of line.
#[test]
fn prefixes_and_summaries_align_by_display_columns() {
    Test::new()
        .piper_lua(
            r#"
            local a = step "构建" { run = "true" }
            local b = step "a" { run = "true" }
            pipeline "all" { a, b }
            "#,
        )
        .args(["exec", "all", "-j1"])
        .stdout("构建 | $ true\na    | $ true\n")
        .stderr_contains("  构建  ok ")
        .stderr_contains("  a     ok ")
        .run();
}

/// 8.12: `--color` governs the `error:` label too.
#[test]
fn color_always_paints_the_error_label() {
    Test::new()
        .args(["--color", "always", "-f", "nope.lua", "list"])
        .status(2)
        .stderr_contains("\u{1b}[1m\u{1b}[31merror:\u{1b}[0m")
        .run();
    Test::new()
        .args(["--color", "never", "-f", "nope.lua", "list"])
        .status(2)
        .stderr_contains("error: ")
        .run();
}

/// Issue 10.6: `piper exec` checks `requires` against this machine and
/// says what is missing (and runs: you asked for it).
#[test]
fn exec_says_which_required_labels_this_machine_lacks() {
    let config = r#"
        local s = step "s" { run = "true", requires = { gpu = "1" } }
        pipeline "ci" { s, requires = { os = "linux" } }
        "#;
    Test::new()
        .piper_lua(config)
        .args(["exec", "ci"])
        .stdout_any()
        .stderr_contains("warning: ci requires gpu=1, which this machine does not have")
        .run()
        .again()
        .args(["exec", "ci"])
        .env("PIPER_LABELS", "gpu=1")
        .stdout_any()
        .stderr_contains("ci succeeded")
        .stderr_lacks("warning")
        .run();
    Test::new()
        .piper_lua(
            r#"
            local s = step "s" { run = "true", requires = { os = "plan9" } }
            pipeline "ci" { s, requires = { os = "linux" } }
            "#,
        )
        .args(["exec", "ci"])
        .status(2)
        .stderr(
            "error: piper.lua:1: step `s` requires os=plan9, but pipeline `ci` (piper.lua:2) requires os=linux: no agent can have both\n",
        )
        .run();
}

/// An input stamped within the racy window (written less than 2 s before
/// its step ran) has no trusted mtime, so it is hashed again at each check;
/// it was hashed forever, until the step ran again. Once it has settled,
/// an up-to-date check keeps its mtime, and later checks only stat it.
#[test]
fn a_settled_input_is_trusted_by_its_mtime_again() {
    let ran = Test::new()
        .piper_lua(r#"step "a" { inputs = "in.txt", run = "echo ran-a" }"#)
        .file("in.txt", "1")
        .args(["exec", "a"])
        .stdout_contains("ran-a")
        .stderr_any()
        .run();
    let settle = |dir: &std::path::Path| {
        let touched = std::process::Command::new("touch")
            .args(["-d", "2020-01-01 00:00:00", "in.txt"])
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(touched.success());
    };
    // The same content, settled long ago: hashed once, found unchanged,
    // and its mtime kept in the record.
    settle(ran.dir.path());
    let ran = ran
        .again()
        .args(["exec", "a"])
        .stdout_lacks("ran-a")
        .stderr_contains("up to date")
        .run();
    // Other content of the same size and mtime: a check that trusts the
    // kept mtime does not read the file (as make and ninja would not); one
    // that still hashed it would rerun the step.
    let path = ran.dir.path().join("in.txt");
    let other = std::fs::read_to_string(&path).unwrap().replace('1', "2");
    std::fs::write(&path, other).unwrap();
    settle(ran.dir.path());
    ran.again()
        .args(["exec", "a"])
        .stdout_lacks("ran-a")
        .stderr_contains("up to date")
        .run();
}

/// 13: a bare `piper exec` runs the pipeline marked `default = true`, or
/// the only one, as `just` runs its first recipe; two defaults are an error
/// naming both.
#[test]
fn exec_without_a_target_runs_the_default_or_only_pipeline() {
    Test::new()
        .piper_lua(
            r#"
            local t = step "t" { run = "echo ran-t" }
            local u = step "u" { run = "echo ran-u" }
            pipeline "ci" { t }
            pipeline "release" { u, default = true }
            "#,
        )
        .args(["exec"])
        .stdout_contains("ran-u")
        .stdout_lacks("ran-t")
        .stderr_contains("release succeeded")
        .run();
    Test::new()
        .piper_lua(r#"pipeline "only" { step "t" { run = "echo ran-only" } }"#)
        .args(["exec"])
        .stdout_contains("ran-only")
        .stderr_any()
        .run();
    Test::new()
        .piper_lua(
            r#"
            local t = step "t" { run = "true" }
            pipeline "a" { t, default = true }
            pipeline "b" { t, default = true }
            "#,
        )
        .args(["exec"])
        .status(2)
        .stderr(
            "error: piper.lua:3: pipeline `b`: `default = true`, but pipeline `a` (piper.lua:2) is already the default; mark one\n",
        )
        .run();
}

/// A configuration cache another Piper build wrote (an upgrade, another
/// checkout's binary) may lay out the graph differently: it is replaced
/// quietly, as "Piper was updated", not read as a damaged file with a
/// warning on every first run after an upgrade.
#[test]
fn a_cache_of_another_piper_build_is_replaced_without_a_warning() {
    let ran = Test::new()
        .piper_lua("print 'EVALUATED'\nstep 's' { run = 'true' }\n")
        .args(["list"])
        .stdout_any()
        .run();
    let path = ran.path(".piper/config.cache");
    // postcard: the key's three strings (length-prefixed), then a body this
    // build cannot read.
    let mut payload = Vec::new();
    for text in ["another piper build", "/elsewhere", "/elsewhere/piper.lua"] {
        payload.push(text.len() as u8);
        payload.extend_from_slice(text.as_bytes());
    }
    payload.extend_from_slice(&[0xff; 8]);
    let checksummed = |magic: &[u8]| {
        let mut bytes = magic.to_vec();
        bytes.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        bytes
    };
    let bytes = checksummed(b"piper config cache 3\n");
    // And the formats before it: digests as text, and a blake3 checksum.
    let text_digests = checksummed(b"piper config cache 2\n");
    let mut older = b"piper config cache 1\n".to_vec();
    older.extend_from_slice(blake3::hash(&payload).as_bytes());
    older.extend_from_slice(&payload);
    for cache in [bytes, text_digests, older] {
        std::fs::write(&path, cache).unwrap();
        let (stdout, stderr) = crate::harness::piper_in(ran.dir.path(), &["explain", "s"], &[]);
        assert!(stdout.starts_with("EVALUATED"), "{stdout}");
        assert!(
            stdout.contains("configuration re-evaluated: Piper was updated"),
            "{stdout}"
        );
        assert!(!stderr.contains("warning"), "{stderr}");
    }
}
