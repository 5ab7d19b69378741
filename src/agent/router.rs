//! The one router the API and the web UI hang from: the API's routes (with
//! JSON errors), the UI's pages, `/metrics`, and around them all the
//! `Host` check, the body limit and the request timeout. Above both
//! `server/` and `ui/` (the UI's pages call the API's handlers), so
//! neither imports the other's router.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::server::{
    ApiError, ApiState, BODY_LIMIT, REQUEST_TIMEOUT, api_routes, check_host, errors_as_json,
    metrics,
};

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
