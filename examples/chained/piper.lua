-- Chained pipelines: ci triggers deploy when it succeeds and notify when it
-- fails; cleanup always runs. Try `piper exec ci` and `piper exec ci -e FAIL=1`.
local trigger = require "piper.trigger"
local env = require "piper.env"

local test = step "test" {
  desc = "Fails when FAIL=1",
  run = 'echo "testing"; [ "${FAIL:-0}" != 1 ]',
}

pipeline "ci" {
  desc = "Test, then chain",
  test,
  on_success = trigger.pipeline("deploy", { env = { TARGET = "staging" } }),
  on_failure = trigger.pipeline "notify",
  always = trigger.pipeline "cleanup",
}

pipeline "deploy" {
  step "deploy" { run = 'echo "deploying to $TARGET"' },
}

pipeline "notify" {
  step "notify" {
    run = function(ctx) ctx.print("ci failed; would page " .. env.get("ONCALL", "nobody")) end,
  },
}

pipeline "cleanup" { step "cleanup" { run = "echo cleaning up" } }
