--- Files of the project, at evaluation time. Paths are relative to the
--- project root (the directory of piper.lua), whatever directory piper was
--- started from.
local native = require "piper._native"

local M = {}

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
function M.glob(patterns, opts)
  if type(patterns) == "string" then patterns = { patterns } end
  if type(patterns) ~= "table" then
    error("fs.glob: expected a pattern or a list of patterns, got " .. type(patterns), 2)
  end
  local files, err = native.glob(patterns, opts or {})
  if not files then error("fs.glob: " .. err, 2) end
  return files
end

--- Whether a file or directory exists.
---
--- ```lua
--- if fs.exists "Cargo.toml" then ... end
--- ```
---@param path string
---@return boolean
function M.exists(path)
  if type(path) ~= "string" then error("fs.exists: expected a path, got " .. type(path), 2) end
  return native.exists(path)
end

--- The whole content of a file. Raises an error naming the file when it
--- cannot be read.
---
--- ```lua
--- local version = fs.read("VERSION"):match("%S+")
--- ```
---@param path string
---@return string
function M.read(path)
  if type(path) ~= "string" then error("fs.read: expected a path, got " .. type(path), 2) end
  local text, err = native.read_file(path)
  if not text then error("fs.read: " .. err, 2) end
  return text
end

return M
