//! The `piper` command, a host of the engine: carries out one command line
//! — finds the project, loads it through the embedding API, runs it with
//! the terminal or JSON lines as the event sink (`render/`). `watch` reruns
//! what changes affect; `client` talks to piperd (submit, logs, builds);
//! `reproduce` and `working_tree` serve `--from-build` and
//! `--working-tree`; `args` is the one clap definition behind help,
//! completions and docs/reference/cli.md.

pub(crate) mod args;
pub(crate) mod caches;
pub(crate) mod client;
pub(crate) mod error;
pub(crate) mod export;
pub(crate) mod git;
pub(crate) mod render;
pub(crate) mod reproduce;
pub(crate) mod warnings;
pub(crate) mod watch;
pub(crate) mod working_tree;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use indexmap::IndexMap;
use tokio_util::sync::CancellationToken;

use self::args::{
    CleanArgs, Cli, ColorChoice, Command, ExecArgs, ExplainArgs, GraphArgs, GraphFormat, ListArgs,
    WatchArgs,
};
use self::caches::{CacheSettings, caches};
use self::render::{JsonLines, Render, Terminal};
use self::watch::WatchOptions;
use crate::cli::error::{Error, Result};
use crate::config_cache;
use crate::error::EXIT_INTERNAL;
use crate::event;
use crate::executor::{Force, Options};
use crate::graph::Graph;
use crate::project::{CONFIG_FILE, Located};

/// The starter config written by `piper init`.
const INIT_TEMPLATE: &str = include_str!("../../examples/hello/piper.lua");

/// Entry point of the `piper` binary; returns the process exit status.
pub fn main() -> i32 {
    // Shell completion requests (COMPLETE=bash piper ...) are answered here.
    if let Some(shell) = std::env::var_os("COMPLETE") {
        let _ = self::args::COMPLETION_SHELL.set(shell.to_string_lossy().into_owned());
    }
    clap_complete::CompleteEnv::with_factory(Cli::command).complete();
    let cli = parse_args();
    init_tracing();
    let label = error_label(cli.color);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{label} {e}");
            e.exit_code()
        }
    }
}

/// `Cli::parse()`, except that the command tree and the matches are not
/// freed: the process needs them once, and dropping them was 6% of a
/// one-step `piper exec`.
fn parse_args() -> Cli {
    use clap::FromArgMatches;
    let mut command = Cli::command();
    let mut matches = command
        .try_get_matches_from_mut(std::env::args_os())
        .unwrap_or_else(|e| e.exit());
    let cli =
        Cli::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.format(&mut command).exit());
    std::mem::forget(matches);
    std::mem::forget(command);
    cli
}

/// `PIPER_LOG=debug` (any EnvFilter directive): tracing's full log on
/// stderr; unset, only warnings and errors, as Piper's messages.
fn init_tracing() {
    let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("PIPER_LOG") else {
        let _ = tracing::subscriber::set_global_default(warnings::Warnings);
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// `error:`, in bold red when `--color` (and stderr) allow.
fn error_label(choice: ColorChoice) -> String {
    let color = color_enabled(choice, std::io::stderr().is_terminal());
    render::style::paint(color, render::style::FAILURE, "error:")
}

fn color_enabled(choice: ColorChoice, is_tty: bool) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => is_tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    }
}

fn start_dir(cli: &Cli) -> Result<PathBuf> {
    let cwd =
        std::env::current_dir().map_err(|e| Error::io("cannot read the current directory", e))?;
    Ok(match &cli.directory {
        Some(dir) => cwd.join(dir),
        None => cwd,
    })
}

/// The graph, from the configuration cache unless `--no-config-cache`.
fn load(cli: &Cli) -> Result<Graph> {
    let project = Located::locate(&start_dir(cli)?, cli.file.as_deref())?;
    Ok(config_cache::load(&project, config_mode(cli))?.0)
}

/// The engine the CLI hosts: local processes, the configuration cache
/// unless `--no-config-cache`.
fn engine(cli: &Cli) -> crate::Engine {
    crate::Engine::new().with_config_cache(!cli.no_config_cache)
}

fn config_mode(cli: &Cli) -> config_cache::Mode {
    if cli.no_config_cache {
        config_cache::Mode::Bypass
    } else {
        config_cache::Mode::Use
    }
}

pub fn run(cli: Cli) -> Result<i32> {
    match &cli.command {
        Command::Exec(args) => exec(&cli, args),
        Command::List(args) => list(&cli, args),
        Command::Graph(args) => graph(&cli, args),
        Command::Completions { shell } => completions(shell.name()),
        Command::Clean(args) => clean(&cli, args),
        Command::Explain(args) => explain(&cli, args),
        Command::Watch(args) => watch(&cli, args),
        Command::Submit(args) => self::client::submit(args),
        Command::Builds(args) => self::client::builds(args),
        Command::History(args) => self::client::history(args),
        Command::Show(args) => self::client::show(args),
        Command::Logs(args) => self::client::logs(args),
        Command::Cancel(args) => self::client::cancel(args),
        Command::Retrigger(args) => self::client::retrigger(args),
        Command::Agents(args) => self::client::agents(args),
        Command::Init => init(&start_dir(&cli)?),
        Command::Meta { dir } => meta(&start_dir(&cli)?.join(dir)),
    }
}

fn parse_env_overrides(values: &[String]) -> Result<IndexMap<String, String>> {
    values
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(Error::BadEnvOverride { value: kv.clone() }),
        })
        .collect()
}

/// The executor options an `exec` (or `watch`) command line asks for.
fn exec_options(graph: &Graph, args: &ExecArgs) -> Result<Options> {
    let mut options = Options {
        keep_going: args.keep_going,
        dry_run: args.dry_run,
        env_overrides: parse_env_overrides(&args.env)?,
        args: args.args.clone().into(),
        cache: caches(args.cache_settings())?.map(|cache| cache.verify(args.cache_verify)),
        // This process owns every child it has: orphans are reaped.
        reap_orphans: true,
        ..Options::default()
    };
    options.force = match &args.force {
        None => Force::Nothing,
        Some(names) if names.is_empty() => Force::All,
        Some(names) => {
            for name in names {
                if graph.step(name).is_none() {
                    return Err(crate::Error::UnknownTarget {
                        name: name.clone(),
                        suggestion: crate::suggest::closest(
                            name,
                            graph.steps.iter().map(|s| s.name.as_str()),
                        ),
                        pipelines: Vec::new(),
                        steps: graph.step_names(),
                    }
                    .into());
                }
            }
            Force::Steps(names.clone())
        }
    };
    if let Some(jobs) = args.jobs {
        options.jobs = jobs as usize;
    }
    if let Ok(grace) = std::env::var("PIPER_KILL_GRACE") {
        options.kill_grace = crate::duration::parse(&grace)
            .map_err(|message| Error::setting("PIPER_KILL_GRACE", message))?;
    }
    Ok(options)
}

/// The host for the events: JSON lines or the terminal.
fn host(cli: &Cli, args: &ExecArgs, watch: Option<bool>) -> Box<dyn Render> {
    if args.json {
        return Box::new(JsonLines::new(std::io::BufWriter::new(std::io::stdout())));
    }
    let stderr_tty = std::io::stderr().is_terminal();
    let color = color_enabled(cli.color, std::io::stdout().is_terminal());
    let mut terminal = Terminal::new(
        std::io::BufWriter::with_capacity(256 * 1024, std::io::stdout()),
        std::io::stderr(),
        args.output,
        args.explain,
        color,
        stderr_tty && std::env::var_os("TERM").is_none_or(|t| t != "dumb"),
    );
    if let Some(clear) = watch {
        terminal.watching(clear);
    }
    Box::new(terminal)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the async runtime", e))
}

fn exec(cli: &Cli, args: &ExecArgs) -> Result<i32> {
    if let Some(id) = args.from_build {
        return exec_from_build(cli, args, id);
    }
    let project = Located::locate(&start_dir(cli)?, cli.file.as_deref())?;
    exec_project(cli, args, &project, IndexMap::new())
}

/// `piper exec --from-build N`: the build's commit, pipeline (unless
/// targets are given) and variables, run here like any local run.
fn exec_from_build(cli: &Cli, args: &ExecArgs, id: i64) -> Result<i32> {
    let given = parse_env_overrides(&args.env)?;
    let build = self::reproduce::prepare(&args.connection, id, &start_dir(cli)?, &given)?;
    eprintln!(
        "piper: build {id}: pipeline {} of {}, checked out in {}",
        build.pipeline,
        build.sha_and_ref,
        build.dir.display()
    );
    for line in &build.differences {
        eprintln!("piper: not as on the agent: {line}");
    }
    let project = Located::locate(&build.dir, None)?;
    let mut args = args.clone();
    if args.targets.is_empty() {
        args.targets = vec![build.pipeline.clone()];
    }
    // The build's own arguments, unless new ones are given after `--`.
    if args.args.is_empty() {
        args.args = build.args.clone();
    }
    exec_project(cli, &args, &project, build.env)
}

/// Runs `args.targets` of `project` through the embedding API (`piper
/// exec` is a host like any other); `base_env` goes under `--env`.
fn exec_project(
    cli: &Cli,
    args: &ExecArgs,
    project: &Located,
    base_env: IndexMap<String, String>,
) -> Result<i32> {
    let loaded = engine(cli).load_located(project.clone())?;
    warnings::show_loaded(&loaded);
    if args.explain
        && let Some(line) = loaded.evaluation()
    {
        eprintln!("piper: {line}");
    }
    let graph = loaded.graph().clone();
    let defaulted;
    let args = match graph.default_pipeline() {
        Some(name) if args.targets.is_empty() => {
            defaulted = ExecArgs {
                targets: vec![name.to_string()],
                ..args.clone()
            };
            &defaulted
        }
        _ => args,
    };
    if args.targets.is_empty() {
        // As `just` does without a default recipe: say what there is.
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "piper exec: name a pipeline or step to run, e.g. `piper exec <PIPELINE>` (or mark one pipeline `default = true`)"
        );
        let width = graph
            .pipelines
            .keys()
            .map(|n| render::style::width(n))
            .max()
            .unwrap_or(0);
        write_pipelines(&graph, width, &mut err);
        let _ = writeln!(err, "(`piper list` shows the steps too)");
        return Ok(crate::error::EXIT_CONFIG);
    }
    // Fail on unknown targets, and warn about labels, before starting
    // anything. The executor plans the build anyway: plan here only when
    // that has something to say (a 1000-step plan is 3% of a no-op).
    let known =
        (args.targets.iter()).all(|t| graph.pipelines.contains_key(t) || graph.step(t).is_some());
    let requires = (graph.pipelines.values().any(|p| !p.requires.is_empty()))
        || graph.steps.iter().any(|s| !s.requires.is_empty());
    if !known || requires {
        warn_missing_labels(&graph.plan(&args.targets)?);
    }
    let mut options = exec_options(&graph, args)?;
    if !base_env.is_empty() {
        let given = std::mem::replace(&mut options.env_overrides, base_env);
        options.env_overrides.extend(given);
    }
    let renderer = host(cli, args, None);
    drop(graph);
    // piper exits when the run ends: the graph and what the run built are
    // left to the OS rather than freed one allocation at a time.
    options.exiting = true;
    let code = runtime()?.block_on(async {
        let mut run = loaded.start(
            args.targets.clone(),
            crate::RunOptions::from_options(options),
        );
        tokio::spawn(forward_signals(run.cancel_token()));
        render::drive_run(&mut run, renderer).await;
        Ok(run.wait().await?.exit_code)
    });
    std::mem::forget(loaded);
    code
}

fn watch(cli: &Cli, args: &WatchArgs) -> Result<i32> {
    if args.exec.from_build.is_some() {
        return Err(Error::setting(
            "--from-build",
            "is for `piper exec`: `piper watch` runs the files in front of you",
        ));
    }
    let project = Located::locate(&start_dir(cli)?, cli.file.as_deref())?;
    // A config that does not evaluate at start is an error; later broken
    // edits are reported and watched past.
    let engine = engine(cli);
    let loaded = engine.load_located(project)?;
    warnings::show_loaded(&loaded);
    let graph = loaded.graph().clone();
    graph.plan(&args.exec.targets)?;
    let options = exec_options(&graph, &args.exec)?;
    drop(graph);
    let renderer = host(cli, &args.exec, Some(args.clear));
    let watch_options = WatchOptions {
        debounce: args.debounce,
        poll: args.poll,
    };
    runtime()?.block_on(async move {
        let (tx, rx) = event::channel();
        let host = tokio::spawn(render::drive(rx, renderer));
        let interrupt = CancellationToken::new();
        tokio::spawn(forward_signals(interrupt.clone()));
        let code = self::watch::watch(
            engine,
            loaded,
            args.exec.targets.clone(),
            crate::RunOptions::from_options(options),
            watch_options,
            tx,
            interrupt,
        )
        .await;
        let _ = host.await;
        code
    })
}

/// Ctrl-C and SIGTERM cancel the build; the executor ends every process
/// group and waits for it before piper exits with 130.
async fn forward_signals(interrupt: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    interrupt.cancel();
}

fn list(cli: &Cli, args: &ListArgs) -> Result<i32> {
    let graph = load(cli)?;
    // Buffered: stdout is line-buffered, a write per step otherwise.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        #[derive(serde::Serialize)]
        struct Listing<'a> {
            pipelines: Vec<export::PipelineJson>,
            steps: Vec<export::StepJson<'a>>,
        }
        let listing = Listing {
            pipelines: graph
                .pipelines
                .keys()
                .filter_map(|n| export::pipeline_info(&graph, n))
                .collect(),
            steps: (0..graph.steps.len())
                .map(|i| export::step_info(&graph, i))
                .collect(),
        };
        let text = serde_json::to_string_pretty(&listing).unwrap_or_default();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
        return Ok(0);
    }
    let width = graph
        .pipelines
        .keys()
        .map(|n| render::style::width(n))
        .chain(graph.steps.iter().map(|s| render::style::width(&s.name)))
        .max()
        .unwrap_or(0);
    write_pipelines(&graph, width, &mut out);
    let _ = writeln!(out, "Steps:");
    for (i, s) in graph.steps.iter().enumerate() {
        let detail = s
            .desc
            .clone()
            .unwrap_or_else(|| export::step_info(&graph, i).run.joined());
        let _ = writeln!(out, "    {}  {detail}", render::style::pad(&s.name, width));
    }
    let _ = out.flush();
    exit_soon(graph);
    Ok(0)
}

/// The process is about to exit: freeing a large graph piece by piece
/// would only delay that (rustc does the same with its arenas).
fn exit_soon(graph: Graph) {
    std::mem::forget(graph);
}

/// `requires` that this machine does not meet: said, not refused (a build
/// agent would not take the build; here you asked for it). Labels are the
/// detected facts (os, arch, cpus) and `PIPER_LABELS=k=v,...`.
fn warn_missing_labels(plan: &crate::graph::Plan) {
    if plan.requires.is_empty() {
        return;
    }
    let labels = crate::agent::local_labels();
    let missing = Graph::missing_labels(plan, &labels);
    if !missing.is_empty() {
        let have: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        eprintln!(
            "warning: {} requires {}, which this machine does not have (it has {}; set more with PIPER_LABELS=k=v,...)",
            plan.name,
            missing.join(" "),
            have.join(" ")
        );
    }
}

/// The `Pipelines:` section of `piper list`, also shown by a bare `piper exec`.
fn write_pipelines(graph: &Graph, width: usize, out: &mut impl Write) {
    let _ = writeln!(out, "Pipelines:");
    if graph.pipelines.is_empty() {
        let _ = writeln!(out, "    (none)");
    }
    for p in graph.pipelines.values() {
        let steps: Vec<&str> = p
            .steps
            .iter()
            .map(|&s| graph.steps[s].name.as_str())
            .collect();
        let mut detail = match &p.desc {
            Some(desc) => format!("{desc} [{}]", steps.join(", ")),
            None => format!("[{}]", steps.join(", ")),
        };
        if !p.args.is_empty() {
            detail.push_str(&format!(" -- {}", p.args.join("|")));
        }
        let _ = writeln!(out, "    {}  {detail}", render::style::pad(&p.name, width));
    }
}

fn graph(cli: &Cli, args: &GraphArgs) -> Result<i32> {
    let graph = load(cli)?;
    let plan = graph.plan(std::slice::from_ref(&args.target))?;
    // Buffered here: stdout alone is line-buffered, a write per line.
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let _ = match args.format {
        GraphFormat::Dot => out.write_all(export::dot(&graph, &plan).as_bytes()),
        GraphFormat::Mermaid => out.write_all(export::mermaid(&graph, &plan).as_bytes()),
        GraphFormat::Json => export::write_json(&graph, &plan, &mut out),
    }
    .and_then(|()| out.flush());
    std::mem::forget(plan); // as the graph: piper exits now
    exit_soon(graph);
    Ok(0)
}

fn completions(shell: &str) -> Result<i32> {
    // The registration script calls back into `piper` with COMPLETE set,
    // which `CompleteEnv` answers with names from the current piper.lua.
    // By name, from PATH: a script saved in a dotfile keeps working when
    // piper is upgraded or installed elsewhere.
    // SAFETY: single-threaded at this point; nothing else reads the env.
    unsafe { std::env::set_var("COMPLETE", shell) };
    let done = clap_complete::CompleteEnv::with_factory(Cli::command)
        .try_complete([std::ffi::OsString::from("piper")], None)
        .map_err(|e| {
            Error::io(
                "cannot write the completion script",
                std::io::Error::other(e.to_string()),
            )
        })?;
    Ok(if done { 0 } else { EXIT_INTERNAL })
}

/// `piper explain`, a host of the embedding API.
fn explain(cli: &Cli, args: &ExplainArgs) -> Result<i32> {
    let located = Located::locate(&start_dir(cli)?, cli.file.as_deref())?;
    let project = engine(cli).load_located(located)?;
    warnings::show_loaded(&project);
    let options = Options {
        env_overrides: parse_env_overrides(&args.env)?,
        cache: caches(CacheSettings {
            disk: args.disk_cache.clone(),
            remote: args.remote_cache.clone(),
            exec: args.remote_exec.clone(),
            upload: Some(false),
            ..CacheSettings::default()
        })?,
        ..Options::default()
    };
    let targets: Vec<&str> = args.targets.iter().map(String::as_str).collect();
    let verdicts = project.explain(&targets, crate::RunOptions::from_options(options))?;
    let code = i32::from(args.check && verdicts.iter().any(|v| v.will_run));
    let mut out = std::io::stdout().lock();
    if args.json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&verdicts).unwrap_or_default()
        );
        return Ok(code);
    }
    let width = verdicts
        .iter()
        .map(|v| render::style::width(&v.step))
        .max()
        .unwrap_or(0);
    if let Some(line) = project.evaluation() {
        let _ = writeln!(out, "{line}");
    }
    for v in &verdicts {
        let verdict = if v.will_run {
            format!("will run: {}", v.reasons.join("; "))
        } else {
            "up to date".into()
        };
        let _ = writeln!(out, "{}  {verdict}", render::style::pad(&v.step, width));
    }
    Ok(code)
}

fn clean(cli: &Cli, args: &CleanArgs) -> Result<i32> {
    let project = Located::locate(&start_dir(cli)?, cli.file.as_deref())?;
    if args.outputs {
        let graph = Graph::load(&project)?;
        for step in &graph.steps {
            for path in crate::fingerprint::existing_outputs(&graph.root, &step.outputs) {
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed.map_err(|e| Error::io(format!("cannot remove {}", path.display()), e))?;
                eprintln!("removed {}", path.display());
            }
        }
    }
    let dir = crate::state::State::dir(&project.root);
    use crate::state::{LEGACY_STATE_FILE, STATE_FILE, STATE_LOG};
    for name in [
        STATE_FILE,
        LEGACY_STATE_FILE,
        STATE_LOG,
        crate::config_cache::FILE,
    ] {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(
                    format!("cannot remove {}", dir.join(name).display()),
                    e,
                ));
            }
            _ => {}
        }
    }
    eprintln!("forgot the build state in {}", dir.display());
    Ok(0)
}

fn init(dir: &Path) -> Result<i32> {
    let path = dir.join(CONFIG_FILE);
    if path.exists() {
        return Err(Error::InitExists { path });
    }
    std::fs::write(&path, INIT_TEMPLATE)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    eprintln!(
        "created {}; try `piper list` and `piper exec hello`",
        path.display()
    );
    eprintln!("for editor completion of the piper API, run `piper meta`");
    Ok(0)
}

fn meta(dir: &Path) -> Result<i32> {
    for (name, text) in crate::lua::meta::files() {
        let path = dir.join(&name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
        }
        crate::fsutil::write_atomic(&path, text.as_bytes())
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    }
    eprintln!("wrote the piper API definitions to {}", dir.display());
    eprintln!("point lua-language-server at it, e.g. in .luarc.json:");
    eprintln!(
        "  {{ \"workspace.library\": [\"{}\"], \"diagnostics.globals\": [\"step\", \"pipeline\"] }}",
        dir.display()
    );
    Ok(0)
}
