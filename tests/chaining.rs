//! Pipelines chaining pipelines: on_success, on_failure, always.

use crate::harness::Test;

const CHAIN: &str = r#"
    local trigger = require "piper.trigger"
    local env = require "piper.env"
    step "work" { run = "echo work; exit ${FAIL:-0}" }
    pipeline "ci" {
      "work",
      on_success = trigger.pipeline("deploy", { env = { TARGET = "prod" } }),
      on_failure = "notify",
      always = { "cleanup" },
    }
    pipeline "deploy" { step "upload" { run = "echo uploading to $TARGET" } }
    pipeline "notify" { step "page" { run = "echo paging" } }
    pipeline "cleanup" { step "tidy" { run = "echo tidy" } }
"#;

#[test]
fn success_runs_on_success_and_always() {
    let ran = Test::new()
        .piper_lua(CHAIN)
        .args(["exec", "ci", "--json"])
        .stdout_lacks("paging")
        .run();
    let started: Vec<(String, Option<String>)> = ran
        .events()
        .iter()
        .filter(|e| e["event"] == "build_started")
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["triggered_by"]["on"].as_str().map(String::from),
            )
        })
        .collect();
    assert_eq!(
        started,
        [
            ("ci".to_string(), None),
            ("deploy".to_string(), Some("success".to_string())),
            ("cleanup".to_string(), Some("always".to_string())),
        ]
    );
    assert!(ran.stdout.contains("uploading to prod"));
}

#[test]
fn failure_runs_on_failure_and_always_and_keeps_the_failing_code() {
    Test::new()
        .piper_lua(CHAIN)
        .env("FAIL", "7")
        .args(["exec", "ci"])
        .status(7)
        .stdout_contains("page | paging")
        .stdout_contains("tidy | tidy")
        .stdout_lacks("uploading")
        .stderr_contains("▶ notify (build 2): ci failed, chaining")
        .run();
}

#[test]
fn a_plain_step_target_chains_nothing() {
    // A step target carries no triggers.
    Test::new()
        .piper_lua(CHAIN)
        .args(["exec", "work"])
        .stdout("work | $ echo work; exit ${FAIL:-0}\nwork | work\n")
        .stderr_any()
        .run();
}

/// Ctrl-C during a build: it ends as interrupted (130) and none of its
/// triggers fire — not even `always` or `on_failure`.
#[test]
fn chained_pipelines_do_not_run_after_ctrl_c() {
    let test = Test::new().piper_lua(
        r#"
        step "work" { run = "touch started; sleep 1000" }
        pipeline "ci" { "work", on_success = "after", on_failure = "after", always = "after" }
        pipeline "after" { step "chained" { run = "touch chained.ran" } }
        "#,
    );
    let dir = test.dir.path().to_path_buf();
    let mut child = test
        .command()
        .args(["exec", "ci"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::harness::wait_for_file_to_exist(&dir.join("started"));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    // piper has exited: anything it chained would have run by now.
    assert!(!dir.join("chained.ran").exists());
}

#[test]
fn a_failing_chained_pipeline_fails_the_run() {
    Test::new()
        .piper_lua(
            r#"
            pipeline "ci" { step "ok" { run = "true" }, on_success = "deploy" }
            pipeline "deploy" { step "up" { run = "exit 4" } }
            "#,
        )
        .args(["exec", "ci"])
        .status(4)
        .stdout_any()
        .stderr_any()
        .run();
}

/// A step both the parent and the chained pipeline need keeps the parent's
/// environment: the trigger's env does not reach it, so it is built once
/// and then up to date (not rebuilt back and forth).
#[test]
fn a_step_the_parent_shares_with_the_chained_build_is_built_once() {
    let test = Test::new()
        .piper_lua(
            r#"
            local trigger = require "piper.trigger"
            local cc = step "cc" {
              inputs = "main.c", outputs = "main.o",
              run = 'echo "cc CHANNEL=${CHANNEL:-}" >> runs.log; cp main.c main.o',
            }
            pipeline "ci" {
              cc,
              on_success = trigger.pipeline("package", { env = { CHANNEL = "nightly" } }),
            }
            pipeline "package" {
              step "tar" { deps = { cc }, run = 'echo "tar CHANNEL=$CHANNEL" >> runs.log' },
            }
            "#,
        )
        .file("main.c", "int main;");
    let dir = test.dir.path();
    let exec = || {
        crate::harness::piper_in(dir, &["exec", "ci"], &[]);
        let log = std::fs::read_to_string(dir.join("runs.log")).unwrap_or_default();
        std::fs::remove_file(dir.join("runs.log")).ok();
        log
    };
    // cc compiles once; the chained step new to package gets the env.
    assert_eq!(exec(), "cc CHANNEL=\ntar CHANNEL=nightly\n");
    // And the next run finds cc up to date.
    assert_eq!(exec(), "tar CHANNEL=nightly\n");
}
