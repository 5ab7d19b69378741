//! `--send`: the commit (or the working tree) as a git bundle sent to the
//! agent, for an agent on another machine.

use crate::cli::error::{Error, Result};

use super::http::*;

/// Sends the commit `git_ref` of the repository at `root` (and the history
/// behind it) to piperd as a git bundle: (the `bundle:DIGEST` repository to
/// build, the commit). For an agent that cannot read this machine's paths.
pub(super) async fn send_commit(
    client: &Client,
    root: &std::path::Path,
    git_ref: &str,
) -> Result<(String, String)> {
    let git_error =
        |args: &str, e: String| Error::io(format!("git {args}"), std::io::Error::other(e));
    let spec = format!("{git_ref}^{{commit}}");
    let sha = crate::cli::git::run(
        root,
        &["rev-parse", "--verify", "--end-of-options", &spec],
        &[],
    )
    .map_err(|e| git_error("rev-parse", e))?;
    // A bundle lists refs: a full ref name (a working tree's private ref)
    // goes as it is and stays the build's ref; anything else (HEAD, a
    // branch, a commit) as a private ref for the time it takes, and the
    // build names the commit.
    let (bundle, built_ref) = if git_ref.starts_with("refs/") {
        let bundle = crate::cli::git::bytes(root, &["bundle", "create", "--quiet", "-", git_ref]);
        (bundle, git_ref.to_string())
    } else {
        let temporary = format!("refs/piper/send/{sha}");
        crate::cli::git::run(root, &["update-ref", &temporary, &sha], &[])
            .map_err(|e| git_error("update-ref", e))?;
        let bundle =
            crate::cli::git::bytes(root, &["bundle", "create", "--quiet", "-", &temporary]);
        let _ = crate::cli::git::run(root, &["update-ref", "-d", &temporary], &[]);
        (bundle, sha.clone())
    };
    let bundle = bundle.map_err(|e| git_error("bundle create", e))?;
    eprintln!(
        "sending commit {} to piperd as a git bundle ({} KiB)",
        &sha[..sha.len().min(12)],
        bundle.len().div_ceil(1024)
    );
    let (stored, _) = client
        .typed::<crate::agent::api::BundleStored>(
            client
                .http
                .post(client.url("/bundles"))
                .header("content-type", "application/octet-stream")
                .body(bundle),
        )
        .await?;
    Ok((stored.repo, built_ref))
}

/// The project's repository, for a submit without `--repo`: refused at
/// once outside git (the agent could only fail). With `--working-tree`,
/// its ref is a commit of the working tree; else a warning says when the
/// work tree has changes the agent will not see. Returns (its root, ref).
pub(super) fn local_repository(
    git_ref: &str,
    working_tree: bool,
) -> Result<(std::path::PathBuf, String)> {
    let cwd =
        std::env::current_dir().map_err(|e| Error::io("cannot read the current directory", e))?;
    let root = crate::project::Located::locate(&cwd, None)?.root;
    let git = |args: &[&str]| crate::cli::git::run(&root, args, &[]).ok();
    if git(&["rev-parse", "--is-inside-work-tree"]).as_deref() != Some("true") {
        return Err(Error::NotARepository { dir: root });
    }
    let repo = root.clone();
    if working_tree {
        return match crate::cli::working_tree::snapshot(&root)? {
            Some(snapshot) => {
                eprintln!(
                    "submitting the working tree: {} file(s) differ from HEAD, as commit {} ({})",
                    snapshot.changed,
                    &snapshot.sha[..12],
                    snapshot.git_ref
                );
                Ok((repo, snapshot.git_ref))
            }
            None => {
                eprintln!("the working tree matches HEAD: submitting HEAD");
                Ok((repo, "HEAD".into()))
            }
        };
    }
    if git_ref == "HEAD"
        && let Some(changes) = git(&["status", "--porcelain", "--untracked-files=no"])
        && !changes.is_empty()
    {
        let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "HEAD".into());
        let files = changes.lines().count();
        eprintln!(
            "warning: {files} changed file(s) are not committed: the agent builds HEAD ({head}), without them (--working-tree builds them)"
        );
    }
    Ok((repo, git_ref.to_string()))
}
