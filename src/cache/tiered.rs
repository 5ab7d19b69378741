//! The caches a run uses: the disk cache, and a remote one behind it
//! (local first: the remote is asked when the disk cache misses, and what
//! it has is downloaded into the disk cache; what runs goes to both).

#[cfg(feature = "remote-cache")]
use std::sync::Arc;

use super::disk::DiskCache;
#[cfg(feature = "remote-cache")]
use super::execute::RemoteExecutor;
#[cfg(feature = "remote-cache")]
use super::remote::RemoteCache;

/// Where a run fetches step results from and stores them: a disk cache,
/// with a remote cache behind it if one is given.
#[derive(Debug, Clone)]
pub struct Cache {
    disk: DiskCache,
    verify: bool,
    #[cfg(feature = "remote-cache")]
    remote: Option<Arc<RemoteCache>>,
    #[cfg(feature = "remote-cache")]
    executor: Option<Arc<RemoteExecutor>>,
}

impl Cache {
    /// The disk cache alone.
    pub fn new(disk: DiskCache) -> Cache {
        Cache {
            disk,
            verify: false,
            #[cfg(feature = "remote-cache")]
            remote: None,
            #[cfg(feature = "remote-cache")]
            executor: None,
        }
    }

    /// `--cache-verify`: a step the cache holds runs anyway, and what it
    /// makes is compared with what the cache holds; each difference is a
    /// warning (the step reads something its inputs do not name). Nothing
    /// is fetched; a step the cache does not hold is stored as usual.
    pub fn verify(mut self, verify: bool) -> Cache {
        self.verify = verify;
        self
    }

    pub(crate) fn verifies(&self) -> bool {
        self.verify
    }

    /// A remote cache behind the disk cache.
    #[cfg(feature = "remote-cache")]
    pub fn with_remote(mut self, remote: RemoteCache) -> Cache {
        self.remote = Some(Arc::new(remote));
        self
    }

    /// The same caches without the remote one (nor the executor, whose
    /// results the cluster caches): for a step (or a run of a pipeline)
    /// that says `remote_cache = false`.
    pub(crate) fn local_only(self) -> Cache {
        self.without_remote(true)
    }

    /// A remote executor: steps with an action key run on its cluster.
    #[cfg(feature = "remote-cache")]
    pub fn with_executor(mut self, executor: RemoteExecutor) -> Cache {
        self.executor = Some(Arc::new(executor));
        self
    }

    /// The same caches without the remote executor: for a step that says
    /// `remote = false`.
    pub(crate) fn here_only(self) -> Cache {
        self.without_remote(false)
    }

    /// Without the remote executor, and without the remote cache too when
    /// `cache` says so.
    #[allow(unused_mut, unused_variables)] // without feature remote-cache
    fn without_remote(mut self, cache: bool) -> Cache {
        #[cfg(feature = "remote-cache")]
        {
            self.executor = None;
            if cache {
                self.remote = None;
            }
        }
        self
    }

    #[cfg(feature = "remote-cache")]
    pub(crate) fn executor(&self) -> Option<&RemoteExecutor> {
        self.executor.as_deref()
    }

    /// The disk cache.
    pub fn disk(&self) -> &DiskCache {
        &self.disk
    }

    #[cfg(feature = "remote-cache")]
    pub(crate) fn remote(&self) -> Option<&RemoteCache> {
        self.remote.as_deref()
    }
}
