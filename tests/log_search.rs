//! Issue 33, search: every stored log is searchable once its build ends
//! (the agent indexes it in the background): a substring, case aside,
//! filtered by pipeline, step and status, each hit naming its build, step
//! and line with the text marked and a link to the line. The same story
//! on SQLite (FTS5, trigrams) and PostgreSQL (pg_trgm).

use serde_json::Value;

use crate::agent::{Daemon, repo, submit, submitted_id};
use crate::pg::Database;

const CONFIG: &str = r#"
local test = step "test" { run = "sh test.sh" }
step "compile" { deps = { test }, run = "sh compile.sh" }
pipeline "ci" { "compile" }
pipeline "nightly" { "test" }
"#;

/// A failing compile whose error is on line 4 of its log (line 1 is
/// Piper's `$ sh compile.sh`).
const COMPILE: &str = "echo 'Compiling app v0.1.0'\necho 'warning: unused import'\n\
                       echo 'error[E0308]: mismatched types in src/main.rs'\nexit 1\n";

fn search(daemon: &Daemon, query: &str) -> (u16, Value) {
    let (status, body) = daemon.http(
        "GET",
        &format!("/api/v1/search?{query}"),
        Some(&daemon.token),
        None,
    );
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn hits(daemon: &Daemon, query: &str) -> Vec<Value> {
    let (status, body) = search(daemon, query);
    assert_eq!(status, 200, "{body}");
    body["hits"].as_array().unwrap().clone()
}

fn story(database: Option<&str>) {
    let daemon = Daemon::start(database);
    let repo = repo(&[
        ("piper.lua", CONFIG.as_bytes()),
        ("compile.sh", COMPILE.as_bytes()),
        ("test.sh", b"echo 'ok: 100% of 1000 tests'\n"),
    ]);
    let (code, _, stderr) = submit(&daemon, repo.path(), "ci", &[]);
    assert_eq!(code, 0, "{stderr}");
    let ci = submitted_id(&stderr);
    let (code, _, stderr) = submit(&daemon, repo.path(), "nightly", &[]);
    assert_eq!(code, 0, "{stderr}");
    let nightly = submitted_id(&stderr);
    assert_eq!(daemon.wait_finished(ci)["status"], "failed");
    assert_eq!(daemon.wait_finished(nightly)["status"], "success");

    // Indexed in the background, moments after the builds end: waited
    // for by the evidence (both builds' lines found), never by a sleep.
    let mut found = Vec::new();
    for _ in 0..400 {
        found = hits(&daemon, "q=1000%20tests");
        if found.len() == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(found.len(), 2, "both builds' `test` lines: {found:?}");
    assert_eq!(found[0]["build"], nightly, "newest build first");

    // Case aside; where it is, in the step's log and in the line.
    let error = hits(&daemon, "q=e0308");
    assert_eq!(error.len(), 1, "{error:?}");
    let hit = &error[0];
    assert_eq!(hit["build"], ci);
    assert_eq!(hit["step"], "compile");
    assert_eq!(hit["pipeline"], "ci");
    assert_eq!(hit["status"], "failed");
    assert_eq!(hit["line"], 4, "{hit}");
    assert_eq!(hit["text"], "error[E0308]: mismatched types in src/main.rs");
    assert_eq!(hit["matches"], serde_json::json!([[6, 11]]));
    assert_eq!(hit["url"], format!("/builds/{ci}/steps/compile#L4"));
    let (status, raw) = daemon.http(
        "GET",
        &format!("/api/v1/builds/{ci}/log?step=compile"),
        Some(&daemon.token),
        None,
    );
    assert_eq!(status, 200);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    assert_eq!(raw.lines().nth(3), Some(hit["text"].as_str().unwrap()));

    // A path, and `%` / `_` taken literally.
    assert_eq!(hits(&daemon, "q=src/main.rs").len(), 1);
    assert_eq!(hits(&daemon, "q=100%25%20of").len(), 2);
    assert!(
        hits(&daemon, "q=10_%25").is_empty(),
        "`_` is not a wildcard"
    );

    // Filters: pipeline, status, step, and time.
    let only = hits(&daemon, "q=1000%20tests&pipeline=ci");
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["build"], ci);
    assert_eq!(
        hits(&daemon, "q=1000%20tests&status=success")[0]["build"],
        nightly
    );
    assert!(hits(&daemon, "q=mismatched&step=test").is_empty());
    assert!(hits(&daemon, "q=mismatched&since=99999999999999").is_empty());
    // Piper's own lines are searchable too.
    assert_eq!(hits(&daemon, "q=sh%20compile.sh")[0]["line"], 1);
    let (_, limited) = search(&daemon, "q=1000%20tests&limit=1");
    assert_eq!(limited["truncated"], true);

    // Bad input: named.
    let (status, body) = search(&daemon, "q=ab");
    assert_eq!((status, body["field"].as_str()), (400, Some("q")), "{body}");
    let (status, body) = search(&daemon, "q=abc&status=green");
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("status")),
        "{body}"
    );

    // The CLI.
    let (code, out, err) = daemon.piper(&["logs", "search", "E0308"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!(
            "build {ci} #1 ci failed  compile:4: error[E0308]: mismatched types in src/main.rs"
        )
    );
    let (code, out, _) = daemon.piper(&[
        "logs",
        "search",
        "mismatched",
        "--pipeline",
        "nightly",
        "--json",
    ]);
    assert_eq!(code, 0);
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["hits"], serde_json::json!([]));
    let (code, _, err) = daemon.piper(&["logs", "search", "zz"]);
    assert_ne!(code, 0);
    assert!(err.contains("3 characters"), "{err}");
}

#[test]
fn every_stored_log_is_searchable_on_sqlite() {
    story(None);
}

#[test]
fn every_stored_log_is_searchable_on_postgres() {
    let Some(db) = Database::create("log_search::every_stored_log_is_searchable_on_postgres")
    else {
        return;
    };
    story(Some(&db.url));
}
