//! `/api/v1/operations` handlers, including a long-poll wait so clients need not spin.

use super::error::ApiResult;
use super::extract::ApiQuery;
use crate::app::App;
use axum::Json;
use axum::extract::{Path, State};
use panal_types::ApiError;
use panal_types::operation::Operation;
use panal_types::page::{Page, PageParams};
use serde::Deserialize;
use std::time::Duration;

/// How long to wait.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitParams {
    /// Seconds to wait at most (default 30, at most 300).
    pub timeout_secs: Option<u64>,
}

/// List operations.
#[utoipa::path(get, path = "/api/v1/operations", tag = "operations", params(PageParams),
    responses((status = 200, body = Page<Operation>), (status = 400, body = ApiError)))]
pub async fn list_operations(
    State(app): State<App>,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<Operation>>> {
    Ok(Json(
        app.list_operations(q.limit, q.page_token.as_deref())
            .await?,
    ))
}

/// Show an operation.
#[utoipa::path(get, path = "/api/v1/operations/{id}", tag = "operations", params(("id" = String, Path)),
    responses((status = 200, body = Operation), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn get_operation(
    State(app): State<App>,
    Path(id): Path<String>,
) -> ApiResult<Json<Operation>> {
    Ok(Json(app.operation(&id).await?))
}

/// Wait for an operation to end (or the timeout), then show it.
#[utoipa::path(get, path = "/api/v1/operations/{id}/wait", tag = "operations", params(("id" = String, Path), WaitParams),
    responses((status = 200, body = Operation), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn wait_operation(
    State(app): State<App>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WaitParams>,
) -> ApiResult<Json<Operation>> {
    let timeout = Duration::from_secs(q.timeout_secs.unwrap_or(30));
    Ok(Json(app.wait_operation(&id, timeout).await?))
}
