//! `piper._native.getenv` and `where`: the environment piper was started
//! in, and where in the config a call came from.

use mlua::{Lua, Table};

pub fn register(lua: &Lua, native: &Table) -> mlua::Result<()> {
    native.set(
        "getenv",
        lua.create_function(|_, name: String| Ok(std::env::var(name).ok()))?,
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
