//! Issue 33, export: `piper logs export` writes a stored build log as
//! NDJSON records for a log store (Elasticsearch `_bulk`, Loki, Vector).
//! Read back, the records are the log: every line once, in order per
//! step, numbered from 1, timed within the build; on SQLite and on
//! PostgreSQL.

use serde_json::Value;

use crate::agent::{Daemon, repo, submit, submitted_id};
use crate::pg::Database;

/// Thousands of short lines, one line far longer than a stored chunk,
/// bytes that are not UTF-8, and a last line without a newline.
const GEN: &str = "seq 1 3000\nhead -c 600000 /dev/zero | tr '\\0' x\necho\nprintf 'caf\\351 \\n'\nprintf 'no newline'\n";

fn export_story(database: Option<&str>) {
    let daemon = Daemon::start(database);
    let repo = repo(&[
        (
            "piper.lua",
            b"local gen = step \"gen\" { run = \"sh gen.sh\" }\n\
              step \"after\" { deps = { gen }, run = \"echo done\" }\n\
              pipeline \"ci\" { \"after\" }\n",
        ),
        ("gen.sh", GEN.as_bytes()),
    ]);
    let (code, _, stderr) = submit(&daemon, repo.path(), "ci", &[]);
    assert_eq!(code, 0, "{stderr}");
    let id = submitted_id(&stderr);
    let build = daemon.wait_finished(id);
    assert_eq!(build["status"], "success", "{build}");

    let (code, out, err) = daemon.piper(&["logs", "export", &id.to_string()]);
    assert_eq!(code, 0, "{err}");
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:.200}")))
        .collect();
    for step in ["gen", "after"] {
        let mine: Vec<&Value> = records.iter().filter(|r| r["step"] == step).collect();
        let numbers: Vec<u64> = mine.iter().map(|r| r["line"].as_u64().unwrap()).collect();
        assert_eq!(
            numbers,
            (1..=mine.len() as u64).collect::<Vec<_>>(),
            "{step}"
        );
        assert_eq!(mine[0]["stream"], "piper", "`$ command` is Piper's line");
        assert!(mine[1..].iter().all(|r| r["stream"] == "output"), "{step}");
        // The messages, joined, are the stored log (invalid UTF-8 replaced).
        let (status, raw) = daemon.http(
            "GET",
            &format!("/api/v1/builds/{id}/log?step={step}"),
            Some(&daemon.token),
            None,
        );
        assert_eq!(status, 200);
        let raw = String::from_utf8_lossy(&raw);
        let joined: Vec<&str> = mine
            .iter()
            .map(|r| r["message"].as_str().unwrap())
            .collect();
        assert_eq!(
            joined.join("\n"),
            raw.strip_suffix('\n').unwrap_or(&raw),
            "{step}"
        );
        for r in &mine {
            assert_eq!(r["build"], id);
            assert_eq!(r["number"], build["number"]);
            assert_eq!(r["pipeline"], "ci");
            assert_eq!(r["repo"], build["repo"]);
        }
    }
    let generated: Vec<&Value> = records.iter().filter(|r| r["step"] == "gen").collect();
    assert_eq!(generated.len(), 1 + 3000 + 1 + 1 + 1, "one record per line");
    assert_eq!(generated[3001]["message"].as_str().unwrap().len(), 600_000);
    assert_eq!(generated[3002]["message"], "caf\u{fffd} ");
    assert_eq!(generated[3003]["message"], "no newline");

    // Timed when stored: within the build, in order.
    let ms = |r: &Value| {
        chrono::DateTime::parse_from_rfc3339(r["timestamp"].as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    let (started, finished) = (
        build["started_at"].as_i64().unwrap(),
        build["finished_at"].as_i64().unwrap(),
    );
    for r in &records {
        assert!((started..=finished).contains(&ms(r)), "{r:.300}");
    }
    assert!(generated.windows(2).all(|w| ms(w[0]) <= ms(w[1])));

    // `--bulk`: an action line before each record, for `_bulk`.
    let (code, bulk, _) = daemon.piper(&["logs", "export", &id.to_string(), "--bulk"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = bulk.lines().collect();
    assert_eq!(lines.len(), 2 * records.len());
    assert!(lines.iter().step_by(2).all(|l| *l == r#"{"create":{}}"#));
    assert_eq!(lines[1], out.lines().next().unwrap());

    // A build that does not exist, a format that does not: named.
    let (code, _, err) = daemon.piper(&["logs", "export", "999999"]);
    assert_ne!(code, 0);
    assert!(err.contains("999999"), "{err}");
    let (status, body) = daemon.http(
        "GET",
        &format!("/api/v1/builds/{id}/log/export?format=xml"),
        Some(&daemon.token),
        None,
    );
    assert_eq!(status, 400);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["field"], "format", "{body}");
}

#[test]
fn a_log_exports_as_ndjson_records_that_read_back_as_the_log_on_sqlite() {
    export_story(None);
}

#[test]
fn a_log_exports_as_ndjson_records_that_read_back_as_the_log_on_postgres() {
    let test = "log_export::a_log_exports_as_ndjson_records_that_read_back_as_the_log_on_postgres";
    let Some(db) = Database::create(test) else {
        return;
    };
    export_story(Some(&db.url));
}
