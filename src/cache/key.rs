//! A step's action key (see `cache/mod.rs`), and which steps have one.

use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::graph::Step;

/// Bumped when what a key covers changes: old entries are then misses.
const KEY_VERSION: &str = "piper-action-v1";

/// A step's action key: SHA-256, as hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ActionKey(pub(crate) String);

impl ActionKey {
    /// The key of `step` whose up-to-date fingerprint is `fingerprint`.
    pub(crate) fn new(step: &Step, root: &Path, fingerprint: &Digest) -> ActionKey {
        let mut hasher = Sha256::new();
        let mut field = |name: &str, value: &[u8]| {
            hasher.update(name.as_bytes());
            hasher.update(b"=");
            hasher.update((value.len() as u64).to_le_bytes());
            hasher.update(value);
        };
        field("version", KEY_VERSION.as_bytes());
        field("fingerprint", fingerprint.to_string().as_bytes());
        let dir = step.dir.strip_prefix(root).unwrap_or(&step.dir);
        field("dir", dir.to_string_lossy().as_bytes());
        for output in &step.outputs {
            field("output", output.as_bytes());
        }
        field("os", std::env::consts::OS.as_bytes());
        field("arch", std::env::consts::ARCH.as_bytes());
        for (name, value) in &step.requires {
            field("requires", format!("{name}={value}").as_bytes());
        }
        ActionKey(hex::encode(hasher.finalize()))
    }
}

/// Whether the cache may hold `step`'s results: the up-to-date check can
/// judge it (inputs and outputs declared), it is no service, and it did
/// not opt out (`cache = false`).
/// A step with a depfile is not: its inputs are only known after its
/// first run here, so a key made before it could not cover them.
pub(crate) fn cacheable(step: &Step) -> bool {
    !step.inputs.is_empty()
        && !step.outputs.is_empty()
        && step.depfile.is_none()
        && !step.service
        && step.cache
}
