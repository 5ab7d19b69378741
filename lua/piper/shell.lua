---@meta piper.shell

---@class piper.shell
local shell = {}

---Runs a command at evaluation time; returns stdout without the trailing
---newline; raises an error with stderr if it fails.
---@param cmd string|string[]
---@param opts? { cwd?: string }
---@return string
function shell.run(cmd, opts) end

---Runs a command at evaluation time and returns all about it, never raising
---on failure.
---@param cmd string|string[]
---@param opts? { cwd?: string }
---@return { ok: boolean, code: integer|nil, stdout: string, stderr: string }
function shell.output(cmd, opts) end

---Quotes a string as one shell word.
---@param s string
---@return string
function shell.quote(s) end

---Quotes and joins an argv list into one shell command.
---@param argv string[]
---@return string
function shell.join(argv) end

return shell
