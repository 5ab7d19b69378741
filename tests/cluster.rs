//! Several real piperd processes sharing one PostgreSQL database (issue
//! 10): builds run exactly once, a dead or stalled agent's builds are
//! rescued, stale writes are fenced, cancel reaches the agent running a
//! build, and a crashed agent's processes end when it starts again.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::agent::{Daemon, eventually_or_logs, get, repo};
use crate::harness::{eventually, process_gone, read_pid, wait_for_file_to_exist};
use crate::pg::Database;

/// Short leases, so a dead agent is noticed within a second or two.
const FAST: &[&str] = &["--lease", "3s", "--heartbeat", "500ms"];

fn agents(db: &Database, n: usize, extra: &[&str]) -> Vec<Daemon> {
    (0..n)
        .map(|i| {
            let name = format!("agent-{i}");
            let mut args: Vec<&str> = vec!["--workers", "2", "--name", &name];
            args.extend_from_slice(extra);
            Daemon::start_with(Some(&db.url), &args, None)
        })
        .collect()
}

/// `get`, or None when the agent does not answer (it just died).
fn try_get(daemon: &Daemon, path: &str) -> Option<Value> {
    crate::harness::block_on(async {
        let response = crate::harness::http()
            .get(format!("{}{path}", daemon.url))
            .bearer_auth(&daemon.token)
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    })
}

/// How long a wait for evidence may take here.
const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn four_agents_run_500_builds_exactly_once() {
    let Some(db) = Database::create("cluster::four_agents_run_500_builds_exactly_once") else {
        return;
    };
    let agents = agents(&db, 4, &[]);
    let out = tempfile::tempdir().unwrap();
    let ran = out.path().join("ran");
    let repo = repo(&[(
        "piper.lua",
        br#"step "s" { run = "echo $PIPER_BUILD_ID-$PIPER_AGENT >> $RAN" }"#,
    )]);
    let mut ids = Vec::new();
    for i in 0..500 {
        let body = serde_json::json!({
            "repo": repo.path(), "pipeline": "s", "env": { "RAN": ran },
        });
        ids.push(agents[i % 4].queue(&body));
    }
    for &id in &ids {
        let build = agents[0].wait_finished(id);
        assert_eq!(build["status"], "success", "{build}");
    }
    let lines = std::fs::read_to_string(&ran).unwrap();
    let mut seen: Vec<i64> = lines
        .lines()
        .map(|l| l.split('-').next().unwrap().parse().unwrap())
        .collect();
    seen.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen, expected, "each build ran exactly once");
    // Per-repository numbers under concurrent submits: 1..=500, no gaps.
    let (_, list) = agents[0].http(
        "GET",
        "/api/v1/builds?limit=500",
        Some(&agents[0].token),
        None,
    );
    let list: Value = serde_json::from_slice(&list).unwrap();
    let mut numbers: Vec<i64> = list["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["number"].as_i64().unwrap())
        .collect();
    numbers.sort();
    assert_eq!(numbers, (1..=500).collect::<Vec<_>>());
    // More than one agent took part.
    let agents_used: std::collections::BTreeSet<&str> = lines
        .lines()
        .map(|l| l.split_once('-').unwrap().1)
        .collect();
    assert!(agents_used.len() > 1, "{agents_used:?}");
}

/// A pipeline whose step records which agent runs it and waits for `go`.
const WAITING: &[u8] = br#"
pipeline "ci" {
  step "s" { run = "echo $PIPER_AGENT >> $DIR/agents; echo $$ > $DIR/pid-$PIPER_AGENT; while [ ! -f $DIR/go ]; do sleep 0.01; done; echo done-$PIPER_AGENT" },
  retry_agent_lost = 1,
}
"#;

/// Submits a `WAITING` build and waits for its first attempt: (build id,
/// index of the agent running it, pid of its step's shell).
fn start_waiting(agents: &[Daemon], repo: &Path, dir: &Path) -> (i64, usize, i32) {
    let id = agents[0]
        .queue(&serde_json::json!({ "repo": repo, "pipeline": "ci", "env": { "DIR": dir } }));
    eventually(LIMIT, "the first attempt to start", || {
        running_on(dir).len() == 1
    });
    let first = running_on(dir)[0].clone();
    let runner = agents.iter().position(|a| a.name() == first).unwrap();
    (id, runner, read_pid(&dir.join(format!("pid-{first}"))))
}

fn running_on(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("agents"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn a_killed_agents_build_is_rescued_and_its_processes_end_with_it() {
    let Some(db) = Database::create("cluster::a_killed_agents_build_is_rescued") else {
        return;
    };
    let mut agents = agents(&db, 2, FAST);
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(&[("piper.lua", WAITING)]);
    let (id, victim, orphan) = start_waiting(&agents, repo.path(), dir.path());
    let survivor = 1 - victim;
    // The agent records the step's group just after starting it; a kill
    // before that (a window of microseconds, wide under load) leaves a
    // group it cannot know about. Kill it once the record is there.
    crate::harness::wait_for_file_to_exist(
        &agents[victim]
            .data
            .join("process-groups")
            .join(orphan.to_string()),
    );
    agents[victim].kill_hard();
    // Its guard ends the dead agent's step (issue 26.6: it ran on, 21 s,
    // until it ended by itself), before any rescue runs it again.
    eventually_or_logs(&agents, "the dead agent's step to end", || {
        process_gone(orphan)
    });
    // Rescued within lease + heartbeat, and run again by the other agent.
    eventually_or_logs(&agents, "the second attempt to start", || {
        running_on(dir.path()).len() == 2
    });
    assert_eq!(running_on(dir.path())[1], agents[survivor].name());
    agents[victim].restart();
    std::fs::write(dir.path().join("go"), "").unwrap();
    let build = agents[survivor].wait_finished(id);
    assert_eq!(
        (build["status"].as_str(), build["attempt"].as_i64()),
        (Some("success"), Some(2)),
        "{build}"
    );
    let log = agents[survivor].log(id);
    let second = format!("piper: attempt 2 on agent {}", agents[survivor].name());
    assert!(log.contains(&second), "{log}");
    assert!(
        log.trim_end()
            .ends_with(&format!("done-{}", agents[survivor].name())),
        "{log}"
    );
}

#[test]
fn a_stalled_agents_late_writes_are_refused_and_it_stops_its_step() {
    let Some(db) = Database::create("cluster::a_stalled_agents_late_writes_are_refused") else {
        return;
    };
    let agents = agents(&db, 2, FAST);
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(&[("piper.lua", WAITING)]);
    let (id, stalled, step) = start_waiting(&agents, repo.path(), dir.path());
    let first = agents[stalled].name();
    let other = 1 - stalled;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agents[stalled].pid(), libc::SIGSTOP) };
    eventually(LIMIT, "the rescue to run it again", || {
        running_on(dir.path()).len() == 2
    });
    std::fs::write(dir.path().join("go"), "").unwrap();
    let build = agents[other].wait_finished(id);
    assert_eq!(build["status"], "success", "{build}");
    // SAFETY: as above.
    unsafe { libc::kill(agents[stalled].pid(), libc::SIGCONT) };
    // It learns it lost the lease, and ends its step's process group.
    eventually(LIMIT, "the stale step to end", || process_gone(step));
    let build = get(&agents[other], &format!("/api/v1/builds/{id}"));
    assert_eq!(
        (build["status"].as_str(), build["attempt"].as_i64()),
        (Some("success"), Some(2))
    );
    let log = agents[other].log(id);
    assert!(
        !log.contains(&format!("done-{first}")),
        "a stale write landed:\n{log}"
    );
}

#[test]
fn cancel_reaches_the_agent_running_the_build() {
    let Some(db) = Database::create("cluster::cancel_reaches_the_agent_running_the_build") else {
        return;
    };
    let agents = agents(&db, 2, &[]);
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(&[(
        "piper.lua",
        br#"step "s" { run = "echo $PIPER_AGENT > $DIR/agent; sleep 1000 & echo $! > $DIR/bg.pid; wait" }"#,
    )]);
    let id = agents[0].queue(
        &serde_json::json!({ "repo": repo.path(), "pipeline": "s", "env": { "DIR": dir.path() } }),
    );
    wait_for_file_to_exist(&dir.path().join("bg.pid"));
    let bg = read_pid(&dir.path().join("bg.pid"));
    let owner = std::fs::read_to_string(dir.path().join("agent")).unwrap();
    let other = agents.iter().find(|a| a.name() != owner.trim()).unwrap();
    let (status, body) = other.http(
        "POST",
        &format!("/api/v1/builds/{id}/cancel"),
        Some(&other.token),
        None,
    );
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("canceled")),
        "{body}"
    );
    assert!(
        process_gone(bg),
        "the step's background process survived the cancel"
    );
}

/// Numbering builds per repository failed under concurrency ("could not
/// number the build: too much contention", 81 of 300 over two agents).
#[test]
fn three_hundred_concurrent_submits_over_two_agents_all_succeed() {
    let Some(db) = Database::create("cluster::three_hundred_concurrent_submits") else {
        return;
    };
    let agents = agents(&db, 2, &[]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let statuses: Vec<u16> = runtime.block_on(async {
        let client = crate::harness::http();
        let requests = (0..300).map(|i| {
            let agent = &agents[i % 2];
            client
                .post(format!("{}/api/v1/builds", agent.url))
                .bearer_auth(&agent.token)
                .json(&serde_json::json!({ "repo": "/nowhere/at/all", "pipeline": "ci" }))
                .send()
        });
        futures_util::future::join_all(requests)
            .await
            .into_iter()
            .map(|r| r.unwrap().status().as_u16())
            .collect()
    });
    assert!(statuses.iter().all(|&s| s == 201), "{statuses:?}");
    let list = get(&agents[0], "/api/v1/builds?limit=500");
    let mut numbers: Vec<i64> = list["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["number"].as_i64().unwrap())
        .collect();
    numbers.sort();
    assert_eq!(numbers, (1..=300).collect::<Vec<_>>());
}

/// A repeated submit (same `Idempotency-Key`, to any agent, even at the
/// same instant) or a redelivered webhook returns the first build.
#[test]
fn repeated_requests_with_one_key_create_one_build() {
    let Some(db) = Database::create("cluster::repeated_requests_with_one_key") else {
        return;
    };
    let agents = agents(&db, 2, &[]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let ids: Vec<(u16, i64, bool)> = runtime.block_on(async {
        let client = crate::harness::http();
        let requests = (0..20).map(|i| {
            let agent = &agents[i % 2];
            client
                .post(format!("{}/api/v1/builds", agent.url))
                .bearer_auth(&agent.token)
                .header("idempotency-key", "deploy-42")
                .json(&serde_json::json!({ "repo": "/nowhere", "pipeline": "ci" }))
                .send()
        });
        let mut answers = Vec::new();
        for response in futures_util::future::join_all(requests).await {
            let response = response.unwrap();
            let status = response.status().as_u16();
            let replayed = response.headers().contains_key("idempotent-replayed");
            let body: Value = response.json().await.unwrap();
            answers.push((status, body["id"].as_i64().unwrap(), replayed));
        }
        answers
    });
    let first = ids[0].1;
    assert!(
        ids.iter()
            .all(|&(status, id, _)| status == 201 && id == first),
        "{ids:?}"
    );
    assert_eq!(
        ids.iter().filter(|(_, _, replayed)| !replayed).count(),
        1,
        "{ids:?}"
    );
    let webhook = |agent: &Daemon| {
        let (status, body) = runtime.block_on(async {
            let response = crate::harness::http()
                .post(format!("{}/api/v1/webhook", agent.url))
                .bearer_auth(&agent.token)
                .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
                .json(&serde_json::json!({ "repo": "/nowhere", "ref": "main" }))
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        });
        assert_eq!(status, 201);
        body["id"].as_i64().unwrap()
    };
    assert_eq!(webhook(&agents[0]), webhook(&agents[1]));
    let list = get(&agents[0], "/api/v1/builds");
    assert_eq!(list["builds"].as_array().unwrap().len(), 2);
}

/// Builds run only on agents with the labels they require; one that no
/// live agent can run waits, named as such, without holding up others,
/// and runs when such an agent joins.
#[test]
fn builds_go_to_agents_with_the_labels_they_require() {
    let Some(db) = Database::create("cluster::builds_go_to_agents_with_the_labels") else {
        return;
    };
    let plain = Daemon::start_with(Some(&db.url), &["--name", "plain"], None);
    let gpu = Daemon::start_with(Some(&db.url), &["--name", "gpu", "--labels", "gpu=1"], None);
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(&[(
        "piper.lua",
        br#"
        pipeline "train" { step "t" { run = "echo $PIPER_AGENT >> $DIR/train" }, requires = { gpu = "1" } }
        pipeline "port" { step "p" { run = "echo $PIPER_AGENT >> $DIR/port", requires = { os = "plan9" } } }
        pipeline "lint" { step "l" { run = "echo $PIPER_AGENT >> $DIR/lint" } }
        "#,
    )]);
    let submit = |agent: &Daemon, pipeline: &str| {
        agent.queue(&serde_json::json!({ "repo": repo.path(), "pipeline": pipeline, "env": { "DIR": dir.path() } }),
        )
    };
    let port = submit(&plain, "port");
    let trains: Vec<i64> = (0..4).map(|_| submit(&plain, "train")).collect();
    let lint = submit(&gpu, "lint");
    for id in trains.iter().chain([&lint]) {
        assert_eq!(plain.wait_finished(*id)["status"], "success");
    }
    let trained = std::fs::read_to_string(dir.path().join("train")).unwrap();
    assert_eq!(trained, "gpu\n".repeat(4), "only the gpu agent trains");
    eventually(LIMIT, "the port build to be shown waiting", || {
        get(&plain, &format!("/api/v1/builds/{port}"))["waiting_for"] == "os=plan9"
    });
    let (_, listing, _) = plain.piper(&["builds"]);
    assert!(
        listing.contains("waiting for an agent with os=plan9"),
        "{listing}"
    );
    let _plan9 = Daemon::start_with(
        Some(&db.url),
        &["--name", "plan9", "--labels", "os=plan9"],
        None,
    );
    assert_eq!(plain.wait_finished(port)["status"], "success");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("port")).unwrap(),
        "plan9\n"
    );
}

/// One set of tokens for the cluster: a token created with `piperd token`
/// (or an agent's own file token) works on every agent; a revoked one on
/// none.
#[test]
fn tokens_are_the_clusters() {
    let Some(db) = Database::create("cluster::tokens_are_the_clusters") else {
        return;
    };
    let agents = agents(&db, 2, &[]);
    let piperd = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_piperd"))
            .arg("token")
            .args(args)
            .args(["--database", &db.url])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, token, stderr) = piperd(&["create", "ci"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(token.len(), 64);
    let status =
        |agent: &Daemon, token: &str| agent.http("GET", "/api/v1/builds", Some(token), None).0;
    for agent in &agents {
        assert_eq!(status(agent, &token), 200);
    }
    assert_eq!(
        status(&agents[1], &agents[0].token),
        200,
        "one agent's file token on another"
    );
    let (code, list, _) = piperd(&["list"]);
    assert_eq!(code, 0);
    assert!(list.lines().any(|l| l.starts_with("ci\t")), "{list}");
    assert_eq!(piperd(&["create", "ci"]).0, 2, "names are unique");
    assert_eq!(piperd(&["revoke", "ci"]).0, 0);
    for agent in &agents {
        assert_eq!(status(agent, &token), 401);
    }
    assert_eq!(piperd(&["revoke", "ci"]).0, 2);
}

/// Four agents started at the same instant on an empty database: the
/// migrations run once (under the migrator's advisory lock) and all come up.
#[test]
fn four_agents_starting_together_on_an_empty_database_all_come_up() {
    let Some(db) = Database::create("cluster::four_agents_starting_together") else {
        return;
    };
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    /// Ends the agents even when an assertion fails.
    struct Agents(Vec<std::process::Child>);
    impl Drop for Agents {
        fn drop(&mut self) {
            for child in &mut self.0 {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    let mut children: Vec<std::process::Child> = dirs
        .iter()
        .map(|dir| {
            std::process::Command::new(env!("CARGO_BIN_EXE_piperd"))
                .args([
                    "start",
                    "--listen",
                    "127.0.0.1:0",
                    "--database",
                    &db.url,
                    "--data",
                ])
                .arg(dir.path())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for dir in &dirs {
        crate::harness::wait_for_file(&dir.path().join("piperd.addr"));
    }
    let mut agents = Agents(std::mem::take(&mut children));
    for child in &mut agents.0 {
        assert!(child.try_wait().unwrap().is_none(), "an agent exited");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert_eq!(child.wait().unwrap().code(), Some(0));
    }
}

/// A build that kills its agent every time: re-run while it has attempts
/// (`retry_agent_lost = 1`), then `lost` — never an endless loop.
#[test]
fn a_build_that_kills_its_agent_ends_lost_after_its_attempts() {
    let Some(db) = Database::create("cluster::a_build_that_kills_its_agent") else {
        return;
    };
    let mut agents = agents(&db, 2, FAST);
    let repo = repo(&[(
        "piper.lua",
        // Once its agent has recorded its process group (the workspace is
        // DATA/workspaces/ID, the record DATA/process-groups/PGID), the step
        // kills its agent; the restarted agent then ends the step.
        br#"pipeline "boom" { step "s" { run = "while [ ! -f ../../process-groups/$$ ]; do sleep 0.01; done; kill -9 $PPID; sleep 100" }, retry_agent_lost = 1 }"#,
    )]);
    let id = agents[0].queue(&serde_json::json!({ "repo": repo.path(), "pipeline": "boom" }));
    let mut restarts = 0;
    let build = loop {
        // Whichever agent died: start it again (its start rescues the
        // builds it left at once).
        for agent in agents.iter_mut() {
            if agent.exited() {
                agent.restart();
                restarts += 1;
            }
        }
        let Some(alive) = agents.iter_mut().find_map(|a| (!a.exited()).then_some(a)) else {
            continue;
        };
        // It may die while asked: ask again then.
        let Some(build) = try_get(alive, &format!("/api/v1/builds/{id}")) else {
            continue;
        };
        if build["status"] != "queued" && build["status"] != "running" {
            break build;
        }
        assert!(restarts <= 4, "more attempts than allowed: {build}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        (build["status"].as_str(), build["attempt"].as_i64()),
        (Some("lost"), Some(2)),
        "{build}"
    );
    // Who handed it back (the restarted agent, or the leader after its
    // lease expired) says why, and what became of it.
    let error = build["error"].as_str().unwrap();
    assert!(
        error.contains("while running attempt 2")
            || error.contains("stopped renewing the lease of attempt 2"),
        "{build}"
    );
    assert!(
        error.contains("ended lost: 2 of 2 attempts taken"),
        "{build}"
    );
}

/// The agents' listening connections are killed: builds are still picked
/// up (by the poll), and the listeners come back.
#[test]
fn killed_listener_connections_fall_back_to_polling_and_reconnect() {
    let Some(db) = Database::create("cluster::killed_listener_connections") else {
        return;
    };
    let agents = agents(&db, 2, &[]);
    let listeners = || {
        crate::harness::block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            let rows: Vec<(i32,)> = sqlx::query_as(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            rows.into_iter().map(|(pid,)| pid).collect::<Vec<i32>>()
        })
    };
    eventually(LIMIT, "both agents to listen", || listeners().len() >= 2);
    let killed = listeners();
    {
        crate::harness::block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            for pid in &killed {
                sqlx::query("SELECT pg_terminate_backend($1)")
                    .bind(pid)
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
        });
    }
    let repo = repo(&[("piper.lua", br#"step "s" { run = "true" }"#)]);
    let id = agents[0].queue(&serde_json::json!({ "repo": repo.path(), "pipeline": "s" }));
    assert_eq!(agents[1].wait_finished(id)["status"], "success");
    eventually(LIMIT, "the listeners to come back", || {
        let now = listeners();
        now.len() >= 2 && now.iter().all(|pid| !killed.contains(pid))
    });
    let id = agents[1].queue(&serde_json::json!({ "repo": repo.path(), "pipeline": "s" }));
    assert_eq!(agents[0].wait_finished(id)["status"], "success");
}

/// PostgreSQL restarts while a build runs: the agents reconnect, the build
/// finishes once, nothing is left running.
#[test]
fn a_postgres_restart_mid_build_duplicates_nothing() {
    let Some(server) = crate::pg::PrivateServer::start() else {
        crate::harness::skip(
            "cluster::a_postgres_restart_mid_build_duplicates_nothing",
            "no PostgreSQL server binaries (initdb, postgres) on this machine",
        );
        return;
    };
    let db = Database::create_on(&server.url("postgres"));
    let agents = agents(&db, 2, &["--lease", "30s", "--heartbeat", "300ms"]);
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(&[("piper.lua", WAITING)]);
    let id = agents[0].queue(
        &serde_json::json!({ "repo": repo.path(), "pipeline": "ci", "env": { "DIR": dir.path() } }),
    );
    eventually(LIMIT, "the build to start", || {
        running_on(dir.path()).len() == 1
    });
    server.stop();
    std::fs::write(dir.path().join("go"), "").unwrap();
    server.resume();
    let build = agents[1].wait_finished(id);
    assert_eq!(
        (build["status"].as_str(), build["attempt"].as_i64()),
        (Some("success"), Some(1)),
        "{build}"
    );
    assert_eq!(running_on(dir.path()).len(), 1, "ran twice");
    let running = get(&agents[0], "/api/v1/builds?status=running");
    assert_eq!(running["builds"].as_array().unwrap().len(), 0);
}
