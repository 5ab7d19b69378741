//! The UI's view of what the API answers: built from the API's own types
//! (`agent::api`), so a field the API does not serve cannot be shown.

use std::collections::BTreeMap;

use crate::agent::api::{self, AgentInfo, Build, BuildDetail, BuildSummary, Progress, StoredStep};
use crate::event::{Event, PlannedStepInfo};

/// A build as pages show it: the API's build with its summary fields and
/// (on a build's own page) its steps.
#[derive(Debug, Clone)]
pub struct BuildView {
    pub build: Build,
    pub waiting_for: Option<String>,
    pub progress: Progress,
    pub steps: Vec<StepView>,
}

impl std::ops::Deref for BuildView {
    type Target = Build;
    fn deref(&self) -> &Build {
        &self.build
    }
}

impl From<BuildSummary> for BuildView {
    fn from(summary: BuildSummary) -> BuildView {
        BuildView {
            build: summary.build,
            waiting_for: summary.waiting_for,
            progress: summary.progress,
            steps: Vec::new(),
        }
    }
}

impl From<BuildDetail> for BuildView {
    fn from(detail: BuildDetail) -> BuildView {
        BuildView {
            steps: detail.steps,
            ..BuildView::from(detail.summary)
        }
    }
}

impl BuildView {
    pub fn is_final(&self) -> bool {
        self.build.status.is_final()
    }

    /// The first step that failed (in order of definition), if any.
    pub fn first_failure(&self) -> Option<&str> {
        self.steps
            .iter()
            .find(|s| matches!(s.status.as_str(), "failed" | "timed_out"))
            .map(|s| s.name.as_str())
    }
}

pub type StepView = StoredStep;
pub type AgentView = AgentInfo;

/// A page of builds as the builds page shows it.
pub struct BuildList {
    pub builds: Vec<BuildView>,
    pub next_before: Option<i64>,
}

impl From<api::BuildList> for BuildList {
    fn from(list: api::BuildList) -> BuildList {
        BuildList {
            builds: list.builds.into_iter().map(BuildView::from).collect(),
            next_before: list.next_before,
        }
    }
}

/// What a build page shows from the events: the planned graph, and per
/// step why it ran and its warnings.
#[derive(Debug, Default)]
pub struct EventsView {
    pub planned: Vec<PlannedStepInfo>,
    pub reasons: BTreeMap<String, Vec<String>>,
    pub warnings: BTreeMap<String, Vec<String>>,
    pub attempts: BTreeMap<String, u32>,
}

impl EventsView {
    pub fn add(&mut self, event: Event) {
        match event {
            // A build's first BuildStarted is its own (chained builds are
            // builds of their own on an agent).
            Event::BuildStarted { steps, .. } if self.planned.is_empty() => self.planned = steps,
            Event::StepStarted { step, reasons, .. } if !reasons.is_empty() => {
                self.reasons.insert(step, reasons);
            }
            Event::StepWarning { step, message, .. } => {
                self.warnings.entry(step).or_default().push(message);
            }
            Event::StepFinished { step, attempts, .. } => {
                self.attempts.insert(step, attempts);
            }
            _ => {}
        }
    }
}

/// The builds page's filter, as given in its query.
#[derive(Debug, Default)]
pub struct Filter {
    pub repo: String,
    pub pipeline: String,
    pub status: String,
    pub agent: String,
}

impl From<&crate::agent::server::ListQuery> for Filter {
    fn from(q: &crate::agent::server::ListQuery) -> Filter {
        Filter {
            repo: q.repo.clone().unwrap_or_default(),
            pipeline: q.pipeline.clone().unwrap_or_default(),
            status: q.status.clone().unwrap_or_default(),
            agent: q.agent.clone().unwrap_or_default(),
        }
    }
}

impl Filter {
    /// The query string that keeps this filter (for "older" links).
    pub fn query(&self) -> String {
        let mut parts = Vec::new();
        for (name, value) in [
            ("repo", &self.repo),
            ("pipeline", &self.pipeline),
            ("status", &self.status),
            ("agent", &self.agent),
        ] {
            if !value.is_empty() {
                parts.push(format!("{name}={}", urlencode(value)));
            }
        }
        parts.join("&")
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `1m 05s`, `2.3s`, `340ms`: as `piper exec` prints durations.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// `2026-11-28 16:04:43 UTC` and its ISO form for `<time datetime>`.
pub fn timestamp(ms: i64) -> (String, String) {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => (
            t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ),
        None => (ms.to_string(), String::new()),
    }
}

/// `3 s ago`, `5 min ago`.
pub fn age(ms: i64) -> String {
    let s = (ms / 1000).max(0);
    if s < 60 {
        format!("{s} s ago")
    } else if s < 3600 {
        format!("{} min ago", s / 60)
    } else if s < 86400 {
        format!("{} h ago", s / 3600)
    } else {
        format!("{} days ago", s / 86400)
    }
}

/// The first failed step's name and the last lines of its log.
pub struct Excerpt {
    pub step: String,
    pub text: String,
}

/// Bytes a path segment or query value keeps as they are: letters,
/// digits and `-_.~/` (a step named `a/b` links as `a/b`, as before).
const KEPT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

pub(crate) fn urlencode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, KEPT).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn urlencode_keeps_a_path_and_escapes_the_rest() {
        assert_eq!(super::urlencode("a b/c%ü-_.~"), "a%20b/c%25%C3%BC-_.~");
        assert_eq!(super::urlencode("x&y=z?#"), "x%26y%3Dz%3F%23");
    }
}
