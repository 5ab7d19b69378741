//! The Lua state behind a graph's function steps (`run = function(ctx)`,
//! `when = function()`). A freshly evaluated graph has it already; a graph
//! loaded from the configuration cache (`config_cache.rs`) has none, and
//! creates it — by evaluating `piper.lua` once more — only when such a step
//! is about to run. Builds whose Lua steps are all up to date never pay for
//! a Lua state.

use std::sync::OnceLock;

use mlua::{Function, Lua};

use crate::project::Located;
use crate::spec::StepFunctions;

pub struct LazyLua {
    /// The project to evaluate on first need (a cached graph), else None.
    project: Option<Located>,
    /// Step names in graph order: a deferred evaluation must define the
    /// same steps, or the cached graph no longer describes the config.
    names: Vec<String>,
    state: OnceLock<Result<Loaded, String>>,
}

struct Loaded {
    lua: Lua,
    /// By step index in the graph.
    functions: Vec<StepFunctions>,
}

impl LazyLua {
    /// A state that exists: the one the graph was evaluated in.
    pub fn ready(lua: Lua, functions: Vec<StepFunctions>) -> LazyLua {
        LazyLua {
            project: None,
            names: Vec::new(),
            state: OnceLock::from(Ok(Loaded { lua, functions })),
        }
    }

    /// No state and no way to make one, until `Graph::revive` sets it.
    pub fn none() -> LazyLua {
        LazyLua {
            project: None,
            names: Vec::new(),
            state: OnceLock::new(),
        }
    }

    /// A state created from `project` when a function is first asked for.
    pub fn deferred(project: Located, names: Vec<String>) -> LazyLua {
        LazyLua {
            project: Some(project),
            names,
            state: OnceLock::new(),
        }
    }

    /// The state and the `run` function of step `index`.
    pub fn run_function(&self, index: usize) -> Result<(&Lua, Function), String> {
        let loaded = self.load()?;
        let function = loaded.functions.get(index).and_then(|f| f.run.clone());
        function
            .map(|f| (&loaded.lua, f))
            .ok_or_else(|| "internal: the step has no Lua function".to_string())
    }

    /// The `when` function of step `index`.
    pub fn when_function(&self, index: usize) -> Result<Function, String> {
        let loaded = self.load()?;
        let function = loaded.functions.get(index).and_then(|f| f.when.clone());
        function.ok_or_else(|| "internal: the step has no `when` function".to_string())
    }

    fn load(&self) -> Result<&Loaded, String> {
        self.state
            .get_or_init(|| self.evaluate())
            .as_ref()
            .map_err(Clone::clone)
    }

    fn evaluate(&self) -> Result<Loaded, String> {
        let Some(project) = &self.project else {
            return Err("internal: no Lua state and no project to evaluate".into());
        };
        tracing::debug!("creating the Lua state for a function step");
        let (lua, spec) = crate::lua::evaluate(project).map_err(|e| e.to_string())?;
        let names: Vec<&str> = spec.steps.iter().map(|s| s.name.as_str()).collect();
        if names != self.names.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err(format!(
                "{} defines other steps than when this build started (was it edited meanwhile?); run again",
                project.config_display_name()
            ));
        }
        let functions = spec.steps.into_iter().map(|s| s.functions).collect();
        Ok(Loaded { lua, functions })
    }
}
