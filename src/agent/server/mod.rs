//! piperd's HTTP API under `/api/v1` (documented in docs/daemon.md). One API
//! for the CLI, scripts and the web UI. Mutating calls need the bearer
//! token; bad requests get a JSON error naming the field and change nothing.

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::api::{AgentList, BuildRequest, ErrorBody, Health, LogChunk};

mod auth;
mod builds;
mod history;
mod logs;
mod search;
mod shared;
mod webhooks;

pub(crate) use auth::*;
pub(crate) use builds::*;
pub(crate) use history::*;
pub(crate) use logs::*;
pub(crate) use search::*;
pub(crate) use shared::*;
pub(crate) use webhooks::*;

pub use super::allow_list::RepositoryAllowList;

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
pub(crate) fn api_routes() -> (Router<ApiState>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi;
    use utoipa_axum::{router::OpenApiRouter, routes};
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(openapi))
        .routes(routes!(list_builds, submit))
        .routes(routes!(show_build))
        .routes(routes!(read_log))
        .routes(routes!(locate_in_log))
        .routes(routes!(export_log))
        .routes(routes!(search_logs))
        .routes(routes!(step_history))
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

/// Errors axum answers itself (a path that is not UTF-8, a body over the
/// limit, a wrong method) come as plain text: every error of this API is
/// JSON, `{"error": ...}`, whoever wrote it.
pub(crate) async fn errors_as_json(response: Response) -> Response {
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
pub(crate) async fn metrics(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> ApiResult<Response> {
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
