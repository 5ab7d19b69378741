-- A Rust project: lint, test and build in a chain, versioned by git, with a
-- deploy pipeline that runs only when ci succeeds.
local env = require "piper.env"
local trigger = require "piper.trigger"

env.set { RUST_BACKTRACE = "1", CARGO_TERM_COLOR = "always" }
-- Every step sees VERSION; being a stamp, a new value reruns nothing.
env.stamp { VERSION = "git describe --tags --always --dirty" }

local fmt = step "fmt" { desc = "Check formatting", run = "cargo fmt --check" }
local lint = step "lint" { desc = "Clippy, warnings are errors", run = "cargo clippy --all-targets -- -D warnings" }
local test = step "test" {
  desc = "Build and run the tests",
  run = { "cargo build --tests", "cargo test" },
  deps = { fmt, lint },
  timeout = "10m",
}
local build = step "build" {
  desc = "Release build",
  run = "cargo build --release",
  deps = { test },
}

pipeline "ci" { desc = "Lint, test, build", build, on_success = trigger.pipeline "deploy" }

pipeline "deploy" {
  desc = "Ship the binary",
  step "upload" {
    when = function() return env.get("DEPLOY_HOST") ~= nil end,
    run = function(ctx)
      ctx.sh("scp target/release/rust-project " .. ctx.env.DEPLOY_HOST .. ":")
    end,
  },
}
