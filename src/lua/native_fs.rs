//! `piper._native.glob`, `read_file` and `exists`: file access relative to
//! the project root, under `piper.fs` and the module searcher. While the
//! config is evaluated, each is recorded for the configuration cache.

use std::path::PathBuf;
use std::sync::Arc;

use mlua::{Lua, Table, Value};

use crate::recording::Recording;

pub fn register(lua: &Lua, native: &Table, root: Arc<PathBuf>) -> mlua::Result<()> {
    let r = root.clone();
    native.set(
        "read_file",
        lua.create_function(move |lua, path: String| {
            // Stat before reading: the cache records both (`stamp_content`).
            let full = r.join(&path);
            let read = std::fs::metadata(&full).and_then(|meta| Ok((meta, std::fs::read(&full)?)));
            if let Some(mut recording) = lua.app_data_mut::<Recording>() {
                let used = read
                    .as_ref()
                    .ok()
                    .map(|(meta, bytes)| (meta, bytes.as_slice()));
                recording.file(&path, used);
            }
            match read {
                Ok((_, bytes)) => Ok((Value::String(lua.create_string(bytes)?), None)),
                Err(e) => Ok((Value::Nil, Some(format!("cannot read {path}: {e}")))),
            }
        })?,
    )?;
    let r = root.clone();
    native.set(
        "exists",
        lua.create_function(move |lua, path: String| {
            let exists = r.join(&path).exists();
            if let Some(mut recording) = lua.app_data_mut::<Recording>() {
                recording.exists(&path, exists);
            }
            Ok(exists)
        })?,
    )?;
    native.set(
        "glob",
        lua.create_function(move |lua, (patterns, opts): (Vec<String>, Table)| {
            let hidden = opts.get::<Option<bool>>("hidden")?.unwrap_or(false);
            let gitignore = opts.get::<Option<bool>>("gitignore")?.unwrap_or(true);
            Ok(
                match crate::glob::glob(&root, &patterns, hidden, gitignore) {
                    Ok(files) => {
                        if let Some(mut recording) = lua.app_data_mut::<Recording>() {
                            recording.glob(&patterns, hidden, gitignore, &files);
                        }
                        (Some(files), None)
                    }
                    Err(e) => (None, Some(e)),
                },
            )
        })?,
    )
}
