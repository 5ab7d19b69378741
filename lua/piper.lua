---@meta
-- LuaCATS definitions of the Piper API for lua-language-server.
-- Write them into a project with `piper meta` and add that directory to
-- `workspace.library` in .luarc.json.

---@class piper.Step
---@field __piper_step string the step's name

---@class piper.Pipeline
---@field __piper_pipeline string the pipeline's name

---@class piper.Trigger
---@field __piper_trigger "pipeline"
---@field pipeline string
---@field env? table<string, string|number|boolean>

---A shell command (run with `/bin/sh -ec`), a list of commands run in order
---(strings are shell commands, tables are argv lists run without a shell),
---or a Lua function called at build time with a `ctx`.
---@alias piper.Run string|(string|string[])[]|fun(ctx: piper.Ctx): boolean?

---@class piper.Schedule
---@field __piper_trigger "schedule"
---@field cron string

---@class piper.StepSpec
---@field run? piper.Run what the step does; a step without `run` only groups its deps
---@field argv? string[] a program and its arguments, run without a shell (instead of `run`)
---@field deps? (piper.Step|string)[]|piper.Step|string steps that must succeed first
---@field env? table<string, string|number|boolean> variables for this step
---@field dir? string working directory, relative to the project root
---@field timeout? string|number e.g. "90s", "10m", "1h30m", or seconds
---@field retries? integer how many times to run again after a failure (default 0)
---@field allow_failure? boolean a failure does not fail the build
---@field when? boolean|fun(): boolean run only if true (a function is called just before)
---@field desc? string shown by `piper list`
---@field inputs? string|string[] globs of the files it reads; with them it can be up to date
---@field outputs? string|string[] paths or globs it writes, relative to `dir`
---@field service? boolean a long-running process: `piper watch` keeps it running beside the builds
---@field cache? boolean false: never fetch its results from a cache or store them (it reads what its inputs do not say)
---@field remote_cache? boolean false: keep its results off a remote cache (the disk cache still shares them on this machine)
---@field remote? boolean false: never run it on a remote executor (`--remote-exec`): it needs this machine
---@field cache_salt? string mixed into its action key: another salt is other work to every cache
---@field depfile? string a Makefile-style depfile it writes (cc -MD); the files listed become inputs
---@field requires? table<string, string|number|boolean> labels a build agent must have to run it, e.g. { gpu = "1" }

---@class piper.PipelineSpec
---@field [integer] piper.Step|piper.Pipeline|string steps (their deps come along) and included pipelines
---@field desc? string shown by `piper list`
---@field env? table<string, string|number|boolean> variables for its steps
---@field on_success? piper.Trigger|string|(piper.Trigger|string)[] pipelines to run after it succeeds
---@field on_failure? piper.Trigger|string|(piper.Trigger|string)[] pipelines to run after it fails
---@field always? piper.Trigger|string|(piper.Trigger|string)[] pipelines to run after it, either way
---@field schedule? piper.Schedule|string|(piper.Schedule|string)[] cron schedules on which piperd runs it
---@field requires? table<string, string|number|boolean> labels a build agent must have to run it, e.g. { os = "linux" }
---@field default? boolean what a bare `piper exec` runs (at most one pipeline; without one, the only pipeline there is)
---@field args? string|string[] the arguments it takes after `--`, offered by completion (not enforced)
---@field remote_cache? boolean false: when it is run, none of its steps uses a remote cache
---@field retry_agent_lost? integer how many times piperd may run it again on another agent when its agent died (0-10, default 0: the build ends `lost`)

---What a Lua function step receives.
---@class piper.Ctx
---@field step string the step's name
---@field dir string its working directory (absolute)
---@field env table<string, string> its full environment
---@field args string[] the arguments after `--` (`piper exec deploy -- prod`); empty without
local Ctx = {}

---Runs a shell command as part of the step, its output in the step's log.
---Raises an error if it fails, unless `{ check = false }`.
---@param cmd string
---@param opts? { check?: boolean }
---@return integer|nil code the exit code
function Ctx.sh(cmd, opts) end

---Runs a program with arguments, without a shell; like `ctx.sh` otherwise.
---@param argv string[]
---@param opts? { check?: boolean }
---@return integer|nil code
function Ctx.exec(argv, opts) end

---Writes its arguments (tab-separated, newline-terminated) to the step's log.
---@param ... any
function Ctx.print(...) end

---Defines a step: `step "name" { run = ... }`.
---@param name string
---@return fun(spec: piper.StepSpec): piper.Step
function step(name) end

---Defines a pipeline: `pipeline "name" { step1, step2, on_success = ... }`.
---@param name string
---@return fun(spec: piper.PipelineSpec): piper.Pipeline
function pipeline(name) end

---@class piper
local piper = {}

---Same as the global `step`.
---@param name string
---@return fun(spec: piper.StepSpec): piper.Step
function piper.step(name) end

---Same as the global `pipeline`.
---@param name string
---@return fun(spec: piper.PipelineSpec): piper.Pipeline
function piper.pipeline(name) end

return piper
