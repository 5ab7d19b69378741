-- Runs before piper.lua: makes `step` and `pipeline` globals and lets
-- `require "ci.rust"` load ci/rust.lua from the project root (and only from
-- there), recording each file so `piper watch` can reload on edits.
local native = require "piper._native"
local registry = require "piper._registry"
local piper = require "piper"

step = piper.step
pipeline = piper.pipeline

-- Our searcher replaces Lua's path and C searchers: a build config loads
-- the project's Lua, not whatever LUA_PATH points at.
package.path = ""
package.cpath = ""
package.searchers = {
  package.searchers[1], -- package.preload: the piper.* modules
  function(name)
    -- Only dotted names of plain words: `.tmp.x` or `a..b` would become
    -- absolute or empty path parts and reach outside the project.
    for part in (name .. "."):gmatch("(.-)%.") do
      if not part:match("^[%w_%-]+$") then
        error(("module name %q is not inside the project: use dotted names of letters, digits, `_` and `-`, like \"ci.rust\" for ci/rust.lua"):format(name), 3)
      end
    end
    local rel = name:gsub("%.", "/")
    local tried = {}
    for _, pattern in ipairs { "%s.lua", "%s/init.lua" } do
      local path = pattern:format(rel)
      local text = native.read_file(path)
      if text then
        local chunk, err = load(text, "@" .. path)
        if not chunk then error(err, 0) end
        registry.files[#registry.files + 1] = path
        return chunk, path
      end
      tried[#tried + 1] = "\n\tno file '" .. path .. "' in the project root"
    end
    return table.concat(tried)
  end,
}

-- The configuration cache checks what piper.fs, piper.env and piper.shell
-- read; these standard functions it cannot check, so calling one while the
-- config is evaluated keeps that evaluation out of the cache (a no-op in
-- function steps at build time). os.getenv goes through the recorded path.
local function untracked(lib, libname, names)
  if not lib then return end
  for _, name in ipairs(names) do
    local f = lib[name]
    if f then
      local full = libname == "" and name or (libname .. "." .. name)
      lib[name] = function(...)
        native.untracked(full)
        return f(...)
      end
    end
  end
end
untracked(io, "io", { "open", "lines", "popen", "read", "input" })
untracked(os, "os", { "execute", "time", "date", "clock", "tmpname", "remove", "rename" })
untracked(math, "math", { "random" })
untracked(_G, "", { "dofile", "loadfile" })
os.getenv = native.getenv
