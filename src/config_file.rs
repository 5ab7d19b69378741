//! Optional TOML config files: `piperd.toml` for the agent and
//! `config.toml` for the CLI's remote commands and caches, in `$XDG_CONFIG_HOME/piper`
//! (or `~/.config/piper`). Precedence everywhere: command-line flag, then
//! environment variable, then config file, then default.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// `$XDG_CONFIG_HOME/piper/NAME`, else `~/.config/piper/NAME`.
pub fn default_path(name: &str) -> PathBuf {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".config"),
    };
    base.join("piper").join(name)
}

/// Reads `explicit` (which must exist) or the default file (if it exists).
/// Errors name the file, and the key and line toml reports.
pub fn load<T: DeserializeOwned + Default>(explicit: Option<&Path>, name: &str) -> Result<T> {
    let path = match explicit {
        Some(path) => {
            if !path.is_file() {
                return Err(Error::ConfigNotFound {
                    path: path.to_path_buf(),
                });
            }
            path.to_path_buf()
        }
        None => {
            let path = default_path(name);
            if !path.is_file() {
                return Ok(T::default());
            }
            path
        }
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    toml::from_str(&text).map_err(|e| Error::Setting {
        name: path.display().to_string(),
        message: e.to_string().trim_end().replace('\n', "\n  "),
    })
}

#[cfg(feature = "cli")]
/// The CLI's `config.toml`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// piperd's address, e.g. "http://ci.example.com:7117".
    pub server: Option<String>,
    /// The API token.
    pub token: Option<String>,
    /// `piper exec --disk-cache`.
    pub disk_cache: Option<PathBuf>,
    /// `piper exec --remote-cache`.
    pub remote_cache: Option<String>,
    /// `piper exec --remote-instance`.
    pub remote_instance: Option<String>,
    /// `piper exec --remote-header`, each `NAME=VALUE`.
    pub remote_headers: Option<Vec<String>>,
    /// `piper exec --remote-upload`.
    pub remote_upload: Option<bool>,
    /// `piper exec --remote-exec`.
    pub remote_exec: Option<String>,
    /// `piper exec --remote-jobs`.
    pub remote_jobs: Option<usize>,
    /// `piper exec --remote-exec-fallback`.
    pub remote_exec_fallback: Option<bool>,
}
