//! `piper explain`: what `piper exec` would run and why, in words, without
//! running anything. Uses the same check as the executor
//! (`fingerprint::check`), walking the plan in dependency order; a step that
//! would run makes its dependents run too.

use serde::Serialize;

use crate::digest::Digest;
use crate::executor::{self, Options};
use crate::fingerprint::{self, Freshness};
use crate::graph::{Graph, Plan};
use crate::state::{SmallMap, State};

#[derive(Debug, Serialize)]
pub struct Verdict {
    pub step: String,
    pub will_run: bool,
    pub reasons: Vec<String>,
}

/// A marker no recorded fingerprint can equal.
const WILL_RUN: Digest = Digest([0xee; 32]);

/// What a cache would do for a stale step: the disk cache holds its
/// results (it would be fetched), or a remote cache would be asked
/// (unless the step or its pipeline says `remote_cache = false`).
#[cfg(feature = "cache")]
fn from_cache(
    graph: &Graph,
    planned: &crate::graph::PlannedStep,
    record: &crate::state::StepRecord,
    env: &[(String, String)],
    options: &Options,
    forced: bool,
) -> Option<String> {
    let cache = options.cache.as_ref()?;
    // A dependency that would run first remakes what the key covers.
    let waiting = record.deps.values().any(|fp| *fp == WILL_RUN);
    let step = &graph.steps[planned.step];
    if forced || waiting || !crate::cache::cacheable(step) {
        return None;
    }
    let key = crate::cache::ActionKey::new(graph, planned.step, record, env).ok()?;
    if cache.disk().has(&key) {
        return Some(format!(
            "it ran before with the same inputs: it would be fetched from cache {}",
            cache.disk().dir().display()
        ));
    }
    #[cfg(feature = "remote-cache")]
    if planned.remote_cache && step.remote_cache {
        let command = matches!(step.run, crate::spec::Run::Commands(_));
        let executor = cache.executor().filter(|_| step.remote && command);
        let there = executor.map(|e| format!("run remotely on {}", e.url()));
        return match (cache.remote(), there) {
            (Some(remote), Some(there)) => Some(format!(
                "it would be looked up in remote cache {}, else {there}",
                remote.url()
            )),
            (Some(remote), None) => Some(format!(
                "it would be looked up in remote cache {}",
                remote.url()
            )),
            (None, Some(there)) => Some(format!("it would {there}")),
            (None, None) => None,
        };
    }
    None
}

pub fn explain(graph: &Graph, plan: &Plan, options: &Options) -> Vec<Verdict> {
    let state = State::load(&graph.root);
    let root = crate::root_dir::RootDir::open(&graph.root);
    let order = topological(plan);
    let mut fingerprints: Vec<Digest> = vec![Digest::default(); plan.steps.len()];
    let mut verdicts: Vec<Option<Verdict>> = (0..plan.steps.len()).map(|_| None).collect();
    for i in order {
        let step = &graph.steps[plan.steps[i].step];
        let deps: SmallMap<Digest> = plan.steps[i]
            .deps
            .iter()
            .map(|&d| {
                (
                    graph.steps[plan.steps[d].step].name.clone(),
                    fingerprints[d],
                )
            })
            .collect();
        let waiting_on: Vec<&String> = deps
            .iter()
            .filter(|(_, fp)| **fp == WILL_RUN)
            .map(|(n, _)| n)
            .collect();
        let env = executor::work_env(graph, plan, i, options);
        let forced = options.force.applies_to(&step.name);
        let (will_run, mut reasons, fp) = match fingerprint::check(
            &root,
            step,
            &env,
            deps.clone(),
            state.steps.get(&step.name),
            forced,
        ) {
            Ok(Freshness::UpToDate(record)) => {
                (false, Vec::new(), fingerprint::seen_by_dependents(&record))
            }
            Ok(Freshness::Stale(record, reasons)) => {
                #[cfg(feature = "cache")]
                let reasons = {
                    let mut reasons = reasons;
                    reasons.extend(from_cache(
                        graph,
                        &plan.steps[i],
                        &record,
                        &env,
                        options,
                        forced,
                    ));
                    reasons
                };
                #[cfg(not(feature = "cache"))]
                let _ = record;
                (true, reasons, WILL_RUN)
            }
            Ok(Freshness::Untracked) => (
                true,
                vec!["it declares no inputs, so it always runs".into()],
                WILL_RUN,
            ),
            Err(e) => (
                true,
                vec![format!("its inputs cannot be read: {e}")],
                WILL_RUN,
            ),
        };
        // "upstream changed" is known more precisely here: it will run.
        for name in waiting_on {
            let changed = format!("upstream step `{name}` changed");
            reasons.retain(|r| *r != changed);
            reasons.push(format!("upstream step `{name}` will run"));
        }
        fingerprints[i] = fp;
        verdicts[i] = Some(Verdict {
            step: step.name.clone(),
            will_run,
            reasons,
        });
    }
    verdicts.into_iter().flatten().collect()
}

/// Plan indices with every step after its dependencies (Kahn's algorithm,
/// ties broken by order of definition).
fn topological(plan: &Plan) -> Vec<usize> {
    let n = plan.steps.len();
    let mut waiting: Vec<usize> = plan.steps.iter().map(|s| s.deps.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, s) in plan.steps.iter().enumerate() {
        for &d in &s.deps {
            dependents[d].push(i);
        }
    }
    let mut ready: std::collections::BTreeSet<usize> =
        (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &d in &dependents[i] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.insert(d);
            }
        }
    }
    order
}
