//! Piper: a build engine whose pipelines are Lua code.
//!
//! Data flows one way (see docs/architecture.md):
//! `project` finds piper.lua → `lua` evaluates it into a `spec::RawSpec`
//! (what the user wrote) → `graph` validates it into a `graph::Graph` (what
//! will run) and plans a build → `executor` runs the plan, supervising
//! processes through `process` and Lua steps through `lua_step`, and emits
//! `event::Event`s → a host (`render::Terminal`, `render::JsonLines`, …)
//! consumes them.

pub mod agent;
pub mod app;
pub mod cli;
pub mod client;
pub mod config_cache;
pub mod config_file;
pub mod cron;
pub mod duration;
pub mod error;
pub mod event;
pub mod executor;
pub mod explain;
pub mod export;
pub mod fingerprint;
pub mod fsutil;
pub mod glob;
pub mod graph;
pub mod lazy_lua;
pub mod location;
pub mod lua;
pub mod lua_step;
pub mod paths;
pub mod process;
pub mod project;
pub mod reaper;
pub mod render;
pub mod reproduce;
pub mod spec;
pub mod stamps;
pub mod state;
pub mod suggest;
pub mod watch;
pub mod working_tree;
