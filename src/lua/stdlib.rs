//! The `piper.*` Lua modules, embedded in the binary. Each is registered in
//! `package.preload` under a chunk name that shows its real path in
//! tracebacks (`stdlib/piper/shell.lua:12: ...`).

/// (module name, chunk name, source)
pub const MODULES: &[(&str, &str, &str)] = &[
    (
        "piper._registry",
        "@stdlib/piper/_registry.lua",
        include_str!("../../stdlib/piper/_registry.lua"),
    ),
    (
        "piper",
        "@stdlib/piper/init.lua",
        include_str!("../../stdlib/piper/init.lua"),
    ),
    (
        "piper.env",
        "@stdlib/piper/env.lua",
        include_str!("../../stdlib/piper/env.lua"),
    ),
    (
        "piper.trigger",
        "@stdlib/piper/trigger.lua",
        include_str!("../../stdlib/piper/trigger.lua"),
    ),
    (
        "piper.fs",
        "@stdlib/piper/fs.lua",
        include_str!("../../stdlib/piper/fs.lua"),
    ),
    (
        "piper.shell",
        "@stdlib/piper/shell.lua",
        include_str!("../../stdlib/piper/shell.lua"),
    ),
    (
        "piper.git",
        "@stdlib/piper/git.lua",
        include_str!("../../stdlib/piper/git.lua"),
    ),
];

/// Runs before the user's config: globals and the project module searcher.
pub const BOOT: (&str, &str) = ("@stdlib/boot.lua", include_str!("../../stdlib/boot.lua"));

/// The hand-written `---@meta` file: globals, spec types and `ctx`, which
/// have no Lua source. The module definitions are generated (`meta.rs`).
#[cfg(feature = "cli")]
pub const CORE_META: &str = include_str!("../../lua/piper.lua");
