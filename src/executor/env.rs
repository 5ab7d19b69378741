//! The environment a step runs with: its own and its pipeline's
//! variables, `--env`, and the `PIPER_*` variables.

use indexmap::IndexMap;

use crate::graph::{Graph, Plan};

use super::options::*;

/// The variables that say what a step's work is, lowest precedence
/// first: `env.set`, pipeline, step, `--env`, then PIPER_ARGS. Its
/// fingerprint covers them; its processes get them and Piper's own
/// ([`with_piper_vars`]).
/// Empty (no allocation) for the usual step that sets none: an up-to-date
/// check needs nothing more.
pub fn work_env(graph: &Graph, plan: &Plan, i: usize, options: &Options) -> Vec<(String, String)> {
    let step = &graph.steps[plan.steps[i].step];
    let layers = [
        &graph.env,
        &plan.steps[i].pipeline_env,
        &step.env,
        &options.env_overrides,
    ];
    let args =
        (!options.args.is_empty()).then(|| ("PIPER_ARGS".to_string(), shell_words(&options.args)));
    if layers.iter().all(|layer| layer.is_empty()) {
        return args.into_iter().collect();
    }
    let mut env: IndexMap<String, String> = IndexMap::new();
    for layer in layers {
        env.extend(layer.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    env.extend(args);
    env.into_iter().collect()
}

/// `work_env` with Piper's own variables on top (PIPER, PIPER_STEP,
/// PIPER_BUILD, PIPER_ROOT): what a step that runs gets.
pub(super) fn with_piper_vars(
    mut env: Vec<(String, String)>,
    graph: &Graph,
    step: &str,
    build: u32,
) -> Vec<(String, String)> {
    let piper_vars = [
        ("PIPER".to_string(), "1".to_string()),
        ("PIPER_STEP".to_string(), step.to_string()),
        ("PIPER_BUILD".to_string(), build.to_string()),
        (
            "PIPER_ROOT".to_string(),
            graph.root.to_string_lossy().into_owned(),
        ),
    ];
    if env.iter().all(|(k, _)| k == "PIPER_ARGS") {
        env.extend(piper_vars);
        return env;
    }
    let mut merged: IndexMap<String, String> = env.into_iter().collect();
    merged.extend(piper_vars);
    merged.into_iter().collect()
}

/// `words` as one shell-quoted string, so `eval set -- $PIPER_ARGS` gives
/// them back.
pub(super) fn shell_words(words: &[String]) -> String {
    let quote = |word: &String| {
        let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
        if !word.is_empty() && word.chars().all(plain) {
            word.clone()
        } else {
            format!("'{}'", word.replace('\'', "'\\''"))
        }
    };
    words.iter().map(quote).collect::<Vec<_>>().join(" ")
}
