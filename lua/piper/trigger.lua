---@meta piper.trigger
-- Generated from stdlib/piper/trigger.lua by `piper meta`: edit that file, not this one.

--- Triggers: what starts a pipeline besides `piper exec`. Today: chaining,
--- where one pipeline's result starts another. Put a trigger in a pipeline's
--- `on_success`, `on_failure` or `always` field.
---@class piper.trigger
local trigger = {}

--- Chains a pipeline: it runs after the pipeline that names it finishes.
---
--- ```lua
--- pipeline "ci" { test, on_success = trigger.pipeline "deploy" }
--- pipeline "ci" { test, on_failure = trigger.pipeline("notify", { env = { CHANNEL = "#ci" } }) }
--- ```
---@param name string the pipeline to run
---@param opts? { env?: table<string, string|number|boolean> } extra variables for its steps
---@return piper.Trigger
function trigger.pipeline(name, opts) end

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
function trigger.schedule(cron) end

--- Tunes `piper watch`: `paths` are extra globs whose changes rerun the
--- watched pipeline (steps' `inputs`, piper.lua and its modules are watched
--- already); `ignore` globs never trigger a run.
---
--- ```lua
--- trigger.watch { paths = { "config/*.toml" }, ignore = { "**/*.tmp" } }
--- ```
---@param spec { paths?: string|string[], ignore?: string|string[] }
function trigger.watch(spec) end

return trigger
