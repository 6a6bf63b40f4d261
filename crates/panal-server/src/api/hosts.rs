//! `/api/v1/hosts` handlers.

use super::error::ApiResult;
use super::extract::ApiQuery;
use crate::app::App;
use axum::Json;
use axum::extract::{Path, State};
use panal_types::ApiError;
use panal_types::host::Host;
use panal_types::page::{Page, PageParams};

/// List hosts.
#[utoipa::path(get, path = "/api/v1/hosts", tag = "hosts", params(PageParams),
    responses((status = 200, body = Page<Host>), (status = 400, body = ApiError)))]
pub async fn list_hosts(
    State(app): State<App>,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<Host>>> {
    Ok(Json(
        app.list_hosts(q.limit, q.page_token.as_deref()).await?,
    ))
}

/// Show a host.
#[utoipa::path(get, path = "/api/v1/hosts/{name}", tag = "hosts", params(("name" = String, Path)),
    responses((status = 200, body = Host), (status = 404, body = ApiError)))]
pub async fn get_host(State(app): State<App>, Path(name): Path<String>) -> ApiResult<Json<Host>> {
    Ok(Json(app.host(&name).await?))
}
