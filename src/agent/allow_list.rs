//! Which repositories an agent builds (`--repository`, `repositories` in
//! piperd.toml): glob patterns over repository URLs or local paths, matched
//! against the repository's *normal form*, never the text as submitted.
//!
//! A pattern like `/srv/repos/**` must not admit `/srv/repos/../outside`,
//! nor `https://git.example/acme/**` admit `https://git.example/acme/../x`:
//! the text matches, the repository git would fetch does not. So a
//! repository is first brought to one form — a URL parsed and normalised
//! (scheme and host lower-cased, default port dropped), a local path
//! resolved to its canonical path (symlinks followed) — and what does not
//! normalise cleanly is refused outright: `.` or `..` segments, and
//! percent-encoded dots, slashes or backslashes, which a server may decode
//! into them. The normal form is also what the agent then builds, so a
//! symlink swapped after the check changes nothing.

/// Glob patterns over repository URLs or paths (`*` stays within one
/// `/`-separated part, `**` crosses them).
pub struct RepositoryAllowList {
    pub(crate) patterns: Vec<String>,
    set: globset::GlobSet,
}

/// Why a repository was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It has no single normal form (dot segments, encoded separators, a
    /// relative or missing path): a 400.
    Unclean(String),
    /// Its normal form matches no pattern: a 403.
    NotAllowed(String),
}

impl RepositoryAllowList {
    pub fn new(patterns: &[String]) -> Result<RepositoryAllowList, String> {
        let mut set = globset::GlobSetBuilder::new();
        for pattern in patterns {
            let glob = globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("`{pattern}`: {}", e.kind()))?;
            set.add(glob);
        }
        Ok(RepositoryAllowList {
            patterns: patterns.to_vec(),
            set: set.build().map_err(|e| e.to_string())?,
        })
    }

    /// The repository to build, in its normal form, if a pattern admits it.
    pub fn admit(&self, repo: &str) -> Result<String, Refusal> {
        // A local path off the list as written is refused as such, whether
        // or not it exists (dot segments are refused before this, so the
        // text already names the one place).
        let local = !repo.contains("://") && scp_like(repo).is_none();
        let plain = local && std::path::Path::new(repo).is_absolute();
        let normal = if plain && check_segments(repo, "path").is_ok() && !self.set.is_match(repo) {
            repo.to_string()
        } else {
            normal_form(repo).map_err(Refusal::Unclean)?
        };
        if self.set.is_match(&normal) {
            Ok(normal)
        } else {
            let shown = if normal == repo {
                format!("repository `{repo}`")
            } else {
                format!("repository `{repo}` (that is, `{normal}`)")
            };
            Err(Refusal::NotAllowed(format!(
                "{shown} is not on this agent's allow-list (`repositories` in piperd.toml: {})",
                self.patterns.join(", ")
            )))
        }
    }
}

/// A repository sent over the API as a git bundle: `bundle:DIGEST`.
pub const BUNDLE_PREFIX: &str = "bundle:";

/// The digest of a `bundle:DIGEST` repository (64 hex digits).
pub fn bundle_digest(repo: &str) -> Option<&str> {
    repo.strip_prefix(BUNDLE_PREFIX)
        .filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The transports the agent's git may use for a submitted repository:
/// `http(s)://`, `ssh://`, `git://`, scp-like `host:path`, and `file://` or
/// a local path only where `local` allows. Never a remote helper
/// (`fd::17`, `ext::cmd`): git's default lets some through, and one hung a
/// worker until the git timeout.
pub fn check_transport(repo: &str, local: bool) -> Result<(), Refusal> {
    if repo.chars().any(char::is_control) {
        return Err(Refusal::Unclean(
            "`repo` holds a control character".to_string(),
        ));
    }
    if let Some((helper, _)) = repo.split_once("::")
        && !helper.contains('/')
    {
        return Err(Refusal::Unclean(format!(
            "`{helper}::` is a git remote helper, which this agent does not use: give an http(s), ssh or git URL"
        )));
    }
    let local_refused = || {
        Refusal::NotAllowed(
            "this agent listens beyond loopback without an allow-list, so it builds no local paths: give a URL, or set `repositories` (docs/daemon.md)".to_string(),
        )
    };
    if repo.starts_with(BUNDLE_PREFIX) {
        return match bundle_digest(repo) {
            Some(_) => Ok(()),
            None => Err(Refusal::Unclean(format!(
                "`{repo}` is not a bundle this agent gave out: `bundle:` and 64 hex digits"
            ))),
        };
    }
    match repo.split_once("://") {
        Some((scheme, _)) => match scheme.to_ascii_lowercase().as_str() {
            "http" | "https" | "ssh" | "git" => Ok(()),
            "file" if local => Ok(()),
            "file" => Err(local_refused()),
            other => Err(Refusal::Unclean(format!(
                "`{other}://` is not a transport this agent uses: http, https, ssh or git"
            ))),
        },
        None if scp_like(repo).is_some() => Ok(()),
        None if local => Ok(()),
        None => Err(local_refused()),
    }
}

/// `repo` in its one normal form: a URL normalised, an scp-like address
/// (`git@host:org/app.git`) as it is, a local path canonical.
pub fn normal_form(repo: &str) -> Result<String, String> {
    if repo.contains("://") {
        let (_, rest) = repo.split_once("://").unwrap_or_default();
        let path = rest.find('/').map_or("", |at| &rest[at..]);
        check_segments(path, "URL")?;
        let url =
            url::Url::parse(repo).map_err(|e| format!("`{repo}` is not a URL git can use: {e}"))?;
        return Ok(url.to_string());
    }
    if let Some((host, path)) = scp_like(repo) {
        check_segments(path, "address")?;
        return Ok(format!("{host}:{path}"));
    }
    let path = std::path::Path::new(repo);
    if !path.is_absolute() {
        return Err(format!(
            "`{repo}` is not an absolute path: give a local repository by its absolute path"
        ));
    }
    check_segments(repo, "path")?;
    let canonical = path
        .canonicalize()
        .map_err(|e| format!("`{repo}` cannot be resolved: {e}"))?;
    canonical
        .to_str()
        .map(String::from)
        .ok_or_else(|| format!("`{repo}` resolves to a path that is not UTF-8"))
}

/// `host:path` of git's scp-like syntax (`[user@]host:path`, the host
/// without a slash before the colon), as git tells it from a local path.
fn scp_like(repo: &str) -> Option<(&str, &str)> {
    let (host, path) = repo.split_once(':')?;
    (!host.is_empty() && !host.contains('/')).then_some((host, path))
}

/// Refuses `.`/`..` segments and percent-encoded dots and separators (a
/// server may decode `%2e%2e` into `..`), and backslashes (which some
/// read as separators).
fn check_segments(path: &str, what: &str) -> Result<(), String> {
    let lower = path.to_ascii_lowercase();
    if let Some(encoded) = ["%2e", "%2f", "%5c"].iter().find(|e| lower.contains(*e)) {
        return Err(format!(
            "the {what} `{path}` holds `{encoded}`, an encoded dot or separator: write it plainly"
        ));
    }
    if path.contains('\\') {
        return Err(format!("the {what} `{path}` holds a backslash"));
    }
    if let Some(dots) = path.split('/').find(|s| *s == "." || *s == "..") {
        return Err(format!(
            "the {what} `{path}` holds a `{dots}` segment: give the repository without `.` or `..`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(patterns: &[&str]) -> RepositoryAllowList {
        RepositoryAllowList::new(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>())
            .unwrap()
    }

    #[test]
    fn dot_segments_and_encoded_separators_are_refused() {
        let urls = list(&["http://git.example/acme/**"]);
        for repo in [
            "http://git.example/acme/../evilorg/evil",
            "http://git.example/acme/./app",
            "http://git.example/acme/%2e%2e/evil",
            "http://git.example/acme/%2E%2e/evil",
            "http://git.example/acme%2f..%2fevil",
            "http://git.example/acme/x\\..\\y",
        ] {
            assert!(
                matches!(urls.admit(repo), Err(Refusal::Unclean(_))),
                "{repo}: {:?}",
                urls.admit(repo)
            );
        }
        let scp = list(&["git@git.example:acme/**"]);
        assert!(matches!(
            scp.admit("git@git.example:acme/../evil"),
            Err(Refusal::Unclean(_))
        ));
        assert_eq!(
            scp.admit("git@git.example:acme/app.git").unwrap(),
            "git@git.example:acme/app.git"
        );
    }

    #[test]
    fn only_plain_transports_are_used() {
        for repo in ["fd::17", "ext::sh -c touch% /tmp/x", "gopher://x/y", "a\nb"] {
            let repo = repo.replace("\\n", "\n");
            assert!(
                matches!(check_transport(&repo, true), Err(Refusal::Unclean(_))),
                "{repo}"
            );
        }
        for repo in [
            "https://h/a.git",
            "ssh://git@h/a",
            "git://h/a",
            "git@h:a.git",
            "/srv/a",
        ] {
            assert_eq!(check_transport(repo, true), Ok(()), "{repo}");
        }
        assert!(matches!(
            check_transport("/srv/a", false),
            Err(Refusal::NotAllowed(_))
        ));
        assert!(matches!(
            check_transport("file:///srv/a", false),
            Err(Refusal::NotAllowed(_))
        ));
        assert_eq!(check_transport("https://h/a.git", false), Ok(()));
    }

    #[test]
    fn urls_match_in_their_normal_form() {
        let urls = list(&["http://git.example/acme/**"]);
        assert_eq!(
            urls.admit("HTTP://Git.Example:80/acme/app").unwrap(),
            "http://git.example/acme/app"
        );
        assert!(matches!(
            urls.admit("http://git.example/evil/app"),
            Err(Refusal::NotAllowed(_))
        ));
    }

    #[test]
    fn local_paths_match_as_resolved() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path().canonicalize().unwrap();
        let allowed = root.join("repos");
        std::fs::create_dir_all(allowed.join("app")).unwrap();
        std::fs::create_dir_all(root.join("outside")).unwrap();
        // A symlink inside the allowed tree that leads out of it.
        std::os::unix::fs::symlink(root.join("outside"), allowed.join("link")).unwrap();
        let paths = list(&[&format!("{}/**", allowed.display())]);
        let app = allowed.join("app");
        assert_eq!(
            paths.admit(app.to_str().unwrap()).unwrap(),
            app.to_str().unwrap()
        );
        for repo in [
            format!("{}/../outside", allowed.display()),
            format!("{}/app/../../outside", allowed.display()),
        ] {
            assert!(
                matches!(paths.admit(&repo), Err(Refusal::Unclean(_))),
                "{repo}"
            );
        }
        let link = allowed.join("link");
        assert!(
            matches!(
                paths.admit(link.to_str().unwrap()),
                Err(Refusal::NotAllowed(_))
            ),
            "a symlink out of the tree"
        );
        assert!(matches!(paths.admit("repos/app"), Err(Refusal::Unclean(_))));
        assert!(matches!(
            paths.admit(allowed.join("missing").to_str().unwrap()),
            Err(Refusal::Unclean(_))
        ));
    }
}
