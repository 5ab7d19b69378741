//! `piper graph` and `piper list --json`: the step graph as DOT, Mermaid or
//! JSON. Edges point from a dependency to the step that needs it, the way
//! work flows.

use serde::Serialize;

use crate::graph::{Graph, Plan};
use crate::spec::Run;

#[derive(Serialize)]
pub struct StepInfo {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    pub deps: Vec<String>,
    /// The commands, or `["<lua function>"]`.
    pub run: Vec<String>,
    pub location: String,
}

#[derive(Serialize)]
pub struct PipelineInfo {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    pub steps: Vec<String>,
    pub triggers: Vec<TriggerInfo>,
    pub location: String,
}

#[derive(Serialize)]
pub struct TriggerInfo {
    pub on: crate::spec::TriggerOn,
    pub pipeline: String,
}

pub fn step_info(graph: &Graph, index: usize) -> StepInfo {
    let step = &graph.steps[index];
    StepInfo {
        name: step.name.clone(),
        desc: step.desc.clone(),
        deps: step
            .deps
            .iter()
            .map(|&d| graph.steps[d].name.clone())
            .collect(),
        run: match &step.run {
            Run::Commands(commands) => commands.iter().map(|c| c.to_string()).collect(),
            Run::Lua(_) => vec!["<lua function>".into()],
        },
        location: step.location.to_string(),
    }
}

pub fn pipeline_info(graph: &Graph, name: &str) -> Option<PipelineInfo> {
    let p = graph.pipelines.get(name)?;
    Some(PipelineInfo {
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
            .map(|t| TriggerInfo {
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
struct GraphJson {
    name: String,
    steps: Vec<StepInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pipeline: Option<PipelineInfo>,
}

pub fn json(graph: &Graph, plan: &Plan) -> String {
    let doc = GraphJson {
        name: plan.name.clone(),
        steps: plan
            .steps
            .iter()
            .map(|p| step_info(graph, p.step))
            .collect(),
        pipeline: pipeline_info(graph, &plan.name),
    };
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}
