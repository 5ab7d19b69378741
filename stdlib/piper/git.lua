--- The version of a build, from the git repository of the project. Every
--- function returns nil outside a git repository (or without git), so a
--- piper.lua works in a tarball too.
local native = require "piper._native"

local M = {}

local function git(args)
  local argv = { "git" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local r = native.run { argv = argv }
  if not r or r.code ~= 0 then return nil end
  return (r.stdout:gsub("%s+$", ""))
end

--- Whether the project is inside a git work tree.
---
--- ```lua
--- if git.is_repo() then ... end
--- ```
---@return boolean
function M.is_repo()
  return git { "rev-parse", "--is-inside-work-tree" } == "true"
end

--- The commit checked out (HEAD).
---
--- ```lua
--- local sha = git.sha { short = true }  --> "3f2a9c1"
--- ```
---@param opts? { short?: boolean }
---@return string|nil
function M.sha(opts)
  if opts and opts.short then return git { "rev-parse", "--short", "HEAD" } end
  return git { "rev-parse", "HEAD" }
end

--- The current branch, or nil on a detached HEAD.
---
--- ```lua
--- local on_main = git.branch() == "main"
--- ```
---@return string|nil
function M.branch()
  local b = git { "symbolic-ref", "--quiet", "--short", "HEAD" }
  if b == "" then return nil end
  return b
end

--- Whether tracked files have uncommitted changes.
---
--- ```lua
--- if git.dirty() then print "building uncommitted changes" end
--- ```
---@return boolean|nil
function M.dirty()
  local out = git { "status", "--porcelain", "--untracked-files=no" }
  if out == nil then return nil end
  return out ~= ""
end

--- `git describe`: the nearest tag plus commits since, e.g. "v1.2.0-3-g3f2a9c1".
--- `always` (default true) falls back to the short sha when there is no tag;
--- `tags` counts lightweight tags too; `dirty` appends "-dirty".
--- To give steps the version, use a build stamp instead: its value is
--- computed per build and a new one reruns nothing
--- (`env.stamp { VERSION = "git describe --tags --always --dirty" }`);
--- `env.set` with this value would rerun every step after each edit.
---
--- ```lua
--- local version = git.describe { tags = true } or "dev"
--- ```
---@param opts? { tags?: boolean, always?: boolean, dirty?: boolean }
---@return string|nil
function M.describe(opts)
  opts = opts or {}
  local args = { "describe" }
  if opts.tags then args[#args + 1] = "--tags" end
  if opts.always ~= false then args[#args + 1] = "--always" end
  if opts.dirty then args[#args + 1] = "--dirty" end
  return git(args)
end

return M
