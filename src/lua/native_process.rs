//! `piper._native.run`: runs a command to completion at evaluation time and
//! returns its output (the primitive under `piper.shell` and `piper.git`).
//! Build steps do not use this: they go through `process.rs`, which streams
//! output as events and supervises process groups. While the config is
//! evaluated, each run is recorded for the configuration cache.

use std::path::PathBuf;
use std::sync::Arc;

use mlua::{Lua, Table, Value};

use crate::recording::{EvalCommand, Recording};
use crate::spec::Command;

pub fn register(lua: &Lua, native: &Table, root: Arc<PathBuf>) -> mlua::Result<()> {
    let run = lua.create_function(move |lua, req: Table| {
        let command = match (
            req.get::<Option<String>>("shell")?,
            req.get::<Option<Vec<String>>>("argv")?,
        ) {
            (Some(script), _) => Command::Shell(script),
            (None, Some(argv)) if !argv.is_empty() => Command::Argv(argv),
            _ => return Ok((Value::Nil, Some("expected a non-empty command".to_string()))),
        };
        let command = EvalCommand {
            command,
            cwd: req.get("cwd")?,
        };
        let out = match command.run(&root) {
            Ok(out) => out,
            Err(e) => return Ok((Value::Nil, Some(format!("cannot run command: {e}")))),
        };
        // `input = false`: the caller says the output does not change the
        // configuration, so the cache does not run it again to check.
        let is_input = req.get::<Option<bool>>("input")?.unwrap_or(true);
        if is_input && let Some(mut recording) = lua.app_data_mut::<Recording>() {
            recording.command(&command, &out);
        }
        let result = lua.create_table()?;
        if let Some(code) = out.code {
            result.set("code", code)?;
        }
        result.set("stdout", lua.create_string(&out.stdout)?)?;
        result.set("stderr", lua.create_string(&out.stderr)?)?;
        Ok((Value::Table(result), None))
    })?;
    native.set("run", run)
}
