//! piperd probed as an attacker would (issue 27): each test named after
//! what must hold. Real piperd processes, real git, sockets on 127.0.0.1.

use serde_json::Value;

use crate::agent::{Daemon, post_build, repo};

/// 27.1: with `--repository '/srv/repos/**'`, `/srv/repos/../outside` was
/// accepted (201) and *its* piper.lua ran; a URL escaped the same way.
#[test]
fn the_allow_list_cannot_be_escaped_with_dot_segments_or_symlinks() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path().canonicalize().unwrap();
    let repos = root.join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let inside = repo(&[("piper.lua", br#"step "s" { run = "true" }"#)]);
    let app = repos.join("app");
    std::fs::rename(inside.path(), &app).unwrap();
    let outside = repo(&[("piper.lua", br#"step "s" { run = "touch pwned" }"#)]);
    std::os::unix::fs::symlink(outside.path(), repos.join("link")).unwrap();
    let daemon = Daemon::start_with(
        None,
        &[
            "--repository",
            &format!("{}/**", repos.display()),
            "--repository",
            "http://git.example/acme/**",
        ],
        None,
    );
    let escapes = [
        format!("{}/../{}", repos.display(), outside.path().display()),
        format!("{}/app/../../x", repos.display()),
        "http://git.example/acme/../evilorg/evil".to_string(),
        "http://git.example/acme/%2e%2e/evilorg/evil".to_string(),
    ];
    for repo in &escapes {
        let (status, body) = post_build(
            &daemon,
            &serde_json::json!({ "repo": repo, "pipeline": "s" }),
        );
        assert_eq!(
            (status, body["field"].as_str()),
            (400, Some("repo")),
            "{repo}: {body}"
        );
    }
    let link = repos.join("link");
    let (status, body) = post_build(
        &daemon,
        &serde_json::json!({ "repo": link, "pipeline": "s" }),
    );
    assert_eq!(status, 403, "a symlink out of the tree: {body}");
    let (_, list) = daemon.http("GET", "/api/v1/builds", Some(&daemon.token), None);
    let list: Value = serde_json::from_slice(&list).unwrap();
    assert_eq!(list["builds"].as_array().unwrap().len(), 0, "{list}");
    // The repository itself is built, recorded by its canonical path.
    let (status, build) = post_build(
        &daemon,
        &serde_json::json!({ "repo": app, "pipeline": "s" }),
    );
    assert_eq!(status, 201, "{build}");
    let id = build["id"].as_i64().unwrap();
    assert_eq!(daemon.wait_finished(id)["status"], "success");
    assert!(!outside.path().join("pwned").exists());
}

/// Reads until the server closes the connection: true when it did (within
/// the 30 s bound), false when the read timed out with it still open.
fn closed_by_server(stream: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).is_ok()
}

/// 27.2: ~1,100 connections that sent nothing made the agent unreachable
/// (health unanswered for 60 s), and a single silent socket stayed open
/// for good: the header timeout started only at the first byte.
#[test]
fn silent_connections_are_dropped_and_never_lock_the_agent_out() {
    use std::io::Write;
    let daemon = Daemon::start(None);
    let address = daemon.url.trim_start_matches("http://").to_string();
    // More silent connections than may wait: the agent still answers.
    let silent: Vec<std::net::TcpStream> = (0..600)
        .map(|_| std::net::TcpStream::connect(&address).unwrap())
        .collect();
    let health = crate::harness::block_on(async {
        crate::harness::http_builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .unwrap()
            .get(format!("{}/api/v1/health", daemon.url))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    assert_eq!(health.as_ref().ok(), Some(&200), "{health:?}");
    // A silent connection is closed by the agent.
    let mut last = silent.into_iter().last().unwrap();
    assert!(
        closed_by_server(&mut last),
        "a silent connection stayed open"
    );
    // So is one idle after its request (keep-alive).
    let mut idle = std::net::TcpStream::connect(&address).unwrap();
    idle.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(
        closed_by_server(&mut idle),
        "an idle keep-alive connection stayed open"
    );
}

/// An HTTP server on 127.0.0.1 that answers every request with `text` as
/// a smart-HTTP git server's error (`ERR` in a pkt-line), which git prints
/// as `fatal: remote error: TEXT`; its URL.
fn answering_server(text: &'static str) -> String {
    let line = format!("ERR {text}\n");
    let body: &'static str = Box::leak(format!("{:04x}{line}", line.len() + 4).into_boxed_str());
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/latest/meta-data", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// 27.3: `fd::17` hung a worker until the git timeout, and what a remote
/// answered (a metadata service's text) landed in the build's `error`,
/// which `--public-read` visitors read.
#[test]
fn git_uses_plain_transports_and_never_reports_what_a_remote_said() {
    let daemon = Daemon::start(None);
    for repo in ["fd::17", "ext::sh -c id", "gopher://127.0.0.1/x"] {
        let (status, body) = post_build(
            &daemon,
            &serde_json::json!({ "repo": repo, "pipeline": "ci" }),
        );
        assert_eq!(
            (status, body["field"].as_str()),
            (400, Some("repo")),
            "{repo}: {body}"
        );
    }
    let url = answering_server("AKIA-SECRET-CREDENTIALS of the instance role");
    let (status, build) = post_build(
        &daemon,
        &serde_json::json!({ "repo": url, "pipeline": "ci" }),
    );
    assert_eq!(status, 201, "{build}");
    let build = daemon.wait_finished(build["id"].as_i64().unwrap());
    assert_eq!(build["status"], "failed", "{build}");
    let error = build["error"].as_str().unwrap();
    assert!(!error.contains("AKIA-SECRET"), "{error}");
    let log = daemon.log(build["id"].as_i64().unwrap());
    assert!(!log.contains("AKIA-SECRET"), "{log}");
}

/// 27.4: pipeline names and `requested_by` went into piperd's log as
/// they came: a newline forged a log line; CR, ESC and OSC passed.
#[test]
fn request_strings_cannot_forge_or_repaint_the_agents_log() {
    let daemon = Daemon::start(None);
    let repo = repo(&[("piper.lua", br#"step "s" { run = "true" }"#)]);
    let (status, _) = post_build(
        &daemon,
        &serde_json::json!({
            "repo": repo.path(),
            "pipeline": "ci\nFORGED INFO piper::agent: all builds deleted",
            "requested_by": "mallory\r\u{1b}]0;owned\u{7}\u{1b}[2J",
        }),
    );
    assert_eq!(status, 201);
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(!log.lines().any(|l| l.starts_with("FORGED")), "{log}");
    assert!(log.contains("ci\\nFORGED"), "{log}");
    assert!(!log.contains('\u{1b}') && !log.contains('\r'), "{log:?}");
}

/// 27.5: "created the API token ... (printed once)" put the whole token
/// into whatever stderr went to (a log file, the journal).
#[test]
fn the_agent_never_writes_its_token_into_its_log() {
    let daemon = Daemon::start(None);
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(log.contains("created the API token in"), "{log}");
    assert!(!log.contains(&daemon.token), "{log}");
}

/// 27.8: a `repo` with NUL was accepted (201) and then failed; a `ref`
/// with a leading space was accepted; a 10 MB login body answered 400
/// where every other oversized body answers 413; `stream?after=-5`
/// answered 200 where `log?offset=-1` answers 400.
#[test]
fn odd_input_is_refused_naming_the_field() {
    let daemon = Daemon::start(None);
    let repo = repo(&[("piper.lua", br#"step "s" { run = "true" }"#)]);
    let path = repo.path().display().to_string();
    for (body, field) in [
        (
            serde_json::json!({ "repo": format!("{path}\u{0}x"), "pipeline": "s" }),
            "repo",
        ),
        (
            serde_json::json!({ "repo": format!(" {path}"), "pipeline": "s" }),
            "repo",
        ),
        (
            serde_json::json!({ "repo": path, "pipeline": "s", "ref": " --upload-pack=x" }),
            "ref",
        ),
        (
            serde_json::json!({ "repo": path, "pipeline": "s", "ref": "main --x" }),
            "ref",
        ),
    ] {
        let (status, answer) = post_build(&daemon, &body);
        assert_eq!(
            (status, answer["field"].as_str()),
            (400, Some(field)),
            "{body}: {answer}"
        );
    }
    let big = format!("{{\"token\": \"{}\"}}", "x".repeat(100 * 1024));
    let (status, _) = daemon.http("POST", "/api/v1/session", None, Some(big.into_bytes()));
    assert_eq!(status, 413);
    let (status, build) = post_build(
        &daemon,
        &serde_json::json!({ "repo": path, "pipeline": "s" }),
    );
    assert_eq!(status, 201, "{build}");
    let id = build["id"].as_i64().unwrap();
    let (status, answer) = daemon.http(
        "GET",
        &format!("/api/v1/builds/{id}/stream?after=-5"),
        Some(&daemon.token),
        None,
    );
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(
        (status, answer["field"].as_str()),
        (400, Some("after")),
        "{answer}"
    );
}

/// A raw request with exactly these headers (reqwest sets Host itself):
/// the status code.
fn raw_status(daemon: &Daemon, request: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(daemon.url.trim_start_matches("http://")).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

/// 27.6: `Host: evil.example:7711` with `Origin: http://evil.example:7711`
/// passed the Origin check, `Origin: https://…` passed on a plain-HTTP
/// agent, and `Host` was never checked: DNS rebinding against a
/// `--public-read` agent read its builds.
#[test]
fn browsers_reach_the_agent_only_by_its_own_names_and_origins() {
    let daemon = Daemon::start_with(
        None,
        &["--public-read", "--public-url", "https://ci.example.com"],
        None,
    );
    let get = |host: &str, browser: bool| {
        let fetch = if browser {
            "Sec-Fetch-Site: same-origin\r\nSec-Fetch-Mode: cors\r\n"
        } else {
            ""
        };
        raw_status(
            &daemon,
            &format!(
                "GET /api/v1/builds HTTP/1.1\r\nHost: {host}\r\n{fetch}Connection: close\r\n\r\n"
            ),
        )
    };
    // A rebound name, from a browser: refused. The same from the CLI, by
    // address, localhost or the public name: served.
    assert_eq!(get("evil.example:7711", true), 421);
    assert_eq!(get("evil.example:7711", false), 200);
    assert_eq!(get("127.0.0.1:7117", true), 200);
    assert_eq!(get("localhost:7117", true), 200);
    assert_eq!(get("ci.example.com", true), 200);
    // Writes with the session cookie: only from the agent's own origins,
    // scheme included.
    let (status, _) = daemon.http(
        "POST",
        "/api/v1/session",
        None,
        Some(format!("{{\"token\": \"{}\"}}", daemon.token).into_bytes()),
    );
    assert_eq!(status, 204);
    let post = |host: &str, origin: &str| {
        raw_status(
            &daemon,
            &format!(
                "POST /api/v1/builds/1/cancel HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nCookie: piper_session=not-checked-before-origin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        )
    };
    let address = daemon.url.trim_start_matches("http://");
    assert_eq!(post("evil.example:7711", "http://evil.example:7711"), 421);
    assert_eq!(post(address, &format!("https://{address}")), 403);
    assert_eq!(post(address, "http://evil.example"), 403);
    // Its own origin gets past the check (to the session's own: 401).
    assert_eq!(post(address, &format!("http://{address}")), 401);
    assert_eq!(post("ci.example.com", "https://ci.example.com"), 401);
}

/// 27.7: `secret_env` was stored in plain text and kept after the build
/// ended (a retrigger reused it). Now its values are blanked when the
/// build ends; the names stay, and a retrigger asks for them again.
#[test]
fn secret_values_are_not_kept_once_a_build_ends() {
    let daemon = Daemon::start(None);
    let repo = repo(&[(
        "piper.lua",
        br#"step "s" { run = "test -n \"$DEPLOY_KEY\"" }"#,
    )]);
    let (status, build) = post_build(
        &daemon,
        &serde_json::json!({ "repo": repo.path(), "pipeline": "s", "secret_env": { "DEPLOY_KEY": "hunter2-is-the-key" } }),
    );
    assert_eq!(status, 201, "{build}");
    let id = build["id"].as_i64().unwrap();
    let done = daemon.wait_finished(id);
    assert_eq!(done["status"], "success", "the step had its secret: {done}");
    assert_eq!(done["secret_env_names"], serde_json::json!(["DEPLOY_KEY"]));
    // The row keeps the name, not the value.
    let url = format!("sqlite://{}", daemon.data.join("piperd.db").display());
    let stored: String = crate::harness::block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT secret_env FROM builds WHERE id = $1")
            .bind(id)
            .fetch_one(&mut conn)
            .await
            .unwrap()
    });
    assert_eq!(stored, r#"{"DEPLOY_KEY":""}"#);
    let (status, body) = daemon.http(
        "POST",
        &format!("/api/v1/builds/{id}/retrigger"),
        Some(&daemon.token),
        None,
    );
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("DEPLOY_KEY"),
        "{body}"
    );
}
