//! Process supervision, proven with real processes: nothing a step started
//! outlives it — after a failure, a timeout, fail-fast, or Ctrl-C.

use crate::harness::{Test, process_gone, read_pid, wait_for_file};

#[test]
fn a_failing_step_leaves_no_orphans() {
    let ran = Test::new()
        .piper_lua(
            r#"step "a" { run = "sleep 1000 & echo $! > bg.pid; echo $$ > sh.pid; exit 3" }"#,
        )
        .args(["exec", "a"])
        .status(3)
        .stdout_any()
        .stderr_any()
        .run();
    assert!(
        process_gone(read_pid(&ran.path("bg.pid"))),
        "background sleep survived"
    );
    assert!(process_gone(read_pid(&ran.path("sh.pid"))));
}

#[test]
fn a_successful_step_leaves_no_orphans_either() {
    let ran = Test::new()
        .piper_lua(r#"step "a" { run = "sleep 1000 & echo $! > bg.pid" }"#)
        .args(["exec", "a"])
        .stdout_any()
        .stderr_any()
        .run();
    assert!(process_gone(read_pid(&ran.path("bg.pid"))));
}

#[test]
fn timeout_ends_the_whole_group_with_exit_124() {
    let ran = Test::new()
        .piper_lua(r#"step "slow" { run = "sleep 1000 & echo $! > bg.pid; sleep 1000", timeout = "300ms" }"#)
        .args(["exec", "slow", "--json"])
        .status(124)
        .stdout_any().run();
    assert!(process_gone(read_pid(&ran.path("bg.pid"))));
    let finished = ran
        .events()
        .into_iter()
        .find(|e| e["event"] == "step_finished")
        .unwrap();
    assert_eq!(finished["status"], "timed_out");
    assert_eq!(finished["message"], "timed out after 300ms");
}

#[test]
fn sigterm_then_sigkill_for_a_group_that_ignores_sigterm() {
    // The step traps TERM and records it, then keeps running: only the
    // SIGKILL after the grace period ends it.
    let ran = Test::new()
        .piper_lua(
            r#"step "stubborn" { run = "trap 'echo term > got.term' TERM; echo $$ > sh.pid; while true; do sleep 0.05; done", timeout = "200ms" }"#,
        )
        .env("PIPER_KILL_GRACE", "300ms")
        .args(["exec", "stubborn"])
        .status(124)
        .stdout_any().stderr_any().run();
    assert!(
        ran.path("got.term").exists(),
        "SIGTERM was not delivered first"
    );
    assert!(process_gone(read_pid(&ran.path("sh.pid"))));
}

#[test]
fn fail_fast_cancels_running_siblings_and_their_children() {
    let ran = Test::new()
        .piper_lua(
            r#"
            local long = step "long" { run = "sleep 1000 & echo $! > bg.pid; wait" }
            local bad = step "bad" { run = "while [ ! -s bg.pid ]; do sleep 0.01; done; exit 5" }
            pipeline "p" { long, bad }
            "#,
        )
        .args(["exec", "p", "-j2"])
        .status(5)
        .stderr_contains("long  canceled")
        .stdout_any()
        .run();
    assert!(process_gone(read_pid(&ran.path("bg.pid"))));
}

#[test]
fn ctrl_c_ends_every_group_and_exits_130() {
    let test = Test::new()
        .piper_lua(
            r#"
            local a = step "a" { run = "sleep 1000 & echo $! > a.pid; wait" }
            local b = step "b" { run = function(ctx) ctx.sh "sleep 1000 & echo $! > b.pid; wait" end }
            pipeline "p" { a, b }
            "#,
        )
        .args(["exec", "p", "-j2"]);
    let dir = test.dir.path().to_path_buf();
    let mut child = test
        .command()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_file(&dir.join("a.pid"));
    wait_for_file(&dir.join("b.pid"));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    for pid in ["a.pid", "b.pid"] {
        assert!(
            process_gone(read_pid(&dir.join(pid))),
            "{pid} survived Ctrl-C"
        );
    }
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("p interrupted"), "{stderr}");
}
