//! piperd under faults and hostile input (issue 9), each test named after
//! the defect it pins: real piperd processes, real git, real SQLite and
//! PostgreSQL, sockets on 127.0.0.1. Waits are bounded polls for evidence.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::agent::{Daemon, post_build, repo, submit, submitted_id};
use crate::harness::{eventually, skip, unindent, wait_for_file_to_exist};
use crate::pg::{Database, PrivateServer};

/// How long a wait for evidence may take here.
const LIMIT: Duration = Duration::from_secs(30);

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Children of `pid` that are zombies (exited, never waited for).
fn zombie_children(pid: i32) -> Vec<i32> {
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1) == Some(&pid.to_string().as_str()) {
            zombies.push(child);
        }
    }
    zombies
}

/// 9.1: every orphan re-parented to the subreaper was left a zombie (git's
/// detached maintenance after each fetch, daemons steps leave): 198 after
/// 200 builds. Here each build's step leaves an orphan outside its group.
#[test]
fn two_hundred_builds_leave_no_zombies() {
    let daemon = Daemon::start_with(None, &["--workers", "4"], None);
    let repo = repo(&[(
        "piper.lua",
        br#"step "s" { run = "setsid sh -c 'exit 0' & wait" }"#,
    )]);
    let repo_text = repo.path().to_string_lossy().into_owned();
    let mut ids = Vec::new();
    for _ in 0..200 {
        let (status, build) = post_build(
            &daemon,
            &serde_json::json!({ "repo": repo_text, "pipeline": "s" }),
        );
        assert_eq!(status, 201, "{build}");
        ids.push(build["id"].as_i64().unwrap());
    }
    for id in ids {
        assert_eq!(daemon.wait_finished(id)["status"], "success");
    }
    let pid = daemon.pid();
    eventually(LIMIT, "every exited child to be reaped", || {
        zombie_children(pid).is_empty()
    });
}

/// A git "server" that accepts connections and never answers.
fn silent_git_server() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/never.git", listener.local_addr().unwrap());
    (listener, url)
}

/// 9.2: one global git lock and no timeout: a repository whose server never
/// answers blocked every later build, cancel answered 202 but the build
/// stayed `running`, and SIGTERM waited for git well past the grace.
#[test]
fn a_hanging_git_server_wedges_only_its_own_build() {
    let (_server, url) = silent_git_server();
    let mut daemon = Daemon::start_with(None, &["--workers", "2"], None);
    let (status, hanging) = post_build(
        &daemon,
        &serde_json::json!({ "repo": url, "pipeline": "ci" }),
    );
    assert_eq!(status, 201);
    let hanging = hanging["id"].as_i64().unwrap();
    eventually(LIMIT, "the hanging build to be claimed", || {
        daemon.build(hanging)["status"] == "running"
    });

    // Another repository builds meanwhile.
    let ok = repo(&[("piper.lua", unindent(crate::agent::CI).as_bytes())]);
    let (code, _, stderr) = submit(&daemon, ok.path(), "ci", &["--follow"]);
    assert_eq!(code, 0, "{stderr}");

    // Cancel reaches the checkout: the answer is the final state.
    let (status, body) = daemon.http(
        "POST",
        &format!("/api/v1/builds/{hanging}/cancel"),
        Some(&daemon.token),
        None,
    );
    assert_eq!(
        (status, json(&body)["status"].clone()),
        (200, "canceled".into())
    );

    // SIGTERM with a build stuck in git: done within the grace period,
    // because the grace ends git too.
    let (status, stuck) = post_build(
        &daemon,
        &serde_json::json!({ "repo": url, "pipeline": "ci" }),
    );
    assert_eq!(status, 201);
    let stuck = stuck["id"].as_i64().unwrap();
    eventually(LIMIT, "the second hanging build to be claimed", || {
        daemon.build(stuck)["status"] == "running"
    });
    assert_eq!(daemon.terminate(), 0);
}

#[test]
fn git_commands_time_out_and_fail_the_build() {
    let (_server, url) = silent_git_server();
    let daemon = Daemon::start_with(None, &["--git-timeout", "500ms"], None);
    let (_, build) = post_build(
        &daemon,
        &serde_json::json!({ "repo": url, "pipeline": "ci" }),
    );
    let build = daemon.wait_finished(build["id"].as_i64().unwrap());
    assert_eq!(build["status"], "failed");
    assert!(
        build["error"]
            .as_str()
            .unwrap()
            .contains("did not finish within 500ms (git_timeout)"),
        "{build}"
    );
}

/// 9.3: on a full disk (SQLite) `POST /builds` answered 201 with an id that
/// never committed, and a running build's log chunks were dropped. Now:
/// 503 and no row while full; the running build's writes wait, and once
/// space is back its log is whole and it succeeds.
#[test]
fn a_full_disk_loses_no_acknowledged_build_and_no_log() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip(
            "agent_faults::a_full_disk_loses_no_acknowledged_build_and_no_log",
            "mounting a small tmpfs needs root",
        );
        return;
    }
    let mount = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"])
        .arg(mount.path())
        .status()
        .unwrap();
    assert!(status.success(), "mount failed");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0)
                .status();
        }
    }
    let _unmount = Unmount(mount.path());
    let ballast = mount.path().join("ballast");
    std::fs::write(&ballast, vec![0u8; 26 << 20]).unwrap();

    let daemon = Daemon::start_with(None, &[], Some(mount.path().join("data")));
    // 8 MB of output does not fit in what is left (~6 MB).
    let repo = repo(&[(
        "piper.lua",
        br#"step "big" { run = "head -c 8000000 /dev/zero | tr '\\0' x; echo; touch $HOME_DIR/printed" }"#,
    )]);
    let printed = mount.path().join("printed");
    let (status, build) = post_build(
        &daemon,
        &serde_json::json!({
            "repo": repo.path(), "pipeline": "big",
            "env": { "HOME_DIR": mount.path() },
        }),
    );
    assert_eq!(status, 201);
    let id = build["id"].as_i64().unwrap();
    // The disk fills while the log is written: a submit now is refused.
    eventually(LIMIT, "the disk to fill", || {
        let (status, _) = post_build(
            &daemon,
            &serde_json::json!({ "repo": repo.path(), "pipeline": "big" }),
        );
        assert!(status == 201 || status == 503, "{status}");
        status == 503
    });
    let (_, list) = daemon.http("GET", "/api/v1/builds", Some(&daemon.token), None);
    let before: Vec<i64> = json(&list)["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_i64().unwrap())
        .collect();
    // Space comes back: the waiting writes land, nothing was lost.
    std::fs::remove_file(&ballast).unwrap();
    let build = daemon.wait_finished(id);
    assert_eq!(build["status"], "success", "{build}");
    assert!(printed.exists());
    let mut log = Vec::new();
    let mut offset = 0;
    loop {
        let (status, body) = daemon.http(
            "GET",
            &format!("/api/v1/builds/{id}/log?step=big&offset={offset}"),
            Some(&daemon.token),
            None,
        );
        assert_eq!(status, 200);
        if body.is_empty() {
            break;
        }
        offset += body.len();
        log.extend(body);
    }
    let expected_len = "$ head -c 8000000 /dev/zero | tr '\\0' x; echo; touch $HOME_DIR/printed\n"
        .len()
        + 8_000_001;
    // (Seen once under full-suite load: 5.4 of the 8 MB read back. The
    // agent's log and the builds say what happened, if it comes again.)
    assert_eq!(
        log.len(),
        expected_len,
        "the log read back is short\nbuilds: {}\nagent log:\n{}",
        String::from_utf8_lossy(
            &daemon
                .http("GET", "/api/v1/builds", Some(&daemon.token), None)
                .1
        ),
        std::fs::read_to_string(&daemon.log).unwrap_or_default()
    );
    // Every id the API handed out is a build that exists.
    for id in before {
        assert_eq!(
            daemon
                .http(
                    "GET",
                    &format!("/api/v1/builds/{id}"),
                    Some(&daemon.token),
                    None
                )
                .0,
            200
        );
    }
}

/// 9.4: final writes were fire-and-forget: during a PostgreSQL outage a
/// finished build stayed `running` for good, and a failed append skipped
/// its offsets. Now writes wait for the database; the log is whole.
#[test]
fn a_postgres_outage_mid_build_loses_nothing() {
    let Some(server) = PrivateServer::start() else {
        skip(
            "agent_faults::a_postgres_outage_mid_build_loses_nothing",
            "no PostgreSQL server binaries (initdb, postgres) on this machine",
        );
        return;
    };
    let db = Database::create_on(&server.url("postgres"));
    let daemon = Daemon::start(Some(&db.url));
    let dir = tempfile::tempdir().unwrap();
    let (started, go) = (dir.path().join("started"), dir.path().join("go"));
    let repo = repo(&[(
        "piper.lua",
        br#"step "s" { run = "echo first; touch $STARTED; while [ ! -f $GO ]; do sleep 0.01; done; echo second" }"#,
    )]);
    let (status, build) = post_build(
        &daemon,
        &serde_json::json!({
            "repo": repo.path(), "pipeline": "s",
            "env": { "STARTED": started, "GO": go },
        }),
    );
    assert_eq!(status, 201);
    let id = build["id"].as_i64().unwrap();
    wait_for_file_to_exist(&started);
    server.stop();
    std::fs::write(&go, "").unwrap();
    // The step ends while the database is down; its writes wait.
    eventually(LIMIT, "the agent to notice the outage", || {
        std::fs::read_to_string(&daemon.log)
            .unwrap_or_default()
            .contains("retrying until the store answers")
    });
    server.resume();
    let build = daemon.wait_finished(id);
    assert_eq!(build["status"], "success", "{build}");
    let (_, log) = daemon.http(
        "GET",
        &format!("/api/v1/builds/{id}/log?step=s"),
        Some(&daemon.token),
        None,
    );
    let log = String::from_utf8(log).unwrap();
    assert!(log.ends_with("first\nsecond\n"), "{log}");
    assert!(!log.contains("lost"), "{log}");
    drop(daemon);
}

/// 9.5: `GET /builds` without a token returned every build's env, logs
/// echoed secrets, and the database was world-readable.
#[test]
fn secrets_stay_secret() {
    let daemon = Daemon::start(None);
    let repo = repo(&[(
        "piper.lua",
        br#"step "s" { run = "echo token=$DEPLOY_TOKEN; echo $DEPLOY_TOKEN | cut -c1-6; echo $PIPER_BUILD_ID/$PIPER_BUILD_NUMBER/$PIPER_AGENT/$CI" }"#,
    )]);
    let (status, build) = post_build(
        &daemon,
        &serde_json::json!({
            "repo": repo.path(), "pipeline": "s",
            "secret_env": { "DEPLOY_TOKEN": "s3cr3t-value" },
        }),
    );
    assert_eq!(status, 201);
    let id = build["id"].as_i64().unwrap();
    assert_eq!(
        build["secret_env_names"],
        serde_json::json!(["DEPLOY_TOKEN"])
    );
    assert!(!build.to_string().contains("s3cr3t-value"));
    daemon.wait_finished(id);
    let (_, log) = daemon.http(
        "GET",
        &format!("/api/v1/builds/{id}/log?step=s"),
        Some(&daemon.token),
        None,
    );
    let log = String::from_utf8(log).unwrap();
    // 9.17: the agent's build id and number, its name, and CI=true.
    assert!(
        log.ends_with(&format!("token=***\ns3cr3t\n{id}/1/test-agent/true\n")),
        "{log}"
    );
    for path in [
        "/api/v1/builds",
        &format!("/api/v1/builds/{id}"),
        &format!("/api/v1/builds/{id}/log"),
        "/api/v1/agents",
    ] {
        assert_eq!(daemon.http("GET", path, None, None).0, 401, "{path}");
    }
    let (_, raw) = daemon.http("GET", "/api/v1/builds", Some(&daemon.token), None);
    assert!(!String::from_utf8_lossy(&raw).contains("s3cr3t-value"));
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&daemon.data), 0o700);
    assert_eq!(mode(&daemon.data.join("piperd.db")), 0o600);
    assert_eq!(mode(&daemon.data.join("token")), 0o600);

    let public = Daemon::start_with(None, &["--public-read"], None);
    assert_eq!(public.http("GET", "/api/v1/builds", None, None).0, 200);
}

/// 9.6: an empty token file was accepted (and `Bearer ` with nothing after
/// it passed); a token file readable by others was used as is.
#[test]
fn empty_short_or_exposed_token_files_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    for (content, mode, says) in [
        ("", 0o600, "the token file holds 0 characters"),
        ("short", 0o600, "the token file holds 5 characters"),
        (
            "0123456789abcdef0123456789abcdef",
            0o644,
            "readable by others",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let token = data.join("token");
        std::fs::write(&token, content).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_piperd"))
            .args(["start", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
}

/// 9.7: a client sending part of its headers kept its connection forever.
#[test]
fn a_connection_with_partial_headers_is_closed() {
    let daemon = Daemon::start(None);
    let address = daemon.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = Vec::new();
    // The server closes it (EOF, possibly after a 408); a read timeout
    // here would mean it never did.
    let read = stream.read_to_end(&mut buf);
    assert!(read.is_ok(), "the connection stayed open: {read:?}");
}

/// 9.8: cancel of a finished build answered 202; cancel of a queued build
/// could race a claim and mark a build that ran `canceled`.
#[test]
fn cancel_answers_with_the_resulting_state() {
    let daemon = Daemon::start(None);
    let repo = repo(&[("piper.lua", br#"step "s" { run = "true" }"#)]);
    let (_, build) = post_build(
        &daemon,
        &serde_json::json!({ "repo": repo.path(), "pipeline": "s" }),
    );
    let id = build["id"].as_i64().unwrap();
    daemon.wait_finished(id);
    let (status, body) = daemon.http(
        "POST",
        &format!("/api/v1/builds/{id}/cancel"),
        Some(&daemon.token),
        None,
    );
    assert_eq!(status, 409);
    assert_eq!(
        json(&body)["error"],
        format!("build {id} already ended: success")
    );
    let (code, _, stderr) = daemon.piper(&["cancel", &id.to_string()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("already ended: success"), "{stderr}");
}

/// 9.9: `submit --follow` exited 1 for a step that timed out (a local run
/// exits 124), and `piper logs N nosuchstep` printed nothing and exited 0.
#[test]
fn remote_exit_codes_match_local_ones_and_unknown_steps_are_named() {
    let daemon = Daemon::start(None);
    let repo = repo(&[(
        "piper.lua",
        br#"step "slow" { run = "sleep 100", timeout = "200ms" }"#,
    )]);
    let (code, _, stderr) = submit(&daemon, repo.path(), "slow", &["--follow"]);
    assert_eq!(code, 124, "{stderr}");
    let id = submitted_id(&stderr);
    let (code, stdout, stderr) = daemon.piper(&["logs", &id.to_string(), "nosuchstep"]);
    assert_ne!(code, 0);
    assert_eq!(stdout, "");
    assert!(
        stderr.contains(&format!(
            "build {id} has no step `nosuchstep`; its steps: slow"
        )),
        "{stderr}"
    );
}

/// 9.10: any string in `repo` went to `git clone` (`host:path` made git
/// start ssh). With `repositories` set, the rest is refused before git.
#[test]
fn repositories_outside_the_allow_list_are_refused_with_403() {
    let allowed = repo(&[("piper.lua", br#"step "s" { run = "true" }"#)]);
    let pattern = format!("{}/**", allowed.path().parent().unwrap().display());
    let daemon = Daemon::start_with(None, &["--repository", &pattern], None);
    let (status, body) = post_build(
        &daemon,
        &serde_json::json!({ "repo": "evil.example:x", "pipeline": "s" }),
    );
    assert_eq!(
        (status, body["field"].clone()),
        (403, "repo".into()),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not on this agent's allow-list")
    );
    let (_, list) = daemon.http("GET", "/api/v1/builds", Some(&daemon.token), None);
    assert_eq!(json(&list)["builds"].as_array().unwrap().len(), 0);
    let (status, _) = post_build(
        &daemon,
        &serde_json::json!({ "repo": allowed.path(), "pipeline": "s" }),
    );
    assert_eq!(status, 201);
}

/// 9.11, 9.14, 9.15: bad env keys, a lower-case `bearer`, a path that is
/// not UTF-8, an oversized body: each a JSON answer naming the problem.
#[test]
fn odd_requests_get_json_errors_naming_the_problem() {
    let daemon = Daemon::start(None);
    for (env, field) in [
        (serde_json::json!({ "A=B": "c" }), "env.A=B"),
        (serde_json::json!({ "": "c" }), "env."),
        (serde_json::json!({ "A": "x\u{0}y" }), "env.A"),
    ] {
        let (status, body) = post_build(
            &daemon,
            &serde_json::json!({ "repo": "/x", "pipeline": "ci", "env": env }),
        );
        assert_eq!(
            (status, body["field"].as_str()),
            (400, Some(field)),
            "{body}"
        );
    }
    let (status, _) = crate::harness::block_on(async {
        let response = crate::harness::http()
            .get(format!("{}/api/v1/builds", daemon.url))
            .header("authorization", format!("bearer {}", daemon.token))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), ())
    });
    assert_eq!(status, 200);
    let (status, body) = daemon.http("GET", "/api/v1/builds/%FF", Some(&daemon.token), None);
    assert_eq!(status, 400);
    json(&body);
    let big = format!(r#"{{"repo": "/x", "pipeline": "{}"}}"#, "x".repeat(100_000));
    let (status, body) = daemon.http(
        "POST",
        "/api/v1/builds",
        Some(&daemon.token),
        Some(big.into_bytes()),
    );
    assert_eq!(status, 413);
    assert_eq!(
        json(&body)["error"],
        "the request body is larger than the limit of 65536 bytes"
    );
    // The webhook's builds say so; the agent's log has a line per build,
    // and no colour codes in a file.
    let (status, body) = daemon.http(
        "POST",
        "/api/v1/webhook",
        Some(&daemon.token),
        Some(br#"{"repo": "/nowhere", "ref": "main"}"#.to_vec()),
    );
    assert_eq!(
        (status, json(&body)["requested_by"].clone()),
        (201, "webhook".into())
    );
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(log.contains("build queued"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log}");
}

/// 9.12, 9.16: stored strings were printed raw (an escape sequence in a
/// pipeline name repainted the terminal), and tables were misaligned.
#[test]
fn stored_strings_are_escaped_and_tables_align() {
    let daemon = Daemon::start(None);
    let repo = repo(&[("piper.lua", br#"step "s" { run = "true" }"#)]);
    let (status, build) = post_build(
        &daemon,
        &serde_json::json!({ "repo": repo.path(), "pipeline": "\u{1b}[31mred" }),
    );
    assert_eq!(status, 201);
    daemon.wait_finished(build["id"].as_i64().unwrap());
    let (code, stdout, _) = daemon.piper(&["builds"]);
    assert_eq!(code, 0);
    assert!(!stdout.contains('\u{1b}'), "{stdout}");
    assert!(stdout.contains("\\u{1b}[31mred"), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let column = |line: &str, word: &str| line.find(word);
    assert_eq!(
        column(lines[0], "PIPELINE"),
        column(lines[1], "\\u{1b}"),
        "{stdout}"
    );
    let (_, agents, _) = daemon.piper(&["agents"]);
    let lines: Vec<&str> = agents.lines().collect();
    assert_eq!(
        lines[0].find("ADDRESS"),
        lines[1].find("127.0.0.1"),
        "{agents}"
    );
}

/// 9.13: log reads were capped at 64 chunks instead of 1 MiB: a short
/// finished log of many small chunks came back cut.
#[test]
fn a_log_of_many_small_chunks_reads_back_whole() {
    let daemon = Daemon::start(None);
    let repo = repo(&[(
        "piper.lua",
        br#"step "s" { run = function(ctx) for i = 1, 300 do ctx.print("line " .. i) end end }"#,
    )]);
    let (_, build) = post_build(
        &daemon,
        &serde_json::json!({ "repo": repo.path(), "pipeline": "s" }),
    );
    let id = build["id"].as_i64().unwrap();
    daemon.wait_finished(id);
    let (_, log) = daemon.http(
        "GET",
        &format!("/api/v1/builds/{id}/log?step=s"),
        Some(&daemon.token),
        None,
    );
    let log = String::from_utf8(log).unwrap();
    assert_eq!(log.lines().count(), 300, "{log}");
    assert!(log.ends_with("line 300\n"));
}
