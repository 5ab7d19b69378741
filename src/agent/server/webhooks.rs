//! Builds asked for by a webhook: the generic `/webhook` (with a token), and
//! GitHub's, GitLab's and Gitea's push hooks (their signatures checked by
//! `hooks.rs`), each queued as a submitted build is.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::agent::api::{Build, ErrorBody, WebhookRequest};
use crate::agent::store::NewBuild;

use super::auth::authorize;
use super::builds::{header_key, parse_request, queue};
use super::shared::*;

/// `POST /api/v1/webhook?pipeline=NAME`: what a git host calls on a push,
/// `{repo, ref}` (the pipeline defaults to `ci`).
#[utoipa::path(post, path = "/api/v1/webhook", tag = "builds", params(WebhookQuery), request_body = WebhookRequest, security(("bearer" = [])),
    responses((status = 201, description = "Queued; a redelivery (same delivery id header) answers the first build", body = Build), (status = 400, description = "A parameter is invalid; `field` names it", body = ErrorBody), (status = 401, description = "No valid token or session", body = ErrorBody), (status = 403, description = "A session cookie without this origin, or a repository off the allow-list", body = ErrorBody), (status = 503, description = "The database did not accept the change; nothing was recorded", body = ErrorBody)))]
pub(super) async fn webhook(
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
    responses((status = 201, description = "Queued; a redelivery (same `X-GitHub-Delivery`) answers the first build", body = Build), (status = 202, description = "Verified, builds nothing (a ping, another event, a deleted branch)", body = crate::agent::api::HookIgnored), (status = 400, description = "Not a push payload; `field` names what is wrong", body = ErrorBody), (status = 401, description = "The signature is missing or does not match", body = ErrorBody), (status = 403, description = "The repository has no `[[webhooks]]` entry, or is off the allow-list", body = ErrorBody), (status = 413, description = "The body is larger than 2 MiB", body = ErrorBody), (status = 503, description = "The database did not accept the change; nothing was recorded", body = ErrorBody)))]
pub(super) async fn github_hook(
    state: State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<WebhookQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    host_hook(
        crate::agent::hooks::Host::GitHub,
        state,
        headers,
        query,
        body,
    )
    .await
}

/// `POST /api/v1/hooks/gitlab`: GitLab's push and tag push webhook.
#[utoipa::path(post, path = "/api/v1/hooks/gitlab", tag = "builds",
    params(WebhookQuery,
        ("X-Gitlab-Event" = String, Header, description = "The event: `Push Hook` and `Tag Push Hook` build"),
        ("X-Gitlab-Token" = String, Header, description = "The repository's secret token")),
    request_body(content = Object, description = "GitLab's `Push Hook` or `Tag Push Hook` payload, with the repository's secret from piperd.toml in `X-Gitlab-Token`", content_type = "application/json"),
    responses((status = 201, description = "Queued; a redelivery (same `X-Gitlab-Event-UUID`) answers the first build", body = Build), (status = 202, description = "Verified, builds nothing (another event, a deleted branch)", body = crate::agent::api::HookIgnored), (status = 400, description = "Not a push payload; `field` names what is wrong", body = ErrorBody), (status = 401, description = "The token is missing or wrong", body = ErrorBody), (status = 403, description = "The repository has no `[[webhooks]]` entry, or is off the allow-list", body = ErrorBody), (status = 413, description = "The body is larger than 2 MiB", body = ErrorBody), (status = 503, description = "The database did not accept the change; nothing was recorded", body = ErrorBody)))]
pub(super) async fn gitlab_hook(
    state: State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<WebhookQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    host_hook(
        crate::agent::hooks::Host::GitLab,
        state,
        headers,
        query,
        body,
    )
    .await
}

/// `POST /api/v1/hooks/gitea`: Gitea's and Forgejo's push webhook.
#[utoipa::path(post, path = "/api/v1/hooks/gitea", tag = "builds",
    params(WebhookQuery,
        ("X-Gitea-Event" = String, Header, description = "The event (Forgejo also sends `X-Forgejo-Event`): `push` builds"),
        ("X-Gitea-Delivery" = String, Header, description = "The delivery's id (or `X-Forgejo-Delivery`)"),
        ("X-Gitea-Signature" = String, Header, description = "HMAC-SHA256 of the body with the repository's secret, hex (or `X-Forgejo-Signature`)")),
    request_body(content = Object, description = "Gitea's or Forgejo's `push` payload, signed in `X-Gitea-Signature` (or `X-Forgejo-Signature`) with the repository's secret from piperd.toml", content_type = "application/json"),
    responses((status = 201, description = "Queued; a redelivery (same `X-Gitea-Delivery`) answers the first build", body = Build), (status = 202, description = "Verified, builds nothing (another event, a deleted branch)", body = crate::agent::api::HookIgnored), (status = 400, description = "Not a push payload; `field` names what is wrong", body = ErrorBody), (status = 401, description = "The signature is missing or does not match", body = ErrorBody), (status = 403, description = "The repository has no `[[webhooks]]` entry, or is off the allow-list", body = ErrorBody), (status = 413, description = "The body is larger than 2 MiB", body = ErrorBody), (status = 503, description = "The database did not accept the change; nothing was recorded", body = ErrorBody)))]
pub(super) async fn gitea_hook(
    state: State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<WebhookQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    host_hook(
        crate::agent::hooks::Host::Gitea,
        state,
        headers,
        query,
        body,
    )
    .await
}

/// A git host's delivery: verified with the repository's secret (no API
/// token), then queued as `queue` queues any build (allow-list included).
pub(super) async fn host_hook(
    host: crate::agent::hooks::Host,
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<WebhookQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    use crate::agent::hooks::Delivery;
    let Query(query) = query.map_err(|e| ApiError::bad("pipeline", e.body_text()))?;
    if query.pipeline.as_ref().is_some_and(|p| p.trim().is_empty()) {
        return Err(ApiError::bad("pipeline", "`pipeline` is empty"));
    }
    let body = body_within(body, HOOK_BODY_LIMIT)?;
    let push = match crate::agent::hooks::receive(&state.policy.hooks, host, &headers, &body) {
        Ok(Delivery::Push(push)) => push,
        Ok(Delivery::Ignored(why)) => {
            let body = axum::Json(crate::agent::api::HookIgnored { ignored: why });
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
        env: crate::agent::hooks::push_env(&push.git_ref),
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
pub(super) struct WebhookQuery {
    /// The pipeline to run (default `ci`).
    #[param(min_length = 1, pattern = r"\S")]
    pipeline: Option<String>,
}
