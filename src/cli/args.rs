//! The command line, defined once: this drives parsing, `--help`, shell
//! completions (static and the dynamic pipeline/step names) and the CLI
//! reference in docs/reference/cli.md (checked by a test).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::engine::{ArgValueCandidates, CompletionCandidate};

use crate::cli::render::OutputMode;

const ABOUT: &str = "Piper: pipelines as Lua code, run in parallel";

const LONG_ABOUT: &str = "\
Piper runs the pipelines defined in piper.lua at the root of your project.
Steps run your own tools (shell commands, programs, or Lua functions) in
parallel, in dependency order, each in its own process group.";

const AFTER_HELP: &str = "\
Examples:
  piper exec ci              run the `ci` pipeline
  piper exec test -j1        run the step `test` and its dependencies, one at a time
  piper exec ci --json       one JSON event per line
  piper explain ci           what would run, and why
  piper watch dev            rerun what each file change affects
  piper list                 pipelines and steps
  piper graph ci --format dot | dot -Tsvg > ci.svg
  piper submit ci -f         run this project's HEAD on piperd, stream its log

Exit status: 0 success; the failing step's exit code; 124 a step timed out;
2 a configuration or usage error; 130 interrupted.";

// Not API (re-exported only in `piper::internals` for the docs test); a doc
// comment here would become clap's help text.
#[allow(missing_docs)]
#[derive(Debug, Parser)]
#[command(name = "piper", version, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    /// Use this config file instead of searching for piper.lua (before the command)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Run as if started in DIR: piper.lua is searched from there upwards (before the command)
    #[arg(short = 'C', long = "directory", value_name = "DIR")]
    pub directory: Option<PathBuf>,

    /// Evaluate piper.lua even if its cached graph is current (the cache in .piper/ is left alone)
    #[arg(long, global = true)]
    pub no_config_cache: bool,

    /// When to use colours [NO_COLOR in the environment means never]
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// Each subcommand's arguments are built only when it is the one given
/// (`defer`): building all of them was a third of the instructions of a
/// one-step `piper exec`. Whatever inspects the tree calls `build()` first.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Run pipelines or steps (with their dependencies)
    #[command(visible_alias = "run")]
    Exec(ExecArgs),
    /// List pipelines and steps
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Run a pipeline, then rerun what each file change affects
    Watch(WatchArgs),
    /// Say which steps would run and why, without running anything
    Explain(ExplainArgs),
    /// Print the step graph of a pipeline as DOT, Mermaid or JSON
    Graph(GraphArgs),
    /// Print a shell completion script (completes pipeline and step names too)
    Completions {
        /// Shell to complete for
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Submit a build to piperd (the build agent)
    Submit(SubmitArgs),
    /// List builds on piperd, newest first
    Builds(BuildsArgs),
    /// Each step over a pipeline's last builds on piperd: p50/p95 time, trend, failures; and flaky steps
    History(HistoryArgs),
    /// Show a build on piperd with its steps
    Show(OneBuildArgs),
    /// Print a build from piperd as `piper exec` shows it (or its raw log)
    Logs(LogsArgs),
    /// Cancel a build on piperd
    Cancel(OneBuildArgs),
    /// Run a build on piperd again: same commit, linked to the old build
    Retrigger(OneBuildArgs),
    /// List the agents sharing piperd's database
    Agents(RemoteArgs),
    /// Forget what ran: remove the build state and the configuration cache in .piper/ (and outputs with --outputs)
    Clean(CleanArgs),
    /// Create a starter piper.lua in the current directory
    Init,
    /// Write the LuaCATS definitions of the piper API for lua-language-server
    Meta {
        /// Where to write them
        #[arg(default_value = ".piper/lua")]
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
}

impl Shell {
    pub fn name(self) -> &'static str {
        match self {
            Shell::Bash => "bash",
            Shell::Zsh => "zsh",
            Shell::Fish => "fish",
            Shell::Elvish => "elvish",
            Shell::Powershell => "powershell",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// Pipelines or steps to run; a name that is both means the pipeline.
    /// Without one, the pipelines are listed
    #[arg(value_name = "PIPELINE|STEP", add = ArgValueCandidates::new(target_candidates))]
    pub targets: Vec<String>,

    /// Run at most N steps at once [default: number of CPUs]
    #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,

    /// After a failure, keep running steps that do not depend on it
    #[arg(short = 'k', long)]
    pub keep_going: bool,

    /// Show what would run, in order, without running anything
    #[arg(short = 'n', long)]
    pub dry_run: bool,

    /// Print one JSON event per line instead of text
    #[arg(long, conflicts_with = "output")]
    pub json: bool,

    /// How to show step output
    #[arg(long, value_enum, default_value_t = OutputMode::Prefixed, value_name = "MODE")]
    pub output: OutputMode,

    /// Run steps even if they are up to date: all, or --force=STEP (repeatable)
    #[arg(long, value_name = "STEP", num_args = 0..=1, require_equals = true, action = clap::ArgAction::Append)]
    pub force: Option<Vec<String>>,

    /// Say why each step runs (or is up to date) before it starts
    #[arg(long)]
    pub explain: bool,

    /// Set a variable for every step, overriding piper.lua (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Share step results through a cache directory: a step that declares
    /// inputs and outputs is fetched from it when the same work ran before
    /// (in any checkout on this machine), and stored after it succeeds
    #[arg(long, value_name = "DIR", env = "PIPER_DISK_CACHE")]
    pub disk_cache: Option<PathBuf>,

    /// A remote cache behind the disk cache: the Remote Execution API
    /// (grpc://HOST:PORT, grpcs:// for TLS: BuildGrid, Buildbarn,
    /// bazel-remote, BuildBuddy...) or Bazel's HTTP cache protocol
    /// (http(s)://HOST/PREFIX: GET/PUT of ac/ and cas/). Asked when the disk
    /// cache misses, sent what runs [disk cache default:
    /// $XDG_CACHE_HOME/piper or ~/.cache/piper]
    #[arg(long, value_name = "URL", env = "PIPER_REMOTE_CACHE")]
    pub remote_cache: Option<String>,

    /// The remote cache's REAPI instance name (gRPC only)
    #[arg(long, value_name = "NAME", env = "PIPER_REMOTE_INSTANCE")]
    pub remote_instance: Option<String>,

    /// A header sent with every remote cache request (repeatable):
    /// NAME=VALUE, NAME=@FILE (the file's contents, as for a token kept out
    /// of the shell's history) or NAME=env:VARIABLE. Values are never shown
    #[arg(long, value_name = "NAME=VALUE")]
    pub remote_header: Vec<String>,

    /// Whether results are uploaded to the remote cache (off: read only, as
    /// a laptop usually is while CI writes)
    /// [default: on]
    #[arg(long, value_name = "on|off", env = "PIPER_REMOTE_UPLOAD", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub remote_upload: Option<bool>,

    /// Run steps on a Remote Execution API cluster (grpc://HOST:PORT,
    /// grpcs:// for TLS: BuildGrid, Buildbarn, NativeLink, BuildBuddy): each
    /// step with declared inputs and outputs is uploaded, executed there and
    /// its outputs fetched; the rest run here. The cluster is also the
    /// remote cache unless --remote-cache names another
    #[arg(long, value_name = "URL", env = "PIPER_REMOTE_EXEC")]
    pub remote_exec: Option<String>,

    /// Steps in flight on the remote cluster besides the -j running here
    /// [default: 32]
    #[arg(long, value_name = "N", env = "PIPER_REMOTE_JOBS")]
    pub remote_jobs: Option<usize>,

    /// Run a step here when the remote cluster cannot be reached (a step it
    /// refuses or that fails there still fails)
    #[arg(long, env = "PIPER_REMOTE_EXEC_FALLBACK")]
    pub remote_exec_fallback: bool,

    /// Run steps the cache holds anyway and compare what they make with it:
    /// a difference means a step reads something its inputs do not name
    #[arg(long)]
    pub cache_verify: bool,

    /// Arguments for the pipeline, after `--`: `$1`.. and `"$@"` in its shell
    /// commands, `ctx.args` in its Lua functions, `PIPER_ARGS` in the environment
    #[arg(last = true, value_name = "ARGS", add = ArgValueCandidates::new(argument_candidates))]
    pub args: Vec<String>,

    /// Run build N of piperd here: its commit (checked out in a worktree of
    /// this clone), its pipeline (or the targets given) and its variables
    #[arg(long, value_name = "N", help_heading = "Reproducing a piperd build")]
    pub from_build: Option<i64>,

    #[command(flatten, next_help_heading = "Reproducing a piperd build")]
    pub connection: Connection,
}

/// The remote commands' options.
#[derive(Debug, Clone, Args)]
pub struct RemoteArgs {
    #[command(flatten)]
    pub connection: Connection,

    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// Where piperd is, and the token it wants.
#[derive(Debug, Clone, Default, Args)]
pub struct Connection {
    /// piperd's address [default: `server` in ~/.config/piper/config.toml, else the address a
    /// running piperd wrote in its data directory, else http://127.0.0.1:7117]
    #[arg(long, env = "PIPER_SERVER", value_name = "URL")]
    pub server: Option<String>,

    /// API token [default: `token` in ~/.config/piper/config.toml, else piperd's token file on this machine]
    #[arg(long, env = "PIPER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// piperd's data directory on this machine: its `token` and `piperd.addr` are read from there
    /// when no token or server is given [default: piperd's default data directory]
    #[arg(long, env = "PIPERD_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Pipeline to run
    #[arg(add = ArgValueCandidates::new(pipeline_candidates))]
    pub pipeline: String,
    /// Repository: a path or any URL git can fetch [default: this project's root]
    #[arg(long)]
    pub repo: Option<String>,
    /// Branch, tag or commit
    #[arg(long = "ref", default_value = "HEAD", value_name = "REF")]
    pub git_ref: String,
    /// Set a variable for every step (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Stream the build's log and exit with its status
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Build the working tree as it is: committed, staged, unstaged and
    /// untracked files (not ignored ones), as a commit on the private
    /// ref refs/piper/working-tree/SHA; HEAD, the index and branches are
    /// left alone
    #[arg(long, conflicts_with_all = ["repo", "git_ref"])]
    pub working_tree: bool,
    /// Send the commit to piperd as a git bundle instead of this
    /// repository's path [default: when piperd is not on this machine,
    /// i.e. its URL is not a loopback address]
    #[arg(long, conflicts_with = "repo")]
    pub send: bool,
    /// Arguments for the pipeline, after `--`: `$1`.. and `"$@"` in its
    /// shell commands, `ctx.args` in its Lua functions, as for `exec`
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct BuildsArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Only this repository
    #[arg(long)]
    pub repo: Option<String>,
    /// Only this status (queued, running, success, failed, canceled, lost)
    #[arg(long)]
    pub status: Option<String>,
    /// Only this pipeline
    #[arg(long)]
    pub pipeline: Option<String>,
    /// At most this many
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
}

/// `show`, `cancel` and `retrigger`: one build.
#[derive(Debug, Args)]
pub struct OneBuildArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    pub build: i64,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LogsArgs {
    #[command(subcommand)]
    pub command: Option<LogsCommand>,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// The build's id
    #[arg(required = true)]
    pub build: Option<i64>,
    /// Only this step's output, raw
    pub step: Option<String>,
    /// Keep printing until the build ends
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The stored log bytes as they are, not rendered
    #[arg(long)]
    pub raw: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Only this pipeline's builds [default: all of the repository's]
    pub pipeline: Option<String>,
    /// Repository, as submitted [default: this project's root]
    #[arg(long)]
    pub repo: Option<String>,
    /// How many of the last finished builds to read
    #[arg(long, default_value_t = 50)]
    pub builds: i64,
}

#[derive(Debug, Subcommand)]
pub enum LogsCommand {
    /// A build's stored log as NDJSON, one record per line (timestamp, build, pipeline, step, stream, line, message): for Elasticsearch, Loki, Vector
    Export(ExportArgs),
    /// Lines of every stored log holding a text (3 characters or more, case aside), newest build first
    Search(SearchArgs),
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// The text to find anywhere in a line: an error code, a path, a symbol
    pub text: String,
    /// Only builds of this repository (as submitted)
    #[arg(long)]
    pub repo: Option<String>,
    /// Only builds of this pipeline
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Only this step's lines
    #[arg(long)]
    pub step: Option<String>,
    /// Only builds that ended so (success, failed, canceled, lost)
    #[arg(long)]
    pub status: Option<String>,
    /// Only builds of this ref, as submitted (main)
    #[arg(long)]
    pub branch: Option<String>,
    /// Only builds requested in this last while (7d, 12h, 30m)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<std::time::Duration>,
    /// At most this many lines
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// The build's id
    pub build: i64,
    /// Put an Elasticsearch `_bulk` action line before each record: post the output to /INDEX/_bulk as it is
    #[arg(long)]
    pub bulk: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub exec: ExecArgs,

    /// Quiet time after a change before the rerun starts
    #[arg(long, value_name = "DURATION", default_value = "50ms", value_parser = parse_duration)]
    pub debounce: std::time::Duration,

    /// Poll the file system instead of using inotify (network mounts, some containers)
    #[arg(long)]
    pub poll: bool,

    /// Clear the screen before each rerun
    #[arg(long)]
    pub clear: bool,
}

fn parse_on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        other => Err(format!("expected on or off, got `{other}`")),
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::duration::parse(text)
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Pipelines or steps, as for `piper exec`
    #[arg(required = true, value_name = "PIPELINE|STEP", add = ArgValueCandidates::new(target_candidates))]
    pub targets: Vec<String>,

    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,

    /// Exit 1 if any step would run, 0 if everything is up to date (as
    /// `make -q`): for scripts and pre-commit hooks
    #[arg(long)]
    pub check: bool,

    /// Set a variable for every step, as `piper exec --env` would (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// The cache `piper exec --disk-cache` would use: a step it holds would
    /// be fetched, and says so
    #[arg(long, value_name = "DIR", env = "PIPER_DISK_CACHE")]
    pub disk_cache: Option<PathBuf>,

    /// The remote cache `piper exec --remote-cache` would ask
    #[arg(long, value_name = "URL", env = "PIPER_REMOTE_CACHE")]
    pub remote_cache: Option<String>,

    /// The cluster `piper exec --remote-exec` would run steps on
    #[arg(long, value_name = "URL", env = "PIPER_REMOTE_EXEC")]
    pub remote_exec: Option<String>,
}

impl ExecArgs {
    /// The cache settings the flags and environment give.
    pub fn cache_settings(&self) -> crate::cli::caches::CacheSettings {
        crate::cli::caches::CacheSettings {
            disk: self.disk_cache.clone(),
            remote: self.remote_cache.clone(),
            instance: self.remote_instance.clone(),
            headers: self.remote_header.clone(),
            upload: self.remote_upload,
            exec: self.remote_exec.clone(),
            jobs: self.remote_jobs,
            fallback: self.remote_exec_fallback.then_some(true),
        }
    }
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    /// Also delete the declared outputs of every step
    #[arg(long)]
    pub outputs: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GraphArgs {
    /// Pipeline (or step) whose graph to print
    #[arg(value_name = "PIPELINE", add = ArgValueCandidates::new(target_candidates))]
    pub target: String,

    /// Output format
    #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
    pub format: GraphFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
    Json,
}

/// The shell asking for completions (`COMPLETE`, which clap_complete
/// removes from the environment before it calls the candidate functions).
pub static COMPLETION_SHELL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Dynamic completion: pipeline and step names from the piper.lua governing
/// the current directory. Silent (no candidates) if it does not evaluate.
fn target_candidates() -> Vec<CompletionCandidate> {
    // clap_complete completes the word after `--` as another target; it is
    // a pipeline argument.
    if completing_after_separator() {
        return argument_candidates();
    }
    candidates(true)
}

/// The words of the command line being completed, as the shell passed them
/// (after the completion call's own `--`), and the index of the current one.
fn completion_words() -> (Vec<String>, usize) {
    let words: Vec<String> = std::env::args().skip_while(|w| w != "--").skip(1).collect();
    let current = std::env::var("_CLAP_COMPLETE_INDEX")
        .ok()
        .and_then(|i| i.parse().ok())
        .unwrap_or(words.len().saturating_sub(1));
    (words, current)
}

fn completing_after_separator() -> bool {
    let (words, current) = completion_words();
    words.iter().take(current).skip(1).any(|w| w == "--")
}

/// Pipelines only (`piper submit` runs pipelines).
fn pipeline_candidates() -> Vec<CompletionCandidate> {
    candidates(false)
}

/// After `--`: the `args` the pipelines named on the command line declare.
/// clap_complete does not tell a candidate function the other words, so
/// they are read from the command line the shell passed.
fn argument_candidates() -> Vec<CompletionCandidate> {
    let Some(graph) = completion_graph() else {
        return Vec::new();
    };
    let (words, _) = completion_words();
    let named = words.iter().skip(1).take_while(|w| *w != "--");
    let mut offered = Vec::new();
    for pipeline in named.filter_map(|w| graph.pipelines.get(w)) {
        for arg in &pipeline.args {
            if !offered.contains(arg) {
                offered.push(arg.clone());
            }
        }
    }
    offered.into_iter().map(CompletionCandidate::new).collect()
}

/// The graph governing the current directory, from the configuration
/// cache: a key press should not evaluate the config.
fn completion_graph() -> Option<crate::graph::Graph> {
    let cwd = std::env::current_dir().ok()?;
    let project = crate::project::Located::locate(&cwd, None).ok()?;
    let mode = crate::config_cache::Mode::Use;
    crate::config_cache::load(&project, mode)
        .ok()
        .map(|(graph, _)| graph)
}

fn candidates(with_steps: bool) -> Vec<CompletionCandidate> {
    let Some(graph) = completion_graph() else {
        return Vec::new();
    };
    // bash inserts a candidate as it is, so `build docs` would become two
    // words; zsh and fish quote what they insert themselves.
    let bash = COMPLETION_SHELL.get().is_some_and(|shell| shell == "bash");
    let candidate = |name: &str, desc: &Option<String>, kind: &str| {
        let value = if bash {
            escape_for_bash(name)
        } else {
            name.to_string()
        };
        CompletionCandidate::new(value)
            .help(Some(desc.as_deref().unwrap_or(kind).to_string().into()))
    };
    let pipelines = graph
        .pipelines
        .values()
        .map(|p| candidate(&p.name, &p.desc, "pipeline"));
    let steps = graph
        .steps
        .iter()
        .filter(|_| with_steps)
        .map(|s| candidate(&s.name, &s.desc, "step"));
    pipelines.chain(steps).collect()
}

/// `name` as one bash word: a backslash before each character the shell
/// would split on or interpret.
fn escape_for_bash(name: &str) -> String {
    let mut word = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_whitespace() || "'\"\\$`&|;<>()*?[]{}!#~".contains(c) {
            word.push('\\');
        }
        word.push(c);
    }
    word
}
