//! `/api/v1/networks` handlers.

use super::error::ApiResult;
use super::extract::{ApiJson, ApiQuery};
use super::vms::ProjectParam;
use crate::app::App;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use panal_types::ApiError;
use panal_types::network::{Network, NetworkCreate, NetworkPort};
use panal_types::page::{Page, PageParams};

/// List the networks of a project.
#[utoipa::path(get, path = "/api/v1/networks", tag = "networks", params(PageParams),
    responses((status = 200, body = Page<Network>), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn list_networks(
    State(app): State<App>,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<Network>>> {
    Ok(Json(
        app.list_networks(q.project.as_deref(), q.limit, q.page_token.as_deref())
            .await?,
    ))
}

/// Create a network (its subnet may not overlap another network of the project).
#[utoipa::path(post, path = "/api/v1/networks", tag = "networks", request_body = NetworkCreate,
    responses((status = 201, body = Network), (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
pub async fn create_network(
    State(app): State<App>,
    ApiJson(req): ApiJson<NetworkCreate>,
) -> ApiResult<(StatusCode, Json<Network>)> {
    Ok((StatusCode::CREATED, Json(app.create_network(req).await?)))
}

/// Show a network.
#[utoipa::path(get, path = "/api/v1/networks/{name}", tag = "networks", params(("name" = String, Path), ProjectParam),
    responses((status = 200, body = Network), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn get_network(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<Json<Network>> {
    Ok(Json(app.get_network(q.project.as_deref(), &name).await?))
}

/// Delete a network without NICs (409 while it has some).
#[utoipa::path(delete, path = "/api/v1/networks/{name}", tag = "networks", params(("name" = String, Path), ProjectParam),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn delete_network(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<StatusCode> {
    app.delete_network(q.project.as_deref(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The addresses of a network in use, and the NICs holding them.
#[utoipa::path(get, path = "/api/v1/networks/{name}/ports", tag = "networks", params(("name" = String, Path), ProjectParam),
    responses((status = 200, body = Vec<NetworkPort>), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn network_ports(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<Json<Vec<NetworkPort>>> {
    let ports = app.network_ports(q.project.as_deref(), &name).await?;
    Ok(Json(
        ports
            .into_iter()
            .map(|(ip, o)| NetworkPort {
                ip,
                vm: o.vm,
                nic: o.nic,
            })
            .collect(),
    ))
}
