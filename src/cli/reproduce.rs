//! `piper exec --from-build N`: a build piperd ran, run again here by the
//! same engine. Its record (repo, commit, pipeline, variables) comes from
//! the API; its commit is checked out into a git worktree of the clone the
//! command runs in (fetched from the build's repository when the clone
//! lacks it); then `cli::exec` runs the pipeline there as any local run.
//! What cannot be the same is said before it starts: the agent's labels
//! and facts against this machine's, `requires` not met here, secret
//! variables whose values never leave the agent, another Piper version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use crate::agent::store::{AgentInfo, Build};
use crate::cli::args::Connection;
use crate::cli::error::{Error, Result};

/// A build made ready to run here.
#[derive(Debug)]
pub struct Reproduction {
    /// The worktree with the build's commit checked out.
    pub dir: PathBuf,
    pub pipeline: String,
    /// `28ffa93cef12 (refs/heads/main)`, for people.
    pub sha_and_ref: String,
    /// The variables the agent gave every step.
    pub env: IndexMap<String, String>,
    /// The pipeline's arguments it was submitted with.
    pub args: Vec<String>,
    /// What differs from the agent's run, one line each.
    pub differences: Vec<String>,
}

/// Fetches build `id`'s record and checks its commit out next to the clone
/// at `start`.
/// `given` are the variables set on the command line (`-e`).
pub fn prepare(
    connection: &Connection,
    id: i64,
    start: &Path,
    given: &IndexMap<String, String>,
) -> Result<Reproduction> {
    let (build, agent) = crate::cli::client::build_and_agent(connection, id)?;
    let cannot = |message: String| Error::CannotReproduce { build: id, message };
    let sha = build.sha.clone().ok_or_else(|| {
        cannot(format!(
            "it never got as far as a commit ({}): run it with `piper exec` on {} at {}",
            build.error.as_deref().unwrap_or("no checkout"),
            build.repo,
            build.git_ref
        ))
    })?;
    let clone = git(start, &["rev-parse", "--show-toplevel"]).map_err(|_| {
        cannot(format!(
            "{} is not in a git repository: run it in a clone of {}",
            start.display(),
            build.repo
        ))
    })?;
    let clone = PathBuf::from(clone);
    ensure_commit(&clone, &build.repo, &sha).map_err(cannot)?;
    let dir = checkout(&clone, id, &sha).map_err(cannot)?;
    Ok(Reproduction {
        dir,
        pipeline: build.pipeline.clone(),
        sha_and_ref: format!("{} ({})", &sha[..sha.len().min(12)], build.git_ref),
        env: crate::agent::worker::build_vars(&build, build.agent.as_deref().unwrap_or_default()),
        args: build.args.clone(),
        differences: differences(&build, agent.as_ref(), given),
    })
}

fn git(dir: &Path, args: &[&str]) -> std::result::Result<String, String> {
    crate::cli::git::run(dir, args, &[])
}

fn has_commit(clone: &Path, sha: &str) -> bool {
    git(clone, &["cat-file", "-e", &format!("{sha}^{{commit}}")]).is_ok()
}

/// The commit is in `clone`, or is fetched from `repo`: by its id (servers
/// that allow it), else with every branch and tag.
fn ensure_commit(clone: &Path, repo: &str, sha: &str) -> std::result::Result<(), String> {
    if has_commit(clone, sha) {
        return Ok(());
    }
    let by_id = git(clone, &["fetch", "--quiet", "--no-tags", "--", repo, sha]);
    if has_commit(clone, sha) {
        return Ok(());
    }
    let everything = git(
        clone,
        &[
            "fetch",
            "--quiet",
            "--tags",
            "--",
            repo,
            "+refs/heads/*:refs/piper/fetched/*",
        ],
    );
    if has_commit(clone, sha) {
        return Ok(());
    }
    let why = everything
        .err()
        .or(by_id.err())
        .unwrap_or_else(|| "it is on none of its branches or tags".into());
    Err(format!(
        "commit {sha} is not in this clone ({}) and cannot be fetched from {repo}: {why}",
        clone.display()
    ))
}

/// A worktree of `clone` at `sha`, in the temporary directory; one that is
/// already there at that commit is used again (with its `.piper` state).
fn checkout(clone: &Path, id: i64, sha: &str) -> std::result::Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("piper-build-{id}-{}", &sha[..sha.len().min(12)]));
    if dir.exists() {
        if git(&dir, &["rev-parse", "HEAD"]).as_deref() == Ok(sha) {
            return Ok(dir);
        }
        return Err(format!(
            "{} exists and is not a checkout of {sha}: remove it (`git worktree remove --force {}`)",
            dir.display(),
            dir.display()
        ));
    }
    let path = dir.to_string_lossy().into_owned();
    git(
        clone,
        &["worktree", "add", "--quiet", "--detach", &path, sha],
    )
    .map_err(|e| format!("cannot check {sha} out in {path}: {e}"))?;
    Ok(dir)
}

/// What this run cannot have of the agent's.
/// (A pipeline's `requires` not met here is what every local run warns of.)
fn differences(
    build: &Build,
    agent: Option<&AgentInfo>,
    given: &IndexMap<String, String>,
) -> Vec<String> {
    let here = crate::agent::local_labels();
    let mut lines = Vec::new();
    match agent {
        Some(agent) => {
            let differ = label_differences(&agent.labels, &here);
            if !differ.is_empty() {
                lines.push(format!("agent {} had {}", agent.name, differ.join(", ")));
            }
            if agent.version != env!("CARGO_PKG_VERSION") {
                lines.push(format!(
                    "agent {} runs Piper {}, this is {}",
                    agent.name,
                    agent.version,
                    env!("CARGO_PKG_VERSION")
                ));
            }
        }
        None => lines.push(format!(
            "agent {} is no longer in the agent list: its labels cannot be compared",
            build.agent.as_deref().unwrap_or("(none)")
        )),
    }
    let secrets: Vec<&str> = build
        .secret_env
        .keys()
        .map(String::as_str)
        .filter(|name| !given.contains_key(*name))
        .collect();
    if !secrets.is_empty() {
        lines.push(format!(
            "the build's secret variables stay on the agent: {} (set them with -e NAME=VALUE)",
            secrets.join(", ")
        ));
    }
    lines
}

/// `key=there (here: value)` for each label that differs.
fn label_differences(
    there: &BTreeMap<String, String>,
    here: &BTreeMap<String, String>,
) -> Vec<String> {
    there
        .iter()
        .filter(|(k, v)| here.get(*k) != Some(v))
        .map(|(k, v)| match here.get(k) {
            Some(mine) => format!("{k}={v} (here {mine})"),
            None => format!("{k}={v} (here unset)"),
        })
        .collect()
}
