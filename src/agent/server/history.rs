//! Step history over the API (`GET /api/v1/history`): each step of a
//! repository's pipeline over its last builds — durations, percentiles,
//! trend, failures — and its flaky steps (`agent/history.rs`).

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde::Deserialize;

use crate::agent::api::{ErrorBody, History};

use super::auth::authorize_read;
use super::shared::*;

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryQuery {
    /// The repository, as submitted.
    pub(crate) repo: Option<String>,
    /// Only this pipeline's builds (default: all of the repository's).
    pub(crate) pipeline: Option<String>,
    /// How many of the last finished builds to read (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) builds: Option<i64>,
}

/// `GET /api/v1/history?repo=R&pipeline=P&builds=N`: each step over the
/// last `builds` finished builds (oldest first): its runs, p50 and p95 of
/// how long it ran, the trend between the older and the newer half, its
/// failures and their rate; and the steps that failed and passed on the
/// same commit (flaky), latest first.
#[utoipa::path(get, path = "/api/v1/history", tag = "builds", params(HistoryQuery), security(("bearer" = []), ("session" = []), ()),
    responses((status = 200, description = "Each step over the last builds, and the flaky steps", body = History), (status = 400, description = "A parameter is invalid; `field` names it", body = ErrorBody), (status = 401, description = "No valid token or session", body = ErrorBody)))]
pub(crate) async fn step_history(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<History>> {
    authorize_read(&state, &headers).await?;
    let Query(query) = query.map_err(|e| ApiError::bad("query", e.body_text()))?;
    Ok(axum::Json(history(&state, query).await?))
}

/// The history `query` asks for, or a 400 naming what is wrong.
pub(crate) async fn history(state: &ApiState, query: HistoryQuery) -> ApiResult<History> {
    let Some(repo) = query.repo.filter(|r| !r.is_empty()) else {
        return Err(ApiError::bad(
            "repo",
            "`repo` names the repository, as submitted",
        ));
    };
    let builds = query.builds.unwrap_or(50);
    if !(1..=1000).contains(&builds) {
        return Err(ApiError::bad("builds", "`builds` must be from 1 to 1000"));
    }
    let pipeline = query.pipeline.filter(|p| !p.is_empty());
    let runs = (state.agent.store)
        .step_runs(&repo, pipeline.as_deref(), builds)
        .await
        .map_err(ApiError::internal)?;
    Ok(crate::agent::history::history(
        &repo,
        pipeline.as_deref(),
        &runs,
    ))
}
