//! The agent's background indexer: puts the logs of finished builds in
//! the search index (`store/search.rs`), one build at a time, after they
//! finish — never while a build writes its log. Every agent sharing a
//! database runs one; a build is claimed by one of them. Woken when a
//! build's log grows (its end follows) and every few seconds besides, so
//! builds finished elsewhere, or before an upgrade, are indexed too.

use std::sync::Arc;
use std::time::Duration;

use super::worker::Agent;

/// How often an idle indexer looks for work it was not told about.
const LOOK_EVERY: Duration = Duration::from_secs(2);

pub(crate) async fn run(agent: Arc<Agent>) {
    let mut written = agent.written.subscribe();
    loop {
        match agent.store.unindexed_builds(16).await {
            Ok(ids) if !ids.is_empty() => {
                for id in ids {
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
        tokio::select! {
            told = written.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = told {
                    tokio::time::sleep(LOOK_EVERY).await;
                }
            }
            _ = tokio::time::sleep(LOOK_EVERY) => {}
        }
    }
}
