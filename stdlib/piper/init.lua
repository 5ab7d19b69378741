--- The core of the Piper DSL: `step` and `pipeline`. Both are also globals in
--- piper.lua, so `require "piper"` is only needed inside your own modules.
local native = require "piper._native"
local registry = require "piper._registry"

local M = {}

local StepHandle = {
  __tostring = function(self) return "step(" .. self.__piper_step .. ")" end,
}
local PipelineHandle = {
  __tostring = function(self) return "pipeline(" .. self.__piper_pipeline .. ")" end,
}

-- Where the user's code called us: `level` frames above the caller of this helper.
local function caller(level)
  return native.where(level + 1)
end

-- The spec as it is now: `deps = steps` followed by `steps[#steps+1] = x`
-- must not change a step defined before the append. Plain tables are
-- copied (a few levels: lists of lists); handles and functions are kept.
local function snapshot(t, depth)
  local copy = {}
  for k, v in pairs(t) do
    if type(v) == "table" and getmetatable(v) == nil and depth > 0 then
      v = snapshot(v, depth - 1)
    end
    copy[k] = v
  end
  return copy
end

-- `define(name, spec, file, line)` keeps what the table holds now.
local function definer(kind, define, handle_key, mt)
  return function(name)
    if type(name) ~= "string" or name == "" then
      error(("%s: expected a name, like %s \"build\" { ... }, got %s"):format(kind, kind, type(name)), 2)
    end
    local file, line = caller(2)
    return function(spec)
      if type(spec) ~= "table" then
        error(("%s %q: expected a table { ... } after the name, got %s"):format(kind, name, type(spec)), 2)
      end
      define(name, spec, file, line)
      return setmetatable({ [handle_key] = name }, mt)
    end
  end
end

-- Steps are read by the Rust side as they are defined (there can be
-- thousands); pipelines are recorded and read when evaluation ends.
local function define_pipeline(name, spec, file, line)
  local list = registry.pipelines
  list[#list + 1] = { name = name, spec = snapshot(spec, 3), file = file, line = line }
end

--- Defines a step. Call it with a name, then a table of fields.
---
--- ```lua
--- local lint = step "lint" { run = "cargo clippy -- -D warnings" }
--- step "test" { run = { "cargo build --tests", "cargo test" }, deps = { lint } }
--- ```
---@param name string unique step name
---@return fun(spec: piper.StepSpec): piper.Step
M.step = definer("step", native.define_step, "__piper_step", StepHandle)

--- Defines a pipeline: a named group of steps (their dependencies come along)
--- with triggers that chain other pipelines.
---
--- ```lua
--- pipeline "ci" { lint, test, on_success = trigger.pipeline "deploy" }
--- ```
---@param name string unique pipeline name
---@return fun(spec: piper.PipelineSpec): piper.Pipeline
M.pipeline = definer("pipeline", define_pipeline, "__piper_pipeline", PipelineHandle)

return M
