//! `/api/v1/vms` handlers. Changes answer 202 with the VM and the operation that tracks them.

use super::error::ApiResult;
use super::extract::{ApiJson, ApiQuery};
use crate::app::App;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use panal_types::ApiError;
use panal_types::page::{Page, PageParams};
use panal_types::vm::{
    Vm, VmAccepted, VmBatchAccepted, VmBatchCreate, VmCreate, VmStopRequest, VmUpdate,
};
use serde::Deserialize;

/// Selects the project of a VM request.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProjectParam {
    /// Project (default `default`).
    pub project: Option<String>,
}

/// List the VMs of a project.
#[utoipa::path(get, path = "/api/v1/vms", tag = "vms", params(PageParams),
    responses((status = 200, body = Page<Vm>), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn list_vms(
    State(app): State<App>,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<Vm>>> {
    Ok(Json(
        app.list_vms(q.project.as_deref(), q.limit, q.page_token.as_deref())
            .await?,
    ))
}

/// Create a VM (started unless `start` is false).
#[utoipa::path(post, path = "/api/v1/vms", tag = "vms", request_body = VmCreate,
    responses((status = 202, body = VmAccepted), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn create_vm(
    State(app): State<App>,
    ApiJson(req): ApiJson<VmCreate>,
) -> ApiResult<(StatusCode, Json<VmAccepted>)> {
    Ok((StatusCode::ACCEPTED, Json(app.create_vm(req).await?)))
}

/// Create 1 to 1000 VMs at once, all or none: every item is validated before any is written,
/// and an error names the item (`vms[3].name`). Answers with ids, names and operations only.
#[utoipa::path(post, path = "/api/v1/vms:batch", tag = "vms", request_body = VmBatchCreate,
    responses((status = 202, body = VmBatchAccepted), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn create_vms(
    State(app): State<App>,
    ApiJson(req): ApiJson<VmBatchCreate>,
) -> ApiResult<(StatusCode, Json<VmBatchAccepted>)> {
    Ok((StatusCode::ACCEPTED, Json(app.create_vms(req.vms).await?)))
}

/// Show a VM.
#[utoipa::path(get, path = "/api/v1/vms/{name}", tag = "vms", params(("name" = String, Path), ProjectParam),
    responses((status = 200, body = Vm), (status = 404, body = ApiError)))]
pub async fn get_vm(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<Json<Vm>> {
    Ok(Json(app.vm(q.project.as_deref(), &name).await?))
}

/// Change a VM's size, labels or policies.
#[utoipa::path(patch, path = "/api/v1/vms/{name}", tag = "vms", params(("name" = String, Path), ProjectParam), request_body = VmUpdate,
    responses((status = 200, body = Vm), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 412, body = ApiError)))]
pub async fn update_vm(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
    ApiJson(req): ApiJson<VmUpdate>,
) -> ApiResult<Json<Vm>> {
    Ok(Json(app.update_vm(q.project.as_deref(), &name, req).await?))
}

/// Delete a VM (stopping it first).
#[utoipa::path(delete, path = "/api/v1/vms/{name}", tag = "vms", params(("name" = String, Path), ProjectParam),
    responses((status = 202, body = VmAccepted), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn delete_vm(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<(StatusCode, Json<VmAccepted>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(app.delete_vm(q.project.as_deref(), &name).await?),
    ))
}

/// Start a VM.
#[utoipa::path(post, path = "/api/v1/vms/{name}/start", tag = "vms", params(("name" = String, Path), ProjectParam),
    responses((status = 202, body = VmAccepted), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn start_vm(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<(StatusCode, Json<VmAccepted>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(app.start_vm(q.project.as_deref(), &name).await?),
    ))
}

/// Stop a VM (gracefully, or at once with `force`).
#[utoipa::path(post, path = "/api/v1/vms/{name}/stop", tag = "vms", params(("name" = String, Path), ProjectParam), request_body = VmStopRequest,
    responses((status = 202, body = VmAccepted), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn stop_vm(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
    ApiJson(req): ApiJson<VmStopRequest>,
) -> ApiResult<(StatusCode, Json<VmAccepted>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(app.stop_vm(q.project.as_deref(), &name, req.force).await?),
    ))
}

/// Restart a running VM.
#[utoipa::path(post, path = "/api/v1/vms/{name}/restart", tag = "vms", params(("name" = String, Path), ProjectParam),
    responses((status = 202, body = VmAccepted), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn restart_vm(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<(StatusCode, Json<VmAccepted>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(app.restart_vm(q.project.as_deref(), &name).await?),
    ))
}

/// Pause a running VM.
#[utoipa::path(post, path = "/api/v1/vms/{name}/pause", tag = "vms", params(("name" = String, Path), ProjectParam),
    responses((status = 202, body = VmAccepted), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn pause_vm(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<(StatusCode, Json<VmAccepted>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(app.pause_vm(q.project.as_deref(), &name).await?),
    ))
}

/// Resume a paused VM.
#[utoipa::path(post, path = "/api/v1/vms/{name}/resume", tag = "vms", params(("name" = String, Path), ProjectParam),
    responses((status = 202, body = VmAccepted), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn resume_vm(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<(StatusCode, Json<VmAccepted>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(app.resume_vm(q.project.as_deref(), &name).await?),
    ))
}
