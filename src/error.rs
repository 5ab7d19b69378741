//! Every error the engine reports before a build starts (finding, evaluating
//! and validating `piper.lua`, a setting, an I/O failure), with one `Display`
//! that writes the message a person reads and one `exit_code` that scripts
//! read. The hosts wrap it in errors of their own (`cli/error.rs`).
//!
//! Failures *during* a build are not errors in this sense: they are step
//! results carried by events (see `event.rs`).

use std::fmt;
use std::path::PathBuf;

use crate::location::Location;

/// Exit status for a configuration or usage error (bad `piper.lua`, unknown
/// target, bad flag). Documented in `docs/reference/cli.md`.
pub const EXIT_CONFIG: i32 = 2;
/// Exit status when a build was interrupted (Ctrl-C, SIGTERM), as shells do.
pub const EXIT_INTERRUPTED: i32 = 130;
/// Exit status of a build whose failing step timed out, as `timeout(1)` does.
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit status for an internal or I/O failure of Piper itself.
pub const EXIT_INTERNAL: i32 = 1;

/// Why the engine could not load or start what it was asked: its
/// `Display` is the message a person reads, naming the problem and where
/// (`piper.lua:12: ...`); [`Error::exit_code`] is what `piper` exits with;
/// an I/O failure keeps its cause as `source()`.
#[derive(Debug)]
#[non_exhaustive]
// The fields are named for what they hold; the message is `Display`.
#[allow(missing_docs)]
pub enum Error {
    /// No `piper.lua` in the directory or any parent.
    NoConfig {
        start: PathBuf,
        searched: Vec<PathBuf>,
    },
    /// `-f FILE` names a file that does not exist.
    ConfigNotFound { path: PathBuf },
    /// `-f FILE` names a directory.
    ConfigIsADirectory { path: PathBuf },
    /// Lua raised an error while evaluating the config (syntax or runtime);
    /// the message already carries `file:line`.
    Lua { message: String },
    /// A value in a step or pipeline has the wrong shape.
    Spec { location: Location, message: String },
    /// A field name that Piper does not know.
    UnknownField {
        location: Location,
        owner: String,
        field: String,
        suggestion: Option<String>,
    },
    UnknownDependency {
        location: Location,
        step: String,
        dependency: String,
        suggestion: Option<String>,
    },
    UnknownPipelineMember {
        location: Location,
        pipeline: String,
        member: String,
        suggestion: Option<String>,
    },
    UnknownTriggerTarget {
        location: Location,
        pipeline: String,
        target: String,
        suggestion: Option<String>,
    },
    Duplicate {
        kind: &'static str,
        name: String,
        first: Location,
        second: Location,
    },
    /// A dependency cycle; `path` starts and ends with the same step.
    Cycle {
        location: Location,
        path: Vec<String>,
    },
    /// Pipelines that trigger each other in a loop.
    TriggerCycle {
        location: Location,
        path: Vec<String>,
    },
    /// `piper exec NAME` where NAME is neither a pipeline nor a step.
    UnknownTarget {
        name: String,
        suggestion: Option<String>,
        pipelines: Vec<String>,
        steps: Vec<String>,
    },
    /// A pipeline argument that must be a pipeline, not a step.
    UnknownPipeline {
        name: String,
        suggestion: Option<String>,
        pipelines: Vec<String>,
    },
    /// An environment variable or flag that configures piper has a bad
    /// value.
    Setting { name: String, message: String },
    /// Reading or writing a file (or starting a thread) failed.
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl Error {
    /// What `piper` exits with for it: 2 for a configuration or usage
    /// error, 1 for an I/O or internal one.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Io { .. } => EXIT_INTERNAL,
            _ => EXIT_CONFIG,
        }
    }

    /// An I/O error while doing `context` ("cannot read piper.lua").
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

fn did_you_mean(f: &mut fmt::Formatter<'_>, suggestion: &Option<String>) -> fmt::Result {
    match suggestion {
        Some(s) => write!(f, "\n  did you mean `{s}`?"),
        None => Ok(()),
    }
}

fn listing(f: &mut fmt::Formatter<'_>, label: &str, names: &[String]) -> fmt::Result {
    if names.is_empty() {
        write!(f, "\n  no {label} are defined")
    } else {
        write!(f, "\n  {label}: {}", names.join(", "))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoConfig { start, searched } => {
                write!(
                    f,
                    "no piper.lua found in {} or any parent directory",
                    start.display()
                )?;
                if let Some(top) = searched.last() {
                    write!(f, " (searched up to {})", top.display())?;
                }
                write!(f, "\n  run `piper init` to create a starter piper.lua here")
            }
            Error::ConfigNotFound { path } => {
                write!(f, "config file {} does not exist", path.display())
            }
            Error::ConfigIsADirectory { path } => write!(
                f,
                "{} is a directory, not a config file\n  to use the piper.lua in it: piper -C {}",
                path.display(),
                path.display()
            ),
            Error::Lua { message } => write!(f, "{message}"),
            Error::Spec { location, message } => write!(f, "{location}: {message}"),
            Error::UnknownField {
                location,
                owner,
                field,
                suggestion,
            } => {
                write!(f, "{location}: {owner} has no field `{field}`")?;
                did_you_mean(f, suggestion)
            }
            Error::UnknownDependency {
                location,
                step,
                dependency,
                suggestion,
            } => {
                write!(
                    f,
                    "{location}: step `{step}` depends on `{dependency}`, which is not a step"
                )?;
                did_you_mean(f, suggestion)
            }
            Error::UnknownPipelineMember {
                location,
                pipeline,
                member,
                suggestion,
            } => {
                write!(
                    f,
                    "{location}: pipeline `{pipeline}` lists `{member}`, which is neither a step nor a pipeline"
                )?;
                did_you_mean(f, suggestion)
            }
            Error::UnknownTriggerTarget {
                location,
                pipeline,
                target,
                suggestion,
            } => {
                write!(
                    f,
                    "{location}: pipeline `{pipeline}` triggers pipeline `{target}`, which does not exist"
                )?;
                did_you_mean(f, suggestion)
            }
            Error::Duplicate {
                kind,
                name,
                first,
                second,
            } => write!(
                f,
                "{second}: {kind} `{name}` is defined twice\n  first defined at {first}"
            ),
            Error::Cycle { location, path } => {
                write!(f, "{location}: dependency cycle: {}", path.join(" -> "))
            }
            Error::TriggerCycle { location, path } => write!(
                f,
                "{location}: pipelines trigger each other in a loop: {}",
                path.join(" -> ")
            ),
            Error::UnknownTarget {
                name,
                suggestion,
                pipelines,
                steps,
            } => {
                write!(f, "no pipeline or step named `{name}`")?;
                did_you_mean(f, suggestion)?;
                listing(f, "pipelines", pipelines)?;
                listing(f, "steps", steps)
            }
            Error::UnknownPipeline {
                name,
                suggestion,
                pipelines,
            } => {
                write!(f, "no pipeline named `{name}`")?;
                did_you_mean(f, suggestion)?;
                listing(f, "pipelines", pipelines)
            }
            Error::Setting { name, message } => write!(f, "{name}: {message}"),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A result whose error is Piper's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
