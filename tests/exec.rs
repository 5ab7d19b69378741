//! `piper exec`: ordering, parallelism, fail-fast and --keep-going, retries,
//! conditions, environment, output modes and the JSON event stream.

use crate::harness::Test;

/// Two steps that each wait (bounded, ~2 s) for the other's marker file:
/// they can only both succeed if they run at the same time.
const RENDEZVOUS: &str = r#"
    local function meet(me, other)
      return ("touch %s.ready; i=0; while [ ! -f %s.ready ]; do i=$((i+1)); [ $i -gt 40 ] && exit 1; sleep 0.05; done"):format(me, other)
    end
    local a = step "a" { run = meet("a", "b") }
    local b = step "b" { run = meet("b", "a") }
    pipeline "both" { a, b }
"#;

#[test]
fn independent_steps_run_in_parallel() {
    Test::new()
        .piper_lua(RENDEZVOUS)
        .args(["exec", "both", "-j2"])
        .stdout_any()
        .stderr_any()
        .run();
}

#[test]
fn jobs_one_runs_one_step_at_a_time() {
    // The first step waits for a partner that cannot start: it gives up.
    Test::new()
        .piper_lua(RENDEZVOUS)
        .args(["exec", "both", "-j1"])
        .status(1)
        .stderr_contains("first failure: a")
        .stdout_any()
        .run();
}

#[test]
fn dependencies_finish_before_dependents_start() {
    let ran = Test::new()
        .piper_lua(
            r#"
            local function logged(name) return ("echo start %s >> log; sleep 0.05; echo end %s >> log"):format(name, name) end
            local a = step "a" { run = logged "a" }
            local b = step "b" { run = logged "b" }
            local c = step "c" { run = logged "c", deps = { a, b } }
            local d = step "d" { run = logged "d", deps = { c } }
            pipeline "all" { d }
            "#,
        )
        .args(["exec", "all", "-j4"])
        .stdout_any().stderr_any().run();
    let log = ran.read("log");
    let pos = |line: &str| {
        log.lines()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("{line} missing in\n{log}"))
    };
    assert!(pos("end a") < pos("start c"));
    assert!(pos("end b") < pos("start c"));
    assert!(pos("end c") < pos("start d"));
    assert_eq!(log.lines().count(), 8);
}

#[test]
fn a_step_target_pulls_in_its_dependencies_only() {
    Test::new()
        .piper_lua(
            r#"
            local a = step "a" { run = "echo A" }
            step "b" { run = "echo B", deps = { a } }
            step "unrelated" { run = "echo U" }
            "#,
        )
        .args(["exec", "b"])
        .stdout("a | $ echo A\na | A\nb | $ echo B\nb | B\n")
        .stderr_any()
        .run();
}

/// `bad` fails; `other` does not depend on it; `after` does.
const FAILING_BRANCH: &str = r#"
    local bad = step "bad" { run = "exit 3" }
    local other = step "other" { run = "touch other.ran" }
    local after = step "after" { run = "touch after.ran", deps = { bad } }
    pipeline "p" { bad, other, after }
"#;

#[test]
fn fail_fast_stops_before_independent_steps() {
    let ran = Test::new()
        .piper_lua(FAILING_BRANCH)
        .args(["exec", "p", "-j1"])
        .status(3)
        .stderr_contains("first failure: bad: `exit 3` exited with code 3")
        .stdout_any()
        .run();
    assert!(!ran.path("other.ran").exists());
    assert!(!ran.path("after.ran").exists());
    assert!(ran.stderr.contains("other  canceled"), "{}", ran.stderr);
    assert!(ran.stderr.contains("after  blocked"), "{}", ran.stderr);
}

#[test]
fn keep_going_finishes_independent_branches() {
    let ran = Test::new()
        .piper_lua(FAILING_BRANCH)
        .args(["exec", "p", "-j1", "--keep-going"])
        .status(3)
        .stdout_any()
        .stderr_any()
        .run();
    assert!(ran.path("other.ran").exists());
    assert!(!ran.path("after.ran").exists());
}

#[test]
fn command_lists_run_in_order_and_stop_at_the_first_failure() {
    Test::new()
        .piper_lua(r#"step "a" { run = { "echo one", "false", "echo never" } }"#)
        .args(["exec", "a"])
        .status(1)
        .stdout_contains("a | one")
        .stdout_lacks("never")
        .stderr_any()
        .run();
}

#[test]
fn argv_runs_without_a_shell() {
    Test::new()
        .piper_lua(r#"step "a" { argv = { "echo", "$HOME", "two words" } }"#)
        .args(["exec", "a"])
        .stdout_contains("a | $HOME two words")
        .stderr_any()
        .run();
    Test::new()
        .piper_lua(r#"step "a" { run = { { "printf", "%s|", "x y" }, "echo done" } }"#)
        .args(["exec", "a"])
        .stdout_contains("a | x y|done")
        .stderr_any()
        .run();
}

#[test]
fn retries_rerun_a_failing_step() {
    let ran = Test::new()
        .piper_lua(
            r#"step "flaky" { run = "echo x >> tries; [ $(wc -l < tries) -ge 3 ]", retries = 2 }"#,
        )
        .args(["exec", "flaky", "--json"])
        .stdout_any()
        .run();
    assert_eq!(ran.read("tries").lines().count(), 3);
    let events = ran.events();
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "step_retrying")
            .count(),
        2
    );
    let finished = events
        .iter()
        .find(|e| e["event"] == "step_finished")
        .unwrap();
    assert_eq!(finished["status"], "success");
    assert_eq!(finished["attempts"], 3);
}

#[test]
fn allowed_failure_does_not_fail_the_build() {
    Test::new()
        .piper_lua(
            r#"
            local lint = step "lint" { run = "exit 1", allow_failure = true }
            step "next" { run = "echo next ran", deps = { lint } }
            "#,
        )
        .args(["exec", "next"])
        .stdout_contains("next | next ran")
        .stderr_contains("failed (allowed)")
        .run();
}

#[test]
fn when_conditions_skip_steps_and_let_dependents_run() {
    let ran = Test::new()
        .piper_lua(
            r#"
            local env = require "piper.env"
            local publish = step "publish" { run = "touch published", when = env.get("RELEASE") == "1" }
            local notify = step "notify" { run = "touch notified", when = function() return true end, deps = { publish } }
            pipeline "release" { notify }
            "#,
        )
        .args(["exec", "release"])
        .stderr_contains("publish  skipped")
        .stdout_any().run();
    assert!(!ran.path("published").exists());
    assert!(ran.path("notified").exists());
}

#[test]
fn environment_precedence_global_pipeline_step_cli() {
    Test::new()
        .piper_lua(
            r#"
            local env = require "piper.env"
            env.set { A = "global", B = "global", C = "global", D = "global" }
            local s = step "show" { run = "echo $A $B $C $D $PIPER_STEP", env = { C = "step", D = "step" } }
            pipeline "p" { s, env = { B = "pipeline", C = "pipeline", D = "pipeline" } }
            "#,
        )
        .args(["exec", "p", "--env", "D=cli"])
        .stdout_contains("show | global pipeline step cli show")
        .stderr_any().run();
}

#[test]
fn grouped_output_keeps_each_step_together() {
    let ran = Test::new()
        .piper_lua(
            r#"
            local a = step "a" { run = "echo a1; sleep 0.2; echo a2" }
            local b = step "b" { run = "echo b1; sleep 0.1; echo b2" }
            pipeline "p" { a, b }
            "#,
        )
        .args(["exec", "p", "--output", "grouped"])
        .stdout_any()
        .stderr_any()
        .run();
    let lines: Vec<&str> = ran.stdout.lines().collect();
    let a1 = lines.iter().position(|l| *l == "a | a1").unwrap();
    assert_eq!(lines[a1 + 1], "a | a2", "{}", ran.stdout);
    let b1 = lines.iter().position(|l| *l == "b | b1").unwrap();
    assert_eq!(lines[b1 + 1], "b | b2", "{}", ran.stdout);
}

#[test]
fn output_without_a_trailing_newline_is_kept() {
    Test::new()
        .piper_lua(r#"step "a" { run = "printf 'no newline'" }"#)
        .args(["exec", "a"])
        .stdout("a | $ printf 'no newline'\na | no newline\n")
        .stderr_any()
        .run();
}

#[test]
fn dry_run_shows_commands_and_runs_nothing() {
    let ran = Test::new()
        .piper_lua(
            r#"
            local a = step "a" { run = "touch a.ran" }
            step "b" { run = { "touch b.ran", "echo second" }, deps = { a } }
            "#,
        )
        .args(["exec", "b", "--dry-run"])
        .stdout("a | $ touch a.ran\nb | $ touch b.ran\nb | $ echo second\n")
        .stderr_contains("dry run")
        .run();
    assert!(!ran.path("a.ran").exists());
}

#[test]
fn json_is_one_event_per_line_in_order() {
    let ran = Test::new()
        .piper_lua(
            r#"
            local a = step "a" { run = "echo hi" }
            step "b" { run = "echo there", deps = { a } }
            "#,
        )
        .args(["exec", "b", "--json"])
        .stdout_any()
        .run();
    let events = ran.events();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"build_started"));
    assert_eq!(kinds.last(), Some(&"build_finished"));
    assert_eq!(events[0]["steps"][1]["deps"][0], "a");
    let pos = |kind: &str, step: &str| {
        events
            .iter()
            .position(|e| e["event"] == kind && e["step"] == step)
            .unwrap_or_else(|| panic!("no {kind} {step}"))
    };
    assert!(pos("step_finished", "a") < pos("step_queued", "b"));
    assert!(pos("step_started", "b") < pos("step_output", "b"));
    assert_eq!(events[pos("step_output", "a")]["data"], "hi\n");
    assert_eq!(events.last().unwrap()["status"], "success");
    assert!(
        ran.stderr.is_empty(),
        "JSON mode keeps stderr quiet: {}",
        ran.stderr
    );
}

#[test]
fn lua_function_steps_run_commands_and_print() {
    Test::new()
        .piper_lua(
            r#"
            step "lua" { env = { WHO = "ctx" }, run = function(ctx)
              ctx.print("step", ctx.step, ctx.env.WHO)
              local code = ctx.sh("exit 4", { check = false })
              ctx.print("code", code)
              ctx.exec { "echo", "argv form" }
            end }
            "#,
        )
        .args(["exec", "lua"])
        .stdout_contains("lua | step\tlua\tctx")
        .stdout_contains("lua | code\t4")
        .stdout_contains("lua | argv form")
        .stderr_any()
        .run();
}

#[test]
fn failing_command_in_a_lua_step_gives_its_exit_code() {
    Test::new()
        .piper_lua(r#"step "lua" { run = function(ctx) ctx.sh "exit 9" end }"#)
        .args(["exec", "lua"])
        .status(9)
        .stdout_contains("`exit 9` exited with code 9")
        .stderr_any()
        .run();
}

#[test]
fn steps_run_in_the_project_root_or_their_dir() {
    Test::new()
        .piper_lua(
            r#"
            step "root" { run = "pwd" }
            step "sub" { run = "pwd", dir = "pkg" }
            "#,
        )
        .file("pkg/.keep", "")
        .current_dir("pkg")
        .args(["exec", "root", "sub", "-j1"])
        .stdout_contains("/pkg\n")
        .stderr_any()
        .run();
}

#[test]
fn a_pipeline_may_include_another() {
    Test::new()
        .piper_lua(
            r#"
            local lint = step "lint" { run = "echo lint" }
            local test = step "test" { run = "echo test" }
            local checks = pipeline "checks" { lint, test }
            pipeline "ci" { checks, step "build" { run = "echo build" } }
            "#,
        )
        .args(["exec", "ci", "-j1"])
        .stdout_contains("lint  | lint")
        .stdout_contains("test  | test")
        .stdout_contains("build | build")
        .stderr_any()
        .run();
}

/// Runs piper under a real pseudo-terminal (`script` from util-linux).
fn on_a_tty(test: &Test, args: &str, no_color: bool) -> String {
    let mut cmd = std::process::Command::new("script");
    cmd.args([
        "-qfec",
        &format!("{} {args}", crate::harness::PIPER),
        "/dev/null",
    ])
    .current_dir(test.dir.path())
    .env("TERM", "xterm-256color")
    .stdin(std::process::Stdio::null());
    if no_color {
        cmd.env("NO_COLOR", "1");
    } else {
        cmd.env_remove("NO_COLOR");
    }
    let out = cmd.output().expect("script(1) from util-linux");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn on_a_terminal_prefixes_are_coloured_and_a_status_line_shows_running_steps() {
    let test = Test::new().piper_lua(
        r#"
        local slow = step "slow" { run = "echo working; sleep 0.5" }
        step "after" { run = "echo after", deps = { slow } }
        "#,
    );
    let tty = on_a_tty(&test, "exec after", false);
    assert!(
        tty.contains("\x1b[36mslow "),
        "coloured prefix missing: {tty:?}"
    );
    assert!(
        tty.contains("running: slow"),
        "status line missing: {tty:?}"
    );
    assert!(tty.contains("after succeeded"), "{tty:?}");
    let plain = on_a_tty(&test, "exec after", true);
    assert!(plain.contains("slow  | working"), "{plain:?}");
    assert!(
        !plain.contains("\x1b[36m"),
        "NO_COLOR still coloured: {plain:?}"
    );
}

#[test]
fn arguments_after_the_separator_reach_the_pipelines_steps_only() {
    let config = r#"
        local dep = step "dep" { run = 'printf "dep:%s|" "$@" >> log; echo >> log' }
        pipeline "deploy" {
          step "shell" { run = 'printf "shell:%s|" "$@" >> log; echo "env:$PIPER_ARGS" >> log', deps = { dep } },
          step "lua" { run = function(ctx)
            local f = io.open("log", "a")
            f:write("lua:" .. table.concat(ctx.args, "|") .. "\n")
            f:close()
            ctx.sh 'printf "ctx.sh:%s|" "$@" >> log; echo >> log'
          end, deps = { "shell" } },
          on_success = "after",
        }
        pipeline "after" { step "chained" { run = 'echo "chained:$#:$PIPER_ARGS" >> log' } }
    "#;
    let ran = Test::new()
        .piper_lua(config)
        .args([
            "exec",
            "deploy",
            "-j1",
            "--",
            "prod",
            "two words",
            "--dry-run",
            "it's",
        ])
        .stdout_any()
        .stderr_any()
        .run();
    assert_eq!(
        ran.read("log"),
        "dep:prod|dep:two words|dep:--dry-run|dep:it's|\n\
         shell:prod|shell:two words|shell:--dry-run|shell:it's|env:prod 'two words' --dry-run 'it'\\''s'\n\
         lua:prod|two words|--dry-run|it's\n\
         ctx.sh:prod|ctx.sh:two words|ctx.sh:--dry-run|ctx.sh:it's|\n\
         chained:0:\n"
    );
}

#[test]
fn other_arguments_rerun_an_up_to_date_step() {
    let config = r#"
        pipeline "p" { step "s" { run = 'echo "$@" > out', inputs = { "piper.lua" }, outputs = { "out" } } }
    "#;
    let ran = Test::new()
        .piper_lua(config)
        .args(["exec", "p", "--", "a"])
        .stdout_any()
        .stderr_any()
        .run();
    assert_eq!(ran.read("out"), "a\n");
    let dir = ran.dir.path();
    crate::harness::piper_in(dir, &["exec", "p", "--", "a"], &[]);
    let (stdout, _) = crate::harness::piper_in(dir, &["exec", "p", "--explain", "--", "b"], &[]);
    assert!(stdout.contains("env var PIPER_ARGS changed"), "{stdout}");
    assert_eq!(std::fs::read_to_string(dir.join("out")).unwrap(), "b\n");
}
