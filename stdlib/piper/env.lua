--- Environment variables for steps: set them for every step, read them at
--- evaluation time, load a `.env` file. Per-pipeline and per-step variables
--- go in the `env` field of `pipeline` and `step`; `piper exec --env K=V`
--- overrides them all.
local native = require "piper._native"
local registry = require "piper._registry"

local M = {}

local function check_vars(vars, level)
  if type(vars) ~= "table" then
    error("env.set: expected a table of NAME = value, got " .. type(vars), level + 1)
  end
  for k, v in pairs(vars) do
    if type(k) ~= "string" then
      error("env.set: variable names must be strings, got " .. type(k), level + 1)
    end
    local t = type(v)
    if t ~= "string" and t ~= "number" and t ~= "boolean" then
      error(("env.set: %s must be a string, number or boolean, got %s"):format(k, t), level + 1)
    end
  end
end

--- Sets variables for every step of every pipeline.
---
--- ```lua
--- env.set { RUST_BACKTRACE = "1", CARGO_TERM_COLOR = "always" }
--- ```
---@param vars table<string, string|number|boolean>
function M.set(vars)
  check_vars(vars, 2)
  for k, v in pairs(vars) do
    if registry.stamps[k] ~= nil then
      error(("env.set: %s is already a stamp (env.stamp); a variable is either fixed or a stamp"):format(k), 2)
    end
    registry.env[k] = tostring(v)
  end
end

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
function M.stamp(stamps)
  if type(stamps) ~= "table" then
    error("env.stamp: expected a table of NAME = command, got " .. type(stamps), 2)
  end
  for k, v in pairs(stamps) do
    if type(k) ~= "string" or not k:match("^[%a_][%w_]*$") then
      error(("env.stamp: %s is not a variable name (letters, digits and _)"):format(tostring(k)), 2)
    end
    if registry.env[k] ~= nil then
      error(("env.stamp: %s is already set by env.set; a variable is either fixed or a stamp"):format(k), 2)
    end
    if type(v) == "string" and v ~= "" then
      registry.stamps[k] = { shell = v }
    elseif type(v) == "table" and #v > 0 then
      local argv = {}
      for i, a in ipairs(v) do
        if type(a) ~= "string" then
          error(("env.stamp: %s: argument %d must be a string, got %s"):format(k, i, type(a)), 2)
        end
        argv[i] = a
      end
      registry.stamps[k] = { argv = argv }
    else
      error(("env.stamp: %s must be a command (a string or a non-empty list of strings), got %s"):format(k, type(v)), 2)
    end
  end
end

--- Reads a variable: one set with `env.set`, else the environment piper was
--- started in, else `default`.
---
--- ```lua
--- local profile = env.get("PROFILE", "debug")
--- ```
---@param name string
---@return string|nil
---@overload fun(name: string, default: string): string
function M.get(name, default)
  if type(name) ~= "string" then error("env.get: expected a variable name, got " .. type(name), 2) end
  local v = registry.env[name]
  if v == nil then v = native.getenv(name) end
  if v == nil then return default end
  return v
end

--- Parses the text of a `.env` file: `KEY=value` lines, `#` comments, an
--- optional `export ` prefix, single or double quotes around values.
---
--- ```lua
--- local vars = env.parse("A=1\nB='two words'")  --> { A = "1", B = "two words" }
--- ```
---@param text string
---@return table<string, string>
function M.parse(text)
  local vars = {}
  local n = 0
  for line in (text .. "\n"):gmatch("(.-)\r?\n") do
    n = n + 1
    local trimmed = line:match("^%s*(.-)%s*$")
    if trimmed ~= "" and trimmed:sub(1, 1) ~= "#" then
      trimmed = trimmed:gsub("^export%s+", "")
      local key, value = trimmed:match("^([%a_][%w_%.]*)%s*=%s*(.*)$")
      if not key then
        error(("env.parse: line %d is not KEY=value: %s"):format(n, line), 2)
      end
      local quote = value:sub(1, 1)
      if (quote == '"' or quote == "'") and value:sub(-1) == quote and #value >= 2 then
        value = value:sub(2, -2)
        if quote == '"' then
          value = value:gsub("\\n", "\n"):gsub('\\"', '"')
        end
      else
        value = value:gsub("%s+#.*$", "")
      end
      vars[key] = value
    end
  end
  return vars
end

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
function M.load(path, opts)
  if type(path) ~= "string" then error("env.load: expected a path, got " .. type(path), 2) end
  local text, err = native.read_file(path)
  if not text then
    if opts and opts.optional then return {} end
    error("env.load: " .. err, 2)
  end
  local ok, vars = pcall(M.parse, text)
  if not ok then error(("env.load %s: %s"):format(path, tostring(vars):gsub("^env%.parse: ", "")), 2) end
  M.set(vars)
  return vars
end

return M
