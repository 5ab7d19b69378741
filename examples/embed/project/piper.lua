-- The project examples/embed/main.rs loads: it needs that host, which
-- adds the module `host.greeting` (plain `piper` does not have it).
local greeting = require "host.greeting"

local build = step "build" { run = "echo building for " .. greeting.audience }

pipeline "hello" {
  step "greet" {
    deps = { build },
    run = function(ctx)
      ctx.print(greeting.say("from a Lua step"))
      ctx.sh "echo and from a shell"
    end,
  },
  desc = "What the embedding example runs",
}
