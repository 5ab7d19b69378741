//! What Piper remembers between runs, in `.piper/` at the project root: for
//! each step that declares `inputs`, the record of its last successful run.
//!
//! Crash safety: each finished step appends one JSON line to
//! `.piper/state.log` (a torn last line from a SIGKILL is ignored); at the
//! end of a build the log is folded into `.piper/state.json`, written to a
//! temporary file and renamed over the old one. A state file of another
//! format version, or one that cannot be parsed, is reported and ignored:
//! everything is rebuilt, nothing crashes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bump when the record format changes; older state is then ignored.
pub const STATE_VERSION: u32 = 1;
pub const STATE_DIR: &str = ".piper";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub size: u64,
    pub mtime_ns: i128,
    pub hash: String,
}

/// The last successful run of a step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub fingerprint: String,
    /// What ran (the command lines, or the Lua function's source).
    pub command: String,
    /// blake3 of each variable's value (values may be secrets).
    pub env: BTreeMap<String, String>,
    pub inputs: BTreeMap<String, FileStamp>,
    /// Fingerprints of the dependencies it ran after.
    pub deps: BTreeMap<String, String>,
    /// Files its depfile listed after the run (root-relative, or absolute
    /// outside the root): inputs next time too.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub discovered: std::collections::BTreeSet<String>,
    /// blake3 of the declared outputs after its last run: what dependents
    /// see of it, so a rerun that made the same outputs leaves them up to
    /// date (early cutoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    steps: BTreeMap<String, StepRecord>,
}

#[derive(Serialize, Deserialize)]
struct LogLine {
    version: u32,
    step: String,
    record: StepRecord,
}

pub struct State {
    dir: PathBuf,
    pub steps: BTreeMap<String, StepRecord>,
    /// Set when the state on disk could not be used (shown to the user).
    pub warning: Option<String>,
}

impl State {
    pub fn dir(root: &Path) -> PathBuf {
        root.join(STATE_DIR)
    }

    /// Loads the state of the project at `root`; never fails.
    pub fn load(root: &Path) -> State {
        let dir = Self::dir(root);
        let mut state = State {
            dir: dir.clone(),
            steps: BTreeMap::new(),
            warning: None,
        };
        match std::fs::read(dir.join("state.json")) {
            Err(_) => {}
            Ok(bytes) => match serde_json::from_slice::<StateFile>(&bytes) {
                Ok(file) if file.version == STATE_VERSION => state.steps = file.steps,
                Ok(file) => {
                    state.warning = Some(format!(
                        "{} is from state format {} (this piper uses {STATE_VERSION}); rebuilding every step",
                        dir.join("state.json").display(),
                        file.version
                    ))
                }
                Err(e) => {
                    state.warning = Some(format!(
                        "{} is unreadable ({e}); rebuilding every step",
                        dir.join("state.json").display()
                    ))
                }
            },
        }
        if let Ok(text) = std::fs::read_to_string(dir.join("state.log")) {
            for line in text.lines() {
                // A line cut short by a kill does not parse: skip it.
                if let Ok(entry) = serde_json::from_str::<LogLine>(line)
                    && entry.version == STATE_VERSION
                {
                    state.steps.insert(entry.step, entry.record);
                }
            }
        }
        state
    }

    /// Records a successful run, durably enough to survive a kill of piper.
    pub fn append(&self, step: &str, record: &StepRecord) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let line = serde_json::to_string(&LogLine {
            version: STATE_VERSION,
            step: step.to_string(),
            record: record.clone(),
        })?;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("state.log"))?;
        // One write call per line: a kill leaves whole lines or a torn tail.
        log.write_all(format!("{line}\n").as_bytes())
    }

    /// Folds the log into state.json (atomically) and removes the log.
    pub fn compact(root: &Path) -> std::io::Result<()> {
        let dir = Self::dir(root);
        // Nothing ran since the last fold (a no-op build): nothing to write.
        if !dir.join("state.log").exists() {
            return Ok(());
        }
        let state = State::load(root);
        std::fs::create_dir_all(&dir)?;
        let file = StateFile {
            version: STATE_VERSION,
            steps: state.steps,
        };
        crate::fsutil::write_atomic(&dir.join("state.json"), &serde_json::to_vec(&file)?)?;
        match std::fs::remove_file(dir.join("state.log")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fp: &str) -> StepRecord {
        StepRecord {
            fingerprint: fp.into(),
            ..StepRecord::default()
        }
    }

    #[test]
    fn log_survives_and_compacts() {
        let tmp = tempfile::tempdir().unwrap();
        let state = State::load(tmp.path());
        state.append("a", &record("1")).unwrap();
        state.append("a", &record("2")).unwrap();
        // A torn line, as a SIGKILL mid-write would leave.
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(tmp.path().join(".piper/state.log"))
            .unwrap();
        log.write_all(b"{\"version\":1,\"step\":\"b\",\"rec")
            .unwrap();
        assert_eq!(State::load(tmp.path()).steps["a"].fingerprint, "2");
        State::compact(tmp.path()).unwrap();
        assert!(!tmp.path().join(".piper/state.log").exists());
        let loaded = State::load(tmp.path());
        assert_eq!(loaded.steps.len(), 1);
        assert!(loaded.warning.is_none());
    }

    #[test]
    fn foreign_or_corrupt_state_is_a_warning_not_a_crash() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join(".piper")).unwrap();
        std::fs::write(
            tmp.path().join(".piper/state.json"),
            "{\"version\":99,\"steps\":{}}",
        )
        .unwrap();
        assert!(
            State::load(tmp.path())
                .warning
                .unwrap()
                .contains("state format 99")
        );
        std::fs::write(tmp.path().join(".piper/state.json"), "garbage").unwrap();
        assert!(
            State::load(tmp.path())
                .warning
                .unwrap()
                .contains("unreadable")
        );
    }
}
