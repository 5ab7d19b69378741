//! The other commands: list, graph, init, meta, completions, --help.

use crate::harness::{PIPER, Test};

const CONFIG: &str = r#"
    local lint = step "lint" { run = "cargo clippy", desc = "Lint the code" }
    local test = step "test" { run = { "cargo build", "cargo test" }, deps = { lint } }
    pipeline "ci" { test, desc = "Everything CI runs", on_success = "deploy" }
    pipeline "deploy" { step "upload" { run = function() end } }
"#;

#[test]
fn list_shows_pipelines_and_steps() {
    Test::new()
        .piper_lua(CONFIG)
        .args(["list"])
        .stdout(
            "
            Pipelines:
                ci      Everything CI runs [test]
                deploy  [upload]
            Steps:
                lint    Lint the code
                test    cargo build && cargo test
                upload  <lua function>
            ",
        )
        .run();
}

#[test]
fn list_json() {
    let ran = Test::new()
        .piper_lua(CONFIG)
        .args(["list", "--json"])
        .stdout_any()
        .run();
    let doc: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(doc["pipelines"][0]["triggers"][0]["pipeline"], "deploy");
    assert_eq!(doc["steps"][1]["deps"][0], "lint");
    assert_eq!(doc["steps"][1]["location"], "piper.lua:2");
}

#[test]
fn graph_formats() {
    Test::new()
        .piper_lua(CONFIG)
        .args(["graph", "ci"])
        .stdout(
            r#"
            digraph "ci" {
              rankdir=LR;
              node [shape=box];
              "lint";
              "test";
              "lint" -> "test";
            }
            "#,
        )
        .run();
    Test::new()
        .piper_lua(CONFIG)
        .args(["graph", "ci", "--format", "mermaid"])
        .stdout("graph LR\n  s0[\"lint\"]\n  s1[\"test\"]\n  s0 --> s1\n")
        .run();
    let ran = Test::new()
        .piper_lua(CONFIG)
        .args(["graph", "ci", "--format", "json"])
        .stdout_any()
        .run();
    let doc: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(doc["steps"].as_array().unwrap().len(), 2);
    assert_eq!(doc["pipeline"]["desc"], "Everything CI runs");
}

#[test]
fn init_writes_a_working_starter_and_refuses_to_overwrite() {
    let ran = Test::new().args(["init"]).stderr_contains("created").run();
    assert!(ran.path("piper.lua").exists());
    crate::harness::piper_in(ran.dir.path(), &["exec", "hello"], &[]);
    let again = std::process::Command::new(PIPER)
        .arg("init")
        .current_dir(ran.dir.path())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn meta_writes_the_definitions() {
    let ran = Test::new().args(["meta"]).stderr_any().run();
    let text = ran.read(".piper/lua/piper/shell.lua");
    assert!(text.starts_with("---@meta piper.shell"));
}

#[test]
fn completions_register_for_each_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let ran = Test::new().args(["completions", shell]).stdout_any().run();
        assert!(ran.stdout.contains("COMPLETE"), "{shell}: {}", ran.stdout);
        // It calls `piper` from PATH, not the binary that wrote it.
        assert!(
            !ran.stdout.contains(crate::harness::PIPER),
            "{shell}: {}",
            ran.stdout
        );
    }
    let bash = Test::new().args(["completions", "bash"]).stdout_any().run();
    assert!(bash.stdout.contains("\"piper\" -- "), "{}", bash.stdout);
}

/// What bash completion offers for the empty word after `piper COMMAND`,
/// in a project with CONFIG: the binary answers as the script asks it.
fn bash_completions(command: &str) -> Vec<String> {
    let ran = Test::new()
        .piper_lua(CONFIG)
        .env("COMPLETE", "bash")
        .env("_CLAP_COMPLETE_INDEX", "2")
        .env("_CLAP_COMPLETE_COMP_TYPE", "9")
        .env("_CLAP_COMPLETE_SPACE", "true")
        .env("_CLAP_IFS", "\n")
        .args(["--", "piper", command, ""])
        .stdout_any()
        .run();
    ran.stdout.lines().map(String::from).collect()
}

#[test]
fn submit_completes_pipeline_names_only() {
    let names = bash_completions("submit");
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert!(
        names.contains(&"ci") && names.contains(&"deploy"),
        "{names:?}"
    );
    assert!(
        !names.contains(&"lint"),
        "a step offered to submit: {names:?}"
    );
}

#[test]
fn dynamic_completion_offers_pipeline_and_step_names() {
    let names = bash_completions("exec");
    for name in ["ci", "deploy", "lint", "test", "upload"] {
        assert!(
            names.iter().any(|l| l == name),
            "{name} missing from {names:?}"
        );
    }
}

#[test]
fn help_explains_exit_codes_and_version_prints() {
    Test::new()
        .args(["--help"])
        .stdout_contains("Exit status:")
        .stdout_contains("exec")
        .run();
    Test::new()
        .args(["exec", "--help"])
        .stdout_contains("--keep-going")
        .run();
    Test::new()
        .args(["--version"])
        .stdout_contains("piper 0.")
        .run();
}

#[test]
fn usage_errors_exit_2() {
    Test::new()
        .args(["exec", "--no-such-flag"])
        .status(2)
        .stderr_contains("unexpected argument '--no-such-flag'")
        .run();
    Test::new()
        .args(["exec", "x", "-j", "0"])
        .status(2)
        .stderr_contains("0 is not in 1..")
        .run();
}

/// A real bash, with the script `piper completions bash` prints, completing
/// `piper WORDS<TAB>` in `dir`, the last word being the one under the
/// cursor. Words are the text typed, as bash hands it over (quotes and
/// backslashes kept). Each candidate comes back as `N:candidate`, N the
/// number of words it makes when inserted.
fn bash_complete(dir: &std::path::Path, words: &[&str]) -> Vec<String> {
    let bin = std::path::Path::new(PIPER).parent().unwrap();
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let (current, previous) = (
        &quoted[quoted.len() - 1],
        quoted
            .len()
            .checked_sub(2)
            .map_or("piper".to_string(), |i| quoted[i].clone()),
    );
    let script = format!(
        r#"source <(piper completions bash)
COMP_WORDS=(piper {all}); COMP_CWORD={cword}; COMP_TYPE=9
_clap_complete_piper piper {current} {previous}
for reply in "${{COMPREPLY[@]}}"; do
  eval "set -- $reply"
  echo "$#:$reply"
done"#,
        all = quoted.join(" "),
        cword = words.len(),
    );
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .current_dir(dir)
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_end().to_string())
        .collect()
}

#[test]
fn step_names_with_spaces_complete_as_one_quoted_word() {
    let ran = Test::new()
        .piper_lua(
            r#"
            step "build" { run = "true" }
            step "build docs" { run = "true" }
            step "it's" { run = "true" }
            "#,
        )
        .args(["list"])
        .stdout_any()
        .run();
    let dir = ran.dir.path();
    // Each candidate, as bash inserts it, is one word (the number before
    // the colon) with the name's characters escaped.
    let exec = |word| bash_complete(dir, &["exec", word]);
    assert_eq!(exec("bu"), ["1:build", "1:build\\ docs"]);
    assert_eq!(exec("build\\ d"), ["1:build\\ docs"]);
    assert_eq!(exec("it"), ["1:it\\'s"]);
}

#[test]
fn pipeline_arguments_complete_after_the_separator() {
    let ran = Test::new()
        .piper_lua(
            r#"
            pipeline "deploy" { step "upload" { run = 'echo "$1"' }, args = { "prod", "staging" } }
            pipeline "bench" { step "b" { run = "true" }, args = "--quick" }
            "#,
        )
        .args(["list"])
        .stdout_contains("deploy  [upload] -- prod|staging\n")
        .run();
    let dir = ran.dir.path();
    assert_eq!(
        bash_complete(dir, &["exec", "deploy", "--", ""]),
        ["1:prod", "1:staging"]
    );
    assert_eq!(
        bash_complete(dir, &["exec", "deploy", "--", "st"]),
        ["1:staging"]
    );
    assert_eq!(
        bash_complete(dir, &["exec", "-j2", "deploy", "bench", "--", "prod", ""]),
        ["1:prod", "1:staging", "1:--quick"]
    );
    // Before the separator, still pipelines and steps.
    assert!(bash_complete(dir, &["exec", "dep"]).contains(&"1:deploy".to_string()));
    Test::new()
        .piper_lua("pipeline 'p' { step 's' { run = 'true' }, args = { 1 } }")
        .args(["list"])
        .status(2)
        .stderr_contains("`args[1]` must be a string, got")
        .run();
}

/// The remote CLI speaks HTTPS with the crypto provider it installs
/// (reqwest is built without one): a TLS handshake against a peer that
/// hangs up is an error to report, never a panic for want of a provider.
/// Answers one HTTP request with `status` (and `headers`, each ending in
/// CRLF) and returns the request's first line.
fn answer_one_request(
    listener: std::net::TcpListener,
    status: &'static str,
    headers: String,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = std::io::BufReader::new(&stream);
        let mut first = String::new();
        std::io::BufRead::read_line(&mut reader, &mut first).unwrap();
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut reader, &mut line).unwrap() > 2 {
            line.clear();
        }
        let body = r#"{"error":"no such thing"}"#;
        let response = format!(
            "HTTP/1.1 {status}\r\n{headers}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        std::io::Write::write_all(&mut &stream, response.as_bytes()).unwrap();
        first
    })
}

/// `piper builds --server server` where no CA certificate can be found;
/// asserts it failed as a command (exit 1), not by a panic. Its stderr.
fn builds_without_ca_certificates(server: &str) -> String {
    let out = std::process::Command::new(PIPER)
        .args(["builds", "--server", server])
        .env("SSL_CERT_FILE", "/nonexistent/ca.pem")
        .env("SSL_CERT_DIR", "/nonexistent")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

#[test]
fn an_http_server_is_reached_without_the_systems_ca_certificates() {
    // A container without ca-certificates: plain HTTP needs none, and
    // loading them used to panic before any request was made.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = answer_one_request(listener, "404 Not Found", String::new());
    let stderr = builds_without_ca_certificates(&format!("http://127.0.0.1:{port}"));
    assert!(stderr.contains("404"), "{stderr}");
    assert!(server.join().unwrap().starts_with("GET /api/v1/builds"));
}

#[test]
fn a_redirect_from_http_to_https_is_reported_not_followed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = answer_one_request(
        listener,
        "301 Moved Permanently",
        "location: https://127.0.0.1:9/api/v1/builds\r\n".to_string(),
    );
    let out = std::process::Command::new(PIPER)
        .args(["builds", "--server", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("301"), "{stderr}");
    assert!(server.join().unwrap().starts_with("GET /api/v1/builds"));
}

#[test]
fn https_without_ca_certificates_is_a_clear_error_not_a_panic() {
    let stderr = builds_without_ca_certificates("https://127.0.0.1:9");
    assert!(stderr.contains("cannot set up HTTPS"), "{stderr}");
    assert!(stderr.contains("CA certificates"), "{stderr}");
}

#[test]
fn an_https_server_that_hangs_up_is_reported_not_a_panic() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hang_up = std::thread::spawn(move || {
        // Read the ClientHello, then close: the handshake really started.
        let (mut stream, _) = listener.accept().unwrap();
        let mut hello = [0u8; 5];
        std::io::Read::read_exact(&mut stream, &mut hello).unwrap();
        hello[0]
    });
    let out = std::process::Command::new(PIPER)
        .args(["builds", "--server", &format!("https://127.0.0.1:{port}")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach piperd at https://"),
        "{stderr}"
    );
    assert_eq!(hang_up.join().unwrap(), 0x16, "a TLS handshake record");
}

/// piper started with its standard streams closed (`<&- >&- 2>&-`, as a
/// cron job or a daemon's child may be): it runs, and its cache, state and
/// outputs are intact. (main.rs reopens closed streams on /dev/null, as
/// std's own start-up does, so that piper's files can never take
/// descriptors 0-2; this run passes without that too, because the async
/// runtime's descriptors are the first opened.)
#[test]
fn piper_runs_with_its_standard_streams_closed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("piper.lua"),
        "step 'copy' { run = 'echo copying; cp in.txt out.txt', inputs = { 'in.txt' }, outputs = { 'out.txt' } }\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("in.txt"), "in").unwrap();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("exec '{PIPER}' exec copy <&- >&- 2>&-"))
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    // The cache, the state and the output are intact: the next run reads
    // them without a warning and finds the step up to date.
    let (stdout, stderr) = crate::harness::piper_in(dir.path(), &["exec", "copy"], &[]);
    assert!(!stderr.contains("warning"), "{stderr}");
    assert!(!stdout.contains("copying"), "{stdout}");
    assert!(
        stderr.contains("up to date") || stdout.contains("up to date"),
        "{stdout}{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "in"
    );
}
