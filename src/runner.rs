//! The step runner: how one command of a step is executed. The executor
//! decides *what* runs and when (order, parallelism, up-to-date checks,
//! retries, timeouts); a [`Runner`] decides *how* a command runs. The
//! default, [`LocalRunner`], starts a local process in its own process
//! group under supervision (`process.rs`). A host can put another behind
//! the same seam — a container, a remote machine, a recorder — through
//! [`Engine::with_runner`](crate::Engine::with_runner).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use crate::process::{Exit, OutputSink};
pub use crate::spec::Command;

/// One command to run, with everything the executor decided for it.
#[non_exhaustive]
pub struct CommandRun<'a> {
    /// A shell script (`/bin/sh -ec`) or an argv list.
    pub command: &'a Command,
    /// The pipeline's arguments (`piper exec p -- ARGS`): a shell command's
    /// positional parameters.
    pub args: &'a [String],
    /// The step's working directory.
    pub dir: &'a Path,
    /// Variables to add to the environment (the step's, `--env`, `PIPER_*`).
    pub env: &'a [(String, String)],
    /// Where the command's output goes (stdout and stderr, in order).
    pub output: &'a OutputSink,
    /// Fired when the step must stop (Ctrl-C, fail-fast, its timeout): end
    /// the command, then answer [`Exit::Canceled`].
    pub cancel: &'a CancellationToken,
    /// How long a canceled command may take to exit before it is killed.
    pub grace: Duration,
}

/// A future a [`Runner`] returns.
pub type RunFuture<'a> = Pin<Box<dyn Future<Output = Exit> + Send + 'a>>;

/// Runs the commands of steps. One runner serves every step of a run, from
/// many tasks at once.
///
/// A runner that logs each command, then runs it as Piper would:
///
/// ```
/// use piper::{CommandRun, LocalRunner, RunFuture, Runner};
///
/// struct Logged;
///
/// impl Runner for Logged {
///     fn run<'a>(&'a self, run: CommandRun<'a>) -> RunFuture<'a> {
///         eprintln!("running {} in {}", run.command, run.dir.display());
///         LocalRunner.run(run)
///     }
/// }
///
/// let engine = piper::Engine::new().with_runner(Logged);
/// ```
pub trait Runner: Send + Sync {
    /// Runs `run.command` to its end and says how it ended.
    fn run<'a>(&'a self, run: CommandRun<'a>) -> RunFuture<'a>;
}

/// Local processes, each in its own process group, ended as a group on
/// cancel (SIGTERM, then SIGKILL after the grace period): what `piper`
/// and `piperd` use.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalRunner;

impl Runner for LocalRunner {
    fn run<'a>(&'a self, run: CommandRun<'a>) -> RunFuture<'a> {
        Box::pin(crate::process::run(
            run.command,
            run.args,
            run.dir,
            run.env,
            run.output,
            run.cancel,
            run.grace,
        ))
    }
}

impl<'a> CommandRun<'a> {
    /// A command to run; `args` empty, `grace` 5 s (for runners that
    /// delegate, and tests).
    pub fn new(
        command: &'a Command,
        dir: &'a Path,
        env: &'a [(String, String)],
        output: &'a OutputSink,
        cancel: &'a CancellationToken,
    ) -> CommandRun<'a> {
        CommandRun {
            command,
            args: &[],
            dir,
            env,
            output,
            cancel,
            grace: Duration::from_secs(5),
        }
    }
}
