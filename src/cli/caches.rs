//! The caches `piper exec`, `watch` and `explain` use: the disk cache
//! (`--disk-cache`) with a remote one behind it (`--remote-cache`), from
//! flags and environment, then the CLI's `config.toml`. Part of the CLI
//! host (`cli/mod.rs` builds the run's options with it).

use std::path::PathBuf;

use super::error::{Error, Result};

/// The disk cache (`--disk-cache`), with the remote one behind it
/// (`--remote-cache`; then the disk cache is the user's cache directory
/// unless one is given).
pub(crate) fn caches(settings: CacheSettings) -> Result<Option<crate::Cache>> {
    let settings = settings.with_config_file()?;
    // A cluster is also the remote cache, unless another is named.
    let remote_url = settings.remote.as_ref().or(settings.exec.as_ref());
    let dir = match (&settings.disk, remote_url) {
        (Some(dir), _) => dir.clone(),
        (None, Some(_)) => user_cache_dir(),
        (None, None) => return Ok(None),
    };
    let mut cache = crate::Cache::new(crate::DiskCache::new(dir));
    let remote = |url: &str, flag: &'static str| {
        crate::RemoteCache::with_settings(url, settings.instance.as_deref(), &settings.headers)
            .map_err(|e| Error::setting(flag, e))
    };
    if let Some(url) = remote_url {
        let upload = settings.upload.unwrap_or(true);
        cache = cache.with_remote(remote(url, "--remote-cache")?.upload(upload));
    }
    if let Some(url) = &settings.exec {
        let mut executor = crate::RemoteExecutor::new(remote(url, "--remote-exec")?)
            .map_err(|e| Error::setting("--remote-exec", e))?
            .fallback(settings.fallback.unwrap_or(false));
        if let Some(jobs) = settings.jobs {
            executor = executor.jobs(jobs);
        }
        cache = cache.with_executor(executor);
    }
    Ok(Some(cache))
}

/// The caches `exec` (or `explain`) asks for: flags and environment, then
/// the CLI's `config.toml`.
#[derive(Default)]
pub struct CacheSettings {
    pub disk: Option<PathBuf>,
    pub remote: Option<String>,
    pub instance: Option<String>,
    pub headers: Vec<String>,
    pub upload: Option<bool>,
    pub exec: Option<String>,
    pub jobs: Option<usize>,
    pub fallback: Option<bool>,
}

impl CacheSettings {
    /// What is not set filled in from `config.toml` (`PIPER_CONFIG` names
    /// another file).
    fn with_config_file(mut self) -> Result<CacheSettings> {
        let explicit = std::env::var_os("PIPER_CONFIG").map(PathBuf::from);
        let file: crate::config_file::ClientConfig =
            crate::config_file::load(explicit.as_deref(), "config.toml")?;
        self.disk = self.disk.or(file.disk_cache);
        self.remote = self.remote.or(file.remote_cache);
        self.instance = self.instance.or(file.remote_instance);
        if self.headers.is_empty() {
            self.headers = file.remote_headers.unwrap_or_default();
        }
        self.upload = self.upload.or(file.remote_upload);
        self.exec = self.exec.or(file.remote_exec);
        self.jobs = self.jobs.or(file.remote_jobs);
        self.fallback = self.fallback.or(file.remote_exec_fallback);
        Ok(self)
    }
}

/// `$XDG_CACHE_HOME/piper`, else `~/.cache/piper`.
fn user_cache_dir() -> PathBuf {
    match std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("piper"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/piper"),
    }
}
