//! The built-in `piper.*` modules, exercised from real piper.lua files.

use crate::harness::Test;

#[test]
fn shell_run_output_quote_join() {
    Test::new()
        .piper_lua(
            r#"
            local shell = require "piper.shell"
            local v = shell.run "echo evaluated"
            local argv = shell.run { "printf", "%s", "a b" }
            local r = shell.output "echo out; echo err >&2; exit 3"
            assert(not r.ok and r.code == 3 and r.stdout == "out\n" and r.stderr == "err\n")
            assert(shell.quote "plain" == "plain")
            assert(shell.quote "it's" == [['it'\''s']])
            assert(shell.join { "cp", "my file", "x" } == "cp 'my file' x")
            local ok, err = pcall(shell.run, "echo nope >&2; exit 2")
            assert(not ok and err:find("exited") == nil and err:find("failed with exit code 2: nope", 1, true), err)
            step "show" { run = "echo " .. shell.quote(v .. "/" .. argv) }
            "#,
        )
        .args(["exec", "show"])
        .stdout_contains("show | evaluated/a b")
        .stderr_any().run();
}

#[test]
fn shell_runs_in_the_project_root_wherever_piper_starts() {
    Test::new()
        .piper_lua(
            r#"
            local shell = require "piper.shell"
            step "where" { run = "echo " .. shell.run "pwd" }
            "#,
        )
        .current_dir("deep/down")
        .args(["exec", "where"])
        .stdout_lacks("deep/down")
        .stderr_any()
        .run();
}

#[test]
fn fs_glob_honours_gitignore_exists_and_read() {
    Test::new()
        .piper_lua(
            r#"
            local fs = require "piper.fs"
            local files = fs.glob "src/**/*.c"
            assert(#files == 2 and files[1] == "src/a.c" and files[2] == "src/lib/b.c", table.concat(files, ","))
            assert(#fs.glob { "src/*.c", "*.md" } == 2)
            assert(fs.exists "README.md" and not fs.exists "nope")
            assert(fs.read("README.md") == "hi\n")
            local ok, err = pcall(fs.read, "nope.txt")
            assert(not ok and err:find("cannot read nope.txt"), err)
            local ok2, err2 = pcall(fs.glob, "src/[")
            assert(not ok2 and err2:find("invalid pattern `src/%[`"), err2)
            "#,
        )
        .file("src/a.c", "")
        .file("src/lib/b.c", "")
        .file("src/gen/c.c", "")
        .file(".gitignore", "src/gen/\n")
        .file("README.md", "hi")
        .args(["list"])
        .stdout_any().run();
}

#[test]
fn env_get_set_parse_and_load() {
    Test::new()
        .piper_lua(
            r#"
            local env = require "piper.env"
            assert(env.get("PIPER_TEST_OUTER") == "outer")
            assert(env.get("PIPER_TEST_MISSING", "fallback") == "fallback")
            local vars = env.load ".env"
            assert(vars.PLAIN == "1" and vars.QUOTED == "two words" and vars.EXPORTED == "yes")
            assert(env.get "QUOTED" == "two words")
            assert(next(env.load(".nope", { optional = true })) == nil)
            local ok, err = pcall(env.load, ".nope")
            assert(not ok and err:find("cannot read .nope"), err)
            local ok2, err2 = pcall(env.parse, "GOOD=1\nnot a line")
            assert(not ok2 and err2:find("line 2"), err2)
            step "show" { run = "echo $PLAIN $QUOTED $EXPORTED" }
            "#,
        )
        .file(
            ".env",
            "# comment\nPLAIN=1\nQUOTED=\"two words\"\nexport EXPORTED=yes # trailing\n",
        )
        .env("PIPER_TEST_OUTER", "outer")
        .args(["exec", "show"])
        .stdout_contains("show | 1 two words yes")
        .stderr_any()
        .run();
}

#[test]
fn git_describes_the_version_of_a_real_repo() {
    let test = Test::new().piper_lua(
        r#"
        local git = require "piper.git"
        assert(git.is_repo())
        assert(#git.sha() == 40 and #git.sha { short = true } >= 7)
        assert(git.branch() == "trunk", git.branch())
        assert(git.describe { tags = true } == "v1.2.0", git.describe { tags = true })
        assert(git.dirty() == false)
        step "version" { run = "echo $VERSION", env = { VERSION = git.describe { tags = true } } }
        "#,
    );
    let dir = test.dir.path();
    let git = |args: &[&str]| crate::harness::git(dir, args);
    git(&["init", "-q", "-b", "trunk"]);
    git(&["add", "piper.lua"]);
    git(&["commit", "-q", "-m", "init"]);
    git(&["tag", "v1.2.0"]);
    test.args(["exec", "version"])
        .stdout_contains("version | v1.2.0")
        .stderr_any()
        .run();
}

#[test]
fn git_functions_return_nil_outside_a_repo() {
    Test::new()
        .piper_lua(
            r#"
            local git = require "piper.git"
            assert(git.sha() == nil and git.describe() == nil and git.branch() == nil)
            assert(git.is_repo() == false)
            "#,
        )
        .env("GIT_CEILING_DIRECTORIES", "/")
        .args(["list"])
        .stdout_any()
        .run();
}

#[test]
fn project_modules_load_with_require() {
    Test::new()
        .piper_lua(
            r#"
            local rust = require "ci.rust"
            rust.steps("core")
            local pkg = require "ci"
            assert(pkg.name == "ci package")
            "#,
        )
        .file(
            "ci/rust.lua",
            r#"
            local M = {}
            function M.steps(name) step("test " .. name) { run = "echo testing " .. name } end
            return M
            "#,
        )
        .file("ci/init.lua", "return { name = 'ci package' }")
        .args(["exec", "test core"])
        .stdout_contains("test core | testing core")
        .stderr_any()
        .run();
}

#[test]
fn the_graph_is_code_one_step_per_file() {
    Test::new()
        .piper_lua(
            r#"
            local fs = require "piper.fs"
            local objs = {}
            for _, src in ipairs(fs.glob "src/*.c") do
              objs[#objs + 1] = step("cc " .. src) { argv = { "echo", "compiling", src } }
            end
            pipeline "build" { step "link" { run = "echo linking", deps = objs } }
            "#,
        )
        .file("src/a.c", "")
        .file("src/b.c", "")
        .args(["exec", "build", "-j1"])
        .stdout_contains("cc src/a.c | compiling src/a.c")
        .stdout_contains("cc src/b.c | compiling src/b.c")
        .stdout_contains("link       | linking")
        .stderr_any()
        .run();
}
