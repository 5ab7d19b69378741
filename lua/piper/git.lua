---@meta piper.git
-- Generated from stdlib/piper/git.lua by `piper meta`: edit that file, not this one.

--- The version of a build, from the git repository of the project. Every
--- function returns nil outside a git repository (or without git), so a
--- piper.lua works in a tarball too.
---@class piper.git
local git = {}

--- Whether the project is inside a git work tree.
---
--- ```lua
--- if git.is_repo() then ... end
--- ```
---@return boolean
function git.is_repo() end

--- The commit checked out (HEAD).
---
--- ```lua
--- local sha = git.sha { short = true }  --> "3f2a9c1"
--- ```
---@param opts? { short?: boolean }
---@return string|nil
function git.sha(opts) end

--- The current branch, or nil on a detached HEAD.
---
--- ```lua
--- local on_main = git.branch() == "main"
--- ```
---@return string|nil
function git.branch() end

--- Whether tracked files have uncommitted changes.
---
--- ```lua
--- if git.dirty() then print "building uncommitted changes" end
--- ```
---@return boolean|nil
function git.dirty() end

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
function git.describe(opts) end

return git
