//! What every handler of the API uses: its state (the agent, the policy),
//! its errors (JSON bodies naming the field, documented statuses), the
//! body limits, and finding a build by the id in the path.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::agent::worker::Agent;

use crate::agent::allow_list::Refusal;
pub use crate::agent::allow_list::RepositoryAllowList;

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
    pub hooks: crate::agent::hooks::Hooks,
    /// Whether local paths may be built (git's `file` transport).
    pub local_repositories: bool,
    /// The names and origins browsers may use (`--public-url`).
    pub served: crate::agent::origin::Served,
}

/// An error as the client sees it: a status and a JSON body naming the
/// problem (and the field, when one is to blame). Internal errors are
/// logged, never sent.
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    pub(crate) field: Option<String>,
}

impl ApiError {
    pub(crate) fn bad(field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    pub(crate) fn not_found(what: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: what.into(),
            field: None,
        }
    }

    /// The store did not answer (disk full, database down): 503, so the
    /// client knows to try again; nothing was recorded.
    pub(crate) fn unavailable(error: impl std::fmt::Display) -> ApiError {
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

pub(crate) fn too_large() -> String {
    too_large_for(BODY_LIMIT)
}

pub(crate) fn too_large_for(limit: usize) -> String {
    format!("the request body is larger than the limit of {limit} bytes")
}

/// The request's body, or the error axum's extractor met (a body over
/// `limit` bytes says so), as this API's JSON error.
pub(crate) fn body_within(body: Result<Bytes, BytesRejection>, limit: usize) -> ApiResult<Bytes> {
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

/// How long a request waits for a database connection while every one is
/// busy (a burst of submits): the pool's own timeout is short so that the
/// agent's writes notice an outage fast, but a busy pool is not an outage.
pub(crate) const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs a store call again while the pool had no free connection, up to
/// `BUSY_WAIT`; any other error (or the same after that) is returned.
pub(crate) async fn while_busy<T, F, Fut>(mut call: F) -> Result<T, sqlx::Error>
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

/// The build, or a 404 naming it.
pub(crate) async fn find_build(state: &ApiState, id: i64) -> ApiResult<crate::agent::store::Build> {
    state
        .agent
        .store
        .get_build(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no build {id}")))
}

pub(crate) fn parse_id(text: &str) -> ApiResult<i64> {
    text.parse()
        .map_err(|_| ApiError::bad("id", format!("build id must be a number, got `{text}`")))
}

/// A `?status=` filter: a build state, or a 400 naming the field.
pub(crate) fn status_filter(
    status: Option<&str>,
) -> ApiResult<Option<crate::agent::store::BuildState>> {
    let Some(s) = status else { return Ok(None) };
    match crate::agent::store::BuildState::parse(s) {
        Some(state) => Ok(Some(state)),
        None => Err(ApiError::bad(
            "status",
            format!(
                "unknown status `{s}`; one of queued, running, success, failed, canceled, lost"
            ),
        )),
    }
}

/// A `?limit=` of a list: 1 to 500, 50 when not given; else a 400.
pub(crate) fn limit_filter(limit: Option<i64>) -> ApiResult<i64> {
    let limit = limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad("limit", "`limit` must be from 1 to 500"));
    }
    Ok(limit)
}
