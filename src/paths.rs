//! Project-relative paths: the one resolver every path field goes through
//! (step `outputs` relative to the step's `dir`, `inputs` and globs relative
//! to the root), so a file named in `piper.lua` means the same file to the
//! up-to-date check, `piper clean --outputs` and `piper watch`.

use std::path::{Component, Path};

/// Whether a path field is a glob pattern rather than a literal path.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', '{'])
}

/// Lexically removes `.` and `a/..` so `src/../include/x.h` matches
/// `include/x.h`. A leading `..` stays: the path leaves its base.
pub fn normalize(path: &Path) -> String {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            other => parts.push(other.as_os_str()),
        }
    }
    parts
        .iter()
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// `path` (a literal path or a glob) written relative to `dir`, itself
/// relative to the project root, as a root-relative path or pattern.
/// Refuses what would leave the project: `clean --outputs` deletes these.
pub fn resolve_in(dir: &Path, path: &str) -> Result<String, String> {
    if Path::new(path).is_absolute() {
        return Err(format!(
            "`{path}` is absolute; write it relative to the step's `dir`"
        ));
    }
    let joined = normalize(&dir.join(path));
    if joined == ".." || joined.starts_with("../") || joined.is_empty() || joined.starts_with('/') {
        return Err(format!("`{path}` is outside the project"));
    }
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_against_the_steps_dir_and_stay_inside() {
        assert_eq!(normalize(Path::new("src/../include/./x.h")), "include/x.h");
        assert_eq!(normalize(Path::new("../../x")), "../../x");
        assert_eq!(
            resolve_in(Path::new("sub"), "out/*.o").unwrap(),
            "sub/out/*.o"
        );
        assert_eq!(resolve_in(Path::new(""), "a.o").unwrap(), "a.o");
        assert_eq!(resolve_in(Path::new("sub"), "../top.o").unwrap(), "top.o");
        assert!(resolve_in(Path::new("sub"), "../../etc").is_err());
        assert!(resolve_in(Path::new(""), "/etc/passwd").is_err());
        assert!(resolve_in(Path::new("sub"), "..").is_err());
        assert!(resolve_in(Path::new("/tmp"), "x").is_err());
    }
}
