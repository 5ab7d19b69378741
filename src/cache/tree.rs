//! An action's input root: the files it reads, as a Merkle tree of REAPI
//! `Directory` messages (each names its files and subdirectories, sorted,
//! by digest), so the root's digest covers every file's path, content and
//! executable bit. Part of `cache/`: `key.rs` builds one per key; remote
//! execution uploads its directories.

use std::collections::BTreeMap;

use super::proto::{self, Digest, Directory, DirectoryNode, FileNode};

/// One input file: its path relative to the input root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InputFile {
    pub(crate) path: String,
    pub(crate) digest: Digest,
    pub(crate) executable: bool,
}

/// The tree: its root's digest, and each directory's digest and encoding.
#[derive(Debug, Clone)]
pub(crate) struct InputTree {
    pub(crate) root: Digest,
    #[cfg_attr(not(feature = "remote-cache"), allow(dead_code))] // uploaded by remote execution
    pub(crate) directories: Vec<(Digest, Vec<u8>)>,
}

#[derive(Default)]
struct Node {
    files: BTreeMap<String, (Digest, bool)>,
    dirs: BTreeMap<String, Node>,
}

impl InputTree {
    /// The tree of `files`. A path given twice keeps its last entry.
    pub(crate) fn build(files: &[InputFile]) -> InputTree {
        let mut root = Node::default();
        for file in files {
            let mut parts: Vec<&str> = file.path.split('/').filter(|p| !p.is_empty()).collect();
            let Some(name) = parts.pop() else { continue };
            let mut node = &mut root;
            for part in parts {
                node = node.dirs.entry(part.to_string()).or_default();
            }
            node.files
                .insert(name.to_string(), (file.digest.clone(), file.executable));
        }
        let mut directories = Vec::new();
        let root = encode(root, &mut directories);
        InputTree { root, directories }
    }
}

/// Encodes `node` after its subdirectories (their digests are in it).
fn encode(node: Node, out: &mut Vec<(Digest, Vec<u8>)>) -> Digest {
    let directories = (node.dirs.into_iter())
        .map(|(name, child)| DirectoryNode {
            name,
            digest: Some(encode(child, out)),
        })
        .collect();
    let files = (node.files.into_iter())
        .map(|(name, (digest, is_executable))| FileNode {
            name,
            digest: Some(digest),
            is_executable,
        })
        .collect();
    let (digest, bytes) = proto::digest_of(&Directory { files, directories });
    if !out.iter().any(|(d, _)| *d == digest) {
        out.push((digest.clone(), bytes));
    }
    digest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &str) -> InputFile {
        InputFile {
            path: path.into(),
            digest: proto::digest_of_bytes(content.as_bytes()),
            executable: false,
        }
    }

    #[test]
    fn the_root_digest_covers_paths_and_contents_not_their_order() {
        let a = [file("src/a.c", "a"), file("src/b.c", "b"), file("x", "x")];
        let b = [file("x", "x"), file("src/b.c", "b"), file("src/a.c", "a")];
        assert_eq!(InputTree::build(&a).root, InputTree::build(&b).root);
        let moved = [file("src/a.c", "a"), file("lib/b.c", "b"), file("x", "x")];
        assert_ne!(InputTree::build(&a).root, InputTree::build(&moved).root);
        let edited = [file("src/a.c", "A"), file("src/b.c", "b"), file("x", "x")];
        assert_ne!(InputTree::build(&a).root, InputTree::build(&edited).root);
        // The root, `src`: two directories.
        assert_eq!(InputTree::build(&a).directories.len(), 2);
    }

    #[test]
    fn an_empty_directory_is_the_well_known_empty_digest() {
        let tree = InputTree::build(&[]);
        assert_eq!(
            tree.root.hash,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(tree.root.size_bytes, 0);
    }
}
