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

pub use engine::{
    BuildOutcome, Engine, Explanation, Outcome, PipelineInfo, Project, Run, RunOptions, StepInfo,
};
pub use error::{Error, Result};
pub use event::{BuildStatus, Event, StepStatus};
pub use runner::{Command, CommandRun, Exit, LocalRunner, OutputSink, RunFuture, Runner};

/// The Lua bindings host modules are written with
/// ([`Engine::with_module`]): the same `mlua` Piper uses.
pub use mlua;

// The modules below are Piper's insides. The hosts in this package (the
// `piper` and `piperd` binaries: `app`, `cli`, `client`, `agent`, `render`,
// `watch`) and its tests use them; they are not part of the API above and
// change without notice (docs/embedding.md, "What is stable").
#[doc(hidden)]
pub mod agent;
#[doc(hidden)]
pub mod app;
#[doc(hidden)]
pub mod cli;
#[doc(hidden)]
pub mod client;
#[doc(hidden)]
pub mod config_cache;
#[doc(hidden)]
pub mod config_file;
#[doc(hidden)]
pub mod cron;
#[doc(hidden)]
pub mod duration;
#[doc(hidden)]
pub mod error;
#[doc(hidden)]
pub mod event;
#[doc(hidden)]
pub mod executor;
#[doc(hidden)]
pub mod explain;
#[doc(hidden)]
pub mod export;
#[doc(hidden)]
pub mod fingerprint;
#[doc(hidden)]
pub mod fsutil;
#[doc(hidden)]
pub mod glob;
#[doc(hidden)]
pub mod graph;
#[doc(hidden)]
pub mod host;
#[doc(hidden)]
pub mod lazy_lua;
#[doc(hidden)]
pub mod location;
#[doc(hidden)]
pub mod lua;
#[doc(hidden)]
pub mod lua_step;
#[doc(hidden)]
pub mod paths;
#[doc(hidden)]
pub mod process;
#[doc(hidden)]
pub mod project;
#[doc(hidden)]
pub mod reaper;
#[doc(hidden)]
pub mod render;
#[doc(hidden)]
pub mod reproduce;
#[doc(hidden)]
pub mod runner;
#[doc(hidden)]
pub mod spec;
#[doc(hidden)]
pub mod stamps;
#[doc(hidden)]
pub mod state;
#[doc(hidden)]
pub mod suggest;
#[doc(hidden)]
pub mod watch;
#[doc(hidden)]
pub mod working_tree;
