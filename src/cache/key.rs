//! A step's action key (see `cache/mod.rs`), and which steps have one.
//!
//! The key is the digest of a Remote Execution API `Action`, built as
//! Bazel and every REAPI client build theirs, so a REAPI server holds
//! Piper's results under keys it understands:
//! - a `Command`: the argv exactly as Piper runs it (a plain command
//!   directly, a shell script as `/bin/sh -ec SCRIPT piper`; several
//!   commands as one `/bin/sh -ec` script, one per line, which stops at the
//!   first failure as Piper does), the step's variables sorted by name
//!   (Piper's own `PIPER_*` identity variables are not work), its outputs
//!   relative to its working directory, the working directory relative to
//!   the root, and the platform (`OSFamily`, `ISA`, the step's `requires`);
//! - an `Action`: the command's digest, the input root's (`tree.rs`: the
//!   declared inputs and the files the dependencies made), the platform,
//!   the step's `timeout` (a remote worker ends the action after it), and
//!   a salt: Piper's key version, the step's `cache_salt`, and what
//!   a dependency without declared outputs showed (that it ran, or its
//!   fingerprint).

use std::path::{Component, Path};

use sha2::{Digest as _, Sha256};

use crate::graph::{Graph, Step};
use crate::spec::{Command, Run};
use crate::state::StepRecord;

use super::proto::{self, Action, EnvironmentVariable, Platform, Property};
use super::tree::{InputFile, InputTree};

/// Bumped when what a key covers changes: old entries are then misses.
const KEY_VERSION: &str = "piper-action-v2";

/// A step's action key: the digest of its REAPI `Action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ActionKey {
    /// SHA-256 of the encoded `Action`, as hex.
    pub(crate) hash: String,
    /// The encoded `Action`'s size.
    pub(crate) size: i64,
    /// The working directory relative to the root (`""`: the root), which
    /// the outputs of a REAPI `ActionResult` are relative to.
    pub(crate) workdir: String,
}

/// What an action is made of, for a remote executor to run it: the
/// encoded `Command` and `Action`, the input root's `Directory` messages,
/// and the input files (root-relative) they name.
#[cfg_attr(not(feature = "remote-cache"), allow(dead_code))]
pub(crate) struct ActionParts {
    pub(crate) command: Vec<u8>,
    pub(crate) action: Vec<u8>,
    pub(crate) tree: InputTree,
    pub(crate) files: Vec<InputFile>,
}

impl ActionKey {
    /// The key of step `index` of `graph` about to run with `env` (its
    /// variables, `executor::work_env`), whose would-be record is
    /// `record`. Reads and hashes its inputs and its dependencies'
    /// outputs: an error when one cannot be read.
    pub(crate) fn new(
        graph: &Graph,
        index: usize,
        record: &StepRecord,
        env: &[(String, String)],
    ) -> Result<ActionKey, String> {
        Ok(ActionKey::with_parts(graph, index, record, env)?.0)
    }

    /// As [`ActionKey::new`], with what a remote executor needs to run
    /// the action: the encoded messages and the input files.
    pub(crate) fn with_parts(
        graph: &Graph,
        index: usize,
        record: &StepRecord,
        env: &[(String, String)],
    ) -> Result<(ActionKey, ActionParts), String> {
        let step = &graph.steps[index];
        let root = graph.root.as_path();
        let workdir = relative(root, &step.dir);
        let platform = platform(step);
        let command = proto::Command {
            arguments: arguments(step, root),
            environment_variables: environment(env),
            platform: Some(platform.clone()),
            working_directory: workdir.clone(),
            output_paths: output_paths(step, &workdir),
        };
        let (command_digest, command_bytes) = proto::digest_of(&command);
        let mut salt = Sha256::new();
        salt.update(KEY_VERSION);
        if let Some(user) = &step.cache_salt {
            salt.update(format!("\0cache_salt\0{user}"));
        }
        let mut files = Vec::new();
        for path in record.inputs.keys() {
            add_file(root, path, &mut files, &mut salt)?;
        }
        for &dep in &step.deps {
            let dep = &graph.steps[dep];
            if dep.outputs.is_empty() {
                // Nothing to put in the tree: what it showed goes in the
                // salt (a step that ran without outputs changes the key).
                let shown = record.deps.get(&dep.name).copied().unwrap_or_default();
                salt.update(format!("\0dep\0{}\0{shown}", dep.name));
                continue;
            }
            let made = crate::fingerprint::output_files(root, &dep.outputs)
                .ok_or_else(|| format!("the outputs of {} are missing", dep.name))?;
            for file in made {
                add_file(root, &relative(root, &file), &mut files, &mut salt)?;
            }
        }
        let tree = InputTree::build(&files);
        let action = Action {
            command_digest: Some(command_digest),
            input_root_digest: Some(tree.root.clone()),
            // As Bazel does: a worker ends the action at its timeout, and
            // another timeout is another action.
            timeout: step.timeout.map(Into::into),
            salt: salt.finalize().to_vec(),
            platform: Some(platform),
        };
        let (digest, action_bytes) = proto::digest_of(&action);
        let key = ActionKey {
            hash: digest.hash,
            size: digest.size_bytes,
            workdir,
        };
        let parts = ActionParts {
            command: command_bytes,
            action: action_bytes,
            tree,
            files,
        };
        Ok((key, parts))
    }
}

/// Adds the file at root-relative `path` to the tree; a file outside the
/// root (no place in an input root) goes into the salt instead.
fn add_file(
    root: &Path,
    path: &str,
    files: &mut Vec<InputFile>,
    salt: &mut Sha256,
) -> Result<(), String> {
    let full = root.join(path);
    let (digest, executable) = file_digest(&full)?;
    let outside = Path::new(path)
        .components()
        .any(|c| !matches!(c, Component::Normal(_)));
    if outside {
        salt.update(format!("\0outside\0{path}\0{}", digest.hash));
    } else {
        files.push(InputFile {
            path: path.to_string(),
            digest,
            executable,
        });
    }
    Ok(())
}

/// SHA-256 and size of the file at `path`, and its executable bit.
pub(crate) fn file_digest(path: &Path) -> Result<(proto::Digest, bool), String> {
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let executable = {
        use std::os::unix::fs::PermissionsExt;
        file.metadata()
            .is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
    };
    let digest = proto::Digest {
        hash: hex::encode(hasher.finalize()),
        size_bytes: size as i64,
    };
    Ok((digest, executable))
}

/// The argv Piper runs (see the module's doc).
fn arguments(step: &Step, root: &Path) -> Vec<String> {
    let shell = |script: String| vec!["/bin/sh".into(), "-ec".into(), script, "piper".into()];
    match &step.run {
        Run::Commands(commands) => match commands.as_slice() {
            [Command::Argv(argv)] => argv.clone(),
            [Command::Shell(script)] => {
                crate::process::simple_argv(script).unwrap_or_else(|| shell(script.clone()))
            }
            several => shell(
                several
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
        },
        // Not a process: the function's source stands for it.
        Run::Lua(_) => vec![
            "piper-lua-function".into(),
            crate::fingerprint::command_text(step, root),
        ],
    }
}

fn environment(env: &[(String, String)]) -> Vec<EnvironmentVariable> {
    let mut variables: Vec<EnvironmentVariable> = env
        .iter()
        .map(|(name, value)| EnvironmentVariable {
            name: name.clone(),
            value: value.clone(),
        })
        .collect();
    variables.sort_by(|a, b| a.name.cmp(&b.name));
    variables
}

fn platform(step: &Step) -> Platform {
    let mut properties = vec![
        Property {
            name: "OSFamily".into(),
            value: std::env::consts::OS.into(),
        },
        Property {
            name: "ISA".into(),
            value: std::env::consts::ARCH.into(),
        },
    ];
    properties.extend(step.requires.iter().map(|(name, value)| Property {
        name: name.clone(),
        value: value.clone(),
    }));
    properties.sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)));
    Platform { properties }
}

/// The outputs (root-relative) relative to the working directory.
fn output_paths(step: &Step, workdir: &str) -> Vec<String> {
    let mut paths: Vec<String> = (step.outputs.iter())
        .map(|output| from_workdir(workdir, output))
        .collect();
    paths.sort();
    paths
}

/// Root-relative `path` relative to root-relative `workdir`.
pub(crate) fn from_workdir(workdir: &str, path: &str) -> String {
    if workdir.is_empty() {
        return path.to_string();
    }
    match path.strip_prefix(workdir).and_then(|p| p.strip_prefix('/')) {
        Some(inside) => inside.to_string(),
        None => {
            let up = "../".repeat(workdir.split('/').count());
            format!("{up}{path}")
        }
    }
}

/// Root-relative `path` from workdir-relative `path` (the reverse of
/// [`from_workdir`]); None for a path that leaves the root.
#[cfg(feature = "remote-cache")]
pub(crate) fn to_root(workdir: &str, path: &str) -> Option<String> {
    let mut parts: Vec<&str> = workdir.split('/').filter(|p| !p.is_empty()).collect();
    for part in path.split('/') {
        match part {
            ".." => {
                parts.pop()?;
            }
            "." | "" => {}
            part => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// `path` relative to `root` as text, `/`-separated.
fn relative(root: &Path, path: &Path) -> String {
    let inside = path.strip_prefix(root).unwrap_or(path);
    crate::paths::normalize(inside)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_relative_to_the_working_directory_and_back() {
        assert_eq!(from_workdir("", "out/a.o"), "out/a.o");
        assert_eq!(from_workdir("sub", "sub/a.o"), "a.o");
        assert_eq!(from_workdir("sub/dir", "out/a.o"), "../../out/a.o");
    }

    #[cfg(feature = "remote-cache")]
    #[test]
    fn remote_outputs_come_back_inside_the_root() {
        for (workdir, path) in [("", "out/a.o"), ("sub", "sub/a.o"), ("a/b", "out/x")] {
            assert_eq!(
                to_root(workdir, &from_workdir(workdir, path)).unwrap(),
                path
            );
        }
        assert_eq!(to_root("sub", "../../etc/passwd"), None);
    }
}
