//! `piper graph` and `piper list --json`: the step graph as DOT, Mermaid or
//! JSON. Edges point from a dependency to the step that needs it, the way
//! work flows.

use serde::Serialize;

use crate::graph::{Graph, Plan};
use crate::spec::Run;

/// A step as `piper graph --format json` and `piper list --json` show it;
/// borrowed from the graph, so 10 000 steps are written without copying
/// their strings. Not the engine's `StepInfo` (owned, for embedders): this
/// is the CLI's JSON, with the commands as a list and the location.
#[derive(Serialize)]
pub struct StepJson<'a> {
    pub name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desc: Option<&'a str>,
    pub deps: Vec<&'a str>,
    /// The commands, or `["<lua function>"]`.
    pub run: RunText<'a>,
    pub location: Text<'a, crate::location::Location>,
}

/// A step's `run` as a list of command lines.
pub struct RunText<'a>(&'a Run);

impl RunText<'_> {
    /// The commands joined with ` && `.
    pub fn joined(&self) -> String {
        match self.0 {
            Run::Commands(commands) => (commands.iter())
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(" && "),
            Run::Lua(_) => LUA_FUNCTION.into(),
        }
    }
}

const LUA_FUNCTION: &str = "<lua function>";

impl Serialize for RunText<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match self.0 {
            Run::Commands(commands) => {
                let mut seq = serializer.serialize_seq(Some(commands.len()))?;
                for command in commands {
                    seq.serialize_element(&Text(command))?;
                }
                seq.end()
            }
            Run::Lua(_) => [LUA_FUNCTION].serialize(serializer),
        }
    }
}

/// Serializes a `Display` as a string, without building one first.
pub struct Text<'a, T: std::fmt::Display>(&'a T);

impl<T: std::fmt::Display> Serialize for Text<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self.0)
    }
}

/// A pipeline as `piper list --json` shows it: the engine's
/// `PipelineInfo` with each trigger's condition and the location.
#[derive(Serialize)]
pub struct PipelineJson {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    pub steps: Vec<String>,
    pub triggers: Vec<TriggerJson>,
    pub location: String,
}

#[derive(Serialize)]
pub struct TriggerJson {
    pub on: crate::spec::TriggerOn,
    pub pipeline: String,
}

pub fn step_info(graph: &Graph, index: usize) -> StepJson<'_> {
    let step = &graph.steps[index];
    StepJson {
        name: &step.name,
        desc: step.desc.as_deref(),
        deps: (step.deps.iter())
            .map(|&d| graph.steps[d].name.as_str())
            .collect(),
        run: RunText(&step.run),
        location: Text(&step.location),
    }
}

pub fn pipeline_info(graph: &Graph, name: &str) -> Option<PipelineJson> {
    let p = graph.pipelines.get(name)?;
    Some(PipelineJson {
        name: p.name.clone(),
        desc: p.desc.clone(),
        steps: p
            .steps
            .iter()
            .map(|&s| graph.steps[s].name.clone())
            .collect(),
        triggers: p
            .triggers
            .iter()
            .map(|t| TriggerJson {
                on: t.on,
                pipeline: t.pipeline.clone(),
            })
            .collect(),
        location: p.location.to_string(),
    })
}

fn edges(plan: &Plan) -> Vec<(usize, usize)> {
    let mut edges = Vec::new();
    for (i, planned) in plan.steps.iter().enumerate() {
        for &d in &planned.deps {
            edges.push((d, i));
        }
    }
    edges
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

pub fn dot(graph: &Graph, plan: &Plan) -> String {
    let mut out = format!(
        "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box];\n",
        escape(&plan.name)
    );
    for planned in &plan.steps {
        out.push_str(&format!(
            "  \"{}\";\n",
            escape(&graph.steps[planned.step].name)
        ));
    }
    for (from, to) in edges(plan) {
        let from = &graph.steps[plan.steps[from].step].name;
        let to = &graph.steps[plan.steps[to].step].name;
        out.push_str(&format!("  \"{}\" -> \"{}\";\n", escape(from), escape(to)));
    }
    out.push_str("}\n");
    out
}

pub fn mermaid(graph: &Graph, plan: &Plan) -> String {
    // Mermaid ids cannot hold arbitrary text; names go in labels.
    let mut out = String::from("graph LR\n");
    for (i, planned) in plan.steps.iter().enumerate() {
        let label = graph.steps[planned.step].name.replace('"', "#quot;");
        out.push_str(&format!("  s{i}[\"{label}\"]\n"));
    }
    for (from, to) in edges(plan) {
        out.push_str(&format!("  s{from} --> s{to}\n"));
    }
    out
}

#[derive(Serialize)]
struct GraphJson<'a> {
    name: &'a str,
    steps: Vec<StepJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pipeline: Option<PipelineJson>,
}

/// Written straight to `out`: 10 000 steps are 1.7 MB of JSON, which as
/// one growing string was copied and faulted in twice over.
pub fn write_json(
    graph: &Graph,
    plan: &Plan,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    let doc = GraphJson {
        name: &plan.name,
        steps: plan
            .steps
            .iter()
            .map(|p| step_info(graph, p.step))
            .collect(),
        pipeline: pipeline_info(graph, &plan.name),
    };
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    out.write_all(b"\n")
}
