//! A stored build log as NDJSON records, one per line of output, for the
//! log stores teams already run (Elasticsearch's `_bulk`, Loki through
//! Promtail or Vector, Vector's `file` source): `GET
//! /api/v1/builds/{id}/log/export` and `piper logs export`. Part of the
//! agent's API (`server/logs.rs` streams it); reads only stored chunks.
//!
//! A record:
//! `{"timestamp":"2026-12-08T01:02:03.456Z","build":7,"number":3,
//! "repo":"…","pipeline":"ci","step":"test","stream":"output","line":12,
//! "message":"…"}` — `line` counts from 1 within the step's log (as the
//! web UI's step view numbers it), `stream` is `output` (the step's
//! processes: stdout and stderr share one pipe, so their order is kept) or
//! `piper` (Piper's own lines: `$ command`, retries), `message` is the
//! line without its newline, invalid UTF-8 replaced. `timestamp` is when
//! the agent stored the chunk that ended the line (chunks stored before
//! this was kept: the build's start).

use serde::Serialize;

use super::log_split::{Line, LineSplitter};

/// Which build the records are of.
pub(crate) struct ExportedBuild {
    pub(crate) id: i64,
    pub(crate) number: i64,
    pub(crate) repo: String,
    pub(crate) pipeline: String,
    /// For chunks without their own time, in Unix milliseconds.
    pub(crate) started_at: i64,
}

/// Record layout: `ndjson`, or `bulk` (each record after an Elasticsearch
/// `_bulk` action line, `{"create":{}}`, so the output can be posted to
/// `/INDEX/_bulk` as it is).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Layout {
    Ndjson,
    Bulk,
}

/// Turns chunks, in the order they were stored, into records: a line that
/// spans chunks becomes one record; what is left without a final newline
/// comes out at [`Exporter::finish`].
pub(crate) struct Exporter {
    build: ExportedBuild,
    layout: Layout,
    lines: LineSplitter,
}

#[derive(Serialize)]
struct Record<'a> {
    timestamp: String,
    build: i64,
    number: i64,
    repo: &'a str,
    pipeline: &'a str,
    step: &'a str,
    stream: &'static str,
    line: u64,
    message: &'a str,
}

impl Exporter {
    pub(crate) fn new(build: ExportedBuild, layout: Layout) -> Exporter {
        Exporter {
            build,
            layout,
            lines: LineSplitter::default(),
        }
    }

    /// The records a chunk completes. `annotation`: Piper's own line.
    pub(crate) fn push(
        &mut self,
        step: &str,
        annotation: bool,
        written_at: Option<i64>,
        data: &[u8],
    ) -> Vec<u8> {
        let at = written_at.unwrap_or(self.build.started_at);
        let mut out = Vec::new();
        let (build, layout) = (&self.build, self.layout);
        (self.lines).push(step, annotation, at, data, |line| {
            write_record(&mut out, build, layout, &line)
        });
        out
    }

    /// The open lines, each a record of its own (a log that does not end
    /// with a newline).
    pub(crate) fn finish(self) -> Vec<u8> {
        let mut out = Vec::new();
        let (build, layout) = (&self.build, self.layout);
        self.lines
            .finish(|line| write_record(&mut out, build, layout, &line));
        out
    }
}

fn write_record(out: &mut Vec<u8>, build: &ExportedBuild, layout: Layout, line: &Line<'_>) {
    let message = String::from_utf8_lossy(line.text);
    let record = Record {
        timestamp: rfc3339_ms(line.at),
        build: build.id,
        number: build.number,
        repo: &build.repo,
        pipeline: &build.pipeline,
        step: line.step,
        stream: if line.piper { "piper" } else { "output" },
        line: line.number,
        message: &message,
    };
    if layout == Layout::Bulk {
        out.extend_from_slice(b"{\"create\":{}}\n");
    }
    // A record of strings and numbers always serializes.
    if serde_json::to_writer(&mut *out, &record).is_ok() {
        out.push(b'\n');
    }
}

/// Unix milliseconds as RFC 3339 in UTC, to the millisecond (chrono,
/// already the cron schedule's).
fn rfc3339_ms(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(at) => at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => "1970-01-01T00:00:00.000Z".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exporter(layout: Layout) -> Exporter {
        let build = ExportedBuild {
            id: 7,
            number: 3,
            repo: "/srv/app".into(),
            pipeline: "ci".into(),
            started_at: 1_765_155_723_456,
        };
        Exporter::new(build, layout)
    }

    fn records(out: &[u8]) -> Vec<serde_json::Value> {
        (out.split(|&b| b == b'\n'))
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn a_line_across_chunks_is_one_record_numbered_within_its_step() {
        let mut e = exporter(Layout::Ndjson);
        let mut out = e.push("test", true, Some(1000), b"$ make\n");
        out.extend(e.push("test", false, Some(2000), b"compil"));
        out.extend(e.push("lint", false, Some(2500), b"ok\n"));
        out.extend(e.push("test", false, Some(3000), b"ing\r\nerror: x\nlast"));
        out.extend(e.finish());
        let r = records(&out);
        let seen: Vec<_> = r
            .iter()
            .map(|r| {
                (
                    r["step"].as_str().unwrap(),
                    r["line"].as_u64().unwrap(),
                    r["stream"].as_str().unwrap(),
                    r["message"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("test", 1, "piper", "$ make"),
                ("lint", 1, "output", "ok"),
                ("test", 2, "output", "compiling"),
                ("test", 3, "output", "error: x"),
                ("test", 4, "output", "last"),
            ]
        );
        assert_eq!(
            r[2]["timestamp"], "1970-01-01T00:00:03.000Z",
            "the chunk that ended it"
        );
        assert_eq!(
            r[4]["timestamp"], "1970-01-01T00:00:03.000Z",
            "an open line: its last chunk"
        );
        assert_eq!(r[0]["build"], 7);
        assert_eq!(r[0]["number"], 3);
        assert_eq!(r[0]["pipeline"], "ci");
        assert_eq!(r[0]["repo"], "/srv/app");
    }

    #[test]
    fn bulk_puts_an_action_line_before_each_record() {
        let mut e = exporter(Layout::Bulk);
        let out = e.push("s", false, None, b"a\nb\n");
        let lines: Vec<_> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], b"{\"create\":{}}");
        assert_eq!(lines[2], b"{\"create\":{}}");
        let record: serde_json::Value = serde_json::from_slice(lines[1]).unwrap();
        assert_eq!(
            record["timestamp"], "2025-12-08T01:02:03.456Z",
            "without a time: the build's start"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_in_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_798_761_599_999), "2026-12-31T23:59:59.999Z");
    }
}
