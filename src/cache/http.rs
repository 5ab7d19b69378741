//! Bazel's HTTP cache protocol (see `remote.rs`): `GET`/`PUT` of
//! `<base>/ac/<key>` (an action's entry) and `<base>/cas/<sha256>` (a
//! blob), which nginx's WebDAV module, bazel-remote and object-store
//! proxies serve. Piper's entry (the disk cache's JSON) is what `ac/`
//! holds; blobs are downloaded streamed into the disk cache, checked
//! against their digest, and uploaded streamed from it when `HEAD` says
//! the server lacks them.

use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::disk::{DiskCache, Entry};
use super::key::ActionKey;

/// A cache server speaking Bazel's HTTP protocol.
pub(super) struct HttpCache {
    base: String,
    client: reqwest::Client,
}

impl HttpCache {
    pub(super) fn new(url: &str) -> Result<HttpCache, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .read_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot set up a client for {url}: {e}"))?;
        Ok(HttpCache {
            base: url.trim_end_matches('/').to_string(),
            client,
        })
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(String, String)],
    ) -> reqwest::RequestBuilder {
        let mut request = self.client.request(method, url);
        for (name, value) in headers {
            if let Ok(mut value) = reqwest::header::HeaderValue::from_str(value) {
                value.set_sensitive(true);
                request = request.header(name.as_str(), value);
            }
        }
        request
    }

    pub(super) async fn download(
        &self,
        key: &ActionKey,
        disk: &DiskCache,
        headers: &[(String, String)],
    ) -> Result<bool, String> {
        let url = format!("{}/ac/{}", self.base, key.hash);
        let response = (self.request(reqwest::Method::GET, &url, headers))
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
                self.download_blob(sha256, size, disk, headers).await?;
            }
        }
        disk.put_entry_bytes(key, &bytes)?;
        Ok(true)
    }

    async fn download_blob(
        &self,
        sha256: &str,
        size: u64,
        disk: &DiskCache,
        headers: &[(String, String)],
    ) -> Result<(), String> {
        let url = format!("{}/cas/{sha256}", self.base);
        let mut response = (self.request(reqwest::Method::GET, &url, headers))
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

    /// Blobs first (each checked with `HEAD`), the entry last.
    pub(super) async fn upload(
        &self,
        key: &ActionKey,
        disk: &DiskCache,
        bytes: Vec<u8>,
        headers: &[(String, String)],
    ) -> Result<(), String> {
        let entry = Entry::parse(&bytes)?;
        for (sha256, _) in entry.blobs() {
            let url = format!("{}/cas/{sha256}", self.base);
            let head = (self.request(reqwest::Method::HEAD, &url, headers))
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
            self.put(&url, body, length, headers).await?;
        }
        let url = format!("{}/ac/{}", self.base, key.hash);
        let length = bytes.len() as u64;
        self.put(&url, reqwest::Body::from(bytes), length, headers)
            .await
    }

    async fn put(
        &self,
        url: &str,
        body: reqwest::Body,
        length: u64,
        headers: &[(String, String)],
    ) -> Result<(), String> {
        let response = (self.request(reqwest::Method::PUT, url, headers))
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
    format!("{url}: {}", super::error_chain::chain(error))
}
