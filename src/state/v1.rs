//! Records as state format 1 kept them (an earlier Piper): every digest as
//! hex text, and a few labels where a digest now goes. Read from
//! `state.bin`, `state.log` and `state.json`, and upgraded without loss:
//! a step up to date before the upgrade is up to date after it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::digest::DEPFILE_MISSING;
use crate::digest::Digest;

/// The maps of a record, as the current format keeps them too.
type SmallMap<V> = litemap::LiteMap<String, V>;

/// `state.json` as Piper before 0.2 wrote it.
#[derive(Deserialize)]
pub struct StateFile {
    pub version: u32,
    pub steps: BTreeMap<String, StepRecord>,
}

/// Field for field as format 1 wrote it (postcard has no field names: the
/// order is the format).
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub struct StepRecord {
    pub(super) fingerprint: String,
    pub(super) command: String,
    pub(super) env: SmallMap<String>,
    pub(super) inputs: SmallMap<FileStamp>,
    pub(super) deps: SmallMap<String>,
    #[serde(default)]
    pub(super) discovered: BTreeSet<String>,
    #[serde(default)]
    pub(super) outputs: Option<String>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct FileStamp {
    pub(super) size: u64,
    pub(super) mtime_ns: i128,
    pub(super) hash: String,
}

/// What format 1's text for a digest is now. Dependents recorded an
/// outputs digest as `outputs <hex>`; a step whose depfile was missing had
/// the fingerprint `depfile-missing`; other labels (`skipped`, ...) become
/// the digest of their text, as this format makes them.
pub(super) fn digest(text: &str) -> Digest {
    let hex = text.strip_prefix("outputs ").unwrap_or(text);
    match Digest::from_hex(hex) {
        Some(digest) => digest,
        None if text == "depfile-missing" => DEPFILE_MISSING,
        None => Digest::of(text.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_become_the_digests_this_format_uses() {
        assert_eq!(digest("depfile-missing"), DEPFILE_MISSING);
        assert_eq!(digest("skipped"), Digest::of(b"skipped"));
        let hex = Digest([9; 32]).to_string();
        assert_eq!(digest(&format!("outputs {hex}")), Digest([9; 32]));
    }
}
