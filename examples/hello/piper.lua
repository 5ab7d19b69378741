-- piper.lua: pipelines as code. Run `piper list` to see them and
-- `piper exec hello` to run one. Reference: docs/guide.md.
local env = require "piper.env"

env.set { GREETING = "hello" }

local greet = step "greet" {
  desc = "Say hello from a shell command",
  run = "echo \"$GREETING from $PIPER_STEP\"",
}

local uname = step "uname" {
  desc = "Run a program directly, without a shell",
  argv = { "uname", "-s" },
}

local report = step "report" {
  desc = "A Lua function step that runs commands through ctx",
  deps = { greet, uname },
  run = function(ctx)
    ctx.print("both dependencies are done; now in " .. ctx.step)
    ctx.sh "echo 'and a command from Lua'"
  end,
}

pipeline "hello" { desc = "A first pipeline", report }
