//! A remote cache behind the disk cache (local first): a local miss asks
//! the remote, whose blobs are downloaded into the disk cache (streamed,
//! hashed on the way, kept only when the digest matches) and its entry
//! last; then the fetch is the disk cache's. After a step succeeds, what
//! the remote lacks is uploaded from the disk cache, blobs first and the
//! action's result last, so a reader never finds a result whose blobs are
//! not there yet.
//!
//! Two protocols, chosen by the URL's scheme: Bazel's HTTP cache protocol
//! (`http://`, `https://`: `http.rs`) and the Remote Execution API over
//! gRPC (`grpc://`, `grpcs://`: `grpc.rs`).
//!
//! A remote that is down, slow or answering errors never fails a build:
//! each failure is a warning and the step runs (or its results stay
//! local); after three failures in a row the remote is not asked again in
//! this process. Header values (credentials) are sent, never shown: not in
//! `Debug`, not in messages.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

use super::disk::DiskCache;
use super::grpc::GrpcCache;
use super::http::HttpCache;
use super::key::ActionKey;

/// Failures in a row after which the remote is left alone.
const GIVE_UP_AFTER: u32 = 3;

/// A remote cache: Bazel's HTTP cache protocol, or the Remote Execution
/// API over gRPC.
pub struct RemoteCache {
    url: String,
    protocol: Protocol,
    upload: bool,
    /// Sent with every request: `(lowercase name, value)`.
    headers: Vec<(String, String)>,
    failures: AtomicU32,
}

enum Protocol {
    Http(HttpCache),
    Grpc(Box<GrpcCache>),
}

impl fmt::Debug for RemoteCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header names only: their values are credentials.
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("RemoteCache")
            .field("url", &self.url)
            .field("upload", &self.upload)
            .field("headers", &names)
            .finish_non_exhaustive()
    }
}

impl RemoteCache {
    /// The cache at `url`: `http://` or `https://` (Bazel's HTTP cache
    /// protocol; the path is the prefix of `ac/` and `cas/`), `grpc://`
    /// or `grpcs://` (the Remote Execution API; TLS for `grpcs`). It is
    /// written to unless `upload(false)`.
    pub fn new(url: &str) -> Result<RemoteCache, String> {
        let protocol = if url.starts_with("http://") || url.starts_with("https://") {
            Protocol::Http(HttpCache::new(url)?)
        } else if url.starts_with("grpc://") || url.starts_with("grpcs://") {
            Protocol::Grpc(Box::new(GrpcCache::new(url)?))
        } else {
            return Err(format!(
                "{url}: a remote cache URL starts with grpc://, grpcs://, http:// or https://"
            ));
        };
        Ok(RemoteCache {
            url: url.trim_end_matches('/').to_string(),
            protocol,
            upload: true,
            headers: Vec::new(),
            failures: AtomicU32::new(0),
        })
    }

    /// The cache at `url` as a host's settings give it: an instance name
    /// and header arguments ([`RemoteCache::header_arg`]).
    pub fn with_settings(
        url: &str,
        instance: Option<&str>,
        headers: &[String],
    ) -> Result<RemoteCache, String> {
        let mut cache = RemoteCache::new(url)?;
        if let Some(name) = instance {
            cache = cache.instance(name);
        }
        for header in headers {
            cache = cache.header_arg(header)?;
        }
        Ok(cache)
    }

    /// Whether results are uploaded (`--remote-upload=off`: read only, as
    /// a laptop usually is while CI writes).
    pub fn upload(mut self, upload: bool) -> RemoteCache {
        self.upload = upload;
        self
    }

    /// The REAPI instance name (`--remote-instance`); HTTP has none.
    pub fn instance(mut self, name: &str) -> RemoteCache {
        if let Protocol::Grpc(grpc) = &mut self.protocol {
            grpc.instance = name.to_string();
        }
        self
    }

    /// Sends `name: value` with every request (`authorization`, say).
    /// The value is never shown.
    pub fn header(mut self, name: &str, value: &str) -> Result<RemoteCache, String> {
        let name = name.trim().to_ascii_lowercase();
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid_name {
            return Err(format!("{name:?} is not a header name"));
        }
        if value.bytes().any(|b| b < b' ' && b != b'\t') {
            return Err(format!(
                "the value of header {name} holds a control character (a line break?)"
            ));
        }
        self.headers.push((name, value.to_string()));
        Ok(self)
    }

    /// A header as given on the command line: `NAME=VALUE`, `NAME=@FILE`
    /// (the file's contents, trimmed: a token kept out of the shell's
    /// history) or `NAME=env:VARIABLE` (that variable's value).
    pub fn header_arg(self, arg: &str) -> Result<RemoteCache, String> {
        let Some((name, value)) = arg.split_once('=') else {
            return Err(format!(
                "{arg:?}: a header is NAME=VALUE, NAME=@FILE or NAME=env:VARIABLE"
            ));
        };
        let value = if let Some(file) = value.strip_prefix('@') {
            std::fs::read_to_string(file)
                .map_err(|e| format!("header {name}: cannot read {file}: {e}"))?
                .trim()
                .to_string()
        } else if let Some(variable) = value.strip_prefix("env:") {
            std::env::var(variable)
                .map_err(|_| format!("header {name}: the variable {variable} is not set"))?
        } else {
            value.to_string()
        };
        self.header(name, &value)
    }

    /// Where it is, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its REAPI connection (None for an HTTP cache) and the headers to
    /// send: what a remote executor at the same address speaks through.
    pub(super) fn grpc(&self) -> Option<(&GrpcCache, &[(String, String)])> {
        match &self.protocol {
            Protocol::Grpc(grpc) => Some((grpc, &self.headers)),
            Protocol::Http(_) => None,
        }
    }

    pub(crate) fn uploads(&self) -> bool {
        self.upload
    }

    /// Whether it is still asked (fewer than three failures in a row).
    pub(crate) fn usable(&self) -> bool {
        self.failures.load(Ordering::Relaxed) < GIVE_UP_AFTER
    }

    fn outcome<T>(&self, result: Result<T, String>) -> Result<T, String> {
        match &result {
            Ok(_) => self.failures.store(0, Ordering::Relaxed),
            Err(_) => {
                let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if n == GIVE_UP_AFTER {
                    return result.map_err(|e| {
                        format!("{e}; the remote cache is not asked again in this run")
                    });
                }
            }
        }
        result
    }

    /// Looks `key` up; on a hit its blobs and entry are put into `disk`.
    /// Ok(false) on a miss.
    pub(crate) async fn download(&self, key: &ActionKey, disk: &DiskCache) -> Result<bool, String> {
        let result = match &self.protocol {
            Protocol::Http(http) => http.download(key, disk, &self.headers).await,
            Protocol::Grpc(grpc) => grpc.download(key, disk, &self.headers).await,
        };
        self.outcome(result)
    }

    /// Uploads what the remote lacks of `key`'s entry in `disk`.
    pub(crate) async fn upload_entry(
        &self,
        key: &ActionKey,
        disk: &DiskCache,
    ) -> Result<(), String> {
        let Some(bytes) = disk.entry_bytes(key) else {
            return Ok(());
        };
        let result = match &self.protocol {
            Protocol::Http(http) => http.upload(key, disk, bytes, &self.headers).await,
            Protocol::Grpc(grpc) => grpc.upload(key, disk, &bytes, &self.headers).await,
        };
        self.outcome(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_never_show() {
        let cache = RemoteCache::new("grpc://127.0.0.1:1")
            .unwrap()
            .header_arg("Authorization=Bearer s3cret")
            .unwrap();
        let shown = format!("{cache:?}");
        assert!(shown.contains("authorization"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn bad_headers_and_urls_say_why() {
        let cache = || RemoteCache::new("http://127.0.0.1:1").unwrap();
        let e = cache().header_arg("no-equals").unwrap_err();
        assert!(e.contains("NAME=VALUE"), "{e}");
        let e = cache()
            .header_arg("x-token=env:PIPER_SURELY_UNSET")
            .unwrap_err();
        assert!(e.contains("PIPER_SURELY_UNSET is not set"), "{e}");
        let e = cache().header("x y", "1").unwrap_err();
        assert!(e.contains("not a header name"), "{e}");
        let e = RemoteCache::new("ftp://host").unwrap_err();
        assert!(e.contains("grpc://"), "{e}");
    }
}
