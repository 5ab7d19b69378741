//! What will run: the validated step graph. Built from a [`RawSpec`] by
//! resolving every name (with "did you mean" on a miss), rejecting
//! duplicates and cycles, and turning relative directories into absolute
//! ones. A [`Plan`] is the part of the graph one `piper exec` runs.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;
use mlua::Lua;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lazy_lua::LazyLua;
use crate::location::Location;
use crate::project::Located;
use crate::spec::{Condition, Member, RawSpec, Run, TriggerOn};
use crate::suggest;

/// Serializable (the configuration cache stores it) but for its Lua state,
/// which a cached graph creates only when a function step runs.
#[derive(Serialize, Deserialize)]
pub struct Graph {
    pub root: PathBuf,
    /// Steps in order of definition.
    pub steps: Vec<Step>,
    #[serde(skip)]
    index: HashMap<String, usize>,
    pub pipelines: IndexMap<String, Pipeline>,
    /// Variables for every step (`env.set`).
    pub env: IndexMap<String, String>,
    /// Build stamps (`env.stamp`): computed per build, never fingerprinted.
    pub stamps: IndexMap<String, crate::spec::Command>,
    /// The config and every project Lua file it required.
    pub files: Vec<PathBuf>,
    /// `trigger.watch`: extra globs that rerun a watched pipeline, and globs
    /// that never trigger.
    pub watch_paths: Vec<String>,
    pub watch_ignore: Vec<String>,
    /// Keeps Lua-function steps and `when` conditions callable.
    #[serde(skip, default = "LazyLua::none")]
    pub lua: LazyLua,
}

#[derive(Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub location: Location,
    pub desc: Option<String>,
    pub run: Run,
    /// Indices into `Graph::steps`.
    pub deps: Vec<usize>,
    pub env: IndexMap<String, String>,
    /// Absolute working directory.
    pub dir: PathBuf,
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub allow_failure: bool,
    pub when: Option<Condition>,
    pub inputs: Vec<String>,
    /// Root-relative paths or globs: `piper.lua` writes them relative to
    /// the step's `dir`, and validation resolves them once (`paths`).
    pub outputs: Vec<String>,
    pub depfile: Option<String>,
    pub service: bool,
    /// Whether a cache may hold its results.
    pub cache: bool,
    /// Whether a remote cache may (`remote_cache = false`: the disk cache
    /// alone).
    pub remote_cache: bool,
    /// Whether a remote executor may run it (`remote = false`: here).
    pub remote: bool,
    /// The user's part of its action key's salt (`cache_salt`).
    pub cache_salt: Option<String>,
    /// Labels an agent must have to run it.
    pub requires: IndexMap<String, String>,
}

#[derive(Serialize, Deserialize)]
pub struct Pipeline {
    pub name: String,
    pub location: Location,
    pub desc: Option<String>,
    /// Member steps (includes flattened), in listed order, without duplicates.
    pub steps: Vec<usize>,
    pub env: IndexMap<String, String>,
    pub triggers: Vec<Trigger>,
    /// When the build agent runs it (`schedule = trigger.schedule "..."`).
    pub schedules: Vec<crate::cron::Schedule>,
    /// Runs again on another agent after its agent died, this many times.
    pub retry_agent_lost: u32,
    /// Labels an agent must have to run it.
    pub requires: IndexMap<String, String>,
    /// `remote_cache = false`: its steps keep to the disk cache when it is
    /// run.
    pub remote_cache: bool,
    /// What a bare `piper exec` runs (`default = true`; at most one).
    pub default: bool,
    /// The arguments it takes after `--` (`args = { "prod", "staging" }`):
    /// offered by completion and shown by `piper list`, never enforced.
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trigger {
    pub on: TriggerOn,
    pub pipeline: String,
    pub env: IndexMap<String, String>,
}

/// The steps one build runs: the targets and everything they depend on.
pub struct Plan {
    /// What was asked for, e.g. `ci` or `lint test`.
    pub name: String,
    pub targets: Vec<String>,
    pub steps: Vec<PlannedStep>,
    /// Triggers of the target pipelines, evaluated when the build ends.
    pub triggers: Vec<Trigger>,
    /// What an agent must have to run this build: the `requires` of the
    /// target pipelines and of every planned step, together.
    #[cfg_attr(not(feature = "agent"), allow(dead_code))]
    pub requires: std::collections::BTreeMap<String, String>,
}

pub struct PlannedStep {
    /// Index into `Graph::steps`.
    pub step: usize,
    /// Indices into `Plan::steps`.
    pub deps: Vec<usize>,
    /// Variables of the target pipeline(s) the step runs for.
    pub pipeline_env: IndexMap<String, String>,
    /// False when a target pipeline it runs for says `remote_cache = false`.
    #[cfg_attr(not(feature = "cache"), allow(dead_code))] // read by the cache only
    pub remote_cache: bool,
}

impl Graph {
    /// Evaluates the project's config (no cache; see `config_cache.rs`).
    #[cfg(feature = "cli")]
    pub fn load(project: &Located) -> Result<Graph> {
        let (lua, spec) = crate::lua::evaluate(project)?;
        let mut graph = Graph::validate(project, spec, lua)?;
        graph.files.insert(0, project.config.clone());
        Ok(graph)
    }

    /// As [`Graph::load`], with what the evaluation read.
    pub fn load_recorded(project: &Located) -> Result<(Graph, crate::recording::Recording)> {
        let (lua, spec, recording) = crate::lua::evaluate_recorded(project)?;
        let mut graph = Graph::validate(project, spec, lua)?;
        graph.files.insert(0, project.config.clone());
        Ok((graph, recording))
    }

    pub fn validate(project: &Located, mut spec: RawSpec, lua: Lua) -> Result<Graph> {
        let index = index_unique("step", &spec.steps, |s| &s.name, |s| &s.location)?;
        let step_names: Vec<String> = spec.steps.iter().map(|s| s.name.clone()).collect();
        let mut steps = Vec::with_capacity(spec.steps.len());
        let mut functions = Vec::with_capacity(spec.steps.len());
        for mut raw in std::mem::take(&mut spec.steps) {
            functions.push(std::mem::take(&mut raw.functions));
            steps.push(resolve_step(project, raw, &index, &step_names)?);
        }
        check_step_cycles(&steps)?;

        // Pipelines: first their names (members may include later ones).
        let pipeline_index =
            index_unique("pipeline", &spec.pipelines, |p| &p.name, |p| &p.location)?;
        let pipeline_index: HashMap<&str, usize> = (pipeline_index.iter())
            .map(|(name, &i)| (name.as_str(), i))
            .collect();
        check_trigger_targets(&spec, &pipeline_index)?;
        let mut pipelines = IndexMap::new();
        for p in &spec.pipelines {
            let mut members = Vec::new();
            let mut seen = HashSet::new();
            let mut stack = vec![p.name.as_str()];
            collect_members(
                p,
                &spec,
                &pipeline_index,
                &index,
                &step_names,
                &mut stack,
                &mut members,
                &mut seen,
            )?;
            pipelines.insert(p.name.clone(), resolve_pipeline(p, members));
        }
        check_trigger_cycles(&pipelines)?;
        check_one_default(&pipelines)?;

        Ok(Graph {
            root: project.root.clone(),
            steps,
            index,
            pipelines,
            env: spec.env,
            stamps: spec.stamps,
            files: spec.files.iter().map(|f| project.root.join(f)).collect(),
            watch_paths: spec.watch_paths,
            watch_ignore: spec.watch_ignore,
            lua: LazyLua::ready(lua, functions),
        })
    }

    /// A graph read back from the configuration cache: the name index is
    /// rebuilt, and the Lua state is created from `project` on first need.
    pub fn revive(mut self, project: &Located) -> Graph {
        self.index = (self.steps.iter().enumerate())
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        self.lua = LazyLua::deferred(project.clone(), self.step_names());
        self
    }

    /// What a bare `piper exec` runs: the pipeline marked `default = true`,
    /// else the only pipeline there is.
    #[cfg(feature = "cli")]
    pub fn default_pipeline(&self) -> Option<&str> {
        let marked = self.pipelines.values().find(|p| p.default);
        match (marked, self.pipelines.len()) {
            (Some(p), _) => Some(&p.name),
            (None, 1) => self.pipelines.keys().next().map(String::as_str),
            _ => None,
        }
    }

    pub fn step(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn pipeline_names(&self) -> Vec<String> {
        self.pipelines.keys().cloned().collect()
    }

    pub fn step_names(&self) -> Vec<String> {
        self.steps.iter().map(|s| s.name.clone()).collect()
    }

    /// The plan for `piper exec TARGET...`: each target is a pipeline (its
    /// name wins) or a step; dependencies are pulled in.
    pub fn plan(&self, targets: &[String]) -> Result<Plan> {
        self.plan_with_env(targets, &IndexMap::new())
    }

    /// As [`Graph::plan`], with extra variables for every step (a trigger's).
    pub fn plan_with_env(
        &self,
        targets: &[String],
        extra_env: &IndexMap<String, String>,
    ) -> Result<Plan> {
        let mut included = vec![false; self.steps.len()];
        let mut pipeline_env: Vec<IndexMap<String, String>> =
            vec![IndexMap::new(); self.steps.len()];
        let mut remote_cache = vec![true; self.steps.len()];
        let mut triggers = Vec::new();
        let mut requires: Vec<(&IndexMap<String, String>, &Location, String)> = Vec::new();
        for target in targets {
            let (roots, env, remote) = if let Some(p) = self.pipelines.get(target) {
                triggers.extend(p.triggers.iter().cloned());
                requires.push((&p.requires, &p.location, format!("pipeline `{}`", p.name)));
                (p.steps.clone(), Some(&p.env), p.remote_cache)
            } else if let Some(s) = self.step(target) {
                (vec![s], None, true)
            } else {
                let candidates = self
                    .pipelines
                    .keys()
                    .map(String::as_str)
                    .chain(self.steps.iter().map(|s| s.name.as_str()));
                return Err(Error::UnknownTarget {
                    name: target.clone(),
                    suggestion: suggest::closest(target, candidates),
                    pipelines: self.pipeline_names(),
                    steps: self.step_names(),
                });
            };
            let mut closure = Vec::new();
            self.closure(&roots, &mut closure);
            for s in closure {
                included[s] = true;
                remote_cache[s] &= remote;
                if let Some(env) = env {
                    pipeline_env[s].extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        let mut position = vec![usize::MAX; self.steps.len()];
        let mut steps = Vec::new();
        for (i, _) in included.iter().enumerate().filter(|(_, inc)| **inc) {
            position[i] = steps.len();
            let mut env = std::mem::take(&mut pipeline_env[i]);
            env.extend(extra_env.iter().map(|(k, v)| (k.clone(), v.clone())));
            steps.push(PlannedStep {
                step: i,
                deps: Vec::new(),
                pipeline_env: env,
                remote_cache: remote_cache[i],
            });
        }
        // Only steps that require something: the label is a string made
        // for an error message, and most steps of a large plan have none.
        requires.extend(
            (steps.iter().map(|p| &self.steps[p.step]))
                .filter(|step| !step.requires.is_empty())
                .map(|step| {
                    (
                        &step.requires,
                        &step.location,
                        format!("step `{}`", step.name),
                    )
                }),
        );
        let requires = combine_requires(&requires)?;
        for planned in &mut steps {
            planned.deps = self.steps[planned.step]
                .deps
                .iter()
                .map(|&d| position[d])
                .collect();
        }
        Ok(Plan {
            name: targets.join(" "),
            targets: targets.to_vec(),
            steps,
            triggers,
            requires,
        })
    }

    /// The labels missing from `labels` for `plan` to run there, as
    /// `key=value` words (empty: it can run).
    #[cfg(feature = "agent")]
    pub fn missing_labels(
        plan: &Plan,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Vec<String> {
        plan.requires
            .iter()
            .filter(|(k, v)| labels.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }

    /// `roots` and all their transitive dependencies.
    fn closure(&self, roots: &[usize], out: &mut Vec<usize>) {
        let mut seen = vec![false; self.steps.len()];
        let mut stack: Vec<usize> = roots.to_vec();
        while let Some(s) = stack.pop() {
            if std::mem::replace(&mut seen[s], true) {
                continue;
            }
            out.push(s);
            stack.extend(self.steps[s].deps.iter().copied());
        }
    }
}

/// Each item's index by its name; a name defined twice is an error naming
/// both places.
fn index_unique<T>(
    kind: &'static str,
    items: &[T],
    name: impl Fn(&T) -> &String,
    location: impl Fn(&T) -> &Location,
) -> Result<HashMap<String, usize>> {
    let mut index: HashMap<String, usize> = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if let Some(&first) = index.get(name(item)) {
            return Err(Error::Duplicate {
                kind,
                name: name(item).clone(),
                first: location(&items[first]).clone(),
                second: location(item).clone(),
            });
        }
        index.insert(name(item).clone(), i);
    }
    Ok(index)
}

/// A step as the graph holds it: dependencies by index (each once), its
/// directory and outputs resolved under the project's root.
fn resolve_step(
    project: &Located,
    raw: crate::spec::RawStep,
    index: &HashMap<String, usize>,
    step_names: &[String],
) -> Result<Step> {
    let mut deps = Vec::with_capacity(raw.deps.len());
    for dep in &raw.deps {
        let Some(&d) = index.get(dep) else {
            return Err(Error::UnknownDependency {
                suggestion: suggest::closest(dep, step_names.iter().map(String::as_str)),
                location: raw.location,
                step: raw.name,
                dependency: dep.clone(),
            });
        };
        if !deps.contains(&d) {
            deps.push(d);
        }
    }
    let rel_dir = PathBuf::from(raw.dir.as_deref().unwrap_or(""));
    let dir = project.root.join(&rel_dir);
    let mut outputs = Vec::with_capacity(raw.outputs.len());
    for output in &raw.outputs {
        outputs.push(
            crate::paths::resolve_in(&rel_dir, output).map_err(|message| Error::Spec {
                location: raw.location.clone(),
                message: format!("step `{}`: `outputs`: {message}", raw.name),
            })?,
        );
    }
    Ok(Step {
        name: raw.name,
        location: raw.location,
        desc: raw.desc,
        run: raw.run,
        deps,
        env: raw.env,
        dir,
        timeout: raw.timeout,
        retries: raw.retries,
        allow_failure: raw.allow_failure,
        when: raw.when,
        inputs: raw.inputs,
        outputs,
        depfile: raw.depfile,
        service: raw.service,
        cache: raw.cache,
        remote_cache: raw.remote_cache,
        remote: raw.remote,
        cache_salt: raw.cache_salt,
        requires: raw.requires,
    })
}

/// Every trigger names a pipeline that exists.
fn check_trigger_targets(spec: &RawSpec, pipeline_index: &HashMap<&str, usize>) -> Result<()> {
    let pipeline_names: Vec<&str> = spec.pipelines.iter().map(|p| p.name.as_str()).collect();
    for p in &spec.pipelines {
        for t in &p.triggers {
            if !pipeline_index.contains_key(t.pipeline.as_str()) {
                return Err(Error::UnknownTriggerTarget {
                    location: t.location.clone(),
                    pipeline: p.name.clone(),
                    target: t.pipeline.clone(),
                    suggestion: suggest::closest(&t.pipeline, pipeline_names.iter().copied()),
                });
            }
        }
    }
    Ok(())
}

/// A pipeline as the graph holds it, with its steps (`members`, indexes).
fn resolve_pipeline(p: &crate::spec::RawPipeline, members: Vec<usize>) -> Pipeline {
    let triggers = p
        .triggers
        .iter()
        .map(|t| Trigger {
            on: t.on,
            pipeline: t.pipeline.clone(),
            env: t.env.clone(),
        })
        .collect();
    Pipeline {
        name: p.name.clone(),
        location: p.location.clone(),
        desc: p.desc.clone(),
        steps: members,
        env: p.env.clone(),
        triggers,
        schedules: p.schedules.clone(),
        retry_agent_lost: p.retry_agent_lost,
        requires: p.requires.clone(),
        remote_cache: p.remote_cache,
        default: p.default,
        args: p.args.clone(),
    }
}

#[allow(clippy::too_many_arguments)]
fn collect_members<'a>(
    p: &'a crate::spec::RawPipeline,
    spec: &'a RawSpec,
    pipeline_index: &HashMap<&str, usize>,
    step_index: &HashMap<String, usize>,
    step_names: &[String],
    stack: &mut Vec<&'a str>,
    members: &mut Vec<usize>,
    seen: &mut HashSet<usize>,
) -> Result<()> {
    for member in &p.members {
        let include = match member {
            Member::Step(name) => step_index.get(name).map(|&s| (Some(s), None)),
            Member::Pipeline(name) => pipeline_index.get(name.as_str()).map(|&i| (None, Some(i))),
            Member::Name(name) => step_index
                .get(name)
                .map(|&s| (Some(s), None))
                .or_else(|| pipeline_index.get(name.as_str()).map(|&i| (None, Some(i)))),
        };
        match include {
            Some((Some(step), _)) => {
                if seen.insert(step) {
                    members.push(step);
                }
            }
            Some((None, Some(i))) => {
                let included = &spec.pipelines[i];
                if stack.contains(&included.name.as_str()) {
                    let mut path: Vec<String> = stack.iter().map(|s| s.to_string()).collect();
                    path.push(included.name.clone());
                    return Err(Error::Spec {
                        location: p.location.clone(),
                        message: format!(
                            "pipelines include each other in a loop: {}",
                            path.join(" -> ")
                        ),
                    });
                }
                stack.push(&included.name);
                collect_members(
                    included,
                    spec,
                    pipeline_index,
                    step_index,
                    step_names,
                    stack,
                    members,
                    seen,
                )?;
                stack.pop();
            }
            _ => {
                let name = match member {
                    Member::Step(n) | Member::Pipeline(n) | Member::Name(n) => n,
                };
                let candidates = step_names
                    .iter()
                    .map(String::as_str)
                    .chain(spec.pipelines.iter().map(|p| p.name.as_str()));
                return Err(Error::UnknownPipelineMember {
                    location: p.location.clone(),
                    pipeline: p.name.clone(),
                    member: name.clone(),
                    suggestion: suggest::closest(name, candidates),
                });
            }
        }
    }
    Ok(())
}

/// Depth-first search; reports the first cycle found as a path of names.
/// One set of requirements from several; a key required with two values
/// can never be met, and is an error at the second place that asks.
fn combine_requires(
    all: &[(&IndexMap<String, String>, &Location, String)],
) -> Result<std::collections::BTreeMap<String, String>> {
    let mut combined: std::collections::BTreeMap<String, (String, &Location, &str)> =
        Default::default();
    for (requires, location, who) in all {
        for (key, value) in requires.iter() {
            match combined.get(key) {
                Some((other, first, first_who)) if other != value => {
                    return Err(Error::Spec {
                        location: (*location).clone(),
                        message: format!(
                            "{who} requires {key}={value}, but {first_who} ({first}) requires {key}={other}: no agent can have both"
                        ),
                    });
                }
                _ => {
                    combined.insert(key.clone(), (value.clone(), location, who));
                }
            }
        }
    }
    Ok(combined.into_iter().map(|(k, (v, _, _))| (k, v)).collect())
}

fn check_step_cycles(steps: &[Step]) -> Result<()> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut marks = vec![Mark::New; steps.len()];
    for start in 0..steps.len() {
        if marks[start] != Mark::New {
            continue;
        }
        // Iterative DFS: (node, next dep to visit); `path` mirrors the stack.
        let mut stack = vec![(start, 0usize)];
        marks[start] = Mark::Active;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&dep) = steps[node].deps.get(*next) {
                *next += 1;
                match marks[dep] {
                    Mark::New => {
                        marks[dep] = Mark::Active;
                        stack.push((dep, 0));
                    }
                    Mark::Active => {
                        let from = stack.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                        let mut path: Vec<String> = stack[from..]
                            .iter()
                            .map(|&(n, _)| steps[n].name.clone())
                            .collect();
                        path.push(steps[dep].name.clone());
                        return Err(Error::Cycle {
                            location: steps[dep].location.clone(),
                            path,
                        });
                    }
                    Mark::Done => {}
                }
            } else {
                marks[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    Ok(())
}

fn check_trigger_cycles(pipelines: &IndexMap<String, Pipeline>) -> Result<()> {
    fn visit<'a>(
        name: &'a str,
        pipelines: &'a IndexMap<String, Pipeline>,
        path: &mut Vec<&'a str>,
        done: &mut HashSet<&'a str>,
    ) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if let Some(from) = path.iter().position(|p| *p == name) {
            let mut cycle: Vec<String> = path[from..].iter().map(|s| s.to_string()).collect();
            cycle.push(name.to_string());
            return Err(Error::TriggerCycle {
                location: pipelines[name].location.clone(),
                path: cycle,
            });
        }
        path.push(name);
        for t in &pipelines[name].triggers {
            visit(&t.pipeline, pipelines, path, done)?;
        }
        path.pop();
        done.insert(name);
        Ok(())
    }
    let mut done = HashSet::new();
    for name in pipelines.keys() {
        visit(name, pipelines, &mut Vec::new(), &mut done)?;
    }
    Ok(())
}

/// `default = true` on two pipelines: which one would a bare `piper exec` run?
fn check_one_default(pipelines: &IndexMap<String, Pipeline>) -> Result<()> {
    let mut defaults = pipelines.values().filter(|p| p.default);
    if let (Some(first), Some(second)) = (defaults.next(), defaults.next()) {
        return Err(Error::Spec {
            location: second.location.clone(),
            message: format!(
                "pipeline `{}`: `default = true`, but pipeline `{}` ({}) is already the default; mark one",
                second.name, first.name, first.location
            ),
        });
    }
    Ok(())
}
