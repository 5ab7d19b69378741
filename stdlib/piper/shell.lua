--- Run commands while piper.lua is evaluated (to compute versions, list
--- packages, ...), and quote strings for the shell. Commands run in the
--- project root. To run a command as part of a build, use a step instead.
local native = require "piper._native"

local M = {}

local function spawn(fname, cmd, opts, level)
  local req = { cwd = opts and opts.cwd or nil, input = opts and opts.input }
  if type(cmd) == "string" then
    req.shell = cmd
  elseif type(cmd) == "table" then
    req.argv = cmd
  else
    error(("shell.%s: expected a command string or an argv table, got %s"):format(fname, type(cmd)), level + 1)
  end
  local result, err = native.run(req)
  if not result then error(("shell.%s: %s"):format(fname, err), level + 1) end
  return result
end

--- Runs a command and returns its standard output without the trailing
--- newline. Raises an error with the command's stderr if it fails.
--- At evaluation time the command is an input of the configuration cache
--- (run again to check it); `input = false` opts out.
---
--- ```lua
--- local rustc = shell.run "rustc --version"
--- local files = shell.run { "git", "ls-files", "src" }
--- ```
---@param cmd string|string[] a shell command, or an argv run without a shell
---@param opts? { cwd?: string, input?: boolean }
---@return string
function M.run(cmd, opts)
  local r = spawn("run", cmd, opts, 2)
  if r.code ~= 0 then
    local shown = type(cmd) == "table" and M.join(cmd) or cmd
    local status = r.code and ("exit code " .. r.code) or "a signal"
    error(("shell.run: `%s` failed with %s: %s"):format(shown, status, (r.stderr:gsub("%s+$", ""))), 2)
  end
  return (r.stdout:gsub("\r?\n$", ""))
end

--- Runs a command and returns everything about it, without raising on failure.
---
--- ```lua
--- local r = shell.output "test -f .env"
--- if r.ok then ... end
--- ```
---@param cmd string|string[]
---@param opts? { cwd?: string, input?: boolean }
---@return { ok: boolean, code: integer|nil, stdout: string, stderr: string }
function M.output(cmd, opts)
  local r = spawn("output", cmd, opts, 2)
  r.ok = r.code == 0
  return r
end

--- Quotes a string so a POSIX shell reads it as one word.
---
--- ```lua
--- step "greet" { run = "echo " .. shell.quote(msg) }
--- ```
---@param s string
---@return string
function M.quote(s)
  s = tostring(s)
  if s ~= "" and not s:find("[^%w%-_%./=:,+@%%]") then return s end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

--- Quotes each element and joins them with spaces into one shell command.
---
--- ```lua
--- shell.join { "cp", "my file", "dest/" }  --> "cp 'my file' dest/"
--- ```
---@param argv string[]
---@return string
function M.join(argv)
  local out = {}
  for i, a in ipairs(argv) do out[i] = M.quote(a) end
  return table.concat(out, " ")
end

return M
