//! The figures of step history (`GET /api/v1/history`, `piper history`,
//! the web UI's history page): per step, its runs over the last builds,
//! median and 95th percentile of how long it ran, the trend between the
//! older and the newer half, its failures; and the flaky steps, which
//! failed and passed on the same commit. Made from the store's rows
//! (`store/history.rs`); no I/O here.

use std::collections::BTreeMap;

use indexmap::IndexMap;

use super::api::{FlakyStep, History, StepHistory, StepRunPoint};
use super::store::StepRun;

/// Statuses of a step that ran (and so has a duration worth comparing).
fn ran(status: &str) -> bool {
    matches!(
        status,
        "success" | "failed" | "timed_out" | "allowed_failure"
    )
}

fn failed(status: &str) -> bool {
    matches!(status, "failed" | "timed_out")
}

/// `runs` (oldest build first) as history.
pub(crate) fn history(repo: &str, pipeline: Option<&str>, runs: &[StepRun]) -> History {
    let mut steps: IndexMap<&str, Vec<&StepRun>> = IndexMap::new();
    for run in runs {
        steps.entry(&run.step).or_default().push(run);
    }
    let builds = {
        let mut ids: Vec<i64> = runs.iter().map(|r| r.build_id).collect();
        ids.dedup();
        ids.len()
    };
    History {
        repo: repo.to_string(),
        pipeline: pipeline.map(String::from),
        builds,
        steps: steps
            .iter()
            .map(|(step, runs)| step_history(step, runs))
            .collect(),
        flaky: flaky(runs),
    }
}

fn step_history(step: &str, runs: &[&StepRun]) -> StepHistory {
    let points: Vec<StepRunPoint> = runs
        .iter()
        .map(|r| StepRunPoint {
            build: r.build_id,
            number: r.number,
            status: r.status.clone(),
            duration_ms: match (ran(&r.status), r.started_at, r.finished_at) {
                (true, Some(start), Some(end)) => Some((end - start).max(0) as u64),
                _ => None,
            },
        })
        .collect();
    let timed: Vec<u64> = points.iter().filter_map(|p| p.duration_ms).collect();
    let ran_count = runs.iter().filter(|r| ran(&r.status)).count();
    let failures = runs.iter().filter(|r| failed(&r.status)).count() as u64;
    let trend = (timed.len() >= 4).then(|| {
        let (older, newer) = timed.split_at(timed.len() / 2);
        let (older, newer) = (percentile(older, 50), percentile(newer, 50));
        newer as f64 / older.max(1) as f64
    });
    StepHistory {
        step: step.to_string(),
        p50_ms: (!timed.is_empty()).then(|| percentile(&timed, 50)),
        p95_ms: (!timed.is_empty()).then(|| percentile(&timed, 95)),
        trend,
        failures,
        failure_rate: if ran_count == 0 {
            0.0
        } else {
            failures as f64 / ran_count as f64
        },
        runs: points,
    }
}

/// Nearest-rank percentile of a non-empty list.
fn percentile(values: &[u64], p: usize) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// The builds where a step failed, and where it passed.
type Outcomes = (Vec<i64>, Vec<i64>);

/// Steps that failed and passed on the same commit, the latest first.
fn flaky(runs: &[StepRun]) -> Vec<FlakyStep> {
    let mut by_commit: BTreeMap<(&str, &str), Outcomes> = BTreeMap::new();
    for run in runs {
        let Some(sha) = run.sha.as_deref() else {
            continue;
        };
        let (failed_in, passed_in) = by_commit.entry((sha, &run.step)).or_default();
        if failed(&run.status) {
            failed_in.push(run.build_id);
        } else if run.status == "success" {
            passed_in.push(run.build_id);
        }
    }
    let mut flaky: Vec<FlakyStep> = by_commit
        .into_iter()
        .filter(|(_, (failed, passed))| !failed.is_empty() && !passed.is_empty())
        .map(|((sha, step), (failed, passed))| FlakyStep {
            step: step.to_string(),
            sha: sha.to_string(),
            failed,
            passed,
        })
        .collect();
    let latest = |f: &FlakyStep| f.failed.iter().chain(&f.passed).max().copied();
    flaky.sort_by_key(|f| std::cmp::Reverse(latest(f)));
    flaky
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(build: i64, sha: &str, step: &str, status: &str, ms: i64) -> StepRun {
        StepRun {
            build_id: build,
            number: build,
            pipeline: "ci".into(),
            sha: Some(sha.into()),
            step: step.into(),
            status: status.into(),
            started_at: Some(1000),
            finished_at: Some(1000 + ms),
        }
    }

    #[test]
    fn percentiles_trend_and_failure_rate_of_the_runs_that_ran() {
        let runs = [
            run(1, "a", "test", "success", 100),
            run(2, "b", "test", "failed", 110),
            run(3, "c", "test", "up_to_date", 1),
            run(4, "d", "test", "success", 200),
            run(5, "e", "test", "success", 220),
        ];
        let h = history("/repo", Some("ci"), &runs);
        assert_eq!(h.builds, 5);
        let test = &h.steps[0];
        assert_eq!(test.runs.len(), 5);
        assert_eq!(test.runs[2].duration_ms, None, "up to date: not run");
        assert_eq!((test.p50_ms, test.p95_ms), (Some(110), Some(220)));
        assert_eq!(test.trend, Some(2.0), "medians 100 then 200");
        assert_eq!(test.failures, 1);
        assert_eq!(test.failure_rate, 0.25);
    }

    #[test]
    fn a_step_that_failed_and_passed_on_one_commit_is_flaky() {
        let runs = [
            run(1, "a", "test", "failed", 1),
            run(1, "a", "lint", "failed", 1),
            run(2, "a", "test", "success", 1),
            run(3, "b", "lint", "success", 1),
            run(4, "c", "e2e", "timed_out", 1),
            run(5, "c", "e2e", "success", 1),
        ];
        let flaky = flaky(&runs);
        let seen: Vec<_> = flaky
            .iter()
            .map(|f| {
                (
                    f.step.as_str(),
                    f.sha.as_str(),
                    f.failed.clone(),
                    f.passed.clone(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("e2e", "c", vec![4], vec![5]),
                ("test", "a", vec![1], vec![2])
            ]
        );
    }
}
