---@meta piper.env

---@class piper.env
local env = {}

---Sets variables for every step of every pipeline.
---@param vars table<string, string|number|boolean>
function env.set(vars) end

---Reads a variable: set with env.set, else from piper's environment, else `default`.
---@param name string
---@param default? string
---@return string|nil
function env.get(name, default) end

---Parses `.env` text: KEY=value lines, # comments, `export`, quotes.
---@param text string
---@return table<string, string>
function env.parse(text) end

---Loads a `.env` file (relative to the project root) and sets its variables.
---@param path string
---@param opts? { optional?: boolean }
---@return table<string, string> vars
function env.load(path, opts) end

return env
