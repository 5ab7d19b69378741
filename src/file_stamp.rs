//! File stamps: a file's size, mtime and content hash, as a step's inputs
//! and the configuration cache's reads record them, and the rules for
//! trusting an mtime. Below the state, the fingerprint and the
//! configuration cache, which all keep stamps; above `root_dir.rs`, which
//! stats the files.

use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::root_dir::{FileMeta, RootDir};

/// Files modified less than this before they were stamped are re-read on
/// the next check: file timestamps come from a coarse clock (a kernel tick,
/// seconds on some filesystems), so an edit within it may not move them.
const RACY_WINDOW_NS: i128 = 2_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub size: u64,
    pub mtime_ns: i128,
    pub hash: Digest,
}

/// Nanoseconds since the Unix epoch, for [`stamp_file`].
pub fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// Size, mtime and content hash of the file at `rel` (root-relative or
/// absolute); the hash of `previous` is reused when size and mtime did not
/// move.
pub fn stamp_file(
    root: &RootDir,
    rel: &str,
    previous: Option<&FileStamp>,
    now_ns: i128,
) -> std::io::Result<FileStamp> {
    let meta = root.stat(rel)?;
    if !meta.is_file {
        // A directory named as an input is not a file input.
        return Err(std::io::ErrorKind::NotFound.into());
    }
    let reuse = previous
        .filter(|old| old.size == meta.size && old.mtime_ns == meta.mtime_ns && meta.mtime_ns != 0);
    match reuse {
        Some(old) => Ok(FileStamp {
            size: old.size,
            mtime_ns: trust_mtime(meta.mtime_ns, now_ns),
            hash: old.hash,
        }),
        None => Ok(stamp_content(
            meta,
            &std::fs::read(root.path().join(rel))?,
            now_ns,
        )),
    }
}

/// The stamp of content already read, with the metadata taken *before*
/// reading it: a write after the stat moves the mtime, so the next check
/// hashes again instead of trusting a hash of older content.
pub fn stamp_content(meta: impl Into<FileMeta>, content: &[u8], now_ns: i128) -> FileStamp {
    let meta = meta.into();
    FileStamp {
        size: meta.size,
        mtime_ns: trust_mtime(meta.mtime_ns, now_ns),
        hash: Digest::of(content),
    }
}

/// "Racy clean" (git's rule): a file modified so recently that a same-size
/// rewrite could keep its mtime is stamped without one (0), so the next
/// check reads it again instead of trusting the mtime.
pub fn trust_mtime(mtime_ns: i128, now_ns: i128) -> i128 {
    if now_ns - mtime_ns < RACY_WINDOW_NS {
        0
    } else {
        mtime_ns
    }
}
