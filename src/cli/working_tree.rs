//! `piper submit --working-tree`: the working tree as it is (committed,
//! staged, unstaged, and untracked files git does not ignore) made into a
//! commit on a private ref, `refs/piper/working-tree/<sha>`, without
//! touching HEAD, the index or any branch. The agent fetches it like any
//! ref (its mirror takes every ref), so its checkout path is the same as for
//! a pushed commit; the ref's name and the commit's message record that it
//! was never pushed.
//!
//! A temporary index (a copy of the real one, so unchanged files are not
//! hashed again) takes `git add -A`, and `write-tree`/`commit-tree` make the
//! commit: git plumbing, the way `git stash create` works.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::cli::error::{Error, Result};

/// Where working-tree commits are kept in the project's repository.
pub const REF_PREFIX: &str = "refs/piper/working-tree/";

/// How many of them are kept (older ones are deleted when a new one is
/// made; a build long queued may then find its ref gone).
const KEEP: usize = 20;

/// A working tree made into a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `refs/piper/working-tree/<sha>`.
    pub git_ref: String,
    pub sha: String,
    /// Files that differ from HEAD.
    pub changed: usize,
}

fn git_error(args: &[&str], message: impl std::fmt::Display) -> Error {
    Error::io(
        format!("git {}", args.join(" ")),
        std::io::Error::other(message.to_string()),
    )
}

/// Runs git in `root` (with `index` as its index, when given): its trimmed
/// stdout, or an error with its stderr.
fn git(root: &Path, index: Option<&Path>, args: &[&str]) -> Result<String> {
    let env: Vec<(&str, &OsStr)> = index
        .map(|index| ("GIT_INDEX_FILE", index.as_os_str()))
        .into_iter()
        .collect();
    crate::cli::git::run(root, args, &env).map_err(|e| git_error(args, e))
}

/// A temporary index file, removed when dropped.
struct TempIndex(PathBuf);

impl Drop for TempIndex {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The working tree of the repository at `root` as a commit on a private
/// ref; None when it does not differ from HEAD (build HEAD then).
pub fn snapshot(root: &Path) -> Result<Option<Snapshot>> {
    let head = git(root, None, &["rev-parse", "--verify", "HEAD^{commit}"]).map_err(|_| {
        git_error(
            &["rev-parse", "HEAD"],
            "the repository has no commit yet: commit once, then --working-tree builds your changes on top",
        )
    })?;
    let real_index = PathBuf::from(git(
        root,
        None,
        &["rev-parse", "--path-format=absolute", "--git-path", "index"],
    )?);
    let temp = TempIndex(
        real_index.with_file_name(format!("piper-working-tree-{}.index", std::process::id())),
    );
    match std::fs::copy(&real_index, &temp.0) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            git(root, Some(&temp.0), &["read-tree", &head])?;
        }
        Err(e) => {
            return Err(Error::io(
                format!("cannot copy {}", real_index.display()),
                e,
            ));
        }
    }
    // From the top: the whole working tree, whatever directory piper runs in.
    git(root, Some(&temp.0), &["add", "--all", "--", ":/"])?;
    let tree = git(root, Some(&temp.0), &["write-tree"])?;
    let changed = git(
        root,
        Some(&temp.0),
        &["diff-index", "--cached", "--name-only", &head],
    )?
    .lines()
    .count();
    if changed == 0 {
        return Ok(None);
    }
    let branch = git(root, None, &["symbolic-ref", "--short", "-q", "HEAD"])
        .unwrap_or_else(|_| "a detached HEAD".into());
    let message = format!(
        "piper: the working tree of {branch} at {}, not committed\n\n{changed} file(s) differ from HEAD. Made by `piper submit --working-tree`.",
        &head[..head.len().min(12)]
    );
    let sha = commit_tree(root, &tree, &head, &message)?;
    let git_ref = format!("{REF_PREFIX}{sha}");
    git(root, None, &["update-ref", &git_ref, &sha])?;
    prune(root);
    Ok(Some(Snapshot {
        git_ref,
        sha,
        changed,
    }))
}

/// `git commit-tree`, with a stand-in identity when the user has none set
/// (a fresh container): the commit is Piper's, not the user's history.
fn commit_tree(root: &Path, tree: &str, parent: &str, message: &str) -> Result<String> {
    let args = ["commit-tree", tree, "-p", parent, "-m", message];
    let piper = OsStr::new("piper");
    let localhost = OsStr::new("piper@localhost");
    let stand_in = [
        ("GIT_AUTHOR_NAME", piper),
        ("GIT_AUTHOR_EMAIL", localhost),
        ("GIT_COMMITTER_NAME", piper),
        ("GIT_COMMITTER_EMAIL", localhost),
    ];
    let env: &[(&str, &OsStr)] = match git(root, None, &["var", "GIT_COMMITTER_IDENT"]) {
        Ok(_) => &[],
        Err(_) => &stand_in,
    };
    crate::cli::git::run(root, &args, env).map_err(|e| git_error(&args, e))
}

/// Keeps the newest `KEEP` working-tree refs; failures only leave more.
fn prune(root: &Path) {
    let Ok(refs) = git(
        root,
        None,
        &[
            "for-each-ref",
            "--sort=-committerdate",
            "--format=%(refname)",
            REF_PREFIX,
        ],
    ) else {
        return;
    };
    for old in refs.lines().skip(KEEP) {
        let _ = git(root, None, &["update-ref", "-d", old]);
    }
}
