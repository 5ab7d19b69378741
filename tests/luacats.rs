//! Every example's piper.lua checks clean against the `---@meta`
//! definitions in lua/ with a real LuaCATS checker (`emmylua_check`, from
//! crates.io): a wrong type in the definitions shows up as a warning on
//! code users copy.

use std::path::Path;
use std::process::Command;

use crate::harness::skip;

#[test]
fn examples_check_clean_against_the_lua_definitions() {
    if Command::new("emmylua_check")
        .arg("--version")
        .output()
        .is_err()
    {
        skip(
            "luacats::examples_check_clean_against_the_lua_definitions",
            "emmylua_check is not installed (cargo install emmylua_check --locked)",
        );
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join(".luarc.json");
    let settings = serde_json::json!({
        "runtime.version": "Lua 5.4",
        "workspace.library": [root.join("lua")],
        "diagnostics.globals": ["step", "pipeline"],
    });
    std::fs::write(&config, settings.to_string()).unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("piper.lua").is_file() {
            continue;
        }
        let out = Command::new("emmylua_check")
            .arg(&dir)
            .arg("-c")
            .arg(&config)
            .arg("--warnings-as-errors")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} does not check clean:\n{}{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} examples found");
}
