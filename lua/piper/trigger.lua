---@meta piper.trigger

---@class piper.trigger
local trigger = {}

---Chains a pipeline: it runs after the pipeline that names it in
---`on_success`, `on_failure` or `always`.
---@param name string
---@param opts? { env?: table<string, string|number|boolean> }
---@return piper.Trigger
function trigger.pipeline(name, opts) end

---A cron schedule for a pipeline's `schedule` field: piperd runs the
---pipeline at those times for the repositories it knows.
---@param cron string five fields, or @daily, @hourly, @weekly, @monthly, @yearly
---@return piper.Schedule
function trigger.schedule(cron) end

---Tunes `piper watch`: extra globs whose changes rerun the pipeline, and
---globs that never trigger a run.
---@param spec { paths?: string|string[], ignore?: string|string[] }
function trigger.watch(spec) end

return trigger
