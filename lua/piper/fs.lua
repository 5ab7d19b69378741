---@meta piper.fs

---@class piper.fs
local fs = {}

---Files matching glob patterns, sorted, relative to the project root;
---honours .gitignore; hidden files only with `{ hidden = true }`.
---@param patterns string|string[]
---@param opts? { hidden?: boolean, gitignore?: boolean }
---@return string[]
function fs.glob(patterns, opts) end

---Whether a file or directory exists (relative to the project root).
---@param path string
---@return boolean
function fs.exists(path) end

---The whole content of a file; raises an error naming it if unreadable.
---@param path string
---@return string
function fs.read(path) end

return fs
