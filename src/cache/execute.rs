//! Remote execution (feature `remote-cache`): a step with an action key
//! runs on a Remote Execution API cluster (BuildGrid, Buildbarn,
//! NativeLink, BuildBuddy, EngFlow) instead of here. The `Action` sent is
//! the step's action key itself (`key.rs`), so what the cluster runs is
//! cached under the key every Piper looks results up by.
//!
//! One execution: the messages and input files the server lacks are
//! uploaded (`FindMissingBlobs`, then batches or `ByteStream`, through
//! `grpc.rs`); `Execute` is called and its operation followed until it is
//! done: on its stream for the first second, then by asking after it
//! (`GetOperation`) — a server has few concurrent RPCs (BuildGrid: 10),
//! and streams held for long actions would leave none for its workers to
//! report with. A server without the Operations service (Buildbarn,
//! NativeLink) is followed on `WaitExecution` streams instead. A stream
//! that breaks (a server restart) is followed the same way, never by
//! running the action twice; a server busy with other
//! executions is waited on; a cancel (Ctrl-C, fail-fast, the step's
//! timeout) sends `CancelOperation`. A success's outputs and log
//! go into the disk cache as a cache hit's would, and the step fetches
//! them from there (`executor/cached.rs`); a failure's log comes back to
//! be replayed. Where it ran (the worker, queue and run times) comes from
//! the result's execution metadata.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::longrunning::{self as lro, operation};
use prost::Message as _;
use re::execution_client::ExecutionClient;
use tokio_util::sync::CancellationToken;

use super::action_result::{self, digest};
use super::disk::DiskCache;
use super::grpc::{Conn, GrpcCache, Headers, SHA256, patiently};
use super::key::{ActionKey, ActionParts};
use super::remote::RemoteCache;

/// How long an execution's stream is held before its operation is asked
/// after instead.
const STREAM_FOR: Duration = Duration::from_secs(1);

/// How many asks in a row may find the server away or busy (a restart):
/// about a quarter of a minute.
const RESUMES: u32 = 20;

/// Steps in flight on the cluster besides the `-j` running here, unless
/// `--remote-jobs` says otherwise.
const DEFAULT_REMOTE_JOBS: usize = 32;

/// A Remote Execution API cluster that runs steps.
#[derive(Debug)]
pub struct RemoteExecutor {
    remote: RemoteCache,
    fallback: bool,
    jobs: usize,
}

/// How a remote execution ended, when it ended with a result.
pub(crate) struct Executed {
    pub(crate) exit_code: i32,
    /// What it printed, for a failure (a success's is in its entry).
    pub(crate) log: Vec<u8>,
    pub(crate) worker: String,
    pub(crate) queued: Duration,
    pub(crate) ran: Duration,
}

/// Why a remote execution gave no result.
pub(crate) enum ExecError {
    /// The cluster could not be reached (`--remote-exec-fallback` runs
    /// the step here instead).
    Unreachable(String),
    /// The cluster refused or failed it: the server's reason.
    Failed(String),
    /// The step was canceled; the operation was canceled too.
    Canceled,
    /// The worker ended it at the action's timeout (the step's).
    TimedOut,
}

impl RemoteExecutor {
    /// The cluster behind `remote` (a `grpc://` or `grpcs://` remote:
    /// its address, instance name and headers).
    pub fn new(remote: RemoteCache) -> Result<RemoteExecutor, String> {
        if remote.grpc().is_none() {
            return Err(format!(
                "{}: remote execution speaks the Remote Execution API: the URL starts with grpc:// or grpcs://",
                remote.url()
            ));
        }
        Ok(RemoteExecutor {
            remote,
            fallback: false,
            jobs: DEFAULT_REMOTE_JOBS,
        })
    }

    /// `--remote-exec-fallback`: a step runs here when the cluster cannot
    /// be reached (not when it refuses the step or the step fails).
    pub fn fallback(mut self, fallback: bool) -> RemoteExecutor {
        self.fallback = fallback;
        self
    }

    /// `--remote-jobs`: steps in flight on the cluster besides `-j`.
    pub fn jobs(mut self, jobs: usize) -> RemoteExecutor {
        self.jobs = jobs.max(1);
        self
    }

    /// Where it is, as given.
    pub fn url(&self) -> &str {
        self.remote.url()
    }

    pub(crate) fn falls_back(&self) -> bool {
        self.fallback
    }

    pub(crate) fn remote_jobs(&self) -> usize {
        self.jobs
    }

    /// Runs the action of `key` on the cluster: uploads what it lacks,
    /// executes, and keeps a success's outputs and log in `disk`.
    pub(crate) async fn execute(
        &self,
        key: &ActionKey,
        parts: &ActionParts,
        root: &Path,
        disk: &DiskCache,
        cancel: &CancellationToken,
    ) -> Result<Executed, ExecError> {
        let (grpc, headers) = self.remote.grpc().expect("checked in new");
        let conn = (grpc.conn(headers).await).map_err(ExecError::Unreachable)?;
        let upload = upload(grpc, conn, parts, root, disk, headers);
        tokio::select! {
            _ = cancel.cancelled() => return Err(ExecError::Canceled),
            sent = upload => sent.map_err(ExecError::Failed)?,
        }
        let response = follow(grpc, conn, key, headers, cancel).await?;
        let result = response.result.unwrap_or_default();
        let meta = result.execution_metadata.clone().unwrap_or_default();
        let log = if result.exit_code == 0 {
            let kept = grpc.keep_result(conn, key, &result, disk, headers).await;
            kept.map_err(ExecError::Failed)?;
            Vec::new()
        } else {
            let missing: Vec<re::Digest> = (action_result::log_blobs(&result))
                .filter(|b| !disk.blob_path(&b.hash).exists())
                .cloned()
                .collect();
            let fetched = grpc.fetch_blobs(conn, missing, disk, headers).await;
            fetched.map_err(ExecError::Failed)?;
            action_result::log_bytes(&result, disk).map_err(ExecError::Failed)?
        };
        Ok(Executed {
            exit_code: result.exit_code,
            log,
            worker: meta.worker.clone(),
            queued: between(&meta.queued_timestamp, &meta.worker_start_timestamp),
            ran: between(
                &meta.worker_start_timestamp,
                &meta.worker_completed_timestamp,
            ),
        })
    }
}

/// Sends what the server lacks of the action: its messages (kept in the
/// disk cache first, which is where blobs are read from) and input files
/// (read from the tree).
async fn upload(
    grpc: &GrpcCache,
    conn: &Conn,
    parts: &ActionParts,
    root: &Path,
    disk: &DiskCache,
    headers: Headers<'_>,
) -> Result<(), String> {
    let mut blobs = Vec::new();
    let messages = [&parts.command, &parts.action].into_iter().cloned();
    let directories = parts
        .tree
        .directories
        .iter()
        .map(|(_, bytes)| bytes.clone());
    for bytes in messages.chain(directories) {
        let blob = super::proto::digest_of_bytes(&bytes);
        disk.keep_blob_bytes(&blob.hash, &bytes)?;
        blobs.push(digest(&blob.hash, blob.size_bytes as u64));
    }
    let mut files: HashMap<&str, PathBuf> = HashMap::new();
    for file in &parts.files {
        files.insert(&file.digest.hash, root.join(&file.path));
        blobs.push(digest(&file.digest.hash, file.digest.size_bytes as u64));
    }
    let locate = |hash: &str| match files.get(hash) {
        Some(path) => path.clone(),
        None => disk.blob_path(hash),
    };
    grpc.send_missing(conn, blobs, &locate, headers).await
}

/// Executes `key`'s action and follows its operation to its end.
async fn follow(
    grpc: &GrpcCache,
    conn: &Conn,
    key: &ActionKey,
    headers: Headers<'_>,
    cancel: &CancellationToken,
) -> Result<re::ExecuteResponse, ExecError> {
    let request = re::ExecuteRequest {
        instance_name: grpc.instance.clone(),
        // Piper asked the cache before it came to this; and a server that
        // keeps failed results (BuildGrid's `cache-failed-actions`) would
        // answer a retry of a flaky step with its last failure.
        skip_cache_lookup: true,
        action_digest: Some(digest(&key.hash, key.size as u64)),
        execution_policy: None,
        results_cache_policy: None,
        digest_function: SHA256,
        inline_stdout: false,
        inline_stderr: false,
        inline_output_files: Vec::new(),
    };
    // Each execution holds a server RPC while it runs: a server full of
    // them stays busy as long as they take, so this waits its turn until
    // the step is canceled, not a fixed while.
    let mut stream = loop {
        let started = patiently(|| {
            let mut client = ExecutionClient::new(conn.channel.clone());
            let request = grpc.request(request.clone(), headers);
            async move { client.execute(request).await }
        })
        .await;
        match started {
            Ok(stream) => break stream,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                tokio::select! {
                    _ = cancel.cancelled() => return Err(ExecError::Canceled),
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
            Err(status) => return Err(refused(grpc, "Execute", &status)),
        }
    };
    // Short actions end while the stream is held; a longer one is then
    // asked after (`GetOperation`, which holds no RPC between asks): a
    // server has few concurrent RPCs, and its workers need some too.
    let mut name = String::new();
    let mut until = tokio::time::Instant::now() + STREAM_FOR;
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return Err(canceled(grpc, conn, &name, headers).await),
            next = tokio::time::timeout_at(until, stream.message()) => next,
        };
        match next {
            Ok(Ok(Some(op))) if op.done => return finished(grpc, op),
            Ok(Ok(Some(op))) => name = op.name,
            // Not even named yet: keep listening.
            Err(_) if name.is_empty() => until += STREAM_FOR,
            // Named, and still running; or the stream broke (a restart):
            // the operation goes on on the server, never run it again.
            Err(_) | Ok(Ok(None)) | Ok(Err(_)) if !name.is_empty() => break,
            Ok(Ok(None)) => {
                let message = format!("{}: the execution ended without a result", grpc.url());
                return Err(ExecError::Failed(message));
            }
            Ok(Err(status)) => return Err(refused(grpc, "Execute", &status)),
            Err(_) => unreachable!("covered above"),
        }
    }
    drop(stream);
    poll(grpc, conn, &name, headers, cancel).await
}

/// Asks after operation `name` until it is done: 20 ms after the stream
/// was let go, doubling to once a second. A server that is away or busy
/// is asked again, [`RESUMES`] times in a row at most.
async fn poll(
    grpc: &GrpcCache,
    conn: &Conn,
    name: &str,
    headers: Headers<'_>,
    cancel: &CancellationToken,
) -> Result<re::ExecuteResponse, ExecError> {
    let (mut gap, mut away) = (Duration::from_millis(20), 0);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Err(canceled(grpc, conn, name, headers).await),
            _ = tokio::time::sleep(gap) => {}
        }
        gap = (gap * 2).min(Duration::from_secs(1));
        let request = lro::GetOperationRequest {
            name: name.to_string(),
        };
        let mut client = lro::operations_client::OperationsClient::new(conn.channel.clone());
        match client.get_operation(grpc.request(request, headers)).await {
            Ok(op) if op.get_ref().done => return finished(grpc, op.into_inner()),
            Ok(_) => away = 0,
            // No Operations service (Buildbarn, NativeLink): the
            // Execution service's own way to follow an operation.
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                return wait(grpc, conn, name, headers, cancel).await;
            }
            Err(status)
                if away < RESUMES
                    && matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                    ) =>
            {
                away += 1
            }
            Err(status) => return Err(refused(grpc, "GetOperation", &status)),
        }
    }
}

/// Follows operation `name` on `WaitExecution` streams until it is done,
/// for a server that does not answer `GetOperation`. A stream that breaks
/// (a restart) is opened again after a pause, [`RESUMES`] times in a row
/// at most; the action is never executed twice.
async fn wait(
    grpc: &GrpcCache,
    conn: &Conn,
    name: &str,
    headers: Headers<'_>,
    cancel: &CancellationToken,
) -> Result<re::ExecuteResponse, ExecError> {
    let mut away = 0;
    loop {
        let request = re::WaitExecutionRequest {
            name: name.to_string(),
        };
        let mut client = ExecutionClient::new(conn.channel.clone());
        let opened = tokio::select! {
            _ = cancel.cancelled() => return Err(canceled(grpc, conn, name, headers).await),
            opened = client.wait_execution(grpc.request(request, headers)) => opened,
        };
        let broke = match opened {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    let next = tokio::select! {
                        _ = cancel.cancelled() => return Err(canceled(grpc, conn, name, headers).await),
                        next = stream.message() => next,
                    };
                    match next {
                        Ok(Some(op)) if op.done => return finished(grpc, op),
                        Ok(Some(_)) => away = 0,
                        // Ended without its result: opened again.
                        Ok(None) => break None,
                        Err(status) => break Some(status),
                    }
                }
            }
            Err(status) => Some(status),
        };
        if let Some(status) = broke {
            let passing = matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::ResourceExhausted
            );
            if !passing || away >= RESUMES {
                return Err(refused(grpc, "WaitExecution", &status));
            }
        }
        away += 1;
        tokio::select! {
            _ = cancel.cancelled() => return Err(canceled(grpc, conn, name, headers).await),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// The response of a finished operation, or why it has none.
fn finished(grpc: &GrpcCache, op: lro::Operation) -> Result<re::ExecuteResponse, ExecError> {
    let any = match op.result {
        Some(operation::Result::Response(any)) => any,
        Some(operation::Result::Error(status)) => {
            return Err(ExecError::Failed(format!(
                "{}: {}",
                grpc.url(),
                status.message
            )));
        }
        None => return Err(ExecError::Failed(format!("{}: no result", grpc.url()))),
    };
    let response = re::ExecuteResponse::decode(any.value.as_slice())
        .map_err(|e| ExecError::Failed(format!("{}: a damaged response: {e}", grpc.url())))?;
    match &response.status {
        Some(status) if status.code == tonic::Code::DeadlineExceeded as i32 => {
            Err(ExecError::TimedOut)
        }
        Some(status) if status.code != 0 => Err(ExecError::Failed(format!(
            "{}: {}",
            grpc.url(),
            status.message
        ))),
        _ => Ok(response),
    }
}

/// A call that failed: unreachable (connection refused, the server gone)
/// or refused with the server's reason.
fn refused(grpc: &GrpcCache, call: &str, status: &tonic::Status) -> ExecError {
    let message = grpc.failed(call, status);
    match status.code() {
        tonic::Code::Unavailable => ExecError::Unreachable(message),
        _ => ExecError::Failed(message),
    }
}

/// Asks the server to stop the operation `name`, best effort: the step
/// is canceled either way.
async fn canceled(grpc: &GrpcCache, conn: &Conn, name: &str, headers: Headers<'_>) -> ExecError {
    if name.is_empty() {
        return ExecError::Canceled;
    }
    let request = lro::CancelOperationRequest {
        name: name.to_string(),
    };
    let mut client = lro::operations_client::OperationsClient::new(conn.channel.clone());
    let call = client.cancel_operation(grpc.request(request, headers));
    let _ = tokio::time::timeout(Duration::from_secs(5), call).await;
    ExecError::Canceled
}

fn between(
    from: &Option<bazel_remote_apis::google::protobuf::Timestamp>,
    to: &Option<bazel_remote_apis::google::protobuf::Timestamp>,
) -> Duration {
    let nanos = |t: &bazel_remote_apis::google::protobuf::Timestamp| {
        t.seconds as i128 * 1_000_000_000 + t.nanos as i128
    };
    match (from, to) {
        (Some(from), Some(to)) => {
            let ns = (nanos(to) - nanos(from)).max(0);
            Duration::from_nanos(ns.min(u64::MAX as i128) as u64)
        }
        _ => Duration::ZERO,
    }
}
