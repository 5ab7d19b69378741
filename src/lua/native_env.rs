//! `piper._native.getenv` and `where`: the environment piper was started
//! in, and where in the config a call came from.

use mlua::{Lua, Table};

use crate::recording::Recording;

pub fn register(lua: &Lua, native: &Table) -> mlua::Result<()> {
    native.set(
        "getenv",
        lua.create_function(|lua, name: String| {
            let value = std::env::var(&name).ok();
            if let Some(mut recording) = lua.app_data_mut::<Recording>() {
                recording.env(&name, value.as_deref());
            }
            Ok(value)
        })?,
    )?;
    // Standard functions whose results the configuration cache cannot
    // check (boot.lua wraps them): calling one while the config is
    // evaluated keeps that evaluation out of the cache.
    native.set(
        "untracked",
        lua.create_function(|lua, name: String| {
            if let Some(mut recording) = lua.app_data_mut::<Recording>() {
                let at = lua
                    .inspect_stack(2, |d| {
                        let src = d.source().short_src.map(|s| s.into_owned());
                        format!("{}:{}", src.unwrap_or_default(), d.current_line().unwrap_or(0))
                    })
                    .unwrap_or_default();
                recording.untracked(format!(
                    "{at} calls {name}, whose result the cache cannot check (use piper.fs, piper.env or piper.shell, or an env.stamp)"
                ));
            }
            Ok(())
        })?,
    )
}

/// `piper._native.where(level)`: the file and line of a caller, with the
/// levels of `debug.getinfo` (1 = the function calling `where`). The debug
/// library itself is not loaded into configs.
pub fn register_where(lua: &Lua, native: &Table) -> mlua::Result<()> {
    native.set(
        "where",
        lua.create_function(|lua, level: usize| {
            Ok(lua
                .inspect_stack(level, |d| {
                    let src = d
                        .source()
                        .short_src
                        .map(|s| s.into_owned())
                        .unwrap_or_default();
                    (src, d.current_line().unwrap_or(0))
                })
                .unwrap_or_default())
        })?,
    )
}
