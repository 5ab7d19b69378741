//! Step results shared between checkouts: a step that would run (stale)
//! and that the up-to-date check can judge (declared inputs and outputs,
//! not a service) has an **action key**; before it runs, the cache is asked
//! for the key, and on a hit its outputs and its output log are fetched
//! instead of running it. After it succeeds, its outputs and log are
//! stored under the key.
//!
//! The key is the digest of the step's Remote Execution API `Action`
//! (`key.rs`): its command line, variables, outputs and working directory,
//! the platform (os, arch, `requires`), and the Merkle tree of what it
//! reads (its declared inputs and the files its dependencies made,
//! `tree.rs`). Nothing in it depends on where the checkout is, so every
//! checkout of a machine (piperd's build workspaces, a second clone) and
//! every machine sharing a remote cache shares results. Blobs are
//! addressed by SHA-256, in the layout of Bazel's disk cache (`ac/`,
//! `cas/`); a remote cache (`remote.rs`) speaks Bazel's HTTP protocol
//! (`http.rs`) or REAPI over gRPC (`grpc.rs`).
//!
//! The cache never breaks a build: an entry that cannot be read, or a blob
//! whose digest does not match, is a miss (reported as a warning); outputs
//! are written to a temporary file beside their place and renamed, so a
//! failed fetch leaves nothing half-written.
//!
//! Sits beside the executor, below it: `executor/job.rs` asks and stores.

#[cfg(feature = "remote-cache")]
mod action_result;
mod disk;
#[cfg(feature = "remote-cache")]
mod error_chain;
#[cfg(feature = "remote-cache")]
mod execute;
#[cfg(feature = "remote-cache")]
mod grpc;
#[cfg(feature = "remote-cache")]
mod http;
mod key;
mod proto;
#[cfg(feature = "remote-cache")]
mod remote;
mod symlink;
mod tiered;
mod tree;

pub use disk::DiskCache;
pub(crate) use disk::{Entry, Fetched};
// The remote CLI formats its request errors the same way.
#[cfg(feature = "cli")]
pub(crate) use error_chain::chain as error_chain;
#[cfg(feature = "remote-cache")]
pub(crate) use execute::ExecError;
#[cfg(feature = "remote-cache")]
pub use execute::RemoteExecutor;
#[cfg(feature = "remote-cache")]
pub(crate) use key::ActionParts;
pub(crate) use key::{ActionKey, cacheable};
#[cfg(feature = "remote-cache")]
pub use remote::RemoteCache;
pub use tiered::Cache;

/// `bytes` for a person: `812 B`, `3.4 KB`, `1.2 MB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    match bytes {
        0..1000 => format!("{bytes} B"),
        1000..1_000_000 => format!("{:.1} KB", bytes as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", bytes as f64 / 1e6),
        _ => format!("{:.1} GB", bytes as f64 / 1e9),
    }
}
