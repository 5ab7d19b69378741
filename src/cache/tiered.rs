//! The caches a run uses: the disk cache, and a remote one behind it
//! (local first: the remote is asked when the disk cache misses, and what
//! it has is downloaded into the disk cache; what runs goes to both).

#[cfg(feature = "remote-cache")]
use std::sync::Arc;

use super::disk::DiskCache;
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
}

impl Cache {
    /// The disk cache alone.
    pub fn new(disk: DiskCache) -> Cache {
        Cache {
            disk,
            verify: false,
            #[cfg(feature = "remote-cache")]
            remote: None,
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

    /// The same caches without the remote one: for a step (or a run of a
    /// pipeline) that says `remote_cache = false`.
    #[allow(unused_mut)] // written with a remote cache only
    pub(crate) fn local_only(mut self) -> Cache {
        #[cfg(feature = "remote-cache")]
        {
            self.remote = None;
        }
        self
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
