//! `/api/v1/floating-ips` handlers.

use super::error::ApiResult;
use super::extract::{ApiJson, ApiQuery};
use super::vms::ProjectParam;
use crate::app::App;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use panal_types::ApiError;
use panal_types::network::{FloatingIp, FloatingIpAssociate, FloatingIpCreate};
use panal_types::page::{Page, PageParams};

/// List the floating addresses of a project.
#[utoipa::path(get, path = "/api/v1/floating-ips", tag = "floating-ips", params(PageParams),
    responses((status = 200, body = Page<FloatingIp>), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn list_floating_ips(
    State(app): State<App>,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<FloatingIp>>> {
    Ok(Json(
        app.list_floating_ips(q.project.as_deref(), q.limit, q.page_token.as_deref())
            .await?,
    ))
}

/// Allocate a floating address from an external network (the lowest free one, or the one asked for).
#[utoipa::path(post, path = "/api/v1/floating-ips", tag = "floating-ips", request_body = FloatingIpCreate,
    responses((status = 201, body = FloatingIp), (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
pub async fn create_floating_ip(
    State(app): State<App>,
    ApiJson(req): ApiJson<FloatingIpCreate>,
) -> ApiResult<(StatusCode, Json<FloatingIp>)> {
    Ok((
        StatusCode::CREATED,
        Json(app.create_floating_ip(req).await?),
    ))
}

/// Show a floating address.
#[utoipa::path(get, path = "/api/v1/floating-ips/{address}", tag = "floating-ips", params(("address" = String, Path), ProjectParam),
    responses((status = 200, body = FloatingIp), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn get_floating_ip(
    State(app): State<App>,
    Path(address): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<Json<FloatingIp>> {
    Ok(Json(
        app.get_floating_ip(q.project.as_deref(), &address).await?,
    ))
}

/// Release a floating address (unmapped first if mapped).
#[utoipa::path(delete, path = "/api/v1/floating-ips/{address}", tag = "floating-ips", params(("address" = String, Path), ProjectParam),
    responses((status = 204), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 412, body = ApiError)))]
pub async fn delete_floating_ip(
    State(app): State<App>,
    Path(address): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<StatusCode> {
    app.delete_floating_ip(q.project.as_deref(), &address)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Map a floating address to a VM's NIC (on a network with outbound NAT); it follows the VM.
#[utoipa::path(post, path = "/api/v1/floating-ips/{address}/associate", tag = "floating-ips",
    params(("address" = String, Path), ProjectParam), request_body = FloatingIpAssociate,
    responses((status = 200, body = FloatingIp), (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
pub async fn associate_floating_ip(
    State(app): State<App>,
    Path(address): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
    ApiJson(req): ApiJson<FloatingIpAssociate>,
) -> ApiResult<Json<FloatingIp>> {
    Ok(Json(
        app.associate_floating_ip(q.project.as_deref(), &address, req)
            .await?,
    ))
}

/// Unmap a floating address from its NIC.
#[utoipa::path(post, path = "/api/v1/floating-ips/{address}/disassociate", tag = "floating-ips",
    params(("address" = String, Path), ProjectParam),
    responses((status = 200, body = FloatingIp), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn disassociate_floating_ip(
    State(app): State<App>,
    Path(address): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<Json<FloatingIp>> {
    Ok(Json(
        app.disassociate_floating_ip(q.project.as_deref(), &address)
            .await?,
    ))
}
