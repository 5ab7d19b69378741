//! One integration test binary (as casey/just does): a file per feature,
//! all built on the `Test` builder in `harness.rs`.

mod harness;
mod history;
mod hooks;

mod agent;
mod agent_faults;
mod agent_leases;
mod agent_security;
mod bench_gen;
mod cache;
mod chaining;
mod cli;
mod cluster;
mod config_cache;
mod doc_snippets;
mod docs;
mod embedding;
mod errors;
mod examples;
mod exec;
mod incremental;
mod layers;
mod log_export;
mod log_search;
mod lua_api;
mod luacats;
mod monitoring;
mod pg;
mod proxy;
pub(crate) mod reapi;
mod regressions;
mod remote_exec;
mod store;
mod supervision;
mod watch;
mod web_ui;
