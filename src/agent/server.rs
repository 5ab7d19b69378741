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
use serde::Deserialize;
use serde_json::{Value, json};

#[allow(unused_imports)] // some are named only in #[utoipa::path] attributes
use super::api::{
    AgentList, Build, BuildDetail, BuildList, BuildRequest, BuildSummary, ErrorBody, Health,
    LogChunk, LogIn, LogPosition, OutputChunk, Progress, StreamItem, StreamPage, WebhookRequest,
};
use super::store::{BuildFilter, BuildState, NewBuild};
use super::worker::Agent;

/// Largest request body accepted (bigger: 413).
pub const BODY_LIMIT: usize = 64 * 1024;
/// A handler must answer within this (streams then flow as long as needed).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
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
    /// `[[webhooks]]`: the repositories git hosts may push to, with their
    /// secrets.
    pub hooks: super::hooks::Hooks,
    /// Whether local paths may be built (git's `file` transport).
    pub local_repositories: bool,
    /// The names and origins browsers may use (`--public-url`).
    pub served: super::origin::Served,
}

use super::allow_list::Refusal;
pub use super::allow_list::RepositoryAllowList;
use super::escaped::Escaped;

/// An error as the client sees it: a status and a JSON body naming the
/// problem (and the field, when one is to blame). Internal errors are
/// logged, never sent.
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    pub(crate) field: Option<String>,
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

    pub(crate) fn internal(error: impl std::fmt::Display) -> ApiError {
        tracing::error!("internal error: {error}");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "internal error (see the agent's log)".into(),
            field: None,
        }
    }
}

/// A repository refused (`allow_list.rs`): 400 when it has no clean form,
/// 403 when it is not allowed; either names the `repo` field.
impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        match refusal {
            Refusal::Unclean(message) => ApiError::bad("repo", message),
            Refusal::NotAllowed(message) => ApiError {
                status: StatusCode::FORBIDDEN,
                message,
                field: Some("repo".into()),
            },
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

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// The API's OpenAPI document: the handlers' `#[utoipa::path]` and the
/// types of `api.rs`, collected with the routes themselves (below), so the
/// document cannot list a route that is not served or miss one that is.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "piperd",
        description = "The API of Piper's build agent. See docs/daemon.md.",
    ),
    modifiers(&Credentials),
    components(schemas(crate::event::Event, LogChunk, BuildRequest)),
    tags(
        (name = "builds", description = "Queue, list, cancel and retrigger builds"),
        (name = "logs", description = "Logs and the typed event stream of a build"),
        (name = "session", description = "The web UI's login"),
        (name = "agent", description = "Health and the agents of the cluster"),
    )
)]
struct ApiDoc;

/// The two ways to present credentials.
struct Credentials;

impl utoipa::Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API token of the cluster (`piperd token create`)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                SESSION_COOKIE,
                "The web UI's session (`POST /api/v1/session`); state-changing calls also need `Origin` to be this agent",
            ))),
        );
    }
}

/// The API's routes and their OpenAPI document, from one list.
fn api_routes() -> (Router<ApiState>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi;
    use utoipa_axum::{router::OpenApiRouter, routes};
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(openapi))
        .routes(routes!(list_builds, submit))
        .routes(routes!(show_build))
        .routes(routes!(read_log))
        .routes(routes!(locate_in_log))
        .routes(routes!(follow_log))
        .routes(routes!(read_stream))
        .routes(routes!(cancel))
        .routes(routes!(retrigger))
        .routes(routes!(webhook))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(put_bundle))
                .layer(DefaultBodyLimit::max(BUNDLE_LIMIT)),
        )
        .merge(
            OpenApiRouter::new()
                .routes(routes!(github_hook))
                .routes(routes!(gitlab_hook))
                .routes(routes!(gitea_hook))
                // A push of many commits is larger than an API request.
                .layer(DefaultBodyLimit::max(HOOK_BODY_LIMIT)),
        )
        .routes(routes!(agents))
        .routes(routes!(updates))
        .routes(routes!(log_in, log_out))
        .split_for_parts()
}

/// The OpenAPI document, as served at `/api/v1/openapi.json`.
pub fn openapi_json() -> String {
    static DOCUMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        api_routes()
            .1
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    });
    DOCUMENT.clone()
}

pub fn router(state: ApiState) -> Router {
    let (api, _) = api_routes();
    let api = api.layer(axum::middleware::map_response(errors_as_json));
    // The web UI beside the API: its pages call the handlers above.
    Router::new()
        .merge(api)
        .merge(super::ui::routes())
        .route("/metrics", axum::routing::get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_host,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(state)
}

/// A JSON 404 under `/api/`, the UI's page elsewhere.
async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        ApiError::not_found("no such API route; see /api/v1/openapi.json").into_response()
    } else {
        super::ui::not_found_page()
    }
}

fn too_large() -> String {
    too_large_for(BODY_LIMIT)
}

fn too_large_for(limit: usize) -> String {
    format!("the request body is larger than the limit of {limit} bytes")
}

/// The request's body, or the error axum's extractor met (a body over
/// `limit` bytes says so), as this API's JSON error.
fn body_within(body: Result<Bytes, BytesRejection>, limit: usize) -> ApiResult<Bytes> {
    body.map_err(|e| ApiError {
        status: e.status(),
        message: if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large_for(limit)
        } else {
            e.body_text()
        },
        field: None,
    })
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

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "agent",
    responses((status = 200, description = "This document", content_type = "application/json")))]
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

/// `GET /api/v1/builds/{id}/events?offset=N&step=NAME`: the log as
/// Server-Sent Events while the build runs. `chunk` events carry
/// `{offset, next, data}` (data base64-encoded: logs are bytes); `update`
/// events say that something else of the build was written (a step's
/// state, other output); one `end` event carries the final `{status}`,
/// then the stream closes.
#[utoipa::path(get, path = "/api/v1/builds/{id}/events", tag = "logs", params(("id" = i64, Path, description = "The build's id"), LogQuery), security(("bearer" = []), ("session" = []), ()),
    responses((status = 200, description = "Server-Sent Events: `chunk` events carry a LogChunk; `update` events say something else of the build was written; one `end` event carries `{\"status\"}`, then the stream closes",
        content_type = "text/event-stream", body = LogChunk), (status = 400, description = "A parameter is invalid; `field` names it", body = ErrorBody), (status = 401, description = "No valid token or session", body = ErrorBody), (status = 404, description = "No such build", body = ErrorBody)))]
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

/// A state-changing call needs credentials: the bearer token (one of the
/// cluster's `api_tokens`, by hash: any agent sharing the database accepts
/// it), or the web UI's session cookie from a page of this agent's origin.
pub(crate) async fn authorize(state: &ApiState, headers: &HeaderMap) -> ApiResult<()> {
    if bearer(headers).is_none()
        && let Some(session) = session_cookie(headers)
    {
        same_origin(state, headers)?;
        return check_session(state, session).await;
    }
    check_bearer(state, headers).await
}

/// Reads need the token (or a session) too, unless the agent was started
/// with `public_read = true`: builds carry their environment and logs.
pub(crate) async fn authorize_read(state: &ApiState, headers: &HeaderMap) -> ApiResult<()> {
    if state.policy.public_read {
        return Ok(());
    }
    if bearer(headers).is_none()
        && let Some(session) = session_cookie(headers)
    {
        return check_session(state, session).await;
    }
    check_bearer(state, headers).await
}

/// How long a request waits for a database connection while every one is
/// busy (a burst of submits): the pool's own timeout is short so that the
/// agent's writes notice an outage fast, but a busy pool is not an outage.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs a store call again while the pool had no free connection, up to
/// `BUSY_WAIT`; any other error (or the same after that) is returned.
async fn while_busy<T, F, Fut>(mut call: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let deadline = tokio::time::Instant::now() + BUSY_WAIT;
    loop {
        match call().await {
            Err(sqlx::Error::PoolTimedOut) if tokio::time::Instant::now() < deadline => {}
            other => return other,
        }
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: message.into(),
        field: None,
    }
}

/// `Authorization: Bearer T` (the scheme is case-insensitive, RFC 9110).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

async fn check_bearer(state: &ApiState, headers: &HeaderMap) -> ApiResult<()> {
    match bearer(headers) {
        None => Err(unauthorized(
            "this call needs `Authorization: Bearer <token>` (the token is in the agent's data directory, or from `piperd token create`)",
        )),
        // An empty token never matches; the lookup is by hash, so timing
        // says nothing about a stored token.
        Some(token) if !token.is_empty() => match while_busy(|| {
            let hash = token_hash(token);
            async move { state.agent.store.token_named(&hash).await }
        })
        .await
        .map_err(ApiError::unavailable)?
        {
            Some(_) => Ok(()),
            None => Err(unauthorized("the token is not valid")),
        },
        Some(_) => Err(unauthorized("the token is not valid")),
    }
}

/// The web UI's session cookie.
pub(crate) const SESSION_COOKIE: &str = "piper_session";
/// How long a UI session lasts.
const SESSION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

/// Whether the request carries a live UI session (the page offers actions).
pub(crate) async fn has_session(state: &ApiState, headers: &HeaderMap) -> bool {
    match session_cookie(headers) {
        Some(session) => check_session(state, session).await.is_ok(),
        None => false,
    }
}

async fn check_session(state: &ApiState, session: &str) -> ApiResult<()> {
    match state
        .agent
        .store
        .session_token(&token_hash(session))
        .await
        .map_err(ApiError::unavailable)?
    {
        Some(_) => Ok(()),
        None => Err(unauthorized(
            "the session expired or was ended; log in again with the agent's token",
        )),
    }
}

/// A cookie is sent by the browser whoever asks, so a state-changing call
/// that relies on it must come from a page of this origin: `Origin` must
/// name the host the request was sent to (SameSite=Strict is the other
/// half of the defence).
fn same_origin(state: &ApiState, headers: &HeaderMap) -> ApiResult<()> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    match origin {
        Some(origin) if state.policy.served.origin_allowed(origin, host) => Ok(()),
        _ => Err(ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "refused: a call with the session cookie must come from this agent's own pages (Origin {} is not one of its origins; see --public-url)",
                origin.unwrap_or("missing")
            ),
            field: None,
        }),
    }
}

/// Refuses a browser's request whose `Host` names a host the agent does
/// not serve (DNS rebinding: `origin.rs`), with 421.
async fn check_host(
    State(state): State<ApiState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if state.policy.served.host_allowed(request.headers()) {
        return next.run(request).await;
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    ApiError {
        status: StatusCode::MISDIRECTED_REQUEST,
        message: format!(
            "this agent does not serve the host `{}` to browsers: reach it by its address, or give the name as --public-url",
            Escaped(&host)
        ),
        field: None,
    }
    .into_response()
}

/// `POST /api/v1/session` `{token}`: checks the token and answers with an
/// HttpOnly, SameSite=Strict session cookie for the web UI.
#[utoipa::path(post, path = "/api/v1/session", tag = "session", request_body = LogIn,
    responses((status = 204, description = "Logged in: `Set-Cookie: piper_session=...; HttpOnly; SameSite=Strict`"),
        (status = 400, description = "The body is not `{\"token\": \"...\"}`", body = ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB", body = ErrorBody),
        (status = 401, description = "The token is not valid", body = ErrorBody), (status = 403, description = "A session cookie without this origin, or a repository off the allow-list", body = ErrorBody)))]
async fn log_in(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    // Refuse a login posted from another site (login CSRF).
    if headers.contains_key(header::ORIGIN) {
        same_origin(&state, &headers)?;
    }
    // Over the limit: 413, as every other body (it was a 400).
    let body = body_within(body, BODY_LIMIT)?;
    let LogIn { token } = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad("token", format!("expected {{\"token\": \"...\"}}: {e}")))?;
    let token = token.trim();
    let name = if token.is_empty() {
        None
    } else {
        state
            .agent
            .store
            .token_named(&token_hash(token))
            .await
            .map_err(ApiError::unavailable)?
    };
    let Some(name) = name else {
        return Err(ApiError {
            field: Some("token".into()),
            ..unauthorized("the token is not valid")
        });
    };
    let session = super::random_hex(32).map_err(ApiError::internal)?;
    state
        .agent
        .store
        .create_session(
            &token_hash(&session),
            &name,
            SESSION_LIFETIME.as_millis() as i64,
        )
        .await
        .map_err(ApiError::unavailable)?;
    let cookie = format!(
        "{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_LIFETIME.as_secs()
    );
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(ApiError::internal)?,
    );
    Ok(response)
}

/// `DELETE /api/v1/session`: ends the session and clears the cookie.
#[utoipa::path(delete, path = "/api/v1/session", tag = "session",
    responses((status = 204, description = "Logged out; the cookie is cleared"), (status = 403, description = "A session cookie without this origin, or a repository off the allow-list", body = ErrorBody)))]
async fn log_out(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(session) = session_cookie(&headers) {
        same_origin(&state, &headers)?;
        state
            .agent
            .store
            .delete_session(&token_hash(session))
            .await
            .map_err(ApiError::unavailable)?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        ))
        .map_err(ApiError::internal)?,
    );
    Ok(response)
}

/// `GET /api/v1/updates`: Server-Sent Events, one `build` event
/// `{"id": N}` whenever build N was queued or its state or log changed, on
/// any agent sharing the database. What live lists follow; they read the
/// build again to see what changed.
#[utoipa::path(get, path = "/api/v1/updates", tag = "builds", security(("bearer" = []), ("session" = []), ()),
    responses((status = 200, description = "Server-Sent Events: a `build` event `{\"id\": N}` whenever build N was queued or its state or log changed; `lagged` when some were missed",
        content_type = "text/event-stream", body = String), (status = 401, description = "No valid token or session", body = ErrorBody)))]
async fn updates(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult<Response> {
    authorize_read(&state, &headers).await?;
    let written = state.agent.written.subscribe();
    let stream = futures_util::stream::unfold(written, |mut written| async move {
        let event = match written.recv().await {
            Ok(id) => Event::default()
                .event("build")
                .data(json!({ "id": id }).to_string()),
            // Fell behind: tell the follower to read everything again.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                Event::default().event("lagged").data("{}")
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(event), written))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[utoipa::path(get, path = "/api/v1/health", tag = "agent",
    responses((status = 200, description = "The agent answers and reaches its database", body = Health),
              (status = 503, description = "The agent cannot reach its database (error says why)", body = Health)))]
async fn health(State(state): State<ApiState>) -> Response {
    // A database that does not answer (a partition) would hang the check:
    // it gets what a load balancer's probe allows, 2 s.
    let ping =
        tokio::time::timeout(std::time::Duration::from_secs(2), state.agent.store.ping()).await;
    let error = match ping {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("the database does not answer: {e}")),
        Err(_) => Some("the database did not answer within 2s".to_string()),
    };
    let code = if error.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = Health {
        status: if error.is_some() { "unavailable" } else { "ok" }.into(),
        error,
        version: env!("CARGO_PKG_VERSION").into(),
        agent: state.agent.name.clone(),
        database: state.agent.store.backend_name().into(),
    };
    (code, axum::Json(body)).into_response()
}

/// `GET /metrics`, for Prometheus (outside `/api/v1`, where scrapers look).
/// Read access, as the builds it counts: the token, unless `public_read`.
async fn metrics(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult<Response> {
    authorize_read(&state, &headers).await?;
    let text = (state.agent.metrics)
        .render(&state.agent.store, state.agent.written.receiver_count())
        .await
        .map_err(ApiError::unavailable)?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            super::metrics::CONTENT_TYPE,
        )],
        text,
    )
        .into_response())
}

/// `GET /api/v1/agents`: the agents sharing this database.
#[utoipa::path(get, path = "/api/v1/agents", tag = "agent", security(("bearer" = []), ("session" = []), ()),
    responses((status = 200, description = "The agents sharing this database", body = AgentList), (status = 401, description = "No valid token or session", body = ErrorBody)))]
pub(crate) async fn agents(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> ApiResult<axum::Json<AgentList>> {
    authorize_read(&state, &headers).await?;
    let agents = state
        .agent
        .store
        .agents()
        .await
        .map_err(ApiError::internal)?;
    Ok(axum::Json(AgentList { agents }))
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
/// The largest git bundle taken.
pub const BUNDLE_LIMIT: usize = 128 * 1024 * 1024;

/// `POST /api/v1/bundles`: commits sent as a git bundle, kept in the
/// database by digest, so any agent of the cluster can build them
/// (`piper submit` to an agent on another machine sends its commit so).
#[utoipa::path(post, path = "/api/v1/bundles", tag = "builds",
    request_body(content = Vec<u8>, description = "A git bundle (`git bundle create`), at most 128 MiB", content_type = "application/octet-stream"),
    security(("bearer" = []), ("session" = [])),
    responses((status = 201, description = "Kept (or kept already): build it as `repo`", body = super::api::BundleStored),
        (status = 400, description = "Not a git bundle", body = ErrorBody), (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "A session cookie without this origin", body = ErrorBody), (status = 413, description = "The body is over 128 MiB", body = ErrorBody),
        (status = 503, description = "The database did not accept it; nothing was recorded", body = ErrorBody)))]
async fn put_bundle(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers).await?;
    let body = body_within(body, BUNDLE_LIMIT)?;
    if !(body.starts_with(b"# v2 git bundle\n") || body.starts_with(b"# v3 git bundle\n")) {
        return Err(ApiError::bad(
            "body",
            "not a git bundle (`git bundle create` writes one: it starts with `# v2 git bundle`)",
        ));
    }
    let digest = blake3::hash(&body).to_hex().to_string();
    while_busy(|| state.agent.store.put_bundle(&digest, &body))
        .await
        .map_err(ApiError::unavailable)?;
    let stored = super::api::BundleStored {
        repo: format!("{}{digest}", super::allow_list::BUNDLE_PREFIX),
    };
    Ok((StatusCode::CREATED, axum::Json(stored)).into_response())
}

#[utoipa::path(post, path = "/api/v1/builds", tag = "builds", request_body = BuildRequest,
    params(("Idempotency-Key" = Option<String>, Header, max_length = 200, pattern = r"^[\t\x20-\x7e]*[\x21-\x7e][\t\x20-\x7e]*$",
        description = "The same key within a day returns the first answer (`idempotent-replayed: true`) instead of queuing again")),
    security(("bearer" = []), ("session" = [])),
    responses((status = 201, description = "Queued (committed)", body = Build), (status = 400, description = "A parameter is invalid; `field` names it", body = ErrorBody), (status = 401, description = "No valid token or session", body = ErrorBody), (status = 403, description = "A session cookie without this origin, or a repository off the allow-list", body = ErrorBody),
        (status = 413, description = "The body is over 64 KiB", body = ErrorBody), (status = 503, description = "The database did not accept the change; nothing was recorded", body = ErrorBody)))]
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
#[utoipa::path(post, path = "/api/v1/webhook", tag = "builds", params(WebhookQuery), request_body = WebhookRequest, security(("bearer" = [])),
    responses((status = 201, description = "Queued; a redelivery (same delivery id header) answers the first build", body = Build), (status = 400, description = "A parameter is invalid; `field` names it", body = ErrorBody), (status = 401, description = "No valid token or session", body = ErrorBody), (status = 403, description = "A session cookie without this origin, or a repository off the allow-list", body = ErrorBody), (status = 503, description = "The database did not accept the change; nothing was recorded", body = ErrorBody)))]
async fn webhook(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<WebhookQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers).await?;
    let Query(query) = query.map_err(|e| ApiError::bad("pipeline", e.body_text()))?;
    if query.pipeline.as_ref().is_some_and(|p| p.trim().is_empty()) {
        return Err(ApiError::bad("pipeline", "`pipeline` is empty"));
    }
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

/// The largest git host delivery taken (GitHub caps its own at 25 MB,
/// but a push lists at most 20 commits).
pub const HOOK_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// `POST /api/v1/hooks/github`: GitHub's push (and tag push) webhook.
#[utoipa::path(post, path = "/api/v1/hooks/github", tag = "builds",
    params(WebhookQuery,
        ("X-GitHub-Event" = String, Header, description = "The event: `push` builds, `ping` and others are acknowledged"),
        ("X-GitHub-Delivery" = String, Header, description = "The delivery's id"),
        ("X-Hub-Signature-256" = String, Header, description = "`sha256=` HMAC of the body with the repository's secret")),
    request_body(content = Object, description = "GitHub's `push` payload, signed in `X-Hub-Signature-256` with the repository's secret from piperd.toml", content_type = "application/json"),
    responses((status = 201, description = "Queued; a redelivery (same `X-GitHub-Delivery`) answers the first build", body = Build), (status = 202, description = "Verified, builds nothing (a ping, another event, a deleted branch)", body = super::api::HookIgnored), (status = 400, description = "Not a push payload; `field` names what is wrong", body = ErrorBody), (status = 401, description = "The signature is missing or does not match", body = ErrorBody), (status = 403, description = "The repository has no `[[webhooks]]` entry, or is off the allow-list", body = ErrorBody), (status = 413, description = "The body is larger than 2 MiB", body = ErrorBody), (status = 503, description = "The database did not accept the change; nothing was recorded", body = ErrorBody)))]
async fn github_hook(
    state: State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<WebhookQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    host_hook(super::hooks::Host::GitHub, state, headers, query, body).await
}

/// `POST /api/v1/hooks/gitlab`: GitLab's push and tag push webhook.
#[utoipa::path(post, path = "/api/v1/hooks/gitlab", tag = "builds",
    params(WebhookQuery,
        ("X-Gitlab-Event" = String, Header, description = "The event: `Push Hook` and `Tag Push Hook` build"),
        ("X-Gitlab-Token" = String, Header, description = "The repository's secret token")),
    request_body(content = Object, description = "GitLab's `Push Hook` or `Tag Push Hook` payload, with the repository's secret from piperd.toml in `X-Gitlab-Token`", content_type = "application/json"),
    responses((status = 201, description = "Queued; a redelivery (same `X-Gitlab-Event-UUID`) answers the first build", body = Build), (status = 202, description = "Verified, builds nothing (another event, a deleted branch)", body = super::api::HookIgnored), (status = 400, description = "Not a push payload; `field` names what is wrong", body = ErrorBody), (status = 401, description = "The token is missing or wrong", body = ErrorBody), (status = 403, description = "The repository has no `[[webhooks]]` entry, or is off the allow-list", body = ErrorBody), (status = 413, description = "The body is larger than 2 MiB", body = ErrorBody), (status = 503, description = "The database did not accept the change; nothing was recorded", body = ErrorBody)))]
async fn gitlab_hook(
    state: State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<WebhookQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    host_hook(super::hooks::Host::GitLab, state, headers, query, body).await
}

/// `POST /api/v1/hooks/gitea`: Gitea's and Forgejo's push webhook.
#[utoipa::path(post, path = "/api/v1/hooks/gitea", tag = "builds",
    params(WebhookQuery,
        ("X-Gitea-Event" = String, Header, description = "The event (Forgejo also sends `X-Forgejo-Event`): `push` builds"),
        ("X-Gitea-Delivery" = String, Header, description = "The delivery's id (or `X-Forgejo-Delivery`)"),
        ("X-Gitea-Signature" = String, Header, description = "HMAC-SHA256 of the body with the repository's secret, hex (or `X-Forgejo-Signature`)")),
    request_body(content = Object, description = "Gitea's or Forgejo's `push` payload, signed in `X-Gitea-Signature` (or `X-Forgejo-Signature`) with the repository's secret from piperd.toml", content_type = "application/json"),
    responses((status = 201, description = "Queued; a redelivery (same `X-Gitea-Delivery`) answers the first build", body = Build), (status = 202, description = "Verified, builds nothing (another event, a deleted branch)", body = super::api::HookIgnored), (status = 400, description = "Not a push payload; `field` names what is wrong", body = ErrorBody), (status = 401, description = "The signature is missing or does not match", body = ErrorBody), (status = 403, description = "The repository has no `[[webhooks]]` entry, or is off the allow-list", body = ErrorBody), (status = 413, description = "The body is larger than 2 MiB", body = ErrorBody), (status = 503, description = "The database did not accept the change; nothing was recorded", body = ErrorBody)))]
async fn gitea_hook(
    state: State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<WebhookQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    host_hook(super::hooks::Host::Gitea, state, headers, query, body).await
}

/// A git host's delivery: verified with the repository's secret (no API
/// token), then queued as `queue` queues any build (allow-list included).
async fn host_hook(
    host: super::hooks::Host,
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<WebhookQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    use super::hooks::Delivery;
    let Query(query) = query.map_err(|e| ApiError::bad("pipeline", e.body_text()))?;
    if query.pipeline.as_ref().is_some_and(|p| p.trim().is_empty()) {
        return Err(ApiError::bad("pipeline", "`pipeline` is empty"));
    }
    let body = body_within(body, HOOK_BODY_LIMIT)?;
    let push = match super::hooks::receive(&state.policy.hooks, host, &headers, &body) {
        Ok(Delivery::Push(push)) => push,
        Ok(Delivery::Ignored(why)) => {
            let body = axum::Json(super::api::HookIgnored { ignored: why });
            return Ok((StatusCode::ACCEPTED, body).into_response());
        }
        Err(refusal) => {
            tracing::warn!(
                host = host.name(),
                status = refusal.status,
                "webhook refused: {}",
                refusal.message
            );
            return Err(ApiError {
                status: StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST),
                message: refusal.message,
                field: refusal.field,
            });
        }
    };
    let new = NewBuild {
        repo: push.repo,
        pipeline: query
            .pipeline
            .or(push.pipeline)
            .unwrap_or_else(|| "ci".into()),
        env: super::hooks::push_env(&push.git_ref),
        git_ref: push.git_ref,
        sha: Some(push.sha),
        secret_env: BTreeMap::new(),
        requested_by: push
            .pusher
            .unwrap_or_else(|| format!("{} webhook", host.name())),
        parent_id: None,
        args: Vec::new(),
    };
    // Once per body, whatever delivery id comes with it: a signed body
    // replayed with a new (or no) id answers the first build instead of
    // starting another. (A host's redelivery sends the same body.)
    let key = format!("{}:body:{}", host.name(), blake3::hash(&body).to_hex());
    queue(&state, &new, Some(&key)).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct WebhookQuery {
    /// The pipeline to run (default `ci`).
    #[param(min_length = 1, pattern = r"\S")]
    pipeline: Option<String>,
}

async fn queue(state: &ApiState, new: &NewBuild, key: Option<&str>) -> ApiResult<Response> {
    // With an allow-list, the repository is matched — and then built — in
    // its normal form (allow_list.rs): `..` never escapes a pattern.
    super::allow_list::check_transport(&new.repo, state.policy.local_repositories)?;
    let admitted;
    let new = match &state.policy.repositories {
        None => new,
        Some(allowed) => {
            let repo = allowed.admit(&new.repo)?;
            admitted = NewBuild {
                repo,
                ..new.clone()
            };
            &admitted
        }
    };
    // 201 only for a row that committed: a store error is a 5xx.
    let store = &state.agent.store;
    let (build, replayed) =
        while_busy(|| store.create_build_once(new, BuildState::Queued, None, key))
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
    tracing::info!(
        build = build.id,
        repo = %Escaped(&build.repo),
        pipeline = %Escaped(&build.pipeline),
        requested_by = %Escaped(&build.requested_by),
        "build queued"
    );
    state.agent.wake.notify_one();
    let _ = state.agent.written.send(build.id);
    Ok((StatusCode::CREATED, axum::Json(build)).into_response())
}

/// A build request from a JSON body; `pipeline` comes from the body unless
/// given (the webhook's query).
fn parse_request(
    body: Result<Bytes, BytesRejection>,
    pipeline: Option<String>,
) -> ApiResult<NewBuild> {
    let body = body_within(body, BODY_LIMIT)?;
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
        "args",
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
    // The webhook's query names the pipeline (a body's is then checked
    // but not used).
    let pipeline = match pipeline {
        Some(p) => {
            string("pipeline", false)?;
            p
        }
        None => string("pipeline", true)?.unwrap_or_default(),
    };
    let git_ref = string("ref", false)?.unwrap_or_else(|| "HEAD".into());
    // Both end up on git's command line: never let one read as an option,
    // nor hide one behind a space (` --upload-pack=x`).
    for (field, value) in [("repo", &repo), ("ref", &git_ref)] {
        if value.starts_with('-') {
            return Err(ApiError::bad(
                field,
                format!("`{field}` must not start with `-`"),
            ));
        }
        if value.trim() != value || value.chars().any(char::is_control) {
            return Err(ApiError::bad(
                field,
                format!("`{field}` has spaces around it or a control character"),
            ));
        }
    }
    // No git ref or revision holds a space (git check-ref-format).
    if git_ref.chars().any(char::is_whitespace) {
        return Err(ApiError::bad(
            "ref",
            format!("`{git_ref}` is not a git ref or revision: it holds a space"),
        ));
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
    let args = match fields.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) if s.contains('\0') => Err(ApiError::bad(
                    &format!("args[{i}]"),
                    format!("`args[{i}]` contains a NUL byte"),
                )),
                Value::String(s) => Ok(s.clone()),
                _ => Err(ApiError::bad(
                    &format!("args[{i}]"),
                    format!("`args[{i}]` must be a string"),
                )),
            })
            .collect::<ApiResult<Vec<String>>>()?,
        Some(_) => return Err(ApiError::bad("args", "`args` must be a list of strings")),
    };
    Ok(NewBuild {
        repo,
        git_ref,
        pipeline,
        env,
        secret_env,
        requested_by,
        parent_id: None,
        sha: None,
        args,
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
#[utoipa::path(post, path = "/api/v1/builds/{id}/retrigger", tag = "builds", params(("id" = i64, Path, description = "The build's id")), security(("bearer" = []), ("session" = [])),
    responses((status = 201, description = "A new build of the same commit, linked to this one", body = Build), (status = 400, description = "A parameter is invalid; `field` names it", body = ErrorBody), (status = 401, description = "No valid token or session", body = ErrorBody), (status = 409, description = "The build had secret_env, whose values are not kept once it ended: submit it again", body = ErrorBody), (status = 403, description = "A session cookie without this origin, or a repository off the allow-list", body = ErrorBody), (status = 404, description = "No such build", body = ErrorBody), (status = 503, description = "The database did not accept the change; nothing was recorded", body = ErrorBody)))]
async fn retrigger(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers).await?;
    let id = parse_id(&id)?;
    let old = find_build(&state, id).await?;
    // An ended build keeps its secrets' names, not their values (the
    // store blanks them): they cannot be given again from here.
    if !old.secret_env.is_empty() && old.secret_env.values().all(String::is_empty) {
        let names: Vec<&str> = old.secret_env.keys().map(String::as_str).collect();
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            message: format!(
                "build {id} had secret_env ({}), whose values are not kept once a build ends: submit it again with them",
                names.join(", ")
            ),
            field: None,
        });
    }
    let new = NewBuild {
        // The same commit, still recorded as the branch or tag it was.
        git_ref: old.git_ref,
        sha: old.sha,
        repo: old.repo,
        pipeline: old.pipeline,
        env: old.env,
        secret_env: old.secret_env,
        requested_by: format!("retrigger of build {id}"),
        parent_id: Some(id),
        args: old.args,
    };
    let key = header_key(&headers, "idempotency-key", &format!("retrigger-{id}"))?;
    queue(&state, &new, key.as_deref()).await
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only builds of this repository (as submitted).
    pub(crate) repo: Option<String>,
    /// Only builds in this state.
    #[param(value_type = Option<BuildState>)]
    pub(crate) status: Option<String>,
    /// Only builds of this pipeline.
    pub(crate) pipeline: Option<String>,
    /// Only builds run by the agent of this name.
    pub(crate) agent: Option<String>,
    /// Only builds that build triggered or retriggered.
    pub(crate) parent: Option<i64>,
    /// Only builds with a smaller id: the previous page's `next_before`.
    pub(crate) before: Option<i64>,
    /// At most this many builds (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub(crate) limit: Option<i64>,
}

/// `GET /api/v1/builds?repo&status&pipeline&agent&parent&before&limit`, newest
/// first; each build with its `progress` (steps done / planned).
#[utoipa::path(get, path = "/api/v1/builds", tag = "builds", params(ListQuery), security(("bearer" = []), ("session" = []), ()),
    responses((status = 200, description = "Builds, newest first", body = BuildList), (status = 400, description = "A parameter is invalid; `field` names it", body = ErrorBody), (status = 401, description = "No valid token or session", body = ErrorBody)))]
pub(crate) async fn list_builds(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<BuildList>> {
    authorize_read(&state, &headers).await?;
    let Query(query) = query.map_err(|e| ApiError::bad("query", e.body_text()))?;
    let status = match query.status.as_deref() {
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
        repo: query.repo.filter(|r| !r.is_empty()),
        status,
        pipeline: query.pipeline.filter(|p| !p.is_empty()),
        agent: query.agent.filter(|a| !a.is_empty()),
        parent: query.parent,
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
    let builds = summaries(&state, builds).await?;
    Ok(axum::Json(BuildList {
        builds,
        next_before: next,
    }))
}

/// `GET /api/v1/builds/{id}`: the build and its steps.
#[utoipa::path(get, path = "/api/v1/builds/{id}", tag = "builds", params(("id" = i64, Path, description = "The build's id")), security(("bearer" = []), ("session" = []), ()),
    responses((status = 200, description = "The build and its steps", body = BuildDetail), (status = 400, description = "A parameter is invalid; `field` names it", body = ErrorBody), (status = 401, description = "No valid token or session", body = ErrorBody), (status = 404, description = "No such build", body = ErrorBody)))]
pub(crate) async fn show_build(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<BuildDetail>> {
    authorize_read(&state, &headers).await?;
    let id = parse_id(&id)?;
    let build = find_build(&state, id).await?;
    let steps = state
        .agent
        .store
        .steps(id)
        .await
        .map_err(ApiError::internal)?;
    let summary = summaries(&state, vec![build])
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found(format!("no build {id}")))?;
    Ok(axum::Json(BuildDetail { summary, steps }))
}

/// Builds as lists show them: each with its `progress` (steps done of
/// planned, one query for all), and a queued build that no live agent can
/// run with `waiting_for`: the labels it requires, `gpu=1 os=linux` (it
/// waits without holding up other builds, and runs when such an agent joins).
async fn summaries(
    state: &ApiState,
    builds: Vec<super::store::Build>,
) -> ApiResult<Vec<BuildSummary>> {
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
    let ids: Vec<i64> = builds.iter().map(|b| b.id).collect();
    let progress = state
        .agent
        .store
        .step_progress(&ids)
        .await
        .map_err(ApiError::internal)?;
    Ok(builds
        .into_iter()
        .map(|build| {
            let (done, total) = progress.get(&build.id).copied().unwrap_or((0, 0));
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
            BuildSummary {
                build,
                progress: Progress { done, total },
                waiting_for: waiting,
            }
        })
        .collect::<Vec<_>>())
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
const FIND_LIMIT: usize = 1000;

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
    use super::log_lines::{LineIndex, Pattern, find};
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
fn download_log(
    store: super::store::Store,
    id: i64,
    step: Option<String>,
    build: &super::store::Build,
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
async fn wait_for_write(written: &mut tokio::sync::broadcast::Receiver<i64>, build: i64) -> bool {
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
            super::store::StreamItem::Event(body) => StreamItem::Event {
                seq,
                event: serde_json::from_str(&body).ok(),
            },
            super::store::StreamItem::Output { step, data } => StreamItem::Output {
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

/// `POST /api/v1/builds/{id}/cancel`.
#[utoipa::path(post, path = "/api/v1/builds/{id}/cancel", tag = "builds", params(("id" = i64, Path, description = "The build's id")), security(("bearer" = []), ("session" = [])),
    responses((status = 200, description = "Canceled: the build's final state", body = Build),
        (status = 202, description = "Asked: its agent ends it within the grace period", body = Build),
        (status = 400, description = "A parameter is invalid; `field` names it", body = ErrorBody), (status = 401, description = "No valid token or session", body = ErrorBody), (status = 403, description = "A session cookie without this origin, or a repository off the allow-list", body = ErrorBody), (status = 404, description = "No such build", body = ErrorBody), (status = 409, description = "The build already ended", body = ErrorBody), (status = 503, description = "The database did not accept the change; nothing was recorded", body = ErrorBody)))]
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
