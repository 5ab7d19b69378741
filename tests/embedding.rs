//! The library API as another program uses it: load a project, inspect
//! it, run it and read its events; a host Lua module; two step runners
//! written here, outside the crate (a clean environment through `env -i`,
//! and a recorder that runs nothing); cancelling a run.

use std::path::Path;
use std::sync::{Arc, Mutex};

use piper::{
    Change, Command, CommandRun, Engine, Event, Exit, LocalRunner, RunFuture, RunOptions, Runner,
    StepStatus,
};

use crate::harness::unindent;

fn project(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("piper.lua"), unindent(config)).unwrap();
    dir
}

/// Runs `targets` of the project in `dir`: (everything the steps printed,
/// the events, the exit code).
fn run(
    engine: &Engine,
    dir: &Path,
    targets: &[&str],
    options: RunOptions,
) -> (String, Vec<Event>, i32) {
    let project = engine.load(dir).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut run = project.run(targets, options).unwrap();
        let mut output = Vec::new();
        let mut events = Vec::new();
        while let Some(event) = run.next_event().await {
            if let Event::StepOutput { data, .. } = &event {
                output.extend_from_slice(data);
            }
            events.push(event);
        }
        let outcome = run.wait().await.unwrap();
        (
            String::from_utf8(output).unwrap(),
            events,
            outcome.exit_code,
        )
    })
}

#[test]
fn a_host_loads_inspects_explains_and_runs_a_project() {
    let dir = project(
        r#"
        local build = step "build" { run = "echo built > out.txt", inputs = { "piper.lua" }, outputs = { "out.txt" }, desc = "Build it" }
        pipeline "ci" { step "test" { run = 'echo "testing $MODE"', deps = { build } }, desc = "All of it" }
        "#,
    );
    let engine = Engine::new();
    let project = engine.load(dir.path()).unwrap();
    let ci = &project.pipelines()[0];
    assert_eq!(
        (ci.name.as_str(), ci.desc.as_deref()),
        ("ci", Some("All of it"))
    );
    assert_eq!(ci.steps, ["test"]);
    let steps = project.steps();
    let test = steps.iter().find(|s| s.name == "test").unwrap();
    assert_eq!(test.deps, ["build"]);
    assert!(test.location.starts_with("piper.lua:"), "{}", test.location);

    let (output, events, code) = run(
        &engine,
        dir.path(),
        &["ci"],
        RunOptions::default().env("MODE", "fast"),
    );
    assert_eq!((output.as_str(), code), ("testing fast\n", 0));
    let finished: Vec<(&str, StepStatus)> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepFinished { step, status, .. } => Some((step.as_str(), *status)),
            _ => None,
        })
        .collect();
    assert_eq!(
        finished,
        [
            ("build", StepStatus::Success),
            ("test", StepStatus::Success)
        ]
    );

    // The same up-to-date check as `piper explain`: with the same
    // variables nothing runs; other ones, or forcing, make it run.
    let project = engine.load(dir.path()).unwrap();
    let same = RunOptions::default().env("MODE", "fast");
    let verdicts = project.explain(&["build"], same.clone()).unwrap();
    assert!(!verdicts[0].will_run, "{verdicts:?}");
    let other = project.explain(&["build"], RunOptions::default()).unwrap();
    assert_eq!(other[0].reasons, ["env var MODE was unset"]);
    let forced = project.explain(&["build"], same.force("build")).unwrap();
    assert!(forced[0].will_run);
    assert!(project.run(&["nope"], RunOptions::default()).is_err());
    // Outside a tokio runtime: an error that says so, not a panic.
    let error = project.run(&["ci"], RunOptions::default()).err().unwrap();
    assert!(error.to_string().contains("tokio runtime"), "{error}");
}

#[test]
fn a_host_module_is_required_by_piper_lua_and_keeps_it_out_of_the_cache() {
    let dir = project(
        r#"
        local editor = require "host.editor"
        pipeline "p" {
          step "shell" { run = "echo shell sees " .. editor.name },
          step "lua" { run = function(ctx) ctx.print("lua sees " .. require("host.editor").version()) end },
        }
        "#,
    );
    let engine = Engine::new().with_module("host.editor", |lua| {
        let module = lua.create_table()?;
        module.set("name", "my-editor")?;
        module.set("version", lua.create_function(|_, ()| Ok("1.2"))?)?;
        Ok(piper::mlua::Value::Table(module))
    });
    let (output, _, code) = run(&engine, dir.path(), &["p"], RunOptions::default().jobs(1));
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("shell sees my-editor") && output.contains("lua sees 1.2"),
        "{output}"
    );
    let again = engine.load(dir.path()).unwrap();
    let why = again.evaluation().unwrap_or_default();
    assert!(why.contains("host module `host.editor`"), "{why}");
    // Without the host, the module does not exist: a clear config error.
    let error = Engine::new().load(dir.path()).err().unwrap().to_string();
    assert!(error.contains("host.editor"), "{error}");
}

/// Runs every command through `env -i`: only the step's own variables,
/// nothing inherited from the host process.
struct CleanEnvironment;

impl Runner for CleanEnvironment {
    fn run<'a>(&'a self, run: CommandRun<'a>) -> RunFuture<'a> {
        Box::pin(async move {
            let mut argv = vec![
                "env".to_string(),
                "-i".to_string(),
                "PATH=/usr/bin:/bin".to_string(),
            ];
            argv.extend(run.env.iter().map(|(k, v)| format!("{k}={v}")));
            match run.command {
                Command::Shell(script) => {
                    argv.extend([
                        "/bin/sh".into(),
                        "-ec".into(),
                        script.clone(),
                        "piper".into(),
                    ]);
                    argv.extend(run.args.iter().cloned());
                }
                Command::Argv(words) => argv.extend(words.iter().cloned()),
                _ => {
                    return Exit::SpawnFailed("a kind of command this runner does not know".into());
                }
            }
            let command = Command::Argv(argv);
            let mut inner = CommandRun::new(&command, run.dir, &[], run.output, run.cancel);
            inner.grace = run.grace;
            LocalRunner.run(inner).await
        })
    }
}

/// Records what would run and runs nothing.
#[derive(Clone, Default)]
struct Recorder {
    commands: Arc<Mutex<Vec<String>>>,
}

impl Runner for Recorder {
    fn run<'a>(&'a self, run: CommandRun<'a>) -> RunFuture<'a> {
        Box::pin(async move {
            self.commands.lock().unwrap().push(run.command.to_string());
            run.output.write(b"recorded\n".to_vec()).await;
            Exit::Code(0)
        })
    }
}

#[test]
fn step_runners_written_outside_the_crate_run_every_command() {
    let dir = project(
        r#"
        pipeline "p" {
          step "env" { run = 'echo "home=${HOME:-unset} mine=$MINE"', env = { MINE = "kept" } },
          step "lua" { run = function(ctx) ctx.sh "echo from-lua" end },
        }
        "#,
    );
    assert!(std::env::var_os("HOME").is_some());
    let clean = Engine::new().with_runner(CleanEnvironment);
    let (output, _, code) = run(&clean, dir.path(), &["p"], RunOptions::default().jobs(1));
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("home=unset mine=kept"), "{output}");
    assert!(output.contains("from-lua"), "{output}");

    let recorder = Recorder::default();
    let recording = Engine::new().with_runner(recorder.clone());
    let (output, _, code) = run(
        &recording,
        dir.path(),
        &["p"],
        RunOptions::default().jobs(1),
    );
    assert_eq!((output.as_str(), code), ("recorded\nrecorded\n", 0));
    let commands = recorder.commands.lock().unwrap().clone();
    assert_eq!(
        commands,
        [r#"echo "home=${HOME:-unset} mine=$MINE""#, "echo from-lua"]
    );
}

#[test]
fn a_run_is_cancelled_with_its_process_group() {
    let dir = project(r#"pipeline "p" { step "wait" { run = "echo $$ > pid; exec sleep 30" } }"#);
    let project = Engine::new().load(dir.path()).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let outcome = runtime.block_on(async {
        let mut run = project.run(&["p"], RunOptions::default()).unwrap();
        while let Some(event) = run.next_event().await {
            // The process is there once it wrote its pid.
            if matches!(event, Event::StepStarted { .. }) {
                crate::harness::wait_for_file(&dir.path().join("pid"));
                run.cancel();
            }
        }
        run.wait().await.unwrap()
    });
    assert_eq!(outcome.exit_code, 130);
    let pid = crate::harness::read_pid(&dir.path().join("pid"));
    assert!(
        crate::harness::process_gone(pid),
        "sleep {pid} outlived the cancel"
    );
}

/// A config that makes a step per file of a glob, and reads a file: a
/// file added to the glob, or the file read edited, asks for a new
/// evaluation (a running `piper watch` now sees the new step); other
/// files do not.
#[test]
fn what_the_config_read_asks_for_a_reload() {
    let dir = project(
        r#"
        local fs = require "piper.fs"
        local version = fs.read("VERSION")
        for _, src in ipairs(fs.glob "src/*.c") do
            step("cc " .. src) { run = "true", inputs = { src }, env = { V = version } }
        end
        "#,
    );
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/a.c"), "int a;").unwrap();
    std::fs::write(dir.path().join("VERSION"), "1").unwrap();
    // Evaluated the first time, read from the configuration cache next:
    // both know what the evaluation read.
    for _ in 0..2 {
        let project = Engine::new().load(dir.path()).unwrap();
        let root = project.root().to_path_buf();
        let change = |path: &str| project.affected_by(&[], &[root.join(path)]).unwrap().change;
        assert_eq!(
            change("src/b.c"),
            Change::Config,
            "a file added to the glob"
        );
        assert_eq!(change("VERSION"), Change::Config, "the file read");
        assert_eq!(change("src/.b.c"), Change::Nothing, "hidden: not matched");
        assert_eq!(change("src/b.h"), Change::Nothing);
        assert_eq!(change("README"), Change::Nothing);
    }
}

/// A host that takes its events slowly (a busy database, a terminal
/// nobody reads) gets every byte a step printed, and the step's end after
/// them: a step's output used to be given 2 s after its process exited,
/// then left behind, so a slow host lost the rest of a large log (seen as
/// piperd storing 5.4 of 8 MB while its disk was full).
#[test]
fn a_slow_host_loses_no_output() {
    let dir = project(
        r#"step "many" { run = "i=0; while [ $i -lt 20000 ]; do echo line$i; i=$((i+1)); done; echo done > printed" }"#,
    );
    let project = Engine::new().load(dir.path()).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (output, finished_after_output) = runtime.block_on(async {
        let mut run = project.run(&["many"], RunOptions::default()).unwrap();
        // Nothing is read until the process has printed everything and
        // exited, and longer than the old grace after that.
        crate::harness::wait_for_file(&dir.path().join("printed"));
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        let mut output = Vec::new();
        let mut finished_after_output = false;
        while let Some(event) = run.next_event().await {
            match event {
                Event::StepOutput { data, .. } => {
                    finished_after_output = false;
                    output.extend(data);
                }
                Event::StepFinished { .. } => finished_after_output = true,
                _ => {}
            }
        }
        assert_eq!(run.wait().await.unwrap().exit_code, 0);
        (String::from_utf8(output).unwrap(), finished_after_output)
    });
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 20000, "last line: {:?}", lines.last());
    assert_eq!(lines[19999], "line19999");
    assert!(finished_after_output, "output came after the step's end");
}

/// What an editor plugin or a watcher asks: which steps does a change to
/// these files rerun; the config itself edited; numbering several runs
/// apart; services run on their own.
#[test]
fn a_host_learns_what_a_change_affects_and_reruns_only_that() {
    let dir = project(
        r#"
        local gen = step "gen" { run = "cp src/a.txt gen.txt", inputs = { "src/*.txt" }, outputs = { "gen.txt" } }
        local use = step "use" { run = "cp gen.txt used.txt", inputs = { "gen.txt" }, deps = { gen }, outputs = { "used.txt" } }
        local lint = step "lint" { run = "true", inputs = { "lint.cfg" } }
        pipeline "dev" { step "serve" { run = "true", service = true, deps = { use } }, lint }
        "#,
    );
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/a.txt"), "a").unwrap();
    let engine = Engine::new();
    let project = engine.load(dir.path()).unwrap();
    let root = project.root().to_path_buf();
    let affected = |paths: &[&str]| {
        let changed: Vec<_> = paths.iter().map(|p| root.join(p)).collect();
        project.affected_by(&["dev"], &changed).unwrap()
    };

    let edit = affected(&["src/a.txt", "README"]);
    assert_eq!(edit.paths, ["src/a.txt"]);
    assert_eq!(
        edit.change,
        Change::Steps(["gen", "serve", "use"].map(String::from).into())
    );
    let config = affected(&["piper.lua", "lint.cfg"]);
    assert_eq!(config.change, Change::Config);
    // Outputs and Piper's own state never ask for anything.
    assert_eq!(affected(&["gen.txt", ".piper/x"]).change, Change::Nothing);
    assert_eq!(project.services(&["dev"]).unwrap(), ["serve"]);

    // A rerun of only what the edit affects, numbered after a first build,
    // with the service left out.
    let Change::Steps(steps) = edit.change else {
        unreachable!()
    };
    let options = RunOptions::default()
        .only(steps)
        .first_build(7)
        .skip_services(true);
    let (_, events, code) = run(&engine, dir.path(), &["dev"], options);
    assert_eq!(code, 0);
    let ran: Vec<(u32, &str, StepStatus)> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepFinished {
                build,
                step,
                status,
                ..
            } => Some((*build, step.as_str(), *status)),
            _ => None,
        })
        .collect();
    assert!(ran.contains(&(7, "use", StepStatus::Success)), "{ran:?}");
    assert!(ran.contains(&(7, "serve", StepStatus::Skipped)), "{ran:?}");
    assert!(
        !ran.iter()
            .any(|(_, step, status)| *step == "lint" && *status == StepStatus::Success),
        "{ran:?}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("used.txt")).unwrap(),
        "a"
    );

    // The config edited: reload reads the new one.
    std::fs::write(
        dir.path().join("piper.lua"),
        "step \"only\" { run = \"true\" }\n",
    )
    .unwrap();
    let reloaded = engine.reload(&project).unwrap();
    assert_eq!(reloaded.steps()[0].name, "only");
}

/// examples/embed (built by `cargo test` with the other examples) run on a
/// copy of its project: it adds its host module, runs the pipeline and
/// prints the events its own way.
#[test]
fn the_embed_example_runs_its_project() {
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/embed");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/embed/project/piper.lua");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(source, dir.path().join("piper.lua")).unwrap();
    let out = std::process::Command::new(&example)
        .arg(dir.path())
        .arg("hello")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "pipeline hello [greet]",
        "  build: building for the embedding host",
        "  greet: hello from a Lua step (via host.greeting)",
        "  greet: and from a shell",
        "exit code 0",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "{line:?} missing from\n{stdout}"
        );
    }
}

/// The public surface, as the source declares it: the crate root's
/// re-exports and every `pub` item of the API's own modules (a
/// declaration read up to its `{`, `;` or trailing `,`, whitespace
/// collapsed), and of the types re-exported from other modules, their
/// declarations with fields or variants and their impls' `pub` items.
fn public_surface() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut items = Vec::new();
    let files = [
        "src/lib.rs",
        "src/engine.rs",
        "src/runner.rs",
        "src/changes.rs",
        "src/event.rs",
        "src/error.rs",
    ];
    for file in files {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        // The hidden `internals` re-exports are not API.
        let text = text.split("pub mod internals").next().unwrap_or_default();
        let mut current: Option<String> = None;
        // Inside a public enum: its name and the brace depth. Its variants
        // and their fields are API, though they carry no `pub`.
        let mut in_enum: Option<(String, i32)> = None;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with("//") {
                continue;
            }
            if let Some((name, depth)) = in_enum.as_mut() {
                *depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
                if !line.starts_with("#[") && !line.is_empty() {
                    items.push(format!("{file}: {name}:: {line}"));
                }
                if *depth <= 0 {
                    in_enum = None;
                }
                continue;
            }
            let is_item = line.starts_with("pub ") && !line.starts_with("pub mod ");
            if current.is_none() && is_item {
                current = Some(String::new());
            }
            if let Some(item) = current.as_mut() {
                item.push(' ');
                item.push_str(line);
                let open = item.matches('(').count() > item.matches(')').count();
                let ended = if item.trim_start().starts_with("pub use") {
                    line.ends_with(';')
                } else {
                    !open && (line.ends_with('{') || line.ends_with(';') || line.ends_with(','))
                };
                if ended {
                    let words: Vec<&str> = item.split_whitespace().collect();
                    if words.get(1) == Some(&"enum") && line.ends_with('{') {
                        in_enum = Some((words[2].to_string(), 1));
                    }
                    items.push(format!("{file}: {}", words.join(" ")));
                    current = None;
                }
            }
        }
    }
    // Types re-exported from modules that are not API themselves: their
    // declarations and the `pub` items of their impls, nothing else there.
    for (file, names) in [
        ("src/process.rs", &["Exit", "OutputSink"][..]),
        ("src/spec/types.rs", &["TriggerOn", "Command"][..]),
        (
            "src/executor/options.rs",
            &["RunOutcome", "BuildOutcome"][..],
        ),
        ("src/cache/disk.rs", &["DiskCache"][..]),
        ("src/cache/remote.rs", &["RemoteCache"][..]),
        ("src/cache/tiered.rs", &["Cache"][..]),
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        items.extend(
            reexported(&text, names)
                .into_iter()
                .map(|i| format!("{file}: {i}")),
        );
    }
    items.join("\n") + "\n"
}

/// In `text`, the blocks that declare or implement one of `names` (a
/// `pub struct`/`pub enum` with its fields or variants, an `impl` with its
/// `pub` functions), one line each, whitespace collapsed.
fn reexported(text: &str, names: &[&str]) -> Vec<String> {
    let header =
        regex::Regex::new(r"^(pub (struct|enum) (\w+)|impl(<[^>]*>)? (\w+ for )?(\w+))").unwrap();
    let mut items = Vec::new();
    // The block's name, what it is (`struct`, `enum`, `impl`), its depth.
    let mut block: Option<(String, &str, i32)> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("//") || line.starts_with("#[") || line.is_empty() {
            continue;
        }
        if let Some((name, kind, depth)) = block.as_mut() {
            *depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
            // An enum's variants; a struct's and an impl's `pub` items.
            let shown = match *kind {
                "enum" => *depth >= 1,
                "impl" => line.starts_with("pub ") && *depth == 2,
                _ => line.starts_with("pub "),
            };
            if shown {
                items.push(format!(
                    "{name}:: {}",
                    line.split_whitespace().collect::<Vec<_>>().join(" ")
                ));
            }
            if *depth <= 0 {
                block = None;
            }
            continue;
        }
        let Some(found) = header.captures(line) else {
            continue;
        };
        let name = found.get(3).or(found.get(6)).unwrap().as_str();
        if !names.contains(&name) || !line.ends_with('{') {
            continue;
        }
        items.push(line.split_whitespace().collect::<Vec<_>>().join(" "));
        let kind = found.get(2).map_or("impl", |k| k.as_str());
        block = Some((name.to_string(), kind, 1));
    }
    items
}

#[test]
fn the_public_api_changes_only_on_purpose() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/public-api.txt");
    let now = public_surface();
    if std::env::var_os("PIPER_BLESS").is_some() {
        std::fs::write(&path, &now).unwrap();
    }
    let recorded = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        recorded == now,
        "the public API changed; if on purpose, run `PIPER_BLESS=1 cargo test public_api` and review docs/public-api.txt:\n{}",
        now.lines()
            .filter(|l| !recorded.lines().any(|r| r == *l))
            .map(|l| format!("+ {l}"))
            .chain(
                recorded
                    .lines()
                    .filter(|r| !now.lines().any(|l| l == *r))
                    .map(|r| format!("- {r}"))
            )
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Regression: a step a watcher's rerun leaves out (`only`) showed its
/// dependents its fingerprint, where a full build shows the digest of its
/// outputs. A dependent then reran for "upstream step changed" although
/// nothing it uses had changed, and again at the next full build.
#[test]
fn a_step_left_out_of_a_rerun_shows_dependents_what_a_full_build_shows() {
    let dir = project(
        r#"
        local gen = step "gen" { run = "cp g.in g.out", inputs = { "g.in" }, outputs = { "g.out" } }
        local fixed = step "fixed" { run = "echo same > f.out", inputs = { "f.in" }, outputs = { "f.out" } }
        local use = step "use" {
            run = "echo use >> runs.log && touch u.out",
            inputs = { "u.in" }, outputs = { "u.out" }, deps = { gen, fixed },
        }
        pipeline "all" { use }
        "#,
    );
    for file in ["g.in", "f.in", "u.in"] {
        std::fs::write(dir.path().join(file), file).unwrap();
    }
    let engine = Engine::new();
    let runs = || std::fs::read_to_string(dir.path().join("runs.log")).unwrap();
    let status_of = |events: &[Event], name: &str| {
        events.iter().find_map(|e| match e {
            Event::StepFinished { step, status, .. } if step == name => Some(*status),
            _ => None,
        })
    };
    assert_eq!(
        run(&engine, dir.path(), &["all"], RunOptions::default()).2,
        0
    );
    assert_eq!(runs(), "use\n");

    // `fixed` reruns and makes the same output: `use` stays up to date,
    // whether `gen` is in the rerun or left out of it.
    std::fs::write(dir.path().join("f.in"), "edited").unwrap();
    let only = RunOptions::default().only(["fixed", "use"]);
    let (_, events, code) = run(&engine, dir.path(), &["all"], only);
    assert_eq!(code, 0);
    assert_eq!(status_of(&events, "fixed"), Some(StepStatus::Success));
    assert_eq!(status_of(&events, "use"), Some(StepStatus::UpToDate));
    let (_, events, _) = run(&engine, dir.path(), &["all"], RunOptions::default());
    assert_eq!(status_of(&events, "use"), Some(StepStatus::UpToDate));
    assert_eq!(runs(), "use\n");
}

/// A step without `outputs` that runs makes its dependents run, in every
/// build: also in a second build of the same process that got the same
/// build number (each `run` of a host starts at build 1), and in a
/// container where piper is always process 1.
#[test]
fn a_step_without_outputs_that_runs_makes_its_dependents_run_in_every_build() {
    let dir = project(
        r#"
        local gen = step "gen" { run = "echo gen >> runs.log" }
        local use = step "use" {
            run = "echo use >> runs.log", inputs = { "u.in" }, deps = { gen },
        }
        pipeline "all" { use }
        "#,
    );
    std::fs::write(dir.path().join("u.in"), "u").unwrap();
    let engine = Engine::new();
    for _ in 0..2 {
        assert_eq!(
            run(&engine, dir.path(), &["all"], RunOptions::default()).2,
            0
        );
    }
    let runs = std::fs::read_to_string(dir.path().join("runs.log")).unwrap();
    assert_eq!(runs, "gen\nuse\ngen\nuse\n");
}

/// Issue 29: `LocalRunner` given an empty argv (a runner that delegates
/// may build one) panicked indexing it; now the step fails, saying why.
#[test]
fn an_empty_command_fails_its_step_instead_of_panicking() {
    struct Emptying;
    impl Runner for Emptying {
        fn run<'a>(&'a self, run: CommandRun<'a>) -> RunFuture<'a> {
            Box::pin(async move {
                let command = Command::Argv(Vec::new());
                let mut inner = CommandRun::new(&command, run.dir, &[], run.output, run.cancel);
                inner.grace = run.grace;
                LocalRunner.run(inner).await
            })
        }
    }
    let dir = project(r#"step "s" { run = "echo hi" }"#);
    let engine = Engine::new().with_runner(Emptying);
    let (_, events, code) = run(&engine, dir.path(), &["s"], RunOptions::default());
    assert_ne!(code, 0);
    let said = events.iter().any(|e| {
        matches!(e, Event::StepFinished { status: StepStatus::Failed, message: Some(m), .. }
            if m.contains("empty command"))
    });
    assert!(said, "{events:?}");
}

/// Issue 29: `affected_by` answered "nothing" for a target the project
/// does not have; it is an error naming it, as for `run`.
#[test]
fn what_a_change_asks_of_an_unknown_target_is_an_error() {
    let dir = project(r#"step "build" { run = "true" }"#);
    let project = Engine::new().load(dir.path()).unwrap();
    let err = project.affected_by(&["biuld"], &[]).unwrap_err();
    assert!(err.to_string().contains("biuld"), "{err}");
    assert!(project.affected_by(&["build"], &[]).is_ok());
}

/// Issue 29: the engine's errors are its own (the CLI's usage errors and
/// piperd's are the hosts'), and one that comes from the system keeps its
/// cause as `source()`, as a library's errors do: a host can walk the
/// chain, or match the `io::ErrorKind`.
#[test]
fn an_io_error_of_the_engine_keeps_its_cause() {
    let cause = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
    let error = piper::Error::io("cannot read piper.lua", cause);
    let source = std::error::Error::source(&error).expect("the cause is kept");
    let io = source.downcast_ref::<std::io::Error>().unwrap();
    assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
    assert_eq!(error.to_string(), "cannot read piper.lua: denied");
    assert_eq!(error.exit_code(), 1);
}

/// An embedded engine leaves the host's children alone: it does not make
/// the host's process a child subreaper (so the host's orphans are not
/// re-parented to it) nor reap children it did not spawn. It did: a run
/// started the reaper in the host, which then took the exit status of a
/// child the host waited for (`Command::output` failed with ECHILD in the
/// test process, where in-process runs and spawned `piper`s meet).
#[test]
fn an_embedded_run_leaves_the_hosts_children_alone() {
    let dir = project(r#"pipeline "p" { step "a" { run = "true" } }"#);
    let project = Engine::new().load(dir.path()).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let run = project.run(&["p"], RunOptions::default()).unwrap();
        run.wait().await.unwrap();
    });
    let mut subreaper: libc::c_int = 0;
    // SAFETY: prctl writes one int to the pointer given, which is ours.
    let read = unsafe {
        libc::prctl(
            libc::PR_GET_CHILD_SUBREAPER,
            &mut subreaper as *mut libc::c_int,
        )
    };
    assert_eq!(read, 0);
    assert_eq!(
        subreaper, 0,
        "an embedded run made the host a child subreaper"
    );
}
