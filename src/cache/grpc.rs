//! The Remote Execution API's caches over gRPC (see `remote.rs`):
//! `Capabilities` once (SHA-256 taken? how large may a batch be?),
//! `ActionCache` for results, `ContentAddressableStorage` and `ByteStream`
//! for blobs. A result is a REAPI `ActionResult` (output paths relative to
//! the step's working directory, the log as stdout: `action_result.rs`),
//! so any REAPI client reads what Piper wrote, and Piper reads theirs.
//!
//! Blobs move at most [`CONCURRENT`] requests at a time: small ones in
//! batches (`BatchReadBlobs`, `BatchUpdateBlobs`, up to the server's batch
//! size), large ones through `ByteStream`, in pieces, streamed between the
//! network and the disk cache — never a whole large file in memory. A
//! downloaded blob is checked against its digest before it is kept.

use std::path::PathBuf;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream as bs;
use futures_util::{StreamExt as _, TryStreamExt as _, stream};
use re::action_cache_client::ActionCacheClient;
use re::capabilities_client::CapabilitiesClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::action_result::{self, digest};
use super::disk::{DiskCache, Entry};
use super::error_chain::chain;
use super::key::ActionKey;

/// Requests moving blobs at once.
const CONCURRENT: usize = 8;
/// A `ByteStream` piece.
const CHUNK: usize = 64 * 1024;
/// gRPC's usual message limit: batches stay under it.
const MAX_MESSAGE: u64 = 4 << 20;
/// How long a call that moves no large blob may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries of a call while the server says it is busy: 20, 80, 320 ms,
/// 1.28 s, then 2 s apart, about half a minute in all.
const BUSY_TRIES: u32 = 18;
pub(super) const SHA256: i32 = re::digest_function::Value::Sha256 as i32;

/// A REAPI server's caches.
pub(super) struct GrpcCache {
    url: String,
    endpoint: Endpoint,
    pub(super) instance: String,
    conn: tokio::sync::OnceCell<Conn>,
}

/// A connection whose server said what it takes.
pub(super) struct Conn {
    pub(super) channel: Channel,
    /// The most blob bytes in one batch.
    max_batch: u64,
}

pub(super) type Headers<'a> = &'a [(String, String)];

impl GrpcCache {
    pub(super) fn new(url: &str) -> Result<GrpcCache, String> {
        let (tls, address) = match url.strip_prefix("grpcs://") {
            Some(rest) => (true, rest),
            None => (false, url.trim_start_matches("grpc://")),
        };
        let address = address.trim_end_matches('/');
        if address.is_empty() || address.contains('/') {
            return Err(format!(
                "{url}: a gRPC cache is grpc://HOST:PORT or grpcs://HOST:PORT \
                 (an instance name is --remote-instance)"
            ));
        }
        let scheme = if tls { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| format!("{url}: {e}"))?
            .connect_timeout(Duration::from_secs(3));
        if tls {
            let _ = rustls::crypto::ring::default_provider().install_default();
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().with_native_roots())
                .map_err(|e| format!("{url}: {e}"))?;
        }
        Ok(GrpcCache {
            url: url.trim_end_matches('/').to_string(),
            endpoint,
            instance: String::new(),
            conn: tokio::sync::OnceCell::new(),
        })
    }

    /// The connection, made (and the server's capabilities read) once.
    pub(super) async fn conn(&self, headers: Headers<'_>) -> Result<&Conn, String> {
        self.conn
            .get_or_try_init(|| async {
                let channel = (self.endpoint.connect().await)
                    .map_err(|e| format!("{}: {}", self.url, chain(&e)))?;
                let request = re::GetCapabilitiesRequest {
                    instance_name: self.instance.clone(),
                };
                let reply = CapabilitiesClient::new(channel.clone())
                    .get_capabilities(self.request(request, headers))
                    .await
                    .map_err(|s| self.failed("GetCapabilities", &s))?;
                let cache = reply.into_inner().cache_capabilities.unwrap_or_default();
                let functions = &cache.digest_functions;
                if !functions.is_empty() && !functions.contains(&SHA256) {
                    return Err(format!(
                        "{}: the server does not take SHA-256 digests",
                        self.url
                    ));
                }
                let max = match cache.max_batch_total_size_bytes {
                    n if n > 0 => (n as u64).min(MAX_MESSAGE),
                    _ => MAX_MESSAGE,
                };
                Ok(Conn {
                    channel,
                    // Room for the messages around the blobs.
                    max_batch: max.saturating_sub(64 << 10).max(1),
                })
            })
            .await
    }

    /// `message` with the headers and a deadline.
    pub(super) fn request<T>(&self, message: T, headers: Headers<'_>) -> tonic::Request<T> {
        let mut request = self.streaming(message, headers);
        request.set_timeout(CALL_TIMEOUT);
        request
    }

    /// `message` with the headers, no deadline (a large blob's stream).
    fn streaming<T>(&self, message: T, headers: Headers<'_>) -> tonic::Request<T> {
        use tonic::metadata::{MetadataKey, MetadataValue};
        let mut request = tonic::Request::new(message);
        for (name, value) in headers {
            if let (Ok(name), Ok(value)) = (
                MetadataKey::from_bytes(name.as_bytes()),
                MetadataValue::try_from(value.as_str()),
            ) {
                request.metadata_mut().insert(name, value);
            }
        }
        request
    }

    /// Where it is, as given.
    pub(super) fn url(&self) -> &str {
        &self.url
    }

    pub(super) fn failed(&self, call: &str, status: &tonic::Status) -> String {
        let mut text = format!(
            "{}: {call}: {:?}: {}",
            self.url,
            status.code(),
            status.message()
        );
        if let Some(source) = std::error::Error::source(status) {
            text.push_str(": ");
            text.push_str(&chain(source));
        }
        text
    }

    fn prefix(&self) -> String {
        match self.instance.as_str() {
            "" => String::new(),
            name => format!("{name}/"),
        }
    }

    /// Looks `key` up; on a hit its blobs and entry are put into `disk`.
    pub(super) async fn download(
        &self,
        key: &ActionKey,
        disk: &DiskCache,
        headers: Headers<'_>,
    ) -> Result<bool, String> {
        let conn = self.conn(headers).await?;
        let request = re::GetActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(digest(&key.hash, key.size as u64)),
            inline_stdout: true,
            inline_stderr: true,
            inline_output_files: Vec::new(),
            digest_function: SHA256,
        };
        let reply = patiently(|| {
            let mut client = ActionCacheClient::new(conn.channel.clone());
            let request = self.request(request.clone(), headers);
            async move { client.get_action_result(request).await }
        })
        .await;
        let result = match reply {
            Ok(result) => result,
            Err(status) if status.code() == tonic::Code::NotFound => return Ok(false),
            Err(status) => return Err(self.failed("GetActionResult", &status)),
        };
        self.keep_result(conn, key, &result, disk, headers).await
    }

    /// Puts a successful `result` of `key` into `disk`: its blobs (those
    /// of its output directories once their trees are here), then the
    /// entry. Ok(false) for a failed action, which is not kept.
    pub(super) async fn keep_result(
        &self,
        conn: &Conn,
        key: &ActionKey,
        result: &re::ActionResult,
        disk: &DiskCache,
        headers: Headers<'_>,
    ) -> Result<bool, String> {
        let Some(mut reading) =
            action_result::read(result, key, disk).map_err(|e| format!("{}: {e}", self.url))?
        else {
            return Ok(false);
        };
        // Every blob in one go: a few requests at once, not one per blob.
        let mut wanted = action_result::missing(&reading.files, disk);
        let others =
            (action_result::log_blobs(result)).chain(reading.trees.iter().map(|(_, tree)| tree));
        wanted.extend(
            others
                .filter(|b| !disk.blob_path(&b.hash).exists())
                .cloned(),
        );
        wanted.sort_by(|a, b| a.hash.cmp(&b.hash));
        wanted.dedup();
        self.fetch_blobs(conn, wanted, disk, headers).await?;
        if !reading.trees.is_empty() {
            let known = reading.files.len();
            for (dir, tree) in std::mem::take(&mut reading.trees) {
                action_result::expand_tree(disk, &dir, &tree, &mut reading)
                    .map_err(|e| format!("{}: {e}", self.url))?;
            }
            let wanted = action_result::missing(&reading.files[known..], disk);
            self.fetch_blobs(conn, wanted, disk, headers).await?;
        }
        let log = action_result::log(result, disk)?;
        let entry = Entry::of(reading.files, reading.symlinks, log);
        disk.put_entry_bytes(key, &entry.to_bytes())?;
        Ok(true)
    }

    /// Downloads `blobs` into `disk`: small ones in batches, large ones
    /// streamed, a few requests at a time.
    pub(super) async fn fetch_blobs(
        &self,
        conn: &Conn,
        blobs: Vec<re::Digest>,
        disk: &DiskCache,
        headers: Headers<'_>,
    ) -> Result<(), String> {
        let transfers = plan(blobs, conn.max_batch);
        stream::iter(transfers)
            .map(|transfer| async move {
                match transfer {
                    Transfer::Batch(batch) => self.read_batch(conn, batch, disk, headers).await,
                    Transfer::Stream(blob) => self.read_stream(conn, blob, disk, headers).await,
                }
            })
            .buffer_unordered(CONCURRENT)
            .try_collect()
            .await
    }

    async fn read_batch(
        &self,
        conn: &Conn,
        digests: Vec<re::Digest>,
        disk: &DiskCache,
        headers: Headers<'_>,
    ) -> Result<(), String> {
        let request = re::BatchReadBlobsRequest {
            instance_name: self.instance.clone(),
            digests,
            acceptable_compressors: Vec::new(),
            digest_function: SHA256,
        };
        let reply = patiently(|| {
            let mut client = ContentAddressableStorageClient::new(conn.channel.clone());
            let request = self.request(request.clone(), headers);
            async move { client.batch_read_blobs(request).await }
        })
        .await
        .map_err(|s| self.failed("BatchReadBlobs", &s))?;
        for blob in reply.responses {
            let hash = blob.digest.map(|d| d.hash).unwrap_or_default();
            if let Some(status) = blob.status.filter(|s| s.code != 0) {
                return Err(format!("{}: blob {hash}: {}", self.url, status.message));
            }
            disk.keep_blob_bytes(&hash, &blob.data)
                .map_err(|e| format!("{}: {e}", self.url))?;
        }
        Ok(())
    }

    /// One large blob, read in pieces into a temporary file, hashed on
    /// the way, kept when its digest matches.
    async fn read_stream(
        &self,
        conn: &Conn,
        blob: re::Digest,
        disk: &DiskCache,
        headers: Headers<'_>,
    ) -> Result<(), String> {
        let request = bs::ReadRequest {
            resource_name: format!("{}blobs/{}/{}", self.prefix(), blob.hash, blob.size_bytes),
            read_offset: 0,
            read_limit: 0,
        };
        let mut pieces = bs::byte_stream_client::ByteStreamClient::new(conn.channel.clone())
            .read(self.streaming(request, headers))
            .await
            .map_err(|s| self.failed("ByteStream.Read", &s))?
            .into_inner();
        let temp = disk.blob_temp()?;
        let mut file = tokio::fs::File::from_std(temp.reopen().map_err(|e| e.to_string())?);
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        while let Some(piece) =
            (pieces.message().await).map_err(|s| self.failed("ByteStream.Read", &s))?
        {
            hasher.update(&piece.data);
            got += piece.data.len() as u64;
            file.write_all(&piece.data)
                .await
                .map_err(|e| e.to_string())?;
        }
        file.flush().await.map_err(|e| e.to_string())?;
        let sha256 = hex::encode(hasher.finalize());
        if sha256 != blob.hash || got != blob.size_bytes as u64 {
            // `temp` is removed when dropped: nothing damaged is kept.
            return Err(format!(
                "{}: blob {} does not match its digest (it holds {sha256}, {got} bytes)",
                self.url, blob.hash
            ));
        }
        disk.keep_blob(temp, &blob.hash)
    }

    /// Uploads the blobs the server lacks, then the action's result.
    pub(super) async fn upload(
        &self,
        key: &ActionKey,
        disk: &DiskCache,
        bytes: &[u8],
        headers: Headers<'_>,
    ) -> Result<(), String> {
        let entry = Entry::parse(bytes)?;
        let conn = self.conn(headers).await?;
        let blobs = entry.blobs().map(|(h, s)| digest(h, s)).collect();
        self.send_missing(conn, blobs, &|hash| disk.blob_path(hash), headers)
            .await?;
        let result = action_result::of_entry(&entry, key);
        let request = re::UpdateActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(digest(&key.hash, key.size as u64)),
            action_result: Some(result),
            results_cache_policy: None,
            digest_function: SHA256,
        };
        patiently(|| {
            let mut client = ActionCacheClient::new(conn.channel.clone());
            let request = self.request(request.clone(), headers);
            async move { client.update_action_result(request).await }
        })
        .await
        .map_err(|s| self.failed("UpdateActionResult", &s))?;
        Ok(())
    }

    /// Uploads what the server lacks of `blobs`, each read from where
    /// `locate` says it is: small ones in batches, large ones streamed.
    pub(super) async fn send_missing(
        &self,
        conn: &Conn,
        mut blobs: Vec<re::Digest>,
        locate: &(dyn Fn(&str) -> PathBuf + Sync),
        headers: Headers<'_>,
    ) -> Result<(), String> {
        blobs.sort_by(|a, b| a.hash.cmp(&b.hash));
        blobs.dedup();
        let request = re::FindMissingBlobsRequest {
            instance_name: self.instance.clone(),
            blob_digests: blobs,
            digest_function: SHA256,
        };
        let missing = patiently(|| {
            let mut client = ContentAddressableStorageClient::new(conn.channel.clone());
            let request = self.request(request.clone(), headers);
            async move { client.find_missing_blobs(request).await }
        })
        .await
        .map_err(|s| self.failed("FindMissingBlobs", &s))?
        .missing_blob_digests;
        stream::iter(plan(missing, conn.max_batch))
            .map(|transfer| async move {
                match transfer {
                    Transfer::Batch(batch) => self.write_batch(conn, batch, locate, headers).await,
                    Transfer::Stream(blob) => {
                        let path = locate(&blob.hash);
                        self.write_stream(conn, blob, path, headers).await
                    }
                }
            })
            .buffer_unordered(CONCURRENT)
            .try_collect::<()>()
            .await
    }

    async fn write_batch(
        &self,
        conn: &Conn,
        digests: Vec<re::Digest>,
        locate: &(dyn Fn(&str) -> PathBuf + Sync),
        headers: Headers<'_>,
    ) -> Result<(), String> {
        let mut requests = Vec::with_capacity(digests.len());
        for blob in digests {
            let path = locate(&blob.hash);
            let data = tokio::fs::read(&path)
                .await
                .map_err(|e| format!("cannot read blob {}: {e}", blob.hash))?;
            requests.push(re::batch_update_blobs_request::Request {
                digest: Some(blob),
                data,
                compressor: 0,
            });
        }
        let request = re::BatchUpdateBlobsRequest {
            instance_name: self.instance.clone(),
            requests,
            digest_function: SHA256,
        };
        let reply = patiently(|| {
            let mut client = ContentAddressableStorageClient::new(conn.channel.clone());
            let request = self.request(request.clone(), headers);
            async move { client.batch_update_blobs(request).await }
        })
        .await
        .map_err(|s| self.failed("BatchUpdateBlobs", &s))?;
        for blob in reply.responses {
            if let Some(status) = blob.status.filter(|s| s.code != 0) {
                let hash = blob.digest.map(|d| d.hash).unwrap_or_default();
                return Err(format!("{}: blob {hash}: {}", self.url, status.message));
            }
        }
        Ok(())
    }

    /// One large blob, streamed from its file in pieces.
    async fn write_stream(
        &self,
        conn: &Conn,
        blob: re::Digest,
        path: PathBuf,
        headers: Headers<'_>,
    ) -> Result<(), String> {
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| format!("cannot read blob {}: {e}", blob.hash))?;
        let name = format!(
            "{}uploads/{}/blobs/{}/{}",
            self.prefix(),
            upload_id(),
            blob.hash,
            blob.size_bytes
        );
        let (size, last_name) = (blob.size_bytes, name.clone());
        // A read error ends the pieces early: the server then refuses the
        // write (its size is short), and nothing half-written is kept.
        let pieces = tokio_util::io::ReaderStream::with_capacity(file, CHUNK)
            .scan(0i64, move |offset, piece| {
                let request = piece.ok().map(|data| bs::WriteRequest {
                    resource_name: name.clone(),
                    write_offset: *offset,
                    finish_write: false,
                    data: data.to_vec(),
                });
                *offset += request.as_ref().map_or(0, |r| r.data.len() as i64);
                std::future::ready(request)
            })
            .chain(stream::once(std::future::ready(bs::WriteRequest {
                resource_name: last_name,
                write_offset: size,
                finish_write: true,
                data: Vec::new(),
            })));
        let reply = bs::byte_stream_client::ByteStreamClient::new(conn.channel.clone())
            .write(self.streaming(pieces, headers))
            .await
            .map_err(|s| self.failed("ByteStream.Write", &s))?;
        let committed = reply.into_inner().committed_size;
        if committed != size {
            return Err(format!(
                "{}: blob {}: the server kept {committed} of {size} bytes",
                self.url, blob.hash
            ));
        }
        Ok(())
    }
}

/// Calls `call`, and again while the server is away or busy: away
/// (`UNAVAILABLE`) three more times, 20, 80 and 320 ms apart; busy
/// (`RESOURCE_EXHAUSTED`: BuildGrid past its concurrent RPCs, which remote
/// executions hold while they run) for about half a minute, at most 2 s
/// apart.
pub(super) async fn patiently<T, Fut>(mut call: impl FnMut() -> Fut) -> Result<T, tonic::Status>
where
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut wait = Duration::from_millis(20);
    let mut tries = 1;
    loop {
        let status = match call().await {
            Ok(reply) => return Ok(reply.into_inner()),
            Err(status) => status,
        };
        let again = match status.code() {
            tonic::Code::Unavailable => tries < 4,
            tonic::Code::ResourceExhausted => tries < BUSY_TRIES,
            _ => false,
        };
        if !again {
            return Err(status);
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 4).min(Duration::from_secs(2));
        tries += 1;
    }
}

/// How blobs move: small ones together, large ones alone.
#[derive(Debug, PartialEq)]
enum Transfer {
    Batch(Vec<re::Digest>),
    Stream(re::Digest),
}

/// Groups `blobs` into batches of at most `max_batch` bytes; a blob over
/// half of it is streamed (those first: the longest transfers start
/// soonest).
fn plan(mut blobs: Vec<re::Digest>, max_batch: u64) -> Vec<Transfer> {
    blobs.sort_by_key(|b| b.size_bytes);
    let mut transfers = Vec::new();
    let mut streams = Vec::new();
    let mut batch = Vec::new();
    let mut total = 0u64;
    for blob in blobs {
        let size = blob.size_bytes.max(0) as u64;
        if size > max_batch / 2 {
            streams.push(Transfer::Stream(blob));
            continue;
        }
        if total + size > max_batch && !batch.is_empty() {
            transfers.push(Transfer::Batch(std::mem::take(&mut batch)));
            total = 0;
        }
        total += size;
        batch.push(blob);
    }
    if !batch.is_empty() {
        transfers.push(Transfer::Batch(batch));
    }
    streams.reverse();
    streams.extend(transfers);
    streams
}

/// A UUID (version 4 form) naming one upload.
fn upload_id() -> String {
    let seed = crate::digest::Digest::unique();
    let bytes = Sha256::digest(seed.0);
    let hex = hex::encode(&bytes[..16]);
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_blobs_go_in_batches_large_ones_stream() {
        let blob = |size: i64| digest(&format!("{size:064}"), size as u64);
        let transfers = plan(vec![blob(600), blob(10), blob(300), blob(400)], 1000);
        assert_eq!(
            transfers,
            vec![
                Transfer::Stream(blob(600)),
                Transfer::Batch(vec![blob(10), blob(300), blob(400)]),
            ]
        );
        assert_eq!(plan(Vec::new(), 1000), Vec::new());
    }

    #[test]
    fn an_upload_id_is_shaped_like_a_uuid() {
        let id = upload_id();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(id.matches('-').count(), 4, "{id}");
        assert_ne!(id, upload_id());
    }

    #[test]
    fn a_grpc_url_names_a_server_not_a_path() {
        assert!(GrpcCache::new("grpc://127.0.0.1:8980").is_ok());
        let e = GrpcCache::new("grpc://host:1/instance").err().unwrap();
        assert!(e.contains("--remote-instance"), "{e}");
    }
}
