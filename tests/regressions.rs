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
