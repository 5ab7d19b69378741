//! The web UI that piperd serves at `/`: server-rendered pages (maud) and a
//! little hand-written JavaScript, all embedded in the binary.
//!
//! It has no data of its own. Each page calls the `/api/v1` handlers in
//! `server/` in-process, with the browser's credentials (the session
//! cookie), and renders what they answer; the page's script talks to the
//! same public API over HTTP (`/api/v1/updates` and `/events` for live
//! updates, `POST`s for retrigger, cancel, submit and login). So what a
//! page shows is exactly what the API answers a script, and the UI cannot
//! read or do anything the API does not allow.

mod ansi;
mod graph;
mod pages;
mod view;

use axum::Router;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use super::api::StreamItem;
use super::server::{self, ApiError, ApiState, ListQuery, LogQuery, StreamQuery};
use view::{BuildList, BuildView, EventsView, Excerpt, urlencode};

/// The UI's routes; merged beside the API's in `router.rs`.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(builds_page))
        .route("/builds/{id}", get(build_page))
        .route("/builds/{id}/steps/{step}", get(step_page))
        .route("/agents", get(agents_page))
        .route("/search", get(search_page))
        .route("/history", get(history_page))
        .route("/submit", get(submit_page))
        .route("/login", get(login_page))
        .route("/assets/app.css", get(css))
        .route("/assets/app.js", get(js))
        .route("/assets/log.js", get(log_js))
        .route("/favicon.ico", get(favicon))
}

/// Browsers ask every site for `/favicon.ico`: a small mark, not a 404.
const FAVICON: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#2f6f4f"/><path d="M5 12V4h3.5a2.5 2.5 0 0 1 0 5H5" fill="none" stroke="#fff" stroke-width="1.8"/></svg>"##;

async fn favicon() -> Response {
    asset("image/svg+xml", FAVICON)
}

const CSS: &str = include_str!("assets/app.css");
const JS: &str = include_str!("assets/app.js");
/// The log viewer, three files served as one script.
const LOG_JS: &str = concat!(
    include_str!("assets/log/ansi.js"),
    include_str!("assets/log/window.js"),
    include_str!("assets/log/viewer.js"),
);

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

/// The log viewer: only a step's page loads it.
async fn log_js() -> Response {
    asset("text/javascript; charset=utf-8", LOG_JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Assets change with the binary: revalidate, they are small.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A rendered page, with the headers every page gets: no inline scripts
/// or styles may run (CSP), and no other site may frame it.
fn page(status: StatusCode, markup: maud::Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

pub fn not_found_page() -> Response {
    page(
        StatusCode::NOT_FOUND,
        pages::error(&pages::Chrome::anonymous(), 404, "There is no such page."),
    )
}

/// What every page's frame needs to know: whether the browser is logged
/// in (to offer actions or the login link).
async fn chrome(state: &ApiState, headers: &HeaderMap) -> pages::Chrome {
    pages::Chrome {
        logged_in: server::has_session(state, headers).await,
        agent: state.agent.name.clone(),
    }
}

/// An API error as a page: not logged in sends the browser to the login
/// page (and back here after), anything else is shown with its message.
fn api_failure(error: ApiError, here: &str, chrome: &pages::Chrome) -> Response {
    if error.status == StatusCode::UNAUTHORIZED {
        let next = urlencode(here);
        return Redirect::to(&format!("/login?next={next}")).into_response();
    }
    page(
        error.status,
        pages::error(chrome, error.status.as_u16(), &error.message),
    )
}

/// `/`: builds, newest first, filtered like `GET /api/v1/builds`.
async fn builds_page(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let chrome = chrome(&state, &headers).await;
    let here = match &raw {
        Some(q) => format!("/?{q}"),
        None => "/".into(),
    };
    // A filter form sends its empty fields: empty means any here.
    let query = query.map(|Query(mut q)| {
        q.status = q.status.filter(|s| !s.is_empty());
        Query(q)
    });
    let filter = match &query {
        Ok(Query(q)) => view::Filter::from(q),
        Err(_) => view::Filter::default(),
    };
    let list = server::list_builds(State(state.clone()), headers.clone(), query)
        .await
        .map(|json| BuildList::from(json.0));
    match list {
        Ok(list) => page(StatusCode::OK, pages::builds(&chrome, &filter, &list)),
        Err(e) => api_failure(e, &here, &chrome),
    }
}

/// `/builds/{id}`: one build, its graph, steps and chain.
async fn build_page(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let chrome = chrome(&state, &headers).await;
    let here = format!("/builds/{id}");
    match load_build(&state, &headers, &id).await {
        Ok((build, events, triggered, excerpt)) => page(
            StatusCode::OK,
            pages::build(&chrome, &build, &events, &triggered, excerpt.as_ref()),
        ),
        Err(e) => api_failure(e, &here, &chrome),
    }
}

type LoadedBuild = (BuildView, EventsView, Vec<BuildView>, Option<Excerpt>);

async fn load_build(
    state: &ApiState,
    headers: &HeaderMap,
    id: &str,
) -> Result<LoadedBuild, ApiError> {
    let build = BuildView::from(
        server::show_build(State(state.clone()), headers.clone(), Path(id.to_string()))
            .await?
            .0,
    );
    let events = read_events(state, headers, id).await?;
    let triggered = server::list_builds(
        State(state.clone()),
        headers.clone(),
        Ok(Query(ListQuery {
            parent: Some(build.id),
            limit: Some(100),
            ..ListQuery::default()
        })),
    )
    .await?;
    let mut triggered = BuildList::from(triggered.0).builds;
    triggered.reverse();
    let excerpt = match build.first_failure() {
        Some(step) => Some(Excerpt {
            step: step.to_string(),
            text: log_tail(state, headers, id, step, 4096).await?,
        }),
        None => None,
    };
    Ok((build, events, triggered, excerpt))
}

/// The build's events without output (`/stream?output=false`), every page.
async fn read_events(
    state: &ApiState,
    headers: &HeaderMap,
    id: &str,
) -> Result<EventsView, ApiError> {
    let mut events = EventsView::default();
    let mut after = -1;
    loop {
        let page = server::read_stream(
            State(state.clone()),
            headers.clone(),
            Path(id.to_string()),
            Ok(Query(StreamQuery {
                after: Some(after),
                output: Some(false),
                ..StreamQuery::default()
            })),
        )
        .await?;
        let page = page.0;
        if page.items.is_empty() || page.next <= after {
            return Ok(events);
        }
        after = page.next;
        for item in page.items {
            if let StreamItem::Event {
                event: Some(event), ..
            } = item
            {
                events.add(event);
            }
        }
    }
}

/// The last `bytes` of a step's log, whole lines only.
async fn log_tail(
    state: &ApiState,
    headers: &HeaderMap,
    id: &str,
    step: &str,
    bytes: i64,
) -> Result<String, ApiError> {
    let response = server::read_log(
        State(state.clone()),
        headers.clone(),
        Path(id.to_string()),
        Ok(Query(LogQuery {
            step: Some(step.to_string()),
            tail: Some(bytes),
            ..LogQuery::default()
        })),
    )
    .await?;
    let from_start = response
        .headers()
        .get("x-piper-offset")
        .and_then(|v| v.to_str().ok())
        == Some("0");
    let body = axum::body::to_bytes(response.into_body(), bytes as usize + 1024)
        .await
        .map_err(ApiError::internal)?;
    let text = String::from_utf8_lossy(&body).into_owned();
    let text = match (from_start, text.find('\n')) {
        (false, Some(newline)) => text[newline + 1..].to_string(),
        _ => text,
    };
    // The last 25 lines, as `piper exec`'s summary shows.
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(25);
    Ok(lines[start..].join("\n"))
}

/// `/builds/{id}/steps/{step}`: a step's log, live.
async fn step_page(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((id, step)): Path<(String, String)>,
) -> Response {
    let chrome = chrome(&state, &headers).await;
    let here = format!("/builds/{id}/steps/{}", urlencode(&step));
    let build = server::show_build(State(state.clone()), headers.clone(), Path(id.clone()))
        .await
        .map(|json| BuildView::from(json.0));
    match build {
        Ok(build) => match build.steps.iter().find(|s| s.name == step) {
            Some(found) => page(StatusCode::OK, pages::step(&chrome, &build, found)),
            None => page(
                StatusCode::NOT_FOUND,
                pages::error(
                    &chrome,
                    404,
                    &format!("Build {} has no step `{step}`.", build.id),
                ),
            ),
        },
        Err(e) => api_failure(e, &here, &chrome),
    }
}

/// `/agents`: the agents sharing the database.
async fn agents_page(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let chrome = chrome(&state, &headers).await;
    let agents = server::agents(State(state.clone()), headers.clone())
        .await
        .map(|json| json.0);
    match agents {
        Ok(agents) => page(
            StatusCode::OK,
            pages::agents(&chrome, &agents.agents, view::now_ms()),
        ),
        Err(e) => api_failure(e, "/agents", &chrome),
    }
}

/// `/history?repo=R&pipeline=P`: a pipeline's steps over its last builds.
async fn history_page(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<server::HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let chrome = chrome(&state, &headers).await;
    if let Err(e) = server::authorize_read(&state, &headers).await {
        return api_failure(e, "/history", &chrome);
    }
    let query = query.map(|Query(q)| q).unwrap_or_default();
    match server::history(&state, query).await {
        Ok(history) => page(StatusCode::OK, pages::history(&chrome, &history)),
        Err(e) => api_failure(e, "/history", &chrome),
    }
}

#[derive(Deserialize, Default)]
struct SearchPageQuery {
    q: Option<String>,
    pipeline: Option<String>,
    step: Option<String>,
    status: Option<String>,
}

/// `/search`: lines of every stored log holding a text (`GET /api/v1/search`).
async fn search_page(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<SearchPageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let chrome = chrome(&state, &headers).await;
    if let Err(e) = server::authorize_read(&state, &headers).await {
        return api_failure(e, "/search", &chrome);
    }
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let given = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    let form = pages::SearchForm {
        q: query.q.clone().unwrap_or_default(),
        pipeline: query.pipeline.clone().unwrap_or_default(),
        step: query.step.clone().unwrap_or_default(),
        status: query.status.clone().unwrap_or_default(),
    };
    if form.q.is_empty() {
        return page(StatusCode::OK, pages::search(&chrome, &form, None));
    }
    let asked = server::SearchQuery {
        q: query.q,
        pipeline: given(query.pipeline),
        step: given(query.step),
        status: given(query.status),
        ..Default::default()
    };
    let found = match server::filter(asked) {
        Ok(filter) => server::search(&state, &filter).await,
        Err(e) => Err(e),
    };
    match found {
        Ok(found) => page(
            StatusCode::OK,
            pages::search(&chrome, &form, Some(Ok(&found))),
        ),
        Err(e) => page(
            StatusCode::BAD_REQUEST,
            pages::search(&chrome, &form, Some(Err(e.message))),
        ),
    }
}

#[derive(Deserialize, Default)]
struct SubmitQuery {
    repo: Option<String>,
    pipeline: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
}

/// `/submit`: the form for `POST /api/v1/builds` (needs a login).
async fn submit_page(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<SubmitQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let chrome = chrome(&state, &headers).await;
    if !chrome.logged_in {
        return Redirect::to("/login?next=/submit").into_response();
    }
    let query = query.map(|Query(q)| q).unwrap_or_default();
    page(
        StatusCode::OK,
        pages::submit(
            &chrome,
            query.repo.as_deref().unwrap_or(""),
            query.git_ref.as_deref().unwrap_or("HEAD"),
            query.pipeline.as_deref().unwrap_or("ci"),
        ),
    )
}

#[derive(Deserialize, Default)]
struct LoginQuery {
    next: Option<String>,
}

/// `/login`: a form that posts the token to `POST /api/v1/session`.
async fn login_page(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let chrome = chrome(&state, &headers).await;
    let query = query.map(|Query(q)| q).unwrap_or_default();
    // Only a path of this site: never send the browser elsewhere.
    let next = query
        .next
        .filter(|n| n.starts_with('/') && !n.starts_with("//"))
        .unwrap_or_else(|| "/".into());
    page(StatusCode::OK, pages::login(&chrome, &next))
}
