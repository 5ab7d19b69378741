//! The configuration cache (Gradle's is the model): evaluating `piper.lua`
//! records every input the evaluation read — the files it loaded or read,
//! the globs it expanded and what they matched, the environment variables
//! and the output of the commands it ran — and stores the validated graph
//! with that record in `.piper/config.cache`. The next run checks the
//! record (a stat per file, a walk per glob, a run per command) and, when
//! nothing moved, loads the graph without creating a Lua state.
//!
//! Sits between `project.rs` (which file) and `graph.rs` (what it means);
//! hosts call [`load`]. The record is collected by the native functions in
//! `lua/` while a [`Recording`](crate::recording::Recording) is in the
//! state's app data.
//!
//! Never a wrong graph: what the record cannot see (`io.open`, `os.time`,
//! `math.random`, ... at evaluation time) makes the configuration
//! uncacheable for that run, and an unreadable or foreign cache file is a
//! warning and a fresh evaluation.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::file_stamp::{FileStamp, now_ns, stamp_file};
use crate::graph::Graph;
use crate::project::Located;
use crate::recording::{ConfigReads, Input};
use crate::root_dir::RootDir;
use crate::state::State;

/// The cache file, in the state directory.
pub const FILE: &str = "config.cache";

/// First bytes of the file; bump the number when the format changes.
/// Then the checksum of the rest (`fsutil::checksum`), the key, the body.
const MAGIC: &[u8] = b"piper config cache 3\n";
/// What earlier formats start with: a cache an older Piper wrote, to be
/// replaced like any other Piper build's, without a warning.
const OLDER_MAGIC: &[u8] = b"piper config cache ";

/// What the cache is valid for besides its inputs: this Piper (its
/// version, build and embedded Lua) and this project's place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Key {
    piper: String,
    root: PathBuf,
    config: PathBuf,
}

impl Key {
    fn of(project: &Located) -> Key {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
        // The embedded stdlib, digested at build time (build.rs).
        hasher.update(env!("PIPER_STDLIB_DIGEST").as_bytes());
        // A rebuilt binary may read the graph differently with the same
        // version number (development builds): its size and mtime say so.
        if let Some(meta) = std::env::current_exe()
            .ok()
            .and_then(|exe| std::fs::metadata(exe).ok())
        {
            hasher.update(&meta.len().to_le_bytes());
            hasher.update(&crate::fsutil::mtime_ns(&meta).to_le_bytes());
        }
        Key {
            piper: format!("{:016x}", hasher.digest()),
            root: project.root.clone(),
            config: project.config.clone(),
        }
    }
}

/// The file as read back, after its key (which `read` decodes and compares
/// first: another Piper build may lay out what follows differently).
#[derive(Deserialize)]
struct CacheFile {
    inputs: Vec<Input>,
    graph: Graph,
}

/// The file as written: the key, then `CacheFile`'s fields, borrowed
/// (postcard lays fields out one after another), so writing needs no copy
/// of the graph.
#[derive(Serialize)]
struct CacheFileRef<'a> {
    key: &'a Key,
    inputs: &'a [Input],
    graph: &'a Graph,
}

/// How the graph of a run was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evaluation {
    /// Loaded from the cache: every recorded input was unchanged.
    Cached,
    /// Evaluated; `reason` says why the cache was not used (None: there
    /// was no cache, or it was bypassed), `not_cached` why the result was
    /// not stored, `warning` what a host should show (an unreadable cache).
    Evaluated {
        reason: Option<String>,
        not_cached: Option<String>,
        warning: Option<String>,
    },
}

impl Evaluation {
    /// What a host should show the user about the cache, if anything.
    pub fn warning(&self) -> Option<&str> {
        match self {
            Evaluation::Evaluated {
                warning: Some(warning),
                ..
            } => Some(warning),
            _ => None,
        }
    }

    /// The line `piper explain` prints, when there is something to say.
    pub fn explanation(&self) -> Option<String> {
        match self {
            Evaluation::Cached => None,
            Evaluation::Evaluated {
                reason, not_cached, ..
            } => {
                let mut parts = Vec::new();
                if let Some(reason) = reason {
                    parts.push(format!("configuration re-evaluated: {reason}"));
                }
                if let Some(why) = not_cached {
                    parts.push(format!("configuration not cached: {why}"));
                }
                (!parts.is_empty()).then(|| parts.join("; "))
            }
        }
    }
}

/// Whether to use the cache (`--no-config-cache` says no).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Use,
    Bypass,
}

/// The graph of `project`: from the cache when every recorded input is
/// unchanged, else evaluated (and the cache rewritten).
#[cfg(feature = "cli")]
pub fn load(project: &Located, mode: Mode) -> Result<(Graph, Evaluation)> {
    load_with_reads(project, mode).map(|(graph, evaluation, _)| (graph, evaluation))
}

/// As [`load`], with what the evaluation read (the recorded inputs), for a
/// host that watches them.
pub fn load_with_reads(project: &Located, mode: Mode) -> Result<(Graph, Evaluation, ConfigReads)> {
    let path = State::dir(&project.root).join(FILE);
    let key = Key::of(project);
    let mut warning = None;
    let reason = match mode {
        Mode::Bypass => None,
        Mode::Use => match read(&path, &key) {
            Ok(Some(mut cache)) => match check_inputs(&project.root, &mut cache.inputs) {
                Unchanged { settled } => {
                    if settled {
                        keep_settled_stamps(&path, &key, &cache);
                    }
                    let reads = ConfigReads::of(&cache.inputs);
                    return Ok((cache.graph.revive(project), Evaluation::Cached, reads));
                }
                Changed(reason) => Some(reason),
            },
            Ok(None) => None,
            Err(unused) => {
                warning = unused.warning;
                Some(unused.reason)
            }
        },
    };
    let (graph, recording) = Graph::load_recorded(project)?;
    let mut not_cached = recording.uncacheable;
    if mode == Mode::Use {
        if not_cached.is_some() {
            // A stale cache must not be used next time either.
            let _ = std::fs::remove_file(&path);
        } else {
            let cache = CacheFileRef {
                key: &key,
                inputs: &recording.inputs,
                graph: &graph,
            };
            if let Err(e) = write(&path, &cache) {
                not_cached = Some(format!("cannot write {}: {e}", path.display()));
            }
        }
    }
    let reads = ConfigReads::of(&recording.inputs);
    let evaluated = Evaluation::Evaluated {
        reason,
        not_cached,
        warning,
    };
    Ok((graph, evaluated, reads))
}

/// The cache at `path` if it exists and belongs to this Piper and project;
/// Err(why) when it exists but cannot be used.
fn read(path: &Path, key: &Key) -> std::result::Result<Option<CacheFile>, Unused> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(warn(path, format!("cannot read it: {e}"))),
    };
    let Some(rest) = bytes.strip_prefix(MAGIC) else {
        if bytes.starts_with(OLDER_MAGIC) {
            return Err(Unused::because("Piper was updated"));
        }
        return Err(warn(path, "it is not a Piper configuration cache".into()));
    };
    if rest.len() < 8 || crate::fsutil::checksum(&rest[8..]) != rest[..8] {
        return Err(warn(path, "it is damaged (checksum mismatch)".into()));
    }
    // The key comes first and is read alone: another Piper build may lay
    // out the rest differently, and that is an update, not damage.
    let (written_for, body) = postcard::take_from_bytes::<Key>(&rest[8..])
        .map_err(|e| warn(path, format!("it cannot be read: {e}")))?;
    if written_for.piper != key.piper {
        return Err(Unused::because("Piper was updated"));
    }
    if written_for.root != key.root || written_for.config != key.config {
        return Err(Unused::because("the project moved"));
    }
    let cache: CacheFile =
        postcard::from_bytes(body).map_err(|e| warn(path, format!("it cannot be read: {e}")))?;
    Ok(Some(cache))
}

/// Why a cache file was not used, and, when it exists but is unreadable
/// (which should not happen), the warning a host shows: the evaluation
/// that follows is the remedy. The library prints nothing itself.
struct Unused {
    reason: String,
    warning: Option<String>,
}

impl Unused {
    fn because(reason: &str) -> Unused {
        Unused {
            reason: reason.to_string(),
            warning: None,
        }
    }
}

fn warn(path: &Path, problem: String) -> Unused {
    Unused {
        warning: Some(format!(
            "ignoring the configuration cache {}: {problem}; evaluating the configuration",
            path.display()
        )),
        reason: format!("the cache was unusable ({problem})"),
    }
}

fn write(path: &Path, cache: &CacheFileRef) -> std::io::Result<()> {
    let payload = postcard::to_stdvec(cache).map_err(std::io::Error::other)?;
    let mut bytes = Vec::with_capacity(MAGIC.len() + 8 + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&crate::fsutil::checksum(&payload));
    bytes.extend_from_slice(&payload);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::fsutil::write_atomic(path, &bytes)
}

/// A cached file stamped within the racy window has no trusted mtime, so
/// every check read and hashed it (a generated 10 000-step piper.lua is
/// 800 KB); once it has settled, the cache is written again with its mtime,
/// and later checks only stat it. A failure to write loses only that.
fn keep_settled_stamps(path: &Path, key: &Key, cache: &CacheFile) {
    let settled = CacheFileRef {
        key,
        inputs: &cache.inputs,
        graph: &cache.graph,
    };
    if let Err(e) = write(path, &settled) {
        tracing::warn!("cannot write {}: {e}", path.display());
    }
}

enum Check {
    /// Every input is what the evaluation saw; `settled` when a file
    /// stamped without a trusted mtime now has one (in `inputs`).
    Unchanged { settled: bool },
    /// The first input that changed, in words.
    Changed(String),
}
use Check::{Changed, Unchanged};

/// Whether every recorded input is still what the evaluation saw.
fn check_inputs(root: &Path, inputs: &mut [Input]) -> Check {
    let now = now_ns();
    let root_dir = RootDir::open(root);
    let mut settled = false;
    for input in inputs.iter_mut() {
        if let Some(reason) = input_change(&root_dir, input, now, &mut settled) {
            return Changed(reason);
        }
    }
    Unchanged { settled }
}

/// How `input` changed, in words; None when it did not.
fn input_change(
    root_dir: &RootDir,
    input: &mut Input,
    now: i128,
    settled: &mut bool,
) -> Option<String> {
    let root = root_dir.path();
    match input {
        Input::File { path, stamp } => file_change(root_dir, path, stamp, now, settled),
        Input::Exists { path, exists } => {
            let now_exists = root_dir.exists(path);
            (now_exists != *exists).then(|| match now_exists {
                true => format!("{path} was created"),
                false => format!("{path} was deleted"),
            })
        }
        Input::Glob {
            patterns,
            hidden,
            gitignore,
            matches,
        } => glob_change(root, patterns, *hidden, *gitignore, matches),
        Input::Env { name, value } => {
            let now = std::env::var(&*name).ok();
            (now != *value).then(|| match (&*value, now) {
                (None, _) => format!("env var {name} was set"),
                (_, None) => format!("env var {name} was unset"),
                _ => format!("env var {name} changed"),
            })
        }
        Input::Command { command, result } => match command.run(root) {
            Ok(now) if now.digest() == *result => None,
            Ok(_) => Some(format!("`{}` printed something else", command.command)),
            Err(e) => Some(format!("`{}` could not run: {e}", command.command)),
        },
    }
}

fn file_change(
    root: &RootDir,
    path: &str,
    stamp: &mut Option<FileStamp>,
    now: i128,
    settled: &mut bool,
) -> Option<String> {
    // One stat (inside stamp_file): a missing file or a directory is NotFound.
    match (stamp.as_ref(), stamp_file(root, path, stamp.as_ref(), now)) {
        (None, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => None,
        (None, _) => Some(format!("{path} was created")),
        (Some(_), Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            Some(format!("{path} was deleted"))
        }
        (Some(_), Err(e)) => Some(format!("{path} cannot be read: {e}")),
        (Some(old), Ok(new)) if new.hash == old.hash => {
            if old.mtime_ns == 0 && new.mtime_ns != 0 {
                *settled = true;
                *stamp = Some(new);
            }
            None
        }
        (Some(_), Ok(_)) => Some(format!("{path} changed")),
    }
}

fn glob_change(
    root: &Path,
    patterns: &[String],
    hidden: bool,
    gitignore: bool,
    matches: &[String],
) -> Option<String> {
    let shown = patterns.join(" ");
    let now = match crate::glob::glob(root, patterns, hidden, gitignore) {
        Ok(now) => now,
        Err(e) => return Some(format!("glob {shown} failed: {e}")),
    };
    if now == matches {
        return None;
    }
    if let Some(added) = now.iter().find(|f| !matches.contains(f)) {
        return Some(format!("{added} added to glob {shown}"));
    }
    if let Some(removed) = matches.iter().find(|f| !now.contains(f)) {
        return Some(format!("{removed} removed from glob {shown}"));
    }
    Some(format!("glob {shown} matched files in another order"))
}
