//! `piper._native.define_step`: `step "x" { ... }` hands its table to the
//! Rust side as it is called, which reads it into a `RawStep` at once
//! (`spec::DefinedSteps`). Copying every table in Lua to freeze it until
//! the end of evaluation was a sixth of evaluating a 10 000-step config.

use mlua::{Lua, Table};

use crate::location::Location;
use crate::spec::DefinedSteps;

pub fn register(lua: &Lua, native: &Table) -> mlua::Result<()> {
    lua.set_app_data(DefinedSteps::default());
    native.set(
        "define_step",
        lua.create_function(
            |lua, (name, spec, file, line): (String, Table, String, u32)| {
                DefinedSteps::define(lua, name, &spec, Location::new(file, line));
                Ok(())
            },
        )?,
    )
}
