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

return M
