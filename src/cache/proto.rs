//! The Remote Execution API (v2) messages an action key is made of:
//! `Command`, `Action`, and the `Directory` tree of its inputs. Written
//! out here with prost's derive, field numbers as in
//! `build/bazel/remote/execution/v2/remote_execution.proto`, so the
//! engine's disk cache needs no gRPC stack (the `remote-cache` feature
//! brings the generated services; the bytes these encode to are the same).
//!
//! Part of `cache/`: `key.rs` and `tree.rs` build them.

// prost's derive writes the `Message` impls; the fields are the wire.
#![allow(clippy::derive_partial_eq_without_eq)]

/// A blob's SHA-256 (hex) and size.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message)]
pub(crate) struct Digest {
    #[prost(string, tag = "1")]
    pub(crate) hash: String,
    #[prost(int64, tag = "2")]
    pub(crate) size_bytes: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Command {
    #[prost(string, repeated, tag = "1")]
    pub(crate) arguments: Vec<String>,
    /// Sorted by name.
    #[prost(message, repeated, tag = "2")]
    pub(crate) environment_variables: Vec<EnvironmentVariable>,
    #[prost(message, optional, tag = "5")]
    pub(crate) platform: Option<Platform>,
    #[prost(string, tag = "6")]
    pub(crate) working_directory: String,
    /// Relative to the working directory, sorted.
    #[prost(string, repeated, tag = "7")]
    pub(crate) output_paths: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EnvironmentVariable {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
    #[prost(string, tag = "2")]
    pub(crate) value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Platform {
    /// Sorted by name, then value.
    #[prost(message, repeated, tag = "1")]
    pub(crate) properties: Vec<Property>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Property {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
    #[prost(string, tag = "2")]
    pub(crate) value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Action {
    #[prost(message, optional, tag = "1")]
    pub(crate) command_digest: Option<Digest>,
    #[prost(message, optional, tag = "2")]
    pub(crate) input_root_digest: Option<Digest>,
    /// The step's `timeout`: a worker ends the action after it.
    #[prost(message, optional, tag = "6")]
    pub(crate) timeout: Option<ProtoDuration>,
    #[prost(bytes = "vec", tag = "9")]
    pub(crate) salt: Vec<u8>,
    #[prost(message, optional, tag = "10")]
    pub(crate) platform: Option<Platform>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub(crate) seconds: i64,
    #[prost(int32, tag = "2")]
    pub(crate) nanos: i32,
}

impl From<std::time::Duration> for ProtoDuration {
    fn from(d: std::time::Duration) -> ProtoDuration {
        ProtoDuration {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Directory {
    /// Sorted by name.
    #[prost(message, repeated, tag = "1")]
    pub(crate) files: Vec<FileNode>,
    /// Sorted by name.
    #[prost(message, repeated, tag = "2")]
    pub(crate) directories: Vec<DirectoryNode>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct FileNode {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
    #[prost(message, optional, tag = "2")]
    pub(crate) digest: Option<Digest>,
    #[prost(bool, tag = "4")]
    pub(crate) is_executable: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct DirectoryNode {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
    #[prost(message, optional, tag = "2")]
    pub(crate) digest: Option<Digest>,
}

/// The digest of a message's encoding, and the encoding.
pub(crate) fn digest_of(message: &impl prost::Message) -> (Digest, Vec<u8>) {
    let bytes = message.encode_to_vec();
    (digest_of_bytes(&bytes), bytes)
}

pub(crate) fn digest_of_bytes(bytes: &[u8]) -> Digest {
    use sha2::Digest as _;
    Digest {
        hash: hex::encode(sha2::Sha256::digest(bytes)),
        size_bytes: bytes.len() as i64,
    }
}
