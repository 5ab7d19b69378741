//! Agents under faults, round 2 (issue 26): leases, chaining, the queue,
//! the data directory and fencing, each test named after what must hold.
//! Real piperd processes, real git, SQLite files and PostgreSQL, real
//! signals; waits are bounded polls for evidence.

use std::path::Path;

use serde_json::Value;

use crate::agent::{Daemon, eventually_or_logs, get, repo};
use crate::harness::{process_gone, read_pid, wait_for_file_to_exist};
use crate::pg::Database;

/// The builds `parent` triggered.
fn children(daemon: &Daemon, parent: i64) -> Vec<Value> {
    get(daemon, &format!("/api/v1/builds?parent={parent}"))["builds"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// 26.1: the finished parent's lease renewal found it no longer running,
/// took that for a lost lease and canceled the run, chained child and all.
/// `renewals`: how many renewals of the child to wait for after the parent
/// ended, with `extra` flags (none: the defaults, a 10 s heartbeat).
fn a_chained_build_outlives_its_parents_lease(
    database: Option<&str>,
    extra: &[&str],
    renewals: usize,
) {
    let daemon = Daemon::start_with(database, extra, None);
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
    // The step may start before the agent has stored its chained build.
    eventually_or_logs(&[&daemon], "the chained build's row", || {
        !children(&daemon, parent).is_empty()
    });
    let child = children(&daemon, parent)[0]["id"].as_i64().unwrap();
    eventually_or_logs(&[&daemon], "the parent to finish", || {
        daemon.build(parent)["status"] == "success"
    });
    // Renewals after the parent ended: the child's lease moves on (or,
    // with the defect, the child ends canceled).
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
        seen.len() > renewals
    });
    std::fs::write(dir.path().join("go"), "").unwrap();
    let build = daemon.wait_finished(child);
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert_eq!(build["status"], "success", "{build}\n{log}");
    assert!(!log.contains("lost the lease"), "{log}");
}

#[test]
fn a_chained_build_outlives_its_parents_lease_on_sqlite() {
    // On the defaults, as a new user runs piperd: one renewal (10 s).
    a_chained_build_outlives_its_parents_lease(None, &[], 1);
}

#[test]
fn a_chained_build_outlives_its_parents_lease_on_postgres() {
    let Some(db) = Database::create("agent_leases::a_chained_build_outlives_its_parents_lease")
    else {
        return;
    };
    a_chained_build_outlives_its_parents_lease(Some(&db.url), &["--heartbeat", "200ms"], 2);
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

/// A pipeline whose step notes any earlier attempt's step still running
/// (`overlap`), records its attempt and fencing token, and waits for `go`.
const GUARDED: &[u8] = br#"
pipeline "ci" {
  step "s" { run = [[
    if [ -f "$DIR/pid" ]; then
      state=$(cut -d' ' -f3 "/proc/$(cat "$DIR/pid")/stat" 2>/dev/null || true)
      if [ -n "$state" ] && [ "$state" != Z ]; then echo "$PIPER_ATTEMPT" >> "$DIR/overlap"; fi
    fi
    echo $$ > "$DIR/pid"
    echo "$PIPER_ATTEMPT $PIPER_FENCING_TOKEN $PIPER_AGENT" >> "$DIR/attempts"
    while [ ! -f "$DIR/go" ]; do sleep 0.01; done
    echo "done on $PIPER_AGENT"
  ]] },
  retry_agent_lost = 1,
}
"#;

/// Short leases: a lost agent is noticed within a second or two.
const FAST: &[&str] = &["--lease", "3s", "--heartbeat", "500ms"];

/// (attempt, fencing token, agent) of each attempt's step, in order.
fn attempts(dir: &Path) -> Vec<(i64, i64, String)> {
    std::fs::read_to_string(dir.join("attempts"))
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let mut parts = line.split(' ');
            let mut number = || parts.next().unwrap().parse::<i64>().unwrap();
            (
                number(),
                number(),
                line.rsplit(' ').next().unwrap().to_string(),
            )
        })
        .collect()
}

/// Starts `agent` alone on `db`, queues a GUARDED build and waits for its
/// step: (build id, the step's pid).
fn first_attempt(agent: &Daemon, repo: &Path, dir: &Path) -> (i64, i32) {
    let id =
        agent.queue(&serde_json::json!({ "repo": repo, "pipeline": "ci", "env": { "DIR": dir } }));
    eventually_or_logs(&[agent], "the first attempt's step", || {
        attempts(dir).len() == 1
    });
    let step = read_pid(&dir.join("pid"));
    // The agent journals the step's group just after starting it.
    wait_for_file_to_exist(&agent.data.join("process-groups").join(step.to_string()));
    (id, step)
}

/// The second attempt ran to success on `other`, never beside the first:
/// attempts 1 then 2, fencing tokens increasing, no overlap.
fn second_attempt_alone(other: &Daemon, id: i64, dir: &Path) {
    eventually_or_logs(
        &[other],
        "the second attempt's step (or the build's end)",
        || {
            attempts(dir).len() == 2
                || !matches!(
                    other.build(id)["status"].as_str(),
                    Some("queued" | "running")
                )
        },
    );
    assert_eq!(
        attempts(dir).len(),
        2,
        "{}\n{}",
        other.build(id),
        other.log(id)
    );
    std::fs::write(dir.join("go"), "").unwrap();
    let build = other.wait_finished(id);
    assert_eq!(
        (build["status"].as_str(), build["attempt"].as_i64()),
        (Some("success"), Some(2)),
        "{build}"
    );
    let seen = attempts(dir);
    assert_eq!((seen[0].0, seen[1].0), (1, 2), "{seen:?}");
    assert!(seen[1].1 > seen[0].1, "fencing tokens grow: {seen:?}");
    assert_eq!(seen[1].2, other.name());
    assert!(
        !dir.join("overlap").exists(),
        "attempt 2 ran while attempt 1's step still ran"
    );
}

/// 26.6: SIGKILL of piperd left its step running on its own; now the
/// guard ends the step's group as soon as piperd is gone.
#[test]
fn a_killed_agents_steps_end_with_it() {
    let mut daemon = Daemon::start(None);
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(&[("piper.lua", GUARDED)]);
    let (_, step) = first_attempt(&daemon, repo.path(), dir.path());
    daemon.kill_hard();
    eventually_or_logs(&[&daemon], "the dead agent's step to end", || {
        process_gone(step)
    });
    // The guard says so once it has ended the group: after the step is
    // gone, not before (reading the log at once raced with that line).
    let said = "piperd guard: piperd exited: ended 1 step process group(s)";
    eventually_or_logs(&[&daemon], "the guard to say what it ended", || {
        std::fs::read_to_string(&daemon.log).is_ok_and(|log| log.contains(said))
    });
}

/// 26.6: with SIGSTOP of piperd, the first attempt's processes stayed
/// alive while the second attempt ran on another agent. The guard ends
/// them at the stopped agent's fencing deadline, before its lease expires.
#[test]
fn a_stopped_agents_steps_end_before_another_agent_runs_them_again() {
    let Some(db) = Database::create("agent_leases::a_stopped_agents_steps_end") else {
        return;
    };
    let stopped = Daemon::start_with(
        Some(&db.url),
        &[FAST, &["--name", "stopped"]].concat(),
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(&[("piper.lua", GUARDED)]);
    let (id, step) = first_attempt(&stopped, repo.path(), dir.path());
    let other = Daemon::start_with(Some(&db.url), &[FAST, &["--name", "other"]].concat(), None);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(stopped.pid(), libc::SIGSTOP) };
    eventually_or_logs(
        &[&stopped, &other],
        "the stopped agent's step to end",
        || process_gone(step),
    );
    second_attempt_alone(&other, id, dir.path());
    // SAFETY: as above.
    unsafe { libc::kill(stopped.pid(), libc::SIGCONT) };
    let log = std::fs::read_to_string(&stopped.log).unwrap();
    assert!(
        log.contains("piperd guard: piperd did not renew its leases in time"),
        "{log}"
    );
    let build_log = other.log(id);
    assert!(
        build_log.contains("agent stopped stopped renewing the lease of attempt 1"),
        "{build_log}"
    );
}

/// `url` with its host and port replaced by `proxy`'s.
fn through(proxy: &crate::proxy::Proxy, url: &str) -> String {
    let (scheme_user, rest) = url.split_once('@').unwrap();
    let (_, path) = rest.split_once('/').unwrap();
    format!("{scheme_user}@{}/{path}", proxy.addr)
}

/// The PostgreSQL server's address in `url`.
fn server_of(url: &str) -> std::net::SocketAddr {
    let rest = url.split_once('@').unwrap().1;
    let host = rest.split_once('/').unwrap().0;
    std::net::ToSocketAddrs::to_socket_addrs(host)
        .unwrap()
        .next()
        .unwrap()
}

/// 26.6: an agent cut off from the database (a partition: no answers, no
/// resets) kept its step running while another agent ran the build again.
/// It now fences itself: it ends the step before its lease can expire,
/// and says so; the build runs again elsewhere, once at a time.
#[test]
fn an_agent_cut_off_from_the_database_ends_its_steps_before_its_lease_expires() {
    let Some(db) = Database::create("agent_leases::an_agent_cut_off_from_the_database") else {
        return;
    };
    let proxy = crate::proxy::Proxy::start(server_of(&db.url));
    let cut_off = Daemon::start_with(
        Some(&through(&proxy, &db.url)),
        &[FAST, &["--name", "cut-off"]].concat(),
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(&[("piper.lua", GUARDED)]);
    let (id, step) = first_attempt(&cut_off, repo.path(), dir.path());
    let other = Daemon::start_with(Some(&db.url), &[FAST, &["--name", "other"]].concat(), None);
    proxy.cut();
    eventually_or_logs(
        &[&cut_off, &other],
        "the cut-off agent's step to end",
        || process_gone(step),
    );
    second_attempt_alone(&other, id, dir.path());
    proxy.heal();
    eventually_or_logs(
        &[&cut_off, &other],
        "the cut-off agent to say it fenced itself",
        || {
            std::fs::read_to_string(&cut_off.log)
                .unwrap()
                .contains("self-fenced: no lease renewal for")
        },
    );
    let build_log = other.log(id);
    assert!(
        build_log.contains("agent cut-off stopped renewing the lease of attempt 1"),
        "{build_log}"
    );
    assert!(build_log.contains("done on other"), "{build_log}");
    assert!(!build_log.contains("done on cut-off"), "{build_log}");
}

/// The agent list as `GET /agents` gives it: (name, status, leader).
fn agent_states(daemon: &Daemon) -> Vec<(String, String, bool)> {
    get(daemon, "/api/v1/agents")["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["status"].as_str().unwrap().to_string(),
                a["leader"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// 26.7: `online` meant a heartbeat in the last 30 s whatever the lease;
/// a draining agent looked like any other and a stopped one stayed online
/// for 30 s; the leader was not shown.
#[test]
fn the_agent_list_shows_draining_offline_and_the_leader() {
    let Some(db) = Database::create("agent_leases::the_agent_list_shows") else {
        return;
    };
    let mut first = Daemon::start_with(
        Some(&db.url),
        &[FAST, &["--name", "first", "--grace", "60s"]].concat(),
        None,
    );
    // A build on `first` keeps it draining after SIGTERM.
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(&[(
        "piper.lua",
        br#"step "s" { run = "touch $DIR/started; while [ ! -f $DIR/go ]; do sleep 0.01; done" }"#,
    )]);
    let id = first.queue(
        &serde_json::json!({ "repo": repo.path(), "pipeline": "s", "env": { "DIR": dir.path() } }),
    );
    wait_for_file_to_exist(&dir.path().join("started"));
    let second = Daemon::start_with(Some(&db.url), &[FAST, &["--name", "second"]].concat(), None);
    eventually_or_logs(
        &[&first, &second],
        "one leader among two online agents",
        || {
            let states = agent_states(&second);
            states.len() == 2
                && states.iter().all(|a| a.1 == "online")
                && states.iter().filter(|a| a.2).count() == 1
        },
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.pid(), libc::SIGTERM) };
    eventually_or_logs(&[&first, &second], "first to show draining", || {
        agent_states(&second)
            .iter()
            .any(|a| a.0 == "first" && a.1 == "draining")
    });
    std::fs::write(dir.path().join("go"), "").unwrap();
    assert_eq!(first.terminate(), 0);
    assert_eq!(second.build(id)["status"], "success");
    // Offline as soon as it has stopped, not a lease later.
    let states = agent_states(&second);
    assert!(
        states.contains(&("first".into(), "offline".into(), false)),
        "{states:?}"
    );
    eventually_or_logs(&[&second], "second to lead", || {
        agent_states(&second).contains(&("second".into(), "online".into(), true))
    });
    let (code, stdout, stderr) = second.piper(&["agents"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("online (leader)") && stdout.contains("offline"),
        "{stdout}"
    );
}

/// 26.7: health answered 200 while the agent could not reach its
/// database; a load balancer kept sending requests to it.
#[test]
fn health_answers_503_while_the_database_is_cut_off() {
    let Some(db) = Database::create("agent_leases::health_answers_503") else {
        return;
    };
    let proxy = crate::proxy::Proxy::start(server_of(&db.url));
    let daemon = Daemon::start_with(Some(&through(&proxy, &db.url)), FAST, None);
    let (status, _) = daemon.http("GET", "/api/v1/health", None, None);
    assert_eq!(status, 200);
    proxy.cut();
    let (status, body) = daemon.http("GET", "/api/v1/health", None, None);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, body["status"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("database"),
        "{body}"
    );
    proxy.heal();
    eventually_or_logs(&[&daemon], "health to answer 200 again", || {
        daemon.http("GET", "/api/v1/health", None, None).0 == 200
    });
}

/// 26.8: `piper submit PIPELINE -- ARGS` dropped the arguments on the way
/// to the agent. They reach the steps as they do in `piper exec`, and a
/// retrigger keeps them.
#[test]
fn submitted_pipeline_arguments_reach_the_steps() {
    let daemon = Daemon::start(None);
    let repo = repo(&[(
        "piper.lua",
        br#"
pipeline "deploy" {
  step "sh" { run = [[echo "first=$1 second=$2 all=$PIPER_ARGS"]] },
  step "lua" { run = function(ctx) ctx.print("lua args: " .. table.concat(ctx.args, "|")) end },
}
"#,
    )]);
    let (code, stdout, stderr) = crate::agent::submit(
        &daemon,
        repo.path(),
        "deploy",
        &["--follow", "--", "prod", "two words"],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("first=prod second=two words all=prod 'two words'"),
        "{stdout}"
    );
    assert!(stdout.contains("lua args: prod|two words"), "{stdout}");
    let id = crate::agent::submitted_id(&stderr);
    assert_eq!(
        daemon.build(id)["args"],
        serde_json::json!(["prod", "two words"])
    );
    let (status, body) = daemon.http(
        "POST",
        &format!("/api/v1/builds/{id}/retrigger"),
        Some(&daemon.token),
        None,
    );
    assert_eq!(status, 201);
    let again: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(again["args"], serde_json::json!(["prod", "two words"]));
    // Not a list of strings: refused, naming the field.
    let (status, body) = daemon.http(
        "POST",
        "/api/v1/builds",
        Some(&daemon.token),
        Some(
            serde_json::json!({ "repo": repo.path(), "pipeline": "deploy", "args": ["ok", 7] })
                .to_string()
                .into_bytes(),
        ),
    );
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("args[1]")),
        "{body}"
    );
}

/// 26.8: `--working-tree` (and any submit from a project) sent the
/// repository's path, which only an agent on the same machine can read.
/// `--send` (the default when piperd is not on loopback) sends the commit
/// as a git bundle: an agent that never saw the path builds it.
#[test]
fn a_working_tree_sent_as_a_bundle_builds_where_its_path_cannot_be_read() {
    let Some(db) = Database::create("agent_leases::a_working_tree_sent_as_a_bundle") else {
        return;
    };
    // Takes the submit, runs nothing.
    let front = Daemon::start_with(Some(&db.url), &["--workers", "0", "--name", "front"], None);
    let dir = repo(&[
        ("piper.lua", br#"pipeline "ci" { step "look" { run = "echo tracked=$(cat tracked.txt) untracked=$(cat new.txt)" } }"#),
        ("tracked.txt", b"v1\n"),
    ]);
    std::fs::write(dir.path().join("tracked.txt"), "v2\n").unwrap();
    std::fs::write(dir.path().join("new.txt"), "yes\n").unwrap();
    let (code, _, stderr) =
        front.piper_in(dir.path(), &["submit", "ci", "--working-tree", "--send"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("as a git bundle"), "{stderr}");
    let id = crate::agent::submitted_id(&stderr);
    let build = front.build(id);
    assert!(
        build["repo"].as_str().unwrap().starts_with("bundle:"),
        "{build}"
    );
    // The path is gone before any agent that could build it exists.
    let moved = tempfile::tempdir().unwrap();
    std::fs::rename(dir.path(), moved.path().join("elsewhere")).unwrap();
    let builder = Daemon::start_with(Some(&db.url), &["--name", "builder"], None);
    let done = builder.wait_finished(id);
    assert_eq!(done["status"], "success", "{done}\n{}", builder.log(id));
    assert!(
        builder.log(id).contains("tracked=v2 untracked=yes"),
        "{}",
        builder.log(id)
    );
    assert!(
        done["ref"]
            .as_str()
            .unwrap()
            .starts_with("refs/piper/working-tree/"),
        "{done}"
    );
    std::fs::rename(moved.path().join("elsewhere"), dir.path()).unwrap();
}
