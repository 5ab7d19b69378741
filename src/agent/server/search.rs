//! Search over every stored log (`GET /api/v1/search`): the lines of
//! finished builds that hold a text, filtered by repository, pipeline,
//! step, status, branch and time (`store/search.rs`). A build's lines are
//! searchable once its agent has indexed them, moments after it ends.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde::Deserialize;

use crate::agent::api::{ErrorBody, SearchHit, SearchResults};
use crate::agent::store::{BuildState, SearchFilter};

use super::auth::authorize_read;
use super::shared::*;

/// The shortest text searched for: the index is of trigrams.
const TEXT_MIN: usize = 3;

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SearchQuery {
    /// The text to find, anywhere in a line, case aside (3 characters or
    /// more): `E0308`, `src/main.rs`, `undefined reference`.
    pub(crate) q: Option<String>,
    /// Only builds of this repository (as submitted).
    pub(crate) repo: Option<String>,
    /// Only builds of this pipeline.
    pub(crate) pipeline: Option<String>,
    /// Only this step's lines.
    pub(crate) step: Option<String>,
    /// Only builds that ended so.
    #[param(value_type = Option<BuildState>)]
    pub(crate) status: Option<String>,
    /// Only builds of this ref, as submitted (`main`).
    pub(crate) branch: Option<String>,
    /// Only builds requested at or after this (Unix ms).
    pub(crate) since: Option<i64>,
    /// Only builds requested before this (Unix ms).
    pub(crate) until: Option<i64>,
    /// At most this many lines (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub(crate) limit: Option<i64>,
}

/// `GET /api/v1/search?q=TEXT&repo&pipeline&step&status&branch&since&until&limit`:
/// lines of stored logs holding `q`, newest build first, then by step and
/// line; each with where the text is in it and a link to the line.
#[utoipa::path(get, path = "/api/v1/search", tag = "logs", params(SearchQuery), security(("bearer" = []), ("session" = []), ()),
    responses((status = 200, description = "Matching lines, newest build first", body = SearchResults), (status = 400, description = "A parameter is invalid; `field` names it", body = ErrorBody), (status = 401, description = "No valid token or session", body = ErrorBody)))]
pub(crate) async fn search_logs(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<SearchResults>> {
    authorize_read(&state, &headers).await?;
    let Query(query) = query.map_err(|e| ApiError::bad("query", e.body_text()))?;
    let filter = filter(query)?;
    Ok(axum::Json(search(&state, &filter).await?))
}

/// The query as a store filter, or a 400 naming what is wrong.
pub(crate) fn filter(query: SearchQuery) -> ApiResult<SearchFilter> {
    let text = query.q.unwrap_or_default();
    if text.trim().chars().count() < TEXT_MIN {
        return Err(ApiError::bad(
            "q",
            format!("`q` is the text to find: {TEXT_MIN} characters or more"),
        ));
    }
    let status = status_filter(query.status.as_deref())?;
    let limit = limit_filter(query.limit)?;
    Ok(SearchFilter {
        text,
        repo: query.repo,
        pipeline: query.pipeline,
        step: query.step,
        status,
        branch: query.branch,
        since: query.since,
        until: query.until,
        limit,
    })
}

/// Runs `filter` (one line more than its limit, to say whether there are
/// more) and marks the text in each line.
pub(crate) async fn search(state: &ApiState, filter: &SearchFilter) -> ApiResult<SearchResults> {
    let asked = SearchFilter {
        limit: filter.limit + 1,
        ..filter.clone()
    };
    let mut found = (state.agent.store.search_logs(&asked).await).map_err(ApiError::internal)?;
    let truncated = found.len() as i64 > filter.limit;
    found.truncate(filter.limit as usize);
    let hits = found
        .into_iter()
        .map(|hit| SearchHit {
            matches: matches(&hit.text, &filter.text),
            url: format!(
                "/builds/{}/steps/{}#L{}",
                hit.build_id,
                percent_encoding::utf8_percent_encode(
                    &hit.step,
                    percent_encoding::NON_ALPHANUMERIC
                ),
                hit.line
            ),
            build: hit.build_id,
            number: hit.number,
            repo: hit.repo,
            pipeline: hit.pipeline,
            git_ref: hit.git_ref,
            status: hit.status,
            requested_at: hit.requested_at,
            step: hit.step,
            line: hit.line,
            text: hit.text,
        })
        .collect();
    Ok(SearchResults { hits, truncated })
}

/// Where `needle` is in `line`, case aside: `[start, end)` in characters.
pub(crate) fn matches(line: &str, needle: &str) -> Vec<[usize; 2]> {
    let folded: Vec<char> = line.chars().flat_map(char::to_lowercase).collect();
    let needle: Vec<char> = needle.chars().flat_map(char::to_lowercase).collect();
    // Lowercasing may change a line's length (rare letters): then the
    // offsets would not be the line's; none are given.
    if needle.is_empty() || folded.len() != line.chars().count() {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut at = 0;
    while at + needle.len() <= folded.len() {
        if folded[at..at + needle.len()] == needle[..] {
            found.push([at, at + needle.len()]);
            at += needle.len();
        } else {
            at += 1;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn matches_are_found_case_aside_in_characters() {
        assert_eq!(matches("Error E0308: é error", "error"), [[0, 5], [15, 20]]);
        assert_eq!(matches("aaaa", "aa"), [[0, 2], [2, 4]]);
        assert!(matches("nothing", "xyz").is_empty());
    }
}
