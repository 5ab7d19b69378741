//! piperd probed as an attacker would (issue 27): each test named after
//! what must hold. Real piperd processes, real git, sockets on 127.0.0.1.

use serde_json::Value;

use crate::agent::{Daemon, repo};

fn post_build(daemon: &Daemon, body: &Value) -> (u16, Value) {
    let (status, body) = daemon.http(
        "POST",
        "/api/v1/builds",
        Some(&daemon.token),
        Some(body.to_string().into_bytes()),
    );
    (status, serde_json::from_slice(&body).unwrap())
}

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
