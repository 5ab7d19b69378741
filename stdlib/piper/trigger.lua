--- Triggers: what starts a pipeline besides `piper exec`. Today: chaining,
--- where one pipeline's result starts another. Put a trigger in a pipeline's
--- `on_success`, `on_failure` or `always` field.
local native = require "piper._native"

local M = {}

--- Chains a pipeline: it runs after the pipeline that names it finishes.
---
--- ```lua
--- pipeline "ci" { test, on_success = trigger.pipeline "deploy" }
--- pipeline "ci" { test, on_failure = trigger.pipeline("notify", { env = { CHANNEL = "#ci" } }) }
--- ```
---@param name string the pipeline to run
---@param opts? { env?: table<string, string|number|boolean> } extra variables for its steps
---@return piper.Trigger
function M.pipeline(name, opts)
  if type(name) ~= "string" then
    error("trigger.pipeline: expected a pipeline name, got " .. type(name), 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("trigger.pipeline: options must be a table, got " .. type(opts), 2)
  end
  local file, line = native.where(2)
  return {
    __piper_trigger = "pipeline",
    pipeline = name,
    env = opts and opts.env or nil,
    file = file,
    line = line,
  }
end

--- A cron schedule for a pipeline's `schedule` field: the build agent
--- (piperd) runs the pipeline at those times for the repositories it knows.
--- Five fields (minute hour day-of-month month day-of-week), or `@daily`,
--- `@hourly`, `@weekly`, `@monthly`, `@yearly`.
---
--- ```lua
--- pipeline "nightly" { test, build, schedule = trigger.schedule "0 3 * * *" }
--- ```
---@param cron string
---@return piper.Schedule
function M.schedule(cron)
  if type(cron) ~= "string" then
    error("trigger.schedule: expected a cron expression like \"0 3 * * *\", got " .. type(cron), 2)
  end
  local file, line = native.where(2)
  return { __piper_trigger = "schedule", cron = cron, file = file, line = line }
end

local function strings(value, what, level)
  if value == nil then return {} end
  if type(value) == "string" then return { value } end
  if type(value) ~= "table" then
    error(("trigger.watch: `%s` must be a glob or a list of globs, got %s"):format(what, type(value)), level + 1)
  end
  for i, v in ipairs(value) do
    if type(v) ~= "string" then
      error(("trigger.watch: `%s[%d]` must be a string, got %s"):format(what, i, type(v)), level + 1)
    end
  end
  return value
end

--- Tunes `piper watch`: `paths` are extra globs whose changes rerun the
--- watched pipeline (steps' `inputs`, piper.lua and its modules are watched
--- already); `ignore` globs never trigger a run.
---
--- ```lua
--- trigger.watch { paths = { "config/*.toml" }, ignore = { "**/*.tmp" } }
--- ```
---@param spec { paths?: string|string[], ignore?: string|string[] }
function M.watch(spec)
  if type(spec) ~= "table" then
    error("trigger.watch: expected a table { paths = ..., ignore = ... }, got " .. type(spec), 2)
  end
  local registry = require "piper._registry"
  for _, p in ipairs(strings(spec.paths, "paths", 2)) do table.insert(registry.watch.paths, p) end
  for _, p in ipairs(strings(spec.ignore, "ignore", 2)) do table.insert(registry.watch.ignore, p) end
end

return M
