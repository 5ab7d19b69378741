//! Logs over the API: raw bytes by offset, where a line is (`/log/locate`),
//! the live log (`/events`, Server-Sent Events) and the typed stream
//! (`/stream`).

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::agent::api::{ErrorBody, LogChunk, LogPosition, OutputChunk, StreamItem, StreamPage};

use super::auth::authorize_read;
use super::shared::*;

/// `GET /api/v1/builds/{id}/events?offset=N&step=NAME`: the log as
/// Server-Sent Events while the build runs. `chunk` events carry
/// `{offset, next, data}` (data base64-encoded: logs are bytes); `update`
/// events say that something else of the build was written (a step's
/// state, other output); one `end` event carries the final `{status}`,
/// then the stream closes.
#[utoipa::path(get, path = "/api/v1/builds/{id}/events", tag = "logs", params(("id" = i64, Path, description = "The build's id"), LogQuery), security(("bearer" = []), ("session" = []), ()),
    responses((status = 200, description = "Server-Sent Events: `chunk` events carry a LogChunk; `update` events say something else of the build was written; one `end` event carries `{\"status\"}`, then the stream closes",
        content_type = "text/event-stream", body = LogChunk), (status = 400, description = "A parameter is invalid; `field` names it", body = ErrorBody), (status = 401, description = "No valid token or session", body = ErrorBody), (status = 404, description = "No such build", body = ErrorBody)))]
pub(super) async fn follow_log(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    use base64::Engine;
    authorize_read(&state, &headers).await?;
    let (id, query, offset) = log_request(&id, query)?;
    let build = find_build(&state, id).await?;
    check_step(&state, &build, query.step.as_deref()).await?;
    let store = state.agent.store.clone();
    // Subscribed before the first read: no write is missed between them.
    let written = state.agent.written.subscribe();
    let stream = futures_util::stream::unfold(Some((offset, written)), move |position| {
        let store = store.clone();
        let step = query.step.clone();
        async move {
            let (offset, mut written) = position?;
            let mut woken = false;
            loop {
                let slice = match store
                    .read_log(id, step.as_deref(), offset, LOG_READ_LIMIT)
                    .await
                {
                    Ok(slice) => slice,
                    Err(e) => {
                        tracing::error!("cannot read the log of build {id}: {e}");
                        return None;
                    }
                };
                if !slice.data.is_empty() {
                    let data = base64::engine::general_purpose::STANDARD.encode(&slice.data);
                    let payload =
                        json!({ "offset": offset, "next": slice.next_offset, "data": data });
                    let event = Event::default().event("chunk").data(payload.to_string());
                    return Some((
                        Ok::<_, std::convert::Infallible>(event),
                        Some((slice.next_offset, written)),
                    ));
                }
                // Nothing new: finished builds end the stream; others wait
                // until the writing agent announces this build grew.
                match store.get_build(id).await {
                    Ok(Some(build)) if build.status.is_final() => {
                        let event = Event::default()
                            .event("end")
                            .data(json!({ "status": build.status }).to_string());
                        return Some((Ok(event), None));
                    }
                    // Something else of the build was written (a step's
                    // state, another step's output): say so, so that a
                    // page following this log needs no second stream.
                    Ok(_) if woken => {
                        let event = Event::default().event("update").data("{}");
                        return Some((Ok(event), Some((offset, written))));
                    }
                    Ok(_) => woken = wait_for_write(&mut written, id).await,
                    Err(_) => return None,
                }
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The build id, query and offset of a log read, checked.
pub(super) fn log_request(
    id: &str,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<(i64, LogQuery, i64)> {
    let id = parse_id(id)?;
    let Query(query) = query.map_err(|e| ApiError::bad("offset", e.body_text()))?;
    let offset = query.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::bad("offset", "`offset` must not be negative"));
    }
    Ok((id, query, offset))
}

/// A `?step=` that names no step of the build is a 404 naming the steps
/// it has (an empty name means the build's own lines, e.g. the checkout).
pub(super) async fn check_step(
    state: &ApiState,
    build: &crate::agent::store::Build,
    step: Option<&str>,
) -> ApiResult<()> {
    let Some(step) = step.filter(|s| !s.is_empty()) else {
        return Ok(());
    };
    let steps = state
        .agent
        .store
        .steps(build.id)
        .await
        .map_err(ApiError::internal)?;
    // Steps are known once the build's config was read.
    if steps.is_empty() && !build.status.is_final() {
        return Ok(());
    }
    if steps.iter().any(|s| s.name == step) {
        return Ok(());
    }
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    Err(ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!(
            "build {} has no step `{step}`; its steps: {}",
            build.id,
            if names.is_empty() {
                "(none)".to_string()
            } else {
                names.join(", ")
            }
        ),
        field: Some("step".into()),
    })
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LogQuery {
    /// Where to start, in bytes (default 0).
    #[param(minimum = 0)]
    pub(crate) offset: Option<i64>,
    /// One step's log instead of the whole build's.
    pub(crate) step: Option<String>,
    /// Instead of `offset`: the last `tail` bytes (where a page of a huge
    /// log starts).
    #[param(minimum = 0)]
    pub(crate) tail: Option<i64>,
    /// At most this many bytes (1 to 1 MiB, the default).
    #[param(minimum = 1, maximum = 1048576)]
    pub(crate) limit: Option<i64>,
    /// The whole log as a file (`Content-Disposition: attachment`).
    pub(crate) download: Option<bool>,
}

/// `GET /api/v1/builds/{id}/log?offset=N&step=NAME`: raw bytes from the
/// offset (or the last `tail` bytes); `x-piper-offset` says where they
/// start, `x-piper-next-offset` where to continue, and
/// `x-piper-build-status` whether more can come. `download=true` sends the
/// whole log as a file.
#[utoipa::path(get, path = "/api/v1/builds/{id}/log", tag = "logs", params(("id" = i64, Path, description = "The build's id"), LogQuery), security(("bearer" = []), ("session" = []), ()),
    responses((status = 200, description = "Raw log bytes; `x-piper-offset` is where they start, `x-piper-next-offset` where to continue, `x-piper-build-status` the build's status; with `download=true`, the whole log as a text file",
        content((Vec<u8> = "application/octet-stream"), (String = "text/plain"))), (status = 400, description = "A parameter is invalid; `field` names it", body = ErrorBody), (status = 401, description = "No valid token or session", body = ErrorBody), (status = 404, description = "No such build", body = ErrorBody)))]
pub(crate) async fn read_log(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    authorize_read(&state, &headers).await?;
    let (id, query, mut offset) = log_request(&id, query)?;
    let build = find_build(&state, id).await?;
    check_step(&state, &build, query.step.as_deref()).await?;
    let store = &state.agent.store;
    if query.download == Some(true) {
        return Ok(download_log(store.clone(), id, query.step, &build));
    }
    let limit = query.limit.unwrap_or(LOG_READ_LIMIT);
    if !(1..=LOG_READ_LIMIT).contains(&limit) {
        return Err(ApiError::bad(
            "limit",
            format!("`limit` must be from 1 to {LOG_READ_LIMIT}"),
        ));
    }
    if let Some(tail) = query.tail {
        if tail < 0 {
            return Err(ApiError::bad("tail", "`tail` must not be negative"));
        }
        let length = store
            .log_length(id, query.step.as_deref())
            .await
            .map_err(ApiError::internal)?;
        offset = (length - tail).max(0);
    }
    let mut slice = store
        .read_log(id, query.step.as_deref(), offset, limit)
        .await
        .map_err(ApiError::internal)?;
    if slice.data.len() as i64 > limit {
        slice.data.truncate(limit as usize);
        slice.next_offset = offset + limit;
    }
    let mut response = (StatusCode::OK, slice.data).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert("x-piper-offset", HeaderValue::from(offset));
    headers.insert("x-piper-next-offset", HeaderValue::from(slice.next_offset));
    headers.insert(
        "x-piper-build-status",
        HeaderValue::from_static(build.status.as_str()),
    );
    Ok(response)
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LocateQuery {
    /// One step's log instead of the whole build's.
    pub(crate) step: Option<String>,
    /// The line holding this byte.
    #[param(minimum = 0)]
    pub(crate) offset: Option<i64>,
    /// This line (from 1; past the end: the last line).
    #[param(minimum = 1)]
    pub(crate) line: Option<i64>,
    /// The first line at or after `from` holding this text (case aside).
    pub(crate) find: Option<String>,
    /// `true`: the first line at or after `from` that reads as an error
    /// (error, failed, fatal, panicked, exception…).
    pub(crate) error: Option<bool>,
    /// Where `find` or `error` starts, in bytes (default 0).
    #[param(minimum = 0)]
    pub(crate) from: Option<i64>,
}

/// Longest `find` text accepted.
pub(super) const FIND_LIMIT: usize = 1000;

/// `GET /api/v1/builds/{id}/log/locate`: the start and number of a line,
/// chosen by `offset`, `line`, `find` or `error` (exactly one), and the
/// log's size: how a view of part of a huge log moves through it.
#[utoipa::path(get, path = "/api/v1/builds/{id}/log/locate", tag = "logs", params(("id" = i64, Path, description = "The build's id"), LocateQuery), security(("bearer" = []), ("session" = []), ()),
    responses((status = 200, description = "Where the line is, and the log's size", body = LogPosition), (status = 400, description = "A parameter is invalid; `field` names it", body = ErrorBody), (status = 401, description = "No valid token or session", body = ErrorBody), (status = 404, description = "No such build", body = ErrorBody)))]
pub(crate) async fn locate_in_log(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<LocateQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<LogPosition>> {
    use crate::agent::log_lines::{LineIndex, Pattern, find};
    authorize_read(&state, &headers).await?;
    let id = parse_id(&id)?;
    let Query(query) = query.map_err(|e| ApiError::bad("query", e.body_text()))?;
    let chosen = [
        query.offset.is_some(),
        query.line.is_some(),
        query.find.is_some(),
        query.error == Some(true),
    ];
    if chosen.iter().filter(|&&c| c).count() != 1 {
        return Err(ApiError::bad(
            "query",
            "give exactly one of `offset`, `line`, `find` and `error=true`",
        ));
    }
    if query.offset.is_some_and(|o| o < 0) {
        return Err(ApiError::bad("offset", "`offset` must not be negative"));
    }
    if query.line.is_some_and(|l| l < 1) {
        return Err(ApiError::bad("line", "`line` counts from 1"));
    }
    if query.from.is_some_and(|f| f < 0) {
        return Err(ApiError::bad("from", "`from` must not be negative"));
    }
    let pattern = match &query.find {
        Some(text) if text.is_empty() => return Err(ApiError::bad("find", "`find` is empty")),
        Some(text) if text.len() > FIND_LIMIT => {
            return Err(ApiError::bad(
                "find",
                format!("`find` is longer than {FIND_LIMIT} bytes"),
            ));
        }
        Some(text) => Some(Pattern::text(text).map_err(|e| ApiError::bad("find", e.to_string()))?),
        None if query.error == Some(true) => Some(Pattern::error()),
        None => None,
    };
    let build = find_build(&state, id).await?;
    check_step(&state, &build, query.step.as_deref()).await?;
    let store = &state.agent.store;
    let step = query.step.as_deref();
    let index = LineIndex::load(store, id, step)
        .await
        .map_err(ApiError::internal)?;
    let (offset, found) = match (&pattern, query.line) {
        (Some(pattern), _) => {
            let from = query.from.unwrap_or(0).min(index.length());
            match find(store, &index, step, from, pattern)
                .await
                .map_err(ApiError::internal)?
            {
                Some(at) => (at, true),
                None => (from, false),
            }
        }
        (None, Some(line)) => (
            index
                .line_start(store, line)
                .await
                .map_err(ApiError::internal)?,
            true,
        ),
        (None, None) => (query.offset.unwrap_or(0), true),
    };
    let line = index
        .line_of(store, offset)
        .await
        .map_err(ApiError::internal)?;
    // The start of the line found (an offset may point into it).
    let offset = index
        .line_start(store, line)
        .await
        .map_err(ApiError::internal)?;
    Ok(axum::Json(LogPosition {
        offset,
        line,
        found,
        length: index.length(),
        lines: index.lines(),
    }))
}

/// The whole log (of the build or one step), streamed page by page.
pub(super) fn download_log(
    store: crate::agent::store::Store,
    id: i64,
    step: Option<String>,
    build: &crate::agent::store::Build,
) -> Response {
    let name = match &step {
        Some(step) => format!(
            "build-{id}-{}.log",
            step.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
        ),
        None => format!("build-{id}.log"),
    };
    let pages = futures_util::stream::unfold(Some(0i64), move |offset| {
        let store = store.clone();
        let step = step.clone();
        async move {
            let offset = offset?;
            match store
                .read_log(id, step.as_deref(), offset, LOG_READ_LIMIT)
                .await
            {
                Ok(slice) if slice.data.is_empty() => None,
                Ok(slice) => Some((Ok::<_, std::io::Error>(slice.data), Some(slice.next_offset))),
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
            }
        }
    });
    let mut response = axum::body::Body::from_stream(pages).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(
        "x-piper-build-status",
        HeaderValue::from_static(build.status.as_str()),
    );
    response
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StreamQuery {
    /// Items after this `seq` (the previous page's `next`; default -1).
    pub(crate) after: Option<i64>,
    /// Long poll: with nothing new yet, wait (up to 20 s) for it.
    pub(crate) wait: Option<bool>,
    /// `false`: events only, without the steps' output.
    pub(crate) output: Option<bool>,
}

/// Waits until `build`'s log or events grew, as announced by the agent that
/// writes it (here, or relayed from PostgreSQL's `NOTIFY piper_log`), or
/// 5 s passed: the fallback if an announcement was lost.
/// True when something of `build` was written (or may have been: the
/// receiver lagged); false after 5 s without.
pub(super) async fn wait_for_write(
    written: &mut tokio::sync::broadcast::Receiver<i64>,
    build: i64,
) -> bool {
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match written.recv().await {
                Ok(id) if id == build => return,
                Ok(_) => {}
                // Lagged: something may be ours; read again.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    std::future::pending::<()>().await
                }
            }
        }
    })
    .await
    .is_ok()
}

/// `GET /api/v1/builds/{id}/stream?after=SEQ`: the build's typed events in
/// order — the executor's events as `piper exec --json` prints them, and
/// its output as `{"seq", "output": {"step", "data"}}` (data base64) — from
/// after `SEQ`, at most about 1 MiB; `next` is the `after` of the next
/// page and `status` the build's. What `piper submit --follow` renders.
#[utoipa::path(get, path = "/api/v1/builds/{id}/stream", tag = "logs", params(("id" = i64, Path, description = "The build's id"), StreamQuery), security(("bearer" = []), ("session" = []), ()),
    responses((status = 200, description = "A page of the build's typed events and output", body = StreamPage), (status = 400, description = "A parameter is invalid; `field` names it", body = ErrorBody), (status = 401, description = "No valid token or session", body = ErrorBody), (status = 404, description = "No such build", body = ErrorBody)))]
pub(crate) async fn read_stream(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<StreamPage>> {
    use base64::Engine;
    authorize_read(&state, &headers).await?;
    let id = parse_id(&id)?;
    let Query(query) = query.map_err(|e| ApiError::bad("after", e.body_text()))?;
    // -1 (or none) is the start; nothing comes before it.
    let after = query.after.unwrap_or(-1);
    if after < -1 {
        return Err(ApiError::bad(
            "after",
            format!("`after` is {after}: -1 (the start) or a sequence number the stream gave"),
        ));
    }
    let with_output = query.output != Some(false);
    let mut written = state.agent.written.subscribe();
    // Read the status first: if it is final, everything is stored already.
    let mut build = find_build(&state, id).await?;
    let store = &state.agent.store;
    let mut items = store
        .read_stream(id, after, LOG_READ_LIMIT as usize, with_output)
        .await
        .map_err(ApiError::internal)?;
    if items.is_empty() && query.wait == Some(true) && !build.status.is_final() {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while items.is_empty() && !build.status.is_final() && tokio::time::Instant::now() < deadline
        {
            wait_for_write(&mut written, id).await;
            build = find_build(&state, id).await?;
            items = store
                .read_stream(id, after, LOG_READ_LIMIT as usize, with_output)
                .await
                .map_err(ApiError::internal)?;
        }
    }
    let next = items.last().map_or(after, |(seq, _)| *seq);
    let items: Vec<StreamItem> = items
        .into_iter()
        .map(|(seq, item)| match item {
            crate::agent::store::StreamItem::Event(body) => StreamItem::Event {
                seq,
                event: serde_json::from_str(&body).ok(),
            },
            crate::agent::store::StreamItem::Output { step, data } => StreamItem::Output {
                seq,
                output: OutputChunk {
                    step,
                    data: base64::engine::general_purpose::STANDARD.encode(&data),
                },
            },
        })
        .collect();
    Ok(axum::Json(StreamPage {
        items,
        next,
        status: build.status,
    }))
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ExportQuery {
    /// `ndjson` (the default): one JSON record per line. `bulk`: each
    /// record after an Elasticsearch `_bulk` action line (`{"create":{}}`),
    /// to be posted to `/INDEX/_bulk` as it is.
    pub(crate) format: Option<String>,
}

/// `GET /api/v1/builds/{id}/log/export`: the build's stored log as NDJSON,
/// one record per line (`agent/log_export.rs`): `timestamp`, `build`,
/// `number`, `repo`, `pipeline`, `step`, `stream`, `line`, `message` — what
/// Elasticsearch's `_bulk`, Loki (through Promtail or Vector) and Vector
/// ingest. Streamed: a 200 MB log is never held whole. A running build's
/// export is what is stored so far.
#[utoipa::path(get, path = "/api/v1/builds/{id}/log/export", tag = "logs", params(("id" = i64, Path, description = "The build's id"), ExportQuery), security(("bearer" = []), ("session" = []), ()),
    responses((status = 200, description = "NDJSON records, one per log line: `timestamp` (RFC 3339, UTC), `build`, `number`, `repo`, `pipeline`, `step`, `stream` (`output` or `piper`), `line` (from 1 within the step), `message`",
        content_type = "application/x-ndjson", body = String), (status = 400, description = "A parameter is invalid; `field` names it", body = ErrorBody), (status = 401, description = "No valid token or session", body = ErrorBody), (status = 404, description = "No such build", body = ErrorBody)))]
pub(crate) async fn export_log(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    use crate::agent::log_export::{ExportedBuild, Exporter, Layout};
    authorize_read(&state, &headers).await?;
    let id = parse_id(&id)?;
    let Query(query) = query.map_err(|e| ApiError::bad("format", e.body_text()))?;
    let layout = match query.format.as_deref() {
        None | Some("ndjson") => Layout::Ndjson,
        Some("bulk") => Layout::Bulk,
        Some(other) => {
            return Err(ApiError::bad(
                "format",
                format!("`format` is `ndjson` or `bulk`, not `{other}`"),
            ));
        }
    };
    let build = find_build(&state, id).await?;
    let exporter = Exporter::new(
        ExportedBuild {
            id,
            number: build.number,
            repo: build.repo.clone(),
            pipeline: build.pipeline.clone(),
            started_at: build.started_at.unwrap_or(build.requested_at),
        },
        layout,
    );
    const PAGE: i64 = 64;
    let store = state.agent.store.clone();
    let pages = futures_util::stream::unfold(Some((-1i64, exporter)), move |position| {
        let store = store.clone();
        async move {
            let (after, mut exporter) = position?;
            match store.log_records(id, after, PAGE).await {
                Ok(chunks) if chunks.is_empty() => Some((Ok(exporter.finish()), None)),
                Ok(chunks) => {
                    let mut out = Vec::new();
                    let last = chunks.last().map_or(after, |c| c.seq);
                    for c in &chunks {
                        out.extend(exporter.push(&c.step, c.annotation, c.written_at, &c.data));
                    }
                    Some((Ok::<_, std::io::Error>(out), Some((last, exporter))))
                }
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
            }
        }
    });
    let mut response = axum::body::Body::from_stream(pages).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(
        "x-piper-build-status",
        HeaderValue::from_static(build.status.as_str()),
    );
    Ok(response)
}
