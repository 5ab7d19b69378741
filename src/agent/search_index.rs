//! The agent's background indexer: puts the logs of finished builds in
//! the search index (`store/search.rs`), one build at a time, after they
//! finish — never while a build writes its log. Every agent sharing a
//! database runs one; a build is claimed by one of them. It looks for
//! work twice a second (one indexed query), so builds finished here,
//! elsewhere, or before an upgrade are all indexed. It does not listen to
//! the agent's `written` announcements: those are counted as live log
//! followers (`piper_live_followers`).
//!
//! On SQLite, which has one writer at a time, it indexes only while this
//! agent runs no build: its batches would otherwise take the write lock
//! from a running build's log writer. PostgreSQL writes rows side by
//! side, so there it indexes whenever there is work.

use std::sync::Arc;
use std::time::Duration;

use super::worker::Agent;

/// How often an idle indexer looks for work.
const LOOK_EVERY: Duration = Duration::from_millis(500);

pub(crate) async fn run(agent: Arc<Agent>) {
    let one_writer = agent.store.backend_name() == "sqlite";
    loop {
        if one_writer && agent.busy() {
            tokio::time::sleep(LOOK_EVERY).await;
            continue;
        }
        match agent.store.unindexed_builds(16).await {
            Ok(ids) if !ids.is_empty() => {
                for id in ids {
                    if one_writer && agent.busy() {
                        break;
                    }
                    match agent.store.index_log(id).await {
                        Ok(true) => tracing::debug!(build = id, "log indexed for search"),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(build = id, "cannot index the log for search: {e}");
                            tokio::time::sleep(LOOK_EVERY).await;
                        }
                    }
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot look for logs to index: {e}"),
        }
        tokio::time::sleep(LOOK_EVERY).await;
    }
}
