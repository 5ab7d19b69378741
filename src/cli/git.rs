//! git, run as a command on the local machine (the CLI's submit, `piper
//! exec --from-build`, `--working-tree`): its trimmed stdout, or its
//! stderr as the error. piperd's checkouts have their own runner, with a
//! timeout and a process group (`agent/worker.rs`).

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};

/// `git -C dir args...`: its stdout as bytes (a bundle), or its stderr.
pub fn bytes(dir: &Path, args: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// `git -C dir args...` with `env` added.
pub fn run(dir: &Path, args: &[&str], env: &[(&str, &OsStr)]) -> Result<String, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}
