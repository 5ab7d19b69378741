//! The project root held open while a build checks its files.
//!
//! A cached build is mostly stats: every input and output of every step,
//! thousands of them. A stat of `/home/me/src/project/src/a.c` walks every
//! component of the absolute path in the kernel; `fstatat` relative to an
//! open descriptor of the root walks only `src/a.c` (a 1000-step no-op
//! spent a tenth of its time in path lookups). The fingerprint checks
//! (`fingerprint::check`) stat through a [`RootDir`] the executor opens
//! once per build.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// What a build needs of a file's metadata (after following symlinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    pub is_file: bool,
    pub size: u64,
    /// Nanoseconds since the Unix epoch; 0 when before it.
    pub mtime_ns: i128,
}

impl From<&std::fs::Metadata> for FileMeta {
    fn from(meta: &std::fs::Metadata) -> Self {
        FileMeta {
            is_file: meta.is_file(),
            size: meta.len(),
            mtime_ns: crate::fsutil::mtime_ns(meta),
        }
    }
}

/// A directory that relative paths are looked up in; absolute paths are
/// looked up as they are.
#[derive(Debug)]
pub struct RootDir {
    path: PathBuf,
    /// None when the directory could not be opened: stats then go by the
    /// joined path and report what is wrong with it.
    fd: Option<OwnedFd>,
}

impl RootDir {
    /// Opens `path` (`O_PATH`: no read permission needed, nothing locked).
    pub fn open(path: &Path) -> RootDir {
        use std::os::unix::fs::OpenOptionsExt;
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(path)
            .ok()
            .map(OwnedFd::from);
        RootDir {
            path: path.to_path_buf(),
            fd,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metadata of `rel` (root-relative or absolute), following symlinks.
    pub fn stat(&self, rel: &str) -> io::Result<FileMeta> {
        let Some(fd) = &self.fd else {
            return std::fs::metadata(self.path.join(rel)).map(|m| FileMeta::from(&m));
        };
        // The path as a C string, on the stack when it fits (thousands of
        // stats a build: no allocation each).
        let mut buffer = [0u8; 256];
        let owned;
        let name: &CStr = if rel.len() < buffer.len() {
            buffer[..rel.len()].copy_from_slice(rel.as_bytes());
            CStr::from_bytes_with_nul(&buffer[..=rel.len()])
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?
        } else {
            owned = CString::new(rel).map_err(|_| io::ErrorKind::InvalidInput)?;
            &owned
        };
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `name` is NUL-terminated and `st` is written by the call
        // before it is read (only on success).
        let rc = unsafe { libc::fstatat(fd.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), 0) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstatat succeeded, so it filled `st`.
        let st = unsafe { st.assume_init() };
        let mtime_ns = i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec);
        Ok(FileMeta {
            is_file: st.st_mode & libc::S_IFMT == libc::S_IFREG,
            size: st.st_size as u64,
            mtime_ns: mtime_ns.max(0),
        })
    }

    /// Whether `rel` names something (following symlinks), as
    /// [`Path::exists`] answers.
    pub fn exists(&self, rel: &str) -> bool {
        self.stat(rel).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_relative_and_absolute_paths_as_std_does() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a.txt"), b"hello").unwrap();
        std::os::unix::fs::symlink("sub/a.txt", dir.path().join("link")).unwrap();
        let root = RootDir::open(dir.path());
        let std_meta = std::fs::metadata(dir.path().join("sub/a.txt")).unwrap();
        let meta = root.stat("sub/a.txt").unwrap();
        assert_eq!(meta, FileMeta::from(&std_meta));
        assert!(meta.is_file && meta.size == 5);
        assert_eq!(root.stat("link").unwrap(), meta, "symlinks are followed");
        let absolute = dir.path().join("sub/a.txt");
        assert_eq!(root.stat(absolute.to_str().unwrap()).unwrap(), meta);
        assert!(!root.stat("sub").unwrap().is_file);
        assert_eq!(
            root.stat("missing").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(root.exists("sub") && !root.exists("missing"));
    }

    #[test]
    fn long_paths_and_nul_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let long = "d".repeat(200);
        std::fs::create_dir_all(dir.path().join(&long).join(&long)).unwrap();
        let file = format!("{long}/{long}/f");
        std::fs::write(dir.path().join(&file), b"x").unwrap();
        let root = RootDir::open(dir.path());
        assert_eq!(root.stat(&file).unwrap().size, 1);
        for bad in ["a\0b", &format!("{file}\0")] {
            assert_eq!(
                root.stat(bad).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
        }
    }

    #[test]
    fn a_root_that_cannot_be_opened_reports_through_the_joined_path() {
        let root = RootDir::open(Path::new("/nonexistent/piper-root"));
        assert_eq!(root.stat("a").unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
