//! How piperd's HTTP server takes connections: hyper with limits, so that
//! silent or slow clients cannot make the agent unreachable. The API and
//! the UI it serves are `server/`'s router.

use std::sync::Arc;

use axum::Router;

/// A client must send a request's headers within this, or be disconnected.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Connections served at once (past their first byte); one more is closed.
pub const MAX_CONNECTIONS: usize = 1024;
/// Connections waiting for their first byte at once; one more evicts the
/// oldest of them.
pub const MAX_WAITING: usize = 256;

/// Serves `router` until the task is dropped. Not `axum::serve`: it has no
/// header-read timeout, so a client that sends half a request keeps its
/// connection (and a task) forever.
///
/// Limits, so that silent or slow clients cannot make the agent
/// unreachable (issue 27: ~1,100 connections that sent nothing held every
/// slot, and health went unanswered for a minute):
/// - a connection must send its first byte within `HEADER_READ_TIMEOUT`
///   (hyper's header timeout starts only at the first byte), and a request's
///   headers within it too;
/// - at most `MAX_WAITING` connections wait for their first byte at once:
///   one more evicts the oldest waiting one, so a real request always gets
///   in however many silent ones come;
/// - at most `MAX_CONNECTIONS` are served at once; one more is closed at
///   once rather than left hanging in the backlog.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower_service::Service;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let waiting = Arc::new(Waiting::default());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait instead of spinning.
                tracing::warn!("cannot accept a connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let router = router.clone();
        let (slots, waiting) = (slots.clone(), waiting.clone());
        tokio::spawn(async move {
            if !waiting.first_byte(&stream).await {
                return;
            }
            let Ok(_slot) = slots.try_acquire_owned() else {
                tracing::warn!("{MAX_CONNECTIONS} connections served at once: closing one more");
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                let mut router = router.clone();
                async move { router.call(request).await }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Connections that have not sent a byte yet: each waits at most
/// `HEADER_READ_TIMEOUT`, and past `MAX_WAITING` the oldest is let go.
#[derive(Default)]
struct Waiting {
    queue: std::sync::Mutex<std::collections::VecDeque<(u64, tokio_util::sync::CancellationToken)>>,
    next: std::sync::atomic::AtomicU64,
}

impl Waiting {
    /// Whether `stream` sent something (or closed) in time, and was not
    /// evicted meanwhile.
    async fn first_byte(&self, stream: &tokio::net::TcpStream) -> bool {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let evicted = tokio_util::sync::CancellationToken::new();
        {
            let mut queue = self.queue.lock().unwrap();
            if queue.len() >= MAX_WAITING
                && let Some((_, oldest)) = queue.pop_front()
            {
                oldest.cancel();
            }
            queue.push_back((id, evicted.clone()));
        }
        let mut byte = [0u8; 1];
        let ready = tokio::select! {
            // `peek`, not `readable`: readiness may be reported before a
            // byte has come (a fresh socket is writable at once).
            ready = tokio::time::timeout(HEADER_READ_TIMEOUT, stream.peek(&mut byte)) => {
                matches!(ready, Ok(Ok(_)))
            }
            _ = evicted.cancelled() => false,
        };
        self.queue.lock().unwrap().retain(|(other, _)| *other != id);
        ready
    }
}
