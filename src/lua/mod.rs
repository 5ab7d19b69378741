//! The Lua side of Piper: one function builds a Lua state with the native
//! primitives and the embedded `piper.*` modules, another evaluates a
//! project's `piper.lua` in it and reads back what it defined as a
//! [`RawSpec`](crate::spec::RawSpec).
//!
//! The state outlives evaluation: steps whose `run` is a Lua function are
//! called in it at build time (see `executor/job.rs`).

// The editor definitions `piper init` writes.
#[cfg(feature = "cli")]
pub mod meta;
mod native_define;
mod native_env;
mod native_fs;
mod native_process;
pub mod stdlib;

use std::path::PathBuf;
use std::sync::Arc;

use mlua::{Lua, Table};

use crate::error::{Error, Result};
use crate::project::Located;
use crate::recording::Recording;
use crate::spec::RawSpec;

/// A new Lua 5.4 state for the project at `root`: standard libraries, the
/// `piper._native` primitives, the `piper.*` modules in `package.preload`,
/// and the boot chunk (globals `step`/`pipeline`, the project searcher).
pub fn new_state(root: PathBuf) -> mlua::Result<Lua> {
    let lua = Lua::new();
    let root = Arc::new(root);
    let native = lua.create_table()?;
    native_process::register(&lua, &native, root.clone())?;
    native_fs::register(&lua, &native, root.clone())?;
    native_env::register(&lua, &native)?;
    native_env::register_where(&lua, &native)?;
    native_define::register(&lua, &native)?;
    native.set("root", root.to_string_lossy().as_ref())?;

    let package: Table = lua.globals().get("package")?;
    let loaded: Table = package.get("loaded")?;
    loaded.set("piper._native", native)?;
    let preload: Table = package.get("preload")?;
    for (module, chunk_name, source) in stdlib::MODULES {
        let loader = lua.load(*source).set_name(*chunk_name).into_function()?;
        preload.set(*module, loader)?;
    }
    let (boot_name, boot) = stdlib::BOOT;
    lua.load(boot).set_name(boot_name).exec()?;
    Ok(lua)
}

/// Evaluates the project's config and returns the Lua state with what it
/// defined. Errors carry the `file:line` Lua reported.
pub fn evaluate(project: &Located) -> Result<(Lua, RawSpec)> {
    let (lua, spec, _) = evaluate_with(project, None)?;
    Ok((lua, spec))
}

/// As [`evaluate`], recording what the evaluation read for the
/// configuration cache.
pub fn evaluate_recorded(project: &Located) -> Result<(Lua, RawSpec, Recording)> {
    let (lua, spec, recording) = evaluate_with(project, Some(Recording::default()))?;
    Ok((lua, spec, recording.unwrap_or_default()))
}

fn evaluate_with(
    project: &Located,
    recording: Option<Recording>,
) -> Result<(Lua, RawSpec, Option<Recording>)> {
    let cannot_read = |e| Error::io(format!("cannot read {}", project.config.display()), e);
    // Stat before reading: the cache records both (`stamp_content`).
    let meta = std::fs::metadata(&project.config).map_err(cannot_read)?;
    let source = std::fs::read(&project.config).map_err(cannot_read)?;
    let lua = new_state(project.root.clone())
        .and_then(|lua| project.host.install(&lua).map(|()| lua))
        .map_err(|e| Error::Lua {
            message: format!("internal: {e}"),
        })?;
    if let Some(mut recording) = recording {
        recording.file(&project.config_display_name(), Some((&meta, &source)));
        lua.set_app_data(recording);
    }
    // Evaluation is short and allocates mostly what it keeps: collecting
    // garbage meanwhile is wasted work (a third of a 10 000-step config).
    lua.gc_stop();
    let evaluated = lua
        .load(source)
        .set_name(format!("@{}", project.config_display_name()))
        .exec();
    // Reads by function steps at build time are not configuration inputs.
    let recording = lua.remove_app_data::<Recording>();
    evaluated.map_err(|e| Error::Lua {
        message: error_message(&e),
    })?;
    let spec = RawSpec::from_lua(&lua)?;
    lua.gc_restart();
    Ok((lua, spec, recording))
}

/// A Lua error as a person should read it: the message with its
/// `file:line`, and the traceback of the user's own frames when there is
/// more than the one the message names.
pub fn error_message(error: &mlua::Error) -> String {
    let text = raw_message(error);
    let (message, traceback) = match text.split_once("\nstack traceback:") {
        Some((message, traceback)) => (message, traceback),
        None => (text.as_str(), ""),
    };
    let frames: Vec<&str> = traceback
        .lines()
        .filter(|l| !l.trim().is_empty() && is_user_frame(l.trim_start()))
        .collect();
    if frames.len() < 2 {
        return message.to_string();
    }
    format!("{message}\nstack traceback:\n{}", frames.join("\n"))
}

/// Frames of C functions (`error`, `require`), of mlua's async glue and of
/// Piper's own Lua say nothing about the user's config.
fn is_user_frame(frame: &str) -> bool {
    !(frame.starts_with("[C]:")
        || frame.starts_with("__mlua")
        || frame.starts_with("stdlib/")
        || frame.starts_with("piper:")
        || frame.starts_with("(...tail calls...)"))
}

fn raw_message(error: &mlua::Error) -> String {
    match error {
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::RuntimeError(message) => message.clone(),
        mlua::Error::CallbackError { traceback, cause } => {
            let inner = raw_message(cause);
            if inner.contains("stack traceback:") {
                inner
            } else {
                format!("{inner}\n{traceback}")
            }
        }
        mlua::Error::WithContext { context, cause } => {
            format!("{context}: {}", raw_message(cause))
        }
        other => other.to_string(),
    }
}
