//! A blake3 digest as the state keeps it: 32 bytes in `state.bin` and
//! `config.cache`, 64 hex digits wherever people read it (`state.log`,
//! debug output).
//!
//! Used by `fingerprint.rs` (content hashes, step fingerprints) and the
//! records of `state.rs`. As text, each digest of a record was a string to
//! check and allocate on every `piper exec`; a cached no-op of 1000 steps
//! decoded ~7000 of them before its first step.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(*blake3::hash(data).as_bytes())
    }

    /// A digest no earlier run recorded: what a step without outputs shows
    /// its dependents after it ran, so that they run too. Made of the
    /// time, the process and a count, not hashed: neither the build number
    /// nor the process id alone is unique (each `run` of a host starts at
    /// build 1; in a container piper is often process 1), and one step
    /// needs no hash function (blake3's CPU probe traps on a VM).
    pub fn unique() -> Digest {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let count = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut bytes = [0; 32];
        bytes[..8].copy_from_slice(b"piperran");
        bytes[8..24].copy_from_slice(&now.to_le_bytes());
        bytes[24..28].copy_from_slice(&std::process::id().to_le_bytes());
        bytes[28..].copy_from_slice(&count.to_le_bytes());
        Digest(bytes)
    }

    pub fn from_hasher(hasher: &blake3::Hasher) -> Digest {
        Digest(*hasher.finalize().as_bytes())
    }

    /// A digest written as 64 hex digits; None for any other text.
    pub fn from_hex(text: &str) -> Option<Digest> {
        let mut bytes = [0; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Digest(bytes))
    }

    /// The 64 hex digits, in `buffer`.
    fn hex<'a>(&self, buffer: &'a mut [u8; 64]) -> &'a str {
        // Cannot fail: the buffer is twice the bytes, and hex is ASCII.
        let _ = hex::encode_to_slice(self.0, buffer);
        std::str::from_utf8(buffer).unwrap_or_default()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex(&mut [0; 64]))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            // One string, not `collect_str`: serde_json escapes what that
            // writes piece by piece (~1200 instructions a digest).
            serializer.serialize_str(self.hex(&mut [0; 64]))
        } else {
            // Bytes, not a [u8; 32] tuple: postcard then reads one slice
            // instead of 32 separate bytes (one length byte more on disk).
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(DigestVisitor)
        } else {
            deserializer.deserialize_bytes(DigestVisitor)
        }
    }
}

struct DigestVisitor;

impl Visitor<'_> for DigestVisitor {
    type Value = Digest;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a blake3 digest (32 bytes, or 64 hex digits)")
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Digest, E> {
        match <[u8; 32]>::try_from(bytes) {
            Ok(bytes) => Ok(Digest(bytes)),
            Err(_) => Err(E::invalid_length(bytes.len(), &self)),
        }
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Digest, E> {
        Digest::from_hex(text).ok_or_else(|| E::invalid_value(de::Unexpected::Str(text), &self))
    }
}

/// Fingerprint of a record whose depfile was missing after its run (no
/// blake3 output this side of a collision).
pub const DEPFILE_MISSING: Digest = Digest([0xff; 32]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shows_hex_and_postcard_keeps_bytes() {
        let digest = Digest::of(b"piper");
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{}\"", blake3::hash(b"piper").to_hex()));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), digest);
        let bytes = postcard::to_stdvec(&digest).unwrap();
        assert_eq!(bytes.len(), 33);
        assert_eq!(postcard::from_bytes::<Digest>(&bytes).unwrap(), digest);
        assert!(serde_json::from_str::<Digest>("\"not hex\"").is_err());
        assert!(postcard::from_bytes::<Digest>(&[2, 1, 2]).is_err());
    }

    #[test]
    fn unique_digests_differ_within_a_process() {
        let digests: std::collections::HashSet<Digest> =
            (0..1000).map(|_| Digest::unique()).collect();
        assert_eq!(digests.len(), 1000);
    }
}
