//! Builds over the API: submitted (JSON, a webhook, a git host's push),
//! listed, shown, retriggered and cancelled; bundles of commits sent.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use crate::agent::api::{
    Build, BuildDetail, BuildList, BuildRequest, BuildSummary, ErrorBody, Progress,
};
use crate::agent::store::{BuildFilter, BuildState, NewBuild};

use super::auth::{authorize, authorize_read};
use super::shared::*;
use crate::agent::escaped::Escaped;

/// `POST /api/v1/builds`: `{repo, pipeline, ref?, env?, requested_by?}`.
/// The largest git bundle taken.
pub const BUNDLE_LIMIT: usize = 128 * 1024 * 1024;

/// `POST /api/v1/bundles`: commits sent as a git bundle, kept in the
/// database by digest, so any agent of the cluster can build them
/// (`piper submit` to an agent on another machine sends its commit so).
#[utoipa::path(post, path = "/api/v1/bundles", tag = "builds",
    request_body(content = Vec<u8>, description = "A git bundle (`git bundle create`), at most 128 MiB", content_type = "application/octet-stream"),
    security(("bearer" = []), ("session" = [])),
    responses((status = 201, description = "Kept (or kept already): build it as `repo`", body = crate::agent::api::BundleStored),
        (status = 400, description = "Not a git bundle", body = ErrorBody), (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "A session cookie without this origin", body = ErrorBody), (status = 413, description = "The body is over 128 MiB", body = ErrorBody),
        (status = 503, description = "The database did not accept it; nothing was recorded", body = ErrorBody)))]
pub(super) async fn put_bundle(
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
    let stored = crate::agent::api::BundleStored {
        repo: format!("{}{digest}", crate::agent::allow_list::BUNDLE_PREFIX),
    };
    Ok((StatusCode::CREATED, axum::Json(stored)).into_response())
}

#[utoipa::path(post, path = "/api/v1/builds", tag = "builds", request_body = BuildRequest,
    params(("Idempotency-Key" = Option<String>, Header, max_length = 200, pattern = r"^[\t\x20-\x7e]*[\x21-\x7e][\t\x20-\x7e]*$",
        description = "The same key within a day returns the first answer (`idempotent-replayed: true`) instead of queuing again")),
    security(("bearer" = []), ("session" = [])),
    responses((status = 201, description = "Queued (committed)", body = Build), (status = 400, description = "A parameter is invalid; `field` names it", body = ErrorBody), (status = 401, description = "No valid token or session", body = ErrorBody), (status = 403, description = "A session cookie without this origin, or a repository off the allow-list", body = ErrorBody),
        (status = 413, description = "The body is over 64 KiB", body = ErrorBody), (status = 503, description = "The database did not accept the change; nothing was recorded", body = ErrorBody)))]
pub(super) async fn submit(
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
pub(super) fn header_key(
    headers: &HeaderMap,
    name: &str,
    scope: &str,
) -> ApiResult<Option<String>> {
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

pub(super) async fn queue(
    state: &ApiState,
    new: &NewBuild,
    key: Option<&str>,
) -> ApiResult<Response> {
    // With an allow-list, the repository is matched — and then built — in
    // its normal form (allow_list.rs): `..` never escapes a pattern.
    crate::agent::allow_list::check_transport(&new.repo, state.policy.local_repositories)?;
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
pub(super) fn parse_request(
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
pub(super) fn variables(
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
pub(super) async fn retrigger(
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
    let status = status_filter(query.status.as_deref())?;
    let limit = limit_filter(query.limit)?;
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
pub(super) async fn summaries(
    state: &ApiState,
    builds: Vec<crate::agent::store::Build>,
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

/// `POST /api/v1/builds/{id}/cancel`.
#[utoipa::path(post, path = "/api/v1/builds/{id}/cancel", tag = "builds", params(("id" = i64, Path, description = "The build's id")), security(("bearer" = []), ("session" = [])),
    responses((status = 200, description = "Canceled: the build's final state", body = Build),
        (status = 202, description = "Asked: its agent ends it within the grace period", body = Build),
        (status = 400, description = "A parameter is invalid; `field` names it", body = ErrorBody), (status = 401, description = "No valid token or session", body = ErrorBody), (status = 403, description = "A session cookie without this origin, or a repository off the allow-list", body = ErrorBody), (status = 404, description = "No such build", body = ErrorBody), (status = 409, description = "The build already ended", body = ErrorBody), (status = 503, description = "The database did not accept the change; nothing was recorded", body = ErrorBody)))]
pub(super) async fn cancel(
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
