//! `GET /metrics`: a real agent's scrape, checked by Prometheus's own
//! `promtool`, and its numbers against builds that really ran (on SQLite
//! and on PostgreSQL).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::agent::{CI, Daemon, repo, submit, submitted_id};
use crate::harness::{eventually, skip, unindent};
use crate::pg::Database;

/// A pipeline no agent here can run: it stays queued.
const GPU: &str = r#"
    pipeline "gpu" { step "train" { run = "true" }, requires = { gpu = "1" } }
"#;

fn promtool_available(test: &str) -> bool {
    let found = Command::new("promtool").arg("--version").output().is_ok();
    if !found {
        skip(
            test,
            "promtool (Debian's prometheus package) is not installed",
        );
    }
    found
}

/// `name{labels}` → value, from the text format.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn metrics(database: Option<&str>, test: &str) {
    if !promtool_available(test) {
        return;
    }
    let daemon = Daemon::start(database);
    let config = format!("{}{}", unindent(CI), unindent(GPU));
    let repo = repo(&[("piper.lua", config.as_bytes())]);
    let (_, _, stderr) = submit(&daemon, repo.path(), "ci", &[]);
    daemon.wait_finished(submitted_id(&stderr));
    let (_, _, stderr) = submit(&daemon, repo.path(), "ci", &["-e", "FAIL=3"]);
    daemon.wait_finished(submitted_id(&stderr));
    let (_, _, stderr) = submit(&daemon, repo.path(), "gpu", &[]);
    let waiting = submitted_id(&stderr);
    eventually(
        std::time::Duration::from_secs(30),
        "the gpu build to wait",
        || {
            let build = daemon.build(waiting);
            build["status"] == "queued" && !build["requires"].is_null()
        },
    );

    let (status, _) = daemon.http("GET", "/metrics", None, None);
    assert_eq!(status, 401, "metrics are read access, as the builds are");
    let (status, body) = daemon.http("GET", "/metrics", Some(&daemon.token), None);
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let values = samples(&text);
    let value = |key: &str| {
        *values
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from\n{text}"))
    };
    assert_eq!(
        value(r#"piper_builds{pipeline="ci",status="success"}"#),
        1.0
    );
    assert_eq!(value(r#"piper_builds{pipeline="ci",status="failed"}"#), 1.0);
    assert_eq!(
        value(r#"piper_builds{pipeline="gpu",status="queued"}"#),
        1.0
    );
    assert_eq!(value("piper_queue_depth"), 1.0);
    assert!(value("piper_oldest_queued_build_age_seconds") >= 0.0);
    assert!(value("piper_log_stored_bytes") > 0.0);
    let ci = |metric: &str, status: &str| {
        value(&format!(
            "{metric}_count{{pipeline=\"ci\",status=\"{status}\"}}"
        ))
    };
    assert_eq!(ci("piper_build_duration_seconds", "success"), 1.0);
    assert_eq!(ci("piper_build_duration_seconds", "failed"), 1.0);
    // hello and world succeeded in the first build, hello in the second.
    assert_eq!(ci("piper_step_duration_seconds", "success"), 3.0);
    assert_eq!(ci("piper_step_duration_seconds", "failed"), 1.0);
    let agent = values
        .iter()
        .find(|(k, _)| k.starts_with(r#"piper_agent_up{agent="test-agent","#))
        .unwrap_or_else(|| panic!("no piper_agent_up for test-agent in\n{text}"));
    assert_eq!(*agent.1, 1.0);
    assert!(
        values
            .keys()
            .any(|k| k.starts_with(r#"piper_agent_heartbeat_age_seconds{agent="test-agent","#)),
        "{text}"
    );
}

#[test]
fn metrics_on_sqlite_pass_promtool_and_count_what_ran() {
    metrics(
        None,
        "monitoring::metrics_on_sqlite_pass_promtool_and_count_what_ran",
    );
}

#[test]
fn metrics_on_postgres_pass_promtool_and_count_what_ran() {
    let test = "monitoring::metrics_on_postgres_pass_promtool_and_count_what_ran";
    let Some(db) = Database::create(test) else {
        return;
    };
    metrics(Some(&db.url), test);
}

/// The example alert rules and scrape config in examples/monitoring are
/// valid, and the rules fire as their unit tests say.
#[test]
fn example_alert_rules_are_valid_and_fire_when_they_should() {
    if !promtool_available("monitoring::example_alert_rules_are_valid_and_fire_when_they_should") {
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/monitoring");
    for args in [
        &["check", "rules", "piper-alerts.yml"][..],
        &["check", "config", "--syntax-only", "prometheus.yml"],
        &["test", "rules", "piper-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
