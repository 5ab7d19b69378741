//! A remote cache over Bazel's HTTP cache protocol: `GET`/`PUT` of
//! `<base>/ac/<key>` (an action's entry) and `<base>/cas/<sha256>` (a
//! blob), which nginx's WebDAV module, bazel-remote and object-store
//! proxies serve. It sits behind the local disk cache (local first): a
//! local miss asks the remote, whose blobs are downloaded into the disk
//! cache (streamed to a temporary file, hashed on the way, kept only when
//! the digest matches) and its entry last; then the fetch is the disk
//! cache's. After a step succeeds, what the remote lacks (`HEAD`) is
//! uploaded, blobs first, the entry last, streamed from the disk cache.
//!
//! A remote that is down, slow or answering errors never fails a build:
//! each failure is a warning and the step runs (or its results stay
//! local); after three failures in a row the remote is not asked again in
//! this process.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::disk::{DiskCache, Entry};
use super::key::ActionKey;

/// Failures in a row after which the remote is left alone.
const GIVE_UP_AFTER: u32 = 3;

/// A remote cache speaking Bazel's HTTP protocol.
#[derive(Debug)]
pub struct RemoteCache {
    base: String,
    client: reqwest::Client,
    upload: bool,
    failures: AtomicU32,
}

impl RemoteCache {
    /// The cache at `url` (`http://` or `https://`, its path the prefix of
    /// `ac/` and `cas/`); it is written to unless `upload(false)`.
    pub fn http(url: &str) -> Result<RemoteCache, String> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "{url}: a remote cache URL starts with http:// or https://"
            ));
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .read_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot set up a client for {url}: {e}"))?;
        Ok(RemoteCache {
            base: url.trim_end_matches('/').to_string(),
            client,
            upload: true,
            failures: AtomicU32::new(0),
        })
    }

    /// Whether results are uploaded (`--remote-upload=off`: read only, as
    /// a laptop usually is while CI writes).
    pub fn upload(mut self, upload: bool) -> RemoteCache {
        self.upload = upload;
        self
    }

    /// Where it is, as given.
    pub fn url(&self) -> &str {
        &self.base
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
        let result = self.try_download(key, disk).await;
        self.outcome(result)
    }

    async fn try_download(&self, key: &ActionKey, disk: &DiskCache) -> Result<bool, String> {
        let url = format!("{}/ac/{}", self.base, key.0);
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| cause(&url, &e))?;
        match response.status() {
            reqwest::StatusCode::NOT_FOUND => return Ok(false),
            status if !status.is_success() => return Err(format!("GET {url}: {status}")),
            _ => {}
        }
        let bytes = response.bytes().await.map_err(|e| cause(&url, &e))?;
        let entry = Entry::parse(&bytes).map_err(|e| format!("{url}: {e}"))?;
        for (sha256, size) in entry.blobs() {
            if !disk.blob_path(sha256).exists() {
                self.download_blob(sha256, size, disk).await?;
            }
        }
        disk.put_entry_bytes(key, &bytes)?;
        Ok(true)
    }

    async fn download_blob(&self, sha256: &str, size: u64, disk: &DiskCache) -> Result<(), String> {
        let url = format!("{}/cas/{sha256}", self.base);
        let mut response = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| cause(&url, &e))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: {}", response.status()));
        }
        let temp = disk.blob_temp()?;
        let mut file = tokio::fs::File::from_std(temp.reopen().map_err(|e| e.to_string())?);
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| cause(&url, &e))? {
            hasher.update(&chunk);
            got += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(|e| e.to_string())?;
        }
        file.flush().await.map_err(|e| e.to_string())?;
        let digest = hex::encode(hasher.finalize());
        if digest != sha256 || got != size {
            // `temp` is removed when dropped: nothing damaged is kept.
            return Err(format!(
                "{url} does not match its digest (it holds {digest}, {got} bytes)"
            ));
        }
        disk.keep_blob(temp, sha256)
    }

    /// Uploads what the remote lacks of `key`'s entry in `disk`: blobs
    /// first (each checked with `HEAD`), the entry last, so a reader never
    /// finds an entry whose blobs are not there yet.
    pub(crate) async fn upload_entry(
        &self,
        key: &ActionKey,
        disk: &DiskCache,
    ) -> Result<(), String> {
        let result = self.try_upload(key, disk).await;
        self.outcome(result)
    }

    async fn try_upload(&self, key: &ActionKey, disk: &DiskCache) -> Result<(), String> {
        let Some(bytes) = disk.entry_bytes(key) else {
            return Ok(());
        };
        let entry = Entry::parse(&bytes)?;
        for (sha256, _) in entry.blobs() {
            let url = format!("{}/cas/{sha256}", self.base);
            let head = self
                .client
                .head(&url)
                .send()
                .await
                .map_err(|e| cause(&url, &e))?;
            if head.status().is_success() {
                continue;
            }
            let file = tokio::fs::File::open(disk.blob_path(sha256))
                .await
                .map_err(|e| format!("cannot read blob {sha256}: {e}"))?;
            let length = file.metadata().await.map_err(|e| e.to_string())?.len();
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
            self.put(&url, body, length).await?;
        }
        let url = format!("{}/ac/{}", self.base, key.0);
        let length = bytes.len() as u64;
        self.put(&url, reqwest::Body::from(bytes), length).await
    }

    async fn put(&self, url: &str, body: reqwest::Body, length: u64) -> Result<(), String> {
        let response = (self.client.put(url))
            .header(reqwest::header::CONTENT_LENGTH, length)
            .body(body)
            .send()
            .await
            .map_err(|e| cause(url, &e))?;
        match response.status() {
            status if status.is_success() => Ok(()),
            status => Err(format!("PUT {url}: {status}")),
        }
    }
}

/// A request's error with its causes ("connection refused").
fn cause(url: &str, error: &reqwest::Error) -> String {
    let mut text = format!("{url}: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
