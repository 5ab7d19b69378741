//! Random hex strings from the operating system: API tokens, session ids,
//! agent identities.

use crate::error::{Error, Result};

/// `bytes` random bytes from the OS, as hex.
pub(crate) fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| {
        Error::io(
            "cannot get random bytes",
            std::io::Error::other(e.to_string()),
        )
    })?;
    Ok(hex::encode(buf))
}
