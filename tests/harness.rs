//! The test builder: writes files into a fresh temp dir, runs the real
//! `piper` binary there, and checks stdout, stderr and the exit status.
//!
//! Strict, as just's is: a stream without any expectation must be empty
//! (say `.stdout_any()` to not care), and the status defaults to 0.
//! `Ran::again()` runs once more in the same directory.
//!
//! ```ignore
//! Test::new()
//!     .piper_lua(r#"step "a" { run = "echo hi" }"#)
//!     .args(["exec", "a"])
//!     .stdout_contains("a | hi")
//!     .stderr_any()
//!     .run();
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const PIPER: &str = env!("CARGO_BIN_EXE_piper");

#[must_use = "a Test does nothing until .run()"]
pub struct Test {
    pub dir: tempfile::TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
    status: i32,
    stdout: Option<String>,
    stderr: Option<String>,
    stdout_contains: Vec<String>,
    stderr_contains: Vec<String>,
    stdout_lacks: Vec<String>,
    stderr_lacks: Vec<String>,
    stdout_any: bool,
    stderr_any: bool,
}

pub struct Ran {
    pub dir: tempfile::TempDir,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
    }

    /// A new test in the same directory (files and `.piper/` state kept).
    pub fn again(self) -> Test {
        Test::in_dir(self.dir)
    }

    /// The JSON events printed by `--json`.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

/// Removes the common leading indentation, so tests can indent Lua inline.
pub fn unindent(text: &str) -> String {
    let text = text.strip_prefix('\n').unwrap_or(text);
    // A closing line of only indentation (before `"#`) is not content.
    let text = match text.rfind('\n') {
        Some(i) if text[i + 1..].trim().is_empty() => &text[..i],
        _ => text,
    };
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    text.lines()
        .map(|l| {
            if l.len() >= indent {
                &l[indent..]
            } else {
                l.trim_start()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

impl Default for Test {
    fn default() -> Self {
        Self::new()
    }
}

impl Test {
    pub fn new() -> Self {
        Test::in_dir(tempfile::tempdir().expect("temp dir"))
    }

    /// A test that runs in an existing directory.
    pub fn in_dir(dir: tempfile::TempDir) -> Self {
        Test {
            dir,
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            status: 0,
            stdout: None,
            stderr: None,
            stdout_contains: Vec::new(),
            stderr_contains: Vec::new(),
            stdout_lacks: Vec::new(),
            stderr_lacks: Vec::new(),
            stdout_any: false,
            stderr_any: false,
        }
    }

    /// Accept any stdout (by default, a stdout without expectations must be
    /// empty).
    pub fn stdout_any(mut self) -> Self {
        self.stdout_any = true;
        self
    }

    /// Accept any stderr.
    pub fn stderr_any(mut self) -> Self {
        self.stderr_any = true;
        self
    }

    pub fn piper_lua(self, text: &str) -> Self {
        self.file("piper.lua", text)
    }

    pub fn file(self, rel: &str, text: &str) -> Self {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, unindent(text)).unwrap();
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Run from this subdirectory of the temp dir.
    pub fn current_dir(mut self, rel: &str) -> Self {
        let dir = self.dir.path().join(rel);
        std::fs::create_dir_all(&dir).unwrap();
        self.cwd = Some(dir);
        self
    }

    pub fn status(mut self, code: i32) -> Self {
        self.status = code;
        self
    }

    pub fn stdout(mut self, text: &str) -> Self {
        self.stdout = Some(unindent(text));
        self
    }

    pub fn stderr(mut self, text: &str) -> Self {
        self.stderr = Some(unindent(text));
        self
    }

    pub fn stdout_contains(mut self, text: &str) -> Self {
        self.stdout_contains.push(text.into());
        self
    }

    pub fn stdout_lacks(mut self, text: &str) -> Self {
        self.stdout_lacks.push(text.into());
        self
    }

    pub fn stderr_lacks(mut self, text: &str) -> Self {
        self.stderr_lacks.push(text.into());
        self
    }

    pub fn stderr_contains(mut self, text: &str) -> Self {
        self.stderr_contains.push(text.into());
        self
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(PIPER);
        cmd.args(&self.args)
            .current_dir(self.cwd.as_deref().unwrap_or(self.dir.path()))
            .env_remove("NO_COLOR")
            .env("PIPER_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs piper and checks what was asked; a failure points at the
    /// test's own line, not here.
    #[track_caller]
    pub fn run(self) -> Ran {
        let Output {
            status,
            stdout,
            stderr,
        } = self.command().output().expect("run piper");
        let stdout = String::from_utf8_lossy(&stdout).into_owned();
        let stderr = String::from_utf8_lossy(&stderr).into_owned();
        let code = status.code().unwrap_or(-1);
        let context = format!("--- stdout ---\n{stdout}--- stderr ---\n{stderr}--- status {code}");
        assert_eq!(code, self.status, "unexpected exit status\n{context}");
        let stdout_unchecked = self.stdout.is_none()
            && self.stdout_contains.is_empty()
            && self.stdout_lacks.is_empty();
        let expected_stdout = match &self.stdout {
            None if stdout_unchecked && !self.stdout_any => Some(""),
            other => other.as_deref(),
        };
        if let Some(expected) = expected_stdout {
            assert_eq!(stdout, expected, "stdout differs\n{context}");
        }
        // As stdout: asking what stderr lacks (or holds) is checking it.
        let stderr_unchecked = self.stderr.is_none()
            && self.stderr_contains.is_empty()
            && self.stderr_lacks.is_empty();
        let expected_stderr = match &self.stderr {
            None if stderr_unchecked && !self.stderr_any => Some(""),
            other => other.as_deref(),
        };
        if let Some(expected) = expected_stderr {
            assert_eq!(stderr, expected, "stderr differs\n{context}");
        }
        for text in &self.stdout_contains {
            assert!(
                stdout.contains(text.as_str()),
                "stdout lacks {text:?}\n{context}"
            );
        }
        for text in &self.stdout_lacks {
            assert!(
                !stdout.contains(text.as_str()),
                "stdout has {text:?}\n{context}"
            );
        }
        for text in &self.stderr_lacks {
            assert!(
                !stderr.contains(text.as_str()),
                "stderr has {text:?}\n{context}"
            );
        }
        for text in &self.stderr_contains {
            assert!(
                stderr.contains(text.as_str()),
                "stderr lacks {text:?}\n{context}"
            );
        }
        Ran {
            dir: self.dir,
            stdout,
            stderr,
        }
    }
}

/// Runs piper with `args` in `dir` (and `env`), as a test that runs it
/// again and again in one directory does; it must succeed. Its stdout and
/// stderr.
#[track_caller]
pub fn piper_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let out = Command::new(PIPER)
        .args(args)
        .current_dir(dir)
        .env_remove("NO_COLOR")
        .env("PIPER_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run piper");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "piper {args:?} failed:\n{stdout}{stderr}"
    );
    (stdout, stderr)
}

/// Whether a process is gone (absent, or a zombie nobody has reaped yet —
/// a zombie runs nothing).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Polls (bounded: 20 s) for a file to exist, even empty (`touch`).
pub fn wait_for_file_to_exist(path: &Path) {
    for _ in 0..2000 {
        if path.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{} never appeared", path.display());
}

/// Polls for a file written by a step (bounded: 20 s), for tests that must
/// act while a build is running.
pub fn wait_for_file(path: &Path) {
    for _ in 0..2000 {
        if path.exists()
            && std::fs::metadata(path)
                .map(|m| m.len() > 0)
                .unwrap_or(false)
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{} never appeared", path.display());
}

/// Reads a pid a step wrote with `echo $! > file`: waits (bounded, 20 s)
/// until the file holds a whole line, as it may exist empty for a moment.
pub fn read_pid(path: &Path) -> i32 {
    for _ in 0..2000 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.ends_with('\n')
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{} never held a pid", path.display());
}

/// A number no other call in this test process returns (for database names).
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u64::from(nanos) * 1000 + NEXT.fetch_add(1, Ordering::SeqCst)
}

/// Runs git in `dir` with a fixed identity; its trimmed stdout. Panics
/// with git's stderr if it fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Says that a test was skipped where `cargo test` shows it: libtest
/// captures `eprintln!`, not writes to the stderr handle. With
/// `PIPER_TEST_REQUIRE_ALL=1` (set by `.ci/run`) a skip is a failure.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    assert!(
        std::env::var_os("PIPER_TEST_REQUIRE_ALL").is_none(),
        "{test}: {why} (PIPER_TEST_REQUIRE_ALL is set, so this fails instead of skipping)"
    );
    let _ = writeln!(std::io::stderr(), "\nSKIPPED {test}: {why}");
}

/// A child process ended (SIGKILL) when dropped: a failing assertion does
/// not leave it running after the test.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs a future to completion on a fresh current-thread runtime (tests
/// are plain threads).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// Polls `check` every 10 ms until it holds; panics naming `what` after
/// `limit`. For waiting on evidence (a file, a state), never on time.
pub fn eventually(limit: std::time::Duration, what: &str, check: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}

/// An HTTP client for the tests' requests to piperd. TLS is rustls with
/// ring, installed as the process's provider as `piper` itself does
/// (reqwest has no built-in provider in this build).
pub fn http() -> reqwest::Client {
    http_builder().build().expect("an HTTP client")
}

/// As [`http`], to configure further.
pub fn http_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}
