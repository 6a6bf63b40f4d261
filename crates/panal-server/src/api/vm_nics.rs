//! `/api/v1/vms/{name}/nics` handlers.

use super::error::ApiResult;
use super::extract::{ApiJson, ApiQuery};
use super::vms::ProjectParam;
use crate::app::App;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use panal_types::ApiError;
use panal_types::network::NicRequest;
use panal_types::vm::VmAccepted;

/// Plug a NIC into a VM (hot-plugged when a q35 VM runs; microvm VMs must be stopped).
#[utoipa::path(post, path = "/api/v1/vms/{name}/nics", tag = "vms", params(("name" = String, Path), ProjectParam),
    request_body = NicRequest,
    responses((status = 202, body = VmAccepted), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn add_nic(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
    ApiJson(req): ApiJson<NicRequest>,
) -> ApiResult<(StatusCode, Json<VmAccepted>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(app.add_nic(q.project.as_deref(), &name, req).await?),
    ))
}

/// Unplug a NIC from a VM; its address is released.
#[utoipa::path(delete, path = "/api/v1/vms/{name}/nics/{nic}", tag = "vms",
    params(("name" = String, Path), ("nic" = String, Path), ProjectParam),
    responses((status = 202, body = VmAccepted), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn remove_nic(
    State(app): State<App>,
    Path((name, nic)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<(StatusCode, Json<VmAccepted>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(app.remove_nic(q.project.as_deref(), &name, &nic).await?),
    ))
}
