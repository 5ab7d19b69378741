//! Git as the agent runs it: in a process group of its own, killed on a
//! timeout or a cancel, with only the allowed transports, and what the
//! remote said filtered before it reaches a build's log.

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::escaped::Escaped;

/// What ends a git command early: its timeout, and a cancel (of the build
/// it checks out, or of the agent).
#[derive(Clone, Copy)]
pub struct GitLimits<'a> {
    pub timeout: Duration,
    pub cancel: &'a CancellationToken,
    /// `GIT_ALLOW_PROTOCOL`: no `ext::`, `fd::` or other remote helpers.
    pub protocols: &'static str,
}

/// Runs git; its trimmed stdout, or its stderr as the error. It runs in
/// a process group of its own, which is killed (ssh and remote helpers
/// included) when it outlives `limits.timeout` or `limits.cancel` fires.
pub(crate) async fn git(
    dir: &Path,
    args: &[&str],
    limits: GitLimits<'_>,
) -> Result<String, String> {
    let mut command = tokio::process::Command::new("git");
    // No detached `git maintenance`/`gc --auto` after fetches: nobody would
    // wait for them (the agent's mirrors are pruned explicitly).
    command
        .args(["-c", "maintenance.auto=false", "-c", "gc.auto=0"])
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        // Only these transports, for the command and every fetch it makes
        // (submodules, redirects): git's own default lets `fd::` and other
        // helpers through, and a request could name one.
        .env("GIT_ALLOW_PROTOCOL", limits.protocols)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let (child, _owned) = crate::reaper::spawn_owned(|| command.spawn(), tokio::process::Child::id)
        .map_err(|e| format!("cannot run git: {e}"))?;
    let pgid = child.id().map(|id| id as i32);
    let kill_group = || {
        if let Some(pgid) = pgid {
            // SAFETY: kill(2) on the process group git leads; no memory shared.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    };
    let out = tokio::select! {
        out = child.wait_with_output() => out.map_err(|e| format!("cannot run git: {e}"))?,
        _ = tokio::time::sleep(limits.timeout) => {
            kill_group();
            return Err(format!(
                "git {} did not finish within {} (git_timeout)",
                args.first().unwrap_or(&""),
                crate::duration::format(limits.timeout)
            ));
        }
        _ = limits.cancel.cancelled() => {
            kill_group();
            return Err("canceled".into());
        }
    };
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        tracing::warn!(args = ?args, "git failed: {}", Escaped(stderr.trim()));
        Err(git_said(&stderr))
    }
}

/// What of git's stderr may go into a build's `error` (which visitors may
/// read): git's own `fatal:`/`error:` lines, never what the remote sent
/// (`remote:` lines, `remote error: ...`, the bytes of a bad answer), at
/// most 300 characters. The whole of it is in the agent's log.
fn git_said(stderr: &str) -> String {
    const REMOTE_TEXT: [&str; 3] = ["remote error:", "protocol error:", "bad line length"];
    let own: Vec<String> = stderr
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("fatal:") || line.starts_with("error:"))
        .map(
            |line| match REMOTE_TEXT.iter().filter_map(|m| line.find(m)).min() {
                Some(at) => format!(
                    "{}the remote's answer is not repeated here (see the agent's log)",
                    &line[..at]
                ),
                None => line.to_string(),
            },
        )
        .collect();
    let text = if own.is_empty() {
        "git failed (its output is in the agent's log)".to_string()
    } else {
        own.join("; ")
    };
    match text.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}
