//! The `---@meta` definitions lua-language-server (and any LuaCATS checker)
//! reads, generated from the annotated stdlib: one source, as neovim does.
//!
//! Each `stdlib/piper/X.lua` documents its public functions with LuaCATS
//! (`---@param`, `---@return`, a fenced example); this keeps those blocks
//! and the signatures, drops the bodies, and names the module. The one
//! hand-written file, `lua/piper.lua`, describes what has no Lua source:
//! the globals `step`/`pipeline`, the spec types and the `ctx` of Lua steps.
//! `lua/piper/*.lua` in the repository are this output (checked by a test).

use super::stdlib;

/// `(path under the definitions directory, text)` for every file.
pub fn files() -> Vec<(String, String)> {
    let mut files = vec![("piper.lua".to_string(), stdlib::CORE_META.to_string())];
    for (module, chunk, source) in stdlib::MODULES {
        let Some(short) = module.strip_prefix("piper.") else {
            continue;
        };
        if short.starts_with('_') {
            continue;
        }
        let origin = chunk.trim_start_matches('@');
        files.push((
            format!("piper/{short}.lua"),
            module_meta(module, origin, source),
        ));
    }
    files
}

/// The definitions of one stdlib module: its header comment, then each
/// documented `function M.name(...)` with an empty body.
pub fn module_meta(module: &str, origin: &str, source: &str) -> String {
    let short = module.rsplit('.').next().unwrap_or(module);
    let mut out = format!(
        "---@meta {module}\n-- Generated from {origin} by `piper meta`: edit that file, not this one.\n\n"
    );
    let lines: Vec<&str> = source.lines().collect();
    let header: Vec<&str> = lines
        .iter()
        .take_while(|l| l.starts_with("---"))
        .copied()
        .collect();
    for line in &header {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&format!("---@class {module}\nlocal {short} = {{}}\n"));
    for (i, line) in lines.iter().enumerate().skip(header.len()) {
        let Some(signature) = line.strip_prefix("function M.") else {
            continue;
        };
        let Some(close) = signature.find(')') else {
            continue;
        };
        let doc_start = lines[..i]
            .iter()
            .rposition(|l| !l.starts_with("---"))
            .map_or(0, |p| p + 1)
            .max(header.len());
        out.push('\n');
        for doc in &lines[doc_start..i] {
            out.push_str(doc);
            out.push('\n');
        }
        out.push_str(&format!("function {short}.{} end\n", &signature[..=close]));
    }
    out.push_str(&format!("\nreturn {short}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_documented_signatures_and_drops_bodies() {
        let source = "--- Things.\nlocal native = 1\nlocal M = {}\n\nlocal function private() end\n\n--- Does x.\n---@param a string\n---@return string\nfunction M.x(a)\n  return a\nend\n\nreturn M\n";
        assert_eq!(
            module_meta("piper.t", "stdlib/piper/t.lua", source),
            "---@meta piper.t\n-- Generated from stdlib/piper/t.lua by `piper meta`: edit that file, not this one.\n\n--- Things.\n---@class piper.t\nlocal t = {}\n\n--- Does x.\n---@param a string\n---@return string\nfunction t.x(a) end\n\nreturn t\n"
        );
    }
}
