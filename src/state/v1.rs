//! Records as state format 1 kept them (an earlier Piper): every digest as
//! hex text, and a few labels where a digest now goes. Read from
//! `state.bin`, `state.log` and `state.json`, and upgraded without loss:
//! a step up to date before the upgrade is up to date after it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::SmallMap;
use crate::digest::Digest;
use crate::fingerprint::DEPFILE_MISSING;

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
    fingerprint: String,
    command: String,
    env: SmallMap<String>,
    inputs: SmallMap<FileStamp>,
    deps: SmallMap<String>,
    #[serde(default)]
    discovered: BTreeSet<String>,
    #[serde(default)]
    outputs: Option<String>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct FileStamp {
    size: u64,
    mtime_ns: i128,
    hash: String,
}

/// A named format-1 record as this format keeps it.
pub fn upgrade((step, old): (String, StepRecord)) -> (String, super::StepRecord) {
    let digests = |map: SmallMap<String>| map.into_iter().map(|(k, v)| (k, digest(&v))).collect();
    let inputs = (old.inputs.into_iter())
        .map(|(path, stamp)| {
            let stamp = super::FileStamp {
                size: stamp.size,
                mtime_ns: stamp.mtime_ns,
                hash: digest(&stamp.hash),
            };
            (path, stamp)
        })
        .collect();
    let record = super::StepRecord {
        fingerprint: digest(&old.fingerprint),
        command: old.command,
        env: digests(old.env),
        inputs,
        deps: digests(old.deps),
        discovered: old.discovered,
        outputs: old.outputs.as_deref().map(digest),
    };
    (step, record)
}

/// What format 1's text for a digest is now. Dependents recorded an
/// outputs digest as `outputs <hex>`; a step whose depfile was missing had
/// the fingerprint `depfile-missing`; other labels (`skipped`, ...) become
/// the digest of their text, as this format makes them.
fn digest(text: &str) -> Digest {
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
    use crate::state::{MAGIC, STATE_FILE, STATE_LOG, State};

    /// A record whose every digest is distinct, with both kinds of
    /// dependency (one showing its outputs), and the same record as
    /// format 1 wrote it.
    fn both_formats() -> (super::super::StepRecord, StepRecord) {
        let d = |n: u8| Digest([n; 32]);
        let hex = |n: u8| d(n).to_string();
        let mut record = super::super::StepRecord {
            fingerprint: d(1),
            command: "cc -c a.c".into(),
            outputs: Some(d(2)),
            ..Default::default()
        };
        record.env.insert("CC".into(), d(3));
        record.deps.insert("gen".into(), d(4));
        record.deps.insert("tool".into(), d(5));
        let stamp = super::super::FileStamp {
            size: 9,
            mtime_ns: 7,
            hash: d(6),
        };
        record.inputs.insert("a.c".into(), stamp);
        record.discovered.insert("a.h".into());
        let mut old = StepRecord {
            fingerprint: hex(1),
            command: "cc -c a.c".into(),
            env: [("CC".to_string(), hex(3))].into_iter().collect(),
            inputs: SmallMap::new(),
            deps: SmallMap::new(),
            discovered: ["a.h".to_string()].into_iter().collect(),
            outputs: Some(hex(2)),
        };
        old.deps.insert("gen".into(), format!("outputs {}", hex(4)));
        old.deps.insert("tool".into(), hex(5));
        let stamp = FileStamp {
            size: 9,
            mtime_ns: 7,
            hash: hex(6),
        };
        old.inputs.insert("a.c".into(), stamp);
        (record, old)
    }

    #[test]
    fn format_1_is_read_from_the_log_and_the_binary_file_without_loss() {
        let (record, old) = both_formats();
        let tmp = tempfile::tempdir().unwrap();
        let dir = State::dir(tmp.path());
        std::fs::create_dir_all(&dir).unwrap();
        let line = serde_json::json!({"version": 1, "step": "cc", "record": &old});
        std::fs::write(dir.join(STATE_LOG), format!("{line}\n")).unwrap();
        assert_eq!(State::load(tmp.path()).steps["cc"], record);
        std::fs::remove_file(dir.join(STATE_LOG)).unwrap();

        let steps: std::collections::BTreeMap<&str, &StepRecord> = [("cc", &old)].into();
        let payload = postcard::to_stdvec(&steps).unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&crate::fsutil::checksum(&payload));
        bytes.extend_from_slice(&payload);
        std::fs::write(dir.join(STATE_FILE), &bytes).unwrap();
        let state = State::load(tmp.path());
        assert_eq!(
            (state.steps["cc"].clone(), state.warning),
            (record.clone(), None)
        );
        // With nothing to fold, the next build's end still rewrites it in
        // this format, once.
        State::compact(tmp.path()).unwrap();
        let now = std::fs::read(dir.join(STATE_FILE)).unwrap();
        assert_ne!(now, bytes);
        assert_eq!(now[MAGIC.len()], 2);
        assert_eq!(State::load(tmp.path()).steps["cc"], record);
    }

    #[test]
    fn labels_become_the_digests_this_format_uses() {
        assert_eq!(digest("depfile-missing"), DEPFILE_MISSING);
        assert_eq!(digest("skipped"), Digest::of(b"skipped"));
        let hex = Digest([9; 32]).to_string();
        assert_eq!(digest(&format!("outputs {hex}")), Digest([9; 32]));
    }
}
