---@meta piper.env
-- Generated from stdlib/piper/env.lua by `piper meta`: edit that file, not this one.

--- Environment variables for steps: set them for every step, read them at
--- evaluation time, load a `.env` file. Per-pipeline and per-step variables
--- go in the `env` field of `pipeline` and `step`; `piper exec --env K=V`
--- overrides them all.
---@class piper.env
local env = {}

--- Sets variables for every step of every pipeline.
---
--- ```lua
--- env.set { RUST_BACKTRACE = "1", CARGO_TERM_COLOR = "always" }
--- ```
---@param vars table<string, string|number|boolean>
function env.set(vars) end

--- Sets *build stamps*: variables for every step whose value a command
--- prints when the build runs (trimmed of trailing whitespace), such as a
--- version or a date. Unlike `env.set`, a stamp is not part of any step's
--- fingerprint: a new value never makes a step run, but a step that runs
--- for another reason gets the current one (Bazel's volatile status). The
--- commands run once per build, in the project root, and only when some
--- step actually runs; `piper watch` runs them again for each build. A
--- command that fails leaves its variable unset, with a warning. A string
--- runs in `sh -c`; a list runs without a shell.
---
--- ```lua
--- env.stamp {
---   VERSION = "git describe --tags --always --dirty",
---   BUILD_DATE = { "date", "-u", "+%Y-%m-%d" },
--- }
--- ```
---@param stamps table<string, string|string[]>
function env.stamp(stamps) end

--- Reads a variable: one set with `env.set`, else the environment piper was
--- started in, else `default`.
---
--- ```lua
--- local profile = env.get("PROFILE", "debug")
--- ```
---@param name string
---@return string|nil
---@overload fun(name: string, default: string): string
function env.get(name, default) end

--- Parses the text of a `.env` file: `KEY=value` lines, `#` comments, an
--- optional `export ` prefix, single or double quotes around values.
---
--- ```lua
--- local vars = env.parse("A=1\nB='two words'")  --> { A = "1", B = "two words" }
--- ```
---@param text string
---@return table<string, string>
function env.parse(text) end

--- Loads a `.env` file (relative to the project root) and sets its variables
--- for every step, as `env.set` does. A missing file is an error unless
--- `{ optional = true }`.
---
--- ```lua
--- env.load(".env", { optional = true })
--- ```
---@param path string
---@param opts? { optional?: boolean }
---@return table<string, string> vars the variables loaded
function env.load(path, opts) end

return env
