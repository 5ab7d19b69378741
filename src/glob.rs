//! Globs over a project's files: what `piper.fs.glob`, a step's `inputs`
//! and `outputs`, and the configuration cache all expand. One walker for
//! all of them, so a pattern means the same files everywhere; it honours
//! `.gitignore` (nested ones too) unless asked not to.

use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// Files under `root` matching any pattern, as sorted root-relative paths.
pub fn glob(
    root: &Path,
    patterns: &[String],
    hidden: bool,
    gitignore: bool,
) -> Result<Vec<String>, String> {
    let mut set = GlobSetBuilder::new();
    let mut bases: Vec<PathBuf> = Vec::new();
    for pattern in patterns {
        let glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("invalid pattern `{pattern}`: {}", e.kind()))?;
        set.add(glob);
        bases.push(literal_prefix(pattern));
    }
    let set = set.build().map_err(|e| e.to_string())?;
    // Walk only the directories the patterns can match in, once each.
    bases.sort();
    bases.dedup_by(|b, a| b.starts_with(&*a));
    let mut files = Vec::new();
    for base in bases {
        let dir = root.join(&base);
        if !dir.exists() {
            continue;
        }
        let walker = ignore::WalkBuilder::new(&dir)
            .hidden(!hidden)
            .git_ignore(gitignore)
            .git_exclude(gitignore)
            .ignore(gitignore)
            .parents(gitignore)
            .require_git(false)
            .build();
        for entry in walker {
            let entry = entry.map_err(|e| e.to_string())?;
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            let Ok(rel) = entry.path().strip_prefix(root) else {
                continue;
            };
            if set.is_match(rel) {
                files.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// The leading directories of a pattern that contain no glob syntax.
fn literal_prefix(pattern: &str) -> PathBuf {
    let mut prefix = PathBuf::new();
    let parts: Vec<&str> = pattern.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        if crate::paths::is_glob(part) {
            break;
        }
        prefix.push(part);
    }
    prefix
}

/// A set of glob patterns (`*` does not cross `/`); a pattern that does
/// not parse matches nothing.
pub(crate) fn glob_set<'a>(patterns: impl IntoIterator<Item = &'a str>) -> GlobSet {
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        if let Ok(glob) = GlobBuilder::new(p).literal_separator(true).build() {
            set.add(glob);
        }
    }
    set.build().unwrap_or_else(|_| GlobSet::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_honour_gitignore_and_separators() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for f in [
            "src/a.c",
            "src/sub/b.c",
            "src/gen/c.c",
            "top.c",
            "src/.hidden.c",
        ] {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        std::fs::write(root.join(".gitignore"), "gen/\n").unwrap();
        let all = glob(root, &["src/**/*.c".into()], false, true).unwrap();
        assert_eq!(all, ["src/a.c", "src/sub/b.c"]);
        let shallow = glob(root, &["src/*.c".into()], false, true).unwrap();
        assert_eq!(shallow, ["src/a.c"]);
        let everything = glob(root, &["**/*.c".into()], true, false).unwrap();
        assert_eq!(everything.len(), 5);
        assert!(
            glob(root, &["src/[".into()], false, true)
                .unwrap_err()
                .contains("src/[")
        );
    }
}
