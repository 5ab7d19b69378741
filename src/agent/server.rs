//! piperd's HTTP API under `/api/v1` (documented in docs/daemon.md). One API
//! for the CLI, scripts and the web UI. Mutating calls need the bearer
//! token; bad requests get a JSON error naming the field and change nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use serde::Deserialize;
use serde_json::{Value, json};

use super::store::{BuildFilter, BuildState, NewBuild};
use super::worker::Agent;

/// Largest request body accepted (bigger: 413).
pub const BODY_LIMIT: usize = 64 * 1024;
/// A client must send a request's headers within this, or be disconnected.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// A handler must answer within this (streams then flow as long as needed).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most bytes one log read returns; ask again from `x-piper-next-offset`.
pub const LOG_READ_LIMIT: i64 = 1024 * 1024;

#[derive(Clone)]
pub struct ApiState {
    pub agent: Arc<Agent>,
    pub policy: Arc<Policy>,
}

/// How a token is kept in the database (`api_tokens.hash`).
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// Who may read what, and which repositories may be built.
#[derive(Default)]
pub struct Policy {
    /// Reads (builds, logs, agents) without the token: `public_read = true`.
    pub public_read: bool,
    /// `repositories = [patterns]`: when set, only matching repositories
    /// are built; anything else is refused with 403 before git runs.
    pub repositories: Option<RepositoryAllowList>,
}

/// Glob patterns over repository URLs or paths (`*` stays within one
/// `/`-separated part, `**` crosses them).
pub struct RepositoryAllowList {
    patterns: Vec<String>,
    set: globset::GlobSet,
}

impl RepositoryAllowList {
    pub fn new(patterns: &[String]) -> Result<RepositoryAllowList, String> {
        let mut set = globset::GlobSetBuilder::new();
        for pattern in patterns {
            let glob = globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("`{pattern}`: {}", e.kind()))?;
            set.add(glob);
        }
        Ok(RepositoryAllowList {
            patterns: patterns.to_vec(),
            set: set.build().map_err(|e| e.to_string())?,
        })
    }

    pub fn allows(&self, repo: &str) -> bool {
        self.set.is_match(repo)
    }
}

/// An error as the client sees it: a status and a JSON body naming the
/// problem (and the field, when one is to blame). Internal errors are
/// logged, never sent.
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn bad(field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    fn not_found(what: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: what.into(),
            field: None,
        }
    }

    /// The store did not answer (disk full, database down): 503, so the
    /// client knows to try again; nothing was recorded.
    fn unavailable(error: impl std::fmt::Display) -> ApiError {
        tracing::error!("store error: {error}");
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message:
                "the agent's database did not accept the change; nothing was recorded, try again"
                    .into(),
            field: None,
        }
    }

    fn internal(error: impl std::fmt::Display) -> ApiError {
        tracing::error!("internal error: {error}");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "internal error (see the agent's log)".into(),
            field: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(field) = self.field {
            body["field"] = json!(field);
        }
        (self.status, axum::Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Every route of the API, once: it builds the router (below) and is
/// checked against the OpenAPI document (`openapi.json`) by the tests.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/health"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/builds"),
    ("POST", "/api/v1/builds"),
    ("GET", "/api/v1/builds/{id}"),
    ("GET", "/api/v1/builds/{id}/log"),
    ("GET", "/api/v1/builds/{id}/events"),
    ("GET", "/api/v1/builds/{id}/stream"),
    ("POST", "/api/v1/builds/{id}/cancel"),
    ("POST", "/api/v1/builds/{id}/retrigger"),
    ("POST", "/api/v1/webhook"),
    ("GET", "/api/v1/agents"),
];

/// The OpenAPI 3 document of this API, served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

pub fn router(state: ApiState) -> Router {
    let mut by_path: std::collections::BTreeMap<&str, MethodRouter<ApiState>> =
        std::collections::BTreeMap::new();
    for &(method, path) in ROUTES {
        let routes = by_path.remove(path).unwrap_or_default();
        let routes = match (method, path) {
            ("GET", "/api/v1/health") => routes.get(health),
            ("GET", "/api/v1/openapi.json") => routes.get(openapi),
            ("GET", "/api/v1/builds") => routes.get(list_builds),
            ("POST", "/api/v1/builds") => routes.post(submit),
            ("GET", "/api/v1/builds/{id}") => routes.get(show_build),
            ("GET", "/api/v1/builds/{id}/log") => routes.get(read_log),
            ("GET", "/api/v1/builds/{id}/events") => routes.get(follow_log),
            ("GET", "/api/v1/builds/{id}/stream") => routes.get(read_stream),
            ("POST", "/api/v1/builds/{id}/cancel") => routes.post(cancel),
            ("POST", "/api/v1/builds/{id}/retrigger") => routes.post(retrigger),
            ("POST", "/api/v1/webhook") => routes.post(webhook),
            ("GET", "/api/v1/agents") => routes.get(agents),
            other => unreachable!("route {other:?} in ROUTES has no handler"),
        };
        by_path.insert(path, routes);
    }
    let mut router = Router::new();
    for (path, routes) in by_path {
        router = router.route(path, routes);
    }
    router
        .fallback(|| async { ApiError::not_found("no such API route; see /api/v1/openapi.json") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(axum::middleware::map_response(errors_as_json))
        .with_state(state)
}

/// Serves `router` until the task is dropped. Not `axum::serve`: it has no
/// header-read timeout, so a client that sends half a request keeps its
/// connection (and a task) forever. Here each connection gets one, and at
/// most `MAX_CONNECTIONS` are served at once.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower_service::Service;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait instead of spinning.
                tracing::warn!("cannot accept a connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let router = router.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let mut router = router.clone();
                async move { router.call(request).await }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn too_large() -> String {
    format!("the request body is larger than the limit of {BODY_LIMIT} bytes")
}

/// Errors axum answers itself (a path that is not UTF-8, a body over the
/// limit, a wrong method) come as plain text: every error of this API is
/// JSON, `{"error": ...}`, whoever wrote it.
async fn errors_as_json(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        too_large()
    } else {
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body).trim().to_string();
        if text.is_empty() {
            status.canonical_reason().unwrap_or("error").to_string()
        } else {
            text
        }
    };
    (status, axum::Json(json!({ "error": message }))).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `GET /api/v1/builds/{id}/events?offset=N&step=NAME`: the log as
/// Server-Sent Events while the build runs. `chunk` events carry
/// `{offset, next, data}` (data base64-encoded: logs are bytes); one `end`
/// event carries the final `{status}`, then the stream closes.
async fn follow_log(
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
                    Ok(_) => wait_for_write(&mut written, id).await,
                    Err(_) => return None,
                }
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Reads need the token too, unless the agent was started with
/// `public_read = true`: builds carry their environment and logs.
async fn authorize_read(state: &ApiState, headers: &HeaderMap) -> ApiResult<()> {
    if state.policy.public_read {
        return Ok(());
    }
    authorize(state, headers).await
}

/// The bearer token must be one of the cluster's (`api_tokens`, by hash):
/// any agent sharing the database accepts it.
async fn authorize(state: &ApiState, headers: &HeaderMap) -> ApiResult<()> {
    // The scheme is case-insensitive (RFC 9110): `bearer` works too.
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let unauthorized = |message: &str| ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: message.into(),
        field: None,
    };
    match given {
        None => Err(unauthorized(
            "this call needs `Authorization: Bearer <token>` (the token is in the agent's data directory, or from `piperd token create`)",
        )),
        // An empty token never matches; the lookup is by hash, so timing
        // says nothing about a stored token.
        Some(token) if !token.is_empty() => {
            match state
                .agent
                .store
                .token_named(&token_hash(token))
                .await
                .map_err(ApiError::unavailable)?
            {
                Some(_) => Ok(()),
                None => Err(unauthorized("the token is not valid")),
            }
        }
        Some(_) => Err(unauthorized("the token is not valid")),
    }
}

async fn health(State(state): State<ApiState>) -> axum::Json<Value> {
    axum::Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "agent": state.agent.name,
        "database": state.agent.store.backend_name(),
    }))
}

/// `GET /api/v1/agents`: the agents sharing this database.
async fn agents(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult<axum::Json<Value>> {
    authorize_read(&state, &headers).await?;
    let agents = state
        .agent
        .store
        .agents()
        .await
        .map_err(ApiError::internal)?;
    Ok(axum::Json(json!({ "agents": agents })))
}

/// The build, or a 404 naming it.
async fn find_build(state: &ApiState, id: i64) -> ApiResult<super::store::Build> {
    state
        .agent
        .store
        .get_build(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no build {id}")))
}

fn parse_id(text: &str) -> ApiResult<i64> {
    text.parse()
        .map_err(|_| ApiError::bad("id", format!("build id must be a number, got `{text}`")))
}

/// `POST /api/v1/builds`: `{repo, pipeline, ref?, env?, requested_by?}`.
async fn submit(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers).await?;
    let new = parse_request(body, None)?;
    let key = header_key(&headers, "idempotency-key", "submit")?;
    queue(&state, &new, key.as_deref()).await
}

/// An idempotency key from a header (`Idempotency-Key`, a git host's
/// delivery id), scoped by what it is for; at most 200 characters.
fn header_key(headers: &HeaderMap, name: &str, scope: &str) -> ApiResult<Option<String>> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .ok_or_else(|| {
            ApiError::bad(
                name,
                format!("`{name}` must be 1 to 200 visible ASCII characters"),
            )
        })?;
    Ok(Some(format!("{scope}:{value}")))
}

/// `POST /api/v1/webhook?pipeline=NAME`: what a git host calls on a push,
/// `{repo, ref}` (the pipeline defaults to `ci`).
async fn webhook(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<WebhookQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers).await?;
    let Query(query) = query.map_err(|e| ApiError::bad("pipeline", e.body_text()))?;
    let mut new = parse_request(body, Some(query.pipeline.unwrap_or_else(|| "ci".into())))?;
    if new.requested_by == "api" {
        new.requested_by = "webhook".into();
    }
    // A redelivered push (same delivery id) queues nothing new.
    let mut key = None;
    for delivery in [
        "x-github-delivery",
        "x-gitea-delivery",
        "x-gitlab-event-uuid",
        "x-piper-delivery",
    ] {
        if let Some(k) = header_key(&headers, delivery, "webhook")? {
            key = Some(k);
            break;
        }
    }
    queue(&state, &new, key.as_deref()).await
}

#[derive(Deserialize)]
struct WebhookQuery {
    pipeline: Option<String>,
}

async fn queue(state: &ApiState, new: &NewBuild, key: Option<&str>) -> ApiResult<Response> {
    if let Some(allowed) = &state.policy.repositories
        && !allowed.allows(&new.repo)
    {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "repository `{}` is not on this agent's allow-list (`repositories` in piperd.toml: {})",
                new.repo,
                allowed.patterns.join(", ")
            ),
            field: Some("repo".into()),
        });
    }
    // 201 only for a row that committed: a store error is a 5xx.
    let (build, replayed) = state
        .agent
        .store
        .create_build_once(new, BuildState::Queued, None, key)
        .await
        .map_err(ApiError::unavailable)?;
    if replayed {
        // The same answer as the first time, marked as a replay.
        let mut response = (StatusCode::CREATED, axum::Json(build)).into_response();
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        return Ok(response);
    }
    tracing::info!(build = build.id, repo = %build.repo, pipeline = %build.pipeline, requested_by = %build.requested_by, "build queued");
    state.agent.wake.notify_one();
    Ok((StatusCode::CREATED, axum::Json(build)).into_response())
}

/// A build request from a JSON body; `pipeline` comes from the body unless
/// given (the webhook's query).
fn parse_request(
    body: Result<Bytes, BytesRejection>,
    pipeline: Option<String>,
) -> ApiResult<NewBuild> {
    let body = body.map_err(|e| ApiError {
        status: e.status(),
        message: if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            e.body_text()
        },
        field: None,
    })?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad("body", format!("malformed JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::bad("body", "expected a JSON object"));
    };
    const KNOWN: &[&str] = &[
        "repo",
        "pipeline",
        "ref",
        "env",
        "secret_env",
        "requested_by",
    ];
    if let Some(unknown) = fields.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::bad(
            unknown,
            format!("unknown field `{unknown}`; known: {}", KNOWN.join(", ")),
        ));
    }
    let string = |name: &str, required: bool| -> ApiResult<Option<String>> {
        match fields.get(name) {
            None | Some(Value::Null) if required => {
                Err(ApiError::bad(name, format!("missing field `{name}`")))
            }
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => {
                Err(ApiError::bad(name, format!("`{name}` is empty")))
            }
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::bad(name, format!("`{name}` must be a string"))),
        }
    };
    let repo = string("repo", true)?.unwrap_or_default();
    let pipeline = match pipeline {
        Some(p) => p,
        None => string("pipeline", true)?.unwrap_or_default(),
    };
    let git_ref = string("ref", false)?.unwrap_or_else(|| "HEAD".into());
    // Both end up on git's command line: never let one read as an option.
    for (field, value) in [("repo", &repo), ("ref", &git_ref)] {
        if value.starts_with('-') {
            return Err(ApiError::bad(
                field,
                format!("`{field}` must not start with `-`"),
            ));
        }
    }
    let requested_by = string("requested_by", false)?.unwrap_or_else(|| "api".into());
    let env = variables(&fields, "env")?;
    let secret_env = variables(&fields, "secret_env")?;
    if let Some(both) = env.keys().find(|k| secret_env.contains_key(*k)) {
        return Err(ApiError::bad(
            &format!("secret_env.{both}"),
            format!("`{both}` is in both `env` and `secret_env`"),
        ));
    }
    Ok(NewBuild {
        repo,
        git_ref,
        pipeline,
        env,
        secret_env,
        requested_by,
        parent_id: None,
    })
}

/// `env` or `secret_env`: an object of strings whose names an environment
/// can hold (not empty, no `=`, no NUL) and whose values have no NUL.
fn variables(
    fields: &serde_json::Map<String, Value>,
    name: &str,
) -> ApiResult<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    match fields.get(name) {
        None | Some(Value::Null) => {}
        Some(Value::Object(given)) => {
            for (k, v) in given {
                let field = format!("{name}.{k}");
                if k.is_empty() || k.contains(['=', '\0']) {
                    return Err(ApiError::bad(
                        &field,
                        format!(
                            "`{k}` is not a variable name: it must be non-empty, without `=` or NUL"
                        ),
                    ));
                }
                let Value::String(v) = v else {
                    return Err(ApiError::bad(&field, format!("`{field}` must be a string")));
                };
                if v.contains('\0') {
                    return Err(ApiError::bad(
                        &field,
                        format!("`{field}` contains a NUL byte"),
                    ));
                }
                vars.insert(k.clone(), v.clone());
            }
        }
        Some(_) => {
            return Err(ApiError::bad(
                name,
                format!("`{name}` must be an object of strings"),
            ));
        }
    }
    Ok(vars)
}

/// `POST /api/v1/builds/{id}/retrigger`: a new build of the same commit
/// (the same ref when the old one never resolved), linked to the old one.
async fn retrigger(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers).await?;
    let id = parse_id(&id)?;
    let old = find_build(&state, id).await?;
    let new = NewBuild {
        git_ref: old.sha.clone().unwrap_or(old.git_ref.clone()),
        repo: old.repo,
        pipeline: old.pipeline,
        env: old.env,
        secret_env: old.secret_env,
        requested_by: format!("retrigger of build {id}"),
        parent_id: Some(id),
    };
    let key = header_key(&headers, "idempotency-key", &format!("retrigger-{id}"))?;
    queue(&state, &new, key.as_deref()).await
}

#[derive(Deserialize)]
struct ListQuery {
    repo: Option<String>,
    status: Option<String>,
    pipeline: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

/// `GET /api/v1/builds?repo&status&pipeline&before&limit`, newest first.
async fn list_builds(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<Value>> {
    authorize_read(&state, &headers).await?;
    let Query(query) = query.map_err(|e| ApiError::bad("query", e.body_text()))?;
    let status = match &query.status {
        None => None,
        Some(s) => Some(BuildState::parse(s).ok_or_else(|| {
            ApiError::bad(
                "status",
                format!(
                    "unknown status `{s}`; one of queued, running, success, failed, canceled, lost"
                ),
            )
        })?),
    };
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad("limit", "`limit` must be from 1 to 500"));
    }
    let filter = BuildFilter {
        repo: query.repo,
        status,
        pipeline: query.pipeline,
        before: query.before,
        limit,
    };
    let builds = state
        .agent
        .store
        .list_builds(&filter)
        .await
        .map_err(ApiError::internal)?;
    let next = if builds.len() as i64 == limit {
        builds.last().map(|b| b.id)
    } else {
        None
    };
    let builds = with_waiting(&state, builds).await?;
    Ok(axum::Json(json!({ "builds": builds, "next_before": next })))
}

/// `GET /api/v1/builds/{id}`: the build and its steps.
async fn show_build(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    authorize_read(&state, &headers).await?;
    let id = parse_id(&id)?;
    let build = find_build(&state, id).await?;
    let steps = state
        .agent
        .store
        .steps(id)
        .await
        .map_err(ApiError::internal)?;
    let mut value = with_waiting(&state, vec![build])
        .await?
        .pop()
        .unwrap_or_default();
    value["steps"] = serde_json::to_value(steps).map_err(ApiError::internal)?;
    Ok(axum::Json(value))
}

/// Builds as JSON; a queued build that no live agent can run gets
/// `waiting_for`: the labels it requires, `gpu=1 os=linux` (it waits
/// without holding up other builds, and runs when such an agent joins).
async fn with_waiting(state: &ApiState, builds: Vec<super::store::Build>) -> ApiResult<Vec<Value>> {
    let needs_agents = builds.iter().any(|b| {
        b.status == BuildState::Queued && b.requires.as_ref().is_some_and(|r| !r.is_empty())
    });
    let agents = if needs_agents {
        state
            .agent
            .store
            .agents()
            .await
            .map_err(ApiError::internal)?
    } else {
        Vec::new()
    };
    builds
        .into_iter()
        .map(|build| {
            let waiting = match (&build.status, &build.requires) {
                (BuildState::Queued, Some(requires)) if !requires.is_empty() => {
                    let met = agents.iter().any(|a| {
                        a.online && requires.iter().all(|(k, v)| a.labels.get(k) == Some(v))
                    });
                    (!met).then(|| {
                        requires
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                }
                _ => None,
            };
            let mut value = serde_json::to_value(build).map_err(ApiError::internal)?;
            if let Some(waiting) = waiting {
                value["waiting_for"] = json!(waiting);
            }
            Ok(value)
        })
        .collect()
}

/// The build id, query and offset of a log read, checked.
fn log_request(
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
async fn check_step(
    state: &ApiState,
    build: &super::store::Build,
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

#[derive(Deserialize)]
struct LogQuery {
    offset: Option<i64>,
    step: Option<String>,
}

/// `GET /api/v1/builds/{id}/log?offset=N&step=NAME`: raw bytes from the
/// offset; `x-piper-next-offset` says where to continue, and
/// `x-piper-build-status` whether more can come.
async fn read_log(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    authorize_read(&state, &headers).await?;
    let (id, query, offset) = log_request(&id, query)?;
    let build = find_build(&state, id).await?;
    check_step(&state, &build, query.step.as_deref()).await?;
    let slice = state
        .agent
        .store
        .read_log(id, query.step.as_deref(), offset, LOG_READ_LIMIT)
        .await
        .map_err(ApiError::internal)?;
    let mut response = (StatusCode::OK, slice.data).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert("x-piper-next-offset", HeaderValue::from(slice.next_offset));
    headers.insert(
        "x-piper-build-status",
        HeaderValue::from_static(build.status.as_str()),
    );
    Ok(response)
}

#[derive(Deserialize)]
struct StreamQuery {
    after: Option<i64>,
    /// Long poll: with nothing new yet, wait (up to 20 s) for it.
    wait: Option<bool>,
}

/// Waits until `build`'s log or events grew, as announced by the agent that
/// writes it (here, or relayed from PostgreSQL's `NOTIFY piper_log`), or
/// 5 s passed: the fallback if an announcement was lost.
async fn wait_for_write(written: &mut tokio::sync::broadcast::Receiver<i64>, build: i64) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
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
    .await;
}

/// `GET /api/v1/builds/{id}/stream?after=SEQ`: the build's typed events in
/// order — the executor's events as `piper exec --json` prints them, and
/// its output as `{"seq", "output": {"step", "data"}}` (data base64) — from
/// after `SEQ`, at most about 1 MiB; `next` is the `after` of the next
/// page and `status` the build's. What `piper submit --follow` renders.
async fn read_stream(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<Value>> {
    use base64::Engine;
    authorize_read(&state, &headers).await?;
    let id = parse_id(&id)?;
    let Query(query) = query.map_err(|e| ApiError::bad("after", e.body_text()))?;
    let after = query.after.unwrap_or(-1);
    let mut written = state.agent.written.subscribe();
    // Read the status first: if it is final, everything is stored already.
    let mut build = find_build(&state, id).await?;
    let store = &state.agent.store;
    let mut items = store
        .read_stream(id, after, LOG_READ_LIMIT as usize)
        .await
        .map_err(ApiError::internal)?;
    if items.is_empty() && query.wait == Some(true) && !build.status.is_final() {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while items.is_empty() && !build.status.is_final() && tokio::time::Instant::now() < deadline
        {
            wait_for_write(&mut written, id).await;
            build = find_build(&state, id).await?;
            items = store
                .read_stream(id, after, LOG_READ_LIMIT as usize)
                .await
                .map_err(ApiError::internal)?;
        }
    }
    let next = items.last().map_or(after, |(seq, _)| *seq);
    let items: Vec<Value> = items
        .into_iter()
        .map(|(seq, item)| match item {
            super::store::StreamItem::Event(body) => {
                json!({ "seq": seq, "event": serde_json::from_str::<Value>(&body).unwrap_or(Value::Null) })
            }
            super::store::StreamItem::Output { step, data } => json!({
                "seq": seq,
                "output": { "step": step, "data": base64::engine::general_purpose::STANDARD.encode(&data) },
            }),
        })
        .collect();
    Ok(axum::Json(
        json!({ "items": items, "next": next, "status": build.status }),
    ))
}

/// `POST /api/v1/builds/{id}/cancel`.
async fn cancel(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers).await?;
    let id = parse_id(&id)?;
    let store = &state.agent.store;
    let build = find_build(&state, id).await?;
    if build.status == BuildState::Queued
        && store
            .cancel_queued(id)
            .await
            .map_err(ApiError::unavailable)?
    {
        let build = find_build(&state, id).await?;
        return Ok((StatusCode::OK, axum::Json(build)).into_response());
    }
    // Claimed meanwhile, or already over: look again.
    let build = find_build(&state, id).await?;
    if build.status.is_final() {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            message: format!("build {id} already ended: {}", build.status.as_str()),
            field: None,
        });
    }
    // Here: end it now. Elsewhere: ask its agent through the database
    // (notified at once on PostgreSQL, else at its next renewal); if that
    // agent is gone, the rescue ends it `canceled`, never re-queued.
    if !state.agent.cancel(id) {
        let asked = store
            .request_cancel(id)
            .await
            .map_err(ApiError::unavailable)?;
        if !asked {
            let build = find_build(&state, id).await?;
            return Err(ApiError {
                status: StatusCode::CONFLICT,
                message: format!("build {id} already ended: {}", build.status.as_str()),
                field: None,
            });
        }
    }
    // Its processes are ended within the grace period; answer with the
    // final state when it comes soon, else 202 and the state now.
    for _ in 0..100 {
        let build = find_build(&state, id).await?;
        if build.status.is_final() {
            return Ok((StatusCode::OK, axum::Json(build)).into_response());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let build = find_build(&state, id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(build)).into_response())
}
