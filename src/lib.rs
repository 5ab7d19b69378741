//! Piper: a build engine whose pipelines are Lua code, as a library.
//!
//! An [`Engine`] — with the Lua modules and the step [`Runner`] its host
//! adds — loads a project: its `piper.lua` is evaluated (or read from the
//! configuration cache) into a validated graph of steps, a [`Project`]. A
//! host inspects it ([`Project::pipelines`], [`Project::steps`],
//! [`Project::explain`]) and runs pipelines or steps with [`RunOptions`];
//! the [`Run`] yields the typed [`Event`] stream every Piper host consumes
//! (the terminal, `--json`, `piper watch`, piperd) and ends in an
//! [`Outcome`] with the exit code `piper exec` would have.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("piper-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! std::fs::write(
//!     dir.join("piper.lua"),
//!     r#"pipeline "hello" { step "greet" { run = "echo hello from $PIPER_STEP" } }"#,
//! )?;
//! let project = piper::Engine::new().load(&dir)?;
//! assert_eq!(project.pipelines()[0].steps, ["greet"]);
//!
//! let runtime = tokio::runtime::Runtime::new()?;
//! let outcome = runtime.block_on(async {
//!     let mut run = project.run(&["hello"], piper::RunOptions::default().jobs(2))?;
//!     let mut output = Vec::new();
//!     while let Some(event) = run.next_event().await {
//!         if let piper::Event::StepOutput { data, .. } = event {
//!             output.extend(data);
//!         }
//!     }
//!     assert_eq!(output, b"hello from greet\n");
//!     run.wait().await
//! })?;
//! assert_eq!(outcome.exit_code, 0);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
//! `docs/embedding.md` explains the extension points and what is stable;
//! `examples/embed/` is a small host. Data flows one way (see
//! docs/architecture.md): `project` finds piper.lua → `lua` evaluates it
//! into a `spec::RawSpec` → `graph` validates it into a `graph::Graph` and
//! plans a build → `executor` runs the plan (commands through the
//! [`Runner`], Lua steps through `lua_step`) and emits [`Event`]s → a host
//! consumes them.

#![warn(missing_docs)]

mod engine;

pub use changes::{Affected, Change};
pub use engine::{
    BuildOutcome, Engine, Explanation, Outcome, PipelineInfo, Project, Run, RunOptions, StepInfo,
};
pub use error::{Error, Result};
pub use event::{BuildStatus, Event, PlannedStepInfo, RanOn, StepStatus, TriggeredBy};
pub use runner::{Command, CommandRun, Exit, LocalRunner, OutputSink, RunFuture, Runner};
pub use spec::TriggerOn;

#[cfg(feature = "cache")]
pub use cache::{Cache, DiskCache};
#[cfg(feature = "remote-cache")]
pub use cache::{RemoteCache, RemoteExecutor};

/// The Lua bindings host modules are written with
/// ([`Engine::with_module`]): the same `mlua` Piper uses.
pub use mlua;

// The engine: private to the crate, reached through the API above.
#[cfg(feature = "cache")]
pub(crate) mod cache;
pub(crate) mod changes;
pub(crate) mod config_cache;
#[cfg(any(feature = "cli", feature = "agent"))]
pub(crate) mod config_file;
pub(crate) mod cron;
pub(crate) mod digest;
pub(crate) mod duration;
pub(crate) mod error;
pub(crate) mod event;
pub(crate) mod executor;
pub(crate) mod explain;
pub(crate) mod file_stamp;
pub(crate) mod fingerprint;
pub(crate) mod fsutil;
pub(crate) mod glob;
pub(crate) mod graph;
pub(crate) mod host;
pub(crate) mod lazy_lua;
pub(crate) mod location;
pub(crate) mod lua;
pub(crate) mod lua_step;
pub(crate) mod paths;
pub(crate) mod process;
pub(crate) mod project;
pub(crate) mod reaper;
pub(crate) mod recording;
pub(crate) mod root_dir;
pub(crate) mod runner;
pub(crate) mod spec;
pub(crate) mod stamps;
pub(crate) mod state;
pub(crate) mod suggest;

// The hosts around the engine, each a directory: `cli` (the `piper`
// command: exec, watch, list, the remote client, the terminal renderer) and
// `agent` (piperd: HTTP API, store, workers, web UI). They stay reachable,
// hidden, because the binaries call their `main` (and piperd's tests and
// queue benchmark drive its store); neither is part of the API above and
// both change without notice (docs/embedding.md, "What is stable").
#[cfg(feature = "agent")]
#[doc(hidden)]
pub mod agent;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;

/// What this package's own tests read of the insides (the step fields the
/// docs must list, the command line the CLI reference must cover). Not API.
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod internals {
    pub use crate::cli::args::Cli;
    pub use crate::spec::STEP_FIELDS;
}
