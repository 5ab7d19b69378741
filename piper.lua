-- Piper builds itself. `piper exec ci` runs what .ci/run runs.
local env = require "piper.env"

env.set { CARGO_TERM_COLOR = "never" }

local fmt = step "fmt" { desc = "Check formatting", run = "cargo fmt --check" }
local clippy = step "clippy" { desc = "Lint; warnings are errors", run = "cargo clippy --all-targets -- -D warnings" }
local test = step "test" { desc = "Unit and integration tests", run = "cargo test", deps = { clippy } }

pipeline "ci" { desc = "Formatting, lints and tests", fmt, test }

step "bench" { desc = "Benchmarks against make, ninja and just (writes docs/benchmarks.md)", run = "bench/run" }
