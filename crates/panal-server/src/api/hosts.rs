//! `/api/v1/hosts` handlers.

use super::error::ApiResult;
use super::extract::ApiQuery;
use crate::app::App;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use panal_types::ApiError;
use panal_types::host::{Host, HostDrainAccepted, HostMoveBack};
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

/// Cordon a host: it takes no new VMs; those it runs stay.
#[utoipa::path(post, path = "/api/v1/hosts/{name}/cordon", tag = "hosts", params(("name" = String, Path)),
    responses((status = 200, body = Host), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn cordon_host(
    State(app): State<App>,
    Path(name): Path<String>,
) -> ApiResult<Json<Host>> {
    Ok(Json(app.cordon_host(&name).await?))
}

/// Make a host schedulable again (cancels a drain in progress).
#[utoipa::path(post, path = "/api/v1/hosts/{name}/uncordon", tag = "hosts", params(("name" = String, Path)),
    responses((status = 200, body = Host), (status = 404, body = ApiError)))]
pub async fn uncordon_host(
    State(app): State<App>,
    Path(name): Path<String>,
) -> ApiResult<Json<Host>> {
    Ok(Json(app.uncordon_host(&name).await?))
}

/// How a drain moves VMs.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DrainParams {
    /// Stop and start elsewhere the running VMs that cannot move live (default false: the drain
    /// then fails on them, stopping nothing).
    pub cold: Option<bool>,
}

/// Drain a host: move every VM to other hosts (running VMs live-migrate, a few at a time;
/// stopped ones are placed again), then put the host in maintenance. Answers with the operation
/// to follow.
#[utoipa::path(post, path = "/api/v1/hosts/{name}/drain", tag = "hosts", params(("name" = String, Path), DrainParams),
    responses((status = 202, body = HostDrainAccepted), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn drain_host(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<DrainParams>,
) -> ApiResult<(StatusCode, Json<HostDrainAccepted>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(app.drain_host(&name, q.cold.unwrap_or(false)).await?),
    ))
}

/// Live-migrate back the running VMs a drain moved off this host (the host must take VMs
/// again: uncordon it first). Answers with the migrations started and what stayed where it is.
#[utoipa::path(post, path = "/api/v1/hosts/{name}/move-back", tag = "hosts", params(("name" = String, Path)),
    responses((status = 202, body = HostMoveBack), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn move_back(
    State(app): State<App>,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<HostMoveBack>)> {
    Ok((StatusCode::ACCEPTED, Json(app.move_back(&name).await?)))
}
