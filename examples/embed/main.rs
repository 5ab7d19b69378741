//! A program that embeds Piper: it loads a project, adds a Lua module of
//! its own (`host.greeting`), runs a pipeline, and prints the events its
//! own way (not as `piper exec` does).
//!
//! ```sh
//! cargo run --example embed -- examples/embed/project hello
//! ```

use std::process::ExitCode;

use piper::mlua;
use piper::{Engine, Event, RunOptions, StepStatus};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .unwrap_or_else(|| "examples/embed/project".into());
    let pipeline = args.next().unwrap_or_else(|| "hello".into());
    match run(&dir, &pipeline) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("embed: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(dir: &str, pipeline: &str) -> Result<i32, Box<dyn std::error::Error>> {
    let engine = Engine::new().with_module("host.greeting", |lua| {
        let module = lua.create_table()?;
        module.set("audience", "the embedding host")?;
        module.set(
            "say",
            lua.create_function(|_, what: String| Ok(format!("hello {what} (via host.greeting)")))?,
        )?;
        Ok(mlua::Value::Table(module))
    });
    let project = engine.load(dir)?;
    for info in project.pipelines() {
        println!("pipeline {} [{}]", info.name, info.steps.join(", "));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async {
        let mut run = project.run(&[pipeline], RunOptions::default().jobs(1))?;
        while let Some(event) = run.next_event().await {
            print_event(&event);
        }
        run.wait().await
    })?;
    println!("exit code {}", outcome.exit_code);
    Ok(outcome.exit_code)
}

fn print_event(event: &Event) {
    match event {
        Event::StepStarted { step, .. } => println!("> {step}"),
        Event::StepOutput { step, data, .. } => {
            for line in String::from_utf8_lossy(data).lines() {
                println!("  {step}: {line}");
            }
        }
        Event::StepFinished {
            step,
            status,
            duration_ms,
            ..
        } => {
            let mark = if *status == StepStatus::Success {
                "done"
            } else {
                "FAILED"
            };
            println!("< {step} {mark} ({duration_ms} ms)");
        }
        _ => {}
    }
}
