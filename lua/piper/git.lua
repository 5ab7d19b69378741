---@meta piper.git

---@class piper.git
local git = {}

---Whether the project is inside a git work tree.
---@return boolean
function git.is_repo() end

---The commit checked out; nil outside a repository.
---@param opts? { short?: boolean }
---@return string|nil
function git.sha(opts) end

---The current branch; nil on a detached HEAD or outside a repository.
---@return string|nil
function git.branch() end

---Whether tracked files have uncommitted changes; nil outside a repository.
---@return boolean|nil
function git.dirty() end

---`git describe`, e.g. "v1.2.0-3-g3f2a9c1"; nil outside a repository.
---@param opts? { tags?: boolean, always?: boolean, dirty?: boolean }
---@return string|nil
function git.describe(opts) end

return git
