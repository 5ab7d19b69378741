-- A monorepo: the same steps for every package, made in a loop. Each
-- package's test depends on its own build; `ci` runs all of them.
local fs = require "piper.fs"

local packages = {}
for _, manifest in ipairs(fs.glob "packages/*/package.txt") do
  packages[#packages + 1] = manifest:match("^packages/([^/]+)/")
end

local all = {}
for _, name in ipairs(packages) do
  local dir = "packages/" .. name
  local build = step("build " .. name) {
    desc = "Build " .. name,
    dir = dir,
    run = "mkdir -p out && cp package.txt out/" .. name .. ".built",
  }
  all[#all + 1] = step("test " .. name) {
    desc = "Test " .. name,
    dir = dir,
    deps = { build },
    run = "test -f out/" .. name .. ".built && echo " .. name .. " ok",
  }
end

pipeline "ci" { desc = "Build and test every package", table.unpack(all) }
