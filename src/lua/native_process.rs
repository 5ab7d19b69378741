//! `piper._native.run`: runs a command to completion at evaluation time and
//! returns its output (the primitive under `piper.shell` and `piper.git`).
//! Build steps do not use this: they go through `process.rs`, which streams
//! output as events and supervises process groups.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use mlua::{Lua, Table, Value};

pub fn register(lua: &Lua, native: &Table, root: Arc<PathBuf>) -> mlua::Result<()> {
    let run = lua.create_function(move |lua, req: Table| {
        let cwd = match req.get::<Option<String>>("cwd")? {
            Some(dir) => root.join(dir),
            None => root.to_path_buf(),
        };
        let mut command = match (
            req.get::<Option<String>>("shell")?,
            req.get::<Option<Vec<String>>>("argv")?,
        ) {
            (Some(script), _) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg(script);
                c
            }
            (None, Some(argv)) if !argv.is_empty() => {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
            _ => return Ok((Value::Nil, Some("expected a non-empty command".to_string()))),
        };
        command
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let result = lua.create_table()?;
        let output = crate::reaper::spawn_owned(|| command.spawn(), |c| Some(c.id()))
            .and_then(|(child, _owned)| child.wait_with_output());
        match output {
            Ok(out) => {
                if let Some(code) = out.status.code() {
                    result.set("code", code)?;
                }
                result.set("stdout", lua.create_string(&out.stdout)?)?;
                result.set("stderr", lua.create_string(&out.stderr)?)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Same convention as a shell: 127 is "command not found".
                let program = command.get_program().to_string_lossy().into_owned();
                result.set("code", 127)?;
                result.set("stdout", "")?;
                result.set("stderr", format!("command not found: {program}"))?;
            }
            Err(e) => return Ok((Value::Nil, Some(format!("cannot run command: {e}")))),
        }
        Ok((Value::Table(result), None))
    })?;
    native.set("run", run)
}
