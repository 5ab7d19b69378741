//! File writes that never leave a half-written file behind, and the
//! checksum Piper's own files (`state.bin`, `config.cache`) carry.

use std::io::Write;
use std::path::Path;

/// Writes `data` to a temporary file beside `path`, syncs it, and renames it
/// over `path`: readers see the old content or the new, never a mix.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The checksum of Piper's own binary files: xxh3-64, little-endian. It
/// guards against damage, not tampering, and unlike blake3 it needs no
/// run-time CPU detection (which traps to the hypervisor on a VM: most of
/// the checksums' cost when a run reads only small files).
pub fn checksum(bytes: &[u8]) -> [u8; 8] {
    xxhash_rust::xxh3::xxh3_64(bytes).to_le_bytes()
}

/// A file's mtime in nanoseconds since the epoch (0 when unknown).
pub fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}
