//! Symbolic links among a step's outputs (`ln -s libfoo.so.1 libfoo.so`):
//! the cache keeps them as links (path and target, as REAPI's
//! `OutputSymlink`), not as copies of what they point at, and writes one
//! back only when it stays inside the project: a cache entry must never
//! make a link out of the tree that a later step would write through.

use std::path::{Component, Path, PathBuf};

/// The target of `path` when it is a symbolic link.
pub(crate) fn target_of(path: &Path) -> Option<String> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.file_type().is_symlink() {
        return None;
    }
    Some(
        std::fs::read_link(path)
            .ok()?
            .to_string_lossy()
            .into_owned(),
    )
}

/// Whether a link at root-relative `path` to `target` resolves inside the
/// root (by its words alone: relative, and never above the root).
pub(crate) fn stays_inside(path: &str, target: &str) -> bool {
    if Path::new(target).is_absolute() {
        return false;
    }
    let mut depth: usize = Path::new(path).components().count().saturating_sub(1);
    for part in Path::new(target).components() {
        match part {
            Component::ParentDir if depth == 0 => return false,
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
    }
    true
}

/// Makes `at` a link to `target`, replacing what is there in one rename
/// (a reader sees the old file or the link, never neither).
pub(crate) fn place(at: &Path, target: &str) -> Result<(), String> {
    let parent = at.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let name = at
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let temp: PathBuf = parent.join(format!(".{name}.piper-link-{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    std::os::unix::fs::symlink(target, &temp)
        .map_err(|e| format!("cannot link {}: {e}", at.display()))?;
    std::fs::rename(&temp, at).map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        format!("cannot write {}: {e}", at.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_that_leave_the_root_are_refused() {
        assert!(stays_inside("lib/libfoo.so", "libfoo.so.1"));
        assert!(stays_inside("lib/libfoo.so", "../include/foo.h"));
        assert!(!stays_inside("lib/libfoo.so", "../../etc/passwd"));
        assert!(!stays_inside("libfoo.so", "/etc/passwd"));
        assert!(!stays_inside("a", ".."));
    }

    #[test]
    fn a_link_replaces_a_file_in_one_step() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("out/link");
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        std::fs::write(&at, "a file").unwrap();
        place(&at, "real").unwrap();
        assert_eq!(target_of(&at).as_deref(), Some("real"));
        assert_eq!(target_of(&dir.path().join("out")), None);
    }
}
