-- A C project: one compile step per source file, found by glob when the
-- config is evaluated, plus a link step that needs them all. Steps declare
-- their inputs and outputs, and the compiler's depfile (-MD) tells Piper
-- which headers each object includes: edit include/greet.h and only the
-- objects that include it are rebuilt (`piper exec ci --explain` says why).
local fs = require "piper.fs"
local env = require "piper.env"

env.set { CC = env.get("CC", "cc") }

local objects, compile = {}, {}
for _, src in ipairs(fs.glob "src/**/*.c") do
  local obj = "build/" .. src:gsub("%.c$", ".o")
  objects[#objects + 1] = obj
  compile[#compile + 1] = step("cc " .. src) {
    desc = "Compile " .. src,
    inputs = src,
    outputs = obj,
    depfile = obj:gsub("%.o$", ".d"),
    run = ("mkdir -p %s && $CC -Iinclude -MD -c %s -o %s"):format(obj:match("(.*)/"), src, obj),
  }
end

local link = step "link" {
  desc = "Link the program",
  deps = compile,
  inputs = objects,
  outputs = "build/hello",
  run = "$CC -o build/hello " .. table.concat(objects, " "),
}

local check = step "check" {
  desc = "Run it",
  deps = { link },
  argv = { "./build/hello" },
}

pipeline "build" { desc = "Compile and link", link }
pipeline "ci" { desc = "Build and run", check }
