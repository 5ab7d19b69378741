//! One agent per data directory. Everything in it — the identity, the
//! journal of process groups, the workspaces, `piperd.addr` — belongs to
//! the one piperd that uses it; a second one started on it by mistake would
//! end the first one's steps, re-queue its builds and delete its
//! workspaces. So piperd takes an advisory lock on `piperd.lock` before it
//! touches anything else, as PostgreSQL does for its data directory and
//! Cargo for its target directory, and keeps it until it exits (the kernel
//! lets go of it however the process ends, SIGKILL included).
//!
//! The file also says who holds it (pid, then address once it listens), so
//! the second agent's error names them.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The lock file, in the data directory.
pub const LOCK_FILE: &str = "piperd.lock";

/// The held lock; released when dropped or when the process ends.
#[derive(Debug)]
pub struct DataDirLock {
    file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Locks `data` for this process, or says who holds it.
    pub fn acquire(data: &Path) -> Result<DataDirLock> {
        let path = data.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(Error::Setting {
                    name: format!("data directory {}", data.display()),
                    message: format!(
                        "another piperd uses it ({}); stop that one first, or give this one a data directory of its own (--data)",
                        describe_holder(&holder)
                    ),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(format!("cannot lock {}", path.display()), e));
            }
        }
        let mut lock = DataDirLock { file, path };
        lock.record(None)?;
        Ok(lock)
    }

    /// Records this process (and, once it listens, its address) in the file.
    pub fn record(&mut self, address: Option<&str>) -> Result<()> {
        let text = match address {
            Some(address) => format!("pid {}\naddress {address}\n", std::process::id()),
            None => format!("pid {}\n", std::process::id()),
        };
        let written = (|| {
            self.file.set_len(0)?;
            self.file.rewind()?;
            self.file.write_all(text.as_bytes())
        })();
        written.map_err(|e| Error::io(format!("cannot write {}", self.path.display()), e))
    }
}

/// "pid 4242, listening on 127.0.0.1:7117" from the lock file's text.
fn describe_holder(text: &str) -> String {
    let field = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    match (field("pid "), field("address ")) {
        (Some(pid), Some(address)) => format!("pid {pid}, listening on {address}"),
        (Some(pid), None) => format!("pid {pid}, not listening yet"),
        _ => "its pid is not recorded yet".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = DataDirLock::acquire(dir.path()).unwrap();
        first.record(Some("127.0.0.1:7117")).unwrap();
        let error = DataDirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains(&format!(
                "pid {}, listening on 127.0.0.1:7117",
                std::process::id()
            )),
            "{error}"
        );
        assert!(error.contains(&dir.path().display().to_string()), "{error}");
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
