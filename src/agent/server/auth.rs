//! Who is calling: the bearer token (by hash), the web UI's session cookie
//! (checked with the Origin), the `Host` a browser used; `/session` logs
//! in and out.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[allow(unused_imports)] // named only in #[utoipa::path] attributes: ErrorBody
use crate::agent::api::{ErrorBody, LogIn};

use super::shared::*;
use crate::agent::escaped::Escaped;

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

pub(super) fn unauthorized(message: &str) -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: message.into(),
        field: None,
    }
}

/// `Authorization: Bearer T` (the scheme is case-insensitive, RFC 9110).
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

pub(super) async fn check_bearer(state: &ApiState, headers: &HeaderMap) -> ApiResult<()> {
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
pub(super) const SESSION_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);

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

pub(super) async fn check_session(state: &ApiState, session: &str) -> ApiResult<()> {
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
pub(super) fn same_origin(state: &ApiState, headers: &HeaderMap) -> ApiResult<()> {
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
pub(crate) async fn check_host(
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
pub(super) async fn log_in(
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
    let session = crate::agent::random::random_hex(32).map_err(ApiError::internal)?;
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
pub(super) async fn log_out(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> ApiResult<Response> {
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
