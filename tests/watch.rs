//! `piper watch` with real files and processes. Waits are bounded polls for
//! evidence (files the steps write), never assertions on elapsed time.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{PIPER, Test, process_gone, read_pid};

struct Watching {
    child: Child,
    dir: PathBuf,
}

impl Watching {
    fn start(test: &Test, args: &[&str]) -> Watching {
        Watching::start_with_log(test, args, "warn")
    }

    /// With `PIPER_LOG=level`: debug lines are evidence of internal steps.
    fn start_with_log(test: &Test, args: &[&str], level: &str) -> Watching {
        let dir = test.dir.path().to_path_buf();
        let child = Command::new(PIPER)
            .env("PIPER_LOG", level)
            .arg("watch")
            .args(args)
            .current_dir(&dir)
            .stdout(std::fs::File::create(dir.join(".watch.out")).unwrap())
            .stderr(std::fs::File::create(dir.join(".watch.err")).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Watching { child, dir }
    }

    fn runs(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("runs.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join(".watch.err")).unwrap_or_default()
    }

    /// Polls (bounded, 20 s) until `check` holds.
    fn until(&self, what: &str, check: impl Fn(&Watching) -> bool) {
        for _ in 0..2000 {
            if check(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "timed out waiting for {what}\nruns: {:?}\nstderr:\n{}",
            self.runs(),
            self.stderr()
        );
    }

    fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.dir.join(rel), text).unwrap();
    }

    fn stop(mut self) -> i32 {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PROJECT: &str = r#"
    local gen = step "gen" { inputs = "src/*.txt", outputs = "gen.out", run = "cat src/*.txt > gen.out; echo gen >> runs.log" }
    local use = step "use" { inputs = "gen.out", deps = { gen }, run = "echo use >> runs.log" }
    local other = step "other" { inputs = "other.txt", run = "echo other >> runs.log" }
    pipeline "all" { use, other }
"#;

fn project() -> Test {
    Test::new()
        .piper_lua(PROJECT)
        .file("src/a.txt", "a")
        .file("other.txt", "o")
}

fn count(runs: &[String], name: &str) -> usize {
    runs.iter().filter(|r| *r == name).count()
}

#[test]
fn an_edit_reruns_only_the_affected_steps_and_outputs_do_not_loop() {
    let test = project();
    let w = Watching::start(&test, &["all", "-j1"]);
    w.until("the first run", |w| {
        w.runs().len() == 3 && w.stderr().contains("watching for changes")
    });

    w.write("src/a.txt", "changed");
    w.until("gen and use to rerun", |w| count(&w.runs(), "use") == 2);
    // gen wrote gen.out, its declared output; had that triggered a run,
    // it would come before this sentinel change's run.
    w.write("other.txt", "sentinel");
    w.until("the sentinel run", |w| count(&w.runs(), "other") == 2);
    let runs = w.runs();
    assert_eq!(count(&runs, "gen"), 2, "{runs:?}");
    assert_eq!(count(&runs, "use"), 2, "{runs:?}");
    assert!(
        w.stderr()
            .contains("changed: src/a.txt · rerunning: gen, use"),
        "{}",
        w.stderr()
    );
    assert_eq!(w.stop(), 130);
}

#[test]
fn editing_piper_lua_reloads_and_a_broken_edit_keeps_watching() {
    let test = project();
    let w = Watching::start(&test, &["all", "-j1"]);
    w.until("the first run", |w| w.runs().len() == 3);
    let config = std::fs::read_to_string(w.dir.join("piper.lua")).unwrap();
    w.write("piper.lua", &format!("{config}\nstep \"broken\" {{"));
    w.until("the error", |w| {
        w.stderr().contains("piper.lua:6:") && w.stderr().contains("waiting for a fix")
    });
    w.write("piper.lua", &config.replace("echo other", "echo reloaded"));
    w.until("the reloaded command to run", |w| {
        w.runs().contains(&"reloaded".to_string())
    });
    assert_eq!(w.stop(), 130);
}

/// A step per file of a config-time glob: a file added while watching is
/// a new step, run without restarting `piper watch`; a file the config
/// reads, edited, re-evaluates it too.
#[test]
fn a_file_added_to_a_config_glob_adds_its_step_while_watching() {
    let test = Test::new()
        .piper_lua(
            r#"
            local fs = require "piper.fs"
            local mark = fs.read("mark.txt"):gsub("%s+$", "")
            local steps = {}
            for _, src in ipairs(fs.glob "src/*.txt") do
                steps[#steps + 1] = step("copy " .. src) {
                    inputs = { src },
                    run = "echo " .. mark .. ":" .. src .. " >> runs.log",
                }
            end
            pipeline "all" { table.unpack(steps) }
            "#,
        )
        .file("src/a.txt", "a")
        .file("mark.txt", "one");
    let w = Watching::start(&test, &["all"]);
    w.until("the first run", |w| w.runs() == ["one:src/a.txt"]);
    w.write("src/b.txt", "b");
    w.until("the new file's step", |w| {
        w.runs().contains(&"one:src/b.txt".to_string())
    });
    w.write("mark.txt", "two");
    w.until("the steps with the new value", |w| {
        w.runs().contains(&"two:src/a.txt".to_string())
            && w.runs().contains(&"two:src/b.txt".to_string())
    });
    assert_eq!(w.stop(), 130);
}

#[test]
fn a_rerun_starts_only_after_the_old_process_group_is_gone() {
    // The step records its start, and on SIGTERM records "term" after a
    // short delay before exiting; the new run's "start" must come after it.
    let test = Test::new()
        .piper_lua(
            r#"
            step "serve" {
              inputs = "conf.txt",
              run = "echo start >> runs.log; trap 'sleep 0.2; echo term >> runs.log; exit 0' TERM; sleep 1000 & echo $! > bg.pid; wait",
            }
            "#,
        )
        .file("conf.txt", "1");
    let w = Watching::start(&test, &["serve"]);
    w.until("the first start", |w| {
        w.runs() == ["start"] && w.dir.join("bg.pid").exists()
    });
    let first_bg = read_pid(&w.dir.join("bg.pid"));
    w.write("conf.txt", "2");
    w.until("the second start", |w| count(&w.runs(), "start") == 2);
    assert_eq!(w.runs(), ["start", "term", "start"]);
    assert!(
        process_gone(first_bg),
        "the old run's background process survived the restart"
    );
    assert_eq!(w.stop(), 130);
}

#[test]
fn ctrl_c_during_a_long_debounce_ends_watch_and_the_build() {
    let test = Test::new()
        .piper_lua(r#"step "s" { inputs = "in.txt", run = "echo s >> runs.log; sleep 1000 & echo $! > bg.pid; wait" }"#)
        .file("in.txt", "1");
    let mut w = Watching::start_with_log(&test, &["s", "--debounce", "1h"], "piper=debug");
    w.until("the first run", |w| w.dir.join("bg.pid").exists());
    let bg = read_pid(&w.dir.join("bg.pid"));
    w.write("in.txt", "2"); // opens a debounce that would last an hour
    w.until("the debounce to open", |w| {
        w.stderr().contains("debouncing")
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(w.child.id() as i32, libc::SIGINT) };
    let status = w.child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(process_gone(bg));
    assert_eq!(w.runs(), ["s"]);
}

#[test]
fn poll_mode_and_trigger_watch_paths_and_ignores() {
    let test = Test::new()
        .piper_lua(
            r#"
            local trigger = require "piper.trigger"
            trigger.watch { paths = "conf/*.toml", ignore = "conf/skip.toml" }
            step "s" { run = "echo s >> runs.log" }
            "#,
        )
        .file("conf/app.toml", "a=1")
        .file("conf/skip.toml", "b=1");
    let w = Watching::start(&test, &["s", "--poll"]);
    w.until("the first run", |w| {
        w.runs().len() == 1 && w.stderr().contains("watching")
    });
    w.write("conf/skip.toml", "b=2");
    w.write("conf/app.toml", "a=2");
    w.until("the rerun", |w| w.runs().len() == 2);
    assert!(
        w.stderr()
            .contains("changed: conf/app.toml · rerunning: everything"),
        "{}",
        w.stderr()
    );
    assert!(!w.stderr().contains("skip.toml"), "{}", w.stderr());
    assert_eq!(w.stop(), 130);
}

#[test]
fn unknown_target_is_an_error_before_watching() {
    Test::new()
        .piper_lua(PROJECT)
        .args(["watch", "nope"])
        .status(2)
        .stderr_contains("no pipeline or step named `nope`")
        .run();
}

#[test]
fn a_service_keeps_running_until_a_change_affects_it() {
    let test = Test::new()
        .piper_lua(
            r#"
            local build = step "build" { inputs = "src/*.txt", outputs = "app.txt", run = "cat src/*.txt > app.txt; echo build >> runs.log" }
            local serve = step "serve" {
              service = true,
              inputs = "server.conf",
              deps = { build },
              run = "echo serve >> runs.log; echo $$ > serve.pid; trap 'echo stopped >> runs.log; exit 0' TERM; while true; do sleep 0.05; done",
            }
            local docs = step "docs" { inputs = "docs.txt", run = "echo docs >> runs.log" }
            pipeline "dev" { serve, docs }
            "#,
        )
        .file("src/a.txt", "a")
        .file("server.conf", "port=1")
        .file("docs.txt", "d");
    let w = Watching::start(&test, &["dev", "-j2"]);
    w.until("the service to start", |w| {
        w.runs().contains(&"serve".to_string()) && w.dir.join("serve.pid").exists()
    });
    let first = read_pid(&w.dir.join("serve.pid"));
    // The service runs beside the build: not a "skipped" row of its summary
    // (regression, issue 8.11).
    w.until("the first summary", |w| {
        w.stderr().contains("dev succeeded")
    });
    assert!(!w.stderr().contains("skipped"), "{}", w.stderr());

    // Unrelated change: the service is left alone.
    w.write("docs.txt", "d2");
    w.until("docs to rerun", |w| count(&w.runs(), "docs") == 2);
    assert_eq!(count(&w.runs(), "serve"), 1, "{:?}", w.runs());
    assert!(
        !process_gone(first),
        "the service was stopped by an unrelated change"
    );

    // Its own input: stopped (and gone) before it starts again.
    w.write("server.conf", "port=2");
    w.until("the service to restart", |w| count(&w.runs(), "serve") == 2);
    assert!(process_gone(first));
    let runs = w.runs();
    let stopped = runs
        .iter()
        .position(|r| r == "stopped")
        .expect("SIGTERM marker");
    let restarted = runs.iter().rposition(|r| r == "serve").unwrap();
    assert!(stopped < restarted, "{runs:?}");

    // An upstream change: the build reruns, then the service restarts.
    w.write("src/a.txt", "a2");
    w.until("build and service to rerun", |w| {
        count(&w.runs(), "serve") == 3
    });
    let runs = w.runs();
    assert_eq!(count(&runs, "build"), 2, "{runs:?}");
    assert!(
        runs.iter().rposition(|r| r == "build") < runs.iter().rposition(|r| r == "serve"),
        "{runs:?}"
    );
    let last = read_pid(&w.dir.join("serve.pid"));
    assert_eq!(w.stop(), 130);
    assert!(process_gone(last), "Ctrl-C left the service running");
}

/// Regression (issue 8.1): in a chained build, `restrict` from the parent
/// build's change made `tarball` (no inputs, depending on the rebuilt `cli`)
/// report "up to date" and keep a stale artifact.
#[test]
fn a_chained_build_reruns_steps_without_inputs_after_the_parent_rebuilt() {
    let test = Test::new()
        .piper_lua(
            r#"
            local trigger = require "piper.trigger"
            local cli = step "cli" { inputs = "src.txt", outputs = "cli.bin", run = "cp src.txt cli.bin; echo cli >> runs.log" }
            local tarball = step "tarball" { deps = { cli }, run = "cp cli.bin tarball; echo tarball >> runs.log" }
            pipeline "ci" { cli, on_success = trigger.pipeline "package" }
            pipeline "package" { tarball }
            "#,
        )
        .file("src.txt", "v1");
    let w = Watching::start(&test, &["ci"]);
    w.until("the first run", |w| w.runs() == ["cli", "tarball"]);
    // Idle only once the chained build is over too (issue 8.11).
    w.until("the idle hint", |w| {
        w.stderr().contains("watching for changes")
    });
    let stderr = w.stderr();
    assert_eq!(
        stderr.matches("watching for changes").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.find("package succeeded") < stderr.find("watching for changes"),
        "{stderr}"
    );
    w.write("src.txt", "v2");
    w.until("tarball to run again", |w| count(&w.runs(), "tarball") == 2);
    assert_eq!(w.runs(), ["cli", "tarball", "cli", "tarball"]);
    assert_eq!(
        std::fs::read_to_string(w.dir.join("tarball")).unwrap(),
        "v2"
    );
    w.until("the second idle hint", |w| {
        w.stderr().matches("watching for changes").count() == 2
    });
    let dir = w.dir.clone();
    assert_eq!(w.stop(), 130);
    // Ctrl-C ends watching: no idle hint after it.
    let stderr = std::fs::read_to_string(dir.join(".watch.err")).unwrap();
    assert_eq!(
        stderr.matches("watching for changes").count(),
        2,
        "{stderr}"
    );
}

/// Regression (issue 8.11): a nested `.gitignore` was honoured by `fs.glob`
/// but not by the watcher, so ignored files under it triggered reruns.
#[test]
fn nested_gitignore_files_are_honoured_by_the_watcher() {
    let test = Test::new()
        .piper_lua(
            r#"
            local trigger = require "piper.trigger"
            trigger.watch { paths = { "web/**", "other.txt" } }
            step "s" { run = "echo s >> runs.log" }
            "#,
        )
        .file("web/.gitignore", "dist/\n")
        .file("web/dist/app.js", "1")
        .file("other.txt", "o");
    let w = Watching::start(&test, &["s"]);
    w.until("the first run", |w| w.runs() == ["s"]);
    w.write("web/dist/app.js", "2");
    // A sentinel change after the ignored one: had the ignored file
    // triggered a run, there would be three.
    w.write("other.txt", "sentinel");
    w.until("the sentinel run", |w| w.runs().len() >= 2);
    assert_eq!(w.runs(), ["s", "s"]);
    assert!(!w.stderr().contains("web/dist"), "{}", w.stderr());
    assert_eq!(w.stop(), 130);
}

/// Regression (issue 8.5): an orphan that leaves the step's process group
/// (here with `setsid`) is re-parented to the subreaper; when it exits it
/// must be reaped, not kept as a zombie for the life of `piper watch`.
/// (The step waits for the orphan's pid file so that the orphan has left
/// the group before the step's group is ended.)
#[test]
fn orphans_that_escape_the_group_are_reaped_while_watching() {
    let test = Test::new()
        .piper_lua(
            r#"step "s" { inputs = "in.txt", run = "setsid sh -c 'echo $$ > orphan.tmp; mv orphan.tmp orphan.pid; while [ ! -f go ]; do sleep 0.01; done' & while [ ! -f orphan.pid ]; do sleep 0.01; done; echo s >> runs.log" }"#,
        )
        .file("in.txt", "1");
    let w = Watching::start(&test, &["s"]);
    w.until("the orphan to start", |w| w.dir.join("orphan.pid").exists());
    let orphan = read_pid(&w.dir.join("orphan.pid"));
    w.until("the build to finish", |w| {
        w.stderr().contains("watching for changes")
    });
    w.write("go", "");
    // Gone entirely: a zombie still has a /proc entry.
    w.until("the orphan to be reaped", |_| {
        !std::path::Path::new(&format!("/proc/{orphan}")).exists()
    });
    assert_eq!(w.stop(), 130);
}

/// Build stamps are computed for each build watch runs, not frozen when
/// the config was loaded: the stamp reads a file the test changes between
/// builds, and the step that reruns sees the new value.
#[test]
fn build_stamps_are_computed_for_each_build() {
    let test = Test::new()
        .piper_lua(
            r#"
            local env = require "piper.env"
            env.stamp { VERSION = "cat version.txt" }
            step "s" { inputs = "in.txt", run = "echo $VERSION >> runs.log" }
            "#,
        )
        .file("version.txt", "v1")
        .file("in.txt", "1");
    let w = Watching::start(&test, &["s"]);
    w.until("the first build", |w| {
        w.runs() == ["v1"] && w.stderr().contains("watching for changes")
    });
    // version.txt is nobody's input: it changes nothing by itself...
    w.write("version.txt", "v2");
    // ...but the next build, caused by an input, reads it again.
    w.write("in.txt", "2");
    w.until("the second build", |w| w.runs().len() == 2);
    assert_eq!(w.runs(), ["v1", "v2"]);
    assert_eq!(w.stop(), 130);
}
