//! What a set of changed files asks of a run: nothing, a new evaluation of
//! the config, the whole plan, or some steps and their dependents. The
//! engine answers it from the graph (inputs, outputs, the config's files,
//! `trigger.watch`), what the config's evaluation read (files, globs) and
//! the state (inputs discovered from depfiles);
//! `piper watch` is one host asking it (`Project::affected_by`), an editor
//! saving a file could be another.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use globset::GlobSet;

use crate::glob::glob_set;
use crate::graph::{Graph, Plan};
use crate::recording::ConfigReads;
use crate::state::{STATE_DIR, State};

/// What a batch of changed files asks of a run of some targets
/// ([`Project::affected_by`](crate::Project::affected_by)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// Nothing the run reads or the config was built from.
    Nothing,
    /// `piper.lua` or a module it required changed: load the project again
    /// ([`Engine::reload`](crate::Engine::reload)).
    Config,
    /// A `trigger.watch` path changed: run the whole plan again.
    Everything,
    /// These steps' inputs changed: these steps and every step of the plan
    /// that depends on them, by name (what [`RunOptions::only`](crate::RunOptions::only)
    /// takes).
    Steps(BTreeSet<String>),
}

/// The answer of [`Project::affected_by`](crate::Project::affected_by).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Affected {
    /// What the changes ask for.
    pub change: Change,
    /// The changed paths that matter, relative to the root, sorted (what
    /// `piper watch` prints before a rerun).
    pub paths: Vec<String>,
}

/// Sorts `changed` (absolute paths) into what they ask of a run of
/// `targets`. Piper's own state, git's, gitignored paths, declared outputs
/// and `trigger.watch` ignores never ask for anything, so a step's own
/// output cannot loop a watcher.
pub(crate) fn affected_by(
    graph: &Graph,
    reads: &ConfigReads,
    targets: &[String],
    changed: &[PathBuf],
) -> Affected {
    let root = &graph.root;
    let config_files: HashSet<&PathBuf> = graph.files.iter().collect();
    let ignored = crate::paths::IgnoreRules::new(root);
    let ignore_set = glob_set(graph.watch_ignore.iter().map(String::as_str));
    let extra_set = glob_set(graph.watch_paths.iter().map(String::as_str));
    let output_set = glob_set(
        (graph.steps.iter())
            .flat_map(|s| s.outputs.iter())
            .map(String::as_str),
    );
    // Planned once: whose inputs count, and who depends on whom.
    let plan = graph.plan(targets).ok();
    let inputs = StepInputs::of_plan(graph, plan.as_ref());

    let mut relevant = Vec::new();
    let (mut config, mut everything) = (false, false);
    let mut steps = HashSet::new();
    for path in changed {
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        if rel.as_os_str().is_empty() || is_private(rel) {
            continue;
        }
        let rel_text = rel.to_string_lossy().into_owned();
        let is_ignored = || ignored.is_ignored(rel, path.is_dir());
        if config_files.contains(path) || reads.asks_reload(rel, &rel_text, is_ignored) {
            config = true;
            relevant.push(rel_text);
            continue;
        }
        if ignore_set.is_match(rel)
            || output_set.is_match(rel)
            || ignored.is_ignored(rel, path.is_dir())
        {
            continue;
        }
        let mut hit = inputs.matching(rel, &rel_text, &mut steps);
        if extra_set.is_match(rel) {
            everything = true;
            hit = true;
        }
        if hit {
            relevant.push(rel_text);
        }
    }
    relevant.sort();
    relevant.dedup();
    let change = if config {
        Change::Config
    } else if everything {
        Change::Everything
    } else if let Some(plan) = plan.as_ref().filter(|_| !steps.is_empty()) {
        Change::Steps(dependents_of(graph, plan, &steps))
    } else {
        Change::Nothing
    };
    Affected {
        change,
        paths: relevant,
    }
}

/// The planned steps' inputs: declared globs, and literal paths (declared,
/// or discovered from depfiles at the step's last run).
struct StepInputs<'a> {
    steps: Vec<(&'a str, GlobSet, HashSet<String>)>,
}

impl<'a> StepInputs<'a> {
    fn of_plan(graph: &'a Graph, plan: Option<&Plan>) -> StepInputs<'a> {
        let Some(plan) = plan else {
            return StepInputs { steps: Vec::new() };
        };
        let state = State::load(&graph.root);
        let steps = (plan.steps.iter())
            .map(|planned| {
                let step = &graph.steps[planned.step];
                let mut literal: HashSet<String> = (step.inputs.iter())
                    .filter(|p| !crate::paths::is_glob(p))
                    .cloned()
                    .collect();
                if let Some(record) = state.steps.get(&step.name) {
                    literal.extend(record.discovered.iter().cloned());
                }
                let globs = glob_set(step.inputs.iter().map(String::as_str));
                (step.name.as_str(), globs, literal)
            })
            .collect();
        StepInputs { steps }
    }

    /// Adds the steps reading `rel` to `hits`; whether there was one.
    fn matching(&self, rel: &Path, rel_text: &str, hits: &mut HashSet<String>) -> bool {
        let mut hit = false;
        for (name, globs, literal) in &self.steps {
            if globs.is_match(rel) || literal.contains(rel_text) {
                hits.insert(name.to_string());
                hit = true;
            }
        }
        hit
    }
}

/// Piper's own state and git's never ask for anything.
pub(crate) fn is_private(rel: &Path) -> bool {
    rel.components()
        .next()
        .is_some_and(|c| c.as_os_str() == STATE_DIR || c.as_os_str() == ".git")
}

/// `direct` and every step of the plan that depends on one of them.
fn dependents_of(graph: &Graph, plan: &Plan, direct: &HashSet<String>) -> BTreeSet<String> {
    let mut dependents: HashMap<usize, Vec<usize>> = HashMap::new();
    for planned in &plan.steps {
        for &d in &graph.steps[planned.step].deps {
            dependents.entry(d).or_default().push(planned.step);
        }
    }
    let mut out = BTreeSet::new();
    let mut stack: Vec<usize> = direct.iter().filter_map(|n| graph.step(n)).collect();
    while let Some(s) = stack.pop() {
        if out.insert(graph.steps[s].name.clone()) {
            stack.extend(dependents.get(&s).into_iter().flatten().copied());
        }
    }
    out
}
