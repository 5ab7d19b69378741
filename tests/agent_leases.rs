//! Agents under faults, round 2 (issue 26): leases, chaining, the queue,
//! the data directory and fencing, each test named after what must hold.
//! Real piperd processes, real git, SQLite files and PostgreSQL, real
//! signals; waits are bounded polls for evidence.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::agent::{Daemon, repo};
use crate::harness::{eventually, process_gone, read_pid, wait_for_file_to_exist};
use crate::pg::Database;

/// How long a wait for evidence may take here.
const LIMIT: Duration = Duration::from_secs(60);

fn get(daemon: &Daemon, path: &str) -> Value {
    let (status, body) = daemon.http("GET", path, Some(&daemon.token), None);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// `eventually`, and on a time-out the agents' logs, to say why.
fn eventually_or_logs(agents: &[&Daemon], what: &str, check: impl Fn() -> bool) {
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually(LIMIT, what, check)
    }));
    if caught.is_err() {
        let logs: Vec<String> = agents
            .iter()
            .map(|a| {
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

/// The builds `parent` triggered.
fn children(daemon: &Daemon, parent: i64) -> Vec<Value> {
    get(daemon, &format!("/api/v1/builds?parent={parent}"))["builds"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// 26.1: the finished parent's lease renewal found it no longer running,
/// took that for a lost lease and canceled the run, chained child and all.
fn a_chained_build_outlives_its_parents_lease(database: Option<&str>) {
    let daemon = Daemon::start_with(database, &["--heartbeat", "200ms"], None);
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(&[(
        "piper.lua",
        br#"
pipeline "parent" { step "p" { run = "echo parent" }, on_success = "child" }
pipeline "child" { step "c" { run = "touch $DIR/started; while [ ! -f $DIR/go ]; do sleep 0.01; done; echo child done" } }
"#,
    )]);
    let parent = daemon.queue(
        &serde_json::json!({ "repo": repo.path(), "pipeline": "parent", "env": { "DIR": dir.path() } }),
    );
    wait_for_file_to_exist(&dir.path().join("started"));
    let child = children(&daemon, parent)[0]["id"].as_i64().unwrap();
    eventually_or_logs(&[&daemon], "the parent to finish", || {
        daemon.build(parent)["status"] == "success"
    });
    // Renewals after the parent ended: the child's lease moves on twice
    // (or, with the defect, the child ends canceled).
    let first = daemon.build(child)["lease_expires_at"].as_i64();
    let renewed = std::cell::RefCell::new(vec![first]);
    eventually_or_logs(&[&daemon], "two renewals of the child (or its end)", || {
        let build = daemon.build(child);
        if build["status"] != "running" {
            return true;
        }
        let mut seen = renewed.borrow_mut();
        let lease = build["lease_expires_at"].as_i64();
        if seen.last() != Some(&lease) {
            seen.push(lease);
        }
        seen.len() >= 3
    });
    std::fs::write(dir.path().join("go"), "").unwrap();
    let build = daemon.wait_finished(child);
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert_eq!(build["status"], "success", "{build}\n{log}");
    assert!(!log.contains("lost the lease"), "{log}");
}

#[test]
fn a_chained_build_outlives_its_parents_lease_on_sqlite() {
    a_chained_build_outlives_its_parents_lease(None);
}

#[test]
fn a_chained_build_outlives_its_parents_lease_on_postgres() {
    let Some(db) = Database::create("agent_leases::a_chained_build_outlives_its_parents_lease")
    else {
        return;
    };
    a_chained_build_outlives_its_parents_lease(Some(&db.url));
}

/// 26.4: a second piperd on the same data directory ended the first one's
/// steps, re-queued its builds, deleted its workspaces and took over
/// `piperd.addr`. Now it exits at once, naming who holds the directory.
#[test]
fn a_second_agent_on_one_data_dir_exits_and_touches_nothing() {
    let first = Daemon::start(None);
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(&[(
        "piper.lua",
        br#"step "s" { run = "echo $$ > $DIR/pid; while [ ! -f $DIR/go ]; do sleep 0.01; done; echo done" }"#,
    )]);
    let id = first.queue(
        &serde_json::json!({ "repo": repo.path(), "pipeline": "s", "env": { "DIR": dir.path() } }),
    );
    wait_for_file_to_exist(&dir.path().join("pid"));
    let step = read_pid(&dir.path().join("pid"));
    let address = std::fs::read_to_string(first.data.join("piperd.addr")).unwrap();
    let second = std::process::Command::new(crate::agent::PIPERD)
        .args([
            "start",
            "--listen",
            "127.0.0.1:0",
            "--name",
            "intruder",
            "--data",
        ])
        .arg(&first.data)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{stderr}");
    let data = first.data.canonicalize().unwrap();
    for expected in [
        data.display().to_string(),
        format!("pid {}", first.pid()),
        address.trim().to_string(),
    ] {
        assert!(stderr.contains(&expected), "`{expected}` in {stderr}");
    }
    // The first agent's step, address, name and build are as they were.
    assert!(!process_gone(step));
    assert_eq!(
        std::fs::read_to_string(first.data.join("piperd.addr")).unwrap(),
        address
    );
    let agents = get(&first, "/api/v1/agents");
    assert_eq!(agents["agents"][0]["name"], "test-agent", "{agents}");
    std::fs::write(dir.path().join("go"), "").unwrap();
    assert_eq!(first.wait_finished(id)["status"], "success");
}

/// 26.5: a restart with a new `--name` failed on the unique hash of the
/// agent's own token. A rename keeps the identity, token and builds.
#[test]
fn an_agent_restarted_with_a_new_name_keeps_its_identity() {
    let data = tempfile::tempdir().unwrap();
    let repo = repo(&[("piper.lua", br#"step "s" { run = "echo hi" }"#)]);
    let (id, agent_id) = {
        let old = Daemon::start_with(None, &["--name", "old-name"], Some(data.path().into()));
        let id = old.queue(&serde_json::json!({ "repo": repo.path(), "pipeline": "s" }));
        assert_eq!(old.wait_finished(id)["status"], "success");
        let agents = get(&old, "/api/v1/agents");
        (id, agents["agents"][0]["id"].as_str().unwrap().to_string())
    };
    let new = Daemon::start_with(None, &["--name", "new-name"], Some(data.path().into()));
    let agents = get(&new, "/api/v1/agents");
    let agents = agents["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert_eq!(
        (agents[0]["id"].as_str(), agents[0]["name"].as_str()),
        (Some(agent_id.as_str()), Some("new-name"))
    );
    let build = new.build(id);
    assert_eq!(build["agent_id"].as_str(), Some(agent_id.as_str()));
    let log = std::fs::read_to_string(&new.log).unwrap();
    assert!(log.contains("agent renamed"), "{log}");
    assert!(log.contains("old-name"), "{log}");
}
