//! piperd end to end: a real agent process on a 127.0.0.1 port, real git
//! repositories in temp dirs, real SQLite files, and a real PostgreSQL
//! database (a fresh one per test) where `PIPER_TEST_POSTGRES_URL` is set.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{PIPER, git, process_gone, read_pid, unindent, wait_for_file};
use crate::pg::Database;

pub const PIPERD: &str = env!("CARGO_BIN_EXE_piperd");

/// A running piperd with its own data directory.
pub struct Daemon {
    child: Option<Child>,
    pub data: PathBuf,
    pub url: String,
    pub token: String,
    /// Its stderr (the agent's log).
    pub log: PathBuf,
    args: Vec<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Daemon {
    pub fn start(database: Option<&str>) -> Daemon {
        Daemon::start_with(database, &[], None)
    }

    /// With more flags, and optionally a data directory of the test's own
    /// (a small filesystem, say).
    pub fn start_with(database: Option<&str>, extra: &[&str], data: Option<PathBuf>) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("piperd.log");
        let data = data.unwrap_or_else(|| dir.path().join("data"));
        let mut args: Vec<String> = Vec::new();
        if !extra.contains(&"--grace") {
            args.extend(["--grace".to_string(), "2s".to_string()]);
        }
        if !extra.contains(&"--labels") {
            args.extend(["--labels".to_string(), "team=ci,os=linux".to_string()]);
        }
        if let Some(db) = database {
            args.extend(["--database".to_string(), db.to_string()]);
        }
        args.extend(["--schedule-check".to_string(), "100ms".to_string()]);
        if !extra.contains(&"--name") {
            args.extend(["--name".to_string(), "test-agent".to_string()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut daemon = Daemon {
            child: None,
            data,
            url: String::new(),
            token: String::new(),
            log,
            args,
            _dir: Some(dir),
        };
        daemon.spawn();
        daemon
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.data.join("piperd.addr"));
        let child = Command::new(PIPERD)
            .args(["start", "--listen", "127.0.0.1:0", "--data"])
            .arg(&self.data)
            .args(&self.args)
            .env("PIPER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_file(&self.data.join("piperd.addr"));
        self.url = format!(
            "http://{}",
            std::fs::read_to_string(self.data.join("piperd.addr"))
                .unwrap()
                .trim()
        );
        self.token = std::fs::read_to_string(self.data.join("token"))
            .unwrap()
            .trim()
            .to_string();
    }

    /// Its `--name`.
    pub fn name(&self) -> String {
        let at = self.args.iter().position(|a| a == "--name").unwrap();
        self.args[at + 1].clone()
    }

    /// Whether its process has exited (killed by a step, say).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            None => true,
            Some(child) => child.try_wait().unwrap().is_some(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// SIGTERM and wait for the exit; its exit code.
    pub fn terminate(&mut self) -> i32 {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap().code().unwrap_or(-1)
    }

    /// SIGKILL, as a crash would.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        self.kill_hard();
        self.spawn();
    }

    /// Runs `piper` against this agent.
    pub fn piper(&self, args: &[&str]) -> (i32, String, String) {
        self.piper_in(Path::new(env!("CARGO_MANIFEST_DIR")), args)
    }

    /// Runs `piper` in `dir` against this agent (no `PIPER_LABELS` from the
    /// test's environment).
    pub fn piper_in(&self, dir: &Path, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(PIPER)
            .args(args)
            .env("PIPER_SERVER", &self.url)
            .env("PIPER_TOKEN", &self.token)
            .env_remove("PIPER_LABELS")
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    /// Build `id`'s whole log, as stored.
    pub fn log(&self, id: i64) -> String {
        let path = format!("/api/v1/builds/{id}/log");
        let (_, body) = self.http("GET", &path, Some(&self.token), None);
        String::from_utf8_lossy(&body).into_owned()
    }

    pub fn build(&self, id: i64) -> Value {
        let (code, stdout, stderr) = self.piper(&["show", &id.to_string(), "--json"]);
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str(&stdout).unwrap()
    }

    /// Polls until the build has ended (bounded, 30 s).
    pub fn wait_finished(&self, id: i64) -> Value {
        for _ in 0..600 {
            let b = self.build(id);
            if !matches!(b["status"].as_str(), Some("queued" | "running")) {
                return b;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("build {id} never finished");
    }

    /// An HTTP request with a raw body: (status, body).
    /// Queues a build over the API (`POST /api/v1/builds`); its id. Any
    /// answer but 201 fails the test, showing the agent's log.
    pub fn queue(&self, body: &Value) -> i64 {
        let (status, answer) = self.http(
            "POST",
            "/api/v1/builds",
            Some(&self.token),
            Some(body.to_string().into_bytes()),
        );
        assert_eq!(
            status,
            201,
            "{}\n{}",
            String::from_utf8_lossy(&answer),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        serde_json::from_slice::<Value>(&answer).unwrap()["id"]
            .as_i64()
            .unwrap()
    }

    pub fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, Vec<u8>) {
        crate::harness::block_on(async {
            let client = crate::harness::http();
            let url = format!("{}{path}", self.url);
            let mut request = match method {
                "POST" => client.post(url),
                "DELETE" => client.delete(url),
                _ => client.get(url),
            };
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request
                    .header("content-type", "application/json")
                    .body(body);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.bytes().await.unwrap().to_vec())
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child. A test that stopped it
            // (SIGSTOP) and failed before it continued it: a stopped
            // process only takes the SIGTERM once continued.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
                libc::kill(child.id() as i32, libc::SIGCONT);
            }
            let _ = child.wait();
        }
    }
}

/// `GET path` with the token; the JSON answer (any status but 200 fails).
pub fn get(daemon: &Daemon, path: &str) -> Value {
    let (status, body) = daemon.http("GET", path, Some(&daemon.token), None);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// `POST /api/v1/builds` with `body` and the token: (status, JSON answer).
pub fn post_build(daemon: &Daemon, body: &Value) -> (u16, Value) {
    let (status, body) = daemon.http(
        "POST",
        "/api/v1/builds",
        Some(&daemon.token),
        Some(body.to_string().into_bytes()),
    );
    let answer = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, answer)
}

/// `eventually` (60 s), and on a time-out the agents' logs, to say why.
pub fn eventually_or_logs<A: std::borrow::Borrow<Daemon>>(
    agents: &[A],
    what: &str,
    check: impl Fn() -> bool,
) {
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::harness::eventually(Duration::from_secs(60), what, check)
    }));
    if caught.is_err() {
        let logs: Vec<String> = agents
            .iter()
            .map(|a| {
                let a = a.borrow();
                format!(
                    "--- {} ---\n{}",
                    a.name(),
                    std::fs::read_to_string(&a.log).unwrap_or_default()
                )
            })
            .collect();
        panic!("timed out waiting for {what}\n{}", logs.join("\n"));
    }
}

/// A git repository in a temp dir with `files`, committed and tagged v1.0.0.
pub fn repo(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-q", "-m", "init"]);
    git(dir.path(), &["tag", "v1.0.0"]);
    dir
}

pub const CI: &str = r#"
    local trigger = require "piper.trigger"
    local hello = step "hello" { run = "echo hello from $PIPER_STEP" }
    step "world" { run = "echo world $GREETING; exit ${FAIL:-0}", deps = { hello } }
    pipeline "ci" { "world", on_success = trigger.pipeline "deploy" }
    pipeline "deploy" { step "ship" { run = "echo shipping" } }
"#;

pub fn submit(
    daemon: &Daemon,
    repo: &Path,
    pipeline: &str,
    extra: &[&str],
) -> (i32, String, String) {
    let repo = repo.to_string_lossy().into_owned();
    let mut args = vec!["submit", pipeline, "--repo", repo.as_str()];
    args.extend_from_slice(extra);
    daemon.piper(&args)
}

pub fn submitted_id(stderr: &str) -> i64 {
    stderr
        .split("submitted build ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no build id in {stderr}"))
}

/// The whole story against one database: submit and follow, a failure,
/// chaining, the recorded revision.
fn story(database: Option<&str>) {
    let daemon = Daemon::start(database);
    let repo = repo(&[("piper.lua", unindent(CI).as_bytes())]);
    let (code, stdout, stderr) = submit(
        &daemon,
        repo.path(),
        "ci",
        &["--follow", "-e", "GREETING=there"],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("hello from hello\n") && stdout.contains("world there\n"),
        "{stdout}"
    );
    let id = submitted_id(&stderr);
    let build = daemon.wait_finished(id);
    assert_eq!(build["status"], "success");
    assert_eq!(build["sha"], git(repo.path(), &["rev-parse", "HEAD"]));
    assert_eq!(build["version"], "v1.0.0");
    assert_eq!(build["agent"], "test-agent");
    let steps: Vec<(&str, &str)> = build["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(steps, [("hello", "success"), ("world", "success")]);

    // on_success chained a linked build.
    let (_, list, _) = daemon.piper(&["builds", "--json", "--pipeline", "deploy"]);
    let list: Value = serde_json::from_str(&list).unwrap();
    let deploy = &list["builds"][0];
    assert_eq!(deploy["parent_id"], id);
    assert_eq!(
        daemon.wait_finished(deploy["id"].as_i64().unwrap())["status"],
        "success"
    );

    // A failure: the follow exits with the step's code, no chaining.
    let (code, _, stderr) = submit(&daemon, repo.path(), "ci", &["--follow", "-e", "FAIL=3"]);
    assert_eq!(code, 3, "{stderr}");
    let failed = daemon.wait_finished(submitted_id(&stderr));
    assert_eq!(failed["status"], "failed");
    assert_eq!(
        failed["number"], 3,
        "per-repository numbering: ci, deploy, ci"
    );
    let (_, list, _) = daemon.piper(&["builds", "--json", "--status", "failed"]);
    assert_eq!(
        serde_json::from_str::<Value>(&list).unwrap()["builds"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn story_on_sqlite() {
    story(None);
}

#[test]
fn story_on_postgres() {
    let Some(db) = Database::create("agent::story_on_postgres") else {
        return;
    };
    story(Some(&db.url));
}

#[test]
fn logs_are_stored_byte_identical_and_readable_from_any_offset() {
    // 10 MB of bytes that are not UTF-8, with no trailing newline.
    let mut blob = Vec::with_capacity(10_000_000);
    let mut x: u32 = 12345;
    while blob.len() < 10_000_000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        blob.push((x >> 16) as u8);
    }
    blob.extend_from_slice(b"\xff\xfe the end");
    let daemon = Daemon::start(None);
    let repo = repo(&[
        (
            "piper.lua",
            b"step \"dump\" { argv = { \"cat\", \"blob.bin\" } }\n",
        ),
        ("blob.bin", &blob),
    ]);
    let (code, _, stderr) = submit(&daemon, repo.path(), "dump", &[]);
    assert_eq!(code, 0, "{stderr}");
    let id = submitted_id(&stderr);
    assert_eq!(daemon.wait_finished(id)["status"], "success");

    let mut expected = b"$ cat blob.bin\n".to_vec();
    expected.extend_from_slice(&blob);
    let read_from = |offset: usize| {
        let mut got = Vec::new();
        let mut next = offset;
        loop {
            let (status, body) = daemon.http(
                "GET",
                &format!("/api/v1/builds/{id}/log?step=dump&offset={next}"),
                Some(&daemon.token),
                None,
            );
            assert_eq!(status, 200);
            if body.is_empty() {
                return got;
            }
            next += body.len();
            got.extend_from_slice(&body);
        }
    };
    assert!(
        read_from(0) == expected,
        "the stored log differs from what the step printed"
    );
    assert!(
        read_from(4_321_987) == expected[4_321_987..],
        "reading from an offset"
    );
    let (code, stdout, _) = daemon.piper(&["logs", &id.to_string(), "dump"]);
    assert_eq!(code, 0);
    assert_eq!(stdout.len(), String::from_utf8_lossy(&expected).len());
}

#[test]
fn bad_requests_are_refused_with_the_field_and_change_nothing() {
    let daemon = Daemon::start(None);
    let t = Some(daemon.token.as_str());
    let post = |body: &[u8], token: Option<&str>| {
        daemon.http("POST", "/api/v1/builds", token, Some(body.to_vec()))
    };
    let error = |body: &[u8]| serde_json::from_slice::<Value>(body).unwrap();

    let (status, body) = post(b"{not json", t);
    assert_eq!(status, 400);
    assert_eq!(error(&body)["field"], "body");
    let (status, body) = post(br#"{"repo": "/x"}"#, t);
    assert_eq!(
        (status, error(&body)["field"].clone()),
        (400, "pipeline".into())
    );
    assert_eq!(error(&body)["error"], "missing field `pipeline`");
    let (status, body) = post(br#"{"repo": "/x", "pipeline": "ci", "env": {"A": 1}}"#, t);
    assert_eq!(
        (status, error(&body)["field"].clone()),
        (400, "env.A".into())
    );
    let (status, body) = post(br#"{"repo": "/x", "pipeline": "ci", "branch": "main"}"#, t);
    assert_eq!(
        (status, error(&body)["field"].clone()),
        (400, "branch".into())
    );
    let (status, body) = post(
        br#"{"repo": "--upload-pack=touch /tmp/pwned", "pipeline": "ci"}"#,
        t,
    );
    assert_eq!(
        (status, error(&body)["field"].clone()),
        (400, "repo".into())
    );
    let (status, body) = post(
        br#"{"repo": "/x", "pipeline": "ci", "ref": "--output=/tmp/x"}"#,
        t,
    );
    assert_eq!((status, error(&body)["field"].clone()), (400, "ref".into()));
    let big = format!(r#"{{"repo": "/x", "pipeline": "{}"}}"#, "x".repeat(100_000));
    assert_eq!(post(big.as_bytes(), t).0, 413);
    assert_eq!(post(br#"{"repo": "/x", "pipeline": "ci"}"#, None).0, 401);
    assert_eq!(
        post(br#"{"repo": "/x", "pipeline": "ci"}"#, Some("wrong")).0,
        401
    );
    // Reads need the token too (builds carry their environment).
    assert_eq!(daemon.http("GET", "/api/v1/builds/999", None, None).0, 401);
    assert_eq!(daemon.http("GET", "/api/v1/builds/999", t, None).0, 404);
    assert_eq!(daemon.http("GET", "/api/v1/builds/abc", t, None).0, 400);
    assert_eq!(
        daemon.http("GET", "/api/v1/builds?status=done", t, None).0,
        400
    );
    assert_eq!(
        daemon.http("POST", "/api/v1/builds/999/cancel", t, None).0,
        404
    );
    let (_, list) = daemon.http("GET", "/api/v1/builds", t, None);
    assert_eq!(
        error(&list)["builds"].as_array().unwrap().len(),
        0,
        "a refused request stored something"
    );
    let (status, _) = daemon.http("GET", "/api/v1/health", None, None);
    assert_eq!(status, 200);
}

#[test]
fn a_bad_repo_ref_or_config_fails_the_build_and_the_agent_keeps_serving() {
    let daemon = Daemon::start(None);
    let not_a_repo = tempfile::tempdir().unwrap();
    let (_, _, stderr) = submit(&daemon, not_a_repo.path(), "ci", &[]);
    let b = daemon.wait_finished(submitted_id(&stderr));
    assert_eq!(b["status"], "failed");
    assert!(b["error"].as_str().unwrap().contains("cannot clone"), "{b}");

    let good = repo(&[("piper.lua", unindent(CI).as_bytes())]);
    let (_, _, stderr) = submit(&daemon, good.path(), "ci", &["--ref", "no-such-branch"]);
    let b = daemon.wait_finished(submitted_id(&stderr));
    assert_eq!(
        b["error"].as_str().unwrap(),
        format!(
            "ref `no-such-branch` does not exist in {}",
            good.path().display()
        )
    );

    let broken = repo(&[("piper.lua", b"step \"a\" { run = \"true\"\n")]);
    let (code, stdout, stderr) = submit(&daemon, broken.path(), "ci", &["--follow"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    // Lines of the build itself (here: its config error) come on stderr,
    // as a local run prints them.
    assert!(
        stderr.contains("piper.lua:2:"),
        "the config error is shown: {stdout}{stderr}"
    );

    let (code, _, stderr) = submit(&daemon, good.path(), "ci", &["--follow"]);
    assert_eq!(
        code, 0,
        "the agent stopped serving after bad builds: {stderr}"
    );
}

#[test]
fn cancel_ends_the_steps_process_group() {
    let daemon = Daemon::start(None);
    let marks = tempfile::tempdir().unwrap();
    let pid_file = marks.path().join("bg.pid");
    let repo = repo(&[(
        "piper.lua",
        b"step \"long\" { run = \"sleep 1000 & echo $! > $PID_FILE; wait\" }\n",
    )]);
    let env = format!("PID_FILE={}", pid_file.display());
    let (_, _, stderr) = submit(&daemon, repo.path(), "long", &["-e", &env]);
    let id = submitted_id(&stderr);
    wait_for_file(&pid_file);
    let (code, _, stderr) = daemon.piper(&["cancel", &id.to_string()]);
    assert_eq!(code, 0, "{stderr}");
    let b = daemon.wait_finished(id);
    assert_eq!(b["status"], "canceled");
    assert_eq!(b["steps"][0]["status"], "canceled");
    assert!(process_gone(read_pid(&pid_file)));
}

#[test]
fn a_build_of_an_agent_killed_mid_build_is_marked_lost_at_restart() {
    let mut daemon = Daemon::start(None);
    let marks = tempfile::tempdir().unwrap();
    let pid_file = marks.path().join("bg.pid");
    let repo = repo(&[(
        "piper.lua",
        b"step \"long\" { run = \"sleep 1000 & echo $! > $PID_FILE; wait\" }\n",
    )]);
    let env = format!("PID_FILE={}", pid_file.display());
    let (_, _, stderr) = submit(&daemon, repo.path(), "long", &["-e", &env]);
    let id = submitted_id(&stderr);
    wait_for_file(&pid_file);
    daemon.restart();
    let b = daemon.build(id);
    assert_eq!(b["status"], "lost", "{b}");
    // The killed agent could not end its step's processes; do it here.
    unsafe { libc::kill(read_pid(&pid_file), libc::SIGKILL) };
}

#[test]
fn retrigger_webhook_and_agents() {
    let daemon = Daemon::start(None);
    let repo = repo(&[("piper.lua", unindent(CI).as_bytes())]);
    let (_, _, stderr) = submit(&daemon, repo.path(), "ci", &["-e", "GREETING=again"]);
    let first = daemon.wait_finished(submitted_id(&stderr));
    // A new commit on main: a retrigger still builds the old commit.
    std::fs::write(repo.path().join("new.txt"), "x").unwrap();
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "second"]);

    let (code, _, stderr) = daemon.piper(&["retrigger", &first["id"].to_string()]);
    assert_eq!(code, 0, "{stderr}");
    let again = daemon.wait_finished(submitted_id(&stderr));
    assert_eq!(
        (again["parent_id"].clone(), again["status"].clone()),
        (first["id"].clone(), "success".into())
    );
    assert_eq!(again["sha"], first["sha"]);
    assert_eq!(again["env"]["GREETING"], "again");

    let hook = format!(r#"{{"repo": "{}", "ref": "main"}}"#, repo.path().display());
    let (status, _) = daemon.http(
        "POST",
        "/api/v1/webhook?pipeline=deploy",
        None,
        Some(hook.clone().into_bytes()),
    );
    assert_eq!(status, 401);
    let (status, body) = daemon.http(
        "POST",
        "/api/v1/webhook?pipeline=deploy",
        Some(&daemon.token),
        Some(hook.into_bytes()),
    );
    assert_eq!(status, 201);
    let hooked: Value = serde_json::from_slice(&body).unwrap();
    let hooked = daemon.wait_finished(hooked["id"].as_i64().unwrap());
    assert_eq!(
        (hooked["pipeline"].as_str(), hooked["status"].as_str()),
        (Some("deploy"), Some("success"))
    );
    assert_eq!(hooked["sha"], git(repo.path(), &["rev-parse", "main"]));

    let (code, stdout, _) = daemon.piper(&["agents", "--json"]);
    assert_eq!(code, 0);
    let agents: Value = serde_json::from_str(&stdout).unwrap();
    let agent = &agents["agents"][0];
    assert_eq!(
        (agent["name"].as_str(), agent["online"].as_bool()),
        (Some("test-agent"), Some(true))
    );
    assert_eq!(agent["labels"]["team"], "ci", "{stdout}");
    assert_eq!(
        agent["address"].as_str().map(|a| format!("http://{a}")),
        Some(daemon.url.clone())
    );
}

#[test]
fn openapi_document_is_generated_current_and_every_route_is_served() {
    // docs/reference/openapi.json is the generated document, kept current.
    let generated = piper::agent::server::openapi_json();
    let doc: Value = serde_json::from_str(&generated).unwrap();
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/reference/openapi.json");
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(
        committed == doc,
        "docs/reference/openapi.json is stale: run `cargo run --bin piperd -- openapi > docs/reference/openapi.json`"
    );
    let mut routes: Vec<(String, String)> = Vec::new();
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for method in methods.as_object().unwrap().keys() {
            routes.push((method.to_uppercase(), path.clone()));
        }
    }
    routes.sort();
    assert!(routes.len() >= 14, "{routes:?}");

    // The served document is this one, and every route answers on a real agent.
    let daemon = Daemon::start(None);
    let repo = repo(&[("piper.lua", unindent(CI).as_bytes())]);
    let (_, _, stderr) = submit(&daemon, repo.path(), "ci", &[]);
    let id = submitted_id(&stderr);
    daemon.wait_finished(id);
    let (_, served) = daemon.http("GET", "/api/v1/openapi.json", None, None);
    assert_eq!(serde_json::from_slice::<Value>(&served).unwrap(), doc);
    for (method, path) in &routes {
        let path = path.replace("{id}", &id.to_string());
        let body = (method == "POST").then(|| {
            format!(
                r#"{{"repo": "{}", "pipeline": "ci"}}"#,
                repo.path().display()
            )
            .into_bytes()
        });
        if path == "/api/v1/updates" {
            // An endless stream: its headers say it is served.
            let status = crate::harness::block_on(async {
                crate::harness::http()
                    .get(format!("{}{path}", daemon.url))
                    .bearer_auth(&daemon.token)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            });
            assert_eq!(status, 200);
            continue;
        }
        let (status, body) = daemon.http(method, &path, Some(&daemon.token), body);
        let text = String::from_utf8_lossy(&body);
        assert!(
            status != 405 && !text.contains("no such API route"),
            "{method} {path}: {status} {text}"
        );
        assert!(status < 500, "{method} {path}: {status} {text}");
    }
    let (status, body) = daemon.http("GET", "/api/v1/nope", None, None);
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("no such API route"));
}

#[test]
fn events_stream_the_log_live_and_end_with_the_status() {
    use base64::Engine;
    use futures_util::StreamExt;
    let daemon = Daemon::start(None);
    let marks = tempfile::tempdir().unwrap();
    let go = marks.path().join("go");
    let repo = repo(&[(
        "piper.lua",
        b"step \"talk\" { run = \"echo first; i=0; while [ ! -f $GO ]; do i=$((i+1)); [ $i -gt 400 ] && exit 1; sleep 0.05; done; echo second\" }\n",
    )]);
    let env = format!("GO={}", go.display());
    let (_, _, stderr) = submit(&daemon, repo.path(), "talk", &["-e", &env]);
    let id = submitted_id(&stderr);

    let (log, end) = crate::harness::block_on(async {
        let url = format!("{}/api/v1/builds/{id}/events?step=talk", daemon.url);
        let mut stream = crate::harness::http()
            .get(url)
            .bearer_auth(&daemon.token)
            .send()
            .await
            .unwrap()
            .bytes_stream();
        let (mut text, mut log, mut end) = (String::new(), Vec::new(), Value::Null);
        while let Some(bytes) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&bytes.unwrap()));
            // Complete events end with a blank line.
            while let Some(at) = text.find("\n\n") {
                let block: String = text.drain(..at + 2).collect();
                let kind = block
                    .lines()
                    .find_map(|l| l.strip_prefix("event: "))
                    .unwrap_or("");
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap_or("");
                match kind {
                    "chunk" => {
                        let chunk: Value = serde_json::from_str(data).unwrap();
                        log.extend(
                            base64::engine::general_purpose::STANDARD
                                .decode(chunk["data"].as_str().unwrap())
                                .unwrap(),
                        );
                        // Only now may the step go on: "second" proves live delivery.
                        if String::from_utf8_lossy(&log).contains("first\n") && !go.exists() {
                            std::fs::write(&go, "").unwrap();
                        }
                    }
                    "end" => end = serde_json::from_str(data).unwrap(),
                    _ => {}
                }
            }
        }
        (log, end)
    });
    assert_eq!(
        String::from_utf8_lossy(&log),
        "$ echo first; i=0; while [ ! -f $GO ]; do i=$((i+1)); [ $i -gt 400 ] && exit 1; sleep 0.05; done; echo second\nfirst\nsecond\n"
    );
    assert_eq!(end["status"], "success");
}

#[test]
fn sigterm_lets_running_builds_finish_within_the_grace_then_cancels_them() {
    let mut daemon = Daemon::start(None);
    let marks = tempfile::tempdir().unwrap();
    let (started, go) = (marks.path().join("started"), marks.path().join("go"));
    // Waits (bounded) for `go`, so the test decides when it may finish.
    let repo = repo(&[(
        "piper.lua",
        b"step \"wait\" { run = \"echo $$ > $STARTED; i=0; while [ ! -f $GO ]; do i=$((i+1)); [ $i -gt 600 ] && exit 1; sleep 0.05; done\" }\n",
    )]);
    let env_started = format!("STARTED={}", started.display());
    let env_go = format!("GO={}", go.display());
    let (_, _, stderr) = submit(
        &daemon,
        repo.path(),
        "wait",
        &["-e", &env_started, "-e", &env_go],
    );
    let finishes = submitted_id(&stderr);
    wait_for_file(&started);
    let child = daemon.child.take().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(200));
    // Still serving, and still running the build, during the grace period.
    let (status, _) = daemon.http("GET", "/api/v1/health", None, None);
    assert_eq!(status, 200);
    std::fs::write(&go, "").unwrap();
    let mut child = child;
    assert!(child.wait().unwrap().success());
    daemon.spawn();
    assert_eq!(daemon.build(finishes)["status"], "success");

    // This time the step never gets `go`: after the 2 s grace it is canceled.
    std::fs::remove_file(&go).unwrap();
    std::fs::remove_file(&started).unwrap();
    let (_, _, stderr) = submit(
        &daemon,
        repo.path(),
        "wait",
        &["-e", &env_started, "-e", &env_go],
    );
    let canceled = submitted_id(&stderr);
    wait_for_file(&started);
    let pid = read_pid(&started);
    let mut child = daemon.child.take().unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert!(process_gone(pid), "the step outlived the agent");
    daemon.spawn();
    assert_eq!(daemon.build(canceled)["status"], "canceled");
}

#[test]
fn scheduled_pipelines_run_once_per_minute_for_known_repos() {
    let daemon = Daemon::start(None);
    let config = r#"
        local trigger = require "piper.trigger"
        pipeline "ci" { step "a" { run = "true" } }
        pipeline "nightly" { step "n" { run = "echo nightly" }, schedule = trigger.schedule "* * * * *" }
    "#;
    let repo = repo(&[("piper.lua", unindent(config).as_bytes())]);
    // The agent learns about a repository by building it.
    let (code, _, stderr) = submit(&daemon, repo.path(), "ci", &["--follow"]);
    assert_eq!(code, 0, "{stderr}");
    let nightly = || -> Vec<Value> {
        let (_, stdout, _) = daemon.piper(&["builds", "--json", "--pipeline", "nightly"]);
        serde_json::from_str::<Value>(&stdout).unwrap()["builds"]
            .as_array()
            .unwrap()
            .clone()
    };
    for _ in 0..400 {
        if !nightly().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let first = nightly();
    assert!(!first.is_empty(), "the schedule never fired");
    assert_eq!(first[0]["requested_by"], "schedule * * * * *");
    assert_eq!(
        daemon.wait_finished(first[0]["id"].as_i64().unwrap())["status"],
        "success"
    );
    // Many checks later: still one run per minute.
    std::thread::sleep(Duration::from_millis(600));
    let runs = nightly();
    let mut minutes: Vec<i64> = runs
        .iter()
        .map(|b| b["requested_at"].as_i64().unwrap() / 60_000)
        .collect();
    let all = minutes.len();
    minutes.dedup();
    assert_eq!(
        minutes.len(),
        all,
        "a minute got two scheduled runs: {runs:?}"
    );
}

#[test]
fn config_files_for_piperd_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("piperd.toml");
    std::fs::write(
        &config,
        "name = \"from-file\"\nworkers = 3\nlabels = { zone = \"eu\" }\ngrace = \"1s\"\n",
    )
    .unwrap();
    let start = |extra: &[&str]| {
        Command::new(PIPERD)
            .args(["start", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .arg("--config")
            .arg(&config)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut child = crate::harness::KillOnDrop(start(&["--workers", "5"]));
    wait_for_file(&data.join("piperd.addr"));
    let url = format!(
        "http://{}",
        std::fs::read_to_string(data.join("piperd.addr"))
            .unwrap()
            .trim()
    );

    // The CLI reads its server and token from its own config file.
    let token = std::fs::read_to_string(data.join("token")).unwrap();
    let cli_config = dir.path().join("config.toml");
    std::fs::write(
        &cli_config,
        format!("server = \"{url}\"\ntoken = \"{}\"\n", token.trim()),
    )
    .unwrap();
    let out = Command::new(PIPER)
        .args(["agents", "--json"])
        .env("PIPER_CONFIG", &cli_config)
        .env_remove("PIPER_SERVER")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agents: Value = serde_json::from_slice(&out.stdout).unwrap();
    let agent = &agents["agents"][0];
    assert_eq!(agent["name"], "from-file");
    assert_eq!(agent["labels"]["zone"], "eu");
    assert_eq!(agent["workers"], 5, "the flag wins over the file");
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    child.0.wait().unwrap();

    // Mistakes name the file and the key.
    std::fs::write(&config, "name = \"x\"\nworkerz = 3\n").unwrap();
    let out = start(&[]).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("piperd.toml") && stderr.contains("workerz"),
        "{stderr}"
    );
    std::fs::write(&config, "grace = \"soon\"\n").unwrap();
    let out = start(&[]).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("piperd.toml: grace:") && stderr.contains("soon"),
        "{stderr}"
    );
    std::fs::write(&cli_config, "sever = \"typo\"\n").unwrap();
    let out = Command::new(PIPER)
        .args(["builds"])
        .env("PIPER_CONFIG", &cli_config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sever"));
}

/// `piper exec ci -j1` in `dir` with `FAIL=fail`: the local run a followed
/// remote build is compared with.
fn local_ci_run(dir: &Path, fail: &str) -> std::process::Output {
    Command::new(PIPER)
        .args(["exec", "ci", "-j1"])
        .current_dir(dir)
        .env("FAIL", fail)
        .env("PIPER_LOG", "warn")
        .output()
        .unwrap()
}

/// One event stream everywhere: a build followed from the agent renders as
/// the same pipeline run locally — the same prefixed output, the same
/// summary and first-failure excerpt, the same exit code.
#[test]
fn a_followed_remote_build_reads_like_a_local_run() {
    let daemon = Daemon::start(None);
    let config = r#"
        local a = step "prepare" { run = "echo preparing; echo done" }
        local b = step "check" { run = "echo checking; echo broken >&2; exit ${FAIL:-0}", deps = { a } }
        pipeline "ci" { b }
    "#;
    let repo = repo(&[("piper.lua", unindent(config).as_bytes())]);
    for fail in ["0", "3"] {
        let local = local_ci_run(repo.path(), fail);
        let env = format!("FAIL={fail}");
        let (code, stdout, stderr) = submit(&daemon, repo.path(), "ci", &["--follow", "-e", &env]);
        assert_eq!(code, local.status.code().unwrap(), "{stderr}");
        assert_eq!(
            stdout,
            String::from_utf8_lossy(&local.stdout),
            "stdout differs"
        );
        // Read back later, the build shows the same; `--raw` is the log.
        let id = submitted_id(&stderr).to_string();
        let (later, shown, _) = daemon.piper(&["logs", &id]);
        assert_eq!((later, shown.as_str()), (code, stdout.as_str()));
        let (_, raw, _) = daemon.piper(&["logs", &id, "--raw"]);
        assert!(raw.starts_with("piper: "), "{raw}");
        assert!(raw.contains("$ echo checking;"), "{raw}");
        // The summary, but for the timings.
        let summary = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| {
                    l.starts_with("  ") || l.starts_with("first failure") || l.contains("ci ")
                })
                .filter(|l| !l.starts_with("submitted build"))
                .map(|l| {
                    l.split_whitespace()
                        .filter(|w| !w.chars().next().is_some_and(|c| c.is_ascii_digit()))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect()
        };
        assert_eq!(
            summary(&stderr),
            summary(&String::from_utf8_lossy(&local.stderr)),
            "summaries differ:\n--- remote\n{stderr}--- local\n{}",
            String::from_utf8_lossy(&local.stderr)
        );
    }
}

#[test]
fn a_followed_chain_reads_like_the_local_run_of_it() {
    let daemon = Daemon::start(None);
    let config = r#"
        local trigger = require "piper.trigger"
        pipeline "ci" {
          step "test" { run = 'echo testing; [ "${FAIL:-0}" != 1 ]' },
          on_success = trigger.pipeline "deploy",
          on_failure = trigger.pipeline "notify",
          always = trigger.pipeline "cleanup",
        }
        pipeline "deploy" { step "deploy" { run = "echo deploying" } }
        pipeline "notify" { step "notify" { run = "echo paging; exit 4" } }
        pipeline "cleanup" { step "cleanup" { run = "echo cleaning up" } }
    "#;
    let repo = repo(&[("piper.lua", unindent(config).as_bytes())]);
    for fail in ["0", "1"] {
        let local = local_ci_run(repo.path(), fail);
        let env = format!("FAIL={fail}");
        let (code, stdout, stderr) = submit(&daemon, repo.path(), "ci", &["--follow", "-e", &env]);
        // Every chained build is followed, in the order the run made them.
        assert_eq!(code, local.status.code().unwrap(), "{stderr}");
        assert_eq!(stdout, String::from_utf8_lossy(&local.stdout), "{stderr}");
        assert!(stdout.contains("cleaning up"), "{stdout}");
        let id = submitted_id(&stderr).to_string();
        let (later, shown, _) = daemon.piper(&["logs", &id]);
        assert_eq!((later, shown.as_str()), (code, stdout.as_str()));
    }
}

/// `piper` under a real pseudo-terminal (`script`), as a user runs it:
/// colours on; `TERM=dumb` leaves out the status line, whose redraws
/// depend on timing.
fn on_a_terminal(daemon: &Daemon, dir: &Path, args: &str) -> String {
    let out = Command::new("script")
        .args(["-qfec", &format!("{PIPER} {args}"), "/dev/null"])
        .current_dir(dir)
        .env("TERM", "dumb")
        .env_remove("NO_COLOR")
        .env("PIPER_SERVER", &daemon.url)
        .env("PIPER_TOKEN", &daemon.token)
        .env("PIPER_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("script(1) from util-linux");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The transcript without what differs by nature: the submit's own line,
/// the agent's checkout line, and durations (`12ms`, `1.2s`, with the
/// padding that right-aligns them).
fn but_for_timings(transcript: &str) -> String {
    let mut out = String::new();
    for line in transcript.replace("\r\n", "\n").lines() {
        if line.starts_with("submitted build") || line.starts_with("piper: /") {
            continue;
        }
        let mut word = String::new();
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if c.is_ascii_digit() {
                let mut number = c.to_string();
                while let Some(&d) = chars.peek() {
                    if d.is_ascii_digit() || d == '.' {
                        number.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                let rest: String = chars.clone().take(2).collect();
                if rest.starts_with("ms") {
                    chars.next();
                    chars.next();
                    word.push_str("<time>");
                } else if rest.starts_with('s')
                    && !rest[1..].starts_with(|c: char| c.is_alphanumeric())
                {
                    chars.next();
                    word.push_str("<time>");
                } else {
                    word.push_str(&number);
                }
            } else {
                word.push(c);
            }
        }
        while word.contains("  <time>") {
            word = word.replace("  <time>", " <time>");
        }
        out.push_str(&word);
        out.push('\n');
    }
    out
}

#[test]
fn on_a_terminal_a_followed_build_is_byte_identical_to_the_local_run_but_for_timings() {
    let daemon = Daemon::start(None);
    let config = r#"
        local a = step "prepare" { run = "echo preparing; printf '\033[32mgreen\033[0m\n'" }
        local b = step "check" { run = "echo checking; echo broken >&2; exit 3", deps = { a } }
        pipeline "ci" { b }
    "#;
    let repo = repo(&[("piper.lua", unindent(config).as_bytes())]);
    let local = on_a_terminal(&daemon, repo.path(), "exec ci -j1");
    let remote = on_a_terminal(&daemon, repo.path(), "submit ci --follow");
    assert!(
        local.contains("\x1b["),
        "no colours on a terminal: {local:?}"
    );
    assert!(remote.contains("submitted build"), "{remote:?}");
    assert_eq!(
        but_for_timings(&remote),
        but_for_timings(&local),
        "\n--- remote\n{remote:?}\n--- local\n{local:?}"
    );
}

/// Inputs a fuzzer driven by the OpenAPI document found accepted though
/// the document refuses them (schemathesis, ST201): now refused.
#[test]
fn what_the_openapi_document_refuses_the_api_refuses() {
    let daemon = Daemon::start(None);
    let token = Some(daemon.token.as_str());
    let (status, body) = daemon.http("GET", "/api/v1/builds?status=", token, None);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let push = br#"{"repo": "/somewhere", "ref": "main"}"#.to_vec();
    let (status, body) = daemon.http("POST", "/api/v1/webhook?pipeline=", token, Some(push));
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let blank = br#"{"repo": "/somewhere", "pipeline": "\f"}"#.to_vec();
    let (status, body) = daemon.http("POST", "/api/v1/webhook?pipeline=ci", token, Some(blank));
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (_, list) = daemon.http("GET", "/api/v1/builds", token, None);
    let list: Value = serde_json::from_slice(&list).unwrap();
    assert_eq!(list["builds"], serde_json::json!([]), "nothing was queued");
}

/// `piper submit` from the project: outside git it fails at once (the
/// agent could only fail later); with uncommitted changes it says that the
/// agent builds HEAD without them, and submits.
#[test]
fn submit_refuses_a_project_outside_git_and_warns_about_uncommitted_changes() {
    let plain = tempfile::tempdir().unwrap();
    std::fs::write(plain.path().join("piper.lua"), CI).unwrap();
    let out = Command::new(PIPER)
        .args(["submit", "ci"])
        // Nothing listens there: the refusal must come before any request.
        .env("PIPER_SERVER", "http://127.0.0.1:9")
        .env("PIPER_TOKEN", "unused-token-unused-token-unused")
        .current_dir(plain.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is not in a git repository"), "{stderr}");
    assert!(stderr.contains("--repo URL"), "{stderr}");

    let daemon = Daemon::start(None);
    let dir = repo(&[("piper.lua", CI.as_bytes())]);
    std::fs::write(dir.path().join("piper.lua"), format!("{CI}\n-- edited\n")).unwrap();
    let out = Command::new(PIPER)
        .args(["submit", "ci"])
        .env("PIPER_SERVER", &daemon.url)
        .env("PIPER_TOKEN", &daemon.token)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let head = git(dir.path(), &["rev-parse", "--short", "HEAD"]);
    assert!(
        stderr.contains(&format!(
            "warning: 1 changed file(s) are not committed: the agent builds HEAD ({head}), without them"
        )),
        "{stderr}"
    );
    submitted_id(&stderr);
}

#[test]
fn the_cli_finds_token_and_address_in_the_agents_data_directory() {
    let mut daemon = Daemon::start(None);
    let home = tempfile::tempdir().unwrap();
    let piper = |args: &[&str], env: &[(&str, &Path)]| {
        let mut command = Command::new(PIPER);
        command
            .args(args)
            .env_remove("PIPER_SERVER")
            .env_remove("PIPER_TOKEN")
            .env_remove("PIPERD_DATA")
            .env_remove("PIPER_CONFIG")
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path());
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().unwrap()
    };
    let data = daemon.data.to_str().unwrap().to_string();
    for out in [
        piper(&["agents", "--json", "--data", &data], &[]),
        piper(&["agents", "--json"], &[("PIPERD_DATA", &daemon.data)]),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let agents: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(agents["agents"][0]["name"], "test-agent");
    }

    // A stopped agent leaves no address behind to send the CLI to.
    daemon.terminate();
    assert!(!daemon.data.join("piperd.addr").exists());
    let out = piper(&["agents", "--data", &data], &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach piperd"), "{stderr}");
}

#[test]
fn submit_working_tree_builds_exactly_the_working_tree_and_leaves_git_alone() {
    let daemon = Daemon::start(None);
    let config = r#"
        pipeline "ci" { step "look" { run = [[
          echo "tracked=$(cat tracked.txt) staged=$(cat sub/staged.txt) untracked=$(cat untracked.txt)"
          echo "ignored=$(test -e ignored.txt && echo present || echo absent) deleted=$(test -e deleted.txt && echo present || echo absent)"
        ]] } }
    "#;
    let dir = repo(&[
        ("piper.lua", unindent(config).as_bytes()),
        ("tracked.txt", b"v1\n"),
        ("deleted.txt", b"x\n"),
        (".gitignore", b"ignored.txt\n"),
    ]);
    let path = dir.path();
    std::fs::write(path.join("tracked.txt"), "v2\n").unwrap();
    std::fs::create_dir(path.join("sub")).unwrap();
    std::fs::write(path.join("sub/staged.txt"), "yes\n").unwrap();
    git(path, &["add", "sub/staged.txt"]);
    std::fs::write(path.join("untracked.txt"), "yes\n").unwrap();
    std::fs::write(path.join("ignored.txt"), "secret\n").unwrap();
    std::fs::remove_file(path.join("deleted.txt")).unwrap();
    let head = git(path, &["rev-parse", "HEAD"]);
    let status = git(path, &["status", "--porcelain"]);
    let branches = git(path, &["branch", "--list"]);

    // From a subdirectory: still the whole working tree.
    let (code, _, stderr) =
        daemon.piper_in(&path.join("sub"), &["submit", "ci", "--working-tree", "-f"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("submitting the working tree: 4 file(s) differ from HEAD"),
        "{stderr}"
    );
    let build = daemon.build(submitted_id(&stderr));
    let log = daemon.log(build["id"].as_i64().unwrap());
    assert!(
        log.contains("tracked=v2 staged=yes untracked=yes")
            && log.contains("ignored=absent deleted=absent"),
        "{log}"
    );
    // The build says it is not a pushed commit: a private ref, a commit
    // whose parent is HEAD.
    let git_ref = build["ref"].as_str().unwrap();
    let sha = build["sha"].as_str().unwrap();
    assert_eq!(git_ref, format!("refs/piper/working-tree/{sha}"));
    assert_eq!(git(path, &["rev-parse", &format!("{sha}^")]), head);
    assert!(git(path, &["log", "-1", "--format=%s", sha]).contains("not committed"));

    // HEAD, the index, the working tree and the branches are as they were.
    assert_eq!(git(path, &["rev-parse", "HEAD"]), head);
    assert_eq!(git(path, &["status", "--porcelain"]), status);
    assert_eq!(git(path, &["branch", "--list"]), branches);

    // A clean tree: HEAD is built.
    git(path, &["add", "-A"]);
    git(path, &["commit", "-qm", "all"]);
    let (code, _, stderr) = daemon.piper_in(path, &["submit", "ci", "--working-tree"]);
    assert!(
        code == 0 && stderr.contains("the working tree matches HEAD"),
        "{stderr}"
    );
    let build = daemon.wait_finished(submitted_id(&stderr));
    assert_eq!(build["ref"], "HEAD");

    // It builds this checkout: not with --repo or --ref.
    let (code, _, stderr) =
        daemon.piper_in(path, &["submit", "ci", "--working-tree", "--ref", "main"]);
    assert!(
        code != 0 && stderr.contains("cannot be used with"),
        "{stderr}"
    );
}

#[test]
fn exec_from_build_reruns_an_agent_build_here_and_says_what_differs() {
    let daemon = Daemon::start(None);
    let origin = repo(&[("piper.lua", unindent(CI).as_bytes())]);
    // A clone made before the commit the agent builds: it has to fetch it.
    let clones = tempfile::tempdir().unwrap();
    let clone = clones.path().join("clone");
    git(
        clones.path(),
        &["clone", "-q", origin.path().to_str().unwrap(), "clone"],
    );
    std::fs::write(origin.path().join("note.txt"), "new\n").unwrap();
    git(origin.path(), &["add", "-A"]);
    git(origin.path(), &["commit", "-qm", "note"]);
    let sha = git(origin.path(), &["rev-parse", "HEAD"]);
    let id = daemon.queue(&serde_json::json!({
        "repo": origin.path(), "pipeline": "ci",
        "env": { "GREETING": "from-agent", "FAIL": "3" },
        "secret_env": { "API_KEY": "s3cret-value" },
    }));
    assert_eq!(daemon.wait_finished(id)["status"], "failed");

    let (code, stdout, stderr) =
        daemon.piper_in(&clone, &["exec", "--from-build", &id.to_string(), "-j1"]);
    assert_eq!(code, 3, "the agent's failure, here\n{stdout}\n{stderr}");
    assert!(stdout.contains("world from-agent"), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "build {id}: pipeline ci of {} (HEAD), checked out in",
            &sha[..12]
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("not as on the agent: agent test-agent had team=ci (here unset)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("secret variables stay on the agent: API_KEY"),
        "{stderr}"
    );
    let worktree = std::env::temp_dir().join(format!("piper-build-{id}-{}", &sha[..12]));
    assert_eq!(git(&worktree, &["rev-parse", "HEAD"]), sha);
    assert!(worktree.join("note.txt").exists());

    // Variables given here win; the worktree is used again; one step of it.
    let (code, stdout, stderr) = daemon.piper_in(
        &clone,
        &[
            "exec",
            "--from-build",
            &id.to_string(),
            "-e",
            "FAIL=0",
            "-e",
            "API_KEY=x",
            "world",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("world from-agent"), "{stdout}");
    assert!(!stderr.contains("API_KEY"), "{stderr}");

    // A repository that never had the commit, whose source is gone.
    let unrelated = repo(&[("piper.lua", b"step 'x' { run = 'true' }\n")]);
    let moved = clones.path().join("moved");
    std::fs::rename(origin.path(), &moved).unwrap();
    let (code, _, stderr) =
        daemon.piper_in(unrelated.path(), &["exec", "--from-build", &id.to_string()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot reproduce build {id}: commit {sha} is not in this clone"
        )),
        "{stderr}"
    );
    std::fs::rename(&moved, origin.path()).unwrap();
    git(
        &clone,
        &["worktree", "remove", "--force", worktree.to_str().unwrap()],
    );
}

/// Issue 28.2/28.4: where a line of a stored log is, asked of the server
/// (`/log/locate`) without reading the log: by byte offset, by number, by
/// text and as the first error; the log's size; bad queries named. Chunks
/// stored before their lines were counted (migration 13) are counted when
/// first needed; the first error is looked for only in the chunks marked as
/// ending an error word (migration 14), or not marked at all (stored
/// before). One story, on SQLite and on PostgreSQL.
fn locate_story(database: Option<&str>, sqlite: bool) {
    let daemon = Daemon::start(database);
    // 100,000 numbered lines (~590 KB: several chunks), one of them an
    // error, after the line of the command (which spells it in pieces, so
    // that it matches neither search).
    let config = unindent(
        r#"
        pipeline "ci" { step "lines" { run = "seq 1 100000 | sed 's/^77777$/err'or': seventy/'" } }
        "#,
    );
    let project = repo(&[("piper.lua", config.as_bytes())]);
    let id = daemon.queue(&serde_json::json!({ "repo": project.path(), "pipeline": "ci" }));
    assert_eq!(daemon.wait_finished(id)["status"], "success");
    let (_, whole) = daemon.http(
        "GET",
        &format!("/api/v1/builds/{id}/log?step=lines&download=true"),
        Some(&daemon.token),
        None,
    );
    // Where each line starts, read off the log itself.
    let starts: Vec<usize> = std::iter::once(0)
        .chain(
            whole
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .filter(|&at| at < whole.len())
        .collect();
    assert_eq!(starts.len(), 100001, "the command's line and 100,000 more");
    let locate = |query: &str| {
        let (status, body) = daemon.http(
            "GET",
            &format!("/api/v1/builds/{id}/log/locate?step=lines&{query}"),
            Some(&daemon.token),
            None,
        );
        (status, serde_json::from_slice::<Value>(&body).unwrap())
    };
    let check = |query: &str, line: usize, found: bool| {
        let (status, at) = locate(query);
        assert_eq!(status, 200, "{query}: {at}");
        assert_eq!(at["line"], line, "{query}: {at}");
        assert_eq!(at["offset"], starts[line - 1], "{query}: {at}");
        assert_eq!(at["found"], found, "{query}: {at}");
        assert_eq!(at["length"], whole.len(), "{query}: {at}");
        assert_eq!(at["lines"], 100001, "{query}: {at}");
    };
    let story = || {
        check("line=1", 1, true);
        check("line=50001", 50001, true);
        check("line=999999", 100001, true);
        check(&format!("offset={}", starts[4321] + 2), 4322, true);
        check(&format!("offset={}", whole.len() + 10), 100001, true);
        check("find=99999", 100000, true);
        check(
            &format!("find=99999&from={}", starts[100000]),
            100001,
            false,
        );
        check("find=ERROR", 77778, true);
        check("error=true", 77778, true);
        check(&format!("error=true&from={}", starts[77778]), 77779, false);
    };
    story();
    // The writer marked the one chunk an error word ends in (migration
    // 14), and the first error is looked for in marked chunks only: with
    // every mark taken away, it is not found.
    let sql = |statement: &'static str| -> i64 {
        let url = match database {
            Some(url) => url.to_string(),
            None => format!("sqlite://{}", daemon.data.join("piperd.db").display()),
        };
        crate::harness::block_on(async {
            use sqlx::{Connection, Row};
            if sqlite {
                // The agent writes meanwhile (its search indexer): wait
                // for its lock as its own connections do.
                use std::str::FromStr;
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
                    .unwrap()
                    .busy_timeout(std::time::Duration::from_secs(30));
                let mut conn = sqlx::SqliteConnection::connect_with(&options)
                    .await
                    .unwrap();
                let row = sqlx::query(statement)
                    .fetch_optional(&mut conn)
                    .await
                    .unwrap();
                row.map_or(0, |r| r.get::<i64, _>(0))
            } else {
                let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
                let row = sqlx::query(statement)
                    .fetch_optional(&mut conn)
                    .await
                    .unwrap();
                row.map_or(0, |r| r.get::<i64, _>(0))
            }
        })
    };
    let count = "SELECT CAST(COUNT(*) AS BIGINT) FROM log_chunks WHERE has_error";
    assert!(sql("SELECT CAST(COUNT(*) AS BIGINT) FROM log_chunks") > 3);
    assert_eq!(sql(count), 1, "one chunk holds the error");
    sql("UPDATE log_chunks SET has_error = false");
    let (_, at) = locate("error=true");
    assert_eq!(at["found"], false, "{at}");
    check("find=ERROR", 77778, true);
    for (query, field) in [
        ("line=0", "line"),
        ("offset=-1", "offset"),
        ("find=", "find"),
        ("line=3&offset=4", "query"),
        ("", "query"),
        ("error=true&from=-5", "from"),
    ] {
        let (status, body) = locate(query);
        assert_eq!(
            (status, body["field"].as_str()),
            (400, Some(field)),
            "{query}: {body}"
        );
    }
    // As a database of before migrations 13 and 14 has them: uncounted
    // and unmarked.
    sql("UPDATE log_chunks SET lines = NULL, has_error = NULL");
    story();
}

#[test]
fn lines_of_a_log_are_located_without_reading_it_on_sqlite() {
    locate_story(None, true);
}

#[test]
fn lines_of_a_log_are_located_without_reading_it_on_postgres() {
    let Some(db) = Database::create("agent::lines_of_a_log_are_located") else {
        return;
    };
    locate_story(Some(&db.url), false);
}
