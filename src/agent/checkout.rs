//! Where a build's commit comes from and goes: the repository's cache (a
//! mirror fetched under its own lock) or a sent bundle, a worktree checked
//! out for one build and released after it, the commit and its version
//! recorded, and the project at its root loaded through the embedding API.
//! Part of the worker (`worker.rs` runs what this checks out).

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::git::{GitLimits, git};
use super::log_writer::with_retry;
use super::store::Build;
use super::worker::Agent;
use crate::project::{CONFIG_FILE, Located};

impl Agent {
    /// Limits for git work on behalf of `cancel`'s owner.
    pub fn git_limits<'a>(&self, cancel: &'a CancellationToken) -> GitLimits<'a> {
        GitLimits {
            timeout: self.git_timeout,
            cancel,
            protocols: self.git_protocols,
        }
    }

    /// Checks out the build's commit and records which it is (and its
    /// version). A build that names its commit (a git host's push) builds
    /// exactly that, even if the branch moved on since.
    async fn checkout_commit(
        &self,
        build: &Build,
        workspace: &Path,
        token: &CancellationToken,
    ) -> Result<(String, Option<String>), String> {
        let (sha, version) = self
            .checkout_ref(
                &build.repo,
                build.sha.as_deref().unwrap_or(&build.git_ref),
                workspace,
                self.git_limits(token),
            )
            .await?;
        let held = with_retry("recording the build's commit", &self.abandon, || {
            self.store
                .set_revision(build.id, build.attempt, &sha, version.as_deref())
        })
        .await?;
        if !held {
            token.cancel();
            return Err("this agent no longer holds the build (it was rescued or ended)".into());
        }
        Ok((sha, version))
    }

    pub(super) fn cache_dir(&self, repo: &str) -> PathBuf {
        self.data
            .join("repos")
            .join(&blake3::hash(repo.as_bytes()).to_hex()[..16])
    }

    /// Fetches `repo` into its cache (one mirror per repository) and
    /// resolves `git_ref` to a commit.
    pub async fn resolve(
        &self,
        repo: &str,
        git_ref: &str,
        limits: GitLimits<'_>,
    ) -> Result<String, String> {
        let cache = self.cache_dir(repo);
        let lock = self.repo_lock(&cache);
        let _guard = tokio::select! {
            guard = lock.lock() => guard,
            _ = limits.cancel.cancelled() => return Err("canceled".into()),
        };
        // Commits sent over the API: cloned from the bundle, a file of the
        // agent's own (the one `file` fetch allowed whatever the policy).
        let (repo, limits) = match super::allow_list::bundle_digest(repo) {
            Some(digest) => {
                let file = self.bundle_file(digest).await?;
                let limits = GitLimits {
                    protocols: "file",
                    ..limits
                };
                (file.to_string_lossy().into_owned(), limits)
            }
            None => (repo.to_string(), limits),
        };
        let repo = repo.as_str();
        if cache.join("HEAD").exists() {
            git(&cache, &["fetch", "--quiet", "--prune", "origin"], limits)
                .await
                .map_err(|e| format!("cannot fetch {repo}: {e}"))?;
        } else {
            let parent = cache.parent().unwrap_or(Path::new("."));
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| e.to_string())?;
            let cache_text = cache.to_string_lossy().into_owned();
            // `--`: a repository never becomes an option of git.
            git(
                parent,
                &["clone", "--quiet", "--mirror", "--", repo, &cache_text],
                limits,
            )
            .await
            .map_err(|e| format!("cannot clone {repo}: {e}"))?;
        }
        let spec = format!("{git_ref}^{{commit}}");
        git(
            &cache,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                &spec,
            ],
            limits,
        )
        .await
        .map_err(|_| format!("ref `{git_ref}` does not exist in {repo}"))
    }

    /// The bundle `digest` as a file in the data directory, written from
    /// the database the first time.
    pub(super) async fn bundle_file(&self, digest: &str) -> Result<PathBuf, String> {
        let file = self.data.join("bundles").join(format!("{digest}.bundle"));
        if file.is_file() {
            return Ok(file);
        }
        let data = with_retry("reading a bundle", &self.abandon, || {
            self.store.bundle(digest)
        })
        .await?
        .ok_or_else(|| {
            format!("the commits sent as bundle {digest} are no longer kept (pruned): submit again")
        })?;
        let dir = self.data.join("bundles");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        crate::fsutil::write_atomic(&file, &data)
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        Ok(file)
    }

    /// Fetches `repo`, checks `git_ref` out into `workspace`; returns the
    /// commit and its `git describe`.
    pub async fn checkout_ref(
        &self,
        repo: &str,
        git_ref: &str,
        workspace: &Path,
        limits: GitLimits<'_>,
    ) -> Result<(String, Option<String>), String> {
        let sha = self.resolve(repo, git_ref, limits).await?;
        let cache = self.cache_dir(repo);
        self.release_workspace(repo, workspace).await;
        tokio::fs::create_dir_all(workspace.parent().unwrap_or(Path::new(".")))
            .await
            .map_err(|e| e.to_string())?;
        let ws_text = workspace.to_string_lossy().into_owned();
        // One process for the checkout (a worktree of the mirror, sharing its
        // objects), and the version computed beside it: pickup latency is
        // mostly git processes.
        let add_args = [
            "worktree", "add", "--quiet", "--detach", "--force", &ws_text, &sha,
        ];
        let describe_args = ["describe", "--tags", "--always", &sha];
        // Adding a worktree and pruning stale ones must not interleave.
        let (added, version) = {
            let lock = self.repo_lock(&cache);
            let _guard = lock.lock().await;
            tokio::join!(
                git(&cache, &add_args, limits),
                git(&cache, &describe_args, limits)
            )
        };
        added.map_err(|e| format!("cannot check out {sha}: {e}"))?;
        Ok((sha, version.ok()))
    }

    /// Removes a workspace and forgets it in the repository's cache.
    pub async fn release_workspace(&self, repo: &str, workspace: &Path) {
        if tokio::fs::remove_dir_all(workspace).await.is_ok() {
            let cache = self.cache_dir(repo);
            let lock = self.repo_lock(&cache);
            let _guard = lock.lock().await;
            let never = CancellationToken::new();
            let _ = git(&cache, &["worktree", "prune"], self.git_limits(&never)).await;
        }
    }

    /// Checks out the build's commit (`checkout_commit`) and loads the
    /// project at its root through the embedding API, as `piper exec`
    /// does; evaluated every time (a workspace is new for each build:
    /// nothing to cache).
    pub(super) async fn checkout_project(
        &self,
        build: &Build,
        workspace: &Path,
        token: &CancellationToken,
    ) -> Result<(String, Option<String>, crate::Project), String> {
        let (sha, version) = self.checkout_commit(build, workspace, token).await?;
        let (repo, sha) = (&build.repo, &sha);
        let config = workspace.join(CONFIG_FILE);
        if !config.is_file() {
            return Err(format!("no {CONFIG_FILE} at the root of {repo} at {sha}"));
        }
        let project = Located {
            root: workspace.to_path_buf(),
            config,
            host: Default::default(),
        };
        let engine = crate::Engine::new().with_config_cache(false);
        let project = tokio::task::spawn_blocking(move || engine.load_located(project))
            .await
            .map_err(|e| format!("internal: {e}"))?
            .map_err(|e| e.to_string())?;
        Ok((sha.clone(), version, project))
    }
}
