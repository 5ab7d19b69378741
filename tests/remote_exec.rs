//! Issue 31, remote execution: steps run on a real BuildGrid (Execution
//! and Bots services, its scheduler in a PostgreSQL database of the
//! test's own) by workers the test starts (tests/fixtures/reapi_worker.py,
//! speaking BuildGrid's Bots API: no REAPI worker can be installed here),
//! and the same project is built here to compare.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::cache::{status_of, steps};
use crate::harness::{KillOnDrop, PIPER, unindent};
use crate::reapi::BuildGrid;

/// BuildGrid with workers: dropped in this order (workers, server, then
/// its database).
struct Cluster {
    _workers: Vec<KillOnDrop>,
    grid: BuildGrid,
    _database: crate::pg::Database,
    /// Each command a worker started: its pid, then its argv.
    log: PathBuf,
}

impl Cluster {
    /// None (after a loud skip) without BuildGrid or PostgreSQL.
    fn start(test: &str, workers: usize) -> Option<Cluster> {
        Cluster::start_with(test, workers, "[execution, operations, bots]")
    }

    /// As [`Cluster::start`], the Execution service serving `endpoints`.
    fn start_with(test: &str, workers: usize, endpoints: &str) -> Option<Cluster> {
        let database = crate::pg::Database::create(test)?;
        // SQLAlchemy's name for the scheme.
        let url = database.url.replacen("postgres://", "postgresql://", 1);
        let config = "buildgrid-execution.yml";
        let vars = [("DATABASE_URL", url.as_str()), ("ENDPOINTS", endpoints)];
        let grid = BuildGrid::start_with(test, config, &vars)?;
        let log = grid.dir.path().join("worker.log");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reapi_worker.py");
        let mut started = Vec::new();
        for i in 0..workers {
            let mut child = std::process::Command::new(&grid.python)
                .arg(&script)
                .args([&grid.address, &format!("worker-{i}")])
                .env("PIPER_TEST_WORKER_LOG", &log)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            // Its session is open once it says so.
            let mut line = String::new();
            let stdout = child.stdout.take().unwrap();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line.trim(), "ready", "the worker did not start");
            started.push(KillOnDrop(child));
        }
        Some(Cluster {
            _workers: started,
            grid,
            _database: database,
            log,
        })
    }

    /// The commands the workers started.
    fn ran(&self) -> Vec<String> {
        let lines = self.lines();
        (lines.iter())
            .filter(|(_, what)| what != "canceled" && what != "timed out")
            .filter(|(_, what)| !what.starts_with("timeout "))
            .map(|(_, argv)| argv.clone())
            .collect()
    }

    /// The worker log: (pid, argv, "timeout 30s" (the action's), "canceled"
    /// or "timed out").
    fn lines(&self) -> Vec<(i32, String)> {
        (std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines())
        .filter_map(|l| l.split_once(' '))
        .map(|(pid, what)| (pid.parse().unwrap(), what.to_string()))
        .collect()
    }

    /// Until a worker log line satisfies `want` (or a minute passed).
    fn wait_for(&self, want: impl Fn(&(i32, String)) -> bool) -> (i32, String) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| want(l)) {
                return line;
            }
            assert!(std::time::Instant::now() < deadline, "{:?}", self.lines());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Two compiles (one printing a warning) and a link that needs both, plus
/// a Lua function step, which always runs here.
fn project(dir: &Path) {
    let config = unindent(
        r#"
        local a = step "cc a" {
          inputs = "src/a.c", outputs = "out/a.o",
          run = "mkdir -p out && tr a-z A-Z < src/a.c > out/a.o && echo 'warning: a is shouting' >&2",
        }
        local b = step "cc b" {
          inputs = "src/b.c", outputs = "out/b.o", timeout = "90s",
          run = "mkdir -p out && tr a-z A-Z < src/b.c > out/b.o",
        }
        local link = step "link" {
          deps = { a, b }, inputs = { "out/a.o", "out/b.o" }, outputs = "out/app",
          run = "cat out/a.o out/b.o > out/app && chmod +x out/app",
        }
        step "note" { deps = { link }, run = function(ctx) ctx.print("linked") end }
        pipeline "ci" { "note" }
        "#,
    );
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("piper.lua"), config).unwrap();
    std::fs::write(dir.join("src/a.c"), "int a;\n").unwrap();
    std::fs::write(dir.join("src/b.c"), "int b;\n").unwrap();
}

/// `config` as the piper.lua of `dir`, with the one source its steps read
/// (`src/x.c`).
fn x_project(dir: &Path, config: &str) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("piper.lua"), config).unwrap();
    std::fs::write(dir.join("src/x.c"), "int x;\n").unwrap();
}

/// `piper exec PIPELINE --json` in `dir`, with `extra` flags and a disk
/// cache of its own.
fn exec(dir: &Path, pipeline: &str, extra: &[&str]) -> Output {
    std::process::Command::new(PIPER)
        .args(["exec", pipeline, "--json", "--disk-cache"])
        .arg(dir.join(".disk-cache"))
        .args(extra)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// `piper exec slow --json --remote-exec URL` started in `dir` (its own
/// disk cache: what an earlier run stored must not spare it), stdout piped.
fn spawn_slow(dir: &Path, url: &str) -> std::process::Child {
    std::process::Command::new(PIPER)
        .args([
            "exec",
            "slow",
            "--json",
            "--remote-exec",
            url,
            "--disk-cache",
        ])
        .arg(dir.join(".disk-cache"))
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn events(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The same project built remotely and here: the same outputs, statuses,
/// output and exit code; each command step ran on a worker, the Lua step
/// here; where each ran is in the events.
#[test]
fn remote_and_local_builds_make_the_same_outputs_and_events() {
    let test = "remote_exec::remote_and_local_builds_make_the_same_outputs_and_events";
    let Some(cluster) = Cluster::start(test, 2) else {
        return;
    };
    let (remote, local) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    project(remote.path());
    project(local.path());
    let url = cluster.grid.url();
    let explained = std::process::Command::new(PIPER)
        .args(["explain", "ci", "--remote-exec", &url, "--disk-cache"])
        .arg(remote.path().join(".disk-cache"))
        .current_dir(remote.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&explained.stdout);
    assert!(
        said.contains(&format!("else run remotely on {url}")),
        "{said}"
    );
    let there = exec(remote.path(), "ci", &["--remote-exec", &url]);
    let here = exec(local.path(), "ci", &[]);
    assert!(there.status.success(), "{}", events(&there));
    assert!(here.status.success(), "{}", events(&here));

    let (seen_there, seen_here) = (steps(&there), steps(&here));
    for step in ["cc a", "cc b", "link", "note"] {
        let (a, b) = (status_of(&seen_there, step), status_of(&seen_here, step));
        assert_eq!((&a.1, &a.2), (&b.1, &b.2), "{step}");
    }
    for output in ["out/a.o", "out/b.o", "out/app"] {
        assert_eq!(
            std::fs::read(remote.path().join(output)).unwrap(),
            std::fs::read(local.path().join(output)).unwrap(),
            "{output}"
        );
    }
    let mode = |dir: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(dir.join("out/app"))
            .unwrap()
            .permissions()
            .mode()
            & 0o111
    };
    assert_eq!(mode(remote.path()), mode(local.path()));

    let ran = cluster.ran();
    assert_eq!(ran.len(), 3, "{ran:?}");
    assert!(
        ran.iter().any(|argv| argv.contains("tr a-z A-Z < src/a.c")),
        "{ran:?}"
    );
    let timeouts: Vec<_> = (cluster.lines().into_iter())
        .filter(|(_, what)| what.starts_with("timeout "))
        .collect();
    assert_eq!(
        timeouts.len(),
        1,
        "cc b's timeout went with its action: {timeouts:?}"
    );
    assert_eq!(timeouts[0].1, "timeout 90s");
    let said = events(&there);
    assert!(said.contains("ran on worker-"), "{said}");
    assert!(said.contains(&format!("({url}): queued")), "{said}");
    let ran_on = |step: &str| {
        said.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|e| e["event"] == "step_finished" && e["step"] == step)
            .map(|e| e["ran_on"].clone())
            .unwrap()
    };
    for step in ["cc a", "cc b", "link"] {
        let on = ran_on(step);
        assert_eq!(on["executor"], url.as_str(), "{step}: {on}");
        assert!(
            on["worker"].as_str().unwrap().starts_with("worker-"),
            "{on}"
        );
        assert!(on["queued_ms"].is_u64() && on["ran_ms"].is_u64(), "{on}");
    }
    assert!(ran_on("note").is_null(), "the Lua step ran here");

    // Ran there is as good as built here: up to date next time.
    let again = steps(&exec(remote.path(), "ci", &["--remote-exec", &url]));
    assert_eq!(status_of(&again, "link").1, "up_to_date", "{again:?}");
    assert_eq!(cluster.ran().len(), 3);
}

/// A step that fails on the cluster fails here the same way: its exit
/// code, its output, the build's exit code; a step the cluster cannot
/// place fails with the server's reason.
#[test]
fn a_step_that_fails_remotely_fails_as_it_would_here() {
    let test = "remote_exec::a_step_that_fails_remotely_fails_as_it_would_here";
    let Some(cluster) = Cluster::start(test, 1) else {
        return;
    };
    let config = unindent(
        r#"
        step "broken" {
          inputs = "src/*.c", outputs = "out/x.o",
          run = "echo 'src/x.c:1: error: expected ;' >&2; exit 3",
        }
        step "gpu" {
          inputs = "src/*.c", outputs = "out/y.o", requires = { gpu = "1" },
          run = "mkdir -p out && touch out/y.o",
        }
        "#,
    );
    let (remote, local) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in [remote.path(), local.path()] {
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(dir.join("piper.lua"), &config).unwrap();
        std::fs::write(dir.join("src/x.c"), "int x\n").unwrap();
    }
    let url = cluster.grid.url();
    let there = exec(remote.path(), "broken", &["--remote-exec", &url]);
    let here = exec(local.path(), "broken", &[]);
    assert_eq!(there.status.code(), here.status.code());
    let (a, b) = (steps(&there), steps(&here));
    assert_eq!(status_of(&a, "broken").1, "failed");
    assert_eq!(status_of(&a, "broken").2, status_of(&b, "broken").2);
    assert!(
        events(&there).contains("\"exit_code\":3"),
        "{}",
        events(&there)
    );

    let refused = exec(remote.path(), "gpu", &["--remote-exec", &url]);
    assert!(!refused.status.success());
    let said = events(&refused);
    assert!(said.contains("remote execution: "), "{said}");
    assert!(
        said.contains("gpu"),
        "the server's reason names the property: {said}"
    );
}

/// A cluster that cannot be reached: the step fails saying so, or with
/// `--remote-exec-fallback` runs here after one warning.
#[test]
fn an_unreachable_cluster_fails_the_step_or_falls_back_to_here() {
    let dir = tempfile::tempdir().unwrap();
    project(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("grpc://127.0.0.1:{port}");
    let failed = exec(dir.path(), "ci", &["--remote-exec", &url]);
    assert!(!failed.status.success());
    let said = events(&failed);
    assert!(said.contains("remote execution: "), "{said}");

    let fell_back = exec(
        dir.path(),
        "ci",
        &["--remote-exec", &url, "--remote-exec-fallback"],
    );
    let said = events(&fell_back);
    assert!(fell_back.status.success(), "{said}");
    assert!(said.contains("running it here"), "{said}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/app")).unwrap(),
        "INT A;\nINT B;\n"
    );
}

/// piperd with `--remote-exec`: an agent's build fans its command steps
/// out to the cluster, runs its Lua step itself, and its API says where
/// each step ran.
#[test]
fn piperd_builds_run_their_steps_on_the_cluster() {
    let test = "remote_exec::piperd_builds_run_their_steps_on_the_cluster";
    let Some(cluster) = Cluster::start(test, 1) else {
        return;
    };
    let source = tempfile::tempdir().unwrap();
    project(source.path());
    let files: Vec<(String, Vec<u8>)> = ["piper.lua", "src/a.c", "src/b.c"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(source.path().join(f)).unwrap()))
        .collect();
    let files: Vec<(&str, &[u8])> = files.iter().map(|(f, b)| (f.as_str(), &b[..])).collect();
    let repo = crate::agent::repo(&files);
    let agent =
        crate::agent::Daemon::start_with(None, &["--remote-exec", &cluster.grid.url()], None);
    let id = agent.queue(&serde_json::json!({ "repo": repo.path(), "pipeline": "ci" }));
    let build = agent.wait_finished(id);
    assert_eq!(build["status"], "success", "{build}");
    let message = |name: &str| {
        let steps = build["steps"].as_array().unwrap();
        let step = steps.iter().find(|s| s["name"] == name).unwrap();
        step["message"].as_str().unwrap_or_default().to_string()
    };
    assert!(message("link").starts_with("ran on worker-0"), "{build}");
    assert_eq!(cluster.ran().len(), 3, "{:?}", cluster.ran());
}

/// Ctrl-C reaches the worker: piper cancels the remote operation, and the
/// process the worker started for the step ends.
#[test]
fn ctrl_c_cancels_the_remote_operation_and_its_process() {
    let test = "remote_exec::ctrl_c_cancels_the_remote_operation_and_its_process";
    let Some(cluster) = Cluster::start(test, 1) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config =
        "step \"slow\" { inputs = \"src/*.c\", outputs = \"out/x\", run = \"sleep 300\" }\n";
    x_project(dir.path(), config);
    let piper = spawn_slow(dir.path(), &cluster.grid.url());
    let (pid, _) = cluster.wait_for(|(_, what)| what.contains("sleep 300"));
    // SAFETY: signals to processes this test started.
    unsafe { libc::kill(piper.id() as i32, libc::SIGINT) };
    let out = piper.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", events(&out));
    assert!(
        events(&out).contains("\"status\":\"canceled\""),
        "{}",
        events(&out)
    );
    cluster.wait_for(|(p, what)| *p == pid && what == "canceled");
    // SAFETY: probing a pid; signal 0 sends nothing.
    assert_ne!(
        unsafe { libc::kill(pid, 0) },
        0,
        "the step's process is gone"
    );
}

/// The server dies (SIGKILL) and comes back while a step runs on a
/// worker: piper follows the operation again (`GetOperation`) instead of
/// running the step again, and the build succeeds.
#[test]
fn a_server_restart_mid_build_is_survived() {
    let test = "remote_exec::a_server_restart_mid_build_is_survived";
    survives_a_restart(test, "[execution, operations, bots]");
}

/// As above, on a server without the Operations service, as Buildbarn
/// and NativeLink are (`GetOperation` is UNIMPLEMENTED): the operation is
/// followed with `WaitExecution`, before and after the restart.
#[test]
fn a_server_without_the_operations_service_is_followed_with_wait_execution() {
    let test =
        "remote_exec::a_server_without_the_operations_service_is_followed_with_wait_execution";
    survives_a_restart(test, "[execution, bots]");
}

fn survives_a_restart(test: &str, endpoints: &str) {
    let Some(mut cluster) = Cluster::start_with(test, 1, endpoints) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = "step \"slow\" { inputs = \"src/*.c\", outputs = \"out/x\", \
                  run = \"sleep 1 && mkdir -p out && cp src/x.c out/x\" }\n";
    x_project(dir.path(), config);
    let piper = spawn_slow(dir.path(), &cluster.grid.url());
    cluster.wait_for(|(_, what)| what.contains("sleep 1"));
    cluster.grid.restart();
    let out = piper.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", events(&out));
    assert_eq!(status_of(&steps(&out), "slow").1, "success");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/x")).unwrap(),
        "int x;\n"
    );
    assert_eq!(cluster.ran().len(), 1, "ran once: {:?}", cluster.ran());
}

/// More steps in flight than the server takes RPCs at once (BuildGrid
/// answers RESOURCE_EXHAUSTED past 10, and each execution holds one for
/// as long as it runs): piper waits its turn, and every step runs.
#[test]
fn a_build_wider_than_the_servers_rpc_limit_waits_its_turn() {
    let test = "remote_exec::a_build_wider_than_the_servers_rpc_limit_waits_its_turn";
    let Some(cluster) = Cluster::start(test, 2) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = String::new();
    for i in 0..24 {
        config.push_str(&format!(
            "step \"s{i}\" {{ inputs = \"src/x.c\", outputs = \"out/{i}\", \
             run = \"mkdir -p out && sleep 0.2 && echo {i} > out/{i}\" }}\n"
        ));
    }
    let all: Vec<String> = (0..24).map(|i| format!("\"s{i}\"")).collect();
    config.push_str(&format!("pipeline \"wide\" {{ {} }}\n", all.join(", ")));
    x_project(dir.path(), &config);
    let url = cluster.grid.url();
    let out = exec(
        dir.path(),
        "wide",
        &["--remote-exec", &url, "--remote-jobs", "64"],
    );
    assert!(out.status.success(), "{}", events(&out));
    assert_eq!(cluster.ran().len(), 24);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/23")).unwrap(),
        "23\n"
    );
}

/// A flaky step's retry runs again on the cluster: the server keeps
/// failed results (`cache-failed-actions`), and answering the retry with
/// the first failure would make every retry fail.
#[test]
fn a_retry_runs_again_instead_of_getting_the_cached_failure() {
    let test = "remote_exec::a_retry_runs_again_instead_of_getting_the_cached_failure";
    let Some(cluster) = Cluster::start(test, 1) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The worker runs on this machine: the mark outside its sandbox tells
    // the second run from the first.
    let mark = dir.path().join("failed-once");
    let config = format!(
        "step \"flaky\" {{ inputs = \"src/x.c\", outputs = \"out/x\", retries = 1, \
         run = \"if [ -e {m} ]; then mkdir -p out && echo ok > out/x; else touch {m}; exit 1; fi\" }}\n",
        m = mark.display()
    );
    x_project(dir.path(), &config);
    let out = exec(dir.path(), "flaky", &["--remote-exec", &cluster.grid.url()]);
    assert!(out.status.success(), "{}", events(&out));
    assert_eq!(cluster.ran().len(), 2);
}
