//! The executor: runs a [`Plan`] with up to `jobs` steps at a time, in
//! dependency order, and says everything it does as [`Event`]s. It is the
//! one engine behind `piper exec`, `--json`, watch and piperd; hosts differ
//! only in what they do with the events.
//!
//! Scheduling: a step is *queued* when all its dependencies are done and
//! *started* when a job slot is free; among queued steps the one defined
//! first starts first. A failure stops new starts and cancels running steps
//! (fail-fast) unless `keep_going`, which lets independent branches finish.
//! When a build ends, the target pipelines' triggers start chained builds.

mod build;
#[cfg(feature = "cache")]
mod cached;
mod env;
mod job;
mod options;
mod remote;
mod scheduler;

pub use build::run;
pub use env::work_env;
pub use options::*;
