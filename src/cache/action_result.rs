//! A REAPI `ActionResult` and the disk cache's `Entry`, both ways (used
//! by `grpc.rs`): what Piper uploads is output files, output symlinks and
//! the log as stdout, paths relative to the step's working directory;
//! what it reads may also hold output directories, each a `Tree` blob of
//! `Directory` messages (a remote executor's or another client's result),
//! which become the files and links under that directory.

use std::collections::HashMap;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message as _;
use sha2::{Digest as _, Sha256};

use super::disk::{DiskCache, Entry, OutputSymlink};
use super::key::{ActionKey, from_workdir, to_root};

/// An output file: root-relative path, sha256, size, executable.
pub(super) type File = (String, String, u64, bool);

/// A result as read, before its blobs are here.
#[derive(Default)]
pub(super) struct Reading {
    pub(super) files: Vec<File>,
    pub(super) symlinks: Vec<OutputSymlink>,
    /// Output directories: root-relative path, and their `Tree`'s digest.
    pub(super) trees: Vec<(String, re::Digest)>,
}

/// The ActionResult Piper uploads for `entry`.
pub(super) fn of_entry(entry: &Entry, key: &ActionKey) -> re::ActionResult {
    re::ActionResult {
        output_files: (entry.files())
            .map(|file| re::OutputFile {
                path: from_workdir(&key.workdir, file.path),
                digest: Some(digest(file.sha256, file.size)),
                is_executable: file.executable,
                ..Default::default()
            })
            .collect(),
        output_symlinks: (entry.symlinks().iter())
            .map(|link| re::OutputSymlink {
                path: from_workdir(&key.workdir, &link.path),
                target: link.target.clone(),
                node_properties: None,
            })
            .collect(),
        stdout_digest: entry.log().map(|(hash, size)| digest(hash, size)),
        exit_code: 0,
        ..Default::default()
    }
}

/// What `result` holds for the step of `key`; None for a failed action
/// (not one to replay). Inline file contents are kept in `disk` at once.
pub(super) fn read(
    result: &re::ActionResult,
    key: &ActionKey,
    disk: &DiskCache,
) -> Result<Option<Reading>, String> {
    if result.exit_code != 0 {
        return Ok(None);
    }
    let place = |path: &str| {
        to_root(&key.workdir, path).ok_or_else(|| format!("output {path} is outside the project"))
    };
    let mut reading = Reading::default();
    for file in &result.output_files {
        let blob = file.digest.clone().unwrap_or_default();
        if !file.contents.is_empty() {
            disk.keep_blob_bytes(&blob.hash, &file.contents)?;
        }
        let size = blob.size_bytes.max(0) as u64;
        reading
            .files
            .push((place(&file.path)?, blob.hash, size, file.is_executable));
    }
    // The deprecated lists too: older servers and clients still fill them.
    #[allow(deprecated)]
    let links = (result.output_symlinks.iter())
        .chain(&result.output_file_symlinks)
        .chain(&result.output_directory_symlinks);
    for link in links {
        reading.symlinks.push(OutputSymlink {
            path: place(&link.path)?,
            target: link.target.clone(),
        });
    }
    for dir in &result.output_directories {
        let tree = dir.tree_digest.clone().unwrap_or_default();
        reading.trees.push((place(&dir.path)?, tree));
    }
    Ok(Some(reading))
}

/// The blobs of `files` that `disk` lacks.
pub(super) fn missing(files: &[File], disk: &DiskCache) -> Vec<re::Digest> {
    let mut wanted: Vec<re::Digest> = Vec::new();
    for (_, hash, size, _) in files {
        let blob = digest(hash, *size);
        if *size > 0 && !disk.blob_path(hash).exists() && !wanted.contains(&blob) {
            wanted.push(blob);
        }
    }
    wanted
}

/// The files and links of the output directory at root-relative `dir`,
/// from its `Tree` blob (already in `disk`, checked against its digest).
pub(super) fn expand_tree(
    disk: &DiskCache,
    dir: &str,
    tree: &re::Digest,
    reading: &mut Reading,
) -> Result<(), String> {
    let path = disk.blob_path(&tree.hash);
    let bytes = std::fs::read(&path).map_err(|e| format!("tree {}: {e}", tree.hash))?;
    let tree = re::Tree::decode(bytes.as_slice())
        .map_err(|e| format!("tree {} is not a Tree: {e}", tree.hash))?;
    let children: HashMap<String, &re::Directory> = (tree.children.iter())
        .map(|child| (hex::encode(Sha256::digest(child.encode_to_vec())), child))
        .collect();
    let root = tree.root.as_ref().ok_or("a tree without a root")?;
    walk(root, dir, &children, reading, 0)
}

fn walk(
    directory: &re::Directory,
    at: &str,
    children: &HashMap<String, &re::Directory>,
    reading: &mut Reading,
    depth: usize,
) -> Result<(), String> {
    // A tree is acyclic by construction (digests); a deep one is damaged.
    if depth > 256 {
        return Err(format!("tree under {at} is too deep"));
    }
    let join = |name: &str| -> Result<String, String> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(format!("tree under {at} names {name:?}"));
        }
        Ok(format!("{at}/{name}"))
    };
    for file in &directory.files {
        let blob = file.digest.clone().unwrap_or_default();
        let size = blob.size_bytes.max(0) as u64;
        reading
            .files
            .push((join(&file.name)?, blob.hash, size, file.is_executable));
    }
    for link in &directory.symlinks {
        reading.symlinks.push(OutputSymlink {
            path: join(&link.name)?,
            target: link.target.clone(),
        });
    }
    for sub in &directory.directories {
        let hash = sub.digest.as_ref().map(|d| d.hash.as_str()).unwrap_or("");
        let child = children
            .get(hash)
            .ok_or_else(|| format!("tree under {at} lacks directory {}", sub.name))?;
        walk(child, &join(&sub.name)?, children, reading, depth + 1)?;
    }
    Ok(())
}

/// The result's log (stdout, then stderr; their blobs already in `disk`)
/// kept as one blob.
pub(super) fn log(
    result: &re::ActionResult,
    disk: &DiskCache,
) -> Result<Option<(String, u64)>, String> {
    let log = log_bytes(result, disk)?;
    if log.is_empty() {
        return Ok(None);
    }
    let sha256 = hex::encode(Sha256::digest(&log));
    disk.keep_blob_bytes(&sha256, &log)?;
    Ok(Some((sha256, log.len() as u64)))
}

/// The result's stdout, then its stderr (their blobs already in `disk`).
pub(super) fn log_bytes(result: &re::ActionResult, disk: &DiskCache) -> Result<Vec<u8>, String> {
    let mut log = Vec::new();
    for (raw, blob) in [
        (&result.stdout_raw, &result.stdout_digest),
        (&result.stderr_raw, &result.stderr_digest),
    ] {
        match blob {
            Some(blob) if blob.size_bytes > 0 && raw.is_empty() => {
                let path = disk.blob_path(&blob.hash);
                let data = std::fs::read(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                log.extend_from_slice(&data);
            }
            _ => log.extend_from_slice(raw),
        }
    }
    Ok(log)
}

/// The log blobs of `result` not sent inline.
pub(super) fn log_blobs(result: &re::ActionResult) -> impl Iterator<Item = &re::Digest> {
    [
        (&result.stdout_raw, &result.stdout_digest),
        (&result.stderr_raw, &result.stderr_digest),
    ]
    .into_iter()
    .filter_map(|(raw, blob)| blob.as_ref().filter(|b| raw.is_empty() && b.size_bytes > 0))
}

pub(super) fn digest(hash: &str, size: u64) -> re::Digest {
    re::Digest {
        hash: hash.to_string(),
        size_bytes: size as i64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, data: &[u8]) -> re::FileNode {
        re::FileNode {
            name: name.into(),
            digest: Some(digest(
                &hex::encode(Sha256::digest(data)),
                data.len() as u64,
            )),
            is_executable: false,
            node_properties: None,
        }
    }

    #[test]
    fn a_tree_becomes_the_files_and_links_under_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskCache::new(dir.path());
        let child = re::Directory {
            files: vec![file("b.txt", b"b")],
            ..Default::default()
        };
        let child_hash = hex::encode(Sha256::digest(child.encode_to_vec()));
        let root = re::Directory {
            files: vec![file("a.txt", b"a")],
            directories: vec![re::DirectoryNode {
                name: "sub".into(),
                digest: Some(digest(&child_hash, 0)),
            }],
            symlinks: vec![re::SymlinkNode {
                name: "link".into(),
                target: "a.txt".into(),
                node_properties: None,
            }],
            ..Default::default()
        };
        let tree = re::Tree {
            root: Some(root),
            children: vec![child],
        };
        let bytes = tree.encode_to_vec();
        let hash = hex::encode(Sha256::digest(&bytes));
        disk.keep_blob_bytes(&hash, &bytes).unwrap();
        let mut reading = Reading::default();
        expand_tree(
            &disk,
            "out",
            &digest(&hash, bytes.len() as u64),
            &mut reading,
        )
        .unwrap();
        let paths: Vec<&str> = reading.files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(paths, ["out/a.txt", "out/sub/b.txt"]);
        assert_eq!(reading.symlinks[0].path, "out/link");
    }

    #[test]
    fn a_tree_naming_a_way_out_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskCache::new(dir.path());
        let tree = re::Tree {
            root: Some(re::Directory {
                files: vec![file("..", b"x")],
                ..Default::default()
            }),
            children: Vec::new(),
        };
        let bytes = tree.encode_to_vec();
        let hash = hex::encode(Sha256::digest(&bytes));
        disk.keep_blob_bytes(&hash, &bytes).unwrap();
        let mut reading = Reading::default();
        let e = expand_tree(&disk, "out", &digest(&hash, 0), &mut reading).unwrap_err();
        assert!(e.contains("names"), "{e}");
    }
}
