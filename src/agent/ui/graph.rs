//! A build's step graph as SVG: the planned steps and their deps from the
//! build's `build_started` event (the graph `piper graph` exports), laid
//! out in columns by depth, each node coloured by its step's status.

use std::collections::BTreeMap;

use maud::{Markup, html};

use super::view::StepView;
use crate::event::PlannedStepInfo;

const NODE_W: i64 = 168;
const NODE_H: i64 = 34;
const GAP_X: i64 = 56;
const GAP_Y: i64 = 14;
/// Bigger graphs are left to the steps table: a picture of hundreds of
/// boxes helps nobody, and it would slow the page.
pub const MAX_NODES: usize = 150;

/// Column of each step: 0 for steps without deps, else one more than its
/// deepest dep (deps outside the plan are ignored).
fn depths(planned: &[PlannedStepInfo]) -> BTreeMap<&str, usize> {
    let index: BTreeMap<&str, &PlannedStepInfo> =
        planned.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut depth: BTreeMap<&str, usize> = BTreeMap::new();
    // The plan is a validated DAG; passes until stable, at most N of them.
    for _ in 0..=planned.len() {
        let mut changed = false;
        for step in planned {
            let d = step
                .deps
                .iter()
                .filter(|dep| index.contains_key(dep.as_str()))
                .map(|dep| depth.get(dep.as_str()).map_or(1, |d| d + 1))
                .max()
                .unwrap_or(0);
            if depth.get(step.name.as_str()) != Some(&d) {
                depth.insert(step.name.as_str(), d);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    depth
}

pub fn svg(build_id: i64, planned: &[PlannedStepInfo], steps: &[StepView]) -> Markup {
    let depth = depths(planned);
    let mut rows_in_column: BTreeMap<usize, i64> = BTreeMap::new();
    let mut position: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for step in planned {
        let column = depth.get(step.name.as_str()).copied().unwrap_or(0);
        let row = rows_in_column.entry(column).or_default();
        position.insert(
            step.name.as_str(),
            (
                8 + column as i64 * (NODE_W + GAP_X),
                8 + *row * (NODE_H + GAP_Y),
            ),
        );
        *row += 1;
    }
    let columns = rows_in_column.len().max(1) as i64;
    let rows = rows_in_column.values().copied().max().unwrap_or(1);
    let width = 16 + columns * NODE_W + (columns - 1) * GAP_X;
    let height = 16 + rows * NODE_H + (rows - 1) * GAP_Y;
    let status_of = |name: &str| {
        steps
            .iter()
            .find(|s| s.name == name)
            .map_or("pending", |s| s.status.as_str())
            .to_string()
    };
    html! {
        svg class="graph" role="img" aria-labelledby="graph-title" viewBox=(format!("0 0 {width} {height}"))
            width=(width) height=(height) xmlns="http://www.w3.org/2000/svg" {
            title id="graph-title" { "Step graph: " (planned.len()) " steps" }
            @for step in planned {
                @for dep in &step.deps {
                    @if let (Some(&(x1, y1)), Some(&(x2, y2))) = (position.get(dep.as_str()), position.get(step.name.as_str())) {
                        @let (sx, sy, ex, ey) = (x1 + NODE_W, y1 + NODE_H / 2, x2, y2 + NODE_H / 2);
                        path class="edge" d=(format!("M{sx},{sy} C{},{sy} {},{ey} {ex},{ey}", sx + GAP_X / 2, ex - GAP_X / 2)) {}
                    }
                }
            }
            @for step in planned {
                @if let Some(&(x, y)) = position.get(step.name.as_str()) {
                    @let status = status_of(&step.name);
                    a href=(format!("/builds/{build_id}/steps/{}", super::view::urlencode(&step.name))) {
                        g class=(format!("node status-{status}")) data-step=(step.name) {
                            title { (step.name) ": " (status.replace('_', " ")) }
                            rect x=(x) y=(y) width=(NODE_W) height=(NODE_H) rx="6" {}
                            text x=(x + 12) y=(y + NODE_H / 2 + 5) { (short(&step.name)) }
                        }
                    }
                }
            }
        }
    }
}

/// Names longer than a box holds end in `…` (the title has them whole).
fn short(name: &str) -> String {
    const MAX: usize = 20;
    if name.chars().count() <= MAX {
        name.to_string()
    } else {
        let kept: String = name.chars().take(MAX - 1).collect();
        format!("{kept}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, deps: &[&str]) -> PlannedStepInfo {
        PlannedStepInfo {
            name: name.into(),
            deps: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn steps_sit_one_column_right_of_their_deepest_dep() {
        let planned = [
            step("test", &["build", "lint"]),
            step("build", &["gen"]),
            step("lint", &[]),
            step("gen", &[]),
        ];
        let depth = depths(&planned);
        assert_eq!(depth["gen"], 0);
        assert_eq!(depth["lint"], 0);
        assert_eq!(depth["build"], 1);
        assert_eq!(depth["test"], 2);
    }
}
