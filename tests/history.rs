//! Issue 33, history: each step of a pipeline over its last builds
//! (durations, p50/p95, failures) and its flaky steps — a step that failed
//! and then passed on the same commit (here: a retrigger) — over the API
//! and the CLI, on SQLite and PostgreSQL.

use serde_json::Value;

use crate::agent::{Daemon, repo, submit, submitted_id};
use crate::pg::Database;

/// `flaky` fails the first time it runs (it leaves a mark in $MARKS),
/// then passes: what a flaky test does.
pub(crate) const FLAKY: &[u8] = br#"
local build = step "build" { run = "true" }
step "flaky" { deps = { build }, run = 'test -e "$MARKS/ran" || { touch "$MARKS/ran"; exit 1; }' }
pipeline "ci" { "flaky" }
"#;

fn story(database: Option<&str>) {
    let daemon = Daemon::start(database);
    let repo = repo(&[("piper.lua", FLAKY)]);
    let marks = tempfile::tempdir().unwrap();
    let mark = format!("MARKS={}", marks.path().display());
    let (_, _, stderr) = submit(&daemon, repo.path(), "ci", &["-e", &mark]);
    let first = daemon.wait_finished(submitted_id(&stderr));
    assert_eq!(first["status"], "failed");
    let (code, _, stderr) = daemon.piper(&["retrigger", &first["id"].to_string()]);
    assert_eq!(code, 0, "{stderr}");
    let second = daemon.wait_finished(submitted_id(&stderr));
    assert_eq!(second["status"], "success");
    let (first_id, second_id) = (
        first["id"].as_i64().unwrap(),
        second["id"].as_i64().unwrap(),
    );

    let repo_path = repo.path().to_str().unwrap();
    let (status, body) = daemon.http(
        "GET",
        &format!("/api/v1/history?repo={repo_path}&pipeline=ci"),
        Some(&daemon.token),
        None,
    );
    assert_eq!(status, 200);
    let history: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(history["builds"], 2, "{history}");
    let steps: Vec<&str> = (history["steps"].as_array().unwrap().iter())
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["build", "flaky"]);
    let flaky = &history["steps"][1];
    let statuses: Vec<&str> = (flaky["runs"].as_array().unwrap().iter())
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["failed", "success"], "oldest first");
    assert!(
        flaky["runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["duration_ms"].is_u64())
    );
    assert!(flaky["p50_ms"].is_u64() && flaky["p95_ms"].is_u64());
    assert_eq!(
        (flaky["failures"].as_u64(), flaky["failure_rate"].as_f64()),
        (Some(1), Some(0.5))
    );
    assert_eq!(history["steps"][0]["failures"], 0);
    assert_eq!(
        history["flaky"],
        serde_json::json!([{ "step": "flaky", "sha": first["sha"], "failed": [first_id], "passed": [second_id] }])
    );

    // The CLI: a table, then the flaky steps.
    let (code, out, err) = daemon.piper(&["history", "ci", "--repo", repo_path]);
    assert_eq!(code, 0, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("flaky "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.ends_with("1 (50%)"), "{out}");
    let sha = &first["sha"].as_str().unwrap()[..10];
    assert!(
        out.contains(&format!(
            "flaky: flaky on {sha}: failed in build {first_id}, passed in build {second_id}"
        )),
        "{out}"
    );
    let (_, json, _) = daemon.piper(&["history", "--repo", repo_path, "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&json).unwrap()["builds"], 2);

    // Bad input: named.
    let (status, body) = daemon.http("GET", "/api/v1/history", Some(&daemon.token), None);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("repo")),
        "{body}"
    );
    let (status, _) = daemon.http(
        "GET",
        &format!("/api/v1/history?repo={repo_path}&builds=0"),
        Some(&daemon.token),
        None,
    );
    assert_eq!(status, 400);
}

#[test]
fn steps_over_history_and_flaky_steps_on_sqlite() {
    story(None);
}

#[test]
fn steps_over_history_and_flaky_steps_on_postgres() {
    let Some(db) = Database::create("history::steps_over_history_and_flaky_steps_on_postgres")
    else {
        return;
    };
    story(Some(&db.url));
}
