//! A build an agent holds while it runs it: the attempt its writes carry,
//! what stops it, which run of the executor it belongs to, and whether the
//! agent gave it up (self-fenced). Shared by the worker, which renews and
//! fences, and the recorder, which writes.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// A build this agent holds: the attempt its writes carry, and what stops it.
#[derive(Clone)]
pub struct Held {
    pub attempt: i64,
    pub token: CancellationToken,
    /// Which run of the executor holds it (a build and its chained ones).
    pub(super) run: u64,
    /// Set when the agent gave this attempt up (it could not renew the
    /// lease in time): nothing more is written for it but why.
    pub(super) fenced: Arc<std::sync::atomic::AtomicBool>,
}

impl Held {
    pub(super) fn new(attempt: i64, token: CancellationToken, run: u64) -> Held {
        Held {
            attempt,
            token,
            run,
            fenced: Arc::default(),
        }
    }

    pub(super) fn is_fenced(&self) -> bool {
        self.fenced.load(std::sync::atomic::Ordering::SeqCst)
    }
}
