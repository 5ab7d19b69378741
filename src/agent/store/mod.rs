//! Where piperd keeps builds, steps and logs: embedded SQLite by default,
//! PostgreSQL when several agents share one database.
//!
//! One `Store` with a backend per database, rather than two copies of every
//! method: the queries are the same text on both (runtime queries, `$N`
//! parameters in increasing order, which SQLite reads as named parameters),
//! and `on_backend!` instantiates each method body once per backend. SQL
//! that differs lives in per-backend constants, and each backend has its own
//! migrations (`migrations/sqlite`, `migrations/postgres`), applied at start.
//!
//! `backend.rs`: the backends, opening and migrating. The methods are grouped by
//! what they keep: `queue.rs` (builds, claims, leases, hand-backs, steps),
//! `logs.rs` (log chunks and events), `cluster.rs` (agents, the leader,
//! schedules, bundles), `access.rs` (API tokens, sessions); the values
//! they answer with are in `model.rs`.

/// Runs `$body` with `$pool` bound to the backend's pool: one text, two
/// instantiations.
macro_rules! on_backend {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

mod access;
mod backend;
mod cluster;
mod history;
mod logs;
mod model;
mod queue;
mod search;
mod steps;

pub use backend::{Store, StoreResult, now_ms};
pub use history::StepRun;
pub use model::*;
pub use search::{SearchFilter, SearchHit};
