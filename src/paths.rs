//! Project-relative paths: the one resolver every path field goes through
//! (step `outputs` relative to the step's `dir`, `inputs` and globs relative
//! to the root), so a file named in `piper.lua` means the same file to the
//! up-to-date check, `piper clean --outputs` and `piper watch`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// Whether a path field is a glob pattern rather than a literal path.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', '{'])
}

/// Lexically removes `.` and `a/..` so `src/../include/x.h` matches
/// `include/x.h`. A leading `..` stays: the path leaves its base.
pub fn normalize(path: &Path) -> String {
    // Most paths are normal already (the graph stores them so): no split.
    if let Some(text) = path.to_str()
        && !text.is_empty()
        && !(text.split('/')).any(|c| c.is_empty() || c == "." || c == "..")
    {
        return text.to_string();
    }
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

/// The ignore rules `piper.fs.glob` walks with (`.gitignore` and `.ignore`
/// in every directory, `.git/info/exclude`), for one path at a time: what
/// `piper watch` asks of each changed file. A deeper file's rules win, and
/// `!pattern` re-includes, as in git.
pub struct IgnoreRules {
    root: PathBuf,
    /// Per directory: its own rules, if it has any files of them.
    dirs: RefCell<HashMap<PathBuf, Option<Gitignore>>>,
    exclude: Gitignore,
}

impl IgnoreRules {
    pub fn new(root: &Path) -> IgnoreRules {
        let mut exclude = GitignoreBuilder::new(root);
        exclude.add(root.join(".git/info/exclude"));
        IgnoreRules {
            root: root.to_path_buf(),
            dirs: RefCell::default(),
            exclude: exclude.build().unwrap_or_else(|_| Gitignore::empty()),
        }
    }

    /// Whether the root-relative `rel` (or a directory above it) is ignored.
    pub fn is_ignored(&self, rel: &Path, is_dir: bool) -> bool {
        let path = self.root.join(rel);
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| d.starts_with(&self.root)) {
            if let Some(rules) = self.rules_of(d) {
                match rules.matched_path_or_any_parents(&path, is_dir) {
                    Match::Ignore(_) => return true,
                    Match::Whitelist(_) => return false,
                    Match::None => {}
                }
            }
            dir = d.parent();
        }
        self.exclude
            .matched_path_or_any_parents(&path, is_dir)
            .is_ignore()
    }

    fn rules_of(&self, dir: &Path) -> Option<Gitignore> {
        self.dirs
            .borrow_mut()
            .entry(dir.to_path_buf())
            .or_insert_with(|| {
                let files: Vec<PathBuf> = [".gitignore", ".ignore"]
                    .iter()
                    .map(|f| dir.join(f))
                    .filter(|f| f.is_file())
                    .collect();
                if files.is_empty() {
                    return None;
                }
                let mut builder = GitignoreBuilder::new(dir);
                for file in files {
                    builder.add(file);
                }
                builder.build().ok()
            })
            .clone()
    }
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

    #[test]
    fn nested_ignore_files_apply_below_them_and_deeper_rules_win() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("web/dist")).unwrap();
        std::fs::write(root.join(".gitignore"), "*.log\n").unwrap();
        std::fs::write(root.join("web/.gitignore"), "dist/\n!keep.log\n").unwrap();
        let rules = IgnoreRules::new(root);
        assert!(rules.is_ignored(Path::new("a.log"), false));
        assert!(rules.is_ignored(Path::new("web/dist/app.js"), false));
        assert!(!rules.is_ignored(Path::new("dist/app.js"), false));
        assert!(!rules.is_ignored(Path::new("web/keep.log"), false));
        assert!(rules.is_ignored(Path::new("web/other.log"), false));
        assert!(!rules.is_ignored(Path::new("web/src/app.js"), false));
    }
}
