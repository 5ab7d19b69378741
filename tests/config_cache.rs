//! The configuration cache: `piper.lua` is evaluated again exactly when
//! something it read changed, and a cached graph behaves as an evaluated
//! one. Evaluations are counted by what the config prints when it runs
//! (`print` is not an input), never by the clock.

use std::path::Path;
use std::process::Command;

use crate::harness::{PIPER, Ran, Test, git, piper_in, unindent};

const EVALUATED: &str = "EVALUATED\n";

/// `piper explain s` in `dir`: (was the config evaluated, the explanation
/// line if any).
fn explain(dir: &Path, env: &[(&str, &str)]) -> (bool, Option<String>) {
    let (stdout, _) = piper_in(dir, &["explain", "s"], env);
    let evaluated = stdout.starts_with(EVALUATED);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("configuration "))
        .map(str::to_string);
    (evaluated, line)
}

fn write(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[track_caller]
fn cached(dir: &Path) {
    assert_eq!(
        explain(dir, &[]),
        (false, None),
        "expected the cached graph"
    );
}

#[track_caller]
fn reevaluated(dir: &Path, env: &[(&str, &str)], reason: &str) {
    let (evaluated, line) = explain(dir, env);
    assert!(evaluated, "expected an evaluation ({reason})");
    let line = line.unwrap_or_default();
    assert!(
        line.starts_with("configuration re-evaluated: ") && line.contains(reason),
        "expected the reason {reason:?}, got {line:?}"
    );
}

#[test]
fn each_kind_of_input_reevaluates_the_config_and_nothing_else_does() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(
        dir,
        "piper.lua",
        &unindent(
            r#"
            local fs = require "piper.fs"
            local env = require "piper.env"
            local shell = require "piper.shell"
            local git = require "piper.git"
            print "EVALUATED"
            local helper = require "ci.helper"
            local version = fs.read "VERSION"
            local sources = fs.glob "src/*.c"
            local mode = env.get("PIPER_TEST_MODE", "debug")
            local tag = git.describe { tags = true }
            local generated = shell.run "cat generated.txt"
            local unchecked = shell.run("cat unchecked.txt", { input = false })
            step "s" { run = "true" }
            "#,
        ),
    );
    write(dir, "ci/helper.lua", "return 1\n");
    write(dir, "VERSION", "1.0\n");
    write(dir, "src/a.c", "int a;\n");
    write(dir, "generated.txt", "one\n");
    write(dir, "unchecked.txt", "one\n");
    write(dir, "README", "hello\n");
    git(dir, &["init", "-q"]);
    git(dir, &["add", "."]);
    git(dir, &["commit", "-qm", "first"]);

    let (evaluated, line) = explain(dir, &[]);
    assert!(
        evaluated && line.is_none(),
        "a first run has nothing to explain: {line:?}"
    );
    cached(dir);

    write(dir, "ci/helper.lua", "return 2\n");
    reevaluated(dir, &[], "ci/helper.lua changed");
    cached(dir);

    write(dir, "VERSION", "1.1\n");
    reevaluated(dir, &[], "VERSION changed");

    write(dir, "src/b.c", "int b;\n");
    reevaluated(dir, &[], "src/b.c added to glob src/*.c");
    std::fs::remove_file(dir.join("src/b.c")).unwrap();
    reevaluated(dir, &[], "src/b.c removed from glob src/*.c");
    // A file the glob does not match is not an input.
    write(dir, "src/notes.txt", "x\n");
    cached(dir);

    reevaluated(
        dir,
        &[("PIPER_TEST_MODE", "release")],
        "env var PIPER_TEST_MODE was set",
    );
    assert_eq!(
        explain(dir, &[("PIPER_TEST_MODE", "release")]),
        (false, None)
    );
    reevaluated(dir, &[], "env var PIPER_TEST_MODE was unset");

    git(dir, &["tag", "v1.0"]);
    reevaluated(
        dir,
        &[],
        "`git describe --tags --always` printed something else",
    );
    cached(dir);

    write(dir, "generated.txt", "two\n");
    reevaluated(dir, &[], "`cat generated.txt` printed something else");

    // Opted out with `input = false`, and files nobody read: no evaluation.
    write(dir, "unchecked.txt", "two\n");
    write(dir, "README", "changed\n");
    cached(dir);

    // A module that was looked for and did not exist is an input too.
    write(
        dir,
        "piper.lua",
        &format!(
            "{}pcall(require, \"ci.optional\")\n",
            std::fs::read_to_string(dir.join("piper.lua")).unwrap()
        ),
    );
    reevaluated(dir, &[], "piper.lua changed");
    cached(dir);
    write(dir, "ci/optional.lua", "return true\n");
    reevaluated(dir, &[], "ci/optional.lua was created");

    // --no-config-cache evaluates and leaves the cache alone.
    let (stdout, _) = piper_in(dir, &["--no-config-cache", "explain", "s"], &[]);
    assert!(stdout.starts_with(EVALUATED));
    cached(dir);
}

#[test]
fn what_the_cache_cannot_check_keeps_the_config_out_of_it() {
    let ran = Test::new()
        .piper_lua(
            r#"
            print "EVALUATED"
            local started = os.time()
            step "s" { run = "true" }
            "#,
        )
        .args(["explain", "s"])
        .stdout_contains("configuration not cached: piper.lua:2 calls os.time")
        .run();
    ran.again()
        .args(["explain", "s"])
        .stdout_contains(EVALUATED)
        .stdout_contains("configuration not cached: piper.lua:2 calls os.time")
        .run();
}

/// Function steps and `when` functions of a cached graph work; the Lua
/// state is made only when one of them is called.
#[test]
fn a_cached_graph_runs_function_steps_and_creates_lua_only_for_them() {
    let ran = Test::new()
        .piper_lua(
            r#"
            print "EVALUATED"
            step "lua" { inputs = "in.txt", run = function(ctx) ctx.sh "echo from-lua > lua.out" end }
            step "skipped" { when = function() return false end, run = "touch skipped.out" }
            step "shell" { inputs = "in.txt", run = "echo from-shell > shell.out" }
            pipeline "all" { "lua", "shell" }
            pipeline "cond" { "skipped" }
            pipeline "plain" { "shell" }
            "#,
        )
        .file("in.txt", "1")
        .args(["exec", "all"])
        .stdout_any()
        .stderr_any()
        .run();
    assert_eq!(evaluations(&ran), 1);
    assert_eq!(ran.read("lua.out"), "from-lua\n");
    // Cached, everything up to date: no Lua at all.
    let ran = ran
        .again()
        .args(["exec", "all"])
        .stdout_lacks("EVALUATED")
        .stderr_contains("lua    up to date")
        .run();
    // Cached, a function step to run: Lua is created for it, once.
    std::fs::write(ran.path("in.txt"), "2").unwrap();
    std::fs::remove_file(ran.path("lua.out")).unwrap();
    let ran = ran
        .again()
        .args(["exec", "all"])
        .stdout_any()
        .stderr_any()
        .run();
    assert_eq!(evaluations(&ran), 1);
    assert_eq!(ran.read("lua.out"), "from-lua\n");
    // A `when` function is called each build, so it needs the state.
    let ran = ran
        .again()
        .args(["exec", "cond"])
        .stdout_any()
        .stderr_contains("skipped")
        .run();
    assert_eq!(evaluations(&ran), 1);
    assert!(!ran.path("skipped.out").exists());
    // A plan without functions never needs it.
    std::fs::write(ran.path("in.txt"), "3").unwrap();
    ran.again()
        .args(["exec", "plain"])
        .stdout_lacks("EVALUATED")
        .stderr_contains("shell  ok")
        .run();
}

/// How many times the config was evaluated in a run (it prints EVALUATED).
fn evaluations(ran: &Ran) -> usize {
    ran.stdout.matches(EVALUATED).count()
}

fn cache_file(ran: &Ran) -> std::path::PathBuf {
    ran.path(".piper/config.cache")
}

#[test]
fn a_damaged_cache_is_a_warning_and_a_fresh_evaluation() {
    let ran = Test::new()
        .piper_lua(
            r#"
            print "EVALUATED"
            step "s" { run = "echo ran" }
            "#,
        )
        .args(["list"])
        .stdout_any()
        .run();
    let path = cache_file(&ran);
    let good = std::fs::read(&path).unwrap();
    let mut damaged = good.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    for (bytes, problem) in [
        (damaged, "damaged"),
        (good[..good.len() / 3].to_vec(), "damaged"),
        (
            b"something else".to_vec(),
            "not a Piper configuration cache",
        ),
    ] {
        std::fs::write(&path, bytes).unwrap();
        let (stdout, stderr) = piper_in(ran.dir.path(), &["exec", "s"], &[]);
        assert!(stdout.starts_with(EVALUATED), "{stdout}");
        assert!(
            stderr.contains("warning: ignoring the configuration cache")
                && stderr.contains(problem),
            "{stderr}"
        );
        assert!(stderr.contains("s  ok"), "{stderr}");
    }
    // The evaluation wrote a good cache again.
    ran.again()
        .args(["list"])
        .stdout_lacks("EVALUATED")
        .stdout_any()
        .run();
}

/// SIGKILL at arbitrary points while piper evaluates a large config and
/// writes its cache: the next run reads the current config's graph.
#[test]
fn killing_piper_while_it_writes_the_cache_leaves_the_next_run_correct() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = |round: usize| {
        format!(
            "for i = 1, 3000 do step(\"r{round}_\" .. i) {{ run = \"true\", inputs = \"x\" .. i }} end\n\
             step \"round\" {{ run = \"echo {round}\" }}\n"
        )
    };
    for round in 0..12 {
        write(dir, "piper.lua", &config(round));
        let mut child = Command::new(PIPER)
            .args(["list", "--json"])
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Fault injection, not a wait for a condition: kill somewhere in
        // evaluation, serialization or the write.
        std::thread::sleep(std::time::Duration::from_millis(5 * round as u64));
        let _ = child.kill();
        let _ = child.wait();
        let (stdout, stderr) = piper_in(dir, &["list", "--json"], &[]);
        let listing: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let steps = listing["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 3001, "round {round}");
        let first = steps[0]["name"].as_str().unwrap();
        assert_eq!(first, format!("r{round}_1"), "round {round}: a stale graph");
        assert!(!stderr.contains("warning"), "round {round}: {stderr}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.join(".piper"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("config.cache") && n != "config.cache")
        .collect();
    // A killed writer may leave its temporary file; never a torn cache.
    assert!(
        leftovers.iter().all(|n| n.starts_with(".config.cache.tmp")),
        "{leftovers:?}"
    );
}

/// Build stamps: steps get the value, a new value reruns nothing, and the
/// command runs only in builds where something runs.
#[test]
fn build_stamps_reach_steps_without_rerunning_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(
        dir,
        "piper.lua",
        &unindent(
            r#"
            local env = require "piper.env"
            env.stamp {
              VERSION = "echo run >> stamp-runs; git describe --tags --always --dirty",
              MISSING = { "false" },
            }
            step "s" { inputs = "in.txt", outputs = "out.txt", run = "echo $VERSION-${MISSING:-unset} > out.txt" }
            "#,
        ),
    );
    write(dir, "in.txt", "1\n");
    write(dir, ".gitignore", ".piper/\nout.txt\nstamp-runs\n");
    git(dir, &["init", "-q"]);
    git(dir, &["add", "."]);
    git(dir, &["commit", "-qm", "first"]);
    git(dir, &["tag", "v1"]);
    let exec = |expect: &str| {
        let (_, stderr) = piper_in(dir, &["exec", "s"], &[]);
        assert!(stderr.contains(expect), "expected {expect:?} in\n{stderr}");
        stderr
    };
    let stamp_runs = || {
        std::fs::read_to_string(dir.join("stamp-runs"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let first = exec("s  ok");
    assert!(
        first.contains("stamp MISSING: `false` failed with exit code 1; MISSING is unset"),
        "{first}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("out.txt")).unwrap(),
        "v1-unset\n"
    );
    assert_eq!(stamp_runs(), 1);

    // An edit to a tracked file flips the version to -dirty: nothing reruns,
    // and an all up-to-date build runs no stamp command.
    write(
        dir,
        "piper.lua",
        &format!(
            "{}-- edited\n",
            std::fs::read_to_string(dir.join("piper.lua")).unwrap()
        ),
    );
    exec("up to date");
    assert_eq!(stamp_runs(), 1);

    // A step that runs for its own reason gets the current value.
    write(dir, "in.txt", "2\n");
    exec("s  ok");
    assert_eq!(
        std::fs::read_to_string(dir.join("out.txt")).unwrap(),
        "v1-dirty-unset\n"
    );
    assert_eq!(stamp_runs(), 2);
}

/// A config recorded within seconds of its last edit is stamped without
/// its mtime ("racy", as git says) and read and hashed at every check.
/// Once the edit has settled, the next check that finds it unchanged
/// writes the cache once more with the mtime, so later checks are a stat.
#[test]
fn a_config_cached_right_after_an_edit_is_stamped_again_once_it_settled() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(
        dir,
        "piper.lua",
        "print \"EVALUATED\"\nstep \"s\" { run = \"true\" }\n",
    );
    assert!(explain(dir, &[]).0, "the first run evaluates");
    let cache = dir.join(".piper/config.cache");
    let racy = std::fs::read(&cache).unwrap();

    let settled = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let file = std::fs::File::options()
        .write(true)
        .open(dir.join("piper.lua"))
        .unwrap();
    file.set_modified(settled).unwrap();
    drop(file);
    cached(dir);
    let stamped = std::fs::read(&cache).unwrap();
    assert_ne!(stamped, racy, "the settled stamp is written");
    cached(dir);
    assert_eq!(std::fs::read(&cache).unwrap(), stamped, "and written once");
}
