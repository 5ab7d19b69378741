//! Git hosts' webhooks against a real agent: the push payloads of GitHub,
//! GitLab and Gitea/Forgejo (tests/fixtures/hooks, from each host's
//! documentation), signed here the way each host signs them, build the
//! pushed commit of a real repository; every bad delivery gets its status
//! and queues nothing.

use std::path::Path;

use hmac::{Hmac, Mac};
use serde_json::Value;

use crate::agent::{Daemon, repo};
use crate::harness::{git, unindent};

const SECRET: &str = "0123456789abcdef-test-secret";

const CONFIG: &str = r#"
    pipeline "ci" { step "show" { run = 'echo "ref=$PIPER_GIT_REF branch=${PIPER_BRANCH:-} tag=${PIPER_TAG:-} file=$(cat version)"' } }
"#;

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hooks")
        .join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn hmac_hex(body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// POSTs `body` to `path` with `headers`: the status and the JSON answer.
fn deliver(daemon: &Daemon, path: &str, headers: &[(&str, String)], body: Vec<u8>) -> (u16, Value) {
    crate::harness::block_on(async {
        let mut request = crate::harness::http()
            .post(format!("{}{path}", daemon.url))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    })
}

fn github(daemon: &Daemon, event: &str, delivery: &str, body: &Value) -> (u16, Value) {
    let body = serde_json::to_vec(body).unwrap();
    let headers = [
        ("x-github-event", event.to_string()),
        ("x-github-delivery", delivery.to_string()),
        ("x-hub-signature-256", format!("sha256={}", hmac_hex(&body))),
    ];
    deliver(daemon, "/api/v1/hooks/github", &headers, body)
}

fn builds(daemon: &Daemon) -> usize {
    let (_, body) = daemon.http("GET", "/api/v1/builds?limit=100", Some(&daemon.token), None);
    let list: Value = serde_json::from_slice(&body).unwrap();
    list["builds"].as_array().unwrap().len()
}

struct Setup {
    daemon: Daemon,
    repo: tempfile::TempDir,
    /// The commit pushed: main has moved on since.
    pushed: String,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let repo = repo(&[
        ("piper.lua", unindent(CONFIG).as_bytes()),
        ("version", b"one\n"),
    ]);
    let pushed = git(repo.path(), &["rev-parse", "HEAD"]);
    // `repo` tagged it v1.0.0 (lightweight); an annotated tag as well.
    git(
        repo.path(),
        &["tag", "-a", "v1.0.0-annotated", "-m", "release"],
    );
    std::fs::write(repo.path().join("version"), "two\n").unwrap();
    git(repo.path(), &["commit", "-qam", "two"]);
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("gitlab.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let clone = repo.path().display();
    let config = dir.path().join("piperd.toml");
    std::fs::write(
        &config,
        format!(
            r#"repositories = ["{clone}"]

[[webhooks]]
url = "https://github.com/Codertocat/Hello-World.git"
clone = "{clone}"
secret = "{SECRET}"

[[webhooks]]
url = "http://example.com/jsmith/example"
clone = "{clone}"
secret_file = "{}"
pipeline = "ci"

[[webhooks]]
url = "http://localhost:3000/gitea/webhooks"
clone = "{clone}"
secret = "{SECRET}"

[[webhooks]]
url = "https://github.com/someone/elsewhere"
clone = "/srv/not/on/the/allow-list"
secret = "{SECRET}"
"#,
            secret_file.display()
        ),
    )
    .unwrap();
    let daemon = Daemon::start_with(None, &["--config", config.to_str().unwrap()], None);
    Setup {
        daemon,
        repo,
        pushed,
        _dir: dir,
    }
}

#[test]
fn a_signed_github_push_builds_the_pushed_commit_once() {
    let Setup {
        daemon,
        pushed,
        repo: _repo,
        ..
    } = setup();
    let mut push = fixture("github-push.json");
    push["after"] = pushed.clone().into();

    let (status, build) = github(
        &daemon,
        "push",
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        &push,
    );
    assert_eq!(status, 201, "{build}");
    let id = build["id"].as_i64().unwrap();
    let done = daemon.wait_finished(id);
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(
        done["sha"],
        pushed.as_str(),
        "the pushed commit, not main's tip"
    );
    assert_eq!(done["ref"], "refs/heads/main");
    assert_eq!(done["requested_by"], "Codertocat");
    assert!(
        daemon
            .log(id)
            .contains("ref=refs/heads/main branch=main tag= file=one"),
        "{}",
        daemon.log(id)
    );

    // GitHub redelivers with the same id: the first build answers again.
    let (status, again) = github(
        &daemon,
        "push",
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        &push,
    );
    assert_eq!((status, again["id"].as_i64()), (201, Some(id)));
    assert_eq!(builds(&daemon), 1);
    // 27.8: the same signed body replayed with a new delivery id started
    // another build each time; without the id, it started one too.
    let (status, replayed) = github(&daemon, "push", "a-new-id-from-a-replayer", &push);
    assert_eq!((status, replayed["id"].as_i64()), (201, Some(id)));
    let body = serde_json::to_vec(&push).unwrap();
    let headers = [
        ("x-github-event", "push".to_string()),
        ("x-hub-signature-256", format!("sha256={}", hmac_hex(&body))),
    ];
    let (status, answer) = deliver(&daemon, "/api/v1/hooks/github", &headers, body);
    assert_eq!(
        (status, answer["field"].as_str()),
        (400, Some("x-github-delivery")),
        "{answer}"
    );
    assert_eq!(builds(&daemon), 1);

    // A ping when the hook is created, and a deleted branch: verified,
    // nothing to build.
    let (status, answer) = github(&daemon, "ping", "d1", &fixture("github-ping.json"));
    assert_eq!(status, 202, "{answer}");
    let mut deleted = push.clone();
    deleted["deleted"] = true.into();
    deleted["after"] = "0000000000000000000000000000000000000000".into();
    let (status, answer) = github(&daemon, "push", "d2", &deleted);
    assert_eq!(status, 202, "{answer}");
    assert_eq!(builds(&daemon), 1);
}

#[test]
fn bad_deliveries_get_their_status_and_queue_nothing() {
    let Setup {
        daemon,
        pushed,
        repo: _repo,
        ..
    } = setup();
    let mut push = fixture("github-push.json");
    push["after"] = pushed.into();
    let body = serde_json::to_vec(&push).unwrap();
    let signed = |signature: Option<String>| {
        let mut headers = vec![
            ("x-github-event", "push".to_string()),
            ("x-github-delivery", "bad-1".to_string()),
        ];
        if let Some(signature) = signature {
            headers.push(("x-hub-signature-256", signature));
        }
        headers
    };
    let to_github = |headers: &[(&str, String)], body: Vec<u8>| {
        deliver(&daemon, "/api/v1/hooks/github", headers, body)
    };

    // No signature; one made with another secret; the right one over
    // another body; not hex at all.
    let mut other = Hmac::<sha2::Sha256>::new_from_slice(b"not the secret at all").unwrap();
    other.update(&body);
    let other = hex::encode(other.finalize().into_bytes());
    for signature in [
        None,
        Some(format!("sha256={other}")),
        Some(format!("sha256={}", hmac_hex(b"{}"))),
        Some("sha256=zz".to_string()),
        Some(hmac_hex(&body)),
    ] {
        let (status, answer) = to_github(&signed(signature.clone()), body.clone());
        assert_eq!(status, 401, "{signature:?}: {answer}");
        assert_eq!(answer["field"], "x-hub-signature-256", "{answer}");
    }

    // A repository without a [[webhooks]] entry: no secret to check with.
    let mut unknown = push.clone();
    for field in ["clone_url", "html_url", "ssh_url", "git_url"] {
        unknown["repository"][field] = format!("https://github.com/evil/repo/{field}").into();
    }
    let unknown = serde_json::to_vec(&unknown).unwrap();
    let (status, answer) = to_github(
        &signed(Some(format!("sha256={}", hmac_hex(&unknown)))),
        unknown,
    );
    assert_eq!(status, 403, "{answer}");

    // A hook whose clone URL is off the agent's allow-list.
    let mut elsewhere = push.clone();
    for field in ["clone_url", "html_url", "ssh_url", "git_url"] {
        elsewhere["repository"][field] = "https://github.com/someone/elsewhere.git".into();
    }
    let elsewhere = serde_json::to_vec(&elsewhere).unwrap();
    let (status, answer) = to_github(
        &signed(Some(format!("sha256={}", hmac_hex(&elsewhere)))),
        elsewhere,
    );
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("allow-list"),
        "{answer}"
    );

    // Over the 2 MiB a delivery may be, signed or not.
    let mut huge = push.clone();
    huge["padding"] = "x".repeat(3 * 1024 * 1024).into();
    let huge = serde_json::to_vec(&huge).unwrap();
    let (status, _) = to_github(&signed(Some(format!("sha256={}", hmac_hex(&huge)))), huge);
    assert_eq!(status, 413);

    // Not JSON; no event header.
    let (status, answer) = to_github(
        &signed(Some(format!("sha256={}", hmac_hex(b"{")))),
        b"{".to_vec(),
    );
    assert_eq!((status, answer["field"].as_str()), (400, Some("body")));
    let headers = [("x-hub-signature-256", format!("sha256={}", hmac_hex(&body)))];
    let (status, answer) = to_github(&headers, body.clone());
    assert_eq!(
        (status, answer["field"].as_str()),
        (400, Some("x-github-event"))
    );

    assert_eq!(builds(&daemon), 0, "a refused delivery queued a build");

    // The same delivery id, correctly signed at last, is not taken for a
    // replay of the refused ones.
    let (status, _) = to_github(&signed(Some(format!("sha256={}", hmac_hex(&body)))), body);
    assert_eq!(status, 201);
    assert_eq!(builds(&daemon), 1);
}

#[test]
fn gitlab_tag_pushes_and_gitea_and_forgejo_pushes_build() {
    let Setup {
        daemon,
        repo,
        pushed,
        ..
    } = setup();

    // GitLab: the token itself in X-Gitlab-Token; a tag push names the
    // tag's commit in checkout_sha.
    let tag_object = git(repo.path(), &["rev-parse", "v1.0.0-annotated"]);
    let mut tag = fixture("gitlab-tag-push.json");
    tag["after"] = tag_object.into();
    tag["checkout_sha"] = pushed.clone().into();
    let body = serde_json::to_vec(&tag).unwrap();
    let headers = |token: &str| {
        vec![
            ("x-gitlab-event", "Tag Push Hook".to_string()),
            (
                "x-gitlab-event-uuid",
                "13792a34-cac6-4fda-95a8-c58e00a3954e".to_string(),
            ),
            ("x-gitlab-token", token.to_string()),
        ]
    };
    let (status, _) = deliver(
        &daemon,
        "/api/v1/hooks/gitlab",
        &headers("wrong"),
        body.clone(),
    );
    assert_eq!(status, 401);
    let (status, build) = deliver(&daemon, "/api/v1/hooks/gitlab", &headers(SECRET), body);
    assert_eq!(status, 201, "{build}");
    let done = daemon.wait_finished(build["id"].as_i64().unwrap());
    assert_eq!(
        (
            done["status"].as_str(),
            done["sha"].as_str(),
            done["ref"].as_str(),
            done["requested_by"].as_str()
        ),
        (
            Some("success"),
            Some(pushed.as_str()),
            Some("refs/tags/v1.0.0"),
            Some("jsmith")
        ),
        "{done}"
    );
    assert!(
        daemon
            .log(build["id"].as_i64().unwrap())
            .contains("tag=v1.0.0 file=one")
    );

    // Gitea, then Forgejo's own headers, with a payload larger than an API
    // request may be (a push of many commits).
    let mut push = fixture("gitea-push.json");
    push["after"] = pushed.clone().into();
    push["padding"] = "x".repeat(200 * 1024).into();
    let body = serde_json::to_vec(&push).unwrap();
    for (prefix, delivery) in [("x-gitea", "gitea-1"), ("x-forgejo", "forgejo-1")] {
        let headers = [
            (format!("{prefix}-event"), "push".to_string()),
            (format!("{prefix}-delivery"), delivery.to_string()),
            (format!("{prefix}-signature"), hmac_hex(&body)),
        ];
        let headers: Vec<(&str, String)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let (status, build) = deliver(
            &daemon,
            "/api/v1/hooks/gitea?pipeline=ci",
            &headers,
            body.clone(),
        );
        assert_eq!(status, 201, "{prefix}: {build}");
        let done = daemon.wait_finished(build["id"].as_i64().unwrap());
        assert_eq!(
            (
                done["status"].as_str(),
                done["ref"].as_str(),
                done["requested_by"].as_str()
            ),
            (Some("success"), Some("refs/heads/develop"), Some("gitea")),
            "{done}"
        );
    }
}

#[test]
fn a_webhook_without_a_usable_secret_stops_piperd_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("piperd.toml");
    for (table, problem) in [
        (
            "url = \"https://github.com/a/b\"\nsecret = \"short\"",
            "shorter than 16",
        ),
        (
            "url = \"https://github.com/a/b\"",
            "exactly one of `secret` and `secret_file`",
        ),
        (
            "url = \"https://github.com/a/b\"\nsecret_file = \"/nonexistent/secret\"",
            "cannot read secret_file",
        ),
        (
            "url = \"https://github.com/a/b\"\nsecrte = \"typo-typo-typo-typo\"",
            "secrte",
        ),
    ] {
        std::fs::write(&config, format!("[[webhooks]]\n{table}\n")).unwrap();
        let out = std::process::Command::new(crate::agent::PIPERD)
            .args(["start", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(problem), "{problem}: {stderr}");
    }
}
