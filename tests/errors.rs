//! Every "bad input" the engine issue lists: a clear message that names the
//! problem and where, exit status 2, never a panic.

use crate::harness::Test;

#[test]
fn no_config_says_where_it_looked_and_suggests_init() {
    Test::new()
        .args(["list"])
        .status(2)
        .stderr_contains("no piper.lua found in")
        .stderr_contains("run `piper init`")
        .run();
}

#[test]
fn missing_file_flag_names_the_file() {
    Test::new()
        .args(["-f", "nope.lua", "list"])
        .status(2)
        .stderr_contains("nope.lua does not exist")
        .run();
}

/// `-f` naming a directory said the file "does not exist", which sends a
/// person looking for a typo in a path that is there.
#[test]
fn a_file_flag_naming_a_directory_says_so() {
    Test::new()
        .file("conf/piper.lua/README", "a directory named piper.lua")
        .args(["-f", "conf/piper.lua", "list"])
        .status(2)
        .stderr_contains("conf/piper.lua is a directory, not a config file")
        .stderr_lacks("does not exist")
        .run();
}

#[test]
fn syntax_error_has_file_and_line() {
    Test::new()
        .piper_lua("step \"a\" { run = \"true\"\n\nstep \"b\" {}")
        .args(["list"])
        .status(2)
        .stderr_contains("error: piper.lua:3:")
        .run();
}

#[test]
fn runtime_error_in_config_has_file_and_line() {
    Test::new()
        .piper_lua("local x\nx.y = 1")
        .args(["list"])
        .status(2)
        .stderr_contains("piper.lua:2: attempt to index a nil value (local 'x')")
        .run();
}

#[test]
fn error_in_required_module_names_that_file() {
    Test::new()
        .piper_lua(r#"require "ci.rust""#)
        .file(
            "ci/rust.lua",
            "local M = {}\n\nerror('broken module')\nreturn M",
        )
        .args(["list"])
        .status(2)
        .stderr_contains("ci/rust.lua:3: broken module")
        .run();
}

#[test]
fn unknown_dependency_suggests_the_near_name() {
    Test::new()
        .piper_lua(
            r#"
            step "build" { run = "true" }
            step "test" { run = "true", deps = { "biuld" } }
            "#,
        )
        .args(["list"])
        .status(2)
        .stderr(
            "
            error: piper.lua:2: step `test` depends on `biuld`, which is not a step
              did you mean `build`?
            ",
        )
        .run();
}

#[test]
fn cycle_prints_its_path() {
    Test::new()
        .piper_lua(
            r#"
            step "a" { run = "true", deps = { "c" } }
            step "b" { run = "true", deps = { "a" } }
            step "c" { run = "true", deps = { "b" } }
            "#,
        )
        .args(["exec", "a"])
        .status(2)
        .stderr_contains("dependency cycle: a -> c -> b -> a")
        .run();
}

#[test]
fn self_dependency_is_a_cycle() {
    Test::new()
        .piper_lua(r#"step "a" { run = "true", deps = { "a" } }"#)
        .args(["list"])
        .status(2)
        .stderr_contains("piper.lua:1: dependency cycle: a -> a")
        .run();
}

#[test]
fn duplicate_step_names_both_places() {
    Test::new()
        .piper_lua("step \"a\" { run = \"true\" }\n\nstep \"a\" { run = \"false\" }")
        .args(["list"])
        .status(2)
        .stderr("error: piper.lua:3: step `a` is defined twice\n  first defined at piper.lua:1\n")
        .run();
}

#[test]
fn duplicate_pipeline_names() {
    Test::new()
        .piper_lua("pipeline \"p\" {}\npipeline \"p\" {}")
        .args(["list"])
        .status(2)
        .stderr_contains("piper.lua:2: pipeline `p` is defined twice")
        .run();
}

#[test]
fn wrong_types_name_the_field() {
    for (lua, message) in [
        (
            r#"step "a" { run = 42 }"#,
            "step `a`: `run` must be a shell command, a list of commands or a function, got the number 42",
        ),
        (
            r#"step "a" { run = "x", timeout = "ten minutes" }"#,
            "step `a`: `timeout`: `ten minutes` is not a duration",
        ),
        (
            r#"step "a" { run = "x", retries = -1 }"#,
            "`retries` must be a whole number from 0 to 100",
        ),
        (
            r#"step "a" { run = { "ok", 3 } }"#,
            "`run[2]` must be a shell command string or an argv table, got the number 3",
        ),
        (
            r#"step "a" { run = "x", env = { A = {} } }"#,
            "`env`: A must be a string, number or boolean",
        ),
        (
            r#"step "a" { run = "x", argv = { "y" } }"#,
            "set either `run` or `argv`, not both",
        ),
        (r#"step "a" { "echo" }"#, "unexpected list item"),
        (
            r#"step "a" "x""#,
            "step \"a\": expected a table { ... } after the name, got string",
        ),
        (r#"step(42)"#, "step: expected a name"),
        (
            r#"pipeline "p" { 42 }"#,
            "pipeline `p`: `item 1` must be a step, a pipeline or a name",
        ),
    ] {
        Test::new()
            .piper_lua(lua)
            .args(["list"])
            .status(2)
            .stderr_contains("piper.lua:1:")
            .stderr_contains(message)
            .run();
    }
}

#[test]
fn unknown_field_suggests_the_known_one() {
    Test::new()
        .piper_lua(r#"step "a" { run = "true", dep = {} }"#)
        .args(["list"])
        .status(2)
        .stderr("error: piper.lua:1: step `a` has no field `dep`\n  did you mean `deps`?\n")
        .run();
}

#[test]
fn unknown_target_lists_what_exists() {
    Test::new()
        .piper_lua(
            r#"
            local t = step "test" { run = "true" }
            pipeline "ci" { t }
            "#,
        )
        .args(["exec", "tset"])
        .status(2)
        .stderr("error: no pipeline or step named `tset`\n  did you mean `test`?\n  pipelines: ci\n  steps: test\n")
        .run();
}

#[test]
fn unknown_pipeline_member_and_trigger_target() {
    Test::new()
        .piper_lua(r#"pipeline "ci" { "lnt" } step "lint" { run = "true" }"#)
        .args(["list"])
        .status(2)
        .stderr_contains("pipeline `ci` lists `lnt`, which is neither a step nor a pipeline\n  did you mean `lint`?")
        .run();
    Test::new()
        .piper_lua(r#"pipeline "ci" { on_success = "deplyo" } pipeline "deploy" {}"#)
        .args(["list"])
        .status(2)
        .stderr_contains("pipeline `ci` triggers pipeline `deplyo`, which does not exist\n  did you mean `deploy`?")
        .run();
}

#[test]
fn trigger_loops_are_refused() {
    Test::new()
        .piper_lua(r#"pipeline "a" { on_success = "b" } pipeline "b" { on_failure = "a" }"#)
        .args(["list"])
        .status(2)
        .stderr_contains("pipelines trigger each other in a loop: a -> b -> a")
        .run();
}

#[test]
fn bad_env_override() {
    Test::new()
        .piper_lua(r#"step "a" { run = "true" }"#)
        .args(["exec", "a", "--env", "NOEQUALS"])
        .status(2)
        .stderr_contains("--env expects KEY=VALUE, got `NOEQUALS`")
        .run();
}

#[test]
fn command_not_found_fails_the_step_with_127() {
    let ran = Test::new()
        .piper_lua(r#"step "a" { argv = { "piper-no-such-program" } }"#)
        .args(["exec", "a", "--json"])
        .status(127)
        .stdout_contains("command not found: piper-no-such-program")
        .run();
    let finished = ran
        .events()
        .into_iter()
        .find(|e| e["event"] == "step_finished")
        .unwrap();
    assert_eq!(finished["exit_code"], 127);
    assert_eq!(finished["status"], "failed");
    Test::new()
        .piper_lua(r#"step "a" { run = "piper-no-such-program" }"#)
        .args(["exec", "a"])
        .status(127)
        .stdout_contains("not found")
        .stderr_any()
        .run();
}

#[test]
fn error_inside_a_lua_step_fails_it_with_the_traceback() {
    Test::new()
        .piper_lua(
            r#"
            local function helper() error("no config for " .. "prod") end
            step "deploy" { run = function(ctx) helper() end }
            "#,
        )
        .args(["exec", "deploy"])
        .status(1)
        .stdout_contains("deploy | piper.lua:1: no config for prod")
        .stdout_contains("stack traceback:")
        .stdout_contains("in upvalue 'helper'")
        .stderr_contains("first failure: deploy: piper.lua:1: no config for prod")
        .run();
}

#[test]
fn missing_working_directory_fails_the_step() {
    Test::new()
        .piper_lua(r#"step "a" { run = "true", dir = "nope" }"#)
        .args(["exec", "a"])
        .status(1)
        .stdout_contains("working directory")
        .stdout_contains("does not exist")
        .stderr_any()
        .run();
}
