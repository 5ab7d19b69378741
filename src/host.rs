//! Host Lua modules: what a program embedding Piper adds to the Lua a
//! project's `piper.lua` is evaluated in (`require "host.editor"`), as
//! wezterm and neovim let Rust add to Lua. Each module is a Rust function
//! that makes the module's value in a given state; it is installed in
//! `package.preload` of every state Piper creates for the project (the
//! evaluation, and the one function steps run in).
//!
//! What a host function returns is invisible to the configuration cache,
//! so an evaluation that requires a host module is not cached (and
//! `piper explain`-style reasons say which module kept it out).

use std::sync::Arc;

use mlua::{Lua, Table, Value};

type Loader = dyn Fn(&Lua) -> mlua::Result<Value> + Send + Sync;

/// The modules a host adds, by name.
#[derive(Clone, Default)]
pub struct HostModules {
    modules: Vec<(String, Arc<Loader>)>,
}

impl std::fmt::Debug for HostModules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.modules.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_tuple("HostModules").field(&names).finish()
    }
}

impl HostModules {
    /// Adds (or replaces) module `name`, made by `loader` when required.
    pub fn add(
        &mut self,
        name: &str,
        loader: impl Fn(&Lua) -> mlua::Result<Value> + Send + Sync + 'static,
    ) {
        self.modules.retain(|(n, _)| n != name);
        self.modules.push((name.to_string(), Arc::new(loader)));
    }

    /// Puts every module in `lua`'s `package.preload`.
    pub(crate) fn install(&self, lua: &Lua) -> mlua::Result<()> {
        if self.modules.is_empty() {
            return Ok(());
        }
        let package: Table = lua.globals().get("package")?;
        let preload: Table = package.get("preload")?;
        for (name, loader) in &self.modules {
            let loader = loader.clone();
            let module = name.clone();
            let function = lua.create_function(move |lua, ()| {
                if let Some(mut recording) = lua.app_data_mut::<crate::recording::Recording>() {
                    recording.untracked(format!(
                        "piper.lua requires the host module `{module}`, which the cache cannot check"
                    ));
                }
                loader(lua)
            })?;
            preload.set(name.as_str(), function)?;
        }
        Ok(())
    }
}
