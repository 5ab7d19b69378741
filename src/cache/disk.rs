//! The local disk cache: one directory shared by every checkout (and every
//! process) on a machine. `ac/<2>/<key>` holds an action's entry (JSON:
//! its outputs and its log, by digest), `cas/<2>/<sha256>` the blobs, as
//! Bazel's disk cache lays them out.
//!
//! Several processes may use it at once: every file is written to a
//! temporary name and renamed into place (a reader sees a whole file or
//! none), blobs are immutable (the same name is the same bytes), and a hit
//! touches the entry, so eviction — least recently used first, when the
//! cache grows past its size, under an advisory lock — removes what no
//! build asked for longest. An entry whose blob is gone is a miss.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::key::ActionKey;

/// The default size of a cache: 5 GiB.
const DEFAULT_MAX_BYTES: u64 = 5 << 30;

/// A disk cache of step results, at a directory.
#[derive(Debug, Clone)]
pub struct DiskCache {
    dir: PathBuf,
    max_bytes: u64,
}

/// What a step made, as the cache keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Entry {
    version: u32,
    /// Its output files, relative to the project root.
    outputs: Vec<OutputFile>,
    /// What it printed (stdout and stderr, as the log shows them).
    log: Option<Blob>,
    /// Its outputs that are symbolic links (`symlink.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    symlinks: Vec<OutputSymlink>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OutputSymlink {
    /// Relative to the project root.
    pub(crate) path: String,
    /// As the link says it (relative to where the link is).
    pub(crate) target: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OutputFile {
    path: String,
    blob: Blob,
    executable: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Blob {
    sha256: String,
    size: u64,
}

/// A fetch: what was written, and the log to replay.
pub(crate) struct Fetched {
    /// Where from, for people: `cache DIR`, or the remote's URL.
    pub(crate) from: String,
    pub(crate) files: usize,
    pub(crate) bytes: u64,
    pub(crate) log: Vec<u8>,
    pub(crate) took: Duration,
}

// 2: symbolic links kept as links (a version 1 reader would drop them).
const ENTRY_VERSION: u32 = 2;

/// One output of an entry, as a remote cache's result names it.
#[cfg(feature = "remote-cache")]
pub(crate) struct EntryFile<'a> {
    /// Relative to the project root.
    pub(crate) path: &'a str,
    pub(crate) sha256: &'a str,
    pub(crate) size: u64,
    pub(crate) executable: bool,
}

#[cfg(feature = "remote-cache")]
impl Entry {
    /// An entry of `files` (`(root-relative path, sha256, size,
    /// executable)`), `symlinks` and the log blob `(sha256, size)`.
    pub(crate) fn of(
        files: Vec<(String, String, u64, bool)>,
        symlinks: Vec<OutputSymlink>,
        log: Option<(String, u64)>,
    ) -> Entry {
        let outputs = (files.into_iter())
            .map(|(path, sha256, size, executable)| OutputFile {
                path,
                blob: Blob { sha256, size },
                executable,
            })
            .collect();
        Entry {
            version: ENTRY_VERSION,
            outputs,
            log: log.map(|(sha256, size)| Blob { sha256, size }),
            symlinks,
        }
    }

    /// Its outputs that are symbolic links.
    pub(crate) fn symlinks(&self) -> &[OutputSymlink] {
        &self.symlinks
    }

    /// Its output files.
    pub(crate) fn files(&self) -> impl Iterator<Item = EntryFile<'_>> {
        self.outputs.iter().map(|o| EntryFile {
            path: &o.path,
            sha256: &o.blob.sha256,
            size: o.blob.size,
            executable: o.executable,
        })
    }

    /// Its log blob: `(sha256, size)`.
    pub(crate) fn log(&self) -> Option<(&str, u64)> {
        self.log.as_ref().map(|b| (b.sha256.as_str(), b.size))
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The blobs it names: `(sha256, size)`.
    pub(crate) fn blobs(&self) -> impl Iterator<Item = (&str, u64)> {
        (self.outputs.iter().map(|o| &o.blob))
            .chain(self.log.as_ref())
            .map(|b| (b.sha256.as_str(), b.size))
    }

    pub(crate) fn parse(bytes: &[u8]) -> Result<Entry, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("a damaged entry: {e}"))
    }
}

impl DiskCache {
    /// A cache at `dir` (created when first written), of at most 5 GiB.
    pub fn new(dir: impl Into<PathBuf>) -> DiskCache {
        DiskCache {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    /// At most `bytes` on disk: the least recently used entries and blobs
    /// go first once it is exceeded.
    pub fn with_max_bytes(mut self, bytes: u64) -> DiskCache {
        self.max_bytes = bytes;
        self
    }

    /// Where it is.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ac(&self, key: &ActionKey) -> PathBuf {
        self.dir.join("ac").join(&key.hash[..2]).join(&key.hash)
    }

    fn cas(&self, sha256: &str) -> PathBuf {
        self.dir
            .join("cas")
            .join(&sha256[..2.min(sha256.len())])
            .join(sha256)
    }

    /// Whether it holds an entry for `key` (not read: `piper explain`).
    pub(crate) fn has(&self, key: &ActionKey) -> bool {
        self.ac(key).is_file()
    }

    /// The entry of `key`, if there is a whole one (a damaged one is a
    /// miss, and says why).
    pub(crate) fn get(&self, key: &ActionKey) -> Result<Option<Entry>, String> {
        let path = self.ac(key);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let entry: Entry = serde_json::from_slice(&text)
            .map_err(|e| format!("{} is damaged: {e}", path.display()))?;
        if entry.version != ENTRY_VERSION {
            return Ok(None);
        }
        // Used now: the last to be evicted.
        touch(&path);
        Ok(Some(entry))
    }

    /// Writes `entry`'s outputs under `root` and reads its log. Every
    /// blob is checked against its digest before its file is renamed into
    /// place; a missing or damaged blob fails the fetch (a miss), and what
    /// was not yet renamed is removed.
    pub(crate) fn fetch(&self, entry: &Entry, root: &Path) -> Result<Fetched, String> {
        let started = Instant::now();
        let mut bytes = 0;
        for output in &entry.outputs {
            let target = root.join(&output.path);
            if !target.starts_with(root) || output.path.split('/').any(|p| p == "..") {
                return Err(format!("output {} is outside the project", output.path));
            }
            self.copy_out(&output.blob, &target, output.executable)?;
            bytes += output.blob.size;
        }
        for link in &entry.symlinks {
            if !super::symlink::stays_inside(&link.path, &link.target)
                || link.path.split('/').any(|p| p == "..")
            {
                return Err(format!(
                    "output {} links to {}, outside the project",
                    link.path, link.target
                ));
            }
            super::symlink::place(&root.join(&link.path), &link.target)?;
        }
        let log = match &entry.log {
            Some(blob) => self.read_blob(blob)?,
            None => Vec::new(),
        };
        Ok(Fetched {
            from: format!("cache {}", self.dir.display()),
            files: entry.outputs.len() + entry.symlinks.len(),
            bytes,
            log,
            took: started.elapsed(),
        })
    }

    fn copy_out(&self, blob: &Blob, target: &Path, executable: bool) -> Result<(), String> {
        let source = self.cas(&blob.sha256);
        let parent = target.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        let mut reader = std::fs::File::open(&source)
            .map_err(|e| format!("blob {} is missing: {e}", blob.sha256))?;
        let mut temp = tempfile::NamedTempFile::new_in(parent)
            .map_err(|e| format!("cannot write in {}: {e}", parent.display()))?;
        let (digest, size) = copy_hashing(&mut reader, temp.as_file_mut())
            .map_err(|e| format!("cannot copy blob {}: {e}", blob.sha256))?;
        if digest != blob.sha256 || size != blob.size {
            return Err(format!(
                "blob {} does not match its digest (it holds {digest}, {size} bytes)",
                blob.sha256
            ));
        }
        set_executable(temp.as_file(), executable)
            .map_err(|e| format!("cannot set the mode of {}: {e}", target.display()))?;
        temp.persist(target)
            .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
        // Used now, as its entry: eviction keeps them together.
        touch(&source);
        Ok(())
    }

    /// How the outputs under `root` differ from `entry`'s: each a path and
    /// what differs ("out/a differs", "out/b is missing").
    pub(crate) fn differences(&self, entry: &Entry, root: &Path) -> Vec<String> {
        let mut differences = Vec::new();
        for output in &entry.outputs {
            let path = root.join(&output.path);
            let made = std::fs::File::open(&path)
                .and_then(|mut f| copy_hashing(&mut f, &mut std::io::sink()));
            match made {
                Err(_) => differences.push(format!("{} is missing", output.path)),
                Ok((sha256, _)) if sha256 != output.blob.sha256 => {
                    differences.push(format!("{} differs", output.path))
                }
                Ok(_) => {}
            }
        }
        for link in &entry.symlinks {
            match super::symlink::target_of(&root.join(&link.path)) {
                Some(target) if target == link.target => {}
                Some(_) => differences.push(format!("{} differs", link.path)),
                None => differences.push(format!("{} is missing", link.path)),
            }
        }
        differences
    }

    fn read_blob(&self, blob: &Blob) -> Result<Vec<u8>, String> {
        let data = std::fs::read(self.cas(&blob.sha256))
            .map_err(|e| format!("blob {} is missing: {e}", blob.sha256))?;
        if sha256_hex(&data) != blob.sha256 {
            return Err(format!("blob {} does not match its digest", blob.sha256));
        }
        Ok(data)
    }

    /// Stores what a step made: its output files (relative to `root`) and
    /// its log, then the entry that names them. Files are streamed, never
    /// read whole.
    pub(crate) fn put(
        &self,
        key: &ActionKey,
        root: &Path,
        outputs: &[PathBuf],
        log: &[u8],
    ) -> Result<(), String> {
        let mut files = Vec::with_capacity(outputs.len());
        let mut symlinks = Vec::new();
        for file in outputs {
            let path = file.strip_prefix(root).unwrap_or(file);
            if let Some(target) = super::symlink::target_of(file) {
                let path = path.to_string_lossy().into_owned();
                symlinks.push(OutputSymlink { path, target });
                continue;
            }
            let blob = self.put_file(file)?;
            files.push(OutputFile {
                path: path.to_string_lossy().into_owned(),
                blob,
                executable: is_executable(file),
            });
        }
        let log = (!log.is_empty()).then(|| self.put_bytes(log)).transpose()?;
        let entry = Entry {
            version: ENTRY_VERSION,
            outputs: files,
            log,
            symlinks,
        };
        let text = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
        write_atomically(&self.ac(key), &text)?;
        self.evict_if_over();
        Ok(())
    }

    fn put_file(&self, file: &Path) -> Result<Blob, String> {
        let cas = self.dir.join("cas");
        std::fs::create_dir_all(&cas)
            .map_err(|e| format!("cannot create {}: {e}", cas.display()))?;
        let mut reader = std::fs::File::open(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let mut temp = tempfile::NamedTempFile::new_in(&cas)
            .map_err(|e| format!("cannot write in {}: {e}", cas.display()))?;
        let (sha256, size) = copy_hashing(&mut reader, temp.as_file_mut())
            .map_err(|e| format!("cannot store {}: {e}", file.display()))?;
        let target = self.cas(&sha256);
        if !target.exists() {
            let parent = target.parent().unwrap_or(&cas);
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            temp.persist(&target)
                .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
        } else {
            touch(&target);
        }
        Ok(Blob { sha256, size })
    }

    fn put_bytes(&self, data: &[u8]) -> Result<Blob, String> {
        let sha256 = sha256_hex(data);
        let target = self.cas(&sha256);
        if !target.exists() {
            write_atomically(&target, data)?;
        }
        Ok(Blob {
            sha256,
            size: data.len() as u64,
        })
    }

    /// Past its size, removes the least recently used files (entries and
    /// blobs alike) down to 90% of it. One process at a time (an advisory
    /// lock; a process that finds it taken leaves the work to the holder).
    fn evict_if_over(&self) {
        let Ok(lock) = std::fs::File::create(self.dir.join("evict.lock")) else {
            return;
        };
        // SAFETY: flock on a file this function owns; no memory is shared.
        if unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } != 0
        {
            return;
        }
        let mut files = Vec::new();
        for kind in ["ac", "cas"] {
            collect(&self.dir.join(kind), &mut files);
        }
        let mut total: u64 = files.iter().map(|(_, size, _)| size).sum();
        if total <= self.max_bytes {
            return;
        }
        files.sort_by_key(|(_, _, used)| *used);
        let goal = self.max_bytes / 10 * 9;
        for (path, size, _) in files {
            if total <= goal {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= size;
            }
        }
    }
}

/// What a remote cache (`http.rs`) reads and writes here.
#[cfg(feature = "remote-cache")]
impl DiskCache {
    /// An entry as stored (for a remote cache), if there is one.
    pub(crate) fn entry_bytes(&self, key: &ActionKey) -> Option<Vec<u8>> {
        std::fs::read(self.ac(key)).ok()
    }

    /// Stores an entry fetched from elsewhere, once it parses: its blobs
    /// must be here first (`blob_path`).
    pub(crate) fn put_entry_bytes(&self, key: &ActionKey, bytes: &[u8]) -> Result<(), String> {
        let entry: Entry =
            serde_json::from_slice(bytes).map_err(|e| format!("a damaged entry: {e}"))?;
        if entry.version != ENTRY_VERSION {
            return Err(format!("an entry of another version ({})", entry.version));
        }
        write_atomically(&self.ac(key), bytes)
    }

    /// Where the blob `sha256` is (or would be) kept.
    pub(crate) fn blob_path(&self, sha256: &str) -> PathBuf {
        self.cas(sha256)
    }

    /// A temporary file among the blobs, for one being downloaded.
    pub(crate) fn blob_temp(&self) -> Result<tempfile::NamedTempFile, String> {
        let cas = self.dir.join("cas");
        std::fs::create_dir_all(&cas)
            .map_err(|e| format!("cannot create {}: {e}", cas.display()))?;
        tempfile::NamedTempFile::new_in(&cas)
            .map_err(|e| format!("cannot write in {}: {e}", cas.display()))
    }

    /// Keeps a blob received whole (a batch read), once it matches
    /// `sha256`.
    pub(crate) fn keep_blob_bytes(&self, sha256: &str, data: &[u8]) -> Result<(), String> {
        let got = sha256_hex(data);
        if got != sha256 {
            return Err(format!(
                "blob {sha256} does not match its digest (it holds {got}, {} bytes)",
                data.len()
            ));
        }
        self.put_bytes(data).map(|_| ())
    }

    /// Keeps a downloaded blob (already checked against `sha256`).
    pub(crate) fn keep_blob(
        &self,
        temp: tempfile::NamedTempFile,
        sha256: &str,
    ) -> Result<(), String> {
        let target = self.cas(sha256);
        let parent = target.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        temp.persist(&target)
            .map(|_| ())
            .map_err(|e| format!("cannot write {}: {e}", target.display()))
    }
}

/// Every file under `dir`: its path, size and last use (mtime).
fn collect(dir: &Path, out: &mut Vec<(PathBuf, u64, SystemTime)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            collect(&path, out);
        } else {
            let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            out.push((path, meta.len(), used));
        }
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Copies `reader` into `writer`, hashing as it goes: the SHA-256 (hex)
/// and the size.
fn copy_hashing(reader: &mut impl Read, writer: &mut impl Write) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 64 * 1024];
    let mut size = 0;
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        writer.write_all(&buffer[..n])?;
        size += n as u64;
    }
    writer.flush()?;
    Ok((hex::encode(hasher.finalize()), size))
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<(), String> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let mut temp = tempfile::NamedTempFile::new_in(parent)
        .map_err(|e| format!("cannot write in {}: {e}", parent.display()))?;
    temp.write_all(data)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    temp.persist(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

/// Marks a file used now (its mtime: what eviction goes by).
fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

fn set_executable(file: &std::fs::File, executable: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if executable { 0o755 } else { 0o644 };
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> ActionKey {
        ActionKey {
            hash: hex::encode([n; 32]),
            size: 140,
            workdir: String::new(),
        }
    }

    /// Past its size the least recently used entries go, the ones asked for
    /// since stay.
    #[test]
    fn eviction_keeps_what_was_used_last() {
        let dir = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path().join("cache")).with_max_bytes(3000);
        let old = SystemTime::now() - Duration::from_secs(3600);
        for n in 0..4u8 {
            let file = root.path().join(format!("out{n}"));
            std::fs::write(&file, vec![n; 1000]).unwrap();
            cache.put(&key(n), root.path(), &[file], b"").unwrap();
            // Older than anything written after it, as in a long-lived cache.
            for path in [cache.ac(&key(n)), cache.cas(&sha256_hex(&vec![n; 1000]))] {
                let f = std::fs::File::options().append(true).open(&path).unwrap();
                f.set_modified(old + Duration::from_secs(u64::from(n)))
                    .unwrap();
            }
            if n == 1 {
                // Entry 0 is fetched again: used last among the old ones.
                let entry = cache.get(&key(0)).unwrap().unwrap();
                cache
                    .fetch(&entry, tempfile::tempdir().unwrap().path())
                    .unwrap();
            }
        }
        cache.evict_if_over();
        let entry = cache.get(&key(0)).unwrap().expect("used last, kept");
        let elsewhere = tempfile::tempdir().unwrap();
        cache.fetch(&entry, elsewhere.path()).expect("its blob too");
        assert!(
            cache.get(&key(1)).unwrap().is_none(),
            "least recently used, gone"
        );
    }

    /// A blob gone from under an entry fails the fetch, and the output it
    /// would have written is not there (no half-written file).
    #[test]
    fn a_missing_blob_fails_the_fetch_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path());
        let file = root.path().join("out.bin");
        std::fs::write(&file, b"made").unwrap();
        cache
            .put(&key(7), root.path(), std::slice::from_ref(&file), b"log")
            .unwrap();
        std::fs::remove_file(cache.cas(&sha256_hex(b"made"))).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let entry = cache.get(&key(7)).unwrap().unwrap();
        let error = cache.fetch(&entry, elsewhere.path()).err().unwrap();
        assert!(error.contains("is missing"), "{error}");
        assert!(!elsewhere.path().join("out.bin").exists());
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }
}
