//! Finding the project: the `piper.lua` that governs the current directory
//! (walking up like git and just do) and the root it sits in. Everything else
//! in a run — globs, step directories, required modules — is relative to
//! that root, never to the process's working directory, so that several
//! projects can be hosted in one process (piperd).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const CONFIG_FILE: &str = "piper.lua";

/// Where a project is: its root, its config file and the host's Lua
/// modules; found, not loaded (the engine's [`crate::Project`] is a loaded
/// one).
#[derive(Debug, Clone)]
pub struct Located {
    /// Directory holding the config; steps run here unless they set `dir`.
    pub root: PathBuf,
    /// The config file itself.
    pub config: PathBuf,
    /// Lua modules the host adds (`require "host.x"`); none for `piper`.
    pub host: crate::host::HostModules,
}

impl Located {
    /// `-f FILE` wins; otherwise walk up from `start` (the `-C DIR` or the
    /// current directory) until a `piper.lua` is found.
    pub fn locate(start: &Path, file: Option<&Path>) -> Result<Located> {
        if let Some(file) = file {
            let config = if file.is_absolute() {
                file.to_path_buf()
            } else {
                start.join(file)
            };
            if !config.is_file() {
                return Err(match config.is_dir() {
                    true => Error::ConfigIsADirectory { path: config },
                    false => Error::ConfigNotFound { path: config },
                });
            }
            let config = absolute(&config)?;
            let root = config
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("/"));
            return Ok(Located {
                root,
                config,
                host: Default::default(),
            });
        }
        let start = absolute(start)?;
        let mut searched = Vec::new();
        for dir in start.ancestors() {
            let candidate = dir.join(CONFIG_FILE);
            searched.push(dir.to_path_buf());
            if candidate.is_file() {
                return Ok(Located {
                    root: dir.to_path_buf(),
                    config: candidate,
                    host: Default::default(),
                });
            }
        }
        Err(Error::NoConfig { start, searched })
    }

    /// The config's path as shown in messages: relative to the root.
    pub fn config_display_name(&self) -> String {
        self.config
            .strip_prefix(&self.root)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| self.config.display().to_string())
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(path)
        .map_err(|e| Error::io(format!("cannot resolve {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_up_to_the_nearest_config() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::write(root.join(CONFIG_FILE), "").unwrap();
        let deep = root.join("a/b");
        std::fs::create_dir_all(&deep).unwrap();
        let project = Located::locate(&deep, None).unwrap();
        assert_eq!(project.root, root);
        assert_eq!(project.config_display_name(), "piper.lua");
    }

    #[test]
    fn says_where_it_looked() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Located::locate(tmp.path(), None).unwrap_err().to_string();
        assert!(err.contains("no piper.lua found"), "{err}");
        assert!(err.contains("piper init"), "{err}");
    }
}
