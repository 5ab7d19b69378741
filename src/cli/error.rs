//! The CLI's errors: the engine's (`crate::Error`, passed through as they
//! are), and what only the command line and the remote commands can get
//! wrong: an existing `piper.lua` for `init`, a bad `--env`, piperd
//! unreachable or refusing, no repository to submit, a build that cannot
//! be reproduced here. Its `Display` is the message a person reads;
//! `exit_code` what `piper` exits with (docs/reference/cli.md).

use std::fmt;
use std::path::PathBuf;

use crate::error::{EXIT_CONFIG, EXIT_INTERNAL};

/// Why a `piper` command could not do what it was asked.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The engine's error (loading, validating, running the project).
    Engine(crate::Error),
    /// `piper init` where a `piper.lua` exists.
    InitExists { path: PathBuf },
    /// `--env` without `=`.
    BadEnvOverride { value: String },
    /// piperd could not be reached, or refused a request.
    Remote { message: String },
    /// `piper submit` without `--repo` outside a git repository.
    NotARepository { dir: PathBuf },
    /// `piper exec --from-build`: the build cannot be run here (its commit
    /// is not in this clone and cannot be fetched, say).
    CannotReproduce { build: i64, message: String },
}

/// A result whose error is the CLI's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// What `piper` exits with for it: 2 for a configuration or usage
    /// error, 1 for an I/O or internal one (piperd unreachable included).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Engine(e) => e.exit_code(),
            Error::Remote { .. } => EXIT_INTERNAL,
            _ => EXIT_CONFIG,
        }
    }

    /// An I/O error while doing `context` ("cannot write piper.lua").
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Engine(crate::Error::io(context, source))
    }

    /// An environment variable or flag that configures piper has a bad value.
    pub fn setting(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Engine(crate::Error::Setting {
            name: name.into(),
            message: message.into(),
        })
    }
}

impl From<crate::Error> for Error {
    fn from(error: crate::Error) -> Self {
        Error::Engine(error)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Engine(e) => e.fmt(f),
            Error::InitExists { path } => write!(
                f,
                "{} already exists; refusing to overwrite it",
                path.display()
            ),
            Error::BadEnvOverride { value } => write!(f, "--env expects KEY=VALUE, got `{value}`"),
            Error::Remote { message } => write!(f, "{message}"),
            Error::NotARepository { dir } => write!(
                f,
                "{} is not in a git repository: an agent builds commits of a repository\n  \
                 commit the project with git first, or name a repository with --repo URL",
                dir.display()
            ),
            Error::CannotReproduce { build, message } => {
                write!(f, "cannot reproduce build {build}: {message}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Transparent: the engine's error is this error.
            Error::Engine(e) => e.source(),
            _ => None,
        }
    }
}
