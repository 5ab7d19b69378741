---@meta piper.shell
-- Generated from stdlib/piper/shell.lua by `piper meta`: edit that file, not this one.

--- Run commands while piper.lua is evaluated (to compute versions, list
--- packages, ...), and quote strings for the shell. Commands run in the
--- project root. To run a command as part of a build, use a step instead.
---@class piper.shell
local shell = {}

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
function shell.run(cmd, opts) end

--- Runs a command and returns everything about it, without raising on failure.
---
--- ```lua
--- local r = shell.output "test -f .env"
--- if r.ok then ... end
--- ```
---@param cmd string|string[]
---@param opts? { cwd?: string, input?: boolean }
---@return { ok: boolean, code: integer|nil, stdout: string, stderr: string }
function shell.output(cmd, opts) end

--- Quotes a string so a POSIX shell reads it as one word.
---
--- ```lua
--- step "greet" { run = "echo " .. shell.quote(msg) }
--- ```
---@param s string
---@return string
function shell.quote(s) end

--- Quotes each element and joins them with spaces into one shell command.
---
--- ```lua
--- shell.join { "cp", "my file", "dest/" }  --> "cp 'my file' dest/"
--- ```
---@param argv string[]
---@return string
function shell.join(argv) end

return shell
