//! What Piper remembers between runs, in `.piper/` at the project root: for
//! each step that declares `inputs`, the record of its last successful run.
//!
//! Crash safety: each finished step appends one JSON line to
//! `.piper/state.log` (a torn last line from a SIGKILL is ignored); at the
//! end of a build the log is folded into `.piper/state.bin`, written to a
//! temporary file and renamed over the old one. A state file of another
//! format version, or one that cannot be parsed, is reported and ignored:
//! everything is rebuilt, nothing crashes.
//!
//! `state.bin` is binary (a header, a blake3 checksum, then the records in
//! postcard) because every `piper exec` reads all of it before its first
//! step: parsing the JSON it used to be was a fifth of a cached no-op's
//! work. `piper explain` shows what is in it in words. A `state.json` left
//! by an older Piper is read once and replaced.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::file_stamp::FileStamp;

use crate::digest::Digest;

mod v1;

/// Bump when the record format changes. Format 1 (digests as hex text) is
/// still read and converted; any other is ignored (everything reruns).
pub const STATE_VERSION: u32 = 2;
pub const STATE_DIR: &str = ".piper";
/// The folded records (binary).
pub const STATE_FILE: &str = "state.bin";
/// The records as Piper before 0.2 kept them: read when there is no
/// `STATE_FILE` yet, removed by the next fold.
pub const LEGACY_STATE_FILE: &str = "state.json";
/// The records of steps finished since the last fold (JSON lines).
pub const STATE_LOG: &str = "state.log";
/// What `state.bin` starts with: then the format version (u32 LE), the
/// checksum of the rest (`fsutil::checksum`), and the records.
const MAGIC: &[u8] = b"piper state 2\n";
/// The same layout with a blake3 checksum (32 bytes), as Piper wrote it
/// before: still read, replaced by the next fold.
const MAGIC_BLAKE3: &[u8] = b"piper state\n";

/// The maps of a record: a few entries each, kept as a sorted vector. A
/// `BTreeMap` allocates a whole 11-entry node even for one entry (~1 KB a
/// record, most of a cached no-op's memory at 1000 steps); the bytes on
/// disk are the same (a map).
pub type SmallMap<V> = litemap::LiteMap<String, V>;

/// The last successful run of a step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub fingerprint: Digest,
    /// What ran (the command lines, or the Lua function's source).
    pub command: String,
    /// blake3 of each variable's value (values may be secrets).
    pub env: SmallMap<Digest>,
    pub inputs: SmallMap<FileStamp>,
    /// What the dependencies it ran after showed their dependents
    /// (`fingerprint::seen_by_dependents`).
    pub deps: SmallMap<Digest>,
    /// Files its depfile listed after the run (root-relative, or absolute
    /// outside the root): inputs next time too.
    #[serde(default)]
    pub discovered: std::collections::BTreeSet<String>,
    /// blake3 of the declared outputs after its last run: what dependents
    /// see of it, so a rerun that made the same outputs leaves them up to
    /// date (early cutoff).
    #[serde(default)]
    pub outputs: Option<Digest>,
}

#[derive(Serialize, Deserialize)]
struct LogLine<R> {
    version: u32,
    step: String,
    record: R,
}

pub struct State {
    dir: PathBuf,
    /// Hashed, not sorted: a build looks each of its steps up, and a
    /// thousand-step no-op spent its time in a tree's string comparisons.
    /// state.bin is written sorted all the same (see `compact`).
    pub steps: HashMap<String, StepRecord>,
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
        let (steps, warning) = match read_records(&dir) {
            Ok(steps) => (steps, None),
            Err(warning) => (HashMap::new(), Some(warning)),
        };
        let mut state = State {
            dir: dir.clone(),
            steps,
            warning,
        };
        if let Ok(text) = std::fs::read_to_string(dir.join(STATE_LOG)) {
            // A line cut short by a kill does not parse: skipped.
            state.steps.extend(text.lines().filter_map(parse_log_line));
        }
        state
    }

    /// Records a successful run, durably enough to survive a kill of piper.
    pub fn append(&self, step: &str, record: &StepRecord) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let line = serde_json::to_string(&LogLine {
            version: STATE_VERSION,
            step: step.to_string(),
            record,
        })?;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(STATE_LOG))?;
        // One write call per line: a kill leaves whole lines or a torn tail.
        log.write_all(format!("{line}\n").as_bytes())
    }

    /// Folds the log into state.bin (atomically) and removes the log.
    pub fn compact(root: &Path) -> std::io::Result<()> {
        let dir = Self::dir(root);
        // Nothing ran since the last fold (a no-op build): nothing to write,
        // unless what an older Piper wrote is still to be replaced.
        if !dir.join(STATE_LOG).exists()
            && !dir.join(LEGACY_STATE_FILE).exists()
            && !in_older_format(&dir.join(STATE_FILE))
        {
            return Ok(());
        }
        let state = State::load(root);
        std::fs::create_dir_all(&dir)?;
        // Sorted by step name: the same state, the same bytes. (A map is
        // the same postcard whichever kind it is read back into.)
        let sorted: BTreeMap<&String, &StepRecord> = state.steps.iter().collect();
        let payload = postcard::to_stdvec(&sorted).map_err(std::io::Error::other)?;
        let mut bytes = Vec::with_capacity(MAGIC.len() + 4 + 8 + payload.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&STATE_VERSION.to_le_bytes());
        bytes.extend_from_slice(&crate::fsutil::checksum(&payload));
        bytes.extend_from_slice(&payload);
        crate::fsutil::write_atomic(&dir.join(STATE_FILE), &bytes)?;
        for name in [LEGACY_STATE_FILE, STATE_LOG] {
            match std::fs::remove_file(dir.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// The folded records in `dir`: none when there are none yet; Err(warning)
/// when a file is there but cannot be used.
fn read_records(dir: &Path) -> Result<HashMap<String, StepRecord>, String> {
    let path = dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return read_legacy(dir),
        Err(e) => return Err(rebuilding(&path, &format!("cannot be read ({e})"))),
    };
    let unreadable = |why: &str| rebuilding(&path, &format!("is unreadable ({why})"));
    let Header {
        version,
        checksum_len,
        rest,
    } = header(&bytes).map_err(unreadable)?;
    if rest.len() < checksum_len {
        return Err(unreadable("cut short"));
    }
    if version != STATE_VERSION && version != 1 {
        return Err(other_version(&path, version));
    }
    let (checksum, payload) = rest.split_at(checksum_len);
    let intact = match checksum_len {
        8 => crate::fsutil::checksum(payload) == checksum,
        _ => blake3::hash(payload).as_bytes() == checksum,
    };
    if !intact {
        return Err(unreadable("checksum mismatch"));
    }
    let records = match version {
        1 => postcard::from_bytes::<HashMap<String, v1::StepRecord>>(payload)
            .map(|steps| steps.into_iter().map(upgrade_v1).collect()),
        _ => postcard::from_bytes(payload),
    };
    records.map_err(|e| unreadable(&e.to_string()))
}

/// What `state.bin` starts with, in either layout.
struct Header<'a> {
    version: u32,
    /// 8 (`fsutil::checksum`), or 32 in the older blake3 layout.
    checksum_len: usize,
    /// The bytes after the version: the checksum, then the records.
    rest: &'a [u8],
}

/// The header `bytes` start with; Err says what is wrong with it.
fn header(bytes: &[u8]) -> Result<Header<'_>, &'static str> {
    let (rest, checksum_len) = match bytes.strip_prefix(MAGIC) {
        Some(rest) => (rest, 8),
        None => (
            bytes
                .strip_prefix(MAGIC_BLAKE3)
                .ok_or("not a Piper state file")?,
            32,
        ),
    };
    let (version, rest) = rest.split_first_chunk::<4>().ok_or("cut short")?;
    Ok(Header {
        version: u32::from_le_bytes(*version),
        checksum_len,
        rest,
    })
}

/// Whether `path` is a state file of format 1, to be rewritten in this
/// one (reads its header only: this runs after every build). Every file
/// of the blake3 layout is.
fn in_older_format(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0; MAGIC.len() + 4];
    let read = std::fs::File::open(path).and_then(|mut file| file.read_exact(&mut head));
    read.is_ok() && header(&head).is_ok_and(|h| h.version == 1 || h.checksum_len == 32)
}

/// One line of `state.log`, of this format or of format 1.
fn parse_log_line(line: &str) -> Option<(String, StepRecord)> {
    if let Ok(entry) = serde_json::from_str::<LogLine<StepRecord>>(line)
        && entry.version == STATE_VERSION
    {
        return Some((entry.step, entry.record));
    }
    let entry = serde_json::from_str::<LogLine<v1::StepRecord>>(line).ok()?;
    (entry.version == 1).then(|| upgrade_v1((entry.step, entry.record)))
}

/// `state.json` of an older Piper, read until the next fold replaces it.
fn read_legacy(dir: &Path) -> Result<HashMap<String, StepRecord>, String> {
    let path = dir.join(LEGACY_STATE_FILE);
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(HashMap::new());
    };
    match serde_json::from_slice::<v1::StateFile>(&bytes) {
        Ok(file) if file.version == 1 => Ok(file.steps.into_iter().map(upgrade_v1).collect()),
        Ok(file) => Err(other_version(&path, file.version)),
        Err(e) => Err(rebuilding(&path, &format!("is unreadable ({e})"))),
    }
}

fn other_version(path: &Path, version: u32) -> String {
    rebuilding(
        path,
        &format!("is from state format {version} (this piper uses {STATE_VERSION})"),
    )
}

fn rebuilding(path: &Path, problem: &str) -> String {
    format!("{} {problem}; rebuilding every step", path.display())
}

/// A named format-1 record (`v1.rs`) as this format keeps it.
fn upgrade_v1((step, old): (String, v1::StepRecord)) -> (String, StepRecord) {
    let digest = v1::digest;
    let digests = |map: SmallMap<String>| map.into_iter().map(|(k, v)| (k, digest(&v))).collect();
    let inputs = (old.inputs.into_iter())
        .map(|(path, stamp)| {
            let stamp = FileStamp {
                size: stamp.size,
                mtime_ns: stamp.mtime_ns,
                hash: digest(&stamp.hash),
            };
            (path, stamp)
        })
        .collect();
    let record = StepRecord {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A record whose every digest is distinct, with both kinds of
    /// dependency (one showing its outputs), and the same record as
    /// format 1 wrote it.
    fn both_formats() -> (StepRecord, v1::StepRecord) {
        let d = |n: u8| Digest([n; 32]);
        let hex = |n: u8| d(n).to_string();
        let mut record = StepRecord {
            fingerprint: d(1),
            command: "cc -c a.c".into(),
            outputs: Some(d(2)),
            ..Default::default()
        };
        record.env.insert("CC".into(), d(3));
        record.deps.insert("gen".into(), d(4));
        record.deps.insert("tool".into(), d(5));
        let stamp = FileStamp {
            size: 9,
            mtime_ns: 7,
            hash: d(6),
        };
        record.inputs.insert("a.c".into(), stamp);
        record.discovered.insert("a.h".into());
        let mut old = v1::StepRecord {
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
        let stamp = v1::FileStamp {
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

        let steps: std::collections::BTreeMap<&str, &v1::StepRecord> = [("cc", &old)].into();
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

    fn record(fp: u8) -> StepRecord {
        StepRecord {
            fingerprint: Digest([fp; 32]),
            ..StepRecord::default()
        }
    }

    #[test]
    fn log_survives_and_compacts() {
        let tmp = tempfile::tempdir().unwrap();
        let state = State::load(tmp.path());
        state.append("a", &record(1)).unwrap();
        state.append("a", &record(2)).unwrap();
        // A torn line, as a SIGKILL mid-write would leave.
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(tmp.path().join(".piper/state.log"))
            .unwrap();
        log.write_all(b"{\"version\":2,\"step\":\"b\",\"rec")
            .unwrap();
        assert_eq!(State::load(tmp.path()).steps["a"], record(2));
        State::compact(tmp.path()).unwrap();
        assert!(!tmp.path().join(".piper/state.log").exists());
        assert!(tmp.path().join(".piper/state.bin").exists());
        let loaded = State::load(tmp.path());
        assert_eq!(loaded.steps.len(), 1);
        assert!(loaded.warning.is_none());
    }

    #[test]
    fn a_state_json_of_an_older_piper_is_read_then_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(".piper");
        std::fs::create_dir_all(&dir).unwrap();
        // As 0.1 wrote it: empty fields left out.
        let legacy = r#"{"version":1,"steps":{"a":{"fingerprint":"f","command":"true","env":{},"inputs":{"in.txt":{"size":1,"mtime_ns":5,"hash":"h"}},"deps":{}}}}"#;
        std::fs::write(dir.join("state.json"), legacy).unwrap();
        let state = State::load(tmp.path());
        assert_eq!(state.steps["a"].inputs.get("in.txt").unwrap().mtime_ns, 5);
        state.append("b", &record(2)).unwrap();
        State::compact(tmp.path()).unwrap();
        assert!(!dir.join("state.json").exists());
        let state = State::load(tmp.path());
        assert_eq!((state.steps.len(), state.warning), (2, None));
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
        // The binary file: damaged, cut short, of another version.
        let state = State::load(tmp.path());
        state.append("a", &record(1)).unwrap();
        State::compact(tmp.path()).unwrap();
        let path = tmp.path().join(".piper/state.bin");
        let good = std::fs::read(&path).unwrap();
        let mut damaged = good.clone();
        *damaged.last_mut().unwrap() ^= 1;
        let mut other = good.clone();
        other[MAGIC.len()] = 99;
        for (bytes, says) in [
            (damaged, "checksum"),
            (good[..20].to_vec(), "cut short"),
            (other, "state format 99"),
            (b"garbage".to_vec(), "not a Piper state file"),
        ] {
            std::fs::write(&path, bytes).unwrap();
            let warning = State::load(tmp.path()).warning.unwrap();
            assert!(warning.contains(says), "{warning}");
        }
    }

    #[test]
    fn state_an_older_piper_wrote_with_a_blake3_checksum_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let state = State::load(tmp.path());
        state.append("a", &record(1)).unwrap();
        State::compact(tmp.path()).unwrap();
        let path = tmp.path().join(".piper/state.bin");
        let good = std::fs::read(&path).unwrap();
        let payload = &good[MAGIC.len() + 4 + 8..];
        let mut older = MAGIC_BLAKE3.to_vec();
        older.extend_from_slice(&STATE_VERSION.to_le_bytes());
        older.extend_from_slice(blake3::hash(payload).as_bytes());
        older.extend_from_slice(payload);
        std::fs::write(&path, &older).unwrap();
        let read = State::load(tmp.path());
        assert_eq!(read.warning, None);
        assert_eq!(read.steps["a"], record(1));
        // Damage in the older layout is still seen.
        *older.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &older).unwrap();
        let warning = State::load(tmp.path()).warning.unwrap();
        assert!(warning.contains("checksum"), "{warning}");
    }
}
