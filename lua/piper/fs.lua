---@meta piper.fs
-- Generated from stdlib/piper/fs.lua by `piper meta`: edit that file, not this one.

--- Files of the project, at evaluation time. Paths are relative to the
--- project root (the directory of piper.lua), whatever directory piper was
--- started from.
---@class piper.fs
local fs = {}

--- Files matching glob patterns, sorted, relative to the project root.
--- Honours `.gitignore`, `.ignore` and `.git/info/exclude`; hidden files are
--- skipped unless `{ hidden = true }`. `**` crosses directories.
---
--- ```lua
--- for _, src in ipairs(fs.glob "src/**/*.c") do ... end
--- local all = fs.glob { "src/**/*.rs", "tests/**/*.rs" }
--- ```
---@param patterns string|string[]
---@param opts? { hidden?: boolean, gitignore?: boolean }
---@return string[]
function fs.glob(patterns, opts) end

--- Whether a file or directory exists.
---
--- ```lua
--- if fs.exists "Cargo.toml" then ... end
--- ```
---@param path string
---@return boolean
function fs.exists(path) end

--- The whole content of a file. Raises an error naming the file when it
--- cannot be read.
---
--- ```lua
--- local version = fs.read("VERSION"):match("%S+")
--- ```
---@param path string
---@return string
function fs.read(path) end

return fs
